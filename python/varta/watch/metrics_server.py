"""The ``/metrics`` HTTP server of ``varta-watch`` (``docs/observer.md#metrics``).

One daemon thread: HTTP/1.0, ``Connection: close``, any path; a per-IP token
bucket; ``GET`` only (405); the bearer token compared in constant time (401);
the body re-rendered at most once a second, and sent gzip-compressed to a
client that sends ``Accept-Encoding: gzip`` (Prometheus does;
docs/observer.md#http-endpoint). The body itself comes from
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
from dataclasses import dataclass
from typing import Callable, Optional

from .logsetup import RateLimiter
from .metrics import ServeStats


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
READ_DEADLINE_S = 0.010
WRITE_DEADLINE_S = 0.050
SERVE_WINDOW_S = 0.100
SERVE_PER_PASS = 8
DRAIN_PER_PASS = 50
IP_TABLE_SIZE = 1024
IP_TTL_S = 60.0
IP_SWEEP_S = 10.0
CACHE_S = 1.0

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


@dataclass(frozen=True)
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


@dataclass
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

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                if any(key.fileobj is self._sock for key, _ in sel.select()):
                    self.serve_pending()
        except Exception as exc:  # never take the daemon down from here
            if self._logs is not None:
                self._logs.log("prom_serve", logging.ERROR, f"metrics server stopped: {exc}")
        finally:
            sel.close()

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

    def serve_pending(self) -> None:
        """One ServePending pass: ≤ 8 served within 100 ms, then accept-and-close ≤ 50.

        The 100 ms window counts connection handling only: rendering a fresh body
        (at most once a second, waiting for the loop's snapshot) is not charged to
        the clients queued behind it.
        """
        t0 = time.monotonic()
        self._render_s = 0.0
        if self._on_serve is not None:
            self._on_serve(t0)
        try:
            served = 0
            while True:
                handling = time.monotonic() - t0 - self._render_s
                if served >= SERVE_PER_PASS or handling >= SERVE_WINDOW_S:
                    self._drain()
                    break
                conn = self._accept()
                if conn is None:
                    break
                if self._handle(conn):
                    served += 1
        finally:
            elapsed = time.monotonic() - t0
            self.stats.serve_seconds.observe(elapsed)
            if elapsed > self._scrape_budget_s:
                self.stats.scrape_budget_exceeded += 1
            if self._on_serve is not None:
                self._on_serve(None)

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

    def _handle(self, conn: socket.socket) -> bool:
        """Serve one connection; False when it was dropped by the rate limit."""
        with conn:
            try:
                peer = conn.getpeername()[0]
            except OSError:
                return False
            if not self._limiter.admit(str(peer)):
                self.stats.dropped["rate_limit"] += 1
                return False
            try:
                request = self._read_request(conn)
                if not request:
                    # Nothing sent within the read deadline: a browser's
                    # speculative preconnect. Closed unanswered, so the
                    # browser retries on a fresh connection instead of
                    # reading a 405 meant for nothing (docs/live-view.md#endpoints).
                    return True
                self._send(conn, self._respond(request))
            except OSError as exc:
                if self._logs is not None:
                    self._logs.log("prom_serve", logging.WARNING, f"metrics client: {exc}")
        return True

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes:
        """Up to 4096 bytes, stopping at CRLFCRLF, EOF or the 10 ms deadline. Bytes
        already queued are always taken, even if this thread ran late."""
        buf = b""
        deadline = time.monotonic() + READ_DEADLINE_S
        while len(buf) < MAX_REQUEST and b"\r\n\r\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining > 0:
                conn.settimeout(remaining)
            else:
                conn.setblocking(False)
            try:
                chunk = conn.recv(MAX_REQUEST - len(buf))
            except (socket.timeout, BlockingIOError):
                break
            if not chunk:
                break
            buf += chunk
        return buf

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
            for k in [k for k, (t, _) in self._route_cache.items() if done - t >= CACHE_S]:
                del self._route_cache[k]
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
