"""``GET /agents``: every tracked agent as JSON (``docs/live-view.md#agents-json``).

Built on the HTTP thread from ``Observer.agents()`` (one copy under the
core's lock; the AgentInfo objects are made after it, so ingest waits only
for the copy) and the recovery counts the poll loop publishes with its
snapshot. Agents are sorted worst first (:data:`RANK`); at most
:data:`MAX_AGENTS` are listed (``truncated`` says when more are tracked), and
``?limit=N`` asks for fewer. Each agent is one f-string — no
``dict`` per agent, no ``json.dumps`` of the whole list — so 10⁵ agents stay
cheap (``bench/metrics.py --sections agents``).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Mapping

from varta import BeatOrigin, Status, Verdict

from .._record import record

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Optional, Protocol

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
#: The ``verdict`` JSON per status: the statuses of a stalled agent are verdicts.
_VERDICT_JSON = {st: ("null" if st in ("critical", "degraded", "ok") else f'"{st}"') for st in RANK}

# Keyed by the members' id(): they are singletons, and hashing an Enum member
# is a Python-level call (this runs once per agent).
_BEAT_STATUS = {
    id(Status.OK): "ok",
    id(Status.DEGRADED): "degraded",
    id(Status.CRITICAL): "critical",
}
_ORIGIN = {id(o): o.name.lower() for o in BeatOrigin}
_VERDICT = {id(v): str(v) for v in Verdict}

_IDENTITY_FIELDS = ("peer", "comm", "cmdline", "unit", "container")


if TYPE_CHECKING:

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
        @property
        def peer(self) -> Optional[str]: ...
        @property
        def comm(self) -> Optional[str]: ...
        @property
        def cmdline(self) -> Optional[str]: ...
        @property
        def unit(self) -> Optional[str]: ...
        @property
        def container(self) -> Optional[str]: ...

    Identity = tuple[Optional[str], Optional[str], Optional[str], Optional[str], Optional[str]]


_NO_IDENTITY: Identity = (None, None, None, None, None)
_NO_IDENTITY_JSON = ",".join(f'"{f}":null' for f in _IDENTITY_FIELDS)


def identity(info: AgentLike) -> Identity:
    """``(peer, comm, cmdline, unit, container)`` of one agent
    (docs/observer.md#agent-identity); the shared all-``None`` tuple when
    nothing is known, so the JSON for it is written once."""
    ident = (info.peer, info.comm, info.cmdline, info.unit, info.container)
    return _NO_IDENTITY if ident == _NO_IDENTITY else ident


def _identity_json(ident: Identity, dumps: Callable[[str], str]) -> str:
    return ",".join(
        f'"{f}":' + ("null" if v is None else dumps(v)) for f, v in zip(_IDENTITY_FIELDS, ident)
    )


def display_status(info: AgentLike) -> str:
    """``hung``/``crashed``/``vanished``/``unknown``/``exited`` while stalled
    (the verdict), else the last beat's ``ok``/``degraded``/``critical``."""
    if info.stalled:
        v = info.verdict
        return "unknown" if v is None else _VERDICT[id(v)]
    return _BEAT_STATUS.get(id(info.status), "critical")


@record(frozen=True)
class Query:
    """``/agents`` query parameters (docs/live-view.md#agents-json)."""

    limit: Optional[int] = None
    statuses: Optional[frozenset[str]] = None
    unit: Optional[str] = None


if TYPE_CHECKING:
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
    import json  # here, not at module import: only a daemon asked for /agents pays (~1 MB)

    dumps = json.dumps
    # One list per status (-age_ns, pid, info), each sorted on its own: the
    # statuses are the first sort key.
    buckets: dict[str, list[tuple[int, int, AgentLike]]] = {st: [] for st in STATUSES}
    by_status = dict.fromkeys(STATUSES, 0)
    total = 0
    query = query or Query()
    statuses, unit = query.statuses, query.unit
    status_of, verdict_of = _BEAT_STATUS.get, _VERDICT
    for info in agents:
        # display_status(), inlined: this loop runs once per tracked agent.
        if info.stalled:
            v = info.verdict
            st = "unknown" if v is None else verdict_of[id(v)]
        else:
            st = status_of(id(info.status), "critical")
        by_status[st] += 1
        total += 1
        if statuses is not None and st not in statuses:
            continue
        if unit is not None and identity(info)[3] != unit:
            continue
        buckets[st].append((-info.age_ns, info.pid, info))
    limit = query.limit
    left = MAX_AGENTS if limit is None else min(limit, MAX_AGENTS)
    matched = 0
    listed: list[tuple[str, list[tuple[int, int, AgentLike]]]] = []
    for st in STATUSES:  # worst first
        bucket = buckets[st]
        matched += len(bucket)
        if left <= 0 or not bucket:
            continue
        # Plain tuple order (C comparisons, no key objects): pids are unique,
        # so the info objects themselves are never compared.
        bucket.sort()
        listed.append((st, bucket[:left]))
        left -= len(bucket)
    rows: list[str] = []
    append = rows.append
    get = recoveries.get
    origin_of = _ORIGIN
    no_identity, no_identity_json = _NO_IDENTITY, _NO_IDENTITY_JSON
    for st, bucket in listed:
        vj = _VERDICT_JSON[st]
        for neg_age, pid, info in bucket:
            rec = get(pid)
            n_rec = 0
            if rec is not None:
                gen = info.generation
                if rec[0] is None or gen is None or rec[0] == gen:
                    n_rec = rec[1]
            ident = identity(info)
            ij = no_identity_json if ident is no_identity else _identity_json(ident, dumps)
            # One f-string per agent (faster than %-formatting or json.dumps).
            append(
                f'{{"pid":{pid},"origin":"{origin_of[id(info.origin)]}",{ij},"status":"{st}",'
                f'"verdict":{vj},"since_last_beat_s":{-neg_age / 1e9:.3f},"beats":{info.beats},'
                f'"stalls":{info.stalls},"recoveries":{n_rec}}}'
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
    import urllib.parse  # only when a query string is given

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
