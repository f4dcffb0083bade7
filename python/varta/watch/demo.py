"""``python -m varta.watch.demo``: varta-watch plus a demo agent, printed as it happens.

Starts ``varta-watch`` on the default socket (``$XDG_RUNTIME_DIR/varta/varta.sock``,
else ``/tmp/varta-<uid>/varta.sock``) with a TSV event file, ``/metrics`` on a
free loopback port and a harmless recovery command (``echo``), then an agent
process (:class:`varta.Varta`) that beats every ``--interval`` seconds and,
after every 15 beats, hangs for 2.5 thresholds, so a stall and its recovery
show up too. Every event varta-watch records is printed as one line, and its
log lines and the recovery command's output with a prefix. Ctrl-C (or
SIGTERM, or ``--duration``) stops the agent — which sends its terminal frame —
then varta-watch.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Optional

from .._types import NONCE_TERMINAL, terminal_cause
from ..cli import argument_parser

HANG_EVERY = 15
POLL_S = 0.05


class DemoError(Exception):
    pass


def default_socket() -> Path:
    """``$XDG_RUNTIME_DIR/varta/varta.sock``, else ``/tmp/varta-<uid>/varta.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime) / "varta" / "varta.sock"
    return Path(tempfile.gettempdir()) / f"varta-{os.getuid()}" / "varta.sock"


