"""Fresh, throw-away databases on both engines, for every test that needs a database.

A test class is written once as a mixin of :class:`MigratedDatabase` (or
:class:`AgentDatabase`) and run on each engine by two subclasses that set ``engine``:
``class SQLiteXTests(XTests, unittest.TestCase): engine = "sqlite"`` and the same with
``"postgresql"``. PostgreSQL tests use the server at ``MNEMOMD_TEST_POSTGRES_URL``
(default: the local server with trust auth) and create one database per test, dropped
afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock

from mnemomd.agents.store import AgentStore
from mnemomd.storage.database import Cursor, Database
from mnemomd.storage.migrations import migrate

POSTGRES_URL = os.environ.get("MNEMOMD_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")
ENGINES = ("sqlite", "postgresql")


def _admin_connection():
    connection = psycopg2.connect(POSTGRES_URL, connect_timeout=5)
    connection.autocommit = True
    return connection


def create_postgres_database() -> str:
    """A new empty database; returns its URL."""
    name = f"mnemomd_test_{uuid.uuid4().hex[:12]}"
    connection = _admin_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()
    parts = urlsplit(POSTGRES_URL)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def drop_postgres_database(url: str) -> None:
    name = urlsplit(url).path.strip("/")
    connection = _admin_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        connection.close()


def new_database_url(engine: str, tmp: Path) -> str:
    if engine == "sqlite":
        return f"sqlite://{tmp.resolve()}/mnemomd.db"
    return create_postgres_database()


def discard_database_url(url: str) -> None:
    if url.startswith("postgresql"):
        drop_postgres_database(url)


class MigratedDatabase:
    """Trial mixin: a fresh, migrated database of ``engine`` per test, on either engine.

    ``open_database()`` gives further pools on the same database (replicas, in tests).
    """

    engine = ""

    @inlineCallbacks
    def setUp(self):  # noqa: ANN201
        self.tmp = Path(tempfile.mkdtemp())
        self.url = new_database_url(self.engine, self.tmp)
        self.databases: list[Database] = []
        self.db = self.open_database()
        yield migrate(self.db, 1)

    def open_database(self) -> Database:
        db = Database(reactor, self.url)
        db.start()
        self.databases.append(db)
        return db

    def tearDown(self) -> None:
        for db in self.databases:
            db.close()
        discard_database_url(self.url)
        shutil.rmtree(self.tmp, ignore_errors=True)


def every_row(db: Database) -> Deferred[dict[str, list[tuple[Any, ...]]]]:
    """Every row of every table of the schema, by table: what a leak check must scan."""

    def read(cursor: Cursor) -> dict[str, list[tuple[Any, ...]]]:
        if db.engine == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                           "AND name NOT LIKE 'sqlite_%'")
        else:
            cursor.execute("SELECT table_name FROM information_schema.tables "
                           "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")
        tables = sorted(row[0] for row in cursor.fetchall())
        return {table: cursor.execute(f'SELECT * FROM "{table}"').fetchall()
                for table in tables}

    return db.run_interaction("every_row", read)


#: The time of :class:`AgentDatabase`'s clock and agent, in epoch milliseconds.
NOW = 1_700_000_000_000


class AgentDatabase(MigratedDatabase):
    """:class:`MigratedDatabase` with one agent (``agent_id``, its ``card``), its
    ``agents`` store and a ``clock`` at :data:`NOW`: what most store and job tests start
    from. ``agent_mode`` is the agent's enforcement mode."""

    agent_mode = "observe"

    @inlineCallbacks
    def setUp(self):  # noqa: ANN201
        yield super().setUp()
        self.clock = Clock()
        self.clock.advance(NOW / 1000)
        self.agents = AgentStore(self.db)
        agent = yield self.agents.get_or_create("abcdabcdabcdabcd", None, self.agent_mode, NOW)
        self.agent_id = agent.agent_id
        self.card = yield self.agents.card(self.agent_id)
