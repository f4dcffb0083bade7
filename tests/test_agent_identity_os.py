"""Identity from the OS for kernel-attested agents
(docs/observer.md#agent-identity): a real agent started as
``python worker.py --queue ingest`` is named ``worker.py``, with its comm,
short command line and systemd unit — the unit from a cgroup named
``varta-test.service`` made for it when this runs as root on a writable
cgroup2 hierarchy (else whatever unit its cgroup names) — on
``Observer.agents()``, on its ``Stall`` and in the daemon's log line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import varta
from varta.watch.identity import agent_label
from varta.watch.loop import describe_stall

WORKER = """
import os, time, varta
agent = varta.Varta.connect(os.environ["VARTA_SOCK"])
while True:
    agent.beat("ok", 1)
    time.sleep(0.05)
"""

UNIT = "varta-test.service"


def cgroup2_root() -> Optional[Path]:
    """A cgroup2 mount we can make a group in (root only), else None."""
    if os.geteuid() != 0:
        return None
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2" and os.access(fields[1], os.W_OK):
            return Path(fields[1])
    return None


def unit_in(cgroup_text: str) -> Optional[str]:
    """The unit the agent's own cgroup file names (independent check of the
    Rust parser for the case without a test cgroup): v2 line, deepest
    ``.service``/``.scope``."""
    for line in cgroup_text.splitlines():
        if line.startswith("0::"):
            comps = [c for c in line[3:].split("/") if c.endswith((".service", ".scope"))]
            return comps[-1] if comps else None
    return None


def container_in(cgroup_text: str) -> Optional[str]:
    """The short id of a 64-hex-digit container id in the agent's cgroups."""
    for part in re.split(r"[/:\n.-]", cgroup_text):
        if re.fullmatch(r"[0-9a-f]{64}", part):
            return part[:12]
    return None


@pytest.fixture
def test_cgroup() -> Iterator[Optional[Path]]:
    root = cgroup2_root()
    if root is None:
        yield None
        return
    group = root / UNIT
    group.mkdir(exist_ok=True)
    try:
        yield group
    finally:
        # The agent is gone by now; an empty group can be removed.
        for _ in range(100):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def wait(obs: varta.Observer, pred: Callable[[list[Any]], bool], within: float = 10.0) -> list[Any]:
    seen: list[Any] = []
    end = time.monotonic() + within
    while time.monotonic() < end:
        seen.extend(obs.poll(timeout=0.05))
        if pred(seen):
            return seen
    raise AssertionError(f"not seen within {within}s: {seen!r}")


def test_a_kernel_attested_agent_is_named_by_the_os(
    tmp_path: Path, test_cgroup: Optional[Path]
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    sock = tmp_path / "obs.sock"
    procs = None if test_cgroup is None else test_cgroup / "cgroup.procs"

    def join_cgroup() -> None:  # in the child, before exec: first beat already inside
        if procs is not None:
            procs.write_text(str(os.getpid()))

    with varta.Observer(str(sock), 600, max_beat_rate=0) as obs:
        proc = subprocess.Popen(
            [sys.executable, str(script), "--queue", "ingest"],
            env={**os.environ, "VARTA_SOCK": str(sock)},
            preexec_fn=join_cgroup,
        )
        try:
            wait(obs, lambda _: (a := obs.agent(proc.pid)) is not None and a.cmdline is not None)
            info = obs.agent(proc.pid)
            assert info is not None
            assert info.origin is varta.BeatOrigin.KERNEL_ATTESTED and info.peer is None
            assert info.cmdline == "worker.py --queue ingest"
            assert info.comm == Path(sys.executable).name[:15] or info.comm.startswith("python")
            want_unit = (
                UNIT
                if test_cgroup is not None
                else unit_in(Path(f"/proc/{proc.pid}/cgroup").read_text())
            )
            assert info.unit == want_unit
            assert info.container == container_in(Path(f"/proc/{proc.pid}/cgroup").read_text())
            # The same on agents() and, once it hangs, on its Stall.
            (listed,) = [a for a in obs.agents() if a.pid == proc.pid]
            assert (listed.cmdline, listed.unit, listed.comm) == (
                info.cmdline,
                info.unit,
                info.comm,
            )
            os.kill(proc.pid, signal.SIGSTOP)
            seen = wait(obs, lambda evs: any(isinstance(e, varta.Stall) for e in evs))
            (stall,) = [e for e in seen if isinstance(e, varta.Stall)]
            assert stall.verdict is varta.Verdict.HUNG
            assert (stall.pid, stall.comm, stall.cmdline, stall.unit, stall.peer) == (
                proc.pid,
                info.comm,
                "worker.py --queue ingest",
                want_unit,
                None,
            )
            where = f" in {want_unit}" if want_unit else ""
            assert agent_label(stall) == f"worker.py[{proc.pid}]{where}"
            assert describe_stall(stall, 600).startswith(f"worker.py[{proc.pid}]{where} hung: ")
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


def test_plain_pid_when_nothing_is_known() -> None:
    stall = varta.Stall(6172, 1, 0, varta.BeatOrigin.KERNEL_ATTESTED, None, None, 2_000_000_000)
    assert agent_label(stall) == "pid 6172"
    remote = varta.Stall(
        4242, 1, 0, varta.BeatOrigin.NETWORK_UNVERIFIED, None, None, 1, peer="127.0.0.2"
    )
    assert agent_label(remote) == "pid 4242 on 127.0.0.2"
    boxed = varta.Stall(
        7,
        1,
        0,
        varta.BeatOrigin.KERNEL_ATTESTED,
        None,
        None,
        1,
        comm="nginx",
        container="4f2b9c1d7e8a",
    )
    assert agent_label(boxed) == "nginx[7] in container 4f2b9c1d7e8a"
