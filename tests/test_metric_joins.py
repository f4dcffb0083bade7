"""The join between producers and the metric family table is checked, not
matched by name in the dark: every key the running daemon's snapshot (and the
HTTP thread and the log limiter) produces is a family of the table, and every
scalar family of the table has a producer, except the few listed here with
the reason they are always zero. A renamed counter on either side fails here
instead of exporting 0 forever."""

from __future__ import annotations

import sys
from pathlib import Path

from varta.watch.config import parse_args
from varta.watch.logsetup import RateLimiter
from varta.watch.loop import Daemon
from varta.watch.metrics import FAMILIES, ROW_FAMILIES, H, ServeStats, counter_key

#: Families no code path increments, and why (kept in the table for parity
#: with upstream's exposition).
ALWAYS_ZERO = {
    # Our tables cannot exhaust a probe (per-pid rows are native; the
    # per-IP table and the outstanding-child table are dicts).
    "prom_pid_row_refused": "per-pid rows are rendered natively, never refused",
    "prom_ip_state_probe_exhausted": "the per-IP table is a dict, no probing",
    "recovery_outstanding_probe_exhausted": "outstanding children are a dict, no probing",
    "socket_bind_dir_fsync_failed": "the socket directory is not fsynced after bind",
}

#: Keys the observer reports that are not families of their own, and why.
NOT_EXPORTED = {
    "beats": "the per-pid varta_beats_total rows carry it (upstream exports no total)",
    "stalls": "the per-pid varta_stalls_total rows carry it (upstream exports no total)",
}

#: Keys filled in by the collector itself from the snapshot's scalar fields.
FROM_SNAPSHOT_FIELDS = {"watch_uptime_seconds", "watch_last_poll_loop_timestamp_seconds"}


def scalar_families() -> set[str]:
    """Families from counters: not histograms, not computed from the per-pid rows."""
    assert {f.name for f in FAMILIES if f.label == "pid"} <= ROW_FAMILIES
    return {counter_key(f.name) for f in FAMILIES if f.type != H and f.name not in ROW_FAMILIES}


def test_every_produced_key_is_a_family_and_every_family_is_produced(tmp_path: Path) -> None:
    cfg = parse_args(
        [
            "--socket", str(tmp_path / "w.sock"), "--threshold-ms", "1000",
            "--recovery-exec", f"{sys.executable} -c pass",
            "--recovery-audit-file", str(tmp_path / "audit.log"),
            "--export-file", str(tmp_path / "events.tsv"),
        ]
    )  # fmt: skip
    daemon = Daemon(cfg)
    daemon.start()
    try:
        produced = set(daemon.snapshot().counters)
    finally:
        daemon.shutdown()
    produced |= set(ServeStats().counters())
    produced.add("log_suppressed")
    assert RateLimiter().suppressed() is not None
    produced |= FROM_SNAPSHOT_FIELDS

    families = scalar_families()
    unknown = produced - families - set(NOT_EXPORTED)
    assert unknown == set(), f"produced but no family: {sorted(unknown)}"
    missing = families - produced - set(ALWAYS_ZERO)
    assert missing == set(), f"family without a producer: {sorted(missing)}"
    assert set(ALWAYS_ZERO) <= families, "a listed always-zero family left the table"
    assert not set(ALWAYS_ZERO) & produced, "an always-zero family has a producer now"


def test_the_flag_table_builds_the_observer(tmp_path: Path) -> None:
    """Each ``Flag.observer`` names a real ``varta.Observer`` keyword (an unknown
    one is a TypeError here) and passes the flag's value: the daemon builds its
    observer from the table, so a new observer flag touches no daemon code."""
    import varta
    from varta.watch.config import FLAGS, observer_kwargs

    argv = [
        "--socket", str(tmp_path / "w.sock"), "--threshold-ms", "1000",
        "--socket-mode", "0640", "--tracker-capacity", "300", "--max-beat-rate", "7",
        "--clock-source", "boottime", "--tracker-eviction-policy", "balanced",
    ]  # fmt: skip
    kwargs = observer_kwargs(parse_args(argv))
    assert kwargs["socket_mode"] == 0o640 and kwargs["capacity"] == 300
    assert kwargs["max_beat_rate"] == 7 and kwargs["clock"] == "boottime"
    assert kwargs["eviction"] == "balanced"
    assert set(kwargs) == {f.observer for f in FLAGS.values() if f.observer}
    with varta.Observer(str(tmp_path / "o.sock"), 1000, **kwargs) as obs:  # type: ignore[arg-type]
        assert obs.counters()["tracker_capacity"] == 300
