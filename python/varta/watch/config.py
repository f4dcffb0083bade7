"""``varta-watch`` command line → :class:`WatchConfig` (``docs/configuration.md``).

A hand-written parser, because upstream's contract is not argparse's:

* ``--flag value`` or ``--flag=value``; booleans are bare; integers are
  unsigned decimal (digits only).
* Any token that is not a known flag → ``UnknownFlag`` naming it.
* ``-h``/``--help`` → help (every flag) on stdout, exit 0; ``--version`` →
  ``varta-watch <version>`` on stdout, exit 0.
* Parse/validation error → one line ``varta-watch: <Kind>: <detail> (see
  --help)`` on stderr, exit 2 (see :mod:`varta.watch.cli`).

Everything that needs the file system or the network (reading the recovery
exec file, key and token files, binding) happens later, at startup, and fails
with exit 1 instead.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence

from .._record import MISSING, field, fields, record, replace
from .._varta import udp_default_bind
from ..keys import MAX_SHARED_KEYS
from . import recovery
from .metrics import DEFAULT_AGENT_ROWS

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Optional, Union

PROG = "varta-watch"

U16 = (1 << 16) - 1
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1


class ConfigError(Exception):
    """A command-line error (exit 2). ``kind`` is upstream's error name."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class HelpRequested(Exception):
    """``-h``/``--help`` was given."""


class VersionRequested(Exception):
    """``--version`` was given."""


@record(frozen=True)
class PromAddr:
    """A ``--prom-addr`` value: an IP literal and a port (0 = kernel picks)."""

    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"


@record(frozen=True)
class WatchConfig:
    """Every ``varta-watch`` flag, validated. Field names follow the flags."""

    # 1.1 listeners and transports
    socket: str
    threshold_ms: int
    socket_mode: int = 0o600
    read_timeout_ms: int = 100
    uds_rcvbuf_bytes: int = 1_048_576
    udp_port: Optional[int] = None
    udp_bind_addr: Optional[str] = None
    key_file: Optional[str] = None
    accepted_key_files: tuple[str, ...] = ()
    master_key_file: Optional[str] = None
    i_accept_plaintext_udp: bool = False
    i_accept_secure_udp_non_loopback: bool = False
    secure_udp_i_accept_recovery_on_unauthenticated_transport: bool = False
    plaintext_udp_i_accept_recovery_on_unauthenticated_transport: bool = False
    # 1.2 rate limits
    max_beat_rate: int = 100
    global_beat_rate: int = 5000
    global_beat_burst: int = 10000
    # 1.3 recovery and audit
    recovery_exec: Optional[str] = None
    recovery_exec_file: Optional[str] = None
    recovery_debounce_ms: int = 1000
    recovery_timeout_ms: Optional[int] = None
    recovery_env: tuple[tuple[str, str], ...] = ()
    recovery_inherit_env: bool = False
    recovery_capture_stdio: bool = False
    recovery_capture_bytes: int = 4096
    recovery_on: frozenset[str] = recovery.DEFAULT_RECOVERY_ON
    recovery_audit_file: Optional[str] = None
    recovery_audit_max_bytes: Optional[int] = None
    recovery_audit_sync_every: int = 1
    recovery_audit_fail_open: bool = False
    audit_fsync_budget_ms: int = 50
    audit_sync_interval_ms: int = 0
    audit_rotation_budget_ms: int = 50
    # 1.4 exporters
    export_file: Optional[str] = None
    export_file_max_bytes: Optional[int] = None
    export_file_sync_every: int = 0
    export_file_header: bool = False
    prom_addr: Optional[PromAddr] = None
    prom_token_file: Optional[str] = None
    prom_rate_limit_per_sec: int = 5
    prom_rate_limit_burst: int = 10
    prom_agent_rows: int = DEFAULT_AGENT_ROWS
    # hang forensics (docs/finding-hangs.md)
    forensics_dir: Optional[str] = None
    forensics_keep: int = 100
    forensics_max_age_secs: int = 0
    # 1.5 tracker, loop, lifecycle
    tracker_capacity: int = 256
    eviction_scan_window: int = 256
    tracker_eviction_policy: str = "strict"
    clock_source: str = "monotonic"
    iteration_budget_ms: int = 250
    scrape_budget_ms: int = 250
    heartbeat_file: Optional[str] = None
    self_watchdog_secs: Optional[int] = None
    hw_watchdog: Optional[str] = None
    shutdown_after_secs: Optional[int] = None
    shutdown_grace_ms: int = 5000
    allow_cross_namespace_agents: bool = False
    strict_namespace_check: bool = False
    signal_handler_mode: str = "direct"
    inject_wedge_ms: Optional[int] = None
    inject_wedge_after_ms: int = 0
    log_format: str = "text"
    log_level: Optional[str] = None
    #: Startup warnings found while validating (printed by the daemon, not errors).
    warnings: tuple[str, ...] = field(default=(), compare=False)

    # --- derived ----------------------------------------------------------------

    @property
    def recovery_configured(self) -> bool:
        return self.recovery_exec is not None or self.recovery_exec_file is not None

    @property
    def has_keys(self) -> bool:
        return (
            self.key_file is not None
            or self.master_key_file is not None
            or bool(self.accepted_key_files)
        )

    @property
    def effective_udp_bind_addr(self) -> Optional[str]:
        """``--udp-bind-addr`` or its default (127.0.0.1 with keys, else 0.0.0.0)."""
        if self.udp_port is None:
            return None
        if self.udp_bind_addr is not None:
            return self.udp_bind_addr
        return udp_default_bind(self.has_keys)


