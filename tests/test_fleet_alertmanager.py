"""A fleet with real Prometheus and Alertmanager (docs/fleet.md, ops/fleet/).

Three ``varta-watch`` daemons stand for three hosts, each on its own socket
and ``/metrics`` port. A real Prometheus (Debian ``prometheus``) scrapes them
with the shipped ops/fleet/prometheus.yml — targets from a file, each with a
``host`` label — and evaluates the shipped ops/prometheus rules; a real
Alertmanager (Debian ``prometheus-alertmanager``; scripts/test.sh installs
both) routes with the shipped ops/fleet/alertmanager.yml to a webhook this
test serves. Only intervals, ``for:`` durations, addresses and paths are
rewritten for test speed.

- host-2's agent hangs (SIGSTOP): exactly one alert, carrying host, pid and
  the agent's unit;
- host-1's agent exits cleanly: no alert;
- host-3's daemon is SIGKILLed: its own VartaWatchDown alert (host-3 has
  no label in the targets file: the relabel rule names it by its address).

Waits are deadlines on the webhook's deliveries, not sleeps.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

from test_agent_identity_os import cgroup2_root
from test_prometheus_integration import api, free_port, ready
from watch_e2e import TOKEN_HEX, Agent, Watch, http_get, token_file, wait_for

OPS = Path(__file__).resolve().parent.parent / "ops"
FLEET = Path(__file__).resolve().parent / "fleet.py"

Labels = tuple[tuple[str, str], ...]
#: host-3's `host` label: its address without the port (ops/fleet relabeling).
HOST_3 = "127.0.0.1"
#: The unit host-2's hanging agent runs in (a cgroup2 group the test makes).
HUNG_UNIT = "varta-fleet-ingest.service"


class Webhook:
    """Alertmanager's webhook receiver: every firing alert delivered, by labels."""

    def __init__(self) -> None:
        self.firing: dict[Labels, int] = {}  # labels -> deliveries
        self.cond = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hook.cond:
                    for alert in data["alerts"]:
                        if alert["status"] == "firing":
                            key = tuple(sorted(alert["labels"].items()))
                            hook.firing[key] = hook.firing.get(key, 0) + 1
                    hook.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/varta"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self) -> list[dict[str, str]]:
        with self.cond:
            return [dict(k) for k in self.firing]

    def wait(self, what: str, match: dict[str, str], timeout: float) -> dict[str, str]:
        def found() -> Optional[dict[str, str]]:
            hits = [a for a in self.alerts() if match.items() <= a.items()]
            return hits[0] if hits else None

        with self.cond:
            if not self.cond.wait_for(lambda: found() is not None, timeout):
                raise AssertionError(f"no alert {what} within {timeout} s: {self.alerts()}")
        alert = found()
        assert alert is not None
        return alert

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def remove_dir(path: Path) -> bool:
    """rmdir *path*; False while it is busy (a reaped process leaves a cgroup a moment later)."""
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def short_durations(text: str) -> str:
    """The shipped rules with every ``for:`` of minutes turned into seconds and
    group intervals of 1 s (a test copy: the shipped values stay)."""
    out = re.sub(r"for: (\d+)m\b", r"for: \1s", text)
    out = re.sub(r"\binterval: \d+[sm]\b", "interval: 1s", out)
    assert out != text
    return out


def rewrite(text: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new)
    return text


def body_line(addr: str, prefix: str) -> Optional[str]:
    body = http_get(addr, TOKEN_HEX).partition(b"\r\n\r\n")[2].decode()
    return next((ln for ln in body.splitlines() if ln.startswith(prefix)), None)


def label(line: str, name: str) -> str:
    m = re.search(rf'[{{,]{name}="((?:[^"\\]|\\.)*)"', line)
    assert m is not None, (name, line)
    return m.group(1)


