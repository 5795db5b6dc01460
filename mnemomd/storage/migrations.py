"""Schema migrations: ordered SQL files, applied once, never edited afterwards.

Files live in ``migrations/`` as ``NNNN_name.sql`` (both engines) or
``NNNN_name.sqlite.sql`` / ``NNNN_name.postgresql.sql`` (one engine each). Each applied
file is recorded with its SHA-256 in ``schema_migrations``; an applied file that changed
is an error, and a database that knows versions this build does not refuses to run.
On PostgreSQL the whole run holds an advisory lock, so replicas can start together.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from mnemomd.storage.database import Cursor, Database

#: Arbitrary constant naming "mnemomd schema migrations" among advisory locks.
ADVISORY_LOCK_ID = 0x6D6E656D6F6D64

_FILE_NAME = re.compile(
    r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)(\.(?P<engine>sqlite|postgresql))?\.sql")

SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)
"""


class MigrationError(Exception):
    """The schema cannot be brought to this build's version."""


class SchemaTooNew(MigrationError):
    """The database was migrated by a newer build."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def migrations_dir() -> Path:
    """Where this build's migration files are: frozen bundle, source tree, or install."""
    candidates = []
    if os.environ.get("MNEMOM_MIGRATIONS_DIR"):
        candidates.append(Path(os.environ["MNEMOM_MIGRATIONS_DIR"]))
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates.append(Path(bundle) / "migrations")
    candidates.append(Path(__file__).resolve().parents[2] / "migrations")
    candidates.append(Path(sys.prefix) / "share" / "mnemomd" / "migrations")
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.sql")):
            return candidate
    raise MigrationError("no migrations directory found (looked in "
                         + ", ".join(str(c) for c in candidates) + ")")


def load_migrations(directory: Path, engine: str) -> list[Migration]:
    """The migrations for ``engine``, in order; an engine-specific file wins over the
    shared file of the same name. Two files of one number and different names are an
    error."""
    by_version: dict[int, tuple[bool, Migration]] = {}
    for path in sorted(directory.iterdir()):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            continue
        file_engine = match.group("engine")
        if file_engine is not None and file_engine != engine:
            continue
        version = int(match.group("version"))
        specific = file_engine is not None
        migration = Migration(version, match.group("name"), path.read_text(encoding="utf-8"))
        previous = by_version.get(version)
        if previous is not None and (previous[0] == specific
                                     or previous[1].name != migration.name):
            # An engine-specific file replaces the shared one of its own name only: two
            # names under one number would leave one migration silently unapplied.
            raise MigrationError(f"two migrations share version {version:04d}: "
                                 f"{previous[1].label} and {migration.label}")
        if previous is None or specific:
            by_version[version] = (specific, migration)
    return [m for _, (_, m) in sorted(by_version.items())]


def pending_migrations(applied: dict[int, str], available: list[Migration]) -> list[Migration]:
    """What to apply, after checking the applied history against this build's files."""
    known = {m.version: m for m in available}
    newest_known = max(known, default=0)
    unknown = sorted(v for v in applied if v not in known)
    if unknown:
        raise SchemaTooNew(
            f"the database schema is at version {max(applied)}, newer than this build of "
            f"mnemomd knows (up to {newest_known}); run the newer build, or restore the "
            f"database backup taken before the upgrade")
    for version, checksum in sorted(applied.items()):
        if known[version].checksum != checksum:
            raise MigrationError(
                f"migration {known[version].label} was changed after it was applied "
                f"(checksum differs); restore the original file, and put schema changes "
                f"in a new migration")
    return [m for m in available if m.version not in applied]


def _migrate(cursor: Cursor, available: list[Migration], now_ms: int) -> list[str]:
    if cursor.engine == "postgresql":
        cursor.execute("SELECT pg_advisory_xact_lock(?)", (ADVISORY_LOCK_ID,))
    else:
        cursor.execute("BEGIN IMMEDIATE")
    cursor.execute(SCHEMA_MIGRATIONS_DDL)
    rows = cursor.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    pending = pending_migrations({int(v): c for v, c in rows}, available)
    for migration in pending:
        cursor.execute_script(migration.sql)
        cursor.execute("INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                       "VALUES (?, ?, ?, ?)",
                       (migration.version, migration.name, migration.checksum, now_ms))
    return [m.label for m in pending]


def _check(cursor: Cursor, available: list[Migration]) -> list[str]:
    cursor.execute(SCHEMA_MIGRATIONS_DDL)
    rows = cursor.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    return [m.label for m in pending_migrations({int(v): c for v, c in rows}, available)]


def migrate(db: Database, now_ms: int, directory: Path | None = None) -> Deferred[Any]:
    """Apply every pending migration in one transaction; fires with their labels."""
    available = load_migrations(directory or migrations_dir(), db.engine)
    return db.run_interaction("migrate", _migrate, available, now_ms)


def check_schema(db: Database, directory: Path | None = None) -> Deferred[Any]:
    """Labels of migrations not yet applied (raises if the history is inconsistent)."""
    available = load_migrations(directory or migrations_dir(), db.engine)
    return db.run_interaction("check_schema", _check, available)
