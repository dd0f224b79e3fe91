"""Fixtures for the tracks tests."""

from __future__ import annotations

import os

import pytest

TIMEOUT = 5.0 * float(os.environ.get("TEST_TIMEOUT_FACTOR", "1"))


@pytest.fixture
def timeout() -> float:
    """Seconds for `anyio.fail_after` around every wait, scaled by TEST_TIMEOUT_FACTOR."""
    return TIMEOUT
