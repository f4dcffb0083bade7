"""The interim main job: ``python -m varta demo`` and ``scripts/demo.sh``."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from varta.demo import default_socket_path

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def sock_path() -> Iterator[pathlib.Path]:
    d = pathlib.Path(tempfile.mkdtemp(prefix="va-"))
    yield d / "demo" / "varta.sock"
    shutil.rmtree(d, ignore_errors=True)


def test_demo_prints_decoded_beats_and_the_terminal_frame(sock_path: pathlib.Path) -> None:
    cmd = [sys.executable, "-m", "varta", "demo", "--socket", str(sock_path)]
    out = subprocess.run(
        [*cmd, "--interval", "0.05", "--count", "4", "--duration", "120"],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    beats = re.findall(r"pid=(\d+) (OK|DEGRADED)\s+nonce=(\d+)\s+ts=\s*[\d.]+s payload=(\d+)", out)
    assert len(beats) >= 4, out
    assert [int(b[2]) for b in beats[:4]] == [1, 2, 3, 4]
    assert [int(b[3]) for b in beats[:4]] == [1, 2, 3, 4]
    pid = beats[0][0]
    assert f"started demo agent pid={pid}" in out
    assert re.search(rf"pid={pid} CRITICAL TERMINAL", out), out
    assert "stopped after" in out
    assert not sock_path.exists(), "the listener removes its socket"
    assert stat.S_IMODE(sock_path.parent.stat().st_mode) == 0o700


def test_demo_refuses_a_live_socket_and_replaces_a_stale_one(sock_path: pathlib.Path) -> None:
    import socket

    sock_path.parent.mkdir(parents=True)
    live = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    live.bind(str(sock_path))
    cmd = [sys.executable, "-m", "varta", "demo", "--socket", str(sock_path)]
    try:
        res = subprocess.run([*cmd, "--count", "1"], capture_output=True, text=True, timeout=120)
        assert res.returncode != 0
        assert "already running" in res.stderr
    finally:
        live.close()  # leaves a stale file behind
    res = subprocess.run(
        [*cmd, "--count", "1", "--interval", "0.05"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    assert "nonce=1" in res.stdout


def test_default_socket_path_prefers_xdg_runtime_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_socket_path() == tmp_path / "varta-demo" / "varta.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_path().parent.name == f"varta-demo-{os.getuid()}"


def test_demo_script_is_wired() -> None:
    script = (ROOT / "scripts" / "demo.sh").read_text()
    assert "python -m varta demo" in script
    assert "maturin develop" in script
