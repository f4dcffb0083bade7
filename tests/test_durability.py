"""Nothing lost silently (issue 11): torn TSV tails, short writes, audit gaps,
write-ahead spawn records, fail-closed recovery, SIGHUP reopen of the files.

I/O failures are real ones: the file descriptor under the writer is swapped
for a read-only descriptor of the same file (``EBADF`` on write), or a
``write`` is made short then ``ENOSPC`` through the module's own ``os``
reference for the one test that needs a short write. The full-disk case on a
real tmpfs is in ``tests/proving``.
"""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from varta import BeatOrigin
from varta.watch import audit as audit_mod
from varta.watch import export as export_mod
from varta.watch.audit import RING_CAPACITY, AuditLog, cli_main, pending_path, verify
from varta.watch.export import TsvExporter
from varta.watch.recovery import RecoveryCommand, RecoveryConfig, RecoveryRunner

S = 1_000_000_000
T0 = 10 * S


def tsv_lines(path: pathlib.Path) -> list[list[str]]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "torn last line"
    return [line.split("\t") for line in data.decode().splitlines()]


def audit_rows(path: pathlib.Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()[1:] if line]


@contextmanager
def broken_fd(fd: int, path: pathlib.Path) -> Iterator[None]:
    """Make writes to *fd* fail (EBADF) until the block ends, then restore a
    writable append descriptor of *path* in the same slot."""
    ro = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    os.dup2(ro, fd, inheritable=False)
    os.close(ro)
    try:
        yield
    finally:
        try:
            os.fstat(fd)
        except OSError:
            pass  # the writer closed it inside the block
        else:
            rw = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            os.dup2(rw, fd, inheritable=False)
            os.close(rw)


# --- export ------------------------------------------------------------------------------


def test_torn_tsv_tail_is_cut_before_appending(tmp_path: pathlib.Path) -> None:
    # Issue 11 hole 1: the torn tail used to be glued to the next row (9 columns).
    p = tmp_path / "e.tsv"
    p.write_bytes(b"1\tbeat\t1\t1\tok\t0\n123456789\tbeat\t4242\t7")
    t = TsvExporter(p)
    assert (t.torn_tails, t.torn_bytes) == (1, len(b"123456789\tbeat\t4242\t7"))
    assert t.take_torn() == (len(b"123456789\tbeat\t4242\t7"), len(b"1\tbeat\t1\t1\tok\t0\n"))
    t.beat(5, 4243, 1, 0, 1)
    t.close()
    assert tsv_lines(p) == [
        ["1", "beat", "1", "1", "ok", "0"],
        ["5", "beat", "4243", "1", "ok", "1"],
    ]
    assert t.counters()["export_torn_tail_repaired"] == 1


