"""Prometheus ``/metrics`` for ``varta-watch`` (``docs/observer.md#metrics``).

Data model: :class:`VartaCollector` is a ``prometheus_client`` custom collector
on a private :class:`~prometheus_client.CollectorRegistry`; it yields
``CounterMetricFamily`` / ``GaugeMetricFamily`` / ``HistogramMetricFamily``
for the 65 families of docs/observer.md#metric-families and ours beyond upstream
(verdicts, blindness; docs/verdicts.md) from a :class:`Snapshot` that the poll loop
publishes (copies of ``Observer.counters()``/``pid_rows()``, the recovery runner
and audit log counters, loop histograms) plus this thread's own HTTP counters.

Text: :func:`render` walks ``registry.collect()`` and writes the 0.0.4 text
format the spec fixes byte for byte, which ``generate_latest`` cannot: counts
are plain decimal integers (``generate_latest`` prints ``5.0`` and switches to
``1.2345678e+07`` past seven digits), histogram ``_sum`` has 9 decimals and
float gauges 3, and ``varta_recovery_duration_ns_sum`` is a counter whose name
does not end in ``_total`` (``generate_latest`` would expose it as
``…_sum_total``). Names, HELP/TYPE pairs and label sets are those of the
collector, so ``generate_latest(registry)`` parses to the same samples.

HTTP (:class:`MetricsServer`, one daemon thread): HTTP/1.0, ``Connection:
close``, any path; per-IP token bucket; ``GET`` only (405); bearer token in
constant time (401); body re-rendered at most once a second.
"""

from __future__ import annotations

import hmac
import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Union

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from varta import PidRows

from .audit import DROP_REASONS as AUDIT_DROP_REASONS
from .audit import FSYNC_BUCKETS, Histogram
from .logsetup import SUPPRESSED_KINDS, RateLimiter
from .recovery import OUTCOMES, REFUSED_REASONS

CounterValue = Union[int, Mapping[str, int]]

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
DROP_REASONS = ("drain", "rate_limit", "ip_table_full")
SIGNAL_MODES = ("direct", "libc")
VERDICTS = ("hung", "exited", "crashed", "vanished", "unknown")
DROPPED_EVENT_KINDS = ("beat", "other")
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
varta_tracker_retired_total | c | - | Tracker slots retired because their agent ended.
varta_observer_blind_intervals_total | c | - | Times the observer could not look (stopped, stalled).
varta_observer_blind_seconds_total | c | - | Time the observer could not look (deadlines moved).
varta_observer_events_dropped_total | c | kind:events | Events dropped: the daemon's queue was full.
varta_recovery_audit_dropped_by_reason_total | c | reason:audit | Audit records lost, by reason.
varta_recovery_audit_gap_records_total | c | - | Audit gap records written (each names lost ones).
varta_recovery_spawned_unaudited_total | c | - | Children run without a durable spawn record.
varta_export_rows_dropped_total | c | - | TSV rows never written (backlog full or lost at exit).
varta_export_torn_tail_repaired_total | c | - | Torn last lines cut from the TSV file on open.
varta_export_io_errors_total | c | - | TSV export write errors.
varta_reopen_total | c | - | SIGHUP file reopens (logrotate postrotate).
"""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass
class ServeStats:
    auth_failures: int = 0
    scrape_skipped: int = 0
    scrape_budget_exhausted: int = 0
    scrape_budget_exceeded: int = 0
    ip_state_probe_exhausted: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    serve_seconds: Histogram = field(default_factory=new_histogram)

    def counters(self) -> dict[str, CounterValue]:
        return {
            "prom_auth_failures": self.auth_failures,
            "scrape_skipped": self.scrape_skipped,
            "scrape_budget_exhausted": self.scrape_budget_exhausted,
            "observer_scrape_budget_exceeded": self.scrape_budget_exceeded,
            "prom_ip_state_probe_exhausted": self.ip_state_probe_exhausted,
            "prom_connections_dropped": dict(self.dropped),
        }


# --- collector -------------------------------------------------------------------------


class VartaCollector(Collector):
    """Yields every family of :data:`FAMILIES` from the latest snapshot plus live sources."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        serve: Optional[ServeStats] = None,
        logs: Optional[RateLimiter] = None,
    ) -> None:
        self._snapshot = snapshot
        self._serve = serve
        self._logs = logs

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        values: dict[str, CounterValue] = dict(snap.counters)
        if self._serve is not None:
            values.update(self._serve.counters())
        if self._logs is not None:
            values["log_suppressed"] = self._logs.suppressed()
        values["watch_uptime_seconds"] = snap.uptime_seconds  # type: ignore[assignment]
        values["watch_last_poll_loop_timestamp_seconds"] = snap.last_loop_unix  # type: ignore[assignment]
        hists = dict(snap.histograms)
        if self._serve is not None:
            hists["varta_observer_serve_pending_seconds"] = self._serve.serve_seconds
            hists["varta_observer_stage_seconds:serve_pending"] = self._serve.serve_seconds
        for f in FAMILIES:
            if f.label == "pid":
                yield PidRowsMetric(f.name, f.type, f.help, snap.agents)
            elif f.type == H:
                yield _histogram_family(f.name, f.help, f.label, f.label_values, hists)
            else:
                yield _scalar_family(f.name, f.type, f.help, f.label, f.label_values, values)


