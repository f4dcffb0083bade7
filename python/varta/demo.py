"""``python -m varta demo``: a demo agent beating into a listener that prints
decoded frames (interim main job; the daemon issue swaps the listener for
``varta-watch``).

The listener binds a Unix datagram socket (mode 0600, in a private 0700
directory), starts a child process that beats through :class:`varta.Varta`
every ``--interval`` seconds, and prints every frame it receives until Ctrl-C,
``--duration`` seconds, or ``--count`` regular frames. On the way out it stops
the agent with SIGTERM; the agent answers with its terminal frame
(:meth:`varta.Varta.send_terminal`), which the listener prints too.
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Optional, Sequence

from ._types import DecodeError, Status
from ._varta import Frame, decode


def default_socket_path() -> Path:
    """``$XDG_RUNTIME_DIR/varta-demo/varta.sock``, else ``/tmp/varta-demo-<uid>/varta.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime) / "varta-demo" / "varta.sock"
    return Path(tempfile.gettempdir()) / f"varta-demo-{os.getuid()}" / "varta.sock"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m varta demo",
        description="Run a demo agent beating into a listener that prints decoded frames.",
    )
    p.add_argument("--socket", type=Path, default=None, help="listener socket path")
    p.add_argument(
        "--interval", type=float, default=0.2, help="seconds between beats (default 0.2)"
    )
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--count", type=int, default=None, help="stop after this many regular frames")
    p.add_argument("--agent", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    path: Path = args.socket or default_socket_path()
    if args.interval <= 0:
        sys.stderr.write("varta demo: --interval must be > 0\n")
        return 2
    if args.agent:
        return run_agent(path, args.interval)
    return run_listener(path, args.interval, args.duration, args.count)


# --- listener ---------------------------------------------------------------------------


def _prepare_socket(path: Path) -> socket.socket:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale socket from an earlier run
        else:
            raise OSError(errno.EADDRINUSE, "a listener is already running", str(path))
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return sock


def describe(frame: Frame) -> str:
    status = Status(frame.status).name
    if frame.is_terminal:
        return f"pid={frame.pid} {status} TERMINAL ts={frame.timestamp / 1e9:.3f}s (clean exit)"
    return (
        f"pid={frame.pid} {status:<8} nonce={frame.nonce:<5} "
        f"ts={frame.timestamp / 1e9:8.3f}s payload={frame.payload}"
    )


def _print(line: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    sys.stdout.write(f"{stamp} {line}\n")
    sys.stdout.flush()


def run_listener(
    path: Path, interval: float, duration: Optional[float], count: Optional[int]
) -> int:
    sock = _prepare_socket(path)
    stat = path.stat()
    stop = threading.Event()

    def on_signal(signum: int, _frame: Optional[FrameType]) -> None:
        stop.set()

    old_term = signal.signal(signal.SIGTERM, on_signal)
    agent: Optional[subprocess.Popen[bytes]] = None
    regular = 0
    try:
        _print(f"listening on {path} (mode 0600); Ctrl-C to stop")
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "varta",
                "demo",
                "--agent",
                "--socket",
                str(path),
                "--interval",
                str(interval),
            ]
        )
        _print(f"started demo agent pid={agent.pid}, one beat every {interval * 1000:.0f} ms")
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set():
            if count is not None and regular >= count:
                break
            wait = 0.25
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait = min(wait, left)
            ready, _, _ = select.select([sock], [], [], wait)
            if ready:
                regular += _show(sock.recv(64))
            elif agent.poll() is not None:
                _print(f"demo agent exited with status {agent.returncode}")
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if agent is not None:
            _stop_agent(agent, sock)
        sock.close()
        _unlink_if_ours(path, stat)
    _print(f"stopped after {regular} beats")
    return 0


def _show(data: bytes) -> int:
    """Print one datagram; 1 if it was a regular beat."""
    try:
        frame = decode(data)
    except DecodeError as e:
        _print(f"undecodable datagram ({len(data)} bytes): {e.kind}")
        return 0
    _print(describe(frame))
    return 0 if frame.is_terminal else 1


def _stop_agent(agent: subprocess.Popen[bytes], sock: socket.socket) -> None:
    """SIGTERM the agent and print what it sends on the way out."""
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([sock], [], [], min(left, 0.1))
        if ready:
            _show(sock.recv(64))
        elif agent.poll() is not None:
            break
    if agent.poll() is None:
        agent.kill()
    agent.wait()


def _unlink_if_ours(path: Path, stat: os.stat_result) -> None:
    try:
        now = path.stat()
        if (now.st_dev, now.st_ino) == (stat.st_dev, stat.st_ino):
            path.unlink()
    except FileNotFoundError:
        pass


# --- agent ------------------------------------------------------------------------------


def run_agent(path: Path, interval: float) -> int:
    from ._varta import Varta

    stop = threading.Event()

    def on_signal(signum: int, _frame: Optional[FrameType]) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the listener decides when we stop
    parent = os.getppid()
    agent = Varta.connect(path)
    agent.set_reconnect_after(5)
    beats = 0
    misses = 0
    next_at = time.monotonic()
    with agent:
        while not stop.is_set() and os.getppid() == parent:
            beats += 1
            status = Status.DEGRADED if beats % 10 == 0 else Status.OK
            outcome = agent.beat(status, beats)
            misses = 0 if outcome else misses + 1
            if misses >= 25:  # the listener is gone
                return 1
            next_at += interval
            stop.wait(max(0.0, next_at - time.monotonic()))
        agent.close(final=True)  # terminal frame: this exit is expected
    return 0
