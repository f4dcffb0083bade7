"""``varta.Varta`` under threads and ``fork``, and its steady-state allocation
behaviour (``docs/agent.md#fork-safety``, ``docs/agent.md#threads-closing-and-allocation``)."""

from __future__ import annotations

import os
import pathlib
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from collections.abc import Iterator

import pytest

import varta
from varta import BeatOutcome, Status, Varta
from varta._transport import BeatTransport
from varta._types import _SENT


@pytest.fixture
def sock_path() -> Iterator[pathlib.Path]:
    d = pathlib.Path(tempfile.mkdtemp(prefix="va-"))
    yield d / "obs.sock"
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rx(sock_path: pathlib.Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(sock_path))
    s.settimeout(20)
    yield s
    s.close()


def _wait_child(pid: int, result_fd: int, timeout: float = 30.0) -> bytes:
    """Read the child's report from a pipe (bounded wait), then reap it."""
    ready, _, _ = select.select([result_fd], [], [], timeout)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("forked child did not report (deadlock?)")
    data = b""
    while True:
        chunk = os.read(result_fd, 4096)
        if not chunk:
            break
        data += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    return data


# --- threads ------------------------------------------------------------------------

THREADS = 8
PER_THREAD = 10_000

RECEIVER = r"""
import socket, sys
path, total = sys.argv[1], int(sys.argv[2])
r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
r.bind(path)
r.settimeout(60)
sys.stdout.write("ready\n"); sys.stdout.flush()
out = bytearray()
buf = bytearray(64)
for _ in range(total):
    n = r.recv_into(buf)
    assert n == 32, n
    out += buf[:32]
sys.stdout.buffer.write(bytes(out)); sys.stdout.flush()
"""


def test_eight_threads_share_one_agent_without_gaps_or_reordering(
    sock_path: pathlib.Path,
) -> None:
    # The receiver is its own process, so draining never waits for our GIL.
    total = THREADS * PER_THREAD
    proc = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(sock_path), str(total)],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        agent = Varta.connect(sock_path)
        outcomes: dict[str, int] = {}
        lock = threading.Lock()
        start = threading.Barrier(THREADS)

        def worker(tid: int) -> None:
            seen: dict[str, int] = {}
            start.wait()
            for i in range(PER_THREAD):
                while True:
                    o = agent.beat(Status.OK, tid * PER_THREAD + i)
                    seen[o.kind] = seen.get(o.kind, 0) + 1
                    if o is _SENT:
                        break
                    # Linux queues at most net.unix.max_dgram_qlen (10)
                    # datagrams: a full queue is a drop, retried until sent.
                    assert o.is_dropped, o
            with lock:
                for k, v in seen.items():
                    outcomes[k] = outcomes.get(k, 0) + v

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        data, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert outcomes["sent"] == total
    assert len(data) == 32 * total
    frames = [varta.decode(data[i : i + 32]) for i in range(0, len(data), 32)]
    # Wire order == nonce order: exactly 1..total, in arrival order.
    assert [f.nonce for f in frames] == list(range(1, total + 1))
    # Every (thread, iteration) payload arrived exactly once.
    assert sorted(f.payload for f in frames) == list(range(total))
    ts = [f.timestamp for f in frames]
    assert all(a <= b for a, b in zip(ts, ts[1:]))
    assert {f.pid for f in frames} == {os.getpid()}
    agent.close()


# --- fork -----------------------------------------------------------------------------


def test_forked_child_beats_with_its_own_pid_and_a_fresh_session(
    sock_path: pathlib.Path, rx: socket.socket
) -> None:
    agent = Varta.connect(sock_path)
    for _ in range(3):
        assert agent.beat().is_sent
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(r)
            kinds = [agent.beat(Status.DEGRADED, 70 + i).kind for i in range(3)]
            report = f"{kinds} {agent.fork_recoveries()} {agent.clock_regressions()}"
            os.write(w, report.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        report = _wait_child(pid, r).decode()
    finally:
        os.close(r)
    assert report == "['sent', 'sent', 'sent'] 1 0"
    assert agent.beat().is_sent
    frames = [varta.decode(rx.recv(64)) for _ in range(7)]
    parent = [f for f in frames if f.pid == os.getpid()]
    child = [f for f in frames if f.pid == pid]
    assert [f.nonce for f in parent] == [1, 2, 3, 4]
    assert [(f.nonce, f.payload, f.status) for f in child] == [
        (1, 70, Status.DEGRADED),
        (2, 71, Status.DEGRADED),
        (3, 72, Status.DEGRADED),
    ]
    # The child's clock restarted at its first post-fork beat.
    assert child[0].timestamp < parent[-1].timestamp
    assert agent.fork_recoveries() == 0
    agent.close()


class GateTransport(BeatTransport):
    """Blocks in ``send`` (GIL released) until released — in the parent only."""

    def __init__(self, parent_pid: int) -> None:
        self.parent_pid = parent_pid
        self.entered = threading.Event()
        self.release = threading.Event()
        self.reconnects = 0

    def send(self, buf: bytes) -> int:
        if os.getpid() == self.parent_pid:
            self.entered.set()
            assert self.release.wait(30)
        return len(buf)

    def reconnect(self) -> None:
        self.reconnects += 1


def test_child_is_not_deadlocked_by_a_lock_held_at_fork_time() -> None:
    gate = GateTransport(os.getpid())
    agent = Varta(gate)
    holder = threading.Thread(target=agent.beat)
    holder.start()
    try:
        # The holder thread is inside beat(), holding the agent lock.
        assert gate.entered.wait(30)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                o = agent.beat()
                os.write(w, f"{o.kind} {agent.fork_recoveries()} {gate.reconnects}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        try:
            report = _wait_child(pid, r).decode()
        finally:
            os.close(r)
        assert report == "sent 1 1"
    finally:
        gate.release.set()
        holder.join()
    # Meanwhile the parent's lock was never stolen: its beat completed normally.
    assert agent.fork_recoveries() == 0
    assert agent.beat().is_sent


# --- allocation -----------------------------------------------------------------------


def test_steady_state_beats_do_not_grow_python_memory(
    sock_path: pathlib.Path, rx: socket.socket
) -> None:
    agent = Varta.connect(sock_path)
    buf = bytearray(64)
    beat, recv_into = agent.beat, rx.recv_into

    def run(n: int) -> None:
        for _ in range(n):
            if beat(Status.OK, 7) is not _SENT:
                raise AssertionError("beat not sent")
            recv_into(buf)

    run(1_000)  # warm caches (outcome singletons, interned names)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        blocks = sys.getallocatedblocks()
        run(20_000)
        after, _ = tracemalloc.get_traced_memory()
        grown_blocks = sys.getallocatedblocks() - blocks
    finally:
        tracemalloc.stop()
    assert after - before < 2_048, f"traced memory grew by {after - before} bytes"
    assert grown_blocks < 64, f"{grown_blocks} Python blocks leaked over 20,000 beats"
    # Failed outcomes are the only beats that build objects — and they are freed.
    assert agent.beat("bogus") == BeatOutcome.failed(varta.BeatError(0, "InvalidInput"))
    agent.close()
