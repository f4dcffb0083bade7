"""Slow and silent clients of the HTTP listener (docs/observer.md#http-endpoint):
a request may take up to ``REQUEST_DEADLINE_S`` to arrive, at most
``PENDING_MAX`` connections wait for theirs, and a waiting client never holds
up another. Real sockets against a running :class:`MetricsServer`."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Callable, TypeVar

import pytest

from varta.watch.metrics import ServeStats
from varta.watch.metrics_server import PENDING_MAX, REQUEST_DEADLINE_S, MetricsServer
from watch_e2e import TOKEN_HEX, http_get

T = TypeVar("T")
TOKEN = bytes.fromhex(TOKEN_HEX)
BODY = b"# body\n"
REQUEST = f"GET /metrics HTTP/1.1\r\nHost: varta\r\nAuthorization: Bearer {TOKEN_HEX}\r\n\r\n"
#: How late the test's slow client sends (the old listener gave up after 10 ms).
LATE_S = 0.3


def until(what: str, check: Callable[[], T], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout:g} s) waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer(
        "127.0.0.1", 0, lambda: BODY, ServeStats(), token=TOKEN, rate_per_sec=0, rate_burst=0
    )
    srv.start()
    yield srv
    srv.stop()


def connect(srv: MetricsServer) -> socket.socket:
    host, port = srv.address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10.0)


def read_all(s: socket.socket) -> bytes:
    """Everything until EOF (a reset counts as EOF: a drop may reset)."""
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def still_open(s: socket.socket) -> bool:
    """Nothing sent to *s* and not closed: a read would block."""
    s.setblocking(False)
    try:
        s.recv(1)
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        s.settimeout(10.0)
    return False


def assert_metrics(resp: bytes) -> None:
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n"), resp[:200]
    assert body == BODY


def test_a_request_sent_300_ms_after_connecting_is_answered(server: MetricsServer) -> None:
    with connect(server) as s:
        until("the connection to wait for its request", lambda: server.pending == 1)
        time.sleep(LATE_S)  # the slow client: the stimulus, not a synchronisation
        s.sendall(REQUEST.encode())
        assert_metrics(read_all(s))
    # (the answer's EOF may reach the client just before the server closes)
    until("the connection to be closed", lambda: server.pending == 0)
    assert sum(server.stats.dropped.values()) == 0


def test_a_request_sent_in_two_halves_is_answered(server: MetricsServer) -> None:
    req = REQUEST.encode()
    with connect(server) as s:
        s.sendall(req[:20])
        until("the half request to wait", lambda: server.pending == 1)
        time.sleep(LATE_S)
        assert server.pending == 1  # half a request is not answered
        s.sendall(req[20:])
        assert_metrics(read_all(s))
    assert sum(server.stats.dropped.values()) == 0


def test_a_silent_client_does_not_delay_another(server: MetricsServer) -> None:
    with connect(server) as silent:
        until("the silent client to wait", lambda: server.pending == 1)
        assert_metrics(http_get(server.address))
        # Answered while the silent one still waits.
        until("the answered one to be closed", lambda: server.pending == 1)
        assert still_open(silent)
    assert server.stats.dropped["read_timeout"] == 0


def test_a_silent_client_is_dropped_at_the_deadline_and_counted(server: MetricsServer) -> None:
    t0 = time.monotonic()  # before connect, so before the server's accept
    with connect(server) as silent:
        until("the silent client to wait", lambda: server.pending == 1)
        assert read_all(silent) == b""  # closed unanswered
        waited = time.monotonic() - t0
    assert waited >= REQUEST_DEADLINE_S  # not before its deadline
    until("the drop to be counted", lambda: server.stats.dropped["read_timeout"] == 1)
    assert server.pending == 0
    assert_metrics(http_get(server.address))


def settled(srv: MetricsServer, connected: int) -> Callable[[], bool]:
    """Whether the server took all *connected* silent clients, dropping the
    oldest past the bound."""
    return lambda: (
        srv.pending == min(connected, PENDING_MAX)
        and srv.stats.dropped["pending_full"] == max(0, connected - PENDING_MAX)
    )


def test_past_the_pending_bound_the_oldest_are_dropped_and_counted(
    server: MetricsServer,
) -> None:
    extra = 3
    socks: list[socket.socket] = []
    try:
        for _ in range(PENDING_MAX + extra):
            socks.append(connect(server))
            # One at a time, so "oldest" is well defined.
            until(f"connection {len(socks)} to wait", settled(server, len(socks)))
        for s in socks[:extra]:
            assert read_all(s) == b""  # closed unanswered
        assert all(still_open(s) for s in socks[extra:])
        # A new client is still answered (it may push out one more waiting one
        # if the server accepts it before its request lands).
        assert_metrics(http_get(server.address))
        assert server.stats.dropped["pending_full"] in (extra, extra + 1)
        assert server.stats.dropped["read_timeout"] == 0
    finally:
        for s in socks:
            s.close()


def test_an_unfinished_header_over_4096_bytes_gets_400(server: MetricsServer) -> None:
    with connect(server) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 5000)
        resp = read_all(s)
    assert resp.startswith(b"HTTP/1.0 400 Bad Request\r\n")
    with connect(server) as s:
        s.sendall(b"PUT /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 5000)
        resp = read_all(s)
    assert resp.startswith(b"HTTP/1.0 405 Method Not Allowed\r\n")


def test_a_half_closed_partial_request_is_judged_at_eof(server: MetricsServer) -> None:
    with connect(server) as s:
        s.sendall(b"GE")
        s.shutdown(socket.SHUT_WR)
        assert read_all(s).startswith(b"HTTP/1.0 405 Method Not Allowed\r\n")
    with connect(server) as s:
        s.shutdown(socket.SHUT_WR)  # nothing at all: the client left
        assert read_all(s) == b""
    until("both to be done", lambda: server.pending == 0)
    assert sum(server.stats.dropped.values()) == 0


def test_a_header_ended_by_bare_lf_is_answered_at_once(server: MetricsServer) -> None:
    with connect(server) as s:
        s.sendall(b"GET /metrics HTTP/1.0\n\n")
        # The token header needs CRLF; what matters is the answer, not a wait.
        assert read_all(s).startswith(b"HTTP/1.0 401 Unauthorized\r\n")
    assert server.stats.dropped["read_timeout"] == 0


def test_a_cached_body_is_freed_once_it_can_no_longer_be_served() -> None:
    # docs/operations.md#resources: the body is kept while it may be served
    # (CACHE_S), not until the next scrape (Prometheus: 15 s later).
    renders: list[int] = []

    def body() -> bytes:
        renders.append(1)
        return BODY * 1000

    srv = MetricsServer(
        "127.0.0.1", 0, body, ServeStats(), token=TOKEN, rate_per_sec=0, rate_burst=0
    )
    srv.start()
    try:
        for scrape in (1, 2):
            with connect(srv) as s:
                s.sendall(REQUEST.encode())
                assert read_all(s).endswith(BODY * 1000)
            assert len(renders) == scrape
            until("the expired body to be freed", lambda: srv._cache is None)
    finally:
        srv.stop()
