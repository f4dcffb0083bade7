"""The recovery audit log's verifier (``docs/observer.md#audit-log``):
``python -m varta audit verify [--strict] FILE [FILE…]``."""

from __future__ import annotations

import sys

from .._record import record, replace
from ..cli import usage_error
from .audit_format import (
    HEADER,
    ZERO_CHAIN,
    chain_of,
    parse_record,
)

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Iterator, Optional, Sequence

    from .secretfile import PathLike

# --- verification ----------------------------------------------------------------------


@record(frozen=True)
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
    prog = "python -m varta audit"
    if not args or args[0] != "verify":
        what = f"unknown subcommand {args[0]!r}" if args else "missing subcommand"
        return usage_error(prog, f"{what}: expected 'verify'")
    flags = [a for a in files if a.startswith("-")]
    if flags:
        return usage_error(prog, f"unknown option {flags[0]!r}")
    if not files:
        return usage_error(prog, "verify needs at least one FILE")
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
