"""The pipeline's check at a held stream's hold point: the agent's ``without_reasoning``
decides what a stream without analysable reasoning gets at its first output event."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock

from mnemomd.agents.identity import Agent
from mnemomd.config import IntegrityConfig
from mnemomd.integrity.pipeline import HoldCheck, IntegrityPipeline, Unverifiable
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.providers import PROVIDERS
from mnemomd.providers.base import Extraction, RequestInfo

INFO = RequestInfo("openai.chat", "gpt-x", True, None)
AGENT = Agent(agent_hash="0123456789abcdef", agent_id="smolt-01234567", name=None,
              enforcement_mode="enforce")


def extraction(thinking: str | None, redacted: bool = False) -> Extraction:
    return Extraction(thinking, 1 if thinking else 0, redacted, [], "", None, False)


def pipeline(output_analysis: bool = True) -> tuple[IntegrityPipeline, GatewayMetrics]:
    metrics = GatewayMetrics(process_collectors=False)
    analyzer: Any = SimpleNamespace(settings=SimpleNamespace(min_evidence_tokens=100))
    unused: Any = None
    return IntegrityPipeline(IntegrityConfig(), Clock(), analyzer, unused, unused, unused,
                             unused, metrics, outbox_ttl=600.0,
                             output_analysis=output_analysis), metrics


def check(p: IntegrityPipeline, agent: Agent, ex: Extraction) -> HoldCheck:
    results: list[Any] = []
    p.check_at_hold(PROVIDERS["openai"], agent, "s", INFO, ex).addBoth(results.append)
    return results[0]


def test_allow_checks_as_today():
    p, _ = pipeline()
    assert check(p, AGENT, extraction(None)) == HoldCheck("skipped", None)


@pytest.mark.parametrize("redacted, gap", [(False, "no_reasoning"),
                                           (True, "redacted_reasoning")])
def test_refuse_analyses_nothing_and_counts_unverifiable(redacted, gap):
    p, metrics = pipeline()
    result = check(p, replace(AGENT, without_reasoning="refuse"), extraction(None, redacted))
    assert result == HoldCheck("unverifiable", Unverifiable(gap), "refuse", gap)
    assert metrics.registry.get_sample_value(
        "gateway_aip_checks_total", {"verdict": "unverifiable"}) == 1.0


def test_analyse_output_defers_to_the_end_even_for_too_little_reasoning():
    p, _ = pipeline()
    result = check(p, replace(AGENT, without_reasoning="analyse_output"), extraction("short"))
    assert (result.without_reasoning, result.gap) == ("analyse_output",
                                                      "below_minimum_evidence")


def test_analyse_output_the_backend_may_not_do_is_refused():
    p, _ = pipeline(output_analysis=False)
    result = check(p, replace(AGENT, without_reasoning="analyse_output"), extraction(None))
    assert result.without_reasoning == "refuse"


def test_observe_never_refuses():
    p, _ = pipeline()
    agent = replace(AGENT, enforcement_mode="observe", without_reasoning="refuse")
    assert check(p, agent, extraction(None)) == HoldCheck("skipped", None)
