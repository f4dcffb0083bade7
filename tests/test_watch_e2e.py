"""varta-watch end to end: real daemon, agent and recovery processes (native observer)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_metrics import assert_promtool_accepts
from watch_e2e import (
    RECORDER_CODE,
    TOKEN_HEX,
    Agent,
    Watch,
    audit_rows,
    http_get,
    token_file,
    tsv_rows,
    wait_for,
)


def recorder(tmp: Path, sleep_s: float = 0.0) -> tuple[str, Path]:
    """A recovery command line (program + script) and the file it appends to."""
    script = tmp / "recorder.py"
    code = RECORDER_CODE + (f"import time\ntime.sleep({sleep_s})\n" if sleep_s else "")
    script.write_text(code)
    out = tmp / "recovered.txt"
    return f"{sys.executable} {script} {out}", out


def beat_rows(tsv: Path, pid: int) -> list[list[str]]:
    return [r for r in tsv_rows(tsv) if r[1] == "beat" and r[2] == str(pid)]


def audit_verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "varta", "audit", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_stall_runs_recovery_once_then_debounces_and_audits(tmp_path: Path) -> None:
    cmd, out = recorder(tmp_path)
    tsv, audit = tmp_path / "events.tsv", tmp_path / "audit.log"
    watch = Watch(
        tmp_path,
        "--recovery-exec", cmd,
        "--recovery-debounce-ms", "60000",
        "--recovery-audit-file", str(audit),
        "--export-file", str(tsv),
    )  # fmt: skip
    agent = Agent(watch.sock)
    try:
        wait_for("the agent's beats in the TSV file", lambda: beat_rows(tsv, agent.pid))
        agent.stop_process()
        assert wait_for("the recovery run", lambda: out.exists() and out.read_text()) == (
            f"{agent.pid}\n"  # the pid appended as the last argument
        )
        wait_for(
            "the complete audit row",
            lambda: [r for r in audit_rows(audit) if r[3] == "complete"],
        )
        seen = len(beat_rows(tsv, agent.pid))
        agent.cont()
        wait_for("beats after SIGCONT", lambda: len(beat_rows(tsv, agent.pid)) > seen)
        agent.stop_process()  # a second stall inside the debounce window
        wait_for(
            "the debounced refusal",
            lambda: [r for r in audit_rows(audit) if r[3] == "refused" and r[5] == "debounced"],
        )
    finally:
        agent.kill()
        code = watch.stop()
    assert code == 0, watch.stderr
    assert out.read_text() == f"{agent.pid}\n"  # ran once
    rows = tsv_rows(tsv)
    stalls = [(r, rows[i + 1]) for i, r in enumerate(rows) if r[1] == "stall"]
    # Two hangs (SIGSTOP), each a stall row and its verdict row; the final
    # SIGKILL may add a "vanished" one.
    hangs = [(s, v) for s, v in stalls if v[1] == "verdict" and v[4] == "hung"]
    assert [s[2] for s, _ in hangs] == [str(agent.pid)] * 2
    assert all(s[4] == "stall" and s[5] == "-" for s, _ in stalls)
    assert all(v[1:3] == ["verdict", s[2]] for s, v in stalls)
    beat = beat_rows(tsv, agent.pid)[0]
    assert beat[4] == "ok" and beat[5] == "7" and len(beat) == 6
    rows = audit_rows(audit)
    kinds = ["boot", "identity", "verdict", "spawn", "complete", "refused"]
    assert [r[3] for r in rows][:6] == kinds
    # The final SIGKILL can add a "vanished" stall, debounced like the second hang.
    assert all(r[3] == "refused" and r[5] == "debounced" for r in rows[5:])
    # Who the agent is (docs/observer.md#agent-identity): no sender (Unix
    # socket), its comm and short command line (the interpreter: `-c` code).
    ident = rows[1]
    assert ident[4:6] == [str(agent.pid), "-"] and ident[6] != "-"
    assert ident[9].startswith(os.path.basename(sys.executable) + " -c ")
    assert rows[2][4:6] == [str(agent.pid), "hung"]  # why the child ran, before it ran
    spawn, complete = rows[3], rows[4]
    assert spawn[4] == str(agent.pid) and spawn[6] == "exec" and spawn[7] == sys.executable
    assert complete[4:9] == [str(agent.pid), spawn[5], "reaped", "0", "-"]
    assert re.search(rf"\S+\[{agent.pid}\]( in \S+)? hung: alive but silent for", watch.stderr)

    res = audit_verify(audit)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = audit.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace(f"\t{agent.pid}\t", f"\t{agent.pid + 1}\t", 1)  # tamper
    audit.write_text("".join(lines))
    res = audit_verify(audit)
    assert res.returncode == 1
    assert "line 3" in res.stdout, res.stdout


def test_pid_placeholder_and_timeout_kill(tmp_path: Path) -> None:
    cmd, out = recorder(tmp_path, sleep_s=60)
    tsv, audit = tmp_path / "events.tsv", tmp_path / "audit.log"
    watch = Watch(
        tmp_path,
        "--recovery-exec", f"{cmd} --agent={{pid}} now",
        "--recovery-timeout-ms", "300",
        "--recovery-audit-file", str(audit),
        "--export-file", str(tsv),
    )  # fmt: skip
    agent = Agent(watch.sock)
    try:
        wait_for("beats", lambda: beat_rows(tsv, agent.pid))
        agent.stop_process()
        assert wait_for("the recovery run", lambda: out.exists() and out.read_text()) == (
            f"--agent={agent.pid} now\n"
        )
        killed = wait_for(
            "the killed child's complete row",
            lambda: [r for r in audit_rows(audit) if r[3] == "complete"],
        )
    finally:
        agent.kill()
        code = watch.stop()
    assert code == 0, watch.stderr
    assert killed[0][6:9] == ["killed", "-", str(signal.SIGKILL.value)]
    assert int(killed[0][9]) >= 300_000_000  # ran at least the timeout


def test_sigterm_exits_0_unlinks_socket_and_flushes(tmp_path: Path) -> None:
    cmd, _ = recorder(tmp_path, sleep_s=60)
    tsv, audit = tmp_path / "events.tsv", tmp_path / "audit.log"
    watch = Watch(
        tmp_path,
        "--recovery-exec", cmd,
        "--recovery-audit-file", str(audit),
        "--export-file", str(tsv),
        "--shutdown-grace-ms", "2000",
    )  # fmt: skip
    agent = Agent(watch.sock)
    try:
        wait_for("beats", lambda: beat_rows(tsv, agent.pid))
        agent.stop_process()
        spawn = wait_for(
            "a running recovery child", lambda: [r for r in audit_rows(audit) if r[3] == "spawn"]
        )
        t0 = time.monotonic()
        watch.proc.send_signal(signal.SIGTERM)
        watch.wait_notify("STOPPING=1")
        code = watch.stop()
        elapsed = time.monotonic() - t0
    finally:
        agent.kill()
        watch.kill()
    assert code == 0, watch.stderr
    assert elapsed < 2.0 + 1.5  # the grace plus process teardown
    assert not watch.sock.exists()
    rows = audit_rows(audit)
    # nothing lost: the child killed at shutdown has its complete row, on disk
    assert [r[3] for r in rows] == ["boot", "identity", "verdict", "spawn", "complete"]
    assert rows[4][5] == spawn[0][5] and rows[4][6] == "killed"
    assert audit_verify(audit).returncode == 0
    last = tsv_rows(tsv)[-3:]
    assert [r[1] for r in last] == ["stall", "verdict", "identity"]
    # identity: no sender (Unix socket); comm=… and the short command line
    assert last[2][2] == last[0][2] and last[2][4] == "-"
    assert last[2][5].startswith("comm=") and " cmdline=" in last[2][5]
    assert "stopped" in watch.stderr.splitlines()[-1]


@pytest.mark.parametrize("mode", ["direct", "libc"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_each_signal_handler_mode_stops_cleanly(
    tmp_path: Path, mode: str, sig: signal.Signals
) -> None:
    watch = Watch(tmp_path, "--signal-handler-mode", mode, "--read-timeout-ms", "1000")
    try:
        code = watch.stop(sig)
    finally:
        watch.kill()
    assert code == 0, watch.stderr
    assert not watch.sock.exists()
    assert "stopped" in watch.stderr.splitlines()[-1]


def block_sigusr1() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})


def test_direct_mode_refuses_to_start_when_its_sigusr1_self_test_fails(tmp_path: Path) -> None:
    # SIGUSR1 blocked (inherited across exec): the self-test's handler cannot run.
    watch = Watch(
        tmp_path, "--signal-handler-mode", "direct", wait_ready=False, preexec=block_sigusr1
    )
    try:
        code = watch.wait()
    finally:
        watch.kill()
    assert code == 1
    assert "--signal-handler-mode direct" in watch.stderr
    assert "SIGUSR1 self-test" in watch.stderr and "blocked" in watch.stderr
    # libc mode has no self-test, so the same process state starts fine.
    libc_watch = Watch(tmp_path, "--signal-handler-mode", "libc", preexec=block_sigusr1)
    try:
        assert libc_watch.stop() == 0, libc_watch.stderr
    finally:
        libc_watch.kill()


def test_metrics_auth_core_families_and_promtool(tmp_path: Path) -> None:
    token = token_file(tmp_path)
    watch = Watch(
        tmp_path,
        "--prom-addr", "127.0.0.1:0",
        "--prom-token-file", str(token),
        "--prom-rate-limit-per-sec", "0",
    )  # fmt: skip
    agent = Agent(watch.sock)
    try:
        assert watch.addr is not None and watch.addr.startswith("127.0.0.1:")
        for bad in (None, "00" * 32, TOKEN_HEX[:-1]):
            resp = http_get(watch.addr, token=bad)
            assert resp.startswith(b"HTTP/1.0 401 Unauthorized\r\n"), resp[:80]
            assert b'WWW-Authenticate: Bearer realm="varta"' in resp
        row = f'varta_beats_total{{pid="{agent.pid}",'

        def body_with_agent() -> str:
            resp = http_get(watch.addr or "", TOKEN_HEX.upper())
            assert resp.startswith(b"HTTP/1.0 200 OK\r\n"), resp[:80]
            body = resp.partition(b"\r\n\r\n")[2].decode()
            return body if row in body and "varta_prom_auth_failures_total 3\n" in body else ""

        body = wait_for("the agent's row in /metrics", body_with_agent)
    finally:
        agent.kill()
        assert watch.stop() == 0, watch.stderr
    lines = body.splitlines()
    assert lines[0] == "# HELP varta_beats_total Total accepted beats per agent pid."
    assert lines[1] == "# TYPE varta_beats_total counter"
    for fam, value in (
        ("varta_beats_total", None),
        ("varta_stalls_total", "0"),
        ("varta_status", "0"),
    ):
        got = [ln for ln in lines if ln.startswith(f'{fam}{{pid="{agent.pid}",')]
        assert len(got) == 1, fam
        if value is not None:
            assert got[0].endswith(f" {value}")
    beats = int(next(ln for ln in lines if ln.startswith(row)).split()[-1])
    assert beats >= 1
    assert "varta_watch_pids_tracked 1" in lines
    assert_promtool_accepts(body)


def test_rate_limited_scrape_is_closed_unanswered(tmp_path: Path) -> None:
    watch = Watch(
        tmp_path,
        "--prom-addr", "127.0.0.1:0",
        "--prom-rate-limit-per-sec", "1",
        "--prom-rate-limit-burst", "2",
    )  # fmt: skip
    try:
        assert watch.addr is not None
        answers = [http_get(watch.addr, token=None) for _ in range(3)]
    finally:
        assert watch.stop() == 0
    assert answers[0].startswith(b"HTTP/1.0 200 OK"), watch.stderr
    assert answers[1].startswith(b"HTTP/1.0 200"), watch.stderr
    assert answers[2] == b""


def test_second_instance_is_refused_with_exit_1(tmp_path: Path) -> None:
    first = Watch(tmp_path)
    try:
        second = Watch(tmp_path, wait_ready=False)
        code = second.wait(timeout=30)
        assert code == 1
        assert "already running" in second.stderr and "usage" not in second.stderr
        assert first.proc.poll() is None and first.sock.exists()
    finally:
        assert first.stop() == 0
    assert not first.sock.exists()


def test_startup_failures_exit_1_with_reason_and_clean_up(tmp_path: Path) -> None:
    exec_file = tmp_path / "exec"
    exec_file.write_text("true\n")
    exec_file.chmod(0o600)
    cases = [
        (["--recovery-exec", "true", "--recovery-exec-file", str(exec_file)], "MutuallyExclusive"),
        (["--prom-addr", "127.0.0.1:0", "--prom-token-file", str(tmp_path / "nope")], "nope"),
        (["--recovery-exec-file", str(tmp_path)], "regular file"),
    ]
    for args, needle in cases:
        watch = Watch(tmp_path, *args, wait_ready=False)
        assert watch.wait(timeout=30) == 1
        assert needle in watch.stderr and "usage" not in watch.stderr, watch.stderr
        assert not watch.sock.exists()


def test_shutdown_after_secs_and_heartbeat_file(tmp_path: Path) -> None:
    hb = tmp_path / "heartbeat"
    watch = Watch(tmp_path, "--shutdown-after-secs", "1", "--heartbeat-file", str(hb))
    watch.wait_notify("STOPPING=1", timeout=10)
    assert watch.wait() == 0, watch.stderr
    count, observer_ns = hb.read_text().split()
    assert int(count) >= 2 and int(observer_ns) > 0


def test_systemd_watchdog_pings(tmp_path: Path) -> None:
    watch = Watch(tmp_path, env={"WATCHDOG_USEC": "200000"})
    try:
        watch.wait_notify("WATCHDOG=1", timeout=10)
        watch.wait_notify("WATCHDOG=1", timeout=10)
    finally:
        assert watch.stop() == 0


def test_self_watchdog_aborts_a_wedged_loop(tmp_path: Path) -> None:
    watch = Watch(
        tmp_path, "--self-watchdog-secs", "1", "--inject-wedge-ms", "20000", wait_ready=False
    )
    code = watch.wait(timeout=15)
    assert code == -signal.SIGABRT, watch.stderr
    assert "self-watchdog: stage maintenance" in watch.stderr


def test_demo_prints_beats_stall_and_recovery(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable, "-m", "varta.watch.demo",
            "--socket", str(tmp_path / "demo" / "varta.sock"),
            "--threshold-ms", "300",
            "--duration", "5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr + res.stdout
    out = res.stdout
    assert "varta demo: metrics at http://127.0.0.1:" in out
    assert "  beat   pid " in out and " ok payload " in out
    assert "  STALL  pid " in out
    assert "[recovery] recovery-would-restart-pid " in out
    assert "  exit   pid " in out  # the agent's terminal frame, recorded before varta-watch stops
    assert out.rstrip().endswith("varta demo: stopped (varta-watch exit 0)")
