"""Recovery audit log v2 (docs/observer.md#audit-log): format, chain, probe/repair, ring, sync,
rotation, and the verifier CLI."""

from __future__ import annotations

import hashlib
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from varta.watch import audit as audit_mod
from varta.watch.audit import (
    HEADER,
    RING_CAPACITY,
    AuditLog,
    cli_main,
    parse_record,
    verify,
    verify_generations,
)
from varta.watch.secretfile import SecretFileError

HDR = HEADER.decode()


def lines(path: pathlib.Path) -> list[str]:
    return path.read_text().splitlines()


def rows(path: pathlib.Path) -> list[list[str]]:
    return [ln.split("\t") for ln in lines(path) if not ln.startswith("#")]


def sample(log: AuditLog, n: int = 3, start_pid: int = 100) -> None:
    for i in range(n):
        pid = start_pid + i
        log.spawn(1000 + i, pid, 5000 + i, "/usr/bin/restart", "inline", 24)
        log.complete(2000 + i, pid, 5000 + i, "reaped", 0, None, 1000, 0, 0, False)
        log.refused(3000 + i, pid, "debounced")


def test_fresh_file_header_boot_and_mode(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    old = os.umask(0)
    try:
        log = AuditLog(p, daemon_pid=4321, wallclock_ms=lambda: 1700000000000)
    finally:
        os.umask(old)
    assert log.boot_reason == "fresh"
    log.close()
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    text = lines(p)
    assert text[0] == HDR
    boot = text[1].split("\t")
    assert boot[:7] == ["1", "1700000000000", "0", "boot", "4321", "-", "fresh"]
    prefix = "\t".join(boot[:7]).encode()
    expected = hashlib.sha256(
        b"VARTA-AUDIT-v2\0" + b"boot" + b"\0" + bytes(32) + b"\0" + prefix
    ).hexdigest()
    assert boot[7] == expected
    assert verify(p).ok


def test_record_columns_and_chain(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p, daemon_pid=1, wallclock_ms=lambda: 42)
    log.spawn(111, 4242, 777, "/opt/re\tstart\r\nx", "/etc/varta/exec", 31)
    log.complete(222, 4242, 777, "killed", None, 9, 12345, 10, 20, True)
    log.complete(223, 4242, 778, "reaped", 0, None, 5, 0, 0, False)
    log.complete(224, 4242, 779, "reap_failed", None, None, 6, 0, 0, False)
    log.refused(333, 99, "cross_namespace_agent")
    log.close()
    r = rows(p)
    assert r[1][:-1] == [
        "2", "42", "111", "spawn", "4242", "777", "exec", "/opt/re start  x", "/etc/varta/exec",
        "31",
    ]  # fmt: skip
    assert r[2][:-1] == [
        "3", "42", "222", "complete", "4242", "777", "killed", "-", "9", "12345", "10", "20",
        "true",
    ]  # fmt: skip
    assert r[3][6:9] == ["reaped", "0", "-"]
    assert r[4][6:9] == ["reap_failed", "-", "-"]
    assert r[5][:-1] == ["6", "42", "333", "refused", "99", "cross_namespace_agent"]
    # every chain links to the previous record's raw chain
    prev = bytes(32)
    for row in r:
        prefix = "\t".join(row[:-1]).encode()
        digest = hashlib.sha256(
            b"VARTA-AUDIT-v2\0" + row[3].encode() + b"\0" + prev + b"\0" + prefix
        ).digest()
        assert row[-1] == digest.hex()
        prev = digest
    result = verify(p)
    assert result.ok and result.records == 6 and (result.first_seq, result.last_seq) == (1, 6)


def test_tampered_byte_is_reported_at_its_line(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p)
    sample(log, 3)
    log.close()
    good = p.read_bytes()
    text = good.decode().splitlines(keepends=True)
    # line 4 (header, boot, spawn, complete): change the agent pid of the complete row
    target = 4
    assert "\tcomplete\t100\t" in text[target - 1]
    text[target - 1] = text[target - 1].replace("\tcomplete\t100\t", "\tcomplete\t101\t")
    p.write_text("".join(text))
    result = verify(p)
    assert not result.ok
    assert result.bad_line == target
    assert "chain mismatch" in (result.reason or "")
    # the chain column itself
    text = good.decode().splitlines(keepends=True)
    last = text[-1]
    flipped = last[:-2] + ("0" if last[-2] != "0" else "1") + "\n"
    text[-1] = flipped
    p.write_text("".join(text))
    assert verify(p).bad_line == len(text)


def test_tamper_breaking_the_format_or_order(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p)
    sample(log, 2)
    log.close()
    good = p.read_text().splitlines(keepends=True)
    broken = list(good)
    broken[3] = broken[3].replace("\t", " ", 1)  # line 4 no longer parses
    p.write_text("".join(broken))
    r = verify(p)
    assert (r.ok, r.bad_line, r.reason) == (False, 4, "unparseable record")
    swapped = list(good)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    p.write_text("".join(swapped))
    r = verify(p)
    assert not r.ok and r.bad_line == 4
    deleted = good[:3] + good[4:]
    p.write_text("".join(deleted))
    r = verify(p)
    assert not r.ok and r.bad_line == 4
    p.write_text("".join(good[1:]))
    assert verify(p).reason == "no '# varta-watch recovery audit v2' header"


def test_cli_verify(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p)
    sample(log, 2)
    log.close()
    assert cli_main(["verify", str(p)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{p}: OK: 7 records, seq 1..7")
    text = p.read_text().splitlines(keepends=True)
    text[2] = text[2].replace("/usr/bin/restart", "/usr/bin/restarT")
    p.write_text("".join(text))
    assert cli_main(["verify", str(p)]) == 1
    assert "line 3: chain mismatch" in capsys.readouterr().out
    assert cli_main([]) == 2
    assert cli_main(["verify"]) == 2
    assert cli_main(["check", str(p)]) == 2
    assert cli_main(["verify", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "(see --help)" in err and "No such file" in err
    assert cli_main(["--help"]) == 0


def test_python_dash_m_varta_audit_verify(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p)
    sample(log, 1)
    log.close()
    ok = subprocess.run(
        [sys.executable, "-m", "varta", "audit", "verify", str(p)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "OK: 4 records" in ok.stdout
    text = p.read_text().splitlines(keepends=True)
    text[4] = text[4].replace("debounced", "debouncer")
    p.write_text("".join(text))
    bad = subprocess.run(
        [sys.executable, "-m", "varta", "audit", "verify", str(p)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert "line 5: chain mismatch" in bad.stdout


def test_restart_resumes_seq_and_chain(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p)
    sample(log, 2)
    log.close()
    last = rows(p)[-1]
    log2 = AuditLog(p, daemon_pid=999)
    assert log2.boot_reason == "resume"
    log2.refused(1, 2, "debounced")
    log2.close()
    r = rows(p)
    boot = r[len(r) - 2]
    assert boot[3:7] == ["boot", "999", last[-1], "resume"]
    assert int(boot[0]) == int(last[0]) + 1
    assert int(r[-1][0]) == int(last[0]) + 2
    assert lines(p).count(HDR) == 1
    result = verify(p)
    assert result.ok and result.boots == 2


def test_resume_with_wrong_prev_chain_is_detected(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    AuditLog(p).close()
    AuditLog(p).close()
    text = p.read_text().splitlines(keepends=True)
    assert "\tresume\t" in text[2]
    cols = text[2].rstrip("\n").split("\t")
    cols[5] = "ab" * 32
    prefix = "\t".join(cols[:7]).encode()
    cols[7] = hashlib.sha256(
        b"VARTA-AUDIT-v2\0boot\0" + bytes.fromhex(cols[5]) + b"\0" + prefix
    ).hexdigest()
    text[2] = "\t".join(cols) + "\n"
    p.write_text("".join(text))
    r = verify(p)
    assert r.bad_line == 3 and "prev_chain does not match" in (r.reason or "")


def test_torn_last_line_is_repaired(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p)
    sample(log, 1)
    log.close()
    intact = p.read_bytes()
    last_seq = int(rows(p)[-1][0])
    with open(p, "ab") as f:
        f.write(b"5\t17000\t12\tspawn\t42\t4")  # crash mid-write
    assert not verify(p).ok
    log2 = AuditLog(p)
    assert log2.boot_reason == "corrupt_tail"
    log2.close()
    data = p.read_bytes()
    assert data.startswith(intact)
    boot = data[len(intact) :].decode().rstrip("\n").split("\t")
    assert boot[0] == str(last_seq + 1)
    assert boot[3:7] == ["boot", str(os.getpid()), "-", "corrupt_tail"]
    assert verify(p).ok


def test_torn_header_only_starts_over(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    p.write_bytes(HEADER[:10])
    os.chmod(p, 0o600)
    log = AuditLog(p)
    assert log.boot_reason == "corrupt_tail"
    log.close()
    assert lines(p)[0] == HDR and rows(p)[0][0] == "1"
    assert verify(p).ok


def test_unparseable_last_line_is_kept_as_schema_drift(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p)
    sample(log, 1)
    log.close()
    last = rows(p)[-1]
    with open(p, "a") as f:
        f.write("9\tsomething a future version wrote\n")
    log2 = AuditLog(p)
    assert log2.boot_reason == "schema_drift"
    log2.refused(5, 6, "debounced")
    log2.close()
    text = lines(p)
    assert "9\tsomething a future version wrote" in text
    boot = text[-2].split("\t")
    assert boot[6] == "schema_drift" and boot[5] == "-"
    assert int(boot[0]) == 10  # stepped past the kept line's seq
    # chain continues from the last parseable record
    prefix = "\t".join(boot[:7]).encode()
    assert (
        hashlib.sha256(
            b"VARTA-AUDIT-v2\0boot\0" + bytes.fromhex(last[-1]) + b"\0" + prefix
        ).hexdigest()
        == boot[7]
    )
    assert verify(p).ok


def test_legacy_v1_file_is_kept_and_a_v2_section_appended(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    legacy = b"# varta-watch recovery audit v1\n1700000000\tspawn\t42\n1700000001\tcomplete\t42"
    p.write_bytes(legacy)
    os.chmod(p, 0o600)
    log = AuditLog(p)
    assert log.boot_reason == "legacy_v1"
    sample(log, 1)
    log.close()
    data = p.read_bytes()
    assert data.startswith(legacy + b"\n" + HEADER + b"\n")
    r = rows(p)
    v2 = [x for x in r if len(x) > 3 and x[3] in ("boot", "spawn", "complete", "refused")]
    assert v2[0][0] == "1" and v2[0][6] == "legacy_v1" and v2[0][5] == "-"
    assert verify(p).ok
    # the migrated file resumes after its v2 header
    log2 = AuditLog(p)
    assert log2.boot_reason == "resume"
    log2.close()
    assert verify(p).ok
    assert p.read_bytes().count(HEADER) == 1


def test_foreign_file_is_schema_drift(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    p.write_bytes(b"hello\nworld\n")
    os.chmod(p, 0o600)
    log = AuditLog(p)
    assert log.boot_reason == "schema_drift"
    log.close()
    assert p.read_bytes().startswith(b"hello\nworld\n" + HEADER + b"\n")
    assert verify(p).ok


def test_header_only_file_resumes_from_zero_chain(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    p.write_bytes(HEADER + b"\n")
    os.chmod(p, 0o600)
    log = AuditLog(p)
    assert log.boot_reason == "resume"
    log.close()
    assert rows(p)[0][5] == "0" * 64
    assert verify(p).ok


def test_existing_file_rules(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "real"
    AuditLog(target).close()
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(SecretFileError, match="must not be a symlink"):
        AuditLog(link)
    os.link(target, tmp_path / "hard")
    with pytest.raises(SecretFileError, match="hard links"):
        AuditLog(target)
    d = tmp_path / "dir"
    d.mkdir()
    with pytest.raises(OSError):
        AuditLog(d)


def test_ring_drops_burn_seq_and_watermarks(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p, sync_every=64)
    accepted = [log.refused(i, i, "debounced") for i in range(RING_CAPACITY + 10)]
    assert accepted.count(True) == RING_CAPACITY
    assert log.dropped == 10
    assert log.watermark == {"warn": 1, "critical": 1}
    assert log.pending == RING_CAPACITY
    log.flush(None)
    assert log.pending == 0
    # below the marks again: a new fill counts again
    for i in range(200):
        log.refused(i, i, "debounced")
    assert log.watermark == {"warn": 2, "critical": 1}
    log.close()
    seqs = [int(r[0]) for r in rows(p)]
    assert seqs[:2] == [1, 2]
    assert seqs[RING_CAPACITY] == 1 + RING_CAPACITY  # boot + the accepted 256
    assert seqs[RING_CAPACITY + 1] == 2 + RING_CAPACITY + 10  # the 10 dropped seqs are burned
    assert verify(p).ok
    c = log.counters()
    assert c["recovery_audit_dropped"] == 10
    assert c["audit_ring_watermark"] == {"warn": 2, "critical": 1}


def test_fdatasync_cadence(tmp_path: pathlib.Path) -> None:
    every = AuditLog(tmp_path / "a.log", sync_every=1)
    base = every.fsync_seconds.count  # the boot record's sync
    assert base == 1
    sample(every, 2)  # 6 records
    assert every.flush(None) == 6
    assert every.fsync_seconds.count == base + 6
    every.close()
    batched = AuditLog(tmp_path / "b.log", sync_every=4)
    sample(batched, 3)  # 9 records
    assert batched.flush(None) == 9
    assert batched.fsync_seconds.count == 1 + 2  # after records 4 and 8
    batched.close()  # the 9th is synced at close
    assert batched.fsync_seconds.count == 1 + 3
    hist = batched.fsync_seconds.cumulative()
    assert [le for le, _ in hist] == [
        "0.001", "0.005", "0.01", "0.05", "0.1", "0.25", "0.5", "1", "+Inf",
    ]  # fmt: skip
    assert hist[-1][1] == 4
    assert all(a[1] <= b[1] for a, b in zip(hist, hist[1:]))


def test_slow_fsync_defers_the_rest_of_the_drain(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path / "a.log", sync_every=1, fsync_budget_ms=1)
    clock = [0.0]
    monkeypatch.setattr(audit_mod.time, "monotonic", lambda: clock[0])

    def slow_sync(fd: int) -> None:
        clock[0] += 0.002  # every sync "takes" 2 ms on the patched clock

    monkeypatch.setattr(audit_mod.os, "fdatasync", slow_sync)
    sample(log, 2)
    assert log.flush(budget_ms=None) == 6
    assert log.fsync_budget_exceeded == 1
    assert log.fsync_seconds.count == 2  # the boot sync and the first drain sync only
    log.close()
    assert verify(tmp_path / "a.log").ok


def test_rotation_keeps_the_chain(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p, max_bytes=4096)
    rotated = 0
    for i in range(200):
        log.refused(i, 1000 + i, "debounced")
        log.maintain()
        if (tmp_path / "audit.log.1").exists() and rotated == 0:
            rotated = i
    log.close()
    assert rotated > 0
    gens = sorted(x.name for x in tmp_path.iterdir() if not x.name.startswith("."))
    assert "audit.log.1" in gens
    first_new = rows(p)[0]
    old_last = rows(tmp_path / "audit.log.1")[-1]
    assert lines(p)[0] == HDR
    assert first_new[3:7] == ["boot", str(os.getpid()), old_last[-1], "rotation"]
    assert int(first_new[0]) == int(old_last[0]) + 1
    assert (tmp_path / "audit.log.1").stat().st_size >= 4096
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    order = [*sorted((x for x in gens if x != "audit.log"), reverse=True), "audit.log"]
    _, result = verify_generations([tmp_path / x for x in order])
    assert result.ok, result
    assert cli_main(["verify", *(str(tmp_path / x) for x in order)]) == 0


def test_rotation_keeps_five_generations_and_links_them(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p, max_bytes=4096, rotation_budget_ms=250)
    for i in range(600):
        log.spawn(i, 1000 + i, 2000 + i, "/usr/bin/restart-something", "inline", 30)
        if i % 8 == 0:
            log.maintain()
    log.close()
    names = sorted(x.name for x in tmp_path.iterdir() if not x.name.startswith("."))
    assert names == ["audit.log"] + [f"audit.log.{g}" for g in range(1, 6)]
    order = [tmp_path / f"audit.log.{g}" for g in range(5, 0, -1)] + [p]
    idx, result = verify_generations(order)
    assert result.ok, (idx, result)
    # a broken link between generations is caught in the newer file
    text = (tmp_path / "audit.log.2").read_text().splitlines(keepends=True)
    text[-1] = text[-1].replace("\t1", "\t9", 1)
    (tmp_path / "audit.log.2").write_text("".join(text))
    idx, result = verify_generations(order)
    assert not result.ok and order[idx].name == "audit.log.2"


def test_rotation_budget_spreads_renames_over_ticks(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p, max_bytes=4096, rotation_budget_ms=1)
    for g in range(1, 5):
        (tmp_path / f"audit.log.{g}").write_text(f"gen {g}\n")
    while p.stat().st_size < 4096:
        log.refused(1, 2, "debounced")
        log.flush(None)
    clock = [0.0]

    def tick() -> float:
        clock[0] += 0.001  # each rename "takes" the whole budget
        return clock[0]

    monkeypatch.setattr(audit_mod.time, "monotonic", tick)
    steps = 0
    while not log.rotate_step():
        steps += 1
        assert steps < 10
    assert steps >= 4 and log.rotation_budget_exceeded == steps
    monkeypatch.undo()
    log.close()
    for g in range(1, 5):
        assert (tmp_path / f"audit.log.{g + 1}").read_text() == f"gen {g}\n"
    _, r = verify_generations([tmp_path / "audit.log.1", p])
    assert r.ok


def test_parse_record_rejects_malformed() -> None:
    chain = "a" * 64
    assert parse_record(f"1\t2\t0\tboot\t3\t-\tfresh\t{chain}".encode()) is not None
    bad = [
        f"1\t2\t5\tboot\t3\t-\tfresh\t{chain}",  # boot observer_ns must be 0
        f"1\t2\t0\tboot\t3\t-\tcrashed\t{chain}",
        f"01\t2\t0\tboot\t3\t-\tfresh\t{chain}",
        f"1\t2\t0\tboot\t3\t-\tfresh\t{chain.upper()}",
        f"1\t2\t3\tspawn\t4\t5\tfork\tprog\tinline\t9\t{chain}",
        f"1\t2\t3\tcomplete\t4\t5\tdone\t0\t-\t1\t0\t0\tfalse\t{chain}",
        f"1\t2\t3\trefused\t4\t\t{chain}",
        f"1\t2\t3\tunknown\t4\t5\t{chain}",
    ]
    for line in bad:
        assert parse_record(line.encode()) is None, line


def test_close_is_idempotent_and_records_after_close_are_ignored(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "audit.log"
    with AuditLog(p) as log:
        log.refused(1, 2, "debounced")
    log.close()
    assert log.refused(1, 2, "debounced") is False
    assert len(rows(p)) == 2


def test_identity_records_verify_and_keep_the_chain(tmp_path: pathlib.Path) -> None:
    """docs/observer.md#agent-identity: an ``identity`` record (agent pid,
    sender, comm, unit, container, command line; ``-`` when unknown) sits in
    the chain like any other; a log with them and one without both verify,
    and a changed unit is caught."""
    p = tmp_path / "audit.log"
    log = AuditLog(p)
    sample(log, 1)  # an old-style stretch: no identity records
    log.identity(5, 6172, None, "python3", "ingest.service", None, "worker.py --queue\tingest")
    log.verdict(5, 6172, "hung")
    log.identity(6, 4242, "127.0.0.2", None, None, None, None)
    log.close()
    got = rows(p)
    ident = [r for r in got if r[3] == "identity"]
    assert [r[4:10] for r in ident] == [
        ["6172", "-", "python3", "ingest.service", "-", "worker.py --queue ingest"],
        ["4242", "127.0.0.2", "-", "-", "-", "-"],
    ]
    verify = [sys.executable, "-m", "varta", "audit", "verify", str(p)]
    ok = subprocess.run(verify, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"OK: {len(got)} records" in ok.stdout
    p.write_text(p.read_text().replace("ingest.service", "other.service"))
    bad = subprocess.run(verify, capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "chain mismatch" in bad.stdout
