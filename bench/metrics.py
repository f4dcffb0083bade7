"""``/metrics`` body for many tracked pids (printed, not a test).

Build first with ``maturin develop --release``, then ``python bench/metrics.py``.

The three per-pid families (docs/observer.md#per-pid-families) dominate the body:
~100 bytes per pid. The
baseline is what the daemon did before ``varta.PidRows``: one Python row
object per pid copied on the poll loop, then one prometheus_client sample per
pid and family, formatted in Python on the metrics thread. The serve stage's
self-watchdog limit is 2 s (docs/observer.md#systemd-and-watchdogs), so the render
must stay well under it at
the largest capacity (1,000,000).
"""

from __future__ import annotations

import argparse
import time

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

from varta import PidRows
from varta.watch.metrics import Snapshot, VartaCollector, build_registry, render


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


def native(rows: list[tuple[int, int, int, int]]) -> tuple[float, float, int]:
    """PidRows build (the loop's copy) and the full body render (seconds, seconds, bytes)."""
    t0 = time.perf_counter()
    table = PidRows(rows)
    t1 = time.perf_counter()
    body = render(build_registry(VartaCollector(lambda: Snapshot(agents=table))))
    return t1 - t0, time.perf_counter() - t1, len(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = ap.parse_args()
    print("pids       baseline (s)   PidRows build (s)   render (s)   baseline/render   body")
    for n in args.sizes:
        rows = [(1000 + i, 12_345 + i, i % 5, i % 4) for i in range(n)]
        base_s, _ = baseline(rows)
        build_s, render_s, size = native(rows)
        print(
            f"{n:>9}  {base_s:12.3f}   {build_s:17.3f}   {render_s:10.3f}"
            f"   {base_s / render_s:15.1f}x   {size / 1e6:5.1f} MB"
        )
    print("(the PidRows build converts Python tuples; Observer.pid_rows() copies the tracker)")


if __name__ == "__main__":
    main()
