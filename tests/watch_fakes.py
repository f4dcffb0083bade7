"""A scripted stand-in for ``varta.Observer`` (the INTERFACES.md API) for loop unit tests.

Tests queue batches of events; ``poll()`` hands out one batch per call and
records the timeout it was given. Event classes carry the native class names
(``Beat``, ``Stall``, …) because the daemon dispatches on the class name.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

from varta import BeatOrigin, Status


@dataclass(frozen=True)
class Beat:
    pid: int
    status: Status = Status.OK
    payload: int = 0
    nonce: int = 1
    origin: BeatOrigin = BeatOrigin.KERNEL_ATTESTED
    pid_ns_inode: Optional[int] = None
    observer_ns: int = 0


@dataclass(frozen=True)
class Stall:
    pid: int
    last_nonce: int = 1
    last_ns: int = 0
    origin: BeatOrigin = BeatOrigin.KERNEL_ATTESTED
    pid_ns_inode: Optional[int] = None
    generation: Optional[int] = None
    observer_ns: int = 0


@dataclass(frozen=True)
class Decode:
    error: Any
    observer_ns: int = 0


@dataclass(frozen=True)
class AuthFailure:
    claimed_pid: int
    observer_ns: int = 0


@dataclass(frozen=True)
class NamespaceConflict:
    claimed_pid: int
    observed_ns_inode: int = 1
    observer_ns_inode: int = 2
    observer_ns: int = 0


@dataclass(frozen=True)
class Io:
    error: str
    errno: Optional[int] = None
    observer_ns: int = 0


@dataclass
class AgentInfo:
    pid: int
    status: Status = Status.OK
    origin: BeatOrigin = BeatOrigin.KERNEL_ATTESTED
    beats: int = 0
    stalls: int = 0
    last_nonce: int = 0
    last_ns: int = 0
    age_ns: int = 0
    stalled: bool = False
    pid_ns_inode: Optional[int] = None
    generation: Optional[int] = None


@dataclass
class FakeObserver:
    socket_path: Optional[str] = None
    threshold_ms: int = 100
    kwargs: dict[str, Any] = field(default_factory=dict)
    batches: deque[list[Any]] = field(default_factory=deque)
    timeouts: list[Optional[float]] = field(default_factory=list)
    tracked: dict[int, AgentInfo] = field(default_factory=dict)
    removed: list[int] = field(default_factory=list)
    clock_ns: int = 1_000_000_000
    closed: bool = False
    on_poll: Any = None

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
        name = type(ev).__name__
        if name == "Beat":
            a = self.tracked.setdefault(ev.pid, AgentInfo(ev.pid))
            a.beats += 1
            a.status = ev.status
            a.stalled = False
            a.last_ns = ev.observer_ns
        elif name == "Stall":
            a = self.tracked.setdefault(ev.pid, AgentInfo(ev.pid, last_ns=ev.last_ns))
            a.stalls += 1
            a.stalled = True

    def agents(self) -> list[AgentInfo]:
        return list(self.tracked.values())

    def agent(self, pid: int) -> Optional[AgentInfo]:
        return self.tracked.get(pid)

    def counters(self) -> dict[str, Any]:
        return {
            "beats": sum(a.beats for a in self.tracked.values()),
            "tracker_capacity": 256,
            "watch_pids_tracked": len(self.tracked),
            "decode_errors": {"bad_crc": 1},
        }

    def remove(self, pids: list[int]) -> None:
        """The tracker drops *pids* (eviction / recycle retirement)."""
        for pid in pids:
            self.tracked.pop(pid, None)
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
