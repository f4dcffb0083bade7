"""Plain-Python value types shared by the native core and the pure-Python layers.

These are defined in Python (not in the extension) because users subclass,
pattern-match and pickle them, and because ``IntEnum``/``str``-``Enum``
semantics come for free. The native module imports them once and hands out
cached instances, so the beat path allocates nothing new.
"""

from __future__ import annotations

import errno as _errno
import os
from enum import Enum, IntEnum

from ._record import record

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import ClassVar, Optional, Union

NONCE_TERMINAL = 0xFFFF_FFFF_FFFF_FFFF


class Status(IntEnum):
    """Beat status byte (``docs/protocol.md#status-byte``). ``STALL`` is observer-only."""

    OK = 0
    DEGRADED = 1
    CRITICAL = 2
    STALL = 3

    @classmethod
    def coerce(cls, value: StatusLike) -> Status:
        """Accept a member, its int value (0..=3, not a bool), or its name in any case.

        The rules are the agent's own (the extension's ``coerce_status``), so
        ``Varta.beat(status=...)`` and this method accept exactly the same values.
        """
        if type(value) is cls:
            return value
        from ._varta import coerce_status  # the extension imports this module first

        return coerce_status(value)


if TYPE_CHECKING:
    StatusLike = Union[Status, int, str]


def __getattr__(name: str) -> object:
    # ``varta.StatusLike`` at run time, built on first use so that importing
    # varta does not load typing (docs/operations.md#resources).
    if name == "StatusLike":
        from typing import Union

        alias = globals()[name] = Union[Status, int, str]
        return alias
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class BeatOrigin(IntEnum):
    """How far the observer trusts the pid a beat claims (``docs/observer.md#origins``).

    The value is the rank: a stronger origin replaces a slot's pin, a weaker
    one is an ``OriginConflict``. Recovery runs only for ``OPERATOR_ATTESTED_TRANSPORT``
    and ``KERNEL_ATTESTED``.
    """

    NETWORK_UNVERIFIED = 0
    SOCKET_MODE_ONLY = 1
    OPERATOR_ATTESTED_TRANSPORT = 2
    KERNEL_ATTESTED = 3

    @property
    def allows_recovery(self) -> bool:
        return self >= BeatOrigin.OPERATOR_ATTESTED_TRANSPORT


#: Payload of a clean-exit terminal frame (``close(final=True)``,
#: ``send_terminal()``): the bytes ``EXIT`` on the wire (``docs/verdicts.md``).
PAYLOAD_CLEAN_EXIT = int.from_bytes(b"EXIT", "little")


def signal_payload(signum: int) -> int:
    """Payload of a terminal frame sent by a crash hook for signal *signum*."""
    if not 1 <= signum <= 255:
        raise ValueError(f"signal number {signum} is outside 1..=255")
    return int.from_bytes(b"SIG", "little") | signum << 24


def terminal_cause(payload: int) -> str:
    """What a terminal frame's payload announces: ``"clean_exit"``, ``"crash"``
    (0, as upstream's agents send, or any unknown value) or ``"signal N"``."""
    if payload == PAYLOAD_CLEAN_EXIT:
        return "clean_exit"
    if payload & 0xFFFFFF == int.from_bytes(b"SIG", "little") and payload >> 24:
        return f"signal {payload >> 24}"
    return "crash"


class Verdict(str, Enum):
    """Why a tracked agent went silent (``docs/verdicts.md``).

    A ``str`` enum: ``Verdict.HUNG == "hung"``, and ``str(v)`` is the word used
    in log lines, the TSV export, metric labels and ``--recovery-on``.
    """

    HUNG = "hung"
    """The kernel-attested process is alive and silent."""
    EXITED = "exited"
    """It ended after announcing a clean exit (or an orderly stop signal)."""
    CRASHED = "crashed"
    """It ended, or is dying, after its crash hook sent a terminal frame."""
    VANISHED = "vanished"
    """It ended without a terminal frame (SIGKILL, the OOM killer)."""
    UNKNOWN = "unknown"
    """No kernel attestation (network, socket-mode-only): silence only."""

    def __str__(self) -> str:
        return self.value

    @property
    def process_gone(self) -> bool:
        """The agent ended: its slot is retired once the verdict is reported."""
        return self in (Verdict.EXITED, Verdict.CRASHED, Verdict.VANISHED)


