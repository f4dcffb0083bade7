"""Upstream-compatible module path: ``from varta.client import Varta`` keeps working."""

from __future__ import annotations

from ._types import BeatError, BeatOutcome, DropReason
from ._varta import Varta, classify_send_error

__all__ = ["BeatError", "BeatOutcome", "DropReason", "Varta", "classify_send_error"]
