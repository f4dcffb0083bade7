"""The live view (docs/live-view.md): ``GET /agents``, the status page's HTTP
side, ``varta agents`` and ``varta top`` against a real daemon."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

import varta
from varta.watch import agents as agents_mod
from varta.watch.agents import MAX_AGENTS, Query, parse_query, render_agents
from varta.watch.live import CSP, live_routes
from varta.watch.metrics import ServeStats
from varta.watch.metrics_server import MetricsServer, request_target
from varta.watch.recovery import RecoveryCommand, RecoveryConfig, RecoveryRunner
from varta.watch.top import agents_url, table_lines
from watch_e2e import TOKEN_HEX, Agent, Watch, http_get, token_file, wait_for

VARTA = [sys.executable, "-m", "varta"]


def info(
    pid: int,
    status: str = "ok",
    *,
    age_s: float = 0.1,
    stalled: bool = False,
    verdict: Optional[str] = None,
    beats: int = 5,
    stalls: int = 0,
    generation: Optional[int] = 77,
    origin: varta.BeatOrigin = varta.BeatOrigin.KERNEL_ATTESTED,
) -> varta.AgentInfo:
    age_ns = int(age_s * 1e9)
    return varta.AgentInfo(
        pid, status, origin, beats, stalls, 3, 10**12 - age_ns, age_ns, stalled, 1, generation,
        verdict,
    )  # fmt: skip


def doc_of(body: bytes) -> dict[str, Any]:
    doc = json.loads(body)
    assert isinstance(doc, dict)
    return doc


# --- the JSON body ------------------------------------------------------------------


def test_agents_json_schema_worst_first_and_recoveries() -> None:
    rows = [
        info(10, "ok", age_s=0.2),
        info(11, "degraded"),
        info(12, "critical"),
        info(13, "ok", age_s=3.0, stalled=True, verdict="hung", stalls=1),
        info(14, "ok", age_s=9.0, stalled=True, verdict="hung", stalls=2),
        info(15, "ok", stalled=True, verdict="exited"),
        info(16, "ok", stalled=True, verdict="unknown", origin=varta.BeatOrigin.NETWORK_UNVERIFIED),
        info(17, "ok", age_s=0.05),
    ]
    recoveries = {13: (77, 2), 14: (99, 5)}  # pid 14's count is another lineage's
    body = render_agents(rows, recoveries, threshold_ms=500, version="9.9", hostname="h1")
    doc = doc_of(body)
    o = doc["observer"]
    assert o["version"] == "9.9" and o["hostname"] == "h1" and o["threshold_ms"] == 500
    assert abs(o["generated_unix"] - time.time()) < 60
    assert (o["agents_total"], o["agents_matched"], o["agents_listed"]) == (8, 8, 8)
    assert o["truncated"] is False
    assert o["by_status"] == {
        "hung": 2, "crashed": 0, "vanished": 0, "unknown": 1, "critical": 1, "degraded": 1,
        "ok": 2, "exited": 1,
    }  # fmt: skip
    order = [a["pid"] for a in doc["agents"]]
    # hung (longest silent first), unknown, critical, degraded, ok (longest first), exited
    assert order == [14, 13, 16, 12, 11, 10, 17, 15]
    a13 = next(a for a in doc["agents"] if a["pid"] == 13)
    assert a13 == {
        "pid": 13, "origin": "kernel_attested", "peer": None, "comm": None, "cmdline": None,
        "unit": None, "container": None, "status": "hung", "verdict": "hung",
        "since_last_beat_s": 3.0, "beats": 5, "stalls": 1, "recoveries": 2,
    }  # fmt: skip
    assert next(a for a in doc["agents"] if a["pid"] == 14)["recoveries"] == 0
    a16 = next(a for a in doc["agents"] if a["pid"] == 16)
    assert (a16["origin"], a16["status"], a16["verdict"]) == (
        "network_unverified",
        "unknown",
        "unknown",
    )
    assert next(a for a in doc["agents"] if a["pid"] == 11)["verdict"] is None


def test_identity_fields_are_read_through_the_adapter_and_escaped() -> None:
    class WithIdentity:
        pid, status, origin = 5, varta.Status.OK, varta.BeatOrigin.KERNEL_ATTESTED
        beats, stalls, age_ns, stalled, generation, verdict = 1, 0, 10**8, False, None, None
        peer = "uid=0"
        comm = 'we"ird\\name'
        cmdline = "python -c 'print(1)'\n\x00"
        unit = "api.service"
        container = "ctr-\u00e9"

    one: list[Any] = [WithIdentity()]
    doc = doc_of(render_agents(one, {}, threshold_ms=1, version="v"))
    a = doc["agents"][0]
    assert (a["peer"], a["comm"], a["cmdline"], a["unit"], a["container"]) == (
        WithIdentity.peer, WithIdentity.comm, WithIdentity.cmdline, "api.service",
        WithIdentity.container,
    )  # fmt: skip
    q = parse_query("unit=api.service")
    assert (
        render_agents([WithIdentity()], {}, threshold_ms=1, version="v", query=q).count(b'"pid"')
        == 1
    )  # type: ignore[list-item]
    q = parse_query("unit=other.service")
    assert (
        doc_of(render_agents([WithIdentity()], {}, threshold_ms=1, version="v", query=q))["agents"]
        == []
    )  # type: ignore[list-item]


def test_query_filters_limit_and_truncation(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [info(100 + i, "ok") for i in range(10)] + [
        info(200, "ok", stalled=True, verdict="hung")
    ]
    doc = doc_of(render_agents(rows, {}, threshold_ms=1, version="v", query=parse_query("limit=3")))
    assert [a["pid"] for a in doc["agents"]][:1] == [200]
    o = doc["observer"]
    assert (o["agents_total"], o["agents_matched"], o["agents_listed"], o["truncated"]) == (
        11, 11, 3, True,
    )  # fmt: skip
    q = parse_query("status=hung,crashed")
    doc = doc_of(render_agents(rows, {}, threshold_ms=1, version="v", query=q))
    assert [a["pid"] for a in doc["agents"]] == [200]
    assert doc["observer"]["agents_matched"] == 1 and doc["observer"]["truncated"] is False
    assert doc["observer"]["by_status"]["ok"] == 10  # counts cover every agent
    monkeypatch.setattr(agents_mod, "MAX_AGENTS", 4)
    doc = doc_of(render_agents(rows, {}, threshold_ms=1, version="v"))
    assert doc["observer"]["agents_listed"] == 4 and doc["observer"]["truncated"] is True
    assert MAX_AGENTS == 100_000


@pytest.mark.parametrize(
    "query",
    ["limit=-1", "limit=x", "limit=1e3", "limit=1234567890", "status=stalled", "bogus=1", "limit"],
)
def test_bad_queries_raise(query: str) -> None:
    with pytest.raises(ValueError):
        parse_query(query)


def test_good_queries() -> None:
    assert parse_query("") == Query()
    assert parse_query("limit=0&status=ok,hung&unit=a%20b.service") == Query(
        0, frozenset({"ok", "hung"}), "a b.service"
    )


def test_recovery_runner_counts_spawns_per_pid_and_lineage(tmp_path: Path) -> None:
    @dataclass(frozen=True)
    class Stall:
        pid: int
        generation: Optional[int]
        origin: int = varta.BeatOrigin.KERNEL_ATTESTED
        pid_ns_inode: Optional[int] = None
        last_nonce: int = 7
        last_ns: int = 0
        observer_ns: int = 0
        verdict: str = "hung"

    def stall(pid: int, generation: Optional[int]) -> Stall:
        return Stall(pid, generation)

    cfg = RecoveryConfig(RecoveryCommand.parse("true"), debounce_ms=0)
    runner = RecoveryRunner(cfg, None, own_ns_inode=None, capacity=2, ledger_capacity=2)
    now = 10**12
    for k, (pid, gen) in enumerate([(1, 5), (1, 5), (2, 7), (1, 6)]):
        d = runner.on_stall(stall(pid, generation=gen), now + k * 10**9)
        assert d.outcome == "spawned", d
        runner.reap(now + k * 10**9)
        deadline = time.monotonic() + 10
        while runner.outstanding and time.monotonic() < deadline:
            runner.reap(now + k * 10**9)
            time.sleep(0.01)
    # pid 1's third spawn is a new lineage (generation 6): its count restarts.
    assert runner.recoveries_by_pid == {2: (7, 1), 1: (6, 1)}
    runner.on_stall(stall(3, generation=1), now + 10 * 10**9)
    assert list(runner.recoveries_by_pid) == [1, 3]  # bounded: the oldest dropped
    runner.forget(1)
    assert list(runner.recoveries_by_pid) == [3]
    runner.shutdown(1000)


# --- the HTTP side --------------------------------------------------------------------------


def test_request_target() -> None:
    assert request_target(b"GET /agents?limit=3 HTTP/1.1\r\n\r\n") == (b"/agents", "limit=3")
    assert request_target(b"GET / HTTP/1.0\r\n") == (b"/", "")
    assert request_target(b"GET") == (b"", "")


def serve(server: MetricsServer, path: str, token: Optional[str]) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return server._respond(f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())


def test_routes_auth_page_headers_and_metrics_elsewhere() -> None:
    calls: list[str] = []

    def agents_body(query: str) -> bytes:
        calls.append(query)
        parse_query(query)
        return b'{"observer":{},"agents":[]}'

    stats = ServeStats()
    server = MetricsServer(
        "127.0.0.1", 0, lambda: b"metrics\n", stats, token=bytes.fromhex(TOKEN_HEX),
        routes=live_routes(agents_body),
    )  # fmt: skip
    try:
        assert serve(server, "/agents", None).startswith(b"HTTP/1.0 401 ")
        assert serve(server, "/agents", "00" * 32).startswith(b"HTTP/1.0 401 ")
        assert stats.auth_failures == 2 and calls == []
        resp = serve(server, "/agents?limit=2", TOKEN_HEX)
        head, _, body = resp.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK") and b"Content-Type: application/json" in head
        assert b"Cache-Control: no-store" in head and body.startswith(b'{"observer"')
        serve(server, "/agents?limit=2", TOKEN_HEX)
        assert calls == ["limit=2"]  # the second answer came from the one-second cache
        assert serve(server, "/agents?limit=x", TOKEN_HEX).startswith(b"HTTP/1.0 400 ")
        # The page holds no data: it is served without the token, with a strict CSP.
        page = serve(server, "/", None)
        head, _, body = page.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK") and b"text/html" in head
        assert b"Content-Security-Policy: " + CSP.encode() in head
        assert b"<script>" in body and b"http" not in body.replace(b"http-equiv", b"")
        assert serve(server, "/favicon.ico", None).startswith(b"HTTP/1.0 200 OK")
        assert stats.auth_failures == 2
        # Every other path is still /metrics (and still needs the token).
        assert serve(server, "/metrics", None).startswith(b"HTTP/1.0 401 ")
        assert serve(server, "/anything", TOKEN_HEX).endswith(b"\r\n\r\nmetrics\n")
    finally:
        server.stop()


def test_csp_hashes_match_the_inline_script_and_style() -> None:
    import base64
    import hashlib
    import re

    from varta.watch.status_page import PAGE

    for kind in ("script", "style"):
        bodies = re.findall(rf"<{kind}>(.*?)</{kind}>", PAGE, re.S)
        assert len(bodies) == 1, kind
        digest = base64.b64encode(hashlib.sha256(bodies[0].encode()).digest()).decode()
        assert f"{kind}-src 'sha256-{digest}'" in CSP
    assert "default-src 'none'" in CSP and "connect-src 'self'" in CSP
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", PAGE)  # no external asset


# --- end to end: a real daemon ---------------------------------------------------------------


def get_agents(addr: str, token: Optional[str] = None, query: str = "") -> dict[str, Any]:
    resp = http_get(addr, token, "/agents" + query)
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK"), head
    return doc_of(body)


def test_agents_endpoint_shows_a_hung_agent_and_its_recovery(tmp_path: Path) -> None:
    watch = Watch(
        tmp_path,
        "--prom-addr", "127.0.0.1:0",
        "--prom-rate-limit-per-sec", "0",
        "--recovery-exec", "true",
        "--recovery-debounce-ms", "60000",
        threshold_ms=300,
    )  # fmt: skip
    healthy, hung = Agent(watch.sock), Agent(watch.sock)
    try:
        assert watch.addr is not None

        def both() -> Optional[dict[str, Any]]:
            d = get_agents(watch.addr or "")
            return d if d["observer"]["agents_total"] == 2 else None

        doc = wait_for("both agents in /agents", both)
        assert doc["observer"]["threshold_ms"] == 300
        assert doc["observer"]["version"] == varta.__version__
        assert {a["pid"] for a in doc["agents"]} == {healthy.pid, hung.pid}
        assert all(a["status"] == "ok" and a["origin"] == "kernel_attested" for a in doc["agents"])
        hung.stop_process()

        def hung_first() -> Optional[dict[str, Any]]:
            d = get_agents(watch.addr or "")
            first = d["agents"][0]
            return d if first["pid"] == hung.pid and first["recoveries"] == 1 else None

        doc = wait_for("the hung agent first, recovered once", hung_first)
        first, second = doc["agents"]
        assert (first["status"], first["verdict"], first["stalls"]) == ("hung", "hung", 1)
        assert first["since_last_beat_s"] >= 0.3
        assert second["pid"] == healthy.pid and second["status"] == "ok"
        assert second["recoveries"] == 0 and second["since_last_beat_s"] < 0.3 + 5
        assert doc["observer"]["by_status"]["hung"] == 1
        only = get_agents(watch.addr, query="?status=ok")
        assert [a["pid"] for a in only["agents"]] == [healthy.pid]
    finally:
        hung.kill()
        healthy.kill()
        assert watch.stop() == 0, watch.stderr


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VARTA, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_varta_agents_and_top_with_a_token(tmp_path: Path) -> None:
    token = token_file(tmp_path)
    watch = Watch(
        tmp_path,
        "--prom-addr", "127.0.0.1:0",
        "--prom-token-file", str(token),
        "--prom-rate-limit-per-sec", "0",
    )  # fmt: skip
    agent = Agent(watch.sock)
    try:
        addr = watch.addr or ""
        wait_for("the agent", lambda: get_agents(addr, TOKEN_HEX)["agents"])
        got = run_cli("agents", "--url", addr, "--token-file", str(token), "--json")
        assert got.returncode == 0, got.stderr
        doc = json.loads(got.stdout)
        assert [a["pid"] for a in doc["agents"]] == [agent.pid]
        assert set(doc["agents"][0]) == {
            "pid", "origin", "peer", "comm", "cmdline", "unit", "container", "status",
            "verdict", "since_last_beat_s", "beats", "stalls", "recoveries",
        }  # fmt: skip
        got = run_cli("agents", "--url", f"http://{addr}/", "--token-file", str(token))
        assert got.returncode == 0, got.stderr
        lines = got.stdout.splitlines()
        assert "1 agents: ok 1" in lines[0] and lines[1].split()[:3] == ["STATUS", "PID", "UNIT"]
        assert lines[2].split()[:2] == ["ok", str(agent.pid)]
        got = run_cli("top", "--url", addr, "--token-file", str(token), "--once")
        assert got.returncode == 0, got.stderr
        assert "\x1b" not in got.stdout
        assert got.stdout.splitlines()[2].split()[:2] == ["ok", str(agent.pid)]
        # Without the token, or with a wrong one: one line, exit 1.
        got = run_cli("agents", "--url", addr)
        assert got.returncode == 1 and got.stdout == ""
        assert got.stderr.count("\n") == 1 and "401 Unauthorized" in got.stderr
        assert "--token-file" in got.stderr
        wrong = tmp_path / "wrong"
        wrong.write_text("00" * 32)
        wrong.chmod(0o600)
        got = run_cli("top", "--once", "--url", addr, "--token-file", str(wrong))
        assert got.returncode == 1 and "token was refused" in got.stderr
    finally:
        agent.kill()
        assert watch.stop() == 0, watch.stderr


def test_varta_top_redraws_in_place_on_a_terminal(tmp_path: Path) -> None:
    watch = Watch(tmp_path, "--prom-addr", "127.0.0.1:0", "--prom-rate-limit-per-sec", "0")
    agent = Agent(watch.sock)
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - child
        os.environ["COLUMNS"], os.environ["LINES"] = "120", "20"
        os.execv(sys.executable, [*VARTA, "top", "--url", watch.addr or "", "--interval", "0.2"])
    out = b""

    def last_frame_rows() -> list[str]:
        """The rows of the newest redraw read so far (each starts with
        cursor-home); a row counts once its newline has arrived."""
        frame = out.rsplit(b"\x1b[H", 1)[-1].decode(errors="replace")
        return [ln.replace("\x1b[K", "") for ln in frame.split("\n")[:-1]]

    try:
        deadline = time.monotonic() + 30
        # Three redraws, the newest one read up to and including the agent's row
        # (a read can end mid-frame on a loaded host).
        while out.count(b"\x1b[H") < 3 or not any(
            str(agent.pid) in row for row in last_frame_rows()[2:3]
        ):
            assert time.monotonic() < deadline, out[-500:]
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                out += os.read(fd, 65536)
        assert out.startswith(b"\x1b[?1049h")  # the alternate screen
        rows = last_frame_rows()
        assert rows[1].split()[:2] == ["STATUS", "PID"]
        assert str(agent.pid) in rows[2] and "ok" in rows[2]
    finally:
        os.kill(pid, 2)  # Ctrl-C: leaves the alternate screen, exit 0
        tail = b""
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            tail += chunk
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        agent.kill()
        assert watch.stop() == 0, watch.stderr
    assert b"\x1b[?1049l" in tail
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize(
    "args, flag",
    [
        (["top"], "--url"),
        (["top", "--url", "ftp://x:1"], "--url"),
        (["top", "--url", "127.0.0.1:9/metrics"], "--url"),
        (["top", "--url", "127.0.0.1:99999"], "--url"),
        (["top", "--url", "127.0.0.1:9", "--interval", "0"], "--interval"),
        (["top", "--url", "127.0.0.1:9", "--interval", "nan"], "--interval"),
        (["agents", "--url", "127.0.0.1:9", "--status", "stalled"], "--status"),
        (["agents", "--url", "127.0.0.1:9", "--limit", "-1"], "--limit"),
        (["agents", "--url", "127.0.0.1:9", "--token-file", "/nonexistent"], "--token-file"),
        (["agents", "--url", "127.0.0.1:9", "--bogus"], "--bogus"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args: list[str], flag: str) -> None:
    got = run_cli(*args)
    assert got.returncode == 2, (got.returncode, got.stderr)
    assert got.stderr.count("\n") == 1 and flag in got.stderr, got.stderr
    assert got.stderr.startswith(f"varta {args[0]}: ")


def test_unreachable_daemon_is_one_line_exit_1() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = run_cli("agents", "--url", f"127.0.0.1:{port}")
    assert got.returncode == 1 and got.stderr.count("\n") == 1
    assert got.stderr.startswith("varta agents: cannot reach http://127.0.0.1:")


def test_agents_url_and_table_formatting() -> None:
    assert agents_url("127.0.0.1:9100") == "http://127.0.0.1:9100/agents"
    assert agents_url("http://[::1]:9100/") == "http://[::1]:9100/agents"
    assert agents_url("https://h:1/agents") == "https://h:1/agents"
    doc = doc_of(render_agents([info(42, "degraded", age_s=125)], {}, threshold_ms=9, version="v"))
    lines = table_lines(doc, 80, colour=True)
    assert all(len(ln.replace("\x1b[33m", "").replace("\x1b[0m", "")) <= 80 for ln in lines)
    assert lines[2].endswith("…")  # cut to the width
    assert lines[2].startswith("\x1b[33mdegraded\x1b[0m") and " 2m05s " in lines[2]
