"""varta — process-liveness heartbeats (VLP v0.2) with a Rust core.

Agent side: :class:`Varta` sends a 32-byte frame per :meth:`Varta.beat`.
Observer side: :class:`Observer` tracks every pid and reports stalls; the
``varta-watch`` daemon (``python -m varta watch``) builds on it.

The public names match upstream Varta's pure-Python client 0.2.0, so code
written for it runs unchanged.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._types import (
    NONCE_TERMINAL,
    BeatError,
    BeatOrigin,
    BeatOutcome,
    DecodeError,
    DropReason,
    Status,
    StatusLike,
    classify_send_error,
)
from ._varta import (
    FRAME_LEN,
    Frame,
    crc32c,
    decode,
    encode,
)

# --- agent (issue: foundation) ---
# --- observer (issue: observer core) ---
# --- secure transport (issue: network transports) ---
# isort: split
from ._varta import Key

try:
    __version__ = _version("varta")
except _PackageNotFoundError:  # running from a source tree without metadata
    __version__ = "0.0.0+unknown"

__all__ = [
    "FRAME_LEN",
    "NONCE_TERMINAL",
    "BeatError",
    "BeatOrigin",
    "BeatOutcome",
    "DecodeError",
    "DropReason",
    "Frame",
    "Key",
    "Status",
    "StatusLike",
    "__version__",
    "classify_send_error",
    "crc32c",
    "decode",
    "encode",
]
