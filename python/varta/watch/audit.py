"""Recovery audit log, schema v2 (``docs/observer.md#audit-log``), and its verifier.

File layout::

    # varta-watch recovery audit v2
    <seq> TAB <body columns…> TAB <chain> LF

``chain`` = lowercase hex SHA-256 of ``b"VARTA-AUDIT-v2\\0" + kind + b"\\0" +
prev_raw + b"\\0" + line_prefix`` where ``line_prefix`` is the record from
``seq`` up to (not including) the TAB before the chain, and ``prev_raw`` is the
previous record's chain as 32 raw bytes (zeros at the start of a new section).
``resume`` and ``rotation`` boot records carry the previous chain in their
``prev_chain`` column, so the chain spans restarts and rotated generations.

Records are queued in a 256-line ring (75 %/95 % watermarks counted) and
drained by :meth:`AuditLog.flush` with an ``fdatasync`` cadence; boot records
are written and synced directly, and so are spawn records
(:meth:`AuditLog.write_ahead`: the recovery child is released only after its
record is durable).

Nothing is lost silently:

* a record that cannot be queued (ring full, typically because the file is
  failing: ENOSPC, EIO, read-only) is counted in
  ``varta_recovery_audit_dropped_total`` and by reason, and its seq is
  reserved for a ``gap`` record written as soon as writing resumes::

      <seq> wall 0 gap <count> <first_seq> <last_seq> <reason> <chain>

  naming how many records were lost and the seqs they would have had;
* records queued but not yet written are tallied in a small preallocated
  side file ``.NAME.pending`` beside it (overwritten in place, so it works on a full
  disk); after a SIGKILL, a crash or an exit that could not write them, the
  next start writes a ``gap`` record (reason ``unclean_stop``) for them. The
  tally is written without fdatasync while running (it survives a SIGKILL in
  the page cache) and synced at close; after a power failure it can be stale;
* a write that fails half way through a line truncates the file back to the
  last whole line, so a torn record never sits in the file during an outage.

``python -m varta audit verify [--strict] FILE [FILE…]`` (:func:`cli_main`)
checks a log: exit 0 with a summary (and a warning naming the records lost in
gaps; non-zero under ``--strict``), 1 naming the first bad line, 2 on
usage/open errors.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Optional, Protocol, Sequence, Union, cast

from .secretfile import PathLike, check_output_stat, fsync_dir, open_output_file


class _Hash(Protocol):
    def digest(self) -> bytes: ...


def _find_sha256() -> Callable[[bytes], _Hash]:
    """SHA-256 from CPython's built-in module, not hashlib: hashlib loads
    OpenSSL, about 4 MB of resident memory for the one hash the daemon uses."""
    for name in ("_sha2", "_sha256"):  # CPython >= 3.12, <= 3.11
        try:
            return cast(Callable[[bytes], _Hash], importlib.import_module(name).sha256)
        except (ImportError, AttributeError):
            continue
    import hashlib

    return hashlib.sha256


_sha256 = _find_sha256()

HEADER = b"# varta-watch recovery audit v2"
LEGACY_HEADER = b"# varta-watch recovery audit v1"
CHAIN_DOMAIN = b"VARTA-AUDIT-v2\0"
ZERO_CHAIN = bytes(32)

KINDS = (b"boot", b"spawn", b"complete", b"refused", b"gap", b"verdict")
#: Number of TAB-separated fields of each record kind, seq and chain included.
FIELD_COUNTS = {
    b"boot": 8,
    b"spawn": 11,
    b"complete": 14,
    b"refused": 7,
    b"gap": 9,
    b"verdict": 7,
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


@dataclass(frozen=True)
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


# --- fsync histogram -------------------------------------------------------------------


@dataclass
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


# --- the writer ------------------------------------------------------------------------


@dataclass
class _Queued:
    kind: bytes
    body: bytes  # columns after seq, TAB-joined (a gap: unused)
    lost: int = 0  # a gap marker: records lost before the records behind it
    reason: bytes = b""  # a gap marker's reason


class AuditLog:
    """Append-only, hash-chained recovery audit log (implements the runner's ``AuditSink``).

    Opening probes the existing file (see :attr:`boot_reason`) and writes a
    ``boot`` record at once; I/O errors there propagate (a startup failure).
    Later I/O errors are counted in :attr:`io_errors`, kept in
    :attr:`last_error` (see :meth:`take_error`) and retried on the next flush.
    """

    def __init__(
        self,
        path: PathLike,
        max_bytes: Optional[int] = None,
        sync_every: int = 1,
        sync_interval_ms: int = 0,
        fsync_budget_ms: int = 50,
        rotation_budget_ms: int = 50,
        *,
        daemon_pid: Optional[int] = None,
        wallclock_ms: Callable[[], int] = _wallclock_ms,
    ) -> None:
        if sync_every < 0 or sync_interval_ms < 0 or fsync_budget_ms < 1 or rotation_budget_ms < 1:
            raise ValueError("audit sync/budget settings out of range")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("audit max_bytes must be positive")
        self.path = os.fsdecode(path)
        self.max_bytes = max_bytes
        self.sync_every = sync_every
        self.sync_interval_ns = sync_interval_ms * 1_000_000
        self.fsync_budget_s = fsync_budget_ms / 1000.0
        self.rotation_budget_s = rotation_budget_ms / 1000.0
        self.daemon_pid = os.getpid() if daemon_pid is None else daemon_pid
        self._wall = wallclock_ms

        self._ring: deque[_Queued] = deque()
        self._outbuf = b""  # formatted, chained bytes not yet written
        self._unsynced = 0  # records written since the last fdatasync
        self._last_sync_ns = time.monotonic_ns()
        self._rotate_stage: Optional[int] = None  # GENERATIONS-1 … 1 renames, then 0 = switch
        self._reopen_pending = False  # PATH already renamed to PATH.1, new PATH not open yet
        self._above_warn = False
        self._above_critical = False
        self._closed = False

        self.dropped = 0
        self.flush_budget_exceeded = 0
        self.fsync_budget_exceeded = 0
        self.rotation_budget_exceeded = 0
        self.watermark: dict[str, int] = {"warn": 0, "critical": 0}
        self.fsync_seconds = Histogram()
        self.io_errors = 0
        self.last_error: Optional[OSError] = None
        self.records_written = 0
        #: ``dropped`` split by why (:data:`DROP_REASONS`).
        self.dropped_by_reason: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        #: ``gap`` records written (each names a run of lost records).
        self.gaps_written = 0
        #: Records still unwritten when :meth:`close` gave up (also in ``dropped``).
        self.lost_at_close = 0
        #: Records an earlier run left unwritten (from the pending side file), now in a gap.
        self.unclean_lost = 0
        self._gap_lost = 0  # dropped records whose gap marker is not queued yet
        self._gap_reason = b"ring_full"
        self._failing = False  # the last write attempt failed
        self._pending_fd = -1
        self._pending_stored = 0

        self._fd = open_output_file(self.path, "audit file", read=True)
        try:
            self._size = os.fstat(self._fd).st_size
            self.boot_reason = self._probe_and_boot()
            self._open_pending()
        except BaseException:
            os.close(self._fd)
            if self._pending_fd >= 0:
                os.close(self._pending_fd)
            raise
        if self.max_bytes is not None and self._size >= self.max_bytes:
            self._rotate_stage = GENERATIONS - 1

    # --- startup probe ------------------------------------------------------------

    def _probe_and_boot(self) -> str:
        """Inspect the existing file, repair it, write the boot record
        (docs/observer.md#audit-log)."""
        fd, size = self._fd, self._size
        self._seq = 1
        self._prev = ZERO_CHAIN
        if size == 0:
            self._write_direct(HEADER + b"\n")
            self._boot("fresh", None)
            fsync_dir(self.path)
            return "fresh"

        first = os.pread(fd, len(HEADER) + 1, 0)
        ends_lf = os.pread(fd, 1, size - 1) == b"\n"
        if not ends_lf and size <= len(HEADER) and HEADER.startswith(os.pread(fd, size, 0)):
            # Only a torn v2 header: start over.
            os.ftruncate(fd, 0)
            self._size = 0
            self._write_direct(HEADER + b"\n")
            self._boot("corrupt_tail", None)
            return "corrupt_tail"

        if first == HEADER + b"\n":
            has_v2 = True
        else:
            end = _last_lf(fd, size) if not ends_lf else size
            has_v2 = any(line == HEADER for line in _lines_backward(fd, end))
        if not has_v2:
            # Legacy or foreign bytes: keep them, open a new v2 section below.
            reason = "legacy_v1" if first.startswith(LEGACY_HEADER) else "schema_drift"
            self._write_direct((b"" if ends_lf else b"\n") + HEADER + b"\n")
            self._boot(reason, None)
            return reason

        torn = not ends_lf
        if torn:
            cut = _last_lf(fd, size)
            os.ftruncate(fd, cut)
            self._size = size = cut
        garbage = 0
        max_garbage_seq = 0
        last: Optional[Record] = None
        for line in _lines_backward(fd, size):
            if line == HEADER:
                break
            rec = parse_record(line)
            if rec is not None:
                last = rec
                break
            garbage += 1
            max_garbage_seq = max(max_garbage_seq, _leading_uint(line) or 0)
        if last is not None:
            self._seq = last.seq + 1 + garbage
            self._prev = last.chain
        else:
            self._seq = 1 + garbage
        self._seq = max(self._seq, max_garbage_seq + 1)
        if garbage:
            reason = "schema_drift"
            self._boot(reason, None)
        elif torn:
            reason = "corrupt_tail"
            self._boot(reason, None)
        else:
            reason = "resume"
            self._boot(reason, self._prev)
        return reason

    # --- the pending side file --------------------------------------------------------

    def _open_pending(self) -> None:
        """Open (create) the pending side file; a count left there by an unclean stop
        becomes a ``gap`` record now. The file keeps its 64 bytes, overwritten in
        place, so updating it needs no new disk space."""
        path = pending_path(self.path)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(path, flags, 0o600)
        self._pending_fd = fd
        check_output_stat(os.fstat(fd), path, "audit pending file")
        os.set_blocking(fd, True)
        raw = os.pread(fd, PENDING_SIZE, 0)
        lost = 0
        if raw.startswith(PENDING_MAGIC):
            digits = raw[len(PENDING_MAGIC) :].strip()
            lost = int(digits) if _is_uint(digits) else 0
        if lost:
            self.unclean_lost = lost
            self._write_gap_direct(lost, b"unclean_stop")
        if lost or len(raw) != PENDING_SIZE:
            self._store_pending(0, sync=True)

    def _store_pending(self, n: int, sync: bool = False) -> None:
        if self._pending_fd < 0:
            return
        data = (PENDING_MAGIC + str(n).encode()).ljust(PENDING_SIZE - 1) + b"\n"
        try:
            os.pwrite(self._pending_fd, data, 0)
            if sync:
                os.fdatasync(self._pending_fd)
            self._pending_stored = n
        except OSError as exc:
            self._record_error(exc)

    @property
    def unwritten(self) -> int:
        """Records accepted or dropped but not in the file yet (what a SIGKILL now loses)."""
        queued = sum(q.lost or 1 for q in self._ring)
        return queued + self._outbuf.count(b"\n") + self._gap_lost

    def _note_unwritten(self) -> None:
        n = self.unwritten
        if n != self._pending_stored:
            self._store_pending(n)

    def _gap_line(self, lost: int, reason: bytes) -> bytes:
        """Chain a ``gap`` record: the lost records take the next *lost* seqs."""
        first = self._seq
        self._seq += lost
        body = b"\t".join(
            [_num(self._wall()), b"0", b"gap", _num(lost), _num(first), _num(self._seq - 1), reason]
        )
        seq = self._seq
        self._seq += 1
        self.gaps_written += 1
        return self._chain_line(seq, b"gap", body)

    def _write_gap_direct(self, lost: int, reason: bytes) -> None:
        self._write_direct(self._gap_line(lost, reason))
        self._sync()

    def _boot(self, reason: str, prev_chain: Optional[bytes]) -> None:
        """Write a boot record directly (not through the ring) and sync it."""
        body = b"\t".join(
            [
                _num(self._wall()),
                b"0",
                b"boot",
                _num(self.daemon_pid),
                b"-" if prev_chain is None else prev_chain.hex().encode(),
                reason.encode(),
            ]
        )
        seq = self._seq
        self._seq += 1
        self._write_direct(self._chain_line(seq, b"boot", body))
        self._sync()

    def _chain_line(self, seq: int, kind: bytes, body: bytes) -> bytes:
        prefix = str(seq).encode() + b"\t" + body
        chain = chain_of(kind, self._prev, prefix)
        self._prev = chain
        self.records_written += 1
        return prefix + b"\t" + chain.hex().encode() + b"\n"

    def _write_direct(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self._size += n

    def _sync(self) -> float:
        t0 = time.monotonic()
        os.fdatasync(self._fd)
        dt = time.monotonic() - t0
        self.fsync_seconds.observe(dt)
        self._unsynced = 0
        self._last_sync_ns = time.monotonic_ns()
        return dt

    # --- records (AuditSink) ------------------------------------------------------

    def spawn(
        self,
        observer_ns: int,
        agent_pid: int,
        child_pid: int,
        program: str,
        source: str,
        template_len: int,
    ) -> bool:
        body = [
            _num(observer_ns),
            b"spawn",
            _num(agent_pid),
            _num(child_pid),
            b"exec",
            _text(program),
            _text(source),
            _num(template_len),
        ]
        return self._enqueue(b"spawn", body)

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
    ) -> bool:
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
        return self._enqueue(b"complete", body)

    def verdict(self, observer_ns: int, agent_pid: int, verdict: str) -> bool:
        """Why *agent_pid* stalled, written before recovery's decision for it."""
        if verdict.encode() not in VERDICTS:
            raise ValueError(f"bad verdict {verdict!r}")
        return self._enqueue(
            b"verdict", [_num(observer_ns), b"verdict", _num(agent_pid), verdict.encode()]
        )

    def refused(self, observer_ns: int, agent_pid: int, reason: str) -> bool:
        return self._enqueue(
            b"refused", [_num(observer_ns), b"refused", _num(agent_pid), _text(reason) or b"-"]
        )

    def _drop(self, n: int) -> None:
        """Count *n* records that will never be written; a gap record names them."""
        reason = "io_error" if self._failing else "ring_full"
        self.dropped += n
        self.dropped_by_reason[reason] += n
        if not self._gap_lost:
            self._gap_reason = reason.encode()
        self._gap_lost += n

    def _enqueue(self, kind: bytes, columns: list[bytes]) -> bool:
        """Queue one record; False when the ring is full (dropped, counted, and
        named by a ``gap`` record once writing resumes). Seqs are given when
        records are written."""
        if self._closed:
            return False
        if len(self._ring) + (2 if self._gap_lost else 1) > RING_CAPACITY:
            self._drop(1)
            self._note_unwritten()
            return False
        if self._gap_lost:
            self._ring.append(_Queued(b"gap", b"", self._gap_lost, self._gap_reason))
            self._gap_lost = 0
        body = b"\t".join([_num(self._wall()), *columns])
        self._ring.append(_Queued(kind, body))
        self._note_unwritten()
        fill = len(self._ring)
        if fill >= WATERMARK_WARN:
            if not self._above_warn:
                self._above_warn = True
                self.watermark["warn"] += 1
        else:
            self._above_warn = False
        if fill >= WATERMARK_CRITICAL:
            if not self._above_critical:
                self._above_critical = True
                self.watermark["critical"] += 1
        else:
            self._above_critical = False
        return True

    # --- draining -----------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records queued in the ring (not yet formatted/written)."""
        return len(self._ring)

    def flush(self, budget_ms: Optional[float] = DRAIN_BUDGET_MS) -> int:
        """Drain the ring into the file (≤ *budget_ms*; ``None`` = no limit) with the
        fdatasync cadence; returns the number of records written."""
        if self._fd < 0:
            return 0
        t0 = time.monotonic()
        deadline = None if budget_ms is None else t0 + budget_ms / 1000.0
        syncs_deferred = False
        written = 0
        try:
            while self._ring or self._outbuf or self._gap_lost:
                if self._gap_lost and len(self._ring) < RING_CAPACITY:
                    # Drops come after everything queued: their gap record too.
                    self._ring.append(_Queued(b"gap", b"", self._gap_lost, self._gap_reason))
                    self._gap_lost = 0
                if not self._outbuf:  # a failed line is retried before anything newer
                    self._outbuf = self._next_batch()
                written += self._write_outbuf()
                if not syncs_deferred and self._sync_due():
                    if self._sync() > self.fsync_budget_s:
                        self.fsync_budget_exceeded += 1
                        syncs_deferred = True
                if deadline is not None and time.monotonic() >= deadline and self._ring:
                    self.flush_budget_exceeded += 1
                    break
            if not syncs_deferred and self._unsynced and self._interval_due():
                self._sync()
        except OSError as exc:
            self._record_error(exc)
        self._update_watermarks()  # re-arm the marks once the ring went below them
        self._note_unwritten()
        return written

    def _next_batch(self) -> bytes:
        """Format and chain the records up to the next sync point."""
        if self.sync_every > 0:
            limit = max(1, self.sync_every - self._unsynced)
        else:
            limit = len(self._ring)
        lines: list[bytes] = []
        while self._ring and len(lines) < limit:
            q = self._ring.popleft()
            if q.lost:
                lines.append(self._gap_line(q.lost, q.reason))
                continue
            seq = self._seq
            self._seq += 1
            lines.append(self._chain_line(seq, q.kind, q.body))
        return b"".join(lines)

    def _write_outbuf(self) -> int:
        """Write the pending bytes; returns the number of complete lines written.

        On an error after a short write the file is truncated back to the last
        whole line and the rest stays queued (no torn record during an outage)."""
        start = self._size
        done = 0
        buf = self._outbuf
        try:
            while done < len(buf):
                done += os.write(self._fd, buf[done:])
        except OSError:
            self._failing = True
            whole = buf.rfind(b"\n", 0, done) + 1
            if whole < done:
                try:
                    os.ftruncate(self._fd, start + whole)
                except OSError:
                    whole = done  # the retry finishes the line in place
            lines = buf.count(b"\n", 0, whole)
            self._outbuf = buf[whole:]
            self._size = start + whole
            self._unsynced += lines
            raise
        self._failing = False
        lines = buf.count(b"\n")
        self._outbuf = b""
        self._size = start + done
        self._unsynced += lines
        return lines

    def _sync_due(self) -> bool:
        if self._unsynced == 0:
            return False
        if self.sync_every > 0 and self._unsynced >= self.sync_every:
            return True
        return self._interval_due()

    def _interval_due(self) -> bool:
        return (
            self.sync_interval_ns > 0
            and time.monotonic_ns() - self._last_sync_ns >= self.sync_interval_ns
        )

    def _update_watermarks(self) -> None:
        fill = len(self._ring)
        if fill < WATERMARK_WARN:
            self._above_warn = False
        if fill < WATERMARK_CRITICAL:
            self._above_critical = False

    def _record_error(self, exc: OSError) -> None:
        self.io_errors += 1
        self.last_error = exc

    def take_error(self) -> Optional[OSError]:
        """The latest I/O error since the last call (for the loop's rate-limited log)."""
        exc, self.last_error = self.last_error, None
        return exc

    # --- write-ahead spawn records ---------------------------------------------------

    def write_ahead(
        self,
        observer_ns: int,
        agent_pid: int,
        child_pid: int,
        program: str,
        source: str,
        template_len: int,
    ) -> Optional[OSError]:
        """Write a ``spawn`` record now and fdatasync it, after everything queued
        before it. ``None`` when it is durable; else the error, with the record
        taken back (file truncated, seq unused) so the caller can refuse to let
        the child run."""
        if self._closed or self._fd < 0:
            return OSError(errno.EBADF, "audit log is closed")
        self.flush(None)
        if self._ring or self._outbuf:
            return self.last_error or OSError(errno.EIO, "audit drain incomplete")
        body = b"\t".join(
            [
                _num(self._wall()),
                _num(observer_ns),
                b"spawn",
                _num(agent_pid),
                _num(child_pid),
                b"exec",
                _text(program),
                _text(source),
                _num(template_len),
            ]
        )
        saved = (self._seq, self._prev, self.records_written, self._size)
        seq = self._seq
        self._seq += 1
        line = self._chain_line(seq, b"spawn", body)
        try:
            self._write_direct(line)
            self._sync()
        except OSError as exc:
            self._failing = True
            self._record_error(exc)
            self._seq, self._prev, self.records_written, size = saved
            try:
                os.ftruncate(self._fd, size)
                self._size = size
            except OSError:
                pass
            return exc
        self._failing = False
        return None

    # --- maintenance and rotation -------------------------------------------------

    def maintain(self, budget_ms: float = DRAIN_BUDGET_MS) -> None:
        """One Maintenance step: drain (≤ *budget_ms*) then advance rotation."""
        self.flush(budget_ms)
        self.rotate_step()

    @property
    def rotating(self) -> bool:
        return self._rotate_stage is not None

    def rotate_step(self) -> bool:
        """Advance a due rotation within ``rotation_budget_ms``; True when it completed."""
        if self._fd < 0 or self._closed:
            return False
        if self._rotate_stage is None:
            if self.max_bytes is None or self._size < self.max_bytes:
                return False
            self._rotate_stage = GENERATIONS - 1
        t0 = time.monotonic()
        try:
            while self._rotate_stage is not None:
                stage = self._rotate_stage
                if stage > 0:
                    try:
                        os.rename(f"{self.path}.{stage}", f"{self.path}.{stage + 1}")
                    except FileNotFoundError:
                        pass
                    self._rotate_stage = stage - 1
                else:
                    self._switch()
                    self._rotate_stage = None
                    return True
                if time.monotonic() - t0 >= self.rotation_budget_s:
                    self.rotation_budget_exceeded += 1
                    return False
        except OSError as exc:
            self._record_error(exc)
        return False

    def _switch(self) -> None:
        """Final rotation step: everything queued goes to the old file, which becomes
        PATH.1; a new PATH gets the header and a ``rotation`` boot record."""
        self.flush(None)
        if self._outbuf or self._ring:
            raise self.last_error or OSError(errno.EIO, "audit drain incomplete")
        if self._unsynced:
            self._sync()
        if not self._reopen_pending:
            os.rename(self.path, f"{self.path}.1")
            self._reopen_pending = True
        # Until the reopen succeeds, records keep going to the renamed file (PATH.1):
        # the chain stays continuous and the next step retries.
        new_fd = open_output_file(self.path, "audit file", read=True)
        self._reopen_pending = False
        os.close(self._fd)
        self._fd = new_fd
        self._size = 0
        self._write_direct(HEADER + b"\n")
        self._boot("rotation", self._prev)
        fsync_dir(self.path)

    def reopen(self) -> bool:
        """SIGHUP (logrotate ``postrotate``): when PATH no longer names the open file
        (renamed away or removed), drain what is queued into the old file, then
        start PATH afresh with the header and a ``rotation`` boot record that
        links the chain. True when a new file was started; open errors raise."""
        if self._fd < 0 or self._closed:
            return False
        try:
            st = os.stat(self.path, follow_symlinks=False)
            current = os.fstat(self._fd)
            if (st.st_dev, st.st_ino) == (current.st_dev, current.st_ino):
                return False
        except FileNotFoundError:
            pass
        self.flush(None)
        if self._unsynced:
            self._sync()
        new_fd = open_output_file(self.path, "audit file", read=True)
        os.close(self._fd)
        self._fd = new_fd
        self._size = os.fstat(new_fd).st_size
        self._rotate_stage = None
        self._reopen_pending = False
        self._write_direct((b"\n" if self._size else b"") + HEADER + b"\n")
        self._boot("rotation", self._prev)
        fsync_dir(self.path)
        return True

    def counters(self) -> dict[str, Union[int, dict[str, int]]]:
        """Prometheus family names (no ``varta_`` prefix / ``_total`` suffix) -> values."""
        return {
            "recovery_audit_dropped": self.dropped,
            "recovery_audit_dropped_by_reason": dict(self.dropped_by_reason),
            "recovery_audit_gap_records": self.gaps_written,
            "recovery_audit_flush_budget_exceeded": self.flush_budget_exceeded,
            "audit_fsync_budget_exceeded": self.fsync_budget_exceeded,
            "audit_rotation_budget_exceeded": self.rotation_budget_exceeded,
            "audit_ring_watermark": dict(self.watermark),
        }

    @property
    def next_seq(self) -> int:
        return self._seq

    @property
    def last_chain(self) -> str:
        """Hex chain of the last record formatted (written or about to be)."""
        return self._prev.hex()

    def close(self) -> None:
        """Drain everything, flush, fdatasync, close. Idempotent; raises the last
        I/O error if the drain could not complete."""
        if self._fd < 0:
            return
        try:
            self.flush(None)
            if self._outbuf or self._ring or self._gap_lost:
                # Never written: counted here, and left in the pending file so the next
                # start writes a gap record for them.
                lost = sum(1 for q in self._ring if not q.lost) + self._outbuf.count(b"\n")
                self.lost_at_close = lost
                self.dropped += lost
                self.dropped_by_reason["exit"] += lost
                err = self.last_error or OSError(errno.EIO, "audit drain incomplete")
                self._store_pending(self.unwritten, sync=True)
                raise err
            self._sync()
            self._store_pending(0, sync=True)
        finally:
            self._closed = True
            os.close(self._fd)
            self._fd = -1
            if self._pending_fd >= 0:
                os.close(self._pending_fd)
                self._pending_fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- verification ----------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`. ``ok`` False → ``bad_line`` (1-based) and ``reason``."""

    ok: bool
    records: int
    first_seq: Optional[int]
    last_seq: Optional[int]
    last_chain: Optional[bytes]
    boots: int = 0
    bad_line: Optional[int] = None
    reason: Optional[str] = None
    #: ``gap`` records: (lost count, first seq, last seq, reason) each.
    gaps: tuple[tuple[int, int, int, str], ...] = ()

    @property
    def lost(self) -> int:
        """Records the log says were lost (the sum over its ``gap`` records)."""
        return sum(g[0] for g in self.gaps)

    def warning(self) -> Optional[str]:
        if not self.gaps:
            return None
        runs = ", ".join(f"seq {a}..{b} ({why})" for _, a, b, why in self.gaps)
        return f"WARNING: {self.lost} records lost in {len(self.gaps)} gaps: {runs}"

    def __str__(self) -> str:
        if not self.ok:
            return f"line {self.bad_line}: {self.reason}"
        if self.records == 0:
            return "OK: no records"
        chain = self.last_chain.hex() if self.last_chain else "-"
        text = (
            f"OK: {self.records} records, seq {self.first_seq}..{self.last_seq}, "
            f"{self.boots} boot, last chain {chain}"
        )
        warning = self.warning()
        return f"{text}; {warning}" if warning else text


def _iter_file_lines(path: PathLike) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from f


def verify(
    path: PathLike,
    previous_chain: Optional[bytes] = None,
    previous_seq: Optional[int] = None,
) -> VerifyResult:
    """Check one audit file: the v2 header, seq strictly increasing, every record's
    chain, and each ``resume`` record's ``prev_chain``. Lines before the (last
    section's) v2 header are legacy content and skipped; an unparseable line is
    accepted only right before a ``schema_drift`` boot record (the daemon's own
    repair). With *previous_chain*/*previous_seq* (from the previous, older
    generation) a leading ``rotation`` record is checked against them too.
    """
    records = 0
    boots = 0
    first_seq: Optional[int] = None
    last_seq: Optional[int] = previous_seq
    prev = ZERO_CHAIN
    in_v2 = False
    section_start = False
    garbage_line: Optional[int] = None
    lineno = 0

    gaps: list[tuple[int, int, int, str]] = []

    def bad(n: int, why: str) -> VerifyResult:
        return VerifyResult(False, records, first_seq, last_seq, prev, boots, n, why, tuple(gaps))

    for raw in _iter_file_lines(path):
        lineno += 1
        if not raw.endswith(b"\n"):
            return bad(lineno, "torn last line (no newline)")
        line = raw[:-1]
        if line == HEADER:
            if garbage_line is not None:
                return bad(garbage_line, "unparseable record")
            # A new section: the chain restarts; seq restarts too unless this is the
            # file's first section continuing an older generation.
            last_seq = previous_seq if not in_v2 and records == 0 else None
            in_v2 = True
            section_start = True
            prev = ZERO_CHAIN
            continue
        if not in_v2:
            continue
        rec = parse_record(line)
        if rec is None:
            if garbage_line is None:
                garbage_line = lineno
            continue
        if garbage_line is not None:
            if rec.boot_reason != b"schema_drift":
                return bad(garbage_line, "unparseable record")
            garbage_line = None
        if rec.seq == 0:
            return bad(lineno, "seq 0 (seq starts at 1)")
        if last_seq is not None and rec.seq <= last_seq:
            return bad(lineno, f"seq {rec.seq} does not increase (previous {last_seq})")
        if rec.kind == b"gap":
            lost, first, last = (int(f) for f in rec.fields[4:7])
            if rec.seq != last + 1 or (last_seq is not None and first <= last_seq):
                return bad(lineno, f"gap record seq {rec.seq} does not follow its range")
            gaps.append((lost, first, last, rec.fields[7].decode()))
        link = prev
        if rec.kind == b"boot":
            boots += 1
            reason = rec.fields[6]
            col = rec.prev_chain
            if reason in (b"resume", b"rotation"):
                if col is None:
                    return bad(lineno, f"{reason.decode()} boot record without prev_chain")
                if reason == b"rotation" and section_start:
                    if previous_chain is not None and col != previous_chain:
                        return bad(
                            lineno, "rotation prev_chain does not match the previous file's chain"
                        )
                elif col != prev:
                    return bad(
                        lineno,
                        f"{reason.decode()} prev_chain does not match the previous record's chain",
                    )
                link = col
            elif col is not None:
                return bad(lineno, f"{reason!r} boot record must have prev_chain '-'")
        if chain_of(rec.kind, link, rec.prefix) != rec.chain:
            return bad(lineno, f"chain mismatch (seq {rec.seq})")
        prev = rec.chain
        last_seq = rec.seq
        if first_seq is None:
            first_seq = rec.seq
        records += 1
        section_start = False
    if garbage_line is not None:
        return bad(garbage_line, "unparseable record")
    if not in_v2:
        return bad(1, "no '# varta-watch recovery audit v2' header")
    return VerifyResult(True, records, first_seq, last_seq, prev, boots, gaps=tuple(gaps))


def verify_generations(paths: Sequence[PathLike]) -> tuple[int, VerifyResult]:
    """Verify files oldest first (``log.2 log.1 log``), linking each file's leading
    ``rotation`` record to the previous file's last chain and seq. Returns the index
    of the file the result belongs to (the first failing one, else the last)."""
    chain: Optional[bytes] = None
    seq: Optional[int] = None
    result = VerifyResult(True, 0, None, None, None)
    gaps: list[tuple[int, int, int, str]] = []
    for i, p in enumerate(paths):
        result = verify(p, chain, seq)
        gaps += result.gaps
        if not result.ok:
            return i, result
        chain, seq = result.last_chain, result.last_seq
    return len(paths) - 1, replace(result, gaps=tuple(gaps))


AUDIT_USAGE = """usage: python -m varta audit verify [--strict] FILE [FILE ...]

Verify recovery audit logs (schema v2): header, seq order and the SHA-256 chain.
Several files are checked as consecutive generations, oldest first
(e.g. audit.log.2 audit.log.1 audit.log).
Gap records (records the daemon could not write: full disk, I/O error,
unclean stop) are reported as a warning; --strict makes them an error.
Exit status: 0 intact (gaps only warned about), 1 first bad line reported,
2 usage or read error, 3 intact but records lost in gaps under --strict.
"""


def cli_main(argv: Sequence[str]) -> int:
    """``python -m varta audit verify FILE…``."""
    args = list(argv)
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(AUDIT_USAGE)
        return 0
    strict = len(args) > 1 and args[1] == "--strict"
    files = args[2:] if strict else args[1:]
    if not files or args[0] != "verify" or any(a.startswith("-") for a in files):
        sys.stderr.write(AUDIT_USAGE)
        return 2
    try:
        index, result = verify_generations(files)
    except OSError as exc:
        sys.stderr.write(f"varta audit: {exc.filename or ''}: {exc.strerror or exc}\n")
        return 2
    if not result.ok:
        sys.stdout.write(f"{files[index]}: {result}\n")
        return 1
    label = files[0] if len(files) == 1 else f"{len(files)} files"
    sys.stdout.write(f"{label}: {result}\n")
    warning = result.warning()
    if warning:
        sys.stderr.write(f"varta audit: {label}: {warning}\n")
        if strict:
            return 3
    return 0
