"""Migrations on both engines: apply, re-apply, refuse edits and newer schemas."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path

import psycopg2
import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from mnemomd.storage.database import Database, split_statements
from mnemomd.storage.migrations import (
    Migration,
    MigrationError,
    SchemaTooNew,
    check_schema,
    load_migrations,
    migrate,
    migrations_dir,
    pending_migrations,
)
from tests.storage.engines import discard_database_url, new_database_url

TABLES = {"agents", "alignment_cards", "conscience_values", "integrity_checkpoints",
          "drift_alerts", "ap_traces", "nudges", "containment_log", "webhook_endpoints",
          "webhook_deliveries", "trace_outbox", "schema_migrations",
          "checkpoint_attestations", "signing_keys"}


def write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql)


def test_engine_specific_file_wins(tmp_path):
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (x INTEGER);")
    write(tmp_path, "0001_a.postgresql.sql", "CREATE TABLE a (x BIGINT);")
    write(tmp_path, "0002_b.sqlite.sql", "CREATE TABLE b (x INTEGER);")
    write(tmp_path, "README.md", "not a migration")
    assert [m.sql for m in load_migrations(tmp_path, "postgresql")] == \
        ["CREATE TABLE a (x BIGINT);"]
    assert [m.label for m in load_migrations(tmp_path, "sqlite")] == ["0001_a", "0002_b"]


def test_two_files_with_one_version_refused(tmp_path):
    write(tmp_path, "0001_a.sql", "")
    write(tmp_path, "0001_b.sql", "")
    with pytest.raises(MigrationError, match="share version 0001"):
        load_migrations(tmp_path, "sqlite")


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_shared_and_a_specific_file_of_one_version_and_two_names_refused(tmp_path, engine):
    # Either order on disk: the shared file sorts before or after the specific one.
    write(tmp_path, "0007_policies.sql", "CREATE TABLE p (x INTEGER);")
    write(tmp_path, f"0007_attestation.{engine}.sql", "CREATE TABLE a (x INTEGER);")
    write(tmp_path, "0008_z.sql", "")
    write(tmp_path, f"0008_a.{engine}.sql", "")
    with pytest.raises(MigrationError, match="share version 0007"):
        load_migrations(tmp_path, engine)


def test_a_specific_file_of_another_engine_does_not_clash(tmp_path):
    write(tmp_path, "0007_policies.sql", "")
    write(tmp_path, "0007_attestation.postgresql.sql", "")
    assert [m.label for m in load_migrations(tmp_path, "sqlite")] == ["0007_policies"]


def test_pending_and_history_checks():
    one, two = Migration(1, "a", "x"), Migration(2, "b", "y")
    assert pending_migrations({}, [one, two]) == [one, two]
    assert pending_migrations({1: one.checksum}, [one, two]) == [two]
    with pytest.raises(MigrationError, match="0001_a was changed"):
        pending_migrations({1: "0" * 64}, [one, two])
    with pytest.raises(SchemaTooNew, match="version 3, newer than this build"):
        pending_migrations({1: one.checksum, 3: "z"}, [one, two])


def test_statement_splitting_skips_comments():
    sql = "-- header\nCREATE TABLE a (\n  x INTEGER\n);\n\nCREATE INDEX i ON a (x);\n"
    assert split_statements(sql) == ["CREATE TABLE a (\n  x INTEGER\n)", "CREATE INDEX i ON a (x)"]


def test_shipped_migrations_found():
    assert load_migrations(migrations_dir(), "sqlite")[0].label == "0001_initial"


class MigrationTests:
    engine = ""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.url = new_database_url(self.engine, self.tmp)
        self.db = Database(reactor, self.url)
        self.db.start()

    def tearDown(self):
        self.db.close()
        discard_database_url(self.url)
        shutil.rmtree(self.tmp, ignore_errors=True)

    @inlineCallbacks
    def tables(self):
        if self.engine == "sqlite":
            rows = yield self.db.fetchall("t", "SELECT name FROM sqlite_master WHERE type='table'")
        else:
            rows = yield self.db.fetchall(
                "t", "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows}

    @inlineCallbacks
    def test_empty_to_latest_then_no_op(self):
        applied = yield migrate(self.db, 1000)
        expected = [m.label for m in load_migrations(migrations_dir(), self.engine)]
        self.assertEqual(applied, expected)
        self.assertEqual(expected[:2], ["0001_initial", "0002_agents_updated_index"])
        tables = yield self.tables()
        self.assertTrue(TABLES <= tables, TABLES - tables)
        again = yield migrate(self.db, 2000)
        self.assertEqual(again, [])
        pending = yield check_schema(self.db)
        self.assertEqual(pending, [])
        rows = yield self.db.fetchall("t", "SELECT version, applied_at FROM schema_migrations")
        versions = [m.version for m in load_migrations(migrations_dir(), self.engine)]
        self.assertEqual(sorted(tuple(r) for r in rows), [(v, 1000) for v in versions])

    @inlineCallbacks
    def test_edited_applied_migration_refused(self):
        directory = self.tmp / "migrations"
        directory.mkdir()
        write(directory, "0001_first.sql", "CREATE TABLE first_table (x INTEGER);\n")
        yield migrate(self.db, 1, directory)
        write(directory, "0001_first.sql", "CREATE TABLE first_table (x TEXT);\n")
        with self.assertRaises(MigrationError) as caught:
            yield migrate(self.db, 2, directory)
        self.assertIn("0001_first was changed after it was applied", str(caught.exception))

    @inlineCallbacks
    def test_newer_database_refused(self):
        yield migrate(self.db, 1)
        yield self.db.execute("t", "INSERT INTO schema_migrations VALUES (?, ?, ?, ?)",
                              (9999, "future", "f" * 64, 2))
        with self.assertRaises(SchemaTooNew):
            yield migrate(self.db, 3)
        with self.assertRaises(SchemaTooNew):
            yield check_schema(self.db)

    @inlineCallbacks
    def test_failed_migration_leaves_nothing_behind(self):
        directory = self.tmp / "migrations"
        directory.mkdir()
        write(directory, "0001_good.sql", "CREATE TABLE good (x INTEGER);\n")
        write(directory, "0002_bad.sql", "CREATE TABLE half (x INTEGER);\nNOT SQL AT ALL;\n")
        with self.assertRaises((sqlite3.OperationalError, psycopg2.Error)):
            yield migrate(self.db, 1, directory)
        tables = yield self.tables()
        self.assertFalse({"good", "half"} & tables)

    @inlineCallbacks
    def test_without_reasoning_keeps_existing_agents_as_they_were(self):
        """0006 on a database in use: every agent is ``allow`` (today's behaviour), and
        older checkpoints have no output hash."""
        directory = self.tmp / "migrations"
        directory.mkdir()
        for migration in load_migrations(migrations_dir(), self.engine):
            if migration.version < 6:
                write(directory, f"{migration.label}.sql", migration.sql)
        yield migrate(self.db, 1, directory)
        yield self.db.execute("t", "INSERT INTO agents (id, agent_hash, created_at, "
                                   "updated_at) VALUES ('smolt-1', 'h1', 1, 1)")
        yield self.db.execute(
            "t", "INSERT INTO integrity_checkpoints (id, agent_id, session_id, provider, "
                 "verdict, created_at) VALUES ('ic-1', 'smolt-1', 's', 'anthropic', 'clear', 1)")
        applied = yield migrate(self.db, 2)
        self.assertIn("0006_without_reasoning", applied)
        rows = yield self.db.fetchall("t", "SELECT without_reasoning FROM agents")
        self.assertEqual([tuple(r) for r in rows], [("allow",)])
        rows = yield self.db.fetchall("t", "SELECT output_block_hash FROM integrity_checkpoints")
        self.assertEqual([tuple(r) for r in rows], [(None,)])
        yield self.db.execute("t", "INSERT INTO agents (id, agent_hash, created_at, "
                                   "updated_at) VALUES ('smolt-2', 'h2', 1, 1)")
        rows = yield self.db.fetchall("t", "SELECT without_reasoning FROM agents WHERE id = ?",
                                      ("smolt-2",))
        self.assertEqual([tuple(r) for r in rows], [("allow",)])


class SQLiteMigrationTests(MigrationTests, unittest.TestCase):
    engine = "sqlite"


class PostgresMigrationTests(MigrationTests, unittest.TestCase):
    engine = "postgresql"
