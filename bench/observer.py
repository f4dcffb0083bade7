"""Observer benchmark (printed, not a test).

Build first with ``maturin develop --release``, then ``python bench/observer.py``.

1. CPU per accepted beat: real agent processes (one pid each) blast frames at
   the observer in count-only mode (``emit_beats=False``, rate limits off);
   the observer thread's CPU time per accepted beat is set against a bare
   Rust ``recvmsg`` loop with credentials fed by the same agents (the floor).
   Where the kernel has ``SO_PASSPIDFD`` (the observer then takes a pidfd of
   every sender, docs/observer.md#credentials) the same loop is also run with it, each
   pidfd closed, and that ratio is printed beside the target one
   (informational: the target stays against the plain floor).
2. Stall-detection latency: paced agents are SIGSTOPped at known instants
   (threshold 200 ms); latency = Stall.observer_ns - last beat - threshold
   (how late after the deadline the stall surfaced), plus the same measured
   from the SIGSTOP instant.
3. Tracker memory per agent and per-beat cost at 100 / 10,000 / 100,000
   tracked pids (simulated pids straight through the Rust tracker).

Targets (issue 3): <= 1.5x floor; p99 <= threshold + 15 ms; <= 200 B/agent;
per-beat cost at 100k <= 1.2x the cost at 100.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import Any

import varta
from varta import _varta

BLAST_AGENT = textwrap.dedent(
    """
    import os, socket, sys, varta
    path, n = sys.argv[1], int(sys.argv[2])
    frames = [varta.encode(0, os.getpid(), i, i) for i in range(1, n + 1)]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect(path)
    send = s.send
    print("ready", flush=True)
    sys.stdin.readline()
    for f in frames:
        send(f)  # blocking: waits while the observer's queue is full
    """
)

PACED_AGENT = textwrap.dedent(
    """
    import os, socket, sys, time, varta
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    pid, n = os.getpid(), 0
    while True:
        n += 1
        try:
            s.sendto(varta.encode(0, pid, n, n), sys.argv[1])
        except OSError:
            pass
        time.sleep(0.01)
    """
)


def wait_path(path: str, within: float = 10.0) -> None:
    end = time.monotonic() + within
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.001)


def start_blasters(path: str, agents: int, per_agent: int) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BLAST_AGENT, path, str(per_agent)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(agents)
    ]
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("agent failed to start")
    return procs


def go(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


def reap(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.wait(timeout=60)


def observer_cpu(path: str, agents: int, per_agent: int, *, emit_beats: bool) -> float:
    """Observer-thread CPU ns per accepted beat."""
    total = agents * per_agent
    with varta.Observer(
        path,
        60_000,
        emit_beats=emit_beats,
        max_beat_rate=0,
        global_beat_rate=0,
        capacity=max(256, agents),
    ) as obs:
        procs = start_blasters(path, agents, per_agent)
        t0 = time.thread_time_ns()
        go(procs)
        end = time.monotonic() + 120
        beats = 0
        while beats < total and time.monotonic() < end:
            for _ in obs.poll(timeout=0.1):
                pass
            c = obs.counters()["beats"]
            assert isinstance(c, int)
            beats = c
        cpu = time.thread_time_ns() - t0
        reap(procs)
    if beats != total:
        raise RuntimeError(f"observer accepted {beats} of {total} beats")
    return cpu / beats


def floor_cpu(path: str, agents: int, per_agent: int, *, pidfd: bool = False) -> float:
    """Bare recvmsg-with-credentials loop: CPU ns per datagram."""
    total = agents * per_agent
    out: dict[str, Any] = {}

    def run() -> None:
        out["r"] = _varta._testing.bench_recv_floor(path, total, 3000, pidfd=pidfd)

    th = threading.Thread(target=run)
    th.start()
    wait_path(path)
    procs = start_blasters(path, agents, per_agent)
    go(procs)
    th.join()
    reap(procs)
    cpu, got = out["r"]
    if got != total:
        raise RuntimeError(f"floor received {got} of {total}")
    return float(cpu) / got


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def stall_latency(path: str, agents: int, rounds: int, threshold_ms: int) -> dict[str, float]:
    thr = threshold_ms * 1_000_000
    after_deadline: list[float] = []
    after_stop: list[float] = []
    with varta.Observer(path, threshold_ms, emit_beats=False, capacity=max(256, agents)) as obs:
        procs = [subprocess.Popen([sys.executable, "-c", PACED_AGENT, path]) for _ in range(agents)]
        pids = {p.pid for p in procs}
        try:

            def tracked_live() -> bool:
                infos = [obs.agent(pid) for pid in pids]
                return all(i is not None and not i.stalled for i in infos)

            end = time.monotonic() + 30
            while not tracked_live():
                if time.monotonic() > end:
                    raise RuntimeError("agents never all beat")
                list(obs.poll(timeout=0.05))
            for _ in range(rounds):
                stop_ns: dict[int, int] = {}
                seen: dict[int, Any] = {}
                gap = 0.023  # stop one agent every 23 ms
                t_next = time.monotonic()
                queue = list(procs)
                deadline = time.monotonic() + 30
                while len(seen) < agents:
                    if time.monotonic() > deadline:
                        raise RuntimeError("stalls missing")
                    now = time.monotonic()
                    if queue and now >= t_next:
                        p = queue.pop(0)
                        p.send_signal(signal.SIGSTOP)
                        stop_ns[p.pid] = obs.now_ns()
                        t_next += gap
                        continue
                    wait = max(0.0, t_next - now) if queue else 0.2
                    for e in obs.poll(timeout=wait):
                        if isinstance(e, varta.Stall) and e.pid in stop_ns:
                            seen[e.pid] = e
                for pid, e in seen.items():
                    after_deadline.append((e.observer_ns - e.last_ns - thr) / 1e6)
                    after_stop.append((e.observer_ns - stop_ns[pid] - thr) / 1e6)
                for p in procs:
                    p.send_signal(signal.SIGCONT)
                end = time.monotonic() + 30
                while not tracked_live():
                    if time.monotonic() > end:
                        raise RuntimeError("agents never resumed")
                    list(obs.poll(timeout=0.05))
        finally:
            for p in procs:
                p.kill()
                p.send_signal(signal.SIGCONT)
                p.wait()
    return {
        "n": len(after_deadline),
        "p50": pct(after_deadline, 0.5),
        "p99": pct(after_deadline, 0.99),
        "max": max(after_deadline),
        "stop_p50": pct(after_stop, 0.5),
        "stop_p99": pct(after_stop, 0.99),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=4, help="blasting agent processes")
    ap.add_argument("--beats", type=int, default=50_000, help="beats per blasting agent")
    ap.add_argument("--stall-agents", type=int, default=20)
    ap.add_argument("--stall-rounds", type=int, default=5)
    ap.add_argument(
        "--tracker-chunks", type=int, default=40, help="interleaved rounds per tracker size"
    )
    ap.add_argument("--tracker-chunk-beats", type=int, default=250_000)
    ap.add_argument("--repeat", type=int, default=3, help="CPU runs (best of)")
    args = ap.parse_args()

    d = tempfile.mkdtemp(prefix="varta-bench-")
    path = os.path.join(d, "obs.sock")
    try:
        py = sys.version.split()[0]
        print(f"# varta observer benchmark (python {py}, {os.cpu_count()} cpus)")
        print(f"\n## CPU per accepted beat ({args.agents} agents x {args.beats} beats)")
        floor = min(floor_cpu(path, args.agents, args.beats) for _ in range(args.repeat))
        count_only = min(
            observer_cpu(path, args.agents, args.beats, emit_beats=False)
            for _ in range(args.repeat)
        )
        with_events = min(
            observer_cpu(path, args.agents, args.beats, emit_beats=True) for _ in range(args.repeat)
        )
        with varta.Observer(path, 1000) as probe:
            has_pidfd = bool(probe.pidfd_identity)
        floor_pidfd = (
            min(floor_cpu(path, args.agents, args.beats, pidfd=True) for _ in range(args.repeat))
            if has_pidfd
            else None
        )
        print(f"floor (bare recvmsg + creds loop) : {floor:8.0f} ns/beat")
        if floor_pidfd is not None:
            print(f"floor + SO_PASSPIDFD (informational): {floor_pidfd:6.0f} ns/beat")
        print(
            f"observer, count-only              : {count_only:8.0f} ns/beat"
            f"   ratio {count_only / floor:4.2f}x  (target <= 1.5x)"
            f"  [observer pidfds: {'on' if has_pidfd else 'off'}]"
        )
        if floor_pidfd is not None:
            print(
                f"  vs the floor with SO_PASSPIDFD   :"
                f"   ratio {count_only / floor_pidfd:4.2f}x  (informational)"
            )
        print(
            f"observer, Beat events to Python   : {with_events:8.0f} ns/beat"
            f"   ratio {with_events / floor:4.2f}x  (informational)"
        )

        thr = 200
        print(
            f"\n## Stall detection latency (threshold {thr} ms, "
            f"{args.stall_agents} agents x {args.stall_rounds} rounds)"
        )
        lat = stall_latency(path, args.stall_agents, args.stall_rounds, thr)
        print(
            f"after the deadline : p50 {lat['p50']:6.2f} ms  p99 {lat['p99']:6.2f} ms  "
            f"max {lat['max']:6.2f} ms  (n={lat['n']:.0f}; target p99 <= 15 ms)"
        )
        print(
            f"from SIGSTOP - thr : p50 {lat['stop_p50']:6.2f} ms  p99 {lat['stop_p99']:6.2f} ms"
            "  (negative: the last beat preceded the stop)"
        )

        print(
            f"\n## Tracker: memory and per-beat cost ({args.tracker_chunks} interleaved rounds"
            f" of {args.tracker_chunk_beats} beats per size)"
        )
        # Dense pids (agents started together) are the target; the other
        # layouts show what the index costs when pids are spread out.
        for layout in ("dense", "stride:3", "scattered"):
            rows = _varta._testing.bench_tracker_scaling(
                [100, 10_000, 100_000],
                args.tracker_chunk_beats,
                args.tracker_chunks,
                layout,
            )
            print(f"pid layout {layout}:")
            base = rows[0][2]
            for n, bytes_per, chunk_ns in rows:
                # Each round ran every size back to back, so a per-round ratio
                # cancels the machine's slow drift; the median drops outliers.
                ratios = [a / b for a, b in zip(chunk_ns, base)]
                print(
                    f"{n:>7} pids : median {statistics.median(chunk_ns):6.1f} ns/beat"
                    f"  mean {statistics.fmean(chunk_ns):6.1f}  {bytes_per:4d} B/agent"
                    f"  per-round ratio to 100: median {statistics.median(ratios):4.2f}"
                )
            worst = max(b for _, b, _ in rows)
            ratio = statistics.median(a / b for a, b in zip(rows[-1][2], base))
            target = "target <= 1.2x" if layout == "dense" else "informational"
            print(
                f"cost at 100k / cost at 100 = {ratio:4.2f}x (median per-round ratio;"
                f" {target}); max {worst} B/agent (target <= 200)"
            )
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
