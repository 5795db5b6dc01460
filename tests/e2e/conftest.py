"""Fixtures for end-to-end tests: a fake provider upstream and daemons pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.e2e.api import CREDENTIALS, ApiDaemon
from tests.e2e.daemon import Daemon, start_daemon
from tests.fakes.process import clear_requests, run_fake_analysis, run_fake_upstream
from tests.fakes.recorder import Recorder
from tests.storage.engines import create_postgres_database, drop_postgres_database


@pytest.fixture(scope="session")
def analysis_url() -> Iterator[str]:
    """A fake analysis model shared by the session; tests script it as they need."""
    with run_fake_analysis() as url:
        yield url


@pytest.fixture(scope="session")
def upstream_url() -> Iterator[str]:
    with run_fake_upstream() as url:
        yield url


@pytest.fixture
def upstream(upstream_url: str) -> str:
    """The fake upstream with its request log cleared for this test."""
    clear_requests(upstream_url)
    return upstream_url


def provider_env(upstream: str) -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": upstream, "OPENAI_BASE_URL": upstream,
            "GEMINI_BASE_URL": upstream}


@pytest.fixture
def start(tmp_path: Path, upstream_url: str) -> Iterator[Callable[..., Daemon]]:
    """Start daemons (pointed at the fake upstream unless told otherwise); all are
    stopped at the end of the test."""
    daemons: list[Daemon] = []

    def starter(env: dict[str, str] | None = None, **kwargs: object) -> Daemon:
        merged = provider_env(upstream_url) | (env or {})
        daemon = start_daemon(tmp_path / f"d{len(daemons)}", merged, **kwargs)
        daemons.append(daemon)
        return daemon

    yield starter
    for daemon in daemons:
        daemon.stop(10)


@pytest.fixture
def daemon(start: Callable[..., Daemon]) -> Daemon:
    return start()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


def pg_rows(url: str, sql: str) -> list[tuple]:
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def api_daemon(tmp_path_factory: pytest.TempPathFactory,
               upstream_url: str) -> Iterator[ApiDaemon]:
    """One daemon per test module with every API credential configured (SQLite,
    in-memory KV, analysis off) and a local webhook receiver, shared by the module's
    tests."""
    tmp = tmp_path_factory.mktemp("api")
    daemon = start_daemon(tmp, provider_env(upstream_url) | CREDENTIALS
                          | {"AIP_ENABLED": "false"})
    receiver = Recorder()
    yield ApiDaemon(daemon, tmp / "data", receiver)
    daemon.stop(10)
    receiver.close()


@pytest.fixture
def recorders() -> Iterator[Callable[[], Recorder]]:
    """Make local receivers (webhooks, heartbeats, license checks, tripwires); all are
    closed at the end of the test."""
    made: list[Recorder] = []

    def make() -> Recorder:
        made.append(Recorder())
        return made[-1]

    yield make
    for recorder in made:
        recorder.close()


@pytest.fixture
def receiver(recorders: Callable[[], Recorder]) -> Recorder:
    """One local receiver for the test."""
    return recorders()
