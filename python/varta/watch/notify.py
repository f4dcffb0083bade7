"""``sd_notify`` without libsystemd (``docs/observer.md#systemd-and-watchdogs``).

Messages go to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract
socket) as one datagram each. Every failure is silent: the daemon runs the
same with or without systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Optional

READY = "READY=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"


def notify_address(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The datagram address for ``$NOTIFY_SOCKET`` (``None`` when unset or unusable)."""
    env = os.environ if environ is None else environ
    path = env.get("NOTIFY_SOCKET", "")
    if path.startswith("@") and len(path) > 1:
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    return None


def sd_notify(state: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Send *state* (e.g. ``"READY=1"``); True when a datagram was sent."""
    addr = notify_address(environ)
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode("utf-8"), addr)
    except OSError:
        return False
    return True
