"""The Python agent ``varta.Varta``: surface, frames on a live listener, errors,
commit-on-success, reconnect rules, custom transports (``docs/agent.md``)."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

import varta
from varta import (
    NONCE_TERMINAL,
    BeatError,
    BeatOutcome,
    DropReason,
    Frame,
    Status,
    Varta,
    classify_send_error,
)
from varta._transport import BeatTransport
from varta._types import _DROPPED, _SENT
from varta._varta import _testing

# --- helpers -----------------------------------------------------------------


@pytest.fixture
def sock_dir() -> Iterator[pathlib.Path]:
    # Short path: sun_path holds 108 bytes and pytest's tmp_path can be longer.
    d = pathlib.Path(tempfile.mkdtemp(prefix="va-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sock_path(sock_dir: pathlib.Path) -> pathlib.Path:
    return sock_dir / "obs.sock"


class Listener:
    """A plain Python UDS datagram listener standing in for the observer."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(10)

    def frame(self) -> Frame:
        data = self.sock.recv(64)
        assert len(data) == 32
        return varta.decode(data)

    def frames(self, n: int) -> list[Frame]:
        return [self.frame() for _ in range(n)]

    def pending(self) -> int:
        """Datagrams queued right now (drains them)."""
        n = 0
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(64)
                n += 1
        except BlockingIOError:
            return n
        finally:
            self.sock.settimeout(10)

    def close(self, unlink: bool = True) -> None:
        self.sock.close()
        if unlink:
            self.path.unlink()


@pytest.fixture
def listener(sock_path: pathlib.Path) -> Iterator[Listener]:
    li = Listener(sock_path)
    yield li
    li.sock.close()


@pytest.fixture
def agent(listener: Listener) -> Iterator[Varta]:
    a = Varta.connect(listener.path)
    yield a
    a.close()


INVALID = BeatOutcome.failed(BeatError(0, "InvalidInput"))

# --- surface -------------------------------------------------------------------


def test_public_names_match_upstream() -> None:
    for name in (
        "Varta",
        "Status",
        "Frame",
        "DecodeError",
        "BeatOutcome",
        "DropReason",
        "BeatError",
        "NONCE_TERMINAL",
        "classify_send_error",
    ):
        assert name in varta.__all__, name
    from varta.client import BeatOutcome as ClientOutcome
    from varta.client import Varta as ClientVarta

    assert ClientVarta is Varta and ClientOutcome is BeatOutcome
    for meth in (
        "connect",
        "connect_udp",
        "beat",
        "reconnect",
        "set_reconnect_after",
        "clock_regressions",
        "fork_recoveries",
        "send_terminal",
        "close",
        "__enter__",
        "__exit__",
    ):
        assert callable(getattr(Varta, meth)), meth


def test_test_hooks_live_in_the_private_testing_submodule() -> None:
    import varta._varta as native

    assert sys.modules["varta._varta._testing"] is _testing is native._testing
    assert not hasattr(varta, "_testing") and "_testing" not in native.__all__
    for name in ("_seal_shared", "_derive_agent_key", "_SecureSession", "_bench_recv_floor"):
        assert not hasattr(native, name), name
    assert not hasattr(Varta, "_set_nonce_for_test")
    assert callable(_testing.set_nonce) and callable(_testing.seal_shared)


def test_varta_is_immutable(agent: Varta) -> None:
    with pytest.raises(AttributeError):
        agent.nonce = 5  # type: ignore[attr-defined]


# --- live frames -----------------------------------------------------------------


def test_beats_arrive_with_expected_fields_and_nonces(agent: Varta, listener: Listener) -> None:
    assert agent.beat() is _SENT
    assert agent.beat(Status.DEGRADED, 7) is _SENT
    assert agent.beat("critical", payload=2**32 - 1) is _SENT
    assert agent.beat(0, payload=True) is _SENT
    frames = listener.frames(4)
    assert [f.nonce for f in frames] == [1, 2, 3, 4]
    assert [f.status for f in frames] == [Status.OK, Status.DEGRADED, Status.CRITICAL, Status.OK]
    assert [f.payload for f in frames] == [0, 7, 2**32 - 1, 1]
    assert {f.pid for f in frames} == {os.getpid()}
    ts = [f.timestamp for f in frames]
    assert ts == sorted(ts)
    assert not any(f.is_terminal for f in frames)
    assert agent.clock_regressions() == 0
    assert agent.fork_recoveries() == 0


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (Status.OK, Status.OK),
        (1, Status.DEGRADED),
        ("Critical", Status.CRITICAL),
        (" ok ", Status.OK),
        ("DEGRADED", Status.DEGRADED),
    ],
)
def test_status_accepts_members_ints_and_names(
    agent: Varta, listener: Listener, status: Any, expected: Status
) -> None:
    assert agent.beat(status).is_sent
    assert listener.frame().status is expected


