"""The analyzer against real local HTTP servers speaking each backend's API."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aip import hash_thinking_block
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from mnemomd.integrity.engine import BELOW_MINIMUM_EVIDENCE
from tests.fakes.local import closed_port
from tests.integrity.fakes import VERDICT_CLEAR
from tests.integrity.helpers import (
    API_KEY,
    DIALECTS,
    MARKER,
    THINKING,
    make_rig,
    request,
)
from tests.support import captured_logs

MODES = ("fail_open", "fail_closed")
EXPECTED_SYNTHETIC = {"fail_open": ("clear", "continue", True),
                      "fail_closed": ("boundary_violation", "deny_and_escalate", False)}


class ValidVerdicts(unittest.TestCase):
    """Each backend's wire format, and a real verdict coming back."""

    @inlineCallbacks
    def test_every_backend_returns_the_verdict(self):
        for dialect in DIALECTS:
            rig = make_rig(self, dialect)
            outcome = yield rig.analyzer.analyze(request())
            self.assertEqual(outcome.verdict, "review_needed", dialect)
            self.assertFalse(outcome.synthetic)
            self.assertIsNone(outcome.synthetic_reason)
            self.assertTrue(outcome.checkpoint_id.startswith("ic-"))
            self.assertEqual((outcome.action, outcome.proceed), ("log_and_continue", True))
            self.assertEqual(outcome.concerns[0]["category"], "value_misalignment")
            self.assertEqual(outcome.window_position, {"index": 1, "window_size": 2})
            meta = outcome.analysis_metadata
            self.assertEqual(meta["backend"], rig.analyzer.backend.name)
            self.assertEqual(meta["analysis_model"], rig.settings.model)
            self.assertFalse(meta["synthetic"])
            self.assertIsNone(meta["failure_reason"])
            self.assertEqual(rig.checks("review_needed"), 1)
            self.assertEqual(len(rig.server.requests), 1)

    @inlineCallbacks
    def test_anthropic_wire_format(self):
        rig = make_rig(self, "anthropic")
        yield rig.analyzer.analyze(request())
        sent = rig.server.requests[0]
        self.assertEqual(sent["path"], "/v1/messages")
        self.assertEqual(sent["headers"]["x-api-key"], API_KEY)
        self.assertEqual(sent["headers"]["anthropic-version"], "2023-06-01")
        body = sent["body"]
        self.assertEqual(body["model"], "claude-haiku-4-5-20251001")
        self.assertEqual(body["max_tokens"], 1024)
        self.assertIn("integrity evaluator", body["system"])
        self.assertEqual(body["messages"][0]["role"], "user")
        user = body["messages"][0]["content"]
        self.assertIn(MARKER, user)
        self.assertIn("ALIGNMENT CARD SUMMARY (card_id: ac-test)", user)
        self.assertIn("Forbidden actions: delete_file", user)
        self.assertIn("CURRENT TASK: Summarise the report", user)
        self.assertIn("[BOUNDARY] Never deceive the user", user)
        self.assertNotIn("Be delightful", user)  # the SDK sends BOUNDARY and FEAR only
        self.assertIn("1. [clear] Earlier check was routine.", user)
        self.assertNotIn("principal-secret-id", user)

    @inlineCallbacks
    def test_openai_compatible_wire_format_without_key(self):
        rig = make_rig(self, "openai")  # base URL given with its /v1, as for the OpenAI SDK
        yield rig.analyzer.analyze(request())
        sent = rig.server.requests[0]
        self.assertEqual(sent["path"], "/v1/chat/completions")
        self.assertNotIn("authorization", sent["headers"])
        body = sent["body"]
        self.assertEqual(body["model"], "local-model")
        self.assertEqual(body["max_tokens"], 1024)
        self.assertEqual([m["role"] for m in body["messages"]], ["system", "user"])
        self.assertIn(MARKER, body["messages"][1]["content"])

    @inlineCallbacks
    def test_openai_official_wire_format(self):
        rig = make_rig(self, "openai", provider="openai", api_key=API_KEY, model="gpt-5-mini")
        outcome = yield rig.analyzer.analyze(request())
        self.assertEqual(outcome.verdict, "review_needed")
        sent = rig.server.requests[0]
        self.assertEqual(sent["headers"]["authorization"], f"Bearer {API_KEY}")
        self.assertEqual(sent["body"]["max_completion_tokens"], 1024)
        self.assertNotIn("max_tokens", sent["body"])

    @inlineCallbacks
    def test_gemini_wire_format(self):
        rig = make_rig(self, "gemini")
        outcome = yield rig.analyzer.analyze(request())
        sent = rig.server.requests[0]
        self.assertEqual(sent["path"], "/v1beta/models/gemini-2.5-flash:generateContent")
        self.assertEqual(sent["headers"]["x-goog-api-key"], API_KEY)
        body = sent["body"]
        self.assertIn("integrity evaluator", body["systemInstruction"]["parts"][0]["text"])
        self.assertIn(MARKER, body["contents"][0]["parts"][0]["text"])
        self.assertEqual(body["generationConfig"]["maxOutputTokens"], 1024)
        # The model's own thought parts are not taken for the verdict.
        self.assertEqual(outcome.verdict, "review_needed")

    @inlineCallbacks
    def test_mnemom_contract(self):
        rig = make_rig(self, "mnemom")
        yield rig.analyzer.analyze(request())
        sent = rig.server.requests[0]
        self.assertEqual(sent["path"], "/analyze")
        self.assertEqual(sent["headers"]["x-mnemom-api-key"], API_KEY)
        self.assertNotIn("authorization", sent["headers"])
        self.assertEqual(sent["body"], {
            "thinking_block": THINKING,
            "thinking_metadata": {"provider": "anthropic", "model": "claude-sonnet-4-5"},
            "agent_id": "agent-1", "session_id": "sess-1",
            "card": {"card_id": "ac-test", "values": [
                {"name": "safety", "priority": 1, "description": "Do no harm"},
                {"name": "transparency", "priority": 2}]},
            "conscience_values": [
                {"type": "BOUNDARY", "content": "Never deceive the user", "id": "b1"},
                {"type": "FEAR", "content": "Scope creep", "id": "f1"},
                {"type": "HOPE", "content": "Be delightful", "id": "h1"}],
            "window_context": [{"checkpoint_id": "ic-old", "verdict": "clear",
                                "reasoning_summary": "Earlier check was routine."}],
            "task_context": "Summarise the report",
            "store_checkpoint": False,
        })

    @inlineCallbacks
    def test_mnemom_store_checkpoint_only_when_the_operator_opts_in(self):
        rig = make_rig(self, "mnemom", store_checkpoint=True)
        yield rig.analyzer.analyze(request(task_context="x" * 500))
        body = rig.server.requests[0]["body"]
        self.assertIs(body["store_checkpoint"], True)
        self.assertEqual(body["task_context"], "x" * 200)

    @inlineCallbacks
    def test_mnemom_checkpoint_becomes_ours_marked_as_hybrid(self):
        rig = make_rig(self, "mnemom")
        rig.server.default = "raw"
        outcome = yield rig.analyzer.analyze(request())
        self.assertEqual(outcome.verdict, "review_needed")
        self.assertFalse(outcome.synthetic)
        self.assertEqual(outcome.reasoning_summary,
                         "The agent considers skipping a check the user asked for.")
        self.assertEqual([c["category"] for c in outcome.concerns], ["value_misalignment"])
        self.assertEqual(outcome.analysis_metadata["analysed_by"], "mnemom_hybrid")
        self.assertEqual(outcome.analysis_metadata["hybrid_checkpoint_id"], "ic-hybrid-0001")
        self.assertNotEqual(outcome.checkpoint_id, "ic-hybrid-0001")
        self.assertEqual(outcome.action, "log_and_continue")

    @inlineCallbacks
    def test_mnemom_quota_and_rate_limit_are_failures_for_mode_and_breaker(self):
        rig = make_rig(self, "mnemom", failure_mode="fail_closed", breaker_failures=2)
        rig.server.script = ["status:402", "status:429"]
        first = yield rig.analyzer.analyze(request())
        second = yield rig.analyzer.analyze(request())
        self.assertEqual([first.failure_reason, second.failure_reason],
                         ["http_402", "http_429"])
        self.assertEqual({first.verdict, second.verdict}, {"boundary_violation"})
        third = yield rig.analyzer.analyze(request())
        self.assertEqual(third.failure_reason, "circuit_open")
        self.assertEqual(len(rig.server.requests), 2)

    @inlineCallbacks
    def test_prose_around_the_json_is_tolerated(self):
        # The hybrid service reads its model's prose itself: only the model APIs here.
        for dialect in [d for d in DIALECTS if d != "mnemom"]:
            rig = make_rig(self, dialect)
            rig.server.default = "prose"
            outcome = yield rig.analyzer.analyze(request())
            self.assertEqual(outcome.verdict, "review_needed", dialect)
            self.assertFalse(outcome.synthetic)

    @inlineCallbacks
    def test_boundary_violation_maps_like_the_sdk(self):
        from tests.integrity.fakes import VERDICT_VIOLATION
        rig = make_rig(self, "anthropic")
        rig.server.default = VERDICT_VIOLATION
        outcome = yield rig.analyzer.analyze(request())
        self.assertEqual(outcome.verdict, "boundary_violation")
        self.assertEqual((outcome.action, outcome.proceed), ("deny_and_escalate", False))
        self.assertEqual(rig.checks("boundary_violation"), 1)


