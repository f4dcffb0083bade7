"""A real Prometheus server scrapes varta-watch with the bearer token (ops/ config).

Prometheus comes from the Debian ``prometheus`` package (scripts/test.sh installs
it when missing). The shipped ops/prometheus/prometheus.yml is used with only the
interval, target and token path rewritten, so the operator kit is what is tested.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional

from watch_e2e import Agent, Watch, http_get, token_file, wait_for

PROM = Path(__file__).resolve().parent.parent / "ops" / "prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_prometheus_scrapes_beats_with_the_bearer_token(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary is not None, "prometheus missing: scripts/test.sh installs the Debian package"
    token = token_file(tmp_path)
    watch = Watch(tmp_path, "--prom-addr", "127.0.0.1:0", "--prom-token-file", str(token))
    agent = Agent(watch.sock, interval_ms=50)
    prom: Optional[subprocess.Popen[bytes]] = None
    try:
        assert watch.addr is not None
        config = (PROM / "prometheus.yml").read_text()
        for old, new in [
            ("scrape_interval: 15s", "scrape_interval: 1s"),
            ("evaluation_interval: 15s", "evaluation_interval: 1s"),
            ("scrape_timeout: 5s", "scrape_timeout: 1s"),
            ('"127.0.0.1:9464"', f'"{watch.addr}"'),
            ("/etc/prometheus/varta-prom-token", str(token)),
        ]:
            assert old in config, old
            config = config.replace(old, new)
        conf_dir = tmp_path / "prometheus"
        conf_dir.mkdir()
        (conf_dir / "prometheus.yml").write_text(config)
        for rules in PROM.glob("varta-*-rules.yml"):
            shutil.copy(rules, conf_dir / rules.name)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        prom = subprocess.Popen(
            [
                binary,
                f"--config.file={conf_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for("Prometheus to be ready", lambda: prom.poll() is None and ready(base), 60)

        def beats() -> Optional[float]:
            res = api(base, "/api/v1/query", query=f'varta_beats_total{{pid="{agent.pid}"}}')
            result = res["data"]["result"]
            if not result:
                return None
            assert result[0]["metric"]["job"] == "varta-watch"
            return float(result[0]["value"][1]) or None

        count = wait_for("varta_beats_total for the agent in Prometheus", beats, 60)
        assert count >= 1
        up = api(base, "/api/v1/query", query='up{job="varta-watch"}')["data"]["result"]
        assert up and up[0]["value"][1] == "1"
        rules = api(base, "/api/v1/rules")["data"]["groups"]
        assert {g["name"] for g in rules} == {"varta-watch.recording", "varta-watch.alerts"}
        # Prometheus authenticated on every scrape: the daemon counted no failure.
        body = http_get(watch.addr).decode()
        assert "\nvarta_prom_auth_failures_total 0\n" in body

        # Prometheus asks for gzip (Accept-Encoding: gzip) and parsed what it
        # got; a body counts the gzip answers made before it was rendered.
        def gzipped() -> bool:
            text = http_get(watch.addr or "").decode()  # empty when over the rate limit
            line = next(
                (ln for ln in text.splitlines() if ln.startswith("varta_scrape_gzip_total ")),
                "- 0",
            )
            return int(line.split()[1]) >= 1

        wait_for("a gzip answer to Prometheus counted", gzipped, 30)
    finally:
        if prom is not None:
            prom.terminate()
            prom.communicate(timeout=30)
        agent.kill()
        assert watch.stop() == 0, watch.stderr
