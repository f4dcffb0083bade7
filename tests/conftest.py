"""Shared fixtures for the varta test suite."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

TESTS = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    """Upstream's conformance vectors, copied byte for byte from shared/conformance."""
    return json.loads((TESTS / "vlp-test-vectors.json").read_text())


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A socket path in a fresh short directory (AF_UNIX paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="varta-")
    try:
        yield os.path.join(d, "obs.sock")
    finally:
        shutil.rmtree(d, ignore_errors=True)
