"""SO_PASSPIDFD-verified identity (docs/observer.md#ingress step 7, #credentials,
#namespaces-and-generations): the
observer takes each sender's pidfd with its credentials and trusts a /proc
identity read only if the sender is alive before and after it. Every pidfd
received is closed (no descriptor leaks)."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator

import pytest

import varta
from observer_helpers import poll_until
from varta import BeatOrigin

SO_PASSPIDFD = 76  # Linux >= 6.5 (asm-generic)


def kernel_has_passpidfd() -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_PASSPIDFD, 1)
        except OSError as e:
            assert e.errno in (errno.ENOPROTOOPT, errno.EINVAL), e
            return False
    return True


needs_pidfd = pytest.mark.skipif(
    not kernel_has_passpidfd(), reason="kernel without SO_PASSPIDFD (Linux < 6.5)"
)


def start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat, counted after the last ')'."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rindex(b")") + 1 :].split()[22 - 3])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def sock_path() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="varta-pidfd-")
    try:
        yield os.path.join(d, "obs.sock")
    finally:
        shutil.rmtree(d, ignore_errors=True)


# Sends one beat carrying its own pid, prints the pid, exits.
SEND_ONCE = textwrap.dedent(
    """
    import os, socket, sys, varta
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(varta.encode(0, os.getpid(), 1, 1), sys.argv[1])
    print(os.getpid(), flush=True)
    """
)


def send_once_and_reap(path: str) -> int:
    """A sender that has exited and been reaped before anyone receives."""
    done = subprocess.run(
        [sys.executable, "-c", SEND_ONCE, path], check=True, capture_output=True, text=True
    )
    return int(done.stdout)


def test_mode_is_reported(sock_path: str) -> None:
    with varta.Observer(sock_path, 1000) as obs:
        assert obs.pidfd_identity is kernel_has_passpidfd()
        c = obs.identity_counters()
        assert set(c) == {
            "pidfds_received",
            "pidfds_closed",
            "pidfds_unavailable",
            "identity_pidfd_verified",
            "identity_sender_exited",
            "exit_watch",
            "exit_watch_watched",
            "exit_watch_unavailable",
            "exit_watch_exits",
            "event_queue_len",
            "event_queue_max_len",
        }
        assert c.pop("exit_watch") is True
        assert all(v == 0 for v in c.values())
    with varta.Observer(None, 1000) as obs:
        assert obs.pidfd_identity is None


def test_agent_beats_are_kernel_attested_with_a_generation(sock_path: str) -> None:
    agent = textwrap.dedent(
        """
        import sys, varta
        a = varta.Varta.connect(sys.argv[1])
        for _ in range(3):
            a.beat()
        sys.stdin.read()  # stay alive until the test is done
        """
    )
    with varta.Observer(sock_path, 10_000, max_beat_rate=0) as obs:
        p = subprocess.Popen([sys.executable, "-c", agent, sock_path], stdin=subprocess.PIPE)
        try:
            events = poll_until(
                obs,
                lambda e: isinstance(e, varta.Beat) and e.pid == p.pid and e.nonce == 3,
                within=10.0,
            )
            beats = [e for e in events if isinstance(e, varta.Beat)]
            assert [b.nonce for b in beats] == [1, 2, 3]
            assert all(b.origin == BeatOrigin.KERNEL_ATTESTED for b in beats), beats
            assert all(b.pid_ns_inode is not None for b in beats)
            info = obs.agent(p.pid)
            assert info is not None
            assert info.origin == BeatOrigin.KERNEL_ATTESTED
            assert info.generation == start_time(p.pid)
            c = obs.identity_counters()
            assert c["identity_sender_exited"] == 0
            # One /proc read (first contact), vouched for by the pidfd; the
            # continuation beats reuse the slot's identity.
            assert c["identity_pidfd_verified"] == (1 if obs.pidfd_identity else 0)
        finally:
            assert p.stdin is not None
            p.stdin.close()
            p.wait(timeout=10)


# The identity tests below must choose when the observer reads a datagram,
# so they drain on the calling thread (no ingest thread), and leave the
# pidfd exit watch (tested in test_verdicts.py) out of the descriptor counts.
IDENTITY_ONLY = {"ingest_thread": False, "exit_watch": False}


@needs_pidfd
def test_sender_reaped_before_the_read_gets_no_trusted_generation(sock_path: str) -> None:
    with varta.Observer(sock_path, 10_000, **IDENTITY_ONLY) as obs:
        assert obs.pidfd_identity
        # Send, exit, be reaped — only then does the observer receive.
        pid = send_once_and_reap(sock_path)
        events = poll_until(obs, lambda e: isinstance(e, varta.Beat), within=10.0)
        assert len(events) == 1, events
        beat = events[0]
        # docs/observer.md#namespaces-and-generations: the pidfd reports the exit, so the
        # identity is not trusted;
        # docs/observer.md#ingress step 8: a first contact without one is SocketModeOnly.
        assert beat.pid == pid
        assert beat.origin == BeatOrigin.SOCKET_MODE_ONLY
        assert beat.pid_ns_inode is None
        info = obs.agent(pid)
        assert info is not None
        assert (info.origin, info.generation, info.pid_ns_inode) == (
            BeatOrigin.SOCKET_MODE_ONLY,
            None,
            None,
        )
        c = obs.identity_counters()
        assert c["identity_sender_exited"] == 1
        assert c["identity_pidfd_verified"] == 0
        assert list(obs.poll(timeout=0.2)) == []  # idle: kept pidfds closed
        c = obs.identity_counters()
        assert c["pidfds_closed"] == c["pidfds_received"] == 1


def claim_pid(pid: int, attempts: int = 50) -> subprocess.Popen[bytes] | None:
    """Start a long-lived process that gets ``pid`` (via ns_last_pid, which
    needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN); None if it never does."""
    for _ in range(attempts):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
        except OSError:
            return None
        p = subprocess.Popen(["sleep", "60"])
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    return None


@needs_pidfd
def test_recycled_pid_does_not_lend_its_new_holder_s_identity(sock_path: str) -> None:
    """The race the pidfd closes: the sender exits and its pid goes to
    another process before the observer reads /proc. Without the pidfd the
    observer would pin the new holder's start time as KernelAttested."""
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("cannot steer pid allocation (ns_last_pid not writable)")
    with varta.Observer(sock_path, 10_000, **IDENTITY_ONLY) as obs:
        pid = send_once_and_reap(sock_path)
        impostor = claim_pid(pid)
        if impostor is None:
            pytest.skip(f"could not get pid {pid} again (busy machine)")
        try:
            assert start_time(pid) == start_time(impostor.pid)  # /proc answers for it
            events = poll_until(obs, lambda e: isinstance(e, varta.Beat), within=10.0)
            assert len(events) == 1, events
            assert events[0].origin == BeatOrigin.SOCKET_MODE_ONLY
            assert events[0].pid_ns_inode is None
            info = obs.agent(pid)
            assert info is not None
            assert info.generation is None, "the impostor's start time was pinned"
            assert obs.identity_counters()["identity_sender_exited"] == 1
        finally:
            impostor.kill()
            impostor.wait()


