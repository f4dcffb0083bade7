"""``GET /agents``: every tracked agent as JSON (``docs/live-view.md#agents-json``).

Built on the HTTP thread from ``Observer.agents()`` (one copy under the
core's lock; the AgentInfo objects are made after it, so ingest waits only
for the copy) and the recovery counts the poll loop publishes with its
snapshot. Agents are sorted worst first (:data:`RANK`); at most
:data:`MAX_AGENTS` are listed (``truncated`` says when more are tracked), and
``?limit=N`` asks for fewer. Each agent is one ``%``-formatted string — no
``dict`` per agent, no ``json.dumps`` of the whole list — so 10⁵ agents stay
cheap (``bench/metrics.py --sections agents``).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Optional, Protocol

from varta import BeatOrigin, Status, Verdict

#: Most agents one response lists (worst first); the rest are counted in
#: ``agents_total`` and ``truncated`` is true.
MAX_AGENTS = 100_000

#: Display status → rank, worst first (docs/live-view.md#status-order). A
#: stalled agent's status is its verdict.
RANK: Mapping[str, int] = {
    "hung": 0,
    "crashed": 1,
    "vanished": 2,
    "unknown": 3,
    "critical": 4,
    "degraded": 5,
    "ok": 6,
    "exited": 7,
}
STATUSES = tuple(RANK)

_BEAT_STATUS = {Status.OK: "ok", Status.DEGRADED: "degraded", Status.CRITICAL: "critical"}
_ORIGIN = {o: o.name.lower() for o in BeatOrigin}
_VERDICT = {v: str(v) for v in Verdict}

_ROW = (
    '{"pid":%d,"origin":"%s","peer":%s,"comm":%s,"cmdline":%s,"unit":%s,"container":%s,'
    '"status":"%s","verdict":%s,"since_last_beat_s":%.3f,"beats":%d,"stalls":%d,'
    '"recoveries":%d}'
)


class AgentLike(Protocol):
    """What is read of ``varta.AgentInfo``."""

    @property
    def pid(self) -> int: ...
    @property
    def status(self) -> Status: ...
    @property
    def origin(self) -> BeatOrigin: ...
    @property
    def beats(self) -> int: ...
    @property
    def stalls(self) -> int: ...
    @property
    def age_ns(self) -> int: ...
    @property
    def stalled(self) -> bool: ...
    @property
    def generation(self) -> Optional[int]: ...
    @property
    def verdict(self) -> Optional[Verdict]: ...


Identity = tuple[Optional[str], Optional[str], Optional[str], Optional[str], Optional[str]]


def identity(info: AgentLike) -> Identity:
    """``(peer, comm, cmdline, unit, container)`` of one agent.

    The agent-identity branch adds these five ``Optional[str]`` attributes to
    ``varta.AgentInfo``; until it lands they read as ``None`` (JSON ``null``).
    The one place to switch to plain attribute access.
    """
    return (
        getattr(info, "peer", None),
        getattr(info, "comm", None),
        getattr(info, "cmdline", None),
        getattr(info, "unit", None),
        getattr(info, "container", None),
    )


def display_status(info: AgentLike) -> str:
    """``hung``/``crashed``/``vanished``/``unknown``/``exited`` while stalled
    (the verdict), else the last beat's ``ok``/``degraded``/``critical``."""
    if info.stalled:
        v = info.verdict
        return "unknown" if v is None else _VERDICT[v]
    return _BEAT_STATUS.get(info.status, "critical")


def _js(value: Optional[str]) -> str:
    return "null" if value is None else json.dumps(value)


@dataclass(frozen=True)
class Query:
    """``/agents`` query parameters (docs/live-view.md#agents-json)."""

    limit: Optional[int] = None
    statuses: Optional[frozenset[str]] = None
    unit: Optional[str] = None


#: pid → (generation at the last recovery, recoveries started) — from
#: ``RecoveryRunner.recoveries_by_pid``.
Recoveries = Mapping[int, tuple[Optional[int], int]]


def render_agents(
    agents: Iterable[AgentLike],
    recoveries: Recoveries,
    *,
    threshold_ms: int,
    version: str,
    hostname: Optional[str] = None,
    query: Optional[Query] = None,
    now_unix: Optional[float] = None,
) -> bytes:
    """The docs/live-view.md#agents-json body."""
    keyed = []
    by_status = dict.fromkeys(STATUSES, 0)
    total = 0
    query = query or Query()
    statuses, unit = query.statuses, query.unit
    for info in agents:
        st = display_status(info)
        by_status[st] += 1
        total += 1
        if statuses is not None and st not in statuses:
            continue
        if unit is not None and identity(info)[3] != unit:
            continue
        keyed.append((RANK[st], -info.age_ns, info.pid, st, info))
    matched = len(keyed)
    limit = query.limit
    cap = MAX_AGENTS if limit is None else min(limit, MAX_AGENTS)
    keyed.sort(key=lambda k: k[:3])
    rows = []
    get = recoveries.get
    for _, _, pid, st, info in keyed[:cap]:
        peer, comm, cmdline, unit, container = identity(info)
        rec = get(pid)
        n_rec = 0
        if rec is not None and (
            rec[0] is None or info.generation is None or rec[0] == info.generation
        ):
            n_rec = rec[1]
        v = info.verdict
        rows.append(
            _ROW
            % (
                pid,
                _ORIGIN[info.origin],
                _js(peer),
                _js(comm),
                _js(cmdline),
                _js(unit),
                _js(container),
                st,
                "null" if v is None else '"' + _VERDICT[v] + '"',
                info.age_ns / 1e9,
                info.beats,
                info.stalls,
                n_rec,
            )
        )
    observer = {
        "version": version,
        "hostname": socket.gethostname() if hostname is None else hostname,
        "threshold_ms": threshold_ms,
        "generated_unix": round(time.time() if now_unix is None else now_unix, 3),
        "agents_total": total,
        "agents_matched": matched,
        "agents_listed": len(rows),
        "truncated": len(rows) < matched,
        "by_status": by_status,
    }
    head = '{"observer":' + json.dumps(observer, separators=(",", ":")) + ',"agents":['
    return (head + ",\n".join(rows) + "]}\n").encode()


def parse_query(query: str) -> Query:
    """``limit=N``, ``status=a,b``, ``unit=U``; raises ValueError on anything else."""
    limit: Optional[int] = None
    statuses: Optional[frozenset[str]] = None
    unit: Optional[str] = None
    if not query:
        return Query()
    for name, value in urllib.parse.parse_qsl(
        query, keep_blank_values=True, strict_parsing=True, max_num_fields=8
    ):
        if name == "limit":
            if not (value.isascii() and value.isdigit()) or len(value) > 9:
                raise ValueError("limit must be a non-negative integer")
            limit = int(value)
        elif name == "status":
            wanted = frozenset(v for v in value.split(",") if v)
            if not wanted <= RANK.keys():
                raise ValueError(f"status must be among {', '.join(STATUSES)}")
            statuses = wanted
        elif name == "unit":
            unit = value
        else:
            raise ValueError(f"unknown parameter {name!r}")
    return Query(limit, statuses, unit)
