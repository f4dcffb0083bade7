"""Prometheus ``/metrics`` for ``varta-watch`` (``docs/observer.md#metrics``).

Data model: one table, :data:`_TABLE`, names every family (the 65 of
docs/observer.md#metric-families, then ours beyond upstream: docs/verdicts.md,
loss accounting), its type, label and HELP. :class:`VartaCollector` turns a
:class:`Snapshot` that the poll loop publishes (copies of
``Observer.counters()``/``pid_rows()``, the recovery runner and audit log
counters, loop histograms) plus the HTTP thread's own counters into
:class:`MetricFamily` values, one per table row, in table order.

Text: :func:`render` writes the 0.0.4 text format the docs fix byte for byte:
counts are plain decimal integers, histogram ``_sum`` has 9 decimals and float
gauges 3, and ``varta_recovery_duration_ns_sum`` is a counter whose name does
not end in ``_total``. The per-pid families stay native (Rust writes their
sample lines) and are capped (docs/observer.md#agent-rows): per-agent rows
for at most ``--prom-agent-rows`` agents, not OK first, the rest counted in
``varta_agents*`` — the selection and the counts are made in Rust with the
GIL released, never by walking Python objects per agent. No Prometheus client
library is involved: the body is checked
against ``promtool`` and the ``prometheus_client`` parser in the tests, and
against a real Prometheus server in ``tests/test_prometheus_integration.py``.

The HTTP side is :mod:`varta.watch.metrics_server`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

from varta import PidRows

from .._record import field, record
from .audit_format import DROP_REASONS as AUDIT_DROP_REASONS
from .audit_format import FSYNC_BUCKETS, Histogram
from .logsetup import SUPPRESSED_KINDS, RateLimiter
from .recovery import OUTCOMES, REFUSED_REASONS

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Callable, Literal, Optional, Union

    from varta._varta import _RowSummary as AgentSummary

    CounterValue = Union[int, float, Mapping[str, int]]

# --- label sets (docs/observer.md#metric-families) -------------------------------------

DECODE_KINDS = (
    "bad_magic",
    "bad_version",
    "bad_status",
    "bad_pid",
    "bad_timestamp",
    "bad_nonce",
    "stall_on_wire",
    "bad_crc",
)
WATERMARK_LEVELS = ("warn", "critical")
RATE_LIMIT_REASONS = ("per_pid", "global")
STAGES = ("drain_pending", "poll", "maintenance", "recovery_reap", "serve_pending", "housekeeping")
DROP_REASONS = ("drain", "rate_limit", "ip_table_full", "read_timeout", "pending_full")
SIGNAL_MODES = ("direct", "libc")
VERDICTS = ("hung", "exited", "crashed", "vanished", "unknown")
DROPPED_EVENT_KINDS = ("beat", "other")
AGENT_STATUSES = ("ok", "degraded", "critical", "stall")

#: ``--prom-agent-rows`` default: per-agent series for at most this many agents.
DEFAULT_AGENT_ROWS = 1000
#: At most this many units in ``varta_agents_by_unit`` (the largest; the rest
#: are summed under ``unit="(other)"``).
MAX_UNITS = 1000
FORENSICS_METHODS = ("sdk", "proc")
FORENSICS_FAILURES = ("write", "gone", "pid_mismatch", "signal", "no_dump")
BUCKETS = FSYNC_BUCKETS  # 0.001 … 1 seconds; +Inf added by Histogram.cumulative()

C, G, H = "counter", "gauge", "histogram"

#: Label name and values per label key of :data:`_TABLE` (``kind`` and ``reason``
#: label different families with different value sets).
LABELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pid": ("pid", ()),
    "kind:decode": ("kind", DECODE_KINDS),
    "outcome": ("outcome", OUTCOMES),
    "reason:refused": ("reason", REFUSED_REASONS),
    "kind:log": ("kind", SUPPRESSED_KINDS),
    "level": ("level", WATERMARK_LEVELS),
    "reason:rate": ("reason", RATE_LIMIT_REASONS),
    "stage": ("stage", STAGES),
    "reason:dropped": ("reason", DROP_REASONS),
    "mode": ("mode", SIGNAL_MODES),
    "verdict": ("verdict", VERDICTS),
    "kind:events": ("kind", DROPPED_EVENT_KINDS),
    "reason:audit": ("reason", AUDIT_DROP_REASONS),
    "status": ("status", AGENT_STATUSES),
    "unit": ("unit", ()),
    "method:forensics": ("method", FORENSICS_METHODS),
    "reason:forensics": ("reason", FORENSICS_FAILURES),
}

# family | type (c/g/h) | label key or - | HELP.  Order = exposition order
# (docs/observer.md#per-pid-families first).
_TABLE = """
varta_beats_total | c | pid | Total accepted beats per agent pid.
varta_stalls_total | c | pid | Total observer-detected stalls per agent pid.
varta_status|g|pid|Last reported status code per agent pid (0=ok,1=degraded,2=critical,3=stall).
varta_tracker_evicted_total | c | - | Tracker slots evicted to admit a new pid.
varta_frame_auth_failures_total | c | - | Frames whose pid differs from the kernel peer pid.
varta_decode_errors_total | c | kind:decode | Frames that failed VLP decoding, by error.
varta_io_errors_total | c | - | Receive errors on the listeners.
varta_ctrl_truncated_total | c | - | Datagrams whose control data was truncated.
varta_tracker_capacity_exceeded_total | c | - | New pids dropped because the tracker was full.
varta_tracker_eviction_scan_truncated_total | c | - | Eviction attempts that found no victim.
varta_tracker_capacity | g | - | Configured tracker capacity (pids).
varta_tracker_eviction_scan_window_max | g | - | Configured eviction scan window (slots).
varta_recovery_outcomes_total | c | outcome | Recovery decisions and child outcomes.
varta_recovery_duration_ns_sum | c | - | Sum of recovery child run times in nanoseconds.
varta_recovery_duration_count_total | c | - | Recovery children whose run time was recorded.
varta_recovery_refused_total | c | reason:refused | Recovery refusals by reason.
varta_recovery_last_fired_evictions_total | c | - | Debounce ledger entries evicted for room.
varta_recovery_debounce_recycle_resets_total | c | - | Debounce windows reset by a recycled pid.
varta_recovery_outstanding_recycle_resets_total | c | - | Children of a recycled pid retired.
varta_recovery_spawn_budget_exceeded_total | c | - | Ticks that hit the recovery budget.
varta_recovery_invariant_violations_total | c | - | Recovery bookkeeping invariant violations.
varta_log_suppressed_total | c | kind:log | Log lines suppressed by the rate limit.
varta_origin_conflict_total | c | - | Beats with an origin weaker than the slot's pin.
varta_frame_namespace_mismatch_total | c | - | Frames refused by the pid-namespace gate.
varta_frame_rejected_pid_above_max_total | c | - | Unverified frames with pid above pid_max.
varta_pid_max_current | g | - | Current kernel pid_max.
varta_tracker_namespace_conflict_total | c | - | Tracker first-namespace-wins conflicts.
varta_tracker_pid_recycle_total | c | - | Tracker slots reset because the pid was recycled.
varta_tracker_invariant_violations_total | c | - | Tracker invariant violations.
varta_tracker_removed_pid_drops_total | c | - | Removed pids not queued for exporters.
varta_tracker_pid_index_probe_exhausted_total | c | - | Tracker pid index probe exhaustions.
varta_recovery_outstanding_probe_exhausted_total | c | - | Recovery table probe exhaustions.
varta_recovery_reap_truncated_total | c | - | Reap ticks that could not visit every child.
varta_recovery_audit_dropped_total | c | - | Audit records never written (ring full, I/O, exit).
varta_recovery_audit_flush_budget_exceeded_total | c | - | Audit drains stopped by their budget.
varta_audit_fsync_seconds | h | - | Audit log fdatasync latency.
varta_socket_bind_dir_fsync_failed_total | c | - | Failed fsyncs of the socket directory.
varta_audit_fsync_budget_exceeded_total | c | - | Audit fdatasyncs slower than the budget.
varta_audit_rotation_budget_exceeded_total | c | - | Audit rotation steps stopped by the budget.
varta_audit_ring_watermark_total | c | level | Audit ring fill crossings (75% warn, 95% critical).
varta_prom_ip_state_probe_exhausted_total | c | - | Scrape IP table probe exhaustions.
varta_prom_pid_row_refused_total | c | - | Per-pid metric rows that could not be allocated.
varta_frame_decrypt_failures_total | c | - | Secure frames that failed authentication.
varta_secure_replay_refused_total | c | - | Secure frames refused as replays.
varta_truncated_datagrams_total | c | - | Datagrams shorter or longer than a frame.
varta_sender_state_full_total | c | - | Secure senders refused: state table full.
varta_secure_aead_attempts_total | c | - | AEAD open attempts on secure frames.
varta_rate_limited_total | c | reason:rate | Frames dropped by the beat rate limits.
varta_observer_uds_rcvbuf_bytes | g | - | Effective SO_RCVBUF of the UDS listener.
varta_observer_clock_regression_total | c | - | Observer clock regressions (clamped).
varta_observer_clock_jump_forward_total | c | - | Observer clock forward jumps over 5 s.
varta_scrape_skipped_total | c | - | Scrapes answered with the cached body.
varta_scrape_budget_exhausted_total | c | - | Serve passes that hit the 8-connection budget.
varta_observer_iteration_seconds | h | - | Poll loop iteration time, idle wait excluded.
varta_observer_iteration_budget_exceeded_total | c | - | Iterations over --iteration-budget-ms.
varta_observer_serve_pending_seconds | h | - | Time spent per scrape serve pass.
varta_observer_scrape_budget_exceeded_total | c | - | Serve passes over --scrape-budget-ms.
varta_observer_stage_seconds | h | stage | Time per poll loop stage.
varta_prom_auth_failures_total | c | - | Scrapes refused for a missing or wrong token.
varta_prom_connections_dropped_total | c | reason:dropped | Scrape connections closed unanswered.
varta_nonce_wrap_total | c | - | Accepted nonce wrap-arounds.
varta_signal_handler_install_total | c | mode | Signal handler installations by mode.
varta_watch_uptime_seconds | g | - | Seconds since varta-watch started.
varta_watch_last_poll_loop_timestamp_seconds | g | - | Unix time of the last loop iteration.
varta_watch_pids_tracked | g | - | Pids currently tracked.
varta_stall_verdicts_total | c | verdict | Stalls by verdict (docs/verdicts.md).
varta_out_of_order_total | c | - | Frames refused as duplicate or old (replayed) nonces.
varta_tracker_retired_total | c | - | Tracker slots retired because their agent ended.
varta_observer_blind_intervals_total | c | - | Times the observer could not look (stopped, stalled).
varta_observer_blind_seconds_total | c | - | Time the observer could not look (deadlines moved).
varta_observer_events_dropped_total | c | kind:events | Events dropped: the daemon's queue was full.
varta_forensics_captures_total | c | method:forensics | Hang captures written, by method.
varta_forensics_capture_failures_total | c | reason:forensics | Hang capture failures, by reason.
varta_forensics_truncated_total | c | - | Hang captures cut to the 256 KiB bound.
varta_recovery_audit_dropped_by_reason_total | c | reason:audit | Audit records lost, by reason.
varta_recovery_audit_gap_records_total | c | - | Audit gap records written (each names lost ones).
varta_recovery_spawned_unaudited_total | c | - | Children run without a durable spawn record.
varta_export_rows_dropped_total | c | - | TSV rows never written (backlog full or lost at exit).
varta_export_torn_tail_repaired_total | c | - | Torn last lines cut from the TSV file on open.
varta_export_io_errors_total | c | - | TSV export write errors.
varta_reopen_total | c | - | SIGHUP file reopens (logrotate postrotate).
varta_scrape_gzip_total | c | - | Scrapes answered gzip-compressed (Accept-Encoding: gzip).
varta_agents | g | status | Tracked agents by status (stall = silent past the threshold).
varta_agents_by_verdict | g | verdict | Stalled tracked agents by verdict (docs/verdicts.md).
varta_agents_by_unit | g | unit | Tracked agents by systemd unit and status.
varta_agent_rows_omitted | g | - | Tracked agents without per-agent series (--prom-agent-rows).
varta_tracker_peer_table_full_total | c | - | Network beats refused: the sender table was full.
"""

#: Families computed from the per-pid rows, not from counters
#: (docs/observer.md#agent-rows).
ROW_FAMILIES = frozenset(
    {
        "varta_beats_total",
        "varta_stalls_total",
        "varta_status",
        "varta_agents",
        "varta_agents_by_verdict",
        "varta_agents_by_unit",
        "varta_agent_rows_omitted",
    }
)


@record(frozen=True)
class Family:
    name: str
    type: str
    label: Optional[str]
    label_values: tuple[str, ...]
    help: str


def _families() -> tuple[Family, ...]:
    types = {"c": C, "g": G, "h": H}
    out = []
    for line in _TABLE.strip().splitlines():
        name, typ, key, doc = (part.strip() for part in line.split("|", 3))
        label, values = LABELS[key] if key != "-" else (None, ())
        out.append(Family(name, types[typ], label, values, doc))
    return tuple(out)


FAMILIES = _families()


def counter_key(family: str) -> str:
    """Family → key in the ``counters()`` dicts (no ``varta_`` prefix, no ``_total``)."""
    key = family[len("varta_") :]
    return key[: -len("_total")] if key.endswith("_total") else key


# --- snapshot --------------------------------------------------------------------------


@record(frozen=True)
class Snapshot:
    """What the poll loop hands the metrics thread (immutable copies)."""

    #: One row per tracked pid, native (``Observer.pid_rows()``).
    agents: PidRows = field(default_factory=PidRows)
    counters: Mapping[str, CounterValue] = field(default_factory=dict)
    #: family name (``varta_audit_fsync_seconds`` …; stage histograms as
    #: ``varta_observer_stage_seconds:<stage>``) → histogram copy.
    histograms: Mapping[str, Histogram] = field(default_factory=dict)
    uptime_seconds: float = 0.0
    last_loop_unix: float = 0.0
    #: Recovery children started per agent pid, for ``/agents``
    #: (``RecoveryRunner.recoveries_by_pid``; docs/live-view.md#agents-json).
    recoveries: Mapping[int, tuple[Optional[int], int]] = field(default_factory=dict)


def copy_histogram(h: Histogram) -> Histogram:
    return Histogram(h.bounds, list(h.counts), h.sum, h.count)


def new_histogram() -> Histogram:
    return Histogram(BUCKETS)


class SnapshotBox:
    """Hand-over between the poll loop (publisher) and the metrics thread (reader).

    The reader asks for a fresh snapshot and waits a bounded time; the loop
    checks :attr:`wanted` once per iteration, so nothing is copied unless
    somebody scrapes.
    """

    def __init__(self, initial: Optional[Snapshot] = None) -> None:
        self._cond = threading.Condition()
        self._snap = initial or Snapshot()
        self._gen = 0
        self.wanted = False

    def publish(self, snap: Snapshot) -> None:
        with self._cond:
            self._snap = snap
            self._gen += 1
            self.wanted = False
            self._cond.notify_all()

    def request(self, timeout: float) -> Snapshot:
        """Ask for a fresh snapshot; the latest one if none arrives within *timeout*."""
        with self._cond:
            gen = self._gen
            self.wanted = True
            self._cond.wait_for(lambda: self._gen != gen, timeout)
            return self._snap

    @property
    def latest(self) -> Snapshot:
        return self._snap


# --- HTTP-side counters (owned by the metrics thread) -----------------------------------


@record
class ServeStats:
    auth_failures: int = 0
    scrape_skipped: int = 0
    scrape_budget_exhausted: int = 0
    scrape_budget_exceeded: int = 0
    gzip: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    serve_seconds: Histogram = field(default_factory=new_histogram)

    def counters(self) -> dict[str, CounterValue]:
        return {
            "prom_auth_failures": self.auth_failures,
            "scrape_skipped": self.scrape_skipped,
            "scrape_budget_exhausted": self.scrape_budget_exhausted,
            "observer_scrape_budget_exceeded": self.scrape_budget_exceeded,
            "scrape_gzip": self.gzip,
            "prom_connections_dropped": dict(self.dropped),
        }


# --- collector -------------------------------------------------------------------------

#: Which row column each per-pid family exports.
PID_COLUMNS: Mapping[str, Literal["beats", "stalls", "status"]] = {
    "varta_beats_total": "beats",
    "varta_stalls_total": "stalls",
    "varta_status": "status",
}


@record(frozen=True)
class Sample:
    name: str
    #: ``(label, value)`` pairs, in exposition order.
    labels: tuple[tuple[str, str], ...]
    value: Union[int, float]


@record(frozen=True)
class MetricFamily:
    """One family ready to render: its samples, or (per-pid families) the
    native rows and which column they export."""

    family: Family
    samples: tuple[Sample, ...] = ()
    rows: Optional[PidRows] = None

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def type(self) -> str:
        return self.family.type


class VartaCollector:
    """Yields every family of :data:`FAMILIES` from the latest snapshot plus live sources."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        serve: Optional[ServeStats] = None,
        logs: Optional[RateLimiter] = None,
        agent_rows: int = DEFAULT_AGENT_ROWS,
    ) -> None:
        self._snapshot = snapshot
        self._serve = serve
        self._logs = logs
        self._agent_rows = agent_rows

    def collect(self) -> Iterator[MetricFamily]:
        snap = self._snapshot()
        values: dict[str, CounterValue] = dict(snap.counters)
        if self._serve is not None:
            values.update(self._serve.counters())
        if self._logs is not None:
            values["log_suppressed"] = self._logs.suppressed()
        values["watch_uptime_seconds"] = snap.uptime_seconds
        values["watch_last_poll_loop_timestamp_seconds"] = snap.last_loop_unix
        hists = dict(snap.histograms)
        if self._serve is not None:
            hists["varta_observer_serve_pending_seconds"] = self._serve.serve_seconds
            hists["varta_observer_stage_seconds:serve_pending"] = self._serve.serve_seconds
        shown = snap.agents.capped(self._agent_rows)
        agents = _agent_samples(snap.agents.summary(MAX_UNITS), len(snap.agents) - len(shown))
        for f in FAMILIES:
            if f.label == "pid":
                yield MetricFamily(f, rows=shown)
            elif f.name in agents:
                yield MetricFamily(f, agents[f.name])
            elif f.type == H:
                yield MetricFamily(f, _histogram_samples(f, hists))
            else:
                yield MetricFamily(f, _scalar_samples(f, values))