def test_no_pidfd_leaks_under_many_datagrams(sock_path: str) -> None:
    """Every pidfd is closed, whatever becomes of its datagram: beats,
    rate-limited and out-of-order frames, auth failures, wrong lengths,
    senders gone before the read."""
    blaster = textwrap.dedent(
        """
        import os, socket, sys, varta
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.connect(sys.argv[1])
        me = os.getpid()
        for n in range(1, int(sys.argv[2]) + 1):
            s.send(varta.encode(0, me, n, n))   # blocking while the queue is full
            if n % 50 == 0:
                s.send(varta.encode(0, me, 1, 1))    # out of order
                s.send(varta.encode(0, os.getppid(), n, n))  # not its pid: AuthFailure
                s.send(b"short")                      # truncated
                s.send(bytes(40))                     # over-long
        """
    )
    n = 3000
    extra = 4 * (n // 50)
    with varta.Observer(
        sock_path, 10_000, max_beat_rate=1000, emit_beats=False, **IDENTITY_ONLY
    ) as obs:
        # Warm up (one datagram through the whole path) before the baseline.
        send_once_and_reap(sock_path)
        list(obs.poll(timeout=0.3))
        before = open_fds()
        # Queued before the blaster fills the socket (a few datagrams fit).
        gone = [send_once_and_reap(sock_path) for _ in range(3)]
        p = subprocess.Popen([sys.executable, "-c", blaster, sock_path, str(n)])
        total = 1 + n + extra + len(gone)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            list(obs.poll(timeout=0.1))
            c = obs.identity_counters()
            if c["pidfds_received"] + c["pidfds_unavailable"] >= total:
                break
            if not obs.pidfd_identity and p.poll() is not None:
                break
        assert p.wait(timeout=30) == 0
        # While datagrams flow the observer keeps its most recent pidfds
        # open (a bounded number); an idle wait closes them all.
        assert len(os.listdir("/proc/self/fd")) <= before + 96 + 64  # kept max + a batch
        list(obs.poll(timeout=0.3))
        after = open_fds()
        c = obs.identity_counters()
        counters = obs.counters()
        assert after == before, (before, after, c)
        assert c["pidfds_closed"] == c["pidfds_received"], c
        if obs.pidfd_identity:
            assert c["pidfds_received"] + c["pidfds_unavailable"] == total, c
            assert c["identity_sender_exited"] == 1 + len(gone)
        assert counters["frame_auth_failures"] == n // 50
        assert counters["truncated_datagrams"] == 2 * (n // 50)
