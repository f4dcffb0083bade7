"""The SDK side of hang forensics (``docs/finding-hangs.md#the-sdk-channel``).

Set up once per process by ``Varta.connect`` (and the other ``connect_*``
constructors) unless ``forensics=False`` or ``VARTA_FORENSICS=0``:

* a memfd named ``varta-forensics`` (close-on-exec) whose first line
  announces the channel to the observer::

      varta-forensics v1 pid=<pid> signal=<n> tid=<helper tid> request_fd=<fd>

* :func:`faulthandler.register` on that real-time signal, writing every
  thread's traceback into the memfd. The handler is async-signal-safe and
  needs no GIL, so it works while a thread holds the GIL inside C code;
* a daemon helper thread (the ``tid`` of the header, the thread the
  observer signals, so the stuck thread is never interrupted) that blocks on
  a pipe; a byte the observer writes to the pipe's write end
  (``request_fd``) asks it for the stacks of the asyncio tasks of every loop
  in :data:`varta._loops.WATCHED_LOOPS` and the thread names, appended to
  the memfd when it can get the GIL.

The observer signals a process only after it found the memfd among the
process's descriptors and read its own pid in the header
(``docs/security.md#forensics-signals``). The signal is one the process
left at its default action: a handler the application installed is never
replaced (another candidate is taken, or the channel is not set up).

A forked child gets a channel of its own (``os.register_at_fork``); exec
closes the memfd and resets the handler, so the announcement stays true.
"""

from __future__ import annotations

import faulthandler
import io
import os
import signal
import sys
import threading

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    import asyncio
    from typing import Optional

#: Written in front of the asyncio section and after it (the observer stops
#: waiting at the end marker).
TASKS_BEGIN = b"varta-asyncio-tasks begin\n"
TASKS_END = b"varta-asyncio-tasks end\n"
#: The asyncio section is cut at this size.
TASKS_MAX_BYTES = 64 * 1024

_lock = threading.Lock()
_state: Optional[_Channel] = None
_fork_hook = False


class _Channel:
    def __init__(self, pid: int, signum: int, memfd: int, rfd: int, wfd: int, tid: int) -> None:
        self.pid = pid
        self.signum = signum
        self.memfd = memfd
        self.rfd = rfd
        self.wfd = wfd
        self.tid = tid


def _enabled_by_env() -> bool:
    return os.environ.get("VARTA_FORENSICS", "1").strip() not in ("0", "false", "no", "off")


def _candidates() -> list[int]:
    lo = int(signal.SIGRTMIN)
    hi = int(signal.SIGRTMAX)
    # Away from both ends: libraries tend to take SIGRTMIN(+1) and SIGRTMAX(-1).
    return [s for s in range(lo + 6, lo + 12) if s < hi - 2]


def _free_signal() -> Optional[int]:
    from . import _varta

    for s in _candidates():
        try:
            python_default = signal.getsignal(s) == signal.SIG_DFL
        except ValueError:
            continue
        if python_default and _varta._signal_is_default(s):
            return s
    return None


def channel() -> Optional[tuple[int, int]]:
    """``(signal, helper tid)`` of this process's channel, or None."""
    st = _state
    if st is None or st.pid != os.getpid():
        return None
    return st.signum, st.tid


def install() -> bool:
    """Set up the channel for this process (idempotent); False when it is
    off (``VARTA_FORENSICS=0``), unsupported here, or no signal is free."""
    global _state, _fork_hook
    if sys.platform != "linux" or not hasattr(os, "memfd_create"):
        return False
    if not _enabled_by_env():
        return False
    with _lock:
        if _state is not None and _state.pid == os.getpid():
            return True
        signum = _free_signal()
        if signum is None:
            return False
        _state = _open(signum)
        if not _fork_hook:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook = True
        return True


def _open(signum: int) -> _Channel:
    memfd = os.memfd_create("varta-forensics", os.MFD_CLOEXEC)
    rfd, wfd = os.pipe()  # both close-on-exec (PEP 446)
    started = threading.Event()
    tid: list[int] = []

    def serve() -> None:
        tid.append(threading.get_native_id())
        started.set()
        _serve(rfd, memfd)

    t = threading.Thread(target=serve, name="varta-forensics", daemon=True)
    t.start()
    started.wait()
    header = f"varta-forensics v1 pid={os.getpid()} signal={signum} tid={tid[0]} request_fd={wfd}\n"
    os.write(memfd, header.encode())
    faulthandler.register(signum, file=memfd, all_threads=True, chain=False)
    return _Channel(os.getpid(), signum, memfd, rfd, wfd, tid[0])


def _after_fork_in_child() -> None:
    """The child inherited the parent's handler and descriptors, whose header
    names the parent: drop them and announce a channel of its own."""
    global _state
    st = _state
    if st is None:
        return
    _state = None
    try:
        faulthandler.unregister(st.signum)
    except (RuntimeError, ValueError):
        pass
    for fd in (st.memfd, st.rfd, st.wfd):
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        install()
    except OSError:
        pass


def _serve(rfd: int, memfd: int) -> None:
    while True:
        try:
            data = os.read(rfd, 64)
        except OSError:
            return
        if not data:
            return
        try:
            text = _tasks_report()
        except Exception as exc:
            text = f"asyncio tasks unavailable: {exc!r}\n"
        body = text.encode("utf-8", "replace")
        if len(body) > TASKS_MAX_BYTES:
            body = body[:TASKS_MAX_BYTES] + b"\n[cut at 64 KiB]\n"
        try:
            os.write(memfd, TASKS_BEGIN + body + TASKS_END)
        except OSError:
            return


def _tasks_report() -> str:
    out = io.StringIO()
    for t in threading.enumerate():
        ident = t.ident or 0
        out.write(f"thread 0x{ident:016x} native_id={t.native_id} name={t.name!r}\n")
    loops = _watched_loops()
    if not loops:
        return out.getvalue()
    import asyncio

    for n, loop in enumerate(loops):
        tasks = None
        for _ in range(3):  # all_tasks can race with a task set changing size
            try:
                tasks = asyncio.all_tasks(loop)
                break
            except RuntimeError:
                continue
        if tasks is None:
            out.write(f"loop {n}: tasks unavailable\n")
            continue
        out.write(f"loop {n} ({type(loop).__name__}): {len(tasks)} tasks\n")
        for task in tasks:
            task.print_stack(file=out)
    return out.getvalue()


def _watched_loops() -> list[asyncio.AbstractEventLoop]:
    """The loops varta.aio watches (only if something imported it: the
    channel itself never imports asyncio)."""
    mod = sys.modules.get("varta._loops")
    if mod is None:
        return []
    loops: list[asyncio.AbstractEventLoop] = list(getattr(mod, "WATCHED_LOOPS", ()))
    return loops
