"""Hostile input at the request path: keys outside Latin-1 and numbers JSON cannot write
back get a clear answer or pass untouched, never a traceback."""

from __future__ import annotations

import json

import pytest

from tests.harness import InProcessDaemon

JSON = {"content-type": "application/json"}
ANTHROPIC_BODY = {"model": "claude-sonnet-4-5", "max_tokens": 4096,
                  "messages": [{"role": "user", "content": "hi"}]}
GEMINI = "/gemini/v1beta/models/gemini-x:generateContent"
GEMINI_BODY = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()


@pytest.mark.parametrize("path, headers", [
    (GEMINI + "?key=%E2%82%AC", {}),
    (GEMINI + "?alt=sse&key=%FF%FE", {}),
    (GEMINI, {"x-goog-api-key": "\u20acuro"}),
    ("/anthropic/v1/messages", {"x-api-key": "sk-\u00e9\u4e16"}),
    ("/openai/v1/chat/completions", {"authorization": "Bearer sk-\u20ac"}),
], ids=["gemini-query-utf8", "gemini-query-ff", "gemini-header", "anthropic", "openai"])
def test_a_key_outside_latin1_or_ascii_is_400_json_and_reaches_no_upstream(
        daemon: InProcessDaemon, path: str, headers: dict[str, str]):
    body = GEMINI_BODY if "gemini" in path else json.dumps(ANTHROPIC_BODY).encode()
    exchange = daemon.request("POST", path, {**JSON, **headers}, body)
    assert exchange.status == 400
    assert exchange.json()["type"] == "invalid_request_error"
    assert "printable ASCII" in exchange.json()["error"]
    assert daemon.upstream.requests == []
    assert daemon.take_errors() == []


def test_other_header_values_outside_latin1_are_relayed_not_refused(daemon: InProcessDaemon):
    exchange = daemon.request("POST", "/anthropic/v1/messages",
                              {**JSON, "x-api-key": "sk-ant", "anthropic-beta": "\u20ac"},
                              json.dumps(ANTHROPIC_BODY).encode())
    assert exchange.status == 200
    [sent] = daemon.upstream.requests
    assert ["anthropic-beta", "\u20ac".encode().decode("latin-1")] in sent["headers"]


def test_a_body_the_gateway_rewrites_is_rewritten(daemon: InProcessDaemon):
    """The control for the test below: this body does get thinking injected."""
    client_body = json.dumps(ANTHROPIC_BODY).encode()
    exchange = daemon.request("POST", "/anthropic/v1/messages",
                              {**JSON, "x-api-key": "sk-ant"}, client_body)
    assert exchange.status == 200
    [sent] = daemon.upstream.requests
    assert sent["body"] != client_body
    assert "thinking" in json.loads(sent["body"])


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1E999"])
def test_a_number_json_cannot_write_back_leaves_the_body_byte_for_byte(
        daemon: InProcessDaemon, number: bytes):
    client_body = json.dumps(ANTHROPIC_BODY).encode()[:-1] + b',"metadata":{"w":' + number + b"}}"
    exchange = daemon.request("POST", "/anthropic/v1/messages",
                              {**JSON, "x-api-key": "sk-ant"}, client_body)
    assert exchange.status == 200
    [sent] = daemon.upstream.requests
    assert sent["body"] == client_body
    assert b"Infinity" not in sent["body"]
    assert daemon.take_errors() == []
