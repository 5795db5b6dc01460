"""Fixtures every test area may use (the areas' own conftest files add theirs)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.logger import LogEvent

from tests.support import capturing_logs


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    """Every log event emitted while the test runs."""
    with capturing_logs() as logs:
        yield logs.events