class DecodeError(ValueError):
    """A 32-byte buffer that is not a valid VLP v0.2 frame.

    ``kind`` is the spec's variant name (``"BadMagic"``, ``"BadCrc"``, …). Every
    field attribute exists on every instance; those that do not belong to the
    variant are ``None``.
    """

    kind: str
    expected: Optional[int]
    actual: Optional[int]
    byte: Optional[int]
    status: Optional[Union[Status, int]]
    pid: Optional[int]
    timestamp: Optional[int]
    nonce: Optional[int]

    KINDS: ClassVar[tuple[str, ...]] = (
        "BadMagic",
        "BadVersion",
        "BadCrc",
        "BadStatus",
        "StallOnWire",
        "BadPid",
        "BadTimestamp",
        "BadNonce",
    )

    def __init__(
        self,
        kind: str,
        message: str = "",
        *,
        expected: Optional[int] = None,
        actual: Optional[int] = None,
        byte: Optional[int] = None,
        status: Optional[Union[Status, int]] = None,
        pid: Optional[int] = None,
        timestamp: Optional[int] = None,
        nonce: Optional[int] = None,
    ) -> None:
        super().__init__(message or f"varta-vlp: {kind}")
        self.kind = kind
        self.expected = expected
        self.actual = actual
        self.byte = byte
        self.status = status
        self.pid = pid
        self.timestamp = timestamp
        self.nonce = nonce

    def __reduce__(self):  # type: ignore[no-untyped-def]
        fields = {
            "expected": self.expected,
            "actual": self.actual,
            "byte": self.byte,
            "status": self.status,
            "pid": self.pid,
            "timestamp": self.timestamp,
            "nonce": self.nonce,
        }
        return (_rebuild_decode_error, (self.kind, str(self), fields))

    @property
    def metric_label(self) -> str:
        """``varta_decode_errors_total{kind=…}`` label (``BadCrc`` → ``bad_crc``)."""
        out = []
        for i, ch in enumerate(self.kind):
            if ch.isupper() and i:
                out.append("_")
            out.append(ch.lower())
        return "".join(out)

    def debug_form(self) -> str:
        """Rust ``Debug`` form used in the TSV export (``BadCrc { expected: 1, actual: 2 }``)."""
        k = self.kind
        if k == "BadCrc":
            return f"BadCrc {{ expected: {self.expected}, actual: {self.actual} }}"
        if k == "BadStatus":
            return f"BadStatus({self.byte})"
        if k == "BadPid":
            return f"BadPid({self.pid})"
        if k == "BadTimestamp":
            return f"BadTimestamp({self.timestamp})"
        if k == "BadNonce":
            name = Status(self.status).name.capitalize() if self.status is not None else "?"
            return f"BadNonce {{ nonce: {self.nonce}, status: {name} }}"
        return k


def _rebuild_decode_error(kind: str, message: str, fields: dict) -> DecodeError:  # type: ignore[type-arg]
    return DecodeError(kind, message, **fields)


class DropReason(str, Enum):
    """Why a beat was dropped (transient; the next beat retries)."""

    KERNEL_QUEUE_FULL = "kernel queue full"
    NO_OBSERVER = "no observer"
    PEER_GONE = "peer gone"
    STORAGE_FULL = "storage full"

    def __str__(self) -> str:
        return self.value


def errno_name(code: Optional[int]) -> str:
    """Symbolic errno name (``"EPERM"``); ``errno_<n>`` when unknown."""
    if not code:
        return "Unknown"
    return _errno.errorcode.get(code, f"errno_{code}")


@record(frozen=True)
class BeatError:
    """Why a beat failed: an OS errno and its symbolic name, or a synthetic
    kind (``"InvalidInput"``, ``"WriteZero"``, ``"Closed"``) with errno 0."""

    errno: int
    kind: str

    UNKNOWN_ERRNO: ClassVar[int] = 0

    def to_oserror(self) -> OSError:
        return OSError(self.errno, os.strerror(self.errno) if self.errno else self.kind)

    @classmethod
    def from_oserror(cls, exc: OSError) -> BeatError:
        if exc.errno:
            return cls(exc.errno, errno_name(exc.errno))
        return cls(cls.UNKNOWN_ERRNO, type(exc).__name__)

    def __str__(self) -> str:
        return f"send failed: {self.kind} (errno={self.errno})"


@record(frozen=True)
class BeatOutcome:
    """Result of one ``Varta.beat``: exactly one of sent, dropped, failed.

    ``bool(outcome)`` is true iff the frame was sent.
    """

    kind: str
    reason: Optional[DropReason] = None
    error: Optional[BeatError] = None

    @classmethod
    def sent(cls) -> BeatOutcome:
        return _SENT

    @classmethod
    def dropped(cls, reason: DropReason) -> BeatOutcome:
        return _DROPPED[DropReason(reason)]

    @classmethod
    def failed(cls, error: BeatError) -> BeatOutcome:
        return cls("failed", error=error)

    @property
    def is_sent(self) -> bool:
        return self.kind == "sent"

    @property
    def is_dropped(self) -> bool:
        return self.kind == "dropped"

    @property
    def is_failed(self) -> bool:
        return self.kind == "failed"

    def __bool__(self) -> bool:
        return self.kind == "sent"

    def __str__(self) -> str:
        if self.kind == "sent":
            return "sent"
        if self.kind == "dropped":
            assert self.reason is not None
            return f"dropped: {self.reason.value}"
        assert self.error is not None
        return f"failed: {self.error}"


# Pre-built immutable outcomes: the steady-state beat returns one of these.
_SENT = BeatOutcome("sent")
_DROPPED = {r: BeatOutcome("dropped", reason=r) for r in DropReason}
