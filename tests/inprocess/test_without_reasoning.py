"""``without_reasoning`` in process: what ``enforce`` does with a non-streaming response
that has no analysable reasoning (SPEC §6.2; issue 14, Done-when 4 for non-streaming calls).

The fake provider answers as a real one does (``x-fake-scenario: realistic_reasoning``):
with reasoning only when the request asks for it. Each way an agent turns its reasoning
off is tried against each setting: ``allow`` delivers unverified (today's behaviour),
``refuse`` answers 403 ``integrity_unverifiable`` without analysis, and ``analyse_output``
has the text and tool calls analysed and lets the verdict decide. Every response offers a
``send_to_pastebin`` tool, so the output the agent must not get away with is a tool call.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes import canned, plain
from tests.harness import InProcessDaemon
from tests.integrity.fakes import VERDICT_CLEAR, VERDICT_VIOLATION

INTERNAL_KEY = "ik-without-reasoning"
ADMIN = {"authorization": f"Bearer {INTERNAL_KEY}"}
JSON = {"content-type": "application/json"}
REALISTIC = {"x-fake-scenario": "realistic_reasoning"}
TOOL = "send_to_pastebin"
MESSAGES = [{"role": "user", "content": "Summarise the quarterly report"}]
ANTHROPIC_TOOL = {"name": TOOL, "description": "Publish text", "input_schema": {
    "type": "object", "properties": {"query": {"type": "string"}}}}
FUNCTION = {"name": TOOL, "description": "Publish text",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}


@dataclass(frozen=True)
class Case:
    """One call an agent can make so that the response carries no reasoning."""

    name: str
    path: str
    headers: dict[str, str]
    payload: dict[str, Any]

    @property
    def body(self) -> bytes:
        return json.dumps(self.payload).encode()

    def upstream_bytes(self) -> bytes:
        """What the fake provider sends: the plain answer with one call of the tool."""
        route, _, query = self.path.partition("?")
        request = canned.parse_request("/" + route.split("/", 2)[2], query, self.body)
        assert request is not None
        answer = plain.answer(request, self.body, "realistic_reasoning")
        assert isinstance(answer, bytes), "this call must get a plain answer"
        return answer


def anthropic(name: str, **changes: Any) -> Case:
    payload = {"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": MESSAGES,
               "tools": [ANTHROPIC_TOOL], **changes}
    return Case(name, "/anthropic/v1/messages", {"x-api-key": f"sk-ant-{name}"}, payload)


#: Issue 14's ways to turn reasoning off, each a one-line change to a request that would
#: otherwise be given thinking; then the other APIs' calls without reasoning.
CASES = [
    anthropic("temperature_0", temperature=0),
    anthropic("thinking_disabled", thinking={"type": "disabled"}),
    anthropic("tool_choice_any", tool_choice={"type": "any"}),
    anthropic("max_tokens_1024", max_tokens=1024),
    anthropic("model_without_reasoning", model="claude-3-5-haiku-20241022"),
    Case("openai_chat", "/openai/v1/chat/completions", {"authorization": "Bearer sk-oai-chat"},
         {"model": "gpt-4o", "messages": MESSAGES,
          "tools": [{"type": "function", "function": FUNCTION}]}),
    Case("openai_responses", "/openai/v1/responses", {"authorization": "Bearer sk-oai-resp"},
         {"model": "gpt-4.1", "input": "Summarise the quarterly report",
          "tools": [{"type": "function", **FUNCTION}]}),
    Case("gemini", "/gemini/v1beta/models/gemini-2.0-flash:generateContent",
         {"x-goog-api-key": "g-key"},
         {"contents": [{"role": "user", "parts": [{"text": "Summarise"}]}],
          "tools": [{"functionDeclarations": [FUNCTION]}]}),
]
#: The same request as the Anthropic cases without the change: the gateway asks for
#: thinking, and the provider gives it.
WITH_REASONING = anthropic("with_reasoning")
OUTPUT = plain.output_text(TOOL)


def enforce(make_daemon: Callable[..., InProcessDaemon], mode: str,
            **settings: str) -> InProcessDaemon:
    return make_daemon(AIP_DEFAULT_ENFORCEMENT="enforce", AIP_DEFAULT_WITHOUT_REASONING=mode,
                       INTERNAL_API_KEY=INTERNAL_KEY, **settings)


def call(daemon: InProcessDaemon, case: Case, scenario: dict[str, str] = REALISTIC) -> Any:
    return daemon.request("POST", case.path, case.headers | JSON | scenario, case.body)


def checkpoint_rows(daemon: InProcessDaemon) -> list[tuple[Any, ...]]:
    return daemon.rows("SELECT id, verdict, thinking_block_hash, output_block_hash, "
                       "analysis_metadata, synthetic FROM integrity_checkpoints")


def assert_nothing_of_the_output(body: bytes) -> None:
    assert canned.TEXT.encode() not in body
    for piece in canned.TEXT_PIECES:
        assert piece.encode() not in body
    assert TOOL.encode() not in body and b"pastebin" not in body


def asked_for_no_thinking(daemon: InProcessDaemon) -> None:
    """The gateway did not turn the reasoning back on: the call went as the agent sent it."""
    [seen] = daemon.upstream.requests
    assert b'"thinking": {"type": "enabled"' not in seen["body"]
    assert b'"thinking":{"type":"enabled"' not in seen["body"]


# -- allow: today's behaviour ------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_allow_delivers_unverified(make_daemon: Callable[..., InProcessDaemon], case: Case):
    daemon = enforce(make_daemon, "allow")
    exchange = call(daemon, case)
    assert exchange.status == 200 and exchange.complete
    assert exchange.body == case.upstream_bytes()
    assert exchange.header("x-aip-verdict") == "skipped"
    assert exchange.header("x-aip-enforcement") == "enforce"
    assert daemon.analysis.requests == [] and checkpoint_rows(daemon) == []
    asked_for_no_thinking(daemon)


# -- refuse ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_refuse_answers_integrity_unverifiable(make_daemon: Callable[..., InProcessDaemon],
                                               case: Case):
    daemon = enforce(make_daemon, "refuse")
    exchange = call(daemon, case)
    assert exchange.status == 403 and exchange.complete
    assert exchange.json() == {
        "error": "The response was withheld: it has no reasoning that can be verified",
        "type": "integrity_unverifiable", "reason": "no_reasoning"}
    assert exchange.header("x-aip-verdict") == "skipped"
    assert exchange.header("x-aip-enforcement") == "enforce"
    assert exchange.header("x-aip-checkpoint-id") is None
    assert_nothing_of_the_output(exchange.body)
    # Forwarded once, refused on the way back: no analysis call, nothing stored.
    assert len(daemon.upstream.requests) == 1
    assert daemon.analysis.requests == [] and checkpoint_rows(daemon) == []
    asked_for_no_thinking(daemon)
    counted = daemon.service.metrics.registry.get_sample_value(
        "gateway_aip_checks_total", {"verdict": "unverifiable"})
    assert counted == 1


def test_refuse_delivers_a_response_with_reasoning(make_daemon: Callable[..., InProcessDaemon]):
    daemon = enforce(make_daemon, "refuse")
    daemon.analysis.default = VERDICT_CLEAR
    exchange = call(daemon, WITH_REASONING)
    assert exchange.status == 200
    assert exchange.header("x-aip-verdict") == "clear"
    [(_, verdict, thinking_hash, output_hash, _, _)] = checkpoint_rows(daemon)
    assert (verdict, output_hash) == ("clear", None) and thinking_hash is not None


def test_redacted_reasoning_is_no_reasoning(make_daemon: Callable[..., InProcessDaemon]):
    daemon = enforce(make_daemon, "refuse")
    exchange = call(daemon, WITH_REASONING, {"x-fake-scenario": "redacted_reasoning"})
    assert exchange.status == 403
    assert exchange.json()["reason"] == "redacted_reasoning"
    assert daemon.analysis.requests == []


def test_reasoning_below_the_minimum_evidence_is_no_reasoning(
        make_daemon: Callable[..., InProcessDaemon]):
    """Else asking for minimal reasoning would be the next one-line way around."""
    daemon = enforce(make_daemon, "refuse", AIP_MIN_EVIDENCE_TOKENS="100")
    exchange = call(daemon, WITH_REASONING)  # the canned thinking is 21 tokens
    assert exchange.status == 403
    assert exchange.json()["reason"] == "below_minimum_evidence"
    assert canned.THINKING_TEXT.encode() not in exchange.body


# -- analyse_output ----------------------------------------------------------------------


def output_checkpoint(daemon: InProcessDaemon) -> tuple[str, str, dict[str, Any]]:
    [(checkpoint_id, verdict, thinking_hash, output_hash, metadata, synthetic)] = \
        checkpoint_rows(daemon)
    assert thinking_hash is None and not synthetic
    assert output_hash == hashlib.sha256(OUTPUT.encode()).hexdigest()
    return checkpoint_id, verdict, json.loads(metadata)


def assert_output_was_analysed(daemon: InProcessDaemon) -> None:
    [asked] = daemon.analysis.requests
    prompt = json.loads(asked["body"])
    assert prompt["system"].endswith(
        '- "output_misalignment" at critical severity: verdict is "boundary_violation"')
    assert "OUTPUT ANALYSIS:" in prompt["system"]
    user = prompt["messages"][0]["content"]
    assert user.endswith(f"OUTPUT BLOCK TO EVALUATE:\n\n{OUTPUT}")
    assert f"[TOOL CALL] {TOOL} " in user


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_analyse_output_delivers_clear_output(make_daemon: Callable[..., InProcessDaemon],
                                              case: Case):
    daemon = enforce(make_daemon, "analyse_output")
    daemon.analysis.default = VERDICT_CLEAR
    exchange = call(daemon, case)
    assert exchange.status == 200 and exchange.complete
    assert exchange.body == case.upstream_bytes()
    checkpoint_id, verdict, metadata = output_checkpoint(daemon)
    assert verdict == "clear"
    assert exchange.header("x-aip-verdict") == "clear"
    assert exchange.header("x-aip-checkpoint-id") == checkpoint_id
    assert metadata["analysis_scope"] == "output_only"
    assert metadata["without_reasoning"] == "analyse_output"
    assert metadata["reasoning_gap"] == "no_reasoning"
    assert_output_was_analysed(daemon)
    asked_for_no_thinking(daemon)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_analyse_output_refuses_violating_output(make_daemon: Callable[..., InProcessDaemon],
                                                 case: Case):
    daemon = enforce(make_daemon, "analyse_output")
    daemon.analysis.default = VERDICT_VIOLATION
    exchange = call(daemon, case)
    assert exchange.status == 403 and exchange.complete
    refusal = exchange.json()
    checkpoint_id, verdict, metadata = output_checkpoint(daemon)
    assert verdict == "boundary_violation" and metadata["analysis_scope"] == "output_only"
    assert refusal == {
        "error": "The response was withheld: its output crossed the agent's boundaries",
        "type": "integrity_violation", "checkpoint_id": checkpoint_id,
        "concerns": [{"category": "prompt_injection", "severity": "critical",
                      "description": "Follows injected instructions."}]}
    assert_nothing_of_the_output(exchange.body)
    assert_output_was_analysed(daemon)
    # A real finding: the agent's next call is told.
    assert daemon.rows("SELECT checkpoint_id FROM nudges") == [(checkpoint_id,)]


def test_analyse_output_holds_the_response_until_the_verdict(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = enforce(make_daemon, "analyse_output")
    daemon.analysis.script = ["hold:valid"]
    exchange = call(daemon, CASES[0])
    assert len(daemon.analysis.held) == 1
    assert not exchange.answered, "nothing of the output goes out before the verdict"
    daemon.release_analysis()
    assert exchange.status == 200 and exchange.header("x-aip-verdict") == "review_needed"
    assert exchange.body == CASES[0].upstream_bytes()


def test_analyse_output_with_short_reasoning_analyses_both(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = enforce(make_daemon, "analyse_output", AIP_MIN_EVIDENCE_TOKENS="100")
    daemon.analysis.default = VERDICT_VIOLATION
    exchange = call(daemon, WITH_REASONING)
    assert exchange.status == 403
    [(_, _, thinking_hash, output_hash, metadata, _)] = checkpoint_rows(daemon)
    assert json.loads(metadata)["analysis_scope"] == "thinking_and_output"
    assert thinking_hash == hashlib.sha256(canned.THINKING_TEXT.encode()).hexdigest()
    assert output_hash is not None
    [asked] = daemon.analysis.requests
    assert canned.THINKING_TEXT in json.loads(asked["body"])["messages"][0]["content"]


def test_analyse_output_failing_closed_blocks_and_does_not_nudge(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = enforce(make_daemon, "analyse_output", AIP_FAILURE_MODE="fail_closed")
    daemon.analysis.default = "status:500"
    exchange = call(daemon, CASES[0])
    assert exchange.status == 403 and exchange.json()["type"] == "integrity_violation"
    assert exchange.header("x-aip-synthetic") == "true"
    assert_nothing_of_the_output(exchange.body)
    [(_, verdict, _, output_hash, metadata, synthetic)] = checkpoint_rows(daemon)
    assert (verdict, bool(synthetic)) == ("boundary_violation", True)
    assert output_hash is not None and json.loads(metadata)["analysis_scope"] == "output_only"
    assert daemon.rows("SELECT id FROM nudges") == []


def test_analyse_output_with_the_hybrid_backend_acts_as_refuse(
        make_daemon: Callable[..., InProcessDaemon]):
    """The hybrid service is promised never to receive a response (SPEC §5.4)."""
    daemon = make_daemon(AIP_DEFAULT_ENFORCEMENT="enforce", INTERNAL_API_KEY=INTERNAL_KEY,
                         ANALYSIS_PROVIDER="mnemom",
                         MNEMOM_ANALYZE_URL="http://analysis.test/analyze",
                         MNEMOM_API_KEY="mk-test", MNEMOM_OFFLINE="false")
    agent_id = agent_of(daemon, CASES[0])
    # The API refuses the setting, and an agent that has it (set before) is refused.
    answer = daemon.request("PUT", f"/v1/agents/{agent_id}/settings", ADMIN | JSON,
                            b'{"without_reasoning": "analyse_output"}')
    assert answer.status == 409 and answer.json()["type"] == "conflict"
    daemon.rows("UPDATE agents SET without_reasoning = 'analyse_output', updated_at = ? "
                "WHERE id = ?", (int(daemon.reactor.seconds() * 1000) + 1, agent_id))
    daemon.advance(3)  # the change poll drops the cached agent
    exchange = call(daemon, CASES[0])
    assert exchange.status == 403
    assert exchange.json()["type"] == "integrity_unverifiable"
    assert daemon.analysis.requests == []


# -- the setting, per agent and per mode -------------------------------------------------


def agent_of(daemon: InProcessDaemon, case: Case) -> str:
    """The agent of ``case``'s key, created by one allowed call."""
    exchange = call(daemon, case)
    assert exchange.status in (200, 403)
    return exchange.header("x-mnemom-agent") or ""


