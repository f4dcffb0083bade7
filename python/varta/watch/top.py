"""``varta top`` and ``varta agents``: the live view from a terminal
(``docs/live-view.md#varta-top``).

Both read a running daemon's ``GET /agents`` (``--url``, the ``--prom-addr``
listener; ``--token-file`` when it has a ``--prom-token-file``). ``top``
redraws in place with ANSI escapes on a terminal (no curses) and prints plain
tables when stdout is not one; ``agents`` prints one table, or with
``--json`` the ``/agents`` document itself, for scripts.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import IO, Any, Optional

from ..cli import argument_parser
from .agents import STATUSES
from .metrics_server import parse_hex32
from .secretfile import read_secret_file

#: Runtime failures (daemon unreachable, refused token): exit 1, one line.
EXIT_RUNTIME = 1


class FetchError(Exception):
    """A one-line reason the ``/agents`` fetch failed."""


def agents_url(base: str) -> str:
    """``--url`` → the ``/agents`` URL: ``IP:PORT`` or ``http(s)://host:port[/]``;
    a path other than ``/`` or ``/agents`` is refused (ValueError)."""
    text = base.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{base!r} is not an http(s) URL or IP:PORT")
    if parts.path not in ("", "/", "/agents") or parts.query or parts.fragment:
        raise ValueError(f"{base!r}: give the listener's address, without a path")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ValueError(f"{base!r}: {exc}") from None
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/agents", "", ""))


def read_token_file(path: str) -> bytes:
    """The 32-byte token of a ``--prom-token-file`` (same file rules as the daemon's)."""
    return parse_hex32(read_secret_file(path, "token file", max_bytes=4096))


def fetch(
    url: str,
    token: Optional[bytes],
    *,
    limit: Optional[int] = None,
    status: Optional[str] = None,
    unit: Optional[str] = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """One ``GET /agents``; raises :class:`FetchError` with a one-line reason."""
    query = {
        k: v
        for k, v in (("limit", None if limit is None else str(limit)), ("status", status))
        if v is not None
    }
    if unit is not None:
        query["unit"] = unit
    full = url + ("?" + urllib.parse.urlencode(query) if query else "")
    req = urllib.request.Request(full, headers={"Accept": "application/json"})
    if token is not None:
        req.add_header("Authorization", "Bearer " + token.hex())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            why = "the token was refused" if token is not None else "give it with --token-file"
            raise FetchError(f"{url}: 401 Unauthorized ({why})") from None
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise FetchError(f"cannot reach {url}: {reason}") from None
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise FetchError(f"{url}: not an /agents document ({exc})") from None
    if not isinstance(doc, dict) or "observer" not in doc or "agents" not in doc:
        raise FetchError(f"{url}: not an /agents document")
    return doc


# --- formatting ---------------------------------------------------------------------------

_COLOUR = {
    "hung": "\x1b[1;31m",
    "crashed": "\x1b[1;31m",
    "vanished": "\x1b[1;31m",
    "unknown": "\x1b[33m",
    "critical": "\x1b[33m",
    "degraded": "\x1b[33m",
    "ok": "\x1b[32m",
    "exited": "\x1b[2m",
}
_RESET = "\x1b[0m"

COLUMNS = (
    ("STATUS", 8),
    ("PID", 8),
    ("UNIT", 20),
    ("COMM", 15),
    ("LAST", 8),
    ("BEATS", 9),
    ("STALLS", 6),
    ("RECOV", 5),
    ("ORIGIN", 15),
)


def _age(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def header_line(doc: dict[str, Any]) -> str:
    o = doc["observer"]
    counts = ", ".join(f"{st} {n}" for st, n in o.get("by_status", {}).items() if n)
    stamp = time.strftime("%H:%M:%S", time.localtime(o.get("generated_unix", 0)))
    return (
        f"{o.get('hostname')} · varta {o.get('version')} · threshold {o.get('threshold_ms')} ms"
        f" · {o.get('agents_total')} agents" + (f": {counts}" if counts else "") + f" · {stamp}"
    )


def table_lines(doc: dict[str, Any], width: int, colour: bool = False) -> list[str]:
    """The header, column titles and one line per listed agent (as sorted by the daemon)."""
    lines = [_fit(header_line(doc), width)]
    titles = " ".join(f"{t:>{w}}" if t in ("PID", "BEATS", "STALLS", "RECOV", "LAST") else
                      f"{t:<{w}}" for t, w in COLUMNS)  # fmt: skip
    lines.append(_fit(titles + " COMMAND", width))
    for a in doc["agents"]:
        st = str(a.get("status"))
        cells = [
            f"{st:<8}",
            f"{a.get('pid'):>8}",
            f"{_fit(a.get('unit') or '-', 20):<20}",
            f"{_fit(a.get('comm') or '-', 15):<15}",
            f"{_age(float(a.get('since_last_beat_s', 0))):>8}",
            f"{a.get('beats'):>9}",
            f"{a.get('stalls'):>6}",
            f"{a.get('recoveries'):>5}",
            f"{_fit(str(a.get('origin')), 15):<15}",
        ]
        line = _fit(" ".join(cells) + " " + (a.get("cmdline") or "-"), width)
        if colour and st in _COLOUR:
            line = _COLOUR[st] + line[:8] + _RESET + line[8:]
        lines.append(line)
    o = doc["observer"]
    if o.get("truncated"):
        lines.append(f"… {o.get('agents_listed')} of {o.get('agents_matched')} shown")
    return lines


# --- commands -------------------------------------------------------------------------


def _common_args(prog: str, description: str) -> Any:
    ap = argument_parser(prog, description)
    ap.add_argument(
        "--url",
        required=True,
        help="the daemon's --prom-addr listener: IP:PORT or http://HOST:PORT",
    )
    ap.add_argument("--token-file", help="the daemon's --prom-token-file (64 hex digits, 0600)")
    ap.add_argument(
        "--status",
        help=f"only these statuses, comma-separated ({', '.join(STATUSES)})",
    )
    ap.add_argument("--unit", help="only agents of this systemd unit")
    return ap


def _setup(prog: str, args: Any) -> tuple[str, Optional[bytes]]:
    """Validated URL and token; raises SystemExit(2) naming the flag."""
    from ..cli import usage_error

    try:
        url = agents_url(args.url)
    except ValueError as exc:
        raise SystemExit(usage_error(prog, f"--url: {exc}")) from None
    if args.status is not None:
        bad = [s for s in args.status.split(",") if s not in STATUSES]
        if bad or not args.status:
            raise SystemExit(
                usage_error(prog, f"--status: {args.status!r}: choose from {', '.join(STATUSES)}")
            )
    token = None
    if args.token_file is not None:
        try:
            token = read_token_file(args.token_file)
        except PermissionError as exc:  # the secret-file rules name the path
            raise SystemExit(usage_error(prog, f"--token-file: {exc}")) from None
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise SystemExit(usage_error(prog, f"--token-file {args.token_file}: {why}")) from None
        except ValueError as exc:
            raise SystemExit(usage_error(prog, f"--token-file {args.token_file}: {exc}")) from None
    return url, token


def _positive(prog: str, flag: str, text: str) -> float:
    from ..cli import usage_error

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise SystemExit(usage_error(prog, f"{flag}: {text!r} is not a positive number"))
    return value


def agents_main(argv: Sequence[str]) -> int:
    prog = "varta agents"
    ap = _common_args(prog, "List the agents a running varta-watch tracks (GET /agents).")
    ap.add_argument("--json", action="store_true", help="print the /agents JSON document")
    ap.add_argument("--limit", type=int, help="at most N agents, worst first")
    args = ap.parse_args(list(argv))
    url, token = _setup(prog, args)
    if args.limit is not None and args.limit < 0:
        from ..cli import usage_error

        return usage_error(prog, f"--limit: {args.limit} is negative")
    try:
        doc = fetch(url, token, limit=args.limit, status=args.status, unit=args.unit)
    except FetchError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return EXIT_RUNTIME
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        width = shutil.get_terminal_size((200, 24)).columns if sys.stdout.isatty() else 10_000
        sys.stdout.write("\n".join(table_lines(doc, width)) + "\n")
    return 0


def top_main(argv: Sequence[str], out: Optional[IO[str]] = None) -> int:
    prog = "varta top"
    ap = _common_args(prog, "Live view of a running varta-watch's agents, worst first.")
    ap.add_argument("--interval", default="2", help="seconds between refreshes (default 2)")
    ap.add_argument("--once", action="store_true", help="print one table and exit")
    args = ap.parse_args(list(argv))
    url, token = _setup(prog, args)
    interval = _positive(prog, "--interval", args.interval)
    out = sys.stdout if out is None else out
    tty = out.isatty()
    if args.once or not tty:
        return _plain(prog, out, url, token, args, interval)
    return _live(prog, out, url, token, args, interval)


def _plain(
    prog: str, out: IO[str], url: str, token: Optional[bytes], args: Any, interval: float
) -> int:
    """Not a terminal (or ``--once``): one plain table per refresh, blank-line separated."""
    first = True
    while True:
        try:
            doc = fetch(url, token, status=args.status, unit=args.unit)
        except FetchError as exc:
            sys.stderr.write(f"{prog}: {exc}\n")
            if args.once:
                return EXIT_RUNTIME
        else:
            out.write(("" if first else "\n") + "\n".join(table_lines(doc, 10_000)) + "\n")
            out.flush()
            first = False
            if args.once:
                return 0
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return 0


def _live(
    prog: str, out: IO[str], url: str, token: Optional[bytes], args: Any, interval: float
) -> int:
    """Redraw in place on the alternate screen until Ctrl-C; errors show on screen."""
    out.write("\x1b[?1049h\x1b[?25l")
    try:
        while True:
            size = shutil.get_terminal_size()
            rows = max(1, size.lines - 4)
            try:
                doc = fetch(url, token, limit=rows, status=args.status, unit=args.unit)
                lines = table_lines(doc, size.columns, colour=True)
            except FetchError as exc:
                lines = [f"{prog}: {exc}", f"(retrying every {interval:g} s; Ctrl-C quits)"]
            out.write("\x1b[H" + "".join(line + "\x1b[K\n" for line in lines) + "\x1b[J")
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    finally:
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()
