"""Startup of the ``--prom-addr`` HTTP server (``docs/observer.md#http-endpoint``):
``/metrics`` rendered from the loop's snapshots, and the live view's routes
(``docs/live-view.md``), built and bound before the loop starts."""

from __future__ import annotations

from varta import _varta

from .agents import parse_query, render_agents
from .config import WatchConfig
from .live import live_routes
from .logsetup import RateLimiter
from .metrics import ServeStats, SnapshotBox, VartaCollector, render
from .metrics_server import MetricsServer
from .startup import StartupError, _reason, read_token

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Callable, Optional

    from .loop import ObserverLike


def open_metrics_server(
    cfg: WatchConfig,
    obs: ObserverLike,
    box: SnapshotBox,
    serve_stats: ServeStats,
    logs: RateLimiter,
    on_serve: Callable[[Optional[float]], None],
) -> Optional[MetricsServer]:
    """The server for ``--prom-addr`` (bound, not started), or ``None``
    without the flag; a failure to listen is a :class:`StartupError`."""
    if cfg.prom_addr is None:
        return None
    token = read_token(cfg.prom_token_file) if cfg.prom_token_file else None
    collector = VartaCollector(lambda: box.latest, serve_stats, logs, cfg.prom_agent_rows)
    wait_s = cfg.read_timeout_ms / 1000.0 + 0.25

    def body() -> bytes:
        box.request(wait_s)
        return render(collector)

    def agents_body(query: str) -> bytes:
        # On the HTTP thread (docs/live-view.md#agents-json).
        q = parse_query(query)
        snap = box.request(wait_s)
        return render_agents(
            obs.agents(),
            snap.recoveries,
            threshold_ms=cfg.threshold_ms,
            version=_varta.__version__,
            query=q,
        )

    try:
        return MetricsServer(
            cfg.prom_addr.host,
            cfg.prom_addr.port,
            body,
            serve_stats,
            token=token,
            rate_per_sec=cfg.prom_rate_limit_per_sec,
            rate_burst=cfg.prom_rate_limit_burst,
            scrape_budget_ms=cfg.scrape_budget_ms,
            logs=logs,
            on_serve=on_serve,
            routes=live_routes(agents_body),
        )
    except OSError as exc:
        raise StartupError(
            f"cannot listen on --prom-addr {cfg.prom_addr}: {_reason(exc)}"
        ) from None
