"""The database: SQLite embedded by default, PostgreSQL for shared deployments.

Both run through ``twisted.enterprise.adbapi`` so queries execute on a thread pool and the
reactor never blocks. Queries are written once with ``?`` placeholders and run unchanged
on both engines; every transaction is named (``desc``) so logs and errors say which one
failed. SQLite gets exactly one connection: it has one writer anyway, and one connection
means no "database is locked" surprises inside the daemon.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from twisted.enterprise import adbapi
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mnemomd.ops.dependency import DependencyState

log = Logger()
T = TypeVar("T")

#: How many times a transaction that lost a serialization race is retried.
SERIALIZATION_RETRIES = 3


def outage_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the database cannot be reached or written right now"
    (as opposed to a bug or a constraint): what the database's ``DependencyState``
    counts as an outage."""
    errors: list[type[BaseException]] = [
        sqlite3.OperationalError, adbapi.ConnectionLost, ConnectionError,
        net_error.ConnectError, net_error.ConnectionLost]
    try:
        import psycopg2
    except ImportError:  # pragma: no cover - psycopg2 is a dependency
        pass
    else:
        errors += [psycopg2.OperationalError, psycopg2.InterfaceError]
    return tuple(errors)


class QuietConnection(adbapi.Connection):
    """adbapi's reconnecting connection, without a traceback per transaction when the
    server has gone: a rollback on a dead connection is the outage itself (counted and
    logged once by the database's ``DependencyState``), not a fresh error."""

    def rollback(self) -> None:
        if not self._pool.reconnect:
            self._connection.rollback()
            return
        try:
            self._connection.rollback()
            cursor = self._connection.cursor()
            cursor.execute(self._pool.good_sql)
            cursor.close()
            self._connection.commit()
            return
        except outage_errors() as e:
            log.debug("Rollback failed on a lost connection: {reason}", reason=str(e))
        except BaseException:
            log.failure("Rollback failed")
        self._pool.disconnect(self._connection)
        raise adbapi.ConnectionLost()


class QuietConnectionPool(adbapi.ConnectionPool):
    """adbapi's pool with ``QuietConnection``s, whose failed rollback after a lost
    connection is not logged again with a traceback (the transaction's own error is
    what the caller gets, and the outage is the ``DependencyState``'s to log)."""

    connectionFactory = QuietConnection  # noqa: N815 (adbapi's name)

    def _runInteraction(self, interaction: Callable[..., Any], *args: Any,  # noqa: N802
                        **kw: Any) -> Any:
        conn = self.connectionFactory(self)
        trans = self.transactionFactory(self, conn)
        try:
            result = interaction(trans, *args, **kw)
            trans.close()
            conn.commit()
            return result
        except BaseException:
            try:
                conn.rollback()
            except (*outage_errors(), adbapi.ConnectionLost) as e:
                log.debug("Rollback failed on a lost connection: {reason}",
                          reason=str(e) or type(e).__name__)
            except BaseException:
                log.failure("Rollback failed")
            raise


class DatabaseURLError(ValueError):
    """A DATABASE_URL this daemon cannot use."""


@dataclass(frozen=True)
class DatabaseTarget:
    engine: str  # "sqlite" | "postgresql"
    #: SQLite file path, or the libpq connection URI for PostgreSQL.
    location: str