@pytest.mark.parametrize("status", [Status.STALL, 3, "stall", "bogus", 4, -1, None, 1.5, True])
def test_bad_status_is_failed_invalid_input_and_sends_nothing(
    agent: Varta, listener: Listener, status: Any
) -> None:
    outcome = agent.beat(status)
    assert outcome == INVALID
    assert outcome.is_failed and not outcome
    assert outcome.error is not None and outcome.error.errno == 0
    assert str(outcome) == "failed: send failed: InvalidInput (errno=0)"
    assert listener.pending() == 0
    assert agent.beat().is_sent
    assert listener.frame().nonce == 1, "nothing was committed"


@pytest.mark.parametrize(
    ("payload", "exc"),
    [
        (-1, ValueError),
        (2**32, ValueError),
        (2**70, ValueError),
        ("1", TypeError),
        (1.0, TypeError),
        (None, TypeError),
        (b"\x01", TypeError),
    ],
)
def test_bad_payload_raises_before_sending(
    agent: Varta, listener: Listener, payload: Any, exc: type[Exception]
) -> None:
    with pytest.raises(exc, match="payload"):
        agent.beat(Status.OK, payload)
    with pytest.raises(exc, match="payload"):
        agent.beat(Status.STALL, payload=payload)  # the payload check comes first
    assert listener.pending() == 0
    agent.beat()
    assert listener.frame().nonce == 1


def test_send_terminal_emits_a_critical_terminal_frame(agent: Varta, listener: Listener) -> None:
    agent.beat()
    assert agent.send_terminal() is _SENT
    agent.beat()
    first, term, after = listener.frames(3)
    assert term.is_terminal and term.nonce == NONCE_TERMINAL
    # payload b"EXIT": the clean-exit cause (docs/verdicts.md); upstream ignores it.
    assert term.status is Status.CRITICAL and term.payload.to_bytes(4, "little") == b"EXIT"
    assert term.timestamp >= 1 and term.pid == os.getpid()
    assert (first.nonce, after.nonce) == (1, 2)


def test_close_final_sends_the_terminal_frame_first(agent: Varta, listener: Listener) -> None:
    agent.close(final=True)
    assert listener.frame().is_terminal
    assert agent.closed


# --- connect errors ----------------------------------------------------------------


def test_connect_to_missing_path_raises_file_not_found_naming_the_path(
    sock_path: pathlib.Path,
) -> None:
    with pytest.raises(FileNotFoundError) as info:
        Varta.connect(sock_path)
    assert info.value.errno == errno.ENOENT
    assert str(sock_path) in str(info.value)
    assert info.value.filename == str(sock_path)


def test_connect_with_nobody_listening_raises_connection_refused(
    sock_path: pathlib.Path,
) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(sock_path))
    s.close()  # the file stays, nobody listens
    with pytest.raises(ConnectionRefusedError) as info:
        Varta.connect(str(sock_path))
    assert str(sock_path) in str(info.value)


def test_connect_accepts_str_and_pathlike(listener: Listener) -> None:
    for p in (str(listener.path), listener.path):
        with Varta.connect(p) as a:
            assert a.beat().is_sent
    # Leaving each block normally signs off with the clean-exit terminal frame.
    assert [f.nonce for f in listener.frames(4)] == [1, NONCE_TERMINAL] * 2


def test_leaving_a_with_block_by_an_exception_sends_no_terminal(listener: Listener) -> None:
    with pytest.raises(RuntimeError), Varta.connect(listener.path) as a:
        a.beat()
        raise RuntimeError("the crash hook speaks for crashes")
    assert a.closed
    with Varta.connect(listener.path) as b:
        b.beat()
    frames = listener.frames(3)
    assert [f.nonce for f in frames] == [1, 1, NONCE_TERMINAL]
    assert varta.terminal_cause(frames[2].payload) == "clean_exit"


