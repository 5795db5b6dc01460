"""The traces job: decisions, AP-trace building and verification, and TraceBuilder runs."""

from __future__ import annotations

import json

import pytest
from aap import APTrace
from twisted.internet.defer import fail, gatherResults, inlineCallbacks, succeed
from twisted.logger import LogLevel
from twisted.trial import unittest

from mnemomd.agents.store import AgentStore, default_alignment_card
from mnemomd.integrity.backends import AnalysisFailure
from mnemomd.integrity.checkpoints import (
    CheckpointRecord,
    CheckpointStore,
    checkpoint_write,
    write_checkpoints,
)
from mnemomd.kv import KVUnavailableError, MemoryKeyValueStore
from mnemomd.kv.keyring import OutboxKeyring
from mnemomd.observer.traces import (
    RESPOND,
    SHARED_DUTY,
    OpenedRow,
    TraceBuilder,
    TraceBuildError,
    build_trace,
    heuristic_decision,
    parse_decision,
    sweep_outbox,
    verify,
)
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.storage.traces import MAX_ATTEMPTS, OutboxRow, OutboxStore, TraceStore
from tests.storage.engines import NOW, AgentDatabase
from tests.support import captured_logs, poll, synchronously


def card(forbidden=("delete_file",), bounded=("inference", "search"), declared=None):
    result = default_alignment_card("smith-1", NOW)
    result["autonomy"]["bounded_actions"] = list(bounded)
    result["autonomy"]["forbidden_actions"] = list(forbidden)
    if declared is not None:
        result["values"]["declared"] = list(declared)
    return result


def tools(*names):
    return [{"name": n, "argument_keys": [f"{n}_arg"]} for n in names]


def row(payload, agent_id="smith-1", n=1, checkpoint_id=None, ttl=600_000):
    return OpenedRow(OutboxRow(f"ob-{n}", agent_id, "s1", "anthropic", "claude-x",
                               checkpoint_id, "s1.sealed", 1, NOW + n, NOW + n + ttl), payload)


# -- the heuristic -------------------------------------------------------------------------


def test_no_tools_means_respond():
    decision = heuristic_decision({"tools": []}, card())
    assert decision["selected"] == RESPOND
    assert [a["option_id"] for a in decision["alternatives_considered"]] == [RESPOND]
    trace = build_trace(row({}), card(), decision, "heuristic", "tr-1", NOW)
    assert trace["action"]["name"] == "inference"
    assert trace["action"]["category"] == "bounded"


def test_a_forbidden_tool_is_selected_over_the_others():
    payload = {"tools": tools("search", "delete_file", "read")}
    decision = heuristic_decision(payload, card())
    assert decision["selected"] == "tool:delete_file"
    assert [a["option_id"] for a in decision["alternatives_considered"]] == \
        ["tool:search", "tool:delete_file", "tool:read", RESPOND]
    trace = build_trace(row(payload), card(), decision, "heuristic", "tr-1", NOW)
    assert (trace["action"]["name"], trace["action"]["category"]) == ("delete_file",
                                                                     "forbidden")
    assert trace["action"]["parameters"]["argument_keys"] == ["delete_file_arg"]


def test_without_a_forbidden_tool_the_first_is_selected():
    decision = heuristic_decision({"tools": tools("search", "read")}, card())
    assert decision["selected"] == "tool:search"


def test_values_come_only_from_the_declared_ones():
    visible = {"tools": [], "thinking_visible": True}
    assert heuristic_decision(visible, card())["values_applied"] == \
        ["helpfulness", "transparency"]
    assert heuristic_decision({"tools": []}, card())["values_applied"] == ["helpfulness"]
    assert heuristic_decision(visible, card(declared=["safety"]))["values_applied"] == []
    assert heuristic_decision(visible, card(declared=["transparency"]))["values_applied"] == \
        ["transparency"]


def test_no_model_text_enters_the_heuristic_trace():
    payload = {"tools": tools("search"), "thinking_excerpt": "SECRET-PLAN",
               "response_excerpt": "SECRET-ANSWER", "thinking_visible": True}
    decision = heuristic_decision(payload, card())
    trace = build_trace(row(payload), card(), decision, "heuristic", "tr-1", NOW)
    assert "SECRET" not in json.dumps(trace)


# -- parse_decision ------------------------------------------------------------------------

