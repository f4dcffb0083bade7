"""Upstream's own agent against our Observer.

Upstream's pure-Python client (PyPI ``varta`` 0.2.0) has the same import name
as this package, so it runs in a child process under a separate interpreter,
``$VARTA_UPSTREAM_PYTHON`` (``scripts/test.sh`` creates ``.venv-upstream`` and
sets it). The child uses upstream's public API as documented: ``Varta.connect``
+ ``beat`` for beats, and ``varta.panic.install_excepthook_uds`` for the
terminal frame (upstream 0.2.0 has no ``send_terminal``; its only terminal
frame is the one its excepthook sends for an uncaught exception).
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from typing import Any

import pytest

import varta
from observer_helpers import drain_for, poll_until
from varta import NONCE_TERMINAL, BeatOrigin, Status

UPSTREAM_AGENT = textwrap.dedent(
    """
    import os, sys
    import varta

    # Upstream 0.2.0, not this package (which would have an Observer).
    assert varta.__version__ == "0.2.0", varta.__version__
    assert not hasattr(varta, "Observer"), varta.__file__

    path = sys.argv[1]
    varta.panic.install_excepthook_uds(path)
    agent = varta.Varta.connect(path)
    outcomes = [
        agent.beat(varta.Status.OK),
        agent.beat("degraded", 7),
        agent.beat(varta.Status.CRITICAL, 2**32 - 1),
        agent.beat(0, 1),
    ]
    assert all(o.is_sent for o in outcomes), [str(o) for o in outcomes]
    print(os.getpid(), flush=True)

    # Stop beating until the test says what to do next.
    if sys.stdin.readline().strip() == "panic":
        raise RuntimeError("upstream agent crashing on purpose")
    """
)

# What the child's four beats are on the wire, in order (nonces 1..4).
SENT = [(Status.OK, 0), (Status.DEGRADED, 7), (Status.CRITICAL, 2**32 - 1), (Status.OK, 1)]

THRESHOLD_MS = 200


@pytest.fixture(scope="module")
def upstream_python() -> str:
    py = os.environ.get("VARTA_UPSTREAM_PYTHON")
    if not py:
        why = "VARTA_UPSTREAM_PYTHON is unset (scripts/test.sh sets it to .venv-upstream's python)"
        if os.environ.get("VARTA_REQUIRE_UPSTREAM") == "1":
            pytest.fail(f"VARTA_REQUIRE_UPSTREAM=1 but {why}")
        pytest.skip(f"no upstream interpreter: {why}")
    return py


def test_upstream_agent_beats_stalls_and_crashes(upstream_python: str, sock_path: str) -> None:
    seen: list[Any] = []
    # max_beat_rate=0: the four beats leave back to back and may be read in one
    # batch, which the default per-pid limit (>= 10 ms apart) would thin out.
    with varta.Observer(sock_path, THRESHOLD_MS, max_beat_rate=0) as obs:
        # -I: ignore PYTHONPATH and the user site, so only upstream's varta is importable.
        child = subprocess.Popen(
            [upstream_python, "-I", "-c", UPSTREAM_AGENT, sock_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdin is not None
            line = child.stdout.readline()
            assert line, f"upstream agent died before beating: {child.communicate()[1]}"
            pid = int(line)
            assert pid == child.pid

            # Beats: kernel-attested, the child's pid, nonces 1..4, what upstream sent.
            seen += poll_until(obs, lambda e: isinstance(e, varta.Beat) and e.nonce == len(SENT))
            beats = [e for e in seen if isinstance(e, varta.Beat)]
            assert [(b.status, b.payload) for b in beats] == SENT
            assert [b.nonce for b in beats] == [1, 2, 3, 4]
            assert {b.pid for b in beats} == {pid}
            assert {b.origin for b in beats} == {BeatOrigin.KERNEL_ATTESTED}

            # The child now waits on stdin without beating: exactly one Stall.
            seen += poll_until(obs, lambda e: isinstance(e, varta.Stall))
            seen += drain_for(obs, 3 * THRESHOLD_MS / 1000)
            stalls = [e for e in seen if isinstance(e, varta.Stall)]
            assert len(stalls) == 1, stalls
            (stall,) = stalls
            assert stall.pid == pid and stall.last_nonce == 4
            assert stall.origin is BeatOrigin.KERNEL_ATTESTED
            assert stall.verdict is varta.Verdict.HUNG  # alive, silent (on stdin)
            info = obs.agent(pid)
            assert info is not None and info.stalled and info.stalls == 1

            # Crash: upstream's excepthook sends Critical + NONCE_TERMINAL, then the
            # previous hook prints the traceback. Reap the child first, so the
            # observer reads the frame of a process that is already gone.
            _, err = child.communicate("panic\n", timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
        assert child.returncode == 1, err
        assert "RuntimeError: upstream agent crashing on purpose" in err, err

        # The terminal frame is read first (it was queued before the exit),
        # then the exit: upstream's payload 0 reads as a crash, and the
        # process is gone, so the verdict is "crashed" and the pid retires.
        seen += poll_until(obs, lambda e: isinstance(e, varta.Stall) and e.verdict != "hung")
        terminal = next(e for e in seen if isinstance(e, varta.Beat) and e.nonce == NONCE_TERMINAL)
        assert (terminal.pid, terminal.status, terminal.payload) == (pid, Status.CRITICAL, 0)
        assert terminal.origin is BeatOrigin.KERNEL_ATTESTED
        end = [e for e in seen if isinstance(e, varta.Stall)][-1]
        assert (end.pid, end.verdict, end.cause) == (pid, varta.Verdict.CRASHED, "crash")
        assert end.last_nonce == NONCE_TERMINAL
        assert obs.agent(pid) is None

        assert {type(e) for e in seen} == {varta.Beat, varta.Stall}, seen
        c = obs.counters()
        assert (c["beats"], c["stalls"], c["frame_auth_failures"], c["io_errors"]) == (5, 2, 0, 0)
        assert c["stall_verdicts"] == {
            "hung": 1,
            "exited": 0,
            "crashed": 1,
            "vanished": 0,
            "unknown": 0,
        }