def test_connect_rejects_too_long_paths_and_non_paths() -> None:
    with pytest.raises(OSError) as info:
        Varta.connect("/tmp/" + "x" * 200)
    assert info.value.errno == errno.ENAMETOOLONG
    with pytest.raises(TypeError):
        Varta.connect(42)  # type: ignore[arg-type]


# --- commit-on-success, observer restarts, reconnect --------------------------------


def test_dropped_beats_reuse_the_nonce(agent: Varta, listener: Listener) -> None:
    # Linux queues at most net.unix.max_dgram_qlen datagrams per receiver.
    sent = 0
    while True:
        outcome = agent.beat()
        if not outcome:
            break
        sent += 1
        assert sent < 100_000, "the receiver queue never filled"
    assert outcome is _DROPPED[DropReason.KERNEL_QUEUE_FULL]
    assert str(outcome) == "dropped: kernel queue full"
    for _ in range(3):
        assert agent.beat() is outcome
    assert [f.nonce for f in listener.frames(sent)] == list(range(1, sent + 1))
    assert agent.beat().is_sent
    assert listener.frame().nonce == sent + 1, "no gap on the wire"


def test_observer_gone_then_back_needs_reconnect(agent: Varta, listener: Listener) -> None:
    agent.beat()
    listener.frame()
    listener.close()
    gone = agent.beat()
    assert gone.is_dropped and gone.reason in (DropReason.NO_OBSERVER, DropReason.PEER_GONE)
    with pytest.raises(FileNotFoundError, match=r"obs\.sock"):
        agent.reconnect()
    back = Listener(listener.path)
    try:
        agent.reconnect()
        assert agent.beat().is_sent
        assert back.frame().nonce == 2, "reconnect keeps the session"
    finally:
        back.sock.close()


def test_auto_reconnect_follows_a_restarted_observer(agent: Varta, listener: Listener) -> None:
    agent.set_reconnect_after(1)
    agent.beat()
    listener.frame()
    listener.close()
    back = Listener(listener.path)
    try:
        assert agent.beat(Status.DEGRADED, 3) is _SENT
        f = back.frame()
        assert (f.nonce, f.status, f.payload) == (2, Status.DEGRADED, 3)
    finally:
        back.sock.close()


def test_set_reconnect_after_validates(agent: Varta) -> None:
    agent.set_reconnect_after(None)
    agent.set_reconnect_after(0)
    agent.set_reconnect_after(2**32 - 1)
    with pytest.raises(ValueError):
        agent.set_reconnect_after(-1)
    with pytest.raises(ValueError):
        agent.set_reconnect_after(2**32)


def test_close_is_idempotent_and_closed_agents_fail(listener: Listener) -> None:
    with Varta.connect(listener.path) as a:
        assert not a.closed
        a.beat()
    assert a.closed
    a.close()
    a.close(final=True)
    closed = a.beat()
    assert closed == BeatOutcome.failed(BeatError(0, "Closed"))
    assert a.send_terminal() == closed
    with pytest.raises(OSError) as info:
        a.reconnect()
    assert info.value.errno == errno.EBADF
    assert "Closed" in str(info.value)
    assert listener.pending() == 2  # the beat, and the clean-exit frame of the with block
    assert "closed" in repr(a)


