"""The ``varta-watch`` poll loop, startup and shutdown (``docs/observer.md#main-loop``).

One main thread runs :meth:`Daemon.run`; the ``/metrics`` server and the
optional self-watchdog are daemon threads. Each iteration:

1. **drain_pending** — stalls deferred by the per-tick recovery budget: a
   pre-drain of ≤ 4096 events, then fire-time checks and ``on_stall``.
2. **poll** — one ``Observer.poll(timeout)`` batch (timeout = the earliest of
   ``--read-timeout-ms``, the next recovery-timeout deadline and the shutdown
   deadline; 0 while stalls are pending); each event → TSV row, recovery, log.
3. **maintenance** — removed pids → ``eviction`` rows; TSV flush; audit drain
   and rotation; latched I/O errors → rate-limited log; metrics snapshot when
   the metrics thread asked for one.
4. **recovery_reap** — non-blocking reap / timeout kill of recovery children.
5. **serve_pending** runs on the metrics thread.
6. **housekeeping** — heartbeat file, hardware watchdog kick, loop histograms.

SIGINT/SIGTERM set a latch checked every iteration (the wait is bounded by
``--read-timeout-ms``); SIGPIPE is ignored. SIGHUP reopens the export and
audit files at the next maintenance stage (logrotate's ``postrotate``
convention; logs go to stderr, which has no name to reopen) and never stops
the daemon; SIGUSR1/SIGUSR2 are ignored (see ``ops/README.md``).
Shutdown order follows docs/observer.md#signals-and-shutdown.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Mapping

import varta
from varta import _varta

from . import notify
from .audit import AuditLog
from .audit_format import Histogram
from .config import WatchConfig, observer_kwargs, self_watchdog_secs, systemd_watchdog_usec
from .export import TsvExporter
from .identity import agent_label, identity_fields
from .logsetup import RateLimiter, log
from .metrics import STAGES, ServeStats, Snapshot, SnapshotBox, copy_histogram, new_histogram
from .metrics_server import MetricsServer
from .recovery import Completion, Decision, RecoveryRunner
from .serving import open_metrics_server
from .startup import (
    StartupError,
    _listen_error,
    _log_listeners,
    _prepare_forensics_dir,
    _reason,
    network_kwargs,
    raise_fd_limit,
    read_token,
    recovery_config,
)
from .watchdogs import (
    HEARTBEAT_ATTEMPTS,
    HW_WATCHDOG_MIN_TIMEOUT_S,
    STAGE_LIMITS_S,
    WDIOC_GETTIMEOUT,
    WDIOC_SETTIMEOUT,
    HwWatchdog,
    LoopState,
    SelfWatchdog,
    write_heartbeat,
)

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import IO, Callable, Optional, Protocol, Union

    from .metrics import CounterValue

#: SIGHUP (reopen) and the signals ignored (SIGUSR1/SIGUSR2).
REOPEN_AND_IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

PRE_DRAIN_EVENTS = 4096

REMOVED_PER_TICK = 64

AUDIT_DRAIN_MS = 10.0

SHUTDOWN_DRAIN_BATCHES = 16


if TYPE_CHECKING:

    class ObserverLike(Protocol):
        """What the daemon uses of ``varta.Observer`` (the API in docs/observer.md#python-api)."""

        def poll(self, timeout: Optional[float] = None) -> Iterable[object]: ...
        def pid_rows(self) -> varta.PidRows: ...
        def agents(self) -> list[varta.AgentInfo]: ...
        def agent(self, pid: int, peer: Optional[str] = None) -> Optional[varta.AgentInfo]: ...
        def counters(self) -> Mapping[str, Union[int, Mapping[str, int]]]: ...
        def take_removed(self) -> list[int]: ...
        def now_ns(self) -> int: ...
        def close(self) -> None: ...

    ObserverFactory = Callable[..., ObserverLike]


def native_observer_factory() -> ObserverFactory:
    return varta.Observer


def describe_stall(ev: varta.Stall, threshold_ms: int) -> str:
    """The log line for a stall, in words (``docs/verdicts.md``), naming the
    agent as the OS knows it (``docs/observer.md#agent-identity``):
    ``worker.py[6172] in ingest.service hung: …``."""
    who = agent_label(ev)
    silent_ms = max(threshold_ms, (ev.observer_ns - ev.last_ns) // 1_000_000)
    cause = ev.cause
    verdict = ev.verdict
    if verdict is varta.Verdict.HUNG:
        capture = getattr(ev, "forensics", None)
        where = f"; where it is stuck: {capture}" if capture else ""
        return f"{who} hung: alive but silent for {silent_ms} ms{where}"
    if verdict is varta.Verdict.EXITED:
        return (
            f"{who} exited cleanly" if cause in (None, "clean_exit") else f"{who} exited on {cause}"
        )
    if verdict is varta.Verdict.CRASHED:
        return f"{who} crashed" + ("" if cause in (None, "crash") else f" ({cause})")
    if verdict is varta.Verdict.VANISHED:
        return f"{who} vanished: the process ended without a terminal frame (killed?)"
    return f"{who} stalled: silent for {silent_ms} ms (no kernel attestation, verdict unknown)"


# --- the daemon ------------------------------------------------------------------------


class Daemon:
    def __init__(
        self,
        cfg: WatchConfig,
        *,
        observer_factory: Optional[ObserverFactory] = None,
        stdout: Optional[IO[str]] = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.cfg = cfg
        self._factory = observer_factory
        self._stdout = sys.stdout if stdout is None else stdout
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self.state = LoopState()
        self.logs = RateLimiter()
        self.observer: Optional[ObserverLike] = None
        self.recovery: Optional[RecoveryRunner] = None
        self.audit: Optional[AuditLog] = None
        self.exporter: Optional[TsvExporter] = None
        self.server: Optional[MetricsServer] = None
        self.watchdog: Optional[SelfWatchdog] = None
        self.hw: Optional[HwWatchdog] = None
        self.box = SnapshotBox()
        self.serve_stats = ServeStats()
        self.stop_requested = False
        #: Set by SIGHUP; served by :meth:`reopen_files` in the maintenance stage.
        self.reopen_requested = False
        self.reopens = 0
        self.exit_code = 0
        self._deferred: collections.deque[varta.Stall] = collections.deque()
        self._removed: collections.deque[int] = collections.deque()
        self._shutdown_at: Optional[float] = None
        self._wedge_pending = cfg.inject_wedge_ms is not None
        self._hb_seq = itertools.count()
        self._iteration_hist = new_histogram()
        self._stage_hists: dict[str, Histogram] = {s: new_histogram() for s in STAGES}
        self._iteration_budget_exceeded = 0
        self._watermarks_seen = {"warn": 0, "critical": 0}

    # --- entry point -------------------------------------------------------------

    def run(self) -> int:
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)}
        saved.update({s: signal.getsignal(s) for s in REOPEN_AND_IGNORED_SIGNALS})
        try:
            return self._run()
        finally:  # leave the process as found (matters when embedded, e.g. in tests)
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            _varta._clear_stop_signal()

    def _run(self) -> int:
        try:
            self._install_signals()
            self.start()
        except StartupError as exc:
            log.error(str(exc))
            self._abandon_start()
            return 1
        try:
            self.loop()
        except Exception:
            log.exception("internal error in the poll loop; shutting down")
            self.exit_code = 1
        self.shutdown()
        return self.exit_code

    def _install_signals(self) -> None:
        """SIGINT/SIGTERM set the stop latch (SA_RESTART); SIGPIPE is ignored.

        On Linux the latch is native (``--signal-handler-mode``: ``direct`` =
        raw ``rt_sigaction`` with readback and a SIGUSR1 self-test, ``libc`` =
        ``sigaction(3)``) and ``Observer.poll`` returns as soon as it is set.
        Elsewhere the mode is ignored and Python's handlers set the latch.
        """
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        _varta._clear_stop_signal()
        if sys.platform == "linux":
            mode = self.cfg.signal_handler_mode
            try:
                _varta._install_stop_handlers(mode, [signal.SIGINT, signal.SIGTERM])
            except OSError as exc:
                raise StartupError(f"--signal-handler-mode {mode}: {exc.strerror}") from None
            self._install_reopen_signals()
            return
        self._install_reopen_signals()

        def on_signal(signum: int, frame: object) -> None:
            self.stop_requested = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
            signal.siginterrupt(sig, False)  # SA_RESTART

    def _install_reopen_signals(self) -> None:
        """SIGHUP → reopen latch (SA_RESTART); SIGUSR1/SIGUSR2 ignored (after the
        ``direct`` mode's SIGUSR1 self-test)."""

        def on_hup(signum: int, frame: object) -> None:
            self.reopen_requested = True

        signal.signal(signal.SIGHUP, on_hup)
        signal.siginterrupt(signal.SIGHUP, False)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)

    def reopen_files(self) -> None:
        """SIGHUP: reopen the export and audit files (a failure is logged, the
        old descriptor kept, and the daemon goes on)."""
        self.reopen_requested = False
        self.reopens += 1
        if self.exporter is not None:
            try:
                self.exporter.reopen()
            except OSError as exc:
                log.error(f"export file: reopen failed, still writing the old file: {_reason(exc)}")
            self._log_torn_tail()
        if self.audit is not None:
            try:
                self.audit.reopen()
            except OSError as exc:
                log.error(f"audit file: reopen failed, still writing the old file: {_reason(exc)}")
        log.info("SIGHUP: files reopened")

    def _log_torn_tail(self) -> None:
        torn = self.exporter.take_torn() if self.exporter is not None else None
        if torn is not None:
            log.warning(
                f"export file {self.cfg.export_file}: cut a torn last line "
                f"({torn[0]} bytes without a newline at offset {torn[1]})"
            )

    def start(self) -> None:
        cfg = self.cfg
        for warning in cfg.warnings:
            log.warning(warning)
        net = network_kwargs(cfg)
        raise_fd_limit(cfg.tracker_capacity)
        factory = self._factory or native_observer_factory()
        if cfg.forensics_dir is not None:
            _prepare_forensics_dir(cfg.forensics_dir)
        kwargs = observer_kwargs(cfg)
        # Beat events cross into Python only when the TSV file records them.
        kwargs["emit_beats"] = cfg.export_file is not None
        try:
            self.observer = factory(cfg.socket, cfg.threshold_ms, **kwargs, **net)
        except TypeError as exc:
            if net:
                raise StartupError(
                    f"--udp-port is not supported by this build of varta ({exc})"
                ) from None
            raise
        except OSError as exc:
            raise StartupError(_listen_error(cfg, exc)) from None
        obs = self.observer
        _log_listeners(cfg, obs)

        rc = recovery_config(cfg)
        if cfg.recovery_audit_file is not None:
            try:
                self.audit = AuditLog(
                    cfg.recovery_audit_file,
                    max_bytes=cfg.recovery_audit_max_bytes,
                    sync_every=cfg.recovery_audit_sync_every,
                    sync_interval_ms=cfg.audit_sync_interval_ms,
                    fsync_budget_ms=cfg.audit_fsync_budget_ms,
                    rotation_budget_ms=cfg.audit_rotation_budget_ms,
                )
            except (OSError, ValueError) as exc:
                raise StartupError(f"--recovery-audit-file: {_reason(exc)}") from None
            if self.audit.boot_reason in ("legacy_v1", "corrupt_tail", "schema_drift"):
                log.warning(
                    f"audit file {cfg.recovery_audit_file}: {self.audit.boot_reason}; "
                    "earlier content kept, new records follow"
                )
        if cfg.export_file is not None:
            try:
                self.exporter = TsvExporter(
                    cfg.export_file,
                    max_bytes=cfg.export_file_max_bytes,
                    sync_every=cfg.export_file_sync_every,
                    header=cfg.export_file_header,
                )
            except (OSError, ValueError) as exc:
                raise StartupError(f"--export-file: {_reason(exc)}") from None
            self._log_torn_tail()
        if self.audit is not None and self.audit.unclean_lost:
            log.warning(
                f"audit file {cfg.recovery_audit_file}: {self.audit.unclean_lost} records "
                "queued by the previous run were never written; a gap record names them"
            )
        if rc is not None:
            self.recovery = RecoveryRunner(
                rc,
                self.audit,
                capacity=cfg.tracker_capacity,
                allow_cross_namespace=cfg.allow_cross_namespace_agents,
                clock=obs.now_ns,
                audit_fail_open=cfg.recovery_audit_fail_open,
            )
        if cfg.hw_watchdog is not None:
            self.hw = HwWatchdog(cfg.hw_watchdog)
        self.server = open_metrics_server(
            cfg, obs, self.box, self.serve_stats, self.logs, self._on_serve
        )
        if self.server is not None:
            log.info(f"listening on http://{self.server.address}/metrics (--prom-addr)")
            self._stdout.write(self.server.address + "\n")
            self._stdout.flush()
            self.box.publish(self.snapshot())
            self.server.start()
        if cfg.shutdown_after_secs is not None:
            self._shutdown_at = self.state.started + cfg.shutdown_after_secs
        notify.sd_notify(notify.READY, self._environ)
        limit = self_watchdog_secs(cfg, dict(self._environ))
        if limit is not None:
            self.state.last_iteration_end = time.monotonic()
            self.watchdog = SelfWatchdog(self.state, float(limit), self._watchdog_usec())
            self.watchdog.start()
        log.info(
            f"watching {cfg.socket} (threshold {cfg.threshold_ms} ms"
            + (", recovery on" if self.recovery else "")
            + ")"
        )

    def _watchdog_usec(self) -> Optional[int]:
        if notify.notify_address(self._environ) is None:
            return None
        return systemd_watchdog_usec(dict(self._environ))

    def _on_serve(self, started: Optional[float]) -> None:
        self.state.serve_started = started

    def _abandon_start(self) -> None:
        """Undo a partial startup (exit 1 follows)."""
        if self.server is not None:
            self.server.stop()
        for closer in (self.exporter, self.audit, self.hw, self.observer):
            if closer is not None:
                with contextlib.suppress(OSError):
                    closer.close()

    # --- the loop ----------------------------------------------------------------

    def _stop_due(self) -> bool:
        if _varta._stop_signal() is not None:
            self.stop_requested = True
        if self.stop_requested:
            return True
        return self._shutdown_at is not None and time.monotonic() >= self._shutdown_at

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        self.state.stage = (name, t0)
        try:
            yield
        finally:
            self.state.stage = None
            self._stage_hists[name].observe(time.monotonic() - t0)

    def loop(self) -> None:
        obs = self.observer
        assert obs is not None
        while not self._stop_due():
            t_iter = time.monotonic()
            idle = 0.0
            with self._stage("drain_pending"):
                if self.recovery is not None:
                    self.recovery.begin_tick()
                    if self._deferred:
                        self._drain_pending(obs)
            with self._stage("poll"):
                t_poll = time.monotonic()
                batch = list(obs.poll(self._poll_timeout(obs)))
                if not batch:
                    idle = time.monotonic() - t_poll
                for ev in batch:
                    self._handle(ev)
            if self.exit_code:
                break
            with self._stage("maintenance"):
                self._maintenance(obs)
            with self._stage("recovery_reap"):
                if self.recovery is not None:
                    for done in self.recovery.reap(obs.now_ns()):
                        self._log_completion(done)
            with self._stage("housekeeping"):
                self._housekeeping(obs, t_iter, idle)

    def _poll_timeout(self, obs: ObserverLike) -> float:
        if self._deferred:
            return 0.0
        timeout = self.cfg.read_timeout_ms / 1000.0
        if self.recovery is not None:
            deadline = self.recovery.next_deadline_ns()
            if deadline is not None:
                timeout = min(timeout, max(0.0, (deadline - obs.now_ns()) / 1e9))
        if self._shutdown_at is not None:
            timeout = min(timeout, max(0.0, self._shutdown_at - time.monotonic()))
        return timeout

    def _drain_pending(self, obs: ObserverLike) -> None:
        """Deferred stalls: pre-drain so resumed agents are seen, then decide."""
        recovery = self.recovery
        assert recovery is not None
        drained = 0
        while drained < PRE_DRAIN_EVENTS:
            batch = list(obs.poll(0.0))
            if not batch:
                break
            drained += len(batch)
            for ev in batch:
                self._handle(ev)
        while self._deferred and recovery.has_budget():
            stall = self._deferred.popleft()
            now = obs.now_ns()
            peer = stall.peer
            agent = obs.agent(stall.pid) if peer is None else obs.agent(stall.pid, peer)
            decision = recovery.fire_time_check(stall, agent, now)
            if decision is None:
                decision = recovery.on_stall(stall, now)
            self._log_decision(decision, stall)

    # --- events ------------------------------------------------------------------

    def _handle(self, ev: object) -> None:
        """One event: its TSV row(s), then what the daemon does about it."""
        if self.exporter is not None:
            self.exporter.event(ev)
        if isinstance(ev, varta.Stall):
            self._on_stall(ev)
        elif isinstance(ev, varta.Decode):
            self._on_decode(ev)
        elif isinstance(ev, varta.AuthFailure):
            self._on_auth_failure(ev)
        elif isinstance(ev, varta.OriginConflict):
            self._on_origin_conflict(ev)
        elif isinstance(ev, varta.NamespaceConflict):
            self._on_namespace_conflict(ev)
        elif isinstance(ev, varta.Io):
            self._on_io(ev)
        elif isinstance(ev, varta.CtrlTruncated):
            self._on_ctrunc(ev)
        elif isinstance(ev, varta.Blind):
            self._on_blind(ev)
        # Beat: only its TSV row.

    def _on_stall(self, ev: varta.Stall) -> None:
        verdict = ev.verdict
        level = logging.INFO if verdict is varta.Verdict.EXITED else logging.WARNING
        log.log(
            level,
            describe_stall(ev, self.cfg.threshold_ms),
            extra={"pid": ev.pid, "verdict": str(verdict), **identity_fields(ev)},
        )
        if ev.forensics and self.audit is not None:
            self.audit.forensics(ev.observer_ns, ev.pid, ev.forensics, ev.forensics_sha256 or "")
        recovery = self.recovery
        if recovery is None:
            return
        if self._deferred or not recovery.has_budget():
            self._deferred.append(ev)
            return
        assert self.observer is not None
        self._log_decision(recovery.on_stall(ev, self.observer.now_ns()), ev)

    def _on_decode(self, ev: varta.Decode) -> None:
        self.logs.log("decode", logging.WARNING, f"undecodable frame: {ev.error}")

    def _on_auth_failure(self, ev: varta.AuthFailure) -> None:
        self.logs.log(
            "auth_failure",
            logging.WARNING,
            f"frame claims pid {ev.claimed_pid} but the kernel says another process sent it",
            pid=ev.claimed_pid,
        )

    def _on_origin_conflict(self, ev: varta.OriginConflict) -> None:
        self.logs.log(
            "origin_conflict",
            logging.WARNING,
            f"pid {ev.claimed_pid}: beat origin {ev.observed_origin.name} is weaker than "
            f"the pinned {ev.slot_origin.name}; ignored",
            pid=ev.claimed_pid,
        )

    def _on_namespace_conflict(self, ev: varta.NamespaceConflict) -> None:
        msg = (
            f"pid {ev.claimed_pid}: pid namespace {ev.observed_ns_inode} differs from "
            f"{ev.observer_ns_inode}"
        )
        if self.cfg.strict_namespace_check:
            log.error(f"{msg}; --strict-namespace-check: exiting", extra={"pid": ev.claimed_pid})
            self.exit_code = 1
            return
        self.logs.log("namespace_conflict", logging.WARNING, msg, pid=ev.claimed_pid)

    def _on_io(self, ev: varta.Io) -> None:
        self.logs.log("io", logging.WARNING, f"receive error: {ev.error}", error=ev.error)

    def _on_ctrunc(self, ev: varta.CtrlTruncated) -> None:
        self.logs.log("ctrunc", logging.WARNING, f"control data truncated: {ev.error}")

    def _on_blind(self, ev: varta.Blind) -> None:
        # Short gaps are scheduling noise on a busy host; long ones matter.
        long_gap = ev.duration_ns * 4 >= self.cfg.threshold_ms * 1_000_000
        log.log(
            logging.WARNING if long_gap else logging.INFO,
            f"observer was blind for {ev.duration_ns // 1_000_000} ms (stopped, or not "
            "scheduled); stall deadlines extended by that much",
            extra={"blind_ms": ev.duration_ns // 1_000_000},
        )

    def _log_decision(self, d: Decision, stall: varta.Stall) -> None:
        who = agent_label(stall)  # named as the stall line names it
        if d.spawned:
            log.info(
                f"recovery for {who}: started child {d.child_pid}",
                extra={"pid": d.agent_pid, "child_pid": d.child_pid},
            )
        elif d.outcome == "debounced":
            log.info(f"recovery for {who}: debounced ({d.reason})")
        elif d.outcome == "skipped_verdict":
            log.info(f"no recovery for {who}: verdict {d.verdict} (see --recovery-on)")
        else:
            log.warning(
                f"recovery for {who}: {d.outcome}" + (f" ({d.error})" if d.error else ""),
                extra={"pid": d.agent_pid, "error": d.error},
            )

    def _log_completion(self, c: Completion) -> None:
        how = (
            f"exit {c.exit_code}"
            if c.exit_code is not None
            else (f"signal {c.signal}" if c.signal is not None else "unknown status")
        )
        level = logging.INFO if c.status == "reaped" and c.exit_code == 0 else logging.WARNING
        log.log(
            level,
            f"recovery child {c.child_pid} for pid {c.agent_pid} {c.status}: {how} "
            f"after {c.duration_ns // 1_000_000} ms",
            extra={"pid": c.agent_pid, "child_pid": c.child_pid},
        )

    # --- maintenance, housekeeping ---------------------------------------------------

    def _maintenance(self, obs: ObserverLike) -> None:
        if self.reopen_requested:
            self.reopen_files()
        self._removed.extend(obs.take_removed())
        for _ in range(min(REMOVED_PER_TICK, len(self._removed))):
            pid = self._removed.popleft()
            if (self.exporter is None and self.recovery is None) or obs.agent(pid) is not None:
                continue
            if self.exporter is not None:
                self.exporter.eviction(obs.now_ns(), pid)
            if self.recovery is not None:
                self.recovery.forget(pid)
        if self.exporter is not None:
            if self.exporter.buffered_bytes:
                self.exporter.flush()
            err = self.exporter.take_error()
            if err is not None:
                self.logs.log("file_export_io", logging.ERROR, f"export file: {_reason(err)}")
        if self.audit is not None:
            self.audit.maintain(AUDIT_DRAIN_MS)
            err = self.audit.take_error()
            if err is not None:
                self.logs.log("audit_io", logging.ERROR, f"audit file: {_reason(err)}")
            for level in ("warn", "critical"):
                count = self.audit.watermark[level]
                if count != self._watermarks_seen[level]:
                    self._watermarks_seen[level] = count
                    self.logs.log(
                        f"audit_ring_{level}",
                        logging.WARNING,
                        f"audit ring above its {level} watermark",
                    )
        if self.box.wanted:
            self.box.publish(self.snapshot())
        if self._wedge_pending and (
            time.monotonic() - self.state.started >= self.cfg.inject_wedge_after_ms / 1000.0
        ):
            # Test aid: the Python side stops (ingest runs on; docs/verdicts.md).
            self._wedge_pending = False
            assert self.cfg.inject_wedge_ms is not None
            tracked = obs.counters().get("watch_pids_tracked", 0)
            log.warning(
                f"test aid: wedging the poll loop for {self.cfg.inject_wedge_ms} ms "
                f"({tracked} agents tracked)"
            )
            time.sleep(self.cfg.inject_wedge_ms / 1000.0)

    def _housekeeping(self, obs: ObserverLike, t_iter: float, idle: float) -> None:
        state = self.state
        state.iterations += 1
        if self.cfg.heartbeat_file is not None:
            content = f"{state.iterations} {obs.now_ns()}\n".encode()
            try:
                write_heartbeat(self.cfg.heartbeat_file, content, self._hb_seq)
            except OSError as exc:
                self.logs.log("heartbeat_io", logging.ERROR, f"heartbeat file: {_reason(exc)}")
        if self.hw is not None:
            try:
                self.hw.kick()
            except OSError as exc:
                self.logs.log("hw_watchdog", logging.ERROR, f"hw watchdog kick: {_reason(exc)}")
        now = time.monotonic()
        busy = max(0.0, now - t_iter - idle)
        self._iteration_hist.observe(busy)
        if busy * 1000.0 > self.cfg.iteration_budget_ms:
            self._iteration_budget_exceeded += 1
        state.last_loop_unix = time.time()
        state.last_iteration_end = now

    def snapshot(self) -> Snapshot:
        """Copies for the metrics thread (called on the loop thread)."""
        obs = self.observer
        assert obs is not None
        rows = obs.pid_rows()
        counters: dict[str, CounterValue] = dict(obs.counters())
        # The core counts nanoseconds; Prometheus wants seconds.
        blind_ns = counters.pop("observer_blind_ns", 0)
        assert isinstance(blind_ns, int)
        counters["observer_blind_seconds"] = blind_ns / 1e9
        recoveries: dict[int, tuple[Optional[int], int]] = {}
        if self.recovery is not None:
            counters.update(self.recovery.counters())
            recoveries = dict(self.recovery.recoveries_by_pid)
        hists: dict[str, Histogram] = {
            "varta_observer_iteration_seconds": copy_histogram(self._iteration_hist)
        }
        for name, h in self._stage_hists.items():
            hists[f"varta_observer_stage_seconds:{name}"] = copy_histogram(h)
        if self.audit is not None:
            counters.update(self.audit.counters())
            hists["varta_audit_fsync_seconds"] = copy_histogram(self.audit.fsync_seconds)
        if self.exporter is not None:
            counters.update(self.exporter.counters())
        counters["reopen"] = self.reopens
        counters["observer_iteration_budget_exceeded"] = self._iteration_budget_exceeded
        mode = self.cfg.signal_handler_mode
        counters["signal_handler_install"] = {"direct": 0, "libc": 0, mode: 1}
        return Snapshot(
            agents=rows,
            counters=counters,
            histograms=hists,
            uptime_seconds=time.monotonic() - self.state.started,
            last_loop_unix=self.state.last_loop_unix,
            recoveries=recoveries,
        )

    # --- shutdown (docs/observer.md#signals-and-shutdown) -----------------------------

    def shutdown(self) -> None:
        self.stop_requested = True
        if self.watchdog is not None:
            self.watchdog.stop()
        notify.sd_notify(notify.STOPPING, self._environ)
        obs = self.observer
        if self.exporter is not None and obs is not None:
            for _ in range(SHUTDOWN_DRAIN_BATCHES):
                batch = list(obs.poll(0.0))
                if not batch:
                    break
                for ev in batch:
                    self.exporter.event(ev)
            try:
                self.exporter.close()
            except OSError as exc:
                log.error(
                    f"export file: {self.exporter.lost_at_close} rows lost at exit "
                    f"(dropped whole, {self.exporter.dropped_rows} in all): {_reason(exc)}"
                )
        if self.recovery is not None:
            result = self.recovery.shutdown(self.cfg.shutdown_grace_ms)
            for done in result.completed:
                self._log_completion(done)
            if result.survivors:
                log.warning(
                    "recovery children still running after the grace period (left to init): "
                    + " ".join(map(str, result.survivors))
                )
        if self.audit is not None:
            try:
                self.audit.close()
            except OSError as exc:
                log.error(
                    f"audit file: {self.audit.lost_at_close} records lost at exit "
                    f"({self.audit.dropped} unwritten in all; the next start writes a gap "
                    f"record for them): {_reason(exc)}"
                )
                self.exit_code = self.exit_code or 1
        if self.server is not None:
            self.server.stop()
        if obs is not None:
            obs.close()
        if self.hw is not None:
            self.hw.close()
        log.info("stopped")


def run(
    cfg: WatchConfig,
    *,
    observer_factory: Optional[ObserverFactory] = None,
    stdout: Optional[IO[str]] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> int:
    return Daemon(cfg, observer_factory=observer_factory, stdout=stdout, environ=environ).run()


#: The daemon API (defined here or in startup/watchdogs).
__all__ = [
    "AUDIT_DRAIN_MS",
    "Daemon",
    "HEARTBEAT_ATTEMPTS",
    "HW_WATCHDOG_MIN_TIMEOUT_S",
    "HwWatchdog",
    "LoopState",
    "PRE_DRAIN_EVENTS",
    "REMOVED_PER_TICK",
    "REOPEN_AND_IGNORED_SIGNALS",
    "SHUTDOWN_DRAIN_BATCHES",
    "STAGE_LIMITS_S",
    "SelfWatchdog",
    "StartupError",
    "WDIOC_GETTIMEOUT",
    "WDIOC_SETTIMEOUT",
    "describe_stall",
    "native_observer_factory",
    "network_kwargs",
    "raise_fd_limit",
    "read_token",
    "recovery_config",
    "run",
    "write_heartbeat",
]
