"""``varta-watch`` command line: every flag parses, bad input exits 2 with one line
naming the flag, ``--version``, ``--flag=value``, ``--log-level``."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import varta
from varta.watch import cli
from varta.watch.config import (
    FLAGS,
    REMOVED,
    ConfigError,
    HelpRequested,
    PromAddr,
    VersionRequested,
    WatchConfig,
    log_level,
    parse_args,
)

BASE = ["--socket", "/tmp/varta-test.sock", "--threshold-ms", "100"]

# Every flag of docs/configuration.md (the help and the parser must know all of them).
SPEC_FLAGS = """
--socket --threshold-ms --socket-mode --read-timeout-ms --uds-rcvbuf-bytes --udp-port
--udp-bind-addr --key-file --accepted-key-file --master-key-file --i-accept-plaintext-udp
--i-accept-secure-udp-non-loopback --secure-udp-i-accept-recovery-on-unauthenticated-transport
--plaintext-udp-i-accept-recovery-on-unauthenticated-transport --max-beat-rate
--global-beat-rate --global-beat-burst --recovery-exec --recovery-exec-file
--recovery-debounce-ms --recovery-timeout-ms --recovery-env --recovery-inherit-env
--recovery-capture-stdio --recovery-capture-bytes --recovery-audit-file
--recovery-audit-max-bytes --recovery-audit-sync-every --audit-fsync-budget-ms
--audit-sync-interval-ms --audit-rotation-budget-ms --export-file --export-file-max-bytes
--export-file-sync-every --prom-addr --prom-token-file --prom-rate-limit-per-sec
--prom-rate-limit-burst --tracker-capacity --eviction-scan-window --tracker-eviction-policy
--clock-source --iteration-budget-ms --scrape-budget-ms --heartbeat-file --self-watchdog-secs
--hw-watchdog --shutdown-after-secs --shutdown-grace-ms --allow-cross-namespace-agents
--strict-namespace-check --signal-handler-mode --inject-wedge-ms
""".split()


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_defaults() -> None:
    cfg = parse_args(BASE)
    assert cfg == WatchConfig(socket="/tmp/varta-test.sock", threshold_ms=100)
    assert (cfg.socket_mode, cfg.read_timeout_ms, cfg.uds_rcvbuf_bytes) == (0o600, 100, 1048576)
    assert (cfg.max_beat_rate, cfg.global_beat_rate, cfg.global_beat_burst) == (100, 5000, 10000)
    assert cfg.recovery_debounce_ms == 1000 and cfg.recovery_timeout_ms is None
    assert cfg.recovery_capture_bytes == 4096 and cfg.recovery_audit_sync_every == 1
    assert (cfg.audit_fsync_budget_ms, cfg.audit_rotation_budget_ms) == (50, 50)
    assert (cfg.prom_rate_limit_per_sec, cfg.prom_rate_limit_burst) == (5, 10)
    assert (cfg.tracker_capacity, cfg.eviction_scan_window) == (256, 256)
    assert cfg.tracker_eviction_policy == "strict" and cfg.clock_source == "monotonic"
    assert (cfg.iteration_budget_ms, cfg.scrape_budget_ms, cfg.shutdown_grace_ms) == (
        250,
        250,
        5000,
    )
    assert cfg.signal_handler_mode == "direct" and cfg.log_format == "text"


def test_every_spec_flag_is_known_and_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(SPEC_FLAGS) <= set(FLAGS)
    code, out, err = run_main(["--help"], capsys)
    assert code == 0 and err == ""
    for flag in SPEC_FLAGS:
        assert re.search(rf"^\s+{re.escape(flag)}\b", out, re.M), flag
    assert "-h, --help" in out


def test_short_help_anywhere_wins(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--bogus", "-h"], capsys)
    assert code == 0 and out.startswith("usage: varta-watch")


def test_all_flags_together() -> None:
    cfg = parse_args(
        [
            *BASE,
            "--socket-mode", "0o640",
            "--read-timeout-ms", "50",
            "--uds-rcvbuf-bytes", "0",
            "--max-beat-rate", "0",
            "--global-beat-rate", "10",
            "--global-beat-burst", "20",
            "--recovery-exec", "restart {pid} --now",
            "--recovery-debounce-ms", "0",
            "--recovery-timeout-ms", "100",
            "--recovery-env", "A=1=2",
            "--recovery-env", "B=",
            "--recovery-inherit-env",
            "--recovery-capture-stdio",
            "--recovery-capture-bytes", "64",
            "--recovery-audit-file", "/tmp/a",
            "--recovery-audit-max-bytes", "4096",
            "--recovery-audit-sync-every", "3",
            "--audit-fsync-budget-ms", "1",
            "--audit-sync-interval-ms", "0",
            "--audit-rotation-budget-ms", "250",
            "--export-file", "/tmp/e",
            "--export-file-max-bytes", "4096",
            "--export-file-sync-every", "5",
            "--prom-addr", "[::1]:0",
            "--prom-token-file", "/tmp/t",
            "--prom-rate-limit-per-sec", "0",
            "--prom-rate-limit-burst", "0",
            "--tracker-capacity", "1000000",
            "--eviction-scan-window", "4096",
            "--tracker-eviction-policy", "balanced",
            "--clock-source", "boottime",
            "--iteration-budget-ms", "50",
            "--scrape-budget-ms", "60000",
            "--heartbeat-file", "/tmp/hb",
            "--self-watchdog-secs", "1",
            "--hw-watchdog", "/dev/watchdog",
            "--shutdown-after-secs", "0",
            "--shutdown-grace-ms", "100",
            "--allow-cross-namespace-agents",
            "--strict-namespace-check",
            "--signal-handler-mode", "libc",
            "--inject-wedge-ms", "5",
            "--log-format", "json",
        ]
    )  # fmt: skip
    assert cfg.socket_mode == 0o640
    assert cfg.recovery_env == (("A", "1=2"), ("B", ""))
    assert cfg.prom_addr == PromAddr("::1", 0) and str(cfg.prom_addr) == "[::1]:0"
    assert cfg.tracker_capacity == 1_000_000 and cfg.clock_source == "boottime"
    assert cfg.recovery_configured and cfg.recovery_timeout_ms == 100
    assert any("sync-every 3" in w for w in cfg.warnings)
    assert any("inherit-env" in w for w in cfg.warnings)


@pytest.mark.parametrize("text,mode", [("600", 0o600), ("0600", 0o600), ("0o600", 0o600),
                                       ("0o640", 0o640), ("0", 0), ("777", 0o777)])  # fmt: skip
def test_socket_mode_forms(text: str, mode: int) -> None:
    assert parse_args([*BASE, "--socket-mode", text]).socket_mode == mode


# (extra argv, error kind, text the message must contain)
BAD = [
    (["--bogus"], "UnknownFlag", "--bogus"),
    (["--socket=/x"], "DuplicateFlag", "--socket given more than once"),
    (["stray"], "UnknownFlag", "stray"),
    (["--sd-notify"], "UnknownFlag", "--sd-notify"),
    (["--uds-path", "/x"], "UnknownFlag", "--uds-path"),
    (["--audit-log", "/x"], "UnknownFlag", "--audit-log"),
    (["--threshold-ms", "5"], "DuplicateFlag", "--threshold-ms"),
    (["--read-timeout-ms"], "MissingValue", "--read-timeout-ms"),
    (["--export-file", "--prom-addr", "127.0.0.1:0"], "MissingValue", "--export-file"),
    (["--socket-mode", "0999"], "BadSocketMode", "--socket-mode"),
    (["--socket-mode", "rw"], "BadSocketMode", "--socket-mode"),
    (["--socket-mode", "1777"], "BadSocketMode", "--socket-mode"),
    (["--read-timeout-ms", "0"], "BadValue", "--read-timeout-ms"),
    (["--read-timeout-ms", "1001"], "BadValue", "--read-timeout-ms"),
    (["--read-timeout-ms", "-5"], "BadValue", "--read-timeout-ms"),
    (["--read-timeout-ms", "+5"], "BadValue", "--read-timeout-ms"),
    (["--read-timeout-ms", "0x10"], "BadValue", "--read-timeout-ms"),
    (["--read-timeout-ms", "1_0"], "BadValue", "--read-timeout-ms"),
    (["--read-timeout-ms", ""], "BadValue", "--read-timeout-ms"),
    (["--uds-rcvbuf-bytes", "2147483648"], "BadValue", "--uds-rcvbuf-bytes"),
    (["--udp-port", "65536"], "BadValue", "--udp-port"),
    (["--udp-bind-addr", "localhost", "--udp-port", "1", "--i-accept-plaintext-udp"],
     "BadValue", "--udp-bind-addr"),
    (["--max-beat-rate", "4294967296"], "BadValue", "--max-beat-rate"),
    (["--global-beat-rate", "x"], "BadValue", "--global-beat-rate"),
    (["--global-beat-burst", "-1"], "BadValue", "--global-beat-burst"),
    (["--recovery-debounce-ms", "1.5"], "BadValue", "--recovery-debounce-ms"),
    (["--recovery-timeout-ms", "99"], "RecoveryTimeoutTooLow", "--recovery-timeout-ms"),
    (["--recovery-env", "NOEQUALS"], "BadValue", "--recovery-env"),
    (["--recovery-env", "=v"], "BadValue", "--recovery-env"),
    (["--recovery-capture-bytes", "63", "--recovery-exec", "x"], "BadValue",
     "--recovery-capture-bytes"),
    (["--recovery-capture-bytes", "1048577"], "BadValue", "--recovery-capture-bytes"),
    (["--recovery-capture-stdio"], "MutuallyExclusive", "--recovery-capture-stdio"),
    (["--recovery-audit-max-bytes", "4095"], "BadValue", "--recovery-audit-max-bytes"),
    (["--recovery-audit-sync-every", "0"], "BadValue", "--recovery-audit-sync-every"),
    (["--audit-fsync-budget-ms", "0"], "BadValue", "--audit-fsync-budget-ms"),
    (["--audit-rotation-budget-ms", "0"], "BadValue", "--audit-rotation-budget-ms"),
    (["--audit-rotation-budget-ms", "251"], "BadValue", "--audit-rotation-budget-ms"),
    (["--export-file-max-bytes", "200"], "BadValue", "--export-file-max-bytes"),
    (["--prom-addr", "localhost:9100"], "BadValue", "--prom-addr"),
    (["--prom-addr", "127.0.0.1"], "BadValue", "--prom-addr"),
    (["--prom-addr", "127.0.0.1:65536"], "BadValue", "--prom-addr"),
    (["--prom-addr", "::1:9100"], "BadValue", "--prom-addr"),
    (["--prom-addr", "0.0.0.0:9100"], "PromAddrRequiresToken", "--prom-token-file"),
    (["--prom-addr", "[::]:0"], "PromAddrRequiresToken", "--prom-token-file"),
    (["--prom-token-file", "/t"], "MutuallyExclusive", "--prom-token-file"),
    (["--prom-rate-limit-burst", "z"], "BadValue", "--prom-rate-limit-burst"),
    (["--tracker-capacity", "0"], "BadValue", "--tracker-capacity"),
    (["--tracker-capacity", "1000001"], "BadValue", "--tracker-capacity"),
    (["--eviction-scan-window", "4097"], "BadValue", "--eviction-scan-window"),
    (["--tracker-eviction-policy", "lru"], "BadValue", "--tracker-eviction-policy"),
    (["--clock-source", "realtime"], "BadValue", "--clock-source"),
    (["--clock-source", "monotonic-raw"], "ClockSourceUnsupported", "monotonic-raw"),
    (["--iteration-budget-ms", "49"], "BadValue", "--iteration-budget-ms"),
    (["--scrape-budget-ms", "60001"], "BadValue", "--scrape-budget-ms"),
    (["--self-watchdog-secs", "0"], "BadValue", "--self-watchdog-secs"),
    (["--self-watchdog-secs", "1", "--read-timeout-ms", "501"], "BadValue", "--read-timeout-ms"),
    (["--shutdown-grace-ms", "99"], "BadValue", "--shutdown-grace-ms"),
    (["--shutdown-grace-ms", "60001"], "BadValue", "--shutdown-grace-ms"),
    (["--shutdown-after-secs", "soon"], "BadValue", "--shutdown-after-secs"),
    (["--signal-handler-mode", "disabled"], "BadValue", "--signal-handler-mode"),
    (["--log-format", "xml"], "BadValue", "--log-format"),
    (["--key-file", "/k"], "BadValue", "--udp-port"),
    (["--accepted-key-file", "/k", "--udp-port", "1"], "BadValue", "--accepted-key-file"),
    (["--udp-port", "4000"], "BadValue", "--i-accept-plaintext-udp"),
    (["--udp-port", "4000", "--key-file", "/k", "--udp-bind-addr", "0.0.0.0"], "BadValue",
     "--i-accept-secure-udp-non-loopback"),
    (["--udp-port", "4000", "--key-file", "/k", "--recovery-exec", "x"],
     "RecoveryRequiresAuthenticatedTransport",
     "--secure-udp-i-accept-recovery-on-unauthenticated-transport"),
    (["--udp-port", "4000", "--i-accept-plaintext-udp", "--recovery-exec", "x"],
     "RecoveryRequiresAuthenticatedTransport",
     "--plaintext-udp-i-accept-recovery-on-unauthenticated-transport"),
    (["--udp-port", "1", "--key-file", "/k", *[a for i in range(8)
                                                for a in ("--accepted-key-file", f"/a{i}")]],
     "BadValue", "at most 8"),
]  # fmt: skip


@pytest.mark.parametrize("extra,kind,needle", BAD, ids=[" ".join(b[0])[:60] for b in BAD])
def test_bad_flags_exit_2_naming_the_flag(
    extra: list[str], kind: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main([*BASE, *extra], capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1, err  # one line, never the whole help
    first = err.splitlines()[0]
    assert first.startswith(f"varta-watch: {kind}: "), first
    assert needle in first
    assert first.endswith(" (see --help)")
    assert "usage:" not in err


@pytest.mark.parametrize("flag", sorted(REMOVED))
def test_removed_flags_name_their_replacement(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main([*BASE, flag, "value"], capsys)
    assert code == 2
    first = err.splitlines()[0]
    assert first.startswith(f"varta-watch: RemovedFlag: {flag} was removed")
    replacement = {
        "--recovery-cmd": "--recovery-exec",
        "--recovery-cmd-file": "--recovery-exec-file",
        "--i-accept-shell-risk": "--recovery-exec",
        "--key-env": "--key-file",
        "--master-key-env": "--master-key-file",
        "--accepted-key-env": "--accepted-key-file",
    }[flag]
    assert replacement in first


@pytest.mark.parametrize("missing", ["--socket", "--threshold-ms"])
def test_required_flags(missing: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = list(BASE)
    i = argv.index(missing)
    del argv[i : i + 2]
    code, _, err = run_main(argv, capsys)
    assert code == 2
    assert err.startswith(f"varta-watch: MissingRequired: {missing} is required")


def test_loopback_prom_without_token_warns() -> None:
    cfg = parse_args([*BASE, "--prom-addr", "127.0.0.1:0"])
    assert cfg.prom_addr == PromAddr("127.0.0.1", 0)
    assert any("no --prom-token-file" in w for w in cfg.warnings)
    cfg = parse_args([*BASE, "--prom-addr", "0.0.0.0:9100", "--prom-token-file", "/t"])
    assert any("off loopback" in w for w in cfg.warnings)


def test_udp_defaults_and_keys() -> None:
    cfg = parse_args([*BASE, "--udp-port", "4000", "--i-accept-plaintext-udp"])
    assert cfg.effective_udp_bind_addr == "0.0.0.0"
    cfg = parse_args([*BASE, "--udp-port", "4000", "--master-key-file", "/m"])
    assert cfg.effective_udp_bind_addr == "127.0.0.1"
    cfg = parse_args(
        [*BASE, "--udp-port", "4000", "--master-key-file", "/m", "--accepted-key-file", "/a"]
    )
    assert cfg.accepted_key_files == ("/a",)


def test_errors_are_exceptions_with_kinds() -> None:
    with pytest.raises(ConfigError) as info:
        parse_args([*BASE, "--nope"])
    assert info.value.kind == "UnknownFlag"
    with pytest.raises(HelpRequested):
        parse_args(["-h"])


def test_real_process_exit_codes(tmp_path: object) -> None:
    """The console entry as a process: -h → stdout, 0; a bad flag → stderr, 2."""
    ok = subprocess.run(
        [sys.executable, "-m", "varta", "watch", "-h"], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and ok.stdout.startswith("usage: varta-watch") and not ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "varta", "watch", *BASE, "--recovery-cmd", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("varta-watch: RemovedFlag: --recovery-cmd")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["--version"], capsys)
    assert (code, out, err) == (0, f"varta-watch {varta.__version__}\n", "")
    # wins over other tokens, like --help
    assert run_main([*BASE, "--version"], capsys)[:2] == (0, f"varta-watch {varta.__version__}\n")
    with pytest.raises(VersionRequested):
        parse_args(["--version"])


@pytest.mark.parametrize(
    "argv",
    [
        ["--socket=/tmp/x.sock", "--threshold-ms=250", "--recovery-env=K=V=W"],
        ["--socket", "/tmp/x.sock", "--threshold-ms=250", "--recovery-env", "K=V=W"],
    ],
)
def test_flag_equals_value(argv: list[str]) -> None:
    cfg = parse_args([*argv, "--prom-addr=[::1]:0", "--log-level=debug"])
    assert (cfg.socket, cfg.threshold_ms) == ("/tmp/x.sock", 250)
    assert cfg.recovery_env == (("K", "V=W"),)
    assert cfg.prom_addr == PromAddr("::1", 0)
    assert cfg.log_level == "debug"


@pytest.mark.parametrize(
    "extra,kind,needle",
    [
        (["--threshold-ms=abc"], "DuplicateFlag", "--threshold-ms"),
        (["--read-timeout-ms=0"], "BadValue", "--read-timeout-ms"),
        (["--i-accept-plaintext-udp=yes"], "BadValue", "--i-accept-plaintext-udp takes no value"),
        (["--bogus=1"], "UnknownFlag", "--bogus"),
        (["--recovery-cmd=x"], "RemovedFlag", "--recovery-cmd"),
        (["--recovery-exec", "--socket=/y"], "MissingValue", "--recovery-exec"),
        (["--log-level", "loud"], "BadValue", "--log-level"),
    ],
)
def test_flag_equals_value_errors(
    extra: list[str], kind: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main([*BASE, *extra], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1, err
    assert err.startswith(f"varta-watch: {kind}: ") and needle in err, err
    assert err.endswith(" (see --help)\n")


def test_log_level_flag_env_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_args(BASE)
    assert cfg.log_level is None
    assert log_level(cfg, {}) == "info"
    assert log_level(cfg, {"VARTA_LOG_LEVEL": "WARN"}) == "warn"
    flagged = parse_args([*BASE, "--log-level", "error"])
    assert log_level(flagged, {"VARTA_LOG_LEVEL": "debug"}) == "error"  # the flag wins
    with pytest.raises(ConfigError) as info:
        log_level(cfg, {"VARTA_LOG_LEVEL": "chatty"})
    assert "VARTA_LOG_LEVEL" in str(info.value)
    # the entry point turns a bad environment value into the one-line exit 2
    monkeypatch.setenv("VARTA_LOG_LEVEL", "chatty")
    assert cli.main([*BASE]) == 2


def test_log_level_filters_lines(tmp_path: Path) -> None:
    """A real daemon: warn hides the info startup lines, debug keeps them."""
    sock = str(tmp_path / "w.sock")
    argv = ["--socket", sock, "--threshold-ms", "100", "--shutdown-after-secs", "0"]
    env = dict(os.environ, VARTA_LOG_LEVEL="warn")
    quiet = subprocess.run(
        [sys.executable, "-m", "varta", "watch", *argv],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert quiet.returncode == 0, quiet.stderr
    assert "listening on" not in quiet.stderr
    loud = subprocess.run(
        [sys.executable, "-m", "varta", "watch", *argv, "--log-level=info"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert loud.returncode == 0, loud.stderr
    assert f"listening on unix datagram socket {sock} (mode 0600)" in loud.stderr


def test_startup_names_every_listener(tmp_path: Path) -> None:
    sock = str(tmp_path / "w.sock")
    out = subprocess.run(
        [sys.executable, "-m", "varta", "watch", "--socket", sock, "--threshold-ms", "100",
         "--udp-port", "0", "--udp-bind-addr", "127.0.0.1", "--i-accept-plaintext-udp",
         "--prom-addr", "127.0.0.1:0", "--shutdown-after-secs", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"listening on unix datagram socket {sock}" in out.stderr
    assert re.search(r"listening on UDP 127\.0\.0\.1:[1-9]\d* \(plaintext\)", out.stderr)
    assert re.search(r"listening on http://127\.0\.0\.1:[1-9]\d*/metrics", out.stderr)


def test_udp_port_in_use_names_the_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        sock = str(tmp_path / "w.sock")
        out = subprocess.run(
            [sys.executable, "-m", "varta", "watch", "--socket", sock, "--threshold-ms", "100",
             "--udp-port", str(port), "--udp-bind-addr", "127.0.0.1", "--i-accept-plaintext-udp"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert out.returncode == 1
    assert f"cannot listen on UDP 127.0.0.1:{port} (--udp-port {port})" in out.stderr
    assert "in use" in out.stderr
    assert f"cannot listen on {sock}" not in out.stderr
    assert not os.path.exists(sock)  # the Unix listener opened first is closed again


def test_missing_socket_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    out = subprocess.run(
        [sys.executable, "-m", "varta", "watch", "--socket", str(missing / "w.sock"),
         "--threshold-ms", "100"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert f"socket directory {missing} does not exist" in out.stderr


def test_python_m_varta_version_and_errors() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "varta", "--version"], capture_output=True, text=True, timeout=60
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, f"varta {varta.__version__}\n", "")
    watch = subprocess.run(
        [sys.executable, "-m", "varta", "watch", "--version"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (watch.returncode, watch.stdout) == (0, f"varta-watch {varta.__version__}\n")
    bad = subprocess.run(
        [sys.executable, "-m", "varta", "frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == "varta: unknown command 'frobnicate' (see --help)\n"


def test_console_scripts_are_declared() -> None:
    """``varta`` and ``varta-watch`` console scripts point at the two entry points."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {
        "varta-watch": "varta.watch.cli:main",
        "varta": "varta.cli:main",
    }


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["keygen"], "python -m varta keygen: the following arguments are required: FILE"),
        (["audit"], "python -m varta audit: missing subcommand: expected 'verify'"),
        (["audit", "check", "x"], "python -m varta audit: unknown subcommand 'check'"),
        (["audit", "verify"], "python -m varta audit: verify needs at least one FILE"),
        (["audit", "verify", "--bogus", "x"], "python -m varta audit: unknown option '--bogus'"),
        (["demo", "--bogus"], "python -m varta demo: unrecognized arguments: --bogus"),
        (["nope"], "varta: unknown command 'nope'"),
    ],
)
def test_every_subcommand_errs_on_one_line(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same command-line convention as varta-watch: one line naming what is
    wrong and pointing at --help, exit 2, for every ``python -m varta`` command."""
    from varta import cli as varta_cli

    try:
        code = varta_cli.main(argv)
    except SystemExit as exc:  # argparse-based commands exit through SystemExit
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [err.rstrip("\n")], err  # exactly one line
    assert err.startswith(says) and err.rstrip().endswith("(see --help)"), err


@pytest.mark.parametrize(
    "text,canonical,loopback",
    [
        ("127.1.2.3", "127.1.2.3", True),
        ("0:0::1", "::1", True),
        ("2001:DB8::1", "2001:db8::1", False),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1", False),
        ("0.0.0.0", "0.0.0.0", False),
    ],
)
def test_ip_literals_are_canonical_and_loopback_is_std_net_s_rule(
    text: str, canonical: str, loopback: bool
) -> None:
    prom = f"[{text}]:0" if ":" in text else f"{text}:0"
    udp = ["--udp-port", "1", "--udp-bind-addr", text, "--i-accept-plaintext-udp"]
    cfg = parse_args([*BASE, *udp, "--prom-addr", prom, "--prom-token-file", "/t"])
    assert cfg.udp_bind_addr == canonical
    assert cfg.prom_addr is not None and cfg.prom_addr.host == canonical
    assert cfg.prom_addr.is_loopback is loopback


@pytest.mark.parametrize("text", ["01.2.3.4", "1.2.3", "fe80::1%eth0", " 1.2.3.4", "1.2.3.4\0"])
def test_ip_literals_the_core_would_refuse_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--udp-bind-addr expects an IP address"):
        parse_args([*BASE, "--udp-port", "1", "--udp-bind-addr", text, "--i-accept-plaintext-udp"])