def ensure_private_dir(path: Path) -> None:
    """Create the socket directory 0700, or check an existing one is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise DemoError(f"{path} must be a directory owned by uid {os.getuid()}")
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise DemoError(f"{path} is writable by others; remove it or pass --socket")


def _parser() -> argparse.ArgumentParser:
    p = argument_parser(
        "python -m varta demo",
        "Run varta-watch with a demo agent beating into it; print what it sees.",
    )
    p.add_argument("--socket", type=Path, default=None, help="observer socket path")
    p.add_argument("--threshold-ms", type=int, default=1000, help="stall threshold (1000)")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between beats (0.2)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--agent", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.interval <= 0 or args.threshold_ms < 10:
        sys.stderr.write("varta demo: --interval must be > 0 and --threshold-ms >= 10\n")
        return 2
    sock: Path = args.socket or default_socket()
    if args.agent:
        return agent_main(sock, args.interval, args.threshold_ms)
    try:
        return _run(sock, args.threshold_ms, args.interval, args.duration)
    except DemoError as exc:
        sys.stderr.write(f"varta demo: {exc}\n")
        return 1


# --- the demo agent (a separate process) ------------------------------------------------


def agent_main(sock: Path, interval: float, threshold_ms: int) -> int:
    """Beat every *interval*; every 15 beats hang for 2.5 thresholds. SIGTERM/SIGINT
    end it with the terminal frame (a clean exit, not a stall)."""
    import varta

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    hang_s = 2.5 * threshold_ms / 1000.0
    agent = varta.Varta.connect(sock)
    try:
        n = 0
        while True:
            n += 1
            outcome = agent.beat("degraded" if n % 10 == 0 else "ok", n)
            if not outcome:
                print(f"beat not sent: {outcome}", flush=True)
            if n % HANG_EVERY == 0:
                print(f"pid {os.getpid()} hangs for {hang_s:.1f} s", flush=True)
                time.sleep(hang_s)
            else:
                time.sleep(interval)
    except KeyboardInterrupt:
        agent.send_terminal()
        return 0
    finally:
        agent.close()


# --- the driver ---------------------------------------------------------------------------


def _pump(stream: IO[str], prefix: str) -> None:
    for line in stream:
        text = line.rstrip().removeprefix("varta-watch: ")
        print(f"{prefix}{text}", flush=True)


def describe_row(cols: Sequence[str]) -> str:
    """One TSV event row (``docs/observer.md#event-file``) as a line for people."""
    _, kind, pid, nonce, status, payload = cols
    if kind == "beat" and nonce == str(NONCE_TERMINAL):
        cause = terminal_cause(int(payload)).replace("_", " ")
        return f"exit   pid {pid}: terminal frame ({status}), announcing a {cause}"
    if kind == "beat":
        return f"beat   pid {pid} nonce {nonce} {status} payload {payload}"
    if kind == "stall":
        shown = "terminal" if nonce == str(NONCE_TERMINAL) else nonce
        return f"STALL  pid {pid} (last nonce {shown})"
    if kind == "verdict":
        return f"       verdict: {status}" + ("" if payload == "-" else f" ({payload})")
    if kind == "eviction":
        return f"evicted pid {pid}"
    if kind == "mismatch":
        return f"refused frame claiming pid {pid}: {payload}"
    return f"{kind}: {payload}"


class _Tail:
    """Complete lines appended to the TSV file since the last read."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, encoding="utf-8", errors="replace")
        self._pending = ""

    def print_new(self) -> bool:
        chunk = self._f.read()
        if not chunk:
            return False
        self._pending += chunk
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            cols = line.split("\t")
            if len(cols) == 6:
                print(f"  {describe_row(cols)}", flush=True)
        return True

    def close(self) -> None:
        self._f.close()


def _run(sock: Path, threshold_ms: int, interval: float, duration: Optional[float]) -> int:
    ensure_private_dir(sock.parent)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    with tempfile.TemporaryDirectory(prefix="varta-demo-") as tmp:
        tsv = Path(tmp) / "events.tsv"
        watch_argv = [
            sys.executable, "-m", "varta", "watch",
            "--socket", str(sock),
            "--threshold-ms", str(threshold_ms),
            "--export-file", str(tsv),
            "--prom-addr", "127.0.0.1:0",
            "--recovery-exec", "echo recovery-would-restart-pid",
        ]  # fmt: skip
        # Own process groups: Ctrl-C reaches only this driver, which then stops
        # the agent first (its terminal frame gets recorded) and varta-watch last.
        watch = subprocess.Popen(
            watch_argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        assert watch.stdout is not None and watch.stderr is not None
        agent: Optional[subprocess.Popen[str]] = None
        tail: Optional[_Tail] = None
        try:
            addr = watch.stdout.readline().strip()  # the bound IP:PORT, once set up
            if not addr:
                err = watch.stderr.read().strip()
                watch.wait()
                raise DemoError(f"varta-watch did not start: {err or watch.returncode}")
            tail = _Tail(tsv)
            for stream, prefix in (
                (watch.stderr, "  [varta-watch] "),
                (watch.stdout, "  [recovery] "),
            ):
                threading.Thread(target=_pump, args=(stream, prefix), daemon=True).start()
            print(f"varta demo: varta-watch on {sock} (threshold {threshold_ms} ms)")
            print(f"varta demo: metrics at http://{addr}/metrics")
            agent = subprocess.Popen(
                [sys.executable, "-m", "varta.watch.demo", "--agent", "--socket", str(sock),
                 "--interval", str(interval), "--threshold-ms", str(threshold_ms)],
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
                start_new_session=True,
            )  # fmt: skip
            assert agent.stdout is not None
            threading.Thread(target=_pump, args=(agent.stdout, "  [agent] "), daemon=True).start()
            print(
                f"varta demo: agent pid {agent.pid} beats every {interval * 1000:.0f} ms and "
                f"hangs after every {HANG_EVERY} beats; Ctrl-C stops both",
                flush=True,
            )
            deadline = None if duration is None else time.monotonic() + duration
            while watch.poll() is None and (deadline is None or time.monotonic() < deadline):
                if not tail.print_new():
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            pass
        finally:
            for proc in (agent, watch):  # agent first: its terminal frame is recorded
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                if proc is not None:
                    _wait(proc)
            if tail is not None:
                tail.print_new()  # varta-watch flushed the file on its way out
                tail.close()
        code = watch.returncode
        print(f"varta demo: stopped (varta-watch exit {code})", flush=True)
        return 0 if code == 0 else 1


def _wait(proc: subprocess.Popen[str]) -> Optional[int]:
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
