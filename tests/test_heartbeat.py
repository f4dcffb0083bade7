"""varta.Heartbeat against a real observer: beats only while progress is made
(docs/agent.md#progress-heartbeats), hung while the beater thread still runs,
fork leaves the child without a beater."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
from typing import Any, Callable

import pytest

import varta
from observer_helpers import drain_for, poll_until

# A worker whose main loop calls progress() until told to stall; a helper
# thread reads commands from stdin and answers with the heartbeat's state.
WORKER = textwrap.dedent(
    """
    import json, sys, threading, time, varta
    hb = varta.Heartbeat.connect(sys.argv[1], interval_ms=int(sys.argv[2]))
    stalled = threading.Event()
    quit_ = threading.Event()

    def control():
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "stall":
                stalled.set()
            elif cmd == "resume":
                stalled.clear()
            elif cmd == "quit":
                quit_.set()
                return
            state = dict(hb.stats(), beating=hb.beating, progress=hb.progress_count)
            print(json.dumps(state), flush=True)

    threading.Thread(target=control, daemon=True).start()
    print("ready", flush=True)
    while not quit_.is_set():
        if not stalled.is_set():
            hb.progress()
        time.sleep(0.002)  # the worker's "unit of work"
    hb.close(final=True)
    """
)


def is_beat(pid: int) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, varta.Beat) and e.pid == pid


def is_stall(pid: int) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, varta.Stall) and e.pid == pid


class Worker:
    def __init__(self, path: str, interval_ms: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, path, str(interval_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.readline() == "ready"
        self.pid = self.proc.pid

    def readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def send(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        state: dict[str, Any] = json.loads(self.readline())
        return state

    def quit(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def test_stalled_progress_is_hung_while_the_beater_runs_and_resumes(sock_path: str) -> None:
    threshold_ms, interval_ms = 600, 50
    with varta.Observer(sock_path, threshold_ms) as obs:
        w = Worker(sock_path, interval_ms)
        try:
            beats = [e for e in poll_until(obs, is_beat(w.pid), within=10.0) if is_beat(w.pid)(e)]
            assert beats[0].status is varta.Status.OK
            assert beats[0].payload >= 1, "a beat carries the progress since the last one"

            at_stall = w.send("stall")
            assert at_stall["beating"]
            events = poll_until(obs, is_stall(w.pid), within=10.0)
            (stall,) = [e for e in events if is_stall(w.pid)(e)]
            assert stall.verdict is varta.Verdict.HUNG

            # Stalled: the beater thread keeps ticking, but sends nothing.
            before = w.send("stats")
            window = drain_for(obs, 10 * interval_ms / 1000)
            after = w.send("stats")
            assert not [e for e in window if is_beat(w.pid)(e)], window
            assert after["beating"], "the beater thread still runs"
            # (Counted once the kernel took the beat: compare counts taken
            # after the stall, when nothing has been sent for a threshold.)
            assert after["sent"] == before["sent"] >= 1
            assert after["idle"] >= before["idle"] + 5
            assert after["progress"] == before["progress"]

            # Resumed: beats resume and the observer sees the agent again.
            w.send("resume")
            poll_until(obs, is_beat(w.pid), within=10.0)
            info = obs.agent(w.pid)
            assert info is not None and not info.stalled

            assert w.quit() == 0
            poll_until(
                obs,
                lambda e: is_beat(w.pid)(e) and e.nonce == varta.NONCE_TERMINAL,
                within=10.0,
            )
        finally:
            w.kill()


def test_no_beat_without_progress_from_the_start(sock_path: str) -> None:
    with varta.Observer(sock_path, 10_000) as obs:
        hb = varta.Heartbeat.connect(sock_path, interval_ms=20)
        try:
            window = drain_for(obs, 0.4)
            assert not [e for e in window if isinstance(e, varta.Beat)], window
            stats = hb.stats()
            assert stats["sent"] == 0 and stats["idle"] >= 5
            hb.progress()
            (beat,) = [
                e for e in poll_until(obs, is_beat(os.getpid())) if isinstance(e, varta.Beat)
            ]
            assert (beat.status, beat.payload, beat.nonce) == (varta.Status.OK, 1, 1)
        finally:
            hb.close()
        assert hb.closed and not hb.beating


def test_set_status_reports_on_the_next_beats(sock_path: str) -> None:
    me = os.getpid()
    with varta.Observer(sock_path, 10_000) as obs:
        with varta.Heartbeat.connect(sock_path, interval_ms=20) as hb:
            hb.set_status(varta.Status.DEGRADED, 4242)
            hb.progress()
            events = poll_until(obs, is_beat(me), within=10.0)
            beat = next(e for e in events if is_beat(me)(e))
            assert (beat.status, beat.payload) == (varta.Status.DEGRADED, 4242)
            hb.set_status("critical")  # no payload: the progress count
            for _ in range(3):
                hb.progress()
            # The three calls may straddle a tick: the payloads add up to 3.
            critical: list[int] = []

            def three_reported(e: Any) -> bool:
                if is_beat(me)(e) and e.status is varta.Status.CRITICAL:
                    critical.append(e.payload)
                return sum(critical) >= 3

            poll_until(obs, three_reported, within=10.0)
            assert sum(critical) == 3, critical
            hb.set_status()
            hb.progress()
            poll_until(obs, lambda e: is_beat(me)(e) and e.status is varta.Status.OK)
            with pytest.raises(ValueError, match="STALL"):
                hb.set_status(varta.Status.STALL)
            with pytest.raises(ValueError, match="unknown status"):
                hb.set_status("sleepy")
            with pytest.raises(ValueError, match="payload"):
                hb.set_status("ok", 2**32)
        # Leaving the block normally signs off with the clean-exit terminal frame.
        term = next(
            e
            for e in poll_until(obs, lambda e: is_beat(me)(e) and e.nonce == varta.NONCE_TERMINAL)
            if is_beat(me)(e) and e.nonce == varta.NONCE_TERMINAL
        )
        assert term.payload == varta.PAYLOAD_CLEAN_EXIT


def test_exception_exit_closes_without_terminal_frame(sock_path: str) -> None:
    with varta.Observer(sock_path, 10_000) as obs:
        with pytest.raises(RuntimeError):
            with varta.Heartbeat.connect(sock_path, interval_ms=20) as hb:
                raise RuntimeError("boom")
        assert hb.closed
        assert not [e for e in drain_for(obs, 0.2) if isinstance(e, varta.Beat)]


def test_connect_errors_are_clear(sock_path: str) -> None:
    with pytest.raises(FileNotFoundError):
        varta.Heartbeat.connect(sock_path)
    with varta.Observer(sock_path, 10_000):
        for bad in (0, -1, 3_600_001):
            with pytest.raises(ValueError, match=r"interval_ms must be in 1\.\.=3600000"):
                varta.Heartbeat.connect(sock_path, interval_ms=bad)
        with pytest.raises(TypeError):
            varta.Heartbeat.connect(sock_path, 100)  # type: ignore[misc]
        with varta.Heartbeat.connect(sock_path) as hb:
            assert hb.interval_ms == 500
            assert "interval_ms=500" in repr(hb)
        assert repr(hb) == "<varta.Heartbeat closed>"


def test_the_beater_never_needs_the_gil(sock_path: str) -> None:
    # A hot loop that never gives the GIL up on its own (switch interval 10 s):
    # a beater that needed the GIL would send nothing until the loop ended.
    with (
        varta.Observer(sock_path, 10_000),
        varta.Heartbeat.connect(sock_path, interval_ms=20) as hb,
    ):
        old = sys.getswitchinterval()
        sys.setswitchinterval(10.0)
        try:
            progress = hb.progress
            sent_during = 0
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                for _ in range(1000):
                    progress()
                sent_during = hb.stats()["sent"]
        finally:
            sys.setswitchinterval(old)
        assert sent_during >= 5, hb.stats()


def _allocations(call: Callable[[], object], n: int) -> tuple[int, int, int]:
    """(net bytes, peak bytes, net blocks) over n calls, as tracemalloc sees
    them: its peak catches even an object made and freed within a call."""
    tracemalloc.start()
    try:
        for _ in itertools.repeat(None, 1000):
            call()
        blocks = sys.getallocatedblocks()
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in itertools.repeat(None, n):  # makes no ints
            call()
        after, peak = tracemalloc.get_traced_memory()
        return after - before, peak - before, sys.getallocatedblocks() - blocks
    finally:
        tracemalloc.stop()


def test_progress_allocates_nothing(sock_path: str) -> None:
    with varta.Observer(sock_path, 10_000):
        with varta.Heartbeat.connect(sock_path, interval_ms=1000) as hb:
            # The measuring itself costs a few bytes: the same with no call at all.
            baseline = _allocations(int, 100_000)  # int() returns the cached 0
            assert _allocations(hb.progress, 100_000) == baseline
            assert hb.progress_count == 101_000


# docs/agent.md#progress-heartbeats-and-fork: a forked child has no beater.
FORKER = textwrap.dedent(
    """
    import os, sys, time, varta
    hb = varta.Heartbeat.connect(sys.argv[1], interval_ms=20)
    hb.progress()
    while hb.stats()["sent"] == 0:
        time.sleep(0.01)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        ok = not hb.beating
        for _ in range(1000):
            hb.progress()
        time.sleep(0.3)  # ten intervals of the parent's beater
        hb.close(final=True)  # sends nothing: this process never beat
        ok = ok and hb.closed
        os.write(w, b"ok" if ok else b"bad")
        os._exit(0)
    os.close(w)
    print(child, flush=True)
    status = os.waitpid(child, 0)[1]
    verdict = os.read(r, 8).decode()
    # The parent still beats on its own progress.
    sent = hb.stats()["sent"]
    hb.progress()
    deadline = time.monotonic() + 10
    while hb.stats()["sent"] == sent and time.monotonic() < deadline:
        time.sleep(0.01)
    print(verdict, status, hb.beating, hb.stats()["sent"] > sent, flush=True)
    hb.close(final=True)
    """
)


def test_forked_child_gets_no_beater(sock_path: str) -> None:
    with varta.Observer(sock_path, 10_000) as obs:
        out = subprocess.run(
            [sys.executable, "-c", FORKER, sock_path],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        child_line, result = out.stdout.splitlines()
        assert result == "ok 0 True True", out.stdout
        child = int(child_line)
        events = drain_for(obs, 0.3)
        assert not [e for e in events if getattr(e, "pid", None) == child], events
        assert obs.agent(child) is None