GOOD = {"alternatives": [{"option_id": "tool:search", "description": "Search", "score": 0.8},
                         {"option_id": RESPOND, "description": "Answer", "score": 0.2}],
        "selected": "tool:search", "selection_reasoning": "Needed facts.",
        "values_applied": ["helpfulness", "accuracy"], "confidence": 0.7}


def test_prose_around_the_json_is_tolerated():
    text = f"Sure! Here is the analysis:\n```json\n{json.dumps(GOOD)}\n```\nHope it helps."
    decision = parse_decision(text, {}, card())
    assert decision["selected"] == "tool:search"
    assert [a["score"] for a in decision["alternatives_considered"]] == [0.8, 0.2]
    assert decision["values_applied"] == ["helpfulness", "accuracy"]
    assert decision["confidence"] == 0.7
    assert decision["selection_reasoning"] == "Needed facts."


@pytest.mark.parametrize("text", [
    "no json here",
    "{not json}",
    json.dumps({**GOOD, "selected": "tool:delete_everything"}),
    json.dumps({**GOOD, "selected": ""}),
    json.dumps({**GOOD, "alternatives": []}),
    json.dumps({**GOOD, "alternatives": [{"description": "no id"}]}),
    "",
])
def test_unusable_decisions_are_rejected(text):
    with pytest.raises(TraceBuildError):
        parse_decision(text, {}, card())


def test_undeclared_values_are_filtered():
    text = json.dumps({**GOOD, "values_applied": ["helpfulness", "profit", "world_domination"]})
    assert parse_decision(text, {}, card())["values_applied"] == ["helpfulness"]


def test_bad_scores_and_confidence_are_dropped():
    alternatives = [{"option_id": "a", "score": 1.5}, {"option_id": "b", "score": -0.1},
                    {"option_id": "c", "score": "0.5"}, {"option_id": "d", "score": True},
                    {"option_id": "e", "score": 1}]
    text = json.dumps({"alternatives": alternatives, "selected": "e", "confidence": 7})
    decision = parse_decision(text, {}, card())
    scores = {a["option_id"]: a.get("score") for a in decision["alternatives_considered"]}
    assert scores == {"a": None, "b": None, "c": None, "d": None, "e": 1.0}
    assert "confidence" not in decision
    assert decision["selection_reasoning"]  # never empty


# -- build_trace and verify ----------------------------------------------------------------


def test_built_traces_validate_as_ap_traces():
    the_card = card()
    payload = {"tools": tools("search"), "api": "messages", "verdict": "clear"}
    trace = build_trace(row(payload, checkpoint_id="ic-1"), the_card,
                        heuristic_decision(payload, the_card), "heuristic", "tr-9", NOW)
    assert APTrace.model_validate(trace).trace_id == "tr-9"
    assert trace["card_id"] == the_card["card_id"]
    metadata = trace["context"]["metadata"]
    assert (metadata["decision_source"], metadata["checkpoint_id"], metadata["verdict"]) == \
        ("heuristic", "ic-1", "clear")


def test_an_invalid_decision_fails_validation():
    bad = {"alternatives_considered": "nope", "selected": 3}
    with pytest.raises(TraceBuildError):
        build_trace(row({}), card(), bad, "analysis", "tr-1", NOW)


def test_a_forbidden_tool_is_a_forbidden_action_violation():
    the_card = card()
    payload = {"tools": tools("search", "delete_file")}
    trace = build_trace(row(payload), the_card, heuristic_decision(payload, the_card),
                        "heuristic", "tr-1", NOW)
    result = verify(trace, the_card)
    assert result["verified"] is False
    assert "forbidden_action" in [v["type"] for v in result["violations"]]


def test_a_bounded_tool_verifies_clean():
    the_card = card()
    payload = {"tools": tools("search")}
    trace = build_trace(row(payload), the_card, heuristic_decision(payload, the_card),
                        "heuristic", "tr-1", NOW)
    result = verify(trace, the_card)
    assert result["verified"] is True
    assert result["violations"] == []
    assert "similarity_details" not in (result.get("verification_metadata") or {})


# -- TraceBuilder runs on a migrated database ---------------------------------------------


class FakeBackend:
    def __init__(self, answer):
        self.answer = answer
        self.prompts = []

    def complete(self, system, user, max_tokens):
        self.prompts.append(json.loads(user))
        return self.answer() if callable(self.answer) else succeed(self.answer)


