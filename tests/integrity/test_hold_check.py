"""The pipeline's check at a held stream's hold point: what counts as analysable
reasoning, and what the ``without_reasoning`` policy makes of a response without it."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from mnemomd.agents.identity import Agent
from mnemomd.config import IntegrityConfig
from mnemomd.integrity.pipeline import HoldCheck, IntegrityPipeline, reasoning_gap
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.providers import PROVIDERS
from mnemomd.providers.base import Extraction, RequestInfo

INFO = RequestInfo("openai.chat", "gpt-x", True, None)
AGENT = Agent(agent_hash="0123456789abcdef", agent_id="smolt-01234567", name=None)


def extraction(thinking: str | None, redacted: bool = False) -> Extraction:
    return Extraction(thinking, 1 if thinking else 0, redacted, [], "", None, False)


@pytest.mark.parametrize("thinking, redacted, minimum, gap", [
    (None, False, 0, "no_reasoning"),
    ("   ", False, 0, "no_reasoning"),
    (None, True, 0, "redacted_reasoning"),
    ("short", False, 100, "below_minimum_evidence"),
    ("x" * 400, False, 100, None),
    ("short", True, 1, None),  # readable thinking beside redacted blocks is analysable
])
def test_reasoning_gap(thinking, redacted, minimum, gap):
    assert reasoning_gap(extraction(thinking, redacted), minimum) == gap


def pipeline(policy: Any, output: Any = None) -> tuple[IntegrityPipeline, GatewayMetrics]:
    metrics = GatewayMetrics(process_collectors=False)
    unused: Any = None
    return IntegrityPipeline(IntegrityConfig(), Clock(), unused, unused, unused, unused,
                             unused, metrics, outbox_ttl=600.0, min_evidence_tokens=100,
                             without_reasoning=policy, output_analysis=output), metrics


def check(p: IntegrityPipeline, ex: Extraction) -> HoldCheck:
    results: list[Any] = []
    p.check_at_hold(PROVIDERS["openai"], AGENT, "s", INFO, ex).addBoth(results.append)
    return results[0]


def test_allow_checks_as_today():
    asked: list[tuple[Agent, RequestInfo]] = []
    p, _ = pipeline(lambda agent, info: asked.append((agent, info)) or "allow")
    assert check(p, extraction(None)) == HoldCheck("skipped", None, "allow", "no_reasoning")
    assert asked == [(AGENT, INFO)]


def test_refuse_analyses_nothing_and_counts_unverifiable():
    p, metrics = pipeline(lambda agent, info: "refuse")
    result = check(p, extraction(None, redacted=True))
    assert result == HoldCheck("skipped", None, "refuse", "redacted_reasoning")
    assert metrics.registry.get_sample_value(
        "gateway_aip_checks_total", {"verdict": "unverifiable"}) == 1.0


def test_analyse_output_defers_to_the_end():
    p, _ = pipeline(lambda agent, info: "analyse_output")
    assert check(p, extraction("short")).without_reasoning == "analyse_output"
    results: list[Any] = []
    p.check_output(AGENT, "s", INFO, extraction(None)).addBoth(results.append)
    assert results == [("unverifiable", None)], "without an output analysis: never allowed"


def test_a_failing_policy_refuses():
    def broken(agent: Agent, info: RequestInfo) -> str:
        raise RuntimeError("boom")

    p, _ = pipeline(broken)
    assert check(p, extraction(None)).without_reasoning == "refuse"
