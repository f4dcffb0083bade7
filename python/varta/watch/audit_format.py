"""The recovery audit log's format (``docs/observer.md#audit-log``): constants,
the chain hash, record parsing and the fsync histogram, shared by the writer
(:mod:`varta.watch.audit`) and the verifier (:mod:`varta.watch.audit_verify`),
and the writer's record columns (each kind's fields, checked)."""

from __future__ import annotations

import importlib
import os
import time

from .._record import field, record

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Callable, Iterator, Optional, Protocol

    from .secretfile import PathLike

    class _Hash(Protocol):
        def digest(self) -> bytes: ...


def _find_sha256() -> Callable[[bytes], _Hash]:
    """SHA-256 from CPython's built-in module, not hashlib: hashlib loads
    OpenSSL, about 4 MB of resident memory for the one hash the daemon uses."""
    for name in ("_sha2", "_sha256"):  # CPython >= 3.12, <= 3.11
        try:
            sha256: Callable[[bytes], _Hash] = importlib.import_module(name).sha256
            return sha256
        except (ImportError, AttributeError):
            continue
    import hashlib

    return hashlib.sha256


_sha256 = _find_sha256()

HEADER = b"# varta-watch recovery audit v2"
LEGACY_HEADER = b"# varta-watch recovery audit v1"
CHAIN_DOMAIN = b"VARTA-AUDIT-v2\0"
ZERO_CHAIN = bytes(32)

KINDS = (
    b"boot",
    b"spawn",
    b"complete",
    b"refused",
    b"gap",
    b"verdict",
    b"forensics",
    b"identity",
)
#: Number of TAB-separated fields of each record kind, seq and chain included.
FIELD_COUNTS = {
    b"boot": 8,
    b"spawn": 11,
    b"complete": 14,
    b"refused": 7,
    b"gap": 9,
    b"verdict": 7,
    b"forensics": 8,
    b"identity": 11,
}
#: ``gap`` record reasons and the ``dropped_by_reason`` counter labels.
GAP_REASONS = (b"ring_full", b"io_error", b"unclean_stop")
DROP_REASONS = ("ring_full", "io_error", "exit")
#: ``verdict`` records (``docs/verdicts.md``): why the recovery child whose
#: ``spawn`` record follows is run.
VERDICTS = (b"hung", b"exited", b"crashed", b"vanished", b"unknown")
#: Side file holding the count of queued, unwritten records (see the module docs):
#: ``DIR/.NAME.pending`` (a dot file, so ``NAME*`` globs of the generations miss it).
PENDING_SUFFIX = ".pending"
PENDING_SIZE = 64
PENDING_MAGIC = b"varta-audit-pending "
BOOT_REASONS = (b"fresh", b"resume", b"legacy_v1", b"corrupt_tail", b"schema_drift", b"rotation")
COMPLETE_STATUSES = (b"reaped", b"killed", b"reap_failed")

RING_CAPACITY = 256
#: Ring fill levels (in lines) at which the ``warn`` / ``critical`` watermark trips.
WATERMARK_WARN = (RING_CAPACITY * 75 + 99) // 100  # 192
WATERMARK_CRITICAL = (RING_CAPACITY * 95 + 99) // 100  # 244
GENERATIONS = 5
#: Default per-tick drain budget (docs/observer.md#audit-log: drained ≤ 10 ms per tick).
DRAIN_BUDGET_MS = 10
#: ``varta_audit_fsync_seconds`` bucket bounds.
FSYNC_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
_HEX = frozenset(b"0123456789abcdef")
_CHUNK = 65536


def pending_path(path: PathLike) -> str:
    """``DIR/.NAME.pending`` for the audit log ``DIR/NAME``."""
    head, tail = os.path.split(os.fsdecode(path))
    return os.path.join(head, "." + tail + PENDING_SUFFIX)


def chain_of(kind: bytes, prev_raw: bytes, line_prefix: bytes) -> bytes:
    """Raw 32-byte chain value of one record."""
    return _sha256(CHAIN_DOMAIN + kind + b"\0" + prev_raw + b"\0" + line_prefix).digest()


