"""Recovery: run an operator command for a stalled agent (``docs/observer.md#recovery``).

No shell is ever involved. The command line is split on Unicode whitespace
into a program and its arguments; the stalled pid is substituted for every
``{pid}`` in the arguments, or appended as the last argument when no argument
holds ``{pid}``; ``{verdict}`` becomes the stall's verdict (``hung``, …).
Only stalls whose verdict is in ``recovery_on`` are acted on (default
``hung,crashed,vanished``: a clean exit never triggers recovery). The child
is started with ``fork``/``exec`` directly (through
:class:`subprocess.Popen` with ``shell=False``), its ``PATH`` lookup uses the
*child's* ``PATH`` (``/usr/bin:/bin`` unless ``--recovery-inherit-env``), and
the observer never waits for it: :meth:`RecoveryRunner.reap` collects exited
children each tick without blocking and SIGKILLs those past the timeout.

With an audit log the spawn is **write-ahead**: the child is forked as a small
gate (this Python, ``-I -S``) that blocks on a pipe; the runner writes the
``spawn`` record with the child's pid and fdatasyncs it
(:meth:`varta.watch.audit.AuditLog.write_ahead`), and only then releases the
gate, which execs the recovery program in the same process (same pid,
the environment given, nothing of the gate left). If the record cannot be made
durable (ENOSPC, EIO, read-only) the gate is closed unreleased, the child exits
without running anything, and the stall is refused
(``refused_audit_unavailable``) unless ``audit_fail_open`` is set. A daemon
killed before the release leaves the gate at EOF, which also exits without
running. So no recovery program ever runs without its record on disk.

The runner is independent of the native module: a stall is any object with
the attributes ``pid``, ``origin``, ``pid_ns_inode``, ``generation``,
``last_nonce``, ``last_ns``, ``observer_ns`` and ``verdict`` (``varta.Stall`` or a small
dataclass in tests). Every outcome is counted under the labels of
docs/observer.md#recovery-outcomes (and ``skipped_verdict``, docs/verdicts.md) and
written to an :class:`AuditSink` (``varta.watch.audit.AuditLog``).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict

from .._record import field, record
from .._varta import own_pid_ns_inode, process_start_time
from .identity import identity_fields
from .recovery_config import (
    _NETWORK_UNVERIFIED,
    _REFUSED_COUNTER,
    _SOCKET_MODE_ONLY,
    CAPTURE_BYTES_RANGE,
    DEFAULT_CHILD_PATH,
    DEFAULT_RECOVERY_ON,
    EVALUATIONS_PER_TICK,
    GONE_VERDICTS,
    LEDGER_CAPACITY,
    MIN_TIMEOUT_MS,
    OUTCOMES,
    REAP_PER_TICK,
    REFUSED_REASONS,
    SHUTDOWN_POLL_S,
    SPAWNS_PER_TICK,
    VERDICTS,
    Completion,
    Decision,
    RecoveryCommand,
    RecoveryConfig,
    ShutdownResult,
    parse_env_entry,
    parse_recovery_on,
    strip_ws,
    verdict_name,
)

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import IO, Callable, Literal, Optional, Union

    from .recovery_config import AgentLike, AuditSink, StallLike

#: The write-ahead gate (see the module docs): argv = [fd, LC_CTYPE to restore
#: ("-" = unset), program path, argv...]. Exit 125 without exec unless released.
GATE_CODE = """\
import os, sys
fd = int(sys.argv[1])
if os.read(fd, 1) != b"\\1":
    os._exit(125)
os.close(fd)
env = dict(os.environb)
lc = sys.argv[2]
if lc == "-":
    env.pop(b"LC_CTYPE", None)
else:
    env[b"LC_CTYPE"] = os.fsencode(lc[1:])
try:
    os.execve(sys.argv[3], sys.argv[4:], env)
except OSError as e:
    os.write(2, ("recovery gate: %s: %s\\n" % (sys.argv[3], e.strerror)).encode())
    os._exit(127)
