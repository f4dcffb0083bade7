"""Hang captures (``docs/finding-hangs.md``): ``python -m varta forensics
show FILE`` prints one the way a person reads it — each Python thread with
its stuck frame first, named by its kernel thread id where the SDK said so,
then what ``/proc`` saw of every thread, then the asyncio tasks.

The capture itself is written by the observer (``--forensics-dir``); this
module only reads it.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any, Optional, Sequence

from ._record import field, record
from .cli import usage_error

FORMAT = "varta-forensics-capture/1"

USAGE = """usage: python -m varta forensics show FILE

Print a hang capture (a file --forensics-dir wrote) for a person to read.
"""

_THREAD = re.compile(r"^(Current thread|Thread) (0x[0-9a-f]+) \(most recent call first\):$")
_FRAME = re.compile(r'^  File "(.*)", line (\d+) in (.*)$')
_NAME = re.compile(r"^thread (0x[0-9a-f]+) native_id=(\d+|None) name=(.*)$")
#: The SDK's own helper thread (it answers the signal; not what hung).
HELPER_NAME = "varta-forensics"


@record
class PyThread:
    ident: str
    current: bool
    frames: list[tuple[str, int, str]] = field(default_factory=list)
    tid: Optional[int] = None
    name: Optional[str] = None

    @property
    def is_helper(self) -> bool:
        return self.name == HELPER_NAME or any(
            f[0].endswith("varta/_forensics.py") for f in self.frames[:1]
        )


def parse_traceback(text: str, names: str = "") -> list[PyThread]:
    """faulthandler's dump → threads (frames innermost first, as it wrote
    them); ``names`` (the SDK helper's ``thread 0x… native_id=… name=…``
    lines) adds each thread's tid and name."""
    by_ident: dict[int, tuple[Optional[int], str]] = {}
    for line in names.splitlines():
        m = _NAME.match(line)
        if m:
            tid = int(m.group(2)) if m.group(2).isdigit() else None
            name = m.group(3).strip("'\"")
            by_ident[int(m.group(1), 16)] = (tid, name)
    threads: list[PyThread] = []
    for line in text.splitlines():
        m = _THREAD.match(line)
        if m:
            t = PyThread(m.group(2), m.group(1) == "Current thread")
            t.tid, t.name = by_ident.get(int(m.group(2), 16), (None, None))
            threads.append(t)
            continue
        f = _FRAME.match(line)
        if f and threads:
            threads[-1].frames.append((f.group(1), int(f.group(2)), f.group(3)))
    # What hung first, the SDK's helper last.
    return sorted(threads, key=lambda t: t.is_helper)


def load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not a varta hang capture (format {FORMAT!r} expected)")
    return doc


def render(doc: dict[str, Any]) -> str:
    out: list[str] = []
    when = time.strftime(
        "%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(doc.get("captured_unix_ns", 0)) / 1e9)
    )
    comm = f" ({doc['comm']})" if doc.get("comm") else ""
    out.append(
        f"pid {doc.get('pid')}{comm} {doc.get('verdict')}: silent "
        f"{int(doc.get('silent_ns', 0)) // 1_000_000} ms; captured {when} "
        f"by {doc.get('method')} in {int(doc.get('capture_ns', 0)) / 1e6:.1f} ms"
    )
    if doc.get("truncated"):
        out.append("(truncated to the size bound)")
    if doc.get("sdk_note"):
        out.append(f"note: {doc['sdk_note']}")
    threads = doc.get("threads") or []
    by_tid = {t.get("tid"): t for t in threads if isinstance(t, dict)}
    tb = doc.get("python_traceback")
    if tb:
        out.append("")
        out.append("Python threads (stuck frame first):")
        for t in parse_traceback(tb, doc.get("python_threads") or ""):
            label = f"thread {t.ident}"
            if t.tid is not None:
                label += f" tid {t.tid}"
            if t.name:
                label += f" {t.name!r}"
            if t.is_helper:
                label += " (varta's helper: it took the signal)"
            k = by_tid.get(t.tid)
            if k:
                label += f" [{_kernel_brief(k)}]"
            out.append(f"  {label}")
            if not t.frames:
                out.append("    (no Python frames)")
            for i, (file, line, func) in enumerate(t.frames):
                mark = "->" if i == 0 else "  "
                out.append(f"  {mark} {func} ({file}:{line})")
    if threads:
        out.append("")
        out.append("Kernel view (/proc/PID/task):")
        for t in threads:
            out.append(f"  tid {t.get('tid')} {t.get('comm', '')!r}: {_kernel_brief(t)}")
            for frame in (t.get("stack") or [])[:6]:
                out.append(f"      {frame}")
    tasks = doc.get("asyncio_tasks")
    if tasks:
        out.append("")
        out.append("asyncio tasks:")
        out.extend(f"  {line}" for line in str(tasks).rstrip("\n").splitlines())
    return "\n".join(out) + "\n"


def _kernel_brief(t: dict[str, Any]) -> str:
    parts = [f"state {t.get('state') or '?'}"]
    if t.get("syscall"):
        parts.append(f"in {t['syscall']}")
    if t.get("wchan"):
        parts.append(f"wchan {t['wchan']}")
    return ", ".join(parts)


def cli_main(argv: Sequence[str]) -> int:
    """``python -m varta forensics show FILE``."""
    args = list(argv)
    prog = "python -m varta forensics"
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    if not args or args[0] != "show":
        what = f"unknown subcommand {args[0]!r}" if args else "missing subcommand"
        return usage_error(prog, f"{what}: expected 'show'")
    if len(args) != 2 or args[1].startswith("-"):
        return usage_error(prog, "show needs exactly one FILE")
    path = args[1]
    try:
        doc = load(path)
    except OSError as exc:
        return usage_error(prog, f"{path}: {exc.strerror or exc}")
    except ValueError as exc:
        return usage_error(prog, f"{path}: {str(exc).splitlines()[0]}")
    sys.stdout.write(render(doc))
    return 0
