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
import os
import time
from collections import deque

from .._record import record
from .audit_format import (  # noqa: F401  (re-exported: the audit API)
    DRAIN_BUDGET_MS,
    DROP_REASONS,
    FIELD_COUNTS,
    FSYNC_BUCKETS,
    GENERATIONS,
    HEADER,
    KINDS,
    LEGACY_HEADER,
    PENDING_MAGIC,
    PENDING_SIZE,
    RING_CAPACITY,
    VERDICTS,
    WATERMARK_CRITICAL,
    WATERMARK_WARN,
    ZERO_CHAIN,
    Histogram,
    Record,
    _complete_columns,
    _forensics_columns,
    _identity_columns,
    _is_uint,
    _last_lf,
    _leading_uint,
    _lines_backward,
    _num,
    _spawn_columns,
    _text,
    _verdict_columns,
    _wallclock_ms,
    chain_of,
    parse_record,
    pending_path,
)
from .secretfile import check_output_stat, fsync_dir, open_output_file

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Callable, Optional, Union

    from .secretfile import PathLike

# --- the writer ------------------------------------------------------------------------


@record
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
        columns = _spawn_columns(observer_ns, agent_pid, child_pid, program, source, template_len)
        return self._enqueue(b"spawn", columns)

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
        body = _complete_columns(
            observer_ns,
            agent_pid,
            child_pid,
            status,
            exit_code,
            signal,
            duration_ns,
            stdout_len,
            stderr_len,
            truncated,
        )
        return self._enqueue(b"complete", body)

    def verdict(self, observer_ns: int, agent_pid: int, verdict: str) -> bool:
        """Why *agent_pid* stalled, written before recovery's decision for it."""
        return self._enqueue(b"verdict", _verdict_columns(observer_ns, agent_pid, verdict))

    def forensics(self, observer_ns: int, agent_pid: int, path: str, sha256: str) -> bool:
        """A hang capture of *agent_pid* (``docs/finding-hangs.md#the-daemon``):
        its file and the file's SHA-256, written before recovery's decision."""
        columns = _forensics_columns(observer_ns, agent_pid, path, sha256)
        return self._enqueue(b"forensics", columns)

    def identity(
        self,
        observer_ns: int,
        agent_pid: int,
        peer: Optional[str],
        comm: Optional[str],
        unit: Optional[str],
        container: Optional[str],
        cmdline: Optional[str],
    ) -> bool:
        """Who *agent_pid* is (docs/observer.md#agent-identity), written with
        its ``verdict`` record before the ``spawn`` record; ``-`` = unknown."""
        columns = _identity_columns(observer_ns, agent_pid, peer, comm, unit, container, cmdline)
        return self._enqueue(b"identity", columns)

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
        columns = _spawn_columns(observer_ns, agent_pid, child_pid, program, source, template_len)
        body = b"\t".join([_num(self._wall()), *columns])
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


# The verifier lives in its own module, loaded on first use (the daemon never
# verifies: docs/operations.md#resources); its entry points stay importable here.
_VERIFIER = frozenset({"VerifyResult", "cli_main", "verify", "verify_generations"})

if TYPE_CHECKING:
    from .audit_verify import VerifyResult, cli_main, verify, verify_generations  # noqa: F401


def __getattr__(name: str) -> object:
    if name in _VERIFIER:
        from . import audit_verify

        return getattr(audit_verify, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