class Unreachable(MemoryKeyValueStore):
    def get(self, key):
        return fail(KVUnavailableError("Redis is not connected"))


class BrokenAgents:
    def card(self, agent_id):
        return fail(ConnectionError("database went away"))


class TraceBuilderTests(AgentDatabase):
    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        the_card = self.card
        the_card["autonomy"]["bounded_actions"] = ["inference", "search"]
        the_card["autonomy"]["forbidden_actions"] = ["delete_file"]
        self.card = the_card
        yield self.db.execute("t", "UPDATE alignment_cards SET card = ? WHERE agent_id = ?",
                              (json.dumps(the_card), self.agent_id))
        self.outbox = OutboxStore(self.db)
        self.traces = TraceStore(self.db)
        self.keyring = OutboxKeyring(MemoryKeyValueStore(self.clock), self.clock, 3600, 360,
                                     shared=False)

    def builder(self, backend=None, agents=None, outbox=None, owner="me", metrics=None,
                **settings):
        settings.setdefault("to_thread", synchronously)
        return TraceBuilder(self.clock, outbox or self.outbox, agents or self.agents, owner,
                            self.keyring, backend, metrics=metrics, lease_seconds=120,
                            **settings)

    def now_ms(self):
        return int(self.clock.seconds() * 1000)

    @inlineCallbacks
    def add(self, n, payload, agent_id=None, checkpoint_id=None, ttl=3_600_000):
        sealed = yield self.keyring.seal(f"ob-{n}", json.dumps(payload).encode())
        yield self.outbox.add(OutboxRow(f"ob-{n}", agent_id or self.agent_id, "s1",
                                        "anthropic", "claude-x", checkpoint_id, sealed, 0,
                                        self.now_ms() + n, self.now_ms() + ttl))

    @inlineCallbacks
    def outbox_rows(self):
        rows = yield self.db.fetchall("t", "SELECT id, attempts, parked FROM trace_outbox "
                                           "ORDER BY id")
        return [(r[0], int(r[1]), bool(r[2])) for r in rows]

    @inlineCallbacks
    def test_builds_verifies_stores_and_links_each_ready_row(self):
        yield CheckpointStore(self.db).insert(CheckpointRecord(
            id="ic-1", agent_id=self.agent_id, session_id="s1", provider="anthropic",
            model=None, verdict="clear", concerns=[], reasoning_summary=None,
            conscience_context=None, window_position=None, analysis_metadata=None,
            thinking_block_hash=None, synthetic=False, synthetic_reason=None,
            created_at=NOW))
        yield self.add(1, {"tools": tools("search")}, checkpoint_id="ic-1")
        yield self.add(2, {"tools": tools("delete_file")})
        yield self.add(3, {"tools": []})
        counts = yield self.builder().run()
        self.assertEqual(counts, {"built": 3, "failed": 0, "parked": 0, "expired": 0})
        self.assertEqual((yield self.outbox_rows()), [])
        records, total = yield self.traces.list_for_agent(self.agent_id)
        self.assertEqual(total, 3)
        by_row = {r.outbox_id: r for r in records}
        for record in records:
            APTrace.model_validate(record.trace)
            self.assertEqual(record.trace["trace_id"], record.id)
            self.assertEqual(record.trace["context"]["metadata"]["decision_source"],
                             "heuristic")
        self.assertEqual((by_row["ob-1"].verified, by_row["ob-2"].verified,
                          by_row["ob-3"].verified), (True, False, True))
        self.assertIn("forbidden_action",
                      [v["type"] for v in by_row["ob-2"].verification["violations"]])
        self.assertEqual((yield CheckpointStore(self.db).get("ic-1")).trace_id,
                         by_row["ob-1"].id)
        # Nothing left: a second run builds nothing more.
        self.assertEqual((yield self.builder().run())["built"], 0)
        self.assertEqual((yield self.traces.list_for_agent(self.agent_id))[1], 3)

    @inlineCallbacks
    def test_a_trace_built_before_its_checkpoint_is_linked_when_the_checkpoint_comes(self):
        # The outbox row is written when the response ends, the checkpoint after the
        # analysis: the job may build the trace first. Both ways of storing a checkpoint
        # (the write queue's batch, and the store's single insert) link it.
        yield self.add(1, {"tools": []}, checkpoint_id="ic-late-1")
        yield self.add(2, {"tools": []}, checkpoint_id="ic-late-2")
        self.assertEqual((yield self.builder().run())["built"], 2)
        records, _ = yield self.traces.list_for_agent(self.agent_id)
        trace_of = {r.checkpoint_id: r.id for r in records}

        def record(checkpoint_id):
            return CheckpointRecord(
                id=checkpoint_id, agent_id=self.agent_id, session_id="s1",
                provider="anthropic", model=None, verdict="clear", concerns=[],
                reasoning_summary=None, conscience_context=None, window_position=None,
                analysis_metadata=None, thinking_block_hash=None, synthetic=False,
                synthetic_reason=None, created_at=NOW)

        yield self.db.run_interaction("t", write_checkpoints,
                                      [checkpoint_write(record("ic-late-1"))])
        yield CheckpointStore(self.db).insert(record("ic-late-2"))
        store = CheckpointStore(self.db)
        self.assertEqual(((yield store.get("ic-late-1")).trace_id,
                          (yield store.get("ic-late-2")).trace_id),
                         (trace_of["ic-late-1"], trace_of["ic-late-2"]))

    @inlineCallbacks
    def test_a_link_a_batch_missed_is_made_by_the_next_run(self):
        # The checkpoint arrives between the batch's link and its commit (inserted here
        # behind the store's back, as a concurrent transaction's row would be).
        yield self.add(1, {"tools": []}, checkpoint_id="ic-missed")
        builder = self.builder()
        self.assertEqual((yield builder.run())["built"], 1)
        (trace,), _ = yield self.traces.list_for_agent(self.agent_id)
        yield self.db.execute(
            "t", "INSERT INTO integrity_checkpoints (id, agent_id, session_id, provider, "
            "verdict, concerns, synthetic, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ("ic-missed", self.agent_id, "s1", "anthropic", "clear", "[]", False, NOW))
        store = CheckpointStore(self.db)
        self.assertIsNone((yield store.get("ic-missed")).trace_id)
        self.assertEqual((yield builder.run())["built"], 0)
        self.assertEqual((yield store.get("ic-missed")).trace_id, trace.id)

    @inlineCallbacks
    def test_a_row_whose_key_expired_is_deleted_and_counted_without_a_line(self):
        logs = captured_logs(self)
        metrics = GatewayMetrics(process_collectors=False)
        self.keyring = OutboxKeyring(MemoryKeyValueStore(self.clock), self.clock, 60, 6,
                                     shared=False)
        yield self.add(1, {"tools": tools("search")})  # the row itself lives an hour
        self.clock.advance(60)
        counts = yield self.builder(metrics=metrics).run()
        self.assertEqual(counts, {"built": 0, "failed": 0, "parked": 0, "expired": 1})
        self.assertEqual((yield self.outbox_rows()), [])
        self.assertEqual((yield self.traces.list_for_agent(self.agent_id))[1], 0)
        self.assertEqual(metrics.registry.get_sample_value("gateway_outbox_shredded_total"),
                         1)
        self.assertEqual(logs.at(LogLevel.warn) + logs.at(LogLevel.error), [])

    @inlineCallbacks
    def test_a_row_sealed_by_another_process_is_left_to_it(self):
        mine = self.keyring
        self.keyring = OutboxKeyring(MemoryKeyValueStore(self.clock), self.clock, 3600, 360,
                                     shared=False)
        yield self.add(1, {"tools": tools("search")})
        self.keyring = mine
        counts = yield self.builder().run()
        self.assertEqual(counts, {"built": 0, "failed": 0, "parked": 0, "expired": 0})
        self.assertEqual((yield self.outbox_rows()), [("ob-1", 1, False)])

    @inlineCallbacks
    def test_a_payload_moved_to_another_row_fails_that_row(self):
        yield self.add(1, {"tools": tools("search")})
        stolen = yield self.db.fetchone("t", "SELECT payload FROM trace_outbox")
        yield self.outbox.add(OutboxRow("ob-2", self.agent_id, "s1", "anthropic", "claude-x",
                                        None, stolen[0], 0, self.now_ms() + 2,
                                        self.now_ms() + 3_600_000))
        counts = yield self.builder().run()
        self.assertEqual(counts, {"built": 1, "failed": 1, "parked": 0, "expired": 0})
        failed = yield self.db.fetchone("t", "SELECT id, last_error FROM trace_outbox")
        self.assertEqual(failed, ("ob-2", "sealed payload does not open for its row"))

    @inlineCallbacks
    def test_a_run_leaves_its_rows_when_the_keys_cannot_be_read(self):
        self.keyring = OutboxKeyring(MemoryKeyValueStore(self.clock), self.clock, 3600, 360,
                                     shared=True)
        yield self.add(1, {"tools": tools("search")})
        self.keyring = OutboxKeyring(Unreachable(self.clock), self.clock, 3600, 360,
                                     shared=True)
        counts = yield self.builder().run()
        self.assertEqual(counts, {"built": 0, "failed": 0, "parked": 0, "expired": 0})
        self.assertEqual((yield self.outbox_rows()), [("ob-1", 1, False)])

    @inlineCallbacks
    def test_a_failing_row_is_retried_on_later_runs_then_parked_without_blocking(self):
        yield self.add(1, {"tools": []}, agent_id="smith-ghost")  # no card
        yield self.add(2, {"tools": tools("search")})
        builder = self.builder()
        counts = yield builder.run()
        self.assertEqual(counts, {"built": 1, "failed": 1, "parked": 0, "expired": 0})
        self.assertEqual((yield self.outbox_rows()), [("ob-1", 1, False)])
        # Not again within the same lease period, however often the job runs.
        self.assertEqual((yield builder.run())["failed"], 0)
        self.assertEqual((yield self.outbox_rows()), [("ob-1", 1, False)])
        for attempt in range(2, MAX_ATTEMPTS + 1):
            self.clock.advance(121)
            yield self.add(10 + attempt, {"tools": tools("search")})
            counts = yield builder.run()
            parked = attempt == MAX_ATTEMPTS
            self.assertEqual(counts, {"built": 1, "failed": 0 if parked else 1,
                                      "parked": 1 if parked else 0, "expired": 0})
            self.assertEqual((yield self.outbox_rows()), [("ob-1", attempt, parked)])
        self.clock.advance(3000)
        self.assertEqual((yield builder.run()),
                         {"built": 0, "failed": 0, "parked": 0, "expired": 0})
        self.assertEqual((yield self.outbox_rows()), [("ob-1", MAX_ATTEMPTS, True)])
        self.assertEqual((yield self.traces.list_for_agent(self.agent_id))[1], MAX_ATTEMPTS)

    @inlineCallbacks
    def test_expired_rows_are_purged_first_even_when_building_fails(self):
        yield self.add(1, {"tools": []}, ttl=1000)
        yield self.add(2, {"tools": []})
        self.clock.advance(2)
        counts = yield self.builder(agents=BrokenAgents()).run()
        self.assertEqual(counts, {"built": 0, "failed": 1, "parked": 0, "expired": 1})
        self.assertEqual((yield self.outbox_rows()), [("ob-2", 1, False)])

    @inlineCallbacks
    def test_the_analysis_backend_decides_when_configured(self):
        answer = ("Analysis follows. " + json.dumps(
            {**GOOD, "values_applied": ["helpfulness", "greed"]}) + " Done.")
        backend = FakeBackend(answer)
        yield self.add(1, {"tools": tools("search"), "thinking_excerpt": "think",
                           "response_excerpt": "answer"})
        self.assertEqual((yield self.builder(backend).run())["built"], 1)
        [record], _ = yield self.traces.list_for_agent(self.agent_id)
        self.assertEqual(record.trace["context"]["metadata"]["decision_source"], "analysis")
        self.assertEqual(record.trace["decision"]["selection_reasoning"], "Needed facts.")
        self.assertEqual(record.trace["decision"]["values_applied"], ["helpfulness"])
        [prompt] = backend.prompts
        self.assertEqual(prompt["tools_called"], tools("search"))
        self.assertEqual(prompt["forbidden_actions"], ["delete_file"])

    @inlineCallbacks
    def test_a_backend_failure_falls_back_to_the_heuristic(self):
        failing = FakeBackend(lambda: fail(AnalysisFailure("timeout")))
        nonsense = FakeBackend("I cannot help with that.")
        yield self.add(1, {"tools": tools("search")})
        yield self.add(2, {"tools": tools("delete_file")})
        self.assertEqual((yield self.builder(failing).run())["built"], 2)
        yield self.add(3, {"tools": tools("search")})
        self.assertEqual((yield self.builder(nonsense).run())["built"], 1)
        records, _ = yield self.traces.list_for_agent(self.agent_id)
        self.assertEqual(len(records), 3)
        for record in records:
            self.assertEqual(record.trace["context"]["metadata"]["decision_source"],
                             "heuristic")
        self.assertEqual(len(failing.prompts), 2)


class BatchTests:
    """Batches, concurrency and the outbox metrics, on a migrated database (mixed into
    TraceBuilderTests' engine classes below)."""

    @inlineCallbacks
    def traces_per_outbox_row(self):
        rows = yield self.db.fetchall("t", "SELECT outbox_id, COUNT(*) FROM ap_traces "
                                           "GROUP BY outbox_id")
        return {r[0]: int(r[1]) for r in rows}

    @inlineCallbacks
    def test_a_backlog_of_many_batches_drains_in_one_run(self):
        count = 3 * 10 + 7
        for n in range(count):
            yield self.add(n, {"tools": tools("search")})
        builder = self.builder(batch_size=10, concurrency=2)
        counts = yield builder.run()
        self.assertEqual(counts, {"built": count, "failed": 0, "parked": 0, "expired": 0})
        self.assertEqual((yield self.outbox_rows()), [])
        self.assertEqual((yield self.traces_per_outbox_row()),
                         {f"ob-{n}": 1 for n in range(count)})

    @inlineCallbacks
    def test_a_run_past_its_budget_claims_no_more_batches(self):
        for n in range(25):
            yield self.add(n, {"tools": []})

        class Slow:
            """Each card read takes 10 s of Clock time: a run reaches its budget."""

            def __init__(self, agents, clock):
                self.agents, self.clock = agents, clock

            def card(self, agent_id):
                self.clock.advance(10)
                return self.agents.card(agent_id)

        builder = self.builder(agents=Slow(self.agents, self.clock), batch_size=10,
                               concurrency=1, max_run_seconds=5)
        self.assertEqual((yield builder.run())["built"], 10)
        self.assertEqual(len((yield self.outbox_rows())), 15)
        # The next run carries on where it stopped.
        self.assertEqual((yield builder.run())["built"], 10)

    @inlineCallbacks
    def test_beside_the_proxy_each_batch_is_followed_by_three_times_its_length(self):
        for n in range(25):
            yield self.add(n, {"tools": []})

        def slow(f, *args, **kwargs):
            self.clock.advance(0.5)  # opening and building a batch: 1 s of Clock time
            return synchronously(f, *args, **kwargs)

        builder = self.builder(batch_size=10, concurrency=1, to_thread=slow,
                               duty=SHARED_DUTY)
        run = builder.run()

        def built():
            return self.db.fetchall("t", "SELECT COUNT(*) FROM ap_traces") \
                .addCallback(lambda rows: int(rows[0][0]))

        def paused_after(count):
            return lambda: built().addCallback(
                lambda n: n == count and bool(self.clock.getDelayedCalls()))

        yield poll(paused_after(10), 10, "the first batch, then a pause")
        self.clock.advance(2.9)
        self.assertEqual((yield built()), 10)
        self.assertNoResult(run)
        self.clock.advance(0.1)  # three times the batch's 1 s
        yield poll(paused_after(20), 10, "the second batch, then a pause")
        self.clock.advance(3)
        # The last batch is short: the outbox is drained and the run ends, no pause.
        self.assertEqual((yield run)["built"], 25)

    @inlineCallbacks
    def test_paced_one_batch_is_in_flight_and_stop_ends_its_pause(self):
        # Two batches in flight, each resting three times its length, could take half
        # the time between them: paced, the job keeps one in flight.
        for n in range(45):
            yield self.add(n, {"tools": []})

        def slow(f, *args, **kwargs):
            self.clock.advance(0.5)
            return synchronously(f, *args, **kwargs)

        builder = self.builder(batch_size=10, concurrency=2, to_thread=slow,
                               duty=SHARED_DUTY)
        run = builder.run()
        yield poll(lambda: bool(self.clock.getDelayedCalls()), 10, "a batch resting")
        (pause,) = self.clock.getDelayedCalls()
        self.assertAlmostEqual(pause.getTime() - self.clock.seconds(), 3.0)
        builder.stop()  # the pause ends now: the run finishes without more Clock time
        self.assertEqual((yield run)["built"], 10)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_rows_past_half_their_ttl_are_drained_without_pauses(self):
        # Rows with a 100 s TTL, 60 s old: the job is behind, pacing would let them
        # expire; every batch follows the last at once.
        for n in range(25):
            yield self.add(n, {"tools": []}, ttl=100_000)
        self.clock.advance(60)

        def slow(f, *args, **kwargs):
            self.clock.advance(0.5)
            return synchronously(f, *args, **kwargs)

        builder = self.builder(batch_size=10, concurrency=1, to_thread=slow,
                               duty=SHARED_DUTY)
        self.assertEqual((yield builder.run())["built"], 25)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_a_pause_never_runs_past_the_run_budget(self):
        for n in range(25):
            yield self.add(n, {"tools": []})

        def slow(f, *args, **kwargs):
            self.clock.advance(0.5)
            return synchronously(f, *args, **kwargs)

        builder = self.builder(batch_size=10, concurrency=1, to_thread=slow,
                               duty=SHARED_DUTY, max_run_seconds=2)
        run = builder.run()
        yield poll(lambda: bool(self.clock.getDelayedCalls()), 10, "the pause")
        (call,) = self.clock.getDelayedCalls()
        self.assertAlmostEqual(call.getTime() - self.clock.seconds(), 1.0)  # not 3
        self.clock.advance(1)
        self.assertEqual((yield run)["built"], 10)

    def test_a_duty_outside_zero_to_one_is_refused(self):
        for duty in (0, -0.5, 1.5):
            with self.assertRaises(ValueError):
                self.builder(duty=duty)

    @inlineCallbacks
    def test_after_stop_a_run_claims_nothing(self):
        yield self.add(1, {"tools": []})
        builder = self.builder()
        builder.stop()
        self.assertEqual((yield builder.run())["built"], 0)
        self.assertEqual((yield self.outbox_rows()), [("ob-1", 0, False)])

    @inlineCallbacks
    def test_a_row_that_cannot_be_built_fails_alone_in_its_batch(self):
        """Poison at build time: no card, and a payload that breaks the heuristic."""
        yield self.add(1, {"tools": tools("search")})
        yield self.add(2, {"tools": []}, agent_id="smith-ghost")  # no card
        yield self.add(3, {"tools": [{"name": "x", "argument_keys": 7}],
                           "thinking_visible": True})
        yield self.add(4, {"tools": "not a list"})
        yield self.add(5, {"tools": tools("delete_file")})
        counts = yield self.builder(batch_size=10).run()
        self.assertEqual(counts, {"built": 4, "failed": 1, "parked": 0, "expired": 0})
        self.assertEqual((yield self.outbox_rows()), [("ob-2", 1, False)])
        self.assertEqual(set((yield self.traces_per_outbox_row())), {"ob-1", "ob-3", "ob-4",
                                                                     "ob-5"})

    @inlineCallbacks
    def test_a_row_the_database_refuses_fails_alone_in_its_batch(self):
        """Poison at store time: a card is found for an agent that no longer exists, so
        its trace breaks the foreign key and the batch's transaction; the other rows are
        then stored one by one."""
        agents = self.agents
        the_card = self.card

        class GhostCards:
            def card(self, agent_id):
                return succeed(the_card) if agent_id == "smith-ghost" else agents.card(agent_id)

        for n in range(1, 6):
            yield self.add(n, {"tools": tools("search")},
                           agent_id="smith-ghost" if n == 3 else None)
        counts = yield self.builder(agents=GhostCards(), batch_size=10).run()
        self.assertEqual(counts, {"built": 4, "failed": 1, "parked": 0, "expired": 0})
        self.assertEqual((yield self.outbox_rows()), [("ob-3", 1, False)])
        self.assertEqual((yield self.traces_per_outbox_row()),
                         {f"ob-{n}": 1 for n in (1, 2, 4, 5)})

    @inlineCallbacks
    def test_two_builders_on_two_pools_make_exactly_one_trace_per_row(self):
        count = 120
        for n in range(count):
            yield self.add(n, {"tools": tools("search")})
        replica = self.open_database()
        a = self.builder(owner="a", batch_size=7, concurrency=3)
        b = self.builder(owner="b", outbox=OutboxStore(replica), agents=AgentStore(replica),
                         batch_size=7, concurrency=3)
        first, second = yield gatherResults([a.run(), b.run()])
        # Every row was claimed by one builder only: no trace was built twice.
        self.assertEqual(first["built"] + second["built"], count)
        self.assertEqual((yield self.outbox_rows()), [])
        self.assertEqual((yield self.traces_per_outbox_row()),
                         {f"ob-{n}": 1 for n in range(count)})

    @inlineCallbacks
    def test_the_depth_gauges_follow_the_sweep_and_the_job(self):
        metrics = GatewayMetrics(process_collectors=False)

        def sample(name, labels=None):
            return metrics.registry.get_sample_value(name, labels or {})

        for n in range(3):
            yield self.add(n, {"tools": []})
        # One row fails its last attempt: parked.
        yield self.add(9, {"tools": []}, agent_id="smith-ghost")
        yield self.db.execute("t", "UPDATE trace_outbox SET attempts = ? WHERE id = ?",
                              (MAX_ATTEMPTS - 1, "ob-9"))
        self.clock.advance(30)
        purged = yield sweep_outbox(self.clock, self.outbox, metrics)
        self.assertEqual(purged, 0)
        self.assertEqual((sample("gateway_outbox_depth", {"state": "ready"}),
                          sample("gateway_outbox_depth", {"state": "parked"})), (4, 0))
        # The oldest ready row was written 30 s ago (ob-0, at +0 ms).
        self.assertEqual(sample("gateway_outbox_oldest_ready_age_seconds"), 30.0)
        counts = yield self.builder(metrics=metrics).run()
        self.assertEqual((counts["built"], counts["parked"]), (3, 1))
        self.assertEqual((sample("gateway_outbox_depth", {"state": "ready"}),
                          sample("gateway_outbox_depth", {"state": "parked"})), (0, 1))
        self.assertEqual(sample("gateway_outbox_oldest_ready_age_seconds"), 0.0)


class SQLiteTraceBuilderTests(TraceBuilderTests, BatchTests, unittest.TestCase):
    engine = "sqlite"


class PostgresTraceBuilderTests(TraceBuilderTests, BatchTests, unittest.TestCase):
    engine = "postgresql"

    @inlineCallbacks
    def test_a_trace_and_its_checkpoint_committed_at_once_are_linked_by_the_next_run(self):
        """Two transactions on two connections: A stores the trace (its link finds no
        checkpoint), B stores the checkpoint (its link cannot see A's uncommitted trace),
        both commit: neither linked. A's batch says which link it missed, and the store
        makes it."""
        import psycopg2

        from mnemomd.storage.database import Cursor
        from mnemomd.storage.traces import TraceRecord
        from mnemomd.storage.traces import _finish as finish_batch

        a, b = (psycopg2.connect(self.url) for _ in range(2))
        self.addCleanup(lambda: [c.close() for c in (a, b)])
        trace = TraceRecord("tr-race", self.agent_id, "s1", "ic-race", "ob-race",
                            {"trace_id": "tr-race"}, None, None, NOW)
        row = OutboxRow("ob-race", self.agent_id, "s1", "anthropic", None, "ic-race",
                        "x", 0, NOW, NOW + 60_000)
        result = finish_batch(Cursor(a.cursor(), "postgresql"), "me", [(row, trace)], [])
        self.assertEqual(result.unlinked, {("ic-race", "tr-race")})
        record = CheckpointRecord(
            id="ic-race", agent_id=self.agent_id, session_id="s1", provider="anthropic",
            model=None, verdict="clear", concerns=[], reasoning_summary=None,
            conscience_context=None, window_position=None, analysis_metadata=None,
            thinking_block_hash=None, synthetic=False, synthetic_reason=None,
            created_at=NOW)
        write_checkpoints(Cursor(b.cursor(), "postgresql"), [checkpoint_write(record)])
        b.commit()
        a.commit()
        store = CheckpointStore(self.db)
        self.assertIsNone((yield store.get("ic-race")).trace_id)
        self.assertEqual((yield self.outbox.link(sorted(result.unlinked))), {"ic-race"})
        self.assertEqual((yield store.get("ic-race")).trace_id, "tr-race")