def _text(value: str) -> bytes:
    """A free-text column: TAB/CR/LF → space; undecodable bytes kept as they came."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "backslashreplace")
    return raw.replace(b"\t", b" ").replace(b"\r", b" ").replace(b"\n", b" ")


def _num(value: Optional[int]) -> bytes:
    return b"-" if value is None else str(int(value)).encode()


def _wallclock_ms() -> int:
    return time.time_ns() // 1_000_000


# --- parsing (shared by the startup probe and the verifier) ----------------------------


@record(frozen=True)
class Record:
    """One parsed v2 record line (without its LF)."""

    seq: int
    kind: bytes
    fields: tuple[bytes, ...]
    prefix: bytes
    chain: bytes  # raw 32 bytes

    @property
    def boot_reason(self) -> Optional[bytes]:
        return self.fields[6] if self.kind == b"boot" else None

    @property
    def prev_chain(self) -> Optional[bytes]:
        """A boot record's ``prev_chain`` column as raw bytes (``None`` for ``-``)."""
        if self.kind != b"boot" or self.fields[5] == b"-":
            return None
        return bytes.fromhex(self.fields[5].decode())


def _is_uint(b: bytes) -> bool:
    return b.isdigit() and b.isascii() and (len(b) == 1 or b[0:1] != b"0")


def _is_hex64(b: bytes) -> bool:
    return len(b) == 64 and all(c in _HEX for c in b)


def parse_record(line: bytes) -> Optional[Record]:
    """Parse one record line (no LF); ``None`` when it is not a well-formed v2 record."""
    fields = tuple(line.split(b"\t"))
    if len(fields) < 5:
        return None
    kind = fields[3]
    if FIELD_COUNTS.get(kind) != len(fields):
        return None
    seq_b, wall, obs, chain_hex = fields[0], fields[1], fields[2], fields[-1]
    if not (_is_uint(seq_b) and _is_uint(wall) and _is_uint(obs) and _is_hex64(chain_hex)):
        return None
    if kind == b"boot":
        ok = (
            obs == b"0"
            and _is_uint(fields[4])
            and (fields[5] == b"-" or _is_hex64(fields[5]))
            and fields[6] in BOOT_REASONS
        )
    elif kind == b"spawn":
        ok = (
            _is_uint(fields[4])
            and _is_uint(fields[5])
            and fields[6] == b"exec"
            and _is_uint(fields[9])
        )
    elif kind == b"complete":
        ok = (
            _is_uint(fields[4])
            and _is_uint(fields[5])
            and fields[6] in COMPLETE_STATUSES
            and (fields[7] == b"-" or _is_uint(fields[7]))
            and (fields[8] == b"-" or _is_uint(fields[8]))
            and all(_is_uint(f) for f in fields[9:12])
            and fields[12] in (b"true", b"false")
        )
    elif kind == b"verdict":
        ok = _is_uint(fields[4]) and fields[5] in VERDICTS
    elif kind == b"forensics":
        ok = _is_uint(fields[4]) and _is_hex64(fields[5]) and bool(fields[6])
    elif kind == b"identity":
        # agent pid, peer, comm, unit, container, cmdline ("-" = unknown)
        ok = _is_uint(fields[4]) and all(fields[5:10])
    elif kind == b"gap":
        ok = (
            obs == b"0"
            and all(_is_uint(f) for f in fields[4:7])
            and fields[7] in GAP_REASONS
            and int(fields[4]) >= 1
            and int(fields[6]) - int(fields[5]) + 1 == int(fields[4])
        )
    else:  # refused
        ok = _is_uint(fields[4]) and bool(fields[5])
    if not ok:
        return None
    prefix = line[: len(line) - 65]
    return Record(int(seq_b), kind, fields, prefix, bytes.fromhex(chain_hex.decode()))


def _leading_uint(line: bytes) -> Optional[int]:
    head = line.split(b"\t", 1)[0]
    return int(head) if _is_uint(head) and len(head) < 21 else None


