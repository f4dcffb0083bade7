"""The operator kit in ops/: promtool accepts it and it uses only our metric names."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from varta.watch.config import parse_args
from varta.watch.metrics import FAMILIES

OPS = Path(__file__).resolve().parent.parent / "ops"
PROM = OPS / "prometheus"
RULES = [PROM / "varta-recording-rules.yml", PROM / "varta-alert-rules.yml"]
METRIC = re.compile(r"\bvarta(?::[a-z0-9_]+)+\b|\bvarta_[a-z0-9_]+\b")


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool is not None, (
        "promtool missing: scripts/test.sh installs the Debian prometheus package"
    )
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def known_names() -> set[str]:
    names = set()
    for f in FAMILIES:
        names.add(f.name)
        if f.type == "histogram":
            names |= {f.name + "_bucket", f.name + "_sum", f.name + "_count"}
    for path in RULES:
        names |= set(re.findall(r"record:\s*(\S+)", path.read_text()))
    return names


def test_promtool_check_rules() -> None:
    res = promtool("check", "rules", *map(str, RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_rule_unit_tests() -> None:
    """The audit-ring alert fires on level="warn" — the label value the exporter emits."""
    res = promtool("test", "rules", "tests/varta-alert-rules.test.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_watermark_alerts_use_exported_level_values() -> None:
    text = (PROM / "varta-alert-rules.yml").read_text()
    levels = set(re.findall(r'varta_audit_ring_watermark_total\{level="([^"]+)"\}', text))
    watermark = next(f for f in FAMILIES if f.name == "varta_audit_ring_watermark_total")
    assert levels == set(watermark.label_values) == {"warn", "critical"}


def test_promtool_check_config(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("ab" * 32 + "\n")
    config = (PROM / "prometheus.yml").read_text()
    assert "credentials_file: /etc/prometheus/varta-prom-token" in config
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/etc/prometheus/varta-prom-token", str(token))
    )
    for path in RULES:
        shutil.copy(path, tmp_path / path.name)
    res = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_fleet_configs_check(tmp_path: Path) -> None:
    """ops/fleet: promtool accepts the scrape config (with the rules beside it)
    and amtool the Alertmanager routing; tests/test_fleet_alertmanager.py runs them."""
    token = tmp_path / "token"
    token.write_text("ab" * 32 + "\n")
    config = (OPS / "fleet" / "prometheus.yml").read_text()
    assert "credentials_file: /etc/prometheus/varta-prom-token" in config
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/etc/prometheus/varta-prom-token", str(token))
    )
    shutil.copytree(OPS / "fleet" / "targets", tmp_path / "targets")
    for path in RULES:
        shutil.copy(path, tmp_path / path.name)
    res = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    amtool = shutil.which("amtool")
    assert amtool is not None, (
        "amtool missing: scripts/test.sh installs the Debian prometheus-alertmanager package"
    )
    res = subprocess.run(
        [amtool, "check-config", str(OPS / "fleet" / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(
    "path", [*RULES, OPS / "grafana" / "varta-watch.json"], ids=lambda p: p.name
)
def test_only_our_metric_names(path: Path) -> None:
    if path.suffix == ".json":
        dash = json.loads(path.read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        exprs.append(dash["templating"]["list"][1]["definition"])
        assert len(exprs) > 20
        text = "\n".join(exprs)
    else:
        text = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        )
    used = set(METRIC.findall(text))
    assert used, path
    assert used <= known_names(), used - known_names()


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    text = (OPS / "systemd" / "varta-watch.service").read_text()
    unit.read_string(text.replace("\\\n", " "))
    svc = unit["Service"]
    assert svc["Type"] == "notify" and svc["WatchdogSec"] == "10"
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    argv = shlex.split(svc["ExecStart"])
    assert argv[0].endswith("/varta-watch")
    cfg = parse_args(argv[1:])  # every flag in the unit is a valid flag
    assert cfg.prom_token_file is not None and cfg.recovery_audit_file is not None
    # the watchdog period leaves room for the self-watchdog default (4 s) and the
    # read timeout ceiling
    assert int(svc["WatchdogSec"]) > 4
