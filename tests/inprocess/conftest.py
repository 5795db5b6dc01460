"""Fixtures: in-process daemons, stopped (and their database closed) after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mnemomd.config import Config
from mnemomd.providers import PROVIDERS, ProviderRegistry
from tests.harness import InProcessDaemon


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., InProcessDaemon]]:
    """Start in-process daemons with settings on top of the harness's (environment names:
    ``make_daemon(MAX_REQUEST_BODY_BYTES="1000")``), and optionally a provider registry
    and a last change to the configuration (``InProcessDaemon``'s ``providers`` and
    ``configure``). A daemon that logged an error the test did not take
    (``daemon.take_errors()``) fails the test."""
    daemons: list[InProcessDaemon] = []

    def make(providers: ProviderRegistry = PROVIDERS,
             configure: Callable[[Config], Config] | None = None,
             **settings: str) -> InProcessDaemon:
        daemon = InProcessDaemon(tmp_path / f"d{len(daemons)}", settings, providers=providers,
                                 configure=configure)
        daemons.append(daemon)
        return daemon.start()

    yield make
    for daemon in daemons:
        daemon.stop()
    for daemon in daemons:
        assert daemon.take_errors() == [], "the daemon logged errors"


@pytest.fixture
def daemon(make_daemon: Callable[..., InProcessDaemon]) -> InProcessDaemon:
    return make_daemon()
