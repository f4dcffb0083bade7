"""Recovery's vocabulary (``docs/observer.md#recovery``, ``docs/verdicts.md``): the
outcome labels, ``--recovery-on``, the parsed command line and configuration,
and the shapes the runner consumes and produces. The runner itself is
:mod:`varta.watch.recovery`."""

from __future__ import annotations

import os
import re

from .._record import record
from .secretfile import read_secret_file

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Optional, Protocol

    from .secretfile import PathLike

# --- labels (docs/observer.md#recovery-outcomes, #metric-families) ------------------------

#: ``varta_recovery_outcomes_total{outcome}`` label values, in spec order.
OUTCOMES: tuple[str, ...] = (
    "spawned",
    "debounced",
    "refused_cross_namespace",
    "refused_unauthenticated_transport",
    "refused_socket_mode_only",
    "refused_debounce_capacity",
    "refused_outstanding_capacity",
    "spawn_failed",
    "reaped_zero",
    "reaped_nonzero",
    "killed",
    "skipped_agent_resumed",
    "skipped_pid_recycled",
    "skipped_stall_unverifiable",
    "skipped_verdict",
    "refused_audit_unavailable",
)

#: Every verdict name (``varta.Verdict`` values) and the ``--recovery-on`` default.
VERDICTS: tuple[str, ...] = ("hung", "exited", "crashed", "vanished", "unknown")
DEFAULT_RECOVERY_ON: frozenset[str] = frozenset({"hung", "crashed", "vanished"})
#: Verdicts of agents whose process ended: nothing can resume, so no fire-time re-check.
GONE_VERDICTS: frozenset[str] = frozenset({"exited", "crashed", "vanished"})

#: ``varta_recovery_refused_total{reason}`` label values.
REFUSED_REASONS: tuple[str, ...] = (
    "unauthenticated_transport",
    "cross_namespace_agent",
    "debounce_capacity",
    "outstanding_capacity",
    "socket_mode_only",
    "audit_unavailable",
)

#: Outcome -> the ``recovery_refused_total`` reason it also counts under (if any).
_REFUSED_COUNTER = {
    "refused_cross_namespace": "cross_namespace_agent",
    "refused_unauthenticated_transport": "unauthenticated_transport",
    "refused_socket_mode_only": "socket_mode_only",
    "refused_debounce_capacity": "debounce_capacity",
    "refused_outstanding_capacity": "outstanding_capacity",
    "refused_audit_unavailable": "audit_unavailable",
}

#: Child ``PATH`` unless ``--recovery-inherit-env``.
DEFAULT_CHILD_PATH = "/usr/bin:/bin"
#: Debounce ledger size (one entry per pid).
LEDGER_CAPACITY = 4096
#: Children given a non-blocking wait per :meth:`RecoveryRunner.reap`.
REAP_PER_TICK = 64
#: Per-tick stall evaluations and spawns (docs/observer.md#recovery); the loop defers the rest.
EVALUATIONS_PER_TICK = 256
SPAWNS_PER_TICK = 16
#: Shutdown poll period.
SHUTDOWN_POLL_S = 0.010
#: ``--recovery-timeout-ms`` floor and ``--recovery-capture-bytes`` range.
MIN_TIMEOUT_MS = 100
CAPTURE_BYTES_RANGE = (64, 1_048_576)

# Rank values of varta.BeatOrigin (kept numeric so this module needs no native import).
_NETWORK_UNVERIFIED = 0
_SOCKET_MODE_ONLY = 1

# Unicode White_Space (what Rust's split_whitespace uses). Python's str.split()
# also splits on U+001C..U+001F, which Unicode does not count as whitespace.
_WS_CHARS = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WS_RUN = re.compile(f"[{_WS_CHARS}]+")
_PID = "{pid}"
_VERDICT = "{verdict}"