#: Which row column each per-pid family exports.
PID_COLUMNS: Mapping[str, Literal["beats", "stalls", "status"]] = {
    "varta_beats_total": "beats",
    "varta_stalls_total": "stalls",
    "varta_status": "status",
}
_COLUMN_INDEX = {"beats": 1, "stalls": 2, "status": 3}


class PidRowsMetric(Metric):
    """A per-pid family whose rows stay native: :func:`render` has Rust write
    the sample lines (a million rows as Python ``Sample`` objects took ~14 s,
    past the serve stage's 2 s watchdog limit), while prometheus_client's own
    consumers (``generate_latest``) still see ordinary samples."""

    def __init__(self, family: str, typ: str, doc: str, rows: PidRows) -> None:
        # prometheus_client keeps counter names without ``_total``.
        name = family[: -len("_total")] if typ == C else family
        super().__init__(name, doc, typ)
        self.sample_name = family
        self.column = PID_COLUMNS[family]
        self.rows = rows

    @property
    def samples(self) -> list[Sample]:
        i = _COLUMN_INDEX[self.column]
        return [Sample(self.sample_name, {"pid": str(row[0])}, row[i]) for row in self.rows]

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        # Metric.__init__ assigns an empty list; the rows are the samples.
        if value:
            raise AttributeError("PidRowsMetric samples come from its rows")


def _scalar_family(
    name: str,
    typ: str,
    doc: str,
    label: Optional[str],
    label_values: tuple[str, ...],
    values: Mapping[str, CounterValue],
) -> Metric:
    raw = values.get(counter_key(name), 0)
    if typ == C and not name.endswith("_total"):
        # varta_recovery_duration_ns_sum: a counter without the _total suffix.
        metric = Metric(name, doc, C)
        metric.add_sample(name, {}, _scalar(raw))
        return metric
    fam: Union[CounterMetricFamily, GaugeMetricFamily]
    if typ == C:
        fam = CounterMetricFamily(name, doc, labels=[label] if label else None)
    else:
        fam = GaugeMetricFamily(name, doc, labels=[label] if label else None)
    if label is None:
        fam.add_metric([], _scalar(raw))
    else:
        by_label = raw if isinstance(raw, Mapping) else {}
        for lv in label_values:
            fam.add_metric([lv], int(by_label.get(lv, 0)))
    return fam


def _scalar(raw: object) -> float:
    assert isinstance(raw, (int, float)), raw
    return raw


def _histogram_family(
    name: str,
    doc: str,
    label: Optional[str],
    label_values: tuple[str, ...],
    hists: Mapping[str, Histogram],
) -> Metric:
    fam = HistogramMetricFamily(name, doc, labels=[label] if label else None)
    keys = [(f"{name}:{lv}", [lv]) for lv in label_values] if label else [(name, [])]
    for key, labels in keys:
        h = hists.get(key) or new_histogram()
        fam.add_metric(labels, h.cumulative(), h.sum)
    return fam


# --- text ------------------------------------------------------------------------------


def _exposed_name(metric: Metric) -> str:
    if isinstance(metric, PidRowsMetric):
        return metric.sample_name
    if metric.type == C:
        if metric.samples:
            return metric.samples[0].name
        return metric.name + "_total"
    return metric.name


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(metric: Metric, sample_name: str, value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if metric.type == H and sample_name.endswith("_sum"):
        return f"{value:.9f}"
    return f"{value:.3f}"


def render(registry: CollectorRegistry) -> bytes:
    """The docs/observer.md#metrics text body for everything *registry* collects."""
    out: list[bytes] = []
    text: list[str] = []  # lines since the last native block
    for metric in registry.collect():
        name = _exposed_name(metric)
        doc = metric.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        text.append(f"# HELP {name} {doc}\n# TYPE {name} {metric.type}\n")
        if isinstance(metric, PidRowsMetric):
            # Rows are joined as bytes: no str round trip of a ~100 MB block.
            out.append("".join(text).encode("utf-8"))
            text.clear()
            out.append(metric.rows.render(name, metric.column))
            continue
        for s in metric.samples:
            if s.labels:
                labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in s.labels.items())
                text.append(f"{s.name}{{{labels}}} {_format_value(metric, s.name, s.value)}\n")
            else:
                text.append(f"{s.name} {_format_value(metric, s.name, s.value)}\n")
    out.append("".join(text).encode("utf-8"))
    return b"".join(out)


