"""Adding a provider is one module and a registration: Acme, made up, registered here.

``tests/providers/acme.py`` is the whole provider. Registered into a new registry (the
daemon's ``PROVIDERS`` is never changed), it is routed, identified, described, injected,
extracted, given its settings and used as the analysis backend, with no edit anywhere else.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from mnemomd.config import AnalysisConfig, provider_key_settings, upstream_settings
from mnemomd.config.analysis import AnalysisSettings, from_config, validate, warnings
from mnemomd.http.paths import check_path, split_target
from mnemomd.integrity.engine import build_analyzer
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.providers import PROVIDERS, Extraction, RequestInfo, ToolCall, anthropic
from mnemomd.providers.analysis import AnalysisTarget
from mnemomd.providers.registry import ProviderRegistry
from mnemomd.proxy.routing import ProxyTarget, parse_proxy_target
from tests.fakes.local import LocalServer
from tests.integrity.fakes import VERDICT_REVIEW
from tests.integrity.helpers import MARKER, request
from tests.providers import acme

REGISTRY = PROVIDERS.including(acme.PROVIDER)
BODY = {"model": "acme-large", "system": "Be brief.", "prompt": "Hello", "stream": True}


def route(uri: bytes, providers: ProviderRegistry = REGISTRY) -> ProxyTarget | None:
    path, query = split_target(uri)
    check_path(path)
    return parse_proxy_target(path, query, providers)


def describe(path: bytes = b"/v1/generate", body: Any = BODY) -> RequestInfo:
    return REGISTRY["acme"].describe_request(path, b"", json.dumps(body).encode())


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode())
                    for name, data in events)


# -- the registry -----------------------------------------------------------------------


def test_registering_builds_a_new_registry_and_leaves_the_daemons_alone():
    assert list(REGISTRY) == ["anthropic", "openai", "gemini", "acme"]
    assert list(PROVIDERS) == ["anthropic", "openai", "gemini"]
    assert list(REGISTRY.analysis) == ["anthropic", "openai", "gemini", "acme",
                                       "openai-compatible", "mnemom"]
    assert "acme" not in PROVIDERS.analysis


def test_names_are_unique_and_an_analysis_api_carries_its_providers_name():
    with pytest.raises(ValueError, match="two providers are named 'anthropic'"):
        PROVIDERS.including(anthropic.PROVIDER)
    with pytest.raises(ValueError, match="must carry its name"):
        ProviderRegistry([replace(acme.PROVIDER, analysis=anthropic.ANALYSIS)])


# -- the proxy path ---------------------------------------------------------------------


def test_routes_to_the_new_provider():
    assert route(b"/acme/v1/generate?x=1") == ProxyTarget("acme", None, b"/v1/generate",
                                                          b"?x=1")
    assert route(b"/agent/x/acme/v1/generate") == ProxyTarget("acme", "x", b"/v1/generate", b"")
    assert route(b"/acme/v1/generate", PROVIDERS) is None
    assert route(b"/agent/x/acme/v1/generate", PROVIDERS) is None


def test_key_extraction():
    provider = REGISTRY["acme"]
    assert provider.find_api_key(Headers({b"x-acme-key": [b" k-1 "]}), b"") == b"k-1"
    assert provider.find_api_key(Headers({b"authorization": [b"Bearer k"]}), b"") is None
    assert provider.key_header == "x-acme-key"


def test_request_description():
    assert describe() == RequestInfo("acme.generate", "acme-large", True, BODY)
    assert describe(b"/v1/models") == RequestInfo(None, None, False, None)
    assert describe(body=["not", "an", "object"]) == RequestInfo("acme.generate", None, False,
                                                                 None)


def test_injection_and_its_refusal():
    provider, info = REGISTRY["acme"], describe()
    assert provider.inject_thinking(info, BODY) == {**BODY, "show_reasoning": True}
    assert provider.inject_thinking(info, {**BODY, "show_reasoning": False}) is None
    assert provider.inject_nudge(info, BODY, "NOTICE")["system"] == "NOTICE\n\nBe brief."
    refusal = json.dumps({"error": {"message": "show_reasoning is not allowed"}}).encode()
    assert provider.injection_rejected(info, 400, refusal)
    assert REGISTRY.injection_rejected(info, 400, refusal)
    assert not PROVIDERS.injection_rejected(info, 400, refusal)
    assert not provider.injection_rejected(info, 429, refusal)


def test_extraction_from_json():
    body = json.dumps({"model": "acme-large-2", "reasoning": "Think first.", "output": "Hi.",
                       "calls": [{"tool": "search", "args": {"q": "x", "n": 1}}]}).encode()
    extraction = REGISTRY["acme"].extract_response(describe(), "application/json", body, False)
    assert extraction == Extraction(thinking="Think first.", thinking_blocks=1,
                                    redacted_thinking=False,
                                    tool_calls=[ToolCall("search", ["q", "n"])],
                                    text_excerpt="Hi.", model="acme-large-2", complete=True)


def test_extraction_from_sse():
    events = [("reasoning", {"text": "Think "}), ("reasoning", {"text": "first."}),
              ("output", {"text": "Hi"}), ("call", {"tool": "clock", "args": {}}),
              ("output", {"text": " there."})]
    done = ("done", {"model": "acme-large-2"})
    provider = REGISTRY["acme"]
    whole = provider.extract_response(describe(), "text/event-stream", sse(*events, done), False)
    assert (whole.thinking, whole.text_excerpt, whole.model, whole.complete) == (
        "Think first.", "Hi there.", "acme-large-2", True)
    assert whole.tool_calls == [ToolCall("clock", [])]
    cut = provider.extract_response(describe(), "text/event-stream", sse(*events), False)
    assert (cut.thinking, cut.complete) == ("Think first.", False)


# -- settings ---------------------------------------------------------------------------


def test_its_settings_are_generated():
    url = {s.env: s for s in upstream_settings(REGISTRY)}["ACME_BASE_URL"]
    assert (url.default, url.help, url.secret) == (acme.BASE_URL, "upstream for /acme/… routes",
                                                   False)
    key = {s.env: s for s in provider_key_settings(REGISTRY)}["ACME_API_KEY"]
    assert (key.default, key.help, key.secret) == (
        None, "the gateway's own Acme key, for analysis", True)


def test_it_is_an_analysis_provider_with_its_own_endpoint_and_key():
    settings = AnalysisSettings(provider="acme", model="acme-small")
    assert settings.endpoint(REGISTRY) == acme.BASE_URL
    assert validate(settings, REGISTRY) == []
    assert warnings(settings, REGISTRY) == [
        "no API key for the acme analysis backend: every analysis will fail (fail_open)"]
    assert any("must be one of" in p for p in validate(settings))  # not the daemon's
    section = AnalysisConfig(analysis_provider="acme", provider_api_keys={"acme": "a-key"})
    assert from_config(section, REGISTRY).api_key == "a-key"


def test_analysis_request_url_with_or_without_the_version():
    api = REGISTRY.analysis["acme"]
    for base in ("http://h", "http://h/v1", "http://h/v1/"):
        call = api.build_request(AnalysisTarget(base, "m", "k"), "s", "u", 10)
        assert call.url == "http://h/v1/generate"
        assert call.headers == {"x-acme-key": "k"}


# -- the analysis backend, against a fake Acme server -----------------------------------


class FakeAcme(LocalServer):
    """Answers ``/v1/generate`` in Acme's format with ``answer``, recording each request."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: dict[str, Any] = {"reasoning": "Model-side thoughts.",
                                       "output": json.dumps(VERDICT_REVIEW)}

    def handle(self, request: Request) -> bytes:
        self.record({"path": request.path.decode(),
                     "key": request.getHeader("x-acme-key"),
                     "body": json.loads(request.content.read())})
        request.setHeader(b"content-type", b"application/json")
        if request.path != b"/v1/generate":
            request.setResponseCode(404)
            return b"{}"
        return json.dumps(self.answer).encode()


