"""``varta-watch``'s own liveness (``docs/observer.md#systemd-and-watchdogs``):
loop progress marks, the self-watchdog (and systemd's), the hardware watchdog
and the heartbeat file."""

from __future__ import annotations

import array
import contextlib
import errno
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator, Mapping

from . import notify
from .logsetup import log
from .startup import StartupError, _reason

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Optional

#: Self-watchdog limits per stage (docs/observer.md#systemd-and-watchdogs), seconds.
STAGE_LIMITS_S: Mapping[str, float] = {
    "drain_pending": 2.0,
    "poll": 2.0,
    "maintenance": 0.5,
    "recovery_reap": 1.0,
    "serve_pending": 2.0,
    "housekeeping": 1.0,
}
HEARTBEAT_ATTEMPTS = 16
HW_WATCHDOG_MIN_TIMEOUT_S = 30
# <linux/watchdog.h>: _IOR('W', 7, int), _IOWR('W', 6, int)
WDIOC_GETTIMEOUT = 0x80045707
WDIOC_SETTIMEOUT = 0xC0045706


# --- shared loop state (read by the watchdog and metrics threads) ---------------------


class LoopState:
    """Progress marks; plain attribute stores, so readers need no lock."""

    def __init__(self) -> None:
        now = time.monotonic()
        self.started = now
        self.iterations = 0
        self.last_iteration_end = now
        self.last_loop_unix = 0.0
        #: (stage, monotonic start) of the main thread's current stage, or None.
        self.stage: Optional[tuple[str, float]] = None
        #: Monotonic start of the metrics thread's current serve pass, or None.
        self.serve_started: Optional[float] = None

    def problem(self, now: float, limit_s: float) -> Optional[str]:
        """Why the self-watchdog should abort now (a stage over its limit is named first)."""
        current = self.stage
        if current is not None and now - current[1] > STAGE_LIMITS_S[current[0]]:
            return (
                f"stage {current[0]} has run for {now - current[1]:.1f} s "
                f"(limit {STAGE_LIMITS_S[current[0]]:g} s)"
            )
        serve = self.serve_started
        if serve is not None and now - serve > STAGE_LIMITS_S["serve_pending"]:
            return f"stage serve_pending has run for {now - serve:.1f} s"
        if now - self.last_iteration_end > limit_s:
            return f"no loop iteration completed for {now - self.last_iteration_end:.1f} s"
        return None


class SelfWatchdog:
    """Abort when the loop stops making progress; feed systemd's watchdog
    (docs/observer.md#systemd-and-watchdogs)."""

    def __init__(self, state: LoopState, limit_s: float, watchdog_usec: Optional[int]) -> None:
        self.state = state
        self.limit_s = limit_s
        self.notify_every_s = None if watchdog_usec is None else watchdog_usec / 2e6
        if watchdog_usec is None:
            self.tick_s = 0.5
        else:
            self.tick_s = min(0.5, max(0.025, watchdog_usec / 4e6))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="varta-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        last_ping = 0.0
        while not self._stop.wait(self.tick_s):
            now = time.monotonic()
            problem = self.state.problem(now, self.limit_s)
            if problem is not None and not self._stop.is_set():
                log.critical(f"self-watchdog: {problem}; aborting")
                for h in log.handlers:
                    h.flush()
                os.abort()
            if (
                self.notify_every_s is not None
                and self.state.iterations > 0
                and now - last_ping >= self.notify_every_s
            ):
                notify.sd_notify(notify.WATCHDOG)
                last_ping = now


class HwWatchdog:
    """A write-only character device kicked once per iteration
    (docs/observer.md#systemd-and-watchdogs)."""

    def __init__(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StartupError(f"--hw-watchdog {path}: {_reason(exc)}") from None
        self.fd = fd
        st = os.fstat(fd)
        if not stat.S_ISCHR(st.st_mode):
            os.close(fd)
            raise StartupError(f"--hw-watchdog {path}: not a character device")
        if sys.platform.startswith("linux"):
            import fcntl

            buf = array.array("i", [0])
            try:
                fcntl.ioctl(fd, WDIOC_GETTIMEOUT, buf, True)
                if buf[0] < HW_WATCHDOG_MIN_TIMEOUT_S:
                    buf[0] = HW_WATCHDOG_MIN_TIMEOUT_S
                    fcntl.ioctl(fd, WDIOC_SETTIMEOUT, buf, True)
            except OSError as exc:
                self.close()
                raise StartupError(
                    f"--hw-watchdog {path}: watchdog timeout ioctl failed: {_reason(exc)}"
                ) from None

    def kick(self) -> None:
        os.write(self.fd, b"\0")

    def close(self) -> None:
        """Magic close: ``V`` disarms the device on a clean exit."""
        if self.fd < 0:
            return
        try:
            os.write(self.fd, b"V")
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = -1


def write_heartbeat(path: str, content: bytes, seq: Iterator[int]) -> None:
    """Atomically replace *path*: exclusive-create ``PATH.<pid>.<seq>.tmp`` 0600, rename."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(HEARTBEAT_ATTEMPTS):
        tmp = f"{path}.{os.getpid()}.{next(seq)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue
        try:
            try:
                os.write(fd, content)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return
    raise OSError(errno.EEXIST, "no free temporary name", path)
