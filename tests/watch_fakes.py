"""A scripted stand-in for ``varta.Observer`` for the daemon's loop unit tests.

Tests queue batches of real ``varta`` event objects (built with the helpers
below, which fill in defaults); ``poll()`` hands out one batch per call,
records the timeout it was given and keeps per-pid ``AgentInfo`` the way the
tracker would. An idle poll sleeps its timeout, like the native wait.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import varta
from varta import BeatOrigin, Status

KERNEL = BeatOrigin.KERNEL_ATTESTED


def beat(
    pid: int,
    status: Status = Status.OK,
    payload: int = 0,
    nonce: int = 1,
    observer_ns: int = 0,
) -> varta.Beat:
    return varta.Beat(pid, status, payload, nonce, KERNEL, None, observer_ns)


def stall(
    pid: int,
    last_nonce: int = 1,
    last_ns: int = 0,
    observer_ns: int = 0,
    generation: Optional[int] = None,
    verdict: varta.Verdict = varta.Verdict.HUNG,
) -> varta.Stall:
    return varta.Stall(
        pid, last_nonce, last_ns, KERNEL, None, generation, observer_ns, verdict=verdict
    )


def namespace_conflict(pid: int) -> varta.NamespaceConflict:
    return varta.NamespaceConflict(pid, 1, 2, 0)


def agent_info(
    pid: int,
    status: Status = Status.OK,
    beats: int = 0,
    stalls: int = 0,
    last_ns: int = 0,
    stalled: bool = False,
) -> varta.AgentInfo:
    return varta.AgentInfo(pid, status, KERNEL, beats, stalls, 0, last_ns, 0, stalled, None, None)


@dataclass
class _Slot:
    status: Status = Status.OK
    beats: int = 0
    stalls: int = 0
    last_ns: int = 0
    stalled: bool = False


@dataclass
class FakeObserver:
    socket_path: Optional[str] = None
    threshold_ms: int = 100
    kwargs: dict[str, Any] = field(default_factory=dict)
    batches: deque[list[Any]] = field(default_factory=deque)
    timeouts: list[Optional[float]] = field(default_factory=list)
    slots: dict[int, _Slot] = field(default_factory=dict)
    removed: list[int] = field(default_factory=list)
    clock_ns: int = 1_000_000_000
    closed: bool = False
    on_poll: Optional[Callable[[FakeObserver], None]] = None

    def poll(self, timeout: Optional[float] = None) -> list[Any]:
        self.timeouts.append(timeout)
        if self.on_poll is not None:
            self.on_poll(self)
        self.clock_ns += 1_000_000
        if self.batches:
            batch = self.batches.popleft()
            for ev in batch:
                self._track(ev)
            return batch
        if timeout:
            time.sleep(timeout)  # an idle wait, like the native poll
        return []

    def _track(self, ev: Any) -> None:
        if isinstance(ev, varta.Beat):
            s = self.slots.setdefault(ev.pid, _Slot())
            s.beats += 1
            s.status = ev.status
            s.stalled = False
            s.last_ns = ev.observer_ns
        elif isinstance(ev, varta.Stall):
            s = self.slots.setdefault(ev.pid, _Slot(last_ns=ev.last_ns))
            s.stalls += 1
            s.stalled = True

    def track(self, pid: int, **state: Any) -> None:
        """Set a tracked pid's state directly."""
        self.slots[pid] = _Slot(**state)

    def agents(self) -> list[varta.AgentInfo]:
        return [self._info(pid) for pid in self.slots]

    def agent(self, pid: int) -> Optional[varta.AgentInfo]:
        return self._info(pid) if pid in self.slots else None

    def pid_rows(self) -> varta.PidRows:
        return varta.PidRows(
            (pid, s.beats, s.stalls, 3 if s.stalled else int(s.status))
            for pid, s in self.slots.items()
        )

    def _info(self, pid: int) -> varta.AgentInfo:
        s = self.slots[pid]
        return agent_info(pid, s.status, s.beats, s.stalls, s.last_ns, s.stalled)

    def counters(self) -> dict[str, Any]:
        return {
            "beats": sum(s.beats for s in self.slots.values()),
            "tracker_capacity": 256,
            "watch_pids_tracked": len(self.slots),
            "decode_errors": {"bad_crc": 1},
        }

    def remove(self, pids: list[int]) -> None:
        """The tracker drops *pids* (eviction / recycle retirement)."""
        for pid in pids:
            self.slots.pop(pid, None)
        self.removed += pids

    def take_removed(self) -> list[int]:
        out, self.removed = self.removed, []
        return out

    def now_ns(self) -> int:
        return self.clock_ns

    def next_deadline_ns(self) -> Optional[int]:
        return None

    def close(self) -> None:
        self.closed = True


def factory(obs: FakeObserver) -> Any:
    """An ``observer_factory`` returning *obs* (recording the constructor arguments)."""

    def make(socket_path: Optional[str], threshold_ms: int, **kwargs: Any) -> FakeObserver:
        obs.socket_path = socket_path
        obs.threshold_ms = threshold_ms
        obs.kwargs = kwargs
        return obs

    return make