# --- value parsers -------------------------------------------------------------------


def parse_uint(flag: str, text: str, lo: int = 0, hi: int = U64) -> int:
    """Unsigned decimal: ASCII digits only (no sign, ``_``, ``0x`` or spaces)."""
    if not text or not all("0" <= c <= "9" for c in text):
        raise ConfigError("BadValue", f"{flag} expects an unsigned decimal integer, got {text!r}")
    value = int(text)
    if not lo <= value <= hi:
        raise ConfigError("BadValue", f"{flag} must be in {lo}..={hi}, got {value}")
    return value


def parse_socket_mode(text: str) -> int:
    """``600``, ``0600`` or ``0o600`` (octal digits only, ≤ 0o777)."""
    digits = text[2:] if text[:2] in ("0o", "0O") else text
    if not digits or len(digits) > 4 or not all("0" <= c <= "7" for c in digits):
        raise ConfigError("BadSocketMode", f"--socket-mode {text!r} is not an octal mode")
    mode = int(digits, 8)
    if mode > 0o777:
        raise ConfigError("BadSocketMode", f"--socket-mode {text!r} is above 0777")
    return mode


# IP literals are read with inet_pton/inet_ntop (the socket module is loaded
# anyway), not the ipaddress module (~0.3 MB resident, docs/operations.md#resources):
# the same rules as the core's std::net parsing, no scope ids, no leading zeros.


