"""Verdicts through the real ``varta-watch`` daemon (docs/verdicts.md): what a
deploy, a kill and a hang look like in recovery, the TSV file, the audit log,
/metrics and the log; and that neither a stopped daemon nor a blocked Python
loop blames healthy agents.

The pauses here are the thing under test (the daemon SIGSTOPped, the Python
loop wedged), so they are real time; everything else waits for an event the
daemon produces (rows in its TSV file, its log, /metrics).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from watch_e2e import (
    RECORDER_CODE,
    Watch,
    audit_rows,
    http_get,
    token_file,
    tsv_rows,
    wait_for,
)

FLEET = Path(__file__).with_name("fleet.py")


class Fleet:
    """``tests/fleet.py``: n agent processes beating every interval_ms."""

    def __init__(self, sock: Path, n: int, interval_ms: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(FLEET), str(sock), str(n), str(interval_ms)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.pids: list[int] = []
        for line in self.proc.stdout:
            if line.strip() == "ready":
                break
            self.pids.append(int(line))
        assert len(self.pids) == n

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)


def beats_by_pid(rows: list[list[str]]) -> Counter[str]:
    return Counter(r[2] for r in rows if r[1] == "beat")


def every_agent_beat_since(tsv: Path, start: int, pids: list[int], times: int) -> bool:
    after = beats_by_pid(tsv_rows(tsv)[start:])
    return all(after[str(p)] >= times for p in pids)


def test_a_deploy_recovers_nothing_and_a_kill_recovers_with_its_verdict(tmp_path: Path) -> None:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER_CODE)
    out = tmp_path / "recovered.txt"
    tsv = tmp_path / "events.tsv"
    audit = tmp_path / "audit.log"
    watch = Watch(
        tmp_path,
        "--recovery-exec", f"{sys.executable} {script} {out} {{verdict}} {{pid}}",
        "--recovery-audit-file", str(audit),
        "--export-file", str(tsv),
        "--prom-addr", "127.0.0.1:0",
        "--prom-token-file", str(token_file(tmp_path)),
        threshold_ms=30_000,
    )  # fmt: skip
    fleet = Fleet(watch.sock, 2, 100)
    clean, killed = fleet.pids
    try:
        wait_for("both agents' beats", lambda: len(beats_by_pid(tsv_rows(tsv))) == 2)
        # A deploy: SIGTERM → the agent leaves its with block → clean-exit frame.
        os.kill(clean, signal.SIGTERM)
        verdicts = wait_for(
            "the exited verdict row",
            lambda: [r for r in tsv_rows(tsv) if r[1] == "verdict" and r[2] == str(clean)],
        )
        assert verdicts[0][4:6] == ["exited", "clean_exit"]
        # Its stall row comes first, as upstream writes it.
        stall = [r for r in tsv_rows(tsv) if r[1] == "stall" and r[2] == str(clean)]
        assert stall and stall[0][4:6] == ["stall", "-"]
        os.kill(killed, signal.SIGKILL)
        line = wait_for("the recovery run", lambda: out.exists() and out.read_text())
        assert line == f"vanished {killed}\n"
        body = http_get(watch.addr or "").decode()
        assert f'pid="{clean}"' not in body and f'pid="{killed}"' not in body  # retired
        assert 'varta_stall_verdicts_total{verdict="exited"} 1' in body
        assert 'varta_stall_verdicts_total{verdict="vanished"} 1' in body
        assert "varta_tracker_retired_total 2" in body
    finally:
        fleet.stop()
        code = watch.stop()
    assert code == 0, watch.stderr
    assert out.read_text() == f"vanished {killed}\n"  # the clean exit ran nothing
    kinds = [(r[3], r[4], r[5]) for r in audit_rows(audit) if r[3] in ("verdict", "spawn")]
    assert kinds[0] == ("verdict", str(killed), "vanished") and kinds[1][:2] == (
        "spawn",
        str(killed),
    )
    assert len(kinds) == 2
    # Named as the OS knows them (docs/observer.md#agent-identity): name[pid].
    assert re.search(rf"\S+\[{clean}\]( in \S+)? exited cleanly", watch.stderr)
    assert re.search(rf"\S+\[{killed}\]( in \S+)? vanished", watch.stderr)


def test_a_stopped_daemon_blames_no_healthy_agent_and_still_reports_a_real_hang(
    tmp_path: Path,
) -> None:
    threshold_ms, interval_ms, n = 1000, 200, 30
    tsv = tmp_path / "events.tsv"
    watch = Watch(tmp_path, "--export-file", str(tsv), threshold_ms=threshold_ms)
    fleet = Fleet(watch.sock, n, interval_ms)
    try:
        wait_for("every agent's beats", lambda: len(beats_by_pid(tsv_rows(tsv))) == n)
        for _ in range(3):
            start = len(tsv_rows(tsv))
            os.kill(watch.proc.pid, signal.SIGSTOP)
            time.sleep(0.9 * threshold_ms / 1000)  # the pause under test
            os.kill(watch.proc.pid, signal.SIGCONT)
            # Once every agent has beaten twice since, any stall this pause
            # caused would already be in the file, ahead of those beats.
            wait_for(
                "two beats of every agent after the pause",
                lambda start=start: every_agent_beat_since(tsv, start, fleet.pids, 2),
            )
        assert [r for r in tsv_rows(tsv) if r[1] == "stall"] == []

        # A real hang that begins while the daemon is stopped is reported after.
        victim = fleet.pids[0]
        os.kill(watch.proc.pid, signal.SIGSTOP)
        os.kill(victim, signal.SIGSTOP)
        time.sleep(0.9 * threshold_ms / 1000)
        os.kill(watch.proc.pid, signal.SIGCONT)
        verdict = wait_for(
            "the victim's verdict",
            lambda: [r for r in tsv_rows(tsv) if r[1] == "verdict" and r[2] == str(victim)],
        )
        assert verdict[0][4] == "hung"
        stalled = {r[2] for r in tsv_rows(tsv) if r[1] == "stall"}
        assert stalled == {str(victim)}
    finally:
        fleet.stop()
        code = watch.stop()
    assert code == 0, watch.stderr
    assert watch.stderr.count("observer was blind for") >= 4, watch.stderr


def test_a_blocked_python_loop_blames_no_agent(tmp_path: Path) -> None:
    threshold_ms, interval_ms, n = 1000, 200, 30
    tsv = tmp_path / "events.tsv"
    log = tmp_path / "watch.log"
    watch = Watch(
        tmp_path,
        "--export-file", str(tsv),
        "--inject-wedge-ms", str(int(0.9 * threshold_ms)),
        "--inject-wedge-after-ms", "5000",
        threshold_ms=threshold_ms,
        log_file=log,
    )  # fmt: skip
    fleet = Fleet(watch.sock, n, interval_ms)
    try:
        wait_for("every agent's beats", lambda: len(beats_by_pid(tsv_rows(tsv))) == n)
        wait_for("the wedge", lambda: "wedging the poll loop" in log.read_text())
        # Rows written from here on come after the wedge: once every agent
        # has two, whatever the wedge caused is in the file ahead of them.
        start = len(tsv_rows(tsv))
        wait_for(
            "two beats of every agent after the wedge",
            lambda: every_agent_beat_since(tsv, start, fleet.pids, 2),
        )
        assert [r for r in tsv_rows(tsv) if r[1] == "stall"] == []
    finally:
        fleet.stop()
        code = watch.stop()
    assert code == 0, watch.stderr
    assert f"wedging the poll loop for 900 ms ({n} agents tracked)" in watch.stderr, watch.stderr
    # Ingest ran on: no blind interval anywhere near the wedge's length (a
    # loaded machine may show short scheduling gaps).
    blind_ms = [int(m) for m in re.findall(r"observer was blind for (\d+) ms", watch.stderr)]
    assert all(ms < 450 for ms in blind_ms), watch.stderr