class AnalysisBackend(unittest.TestCase):
    def analyzer(self, **overrides: Any) -> tuple[Any, FakeAcme]:
        server = FakeAcme().start()
        self.addCleanup(server.stop)
        settings = AnalysisSettings(provider="acme", model="acme-small", base_url=server.url,
                                    api_key="acme-secret", **overrides)
        analyzer, http = build_analyzer(settings, reactor,
                                        GatewayMetrics(process_collectors=False),
                                        providers=REGISTRY)
        self.addCleanup(http.close)
        return analyzer, server

    @inlineCallbacks
    def test_a_verdict_through_the_acme_api(self):
        analyzer, server = self.analyzer()
        outcome = yield analyzer.analyze(request())
        self.assertEqual((outcome.verdict, outcome.synthetic), ("review_needed", False))
        self.assertEqual(outcome.analysis_metadata["backend"], "acme")
        self.assertEqual(outcome.analysis_metadata["analysis_model"], "acme-small")
        [sent] = server.requests
        self.assertEqual((sent["path"], sent["key"]), ("/v1/generate", "acme-secret"))
        self.assertEqual((sent["body"]["model"], sent["body"]["max_output"]), ("acme-small", 1024))
        self.assertIn("integrity evaluator", sent["body"]["system"])
        self.assertIn(MARKER, sent["body"]["prompt"])

    @inlineCallbacks
    def test_an_answer_without_output_is_malformed(self):
        analyzer, server = self.analyzer()
        server.answer = {"reasoning": "only thoughts"}
        outcome = yield analyzer.analyze(request())
        self.assertTrue(outcome.synthetic)
        self.assertEqual(outcome.failure_reason, "malformed")
        self.assertEqual(len(server.requests), 1)