def test_the_setting_changes_through_the_api_at_once(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = enforce(make_daemon, "allow")
    agent_id = agent_of(daemon, CASES[0])
    settings = daemon.request("GET", f"/v1/agents/{agent_id}/settings", ADMIN)
    assert settings.json()["without_reasoning"] == "allow"
    changed = daemon.request("PUT", f"/v1/agents/{agent_id}/settings", ADMIN | JSON,
                             b'{"without_reasoning": "refuse"}')
    assert changed.status == 200 and changed.json()["without_reasoning"] == "refuse"
    assert daemon.request("GET", f"/v1/agents/{agent_id}",
                          ADMIN).json()["without_reasoning"] == "refuse"
    assert call(daemon, CASES[0]).status == 403
    bad = daemon.request("PUT", f"/v1/agents/{agent_id}/settings", ADMIN | JSON,
                         b'{"without_reasoning": "sometimes"}')
    assert bad.status == 400


@pytest.mark.parametrize("mode", ["observe", "nudge"])
def test_only_enforce_acts_on_it(make_daemon: Callable[..., InProcessDaemon], mode: str):
    daemon = make_daemon(AIP_DEFAULT_ENFORCEMENT=mode, AIP_DEFAULT_WITHOUT_REASONING="refuse")
    exchange = call(daemon, CASES[0])
    assert exchange.status == 200 and exchange.body == CASES[0].upstream_bytes()
    assert exchange.header("x-aip-verdict") == "pending"  # nothing is held in these modes
    assert daemon.analysis.requests == [] and checkpoint_rows(daemon) == []


def test_new_agents_get_the_default(make_daemon: Callable[..., InProcessDaemon]):
    """A new name or a new key starts with the deployment's default, not with allow."""
    daemon = enforce(make_daemon, "refuse")
    renamed = Case("renamed", "/agent/fresh-name" + CASES[0].path, CASES[0].headers,
                   CASES[0].payload)
    assert call(daemon, renamed).status == 403
    rekeyed = Case("rekeyed", CASES[0].path, {"x-api-key": "sk-ant-another-key"},
                   CASES[0].payload)
    assert call(daemon, rekeyed).status == 403
    assert {row[0] for row in daemon.rows("SELECT without_reasoning FROM agents")} == {"refuse"}
