"""Stall verdicts on real processes (docs/verdicts.md): why an agent went
silent, reported promptly when its process ends, and its slot retired.

Each agent is a child process running our SDK; the test drives its end
(a clean ``with`` exit, an uncaught exception under the crash hook, SIGTERM
under the exit-signal hook, SIGKILL, SIGSTOP) and waits for the observer's
events. Thresholds are long where the test proves promptness: an ``exited``
or ``vanished`` verdict that arrives before the threshold could only have
come from the exit watch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

import varta
from observer_helpers import drain_for, poll_until
from varta import Verdict

# An agent that beats until told (one line on stdin) how to end:
# "clean" leaves the with block (close(final=True)), "raise" raises under the
# crash hook, "wait" stops beating and waits for a signal.
AGENT = textwrap.dedent(
    """
    import os, signal, sys, time, varta, varta.panic
    path, how = sys.argv[1], sys.argv[2]
    varta.panic.install_excepthook_uds(path, exit_signals=(how == "sigterm-hook"))
    with varta.Varta.connect(path) as agent:
        agent.beat()
        print(os.getpid(), flush=True)
        line = sys.stdin.readline().strip()
        if line == "raise":
            raise RuntimeError("agent crashing on purpose")
        if line == "wait":
            while True:
                signal.pause()
    """
)

LONG_MS = 30_000  # far beyond any wait below: a verdict before it came from the exit watch


class Child:
    def __init__(self, sock: str, how: str = "plain") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", AGENT, sock, how],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, self.proc.communicate()[1]
        self.pid = int(line)

    def tell(self, what: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()

    def end(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)
        return self.proc.returncode


@pytest.fixture
def children() -> Iterator[list[Child]]:
    made: list[Child] = []
    yield made
    for c in made:
        c.end()


def stall_of(pid: int) -> Any:
    return lambda e: isinstance(e, varta.Stall) and e.pid == pid


def the_stall(seen: list[Any], pid: int) -> varta.Stall:
    stalls = [e for e in seen if isinstance(e, varta.Stall) and e.pid == pid]
    assert len(stalls) == 1, stalls
    return stalls[0]


def retired(obs: varta.Observer, pid: int) -> bool:
    return obs.agent(pid) is None and pid not in {row[0] for row in obs.pid_rows()}


def test_clean_exit_is_exited_at_once_and_retired(sock_path: str, children: list[Child]) -> None:
    with varta.Observer(sock_path, LONG_MS) as obs:
        child = Child(sock_path)
        children.append(child)
        poll_until(obs, lambda e: isinstance(e, varta.Beat) and e.pid == child.pid)
        start = time.monotonic()
        child.tell("clean")
        seen = poll_until(obs, stall_of(child.pid), within=10.0)
        assert time.monotonic() - start < LONG_MS / 1000
        stall = the_stall(seen, child.pid)
        assert (stall.verdict, stall.cause) == (Verdict.EXITED, "clean_exit")
        assert stall.last_nonce == varta.NONCE_TERMINAL
        assert stall.comm  # read from /proc while the process lived
        assert retired(obs, child.pid)
        assert obs.take_removed() == [child.pid]
        c = obs.counters()
        assert c["stall_verdicts"]["exited"] == 1 and c["tracker_retired"] == 1
        assert child.end() == 0


def test_crash_hook_gives_crashed(sock_path: str, children: list[Child]) -> None:
    with varta.Observer(sock_path, LONG_MS) as obs:
        child = Child(sock_path)
        children.append(child)
        child.tell("raise")
        stall = the_stall(poll_until(obs, stall_of(child.pid), within=10.0), child.pid)
        assert (stall.verdict, stall.cause) == (Verdict.CRASHED, "crash")
        assert retired(obs, child.pid)
        assert child.end() == 1


def test_sigterm_under_the_exit_signal_hook_is_an_orderly_exit(
    sock_path: str, children: list[Child]
) -> None:
    with varta.Observer(sock_path, LONG_MS) as obs:
        child = Child(sock_path, "sigterm-hook")
        children.append(child)
        poll_until(obs, lambda e: isinstance(e, varta.Beat) and e.pid == child.pid)
        child.proc.send_signal(signal.SIGTERM)
        stall = the_stall(poll_until(obs, stall_of(child.pid), within=10.0), child.pid)
        assert (stall.verdict, stall.cause) == (Verdict.EXITED, "SIGTERM")
        assert child.end() == -signal.SIGTERM


def test_sigkill_gives_vanished_at_once(sock_path: str, children: list[Child]) -> None:
    with varta.Observer(sock_path, LONG_MS) as obs:
        child = Child(sock_path)
        children.append(child)
        poll_until(obs, lambda e: isinstance(e, varta.Beat) and e.pid == child.pid)
        child.proc.kill()
        stall = the_stall(poll_until(obs, stall_of(child.pid), within=10.0), child.pid)
        assert (stall.verdict, stall.cause) == (Verdict.VANISHED, None)
        assert retired(obs, child.pid)
        assert obs.identity_counters()["exit_watch_exits"] == 1


def test_without_the_exit_watch_an_exit_is_judged_at_the_threshold(
    sock_path: str, children: list[Child]
) -> None:
    with varta.Observer(sock_path, 300, exit_watch=False) as obs:
        child = Child(sock_path)
        children.append(child)
        poll_until(obs, lambda e: isinstance(e, varta.Beat) and e.pid == child.pid)
        child.proc.kill()
        child.proc.wait()  # reaped: /proc has no such process at the threshold
        stall = the_stall(poll_until(obs, stall_of(child.pid), within=10.0), child.pid)
        assert stall.verdict is Verdict.VANISHED
        assert stall.observer_ns - stall.last_ns >= 300_000_000
        assert retired(obs, child.pid)
        assert obs.identity_counters()["exit_watch"] is False


def test_a_stopped_process_is_hung_stays_tracked_and_retires_quietly_when_killed(
    sock_path: str, children: list[Child]
) -> None:
    with varta.Observer(sock_path, 300) as obs:
        child = Child(sock_path)
        children.append(child)
        poll_until(obs, lambda e: isinstance(e, varta.Beat) and e.pid == child.pid)
        child.proc.send_signal(signal.SIGSTOP)
        stall = the_stall(poll_until(obs, stall_of(child.pid), within=10.0), child.pid)
        assert (stall.verdict, stall.cause) == (Verdict.HUNG, None)
        info = obs.agent(child.pid)
        assert info is not None and info.stalled and info.verdict is Verdict.HUNG
        # Recovery's kill: the hang was reported once; the exit only retires it.
        child.proc.kill()
        child.proc.wait()
        deadline = time.monotonic() + 10
        while not retired(obs, child.pid) and time.monotonic() < deadline:
            list(obs.poll(timeout=0.1))
        assert retired(obs, child.pid)
        assert [e for e in drain_for(obs, 0.3) if isinstance(e, varta.Stall)] == []
        c = obs.counters()
        assert c["stalls"] == 1 and c["stall_verdicts"]["hung"] == 1


def test_unattested_agents_get_unknown(sock_path: str) -> None:
    """A sender the kernel does not vouch for (here: a datagram claiming
    another pid over plain UDP) is judged by silence alone."""
    with varta.Observer(None, 200, udp_port=0, plaintext_udp=True) as obs:
        addr = obs.udp_address
        assert addr is not None
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(varta.encode(0, 4242, 1, 1), (addr[0], addr[1]))
        seen = poll_until(obs, stall_of(4242), within=10.0)
        stall = the_stall(seen, 4242)
        assert stall.verdict is Verdict.UNKNOWN and stall.comm is None
        info = obs.agent(4242)
        assert info is not None and info.verdict is Verdict.UNKNOWN


def test_verdict_enum_and_payload_helpers() -> None:
    assert [str(v) for v in Verdict] == ["hung", "exited", "crashed", "vanished", "unknown"]
    assert Verdict("exited") is Verdict.EXITED and Verdict.EXITED == "exited"
    assert [v.process_gone for v in Verdict] == [False, True, True, True, False]
    assert varta.terminal_cause(varta.PAYLOAD_CLEAN_EXIT) == "clean_exit"
    assert varta.terminal_cause(0) == "crash"
    assert varta.terminal_cause(varta.signal_payload(15)) == "signal 15"
    with pytest.raises(ValueError):
        varta.signal_payload(0)
    s = varta.Stall(1, 2, 3, 3, None, None, 4, verdict="hung", comm="w", cause=None)
    assert s.verdict is Verdict.HUNG and "verdict=Verdict.HUNG" in repr(s)
    with pytest.raises(ValueError):
        varta.Stall(1, 2, 3, 3, None, None, 4, verdict="sleepy")
    assert os.getpid() > 1
