"""Hang-capture time benchmark (printed, not a test; docs/finding-hangs.md).

One agent per variant hangs over and over (beats for 0.15 s, then is silent
for 0.5 s with a 100 ms threshold), so every silence is a ``hung`` stall and
a capture. Per capture, two figures:

* ``capture`` — the observer's own measure in the file (``capture_ns``):
  finding the announcement, signalling, waiting for the dump, reading
  ``/proc``;
* ``held``    — how long the ``Stall`` event was held back for its capture:
  observer time at delivery minus the stall's ``observer_ns`` (includes
  writing the file, fsync and the queue hand-off).

Variants:

* ``sdk``     — our SDK, hung in ``threading.Event.wait`` (the helper answers);
* ``sdk-gil`` — our SDK, hung in a C call that holds the GIL
  (``ctypes.PyDLL(None).usleep``): the dump comes, the asyncio/thread-name
  request cannot, so the capture waits out its 250 ms bound;
* ``proc``    — ``forensics=False``: ``/proc`` only, nobody signalled.

    python bench/forensics.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

import varta

THRESHOLD_MS = 100

AGENT = textwrap.dedent(
    """
    import ctypes, sys, threading, time, varta
    agent = varta.Varta.connect(sys.argv[1], forensics=sys.argv[2] != "proc")
    libc = ctypes.PyDLL(None)
    while True:
        end = time.monotonic() + 0.15
        while time.monotonic() < end:
            agent.beat()
            time.sleep(0.02)
        if sys.argv[2] == "sdk-gil":
            libc.usleep(500_000)
        else:
            threading.Event().wait(0.5)
    """
)


def run(variant: str, rounds: int) -> tuple[list[float], list[float], int]:
    d = tempfile.mkdtemp(prefix="varta-bench-fx-")
    sock = os.path.join(d, "o.sock")
    capture_ms: list[float] = []
    held_ms: list[float] = []
    methods: set[str] = set()
    with varta.Observer(
        sock, THRESHOLD_MS, forensics_dir=os.path.join(d, "fx"), forensics_keep=0
    ) as obs:
        p = subprocess.Popen([sys.executable, "-c", AGENT, sock, variant])
        try:
            deadline = time.monotonic() + 5 + rounds * 2.0
            while len(capture_ms) < rounds and time.monotonic() < deadline:
                for ev in obs.poll(0.5):
                    if not (isinstance(ev, varta.Stall) and ev.pid == p.pid and ev.forensics):
                        continue
                    held_ms.append((obs.now_ns() - ev.observer_ns) / 1e6)
                    with open(ev.forensics) as f:
                        doc: dict[str, Any] = json.load(f)
                    capture_ms.append(doc["capture_ns"] / 1e6)
                    methods.add(doc["method"])
        finally:
            p.kill()
            p.wait()
    expected = "proc" if variant == "proc" else "sdk"
    assert methods == {expected}, (variant, methods)
    return capture_ms, held_ms, len(capture_ms)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def line(name: str, xs: list[float]) -> str:
    return (
        f"{name:<8} n={len(xs):<3} p50 {statistics.median(xs):7.1f} ms  "
        f"p99 {pct(xs, 0.99):7.1f} ms  min {min(xs):6.1f}  max {max(xs):6.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40, help="captures per variant")
    args = ap.parse_args()
    print(f"hang capture time, threshold {THRESHOLD_MS} ms, {os.cpu_count()} CPUs")
    for variant, rounds in (("sdk", args.rounds), ("proc", args.rounds), ("sdk-gil", 10)):
        cap, held, _ = run(variant, rounds)
        print(f"[{variant}]")
        print("  " + line("capture", cap))
        print("  " + line("held", held))


if __name__ == "__main__":
    main()
