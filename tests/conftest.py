"""Shared fixtures for the varta test suite."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

TESTS = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    """Upstream's conformance vectors, copied byte for byte from shared/conformance."""
    return json.loads((TESTS / "vlp-test-vectors.json").read_text())