def build_registry(collector: VartaCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


# --- HTTP server -----------------------------------------------------------------------

MAX_REQUEST = 4096
READ_DEADLINE_S = 0.010
WRITE_DEADLINE_S = 0.050
SERVE_WINDOW_S = 0.100
SERVE_PER_PASS = 8
DRAIN_PER_PASS = 50
IP_TABLE_SIZE = 1024
IP_TTL_S = 60.0
IP_SWEEP_S = 10.0
CACHE_S = 1.0

RESP_405 = (
    b"HTTP/1.0 405 Method Not Allowed\r\nAllow: GET\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)
RESP_401 = (
    b"HTTP/1.0 401 Unauthorized\r\n"
    b'WWW-Authenticate: Bearer realm="varta"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
)
CONTENT_TYPE = b"text/plain; version=0.0.4"

_HEX = frozenset(b"0123456789abcdefABCDEF")


def parse_hex32(text: bytes) -> bytes:
    """A ``--prom-token-file`` body: 64 hex chars (either case) after trimming
    whitespace → 32 bytes."""
    t = text.strip()
    if len(t) != 64 or not all(c in _HEX for c in t):
        raise ValueError("must be exactly 64 hex characters")
    return bytes.fromhex(t.decode("ascii"))


def bearer_from_request(request: bytes) -> Optional[bytes]:
    """The 32 token bytes from the first CRLF-terminated ``Authorization`` header.

    Value grammar: optional spaces/tabs, ``Bearer`` (any case), one space,
    optional spaces/tabs, 64 hex digits (either case), optional trailing
    spaces/tabs. Anything else → ``None``.
    """
    lines = request.split(b"\r\n")
    # lines[-1] is whatever followed the last CRLF: not CRLF-terminated.
    for line in lines[1:-1]:
        if not line:
            break  # end of the header block
        name, sep, value = line.partition(b":")
        if not sep or name.lower() != b"authorization":
            continue
        v = value.lstrip(b" \t").rstrip(b" \t")
        if len(v) < 7 or v[:6].lower() != b"bearer" or v[6:7] != b" ":
            return None
        hexpart = v[7:].lstrip(b" \t")
        if len(hexpart) != 64 or not all(c in _HEX for c in hexpart):
            return None
        return bytes.fromhex(hexpart.decode("ascii"))
    return None


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class IpRateLimiter:
    """Per-source-IP token bucket (docs/observer.md#http-endpoint); disabled when rate or
    burst is 0."""

    def __init__(
        self,
        per_sec: int,
        burst: int,
        stats: ServeStats,
        clock: Callable[[], float] = time.monotonic,
        table_size: int = IP_TABLE_SIZE,
    ) -> None:
        self.per_sec = per_sec
        self.burst = burst
        self._stats = stats
        self._clock = clock
        self._size = table_size
        # ip -> bucket; order = least recently seen first
        self._table: OrderedDict[str, _Bucket] = OrderedDict()
        self._last_sweep = clock()

    @property
    def enabled(self) -> bool:
        return self.per_sec > 0 and self.burst > 0

    def admit(self, ip: str) -> bool:
        if not self.enabled:
            return True
        now = self._clock()
        if now - self._last_sweep >= IP_SWEEP_S:
            self._sweep(now)
        b = self._table.get(ip)
        if b is None:
            if len(self._table) >= self._size:
                self._table.popitem(last=False)
                self._stats.dropped["ip_table_full"] += 1
            self._table[ip] = _Bucket(self.burst - 1.0, now)
            return True
        self._table.move_to_end(ip)
        b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.per_sec)
        b.stamp = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return True
        return False

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        while self._table:
            ip, b = next(iter(self._table.items()))
            if now - b.stamp < IP_TTL_S:
                break
            del self._table[ip]


class MetricsServer:
    """``/metrics`` on a daemon thread. Bind in ``__init__`` (errors → startup failure)."""

    def __init__(
        self,
        host: str,
        port: int,
        body: Callable[[], bytes],
        stats: ServeStats,
        *,
        token: Optional[bytes] = None,
        rate_per_sec: int = 5,
        rate_burst: int = 10,
        scrape_budget_ms: int = 250,
        logs: Optional[RateLimiter] = None,
        on_serve: Optional[Callable[[Optional[float]], None]] = None,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            self._sock.bind((host, port))
            self._sock.listen(128)
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        bound = self._sock.getsockname()
        self.address = (
            f"[{bound[0]}]:{bound[1]}" if family == socket.AF_INET6 else (f"{bound[0]}:{bound[1]}")
        )
        self._body = body
        self.stats = stats
        self._token = token
        self._limiter = IpRateLimiter(rate_per_sec, rate_burst, stats)
        self._scrape_budget_s = scrape_budget_ms / 1000.0
        self._logs = logs
        self._on_serve = on_serve
        self._cache: Optional[tuple[float, bytes]] = None
        self._render_s = 0.0  # body rendering time in the current serve pass
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="varta-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()
        self._wake_r.close()
        self._wake_w.close()

    # --- thread ----------------------------------------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                if any(key.fileobj is self._sock for key, _ in sel.select()):
                    self.serve_pending()
        except Exception as exc:  # never take the daemon down from here
            if self._logs is not None:
                self._logs.log("prom_serve", logging.ERROR, f"metrics server stopped: {exc}")
        finally:
            sel.close()

    def _accept(self) -> Optional[socket.socket]:
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            if self._logs is not None:
                self._logs.log("prom_serve", logging.WARNING, f"metrics accept failed: {exc}")
            return None
        return conn

    def serve_pending(self) -> None:
        """One ServePending pass: ≤ 8 served within 100 ms, then accept-and-close ≤ 50.

        The 100 ms window counts connection handling only: rendering a fresh body
        (at most once a second, waiting for the loop's snapshot) is not charged to
        the clients queued behind it.
        """
        t0 = time.monotonic()
        self._render_s = 0.0
        if self._on_serve is not None:
            self._on_serve(t0)
        try:
            served = 0
            while True:
                handling = time.monotonic() - t0 - self._render_s
                if served >= SERVE_PER_PASS or handling >= SERVE_WINDOW_S:
                    self._drain()
                    break
                conn = self._accept()
                if conn is None:
                    break
                if self._handle(conn):
                    served += 1
        finally:
            elapsed = time.monotonic() - t0
            self.stats.serve_seconds.observe(elapsed)
            if elapsed > self._scrape_budget_s:
                self.stats.scrape_budget_exceeded += 1
            if self._on_serve is not None:
                self._on_serve(None)

    def _drain(self) -> None:
        conn = self._accept()
        if conn is None:
            return
        self.stats.scrape_budget_exhausted += 1
        deadline = time.monotonic() + SERVE_WINDOW_S
        for _ in range(DRAIN_PER_PASS):
            conn.close()
            self.stats.dropped["drain"] += 1
            if time.monotonic() >= deadline:
                return
            nxt = self._accept()
            if nxt is None:
                return
            conn = nxt

    def _handle(self, conn: socket.socket) -> bool:
        """Serve one connection; False when it was dropped by the rate limit."""
        with conn:
            try:
                peer = conn.getpeername()[0]
            except OSError:
                return False
            if not self._limiter.admit(str(peer)):
                self.stats.dropped["rate_limit"] += 1
                return False
            try:
                request = self._read_request(conn)
                self._send(conn, self._respond(request))
            except OSError as exc:
                if self._logs is not None:
                    self._logs.log("prom_serve", logging.WARNING, f"metrics client: {exc}")
        return True

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes:
        """Up to 4096 bytes, stopping at CRLFCRLF, EOF or the 10 ms deadline. Bytes
        already queued are always taken, even if this thread ran late."""
        buf = b""
        deadline = time.monotonic() + READ_DEADLINE_S
        while len(buf) < MAX_REQUEST and b"\r\n\r\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining > 0:
                conn.settimeout(remaining)
            else:
                conn.setblocking(False)
            try:
                chunk = conn.recv(MAX_REQUEST - len(buf))
            except (socket.timeout, BlockingIOError):
                break
            if not chunk:
                break
            buf += chunk
        return buf

    def _respond(self, request: bytes) -> bytes:
        if len(request) < 4 or not request.startswith(b"GET "):
            return RESP_405
        if self._token is not None:
            got = bearer_from_request(request)
            if got is None or not hmac.compare_digest(got, self._token):
                self.stats.auth_failures += 1
                return RESP_401
        body = self._cached_body()
        head = (
            b"HTTP/1.0 200 OK\r\nContent-Type: " + CONTENT_TYPE + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
        )
        return head + body

    def _cached_body(self) -> bytes:
        now = time.monotonic()
        if self._cache is not None and now - self._cache[0] < CACHE_S:
            self.stats.scrape_skipped += 1
            return self._cache[1]
        body = self._body()
        done = time.monotonic()
        self._render_s += done - now
        self._cache = (done, body)
        return body

    @staticmethod
    def _send(conn: socket.socket, data: bytes) -> None:
        """Write within the 50 ms deadline: a client that stops reading is dropped
        (what the socket buffer takes at once is always written)."""
        deadline = time.monotonic() + WRITE_DEADLINE_S
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining > 0:
                conn.settimeout(remaining)
            else:
                conn.setblocking(False)
            try:
                n = conn.send(view)
            except (socket.timeout, BlockingIOError):
                raise TimeoutError("write deadline (50 ms) passed") from None
            view = view[n:]
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
