"""Crash hooks (`varta.panic`) in real child processes.

Each test starts a fresh interpreter that installs a hook against a plain
Python datagram socket bound here, makes itself crash, and exits. Only after
the child has exited is the receiver drained (non-blocking), so "exactly one
frame" means exactly one datagram was ever sent.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

import varta
import varta.panic
from varta import NONCE_TERMINAL, Status
from varta.panic import PanicInstallError, SocketBind

CHILD_TIMEOUT = 60


@dataclass
class Child:
    pid: int
    returncode: int
    stdout: str
    stderr: str


def run_child(code: str, *, env_extra: dict[str, str] | None = None) -> Child:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
    env.update(env_extra or {})
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    return Child(proc.pid, proc.returncode, out, err)


class Receiver:
    def __init__(self, sock: socket.socket, target: object) -> None:
        self.sock = sock
        self.target = target

    def drain(self) -> list[bytes]:
        """Every datagram queued right now."""
        self.sock.setblocking(False)
        out = []
        try:
            while True:
                out.append(self.sock.recv(4096))
        except BlockingIOError:
            pass
        return out

    def wait_drain(self, timeout: float = 10.0) -> list[bytes]:
        """Wait (bounded) for a first datagram, then drain. For UDP, where a
        send may reach the receive queue after the sender has exited."""
        self.sock.settimeout(timeout)
        try:
            first = [self.sock.recv(4096)]
        except socket.timeout:  # TimeoutError from 3.10 on
            return []
        return first + self.drain()

    def frames(self) -> list[varta.Frame]:
        return [varta.decode(d) for d in self.drain()]


@pytest.fixture
def uds(tmp_path: Path) -> Iterator[Receiver]:
    path = tmp_path / "obs.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    yield Receiver(s, str(path))
    s.close()


@pytest.fixture
def uds2(tmp_path: Path) -> Iterator[Receiver]:
    path = tmp_path / "obs2.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    yield Receiver(s, str(path))
    s.close()


def assert_terminal(frame: varta.Frame, pid: int) -> None:
    assert frame.status == Status.CRITICAL
    assert frame.nonce == NONCE_TERMINAL
    assert frame.is_terminal
    # A crash hook's cause: 0 (an exception) or the signal it ran for.
    assert varta.terminal_cause(frame.payload) != "clean_exit"
    assert frame.pid == pid
    assert 1 <= frame.timestamp < 2**64 - 1


def one_frame(rx: Receiver, pid: int) -> varta.Frame:
    frames = rx.frames()
    assert len(frames) == 1, frames
    assert_terminal(frames[0], pid)
    return frames[0]


# --- uncaught exceptions ----------------------------------------------------


def test_main_thread_exception_sends_one_frame_and_chains(uds: Receiver) -> None:
    c = run_child(
        f"""
        import sys, varta.panic
        def earlier_hook(t, v, tb):
            print("EARLIER-HOOK", t.__name__, file=sys.stderr)
            sys.__excepthook__(t, v, tb)
        sys.excepthook = earlier_hook
        varta.panic.install_excepthook_uds({uds.target!r})
        raise ValueError("boom-main")
        """
    )
    assert c.returncode == 1
    assert "EARLIER-HOOK ValueError" in c.stderr
    assert "Traceback (most recent call last)" in c.stderr
    assert "ValueError: boom-main" in c.stderr
    one_frame(uds, c.pid)


def test_worker_thread_exception_sends_one_frame_and_process_continues(
    uds: Receiver,
) -> None:
    c = run_child(
        f"""
        import threading, varta.panic
        varta.panic.install_excepthook_uds({uds.target!r})
        def work():
            raise RuntimeError("boom-thread")
        t = threading.Thread(target=work)
        t.start()
        t.join()
        print("STILL-ALIVE")
        """
    )
    assert c.returncode == 0, c.stderr
    assert "STILL-ALIVE" in c.stdout
    assert "RuntimeError: boom-thread" in c.stderr  # threading's own hook still ran
    one_frame(uds, c.pid)


def test_two_thread_crashes_have_strictly_increasing_timestamps(uds: Receiver) -> None:
    c = run_child(
        f"""
        import threading, varta.panic
        varta.panic.install_excepthook_uds({uds.target!r})
        def work():
            raise RuntimeError("x")
        for _ in range(2):
            t = threading.Thread(target=work)
            t.start()
            t.join()
        """
    )
    assert c.returncode == 0, c.stderr
    frames = uds.frames()
    assert len(frames) == 2
    for f in frames:
        assert_terminal(f, c.pid)
    assert frames[1].timestamp > frames[0].timestamp


def test_fire_reports_whether_a_frame_went_out(uds: Receiver) -> None:
    c = run_child(
        f"""
        import varta.panic
        print(varta.panic.is_installed(), varta.panic.fire())
        varta.panic.install_excepthook_uds({uds.target!r})
        print(varta.panic.is_installed(), varta.panic.fire())
        """
    )
    assert c.returncode == 0, c.stderr
    assert c.stdout.split() == ["False", "False", "True", "True"]
    one_frame(uds, c.pid)


# --- fatal signals ----------------------------------------------------------

FATAL_CASES = {
    "segv-real-fault": ("import ctypes; ctypes.string_at(0)", signal.SIGSEGV),
    "segv-kill": ("os.kill(os.getpid(), signal.SIGSEGV)", signal.SIGSEGV),
    "abort": ("os.abort()", signal.SIGABRT),
    "bus": ("os.kill(os.getpid(), signal.SIGBUS)", signal.SIGBUS),
    "ill": ("os.kill(os.getpid(), signal.SIGILL)", signal.SIGILL),
    "fpe": ("os.kill(os.getpid(), signal.SIGFPE)", signal.SIGFPE),
}


@pytest.mark.parametrize("case", sorted(FATAL_CASES))
def test_fatal_signal_sends_one_frame_and_dies_by_the_signal(uds: Receiver, case: str) -> None:
    crash, sig = FATAL_CASES[case]
    c = run_child(
        f"""
        import os, signal, varta.panic
        varta.panic.install_excepthook_uds({uds.target!r})
        {crash}
        print("NOT-REACHED")
        """
    )
    assert c.returncode == -sig, c.stderr
    assert "NOT-REACHED" not in c.stdout
    one_frame(uds, c.pid)


def test_main_thread_stack_overflow_still_sends_a_frame(uds: Receiver) -> None:
    # C-level recursion until the stack runs out. The handler can only run
    # on the alternate signal stack the install gave the main thread. (An
    # interpreter that guards its C stack raises RecursionError instead; that
    # ends in the excepthook and also yields exactly one frame.)
    c = run_child(
        f"""
        import sys, varta.panic
        varta.panic.install_excepthook_uds({uds.target!r})
        sys.setrecursionlimit(10**8)
        def f(n):
            return list(map(f, [n]))
        f(0)
        """
    )
    assert c.returncode in (-signal.SIGSEGV, 1), c.stderr[-2000:]
    if c.returncode == 1:
        assert "RecursionError" in c.stderr
    one_frame(uds, c.pid)


@pytest.mark.parametrize("order", ["faulthandler-first", "faulthandler-after", "keyword"])
def test_faulthandler_chains_and_socket_gets_only_vlp(uds: Receiver, order: str) -> None:
    install = {
        "faulthandler-first": f"faulthandler.enable(); vp.install_excepthook_uds({uds.target!r})",
        "faulthandler-after": f"vp.install_excepthook_uds({uds.target!r}); faulthandler.enable()",
        "keyword": f"vp.install_excepthook_uds({uds.target!r}, faulthandler_signals=True)",
    }[order]
    c = run_child(
        f"""
        import ctypes, faulthandler, varta.panic as vp
        {install}
        ctypes.string_at(0)
        """
    )
    assert c.returncode == -signal.SIGSEGV
    # faulthandler's traceback went to stderr ...
    assert "Fatal Python error: Segmentation fault" in c.stderr
    assert "string_at" in c.stderr
    # ... and the observer socket got exactly one datagram, a valid VLP frame.
    data = uds.drain()
    assert len(data) == 1
    assert len(data[0]) == varta.FRAME_LEN
    assert_terminal(varta.decode(data[0]), c.pid)


def test_fatal_signals_can_be_left_alone(uds: Receiver) -> None:
    c = run_child(
        f"""
        import os, signal, varta.panic
        varta.panic.install_excepthook_uds({uds.target!r}, fatal_signals=False)
        os.kill(os.getpid(), signal.SIGSEGV)
        """
    )
    assert c.returncode == -signal.SIGSEGV
    assert uds.frames() == []


# --- install / re-install ---------------------------------------------------


def test_missing_path_raises_socketbind_and_changes_nothing(tmp_path: Path) -> None:
    before = (sys.excepthook, threading.excepthook, varta.panic.is_installed())
    missing = tmp_path / "nobody-listens.sock"
    with pytest.raises(SocketBind) as ei:
        varta.panic.install_excepthook_uds(missing)
    assert isinstance(ei.value, PanicInstallError)
    assert isinstance(ei.value.__cause__, FileNotFoundError)
    assert str(missing) in str(ei.value)
    assert (sys.excepthook, threading.excepthook, varta.panic.is_installed()) == before


def test_failed_reinstall_keeps_the_previous_target(uds: Receiver, tmp_path: Path) -> None:
    missing = tmp_path / "missing.sock"
    c = run_child(
        f"""
        import varta.panic
        varta.panic.install_excepthook_uds({uds.target!r})
        hook = __import__("sys").excepthook
        try:
            varta.panic.install_excepthook_uds({str(missing)!r})
        except varta.panic.SocketBind:
            print("SOCKETBIND")
        assert __import__("sys").excepthook is hook
        raise ValueError("after failed reinstall")
        """
    )
    assert c.returncode == 1
    assert "SOCKETBIND" in c.stdout
    one_frame(uds, c.pid)


def test_reinstall_replaces_the_target_without_double_emission(
    uds: Receiver, uds2: Receiver
) -> None:
    c = run_child(
        f"""
        import sys, threading, varta.panic
        varta.panic.install_excepthook_uds({uds.target!r})
        varta.panic.install_excepthook_uds({uds.target!r})
        varta.panic.install_excepthook_uds({uds2.target!r})
        t = threading.Thread(target=lambda: 1 / 0)
        t.start()
        t.join()
        raise ValueError("main")
        """
    )
    assert c.returncode == 1
    assert uds.frames() == []
    frames = uds2.frames()
    assert len(frames) == 2  # one per crash (thread, then main), not per install
    for f in frames:
        assert_terminal(f, c.pid)
    assert frames[1].timestamp > frames[0].timestamp


def test_exit_signals_argument_is_validated_before_anything_changes(tmp_path: Path) -> None:
    before = (sys.excepthook, signal.getsignal(signal.SIGTERM))
    with pytest.raises(ValueError, match="SIGSEGV"):
        varta.panic.install_excepthook_uds(tmp_path / "x.sock", exit_signals=[signal.SIGSEGV])
    assert (sys.excepthook, signal.getsignal(signal.SIGTERM)) == before


# --- fork -------------------------------------------------------------------


def test_forked_child_reports_its_own_pid_and_can_reinstall(uds: Receiver, uds2: Receiver) -> None:
    c = run_child(
        f"""
        import os, threading, varta.panic
        varta.panic.install_excepthook_uds({uds.target!r})
        pid = os.fork()
        if pid == 0:
            # Inherited hooks and socket: a thread crash reports the child's pid.
            t = threading.Thread(target=lambda: 1 / 0)
            t.start()
            t.join()
            # Installing again in the child works (no lock inherited held).
            varta.panic.install_excepthook_uds({uds2.target!r})
            os.abort()
        _, status = os.waitpid(pid, 0)
        print(pid, os.WIFSIGNALED(status) and os.WTERMSIG(status))
        raise ValueError("parent")
        """
    )
    assert c.returncode == 1
    grandchild, termsig = (int(x) for x in c.stdout.split())
    assert termsig == signal.SIGABRT
    frames = uds.frames()
    assert [f.pid for f in frames] == [grandchild, c.pid]
    for f in frames:
        assert f.status == Status.CRITICAL and f.nonce == NONCE_TERMINAL
    one_frame(uds2, grandchild)


# --- run / guard --------------------------------------------------------------


def test_run_reports_once_even_when_the_exception_stays_uncaught(uds: Receiver) -> None:
    c = run_child(
        f"""
        import varta.panic
        varta.panic.install_excepthook_uds({uds.target!r})
        def main(a, *, b):
            raise LookupError(f"{{a}}-{{b}}")
        varta.panic.run(main, 1, b=2)
        """
    )
    assert c.returncode == 1
    assert "LookupError: 1-2" in c.stderr
    one_frame(uds, c.pid)


def test_guard_reports_raising_bodies_and_reraises(uds: Receiver) -> None:
    c = run_child(
        f"""
        import varta.panic as vp
        vp.install_excepthook_uds({uds.target!r})
        assert vp.run(lambda x: x * 2, 21) == 42
        with vp.guard():
            pass
        try:
            with vp.guard():
                raise KeyError("k")
        except KeyError as e:
            print("CAUGHT", e)

        @vp.guard()
        def decorated():
            raise OSError("d")
        try:
            decorated()
        except OSError:
            print("CAUGHT-DECORATED")

        try:
            with vp.guard():
                raise SystemExit(0)  # a clean exit is no crash
        except SystemExit:
            print("CLEAN-EXIT")
        """
    )
    assert c.returncode == 0, c.stderr
    assert c.stdout.split("\n")[:3] == ["CAUGHT 'k'", "CAUGHT-DECORATED", "CLEAN-EXIT"]
    frames = uds.frames()
    assert len(frames) == 2
    for f in frames:
        assert_terminal(f, c.pid)
    assert frames[1].timestamp > frames[0].timestamp


def test_guard_reports_failing_sys_exit(uds: Receiver) -> None:
    c = run_child(
        f"""
        import varta.panic as vp
        vp.install_excepthook_uds({uds.target!r})
        with vp.guard():
            raise SystemExit(3)
        """
    )
    assert c.returncode == 3
    one_frame(uds, c.pid)


# --- exit signals -------------------------------------------------------------


def test_sigterm_with_default_action_sends_frame_then_dies(uds: Receiver) -> None:
    c = run_child(
        f"""
        import os, signal, varta.panic
        varta.panic.install_excepthook_uds({uds.target!r}, exit_signals=True)
        os.kill(os.getpid(), signal.SIGTERM)
        print("NOT-REACHED")
        """
    )
    assert c.returncode == -signal.SIGTERM
    assert "NOT-REACHED" not in c.stdout
    one_frame(uds, c.pid)


def test_sigint_keyboardinterrupt_is_reported_once(uds: Receiver) -> None:
    c = run_child(
        f"""
        import os, signal, varta.panic
        # Python's usual SIGINT handler (a shell starting us in the
        # background would have left SIGINT ignored, which we respect).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        varta.panic.install_excepthook_uds({uds.target!r}, exit_signals=True)
        os.kill(os.getpid(), signal.SIGINT)
        print("NOT-REACHED")
        """
    )
    # The default SIGINT handler raised KeyboardInterrupt; uncaught, Python
    # exits by SIGINT. The excepthook saw an already reported exception.
    assert c.returncode == -signal.SIGINT
    assert "KeyboardInterrupt" in c.stderr
    one_frame(uds, c.pid)


def test_exit_signal_chains_to_previous_python_handler(uds: Receiver) -> None:
    c = run_child(
        f"""
        import os, signal, sys, varta.panic
        def earlier(signum, frame):
            print("EARLIER", signal.Signals(signum).name, flush=True)
            sys.exit(7)
        signal.signal(signal.SIGHUP, earlier)
        varta.panic.install_excepthook_uds({uds.target!r}, exit_signals=[signal.SIGHUP])
        varta.panic.install_excepthook_uds({uds.target!r}, exit_signals=True)  # no double chain
        os.kill(os.getpid(), signal.SIGHUP)
        """
    )
    assert c.returncode == 7
    assert c.stdout.split() == ["EARLIER", "SIGHUP"]
    one_frame(uds, c.pid)


def test_ignored_and_unrequested_exit_signals_are_left_alone(uds: Receiver) -> None:
    c = run_child(
        f"""
        import os, signal, varta.panic
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        varta.panic.install_excepthook_uds({uds.target!r}, exit_signals=True)
        os.kill(os.getpid(), signal.SIGHUP)  # still ignored
        print("ALIVE", flush=True)
        varta.panic.install_excepthook_uds({uds.target!r})
        """
    )
    assert c.returncode == 0, c.stderr
    assert "ALIVE" in c.stdout
    assert uds.frames() == []

    c = run_child(
        f"""
        import os, signal, varta.panic
        varta.panic.install_excepthook_uds({uds.target!r})  # exit_signals off
        os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    assert c.returncode == -signal.SIGTERM
    assert uds.frames() == []