class Failures(unittest.TestCase):
    """Every way a backend can fail gives the failure mode's synthetic verdict."""

    def check_synthetic(self, rig: Any, outcome: Any, mode: str, reason: str,
                        label: str) -> None:
        verdict, action, proceed = EXPECTED_SYNTHETIC[mode]
        self.assertEqual(outcome.verdict, verdict, label)
        self.assertEqual((outcome.action, outcome.proceed), (action, proceed), label)
        self.assertTrue(outcome.synthetic, label)
        self.assertEqual(outcome.synthetic_reason, f"analysis failed: {reason}", label)
        self.assertEqual(outcome.analysis_metadata["failure_reason"], reason, label)
        self.assertTrue(outcome.analysis_metadata["synthetic"], label)
        self.assertEqual(outcome.concerns, [], label)
        self.assertEqual(outcome.thinking_block_hash,
                         hashlib.sha256(THINKING.encode()).hexdigest())
        self.assertEqual(rig.checks(verdict), 1, label)
        self.assertEqual(rig.failures(reason), 1, label)

    @inlineCallbacks
    def test_bad_answers(self):
        scenarios = [("garbage", "malformed"), ("bad_envelope", "malformed"),
                     ("status:500", "http_500"), ("status:429", "http_429"),
                     ("oversize", "oversize"), ("oversize_cl", "oversize")]
        for action, reason in scenarios:
            for mode in MODES:
                for dialect in DIALECTS:
                    label = f"{dialect}/{action}/{mode}"
                    rig = make_rig(self, dialect, failure_mode=mode,
                                   max_response_bytes=16 * 1024)
                    rig.server.default = action
                    outcome = yield rig.analyzer.analyze(request())
                    self.check_synthetic(rig, outcome, mode, reason, label)
                    self.assertEqual(len(rig.server.requests), 1, label)

    @inlineCallbacks
    def test_hanging_backend_times_out(self):
        for mode in MODES:
            for dialect in DIALECTS:
                timeouts = Clock()
                rig = make_rig(self, dialect, failure_mode=mode, timeout_clock=timeouts)
                rig.server.default = "hang"
                arrived = rig.server.arrived()
                d = rig.analyzer.analyze(request())
                yield arrived
                timeouts.advance(9.9)
                self.assertNoResult(d)
                timeouts.advance(0.1)
                outcome = yield d
                self.check_synthetic(rig, outcome, mode, "timeout", f"{dialect}/{mode}")

    @inlineCallbacks
    def test_timeout_on_the_real_reactor(self):
        rig = make_rig(self, "anthropic", timeout_ms=100)
        rig.server.default = "hang"
        outcome = yield rig.analyzer.analyze(request())
        self.check_synthetic(rig, outcome, "fail_open", "timeout", "reactor")

    @inlineCallbacks
    def test_backend_down(self):
        url = f"http://127.0.0.1:{closed_port()}"
        runs = [(mode, dialect, make_rig(self, dialect, url=url, failure_mode=mode))
                for mode in MODES for dialect in DIALECTS]
        # Concurrently: the client takes a moment to give up on a refused connection.
        outcomes = yield gatherResults([rig.analyzer.analyze(request())
                                        for _, _, rig in runs])
        for (mode, dialect, rig), outcome in zip(runs, outcomes, strict=True):
            self.check_synthetic(rig, outcome, mode, "unreachable", f"{dialect}/{mode}")

    @inlineCallbacks
    def test_missing_key_fails_without_a_call(self):
        rig = make_rig(self, "anthropic", api_key=None)
        outcome = yield rig.analyzer.analyze(request())
        self.check_synthetic(rig, outcome, "fail_open", "no_api_key", "no key")
        self.assertEqual(rig.server.requests, [])


