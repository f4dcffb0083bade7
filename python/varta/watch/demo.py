"""``python -m varta.watch.demo``: varta-watch plus a demo agent, printed as it happens.

Starts ``varta-watch`` on the default socket (``$XDG_RUNTIME_DIR/varta/varta.sock``,
else ``/tmp/varta-<uid>/varta.sock``) with a TSV event file, ``/metrics`` on a
free loopback port and a harmless recovery command (``echo``), then starts an
agent process that beats five times a second and now and then hangs for a
while, so a stall and its recovery show up too. Every event varta-watch
records is printed as one line. Ctrl-C (or SIGTERM) stops both processes.
"""

from __future__ import annotations

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
from typing import IO, Callable, Optional

from varta import StatusLike

USAGE = """usage: python -m varta demo [--socket PATH] [--threshold-ms MS] [--seconds N]

  --socket PATH      observer socket [default: $XDG_RUNTIME_DIR/varta/varta.sock,
                     else /tmp/varta-<uid>/varta.sock]
  --threshold-ms MS  silence before a stall [default: 1000]
  --seconds N        stop after N seconds [default: run until Ctrl-C]
"""

BEAT_INTERVAL_S = 0.2
BEATS_BEFORE_HANG = 15


class DemoError(Exception):
    pass


def default_socket() -> Path:
    """``$XDG_RUNTIME_DIR/varta/varta.sock``, else ``/tmp/varta-<uid>/varta.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "varta" / "varta.sock"
    return Path(tempfile.gettempdir()) / f"varta-{os.getuid()}" / "varta.sock"


def ensure_private_dir(path: Path) -> None:
    """Create the socket directory 0700, or check an existing one is ours and private."""
    try:
        path.mkdir(mode=0o700, parents=False)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.mkdir(mode=0o700, parents=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise DemoError(f"{path} must be a directory owned by uid {os.getuid()}")
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise DemoError(f"{path} is writable by others; remove it or pass --socket")


# --- the demo agent (a separate process) ------------------------------------------------


def agent_main(sock_path: str, threshold_ms: int) -> int:
    """Beat every 200 ms; every 15 beats hang for 2.5 thresholds; Ctrl-C ends quietly."""
    hang_s = 2.5 * threshold_ms / 1000.0
    sender = open_sender(sock_path)
    try:
        n = 0
        while True:
            n += 1
            status = "degraded" if n % 10 == 0 else "ok"
            sender(status, n)
            if n % BEATS_BEFORE_HANG == 0:
                print(f"demo agent {os.getpid()}: hanging for {hang_s:.1f} s", flush=True)
                time.sleep(hang_s)
            else:
                time.sleep(BEAT_INTERVAL_S)
    except KeyboardInterrupt:
        return 0


def open_sender(sock_path: str) -> Callable[[StatusLike, int], None]:
    """``send(status, payload)`` for one agent (``varta.Varta``); a failed send is
    printed, never raised (the observer may be restarting)."""
    import varta

    agent = varta.Varta.connect(sock_path)

    def send(status: StatusLike, payload: int) -> None:
        outcome = agent.beat(status, payload)
        if not outcome:
            print(f"demo agent: beat not sent: {outcome}", flush=True)

    return send


# --- the driver ---------------------------------------------------------------------------


def _pump(stream: IO[str], prefix: str) -> None:
    for line in stream:
        text = line.rstrip().removeprefix("varta-watch: ")
        print(f"{prefix}{text}", flush=True)


def _describe_row(cols: list[str]) -> str:
    _, kind, pid, nonce, status, payload = cols
    if kind == "beat":
        return f"beat   pid {pid} nonce {nonce} {status} payload {payload}"
    if kind == "stall":
        return f"STALL  pid {pid} (last nonce {nonce})"
    if kind == "eviction":
        return f"evicted pid {pid}"
    if kind == "mismatch":
        return f"refused frame claiming pid {pid}: {payload}"
    return f"{kind}: {payload}"


def _parse(argv: Sequence[str]) -> tuple[Path, int, Optional[float]]:
    sock: Optional[Path] = None
    threshold = 1000
    seconds: Optional[float] = None
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag in ("-h", "--help"):
            raise SystemExit(0)
        if flag not in ("--socket", "--threshold-ms", "--seconds") or not args:
            raise DemoError(f"bad argument {flag!r}")
        value = args.pop(0)
        if flag == "--socket":
            sock = Path(value)
        elif not value.isdigit():
            raise DemoError(f"{flag} expects an unsigned integer")
        elif flag == "--threshold-ms":
            threshold = int(value)
        else:
            seconds = float(value)
    return (sock or default_socket()), threshold, seconds


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--agent"]:
        return agent_main(args[1], int(args[2]))
    try:
        sock, threshold, seconds = _parse(args)
    except SystemExit:
        sys.stdout.write(USAGE)
        return 0
    except DemoError as exc:
        sys.stderr.write(f"varta demo: {exc}\n{USAGE}")
        return 2
    try:
        return _run(sock, threshold, seconds)
    except DemoError as exc:
        sys.stderr.write(f"varta demo: {exc}\n")
        return 1


def _run(sock: Path, threshold: int, seconds: Optional[float]) -> int:
    ensure_private_dir(sock.parent)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    with tempfile.TemporaryDirectory(prefix="varta-demo-") as tmp:
        tsv = Path(tmp) / "events.tsv"
        watch_argv = [
            sys.executable, "-m", "varta", "watch",
            "--socket", str(sock),
            "--threshold-ms", str(threshold),
            "--export-file", str(tsv),
            "--prom-addr", "127.0.0.1:0",
            "--recovery-exec", "echo recovery-would-restart-pid",
        ]  # fmt: skip
        watch = subprocess.Popen(
            watch_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        agent: Optional[subprocess.Popen[str]] = None
        try:
            assert watch.stdout is not None and watch.stderr is not None
            addr = watch.stdout.readline().strip()
            if not addr:
                err = watch.stderr.read().strip()
                watch.wait()
                raise DemoError(f"varta-watch did not start: {err or watch.returncode}")
            threading.Thread(
                target=_pump, args=(watch.stderr, "  [varta-watch] "), daemon=True
            ).start()
            threading.Thread(
                target=_pump, args=(watch.stdout, "  [recovery] "), daemon=True
            ).start()
            print(f"varta demo: varta-watch on {sock} (threshold {threshold} ms)")
            print(f"varta demo: metrics at http://{addr}/metrics")
            agent = subprocess.Popen(
                [sys.executable, "-m", "varta.watch.demo", "--agent", str(sock), str(threshold)],
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            assert agent.stdout is not None
            threading.Thread(target=_pump, args=(agent.stdout, "  [agent] "), daemon=True).start()
            print(
                f"varta demo: agent pid {agent.pid} beats every {BEAT_INTERVAL_S * 1000:.0f} ms "
                f"and hangs after every {BEATS_BEFORE_HANG} beats; Ctrl-C stops both",
                flush=True,
            )
            _tail(tsv, watch, seconds)
        except KeyboardInterrupt:
            pass
        finally:
            for proc in (agent, watch):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            code = _wait(watch)
            if agent is not None:
                _wait(agent)
        print(f"varta demo: stopped (varta-watch exit {code})", flush=True)
        return 0 if code == 0 else 1


def _tail(tsv: Path, watch: subprocess.Popen[str], seconds: Optional[float]) -> None:
    """Print the TSV rows varta-watch writes (it flushes every loop iteration)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    pending = ""
    with open(tsv, encoding="utf-8", errors="replace") as f:
        while watch.poll() is None and (deadline is None or time.monotonic() < deadline):
            chunk = f.read()
            if not chunk:
                time.sleep(0.05)
                continue
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                cols = line.split("\t")
                if len(cols) == 6:
                    print(f"  {_describe_row(cols)}", flush=True)


def _wait(proc: subprocess.Popen[str]) -> Optional[int]:
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
