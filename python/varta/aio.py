"""asyncio liveness: beats that prove the event loop turns (``docs/agent.md#asyncio``).

``watch_loop(path_or_agent, interval_ms=..., max_lag_ms=...)`` schedules a loop
callback every ``interval_ms``. Each time it runs it proves the loop turned:

* with a socket path, or a :class:`varta.Varta`, the callback beats itself;
* with a :class:`varta.Heartbeat`, it calls ``progress()`` and that
  heartbeat's own thread beats (only while the callback keeps running).

A loop blocked by a synchronous call runs no callbacks, so the beats stop and
the observer reports the process ``hung``. A callback that runs later than
``max_lag_ms`` after it was due reports the lag: ``DEGRADED`` with the lag in
milliseconds as the payload.

Use it as ``async with watch_loop(path): ...`` or as a task,
``asyncio.create_task(watch_loop(path).run())`` (or ``await watch_loop(path)``).
Works with any loop that has ``call_at`` and ``time`` (the default loop, uvloop).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Generator
from types import TracebackType
from typing import Any, Optional, Union

from . import _loops
from ._types import Status
from ._varta import Heartbeat, Varta

__all__ = ["DEFAULT_INTERVAL_MS", "DEFAULT_MAX_LAG_MS", "watch_loop"]

#: Callback period with a socket path or a ``Varta`` (a beat each time).
DEFAULT_INTERVAL_MS = 500
#: Lag above which beats say ``DEGRADED`` (asyncio's own slow-callback mark).
DEFAULT_MAX_LAG_MS = 100

_U32_MAX = 2**32 - 1

# How many watchers each loop has: it leaves WATCHED_LOOPS with the last one.
_WATCHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()

AgentLike = Union[str, "os.PathLike[str]", Varta, Heartbeat]


class watch_loop:  # a function-like name, as asyncio.timeout
    """Beat while the running event loop turns (``docs/agent.md#asyncio``).

    ``path_or_agent``: a socket path (the watcher connects a ``Varta`` and
    closes it when it stops, with the clean-exit terminal frame unless it
    stops by an exception), or a ``Varta`` / ``Heartbeat`` it borrows and
    leaves open. ``interval_ms``: how often the loop callback runs (default
    500; with a ``Heartbeat``, half its interval). ``max_lag_ms``: lag above
    which beats say ``DEGRADED`` (default 100; ``None`` never does).
    """

    def __init__(
        self,
        path_or_agent: AgentLike,
        *,
        interval_ms: Optional[int] = None,
        max_lag_ms: Optional[int] = DEFAULT_MAX_LAG_MS,
    ) -> None:
        self._path: Optional[Union[str, os.PathLike[str]]] = None
        self._agent: Optional[Union[Varta, Heartbeat]] = None
        if isinstance(path_or_agent, (str, os.PathLike)):
            self._path = path_or_agent
        elif isinstance(path_or_agent, (Varta, Heartbeat)):
            self._agent = path_or_agent
        else:
            raise TypeError(
                "path_or_agent must be a socket path, varta.Varta or varta.Heartbeat, "
                f"not {type(path_or_agent).__name__}"
            )
        if interval_ms is None:
            if isinstance(path_or_agent, Heartbeat):
                interval_ms = max(1, path_or_agent.interval_ms // 2)
            else:
                interval_ms = DEFAULT_INTERVAL_MS
        if isinstance(interval_ms, bool) or not isinstance(interval_ms, int) or interval_ms < 1:
            raise ValueError(f"interval_ms must be an int >= 1, got {interval_ms!r}")
        if max_lag_ms is not None and (
            isinstance(max_lag_ms, bool) or not isinstance(max_lag_ms, int) or max_lag_ms < 0
        ):
            raise ValueError(f"max_lag_ms must be an int >= 0 or None, got {max_lag_ms!r}")
        self.interval_ms = interval_ms
        self.max_lag_ms = max_lag_ms
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._handle: Optional[asyncio.Handle] = None
        self._due = 0.0
        #: Lag of the last loop turn, in ms.
        self.last_lag_ms = 0
        #: Largest lag seen, in ms.
        self.max_lag_seen_ms = 0
        # With a Heartbeat: the lag being reported, and the heartbeat's sent
        # count when it was set (it is cleared once a later beat was sent).
        self._held_lag: Optional[int] = None
        self._held_at = 0
        self._counts = {"sent": 0, "dropped": 0, "failed": 0}

    # --- public -------------------------------------------------------------

    @property
    def agent(self) -> Optional[Union[Varta, Heartbeat]]:
        """The agent that beats (``None`` before a path watcher starts)."""
        return self._agent

    @property
    def watching(self) -> bool:
        return self._loop is not None

    def stats(self) -> dict[str, int]:
        """Beat outcomes: the callback's own (``sent``, ``dropped``,
        ``failed``) or, with a ``Heartbeat``, the heartbeat's ``stats()``."""
        if isinstance(self._agent, Heartbeat):
            return self._agent.stats()
        return dict(self._counts)

    def start(self) -> None:
        """Start watching the running loop (what ``async with`` does)."""
        loop = asyncio.get_running_loop()
        if self._loop is not None:
            raise RuntimeError("watch_loop is already watching a loop")
        if self._path is not None:
            self._agent = Varta.connect(self._path)
        self._loop = loop
        _WATCHERS[loop] = _WATCHERS.get(loop, 0) + 1
        _loops.WATCHED_LOOPS.add(loop)
        self._due = loop.time()
        self._handle = loop.call_soon(self._turn)

    def stop(self, *, final: bool = True) -> None:
        """Stop watching; close an agent the watcher opened (``final``: with
        the clean-exit terminal frame). Idempotent."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        left = _WATCHERS.get(loop, 1) - 1
        if left > 0:
            _WATCHERS[loop] = left
        else:
            _WATCHERS.pop(loop, None)
            _loops.WATCHED_LOOPS.discard(loop)
        if self._path is not None and self._agent is not None:
            self._agent.close(final=final)
        elif isinstance(self._agent, Heartbeat) and self._held_lag is not None:
            self._held_lag = None
            self._agent.set_status()

    async def run(self) -> None:
        """Watch until cancelled (the task form)."""
        async with self:
            await asyncio.get_running_loop().create_future()

    def __await__(self) -> Generator[Any, None, None]:
        return self.run().__await__()

    async def __aenter__(self) -> watch_loop:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        # Cancellation is how a task is stopped: a clean end, like no exception.
        self.stop(final=exc_type is None or issubclass(exc_type, asyncio.CancelledError))

    # --- the loop callback -------------------------------------------------

    def _turn(self) -> None:
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        lag = min(max(0, round((now - self._due) * 1000)), _U32_MAX)
        self.last_lag_ms = lag
        self.max_lag_seen_ms = max(self.max_lag_seen_ms, lag)
        lagging = self.max_lag_ms is not None and lag > self.max_lag_ms
        agent = self._agent
        if isinstance(agent, Heartbeat):
            self._report_to_heartbeat(agent, lag if lagging else None)
        elif agent is not None:
            outcome = agent.beat(Status.DEGRADED if lagging else Status.OK, lag)
            self._counts[outcome.kind] += 1
        self._due = now + self.interval_ms / 1000
        self._handle = loop.call_at(self._due, self._turn)

    def _report_to_heartbeat(self, hb: Heartbeat, lag: Optional[int]) -> None:
        """Progress, and DEGRADED with the largest lag until beats carried it."""
        hb.progress()
        sent = hb.stats()["sent"]
        if lag is not None:
            if self._held_lag is None or lag > self._held_lag:
                self._held_lag = lag
                hb.set_status(Status.DEGRADED, lag)
            self._held_at = sent
        elif self._held_lag is not None and sent >= self._held_at + 2:
            # Two beats after the last lagging turn: the first may have read
            # the status just before it was set.
            self._held_lag = None
            hb.set_status()