def parse_recovery_on(text: str) -> frozenset[str]:
    """``--recovery-on hung,crashed``: a non-empty comma list of verdict names."""
    names = [n.strip().lower() for n in text.split(",")]
    if not names or any(not n for n in names):
        raise ValueError(f"expected a comma-separated list of verdicts, got {text!r}")
    bad = [n for n in names if n not in VERDICTS]
    if bad:
        raise ValueError(f"unknown verdict {bad[0]!r} (expected {', '.join(VERDICTS)})")
    return frozenset(names)


# --- command and configuration ---------------------------------------------------------


@record(frozen=True)
class RecoveryCommand:
    """A parsed ``--recovery-exec`` line: ``program`` and argument templates."""

    program: str
    args: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> RecoveryCommand:
        """Split *text* on runs of Unicode whitespace; no quoting, globbing or variables.

        Raises :class:`ValueError` for an empty command or one holding a NUL
        (which ``execve`` cannot pass).
        """
        if "\0" in text:
            raise ValueError("recovery command contains a NUL byte")
        tokens = [t for t in _WS_RUN.split(text) if t]
        if not tokens:
            raise ValueError("recovery command is empty")
        return cls(tokens[0], tuple(tokens[1:]))

    @property
    def substitutes_pid(self) -> bool:
        """True when some argument holds ``{pid}`` (else the pid is appended)."""
        return any(_PID in a for a in self.args)

    def argv(self, pid: int, verdict: str = "unknown") -> list[str]:
        """The final argv for *pid* (the program itself is never substituted)."""
        p = str(int(pid))
        args = [a.replace(_VERDICT, verdict) for a in self.args]
        if self.substitutes_pid:
            return [self.program, *(a.replace(_PID, p) for a in args)]
        return [self.program, *args, p]


def strip_ws(text: str) -> str:
    """Trim Unicode whitespace from both ends (``--recovery-exec-file`` content)."""
    return re.sub(f"^[{_WS_CHARS}]+|[{_WS_CHARS}]+$", "", text)


def parse_env_entry(entry: str) -> tuple[str, str]:
    """``--recovery-env K=V``: split at the first ``=``; key non-empty; no NUL anywhere."""
    key, sep, value = entry.partition("=")
    if not sep:
        raise ValueError(f"--recovery-env {entry!r}: expected KEY=VALUE")
    if not key:
        raise ValueError(f"--recovery-env {entry!r}: empty key")
    if "\0" in key or "\0" in value:
        raise ValueError(f"--recovery-env {entry!r}: NUL byte in key or value")
    return key, value


@record(frozen=True)
class RecoveryConfig:
    """Everything ``--recovery-*`` configures (validated on construction)."""

    command: RecoveryCommand
    #: ``"inline"`` for ``--recovery-exec``, else the ``--recovery-exec-file`` path.
    source: str = "inline"
    debounce_ms: int = 1000
    #: ``None`` = never kill.
    timeout_ms: Optional[int] = None
    env: tuple[tuple[str, str], ...] = ()
    inherit_env: bool = False
    capture_stdio: bool = False
    capture_bytes: int = 4096
    #: Verdicts recovery acts on (``--recovery-on``).
    recovery_on: frozenset[str] = DEFAULT_RECOVERY_ON

    def __post_init__(self) -> None:
        if not self.recovery_on or not self.recovery_on <= frozenset(VERDICTS):
            raise ValueError(f"recovery_on must be a non-empty subset of {', '.join(VERDICTS)}")
        if self.debounce_ms < 0:
            raise ValueError("recovery debounce must be >= 0 ms")
        if self.timeout_ms is not None and self.timeout_ms < MIN_TIMEOUT_MS:
            raise ValueError(
                f"RecoveryTimeoutTooLow: --recovery-timeout-ms must be >= {MIN_TIMEOUT_MS}"
            )
        lo, hi = CAPTURE_BYTES_RANGE
        if not lo <= self.capture_bytes <= hi:
            raise ValueError(f"--recovery-capture-bytes must be in {lo}..={hi}")
        for key, value in self.env:
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise ValueError(f"recovery env entry {key!r}: bad key or NUL byte")

    @staticmethod
    def read_exec_file(path: PathLike) -> tuple[RecoveryCommand, str]:
        """The command in a secret file (trimmed) and its ``source`` (the path)."""
        raw = read_secret_file(path, "recovery exec file")
        text = strip_ws(raw.decode("utf-8", "surrogateescape"))
        if not text:
            raise ValueError(f"recovery exec file {os.fsdecode(path)}: empty command")
        return RecoveryCommand.parse(text), os.fsdecode(path)

    @classmethod
    def from_exec_file(cls, path: PathLike, **kwargs: object) -> RecoveryConfig:
        """Read the command from a secret file (trimmed), ``source`` = the path."""
        command, source = cls.read_exec_file(path)
        return cls(command, source=source, **kwargs)  # type: ignore[arg-type]

    def child_env(self, base: Optional[dict[str, str]] = None) -> dict[str, str]:
        """The child's environment: cleared + ``PATH`` + entries, or inherited + entries."""
        if self.inherit_env:
            env = dict(os.environ if base is None else base)
        else:
            env = {"PATH": DEFAULT_CHILD_PATH}
        for key, value in self.env:
            env[key] = value
        return env


