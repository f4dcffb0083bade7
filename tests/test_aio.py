"""varta.aio.watch_loop against a real observer (docs/agent.md#asyncio): a
loop blocked by a synchronous call goes hung, loop lag beats DEGRADED, with
the default loop and with uvloop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import varta
import varta.aio
from observer_helpers import poll_until
from varta import _loops, forensics

# A coroutine that makes the classic mistake: a synchronous sleep on the loop.
# argv: socket path, loop flavour, agent kind, block seconds, max_lag_ms.
BLOCKER = textwrap.dedent(
    """
    import asyncio, sys, time, varta, varta.aio
    path, flavour, kind = sys.argv[1], sys.argv[2], sys.argv[3]
    block_s, max_lag_ms = float(sys.argv[4]), int(sys.argv[5])

    async def main():
        print(type(asyncio.get_running_loop()).__module__, flush=True)
        if kind == "heartbeat":
            target = varta.Heartbeat.connect(path, interval_ms=100)
        else:
            target = path
        async with varta.aio.watch_loop(target, interval_ms=100, max_lag_ms=max_lag_ms):
            await asyncio.sleep(0.5)
            print("blocking", flush=True)
            time.sleep(block_s)  # blocks the loop: no callback runs
            print("unblocked", flush=True)
            await asyncio.sleep(1.0)
        if kind == "heartbeat":
            target.close(final=True)

    if flavour == "uvloop":
        import uvloop  # the test must fail, not skip, without it
        uvloop.run(main())
    else:
        asyncio.run(main())
    """
)

LOOP_MODULE = {"asyncio": "asyncio.unix_events", "uvloop": "uvloop"}


def line_of(code: str, marker: str) -> int:
    return next(i for i, line in enumerate(code.splitlines(), 1) if marker in line)


def is_beat(pid: int) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, varta.Beat) and e.pid == pid


def is_stall(pid: int) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, varta.Stall) and e.pid == pid


def start_blocker(
    path: str, flavour: str, kind: str, block_s: float, max_lag_ms: int
) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", BLOCKER, path, flavour, kind, str(block_s), str(max_lag_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == LOOP_MODULE[flavour]
    return p


def readline(p: subprocess.Popen[str]) -> str:
    assert p.stdout is not None
    return p.stdout.readline().strip()


@pytest.mark.parametrize(
    ("flavour", "kind"), [("asyncio", "path"), ("uvloop", "path"), ("asyncio", "heartbeat")]
)
def test_blocked_loop_is_hung_within_threshold_plus_interval(
    sock_path: str, tmp_path: Path, flavour: str, kind: str
) -> None:
    threshold_ms, interval_ms = 1000, 100
    with varta.Observer(sock_path, threshold_ms, forensics_dir=str(tmp_path / "fx")) as obs:
        p = start_blocker(sock_path, flavour, kind, 5.0, 200)
        try:
            poll_until(obs, is_beat(p.pid), within=10.0)
            assert readline(p) == "blocking"
            blocked_at = time.monotonic()
            events = poll_until(obs, is_stall(p.pid), within=5.0)
            stalled_after = time.monotonic() - blocked_at
            (stall,) = [e for e in events if is_stall(p.pid)(e)]
            assert stall.verdict is varta.Verdict.HUNG
            # The bound; the slack is this test's own polling and the
            # time the "blocking" line takes to reach it.
            assert stalled_after <= (threshold_ms + interval_ms) / 1000 + 0.5, stalled_after
            # The hang capture (docs/finding-hangs.md) shows the blocking call
            # in the coroutine that made it, on the loop's thread.
            doc = forensics.load(stall.forensics)
            assert doc["method"] == "sdk"
            threads = forensics.parse_traceback(doc["python_traceback"])
            blocking = ("<string>", line_of(BLOCKER, "time.sleep(block_s)"), "main")
            assert any(t.frames and t.frames[0] == blocking for t in threads), doc
            # The loop turns again: beats resume, the first late one reporting
            # the lag (about the 5 s block) as DEGRADED.
            assert readline(p) == "unblocked"
            events = poll_until(obs, is_beat(p.pid), within=10.0)
            first = next(e for e in events if is_beat(p.pid)(e))
            assert first.status is varta.Status.DEGRADED
            assert 4_500 <= first.payload <= 10_000, first
            assert p.wait(timeout=30) == 0
        finally:
            p.kill()
            p.wait()


@pytest.mark.parametrize("flavour", ["asyncio", "uvloop"])
@pytest.mark.parametrize("kind", ["path", "heartbeat"])
def test_lag_above_max_lag_beats_degraded_with_the_lag(
    sock_path: str, flavour: str, kind: str
) -> None:
    threshold_ms, block_s, max_lag_ms = 3000, 0.7, 200
    with varta.Observer(sock_path, threshold_ms) as obs:
        p = start_blocker(sock_path, flavour, kind, block_s, max_lag_ms)
        try:
            poll_until(obs, is_beat(p.pid), within=10.0)
            assert readline(p) == "blocking"
            events = poll_until(
                obs,
                lambda e: is_beat(p.pid)(e) and e.status is varta.Status.DEGRADED,
                within=10.0,
            )
            degraded = [e for e in events if is_beat(p.pid)(e) and e.status != varta.Status.OK]
            assert [e.status for e in degraded] == [varta.Status.DEGRADED]
            lag = degraded[0].payload
            assert block_s * 1000 - 150 <= lag < threshold_ms, lag
            assert not [e for e in events if is_stall(p.pid)(e)]
            # On time again: OK beats follow.
            poll_until(
                obs, lambda e: is_beat(p.pid)(e) and e.status is varta.Status.OK, within=10.0
            )
            assert p.wait(timeout=30) == 0
        finally:
            p.kill()
            p.wait()


def test_task_form_beats_and_signs_off_when_cancelled(sock_path: str) -> None:
    me = os.getpid()

    async def main(obs: varta.Observer) -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        watcher = varta.aio.watch_loop(sock_path, interval_ms=20)
        task = asyncio.ensure_future(watcher)  # also: create_task(watcher.run())
        while not watcher.stats()["sent"]:
            await asyncio.sleep(0.01)
        watched = loop in _loops.WATCHED_LOOPS
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return watched, loop in _loops.WATCHED_LOOPS

    with varta.Observer(sock_path, 10_000) as obs:
        watched, still = asyncio.run(main(obs))
        assert (watched, still) == (True, False)
        events = poll_until(obs, lambda e: is_beat(me)(e) and e.nonce == varta.NONCE_TERMINAL)
        beats = [e for e in events if is_beat(me)(e)]
        assert beats[0].status is varta.Status.OK and beats[0].nonce == 1
        assert beats[-1].payload == varta.PAYLOAD_CLEAN_EXIT


def test_borrowed_agents_stay_open_and_loops_are_counted(sock_path: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        agent = varta.Varta.connect(sock_path)
        hb = varta.Heartbeat.connect(sock_path, interval_ms=40)
        a = varta.aio.watch_loop(agent, interval_ms=10)
        b = varta.aio.watch_loop(hb)
        assert b.interval_ms == 20  # half the heartbeat's interval
        async with a:
            async with b:
                with pytest.raises(RuntimeError, match="already watching"):
                    b.start()
                while not (a.stats()["sent"] and hb.stats()["sent"]):
                    await asyncio.sleep(0.01)
            # a still watches this loop after b left.
            assert loop in _loops.WATCHED_LOOPS
        assert loop not in _loops.WATCHED_LOOPS
        assert not agent.closed and not hb.closed and hb.beating
        agent.close()
        hb.close()

    with varta.Observer(sock_path, 10_000):
        asyncio.run(main())


def test_bad_arguments_are_clear_errors(sock_path: str) -> None:
    with pytest.raises(TypeError, match="path_or_agent must be"):
        varta.aio.watch_loop(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval_ms must be an int >= 1"):
        varta.aio.watch_loop(sock_path, interval_ms=0)
    with pytest.raises(ValueError, match="max_lag_ms must be"):
        varta.aio.watch_loop(sock_path, max_lag_ms=-1)
    with pytest.raises(RuntimeError, match="no running event loop"):
        varta.aio.watch_loop(sock_path).start()