def test_torn_tail_with_no_whole_line_leaves_an_empty_file(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "e.tsv"
    p.write_bytes(b"12345\tbe")
    with TsvExporter(p) as t:
        t.stall(9, 1, 2)
    assert tsv_lines(p) == [["9", "stall", "1", "2", "stall", "-"]]


def test_short_write_then_enospc_keeps_every_row_whole(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "e.tsv"
    t = TsvExporter(p)
    real_write = os.write
    budget = [110]  # bytes the "disk" still takes: 5 rows and a half

    class FakeOs:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def write(fd: int, data: Any) -> int:
            if fd != t._fd:
                return real_write(fd, data)
            if budget[0] <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            n = real_write(fd, bytes(data[: budget[0]]))
            budget[0] -= n
            return n

    monkeypatch.setattr(export_mod, "os", FakeOs())
    for i in range(20):
        t.beat(1000 + i, 42, i + 1, 0, i)
    t.flush()
    assert t.io_errors == 1 and t.short_write_truncations == 1
    on_disk = tsv_lines(p)  # whole rows only, though 100 bytes were written
    assert 0 < len(on_disk) < 20
    budget[0] = 1 << 20  # space again
    t.flush()
    t.close()
    got = tsv_lines(p)
    assert [int(r[3]) for r in got] == list(range(1, 21))
    assert all(len(r) == 6 for r in got)


def test_rows_never_written_are_dropped_whole_and_counted(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "e.tsv"
    t = TsvExporter(p)
    t.beat(1, 1, 1, 0, 0)
    t.flush()
    with broken_fd(t._fd, p):
        for i in range(5):
            t.beat(2 + i, 1, 2 + i, 0, 0)
        with pytest.raises(OSError):
            t.close()
    assert t.lost_at_close == 5 and t.dropped_rows == 5
    assert t.counters()["export_rows_dropped"] == 5
    assert len(tsv_lines(p)) == 1


def test_export_reopen_follows_a_rename(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "e.tsv"
    t = TsvExporter(p)
    t.beat(1, 1, 1, 0, 0)
    os.rename(p, tmp_path / "e.tsv.1")
    t.beat(2, 1, 2, 0, 0)  # queued before the reopen: goes to the renamed file
    t.reopen()
    t.beat(3, 1, 3, 0, 0)
    t.close()
    assert [r[0] for r in tsv_lines(tmp_path / "e.tsv.1")] == ["1", "2"]
    assert [r[0] for r in tsv_lines(p)] == ["3"]


# --- audit: gaps ----------------------------------------------------------------------


def test_unwritable_audit_counts_drops_and_writes_a_gap_record(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 11 hole 2 (unit level): drops stayed 0 and the log never showed a loss.
    p = tmp_path / "audit.log"
    log = AuditLog(p)
    with broken_fd(log._fd, p):
        log.refused(T0, 99, "debounced")
        log.flush(None)
        assert log.io_errors == 1
        accepted = [log.refused(T0 + i, 100 + i, "debounced") for i in range(RING_CAPACITY + 40)]
        log.flush(None)
        # the ring does not leak into an unbounded buffer: the first line waits
        # in the write buffer, the ring is full, the 40 dropped are tallied
        assert log.pending == RING_CAPACITY
        assert log.unwritten == 1 + RING_CAPACITY + 40
    assert accepted.count(False) == 40
    assert log.dropped == 40
    assert log.dropped_by_reason == {"ring_full": 0, "io_error": 40, "exit": 0}
    log.flush(None)  # the next tick: writing resumes
    log.refused(T0 + 999, 999, "debounced")
    log.close()
    rows = audit_rows(p)
    gaps = [r for r in rows if r[3] == "gap"]
    assert len(gaps) == 1
    count, first, last, why = gaps[0][4:8]
    assert (count, why) == ("40", "io_error")
    assert int(last) - int(first) + 1 == 40 and int(gaps[0][0]) == int(last) + 1
    seqs = [int(r[0]) for r in rows]
    # every seq is a record or named by the gap: nothing reused, nothing unaccounted
    covered = sorted(seqs + list(range(int(first), int(last) + 1)))
    assert covered == list(range(1, len(covered) + 1))
    assert log.counters()["recovery_audit_gap_records"] == 1
    res = verify(p)
    assert res.ok and res.lost == 40
    assert cli_main(["verify", str(p)]) == 0
    out, err = capsys.readouterr()
    assert "WARNING: 40 records lost" in out and "WARNING: 40 records lost" in err
    assert cli_main(["verify", "--strict", str(p)]) == 3


def test_sigkill_with_queued_records_leaves_a_gap_on_restart(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    code = f"""
import os, signal
from varta.watch.audit import AuditLog
log = AuditLog({str(p)!r})
for i in range(7):
    log.refused(i, i, "debounced")
log.flush(None)
for i in range(5):
    log.refused(i, i, "debounced")  # queued, never flushed
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -signal.SIGKILL
    log = AuditLog(p)
    assert log.unclean_lost == 5
    log.close()
    rows = audit_rows(p)
    gap = [r for r in rows if r[3] == "gap"]
    assert len(gap) == 1 and gap[0][4] == "5" and gap[0][7] == "unclean_stop"
    res = verify(p)
    assert res.ok and res.lost == 5
    # and a clean stop leaves nothing to report
    AuditLog(p).close()
    assert verify(p).lost == 5


def test_records_lost_at_exit_are_named_by_the_next_start(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p)
    with broken_fd(log._fd, p):
        for i in range(3):
            log.refused(i, i, "debounced")
        with pytest.raises(OSError):
            log.close()
    assert log.lost_at_close == 3 and log.dropped_by_reason["exit"] == 3
    assert pending_path(p).startswith(str(tmp_path) + "/.")
    again = AuditLog(p)
    assert again.unclean_lost == 3
    again.close()
    assert verify(p).lost == 3


def test_torn_audit_line_is_truncated_during_an_outage(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p)
    real_write = os.write
    budget = [40]

    class FakeOs:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def write(fd: int, data: Any) -> int:
            if fd != log._fd:
                return real_write(fd, data)
            if budget[0] <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            n = real_write(fd, bytes(data[: budget[0]]))
            budget[0] -= n
            return n

    monkeypatch.setattr(audit_mod, "os", FakeOs())
    log.refused(T0, 1, "debounced")
    log.flush(None)
    assert p.read_bytes().endswith(b"\n")  # the partial line was cut back
    budget[0] = 1 << 20
    log.flush(None)
    log.close()
    assert verify(p).ok and [r[3] for r in audit_rows(p)] == ["boot", "refused"]


def test_audit_reopen_after_rename_links_the_chain(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p)
    log.refused(T0, 1, "debounced")
    log.flush(None)
    os.rename(p, tmp_path / "audit.log.1")
    log.refused(T0, 2, "debounced")
    assert log.reopen() is True
    assert log.reopen() is False  # same file: nothing to do
    log.refused(T0, 3, "debounced")
    log.close()
    assert [r[4] for r in audit_rows(tmp_path / "audit.log.1")[1:]] == ["1", "2"]
    new = audit_rows(p)
    assert new[0][3] == "boot" and new[0][6] == "rotation"
    idx, res = audit_mod.verify_generations([tmp_path / "audit.log.1", p])
    assert res.ok, (idx, res)


# --- write-ahead spawn records --------------------------------------------------------

# A recovery program that looks for its own spawn record in the audit file
# (read from disk, as it is when the program starts) and says what it found.
SELF_CHECK = """\
import os, sys
audit, out = sys.argv[1], sys.argv[2]
me = str(os.getpid())
found = any(
    f[3:4] == ["spawn"] and f[5] == me
    for f in (line.split("\\t") for line in open(audit).read().splitlines()[1:])
)
# the initial environment (this Python adds LC_CTYPE to os.environ itself)
raw = open("/proc/self/environ", "rb").read()
env = [i.split(b"=")[0].decode() for i in raw.split(b"\\0") if i]
with open(out, "a") as f:
    f.write(("found " if found else "missing ") + me + " " + repr(sorted(env)) + "\\n")
"""


def runner_for(tmp_path: pathlib.Path, log: AuditLog, **kw: Any) -> RecoveryRunner:
    script = tmp_path / "selfcheck.py"
    script.write_text(SELF_CHECK)
    out = tmp_path / "out"
    cmd = RecoveryCommand.parse(f"{sys.executable} {script} {log.path} {out} {{pid}}")
    return RecoveryRunner(RecoveryConfig(cmd, debounce_ms=0), log, own_ns_inode=None, **kw)


def wait_reaped(runner: RecoveryRunner, child_pid: int) -> Any:
    os.waitid(os.P_PID, child_pid, os.WEXITED | os.WNOWAIT)
    done = [c for c in runner.reap(T0 + S) if c.child_pid == child_pid]
    assert len(done) == 1
    return done[0]


class _Stall:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.origin = int(BeatOrigin.KERNEL_ATTESTED)
        self.pid_ns_inode = None
        self.generation = None
        self.last_ns = 0
        self.observer_ns = 0
        self.verdict = "hung"


def test_recovery_child_finds_its_spawn_record_on_disk(tmp_path: pathlib.Path) -> None:
    # Issue 11 hole 3: the record sat in memory while the child ran (a SIGKILL
    # then lost it). Now it is fdatasync'ed before the program is exec'ed.
    log = AuditLog(tmp_path / "audit.log")
    runner = runner_for(tmp_path, log)
    for pid in (101, 102, 103):
        d = runner.on_stall(_Stall(pid), T0)  # type: ignore[arg-type]
        assert d.spawned and d.child_pid is not None
        done = wait_reaped(runner, d.child_pid)
        assert (done.status, done.exit_code) == ("reaped", 0)
    lines = (tmp_path / "out").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["found"] * 3
    # the gate leaves the environment exactly as configured (no LC_CTYPE coercion)
    assert all(line.endswith("['PATH']") for line in lines), lines
    log.close()
    assert verify(tmp_path / "audit.log").ok


def test_unwritable_audit_refuses_recovery_and_runs_nothing(tmp_path: pathlib.Path) -> None:
    # Issue 11 hole 2 (unit level): recoveries ran while they could not be audited.
    p = tmp_path / "audit.log"
    log = AuditLog(p)
    runner = runner_for(tmp_path, log)
    with broken_fd(log._fd, p):
        decisions = [runner.on_stall(_Stall(200 + i), T0) for i in range(5)]  # type: ignore[arg-type]
    assert [d.outcome for d in decisions] == ["refused_audit_unavailable"] * 5
    assert all(d.error for d in decisions)
    assert runner.outcomes["refused_audit_unavailable"] == 5
    assert runner.refused["audit_unavailable"] == 5
    assert runner.outstanding == 0
    assert not (tmp_path / "out").exists()  # no recovery program ran
    # writable again: the queued refusals are written, the next spawn works
    d = runner.on_stall(_Stall(300), T0)  # type: ignore[arg-type]
    assert d.spawned and d.child_pid is not None
    wait_reaped(runner, d.child_pid)
    log.close()
    kinds = [r[3] for r in audit_rows(p)]
    assert kinds.count("refused") == 5 and kinds.count("spawn") == 1
    assert verify(p).ok


def test_fail_open_runs_the_child_and_counts_it(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p)
    runner = runner_for(tmp_path, log, audit_fail_open=True)
    with broken_fd(log._fd, p):
        d = runner.on_stall(_Stall(400), T0)  # type: ignore[arg-type]
        assert d.spawned and d.child_pid is not None
        wait_reaped(runner, d.child_pid)
    assert runner.spawned_unaudited == 1
    assert runner.counters()["recovery_spawned_unaudited"] == 1
    assert (tmp_path / "out").read_text().startswith("missing ")
    log.close()  # the spawn record, queued, is written late
    assert [r[3] for r in audit_rows(p)].count("spawn") == 1


def test_missing_program_is_still_spawn_failed_with_the_gate(tmp_path: pathlib.Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    cmd = RecoveryCommand.parse("varta-no-such-program-anywhere {pid}")
    runner = RecoveryRunner(RecoveryConfig(cmd), log, own_ns_inode=None)
    d = runner.on_stall(_Stall(5), T0)  # type: ignore[arg-type]
    assert d.outcome == "spawn_failed"
    assert d.error == "No such file or directory: varta-no-such-program-anywhere"
    log.close()
    assert [r[3] for r in audit_rows(tmp_path / "audit.log")] == ["boot", "refused"]


def test_gate_without_release_runs_nothing(tmp_path: pathlib.Path) -> None:
    # A daemon killed between fork and release: the gate sees EOF and exits 125.
    from varta.watch.recovery import GATE_CODE, GATE_EXIT_UNRELEASED

    marker = tmp_path / "ran"
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", GATE_CODE, str(r), "-", "/usr/bin/touch",
         "touch", str(marker)],
        pass_fds=(r,),
    )  # fmt: skip
    os.close(r)
    os.close(w)
    assert proc.wait(timeout=30) == GATE_EXIT_UNRELEASED
    assert not marker.exists()