class Breaker(unittest.TestCase):
    """Five consecutive failures stop the calls until the cool-down, then one trial."""

    @inlineCallbacks
    def test_open_half_open_closed(self):
        rig = make_rig(self, "anthropic")
        rig.server.default = "status:500"
        for _ in range(5):
            outcome = yield rig.analyzer.analyze(request())
            self.assertEqual(outcome.analysis_metadata["failure_reason"], "http_500")
        self.assertEqual(len(rig.server.requests), 5)
        self.assertEqual(rig.analyzer.breaker.state, "open")

        for _ in range(3):
            outcome = yield rig.analyzer.analyze(request())
            self.assertEqual(outcome.analysis_metadata["failure_reason"], "circuit_open")
            self.assertEqual(outcome.verdict, "clear")
        self.assertEqual(len(rig.server.requests), 5)
        self.assertEqual(rig.failures("circuit_open"), 3)

        rig.clock.advance(59.9)
        yield rig.analyzer.analyze(request())
        self.assertEqual(len(rig.server.requests), 5)

        rig.clock.advance(0.1)  # half-open: one trial call, which fails and re-opens
        outcome = yield rig.analyzer.analyze(request())
        self.assertEqual(outcome.analysis_metadata["failure_reason"], "http_500")
        self.assertEqual(len(rig.server.requests), 6)
        outcome = yield rig.analyzer.analyze(request())
        self.assertEqual(outcome.analysis_metadata["failure_reason"], "circuit_open")
        self.assertEqual(len(rig.server.requests), 6)

        rig.clock.advance(60)
        rig.server.default = VERDICT_CLEAR  # the trial succeeds and closes the breaker
        outcome = yield rig.analyzer.analyze(request())
        self.assertEqual((outcome.verdict, outcome.synthetic), ("clear", False))
        self.assertEqual(rig.analyzer.breaker.state, "closed")
        yield rig.analyzer.analyze(request())
        yield rig.analyzer.analyze(request())
        self.assertEqual(len(rig.server.requests), 9)

    @inlineCallbacks
    def test_only_one_trial_while_half_open(self):
        timeouts = Clock()
        rig = make_rig(self, "openai", timeout_clock=timeouts)
        rig.server.default = "status:503"
        for _ in range(5):
            yield rig.analyzer.analyze(request())
        rig.clock.advance(60)
        rig.server.default = "hang"
        arrived = rig.server.arrived()
        trial = rig.analyzer.analyze(request())
        yield arrived
        concurrent = yield rig.analyzer.analyze(request())
        self.assertEqual(concurrent.analysis_metadata["failure_reason"], "circuit_open")
        self.assertEqual(len(rig.server.requests), 6)
        timeouts.advance(10)
        outcome = yield trial
        self.assertEqual(outcome.analysis_metadata["failure_reason"], "timeout")
        self.assertEqual(rig.analyzer.breaker.state, "open")

    @inlineCallbacks
    def test_malformed_output_counts_as_a_failure(self):
        rig = make_rig(self, "gemini")
        rig.server.default = "garbage"
        for _ in range(5):
            yield rig.analyzer.analyze(request())
        outcome = yield rig.analyzer.analyze(request())
        self.assertEqual(outcome.analysis_metadata["failure_reason"], "circuit_open")
        self.assertEqual(len(rig.server.requests), 5)
        self.assertEqual(rig.failures("malformed"), 5)