# --- asyncio ------------------------------------------------------------------


def test_asyncio_handler_reports_and_chains(uds: Receiver) -> None:
    c = run_child(
        f"""
        import asyncio, varta.panic as vp
        vp.install_excepthook_uds({uds.target!r})
        seen = []

        async def main():
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(
                lambda lp, ctx: seen.append(type(ctx.get("exception")).__name__)
            )
            vp.install_asyncio_handler()
            vp.install_asyncio_handler(loop)  # idempotent
            done = loop.create_future()

            def boom():
                loop.call_soon(done.set_result, None)
                raise RuntimeError("callback failed")

            loop.call_soon(boom)
            await done
            loop.call_exception_handler({{"message": "only a message"}})

        asyncio.run(main())
        print(seen)
        """
    )
    assert c.returncode == 0, c.stderr
    assert c.stdout.strip() == "['RuntimeError', 'NoneType']"
    one_frame(uds, c.pid)


def test_asyncio_handler_falls_back_to_the_default_handler(uds: Receiver) -> None:
    c = run_child(
        f"""
        import asyncio, varta.panic as vp
        vp.install_excepthook_uds({uds.target!r})

        async def main():
            loop = asyncio.get_running_loop()
            vp.install_asyncio_handler()
            done = loop.create_future()

            def boom():
                loop.call_soon(done.set_result, None)
                raise RuntimeError("logged by asyncio")

            loop.call_soon(boom)
            await done

        asyncio.run(main())
        """
    )
    assert c.returncode == 0, c.stderr
    assert "RuntimeError: logged by asyncio" in c.stderr
    one_frame(uds, c.pid)


# --- UDP ----------------------------------------------------------------------


def test_udp_variant_sends_one_frame() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        rx = Receiver(s, s.getsockname())
        c = run_child(
            f"""
            import varta.panic
            varta.panic.install_excepthook_udp({rx.target!r})
            raise ValueError("over udp")
            """
        )
        assert c.returncode == 1
        assert "ValueError: over udp" in c.stderr
        data = rx.wait_drain()
        assert len(data) == 1
        assert_terminal(varta.decode(data[0]), c.pid)
    finally:
        s.close()


def test_udp_fatal_signal() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        rx = Receiver(s, s.getsockname())
        c = run_child(
            f"""
            import os, varta.panic
            varta.panic.install_excepthook_udp({rx.target!r})
            os.abort()
            """
        )
        assert c.returncode == -signal.SIGABRT
        data = rx.wait_drain()
        assert len(data) == 1
        assert_terminal(varta.decode(data[0]), c.pid)
    finally:
        s.close()
