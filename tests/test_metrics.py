"""``/metrics`` rendering and the HTTP server (docs/observer.md#metrics), without the native
observer."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import Optional

import pytest
from prometheus_client.parser import text_string_to_metric_families

from varta import PidRows
from varta.watch.audit import Histogram
from varta.watch.logsetup import RateLimiter
from varta.watch.metrics import (
    FAMILIES,
    ServeStats,
    Snapshot,
    VartaCollector,
    build_registry,
    render,
)
from varta.watch.metrics_server import (
    IpRateLimiter,
    MetricsServer,
    bearer_from_request,
    parse_hex32,
)
from watch_e2e import http_get, http_request

# docs/observer.md#metric-families, all 65 families (name, type).
SPEC_FAMILIES = """
varta_beats_total c varta_stalls_total c varta_status g varta_tracker_evicted_total c
varta_frame_auth_failures_total c varta_decode_errors_total c varta_io_errors_total c
varta_ctrl_truncated_total c varta_tracker_capacity_exceeded_total c
varta_tracker_eviction_scan_truncated_total c varta_tracker_capacity g
varta_tracker_eviction_scan_window_max g varta_recovery_outcomes_total c
varta_recovery_duration_ns_sum c varta_recovery_duration_count_total c
varta_recovery_refused_total c varta_recovery_last_fired_evictions_total c
varta_recovery_debounce_recycle_resets_total c varta_recovery_outstanding_recycle_resets_total c
varta_recovery_spawn_budget_exceeded_total c varta_recovery_invariant_violations_total c
varta_log_suppressed_total c varta_origin_conflict_total c varta_frame_namespace_mismatch_total c
varta_frame_rejected_pid_above_max_total c varta_pid_max_current g
varta_tracker_namespace_conflict_total c varta_tracker_pid_recycle_total c
varta_tracker_invariant_violations_total c varta_tracker_removed_pid_drops_total c
varta_tracker_pid_index_probe_exhausted_total c varta_recovery_outstanding_probe_exhausted_total c
varta_recovery_reap_truncated_total c varta_recovery_audit_dropped_total c
varta_recovery_audit_flush_budget_exceeded_total c varta_audit_fsync_seconds h
varta_socket_bind_dir_fsync_failed_total c varta_audit_fsync_budget_exceeded_total c
varta_audit_rotation_budget_exceeded_total c varta_audit_ring_watermark_total c
varta_prom_ip_state_probe_exhausted_total c varta_prom_pid_row_refused_total c
varta_frame_decrypt_failures_total c varta_secure_replay_refused_total c
varta_truncated_datagrams_total c varta_sender_state_full_total c
varta_secure_aead_attempts_total c varta_rate_limited_total c varta_observer_uds_rcvbuf_bytes g
varta_observer_clock_regression_total c varta_observer_clock_jump_forward_total c
varta_scrape_skipped_total c varta_scrape_budget_exhausted_total c
varta_observer_iteration_seconds h varta_observer_iteration_budget_exceeded_total c
varta_observer_serve_pending_seconds h varta_observer_scrape_budget_exceeded_total c
varta_observer_stage_seconds h varta_prom_auth_failures_total c
varta_prom_connections_dropped_total c varta_nonce_wrap_total c
varta_signal_handler_install_total c varta_watch_uptime_seconds g
varta_watch_last_poll_loop_timestamp_seconds g varta_watch_pids_tracked g
""".split()

# Beyond upstream (docs/verdicts.md): verdicts, retirement, blindness, queue drops.
VERDICT_FAMILIES = """
varta_stall_verdicts_total c varta_out_of_order_total c varta_tracker_retired_total c
varta_observer_blind_intervals_total c varta_observer_blind_seconds_total c
varta_observer_events_dropped_total c
""".split()

CORE_EMPTY = """\
# HELP varta_beats_total Total accepted beats per agent pid.
# TYPE varta_beats_total counter
# HELP varta_stalls_total Total observer-detected stalls per agent pid.
# TYPE varta_stalls_total counter
# HELP varta_status Last reported status code per agent pid (0=ok,1=degraded,2=critical,3=stall).
# TYPE varta_status gauge
"""

TOKEN_HEX = "0123456789abcdef" * 4
TOKEN = bytes.fromhex(TOKEN_HEX)


def body_for(snap: Snapshot, serve: Optional[ServeStats] = None) -> str:
    reg = build_registry(VartaCollector(lambda: snap, serve or ServeStats(), RateLimiter()))
    return render(reg).decode()


def families_in(body: str) -> list[tuple[str, str]]:
    return [
        (line.split()[2], line.split()[3])
        for line in body.splitlines()
        if line.startswith("# TYPE")
    ]


#: Families beyond docs/observer.md#metric-families (issue 11: loss accounting,
#: reopen), all counters.
EXTRA_FAMILIES = [
    "varta_recovery_audit_dropped_by_reason_total",
    "varta_recovery_audit_gap_records_total",
    "varta_recovery_spawned_unaudited_total",
    "varta_export_rows_dropped_total",
    "varta_export_torn_tail_repaired_total",
    "varta_export_io_errors_total",
    "varta_reopen_total",
    "varta_scrape_gzip_total",
    # docs/observer.md#agent-identity: network senders the tracker could not name
    "varta_tracker_peer_table_full_total",
]

#: The per-agent aggregates (docs/observer.md#agent-rows), all gauges.
AGENT_FAMILIES = [
    "varta_agents",
    "varta_agents_by_verdict",
    "varta_agents_by_unit",
    "varta_agent_rows_omitted",
]
#: Hang forensics (docs/finding-hangs.md#counters), all counters.
FORENSICS_FAMILIES = [
    "varta_forensics_captures_total",
    "varta_forensics_capture_failures_total",
    "varta_forensics_truncated_total",
]


def test_all_65_families_in_spec_order() -> None:
    spec = list(zip(SPEC_FAMILIES[::2], SPEC_FAMILIES[1::2]))
    spec += list(zip(VERDICT_FAMILIES[::2], VERDICT_FAMILIES[1::2]))
    types = {"c": "counter", "g": "gauge", "h": "histogram"}
    want = [(n, types[t]) for n, t in spec] + [
        (n, "counter") for n in EXTRA_FAMILIES + FORENSICS_FAMILIES
    ]
    want += [(n, "gauge") for n in AGENT_FAMILIES]
    assert (
        len(want)
        == len(FAMILIES)
        == (65 + 6 + len(EXTRA_FAMILIES) + len(FORENSICS_FAMILIES) + len(AGENT_FAMILIES))
    )
    got = families_in(body_for(Snapshot()))
    assert sorted(got) == sorted(want)
    assert got[:3] == want[:3]


def test_core_families_exact_without_rows() -> None:
    assert body_for(Snapshot()).startswith(CORE_EMPTY)


def test_core_families_exact_with_rows() -> None:
    snap = Snapshot(agents=PidRows([(4242, 7, 1, 3), (17, 12_345_678_901, 0, 1), (100, 1, 0, 0)]))
    body = body_for(snap)
    assert body.startswith(
        "# HELP varta_beats_total Total accepted beats per agent pid.\n"
        "# TYPE varta_beats_total counter\n"
        'varta_beats_total{pid="17",unit="",comm=""} 12345678901\n'
        'varta_beats_total{pid="100",unit="",comm=""} 1\n'
        'varta_beats_total{pid="4242",unit="",comm=""} 7\n'
        "# HELP varta_stalls_total Total observer-detected stalls per agent pid.\n"
        "# TYPE varta_stalls_total counter\n"
        'varta_stalls_total{pid="17",unit="",comm=""} 0\n'
        'varta_stalls_total{pid="100",unit="",comm=""} 0\n'
        'varta_stalls_total{pid="4242",unit="",comm=""} 1\n'
        "# HELP varta_status Last reported status code per agent pid "
        "(0=ok,1=degraded,2=critical,3=stall).\n"
        "# TYPE varta_status gauge\n"
        'varta_status{pid="17",unit="",comm=""} 1\n'
        'varta_status{pid="100",unit="",comm=""} 0\n'
        'varta_status{pid="4242",unit="",comm=""} 3\n'
        "# HELP varta_tracker_evicted_total "
    )


def test_labelled_families_zero_filled_and_values_formatted() -> None:
    h = Histogram()
    h.observe(0.002)
    h.observe(3.0)
    serve = ServeStats()
    serve.auth_failures = 2
    serve.dropped["rate_limit"] = 4
    snap = Snapshot(
        counters={
            "decode_errors": {"bad_crc": 3},
            "recovery_outcomes": {"spawned": 1},
            "recovery_duration_ns_sum": 1500,
            "tracker_capacity": 256,
            "rate_limited": {"per_pid": 0, "global": 9},
        },
        histograms={"varta_audit_fsync_seconds": h},
        uptime_seconds=12.3456,
        last_loop_unix=1700000000.5,
    )
    lines = set(body_for(snap, serve).splitlines())
    for want in [
        'varta_decode_errors_total{kind="bad_magic"} 0',
        'varta_decode_errors_total{kind="bad_crc"} 3',
        'varta_recovery_outcomes_total{outcome="spawned"} 1',
        'varta_recovery_outcomes_total{outcome="skipped_stall_unverifiable"} 0',
        'varta_recovery_refused_total{reason="socket_mode_only"} 0',
        'varta_log_suppressed_total{kind="audit_ring_critical"} 0',
        'varta_audit_ring_watermark_total{level="warn"} 0',
        'varta_audit_ring_watermark_total{level="critical"} 0',
        'varta_rate_limited_total{reason="global"} 9',
        'varta_prom_connections_dropped_total{reason="rate_limit"} 4',
        'varta_prom_connections_dropped_total{reason="ip_table_full"} 0',
        'varta_signal_handler_install_total{mode="libc"} 0',
        "varta_prom_auth_failures_total 2",
        "varta_recovery_duration_ns_sum 1500",
        "varta_tracker_capacity 256",
        "varta_watch_uptime_seconds 12.346",
        "varta_watch_last_poll_loop_timestamp_seconds 1700000000.500",
        'varta_audit_fsync_seconds_bucket{le="0.001"} 0',
        'varta_audit_fsync_seconds_bucket{le="0.005"} 1',
        'varta_audit_fsync_seconds_bucket{le="1"} 1',
        'varta_audit_fsync_seconds_bucket{le="+Inf"} 2',
        "varta_audit_fsync_seconds_sum 3.002000000",
        "varta_audit_fsync_seconds_count 2",
        'varta_observer_stage_seconds_bucket{stage="housekeeping",le="+Inf"} 0',
        'varta_observer_stage_seconds_sum{stage="poll"} 0.000000000',
    ]:
        assert want in lines, want
    les = [ln.split('le="')[1].split('"')[0] for ln in lines if "iteration_seconds_bucket" in ln]
    assert sorted(les) == sorted(
        ["0.001", "0.005", "0.01", "0.05", "0.1", "0.25", "0.5", "1", "+Inf"]
    )


def test_an_independent_parser_reads_the_samples_we_meant() -> None:
    """prometheus_client's text parser (a test dependency only: the daemon
    renders without it) reads back exactly the collector's samples."""
    snap = Snapshot(
        agents=PidRows([(5, 3, 1, 2)]),
        counters={"beats": 3, "recovery_duration_ns_sum": 7, "stall_verdicts": {"hung": 2}},
        uptime_seconds=1.5,
    )
    collector = VartaCollector(lambda: snap, ServeStats(), RateLimiter())

    def parsed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                name = s.name.replace(
                    "varta_recovery_duration_ns_sum_total", "varta_recovery_duration_ns_sum"
                )
                out[(name, tuple(sorted(s.labels.items())))] = float(s.value)
        return out

    meant: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in collector.collect():
        if fam.rows is not None:
            column = {"varta_beats_total": 1, "varta_stalls_total": 2, "varta_status": 3}
            for row in fam.rows:
                labels = (("comm", ""), ("pid", str(row[0])), ("unit", ""))
                meant[(fam.name, labels)] = float(row[column[fam.name]])
        for sample in fam.samples:
            meant[(sample.name, tuple(sorted(sample.labels)))] = float(sample.value)
    got = parsed(render(collector).decode())
    assert got.keys() == meant.keys()
    for key, value in meant.items():
        assert got[key] == pytest.approx(value, abs=5e-4), key
    assert meant[("varta_stall_verdicts_total", (("verdict", "hung"),))] == 2


