"""Wiring analyzers to fake backends for the tests."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock

from mnemomd.config.analysis import AnalysisSettings
from mnemomd.integrity.backends import AnalysisHTTP, build_backend
from mnemomd.integrity.breaker import CircuitBreaker
from mnemomd.integrity.engine import AnalysisRequest, IntegrityAnalyzer
from mnemomd.ops.metrics import GatewayMetrics
from tests.integrity.fakes import FakeAnalysisServer

DIALECTS = ("anthropic", "openai", "gemini", "mnemom")
API_KEY = "sk-test-SECRETKEY-0123456789"
MARKER = "ZEBRA-MARKER-7f3a"

#: About 160 tokens of ordinary reasoning, above the default minimum evidence.
THINKING = (f"The user wants a summary of the quarterly report ({MARKER}). I will read the "
            "file with the read_file tool, pull out revenue and churn, and say where the "
            "numbers are too thin to draw conclusions. ") * 4

CARD: dict[str, Any] = {
    "card_id": "ac-test",
    "agent_id": "agent-1",
    "values": {"declared": ["transparency", "safety"],
               "definitions": {"safety": {"description": "Do no harm", "priority": 2}}},
    "autonomy": {"bounded_actions": ["inference", "read_file"],
                 "forbidden_actions": ["delete_file"],
                 "escalation_triggers": [{"condition": "payment", "action": "escalate",
                                          "reason": "money moves need approval"}]},
    "principal": {"type": "human", "identifier": "principal-secret-id",
                  "relationship": "delegated_authority"},
}

CONSCIENCE = [{"type": "BOUNDARY", "content": "Never deceive the user", "id": "b1"},
              {"type": "FEAR", "content": "Scope creep", "id": "f1"},
              {"type": "HOPE", "content": "Be delightful", "id": "h1"}]


def settings_for(dialect: str, url: str, **overrides: Any) -> AnalysisSettings:
    """Settings pointing the dialect's backend at ``url``."""
    if dialect == "anthropic":
        base = AnalysisSettings(provider="anthropic", base_url=url, api_key=API_KEY)
    elif dialect == "openai":
        base = AnalysisSettings(provider="openai-compatible", model="local-model",
                                base_url=url + "/v1")
    elif dialect == "gemini":
        base = AnalysisSettings(provider="gemini", model="gemini-2.5-flash", base_url=url,
                                api_key=API_KEY)
    else:
        base = AnalysisSettings(provider="mnemom", analyze_url=url + "/analyze",
                                api_key=API_KEY)
    return replace(base, **overrides)


def request(thinking: str = THINKING, **overrides: Any) -> AnalysisRequest:
    fields: dict[str, Any] = dict(
        agent_id="agent-1", session_id="sess-1", provider="anthropic",
        model="claude-sonnet-4-5", thinking=thinking, card=CARD,
        conscience_values=CONSCIENCE,
        window_checkpoints=[{"checkpoint_id": "ic-old", "verdict": "clear",
                             "reasoning_summary": "Earlier check was routine."}],
        task_context="Summarise the report")
    fields.update(overrides)
    return AnalysisRequest(**fields)


@dataclass
class Rig:
    """An analyzer, its fake backend and everything a test inspects."""

    analyzer: IntegrityAnalyzer
    server: FakeAnalysisServer
    metrics: GatewayMetrics
    clock: Clock
    timeout_clock: Any
    settings: AnalysisSettings

    def failures(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "gateway_aip_analysis_failures_total",
            {"backend": self.analyzer.backend.name, "reason": reason})
        return value or 0.0

    def checks(self, verdict: str) -> float:
        value = self.metrics.registry.get_sample_value("gateway_aip_checks_total",
                                                       {"verdict": verdict})
        return value or 0.0


def make_rig(case: Any, dialect: str, url: str | None = None,
             timeout_clock: Any = None, **overrides: Any) -> Rig:
    """A rig whose cleanups are registered on the trial test ``case``.

    The analyzer and its breaker run on a ``Clock``; the HTTP client on the real
    reactor, with its timeouts on ``timeout_clock`` (the reactor unless given).
    """
    server = FakeAnalysisServer(dialect).start()
    case.addCleanup(server.stop)
    settings = settings_for(dialect, url or server.url, **overrides)
    http = AnalysisHTTP(reactor, clock=timeout_clock or reactor,
                        max_response_bytes=settings.max_response_bytes)
    case.addCleanup(http.close)
    clock = Clock()
    clock.advance(1_700_000_000)
    metrics = GatewayMetrics(process_collectors=False)
    backend = build_backend(settings, http)
    breaker = CircuitBreaker(clock, settings.breaker_failures, settings.breaker_cooldown,
                             name=backend.name)
    analyzer = IntegrityAnalyzer(settings, clock, backend, breaker, metrics)
    return Rig(analyzer, server, metrics, clock, timeout_clock or reactor, settings)