def parse_database_url(url: str) -> DatabaseTarget:
    """``sqlite:///absolute/path.db`` or ``postgresql://user@host:port/db?…``."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = url[len("sqlite://"):]
        if parts.netloc or not path.startswith("/") or path == "/":
            raise DatabaseURLError("sqlite URLs name an absolute file: sqlite:///var/lib/x.db")
        if path.endswith(":memory:"):
            raise DatabaseURLError("an in-memory SQLite database would lose all data")
        return DatabaseTarget("sqlite", path)
    if parts.scheme in ("postgresql", "postgres"):
        if not parts.path.strip("/") and "dbname=" not in parts.query:
            raise DatabaseURLError("postgresql URLs name a database: postgresql://host/dbname")
        return DatabaseTarget("postgresql", url)
    raise DatabaseURLError("must start with sqlite:/// or postgresql://")


def mask_database_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":****@", 1)
    return url


class Cursor:
    """A DB-API cursor that accepts ``?`` placeholders on every engine."""

    def __init__(self, raw: Any, engine: str) -> None:
        self._raw = raw
        self.engine = engine

    def _sql(self, sql: str) -> str:
        if self.engine == "postgresql":
            return sql.replace("%", "%%").replace("?", "%s")
        return sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        self._raw.execute(self._sql(sql), tuple(params))
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Cursor:
        self._raw.executemany(self._sql(sql), [tuple(r) for r in rows])
        return self

    def execute_script(self, sql: str) -> None:
        """Run several statements (migrations); no parameters."""
        if self.engine == "postgresql":
            self._raw.execute(sql)
            return
        for statement in split_statements(sql):
            self._raw.execute(statement)

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._raw.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._raw.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._raw.rowcount)


def split_statements(sql: str) -> list[str]:
    """Statements of a migration file: ``;`` at the end of a line ends one.

    Migrations are plain DDL written one statement per ``;``-terminated block, which is
    all this needs to handle (SQLite's driver runs one statement per call).
    """
    statements, current = [], []
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        current.append(line)
        if stripped.endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";"))
            current = []
    if current:
        statements.append("\n".join(current).strip().rstrip(";"))
    return statements


class TransactionThreads(Protocol):
    """Where transactions run: adbapi's own thread pool unless one is given.

    The part of ``twisted.python.threadpool.ThreadPool`` that adbapi uses; an in-process
    test runs transactions on the calling thread through it, the SQL unchanged.
    """

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], None],  # noqa: N802,N803
                                 func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        ...


def _sqlite_connection_setup(connection: Any) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=5000")
    # Deleted rows (the trace outbox's excerpts) are overwritten, not left in free pages.
    connection.execute("PRAGMA secure_delete=ON")


def _postgres_connection_setup(connection: Any) -> None:
    # Fail a statement rather than hold a pool thread forever on a stuck server.
    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = '30s'")
    connection.commit()


def _prepare_sqlite_file(path: str) -> None:
    """The data directory and file exist and are private to the daemon's user."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


class Database:
    """Named transactions over a connection pool, on either engine."""

    def __init__(self, reactor: Any, url: str, max_connections: int = 10,
                 threads: TransactionThreads | None = None,
                 state: DependencyState | None = None) -> None:
        """``state``, when given, hears of every transaction's success or failure, so
        an outage is noticed, logged once and timed (``ops.dependency``)."""
        self.state = state
        self.target = parse_database_url(url)
        self.engine = self.target.engine
        self.url = url
        self._reactor: IReactorTime = reactor
        if self.engine == "sqlite":
            _prepare_sqlite_file(self.target.location)
            self.pool = QuietConnectionPool(
                "sqlite3", self.target.location, check_same_thread=False, timeout=5.0,
                cp_min=1, cp_max=1, cp_noisy=False, cp_openfun=_sqlite_connection_setup,
                cp_reactor=reactor)
        else:
            self.pool = QuietConnectionPool(
                "psycopg2", self.target.location, connect_timeout=5,
                application_name="mnemomd", cp_min=1, cp_max=max_connections,
                cp_noisy=False, cp_reconnect=True, cp_openfun=_postgres_connection_setup,
                cp_reactor=reactor)
        if threads is not None:
            # Before start(): the pool's own threads are then never created.
            self.pool.threadpool = threads

    @property
    def display_url(self) -> str:
        return mask_database_url(self.url)

    def _is_serialization_failure(self, error: BaseException) -> bool:
        if self.engine != "postgresql":
            return False
        import psycopg2.extensions

        return isinstance(error, psycopg2.extensions.TransactionRollbackError)

    @inlineCallbacks
    def run_interaction(self, desc: str, func: Callable[..., T], *args: Any,
                        **kwargs: Any) -> Any:
        """Run ``func(cursor, *args)`` in one transaction; retried on serialization loss."""

        def interaction(raw_cursor: Any) -> T:
            return func(Cursor(raw_cursor, self.engine), *args, **kwargs)

        for attempt in range(SERIALIZATION_RETRIES + 1):
            try:
                result = yield self.pool.runInteraction(interaction)
            except Exception as e:
                if attempt < SERIALIZATION_RETRIES and self._is_serialization_failure(e):
                    log.debug("Transaction {desc} lost a serialization race; retrying",
                              desc=desc)
                    continue
                if self.state is not None:
                    self.state.failed(e)
                raise
            if self.state is not None:
                self.state.succeeded()
            return result

    def fetchall(self, desc: str, sql: str, params: Sequence[Any] = ()) -> Deferred[Any]:
        return self.run_interaction(desc, lambda c: c.execute(sql, params).fetchall())

    def fetchone(self, desc: str, sql: str, params: Sequence[Any] = ()) -> Deferred[Any]:
        return self.run_interaction(desc, lambda c: c.execute(sql, params).fetchone())

    def execute(self, desc: str, sql: str, params: Sequence[Any] = ()) -> Deferred[Any]:
        return self.run_interaction(desc, lambda c: c.execute(sql, params).rowcount)

    def scrub_log(self) -> Deferred[Any]:
        """On SQLite, fold the write-ahead log into the database and truncate it, so that
        page images of deleted rows do not linger in the ``-wal`` file. A no-op on
        PostgreSQL (its own vacuum reclaims dead rows)."""
        if self.engine != "sqlite":
            return succeed(None)
        return self.fetchone("scrub_log", "PRAGMA wal_checkpoint(TRUNCATE)")

    def ping(self) -> Deferred[Any]:
        """A trivial round trip, for readiness."""
        return self.fetchone("ping", "SELECT 1")

    def start(self) -> None:
        """Start the pool now (it otherwise starts when the reactor does)."""
        if not self.pool.running:
            self.pool.start()

    def close(self) -> None:
        if self.pool.running:
            self.pool.close()
