"""Helpers shared by the observer test modules (imported like watch_e2e)."""

from __future__ import annotations

import time
from typing import Any, Callable

import varta


def poll_until(
    obs: varta.Observer, pred: Callable[[Any], bool], *, within: float = 5.0
) -> list[Any]:
    """Poll until an event satisfies ``pred``; return every event seen."""
    end = time.monotonic() + within
    seen: list[Any] = []
    while time.monotonic() < end:
        batch = list(obs.poll(timeout=0.2))
        seen.extend(batch)
        if any(pred(e) for e in batch):
            return seen
    raise AssertionError(f"no matching event within {within}s; saw {seen!r}")


def drain_for(obs: varta.Observer, seconds: float) -> list[Any]:
    """Every event of the next ``seconds`` (bounded poll timeouts).

    For asserting that something does *not* happen over a window; to wait for
    an event use :func:`poll_until`.
    """
    end = time.monotonic() + seconds
    seen: list[Any] = []
    while (left := end - time.monotonic()) > 0:
        seen.extend(obs.poll(timeout=left))
    return seen