# --- what the runner consumes and produces ---------------------------------------------


if TYPE_CHECKING:

    class StallLike(Protocol):
        """The attributes of ``varta.Stall`` the runner reads."""

        @property
        def pid(self) -> int: ...
        @property
        def origin(self) -> int: ...
        @property
        def pid_ns_inode(self) -> Optional[int]: ...
        @property
        def generation(self) -> Optional[int]: ...
        @property
        def last_ns(self) -> int: ...
        @property
        def observer_ns(self) -> int: ...

    class AgentLike(Protocol):
        """The attributes of ``varta.AgentInfo`` the fire-time checks read."""

        @property
        def stalled(self) -> bool: ...
        @property
        def last_ns(self) -> int: ...
        @property
        def generation(self) -> Optional[int]: ...

    class AuditSink(Protocol):
        """Where the runner writes its audit rows (``AuditLog`` implements this)."""

        def spawn(
            self,
            observer_ns: int,
            agent_pid: int,
            child_pid: int,
            program: str,
            source: str,
            template_len: int,
        ) -> object: ...

        def complete(
            self,
            observer_ns: int,
            agent_pid: int,
            child_pid: int,
            status: str,
            exit_code: Optional[int],
            signal: Optional[int],
            duration_ns: int,
            stdout_len: int,
            stderr_len: int,
            truncated: bool,
        ) -> object: ...

        def refused(self, observer_ns: int, agent_pid: int, reason: str) -> object: ...

        def verdict(self, observer_ns: int, agent_pid: int, verdict: str) -> object: ...


def verdict_name(stall: object) -> str:
    """The stall's verdict as its name (``"unknown"`` for stalls that carry none)."""
    v = getattr(stall, "verdict", None)
    return "unknown" if v is None else str(getattr(v, "value", v))


@record(frozen=True)
class Decision:
    """What :meth:`RecoveryRunner.on_stall` did with one stall.

    ``outcome`` is one of :data:`OUTCOMES`; ``reason`` is the audit ``refused``
    reason (``None`` for ``spawned``); ``error`` carries the spawn error text.
    """

    outcome: str
    agent_pid: int
    reason: Optional[str] = None
    child_pid: Optional[int] = None
    error: Optional[str] = None
    #: The stall's verdict, when the decision depended on it.
    verdict: Optional[str] = None

    @property
    def spawned(self) -> bool:
        return self.outcome == "spawned"


@record(frozen=True)
class Completion:
    """One final reap (the audit ``complete`` row)."""

    agent_pid: int
    child_pid: int
    #: ``reaped``, ``killed`` or ``reap_failed``.
    status: str
    exit_code: Optional[int]
    signal: Optional[int]
    duration_ns: int
    stdout_len: int
    stderr_len: int
    truncated: bool


@record(frozen=True)
class ShutdownResult:
    completed: list[Completion]
    #: Child pids still alive after the grace period (left to init).
    survivors: list[int]