def test_nonce_wraps_to_zero_with_one_warning() -> None:
    # A subprocess, so the process-wide one-time warning is observable.
    script = """
import os, socket, sys, tempfile, varta
from varta._varta import _testing
d = tempfile.mkdtemp(prefix="va-")
p = os.path.join(d, "s")
r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); r.bind(p)
a = varta.Varta.connect(p)
nonces = []
for _ in range(2):
    _testing.set_nonce(a, varta.NONCE_TERMINAL - 2)
    for _ in range(3):
        assert a.beat().is_sent
        nonces.append(varta.decode(r.recv(64)).nonce)
print(nonces)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    t = NONCE_TERMINAL
    assert out.stdout.strip() == str([t - 1, 0, 1, t - 1, 0, 1])
    assert out.stderr.count("nonce exhausted; wrapping to 0") == 1


# --- UDP ------------------------------------------------------------------------------


def test_udp_beats_arrive() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(10)
    try:
        port = rx.getsockname()[1]
        for host in ("127.0.0.1", "localhost"):
            with Varta.connect_udp((host, port)) as a:
                assert a.beat(Status.DEGRADED, 9).is_sent
                assert "udp=127.0.0.1" in repr(a)
            f = varta.decode(rx.recv(64))
            assert (f.nonce, f.status, f.payload, f.pid) == (1, Status.DEGRADED, 9, os.getpid())
            assert varta.decode(rx.recv(64)).nonce == varta.NONCE_TERMINAL  # the with block's
    finally:
        rx.close()


def test_udp_connect_errors_are_oserrors() -> None:
    with pytest.raises(OSError, match=r"no-such-host\.invalid"):
        Varta.connect_udp(("no-such-host.invalid", 9))
    with pytest.raises(OverflowError):
        Varta.connect_udp(("127.0.0.1", 70000))
    with pytest.raises(TypeError):
        Varta.connect_udp("127.0.0.1:9")  # type: ignore[arg-type]


# --- classifier ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (OSError(errno.ENOBUFS, "x"), DropReason.KERNEL_QUEUE_FULL),
        (OSError(errno.ENOSPC, "x"), DropReason.STORAGE_FULL),
        (OSError(errno.EAGAIN, "x"), DropReason.KERNEL_QUEUE_FULL),
        (OSError(errno.EWOULDBLOCK, "x"), DropReason.KERNEL_QUEUE_FULL),
        (BlockingIOError(), DropReason.KERNEL_QUEUE_FULL),
        (OSError(errno.ECONNREFUSED, "x"), DropReason.NO_OBSERVER),
        (OSError(errno.ENOENT, "x"), DropReason.NO_OBSERVER),
        (OSError(errno.ECONNRESET, "x"), DropReason.PEER_GONE),
        (OSError(errno.ENOTCONN, "x"), DropReason.PEER_GONE),
        (OSError(errno.EPIPE, "x"), DropReason.PEER_GONE),
    ],
)
def test_classify_send_error_drops(exc: OSError, reason: DropReason) -> None:
    outcome = classify_send_error(exc)
    assert outcome is _DROPPED[reason]
    assert outcome.is_dropped and outcome.reason is reason


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (PermissionError(errno.EPERM, "x"), BeatError(errno.EPERM, "EPERM")),
        (OSError(errno.EACCES, "x"), BeatError(errno.EACCES, "EACCES")),
        (OSError("no errno"), BeatError(0, "OSError")),
    ],
)
def test_classify_send_error_failures(exc: OSError, error: BeatError) -> None:
    outcome = classify_send_error(exc)
    assert outcome.is_failed and outcome.error == error


def test_linux_enobufs_is_not_111() -> None:
    if sys.platform.startswith("linux"):
        assert errno.ENOBUFS == 105
        assert classify_send_error(OSError(111, "x")).reason is DropReason.NO_OBSERVER


# --- custom Python transports -----------------------------------------------------------


class ListTransport(BeatTransport):
    """Records frames; raises / returns whatever the test scripts."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.script: list[Any] = []
        self.reconnects = 0
        self.closed = 0

    def send(self, buf: bytes) -> int:
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, BaseException):
                raise step
            return int(step)
        self.frames.append(bytes(buf))
        return len(buf)

    def reconnect(self) -> None:
        self.reconnects += 1

    def close(self) -> None:
        self.closed += 1


def test_custom_transport_gets_frames_and_errors_are_classified() -> None:
    t = ListTransport()
    a = Varta(t)
    assert a.beat(Status.OK, 1).is_sent
    t.script = [BlockingIOError(), OSError(errno.ECONNREFUSED, "x"), 31]
    assert a.beat() is _DROPPED[DropReason.KERNEL_QUEUE_FULL]
    assert a.beat() is _DROPPED[DropReason.NO_OBSERVER]
    assert a.beat() == BeatOutcome.failed(BeatError(0, "WriteZero"))
    t.script = [PermissionError(errno.EACCES, "denied")]
    assert a.beat() == BeatOutcome.failed(BeatError(errno.EACCES, "EACCES"))
    t.script = [OSError("no errno")]
    assert a.beat() == BeatOutcome.failed(BeatError(0, "OSError"))
    assert a.beat(Status.CRITICAL, 2).is_sent
    frames = [varta.decode(b) for b in t.frames]
    assert [(f.nonce, f.payload) for f in frames] == [(1, 1), (2, 2)]
    assert "ListTransport" in repr(a)
    a.close()
    a.close()
    assert t.closed == 1


