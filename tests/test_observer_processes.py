"""varta.Observer against real processes: a liar claiming another pid, a
sender under another uid, an agent stopped and resumed with SIGSTOP/SIGCONT,
Ctrl-C during poll()."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any, Callable

import pytest

import varta
from observer_helpers import drain_for, poll_until
from varta import BeatOrigin

# A minimal agent: a plain socket and varta.encode, one beat every 20 ms
# (pacing is the agent's workload, not test synchronisation).
AGENT = textwrap.dedent(
    """
    import os, socket, sys, time, varta
    path = sys.argv[1]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n = 0
    while True:
        n += 1
        try:
            s.sendto(varta.encode(0, os.getpid(), n, n), path)
        except OSError:
            pass
        time.sleep(0.02)
    """
)


def test_frame_claiming_another_pid_is_an_auth_failure(sock_path: str) -> None:
    liar = textwrap.dedent(
        """
        import os, socket, sys, varta
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(varta.encode(0, int(sys.argv[2]), 1, 1), sys.argv[1])
        """
    )
    victim = os.getpid()
    with varta.Observer(sock_path, 10_000) as obs:
        subprocess.run([sys.executable, "-c", liar, sock_path, str(victim)], check=True)
        events = poll_until(obs, lambda e: isinstance(e, varta.AuthFailure), within=10.0)
        assert [type(e) for e in events] == [varta.AuthFailure]
        assert events[0].claimed_pid == victim
        assert obs.agents() == []
        assert obs.agent(victim) is None
        c = obs.counters()
        assert c["frame_auth_failures"] == 1
        assert c["beats"] == 0


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="sending as another uid needs root (setuid to 65534)")
def test_sender_with_another_uid_is_refused(sock_path: str) -> None:
    # docs/observer.md#credentials: a peer whose kernel uid differs from ours is an Io
    # event (permission denied) and never reaches the tracker, even with a
    # socket mode that lets it send.
    os.chmod(os.path.dirname(sock_path), 0o755)
    with varta.Observer(sock_path, 10_000, socket_mode=0o666) as obs:
        child = os.fork()
        if child == 0:  # child: become nobody, send a valid frame with its own pid
            code = 1
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.sendto(varta.encode(0, os.getpid(), 1, 1), sock_path)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child could not send as nobody"

        events = poll_until(obs, lambda e: isinstance(e, varta.Io), within=10.0)
        assert [type(e) for e in events] == [varta.Io]
        (io,) = events
        assert io.errno == errno.EACCES
        assert "permission denied" in io.error and "uid" in io.error
        assert obs.agents() == []
        assert obs.agent(child) is None
        c = obs.counters()
        assert c["io_errors"] == 1
        assert (c["beats"], c["frame_auth_failures"]) == (0, 0)


def is_stall(pid: int) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, varta.Stall) and e.pid == pid


def is_beat(pid: int) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, varta.Beat) and e.pid == pid


def test_sigstop_stalls_once_and_sigcont_rearms(sock_path: str) -> None:
    threshold_ms = 200
    with varta.Observer(sock_path, threshold_ms) as obs:
        agent = subprocess.Popen([sys.executable, "-c", AGENT, sock_path])
        try:
            pid = agent.pid
            poll_until(obs, is_beat(pid), within=10.0)

            agent.send_signal(signal.SIGSTOP)
            events = poll_until(obs, is_stall(pid), within=10.0)
            stalls = [e for e in events if isinstance(e, varta.Stall)]
            assert len(stalls) == 1
            (s,) = stalls
            assert s.origin is BeatOrigin.KERNEL_ATTESTED
            assert s.observer_ns - s.last_ns >= threshold_ms * 1_000_000
            assert s.generation is not None
            info = obs.agent(pid)
            assert info is not None and info.stalled and info.stalls == 1
            # The exporter's row says stalled (status 3) with the same counts.
            assert list(obs.pid_rows()) == [(pid, info.beats, 1, 3)]

            # Still stopped for three more thresholds: no second stall.
            later = drain_for(obs, 3 * threshold_ms / 1000)
            assert not any(is_stall(pid)(e) for e in later), later

            agent.send_signal(signal.SIGCONT)
            events = poll_until(obs, is_beat(pid), within=10.0)
            info = obs.agent(pid)
            assert info is not None and not info.stalled
            assert obs.next_deadline_ns() is not None
            ((row_pid, _, row_stalls, row_status),) = obs.pid_rows()
            assert (row_pid, row_stalls, row_status) == (pid, 1, int(info.status))

            agent.send_signal(signal.SIGSTOP)
            events = poll_until(obs, is_stall(pid), within=10.0)
            assert len([e for e in events if is_stall(pid)(e)]) == 1
            info = obs.agent(pid)
            assert info is not None and info.stalls == 2
            assert obs.counters()["stalls"] == 2
        finally:
            agent.kill()
            agent.send_signal(signal.SIGCONT)
            agent.wait()


def wait_in_poll(pid: int, within: float = 10.0) -> None:
    """Wait until the process's main thread sleeps in ``Observer.poll`` (on the
    event queue's futex; the ingest thread is the one in ppoll(2))."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read()
        if "futex" in wchan or "poll" in wchan:
            return
        time.sleep(0.005)
    raise AssertionError("child never blocked in poll()")


def test_ctrl_c_interrupts_a_blocking_poll_promptly(sock_path: str) -> None:
    child = textwrap.dedent(
        """
        import sys, time, varta
        obs = varta.Observer(sys.argv[1], 1000)
        print("ready", flush=True)
        try:
            list(obs.poll())
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
            sys.exit(0)
        print("poll returned", flush=True)
        sys.exit(1)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child, sock_path], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        wait_in_poll(proc.pid)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline().split()
        assert line[0] == "interrupted", line
        latency = float(line[1]) - sent
        assert latency < 0.5, f"KeyboardInterrupt took {latency:.3f}s"
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_forked_child_closing_its_copy_keeps_the_socket_file(sock_path: str) -> None:
    with varta.Observer(sock_path, 10_000) as obs:
        pid = os.fork()
        if pid == 0:  # child: close the inherited copy, as interpreter exit would
            try:
                obs.close()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.path.exists(sock_path), "a child must not unlink the parent's socket"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(varta.encode(0, os.getpid(), 1, 1), sock_path)
        s.close()
        poll_until(obs, lambda e: isinstance(e, varta.Beat), within=10.0)
    assert not os.path.exists(sock_path)
