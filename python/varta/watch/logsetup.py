"""Logging for ``varta-watch`` (``docs/observer.md#logging``).

Lines go to stderr through the stdlib :mod:`logging` module: text
``varta-watch: <message>`` by default, or one JSON object per line with
``--log-format json`` (``ts_ns``, ``level``, ``msg`` and, when the record
carries them, ``pid``, ``child_pid``, ``error``).

Repeated error kinds go through :class:`RateLimiter`: at most one line per kind
per second; the next line that gets through says ``(suppressed N)``, and the six
kinds of ``varta_log_suppressed_total{kind}`` are counted.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Callable, Optional, TextIO

LOGGER_NAME = "varta.watch"
PROG = "varta-watch"

#: ``varta_log_suppressed_total{kind}`` label values (docs/observer.md#metric-families).
SUPPRESSED_KINDS: tuple[str, ...] = (
    "file_export_io",
    "audit_io",
    "prom_serve",
    "heartbeat_io",
    "audit_ring_warn",
    "audit_ring_critical",
)
COOLDOWN_S = 1.0
#: Record attributes copied into JSON lines (pass them with ``extra=``).
FIELDS = ("pid", "child_pid", "error", "peer", "comm", "unit", "container", "cmdline")
_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}

log = logging.getLogger(LOGGER_NAME)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.getMessage()}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts_ns": int(record.created * 1_000_000_000),
            "level": _LEVELS.get(record.levelno, record.levelname.lower()),
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value if isinstance(value, (int, float)) else str(value)
        import json  # only --log-format json needs it (~1.3 MB resident)

        return json.dumps(out, separators=(",", ":"))


#: ``--log-level`` / ``$VARTA_LOG_LEVEL`` names → :mod:`logging` levels.
LEVEL_NAMES = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def setup(
    fmt: str = "text", stream: Optional[TextIO] = None, level: str = "info"
) -> logging.Logger:
    """Route :data:`LOGGER_NAME` to *stream* (stderr) in *fmt* (``text``/``json``),
    showing records at *level* (``debug``/``info``/``warn``/``error``) and above."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for old in list(log.handlers):
        log.removeHandler(old)
    log.addHandler(handler)
    log.setLevel(LEVEL_NAMES[level])
    log.propagate = False
    return log


class RateLimiter:
    """One line per kind per :data:`COOLDOWN_S`; thread-safe (the metrics thread logs too)."""

    def __init__(
        self, cooldown_s: float = COOLDOWN_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._cooldown = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._pending: dict[str, int] = {}
        self._suppressed: dict[str, int] = dict.fromkeys(SUPPRESSED_KINDS, 0)

    def log(
        self,
        kind: str,
        level: int,
        msg: str,
        *,
        logger: Optional[logging.Logger] = None,
        **fields: object,
    ) -> bool:
        """Emit *msg* unless *kind* logged less than a cooldown ago; True if emitted."""
        with self._lock:
            now = self._clock()
            last = self._last.get(kind)
            if last is not None and now - last < self._cooldown:
                self._pending[kind] = self._pending.get(kind, 0) + 1
                if kind in self._suppressed:
                    self._suppressed[kind] += 1
                return False
            self._last[kind] = now
            held = self._pending.pop(kind, 0)
        if held:
            msg = f"{msg} (suppressed {held})"
        (logger or log).log(level, msg, extra={k: v for k, v in fields.items() if v is not None})
        return True

    def suppressed(self) -> dict[str, int]:
        """``varta_log_suppressed_total`` values, every kind present."""
        with self._lock:
            return dict(self._suppressed)
