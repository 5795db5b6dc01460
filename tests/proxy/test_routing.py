"""Request-target parsing: provider routes, named agents, and refused path tricks."""

from __future__ import annotations

import pytest

from mnemomd.http.paths import RouteError, check_path, split_target
from mnemomd.proxy.routing import ProxyTarget, parse_proxy_target, upstream_url


def route(uri: bytes) -> ProxyTarget | None:
    path, query = split_target(uri)
    check_path(path)
    return parse_proxy_target(path, query)


def test_provider_routes():
    target = route(b"/anthropic/v1/messages")
    assert target == ProxyTarget("anthropic", None, b"/v1/messages", b"")
    assert route(b"/openai/v1/chat/completions").provider == "openai"
    gemini = route(b"/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse")
    assert gemini.rest == b"/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    assert gemini.query == b"?alt=sse"


def test_named_agent_route():
    target = route(b"/agent/planner-1/openai/v1/responses?x=1")
    assert target == ProxyTarget("openai", "planner-1", b"/v1/responses", b"?x=1")


@pytest.mark.parametrize("uri", [
    b"/anthropicX/v1/messages", b"/", b"/unknown/v1", b"/agent/x", b"/agent/x/mistral/v1",
    b"/agent", b"/v1/agents",
])
def test_not_proxy_routes(uri):
    assert route(uri) is None


@pytest.mark.parametrize("uri", [
    b"/anthropic/../openai/v1", b"/anthropic/v1/%2e%2e/x", b"/anthropic/./v1",
    b"/anthropic/v1%2fmessages", b"/anthropic/v1%5Cmessages", b"/anthropic/v1\\x",
    b"http://evil.example/anthropic/v1/messages", b"*", b"/anthropic/v1/%00",
    b"/anthropic/v1/a b",
])
def test_path_tricks_refused(uri):
    with pytest.raises(RouteError) as caught:
        route(uri)
    assert caught.value.status == 400


@pytest.mark.parametrize("name", [b"has%20space", b"x" * 129, b"%C3%A9", b"a%2Fb"])
def test_bad_agent_names_refused(name):
    with pytest.raises(RouteError):
        route(b"/agent/" + name + b"/openai/v1/x")


def test_upstream_url_keeps_query_and_base_prefix():
    target = route(b"/gemini/v1beta/models/m:generateContent?key=abc&alt=sse")
    url = upstream_url("http://127.0.0.1:9000/prefix", target)
    assert url == b"http://127.0.0.1:9000/prefix/v1beta/models/m:generateContent?key=abc&alt=sse"


def test_upstream_host_cannot_be_changed_by_the_path():
    target = route(b"/openai/@evil.example/v1")
    assert upstream_url("https://api.openai.com", target).startswith(b"https://api.openai.com/")