def test_custom_transport_bugs_propagate() -> None:
    t = ListTransport()
    a = Varta(t)
    t.script = [RuntimeError("transport bug")]
    with pytest.raises(RuntimeError, match="transport bug"):
        a.beat()
    assert a.beat().is_sent
    assert varta.decode(t.frames[0]).nonce == 1


def test_custom_transport_reconnects_and_auto_reconnect_contract() -> None:
    t = ListTransport()
    a = Varta(t)
    a.reconnect()
    assert t.reconnects == 1
    a.set_reconnect_after(2)
    t.script = [BlockingIOError(), BlockingIOError()]
    assert a.beat().is_dropped
    assert t.reconnects == 1
    # Second drop reaches n: reconnect, resend the same frame once.
    assert a.beat().is_sent
    assert t.reconnects == 2
    assert varta.decode(t.frames[-1]).nonce == 1


def test_failed_auto_reconnect_keeps_the_count() -> None:
    class Flaky(ListTransport):
        def __init__(self) -> None:
            super().__init__()
            self.fail_reconnects = 0

        def reconnect(self) -> None:
            if self.fail_reconnects:
                self.fail_reconnects -= 1
                raise ConnectionRefusedError(errno.ECONNREFUSED, "down")
            super().reconnect()

    t = Flaky()
    a = Varta(t)
    a.set_reconnect_after(2)
    t.fail_reconnects = 1
    t.script = [BlockingIOError()] * 5
    assert a.beat().is_dropped  # count 1
    assert a.beat().is_dropped  # count 2: reconnect fails, count stays
    assert t.reconnects == 0
    assert a.beat().is_dropped  # count 3 >= 2: reconnect at once; retry drops
    assert t.reconnects == 1
    # The dropped retry counted as one drop, so this drop reaches n again.
    assert a.beat().is_sent
    assert t.reconnects == 2
    assert [varta.decode(b).nonce for b in t.frames] == [1]


def test_manual_reconnect_error_is_the_transports_exception() -> None:
    class Down(ListTransport):
        def reconnect(self) -> None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "observer down")

    a = Varta(Down())
    with pytest.raises(ConnectionRefusedError):
        a.reconnect()


def test_custom_transport_expected_send_len() -> None:
    class Sealed(ListTransport):
        expected_send_len = 60

        def send(self, buf: bytes) -> int:
            if self.script:
                return int(self.script.pop(0))
            self.frames.append(bytes(buf))
            return 60

    t = Sealed()
    a = Varta(t)
    assert a.beat().is_sent
    t.script = [32]
    assert a.beat() == BeatOutcome.failed(BeatError(0, "WriteZero"))


def test_custom_transport_must_have_send() -> None:
    with pytest.raises(AttributeError):
        Varta(object())


def test_fork_epoch_change_reconnects_a_custom_transport() -> None:
    t = ListTransport()
    a = Varta(t)
    a.beat()
    _testing.set_connect_fork_epoch(a, 2**64 - 1)  # as if forked
    assert a.beat().is_sent
    assert t.reconnects == 1 and a.fork_recoveries() == 1
    assert [varta.decode(b).nonce for b in t.frames] == [1, 1]
    _testing.set_connect_pid(a, 1)
    assert a.beat().is_sent
    assert t.reconnects == 2 and a.fork_recoveries() == 2


def test_custom_transport_errors_never_leak_into_later_beats() -> None:
    class NoErrno(ListTransport):
        def reconnect(self) -> None:
            raise OSError("reconnect failed without errno")

    t = NoErrno()
    a = Varta(t)
    a.set_reconnect_after(1)
    t.script = [BlockingIOError()]
    assert a.beat() is _DROPPED[DropReason.KERNEL_QUEUE_FULL]  # auto-reconnect failed quietly
    t.script = [PermissionError(errno.EACCES, "x")]
    assert a.beat() == BeatOutcome.failed(BeatError(errno.EACCES, "EACCES"))

    class Buggy(ListTransport):
        def reconnect(self) -> None:
            raise RuntimeError("bug in reconnect")

    b_transport = Buggy()
    b = Varta(b_transport)
    b.set_reconnect_after(1)
    b_transport.script = [BlockingIOError()]
    with pytest.raises(RuntimeError, match="bug in reconnect"):
        b.beat()
    assert b.beat().is_sent