"""
GATE_EXIT_UNRELEASED = 125
_GATE_GO = b"\1"


@record
class _Child:
    popen: subprocess.Popen[bytes]
    agent_pid: int
    generation: Optional[int]
    spawned_ns: int
    killed: bool = False
    orphan: bool = False
    stdout_len: int = 0
    stderr_len: int = 0
    truncated: bool = False
    pipes: list[IO[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid


#: ``/proc/<pid>/stat`` start time (clock ticks) or ``None``; our pid-namespace inode or
#: ``None``: the observer's own readers, so recovery pins a pid exactly as verdicts do.
read_start_time = process_start_time
read_own_pid_ns_inode = own_pid_ns_inode


def resolve_program(program: str, env: dict[str, str]) -> str:
    """The path ``execvpe`` would run for *program* with *env*'s ``PATH``; raises
    the :class:`OSError` it would fail with (ENOENT / EACCES)."""
    if "/" in program:
        candidates = [program]
    else:
        path = env.get("PATH", os.defpath)
        candidates = [os.path.join(d or ".", program) for d in path.split(os.pathsep)]
    denied = False
    for c in candidates:
        if os.path.isfile(c):
            if os.access(c, os.X_OK):
                return c
            denied = True
    if denied:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), program)
    raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _same_lineage(a: Optional[int], b: Optional[int]) -> bool:
    """Lineages differ only when both generations are known and unequal."""
    return a is None or b is None or a == b


class RecoveryRunner:
    """Decides, spawns, reaps and kills recovery children (docs/observer.md#recovery,
    #recovery-outcomes).

    All ``now_ns`` arguments are on one clock (the observer clock); *clock*
    returns "now" on that same clock for :meth:`shutdown` and for audit rows
    written outside a call that received ``now_ns``.
    """

    def __init__(
        self,
        config: RecoveryConfig,
        audit: Optional[AuditSink] = None,
        *,
        capacity: int = 256,
        allow_cross_namespace: bool = False,
        own_ns_inode: Union[int, Literal["auto"], None] = "auto",
        clock: Callable[[], int] = time.monotonic_ns,
        ledger_capacity: int = LEDGER_CAPACITY,
        start_time_reader: Callable[[int], Optional[int]] = read_start_time,
        audit_fail_open: bool = False,
    ) -> None:
        if capacity < 1:
            raise ValueError("recovery capacity must be >= 1")
        self.config = config
        self.audit = audit
        self.capacity = capacity
        self.allow_cross_namespace = allow_cross_namespace
        self.own_ns_inode = read_own_pid_ns_inode() if own_ns_inode == "auto" else own_ns_inode
        self._clock = clock
        self._ledger_capacity = ledger_capacity
        self._start_time = start_time_reader
        self._env = config.child_env()
        #: Spawn even when the spawn record cannot be made durable first.
        self.audit_fail_open = audit_fail_open
        #: Children that ran although their spawn record was not durable (fail-open).
        self.spawned_unaudited = 0
        #: Why the last write-ahead failed (for the daemon's log), until taken.
        self.last_audit_error: Optional[OSError] = None
        self._debounce_ns = config.debounce_ms * 1_000_000
        self._timeout_ns = None if config.timeout_ms is None else config.timeout_ms * 1_000_000

        # pid -> (fired_at_ns, generation); insertion order == fire order.
        self._ledger: OrderedDict[int, tuple[int, Optional[int]]] = OrderedDict()
        # agent pid -> child (the one outstanding child per agent pid)
        self._outstanding: dict[int, _Child] = {}
        # child pid -> child, killed children of a recycled lineage
        self._orphans: dict[int, _Child] = {}
        self._reap_cursor = 0
        self._tick_evaluations = 0
        self._tick_spawns = 0
        self._tick_budget_counted = False
        self._closed = False

        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.refused: dict[str, int] = dict.fromkeys(REFUSED_REASONS, 0)
        self.duration_ns_sum = 0
        self.duration_count = 0
        self.last_fired_evictions = 0
        self.debounce_recycle_resets = 0
        self.outstanding_recycle_resets = 0
        self.spawn_budget_exceeded = 0
        self.invariant_violations = 0
        self.reap_truncated = 0
        #: agent pid -> (generation at the last spawn, recovery children started
        #: for that lineage), for ``/agents`` (docs/live-view.md#agents-json).
        #: Bounded by the larger of *capacity* and the ledger's capacity
        #: (least recently spawned dropped first); :meth:`forget` drops a pid
        #: the tracker removed.
        self.recoveries_by_pid: dict[int, tuple[Optional[int], int]] = {}
        self._recoveries_cap = max(capacity, ledger_capacity)

    # --- introspection -------------------------------------------------------------

    def counters(self) -> dict[str, Union[int, dict[str, int]]]:
        """Prometheus family names (no ``varta_`` prefix, no ``_total``) -> values."""
        return {
            "recovery_outcomes": dict(self.outcomes),
            "recovery_duration_ns_sum": self.duration_ns_sum,
            "recovery_duration_count": self.duration_count,
            "recovery_refused": dict(self.refused),
            "recovery_last_fired_evictions": self.last_fired_evictions,
            "recovery_debounce_recycle_resets": self.debounce_recycle_resets,
            "recovery_outstanding_recycle_resets": self.outstanding_recycle_resets,
            "recovery_spawn_budget_exceeded": self.spawn_budget_exceeded,
            "recovery_invariant_violations": self.invariant_violations,
            "recovery_reap_truncated": self.reap_truncated,
            "recovery_spawned_unaudited": self.spawned_unaudited,
        }

    @property
    def outstanding(self) -> int:
        """Children not yet reaped (outstanding + orphans)."""
        return len(self._outstanding) + len(self._orphans)

    def forget(self, pid: int) -> None:
        """The tracker removed *pid*: drop its recovery count."""
        self.recoveries_by_pid.pop(pid, None)

    def child_pids(self) -> list[int]:
        return [c.pid for c in self._outstanding.values()] + list(self._orphans)

    def next_deadline_ns(self) -> Optional[int]:
        """Earliest time a running child reaches the timeout (``None``: nothing to kill)."""
        if self._timeout_ns is None:
            return None
        best: Optional[int] = None
        for c in self._children():
            if not c.killed:
                d = c.spawned_ns + self._timeout_ns
                if best is None or d < best:
                    best = d
        return best

    # --- per-tick budget (the loop defers what does not fit) -----------------------

    def begin_tick(self) -> None:
        """Reset the per-tick evaluation/spawn budget (call once per DrainPending)."""
        self._tick_evaluations = 0
        self._tick_spawns = 0
        self._tick_budget_counted = False

    def has_budget(self) -> bool:
        """False once this tick made 256 evaluations or 16 spawns (counted once per tick)."""
        if self._tick_evaluations < EVALUATIONS_PER_TICK and self._tick_spawns < SPAWNS_PER_TICK:
            return True
        if not self._tick_budget_counted:
            self._tick_budget_counted = True
            self.spawn_budget_exceeded += 1
        return False

    # --- decision --------------------------------------------------------------------

    def fire_time_check(
        self, stall: StallLike, agent: Optional[AgentLike], now_ns: int
    ) -> Optional[Decision]:
        """Re-check a deferred stall before acting on it (docs/observer.md#recovery).

        *agent* is ``Observer.agent(stall.pid)`` now. Returns ``None`` to go on
        with :meth:`on_stall`, or a ``skipped_*`` decision (counted and audited).
        """
        verdict = self.fire_time_verdict(stall, agent)
        if verdict is None:
            return None
        self._tick_evaluations += 1  # a skipped stall is an evaluation without on_stall
        return self._finish(Decision(verdict, int(stall.pid), reason=verdict), now_ns)

    def fire_time_verdict(self, stall: StallLike, agent: Optional[AgentLike]) -> Optional[str]:
        """The pure check: ``skipped_agent_resumed`` / ``skipped_pid_recycled`` /
        ``skipped_stall_unverifiable`` or ``None``. A verdict of an ended
        process is final: the kernel already said it is gone (its slot is
        retired), so there is nothing that could have resumed."""
        if verdict_name(stall) in GONE_VERDICTS:
            return None
        if agent is not None and (not agent.stalled or agent.last_ns != stall.last_ns):
            return "skipped_agent_resumed"
        gen = stall.generation
        if gen is not None:
            live = self._start_time(int(stall.pid))
            if live is None:
                return "skipped_stall_unverifiable"
            if live != gen:
                return "skipped_pid_recycled"
        if agent is None:
            return "skipped_stall_unverifiable"
        if not _same_lineage(gen, agent.generation):
            return "skipped_pid_recycled"
        return None

    def on_stall(self, stall: StallLike, now_ns: int) -> Decision:
        """Decide for one stall (docs/observer.md#recovery) and spawn without waiting when
        allowed."""
        if self._closed:
            raise RuntimeError("recovery runner is shut down")
        self._tick_evaluations += 1
        pid = int(stall.pid)
        gen = stall.generation
        verdict = verdict_name(stall)

        # 0. verdict (--recovery-on): counted, not audited (a deploy's clean
        #    exits would otherwise fill the log).
        if verdict not in self.config.recovery_on:
            self.outcomes["skipped_verdict"] += 1
            return Decision("skipped_verdict", pid, reason=None, verdict=verdict)

        # 1. namespace
        peer_ns = stall.pid_ns_inode
        if (
            not self.allow_cross_namespace
            and peer_ns is not None
            and self.own_ns_inode is not None
            and peer_ns != self.own_ns_inode
        ):
            return self._finish(
                Decision("refused_cross_namespace", pid, "cross_namespace_agent"), now_ns
            )
        # 2. origin
        origin = int(stall.origin)
        if origin == _NETWORK_UNVERIFIED:
            return self._finish(
                Decision("refused_unauthenticated_transport", pid, "unauthenticated_transport"),
                now_ns,
            )
        if origin == _SOCKET_MODE_ONLY:
            return self._finish(
                Decision("refused_socket_mode_only", pid, "socket_mode_only"), now_ns
            )
        # 3. debounce ledger
        self._prune_ledger(now_ns)
        entry = self._ledger.get(pid)
        if entry is not None:
            fired_ns, fired_gen = entry
            if not _same_lineage(fired_gen, gen):
                del self._ledger[pid]
                self.debounce_recycle_resets += 1
            elif now_ns - fired_ns < self._debounce_ns:
                return self._finish(Decision("debounced", pid, "debounced"), now_ns)
        # 4. outstanding child for this pid
        child = self._outstanding.get(pid)
        if child is not None:
            if not _same_lineage(child.generation, gen):
                refusal = self._retire_stale(child, now_ns)
                if refusal is not None:
                    return self._finish(
                        Decision("refused_outstanding_capacity", pid, refusal), now_ns
                    )
            else:
                self._try_reap(child, now_ns)
                if pid in self._outstanding:
                    return self._finish(Decision("debounced", pid, "outstanding_in_flight"), now_ns)
        # 5. reserve slots
        if len(self._outstanding) >= self.capacity:
            return self._finish(
                Decision("refused_outstanding_capacity", pid, "outstanding_capacity"), now_ns
            )
        if pid not in self._ledger and len(self._ledger) >= self._ledger_capacity:
            oldest_pid, (oldest_ns, _) = next(iter(self._ledger.items()))
            if now_ns - oldest_ns < self._debounce_ns:
                return self._finish(
                    Decision("refused_debounce_capacity", pid, "debounce_capacity"), now_ns
                )
            del self._ledger[oldest_pid]
            self.last_fired_evictions += 1
        # 6. spawn
        return self._spawn(pid, gen, now_ns, verdict, stall)

    def _prune_ledger(self, now_ns: int) -> None:
        horizon = 10 * self._debounce_ns
        while self._ledger:
            _, (fired_ns, _) = next(iter(self._ledger.items()))
            if now_ns - fired_ns <= horizon:
                break
            self._ledger.popitem(last=False)

    def _retire_stale(self, child: _Child, now_ns: int) -> Optional[str]:
        """Kill an outstanding child of a recycled pid's old lineage; move it to orphans.

        Returns a refusal reason when that cannot be done.
        """
        self._try_reap(child, now_ns)
        if self._outstanding.get(child.agent_pid) is not child:
            self.outstanding_recycle_resets += 1
            return None  # it had already exited; the slot is free
        if len(self._orphans) >= self.capacity:
            return "orphan_reap_capacity"
        if not self._kill(child):
            return "stale_child_kill_failed"
        del self._outstanding[child.agent_pid]
        child.orphan = True
        self._orphans[child.pid] = child
        self.outstanding_recycle_resets += 1
        return None

    def _spawn(
        self,
        pid: int,
        gen: Optional[int],
        now_ns: int,
        verdict: str,
        stall: object = None,
    ) -> Decision:
        argv = self.config.command.argv(pid, verdict)
        capture = self.config.capture_stdio
        write_ahead = getattr(self.audit, "write_ahead", None)
        gate_w = -1
        err: Optional[OSError] = None
        try:
            if write_ahead is not None:
                exe = resolve_program(argv[0], self._env)
                gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
                lc = self._env.get("LC_CTYPE")
                run_argv = [
                    sys.executable, "-I", "-S", "-c", GATE_CODE,
                    str(gate_r), "-" if lc is None else "=" + lc, exe, *argv,
                ]  # fmt: skip
                pass_fds: tuple[int, ...] = (gate_r,)
            else:
                run_argv, pass_fds = argv, ()
            try:
                popen = subprocess.Popen(
                    run_argv,
                    env=self._env,
                    pass_fds=pass_fds,
                    close_fds=True,
                    shell=False,
                    stdin=None,
                    stdout=subprocess.PIPE if capture else None,
                    stderr=subprocess.PIPE if capture else None,
                )
            finally:
                if pass_fds:
                    os.close(pass_fds[0])
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            if gate_w >= 0:
                os.close(gate_w)
            return self._finish(
                Decision("spawn_failed", pid, "spawn_failed", error=_describe(exc)), now_ns
            )
        template = " ".join(argv).encode("utf-8", "surrogateescape")
        if self.audit is not None:
            # Why this child runs: queued ahead of its spawn record (the
            # write-ahead flushes what is queued first), with who the agent
            # is when anything is known (docs/observer.md#agent-identity).
            who = identity_fields(stall)
            write_identity = getattr(self.audit, "identity", None)
            if who and write_identity is not None:
                write_identity(
                    now_ns,
                    pid,
                    *(who.get(k) for k in ("peer", "comm", "unit", "container", "cmdline")),
                )
            self.audit.verdict(now_ns, pid, verdict)
        if write_ahead is not None:
            err = write_ahead(
                now_ns, pid, popen.pid, self.config.command.program, self.config.source,
                len(template),
            )  # fmt: skip
            if err is not None:
                self.last_audit_error = err
                if not self.audit_fail_open:
                    os.close(gate_w)  # EOF: the gate exits 125 without running anything
                    _discard_gate(popen)
                    return self._finish(
                        Decision(
                            "refused_audit_unavailable",
                            pid,
                            "audit_unavailable",
                            error=_describe(err),
                        ),
                        now_ns,
                    )
                self.spawned_unaudited += 1
            try:
                os.write(gate_w, _GATE_GO)
            finally:
                os.close(gate_w)
        self._tick_spawns += 1
        child = _Child(popen, pid, gen, now_ns)
        if capture:
            for pipe in (popen.stdout, popen.stderr):
                if pipe is not None:
                    os.set_blocking(pipe.fileno(), False)
                    child.pipes.append(pipe)
        self._outstanding[pid] = child
        self._ledger[pid] = (now_ns, gen)
        self._ledger.move_to_end(pid)
        self.outcomes["spawned"] += 1
        self._count_recovery(pid, gen)
        if self.audit is not None and (write_ahead is None or err is not None):
            self.audit.spawn(
                now_ns,
                pid,
                popen.pid,
                self.config.command.program,
                self.config.source,
                len(template),
            )
        return Decision("spawned", pid, child_pid=popen.pid, verdict=verdict)

    def _count_recovery(self, pid: int, gen: Optional[int]) -> None:
        prev = self.recoveries_by_pid.pop(pid, None)
        n = prev[1] + 1 if prev is not None and _same_lineage(prev[0], gen) else 1
        if len(self.recoveries_by_pid) >= self._recoveries_cap:
            del self.recoveries_by_pid[next(iter(self.recoveries_by_pid))]
        self.recoveries_by_pid[pid] = (gen, n)

    def _finish(self, decision: Decision, now_ns: int) -> Decision:
        """Count and audit a decision that did not spawn."""
        self.outcomes[decision.outcome] += 1
        counter = _REFUSED_COUNTER.get(decision.outcome)
        if counter is not None:
            self.refused[counter] += 1
        if self.audit is not None and decision.reason is not None:
            self.audit.refused(now_ns, decision.agent_pid, decision.reason)
        return decision

    # --- reaping -----------------------------------------------------------------------

    def _children(self) -> list[_Child]:
        return [*self._outstanding.values(), *self._orphans.values()]

    def reap(self, now_ns: int) -> list[Completion]:
        """One RecoveryRunner tick: non-blocking wait on <= 64 children (rotating
        cursor), SIGKILL those alive past the timeout, write ``complete`` rows."""
        children = self._children()
        n = len(children)
        if n == 0:
            return []
        if n > REAP_PER_TICK:
            self.reap_truncated += 1
        start = self._reap_cursor % n
        window = [children[(start + i) % n] for i in range(min(n, REAP_PER_TICK))]
        self._reap_cursor = (start + len(window)) % max(n, 1)
        done: list[Completion] = []
        for child in window:
            completion = self._try_reap(child, now_ns)
            if completion is not None:
                done.append(completion)
                continue
            if (
                self._timeout_ns is not None
                and not child.killed
                and now_ns - child.spawned_ns >= self._timeout_ns
            ):
                self._kill(child)
        return done

    def _kill(self, child: _Child) -> bool:
        """SIGKILL once; counts ``killed`` when the signal is sent."""
        if child.killed:
            return True
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            # Cannot happen for an unreaped child of ours; treat as already gone.
            self.invariant_violations += 1
            return True
        except OSError:
            return False
        child.killed = True
        self.outcomes["killed"] += 1
        return True

    def _drain_pipes(self, child: _Child, final: bool) -> None:
        """Read what the captured pipes hold now (never blocking); count up to the
        combined cap, discard the rest (so the child never blocks on a full pipe)."""
        cap = self.config.capture_bytes
        keep: list[IO[bytes]] = []
        for pipe in child.pipes:
            fd = pipe.fileno()
            eof = False
            for _ in range(64):  # <= 4 MiB per pipe per call
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    eof = True
                    break
                if not chunk:
                    eof = True
                    break
                room = max(0, cap - child.stdout_len - child.stderr_len)
                take = min(room, len(chunk))
                if take < len(chunk):
                    child.truncated = True
                if pipe is child.popen.stdout:
                    child.stdout_len += take
                else:
                    child.stderr_len += take
            if eof or final:
                _close_quietly(pipe)
            else:
                keep.append(pipe)
        child.pipes = keep

    def _try_reap(self, child: _Child, now_ns: int) -> Optional[Completion]:
        """Non-blocking wait; on exit, record the completion and drop the child."""
        if child.pipes:
            self._drain_pipes(child, final=False)
        try:
            wpid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:
            return self._complete(child, now_ns, "reap_failed", None, None)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return None
            return self._complete(child, now_ns, "reap_failed", None, None)
        if wpid == 0:
            return None
        if wpid != child.pid:
            self.invariant_violations += 1
            return None
        if os.WIFEXITED(status):
            code: Optional[int] = os.WEXITSTATUS(status)
            sig: Optional[int] = None
        elif os.WIFSIGNALED(status):
            code, sig = None, os.WTERMSIG(status)
        else:  # stopped/continued are not reported without WUNTRACED/WCONTINUED
            self.invariant_violations += 1
            return None
        return self._complete(child, now_ns, "killed" if child.killed else "reaped", code, sig)

    def _complete(
        self,
        child: _Child,
        now_ns: int,
        status: str,
        code: Optional[int],
        sig: Optional[int],
    ) -> Completion:
        if child.pipes:
            self._drain_pipes(child, final=True)
        # Tell Popen the process is gone so it neither warns nor waits on it again.
        if code is not None:
            child.popen.returncode = code
        else:
            child.popen.returncode = -sig if sig else -1
        if child.orphan:
            self._orphans.pop(child.pid, None)
        elif self._outstanding.get(child.agent_pid) is child:
            del self._outstanding[child.agent_pid]
        else:
            self.invariant_violations += 1
        duration = max(0, now_ns - child.spawned_ns)
        if status == "reaped" and code == 0:
            self.outcomes["reaped_zero"] += 1
        else:
            self.outcomes["reaped_nonzero"] += 1
        self.duration_ns_sum += duration
        self.duration_count += 1
        completion = Completion(
            child.agent_pid,
            child.pid,
            status,
            code,
            sig,
            duration,
            child.stdout_len,
            child.stderr_len,
            child.truncated,
        )
        if self.audit is not None:
            self.audit.complete(
                now_ns,
                completion.agent_pid,
                completion.child_pid,
                completion.status,
                completion.exit_code,
                completion.signal,
                completion.duration_ns,
                completion.stdout_len,
                completion.stderr_len,
                completion.truncated,
            )
        return completion

    # --- shutdown ---------------------------------------------------------------------

    def shutdown(self, grace_ms: int) -> ShutdownResult:
        """Kill every outstanding and orphan child, then poll every 10 ms until all
        are reaped or *grace_ms* passed; survivors are left to init."""
        self._closed = True
        for child in self._children():
            self._kill(child)
        deadline = time.monotonic() + grace_ms / 1000.0
        completed: list[Completion] = []
        while True:
            for child in self._children():
                c = self._try_reap(child, self._clock())
                if c is not None:
                    completed.append(c)
            if not self._outstanding and not self._orphans:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(SHUTDOWN_POLL_S, remaining))
        survivors = self.child_pids()
        for child in self._children():
            for pipe in child.pipes:
                _close_quietly(pipe)
            child.pipes = []
            child.popen.returncode = -int(signal.SIGKILL)  # abandoned: no ResourceWarning
        self._outstanding.clear()
        self._orphans.clear()
        return ShutdownResult(completed, survivors)


def _discard_gate(popen: subprocess.Popen[bytes]) -> None:
    """Kill and reap a gate that was never released (it has run nothing)."""
    try:
        popen.kill()
    except OSError:
        pass
    popen.wait()
    for pipe in (popen.stdout, popen.stderr):
        if pipe is not None:
            _close_quietly(pipe)


def _close_quietly(pipe: IO[bytes]) -> None:
    try:
        pipe.close()
    except OSError:
        pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        name = f": {exc.filename}" if exc.filename is not None else ""
        return f"{exc.strerror}{name}"
    return str(exc) or type(exc).__name__


#: The recovery API (what is defined here and the vocabulary from recovery_config).
__all__ = [
    "CAPTURE_BYTES_RANGE",
    "Completion",
    "DEFAULT_CHILD_PATH",
    "DEFAULT_RECOVERY_ON",
    "Decision",
    "EVALUATIONS_PER_TICK",
    "GATE_CODE",
    "GATE_EXIT_UNRELEASED",
    "GONE_VERDICTS",
    "LEDGER_CAPACITY",
    "MIN_TIMEOUT_MS",
    "OUTCOMES",
    "REAP_PER_TICK",
    "REFUSED_REASONS",
    "RecoveryCommand",
    "RecoveryConfig",
    "RecoveryRunner",
    "SHUTDOWN_POLL_S",
    "SPAWNS_PER_TICK",
    "ShutdownResult",
    "VERDICTS",
    "parse_env_entry",
    "parse_recovery_on",
    "read_own_pid_ns_inode",
    "read_start_time",
    "resolve_program",
    "strip_ws",
    "verdict_name",
]
