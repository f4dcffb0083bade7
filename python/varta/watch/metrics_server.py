"""The ``/metrics`` HTTP server of ``varta-watch`` (``docs/observer.md#metrics``).

One daemon thread: HTTP/1.0, ``Connection: close``, any path; a per-IP token
bucket; a request not complete at accept waits, non-blocking, in the thread's
selector (at most 64 such connections, each at most 2 s), so a slow or silent
client never holds up the others; ``GET`` only (405); the bearer token
compared in constant time (401); the body re-rendered at most once a second,
and sent gzip-compressed to a client that sends ``Accept-Encoding: gzip``
(Prometheus does; docs/observer.md#http-endpoint). The body itself comes from
:mod:`varta.watch.metrics`; it is rendered on this thread, never on the
observer's ingest thread, and the parts that scale with the agents run in
Rust with the GIL released (docs/observer.md#agent-rows). Extra paths
(:class:`Route`: ``/agents`` and the status page ``/``, docs/live-view.md)
answer on the same listener.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
import zlib
from collections import OrderedDict

from .._record import record
from .logsetup import RateLimiter
from .metrics import ServeStats

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Callable, Optional, Sequence


def _find_compare_digest() -> Callable[[bytes, bytes], bool]:
    """Constant-time comparison without hmac (which loads OpenSSL, ~4 MB of
    resident memory): CPython's own C implementation, the one hmac falls
    back on."""
    try:
        import _operator

        return _operator._compare_digest
    except (ImportError, AttributeError):  # pragma: no cover - other interpreters
        import hmac

        return hmac.compare_digest


_compare_digest = _find_compare_digest()

# --- HTTP server -----------------------------------------------------------------------

MAX_REQUEST = 4096
#: Accepted connections whose request is not complete yet, at most; beyond it
#: the oldest is closed unanswered, counted as ``pending_full``
#: (docs/observer.md#http-endpoint).
PENDING_MAX = 64
#: Time from accept to a complete request; later, the connection is closed
#: unanswered, counted as ``read_timeout`` (docs/observer.md#http-endpoint).
REQUEST_DEADLINE_S = 2.0
WRITE_DEADLINE_S = 0.050
SERVE_WINDOW_S = 0.100
SERVE_PER_PASS = 8
DRAIN_PER_PASS = 50
IP_TABLE_SIZE = 1024
IP_TTL_S = 60.0
IP_SWEEP_S = 10.0
CACHE_S = 1.0
INF = float("inf")

RESP_405 = (
    b"HTTP/1.0 405 Method Not Allowed\r\nAllow: GET\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)
RESP_401 = (
    b"HTTP/1.0 401 Unauthorized\r\n"
    b'WWW-Authenticate: Bearer realm="varta"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
)
RESP_400 = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
    b"Connection: close\r\n\r\nbad request\n"
)
CONTENT_TYPE = b"text/plain; version=0.0.4"
ROUTE_CACHE_ENTRIES = 16
#: zlib level of gzip bodies: level 1 already shrinks the repetitive text
#: format ~10x, at several times the speed of the default 6.
GZIP_LEVEL = 1

_HEX = frozenset(b"0123456789abcdefABCDEF")


def parse_hex32(text: bytes) -> bytes:
    """A ``--prom-token-file`` body: 64 hex chars (either case) after trimming
    whitespace → 32 bytes."""
    t = text.strip()
    if len(t) != 64 or not all(c in _HEX for c in t):
        raise ValueError("must be exactly 64 hex characters")
    return bytes.fromhex(t.decode("ascii"))


def bearer_from_request(request: bytes) -> Optional[bytes]:
    """The 32 token bytes from the first CRLF-terminated ``Authorization`` header.

    Value grammar: optional spaces/tabs, ``Bearer`` (any case), one space,
    optional spaces/tabs, 64 hex digits (either case), optional trailing
    spaces/tabs. Anything else → ``None``.
    """
    lines = request.split(b"\r\n")
    # lines[-1] is whatever followed the last CRLF: not CRLF-terminated.
    for line in lines[1:-1]:
        if not line:
            break  # end of the header block
        name, sep, value = line.partition(b":")
        if not sep or name.lower() != b"authorization":
            continue
        v = value.lstrip(b" \t").rstrip(b" \t")
        if len(v) < 7 or v[:6].lower() != b"bearer" or v[6:7] != b" ":
            return None
        hexpart = v[7:].lstrip(b" \t")
        if len(hexpart) != 64 or not all(c in _HEX for c in hexpart):
            return None
        return bytes.fromhex(hexpart.decode("ascii"))
    return None


def request_target(request: bytes) -> tuple[bytes, str]:
    """``(path, query)`` of a ``GET`` request line (``b""`` when unparseable)."""
    line = request.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) < 2:
        return b"", ""
    path, _, query = parts[1].partition(b"?")
    return path, query.decode("ascii", "replace")


@record(frozen=True)
class Route:
    """An extra path on the listener (docs/live-view.md#endpoints).

    *body* gets the query string and returns the body (``ValueError`` → 400);
    bodies are cached a second per path and query, like ``/metrics``.
    A *public* route is served without the bearer token: only for a static
    page that holds no data (a browser cannot send a token when it navigates).
    """

    content_type: bytes
    body: Callable[[str], bytes]
    public: bool = False
    headers: bytes = b""


def accepts_gzip(request: bytes) -> bool:
    """Whether the request's ``Accept-Encoding`` headers allow gzip (``gzip``
    or ``*`` without ``q=0``); an explicit ``gzip`` entry wins over ``*``."""
    lines = request.split(b"\r\n")
    verdict: Optional[bool] = None
    star: Optional[bool] = None
    for line in lines[1:-1]:
        if not line:
            break
        name, sep, value = line.partition(b":")
        if not sep or name.strip().lower() != b"accept-encoding":
            continue
        for item in value.split(b","):
            coding, _, params = item.partition(b";")
            coding = coding.strip().lower()
            q = 1.0
            for param in params.split(b";"):
                key, _, val = param.partition(b"=")
                if key.strip().lower() == b"q":
                    try:
                        q = float(val.strip())
                    except ValueError:
                        q = 0.0
            if coding in (b"gzip", b"x-gzip"):
                verdict = q > 0
            elif coding == b"*":
                star = q > 0
    return verdict if verdict is not None else bool(star)


def gzip_body(body: bytes) -> bytes:
    """A gzip member (RFC 1952) of *body*; zlib releases the GIL meanwhile."""
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(body) + c.flush()


def _header_end(buf: bytes, start: int) -> bool:
    """Whether the header block has ended (a blank line, CRLF or bare LF) at or
    after *start*."""
    return buf.find(b"\r\n\r\n", start) >= 0 or buf.find(b"\n\n", start) >= 0


@record
class _Pending:
    """An accepted connection whose request has not fully arrived yet."""

    conn: socket.socket
    deadline: float
    buf: bytes = b""


@record
class _Bucket:
    tokens: float
    stamp: float


class IpRateLimiter:
    """Per-source-IP token bucket (docs/observer.md#http-endpoint); disabled when rate or
    burst is 0."""

    def __init__(
        self,
        per_sec: int,
        burst: int,
        stats: ServeStats,
        clock: Callable[[], float] = time.monotonic,
        table_size: int = IP_TABLE_SIZE,
    ) -> None:
        self.per_sec = per_sec
        self.burst = burst
        self._stats = stats
        self._clock = clock
        self._size = table_size
        # ip -> bucket; order = least recently seen first
        self._table: OrderedDict[str, _Bucket] = OrderedDict()
        self._last_sweep = clock()

    @property
    def enabled(self) -> bool:
        return self.per_sec > 0 and self.burst > 0

    def admit(self, ip: str) -> bool:
        if not self.enabled:
            return True
        now = self._clock()
        if now - self._last_sweep >= IP_SWEEP_S:
            self._sweep(now)
        b = self._table.get(ip)
        if b is None:
            if len(self._table) >= self._size:
                self._table.popitem(last=False)
                self._stats.dropped["ip_table_full"] += 1
            self._table[ip] = _Bucket(self.burst - 1.0, now)
            return True
        self._table.move_to_end(ip)
        b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.per_sec)
        b.stamp = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return True
        return False

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        while self._table:
            ip, b = next(iter(self._table.items()))
            if now - b.stamp < IP_TTL_S:
                break
            del self._table[ip]


class MetricsServer:
    """``/metrics`` on a daemon thread. Bind in ``__init__`` (errors → startup failure)."""

    def __init__(
        self,
        host: str,
        port: int,
        body: Callable[[], bytes],
        stats: ServeStats,
        *,
        token: Optional[bytes] = None,
        rate_per_sec: int = 5,
        rate_burst: int = 10,
        scrape_budget_ms: int = 250,
        logs: Optional[RateLimiter] = None,
        on_serve: Optional[Callable[[Optional[float]], None]] = None,
        routes: Optional[dict[bytes, Route]] = None,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            self._sock.bind((host, port))
            self._sock.listen(128)
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        bound = self._sock.getsockname()
        self.address = (
            f"[{bound[0]}]:{bound[1]}" if family == socket.AF_INET6 else (f"{bound[0]}:{bound[1]}")
        )
        self._body = body
        self.stats = stats
        self._token = token
        self._limiter = IpRateLimiter(rate_per_sec, rate_burst, stats)
        self._scrape_budget_s = scrape_budget_ms / 1000.0
        self._logs = logs
        self._on_serve = on_serve
        self._routes = routes or {}
        self._route_cache: dict[tuple[bytes, str], tuple[float, bytes]] = {}
        # (rendered at, body, its gzip once a client asked for it)
        self._cache: Optional[tuple[float, bytes, Optional[bytes]]] = None
        self._render_s = 0.0  # body rendering time in the current serve pass
        # fd -> connection still waiting for its request; order = accept order,
        # which is deadline order (docs/observer.md#http-endpoint)
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._sel: Optional[selectors.BaseSelector] = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="varta-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()
        self._wake_r.close()
        self._wake_w.close()

    # --- thread ----------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Accepted connections still waiting for their request."""
        return len(self._pending)

    def _run(self) -> None:
        sel = self._sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                wake_at = self._drop_expired_bodies(now)
                if self._pending:
                    first = next(iter(self._pending.values()))
                    wake_at = min(wake_at, first.deadline)
                events = sel.select(None if wake_at == INF else max(0.0, wake_at - now))
                if self._stop.is_set():
                    break
                accept = False
                ready: list[_Pending] = []
                for key, _ in events:
                    if key.fileobj is self._sock:
                        accept = True
                    elif isinstance(key.data, _Pending):
                        ready.append(key.data)
                due = bool(self._pending) and (
                    next(iter(self._pending.values())).deadline <= time.monotonic()
                )
                if accept or ready or due:
                    self.serve_pending(ready, accept=accept)
        except Exception as exc:  # never take the daemon down from here
            if self._logs is not None:
                self._logs.log("prom_serve", logging.ERROR, f"metrics server stopped: {exc}")
        finally:
            for p in list(self._pending.values()):
                self._forget(p)
            self._sel = None
            sel.close()

    def _drop_expired_bodies(self, now: float) -> float:
        """Free cached bodies no longer servable (older than ``CACHE_S``) rather
        than hold them until the next scrape (~170 KB per 1,000 agents:
        docs/operations.md#resources); returns when the next one expires."""
        if self._cache is not None and now - self._cache[0] >= CACHE_S:
            self._cache = None
        for key in [k for k, (t, _) in self._route_cache.items() if now - t >= CACHE_S]:
            del self._route_cache[key]
        stamps = [t for t, _ in self._route_cache.values()]
        if self._cache is not None:
            stamps.append(self._cache[0])
        return min(stamps) + CACHE_S if stamps else INF

    def _accept(self) -> Optional[socket.socket]:
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            if self._logs is not None:
                self._logs.log("prom_serve", logging.WARNING, f"metrics accept failed: {exc}")
            return None
        return conn

    def serve_pending(self, ready: Sequence[_Pending] = (), *, accept: bool = True) -> None:
        """One ServePending pass: ≤ 8 answered within 100 ms, then accept-and-close ≤ 50.

        *ready* are waiting connections the selector saw readable: read without
        blocking, answered once their request is complete (those over the
        budget stay waiting, still readable). With *accept*, new connections
        are taken; then waiting connections past their deadline are closed
        (docs/observer.md#http-endpoint). The 100 ms window counts connection
        handling only: rendering a fresh body (at most once a second, waiting
        for the loop's snapshot) is not charged to the clients queued behind it.
        """
        t0 = time.monotonic()
        self._render_s = 0.0
        if self._on_serve is not None:
            self._on_serve(t0)
        try:
            served = 0
            for p in ready:
                if self._over_budget(t0, served):
                    break
                if self._pending.get(p.conn.fileno()) is p and self._read(p):
                    served += 1
            while accept:
                if self._over_budget(t0, served):
                    self._drain()
                    break
                conn = self._accept()
                if conn is None:
                    break
                if self._take(conn):
                    served += 1
            self._expire()
        finally:
            elapsed = time.monotonic() - t0
            self.stats.serve_seconds.observe(elapsed)
            if elapsed > self._scrape_budget_s:
                self.stats.scrape_budget_exceeded += 1
            if self._on_serve is not None:
                self._on_serve(None)

    def _over_budget(self, t0: float, served: int) -> bool:
        handling = time.monotonic() - t0 - self._render_s
        return served >= SERVE_PER_PASS or handling >= SERVE_WINDOW_S

    def _drain(self) -> None:
        conn = self._accept()
        if conn is None:
            return
        self.stats.scrape_budget_exhausted += 1
        deadline = time.monotonic() + SERVE_WINDOW_S
        for _ in range(DRAIN_PER_PASS):
            conn.close()
            self.stats.dropped["drain"] += 1
            if time.monotonic() >= deadline:
                return
            nxt = self._accept()
            if nxt is None:
                return
            conn = nxt

    def _take(self, conn: socket.socket) -> bool:
        """A new connection: rate-limited (closed, False), answered at once if its
        request is already here (True), else left waiting (False)."""
        try:
            peer = conn.getpeername()[0]
            conn.setblocking(False)
        except OSError:
            conn.close()
            return False
        if not self._limiter.admit(str(peer)):
            conn.close()
            self.stats.dropped["rate_limit"] += 1
            return False
        p = _Pending(conn, time.monotonic() + REQUEST_DEADLINE_S)
        if self._read(p):
            return True
        if conn.fileno() == -1:
            return False  # reset or closed by the client before a byte came
        if len(self._pending) >= PENDING_MAX:
            self._forget(next(iter(self._pending.values())))
            self.stats.dropped["pending_full"] += 1
        self._pending[conn.fileno()] = p
        if self._sel is not None:
            self._sel.register(conn, selectors.EVENT_READ, p)
        return False

    def _read(self, p: _Pending) -> bool:
        """Take the bytes queued on *p* without blocking; once the request is
        finished (end of header, 4096 bytes, or EOF) answer it and close. False
        while it is unfinished, and for a client that closed before sending a
        byte (closed here too, unanswered and uncounted: the client left)."""
        try:
            if not self._fill(p):
                return False
            if p.buf:
                self._send(p.conn, self._judge(p.buf))
        except OSError as exc:
            if self._logs is not None:
                self._logs.log("prom_serve", logging.WARNING, f"metrics client: {exc}")
        self._forget(p)
        return bool(p.buf)

    @staticmethod
    def _fill(p: _Pending) -> bool:
        """Read what is queued; True once the request is finished."""
        while True:
            try:
                chunk = p.conn.recv(MAX_REQUEST - len(p.buf))
            except (BlockingIOError, InterruptedError):
                return False
            if not chunk:
                return True  # EOF: the request is what came
            start = max(0, len(p.buf) - 3)
            p.buf += chunk
            if _header_end(p.buf, start) or len(p.buf) >= MAX_REQUEST:
                return True

    def _judge(self, request: bytes) -> bytes:
        """The answer to a finished request: a header still open at 4096 bytes
        is refused (405 if not a GET, else 400); the rest is :meth:`_respond`'s."""
        if len(request) >= MAX_REQUEST and not _header_end(request, 0):
            return RESP_400 if request.startswith(b"GET ") else RESP_405
        return self._respond(request)

    def _forget(self, p: _Pending) -> None:
        """Close *p*, out of the waiting table and the selector."""
        fd = p.conn.fileno()
        if fd != -1:
            if self._pending.get(fd) is p:
                del self._pending[fd]
                if self._sel is not None:
                    self._sel.unregister(p.conn)
            p.conn.close()

    def _expire(self) -> None:
        """Close waiting connections past their deadline, unanswered and counted
        as ``read_timeout``: bytes already queued are taken first, so a client
        is never blamed for this thread running late."""
        now = time.monotonic()
        while self._pending:
            p = next(iter(self._pending.values()))
            if p.deadline > now:
                break
            if not self._read(p):
                if p.conn.fileno() != -1:
                    self._forget(p)
                    self.stats.dropped["read_timeout"] += 1

    def _respond(self, request: bytes) -> bytes:
        if len(request) < 4 or not request.startswith(b"GET "):
            return RESP_405
        path, query = request_target(request)
        route = self._routes.get(path)
        if route is not None and route.public:
            return self._route_response(path, query, route)
        if self._token is not None:
            got = bearer_from_request(request)
            if got is None or not _compare_digest(got, self._token):
                self.stats.auth_failures += 1
                return RESP_401
        if route is not None:
            return self._route_response(path, query, route)
        gzip = accepts_gzip(request)
        body = self._cached_body(gzip)
        head = (
            b"HTTP/1.0 200 OK\r\nContent-Type: "
            + CONTENT_TYPE
            + b"\r\n"
            + (b"Content-Encoding: gzip\r\n" if gzip else b"")
            + b"Vary: Accept-Encoding\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
        )
        return head + body

    def _cached_body(self, gzip: bool = False) -> bytes:
        """The body (gzip-compressed if *gzip*), rendered at most once a second;
        compressed at most once per rendered body."""
        now = time.monotonic()
        if self._cache is not None and now - self._cache[0] < CACHE_S:
            self.stats.scrape_skipped += 1
        else:
            body = self._body()
            self._cache = (time.monotonic(), body, None)
        stamp, body, packed = self._cache
        if gzip and packed is None:
            packed = gzip_body(body)
            self._cache = (stamp, body, packed)
        if gzip:
            self.stats.gzip += 1
        self._render_s += time.monotonic() - now
        return packed if gzip and packed is not None else body

    def _route_response(self, path: bytes, query: str, route: Route) -> bytes:
        """A :class:`Route`'s answer, its body cached a second per path and query."""
        now = time.monotonic()
        key = (path, query)
        hit = self._route_cache.get(key)
        if hit is not None and now - hit[0] < CACHE_S:
            body = hit[1]
        else:
            try:
                body = route.body(query)
            except ValueError:
                return RESP_400
            done = time.monotonic()
            self._render_s += done - now
            self._drop_expired_bodies(done)  # room for this one under the bound
            if len(self._route_cache) < ROUTE_CACHE_ENTRIES:
                self._route_cache[key] = (done, body)
        return (
            b"HTTP/1.0 200 OK\r\nContent-Type: " + route.content_type + b"\r\n" + route.headers
            + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
            + body
        )  # fmt: skip

    @staticmethod
    def _send(conn: socket.socket, data: bytes) -> None:
        """Write within the 50 ms deadline: a client that stops reading is dropped
        (what the socket buffer takes at once is always written)."""
        deadline = time.monotonic() + WRITE_DEADLINE_S
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining > 0:
                conn.settimeout(remaining)
            else:
                conn.setblocking(False)
            try:
                n = conn.send(view)
            except (socket.timeout, BlockingIOError):
                raise TimeoutError("write deadline (50 ms) passed") from None
            view = view[n:]
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
