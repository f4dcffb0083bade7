"""The daemon's loop, startup and shutdown against a scripted observer (no native code)."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import stat
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from varta import Status
from varta.watch import logsetup, notify
from varta.watch.audit import verify
from varta.watch.config import parse_args
from varta.watch.loop import Daemon, HwWatchdog, LoopState, StartupError, write_heartbeat
from watch_fakes import FakeObserver, beat, factory, namespace_conflict, stall

TOKEN_HEX = "ab" * 32


def make_daemon(
    tmp_path: Path, extra: list[str], obs: Optional[FakeObserver] = None, **kwargs: Any
) -> tuple[Daemon, FakeObserver]:
    obs = obs or FakeObserver()
    argv = ["--socket", str(tmp_path / "w.sock"), "--threshold-ms", "100", *extra]
    cfg = parse_args(["--read-timeout-ms", "5", *argv])
    return Daemon(cfg, observer_factory=factory(obs), **kwargs), obs


def run_until(
    daemon: Daemon, obs: FakeObserver, done: Callable[[], bool], limit: int = 2000
) -> None:
    """start → loop until *done()* (checked at every poll) → shutdown."""

    def check(_: FakeObserver) -> None:
        if done() or len(obs.timeouts) > limit:
            daemon.stop_requested = True

    obs.on_poll = check
    daemon.start()
    daemon.loop()
    daemon.shutdown()
    assert len(obs.timeouts) <= limit, "condition never met"


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[Path, Path]:
    """A recovery program that appends its argv (one line per run) to a file."""
    script = tmp_path / "rec.py"
    out = tmp_path / "rec.out"
    script.write_text(
        "import sys\nwith open(sys.argv[1], 'a') as f: f.write(' '.join(sys.argv[2:]) + '\\n')\n"
    )
    return script, out


def tsv_rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_observer_gets_the_configured_arguments(tmp_path: Path) -> None:
    daemon, obs = make_daemon(
        tmp_path,
        ["--socket-mode", "640", "--tracker-capacity", "9", "--tracker-eviction-policy", "balanced",
         "--eviction-scan-window", "3", "--uds-rcvbuf-bytes", "0", "--max-beat-rate", "7",
         "--global-beat-rate", "8", "--global-beat-burst", "9", "--allow-cross-namespace-agents",
         "--clock-source", "boottime", "--shutdown-after-secs", "0"],
    )  # fmt: skip
    assert daemon.run() == 0
    assert obs.socket_path == str(tmp_path / "w.sock") and obs.threshold_ms == 100
    assert obs.kwargs == {
        "socket_mode": 0o640,
        "capacity": 9,
        "eviction": "balanced",
        "eviction_scan_window": 3,
        "uds_rcvbuf_bytes": 0,
        "max_beat_rate": 7,
        "global_beat_rate": 8,
        "global_beat_burst": 9,
        "allow_cross_namespace": True,
        "clock": "boottime",
        "emit_beats": False,
        "forensics_dir": None,
        "forensics_keep": 100,
        "forensics_max_age_s": 0,
    }
    assert obs.closed


def test_stall_exports_spawns_recovery_and_audits(
    tmp_path: Path, recorder: tuple[Path, Path]
) -> None:
    script, out = recorder
    tsv, audit = tmp_path / "events.tsv", tmp_path / "audit.log"
    daemon, obs = make_daemon(
        tmp_path,
        ["--recovery-exec", f"{sys.executable} {script} {out}", "--export-file", str(tsv),
         "--recovery-audit-file", str(audit)],
    )  # fmt: skip
    obs.batches.append([beat(4242, Status.DEGRADED, payload=9, nonce=3, observer_ns=5)])
    obs.batches.append([stall(4242, last_nonce=3, last_ns=5, observer_ns=200_000_000)])

    def done() -> bool:
        return daemon.recovery is not None and daemon.recovery.outcomes["reaped_zero"] == 1

    run_until(daemon, obs, done)
    assert obs.kwargs["emit_beats"] is True
    assert out.read_text() == "4242\n"  # pid appended as the last argument
    rows = tsv_rows(tsv)
    assert rows[0] == ["5", "beat", "4242", "3", "degraded", "9"]
    assert rows[1] == ["200000000", "stall", "4242", "3", "stall", "-"]
    res = verify(audit)
    assert res.ok, res
    kinds = [line.split("\t")[3] for line in audit.read_text().splitlines()[1:]]
    assert kinds == ["boot", "verdict", "spawn", "complete"]
    assert obs.closed


def test_pid_placeholder_and_debounce(tmp_path: Path, recorder: tuple[Path, Path]) -> None:
    script, out = recorder
    daemon, obs = make_daemon(
        tmp_path, ["--recovery-exec", f"{sys.executable} {script} {out} --pid={{pid}} now"]
    )
    obs.batches.append([stall(77)])
    obs.batches.append([stall(77)])  # within the 1 s debounce
    run_until(
        daemon,
        obs,
        lambda: (
            daemon.recovery is not None
            and daemon.recovery.outcomes["reaped_zero"] == 1
            and daemon.recovery.outcomes["debounced"] == 1
        ),
    )
    assert out.read_text() == "--pid=77 now\n"


def test_over_budget_stalls_are_deferred_then_fired(tmp_path: Path) -> None:
    daemon, obs = make_daemon(tmp_path, ["--recovery-exec", "true"])
    obs.batches.append([stall(1000 + i, last_ns=7) for i in range(20)])
    run_until(
        daemon,
        obs,
        lambda: daemon.recovery is not None and daemon.recovery.outcomes["spawned"] == 20,
    )
    assert daemon.recovery is not None
    assert daemon.recovery.spawn_budget_exceeded == 1
    assert 0.0 in obs.timeouts  # no idle wait while stalls were pending


def test_deferred_stall_of_a_resumed_agent_is_skipped(tmp_path: Path) -> None:
    daemon, obs = make_daemon(tmp_path, ["--recovery-exec", "true"])
    stalls = [stall(1000 + i, last_ns=7) for i in range(17)]
    obs.batches.append(stalls)
    # Before the deferred 17th stall fires, its agent beats again.
    obs.batches.append([beat(1016, observer_ns=9)])
    run_until(
        daemon,
        obs,
        lambda: (
            daemon.recovery is not None and daemon.recovery.outcomes["skipped_agent_resumed"] == 1
        ),
    )
    assert daemon.recovery is not None and daemon.recovery.outcomes["spawned"] == 16


def test_removed_pids_become_eviction_rows_unless_tracked_again(tmp_path: Path) -> None:
    tsv = tmp_path / "e.tsv"
    daemon, obs = make_daemon(tmp_path, ["--export-file", str(tsv)])
    obs.batches.append([beat(10), beat(11)])

    def remove(o: FakeObserver) -> None:
        if len(o.timeouts) == 3:
            o.remove([10, 11])
            o.batches.append([beat(11, nonce=2)])  # 11 is tracked again at once

    def done(o: FakeObserver) -> None:
        remove(o)
        if len(o.timeouts) > 6:
            daemon.stop_requested = True

    obs.on_poll = done
    daemon.start()
    daemon.loop()
    daemon.shutdown()
    kinds = [(r[1], r[2]) for r in tsv_rows(tsv)]
    assert ("eviction", "10") in kinds and ("eviction", "11") not in kinds


def test_snapshot_rows_and_counters(tmp_path: Path) -> None:
    daemon, obs = make_daemon(
        tmp_path, ["--recovery-exec", "true", "--signal-handler-mode", "libc"]
    )
    daemon.start()
    obs.track(9, status=Status.CRITICAL, beats=4)
    obs.track(3, status=Status.OK, beats=2, stalls=1, stalled=True)
    snap = daemon.snapshot()
    daemon.shutdown()
    assert list(snap.agents) == [
        (3, 2, 1, 3),
        (9, 4, 0, 2),
    ]
    assert snap.counters["beats"] == 6 and snap.counters["tracker_capacity"] == 256
    assert snap.counters["recovery_outcomes"]["spawned"] == 0  # type: ignore[index]
    assert snap.counters["signal_handler_install"] == {"direct": 0, "libc": 1}
    assert "varta_observer_stage_seconds:poll" in snap.histograms


def test_strict_namespace_check_exits_1(tmp_path: Path) -> None:
    daemon, obs = make_daemon(tmp_path, ["--strict-namespace-check"])
    obs.batches.append([namespace_conflict(5)])
    daemon.start()
    daemon.loop()
    daemon.shutdown()
    assert daemon.exit_code == 1 and obs.closed


def test_namespace_conflict_is_only_logged_by_default(tmp_path: Path) -> None:
    daemon, obs = make_daemon(tmp_path, [])
    obs.batches.append([namespace_conflict(5)])
    run_until(daemon, obs, lambda: len(obs.timeouts) > 3)
    assert daemon.exit_code == 0


def test_poll_timeout_bounded_by_read_timeout_and_shutdown(tmp_path: Path) -> None:
    daemon, obs = make_daemon(tmp_path, ["--shutdown-after-secs", "0"])
    assert daemon.run() == 0
    assert obs.timeouts == []  # uptime already reached: no iteration at all
    obs2 = FakeObserver()
    cfg = parse_args(["--socket", "s", "--threshold-ms", "10", "--read-timeout-ms", "20"])
    d2 = Daemon(cfg, observer_factory=factory(obs2))
    run_until(d2, obs2, lambda: len(obs2.timeouts) >= 2)
    assert obs2.timeouts[0] == pytest.approx(0.020)


def test_sd_notify_ready_and_stopping(tmp_path: Path) -> None:
    sock_path = str(tmp_path / "notify")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(sock_path)
    rx.settimeout(5)
    daemon, _ = make_daemon(
        tmp_path, ["--shutdown-after-secs", "0"], environ={"NOTIFY_SOCKET": sock_path}
    )
    assert daemon.run() == 0
    assert rx.recv(100) == b"READY=1"
    assert rx.recv(100) == b"STOPPING=1"
    rx.close()


def test_sd_notify_abstract_and_silent_failures(tmp_path: Path) -> None:
    name = f"varta-test-{os.getpid()}"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind("\0" + name)
    rx.settimeout(5)
    assert notify.sd_notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
    assert rx.recv(100) == b"WATCHDOG=1"
    rx.close()
    assert not notify.sd_notify("READY=1", {})
    assert not notify.sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent")})
    assert not notify.sd_notify("READY=1", {"NOTIFY_SOCKET": "relative"})


def test_queued_stalls_are_written_at_shutdown(tmp_path: Path) -> None:
    tsv = tmp_path / "e.tsv"
    daemon, obs = make_daemon(tmp_path, ["--export-file", str(tsv)])
    daemon.start()
    daemon.stop_requested = True
    obs.batches.append([stall(31, last_nonce=4, observer_ns=99)])
    daemon.loop()
    daemon.shutdown()
    assert tsv_rows(tsv) == [
        ["99", "stall", "31", "4", "stall", "-"],
        ["99", "verdict", "31", "-", "hung", "-"],
    ]


def test_heartbeat_file(tmp_path: Path) -> None:
    hb = tmp_path / "hb"
    daemon, obs = make_daemon(tmp_path, ["--heartbeat-file", str(hb)])
    run_until(daemon, obs, lambda: len(obs.timeouts) >= 3)
    count, ns = hb.read_text().split(" ")
    assert int(count) >= 2 and ns.endswith("\n") and int(ns) > 0
    assert stat.S_IMODE(hb.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("hb")) == ["hb"]


def test_heartbeat_skips_taken_temporary_names(tmp_path: Path) -> None:
    hb = tmp_path / "hb"
    (tmp_path / f"hb.{os.getpid()}.0.tmp").write_text("someone else's")
    write_heartbeat(str(hb), b"1 2\n", iter(range(100)))
    assert hb.read_text() == "1 2\n"
    with pytest.raises(OSError):
        write_heartbeat(str(hb), b"x", iter([0] * 16))


# --- startup failures: exit 1 with the reason -----------------------------------------


def startup_error(
    tmp_path: Path, extra: list[str], caplog: pytest.LogCaptureFixture, **kw: Any
) -> str:
    daemon, obs = make_daemon(tmp_path, extra, **kw)
    with caplog.at_level(logging.ERROR, logger="varta.watch"):
        assert daemon.run() == 1
    assert obs.closed or obs.socket_path is None
    return caplog.text


def test_exec_and_exec_file_exclusive(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "cmd"
    f.write_text("true")
    f.chmod(0o600)
    text = startup_error(
        tmp_path, ["--recovery-exec", "true", "--recovery-exec-file", str(f)], caplog
    )
    assert "MutuallyExclusive: --recovery-exec and --recovery-exec-file" in text


@pytest.mark.parametrize("content,mode,needle", [
    ("   \n", 0o600, "empty"),
    ("true", 0o644, "group/other"),
])  # fmt: skip
def test_bad_exec_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, mode: int, needle: str
) -> None:
    f = tmp_path / "cmd"
    f.write_text(content)
    f.chmod(mode)
    assert needle in startup_error(tmp_path, ["--recovery-exec-file", str(f)], caplog)


def test_empty_exec_is_a_startup_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert "--recovery-exec: recovery command is empty" in startup_error(
        tmp_path, ["--recovery-exec", " "], caplog
    )


@pytest.mark.parametrize("content,mode,needle", [
    (None, 0, "No such file"),
    (TOKEN_HEX, 0o640, "group/other"),
    ("abc", 0o600, "64 hex"),
])  # fmt: skip
def test_bad_token_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: Optional[str], mode: int, needle: str
) -> None:
    f = tmp_path / "token"
    if content is not None:
        f.write_text(content)
        f.chmod(mode)
    text = startup_error(
        tmp_path, ["--prom-addr", "127.0.0.1:0", "--prom-token-file", str(f)], caplog
    )
    assert "--prom-token-file" in text and needle in text


def test_bind_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(path: str, threshold: int, **kw: Any) -> FakeObserver:
        raise OSError(98, "already running")

    cfg = parse_args(["--socket", "/x.sock", "--threshold-ms", "100"])
    with caplog.at_level(logging.ERROR, logger="varta.watch"):
        assert Daemon(cfg, observer_factory=refuse).run() == 1
    assert "cannot listen on /x.sock: already running" in caplog.text


def test_prom_bind_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = startup_error(tmp_path, ["--prom-addr", f"127.0.0.1:{port}"], caplog)
    assert f"cannot listen on --prom-addr 127.0.0.1:{port}" in text


def test_audit_file_unusable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = startup_error(tmp_path, ["--recovery-audit-file", str(tmp_path)], caplog)
    assert "--recovery-audit-file" in text


def test_udp_isolated_until_the_observer_supports_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = tmp_path / "k"
    key.write_text("# primary\n\n" + "cd" * 32 + "\n")
    key.chmod(0o600)

    def no_udp(path: str, threshold: int, **kw: Any) -> FakeObserver:
        if "udp_port" in kw:
            raise TypeError("Observer() got an unexpected keyword argument 'udp_port'")
        return FakeObserver()

    cfg = parse_args(
        ["--socket", "s", "--threshold-ms", "100", "--udp-port", "0", "--key-file", str(key)]
    )
    with caplog.at_level(logging.ERROR, logger="varta.watch"):
        assert Daemon(cfg, observer_factory=no_udp).run() == 1
    assert "--udp-port is not supported by this build" in caplog.text
    # the key material itself was read under the secret-file rules first
    key.chmod(0o644)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="varta.watch"):
        assert Daemon(cfg, observer_factory=no_udp).run() == 1
    assert "key file" in caplog.text and "group/other" in caplog.text


def test_hw_watchdog_must_be_a_watchdog(tmp_path: Path) -> None:
    plain = tmp_path / "wd"
    plain.write_text("")
    with pytest.raises(StartupError, match="not a character device"):
        HwWatchdog(str(plain))
    with pytest.raises(StartupError, match="ioctl failed"):
        HwWatchdog("/dev/null")  # a character device, but not a watchdog


# --- metrics through the loop ----------------------------------------------------------


def test_metrics_served_from_loop_snapshots(tmp_path: Path) -> None:
    out = io.StringIO()
    daemon, obs = make_daemon(tmp_path, ["--prom-addr", "127.0.0.1:0"], stdout=out)
    obs.batches.append([beat(4242, Status.CRITICAL)])
    bodies: list[bytes] = []

    def scrape() -> None:
        addr = out.getvalue().splitlines()[0]
        host, port = addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        bodies.append(data)

    t: list[threading.Thread] = []

    def on_poll(o: FakeObserver) -> None:
        if len(o.timeouts) == 3:
            t.append(threading.Thread(target=scrape))
            t[0].start()
        if t and not t[0].is_alive():
            daemon.stop_requested = True

    obs.on_poll = on_poll
    daemon.start()
    daemon.loop()
    daemon.shutdown()
    assert out.getvalue().startswith("127.0.0.1:")
    body = bodies[0].partition(b"\r\n\r\n")[2].decode()
    lines = body.splitlines()
    # the pid's rows (their unit/comm labels: docs/observer.md#per-pid-families)
    assert any(ln.startswith('varta_beats_total{pid="4242",') and ln.endswith(" 1") for ln in lines)
    assert any(ln.startswith('varta_status{pid="4242",') and ln.endswith(" 2") for ln in lines)
    assert "varta_tracker_capacity 256\n" in body


# --- self-watchdog, logging ------------------------------------------------------------


def test_loop_state_problems() -> None:
    st = LoopState()
    now = st.last_iteration_end
    assert st.problem(now + 0.5, 1.0) is None
    assert "no loop iteration" in (st.problem(now + 1.5, 1.0) or "")
    st.stage = ("maintenance", now)
    assert "maintenance" in (st.problem(now + 0.6, 10.0) or "")
    st.stage = ("poll", now)
    assert st.problem(now + 0.6, 10.0) is None
    st.stage = None
    st.serve_started = now
    assert "serve_pending" in (st.problem(now + 2.5, 10.0) or "")


def test_text_and_json_log_lines() -> None:
    buf = io.StringIO()
    log = logsetup.setup("text", buf)
    log.warning("pid 5 stalled", extra={"pid": 5})
    assert buf.getvalue() == "varta-watch: pid 5 stalled\n"
    buf = io.StringIO()
    log = logsetup.setup("json", buf)
    log.error("spawn failed", extra={"pid": 5, "child_pid": 6, "error": "ENOENT"})
    rec = json.loads(buf.getvalue())
    assert rec["level"] == "error" and rec["msg"] == "spawn failed"
    assert (rec["pid"], rec["child_pid"], rec["error"]) == (5, 6, "ENOENT")
    assert isinstance(rec["ts_ns"], int)
    logsetup.setup("text")


def test_rate_limited_kinds() -> None:
    buf = io.StringIO()
    logsetup.setup("text", buf)
    now = [0.0]
    rl = logsetup.RateLimiter(clock=lambda: now[0])
    assert rl.log("audit_io", logging.ERROR, "audit file: EIO")
    assert not rl.log("audit_io", logging.ERROR, "audit file: EIO")
    assert not rl.log("audit_io", logging.ERROR, "audit file: EIO")
    assert rl.log("prom_serve", logging.ERROR, "other kind")
    now[0] = 1.0
    assert rl.log("audit_io", logging.ERROR, "audit file: EIO")
    assert buf.getvalue().splitlines() == [
        "varta-watch: audit file: EIO",
        "varta-watch: other kind",
        "varta-watch: audit file: EIO (suppressed 2)",
    ]
    assert rl.suppressed() == {k: (2 if k == "audit_io" else 0) for k in logsetup.SUPPRESSED_KINDS}
    logsetup.setup("text")


@pytest.mark.parametrize("flag,content,needle", [
    ("--key-file", "ab" * 32 + "\n" + "cd" * 32 + "\n", "exactly one key"),
    ("--accepted-key-file", "# none yet\n", "no key found"),
    ("--master-key-file", "xyz\n", "64 hex"),
])  # fmt: skip
def test_bad_key_files_exit_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, flag: str, content: str, needle: str
) -> None:
    key = tmp_path / "key"
    key.write_text(content)
    key.chmod(0o600)
    extra = ["--master-key-file", str(key)] if flag == "--accepted-key-file" else []
    cfg = parse_args(
        ["--socket", "s", "--threshold-ms", "100", "--udp-port", "0", flag, str(key), *extra]
    )
    with caplog.at_level(logging.ERROR, logger="varta.watch"):
        assert Daemon(cfg, observer_factory=factory(FakeObserver())).run() == 1
    assert f"{flag} {key}" in caplog.text and needle in caplog.text
