"""Custom-transport contract for :class:`varta.Varta` (upstream ``varta._transport``).

``Varta(transport)`` drives any object with this shape; the built-in
transports (``Varta.connect``, ``Varta.connect_udp``) live in the native core
and are not Python classes. Subclassing :class:`BeatTransport` is optional —
it documents the contract and keeps upstream code importing it working.
"""

from __future__ import annotations

import abc
from typing import Tuple

__all__ = ["Address", "BeatTransport"]

Address = Tuple[str, int]


class BeatTransport(abc.ABC):
    """What ``Varta(transport)`` calls.

    * ``send(buf)`` gets the 32-byte frame and returns the number of bytes
      sent; anything other than ``expected_send_len`` (default 32) is a
      ``Failed(WriteZero)`` beat. It must not block; raise ``OSError`` (for
      instance ``BlockingIOError``) on failure — the errno is classified with
      :func:`varta.classify_send_error`. Any other exception propagates out of
      ``beat()``.
    * ``reconnect()`` rebuilds the channel, leaving the old one usable if it
      raises. ``Varta`` also calls it after a fork, before the child's first
      frame.
    * ``close()`` is optional.

    Custom transports forgo the core's zero-allocation guarantee.
    """

    expected_send_len: int = 32

    @abc.abstractmethod
    def send(self, buf: bytes) -> int:
        """Send one frame; return the number of bytes sent."""

    @abc.abstractmethod
    def reconnect(self) -> None:
        """Rebuild the channel without destroying the current one on failure."""

    def close(self) -> None:  # noqa: B027 - optional hook, default no-op
        """Release the channel (optional)."""