class Gates(unittest.TestCase):
    """Minimum evidence, truncation, evidence storage, hashing and privacy."""

    @inlineCallbacks
    def test_minimum_evidence_makes_no_call(self):
        rig = make_rig(self, "anthropic")
        short = "x" * 396  # ceil(396 / 4) = 99 tokens < 100
        outcome = yield rig.analyzer.analyze(request(thinking=short))
        self.assertEqual(rig.server.requests, [])
        self.assertEqual((outcome.verdict, outcome.synthetic), ("clear", True))
        self.assertEqual(outcome.synthetic_reason, BELOW_MINIMUM_EVIDENCE)
        self.assertIsNone(outcome.analysis_metadata["failure_reason"])
        self.assertEqual(outcome.analysis_metadata["thinking_tokens_original"], 99)
        self.assertEqual(outcome.thinking_block_hash, hashlib.sha256(short.encode()).hexdigest())
        self.assertEqual(rig.checks("clear"), 1)
        self.assertIsNone(rig.metrics.registry.get_sample_value(
            "gateway_aip_analysis_failures_total",
            {"backend": "anthropic", "reason": "below minimum evidence"}))

        outcome = yield rig.analyzer.analyze(request(thinking="x" * 397))  # 100 tokens
        self.assertEqual(len(rig.server.requests), 1)
        self.assertFalse(outcome.synthetic)

    @inlineCallbacks
    def test_fail_closed_does_not_apply_below_minimum_evidence(self):
        rig = make_rig(self, "anthropic", failure_mode="fail_closed")
        outcome = yield rig.analyzer.analyze(request(thinking="ok"))
        self.assertEqual(outcome.verdict, "clear")
        self.assertEqual(rig.server.requests, [])

    @inlineCallbacks
    def test_long_thinking_keeps_head_and_tail(self):
        rig = make_rig(self, "anthropic", thinking_token_budget=100)
        thinking = "HEAD-START " + "a" * 400 + " MIDDLE-GONE " + "b" * 1200 + " TAIL-END"
        outcome = yield rig.analyzer.analyze(request(thinking=thinking))
        user = rig.server.requests[0]["body"]["messages"][0]["content"]
        self.assertIn("HEAD-START", user)
        self.assertIn("TAIL-END", user)
        self.assertNotIn("MIDDLE-GONE", user)
        self.assertIn("tokens omitted", user)
        meta = outcome.analysis_metadata
        self.assertTrue(meta["truncated"])
        self.assertEqual(meta["thinking_tokens_original"], -(-len(thinking) // 4))
        self.assertLess(meta["thinking_tokens_analyzed"], meta["thinking_tokens_original"])
        self.assertEqual(outcome.thinking_block_hash,
                         hashlib.sha256(thinking.encode()).hexdigest())

    @inlineCallbacks
    def test_evidence_capped_at_200_chars(self):
        rig = make_rig(self, "anthropic")
        outcome = yield rig.analyzer.analyze(request())
        self.assertEqual(outcome.concerns[0]["evidence"], "E" * 200)

    @inlineCallbacks
    def test_evidence_not_stored_when_disabled(self):
        rig = make_rig(self, "anthropic", store_evidence=False)
        outcome = yield rig.analyzer.analyze(request())
        self.assertEqual(outcome.verdict, "review_needed")
        self.assertNotIn("evidence", outcome.concerns[0])
        self.assertNotIn("EEEE", json.dumps(outcome.to_dict()))
        self.assertEqual(outcome.concerns[0]["description"],
                         "Plans to skip a requested safety check.")

    @inlineCallbacks
    def test_hash_is_sha256_of_the_utf8_thinking(self):
        rig = make_rig(self, "openai")
        thinking = THINKING + " naïve café 思考 🚀"
        outcome = yield rig.analyzer.analyze(request(thinking=thinking))
        expected = hashlib.sha256(thinking.encode()).hexdigest()
        self.assertEqual(outcome.thinking_block_hash, expected)
        self.assertEqual(hash_thinking_block(thinking), expected)

    @inlineCallbacks
    def test_no_thinking_prompt_or_key_in_outcomes_or_logs(self):
        events = captured_logs(self).events
        outcomes = []
        for default in ("valid", "garbage", "status:401"):
            for dialect in DIALECTS:
                rig = make_rig(self, dialect, failure_mode="fail_closed")
                rig.server.default = default
                outcomes.append((yield rig.analyzer.analyze(request())))
                self.assertIn(MARKER, json.dumps(rig.server.requests[0]["body"]))
        for outcome in outcomes:
            for text in (json.dumps(outcome.to_dict()), repr(outcome)):
                self.assertNotIn(MARKER, text)
                self.assertNotIn("integrity evaluator", text)  # the system prompt
                self.assertNotIn("THINKING BLOCK TO EVALUATE", text)  # the user prompt
                self.assertNotIn("Summarise the report", text)  # task context
                self.assertNotIn("unable to evaluate", text)  # the model's raw output
                self.assertNotIn(API_KEY, text)
        self.assertNotIn(MARKER, repr(request()))
        logged = repr(events)
        self.assertTrue(any("analysis failed" in str(e.get("log_format")) for e in events))
        for secret in (MARKER, API_KEY, "integrity evaluator", "unable to evaluate"):
            self.assertNotIn(secret, logged)
