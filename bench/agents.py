"""The live view's ``GET /agents`` at scale (printed, not a test; docs/live-view.md).

Build first with ``maturin develop --release`` (or the venv of bench/README.md),
then ``python bench/agents.py``: the JSON render on the HTTP thread from
synthetic ``AgentInfo`` rows (all agents, and the status page's worst 500), and
the whole ``GET`` from a real ``varta-watch`` whose agents beat over UDP.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import varta
from varta import _varta
from varta.watch.agents import Query, render_agents

# --- /agents (docs/live-view.md#agents-json) ----------------------------------------------


def synthetic_agents(n: int) -> list[varta.AgentInfo]:
    """n AgentInfo rows (the class Observer.agents() returns): 1% hung, 2% degraded."""
    out = []
    for i in range(n):
        hung = i % 100 == 0
        out.append(
            varta.AgentInfo(
                1000 + i, "degraded" if i % 50 == 1 else "ok", varta.BeatOrigin.KERNEL_ATTESTED,
                12_345 + i, i % 5, 3, 10**12, (5_000 + i) * 1_000_000 if hung else i * 1000,
                hung, 4026531836, 1_000_000 + i, "hung" if hung else None,
            )
        )  # fmt: skip
    return out


def bench_agents_render(sizes: list[int], rounds: int) -> None:
    print("\n## /agents: JSON render on the HTTP thread (synthetic AgentInfo rows)")
    print("agents     query       render ms (median, min..max)   per agent   body")
    for n in sizes:
        rows = synthetic_agents(n)
        # All of them (varta agents --json), and the worst 500 (the status page).
        for label, query in (("all", Query()), ("limit=500", Query(limit=500))):
            times = []
            size = 0
            for _ in range(rounds):
                t0 = time.perf_counter()
                body = render_agents(rows, {}, threshold_ms=2000, version="bench", query=query)
                times.append((time.perf_counter() - t0) * 1000)
                size = len(body)
            med = statistics.median(times)
            print(
                f"{n:>9}  {label:<10} {med:9.1f} ({min(times):.1f}..{max(times):.1f}, n={rounds})"
                f"   {med * 1000 / n:6.2f} us   {size / 1e6:6.2f} MB ({size / n:.0f} B/agent)"
            )


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except OSError:
        return 32768


def bench_agents_daemon(sizes: list[int], rounds: int) -> None:
    """A real varta-watch: n simulated pids beat once over plaintext UDP (pids
    must stay under the kernel's pid_max), then GET /agents, timed by the client."""
    cap = _pid_max() - 1001
    print(
        "\n## /agents from a real varta-watch (GET, whole body; client wall time"
        " = snapshot + Observer.agents() + render + transfer)"
    )
    print("agents      GET ms (median, min..max)      body")
    for want in sizes:
        n = min(want, cap)
        port = _free_udp_port()
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "varta", "watch", "--socket", os.path.join(tmp, "s"),
                    "--threshold-ms", "600000", "--udp-port", str(port),
                    "--udp-bind-addr", "127.0.0.1", "--i-accept-plaintext-udp",
                    "--prom-addr", "127.0.0.1:0",
                    "--prom-rate-limit-per-sec", "0", "--tracker-capacity", str(n + 16),
                    "--max-beat-rate", "0", "--global-beat-rate", "0", "--global-beat-burst", "0",
                ],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            try:
                assert proc.stdout is not None
                url = f"http://{proc.stdout.readline().strip()}/agents"
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    for i in range(n):
                        s.sendto(_varta.encode("ok", 1000 + i, 1, 1), ("127.0.0.1", port))
                        if i % 256 == 255:
                            time.sleep(0.001)  # stay within the socket buffer
                deadline = time.monotonic() + 60
                while True:
                    with urllib.request.urlopen(url + "?limit=0", timeout=30) as r:
                        tracked = json.loads(r.read())["observer"]["agents_total"]
                    if tracked >= n or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                times, size = [], 0
                for _ in range(rounds):
                    time.sleep(1.1)  # past the one-second body cache
                    t0 = time.perf_counter()
                    with urllib.request.urlopen(url, timeout=30) as r:
                        size = len(r.read())
                    times.append((time.perf_counter() - t0) * 1000)
                note = "" if n == want else f" (pid_max {cap + 1001} caps it at {n})"
                print(
                    f"{tracked:>9}   {statistics.median(times):9.1f} ({min(times):.1f}.."
                    f"{max(times):.1f}, n={rounds})   {size / 1e6:5.1f} MB{note}"
                )
            finally:
                proc.terminate()
                proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--rounds", type=int, default=5, help="rounds per size")
    args = ap.parse_args()
    bench_agents_render(args.sizes, args.rounds)
    bench_agents_daemon(args.sizes, args.rounds)


if __name__ == "__main__":
    main()
