"""``/metrics`` at scale (printed, not a test).

Build first with ``maturin develop --release`` (or the venv of bench/README.md),
then ``python bench/metrics.py`` (``--sections body,copy,stall,baseline`` runs a
subset).

1. ``body``: the ``/metrics`` body at 10^3, 10^5 and 10^6 tracked agents with
   the default per-agent row cap (``--prom-agent-rows 1000``,
   docs/observer.md#agent-rows) and with every agent's rows (the old body):
   plain and gzip bytes, render ms (what the HTTP thread does per fresh body:
   pick the rows and count every agent in Rust, write the text) and gzip ms.
   1 % of the agents are not OK (0.9 % degraded, 0.1 % hung), so at 10^6 the
   not-OK agents alone exceed the cap. Targets at 10^6 with the default cap:
   <= 1 MB and <= 100 ms.
2. ``copy``: the snapshot the poll loop takes for a render
   (``Observer.pid_rows()``): the copy of the tracker it makes under the
   observer lock — the only part of a scrape that holds up the ingest thread —
   timed in Rust on a tracker of 10^3 / 10^5 / 10^6 pids.
3. ``stall``: hung-agent stall latency (bench/observer.py's method: paced
   agents SIGSTOPped, threshold 200 ms; ms past the deadline) with no render,
   then with a thread rendering (and gzipping) the 10^6-agent body in a loop,
   with the default cap and with every row. The ingest thread is Rust and
   never takes the GIL, so the target is: unchanged, p99 <= threshold + 5 ms.
4. ``baseline``: the pre-``PidRows`` path for the full body (Python rows and
   prometheus_client samples) against the native full render, at 10^4 / 10^5.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

from observer import stall_latency, summary
from varta import PidRows
from varta._varta import _testing
from varta.watch.logsetup import RateLimiter
from varta.watch.metrics import (
    DEFAULT_AGENT_ROWS,
    ServeStats,
    Snapshot,
    VartaCollector,
    build_registry,
    render,
)
from varta.watch.metrics_server import gzip_body

SIZES = (1_000, 100_000, 1_000_000)
ALL_ROWS = 1_000_000_000


def fleet_rows(n: int) -> PidRows:
    """n agents from pid 1000: every 1000th hung, every 111th degraded, else OK."""

    def row(i: int) -> tuple[int, int, int, int, Optional[str]]:
        if i % 1000 == 999:
            return (1000 + i, 12_345 + i, 1, 3, "hung")
        return (1000 + i, 12_345 + i, 0, 1 if i % 111 == 110 else 0, None)

    return PidRows(row(i) for i in range(n))


def body_for(rows: PidRows, cap: int) -> Callable[[], bytes]:
    collector = VartaCollector(
        lambda: Snapshot(agents=rows, uptime_seconds=1.0), ServeStats(), RateLimiter(), cap
    )
    return lambda: render(collector)


def timed(fn: Callable[[], Any], rounds: int) -> tuple[list[float], Any]:
    out: list[float] = []
    value = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        value = fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out, value


def ms(xs: list[float]) -> str:
    return f"{statistics.median(xs):8.1f} (max {max(xs):7.1f})"


def bench_body(tables: dict[int, PidRows]) -> None:
    print("\n## /metrics body (render = rows picked and counted in Rust + text; ms median of 5)")
    print(
        f"{'agents':>9}  {'rows':>8}  {'plain bytes':>12}  {'gzip bytes':>11}"
        f"  {'render ms':>20}  {'gzip ms':>20}"
    )
    for n, rows in tables.items():
        for label, cap in (("1000", DEFAULT_AGENT_ROWS), ("all", ALL_ROWS)):
            render_ms, body = timed(body_for(rows, cap), 5 if n < 1_000_000 or cap < n else 2)
            gzip_ms, packed = timed(lambda b=body: gzip_body(b), 3 if len(body) < 10**7 else 1)
            print(
                f"{n:>9}  {label:>8}  {len(body):>12,}  {len(packed):>11,}"
                f"  {ms(render_ms):>20}  {ms(gzip_ms):>20}"
            )
    print("targets at 10^6 with the default cap: <= 1 MB, <= 100 ms")


def bench_copy() -> None:
    print(
        "\n## Tracker copy for a snapshot (Observer.pid_rows(); ms, 10 copies): whole copy,"
        " and its longest chunk = the longest the observer lock is held"
    )
    for n in SIZES:
        runs = _testing.bench_rows_copy(n, 10)
        whole = [t / 1e6 for t, _ in runs]
        chunk = [c / 1e6 for _, c in runs]
        print(f"{n:>9} pids: whole {ms(whole)}   lock held {ms(chunk)}")


class RenderLoop:
    """Renders (and gzips) a body over and over on its own thread, as the
    HTTP thread would under back-to-back scrapes."""

    def __init__(self, body: Callable[[], bytes]) -> None:
        self.body = body
        self.renders = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            gzip_body(self.body())
            self.renders += 1

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.renders


def bench_stall(path: str, rows: PidRows, agents: int, rounds: int) -> None:
    thr = 200
    print(
        f"\n## Hung-agent stall latency while a {len(rows):,}-agent body renders"
        f" (threshold {thr} ms, {agents} agents x {rounds} rounds; ms past the deadline)"
    )
    variants: list[tuple[str, Callable[[], bytes] | None]] = [
        ("no render", None),
        ("render loop, default cap", body_for(rows, DEFAULT_AGENT_ROWS)),
        ("render loop, every row", body_for(rows, ALL_ROWS)),
    ]
    for label, body in variants:
        loop = RenderLoop(body) if body is not None else None
        t0 = time.monotonic()
        try:
            lat = stall_latency(path, agents, rounds, thr, ingest_thread=True)
        finally:
            renders = loop.close() if loop is not None else 0
        rate = f", {renders / (time.monotonic() - t0):.1f} renders/s" if loop else ""
        print(f"{label}{rate}:")
        print(f"  Stall produced      : {summary(lat['after_deadline'])}  (target p99 <= 5 ms)")
        print(f"  arrival in poll()   : {summary(lat['to_consumer'])}")


def baseline(rows: list[tuple[int, int, int, int]]) -> tuple[float, int]:
    """Python rows + prometheus_client samples + Python formatting (seconds, bytes)."""
    t0 = time.perf_counter()
    copied = [tuple(r) for r in rows]  # the per-pid row objects the loop built
    out: list[str] = []
    for name, i, fam_type in (
        ("varta_beats_total", 1, CounterMetricFamily),
        ("varta_stalls_total", 2, CounterMetricFamily),
        ("varta_status", 3, GaugeMetricFamily),
    ):
        fam = fam_type(name, "help", labels=["pid"])
        for r in sorted(copied):
            fam.add_metric([str(r[0])], r[i])
        out.extend(f'{s.name}{{pid="{s.labels["pid"]}"}} {int(s.value)}\n' for s in fam.samples)
    body = "".join(out).encode()
    return time.perf_counter() - t0, len(body)


def bench_baseline() -> None:
    print("\n## Every row: the pre-PidRows Python path against the native render (s)")
    print("pids       baseline (s)   render (s)   baseline/render")
    for n in (10_000, 100_000):
        rows = [(1000 + i, 12_345 + i, i % 5, i % 4) for i in range(n)]
        base_s, _ = baseline(rows)
        snap = Snapshot(agents=PidRows(rows))
        t0 = time.perf_counter()
        render(build_registry(VartaCollector(lambda s=snap: s, None, None, n)))
        render_s = time.perf_counter() - t0
        print(f"{n:>9}  {base_s:12.3f}   {render_s:10.3f}   {base_s / render_s:15.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sections", default="body,copy,stall,baseline")
    ap.add_argument("--stall-agents", type=int, default=20)
    ap.add_argument("--stall-rounds", type=int, default=5)
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    tables = {n: fleet_rows(n) for n in SIZES} if sections & {"body", "stall"} else {}
    if "body" in sections:
        bench_body(tables)
    if "copy" in sections:
        bench_copy()
    if "stall" in sections:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            bench_stall(f"{d}/obs.sock", tables[1_000_000], args.stall_agents, args.stall_rounds)
    if "baseline" in sections:
        bench_baseline()


if __name__ == "__main__":
    main()