def test_a_hang_a_clean_exit_and_a_dead_observer_across_three_hosts(tmp_path: Path) -> None:
    prom_bin = shutil.which("prometheus")
    am_bin = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert prom_bin is not None, "prometheus missing: scripts/test.sh installs the Debian package"
    assert am_bin is not None, (
        "prometheus-alertmanager missing: scripts/test.sh installs the Debian package"
    )
    token = token_file(tmp_path)
    procs: list[subprocess.Popen[bytes]] = []
    watches: list[Watch] = []
    agents: list[Agent] = []
    clean: Optional[subprocess.Popen[str]] = None
    unit_group: Optional[Path] = None
    hook = Webhook()
    try:
        for i in (1, 2, 3):
            home = tmp_path / f"host-{i}"
            home.mkdir()
            args = ["--prom-addr", "127.0.0.1:0", "--prom-token-file", str(token)]
            watches.append(Watch(home, *args, threshold_ms=500))
        addrs = [w.addr for w in watches]
        assert all(addrs)
        # host-1: an agent that will exit cleanly; host-2: one that will hang;
        # host-3: a healthy one (its observer will die).
        clean = subprocess.Popen(
            [sys.executable, str(FLEET), str(watches[0].sock), "1", "50"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert clean.stdout is not None
        clean_pid = int(clean.stdout.readline())
        assert clean.stdout.readline().strip() == "ready"
        # The agent that hangs runs in a unit of its own where this host lets
        # a test make one (root, cgroup2), as a service on a real host would.
        cg_root = cgroup2_root()
        if cg_root is not None:
            unit_group = cg_root / HUNG_UNIT
            unit_group.mkdir(exist_ok=True)
        hung = Agent(watches[1].sock, interval_ms=50, cgroup=unit_group)
        agents += [hung, Agent(watches[2].sock, interval_ms=50)]

        # Alertmanager with the shipped routing, delivering to our webhook.
        am_conf = rewrite(
            (OPS / "fleet" / "alertmanager.yml").read_text(),
            [
                ("group_wait: 30s", "group_wait: 0s"),
                ("group_interval: 5m", "group_interval: 1s"),
                ("http://alert-router.example:5001/varta", hook.url),
                ("http://payments-oncall.example:5001/varta", hook.url),
            ],
        )
        (tmp_path / "alertmanager.yml").write_text(am_conf)
        am_port = free_port()
        am_base = f"http://127.0.0.1:{am_port}"
        procs.append(
            subprocess.Popen(
                [
                    am_bin,
                    f"--config.file={tmp_path / 'alertmanager.yml'}",
                    f"--storage.path={tmp_path / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

        # Prometheus with the shipped fleet scrape config and rules.
        conf = tmp_path / "prometheus"
        (conf / "targets").mkdir(parents=True)
        (conf / "prometheus.yml").write_text(
            rewrite(
                (OPS / "fleet" / "prometheus.yml").read_text(),
                [
                    ("scrape_interval: 15s", "scrape_interval: 1s"),
                    ("evaluation_interval: 15s", "evaluation_interval: 1s"),
                    ("scrape_timeout: 5s", "scrape_timeout: 1s"),
                    ("refresh_interval: 1m", "refresh_interval: 1s"),
                    ('"alertmanager.example:9093"', f'"127.0.0.1:{am_port}"'),
                    ("/etc/prometheus/varta-prom-token", str(token)),
                ],
            )
        )
        # Hosts 1 and 2 are named in the targets file; host 3 is not, so the
        # shipped relabel rule names it after its address without the port.
        (conf / "targets" / "fleet.yml").write_text(
            f'- targets: ["{addrs[0]}"]\n  labels:\n    host: host-1\n'
            f'- targets: ["{addrs[1]}"]\n  labels:\n    host: host-2\n'
            f'- targets: ["{addrs[2]}"]\n'
        )
        for rules in (OPS / "prometheus").glob("varta-*-rules.yml"):
            (conf / rules.name).write_text(short_durations(rules.read_text()))
        prom_port = free_port()
        base = f"http://127.0.0.1:{prom_port}"
        procs.append(
            subprocess.Popen(
                [
                    prom_bin,
                    f"--config.file={conf / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for("Alertmanager to be ready", lambda: procs[0].poll() is None and ready(am_base), 60)
        wait_for("Prometheus to be ready", lambda: procs[1].poll() is None and ready(base), 60)

        def scraped() -> bool:
            res = api(base, "/api/v1/query", query='varta_status{job="varta-watch"}')
            hosts = {r["metric"].get("host") for r in res["data"]["result"]}
            return hosts == {"host-1", "host-2", HOST_3}

        wait_for("every host's agent in Prometheus", scraped, 60)

        # The clean exit on host-1 and the hang on host-2, at once.
        clean.send_signal(signal.SIGTERM)
        hung.stop_process()
        assert clean.wait(timeout=30) == 0
        alert = hook.wait(
            "VartaAgentStalled for host-2", {"alertname": "VartaAgentStalled"}, timeout=60
        )
        assert alert["host"] == "host-2" and alert["pid"] == str(hung.pid), alert
        # The agent's unit, as its observer exports it, is on the alert
        # (Prometheus drops an empty label, so "" means absent).
        row = body_line(addrs[1] or "", f'varta_status{{pid="{hung.pid}",')
        assert row is not None and row.endswith(" 3"), row
        assert alert.get("unit", "") == label(row, "unit"), (alert, row)
        if unit_group is not None:
            assert alert["unit"] == HUNG_UNIT, alert
        # host-1's observer saw the clean exit (and retired the agent).
        exited = body_line(addrs[0] or "", 'varta_stall_verdicts_total{verdict="exited"}')
        assert exited == 'varta_stall_verdicts_total{verdict="exited"} 1', exited
        assert body_line(addrs[0] or "", f'varta_status{{pid="{clean_pid}",') is None

        # host-3's observer dies.
        watches[2].proc.send_signal(signal.SIGKILL)
        down = hook.wait("VartaWatchDown for host-3", {"alertname": "VartaWatchDown"}, 60)
        assert down["host"] == HOST_3, down

        # Everything delivered: one agent alert (host-2's hang), one observer
        # alert (host-3), nothing for host-1's clean exit.
        alerts = hook.alerts()
        per_agent = [a for a in alerts if "pid" in a]
        assert per_agent == [alert], alerts
        assert [a for a in alerts if a["alertname"] == "VartaWatchDown"] == [down], alerts
        assert not [a for a in alerts if a.get("host") == "host-1"], alerts
    finally:
        if clean is not None and clean.poll() is None:
            clean.kill()
            clean.wait()
        for agent in agents:
            agent.kill()
        if unit_group is not None:
            wait_for("the test unit's cgroup to empty", lambda: remove_dir(unit_group), 10)
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=30)
        hook.close()
        for w in watches:
            w.kill()
