"""Recovery runner (docs/observer.md#recovery) with real child processes.

Time is injected: every ``now_ns`` the runner sees comes from the test, so
debounce windows and timeouts are crossed by passing a later value, never by
sleeping. Child exits are awaited with ``waitid(WEXITED | WNOWAIT)``, which
blocks until the child is dead but leaves it for the runner to reap.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import stat
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import pytest

from varta import BeatOrigin
from varta.watch import recovery
from varta.watch.audit import AuditLog, verify
from varta.watch.recovery import (
    OUTCOMES,
    REFUSED_REASONS,
    Completion,
    RecoveryCommand,
    RecoveryConfig,
    RecoveryRunner,
    parse_env_entry,
    read_start_time,
)

MS = 1_000_000
S = 1_000_000_000
T0 = 10 * S  # an arbitrary observer-clock origin

RECORDER = """\
import json, sys
env = {}
with open("/proc/self/environ", "rb") as f:
    for item in f.read().split(b"\\0"):
        if item:
            k, _, v = item.decode().partition("=")
            env[k] = v
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"argv": sys.argv[2:], "env": env}) + "\\n")
"""

HANG = """\
import sys, time
with open(sys.argv[1], "a") as out:
    out.write("started\\n")
time.sleep(120)
"""

CHATTY = """\
import os, sys
os.write(1, b"o" * int(sys.argv[1]))
os.write(2, b"e" * int(sys.argv[2]))
"""


@dataclass(frozen=True)
class Stall:
    pid: int
    origin: int = BeatOrigin.KERNEL_ATTESTED
    pid_ns_inode: Optional[int] = None
    generation: Optional[int] = None
    last_nonce: int = 7
    last_ns: int = 0
    observer_ns: int = 0
    verdict: str = "hung"


@dataclass(frozen=True)
class Agent:
    stalled: bool = True
    last_ns: int = 0
    generation: Optional[int] = None


@pytest.fixture
def scripts(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    out = {}
    for name, text in (("recorder", RECORDER), ("hang", HANG), ("chatty", CHATTY)):
        p = tmp_path / f"{name}.py"
        p.write_text(text)
        out[name] = p
    return out


def wait_exit(child_pid: int) -> None:
    """Block until the child has exited, without reaping it."""
    os.waitid(os.P_PID, child_pid, os.WEXITED | os.WNOWAIT)


def reap_exited(runner: RecoveryRunner, child_pid: int, now_ns: int) -> Completion:
    wait_exit(child_pid)
    done = [c for c in runner.reap(now_ns) if c.child_pid == child_pid]
    assert len(done) == 1, done
    return done[0]


def records(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def audit_rows(path: pathlib.Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "# varta-watch recovery audit v2"
    return [line.split("\t") for line in lines[1:]]


def make(command: str, audit: Optional[AuditLog] = None, **cfg: Any) -> RecoveryRunner:
    runner_kw = {k: cfg.pop(k) for k in list(cfg) if k in _RUNNER_KW}
    config = RecoveryConfig(RecoveryCommand.parse(command), **cfg)
    runner_kw.setdefault("own_ns_inode", None)
    return RecoveryRunner(config, audit, **runner_kw)


_RUNNER_KW = {
    "capacity",
    "allow_cross_namespace",
    "own_ns_inode",
    "clock",
    "ledger_capacity",
    "start_time_reader",
}


# --- command parsing -----------------------------------------------------------------


def test_parse_splits_on_unicode_whitespace_runs() -> None:
    cmd = RecoveryCommand.parse("  restart\u00a0 --svc\u2003web\t\n--now\u3000")
    assert cmd == RecoveryCommand("restart", ("--svc", "web", "--now"))


def test_parse_only_unicode_white_space_separates() -> None:
    # U+001C..U+001F are separators for str.split() but not Unicode White_Space.
    cmd = RecoveryCommand.parse("a\x1cb c")
    assert cmd.program == "a\x1cb"
    assert cmd.args == ("c",)


def test_pid_is_appended_without_placeholder() -> None:
    assert RecoveryCommand.parse("notify").argv(4242) == ["notify", "4242"]
    assert RecoveryCommand.parse("a b").argv(1) == ["a", "b", "1"]


def test_pid_placeholder_is_substituted_everywhere_in_arguments_only() -> None:
    cmd = RecoveryCommand.parse("restart {pid} --now --tag=p{pid}-{pid}")
    assert cmd.argv(4242) == ["restart", "4242", "--now", "--tag=p4242-4242"]
    # the program is never substituted, and does not count as a placeholder
    assert RecoveryCommand.parse("prog{pid} x").argv(5) == ["prog{pid}", "x", "5"]


@pytest.mark.parametrize("text", ["", "   ", "\u2028\t"])
def test_empty_command_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        RecoveryCommand.parse(text)


def test_nul_in_command_is_an_error() -> None:
    with pytest.raises(ValueError, match="NUL"):
        RecoveryCommand.parse("a b\0c")


def test_env_entries() -> None:
    assert parse_env_entry("K=V") == ("K", "V")
    assert parse_env_entry("K=a=b") == ("K", "a=b")
    assert parse_env_entry("K=") == ("K", "")
    for bad in ("novalue", "=v", "K\0=v", "K=v\0"):
        with pytest.raises(ValueError):
            parse_env_entry(bad)


def test_config_validation() -> None:
    cmd = RecoveryCommand.parse("x")
    with pytest.raises(ValueError, match="RecoveryTimeoutTooLow"):
        RecoveryConfig(cmd, timeout_ms=99)
    RecoveryConfig(cmd, timeout_ms=100)
    with pytest.raises(ValueError, match="capture-bytes"):
        RecoveryConfig(cmd, capture_bytes=63)
    with pytest.raises(ValueError, match="capture-bytes"):
        RecoveryConfig(cmd, capture_bytes=1_048_577)
    for bad in (("", "v"), ("A=B", "v"), ("K\0", "v"), ("K", "v\0")):
        with pytest.raises(ValueError):
            RecoveryConfig(cmd, env=(bad,))


def test_exec_file_is_a_trimmed_secret_file(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "exec"
    p.write_text("\n  /usr/bin/restart  {pid}\n\n")
    os.chmod(p, 0o600)
    cfg = RecoveryConfig.from_exec_file(p, debounce_ms=5)
    assert cfg.command == RecoveryCommand("/usr/bin/restart", ("{pid}",))
    assert cfg.source == str(p)
    assert cfg.debounce_ms == 5
    os.chmod(p, 0o644)
    with pytest.raises(PermissionError, match="group/other"):
        RecoveryConfig.from_exec_file(p)
    empty = tmp_path / "empty"
    empty.write_text(" \n\t")
    os.chmod(empty, 0o600)
    with pytest.raises(ValueError, match="empty command"):
        RecoveryConfig.from_exec_file(empty)
    link = tmp_path / "link"
    link.symlink_to(p)
    with pytest.raises(PermissionError, match="must not be a symlink"):
        RecoveryConfig.from_exec_file(link)


# --- spawning real programs ----------------------------------------------------------


def test_pid_appended_as_last_argument(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "calls"
    runner = make(f"{sys.executable} {scripts['recorder']} {out}")
    d = runner.on_stall(Stall(4242), T0)
    assert d.spawned and d.child_pid is not None
    c = reap_exited(runner, d.child_pid, T0 + 5 * MS)
    assert (c.status, c.exit_code, c.signal, c.agent_pid) == ("reaped", 0, None, 4242)
    assert c.duration_ns == 5 * MS
    assert records(out)[0]["argv"] == ["4242"]
    assert runner.outcomes["spawned"] == 1
    assert runner.outcomes["reaped_zero"] == 1
    assert (runner.duration_count, runner.duration_ns_sum) == (1, 5 * MS)
    assert runner.outstanding == 0


def test_pid_placeholder_substituted(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "calls"
    runner = make(f"{sys.executable} {scripts['recorder']} {out} --pid={{pid}} x{{pid}}y --now")
    d = runner.on_stall(Stall(77), T0)
    assert d.child_pid is not None
    reap_exited(runner, d.child_pid, T0)
    assert records(out)[0]["argv"] == ["--pid=77", "x77y", "--now"]


def test_no_shell_metacharacters_are_literal(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "calls"
    marker = tmp_path / "X"
    runner = make(f"{sys.executable} {scripts['recorder']} {out} $HOME; touch {marker} `id` |&>")
    d = runner.on_stall(Stall(9), T0)
    assert d.child_pid is not None
    reap_exited(runner, d.child_pid, T0)
    assert records(out)[0]["argv"] == ["$HOME;", "touch", str(marker), "`id`", "|&>", "9"]
    assert not marker.exists()


def test_environment_is_cleared_to_path_and_entries(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VARTA_TEST_SECRET", "leak")
    out = tmp_path / "calls"
    runner = make(
        f"{sys.executable} {scripts['recorder']} {out}", env=(("FOO", "bar"), ("EMPTY", ""))
    )
    d = runner.on_stall(Stall(1), T0)
    assert d.child_pid is not None
    reap_exited(runner, d.child_pid, T0)
    assert records(out)[0]["env"] == {"PATH": "/usr/bin:/bin", "FOO": "bar", "EMPTY": ""}


def test_inherit_env_keeps_observer_env_plus_entries(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VARTA_TEST_INHERITED", "yes")
    monkeypatch.setenv("FOO", "old")
    out = tmp_path / "calls"
    runner = make(
        f"{sys.executable} {scripts['recorder']} {out}", env=(("FOO", "new"),), inherit_env=True
    )
    d = runner.on_stall(Stall(1), T0)
    assert d.child_pid is not None
    reap_exited(runner, d.child_pid, T0)
    env = records(out)[0]["env"]
    assert env["VARTA_TEST_INHERITED"] == "yes"
    assert env["FOO"] == "new"
    assert env["PATH"] == os.environ["PATH"]


def test_program_lookup_uses_the_childs_path(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "varta-test-recover"
    prog.write_text(f"#!{sys.executable}\n" + RECORDER)
    prog.chmod(prog.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "calls"
    # In the observer's PATH but not in the child's /usr/bin:/bin: not found.
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    audit = AuditLog(tmp_path / "audit.log")
    runner = make(f"varta-test-recover {out}", audit)
    d = runner.on_stall(Stall(5), T0)
    assert d.outcome == "spawn_failed"
    assert d.reason == "spawn_failed" and d.error
    # The window starts only at a successful spawn: not debounced.
    assert runner.on_stall(Stall(5), T0 + 1).outcome == "spawn_failed"
    assert runner.outcomes["spawn_failed"] == 2
    assert sum(runner.refused.values()) == 0
    # With the child's PATH pointing there, execvp finds it.
    runner2 = make(f"varta-test-recover {out}", env=(("PATH", str(bindir)),))
    d2 = runner2.on_stall(Stall(5), T0)
    assert d2.child_pid is not None
    reap_exited(runner2, d2.child_pid, T0)
    assert records(out)[0]["argv"] == ["5"]
    audit.close()
    rows = audit_rows(tmp_path / "audit.log")
    assert [r[3:6] for r in rows[1:]] == [["refused", "5", "spawn_failed"]] * 2


def test_debounce_suppresses_then_allows(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "calls"
    audit = AuditLog(tmp_path / "audit.log")
    runner = make(f"{sys.executable} {scripts['recorder']} {out}", audit, debounce_ms=1000)
    first = runner.on_stall(Stall(42), T0)
    assert first.spawned and first.child_pid is not None
    reap_exited(runner, first.child_pid, T0 + 10 * MS)
    second = runner.on_stall(Stall(42), T0 + 999 * MS)
    assert (second.outcome, second.reason) == ("debounced", "debounced")
    # another pid is not held back by 42's window
    other = runner.on_stall(Stall(43), T0 + 999 * MS)
    assert other.spawned and other.child_pid is not None
    third = runner.on_stall(Stall(42), T0 + 1000 * MS)
    assert third.spawned and third.child_pid is not None
    wait_exit(other.child_pid)
    wait_exit(third.child_pid)
    reaped = runner.reap(T0 + 1001 * MS)
    assert {c.child_pid for c in reaped} == {other.child_pid, third.child_pid}
    assert [r["argv"] for r in records(out)].count(["42"]) == 2
    assert runner.outcomes["debounced"] == 1
    assert runner.outcomes["spawned"] == 3
    audit.close()
    kinds = [(r[3], r[4]) for r in audit_rows(tmp_path / "audit.log")[1:]]
    assert kinds.count(("spawn", "42")) == 2
    assert ("refused", "42") in kinds
    assert verify(tmp_path / "audit.log").ok


def test_debounce_zero_never_debounces_but_in_flight_child_does(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    runner = make(f"{sys.executable} {scripts['hang']} {tmp_path / 'log'}", debounce_ms=0)
    first = runner.on_stall(Stall(8), T0)
    assert first.spawned
    again = runner.on_stall(Stall(8), T0 + 1)
    assert (again.outcome, again.reason) == ("debounced", "outstanding_in_flight")
    res = runner.shutdown(5000)
    assert res.survivors == []
    assert [c.status for c in res.completed] == ["killed"]


def test_recycled_pid_lineage_is_not_debounced_and_old_child_is_reclaimed(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    runner = make(f"{sys.executable} {scripts['hang']} {tmp_path / 'log'}", audit)
    old = runner.on_stall(Stall(50, generation=111), T0)
    assert old.spawned and old.child_pid is not None
    # same lineage (or unknown generation) inside the window: debounced
    assert runner.on_stall(Stall(50, generation=111), T0 + MS).outcome == "debounced"
    assert runner.on_stall(Stall(50, generation=None), T0 + MS).outcome == "debounced"
    # pid recycled to another start time: window ignored, stale child killed
    new = runner.on_stall(Stall(50, generation=222), T0 + 2 * MS)
    assert new.spawned and new.child_pid is not None and new.child_pid != old.child_pid
    assert runner.debounce_recycle_resets == 1
    assert runner.outstanding_recycle_resets == 1
    assert runner.outcomes["killed"] == 1
    c = reap_exited(runner, old.child_pid, T0 + 3 * MS)
    assert (c.status, c.signal, c.exit_code) == ("killed", signal.SIGKILL, None)
    assert runner.outcomes["reaped_nonzero"] == 1
    res = runner.shutdown(5000)
    assert [x.child_pid for x in res.completed] == [new.child_pid]
    audit.close()
    assert verify(tmp_path / "audit.log").ok


def test_hanging_child_is_killed_at_the_timeout(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    audit_path = tmp_path / "audit.log"
    audit = AuditLog(audit_path)
    runner = make(f"{sys.executable} {scripts['hang']} {tmp_path / 'log'}", audit, timeout_ms=200)
    d = runner.on_stall(Stall(31), T0)
    assert d.child_pid is not None
    assert runner.next_deadline_ns() == T0 + 200 * MS
    # before the timeout: nothing happens
    assert runner.reap(T0 + 199 * MS) == []
    assert runner.outcomes["killed"] == 0
    # at the timeout: SIGKILL sent once, counted as killed
    assert runner.reap(T0 + 200 * MS) == []
    assert runner.outcomes["killed"] == 1
    assert runner.next_deadline_ns() is None
    c = reap_exited(runner, d.child_pid, T0 + 250 * MS)
    assert (c.status, c.exit_code, c.signal) == ("killed", None, signal.SIGKILL)
    assert c.duration_ns == 250 * MS
    assert runner.outcomes["killed"] == 1
    assert runner.outcomes["reaped_nonzero"] == 1
    assert runner.duration_ns_sum == 250 * MS
    audit.close()
    rows = audit_rows(audit_path)
    spawn = [r for r in rows if r[3] == "spawn"]
    complete = [r for r in rows if r[3] == "complete"]
    assert len(spawn) == 1 and len(complete) == 1
    assert spawn[0][4:7] == ["31", str(d.child_pid), "exec"]
    assert spawn[0][7] == sys.executable and spawn[0][8] == "inline"
    argv = [sys.executable, str(scripts["hang"]), str(tmp_path / "log"), "31"]
    assert spawn[0][9] == str(len(" ".join(argv).encode()))
    assert complete[0][4:13] == [
        "31",
        str(d.child_pid),
        "killed",
        "-",
        "9",
        str(250 * MS),
        "0",
        "0",
        "false",
    ]
    assert verify(audit_path).ok


@pytest.mark.parametrize(
    ("stall", "outcome", "reason"),
    [
        (
            Stall(3, origin=BeatOrigin.NETWORK_UNVERIFIED),
            "refused_unauthenticated_transport",
            "unauthenticated_transport",
        ),
        (
            Stall(3, origin=BeatOrigin.SOCKET_MODE_ONLY),
            "refused_socket_mode_only",
            "socket_mode_only",
        ),
        (Stall(3, pid_ns_inode=4026531999), "refused_cross_namespace", "cross_namespace_agent"),
    ],
)
def test_refusals(stall: Stall, outcome: str, reason: str, tmp_path: pathlib.Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    never = tmp_path / "never-run"
    runner = make(f"/usr/bin/touch {never}", audit, own_ns_inode=4026531836)
    d = runner.on_stall(stall, T0)
    assert (d.outcome, d.reason, d.child_pid) == (outcome, reason, None)
    assert runner.outcomes[outcome] == 1
    assert runner.refused[reason] == 1
    assert runner.outstanding == 0
    audit.close()
    assert [r[3:6] for r in audit_rows(tmp_path / "audit.log")[1:]] == [["refused", "3", reason]]
    assert not never.exists()


def test_namespace_rules(scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    out = tmp_path / "calls"
    cmd = f"{sys.executable} {scripts['recorder']} {out}"
    same = make(cmd, own_ns_inode=100)
    for stall in (Stall(1, pid_ns_inode=100), Stall(2, pid_ns_inode=None)):
        d = same.on_stall(stall, T0)
        assert d.spawned and d.child_pid is not None
        reap_exited(same, d.child_pid, T0)
    unknown_own = make(cmd, own_ns_inode=None)
    d = unknown_own.on_stall(Stall(3, pid_ns_inode=200), T0)
    assert d.spawned and d.child_pid is not None
    reap_exited(unknown_own, d.child_pid, T0)
    allowed = make(cmd, own_ns_inode=100, allow_cross_namespace=True)
    d = allowed.on_stall(Stall(4, pid_ns_inode=200), T0)
    assert d.spawned and d.child_pid is not None
    reap_exited(allowed, d.child_pid, T0)
    assert sorted(r["argv"][0] for r in records(out)) == ["1", "2", "3", "4"]
    operator = make(cmd, own_ns_inode=100)
    d = operator.on_stall(Stall(5, origin=BeatOrigin.OPERATOR_ATTESTED_TRANSPORT), T0)
    assert d.spawned and d.child_pid is not None
    reap_exited(operator, d.child_pid, T0)


def test_own_namespace_inode_is_read_from_proc() -> None:
    runner = RecoveryRunner(RecoveryConfig(RecoveryCommand.parse("x")))
    expected = os.stat("/proc/self/ns/pid").st_ino
    assert runner.own_ns_inode == expected


def test_outstanding_capacity(scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    runner = make(f"{sys.executable} {scripts['hang']} {tmp_path / 'log'}", capacity=1)
    assert runner.on_stall(Stall(1), T0).spawned
    d = runner.on_stall(Stall(2), T0)
    assert (d.outcome, d.reason) == ("refused_outstanding_capacity", "outstanding_capacity")
    assert runner.refused["outstanding_capacity"] == 1
    runner.shutdown(5000)


def test_orphan_capacity_refuses_stale_reclaim(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    runner = make(f"{sys.executable} {scripts['hang']} {tmp_path / 'log'}", capacity=1)
    assert runner.on_stall(Stall(1, generation=1), T0).spawned
    assert runner.on_stall(Stall(1, generation=2), T0 + MS).spawned  # old child -> orphan
    d = runner.on_stall(Stall(1, generation=3), T0 + 2 * MS)  # orphan table (1) full
    assert (d.outcome, d.reason) == ("refused_outstanding_capacity", "orphan_reap_capacity")
    assert runner.refused["outstanding_capacity"] == 1
    res = runner.shutdown(5000)
    assert res.survivors == [] and len(res.completed) == 2


def test_debounce_ledger_capacity(scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    out = tmp_path / "calls"
    runner = make(
        f"{sys.executable} {scripts['recorder']} {out}", debounce_ms=1000, ledger_capacity=1
    )
    d = runner.on_stall(Stall(1), T0)
    assert d.child_pid is not None
    reap_exited(runner, d.child_pid, T0)
    full = runner.on_stall(Stall(2), T0 + 500 * MS)
    assert (full.outcome, full.reason) == ("refused_debounce_capacity", "debounce_capacity")
    assert runner.refused["debounce_capacity"] == 1
    # once the oldest entry is older than the debounce window it is evicted
    d = runner.on_stall(Stall(2), T0 + 1000 * MS)
    assert d.spawned and d.child_pid is not None
    assert runner.last_fired_evictions == 1
    reap_exited(runner, d.child_pid, T0 + 1000 * MS)


def test_ledger_entries_older_than_ten_windows_are_pruned(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "calls"
    runner = make(
        f"{sys.executable} {scripts['recorder']} {out}", debounce_ms=100, ledger_capacity=1
    )
    d = runner.on_stall(Stall(1), T0)
    assert d.child_pid is not None
    reap_exited(runner, d.child_pid, T0)
    d = runner.on_stall(Stall(2), T0 + 1001 * MS)  # pruned first: no eviction needed
    assert d.spawned and d.child_pid is not None
    assert runner.last_fired_evictions == 0
    reap_exited(runner, d.child_pid, T0 + 1001 * MS)


def test_nonzero_exit_and_signal_death(tmp_path: pathlib.Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    runner = make(f"{sys.executable} -c __import__('sys').exit(3)", audit)
    d = runner.on_stall(Stall(1), T0)
    assert d.child_pid is not None
    c = reap_exited(runner, d.child_pid, T0)
    assert (c.status, c.exit_code, c.signal) == ("reaped", 3, None)
    killer = make(f"{sys.executable} -c __import__('os').kill(__import__('os').getpid(),15)", audit)
    d = killer.on_stall(Stall(2), T0)
    assert d.child_pid is not None
    c = reap_exited(killer, d.child_pid, T0)
    assert (c.status, c.exit_code, c.signal) == ("reaped", None, 15)
    assert runner.outcomes["reaped_nonzero"] == 1 and killer.outcomes["reaped_nonzero"] == 1
    audit.close()
    complete = [r for r in audit_rows(tmp_path / "audit.log") if r[3] == "complete"]
    assert [r[6:9] for r in complete] == [["reaped", "3", "-"], ["reaped", "-", "15"]]


def test_captured_stdio_sizes_and_truncation(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    small = make(
        f"{sys.executable} {scripts['chatty']} 10 {{pid}}",
        audit,
        capture_stdio=True,
        capture_bytes=64,
    )
    d = small.on_stall(Stall(7), T0)
    assert d.child_pid is not None
    c = reap_exited(small, d.child_pid, T0)
    assert (c.stdout_len, c.stderr_len, c.truncated) == (10, 7, False)
    big = make(
        f"{sys.executable} {scripts['chatty']} 100000 {{pid}}",
        audit,
        capture_stdio=True,
        capture_bytes=64,
    )
    d = big.on_stall(Stall(50), T0)
    assert d.child_pid is not None
    # The child writes more than a pipe holds: the runner must drain it while
    # the child runs, so poll reap() until the child is done.
    done: list[Completion] = []
    deadline = time.monotonic() + 30
    while not done and time.monotonic() < deadline:
        done += big.reap(T0)
        time.sleep(0.002)  # poll interval of the deadline loop, not a synchronisation
    assert len(done) == 1
    c = done[0]
    assert c.stdout_len + c.stderr_len == 64
    assert c.truncated
    audit.close()
    complete = [r for r in audit_rows(tmp_path / "audit.log") if r[3] == "complete"]
    assert complete[0][10:13] == ["10", "7", "false"]
    assert complete[1][12] == "true"


def test_reap_window_rotates_and_counts_truncation(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "REAP_PER_TICK", 2)
    out = tmp_path / "calls"
    runner = make(f"{sys.executable} {scripts['recorder']} {out}")
    children = []
    for pid in (1, 2, 3):
        d = runner.on_stall(Stall(pid), T0)
        assert d.child_pid is not None
        children.append(d.child_pid)
    for cp in children:
        wait_exit(cp)
    first = runner.reap(T0)
    assert len(first) == 2
    assert runner.reap_truncated == 1
    second = runner.reap(T0)
    assert len(second) == 1
    assert {c.child_pid for c in first + second} == set(children)
    assert runner.reap_truncated == 1  # a window of one child is not truncated


def test_per_tick_budget(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "SPAWNS_PER_TICK", 2)
    out = tmp_path / "calls"
    runner = make(f"{sys.executable} {scripts['recorder']} {out}")
    runner.begin_tick()
    kids = []
    while runner.has_budget():
        d = runner.on_stall(Stall(100 + len(kids)), T0)
        assert d.child_pid is not None
        kids.append(d.child_pid)
    assert len(kids) == 2
    assert not runner.has_budget()
    assert runner.spawn_budget_exceeded == 1  # once per tick
    runner.begin_tick()
    assert runner.has_budget()
    # Wait for every child before reaping: one reap() collects all that exited.
    for cp in kids:
        wait_exit(cp)
    assert sorted(c.child_pid for c in runner.reap(T0)) == sorted(kids)


def test_fire_time_verdicts() -> None:
    lives = {10: 555}
    runner = make("x", start_time_reader=lives.get)
    stall = Stall(10, generation=555, last_ns=5 * S)
    assert runner.fire_time_verdict(stall, Agent(True, 5 * S, 555)) is None
    assert runner.fire_time_verdict(stall, Agent(False, 5 * S, 555)) == "skipped_agent_resumed"
    assert runner.fire_time_verdict(stall, Agent(True, 6 * S, 555)) == "skipped_agent_resumed"
    assert (
        runner.fire_time_verdict(Stall(10, generation=444, last_ns=5 * S), Agent(True, 5 * S))
        == "skipped_pid_recycled"
    )
    gone = Stall(11, generation=1, last_ns=5 * S)
    assert runner.fire_time_verdict(gone, Agent(True, 5 * S, 1)) == "skipped_stall_unverifiable"
    assert runner.fire_time_verdict(stall, None) == "skipped_stall_unverifiable"
    # network agents (no generation) are judged by the tracker's view only
    udp = Stall(99, origin=BeatOrigin.OPERATOR_ATTESTED_TRANSPORT, last_ns=5 * S)
    assert runner.fire_time_verdict(udp, Agent(True, 5 * S, None)) is None


def test_fire_time_check_counts_and_audits(tmp_path: pathlib.Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    runner = make("x", audit, start_time_reader=lambda pid: None)
    d = runner.fire_time_check(Stall(4, generation=9), Agent(True, 0, 9), T0)
    assert d is not None
    assert (d.outcome, d.reason) == ("skipped_stall_unverifiable", "skipped_stall_unverifiable")
    assert runner.outcomes["skipped_stall_unverifiable"] == 1
    assert sum(runner.refused.values()) == 0
    audit.close()
    rows = audit_rows(tmp_path / "audit.log")
    assert rows[-1][3:6] == ["refused", "4", "skipped_stall_unverifiable"]


def test_read_start_time() -> None:
    mine = read_start_time(os.getpid())
    assert isinstance(mine, int) and mine > 0
    with open(f"/proc/{os.getpid()}/stat") as f:
        assert str(mine) == f.read().rsplit(")", 1)[1].split()[19]
    assert read_start_time(2**22 + 12345) is None


def test_shutdown_kills_everything_and_reports(
    scripts: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    runner = make(f"{sys.executable} {scripts['hang']} {tmp_path / 'log'}", audit)
    kids = [runner.on_stall(Stall(p), T0).child_pid for p in (1, 2, 3)]
    res = runner.shutdown(5000)
    assert res.survivors == []
    assert sorted(c.child_pid for c in res.completed) == sorted(kids)
    assert all(c.status == "killed" and c.signal == signal.SIGKILL for c in res.completed)
    assert runner.outcomes["killed"] == 3
    assert runner.outstanding == 0
    for cp in kids:
        assert cp is not None
        with pytest.raises(ChildProcessError):
            os.waitpid(cp, os.WNOHANG)
    with pytest.raises(RuntimeError):
        runner.on_stall(Stall(4), T0)
    audit.close()
    assert verify(tmp_path / "audit.log").ok


def test_counters_have_every_label() -> None:
    runner = make("x")
    c = runner.counters()
    assert list(c["recovery_outcomes"]) == list(OUTCOMES)  # type: ignore[arg-type]
    # upstream's 14 + skipped_verdict (docs/verdicts.md) + refused_audit_unavailable
    assert len(OUTCOMES) == 16
    assert list(c["recovery_refused"]) == list(REFUSED_REASONS)  # type: ignore[arg-type]
    for key in (
        "recovery_duration_ns_sum",
        "recovery_duration_count",
        "recovery_last_fired_evictions",
        "recovery_debounce_recycle_resets",
        "recovery_outstanding_recycle_resets",
        "recovery_spawn_budget_exceeded",
        "recovery_invariant_violations",
        "recovery_reap_truncated",
    ):
        assert c[key] == 0
