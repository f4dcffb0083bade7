"""Resident memory of a running ``varta-watch`` tracking 1,000 agents.

Printed, not asserted: the daemon with every subsystem on (Unix socket,
plaintext UDP, ``/metrics``, TSV export, recovery with its audit log) after
1,000 agents have beaten over UDP and ``/metrics`` has been scraped ten more
times a second apart with gzip, as Prometheus scrapes (steady state), next to
a bare CPython interpreter measured in the same run (the floor no Python
daemon can go under). Run it on a release build (bench/README.md).

    python bench/rss.py [--agents 1000] [--repeat 3] [--scrapes 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import varta


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of *pid* in KiB."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def wait_for(predicate: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.25)
    raise SystemExit(f"bench/rss.py: timed out waiting for {what}")


def scrape(port: int, gzip: bool = False) -> bytes:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if gzip:  # as Prometheus asks
        req.add_header("Accept-Encoding", "gzip")
    with urllib.request.urlopen(req, timeout=10) as r:
        return bytes(r.read())


def daemon_rss(agents: int, scrapes: int) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        udp, prom = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
        argv = [
            sys.executable, "-m", "varta", "watch",
            "--socket", os.path.join(tmp, "varta.sock"),
            "--threshold-ms", "600000", "--tracker-capacity", str(max(agents, 256)),
            "--udp-port", str(udp), "--udp-bind-addr", "127.0.0.1",
            "--i-accept-plaintext-udp",
            "--plaintext-udp-i-accept-recovery-on-unauthenticated-transport",
            "--prom-addr", f"127.0.0.1:{prom}",
            "--export-file", os.path.join(tmp, "events.tsv"),
            "--recovery-exec", "/bin/true {pid}",
            "--recovery-audit-file", os.path.join(tmp, "audit.log"),
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:

            def serving() -> bool:
                try:
                    scrape(prom)
                    return True
                except OSError:
                    return False

            wait_for(serving, 30, "/metrics")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for beat in range(1, 4):
                    for pid in range(10_000, 10_000 + agents):
                        s.sendto(varta.encode(0, pid, beat, beat), ("127.0.0.1", udp))
                    time.sleep(0.05)  # let a 1,000-datagram burst drain, not a sync point
            needle = b'varta_agents{status="ok"} %d\n' % agents

            def all_tracked() -> bool:
                try:
                    return needle in scrape(prom)
                except OSError:  # the scrape rate limit: try again
                    return False

            wait_for(all_tracked, 30, f"{agents} agents in /metrics")
            # Steady state, not the first look: more scrapes, each rendered
            # (the body is cached for 1 s) and gzipped, as Prometheus scrapes.
            for _ in range(scrapes):
                time.sleep(1.1)
                scrape(prom, gzip=True)
            return rss_kib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)


def bare_rss() -> tuple[int, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the interpreter is up
        return rss_kib(proc.pid)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scrapes", type=int, default=10, help="rendered scrapes before measuring")
    args = ap.parse_args()
    print(
        f"varta-watch RSS with {args.agents} UDP agents, /metrics, export, audit, recovery,"
        f" after {args.scrapes} more scrapes"
    )
    print(f"{'run':>4} {'daemon RSS':>11} {'daemon HWM':>11} {'bare CPython':>13} {'ratio':>6}")
    for i in range(args.repeat):
        d_rss, d_hwm = daemon_rss(args.agents, args.scrapes)
        b_rss, _ = bare_rss()
        print(
            f"{i + 1:>4} {d_rss / 1024:>8.1f} MB {d_hwm / 1024:>8.1f} MB "
            f"{b_rss / 1024:>10.1f} MB {d_rss / b_rss:>5.2f}x"
        )


if __name__ == "__main__":
    main()
