"""varta.Observer in one process: socket binding rules, decoding, counters,
passed descriptors, GIL release. Frames come from plain Python sockets."""

from __future__ import annotations

import array
import errno
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

import varta
from observer_helpers import poll_until
from varta import BeatOrigin, DecodeError, Status

U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


@pytest.fixture
def tx() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        yield s
    finally:
        s.close()


def frame(nonce: int, *, pid: int | None = None, status: int = 0, payload: int = 0) -> bytes:
    return varta.encode(status, os.getpid() if pid is None else pid, nonce, nonce, payload)


def reseal(b: bytearray) -> bytes:
    b[28:32] = struct.pack("<I", varta.crc32c(bytes(b[:28])))
    return bytes(b)


def send_fds_to(tx: socket.socket, data: bytes, fds: list[int], path: str) -> None:
    # socket.send_fds ignores its address argument on some Python versions.
    rights = array.array("i", fds)
    tx.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], 0, path)


def wait_for(cond: Callable[[], bool], obs: varta.Observer, *, within: float = 5.0) -> None:
    """Drive the observer (short polls) until ``cond()`` holds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        list(obs.poll(timeout=0.05))
        if cond():
            return
    raise AssertionError("condition not reached")


# ------------------------------------------------------------------ binding


def test_socket_file_mode_default_and_custom(sock_path: str) -> None:
    with varta.Observer(sock_path, 100) as obs:
        st = os.lstat(sock_path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert obs.socket_path == sock_path
        assert obs.threshold_ms == 100
    assert not os.path.exists(sock_path), "close unlinks the socket file"
    with varta.Observer(sock_path, 100, socket_mode=0o660):
        assert stat.S_IMODE(os.lstat(sock_path).st_mode) == 0o660


def test_options_left_out_or_none_keep_the_core_defaults(sock_path: str) -> None:
    """The binding passes only the options given; None is "the default"."""
    with varta.Observer(sock_path, 100, socket_mode=None, capacity=None, udp_trust=None):
        assert stat.S_IMODE(os.lstat(sock_path).st_mode) == 0o600
    with pytest.raises(ValueError, match="need udp_port"):
        varta.Observer(sock_path, 100, udp_trust="operator")


def test_live_observer_at_the_same_path_is_refused(sock_path: str) -> None:
    with varta.Observer(sock_path, 100):
        with pytest.raises(OSError) as ei:
            varta.Observer(sock_path, 100)
        assert ei.value.errno == errno.EADDRINUSE
        assert "already running" in str(ei.value)
        assert os.path.exists(sock_path), "the live observer's socket is left alone"


def test_stale_socket_file_is_replaced(sock_path: str, tx: socket.socket) -> None:
    old = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old.bind(sock_path)
    old.close()  # the file stays behind with nobody listening
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    with varta.Observer(sock_path, 100) as obs:
        tx.sendto(frame(1), sock_path)
        events = poll_until(obs, lambda e: isinstance(e, varta.Beat))
        assert [type(e) for e in events] == [varta.Beat]


def test_non_socket_file_is_refused(sock_path: str) -> None:
    with open(sock_path, "w") as f:
        f.write("precious")
    with pytest.raises(OSError) as ei:
        varta.Observer(sock_path, 100)
    assert ei.value.errno == errno.EADDRINUSE
    with open(sock_path) as f:
        assert f.read() == "precious"


def test_close_is_idempotent_and_leaves_a_replaced_file(sock_path: str) -> None:
    obs = varta.Observer(sock_path, 100)
    os.unlink(sock_path)
    with open(sock_path, "w") as f:
        f.write("someone else")
    obs.close()
    obs.close()
    assert obs.closed
    with open(sock_path) as f:
        assert f.read() == "someone else"
    with pytest.raises(ValueError):
        obs.poll(timeout=0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        varta.Observer(None, 0)
    with pytest.raises(ValueError):
        varta.Observer(None, 100, eviction="lru")
    with pytest.raises(ValueError):
        varta.Observer(None, 100, clock="realtime")
    with pytest.raises(ValueError):
        varta.Observer(None, 100, capacity=0)
    with pytest.raises(ValueError):
        varta.Observer(None, 100, socket_mode=0o1777)


def test_no_socket_observer_times_out_empty() -> None:
    with varta.Observer(None, 100, clock="boottime") as obs:
        assert obs.socket_path is None
        t = time.monotonic()
        assert list(obs.poll(timeout=0.05)) == []
        assert time.monotonic() - t >= 0.05
        assert obs.next_deadline_ns() is None
        assert obs.agents() == []
        assert obs.agent(os.getpid()) is None
        assert obs.take_removed() == []
        a, b = obs.now_ns(), obs.now_ns()
        assert 0 <= a <= b


# ------------------------------------------------------------------ ingress


def test_beat_event_and_agent_info(sock_path: str, tx: socket.socket) -> None:
    with varta.Observer(sock_path, 10_000) as obs:
        tx.sendto(frame(1, status=1, payload=42), sock_path)
        (beat,) = poll_until(obs, lambda e: isinstance(e, varta.Beat))
        assert beat.pid == os.getpid()
        assert beat.status is Status.DEGRADED
        assert beat.origin is BeatOrigin.KERNEL_ATTESTED
        assert (beat.payload, beat.nonce) == (42, 1)
        ns = os.stat("/proc/self/ns/pid").st_ino
        assert beat.pid_ns_inode == ns
        assert 0 < beat.observer_ns <= obs.now_ns()
        assert repr(beat).startswith(f"Beat(pid={os.getpid()}, status=Status.DEGRADED")
        (info,) = obs.agents()
        assert info.pid == os.getpid()
        assert info.status is Status.DEGRADED
        assert info.origin is BeatOrigin.KERNEL_ATTESTED
        assert (info.beats, info.stalls, info.last_nonce, info.stalled) == (1, 0, 1, False)
        assert info.pid_ns_inode == ns
        with open("/proc/self/stat", "rb") as f:
            start_time = int(f.read().rsplit(b")", 1)[1].split()[19])
        assert info.generation == start_time
        assert info.age_ns >= 0
        assert obs.next_deadline_ns() == info.last_ns + 10_000 * 1_000_000
        assert "AgentInfo(pid=" in repr(info)
        c = obs.counters()
        assert c["beats"] == 1
        assert c["watch_pids_tracked"] == 1


def decode_cases() -> list[tuple[str, bytes]]:
    pid = os.getpid()
    ok = bytearray(frame(1))
    bad_magic = bytearray(ok)
    bad_magic[0] ^= 0xFF
    bad_version = bytearray(ok)
    bad_version[2] = 9
    bad_crc = bytearray(ok)
    bad_crc[28] ^= 1
    bad_status = bytearray(ok)
    bad_status[3] = 0xEE
    stall = bytearray(ok)
    stall[3] = 3
    return [
        ("BadMagic", bytes(bad_magic)),
        ("BadVersion", bytes(bad_version)),
        ("BadCrc", bytes(bad_crc)),
        ("BadStatus", reseal(bad_status)),
        ("StallOnWire", reseal(stall)),
        ("BadPid", varta.encode(0, 1, 1, 1)),
        ("BadTimestamp", varta.encode(0, pid, U64_MAX, 1)),
        ("BadNonce", varta.encode(0, pid, 5, U64_MAX)),
    ]


def test_every_decode_error_kind_arrives_as_decode(sock_path: str, tx: socket.socket) -> None:
    cases = decode_cases()
    assert sorted(k for k, _ in cases) == sorted(DecodeError.KINDS)
    with varta.Observer(sock_path, 10_000) as obs:
        for kind, data in cases:
            tx.sendto(data, sock_path)
            (ev,) = poll_until(obs, lambda e: isinstance(e, varta.Decode))
            assert isinstance(ev.error, DecodeError)
            assert ev.error.kind == kind
            assert ev.observer_ns > 0
            assert kind in repr(ev)
        assert obs.agents() == []
        c = obs.counters()
        decode = c["decode_errors"]
        assert isinstance(decode, dict)
        assert decode == {DecodeError(k).metric_label: 1 for k, _ in cases}
        assert c["beats"] == 0


def test_decode_error_fields_survive(sock_path: str, tx: socket.socket) -> None:
    with varta.Observer(sock_path, 10_000) as obs:
        data = bytearray(frame(1))
        data[28] ^= 1
        tx.sendto(bytes(data), sock_path)
        (ev,) = poll_until(obs, lambda e: isinstance(e, varta.Decode))
        assert ev.error.kind == "BadCrc"
        assert ev.error.actual == struct.unpack("<I", bytes(data[28:]))[0]
        assert ev.error.expected == varta.crc32c(bytes(data[:28]))


def test_short_and_overlong_datagrams_are_counted_silently(
    sock_path: str, tx: socket.socket
) -> None:
    with varta.Observer(sock_path, 10_000) as obs:
        for n in (0, 1, 31, 33, 64, 4096):
            tx.sendto(b"\x56" * n, sock_path)
        tx.sendto(frame(1), sock_path)
        events = poll_until(obs, lambda e: isinstance(e, varta.Beat))
        assert [type(e) for e in events] == [varta.Beat]
        assert obs.counters()["truncated_datagrams"] == 6


def test_emit_beats_false_counts_per_pid_without_events(sock_path: str, tx: socket.socket) -> None:
    with varta.Observer(sock_path, 10_000, emit_beats=False, max_beat_rate=0) as obs:
        # Blocking sends from a thread: the kernel queues only ~10 datagrams
        # per Unix socket, so the sender waits for the observer to drain.
        sender = threading.Thread(
            target=lambda: [tx.sendto(frame(n), sock_path) for n in range(1, 51)]
        )
        sender.start()

        def done() -> bool:
            a = obs.agent(os.getpid())
            return a is not None and a.beats == 50

        end = time.monotonic() + 5
        events: list[Any] = []
        while not done() and time.monotonic() < end:
            events.extend(obs.poll(timeout=0.05))
        sender.join()
        assert done()
        assert events == []
        assert obs.counters()["beats"] == 50


def test_out_of_order_and_duplicates_are_counted(sock_path: str, tx: socket.socket) -> None:
    with varta.Observer(sock_path, 10_000, max_beat_rate=0) as obs:
        for n in (1, 2, 2, 1, 3):
            tx.sendto(frame(n), sock_path)
        wait_for(lambda: obs.counters()["out_of_order"] == 2, obs)
        info = obs.agent(os.getpid())
        assert info is not None
        assert (info.beats, info.last_nonce) == (3, 3)


def test_per_pid_rate_limit(sock_path: str, tx: socket.socket) -> None:
    # 1 beat per second per pid: a burst of 5 keeps only the first.
    with varta.Observer(sock_path, 10_000, max_beat_rate=1) as obs:
        for n in range(1, 6):
            tx.sendto(frame(n), sock_path)
        wait_for(lambda: obs.counters()["rate_limited"] == {"per_pid": 4, "global": 0}, obs)
        info = obs.agent(os.getpid())
        assert info is not None and info.beats == 1


def test_passed_descriptors_are_closed(sock_path: str, tx: socket.socket) -> None:
    r, w = os.pipe()
    try:
        with varta.Observer(sock_path, 10_000) as obs:
            send_fds_to(tx, frame(1), [w], sock_path)
            os.close(w)
            w = -1
            poll_until(obs, lambda e: isinstance(e, varta.Beat))
            # The observer held the only other write end: now EOF.
            os.set_blocking(r, False)
            assert os.read(r, 1) == b""
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_too_many_descriptors_truncate_control_data(sock_path: str, tx: socket.socket) -> None:
    pipes = [os.pipe() for _ in range(20)]
    try:
        with varta.Observer(sock_path, 10_000) as obs:
            send_fds_to(tx, frame(1), [w for _, w in pipes], sock_path)
            events = poll_until(obs, lambda e: isinstance(e, varta.CtrlTruncated))
            assert [type(e) for e in events] == [varta.CtrlTruncated]
            assert "MSG_CTRUNC" in events[0].error
            assert obs.counters()["ctrl_truncated"] == 1
            assert obs.agents() == []
            for r, w in pipes:
                os.close(w)
                os.set_blocking(r, False)
                assert os.read(r, 1) == b"", "no passed descriptor stays open"
    finally:
        for r, _ in pipes:
            os.close(r)


def test_stall_wakes_the_wait_at_the_deadline(sock_path: str, tx: socket.socket) -> None:
    with varta.Observer(sock_path, 100) as obs:
        tx.sendto(frame(1), sock_path)
        poll_until(obs, lambda e: isinstance(e, varta.Beat))
        # One long poll: it must end by itself when the stall is due.
        events = list(obs.poll(timeout=5.0))
        assert [type(e) for e in events] == [varta.Stall]
        (s,) = events
        assert s.pid == os.getpid()
        assert s.last_nonce == 1
        assert s.origin is BeatOrigin.KERNEL_ATTESTED
        assert s.observer_ns - s.last_ns >= 100_000_000
        assert s.generation is not None
        info = obs.agent(os.getpid())
        assert info is not None and info.stalled and info.stalls == 1
        assert obs.next_deadline_ns() is None
        assert obs.counters()["stalls"] == 1


def test_poll_releases_the_gil(sock_path: str) -> None:
    stamps: list[float] = []
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            if n % 1000 == 0:
                stamps.append(time.monotonic())

    with varta.Observer(sock_path, 10_000) as obs:
        t = threading.Thread(target=spin)
        t.start()
        try:
            start = time.monotonic()
            assert list(obs.poll(timeout=0.4)) == []
            end = time.monotonic()
        finally:
            stop.set()
            t.join()
    inside = [s for s in stamps if start + 0.1 < s < end - 0.1]
    assert inside, "the other thread made no progress while poll() blocked"


def test_event_classes_are_constructible_and_frozen() -> None:
    b = varta.Beat(5, 1, 2, 3, 3, None, 9)
    assert b.status is Status.DEGRADED and b.origin is BeatOrigin.KERNEL_ATTESTED
    with pytest.raises(AttributeError):
        b.pid = 6  # type: ignore[misc]
    s = varta.Stall(5, 3, 4, BeatOrigin.SOCKET_MODE_ONLY, 1, 2, 9)
    assert "origin=BeatOrigin.SOCKET_MODE_ONLY" in repr(s)
    d = varta.Decode(DecodeError("BadMagic"), 1)
    assert d.error.kind == "BadMagic"
    with pytest.raises(TypeError):
        varta.Decode(ValueError("x"), 1)  # type: ignore[arg-type]
    assert varta.AuthFailure(7, 1).claimed_pid == 7
    oc = varta.OriginConflict(7, 1, 3, 1)
    assert oc.observed_origin is BeatOrigin.SOCKET_MODE_ONLY
    assert oc.slot_origin is BeatOrigin.KERNEL_ATTESTED
    assert varta.NamespaceConflict(7, 1, None, 1).observer_ns_inode is None
    assert varta.Io("boom", None, 1).errno is None
    assert varta.CtrlTruncated("x", 1).error == "x"
    a = varta.AgentInfo(5, "ok", "KERNEL_ATTESTED", 1, 0, 1, 2, 3, False, None, None)
    assert a.status is Status.OK and a.origin is BeatOrigin.KERNEL_ATTESTED
    assert repr(a).startswith(
        "AgentInfo(pid=5, status=Status.OK, origin=BeatOrigin.KERNEL_ATTESTED"
    )


def test_close_from_another_thread_ends_a_blocking_poll(sock_path: str) -> None:
    obs = varta.Observer(sock_path, 10_000)
    closer = threading.Thread(target=obs.close)
    closer.start()
    # Whether close() lands before or during the wait, poll() must not hang:
    # it raises as soon as it sees the observer closed.
    with pytest.raises(ValueError, match="closed"):
        list(obs.poll(timeout=30))
    closer.join()
    assert not os.path.exists(sock_path)