def _agent_samples(summary: AgentSummary, omitted: int) -> dict[str, tuple[Sample, ...]]:
    """The aggregate families of docs/observer.md#agent-rows from ``PidRows.summary()``."""
    status, verdict = summary["status"], summary["verdict"]
    by_unit = tuple(
        Sample("varta_agents_by_unit", (("unit", unit), ("status", st)), counts[st])
        for unit, counts in summary["unit"]
        for st in AGENT_STATUSES
    )
    return {
        "varta_agents": tuple(
            Sample("varta_agents", (("status", st),), status[st]) for st in AGENT_STATUSES
        ),
        "varta_agents_by_verdict": tuple(
            Sample("varta_agents_by_verdict", (("verdict", v),), verdict[v]) for v in VERDICTS
        ),
        "varta_agents_by_unit": by_unit,
        "varta_agent_rows_omitted": (Sample("varta_agent_rows_omitted", (), omitted),),
    }


def _scalar_samples(f: Family, values: Mapping[str, CounterValue]) -> tuple[Sample, ...]:
    raw = values.get(counter_key(f.name), 0)
    if f.label is None:
        assert isinstance(raw, (int, float)), (f.name, raw)
        return (Sample(f.name, (), raw),)
    by_label = raw if isinstance(raw, Mapping) else {}
    return tuple(
        Sample(f.name, ((f.label, lv),), int(by_label.get(lv, 0))) for lv in f.label_values
    )


