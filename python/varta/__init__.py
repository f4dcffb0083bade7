"""varta — process-liveness heartbeats (VLP v0.2) with a Rust core.

Agent side: :class:`Varta` sends a 32-byte frame per :meth:`Varta.beat`;
:class:`Heartbeat` beats from a thread of its own while a loop calls
:meth:`Heartbeat.progress` (and :mod:`varta.aio` watches an asyncio loop).
Observer side: :class:`Observer` tracks every pid and reports stalls; the
``varta-watch`` daemon (``python -m varta watch``) builds on it.

The public names match upstream Varta's pure-Python client 0.2.0, so code
written for it runs unchanged.
"""

from __future__ import annotations

from ._types import (
    NONCE_TERMINAL,
    PAYLOAD_CLEAN_EXIT,
    BeatError,
    BeatOrigin,
    BeatOutcome,
    DecodeError,
    DropReason,
    Status,
    Verdict,
    signal_payload,
    terminal_cause,
)

# --- agent (issue: foundation) ---
from ._varta import (
    FRAME_LEN,
    Frame,
    Heartbeat,
    Varta,
    classify_send_error,
    crc32c,
    decode,
    encode,
)

# --- observer (issue: observer core) ---
# Linux only: the native observer is built on Linux socket and process
# interfaces; elsewhere the extension has the agent side alone.
# isort: split
import sys as _sys

if _sys.platform == "linux":
    from ._varta import (
        AgentInfo,
        AuthFailure,
        Beat,
        Blind,
        CtrlTruncated,
        Decode,
        Io,
        NamespaceConflict,
        Observer,
        OriginConflict,
        PidRows,
        Stall,
    )

# --- secure transport (issue: network transports); one version source: Cargo.toml
# (importlib.metadata would cost ~0.3 s per import) ---
# isort: split
from ._varta import Key, __version__

__all__ = [
    "FRAME_LEN",
    "NONCE_TERMINAL",
    "PAYLOAD_CLEAN_EXIT",
    "BeatError",
    "BeatOrigin",
    "BeatOutcome",
    "DecodeError",
    "DropReason",
    "Frame",
    "Heartbeat",
    "Key",
    "Status",
    "StatusLike",
    "Varta",
    "__version__",
    "Verdict",
    "classify_send_error",
    "signal_payload",
    "terminal_cause",
    "crc32c",
    "decode",
    "encode",
]
if _sys.platform == "linux":
    __all__ += [
        "AgentInfo",
        "AuthFailure",
        "Beat",
        "Blind",
        "CtrlTruncated",
        "Decode",
        "Io",
        "NamespaceConflict",
        "Observer",
        "OriginConflict",
        "PidRows",
        "Stall",
    ]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from . import panic as panic
    from ._types import StatusLike


def __getattr__(name: str) -> object:
    # Loaded on first use, so ``import varta`` stays small for every agent
    # and for the daemon (docs/operations.md#resources): ``varta.panic`` and
    # the ``varta.StatusLike`` alias (which needs typing).
    if name == "panic":
        import importlib  # not ``from . import panic``: that asks this hook first

        return importlib.import_module(".panic", __name__)  # binds varta.panic
    if name == "StatusLike":
        from . import _types

        alias = globals()[name] = _types.StatusLike
        return alias
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
