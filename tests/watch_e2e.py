"""Helpers for end-to-end tests: real ``varta-watch`` and agent processes.

Readiness comes from the daemon itself: ``READY=1`` on a test ``NOTIFY_SOCKET``
(and the ``IP:PORT`` first stdout line with ``--prom-addr``); progress from the
files it writes, polled against a deadline.

``VARTA_E2E_WATCH_CMD`` (a shell-quoted command line) runs the suite against
another build of the daemon; the default is ``python -m varta watch``.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

WATCH_CMD = shlex.split(os.environ.get("VARTA_E2E_WATCH_CMD", "")) or [
    sys.executable,
    "-m",
    "varta",
    "watch",
]
TOKEN_HEX = "5a" * 32

# An agent: beats every argv[2] ms into argv[1] until killed.
AGENT_CODE = """
import sys, time, varta
agent = varta.Varta.connect(sys.argv[1])
while True:
    agent.beat("ok", 7)
    time.sleep(int(sys.argv[2]) / 1000)
"""

# A recovery program: appends its arguments as one line to argv[1].
RECORDER_CODE = """
import sys
with open(sys.argv[1], "a") as f:
    f.write(" ".join(sys.argv[2:]) + "\\n")
"""

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], Optional[T]], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def no_core() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Watch:
    """One ``varta-watch`` process, started and waited for (``READY=1``)."""

    def __init__(
        self,
        tmp: Path,
        *args: str,
        threshold_ms: int = 200,
        env: Optional[dict[str, str]] = None,
        wait_ready: bool = True,
        preexec: Optional[Callable[[], None]] = None,
        log_file: Optional[Path] = None,
    ) -> None:
        """``log_file``: stderr goes there (readable while the daemon runs)
        instead of a pipe; :attr:`stderr` holds it once the daemon ended."""
        self.tmp = tmp
        self.sock = tmp / "watch.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path = tmp / f"notify-{time.monotonic_ns()}"
        self.notify.bind(str(self.notify_path))
        full_env = dict(os.environ)
        full_env.pop("WATCHDOG_USEC", None)
        full_env.update(env or {})
        full_env["NOTIFY_SOCKET"] = str(self.notify_path)
        self.argv = [*WATCH_CMD, "--socket", str(self.sock), "--threshold-ms", str(threshold_ms)]
        self.argv += args
        self.log_file = log_file
        self._log = None if log_file is None else open(log_file, "w")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if self._log is None else self._log,
            text=True,
            env=full_env,
            preexec_fn=no_core if preexec is None else lambda: (no_core(), preexec()),
        )
        self.stderr = ""
        self.addr: Optional[str] = None
        if wait_ready:
            self.wait_notify("READY=1")
            if "--prom-addr" in args:
                assert self.proc.stdout is not None
                self.addr = self.proc.stdout.readline().strip()

    def wait_notify(self, message: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.notify.settimeout(0.2)
            try:
                got = self.notify.recv(4096).decode()
            except socket.timeout:
                if self.proc.poll() is not None:
                    _, err = self.proc.communicate()
                    raise AssertionError(
                        f"varta-watch exited {self.proc.returncode} before {message}: {err}"
                    ) from None
                continue
            if message in got.split("\n"):
                return
        raise AssertionError(f"no {message} from varta-watch")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for the process to end by itself; returns its exit status."""
        _, self.stderr = self.proc.communicate(timeout=timeout)
        self.notify.close()
        if self._log is not None and self.log_file is not None:
            self._log.close()
            self.stderr = self.log_file.read_text()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self.notify.close()


class Agent:
    def __init__(self, sock: Path, interval_ms: int = 40, cgroup: Optional[Path] = None) -> None:
        """*cgroup*: a cgroup2 directory the agent joins before it execs (so its
        first beat already comes from inside; its name is the agent's unit)."""

        def join_cgroup() -> None:
            assert cgroup is not None
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

        self.proc = subprocess.Popen(
            [sys.executable, "-c", AGENT_CODE, str(sock), str(interval_ms)],
            stdout=subprocess.DEVNULL,
            preexec_fn=None if cgroup is None else join_cgroup,
        )
        self.pid = self.proc.pid

    def stop_process(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def cont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()


def tsv_rows(path: Path) -> list[list[str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line.split("\t") for line in text.splitlines() if line]


def token_file(tmp: Path, text: str = TOKEN_HEX) -> Path:
    path = tmp / "prom-token"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def http_request(addr: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send *data* to ``IP:PORT`` / ``[IPv6]:PORT``; everything read until EOF or reset."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def http_get(addr: str, token: Optional[str] = TOKEN_HEX, path: str = "/metrics") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return http_request(addr, f"GET {path} HTTP/1.1\r\nHost: varta\r\n{auth}\r\n".encode())


def audit_rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()[1:] if line]
