"""The proving ground's fast tier (part of ``scripts/test.sh``; well under 60 s).

The full tier, at full size and with a table of figures:
``python tests/proving/full.py`` (see the README).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import harness
import pytest

#: Wall time of each scenario, checked against the tier's budget at the end.
_TIMES: dict[str, float] = {}
BUDGET_S = 60.0


@pytest.fixture(scope="module", autouse=True)
def tier_budget() -> Iterator[None]:
    """After the module: the scenarios that ran fit the fast tier's budget."""
    yield
    assert sum(_TIMES.values()) < BUDGET_S, _TIMES


def timed(name: str, result: Any, t0: float) -> Any:
    _TIMES[name] = time.monotonic() - t0
    return result


def test_fuzz_100k_datagrams_every_one_counted_exactly_once() -> None:
    t0 = time.monotonic()
    r = timed("fuzz", harness.fuzz_datagrams(100_000), t0)
    assert r["sent"] == r["counted"] == 100_000


def test_secure_replay_of_a_superseded_session_is_never_credited() -> None:
    # Issue 11 hole 4: 30 of 30 replayed frames used to be credited.
    t0 = time.monotonic()
    r = timed("secure_replay", harness.secure_replay(frames=30), t0)
    assert (r["refused"], r["credited"]) == (30, 0)


def test_torn_tsv_tail_is_cut_not_glued(tmp_path: Path) -> None:
    # Issue 11 hole 1, the issue's own reproduction.
    t0 = time.monotonic()
    timed("torn_tail", harness.torn_tail(tmp_path), t0)


def test_sigkill_restart_loop_loses_no_spawn_record(tmp_path: Path) -> None:
    # Issue 11 hole 3 end to end; the deterministic unit test is
    # tests/test_durability.py::test_recovery_child_finds_its_spawn_record_on_disk.
    t0 = time.monotonic()
    r = timed("sigkill_loop", harness.sigkill_loop(tmp_path, kills=3), t0)
    assert r["kills"] == 3 and r["children"] > 0 and r["unrecorded"] == 0


def test_full_disk_refuses_recovery_and_accounts_every_record(tmp_path: Path) -> None:
    # Issue 11 hole 2 on a real full file system (a 256 KiB tmpfs; needs root).
    t0 = time.monotonic()
    r = timed("full_disk", harness.full_disk(tmp_path), t0)
    assert r["unrecorded"] == 0 and r["refused_audit_unavailable"] >= 3
    assert r["audit_lost_in_gaps"] == r["audit_dropped"]


def test_logrotate_under_load_loses_nothing(tmp_path: Path) -> None:
    # SIGHUP reopens the files (and never stops the daemon: it exits 0 at the end).
    t0 = time.monotonic()
    r = timed("logrotate", harness.logrotate_under_load(tmp_path), t0)
    assert r["beats_sent"] == r["beat_rows"] and r["rotations"] == 4


def test_sighup_reopens_and_no_signal_stops_the_daemon(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = timed("signals", harness.signals_keep_the_daemon(tmp_path), t0)
    assert r["rows_old"] >= 1 and r["rows_new"] >= 1