def canonical_ip(text: str, family: int) -> str:
    """*text* as the canonical literal of *family* (``AF_INET``/``AF_INET6``);
    ValueError if it is not one."""
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):
        raise ValueError(f"not an IP address: {text!r}") from None


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8 or ``::1`` (an IPv4-mapped address is not: std::net's rule)."""
    if ":" in ip:
        return canonical_ip(ip, socket.AF_INET6) == "::1"
    return canonical_ip(ip, socket.AF_INET).startswith("127.")


def parse_ip(flag: str, text: str) -> str:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return canonical_ip(text, family)
        except ValueError:
            continue
    raise ConfigError("BadValue", f"{flag} expects an IP address, got {text!r}")


def parse_prom_addr(text: str) -> PromAddr:
    """``IPv4:PORT`` or ``[IPv6]:PORT``; port 0 allowed; no host names."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ConfigError("BadValue", f"--prom-addr {text!r}: expected [IPv6]:PORT")
        try:
            ip = canonical_ip(host, socket.AF_INET6)
        except ValueError:
            raise ConfigError("BadValue", f"--prom-addr {text!r}: bad IPv6 address") from None
        return PromAddr(ip, parse_uint("--prom-addr port", port, 0, U16))
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError("BadValue", f"--prom-addr {text!r}: expected IP:PORT")
    try:
        ip4 = canonical_ip(host, socket.AF_INET)
    except ValueError:
        raise ConfigError(
            "BadValue", f"--prom-addr {text!r}: expected an IPv4 address or [IPv6]"
        ) from None
    return PromAddr(ip4, parse_uint("--prom-addr port", port, 0, U16))


def parse_env_entry(text: str) -> tuple[str, str]:
    """``K=V`` split at the first ``=``; key non-empty; no NUL anywhere."""
    try:
        return recovery.parse_env_entry(text)
    except ValueError as exc:
        raise ConfigError("BadValue", str(exc)) from None


def _check_path(flag: str, text: str) -> str:
    if not text:
        raise ConfigError("BadValue", f"{flag} expects a non-empty path")
    if "\0" in text:
        raise ConfigError("BadValue", f"{flag}: NUL byte in path")
    return text


def _check_choice(flag: str, text: str, allowed: Sequence[str]) -> str:
    if text not in allowed:
        raise ConfigError("BadValue", f"{flag} must be one of {', '.join(allowed)}; got {text!r}")
    if flag == "--clock-source":
        if text == "boottime" and not sys.platform.startswith("linux"):
            raise ConfigError("ClockSourceUnsupported", "--clock-source boottime needs Linux")
        if text == "monotonic-raw" and sys.platform != "darwin":
            raise ConfigError("ClockSourceUnsupported", "--clock-source monotonic-raw needs macOS")
    return text


def _check_uint(flag: str, text: str, lo: int, hi: int, low_kind: str) -> int:
    value = parse_uint(flag, text)
    if value < lo:
        raise ConfigError(low_kind, f"{flag} must be >= {lo}, got {value}")
    if value > hi:
        raise ConfigError("BadValue", f"{flag} must be <= {hi}, got {value}")
    return value


# --- the flag table --------------------------------------------------------------------


@record(frozen=True)
class Flag:
    """One flag. ``kind``: ``bool`` (bare), ``path``, ``str``, ``octal``, ``ip``,
    ``addr`` (IP:PORT), ``env`` (K=V), ``a|b|c`` (a choice), or ``LO..HI`` (unsigned
    decimal, ``HI`` may be ``u16``/``u32``/``u64``; ``LO..HI!Kind`` names the
    error for a value below ``LO``)."""

    name: str
    kind: str
    metavar: str
    #: The default in words, where it needs them ("never kill"); empty means
    #: WatchConfig's own default for the flag, shown by :attr:`default_text`.
    default: str
    help: str
    #: The ``varta.Observer`` keyword this flag's value is passed as (the daemon
    #: builds the observer from the table: :func:`observer_kwargs`).
    observer: str = ""

    @property
    def default_text(self) -> str:
        """The default the help and the docs show: one source, WatchConfig."""
        if self.default:
            return self.default
        value = _CONFIG_DEFAULTS.get(self.attr)
        if value is None or value is False or value == ():
            return ""
        if self.kind == "octal":
            return f"{value:04o}"
        if isinstance(value, frozenset):  # --recovery-on: in verdict order
            return ",".join(v for v in recovery.VERDICTS if v in value)
        return str(value)

    @property
    def attr(self) -> str:
        attr = self.name[2:].replace("-", "_")
        return attr + "s" if self.name == "--accepted-key-file" else attr

    @property
    def repeat(self) -> bool:
        return self.name in ("--accepted-key-file", "--recovery-env")

    @property
    def takes_value(self) -> bool:
        return self.kind != "bool"

    def parse(self, text: str) -> object:
        kind, flag = self.kind, self.name
        if kind == "path":
            return _check_path(flag, text)
        if kind == "str":
            return text
        if kind == "octal":
            return parse_socket_mode(text)
        if kind == "ip":
            return parse_ip(flag, text)
        if kind == "addr":
            return parse_prom_addr(text)
        if kind == "env":
            return parse_env_entry(text)
        if kind == "verdicts":
            try:
                return recovery.parse_recovery_on(text)
            except ValueError as exc:
                raise ConfigError("BadValue", f"{flag}: {exc}") from None
        if "|" in kind:
            return _check_choice(flag, text, kind.split("|"))
        bounds, _, low_kind = kind.partition("!")
        lo, _, hi = bounds.partition("..")
        top = {"u16": U16, "u32": U32, "u64": U64}.get(hi)
        return _check_uint(flag, text, int(lo), top or int(hi), low_kind or "BadValue")


_B = "bool"
# fmt: off
SECTIONS: list[tuple[str, list[Flag]]] = [
    ("Listeners and transports", [
        Flag("--socket", "path", "PATH", "", "UDS datagram socket path (required)"),
        Flag("--threshold-ms", "10..u64", "MS", "", "silence before a stall, >= 10 (required)"),
        Flag("--socket-mode", "octal", "OCTAL", "", "socket file mode (600, 0600, 0o600)",
             observer="socket_mode"),
        Flag("--read-timeout-ms", "1..1000", "MS", "", "bound on the idle wait, 1..=1000"),
        Flag("--uds-rcvbuf-bytes", "0..2147483647", "N", "",
             "SO_RCVBUF request (0 = kernel default)",
             observer="uds_rcvbuf_bytes"),
        Flag("--udp-port", "0..u16", "PORT", "",
             "also listen on UDP (secure with a key file, else plaintext)"),
        Flag("--udp-bind-addr", "ip", "IP",
             f"{udp_default_bind(True)} with keys, else {udp_default_bind(False)}",
             "UDP bind address"),
        Flag("--key-file", "path", "PATH", "", "primary shared key file (secret file)"),
        Flag("--accepted-key-file", "path", "PATH", "", "extra accepted key file (repeatable)"),
        Flag("--master-key-file", "path", "PATH", "", "master key file (secret file)"),
        Flag("--i-accept-plaintext-udp", _B, "", "", "allow unauthenticated plaintext UDP"),
        Flag("--i-accept-secure-udp-non-loopback", _B, "", "", "allow secure UDP off loopback"),
        Flag("--secure-udp-i-accept-recovery-on-unauthenticated-transport", _B, "", "",
             "secure-UDP beats may trigger recovery"),
        Flag("--plaintext-udp-i-accept-recovery-on-unauthenticated-transport", _B, "", "",
             "plaintext-UDP beats may trigger recovery"),
    ]),
    ("Rate limits", [
        Flag("--max-beat-rate", "0..u32", "N", "", "per-pid beats per second (0 = off)",
             observer="max_beat_rate"),
        Flag("--global-beat-rate", "0..u32", "N", "",
             "beats per second over all senders (0 = off)",
             observer="global_beat_rate"),
        Flag("--global-beat-burst", "0..u32", "N", "", "global bucket capacity (0 = off)",
             observer="global_beat_burst"),
    ]),
    ("Recovery and audit", [
        Flag("--recovery-exec", "str", "CMD", "",
             "recovery command, no shell; {pid} substituted, else the pid is appended"),
        Flag("--recovery-exec-file", "path", "PATH", "", "recovery command from a secret file"),
        Flag("--recovery-debounce-ms", "0..u64", "MS", "",
             "min gap between spawns for one pid"),
        Flag("--recovery-timeout-ms", "100..u64!RecoveryTimeoutTooLow", "MS", "never kill",
             "SIGKILL a child running longer, >= 100"),
        Flag("--recovery-env", "env", "K=V", "", "child environment entry (repeatable)"),
        Flag("--recovery-inherit-env", _B, "", "", "child inherits the observer environment"),
        Flag("--recovery-capture-stdio", _B, "", "", "pipe child stdout/stderr, record sizes"),
        Flag("--recovery-capture-bytes", "64..1048576", "N", "", "capture cap, 64..=1048576"),
        Flag("--recovery-on", "verdicts", "V,V", "",
             "recover only stalls with these verdicts (of hung,exited,crashed,vanished,unknown)"),
        Flag("--recovery-audit-file", "path", "PATH", "", "recovery audit log (v2, hash chain)"),
        Flag("--recovery-audit-max-bytes", "4096..u64", "N", "unbounded",
             "rotate the audit log at N bytes, >= 4096"),
        Flag("--recovery-audit-sync-every", "1..u32", "N", "", "fdatasync every N records"),
        Flag("--recovery-audit-fail-open", _B, "", "",
             "run recovery even when its spawn record cannot be written first"),
        Flag("--audit-fsync-budget-ms", "1..u32", "MS", "",
             "a slower fdatasync defers the drain's other syncs"),
        Flag("--audit-sync-interval-ms", "0..u32", "MS", "", "extra time-based sync (0 = off)"),
        Flag("--audit-rotation-budget-ms", "1..250", "MS", "",
             "per-tick rotation budget, 1..=250"),
    ]),
    ("Exporters", [
        Flag("--export-file", "path", "PATH", "", "TSV event file"),
        Flag("--export-file-max-bytes", "4096..u64", "N", "unbounded",
             "rotate the TSV file at N bytes, >= 4096"),
        Flag("--export-file-header", _B, "", "",
             "start each new export file with a column-name row (varta addition)"),
        Flag("--export-file-sync-every", "0..u32", "N", "",
             "fdatasync every N rows (0 = rotation/exit only)"),
        Flag("--prom-addr", "addr", "IP:PORT", "",
             "serve /metrics on IP:PORT or [IPv6]:PORT (port 0 allowed)"),
        Flag("--prom-token-file", "path", "PATH", "",
             "bearer token file, 64 hex chars (secret file)"),
        Flag("--prom-rate-limit-per-sec", "0..u32", "N", "",
             "per-IP scrape refill (0 = no limit)"),
        Flag("--prom-rate-limit-burst", "0..u32", "N", "", "per-IP scrape burst (0 = no limit)"),
        Flag("--prom-agent-rows", "0..1000000", "N", "",
             "per-agent series for at most N agents: not OK first, then lowest pid; "
             "the rest only counted (0 = counts only; docs/observer.md#agent-rows)"),
    ]),
    ("Hang forensics", [
        Flag("--forensics-dir", "path", "DIR", "",
             "on a hung verdict, capture where the process is stuck into DIR (varta addition)",
             observer="forensics_dir"),
        Flag("--forensics-keep", "0..1000000", "N", "",
             "captures kept in --forensics-dir, oldest removed first (0 = no count bound)",
             observer="forensics_keep"),
        Flag("--forensics-max-age-secs", "0..u64", "SECS", "",
             "remove captures older than this (0 = no age bound)",
             observer="forensics_max_age_s"),
    ]),
    ("Tracker, loop, lifecycle", [
        Flag("--tracker-capacity", "1..1000000", "N", "", "max tracked pids, 1..=1000000",
             observer="capacity"),
        Flag("--eviction-scan-window", "1..4096", "N", "",
             "slots inspected per eviction attempt, 1..=4096",
             observer="eviction_scan_window"),
        Flag("--tracker-eviction-policy", "strict|balanced", "strict|balanced", "",
             "who may be evicted when the tracker is full",
             observer="eviction"),
        Flag("--clock-source", "monotonic|boottime|monotonic-raw",
             "monotonic|boottime|monotonic-raw", "", "stall clock",
             observer="clock"),
        Flag("--iteration-budget-ms", "50..60000", "MS", "",
             "soft iteration budget, 50..=60000"),
        Flag("--scrape-budget-ms", "50..60000", "MS", "",
             "soft metrics-serve budget, 50..=60000"),
        Flag("--heartbeat-file", "path", "PATH", "",
             "rewrite '<loop_count> <observer_ns>' each iteration"),
        Flag("--self-watchdog-secs", "1..u64", "SECS", "4 if $WATCHDOG_USEC",
             "abort when the loop stalls this long"),
        Flag("--hw-watchdog", "path", "PATH", "", "hardware watchdog device"),
        Flag("--shutdown-after-secs", "0..u64", "SECS", "", "exit cleanly after this uptime"),
        Flag("--shutdown-grace-ms", "100..60000", "MS", "",
             "bound on killing/reaping children at exit"),
        Flag("--allow-cross-namespace-agents", _B, "", "",
             "accept agents from other pid namespaces",
             observer="allow_cross_namespace"),
        Flag("--strict-namespace-check", _B, "", "",
             "the first namespace conflict terminates (exit 1)"),
        Flag("--signal-handler-mode", "direct|libc", "direct|libc", "",
             "SIGINT/SIGTERM handlers: raw rt_sigaction + readback + SIGUSR1 self-test, "
             "or sigaction(3); Linux only"),
        Flag("--inject-wedge-ms", "0..u64", "MS", "", "test aid: sleep once in iteration 1"),
        Flag("--inject-wedge-after-ms", "0..u64", "MS", "",
             "test aid: the --inject-wedge-ms sleep waits for this uptime (varta addition)"),
        Flag("--log-format", "text|json", "text|json", "",
             "stderr log lines (varta addition)"),
        Flag("--log-level", "debug|info|warn|error", "LEVEL", "$VARTA_LOG_LEVEL, else info",
             "least severe stderr log line shown (varta addition)"),
    ]),
]
# fmt: on

FLAGS: dict[str, Flag] = {f.name: f for _, group in SECTIONS for f in group}

#: Removed flags → what replaces them (``RemovedFlag``, exit 2).
REMOVED: dict[str, str] = {
    "--recovery-cmd": "varta never runs a shell; use --recovery-exec",
    "--recovery-cmd-file": "varta never runs a shell; use --recovery-exec-file",
    "--i-accept-shell-risk": "there is no shell mode; use --recovery-exec or --recovery-exec-file",
    "--key-env": "keys in the environment leak via /proc; use --key-file",
    "--master-key-env": "keys in the environment leak via /proc; use --master-key-file",
    "--accepted-key-env": "keys in the environment leak via /proc; use --accepted-key-file",
}

REQUIRED = ("--socket", "--threshold-ms")


def help_text() -> str:
    out = [
        f"usage: {PROG} --socket PATH --threshold-ms MS [options]",
        "",
        "Receives varta heartbeats, reports stalled agents, runs recovery,",
        "writes a TSV event file, a recovery audit log and Prometheus metrics.",
    ]
    for title, group in SECTIONS:
        out.append("")
        out.append(f"{title}:")
        for f in group:
            head = f"  {f.name}" + (f" {f.metavar}" if f.metavar else "")
            tail = f.help + (f" [default: {f.default_text}]" if f.default_text else "")
            if len(head) < 34:
                out.append(f"{head:<34}{tail}")
            else:
                out.append(head)
                out.append(f"{'':<34}{tail}")
    out += [
        "",
        "Other:",
        f"  {'-h, --help':<32}print this help and exit",
        f"  {'--version':<32}print the version and exit",
        "",
        "Flags take their value as the next argument or after '=' (--flag=value).",
        "Environment: NOTIFY_SOCKET (sd_notify), WATCHDOG_USEC (systemd watchdog),",
        "VARTA_LOG_LEVEL (default for --log-level).",
        "Exit: 0 clean shutdown, 1 runtime failure, 2 bad command line.",
        "",
    ]
    return "\n".join(out)


# --- parsing ---------------------------------------------------------------------------

_FIELDS = {f.name for f in fields(WatchConfig)}


def observer_kwargs(cfg: WatchConfig) -> dict[str, object]:
    """The ``varta.Observer`` keywords the flag table maps (``Flag.observer``)."""
    return {f.observer: getattr(cfg, f.attr) for f in FLAGS.values() if f.observer}


#: WatchConfig's defaults by field: the one place a flag's default lives.
_CONFIG_DEFAULTS: dict[str, object] = {
    f.name: f.default for f in fields(WatchConfig) if f.default is not MISSING
}


def parse_args(argv: Sequence[str]) -> WatchConfig:
    """Parse and validate; raises :class:`ConfigError` or :class:`HelpRequested`."""
    if any(tok in ("-h", "--help") for tok in argv):
        raise HelpRequested()
    if "--version" in argv:
        raise VersionRequested()
    values: dict[str, object] = {}
    repeated: dict[str, list[object]] = {}
    seen: set[str] = set()
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        inline: Optional[str] = None
        if tok.startswith("--") and "=" in tok:
            tok, _, inline = tok.partition("=")
        if tok in REMOVED:
            raise ConfigError("RemovedFlag", f"{tok} was removed: {REMOVED[tok]}")
        spec = FLAGS.get(tok)
        if spec is None:
            raise ConfigError("UnknownFlag", f"unknown flag or token {tok!r}")
        if not spec.repeat and tok in seen:
            raise ConfigError("DuplicateFlag", f"{tok} given more than once")
        seen.add(tok)
        if not spec.takes_value:
            if inline is not None:
                raise ConfigError("BadValue", f"{tok} takes no value, got {tok}={inline}")
            values[spec.attr] = True
            continue
        if inline is not None:
            value = spec.parse(inline)
        else:
            if i >= len(argv) or _flag_name(argv[i]) in FLAGS or _flag_name(argv[i]) in REMOVED:
                raise ConfigError("MissingValue", f"{tok} requires a value ({spec.metavar})")
            value = spec.parse(argv[i])
            i += 1
        if spec.repeat:
            repeated.setdefault(spec.attr, []).append(value)
        else:
            values[spec.attr] = value
    for attr, items in repeated.items():
        values[attr] = tuple(items)
    for name in REQUIRED:
        if FLAGS[name].attr not in values:
            raise ConfigError("MissingRequired", f"{name} is required")
    assert set(values) <= _FIELDS
    cfg = WatchConfig(**values)  # type: ignore[arg-type]
    return _cross_checks(cfg)


def _flag_name(tok: str) -> str:
    """The flag part of ``--flag`` or ``--flag=value``."""
    return tok.partition("=")[0] if tok.startswith("--") else tok


LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_LEVEL_ENV = "VARTA_LOG_LEVEL"


def log_level(cfg: WatchConfig, environ: Optional[dict[str, str]] = None) -> str:
    """``--log-level``, else ``$VARTA_LOG_LEVEL`` (checked like the flag), else ``info``."""
    if cfg.log_level is not None:
        return cfg.log_level
    env: Union[dict[str, str], os._Environ[str]] = os.environ if environ is None else environ
    raw = env.get(LOG_LEVEL_ENV, "").strip().lower()
    if not raw:
        return "info"
    if raw not in LOG_LEVELS:
        raise ConfigError(
            "BadValue", f"{LOG_LEVEL_ENV}={raw!r} must be one of {', '.join(LOG_LEVELS)}"
        )
    return raw


def _cross_checks(cfg: WatchConfig) -> WatchConfig:
    """The rules that involve more than one flag (docs/configuration.md#rules-between-flags;
    the token rule: docs/observer.md#differences-from-upstream)."""
    warnings: list[str] = []
    # read-timeout ceiling from the self-watchdog
    if (
        cfg.self_watchdog_secs is not None
        and cfg.read_timeout_ms * 2 > cfg.self_watchdog_secs * 1000
    ):
        raise ConfigError(
            "BadValue",
            f"--read-timeout-ms {cfg.read_timeout_ms} must be <= half of "
            f"--self-watchdog-secs {cfg.self_watchdog_secs}",
        )
    # recovery-dependent flags (exec ⊕ exec-file is checked at startup: exit 1)
    if cfg.recovery_capture_stdio and not cfg.recovery_configured:
        raise ConfigError(
            "MutuallyExclusive",
            "--recovery-capture-stdio needs --recovery-exec or --recovery-exec-file",
        )
    if cfg.recovery_audit_sync_every > 1:
        warnings.append(
            f"--recovery-audit-sync-every {cfg.recovery_audit_sync_every}: up to "
            f"{cfg.recovery_audit_sync_every - 1} audit records can be lost on power failure"
        )
    if cfg.recovery_inherit_env:
        warnings.append("--recovery-inherit-env: recovery children see the observer's environment")
    network_recovery = (
        cfg.secure_udp_i_accept_recovery_on_unauthenticated_transport
        or cfg.plaintext_udp_i_accept_recovery_on_unauthenticated_transport
    )
    if network_recovery and cfg.recovery_configured and "unknown" not in cfg.recovery_on:
        warnings.append(
            "UDP agents' stalls have the verdict 'unknown' (no kernel attestation), which "
            "--recovery-on does not include: they will not be recovered"
        )
    # Prometheus (docs/observer.md#differences-from-upstream: the token rule)
    if cfg.prom_token_file is not None and cfg.prom_addr is None:
        raise ConfigError("MutuallyExclusive", "--prom-token-file needs --prom-addr")
    if cfg.prom_addr is not None:
        if not cfg.prom_addr.is_loopback:
            if cfg.prom_token_file is None:
                raise ConfigError(
                    "PromAddrRequiresToken",
                    f"--prom-addr {cfg.prom_addr} is not loopback: --prom-token-file is required",
                )
            warnings.append(f"/metrics is served off loopback on {cfg.prom_addr}")
        elif cfg.prom_token_file is None:
            warnings.append(f"/metrics on {cfg.prom_addr} has no --prom-token-file: no auth")
    # network transports
    _udp_checks(cfg, warnings)
    if not warnings:
        return cfg
    return replace(cfg, warnings=tuple(warnings))


def _udp_checks(cfg: WatchConfig, warnings: list[str]) -> None:
    if cfg.accepted_key_files and cfg.key_file is None and cfg.master_key_file is None:
        raise ConfigError("BadValue", "--accepted-key-file needs --key-file or --master-key-file")
    shared = (cfg.key_file is not None) + len(cfg.accepted_key_files)
    if shared > MAX_SHARED_KEYS:
        raise ConfigError(
            "BadValue", f"at most {MAX_SHARED_KEYS} shared keys (--key-file + --accepted-key-file)"
        )
    if cfg.udp_port is None:
        if cfg.has_keys:
            raise ConfigError(
                "BadValue", "--key-file/--master-key-file/--accepted-key-file need --udp-port"
            )
        return
    bind = cfg.effective_udp_bind_addr
    assert bind is not None
    loopback = is_loopback(bind)
    if cfg.has_keys:
        if not loopback and not cfg.i_accept_secure_udp_non_loopback:
            raise ConfigError(
                "BadValue",
                f"secure UDP on non-loopback {bind} needs --i-accept-secure-udp-non-loopback",
            )
        if not loopback:
            warnings.append(f"secure UDP listens off loopback on {bind}")
        if (
            cfg.recovery_configured
            and not cfg.secure_udp_i_accept_recovery_on_unauthenticated_transport
        ):
            raise ConfigError(
                "RecoveryRequiresAuthenticatedTransport",
                "recovery with secure UDP needs "
                "--secure-udp-i-accept-recovery-on-unauthenticated-transport",
            )
    else:
        if not cfg.i_accept_plaintext_udp:
            raise ConfigError(
                "BadValue",
                "--udp-port without a key file is plaintext: add --i-accept-plaintext-udp "
                "or a --key-file/--master-key-file",
            )
        warnings.append(f"plaintext UDP on {bind}:{cfg.udp_port}: beats are unauthenticated")
        if (
            cfg.recovery_configured
            and not cfg.plaintext_udp_i_accept_recovery_on_unauthenticated_transport
        ):
            raise ConfigError(
                "RecoveryRequiresAuthenticatedTransport",
                "recovery with plaintext UDP needs "
                "--plaintext-udp-i-accept-recovery-on-unauthenticated-transport",
            )
    if cfg.recovery_configured:
        warnings.append("recovery can be triggered by beats arriving over UDP")


def self_watchdog_secs(cfg: WatchConfig, environ: Optional[dict[str, str]] = None) -> Optional[int]:
    """``--self-watchdog-secs``, else 4 when systemd's watchdog is on for us."""
    if cfg.self_watchdog_secs is not None:
        return cfg.self_watchdog_secs
    return 4 if systemd_watchdog_usec(environ) is not None else None


def systemd_watchdog_usec(environ: Optional[dict[str, str]] = None) -> Optional[int]:
    """``$WATCHDOG_USEC`` when it is meant for this process (``$WATCHDOG_PID`` unset or ours)."""
    env: Union[dict[str, str], os._Environ[str]] = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "")
    if not raw.isdigit() or int(raw) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid()):
        return None
    return int(raw)
