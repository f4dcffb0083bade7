"""TSV event file (``--export-file``, ``docs/observer.md#event-file``).

Six TAB-separated columns per row, no header, decimal numbers::

    observer_ns  kind  pid  nonce  status  payload

===========  ===========  ==========  ===================  ============================
kind         pid          nonce       status               payload
===========  ===========  ==========  ===================  ============================
beat         pid          nonce       ok/degraded/critical payload
stall        pid          last_nonce  stall                ``-``
decode       ``-``        ``-``       ``-``                DecodeError debug form
io / ctrunc  ``-``        ``-``       ``-``                error text
mismatch     claimed pid  ``-``       ``-``                auth_failure / origin_conflict
                                                           / namespace_conflict
eviction     pid          ``-``       ``-``                ``-``
verdict      pid          ``-``       hung/exited/…        cause (``clean_exit``, ``SIGTERM``,
                                                           ``crash``) or ``-``
forensics    pid          ``-``       capture's SHA-256    capture file path
identity     pid          ``-``       sender address or    ``comm=… unit=… container=…
                                      ``-``                cmdline=…`` (known ones;
                                                           ``cmdline`` last, to the end)
===========  ===========  ==========  ===================  ============================

Every ``stall`` row is followed by one ``verdict`` row for the same pid
(``docs/verdicts.md``), a ``hung`` one with a hang capture by one
``forensics`` row (``docs/finding-hangs.md#the-daemon``), then, when anything
is known of who the agent is, an ``identity`` row
(``docs/observer.md#agent-identity``): upstream's six
columns and its ``stall`` rows stay byte for byte as they were, and a
consumer that skips kinds it does not know reads the file as before.

Rows are buffered and written on :meth:`TsvExporter.flush` (and whenever the
buffer grows past 64 KiB); ``sync_every`` > 0 adds an ``fdatasync`` every N
rows. When a written row brings the file to ``max_bytes`` the file rotates
PATH → PATH.1 … PATH.5 (parent directory fsynced). Write errors never raise
from the row methods: they are counted (:attr:`TsvExporter.io_errors`), kept
for :meth:`TsvExporter.take_error`, and the rows are retried later (up to a
1 MiB backlog, beyond which rows are dropped and counted).

Every row in the file is whole or absent:

* on open (startup and :meth:`TsvExporter.reopen`) a last line without its
  LF (a crash or a short write on a full disk leaves one) is cut off before
  anything is appended; counted in :attr:`TsvExporter.torn_tails` and
  :attr:`TsvExporter.torn_bytes`;
* a write that fails after writing part of a row (ENOSPC after a short
  write) truncates the file back to the last whole row and keeps the row
  queued for the retry; if even that truncate fails, the rest of the row
  follows on the retry (still whole) or the next open cuts it;
* rows never written (backlog full, or still queued at :meth:`close`) are
  dropped whole and counted in :attr:`TsvExporter.dropped_rows`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping

import varta

from .identity import identity_fields
from .secretfile import fsync_dir, open_output_file

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    from .secretfile import PathLike

GENERATIONS = 5
#: The column names, the first line of every new file with ``--export-file-header``
#: (off by default: upstream's files have no header row).
HEADER_ROW = b"observer_ns\tkind\tpid\tnonce\tstatus\tpayload\n"
#: Buffered bytes that trigger a write without waiting for :meth:`flush`.
WRITE_THRESHOLD = 65536
#: Unwritten backlog kept while the file is failing; rows beyond it are dropped.
MAX_BACKLOG = 1 << 20

_STATUS_NAMES = {0: "ok", 1: "degraded", 2: "critical", 3: "stall"}
MISMATCH_KINDS = ("auth_failure", "origin_conflict", "namespace_conflict")


def _text(value: object) -> str:
    """Free text in one column: TAB/CR/LF → space; empty → ``-``."""
    s = str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return s or "-"


def _status_name(status: object) -> str:
    name = getattr(status, "name", None)
    if isinstance(name, str):
        return name.lower()
    code = int(status)  # type: ignore[call-overload]
    try:
        return _STATUS_NAMES[code]
    except KeyError:
        raise ValueError(f"status {code} is outside 0..=3") from None


def decode_payload(error: object) -> str:
    """The DecodeError debug form (``BadCrc { expected: 1, actual: 2 }``)."""
    debug = getattr(error, "debug_form", None)
    if callable(debug):
        return _text(debug())
    kind = getattr(error, "kind", None)
    return _text(kind if isinstance(kind, str) else error)


class TsvExporter:
    """Appends docs/observer.md#event-file rows to *path* (created 0600; an existing file
    must be a regular file owned by us with one hard link and not a symlink)."""

    def __init__(
        self,
        path: PathLike,
        max_bytes: Optional[int] = None,
        sync_every: int = 0,
        header: bool = False,
    ) -> None:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("export max_bytes must be positive")
        if sync_every < 0:
            raise ValueError("export sync_every must be >= 0")
        self.path = os.fsdecode(path)
        self.max_bytes = max_bytes
        self.sync_every = sync_every
        #: Start every new (empty) file with :data:`HEADER_ROW` (``--export-file-header``).
        self.header = header
        self.torn_tails = 0
        self.torn_bytes = 0
        #: ``(bytes cut, offset)`` of the last torn-tail cut (see :meth:`take_torn`).
        self.last_torn: Optional[tuple[int, int]] = None
        #: Partial rows cut back after a failed write.
        self.short_write_truncations = 0
        #: Rows still queued when :meth:`close` gave up (also in ``dropped_rows``).
        self.lost_at_close = 0
        self._fd: int = -1
        self._size = 0
        self._open()
        self._buf = bytearray()
        self._unsynced_rows = 0
        self._rotate_pending = False
        self._reopen_pending = False
        self._closed = False
        self.rows = 0
        self.dropped_rows = 0
        self.rotations = 0
        self.io_errors = 0
        self.last_error: Optional[OSError] = None

    def _open(self) -> None:
        """Open PATH (0600) and cut a torn last line; sets ``_fd`` and ``_size``."""
        fd = open_output_file(self.path, "export file", read=True)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                cut = _last_lf(fd, size)
                os.ftruncate(fd, cut)
                self.torn_tails += 1
                self.torn_bytes += size - cut
                self.last_torn = (size - cut, cut)
                size = cut
            if size == 0:
                size = self._start(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._size = size

    def _start(self, fd: int) -> int:
        """A new, empty file: its header row if asked for; returns its size."""
        if not self.header:
            return 0
        done = 0
        while done < len(HEADER_ROW):
            done += os.pwrite(fd, HEADER_ROW[done:], done)
        return done

    def take_torn(self) -> Optional[tuple[int, int]]:
        """The last torn-tail repair since the last call (bytes cut, offset)."""
        torn, self.last_torn = self.last_torn, None
        return torn

    def reopen(self) -> None:
        """SIGHUP (logrotate ``postrotate``): write what is queued to the current
        descriptor, then open PATH afresh (a new file if it was renamed away).
        Raises on an open error (the old descriptor is kept then)."""
        if self._closed:
            raise ValueError("export file is closed")
        self.flush()
        old = self._fd
        self._open()
        self._rotate_pending = False
        self._reopen_pending = False
        if old >= 0:
            try:
                os.fdatasync(old)
            except OSError:
                pass
            os.close(old)

    # --- row kinds (plain values) -------------------------------------------------

    def beat(self, observer_ns: int, pid: int, nonce: int, status: object, payload: int) -> None:
        self._row(
            observer_ns,
            "beat",
            str(int(pid)),
            str(int(nonce)),
            _status_name(status),
            str(int(payload)),
        )

    def stall(self, observer_ns: int, pid: int, last_nonce: int) -> None:
        self._row(observer_ns, "stall", str(int(pid)), str(int(last_nonce)), "stall", "-")

    def verdict(self, observer_ns: int, pid: int, verdict: str, cause: Optional[str]) -> None:
        self._row(observer_ns, "verdict", str(int(pid)), "-", _text(verdict), _text(cause or ""))

    def forensics(self, observer_ns: int, pid: int, sha256: str, path: str) -> None:
        self._row(observer_ns, "forensics", str(int(pid)), "-", _text(sha256), _text(path))

    def decode(self, observer_ns: int, error: object) -> None:
        self._row(observer_ns, "decode", "-", "-", "-", decode_payload(error))

    def io(self, observer_ns: int, error: object) -> None:
        self._row(observer_ns, "io", "-", "-", "-", _text(error))

    def ctrunc(self, observer_ns: int, error: object) -> None:
        self._row(observer_ns, "ctrunc", "-", "-", "-", _text(error))

    def mismatch(self, observer_ns: int, claimed_pid: int, what: str) -> None:
        if what not in MISMATCH_KINDS:
            raise ValueError(f"mismatch kind must be one of {MISMATCH_KINDS}, not {what!r}")
        self._row(observer_ns, "mismatch", str(int(claimed_pid)), "-", "-", what)

    def identity(self, observer_ns: int, pid: int, fields: Mapping[str, str]) -> None:
        """Who *pid* is: its sender (status column) and what the OS said
        (payload: ``key=value`` words, ``cmdline`` last, taking the rest)."""
        words = [
            f"{k}={fields[k]}" for k in ("comm", "unit", "container", "cmdline") if k in fields
        ]
        self._row(
            observer_ns,
            "identity",
            str(int(pid)),
            "-",
            _text(fields.get("peer", "")),
            _text(" ".join(words)),
        )

    def eviction(self, observer_ns: int, pid: int) -> None:
        self._row(observer_ns, "eviction", str(int(pid)), "-", "-", "-")

    # --- event objects ------------------------------------------------------------

    def event(self, ev: object) -> bool:
        """Write the row(s) for a ``varta`` event (dispatched on its type);
        False for anything that has no row (``Blind``, other objects)."""
        write = _ROW_WRITERS.get(type(ev))
        if write is None:
            return False
        write(self, ev)
        return True

    # --- buffering, rotation ------------------------------------------------------

    def _row(self, observer_ns: int, *cols: str) -> None:
        if self._closed:
            raise ValueError("export file is closed")
        line = f"{int(observer_ns)}\t{cols[0]}\t{cols[1]}\t{cols[2]}\t{cols[3]}\t{cols[4]}\n"
        data = line.encode("utf-8", "surrogateescape")
        if len(self._buf) + len(data) > MAX_BACKLOG:
            self.dropped_rows += 1
            return
        self._buf += data
        self.rows += 1
        self._unsynced_rows += 1
        # Rotation follows the write that reaches the limit, so write through then.
        if (
            len(self._buf) >= WRITE_THRESHOLD
            or (self.max_bytes is not None and self._size + len(self._buf) >= self.max_bytes)
            or (self.sync_every and self._unsynced_rows >= self.sync_every)
        ):
            self.flush()

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def flush(self) -> None:
        """Write buffered rows (rotating when the limit is reached; fdatasync per
        ``sync_every``). Errors are recorded, not raised; unwritten bytes stay queued."""
        try:
            if self._rotate_pending:
                self._rotate()
            while self._buf:
                self._write_prefix(self._next_cut())
                if self.max_bytes is not None and self._size >= self.max_bytes:
                    self._rotate_pending = True
                    self._rotate()
            if self.sync_every and self._unsynced_rows >= self.sync_every:
                os.fdatasync(self._fd)
                self._unsynced_rows = 0
        except OSError as exc:
            self.io_errors += 1
            self.last_error = exc

    def _next_cut(self) -> int:
        """End of the buffered rows to write now: all of them, or up to and including
        the row that brings the file to ``max_bytes``."""
        if self.max_bytes is None:
            return len(self._buf)
        room = self.max_bytes - self._size
        i = self._buf.find(b"\n", max(0, room - 1))
        return len(self._buf) if i < 0 else i + 1

    def _write_prefix(self, end: int) -> None:
        """Write ``_buf[:end]`` (whole rows). On an error after a short write,
        truncate back to the last whole row written and keep the rest queued."""
        start = self._size
        written = 0
        try:
            while written < end:
                written += os.write(self._fd, self._buf[written:end])
        except OSError:
            keep_from = self._buf.rfind(b"\n", 0, written) + 1
            if keep_from < written:
                try:
                    os.ftruncate(self._fd, start + keep_from)
                    self.short_write_truncations += 1
                except OSError:
                    keep_from = written  # the retry finishes the row in place
            del self._buf[:keep_from]
            self._size = start + keep_from
            raise
        del self._buf[:written]
        self._size = start + written

    def _rotate(self) -> None:
        """PATH.4→.5 … PATH→.1, reopen PATH (0600), fsync the directory.

        A failed reopen leaves the renames done and is retried by the next flush
        (rows keep queueing meanwhile, up to the backlog limit)."""
        if not self._reopen_pending:
            os.fdatasync(self._fd)
            for gen in range(GENERATIONS - 1, 0, -1):
                try:
                    os.rename(f"{self.path}.{gen}", f"{self.path}.{gen + 1}")
                except FileNotFoundError:
                    pass
            try:
                os.rename(self.path, f"{self.path}.1")
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._copy_out(f"{self.path}.1")
                os.ftruncate(self._fd, 0)
                self._size = self._start(self._fd)
                self._finish_rotation()
                return
            os.close(self._fd)
            self._fd = -1
            self._reopen_pending = True
        self._open()
        self._reopen_pending = False
        self._finish_rotation()

    def _finish_rotation(self) -> None:
        self._rotate_pending = False
        self._unsynced_rows = 0
        self.rotations += 1
        fsync_dir(self.path)

    def _copy_out(self, dest: str) -> None:
        """EXDEV fallback: copy the current file, read through our own descriptor."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(dest, flags, 0o600)
        try:
            offset = 0
            while True:
                chunk = os.pread(self._fd, 1 << 20, offset)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
                offset += len(chunk)
            os.fsync(out)
        finally:
            os.close(out)

    def counters(self) -> dict[str, int]:
        """Prometheus family names (no ``varta_`` prefix / ``_total`` suffix) -> values."""
        return {
            "export_rows_dropped": self.dropped_rows,
            "export_torn_tail_repaired": self.torn_tails,
            "export_io_errors": self.io_errors,
        }

    def take_error(self) -> Optional[OSError]:
        """The latest I/O error since the last call (for the loop's rate-limited log)."""
        exc, self.last_error = self.last_error, None
        return exc

    def close(self) -> None:
        """Flush, fdatasync, close (idempotent). Raises the flush error if rows
        could not be written."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        err = self.last_error if self._buf else None
        if self._buf:
            # Rows that will never be written: dropped whole, counted.
            self.lost_at_close = self._buf.count(b"\n")
            self.dropped_rows += self.lost_at_close
            self._buf.clear()
        if self._fd >= 0:
            try:
                os.fdatasync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1
        if err is not None:
            raise err

    def __enter__(self) -> TsvExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _last_lf(fd: int, end: int) -> int:
    """Offset just past the last LF in ``[0, end)``; 0 when there is none."""
    pos = end
    while pos > 0:
        n = min(65536, pos)
        pos -= n
        i = os.pread(fd, n, pos).rfind(b"\n")
        if i >= 0:
            return pos + i + 1
    return 0


# --- event type -> rows (one place: a new event type with a row adds one line) ---


def _beat(t: TsvExporter, ev: varta.Beat) -> None:
    t.beat(ev.observer_ns, ev.pid, ev.nonce, ev.status, ev.payload)


def _stall(t: TsvExporter, ev: varta.Stall) -> None:
    t.stall(ev.observer_ns, ev.pid, ev.last_nonce)
    t.verdict(ev.observer_ns, ev.pid, str(ev.verdict), ev.cause)
    if ev.forensics:
        t.forensics(ev.observer_ns, ev.pid, ev.forensics_sha256 or "-", ev.forensics)
    who = identity_fields(ev)
    if who:
        t.identity(ev.observer_ns, ev.pid, who)


def _decode(t: TsvExporter, ev: varta.Decode) -> None:
    t.decode(ev.observer_ns, ev.error)


def _io(t: TsvExporter, ev: varta.Io) -> None:
    t.io(ev.observer_ns, ev.error)


def _ctrunc(t: TsvExporter, ev: varta.CtrlTruncated) -> None:
    t.ctrunc(ev.observer_ns, ev.error)


def _auth(t: TsvExporter, ev: varta.AuthFailure) -> None:
    t.mismatch(ev.observer_ns, ev.claimed_pid, "auth_failure")


def _origin(t: TsvExporter, ev: varta.OriginConflict) -> None:
    t.mismatch(ev.observer_ns, ev.claimed_pid, "origin_conflict")


def _namespace(t: TsvExporter, ev: varta.NamespaceConflict) -> None:
    t.mismatch(ev.observer_ns, ev.claimed_pid, "namespace_conflict")


_ROW_WRITERS: dict[type, Callable[[TsvExporter, Any], None]] = {
    varta.Beat: _beat,
    varta.Stall: _stall,
    varta.Decode: _decode,
    varta.Io: _io,
    varta.CtrlTruncated: _ctrunc,
    varta.AuthFailure: _auth,
    varta.OriginConflict: _origin,
    varta.NamespaceConflict: _namespace,
}