def _lines_backward(fd: int, end: int) -> Iterator[bytes]:
    """Lines of ``[0, end)`` from the last to the first; the region must end with LF
    (that LF is not part of the last line)."""
    if end <= 0:
        return
    pos = end - 1  # drop the final LF
    tail = b""
    while pos > 0:
        n = min(_CHUNK, pos)
        pos -= n
        data = os.pread(fd, n, pos) + tail
        parts = data.split(b"\n")
        tail = parts[0]
        yield from reversed(parts[1:])
    yield tail


def _last_lf(fd: int, end: int) -> int:
    """Offset just past the last LF in ``[0, end)``; 0 when there is none."""
    pos = end
    while pos > 0:
        n = min(_CHUNK, pos)
        pos -= n
        i = os.pread(fd, n, pos).rfind(b"\n")
        if i >= 0:
            return pos + i + 1
    return 0


# --- record columns (the writer's: docs/observer.md#audit-log) -------------------------


def _spawn_columns(
    observer_ns: int,
    agent_pid: int,
    child_pid: int,
    program: str,
    source: str,
    template_len: int,
) -> list[bytes]:
    """A ``spawn`` record's columns after the wall clock (queued or written ahead)."""
    return [
        _num(observer_ns),
        b"spawn",
        _num(agent_pid),
        _num(child_pid),
        b"exec",
        _text(program),
        _text(source),
        _num(template_len),
    ]


def _complete_columns(
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
) -> list[bytes]:
    """A ``complete`` record's columns after the wall clock."""
    if status not in ("reaped", "killed", "reap_failed"):
        raise ValueError(f"bad complete status {status!r}")
    body = [
        _num(observer_ns),
        b"complete",
        _num(agent_pid),
        _num(child_pid),
        status.encode(),
        _num(exit_code),
        _num(signal),
        _num(duration_ns),
        _num(stdout_len),
        _num(stderr_len),
        b"true" if truncated else b"false",
    ]
    return body


def _verdict_columns(observer_ns: int, agent_pid: int, verdict: str) -> list[bytes]:
    """A ``verdict`` record's columns after the wall clock."""
    if verdict.encode() not in VERDICTS:
        raise ValueError(f"bad verdict {verdict!r}")
    return [_num(observer_ns), b"verdict", _num(agent_pid), verdict.encode()]


def _forensics_columns(observer_ns: int, agent_pid: int, path: str, sha256: str) -> list[bytes]:
    """A ``forensics`` record's columns after the wall clock (the capture's
    SHA-256 and path, docs/finding-hangs.md#the-daemon)."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"bad SHA-256 {sha256!r}")
    return [
        _num(observer_ns),
        b"forensics",
        _num(agent_pid),
        sha256.encode(),
        _text(path) or b"-",
    ]


def _identity_columns(
    observer_ns: int,
    agent_pid: int,
    peer: Optional[str],
    comm: Optional[str],
    unit: Optional[str],
    container: Optional[str],
    cmdline: Optional[str],
) -> list[bytes]:
    """An ``identity`` record's columns after the wall clock; ``-`` = unknown."""
    cols = [_text(v or "") or b"-" for v in (peer, comm, unit, container, cmdline)]
    return [_num(observer_ns), b"identity", _num(agent_pid), *cols]


# --- fsync histogram -------------------------------------------------------------------


@record
class Histogram:
    """Counts per bucket (non-cumulative) plus sum/count, in seconds."""

    bounds: tuple[float, ...] = FSYNC_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(FSYNC_BUCKETS) + 1))
    sum: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        i = 0
        while i < len(self.bounds) and seconds > self.bounds[i]:
            i += 1
        self.counts[i] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, cumulative count), …, ("+Inf", count)]`` with Prometheus ``le`` labels."""
        out: list[tuple[str, int]] = []
        acc = 0
        for bound, n in zip(self.bounds, self.counts):
            acc += n
            out.append((f"{bound:g}", acc))
        out.append(("+Inf", self.count))
        return out
