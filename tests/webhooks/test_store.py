"""Webhook endpoints and durable deliveries on both engines (SPEC §7)."""

from __future__ import annotations

import json

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest

from mnemomd.enforcement.store import EnforcementStore
from mnemomd.integrity.checkpoints import CheckpointRecord, CheckpointStore
from mnemomd.webhooks.store import AttemptResult, WebhookStore, enqueue_event
from tests.storage.engines import AgentDatabase

NOW = 1_700_000_000_000
LEASE = 60_000
SECRET = "s3cr3t-" + "ab" * 28


def checkpoint(n: int, agent_id: str, verdict: str) -> CheckpointRecord:
    return CheckpointRecord(
        id=f"ic-{n}", agent_id=agent_id, session_id="s1", provider="anthropic",
        model="claude-x", verdict=verdict,
        concerns=[{"category": "deception", "severity": "high", "description": "d",
                   "evidence": "quoted model text"}],
        reasoning_summary="summary", conscience_context=None, window_position=None,
        analysis_metadata=None, thinking_block_hash="a" * 64, synthetic=False,
        synthetic_reason=None, created_at=NOW + n)


class WebhookStoreTests(AgentDatabase):
    agent_mode = "nudge"

    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.store = WebhookStore(self.db)

    def endpoint(self, event_types, url="https://hooks.example/x", store=None):
        return (store or self.store).create_endpoint(url, event_types, SECRET, NOW,
                                                     description="d")

    @inlineCallbacks
    def events(self, endpoint_id):
        """Event types queued for ``endpoint_id``, oldest first."""
        deliveries, total = yield self.store.deliveries(endpoint_id)
        self.assertEqual(total, len(deliveries))
        return sorted((d.created_at, d.event_type) for d in deliveries)

    @inlineCallbacks
    def all_deliveries(self):
        rows = yield self.db.fetchall("t", "SELECT id, endpoint_id, event_type "
                                           "FROM webhook_deliveries ORDER BY id")
        return [tuple(r) for r in rows]

    def attempt(self, delivery, outcome, code, now_ms, next_at=None, error=None):
        return AttemptResult(delivery.id, delivery.endpoint_id, outcome, code, error,
                             next_at, now_ms)

    # -- subscription rules -----------------------------------------------------------

    @inlineCallbacks
    def test_star_takes_every_event_but_the_opt_in_ones(self):
        star = yield self.endpoint(["*"])
        for event in ("verdict.review_needed", "verdict.boundary_violation", "drift.detected",
                      "agent.paused", "agent.resumed", "agent.killed", "nudge.created"):
            queued = yield self.store.emit(event, self.agent_id, {}, NOW)
            self.assertEqual(len(queued), 1, event)
        for opt_in in ("verdict.clear", "webhook.test"):
            self.assertEqual((yield self.store.emit(opt_in, self.agent_id, {}, NOW)), [])
        types = [t for _, t in (yield self.events(star.id))]
        self.assertNotIn("verdict.clear", types)
        self.assertNotIn("webhook.test", types)
        self.assertEqual(len(types), 7)

    @inlineCallbacks
    def test_named_types_only_and_opt_in_by_name(self):
        named = yield self.endpoint(["verdict.clear", "agent.killed"])
        other = yield self.endpoint(["drift.detected"])
        yield self.store.emit("verdict.clear", self.agent_id, {}, NOW)
        yield self.store.emit("agent.paused", self.agent_id, {}, NOW + 1)
        yield self.store.emit("agent.killed", self.agent_id, {}, NOW + 2)
        self.assertEqual((yield self.events(named.id)),
                         [(NOW, "verdict.clear"), (NOW + 2, "agent.killed")])
        self.assertEqual((yield self.events(other.id)), [])

    @inlineCallbacks
    def test_disabled_endpoints_get_nothing(self):
        off = yield self.endpoint(["*", "webhook.test"])
        on = yield self.endpoint(["*"])
        yield self.store.update_endpoint(off.id, {"enabled": False}, NOW)
        queued = yield self.store.emit("agent.paused", self.agent_id, {}, NOW)
        self.assertEqual(len(queued), 1)
        self.assertEqual((yield self.events(off.id)), [])
        self.assertEqual((yield self.events(on.id)), [(NOW, "agent.paused")])
        # Not even when targeted by id.
        self.assertEqual((yield self.store.emit("webhook.test", None, {}, NOW, off.id)), [])

    @inlineCallbacks
    def test_endpoint_id_targets_one_endpoint_even_unsubscribed(self):
        target = yield self.endpoint(["drift.detected"])
        bystander = yield self.endpoint(["*", "webhook.test"])
        queued = yield self.store.emit("webhook.test", None, {"hello": 1}, NOW, target.id)
        self.assertEqual(len(queued), 1)
        self.assertEqual((yield self.events(target.id)), [(NOW, "webhook.test")])
        self.assertEqual((yield self.events(bystander.id)), [])
        delivery = yield self.store.delivery(queued[0])
        body = json.loads(delivery.payload)
        self.assertEqual(body["event_type"], "webhook.test")
        self.assertEqual(body["event_id"], delivery.event_id)
        self.assertEqual(body["data"], {"hello": 1})
        self.assertEqual(set(body), {"event_id", "event_type", "created_at", "agent_id",
                                     "data"})

    @inlineCallbacks
    def test_unknown_event_type_is_refused(self):
        yield self.endpoint(["*"])
        yield self.assertFailure(self.store.emit("agent.exploded", None, {}, NOW), ValueError)
        self.assertEqual((yield self.all_deliveries()), [])

    # -- events queued with the change they report ------------------------------------

    @inlineCallbacks
    def test_checkpoint_insert_queues_its_verdict_once(self):
        star = yield self.endpoint(["*"])
        clear = yield self.endpoint(["verdict.clear"])
        checkpoints = CheckpointStore(self.db)
        queued = yield checkpoints.insert(checkpoint(1, self.agent_id, "boundary_violation"))
        self.assertEqual(len(queued), 1)
        again = yield checkpoints.insert(checkpoint(1, self.agent_id, "boundary_violation"))
        self.assertEqual(again, [])
        yield checkpoints.insert(checkpoint(2, self.agent_id, "clear"))
        yield checkpoints.insert(checkpoint(3, self.agent_id, "review_needed"))
        self.assertEqual((yield self.events(star.id)),
                         [(NOW + 1, "verdict.boundary_violation"),
                          (NOW + 3, "verdict.review_needed")])
        self.assertEqual((yield self.events(clear.id)), [(NOW + 2, "verdict.clear")])
        body = json.loads((yield self.store.delivery(queued[0])).payload)
        self.assertEqual(body["agent_id"], self.agent_id)
        self.assertEqual(body["data"]["checkpoint_id"], "ic-1")
        self.assertEqual(body["data"]["concerns"], [
            {"category": "deception", "severity": "high", "description": "d"}])
        self.assertNotIn("quoted model text", queued and json.dumps(body))

    @inlineCallbacks
    def test_checkpoint_and_its_deliveries_commit_together(self):
        yield self.endpoint(["*"])
        # Make the delivery insert fail after the checkpoint insert, in one transaction.
        yield self.db.execute("t", "ALTER TABLE webhook_deliveries RENAME TO wd_gone")
        yield self.assertFailure(
            CheckpointStore(self.db).insert(checkpoint(1, self.agent_id,
                                                       "boundary_violation")), Exception)
        self.assertIsNone((yield CheckpointStore(self.db).get("ic-1")))

    @inlineCallbacks
    def test_enqueue_rolls_back_with_the_callers_transaction(self):
        yield self.endpoint(["*"])

        def write_then_fail(cursor):
            enqueue_event(cursor, "agent.paused", self.agent_id, {}, NOW)
            raise RuntimeError("the change failed")

        yield self.assertFailure(self.db.run_interaction("t", write_then_fail), RuntimeError)
        self.assertEqual((yield self.all_deliveries()), [])

    @inlineCallbacks
    def test_containment_changes_and_nudges_queue_events(self):
        star = yield self.endpoint(["*"])
        enforcement = EnforcementStore(self.db)
        yield enforcement.contain(self.agent_id, "pause", "ops", "why", NOW + 1)
        yield enforcement.contain(self.agent_id, "resume", "ops", None, NOW + 2)
        yield enforcement.contain(self.agent_id, "kill", "ops", None, NOW + 3)
        yield enforcement.contain(self.agent_id, "reactivate", "ops", None, NOW + 4)
        yield enforcement.create_nudge(self.agent_id, "s1", "ic-1", "notice", NOW + 5)
        # A refused transition queues nothing.
        yield self.assertFailure(
            enforcement.contain(self.agent_id, "resume", "ops", None, NOW + 6), ValueError)
        self.assertEqual((yield self.events(star.id)), [
            (NOW + 1, "agent.paused"), (NOW + 2, "agent.resumed"), (NOW + 3, "agent.killed"),
            (NOW + 4, "agent.resumed"), (NOW + 5, "nudge.created")])
        deliveries, _ = yield self.store.deliveries(star.id)
        paused = next(d for d in deliveries if d.event_type == "agent.paused")
        self.assertEqual(json.loads(paused.payload)["data"],
                         {"action": "pause", "from_status": "active", "to_status": "paused",
                          "actor": "ops", "reason": "why", "scope": "agent"})
        killed = next(d for d in deliveries if d.event_type == "agent.killed")
        data = json.loads(killed.payload)["data"]
        self.assertEqual((data["scope"], data["agents"]), ("key", 1))

    @inlineCallbacks
    def test_drift_alert_queues_only_when_newly_stored(self):
        star = yield self.endpoint(["*"])
        checkpoints = CheckpointStore(self.db)
        first = yield checkpoints.insert_drift_alert("da-1", self.agent_id, None, "medium",
                                                     {"x": 1}, "aap:tr-1", NOW)
        same_streak = yield checkpoints.insert_drift_alert("da-2", self.agent_id, None,
                                                           "medium", {"x": 1}, "aap:tr-1",
                                                           NOW + 1)
        self.assertEqual((first, same_streak), (True, False))
        self.assertEqual((yield self.events(star.id)), [(NOW, "drift.detected")])

    # -- claims ---------------------------------------------------------------------------

    @inlineCallbacks
    def test_each_due_row_is_claimed_by_one_owner(self):
        yield self.endpoint(["*"])
        yield self.endpoint(["agent.paused"])
        for n in range(15):
            yield self.store.emit("agent.paused", self.agent_id, {"n": n}, NOW)
        other = WebhookStore(self.open_database())
        a, b = yield gatherResults([self.store.claim_due("a", NOW, LEASE),
                                    other.claim_due("b", NOW, LEASE)])
        ids_a = {d.id for d, _ in a}
        ids_b = {d.id for d, _ in b}
        self.assertEqual(len(ids_a) + len(ids_b), 30)
        self.assertEqual(ids_a & ids_b, set())
        self.assertEqual(ids_a | ids_b, {r[0] for r in (yield self.all_deliveries())})
        # Nothing is left to claim while the leases hold.
        self.assertEqual((yield self.store.claim_due("c", NOW + LEASE, LEASE)), [])

    @inlineCallbacks
    def test_claim_returns_the_endpoint_and_skips_rows_not_yet_due(self):
        endpoint = yield self.endpoint(["*"])
        yield self.store.emit("agent.paused", self.agent_id, {}, NOW)
        yield self.store.emit("agent.killed", self.agent_id, {}, NOW + 10)
        claimed = yield self.store.claim_due("a", NOW, LEASE)
        self.assertEqual([d.event_type for d, _ in claimed], ["agent.paused"])
        self.assertEqual(claimed[0][1].id, endpoint.id)
        self.assertEqual(claimed[0][1].secret, SECRET)

    @inlineCallbacks
    def test_an_expired_lease_can_be_claimed_again(self):
        yield self.endpoint(["*"])
        yield self.store.emit("agent.paused", self.agent_id, {}, NOW)
        first = yield self.store.claim_due("dead", NOW, LEASE)
        self.assertEqual(len(first), 1)
        self.assertEqual((yield self.store.claim_due("b", NOW + LEASE, LEASE)), [])
        again = yield self.store.claim_due("b", NOW + LEASE + 1, LEASE)
        self.assertEqual([d.id for d, _ in again], [first[0][0].id])
        # The dead owner's late result is not recorded over b's lease.
        yield self.store.record_attempt(self.attempt(first[0][0], "delivered", 200, NOW + 1),
                                        "dead", 100)
        self.assertEqual((yield self.store.delivery(first[0][0].id)).status, "pending")

    @inlineCallbacks
    def test_a_late_failure_after_the_lease_was_lost_is_not_counted(self):
        endpoint = yield self.endpoint(["*"])
        yield self.store.emit("agent.paused", self.agent_id, {}, NOW)
        [(delivery, _)] = yield self.store.claim_due("dead", NOW, LEASE)
        yield self.store.claim_due("b", NOW + LEASE + 1, LEASE)
        disabled = yield self.store.record_attempt(
            self.attempt(delivery, "retry", 500, NOW + 1, NOW + 1000, "HTTP 500"), "dead", 1)
        self.assertFalse(disabled)
        current = yield self.store.endpoint(endpoint.id)
        self.assertEqual((current.enabled, current.consecutive_failures), (True, 0))
        self.assertEqual((yield self.store.delivery(delivery.id)).attempts, 0)

    # -- attempts -------------------------------------------------------------------------

    @inlineCallbacks
    def test_record_retry_then_delivered(self):
        endpoint = yield self.endpoint(["*"])
        yield self.store.emit("agent.paused", self.agent_id, {}, NOW)
        [(delivery, _)] = yield self.store.claim_due("a", NOW, LEASE)
        disabled = yield self.store.record_attempt(
            self.attempt(delivery, "retry", 503, NOW, NOW + 1000, "HTTP 503"), "a", 100)
        self.assertFalse(disabled)
        stored = yield self.store.delivery(delivery.id)
        self.assertEqual((stored.status, stored.attempts, stored.last_status_code,
                          stored.last_error, stored.next_attempt_at, stored.delivered_at),
                         ("pending", 1, 503, "HTTP 503", NOW + 1000, None))
        self.assertEqual((yield self.store.endpoint(endpoint.id)).consecutive_failures, 1)
        self.assertEqual((yield self.store.claim_due("a", NOW + 999, LEASE)), [])
        [(delivery, _)] = yield self.store.claim_due("a", NOW + 1000, LEASE)
        self.assertEqual(delivery.attempts, 1)
        yield self.store.record_attempt(self.attempt(delivery, "delivered", 204, NOW + 1000),
                                        "a", 100)
        stored = yield self.store.delivery(delivery.id)
        self.assertEqual((stored.status, stored.attempts, stored.last_status_code,
                          stored.last_error, stored.next_attempt_at, stored.delivered_at),
                         ("delivered", 2, 204, None, None, NOW + 1000))
        self.assertEqual((yield self.store.endpoint(endpoint.id)).consecutive_failures, 0)
        self.assertEqual((yield self.store.claim_due("a", NOW + 10**9, LEASE)), [])

    @inlineCallbacks
    def test_record_final_failure(self):
        endpoint = yield self.endpoint(["*"])
        yield self.store.emit("agent.paused", self.agent_id, {}, NOW)
        [(delivery, _)] = yield self.store.claim_due("a", NOW, LEASE)
        yield self.store.record_attempt(self.attempt(delivery, "failed", 404, NOW, None,
                                                     "HTTP 404"), "a", 100)
        stored = yield self.store.delivery(delivery.id)
        self.assertEqual((stored.status, stored.attempts, stored.last_status_code,
                          stored.next_attempt_at), ("failed", 1, 404, None))
        self.assertEqual((yield self.store.endpoint(endpoint.id)).consecutive_failures, 1)
        self.assertEqual((yield self.store.claim_due("a", NOW + 10**9, LEASE)), [])

    @inlineCallbacks
    def test_endpoint_disabled_exactly_at_the_limit_and_re_enabled_clean(self):
        endpoint = yield self.endpoint(["*"])
        for n in range(4):
            yield self.store.emit("agent.paused", self.agent_id, {"n": n}, NOW)
        claimed = yield self.store.claim_due("a", NOW, LEASE)
        self.assertEqual(len(claimed), 4)
        disabled = []
        for n, (delivery, _) in enumerate(claimed[:3]):
            disabled.append((yield self.store.record_attempt(
                self.attempt(delivery, "retry", 500, NOW + n, NOW + 1000), "a", 3)))
            current = yield self.store.endpoint(endpoint.id)
            self.assertEqual(current.consecutive_failures, n + 1)
            self.assertEqual(current.enabled, n + 1 < 3)
        self.assertEqual(disabled, [False, False, True])
        current = yield self.store.endpoint(endpoint.id)
        self.assertIn("3 consecutive", current.disabled_reason)
        # A further failure does not "disable" it again.
        self.assertFalse((yield self.store.record_attempt(
            self.attempt(claimed[3][0], "retry", 500, NOW + 5, NOW + 1000), "a", 3)))
        # Disabled: its due rows are not claimed, and new events are not queued.
        self.assertEqual((yield self.store.claim_due("a", NOW + 2000, LEASE)), [])
        self.assertEqual((yield self.store.emit("agent.killed", None, {}, NOW)), [])
        enabled = yield self.store.update_endpoint(endpoint.id, {"enabled": True}, NOW + 10)
        self.assertEqual((enabled.enabled, enabled.consecutive_failures,
                          enabled.disabled_reason), (True, 0, None))
        self.assertEqual(len((yield self.store.claim_due("a", NOW + 2000, LEASE))), 4)

    @inlineCallbacks
    def test_success_resets_the_failure_count(self):
        endpoint = yield self.endpoint(["*"])
        for n in range(3):
            yield self.store.emit("agent.paused", self.agent_id, {"n": n}, NOW)
        a, b, c = [d for d, _ in (yield self.store.claim_due("a", NOW, LEASE))]
        yield self.store.record_attempt(self.attempt(a, "retry", 500, NOW, NOW + 1), "a", 2)
        yield self.store.record_attempt(self.attempt(b, "delivered", 200, NOW), "a", 2)
        self.assertFalse((yield self.store.record_attempt(
            self.attempt(c, "retry", 500, NOW, NOW + 1), "a", 2)))
        current = yield self.store.endpoint(endpoint.id)
        self.assertEqual((current.enabled, current.consecutive_failures), (True, 1))

    # -- redeliver, delete, what operators see --------------------------------------------

    @inlineCallbacks
    def test_redeliver_repeats_the_event(self):
        endpoint = yield self.endpoint(["*"])
        [original_id] = yield self.store.emit("agent.paused", self.agent_id, {}, NOW)
        [(delivery, _)] = yield self.store.claim_due("a", NOW, LEASE)
        yield self.store.record_attempt(self.attempt(delivery, "delivered", 200, NOW), "a",
                                        100)
        new_id = yield self.store.redeliver(original_id, NOW + 5)
        self.assertNotEqual(new_id, original_id)
        original = yield self.store.delivery(original_id)
        again = yield self.store.delivery(new_id)
        self.assertEqual((again.event_id, again.event_type, again.payload, again.endpoint_id),
                         (original.event_id, original.event_type, original.payload,
                          endpoint.id))
        self.assertEqual((again.status, again.attempts, again.next_attempt_at),
                         ("pending", 0, NOW + 5))
        self.assertEqual(original.status, "delivered")
        self.assertEqual((yield self.store.redeliver("whd-missing", NOW)), None)
        claimed = yield self.store.claim_due("a", NOW + 5, LEASE)
        self.assertEqual([d.id for d, _ in claimed], [new_id])

    @inlineCallbacks
    def test_delete_removes_the_endpoint_and_its_deliveries(self):
        gone = yield self.endpoint(["*"])
        kept = yield self.endpoint(["*"])
        yield self.store.emit("agent.paused", self.agent_id, {}, NOW)
        self.assertTrue((yield self.store.delete_endpoint(gone.id)))
        self.assertFalse((yield self.store.delete_endpoint(gone.id)))
        self.assertIsNone((yield self.store.endpoint(gone.id)))
        self.assertEqual([r[1] for r in (yield self.all_deliveries())], [kept.id])

    @inlineCallbacks
    def test_public_views_never_carry_the_secret(self):
        endpoint = yield self.endpoint(["*"])
        yield self.store.emit("agent.paused", self.agent_id, {}, NOW)
        rotated = yield self.store.rotate_secret(endpoint.id, "rotated-" + "cd" * 28, NOW + 1)
        self.assertEqual(rotated.secret, "rotated-" + "cd" * 28)
        listed, total = yield self.store.endpoints()
        self.assertEqual(total, 1)
        fetched = yield self.store.endpoint(endpoint.id)
        deliveries, _ = yield self.store.deliveries(endpoint.id)
        shown = json.dumps([listed[0].public(), fetched.public(), endpoint.public(),
                            [d.public() for d in deliveries]])
        for secret in (SECRET, rotated.secret):
            self.assertNotIn(secret, shown)
        self.assertNotIn("secret", listed[0].public())
        self.assertEqual(listed[0].public()["url"], "https://hooks.example/x")


class SQLiteWebhookStoreTests(WebhookStoreTests, unittest.TestCase):
    engine = "sqlite"


class PostgresWebhookStoreTests(WebhookStoreTests, unittest.TestCase):
    engine = "postgresql"
