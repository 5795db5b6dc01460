"""A fourth provider through the real daemon: Acme, a made-up one, registered in this test.

``tests/providers/acme.py`` is the whole provider; the daemon is given a registry that
includes it (``make_service(..., providers=REGISTRY)``) and nothing else of Acme's: its
calls are routed, identified, described, asked for their reasoning, extracted, analysed
by an Acme model and enforced by the same code as every other provider's. The fake Acme
API (``tests/providers/acme_server.py``) serves both the agent's model and the analysis
model on the memory network. With the daemon's own registry ``/acme/…`` is no route.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from mnemomd.config import Config, ProxyConfig
from mnemomd.providers import PROVIDERS
from tests.harness import InProcessDaemon
from tests.harness.client import Exchange
from tests.integrity.fakes import VERDICT_CLEAR, VERDICT_VIOLATION
from tests.providers import acme
from tests.providers.acme_server import AcmeAnswer, FakeAcme, answer_events, answer_json

REGISTRY = PROVIDERS.including(acme.PROVIDER)
ACME_HOST = "acme.test"
ANALYST_HOST = "acme-analyst.test"
#: The gateway's own Acme key, for analysis (``ACME_API_KEY``).
ANALYST_KEY = "acme-gateway-key"
AGENT_KEY = "acme-agent-key"
HEADERS = {"x-acme-key": AGENT_KEY, "content-type": "application/json"}
REQUEST = {"model": "acme-large", "system": "Be brief.", "prompt": "Summarise the file."}


def with_acme(config: Config) -> Config:
    """Acme's routes go to the fake Acme, and an Acme model is the analysis backend: the
    values ``ACME_BASE_URL``, ``ANALYSIS_PROVIDER=acme`` and ``ACME_API_KEY`` would give,
    placed where the configuration keeps them (the settings table has rows only for the
    daemon's own providers)."""
    proxy = replace(config.proxy, upstream_base_urls={**config.proxy.upstream_base_urls,
                                                      "acme": f"http://{ACME_HOST}"})
    analysis = replace(config.analysis, analysis_provider="acme", analysis_model="acme-small",
                       analysis_base_url=f"http://{ANALYST_HOST}",
                       provider_api_keys={**config.analysis.provider_api_keys,
                                          "acme": ANALYST_KEY})
    return replace(config, proxy=proxy, analysis=analysis)


@dataclass
class Acme:
    """A daemon that knows Acme, and the two fake Acme models it talks to."""

    daemon: InProcessDaemon
    model: FakeAcme
    analyst: FakeAcme

    def call(self, path: str = "/acme/v1/generate", stream: bool = False,
             headers: dict[str, str] | None = None, **fields: Any) -> tuple[bytes, Exchange]:
        body = json.dumps({**REQUEST, **fields, **({"stream": True} if stream else {})}).encode()
        return body, self.daemon.request("POST", path, HEADERS if headers is None else headers,
                                         body)

    def verdict(self, verdict: dict[str, Any]) -> None:
        self.analyst.answer = AcmeAnswer(model="acme-small", reasoning="",
                                         output=json.dumps(verdict))


@pytest.fixture
def start_acme(make_daemon: Callable[..., InProcessDaemon]) -> Callable[..., Acme]:
    def start(**settings: str) -> Acme:
        daemon = make_daemon(providers=REGISTRY, configure=with_acme, **settings)
        fake = Acme(daemon, FakeAcme(), FakeAcme())
        daemon.serve(ACME_HOST, fake.model)
        daemon.serve(ANALYST_HOST, fake.analyst)
        fake.verdict(VERDICT_CLEAR)
        return fake

    return start


def checkpoints(daemon: InProcessDaemon) -> list[tuple[str, str, str, str]]:
    return daemon.rows("SELECT id, verdict, provider, model FROM integrity_checkpoints")


# -- routing, forwarding, identity ------------------------------------------------------


@pytest.mark.parametrize("path", ["/acme/v1/generate", "/agent/summariser/acme/v1/generate"])
def test_an_acme_call_is_forwarded_byte_for_byte_both_ways(start_acme: Callable[..., Acme],
                                                           path: str):
    acme_ = start_acme(THINKING_INJECTION="off")
    body, exchange = acme_.call(path + "?trace=1", show_reasoning=True)
    assert exchange.status == 200 and exchange.complete
    assert exchange.body == answer_json(acme_.model.answer)
    assert exchange.header("content-type") == "application/json"
    assert exchange.header("x-mnemom-agent").startswith("smolt-")
    [seen] = acme_.model.requests
    assert (seen.method, seen.path, seen.query, seen.body) == (b"POST", b"/v1/generate",
                                                               b"?trace=1", body)
    assert seen.header(b"x-acme-key") == AGENT_KEY.encode()


def test_an_acme_stream_is_relayed_unchanged(start_acme: Callable[..., Acme]):
    acme_ = start_acme(THINKING_INJECTION="off")
    body, exchange = acme_.call(stream=True, show_reasoning=True)
    assert exchange.status == 200 and exchange.complete
    assert exchange.header("x-accel-buffering") == "no"
    assert exchange.body == b"".join(answer_events(acme_.model.answer))
    assert acme_.model.requests[0].body == body


def test_the_acme_key_identifies_the_agent_and_a_call_without_it_is_401(
        start_acme: Callable[..., Acme]):
    acme_ = start_acme()
    _, plain = acme_.call()
    _, named = acme_.call("/agent/summariser/acme/v1/generate")
    _, other = acme_.call(headers={**HEADERS, "x-acme-key": "another-key"})
    agents = {plain.header("x-mnemom-agent"), named.header("x-mnemom-agent"),
              other.header("x-mnemom-agent")}
    assert len(agents) == 3
    assert sorted(acme_.daemon.rows("SELECT id, name FROM agents"), key=str) == sorted(
        [(plain.header("x-mnemom-agent"), None), (named.header("x-mnemom-agent"), "summariser"),
         (other.header("x-mnemom-agent"), None)], key=str)
    forwarded = len(acme_.model.requests)
    _, missing = acme_.call(headers={"authorization": f"Bearer {AGENT_KEY}"})
    assert missing.status == 401
    assert missing.json() == {"error": "Missing x-acme-key", "type": "authentication_error"}
    assert len(acme_.model.requests) == forwarded


# -- integrity ---------------------------------------------------------------------------


def test_acme_reasoning_is_asked_for_extracted_and_analysed_by_an_acme_model(
        start_acme: Callable[..., Acme]):
    acme_ = start_acme()
    _, exchange = acme_.call()
    assert exchange.status == 200 and exchange.complete
    # Acme's injection asked the model to show its reasoning.
    assert acme_.model.requests[0].json() == {**REQUEST, "show_reasoning": True}
    [asked] = acme_.analyst.requests
    assert (asked.path, asked.header(b"x-acme-key")) == (b"/v1/generate", ANALYST_KEY.encode())
    assert asked.json()["model"] == "acme-small"
    assert acme_.model.answer.reasoning in asked.json()["prompt"]
    [(_, verdict, provider, model)] = checkpoints(acme_.daemon)
    assert (verdict, provider, model) == ("clear", "acme", REQUEST["model"])


def test_enforce_mode_refuses_an_acme_violation_with_403(start_acme: Callable[..., Acme]):
    acme_ = start_acme(AIP_DEFAULT_ENFORCEMENT="enforce")
    acme_.verdict(VERDICT_VIOLATION)
    _, exchange = acme_.call()
    assert exchange.status == 403
    refusal = exchange.json()
    assert refusal["type"] == "integrity_violation"
    [(checkpoint_id, verdict, provider, _)] = checkpoints(acme_.daemon)
    assert (refusal["checkpoint_id"], verdict, provider) == (checkpoint_id, "boundary_violation",
                                                             "acme")
    assert refusal["concerns"][0]["category"] == "prompt_injection"
    assert acme_.model.answer.output.encode() not in exchange.body


def test_enforce_mode_ends_a_violating_acme_stream_with_acmes_error_event(
        start_acme: Callable[..., Acme]):
    acme_ = start_acme(AIP_DEFAULT_ENFORCEMENT="enforce")
    acme_.verdict(VERDICT_VIOLATION)
    _, exchange = acme_.call(stream=True)
    assert exchange.status == 200 and exchange.complete
    reasoning, *_ = answer_events(acme_.model.answer)
    assert exchange.body.startswith(reasoning)
    error = exchange.body[len(reasoning):]
    assert error.startswith(b"event: error\ndata: ") and error.endswith(b"\n\n")
    [document] = json.loads(error.split(b"data: ", 1)[1]).items()  # Acme's shape: one key
    [(checkpoint_id, verdict, _, _)] = checkpoints(acme_.daemon)
    assert (document[0], document[1]["type"], document[1]["checkpoint_id"], verdict) == (
        "error", "integrity_violation", checkpoint_id, "boundary_violation")
    assert acme_.model.answer.output.encode() not in exchange.body


# -- the registry is what makes Acme a route ---------------------------------------------


@pytest.mark.parametrize("path", ["/acme/v1/generate", "/agent/summariser/acme/v1/generate"])
def test_with_the_daemons_own_registry_acme_is_no_route(daemon: InProcessDaemon, path: str):
    fake = FakeAcme()
    daemon.serve(ACME_HOST, fake)
    exchange = daemon.request("POST", path, HEADERS, json.dumps(REQUEST).encode())
    assert exchange.status == 404
    assert exchange.json() == {"error": "Not found", "type": "not_found"}
    assert fake.requests == []


def test_without_a_base_url_setting_acme_calls_go_to_its_official_api(
        make_daemon: Callable[..., InProcessDaemon]):
    assert ProxyConfig().upstream_base_url(acme.PROVIDER) == acme.BASE_URL == \
        "https://api.acme.test"
    daemon = make_daemon(providers=REGISTRY, UPSTREAM_TIMEOUT="30")
    # Served without TLS, so the handshake never completes; what matters is where it went.
    daemon.serve("api.acme.test", FakeAcme(), port=443)
    exchange = daemon.request("POST", "/acme/v1/generate", HEADERS, json.dumps(REQUEST).encode())
    assert daemon.network.connections[-1] == ("api.acme.test", 443)
    daemon.advance(30)
    assert exchange.status == 504
    assert exchange.json()["type"] == "upstream_timeout"
