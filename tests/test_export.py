"""TSV event file (docs/observer.md#event-file): every row kind, event objects, file rules,
rotation."""

from __future__ import annotations

import errno
import os
import pathlib
import stat
from typing import Any

import pytest

import varta
from varta import NONCE_TERMINAL, BeatOrigin, DecodeError, Status, Verdict
from varta.watch import export as export_mod
from varta.watch.export import TsvExporter
from varta.watch.secretfile import SecretFileError


def rows(path: pathlib.Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_every_row_kind(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "events.tsv"
    with TsvExporter(p) as t:
        t.beat(10, 4242, 7, Status.OK, 0)
        t.beat(11, 4242, 8, Status.DEGRADED, 123)
        t.beat(12, 4242, 9, 2, 2**64 - 1)
        t.stall(13, 4242, 9)
        t.decode(14, DecodeError("BadMagic"))
        t.decode(15, DecodeError("BadPid", pid=0))
        t.decode(16, DecodeError("BadCrc", expected=1, actual=2))
        t.io(17, "kernel did not attach peer credentials")
        t.ctrunc(18, "MSG_CTRUNC\tset\r\n")
        t.mismatch(19, 77, "auth_failure")
        t.mismatch(20, 78, "origin_conflict")
        t.mismatch(21, 79, "namespace_conflict")
        t.eviction(22, 4242)
    assert p.read_text() == (
        "10\tbeat\t4242\t7\tok\t0\n"
        "11\tbeat\t4242\t8\tdegraded\t123\n"
        f"12\tbeat\t4242\t9\tcritical\t{2**64 - 1}\n"
        "13\tstall\t4242\t9\tstall\t-\n"
        "14\tdecode\t-\t-\t-\tBadMagic\n"
        "15\tdecode\t-\t-\t-\tBadPid(0)\n"
        "16\tdecode\t-\t-\t-\tBadCrc { expected: 1, actual: 2 }\n"
        "17\tio\t-\t-\t-\tkernel did not attach peer credentials\n"
        "18\tctrunc\t-\t-\t-\tMSG_CTRUNC set  \n"
        "19\tmismatch\t77\t-\t-\tauth_failure\n"
        "20\tmismatch\t78\t-\t-\torigin_conflict\n"
        "21\tmismatch\t79\t-\t-\tnamespace_conflict\n"
        "22\teviction\t4242\t-\t-\t-\n"
    )
    assert all(len(r) == 6 for r in rows(p))


def test_bad_values_are_refused(tmp_path: pathlib.Path) -> None:
    with TsvExporter(tmp_path / "e.tsv") as t:
        with pytest.raises(ValueError):
            t.mismatch(1, 2, "something_else")
        with pytest.raises(ValueError):
            t.beat(1, 2, 3, 9, 0)
    assert (tmp_path / "e.tsv").read_text() == ""


def test_event_objects(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "events.tsv"
    ka = BeatOrigin.KERNEL_ATTESTED
    events: list[Any] = [
        varta.Beat(5, Status.CRITICAL, 9, 3, ka, None, 100),
        varta.Stall(5, 3, 100, ka, None, None, 200),
        varta.Stall(
            9, NONCE_TERMINAL, 150, ka, None, 4, 250, verdict=Verdict.EXITED, cause="SIGTERM"
        ),
        varta.Decode(DecodeError("BadNonce", nonce=0, status=Status.OK), 300),
        varta.AuthFailure(6, 400),
        varta.OriginConflict(7, BeatOrigin.SOCKET_MODE_ONLY, ka, 500),
        varta.NamespaceConflict(8, 1, 2, 600),
        varta.Io("Permission denied (os error 13)", errno.EACCES, 700),
        varta.CtrlTruncated("control data truncated", 800),
    ]
    with TsvExporter(p) as t:
        assert all(t.event(e) for e in events)
        assert t.event(object()) is False
        assert t.event(varta.Blind(1, 2, 3)) is False  # no row: the log says it
    assert rows(p) == [
        ["100", "beat", "5", "3", "critical", "9"],
        ["200", "stall", "5", "3", "stall", "-"],
        ["200", "verdict", "5", "-", "unknown", "-"],
        ["250", "stall", "9", str(NONCE_TERMINAL), "stall", "-"],
        ["250", "verdict", "9", "-", "exited", "SIGTERM"],
        ["300", "decode", "-", "-", "-", "BadNonce { nonce: 0, status: Ok }"],
        ["400", "mismatch", "6", "-", "-", "auth_failure"],
        ["500", "mismatch", "7", "-", "-", "origin_conflict"],
        ["600", "mismatch", "8", "-", "-", "namespace_conflict"],
        ["700", "io", "-", "-", "-", "Permission denied (os error 13)"],
        ["800", "ctrunc", "-", "-", "-", "control data truncated"],
    ]


def test_rows_are_buffered_until_flush(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "events.tsv"
    t = TsvExporter(p)
    t.stall(1, 2, 3)
    assert p.read_text() == ""
    t.flush()
    assert p.read_text() == "1\tstall\t2\t3\tstall\t-\n"
    t.close()
    t.close()  # idempotent
    with pytest.raises(ValueError):
        t.stall(1, 2, 3)


def test_sync_every_writes_through(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(export_mod.os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    p = tmp_path / "events.tsv"
    t = TsvExporter(p, sync_every=2)
    t.eviction(1, 1)
    assert p.read_text() == "" and synced == []
    t.eviction(2, 2)
    assert len(p.read_text().splitlines()) == 2 and len(synced) == 1
    t.close()
    assert len(synced) == 2  # close always fdatasyncs


def test_new_file_0600_and_existing_file_rules(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "events.tsv"
    old = os.umask(0)
    try:
        TsvExporter(p).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    # an existing file is appended to
    p.write_text("1\teviction\t1\t-\t-\t-\n")
    with TsvExporter(p) as t:
        t.eviction(2, 2)
    assert len(rows(p)) == 2
    link = tmp_path / "link.tsv"
    link.symlink_to(p)
    with pytest.raises(SecretFileError, match="must not be a symlink"):
        TsvExporter(link)
    os.link(p, tmp_path / "hard.tsv")
    with pytest.raises(SecretFileError, match="2 hard links"):
        TsvExporter(p)
    d = tmp_path / "dir"
    d.mkdir()
    with pytest.raises(OSError):
        TsvExporter(d)


def test_rotation_after_the_write_reaching_the_limit(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "events.tsv"
    row = "1000\teviction\t4242\t-\t-\t-\n"  # 26 bytes
    t = TsvExporter(p, max_bytes=100)
    for _ in range(4):
        t.eviction(1000, 4242)
    # 4 rows = 104 bytes >= 100: the 4th write reached the limit and rotated
    assert (tmp_path / "events.tsv.1").read_text() == row * 4
    assert p.read_text() == ""
    assert t.rotations == 1
    t.eviction(1000, 4242)
    t.close()
    assert p.read_text() == row
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_header_row_starts_every_new_file_and_only_new_ones(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "events.tsv"
    header = "observer_ns\tkind\tpid\tnonce\tstatus\tpayload\n"
    row = "1000\teviction\t4242\t-\t-\t-\n"
    t = TsvExporter(p, max_bytes=100, header=True)
    assert p.read_text() == header  # at once, before any row
    for _ in range(3):
        t.eviction(1000, 4242)
    t.flush()  # 44 + 3 x 26 = 122 bytes >= 100: the file rotated
    assert (tmp_path / "events.tsv.1").read_text() == header + row * 3
    assert p.read_text() == header  # the new file starts with it too
    t.eviction(1000, 4242)
    t.close()
    assert p.read_text() == header + row
    # Reopening a file that already has content adds no second header.
    TsvExporter(p, header=True).close()
    assert p.read_text() == header + row
    # Off by default: upstream's files have no header row.
    q = tmp_path / "plain.tsv"
    TsvExporter(q).close()
    assert q.read_text() == ""


def test_rotation_keeps_five_generations(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "events.tsv"
    with TsvExporter(p, max_bytes=60) as t:
        for i in range(8 * 3):  # 3 rows of 23 bytes per generation
            t.stall(i, 100, i % 10)
    names = sorted(x.name for x in tmp_path.iterdir())
    assert names == ["events.tsv"] + [f"events.tsv.{g}" for g in range(1, 6)]
    # newest rotated generation is .1, the oldest kept .5; rows stay in order
    firsts = [int(rows(tmp_path / f"events.tsv.{g}")[0][0]) for g in range(5, 0, -1)]
    assert firsts == sorted(firsts)
    assert all(len(rows(tmp_path / f"events.tsv.{g}")) == 3 for g in range(1, 6))


def test_preexisting_oversized_file_rotates_on_next_write(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "events.tsv"
    p.write_text("x" * 5000 + "\n")
    os.chmod(p, 0o600)
    with TsvExporter(p, max_bytes=4096) as t:
        t.eviction(1, 1)
    assert (tmp_path / "events.tsv.1").read_text().endswith("1\teviction\t1\t-\t-\t-\n")
    assert p.read_text() == ""


def test_failed_reopen_is_retried(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "events.tsv"
    t = TsvExporter(p, max_bytes=30)
    real_open = export_mod.open_output_file
    fail = [True]

    def flaky(path: Any, what: str, *, read: bool = False) -> int:
        if fail[0]:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, what, read=read)

    monkeypatch.setattr(export_mod, "open_output_file", flaky)
    t.eviction(1, 1)
    t.eviction(2, 2)  # 40 bytes >= 30: rotate, reopen fails
    assert t.io_errors == 1
    assert isinstance(t.take_error(), OSError) and t.take_error() is None
    assert not p.exists() and (tmp_path / "events.tsv.1").exists()
    t.eviction(3, 3)  # queued while the file is missing
    fail[0] = False
    t.flush()
    t.close()
    assert rows(p) == [["3", "eviction", "3", "-", "-", "-"]]
    assert len(rows(tmp_path / "events.tsv.1")) == 2
    assert not (tmp_path / "events.tsv.2").exists()


def test_exdev_rename_falls_back_to_copy(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "events.tsv"
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if str(src) == str(p):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(src, dst)

    monkeypatch.setattr(export_mod.os, "rename", rename)
    with TsvExporter(p, max_bytes=30) as t:
        t.eviction(1, 1)
        t.eviction(2, 2)
        t.eviction(3, 3)
    assert [r[0] for r in rows(tmp_path / "events.tsv.1")] == ["1", "2"]
    assert [r[0] for r in rows(p)] == ["3"]
    assert stat.S_IMODE((tmp_path / "events.tsv.1").stat().st_mode) == 0o600
