"""The request path in process: front door, proxy, relay, integrity and enforcement, with
the fake provider and the fake analysis model on the memory network."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.fakes import canned
from tests.harness import UPSTREAM_HOST, InProcessDaemon
from tests.integrity.fakes import VERDICT_VIOLATION

INTERNAL_KEY = "ik-request-path"


@dataclass(frozen=True)
class ProviderCall:
    """One provider API as a client calls it through the gateway."""

    name: str
    headers: dict[str, str]
    path: str  # the gateway's path; the upstream sees it without the provider prefix
    payload: dict[str, object]
    stream_path: str | None = None  # where the call streams, when that is not in the body

    def request(self, stream: bool) -> tuple[str, bytes]:
        payload = dict(self.payload)
        path = self.path
        if stream and self.stream_path is not None:
            path = self.stream_path
        elif stream:
            payload["stream"] = True
        return path, json.dumps(payload).encode()


MESSAGES = [{"role": "user", "content": "hi"}]
CALLS = [
    ProviderCall("anthropic.messages", {"x-api-key": "sk-ant"}, "/anthropic/v1/messages",
                 {"model": "claude-x", "max_tokens": 2048, "messages": MESSAGES}),
    ProviderCall("openai.chat", {"authorization": "Bearer sk-oai"},
                 "/openai/v1/chat/completions", {"model": "gpt-x", "messages": MESSAGES}),
    ProviderCall("openai.responses", {"authorization": "Bearer sk-oai"},
                 "/openai/v1/responses", {"model": "o4-mini", "input": "hi"}),
    ProviderCall("gemini", {"x-goog-api-key": "g-key"},
                 "/gemini/v1beta/models/gemini-x:generateContent",
                 {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
                 stream_path="/gemini/v1beta/models/gemini-x:streamGenerateContent?alt=sse"),
]
ANTHROPIC = CALLS[0]
JSON = {"content-type": "application/json"}


def upstream_target(path: str) -> tuple[str, str]:
    """(path, query) the provider sees for a gateway path."""
    route, _, query = path.partition("?")
    return "/" + route.split("/", 2)[2], query


def canned_request(path: str, body: bytes) -> canned.CannedRequest:
    """What the fake provider makes of this request."""
    upstream_path, query = upstream_target(path)
    request = canned.parse_request(upstream_path, query, body)
    assert request is not None
    return request


def expected_response(path: str, body: bytes) -> bytes:
    """The bytes the fake provider sends for this request, computed from the canned data."""
    answer = canned.canned_for(canned_request(path, body))
    return b"".join(answer) if isinstance(answer, list) else answer


@pytest.fixture
def plain(make_daemon: Callable[..., InProcessDaemon]) -> InProcessDaemon:
    """A daemon that does not ask models to show their reasoning: requests pass unchanged."""
    return make_daemon(THINKING_INJECTION="off")


# -- forwarding --------------------------------------------------------------------------


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.name)
def test_a_call_is_forwarded_byte_for_byte_both_ways(plain: InProcessDaemon, call: ProviderCall):
    path, body = call.request(stream=False)
    exchange = plain.request("POST", path, call.headers | JSON, body)
    assert exchange.status == 200 and exchange.complete
    assert exchange.body == expected_response(path, body)
    assert exchange.header("x-fake-upstream") == "yes"
    [seen] = plain.upstream.requests
    assert (seen["path"], seen["query"]) == upstream_target(path)
    assert seen["body"] == body


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.name)
def test_a_stream_reaches_the_client_event_by_event(plain: InProcessDaemon, call: ProviderCall):
    """The fake sends event k+1 only when released; each event is at the client before
    that, so nothing in the gateway waits for more of the stream."""
    path, body = call.request(stream=True)
    request = canned_request(path, body)
    assert canned.is_sse(request)
    events = canned.stream_events(request)
    exchange = plain.request("POST", path, call.headers | JSON | {"x-fake-scenario": "gated:s1"},
                             body)
    assert exchange.status == 200
    assert exchange.header("x-accel-buffering") == "no"
    for sent in range(1, len(events) + 1):
        assert plain.upstream.state.streams["s1"].events_sent == sent
        assert exchange.body == b"".join(events[:sent])
        assert exchange.complete is (sent == len(events))
        if sent < len(events):
            plain.upstream.release("s1")
            plain.flush()
    assert plain.upstream.requests[0]["body"] == body


# -- what the gateway answers itself -----------------------------------------------------


@pytest.mark.parametrize("code", [429, 500, 529])
def test_an_upstream_error_status_passes_through(daemon: InProcessDaemon, code: int):
    path, body = ANTHROPIC.request(stream=False)
    exchange = daemon.request("POST", path, ANTHROPIC.headers | JSON
                              | {"x-fake-scenario": f"status:{code}"}, body)
    assert exchange.status == code and exchange.complete
    assert exchange.body == canned.error_body(canned.Api.ANTHROPIC_MESSAGES, code)
    assert exchange.header("retry-after") == "7"
    assert exchange.header("x-mnemom-agent").startswith("smolt-")


def test_an_upstream_that_closes_mid_stream_breaks_the_client_response(daemon: InProcessDaemon):
    path, body = ANTHROPIC.request(stream=True)
    exchange = daemon.request("POST", path, ANTHROPIC.headers | JSON
                              | {"x-fake-scenario": "abort_after:3"}, body)
    assert exchange.status == 200
    assert not exchange.complete and exchange.failure is not None
    assert exchange.body == b"".join(canned.stream_events(canned_request(path, body))[:3])
    assert daemon.take_errors() == ["Upstream closed the response before it was complete"]


def test_an_upstream_that_refuses_is_502(make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(ANTHROPIC_BASE_URL=f"http://{UPSTREAM_HOST}:81")
    path, body = ANTHROPIC.request(stream=False)
    exchange = daemon.request("POST", path, ANTHROPIC.headers | JSON, body)
    daemon.advance(1)  # the connection attempt gives up after its attempt delay
    assert exchange.status == 502
    assert exchange.json()["type"] == "upstream_error"
    assert "refused" in exchange.json()["error"].lower()


def test_a_silent_upstream_is_504_when_the_clock_reaches_the_timeout(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(UPSTREAM_TIMEOUT="30")
    path, body = ANTHROPIC.request(stream=False)
    exchange = daemon.request("POST", path, ANTHROPIC.headers | JSON
                              | {"x-fake-scenario": "silent"}, body)
    daemon.advance(29.9)
    assert not exchange.answered
    daemon.advance(0.2)
    assert exchange.status == 504
    assert exchange.json()["type"] == "upstream_timeout"


@pytest.mark.parametrize("path", ["/nope", "/anthropicX/v1/messages", "/v1/unknown", "/"])
def test_an_unknown_route_is_404(daemon: InProcessDaemon, path: str):
    exchange = daemon.request("GET", path)
    assert exchange.status == 404
    assert exchange.json() == {"error": "Not found", "type": "not_found"}


@pytest.mark.parametrize("path", ["/anthropic/../openai/v1/chat/completions",
                                  "/anthropic/v1/%2e%2e/x", "/anthropic/v1%2Fmessages"])
def test_a_path_trick_is_400_and_reaches_no_upstream(daemon: InProcessDaemon, path: str):
    _, body = ANTHROPIC.request(stream=False)
    exchange = daemon.request("POST", path, ANTHROPIC.headers | JSON, body)
    assert exchange.status == 400
    assert exchange.json()["type"] == "invalid_request_error"
    assert daemon.upstream.requests == []
    assert (UPSTREAM_HOST, 80) not in daemon.network.connections


def test_an_oversized_body_is_413_and_not_forwarded(make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(MAX_REQUEST_BODY_BYTES="1000")
    refused = daemon.request("POST", ANTHROPIC.path, ANTHROPIC.headers, b"x" * 1001)
    assert refused.status == 413
    assert refused.json()["type"] == "request_too_large"
    assert daemon.upstream.requests == []
    accepted = daemon.request("POST", ANTHROPIC.path,
                              ANTHROPIC.headers | {"x-fake-scenario": "echo"}, b"x" * 1000)
    assert (accepted.status, accepted.body) == (200, b"x" * 1000)
    assert len(daemon.upstream.requests) == 1


# -- integrity and enforcement -----------------------------------------------------------


def checkpoints(daemon: InProcessDaemon) -> list[tuple[str, str, str, str]]:
    return daemon.rows("SELECT id, verdict, provider, model FROM integrity_checkpoints")


def test_a_response_with_thinking_gets_an_aip_header_and_a_checkpoint(daemon: InProcessDaemon):
    daemon.analysis.script = ["hold"]
    path, body = ANTHROPIC.request(stream=False)
    exchange = daemon.request("POST", path, ANTHROPIC.headers | JSON, body)
    # Observe mode: the client has its answer while the analysis model still thinks.
    assert exchange.status == 200 and exchange.complete
    assert exchange.header("x-aip-verdict") == "pending"
    assert exchange.header("x-aip-enforcement") == "observe"
    assert len(daemon.analysis.held) == 1
    assert checkpoints(daemon) == []
    assert daemon.release_analysis() == 1
    [(_, verdict, provider, model)] = checkpoints(daemon)
    assert (verdict, provider, model) == ("review_needed", "anthropic", "claude-x")


def test_enforce_mode_holds_the_response_until_the_verdict(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(AIP_DEFAULT_ENFORCEMENT="enforce")
    daemon.analysis.script = ["hold"]
    path, body = ANTHROPIC.request(stream=False)
    exchange = daemon.request("POST", path, ANTHROPIC.headers | JSON, body)
    assert len(daemon.upstream.requests) == 1
    assert not exchange.answered, "an enforced response waits for its verdict"
    daemon.release_analysis()
    assert exchange.status == 200 and exchange.complete
    assert exchange.header("x-aip-verdict") == "review_needed"
    assert exchange.header("x-aip-enforcement") == "enforce"
    [(checkpoint_id, _, _, _)] = checkpoints(daemon)
    assert exchange.header("x-aip-checkpoint-id") == checkpoint_id
    assert exchange.body == expected_response(path, body)


def test_enforce_mode_refuses_a_violation_with_403(make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(AIP_DEFAULT_ENFORCEMENT="enforce")
    daemon.analysis.default = VERDICT_VIOLATION
    path, body = ANTHROPIC.request(stream=False)
    exchange = daemon.request("POST", path, ANTHROPIC.headers | JSON, body)
    assert exchange.status == 403
    refusal = exchange.json()
    assert refusal["type"] == "integrity_violation"
    [(checkpoint_id, verdict, _, _)] = checkpoints(daemon)
    assert (refusal["checkpoint_id"], verdict) == (checkpoint_id, "boundary_violation")
    assert refusal["concerns"][0]["category"] == "prompt_injection"
    assert canned.THINKING_TEXT.encode() not in exchange.body


def test_a_paused_agent_is_refused_and_nothing_reaches_the_upstream(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(INTERNAL_API_KEY=INTERNAL_KEY)
    path, body = ANTHROPIC.request(stream=False)
    assert daemon.request("POST", path, ANTHROPIC.headers | JSON, body).status == 200
    auth = {"authorization": f"Bearer {INTERNAL_KEY}"}
    [agent] = daemon.request("GET", "/v1/agents", auth).json()["items"]
    paused = daemon.request("POST", f"/v1/agents/{agent['agent_id']}/containment/pause",
                            auth | JSON, b'{"reason": "investigating"}')
    assert paused.status == 200
    connections = len(daemon.network.connections)
    refused = daemon.request("POST", path, ANTHROPIC.headers | JSON, body)
    assert refused.status == 403
    assert len(daemon.upstream.requests) == 1
    # The refused call opened only its own connection to the front door.
    assert daemon.network.connections[connections:] == [("gateway.test", 8787)]
