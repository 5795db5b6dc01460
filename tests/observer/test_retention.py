"""Retention and nudge expiry on both engines."""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from mnemomd.enforcement.store import NUDGE_MAX_AGE_MS, EnforcementStore
from mnemomd.observer.retention import DAY_MS, purge
from tests.storage.engines import AgentDatabase

NOW = 400 * DAY_MS


class RetentionTests(AgentDatabase):
    agent_mode = "nudge"

    @inlineCallbacks
    def seed(self, name, created_at, expires_at):
        yield self.db.execute("t", "INSERT INTO integrity_checkpoints (id, agent_id, session_id, "
                                   "provider, verdict, created_at) VALUES (?, ?, 's', 'p', "
                                   "'clear', ?)", (f"ic-{name}", self.agent_id, created_at))
        yield self.db.execute("t", "INSERT INTO ap_traces (id, agent_id, trace, created_at) "
                                   "VALUES (?, ?, '{}', ?)", (f"tr-{name}", self.agent_id,
                                                             created_at))
        yield self.db.execute("t", "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, "
                                   "event_type, payload, created_at) VALUES (?, 'whk-1', ?, "
                                   "'x', '{}', ?)", (f"whd-{name}", f"ev-{name}", created_at))
        yield self.db.execute("t", "INSERT INTO trace_outbox (id, agent_id, provider, payload, "
                                   "created_at, expires_at) VALUES (?, ?, 'p', '{}', ?, ?)",
                              (f"ob-{name}", self.agent_id, created_at, expires_at))

    @inlineCallbacks
    def ids(self, table):
        rows = yield self.db.fetchall("t", f"SELECT id FROM {table} ORDER BY id")
        return [r[0] for r in rows]

    @inlineCallbacks
    def test_cut_off_by_age_and_outbox_by_ttl(self):
        yield self.db.execute("t", "INSERT INTO webhook_endpoints (id, url, event_types, "
                                   "secret, created_at, updated_at) VALUES ('whk-1', "
                                   "'https://x', '[]', 's', 1, 1)")
        yield self.seed("old", NOW - 366 * DAY_MS, NOW - 1)
        yield self.seed("edge", NOW - 365 * DAY_MS, NOW)
        yield self.seed("new", NOW - DAY_MS, NOW + 1)
        deleted = yield purge(self.db, NOW, 365)
        self.assertEqual(deleted, {"integrity_checkpoints": 1, "ap_traces": 1,
                                   "webhook_deliveries": 1, "policy_violations": 0,
                                   "trace_outbox": 2})
        self.assertEqual((yield self.ids("integrity_checkpoints")), ["ic-edge", "ic-new"])
        self.assertEqual((yield self.ids("ap_traces")), ["tr-edge", "tr-new"])
        self.assertEqual((yield self.ids("webhook_deliveries")), ["whd-edge", "whd-new"])
        self.assertEqual((yield self.ids("trace_outbox")), ["ob-new"])

    @inlineCallbacks
    def test_pending_nudges_expire_after_four_hours(self):
        store = EnforcementStore(self.db)
        old = yield store.create_nudge(self.agent_id, "s", None, "n", NOW - NUDGE_MAX_AGE_MS)
        fresh = yield store.create_nudge(self.agent_id, "s", None, "n", NOW - 1000)
        delivered = yield store.create_nudge(self.agent_id, "s", None, "n",
                                             NOW - NUDGE_MAX_AGE_MS - 5)
        yield store.mark_delivered([delivered], NOW - NUDGE_MAX_AGE_MS)
        self.assertEqual((yield store.expire_nudges(NOW)), 1)
        statuses = {n["id"]: n["status"] for n in (yield store.nudges(self.agent_id))}
        self.assertEqual(statuses, {old: "expired", fresh: "pending", delivered: "delivered"})
        pending = yield store.pending_nudges(self.agent_id, NOW)
        self.assertEqual([n.id for n in pending], [fresh])


class SQLiteRetentionTests(RetentionTests, unittest.TestCase):
    engine = "sqlite"


class PostgresRetentionTests(RetentionTests, unittest.TestCase):
    engine = "postgresql"
