"""A fleet of agent processes for end-to-end tests and benchmarks.

``python fleet.py SOCKET N INTERVAL_MS`` forks N agents; each connects to
SOCKET with our SDK and beats every INTERVAL_MS until it gets SIGTERM (then
it signs off cleanly). The parent prints the agents' pids, one per line,
then ``ready``, and waits for them; SIGTERM to the parent ends them all.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def agent(path: str, interval: float) -> None:
    import varta

    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with varta.Varta.connect(path) as a:
        while not stop:
            a.beat()
            time.sleep(interval)


def main() -> int:
    path, n, interval_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                agent(path, interval_ms / 1000)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        print(pid)
    print("ready", flush=True)

    def on_term(signum: int, frame: object) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_term)
    for pid in pids:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except ChildProcessError:
                break
            except InterruptedError:
                continue
    return 0


if __name__ == "__main__":
    sys.exit(main())