def promtool_check(body: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool is not None, (
        "promtool missing: scripts/test.sh installs the Debian prometheus package"
    )
    return subprocess.run(
        [tool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )


def assert_promtool_accepts(body: str) -> None:
    """Parse errors exit 1; lint findings exit 3. The only lint findings allowed are
    about varta_recovery_duration_ns_sum, whose name docs/observer.md#metric-families fixes."""
    res = promtool_check(body)
    assert res.returncode in (0, 3), res.stderr + res.stdout
    for line in (res.stdout + res.stderr).splitlines():
        assert line.startswith("varta_recovery_duration_ns_sum "), line


def test_promtool_accepts_the_body() -> None:
    snap = Snapshot(agents=PidRows([(1, 2, 3, 3)]), counters={"beats": 2}, uptime_seconds=3.0)
    assert_promtool_accepts(body_for(snap))


# --- tokens ---------------------------------------------------------------------------


def test_parse_hex32() -> None:
    assert parse_hex32(f"  {TOKEN_HEX.upper()}\n".encode()) == TOKEN
    for bad in [b"", TOKEN_HEX[:-1].encode(), (TOKEN_HEX + "0").encode(), b"zz" * 32]:
        with pytest.raises(ValueError):
            parse_hex32(bad)


@pytest.mark.parametrize(
    "header,ok",
    [
        (f"Authorization: Bearer {TOKEN_HEX}", True),
        (f"authorization:bearer {TOKEN_HEX}", True),
        (f"AUTHORIZATION: \t BEARER \t{TOKEN_HEX.upper()}  ", True),
        (f"Authorization: Bearer  {TOKEN_HEX}", True),
        (f"Authorization: Bearer\t{TOKEN_HEX}", False),
        (f"Authorization: Basic {TOKEN_HEX}", False),
        (f"Authorization: Bearer {TOKEN_HEX[:-2]}", False),
        (f"Authorization: Bearer {TOKEN_HEX}00", False),
        (f"Authorization: Bearer {TOKEN_HEX} x", False),
        (f"X-Authorization: Bearer {TOKEN_HEX}", False),
    ],
)
def test_bearer_grammar(header: str, ok: bool) -> None:
    req = f"GET /metrics HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n".encode()
    assert (bearer_from_request(req) == TOKEN) is ok


def test_bearer_first_header_wins_and_must_be_crlf_terminated() -> None:
    wrong = "ff" * 32
    req = (
        f"GET / HTTP/1.0\r\nAuthorization: Bearer {wrong}\r\n"
        f"Authorization: Bearer {TOKEN_HEX}\r\n\r\n"
    )
    assert bearer_from_request(req.encode()) == bytes.fromhex(wrong)
    unterminated = f"GET / HTTP/1.0\r\nAuthorization: Bearer {TOKEN_HEX}"
    assert bearer_from_request(unterminated.encode()) is None
    after_blank = f"GET / HTTP/1.0\r\n\r\nAuthorization: Bearer {TOKEN_HEX}\r\n"
    assert bearer_from_request(after_blank.encode()) is None


# --- per-IP limiter --------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_ip_bucket_new_ip_full_minus_one_then_refill() -> None:
    clock, stats = Clock(), ServeStats()
    lim = IpRateLimiter(per_sec=2, burst=3, stats=stats, clock=clock)
    assert [lim.admit("a") for _ in range(4)] == [True, True, True, False]
    assert lim.admit("b")  # separate bucket
    clock.t += 0.5  # one token back
    assert lim.admit("a") and not lim.admit("a")


@pytest.mark.parametrize("rate,burst", [(0, 10), (5, 0)])
def test_ip_bucket_disabled_by_zero(rate: int, burst: int) -> None:
    lim = IpRateLimiter(rate, burst, ServeStats(), clock=Clock())
    assert all(lim.admit("a") for _ in range(100))


def test_ip_table_full_evicts_oldest_and_ttl_sweep() -> None:
    clock, stats = Clock(), ServeStats()
    lim = IpRateLimiter(1, 1, stats, clock=clock, table_size=2)
    assert lim.admit("a") and lim.admit("b")
    assert not lim.admit("a")  # a is now the most recent, empty
    assert lim.admit("c")  # evicts b (least recently seen)
    assert stats.dropped["ip_table_full"] == 1
    clock.t += 61.0  # past the TTL; the sweep forgets everybody
    assert lim.admit("a") and lim.admit("b") and lim.admit("c")


# --- the HTTP server -------------------------------------------------------------------


request = http_request


def get(addr: str, token: Optional[str] = TOKEN_HEX, path: str = "/metrics") -> bytes:
    return http_get(addr, token, path)


@pytest.fixture
def server() -> object:
    stats = ServeStats()
    renders: list[float] = []

    def body() -> bytes:
        renders.append(time.monotonic())
        return b"# body\n"

    srv = MetricsServer("127.0.0.1", 0, body, stats, token=TOKEN, rate_per_sec=0, rate_burst=0)
    srv.start()
    srv.renders = renders  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def test_server_answers(server: MetricsServer) -> None:
    assert server.address.startswith("127.0.0.1:")
    resp = get(server.address, path="/anything/at/all")
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.0 200 OK"
    assert b"Content-Type: text/plain; version=0.0.4" in lines
    assert b"Connection: close" in lines
    assert f"Content-Length: {len(body)}".encode() in lines
    assert body == b"# body\n"


def test_server_401_and_405(server: MetricsServer) -> None:
    for token in (None, "ab" * 32):
        resp = get(server.address, token=token)
        assert resp.startswith(b"HTTP/1.0 401 Unauthorized\r\n")
        assert b'WWW-Authenticate: Bearer realm="varta"\r\n' in resp
        assert b"Content-Length: 0\r\n" in resp and b"Connection: close\r\n" in resp
    assert server.stats.auth_failures == 2
    # (A truncated request such as "GE" is judged at EOF or dropped at the
    # request deadline: tests/test_metrics_server.py.)
    for req in (b"POST /metrics HTTP/1.0\r\n\r\n", b"get / HTTP/1.0\r\n\r\n"):
        resp = request(server.address, req)
        assert resp.startswith(b"HTTP/1.0 405 Method Not Allowed\r\n")
        assert b"Allow: GET\r\n" in resp and b"Content-Length: 0\r\n" in resp
    assert server.stats.auth_failures == 2  # 405 is judged before the token


def test_server_caches_body_for_a_second(server: MetricsServer) -> None:
    first = get(server.address)
    second = get(server.address)
    assert first == second
    assert len(server.renders) == 1  # type: ignore[attr-defined]
    assert server.stats.scrape_skipped == 1


def test_rate_limit_closes_without_answer() -> None:
    stats = ServeStats()
    srv = MetricsServer("127.0.0.1", 0, lambda: b"x\n", stats, rate_per_sec=1, rate_burst=2)
    srv.start()
    try:
        answers = [get(srv.address, token=None) for _ in range(4)]
    finally:
        srv.stop()
    assert [a.startswith(b"HTTP/1.0 200") for a in answers] == [True, True, False, False]
    assert answers[2] == answers[3] == b""
    assert stats.dropped["rate_limit"] == 2


def test_ipv6_address_in_brackets() -> None:
    if not socket.has_ipv6:
        pytest.fail("IPv6 is not available on this host")
    srv = MetricsServer("::1", 0, lambda: b"x\n", ServeStats(), rate_per_sec=0, rate_burst=0)
    try:
        assert srv.address.startswith("[::1]:")
    finally:
        srv.stop()


def test_pid_rows_sort_by_pid_and_keep_the_last_row_of_a_repeated_pid() -> None:
    rows = PidRows([(9, 1, 0, 0), (2, 5, 1, 3), (9, 4, 0, 2)])
    assert len(rows) == 2
    assert list(rows) == [(2, 5, 1, 3), (9, 4, 0, 2)]
    assert rows.render("varta_status", "status") == (
        b'varta_status{pid="2",unit="",comm=""} 3\nvarta_status{pid="9",unit="",comm=""} 2\n'
    )
    assert list(PidRows()) == [] and PidRows().render("x", "beats") == b""


def test_pid_rows_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="status 4"):
        PidRows([(1, 0, 0, 4)])
    with pytest.raises(OverflowError):
        PidRows([(-1, 0, 0, 0)])
    with pytest.raises(ValueError, match='unknown verdict "stuck"'):
        PidRows([(1, 0, 0, 3, "stuck")])
    assert list(PidRows([(1, 0, 1, 3, "hung")])) == [(1, 0, 1, 3)]
    with pytest.raises(ValueError, match="column"):
        PidRows([(1, 0, 0, 0)]).render("varta_beats_total", "nonce")  # type: ignore[arg-type]


def test_a_large_row_table_renders_every_row_in_pid_order() -> None:
    n = 200_000
    rows = PidRows((n - i, i, i % 3, i % 4) for i in range(n))
    collector = VartaCollector(lambda: Snapshot(agents=rows), agent_rows=n)
    body = render(build_registry(collector)).decode()
    beats = [line for line in body.splitlines() if line.startswith("varta_beats_total{")]
    assert len(beats) == n
    assert beats[0] == f'varta_beats_total{{pid="1",unit="",comm=""}} {n - 1}'
    assert beats[-1] == f'varta_beats_total{{pid="{n}",unit="",comm=""}} 0'


# --- capped per-agent rows and gzip (docs/observer.md#agent-rows) ----------------------


def test_per_agent_rows_are_capped_not_ok_first_then_lowest_pids() -> None:
    # 10 agents: pid 7 hung, 9 critical, 4 degraded, the rest OK.
    status = {7: 3, 9: 2, 4: 1}
    rows = PidRows(
        (pid, 10, 1 if pid == 7 else 0, status.get(pid, 0), "hung" if pid == 7 else None)
        for pid in range(1, 11)
    )
    collector = VartaCollector(lambda: Snapshot(agents=rows), agent_rows=5)
    lines = render(collector).decode().splitlines()
    shown = [ln.split('"')[1] for ln in lines if ln.startswith("varta_status{")]
    assert shown == ["1", "2", "4", "7", "9"]
    for want in [
        'varta_status{pid="7",unit="",comm=""} 3',
        'varta_agents{status="ok"} 7',
        'varta_agents{status="degraded"} 1',
        'varta_agents{status="critical"} 1',
        'varta_agents{status="stall"} 1',
        'varta_agents_by_verdict{verdict="hung"} 1',
        'varta_agents_by_verdict{verdict="unknown"} 0',
        'varta_agents_by_unit{unit="",status="ok"} 7',
        'varta_agents_by_unit{unit="",status="stall"} 1',
        "varta_agent_rows_omitted 5",
    ]:
        assert want in lines, want
    # Counts only: no per-agent sample at all, every agent still counted.
    body = render(VartaCollector(lambda: Snapshot(agents=rows), agent_rows=0)).decode()
    assert "{pid=" not in body and "\nvarta_agent_rows_omitted 10\n" in body
    assert_promtool_accepts(body)


def test_the_default_cap_bounds_a_large_body() -> None:
    n = 200_000
    rows = PidRows((1000 + i, i, 0, 3 if i % 1000 == 0 else 0) for i in range(n))
    body = render(VartaCollector(lambda: Snapshot(agents=rows))).decode()
    status = [ln for ln in body.splitlines() if ln.startswith("varta_status{")]
    assert len(status) == 1000
    # All 200 stalled agents made it, then the lowest OK pids.
    assert sum(ln.endswith(" 3") for ln in status) == 200
    assert status[1] == 'varta_status{pid="1001",unit="",comm=""} 0'
    assert f"\nvarta_agent_rows_omitted {n - 1000}\n" in body
    assert len(body) < 300_000


@pytest.mark.parametrize(
    ("header", "gzip"),
    [
        ("Accept-Encoding: gzip\r\n", True),
        ("accept-encoding: deflate, GZIP;q=0.5\r\n", True),
        ("Accept-Encoding: *\r\n", True),
        ("Accept-Encoding: gzip;q=0\r\n", False),
        ("Accept-Encoding: *, gzip;q=0\r\n", False),
        ("Accept-Encoding: identity\r\n", False),
        ("", False),
    ],
)
def test_accept_encoding(header: str, gzip: bool) -> None:
    from varta.watch.metrics_server import accepts_gzip

    assert accepts_gzip(f"GET / HTTP/1.1\r\nHost: x\r\n{header}\r\n".encode()) is gzip


def test_server_gzips_for_a_client_that_accepts_it(server: MetricsServer) -> None:
    import gzip

    def fetch(extra: str) -> tuple[list[bytes], bytes]:
        req = f"GET /metrics HTTP/1.1\r\nAuthorization: Bearer {TOKEN_HEX}\r\n{extra}\r\n"
        head, _, body = request(server.address, req.encode()).partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert f"Content-Length: {len(body)}".encode() in lines
        return lines, body

    lines, body = fetch("Accept-Encoding: gzip\r\n")
    assert b"Content-Encoding: gzip" in lines and gzip.decompress(body) == b"# body\n"
    lines, body = fetch("")  # a plain client gets the plain body
    assert not any(ln.startswith(b"Content-Encoding") for ln in lines) and body == b"# body\n"
    assert len(server.renders) == 1  # type: ignore[attr-defined]
    assert server.stats.gzip == 1