def _histogram_samples(f: Family, hists: Mapping[str, Histogram]) -> tuple[Sample, ...]:
    keys = (
        [(f"{f.name}:{lv}", ((f.label, lv),)) for lv in f.label_values]
        if f.label
        else [(f.name, ())]
    )
    out: list[Sample] = []
    for key, labels in keys:
        h = hists.get(key) or new_histogram()
        for bound, count in h.cumulative():
            out.append(Sample(f"{f.name}_bucket", (*labels, ("le", bound)), count))
        out.append(Sample(f"{f.name}_count", labels, h.count))
        out.append(Sample(f"{f.name}_sum", labels, float(h.sum)))
    return tuple(out)


# --- text ------------------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(typ: str, sample_name: str, value: Union[int, float]) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if typ == H and sample_name.endswith("_sum"):
        return f"{value:.9f}"
    return f"{value:.3f}"


def render(families: Union[VartaCollector, Iterator[MetricFamily]]) -> bytes:
    """The docs/observer.md#metrics text body for every family collected."""
    out: list[bytes] = []
    text: list[str] = []  # lines since the last native block
    items = families.collect() if isinstance(families, VartaCollector) else families
    for metric in items:
        name = metric.name
        doc = metric.family.help.replace("\\", "\\\\").replace("\n", "\\n")
        text.append(f"# HELP {name} {doc}\n# TYPE {name} {metric.type}\n")
        if metric.rows is not None:
            # Rows are joined as bytes: no str round trip of a ~100 MB block.
            out.append("".join(text).encode("utf-8"))
            text.clear()
            out.append(metric.rows.render(name, PID_COLUMNS[name]))
            continue
        for s in metric.samples:
            value = _format_value(metric.type, s.name, s.value)
            if s.labels:
                labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in s.labels)
                text.append(f"{s.name}{{{labels}}} {value}\n")
            else:
                text.append(f"{s.name} {value}\n")
    out.append("".join(text).encode("utf-8"))
    return b"".join(out)


def build_registry(collector: VartaCollector) -> VartaCollector:
    """What :func:`render` takes (kept for callers that built a registry)."""
    return collector
