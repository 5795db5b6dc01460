"""The official SDKs, pointed at the gateway, get exactly what the provider sent, and the
provider gets what the SDK sent.

Each call is made twice, once straight to the fake upstream and once through the daemon.
The raw bytes, status and parsed results the SDK gets must be identical; so must the
requests the fake upstream records, header by header, except the headers a proxy is
documented to change (SPEC §3.3, docs/data-residency.md): hop-by-hop ones, and Host and
Content-Length, which the upstream client recomputes. Nothing about one SDK version (which
header it puts the key in) is pinned: whatever it sent directly must arrive the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import openai
import pytest
from google import genai
from google.genai import types

from mnemomd.agents.identity import agent_hash
from tests.e2e.daemon import Daemon
from tests.fakes import canned
from tests.fakes.process import clear_requests, fetch_requests

KEY = "sk-e2e-test-key"
MESSAGES = [{"role": "user", "content": "Say hello in three scripts"}]
#: The agent the gateway must derive from KEY, whichever header carried it.
AGENT_ID = f"smolt-{agent_hash(KEY.encode())[:8]}"
#: Request headers a proxy may change: hop-by-hop ones (SPEC §3.3) and the two the
#: upstream client recomputes. Written out here rather than taken from the proxy's code.
MAY_CHANGE = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
    "host", "content-length",
})


def anthropic_client(base: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base, api_key=KEY, max_retries=0)


def openai_client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)


def anthropic_x_api_key_client(base: str) -> anthropic.Anthropic:
    """The key in Anthropic's own ``x-api-key`` header and no ``Authorization``, whichever
    header this SDK version would choose by itself."""
    return anthropic.Anthropic(base_url=base, api_key=KEY, max_retries=0,
                               default_headers={"x-api-key": KEY,
                                                "Authorization": anthropic.omit})


def gemini_client(base: str) -> genai.Client:
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=base))


def received(upstream: str, call: Callable[[], object]) -> dict:
    """The one request the fake upstream recorded while ``call()`` ran."""
    clear_requests(upstream)
    call()
    [record] = fetch_requests(upstream)
    return record


def comparable_headers(record: dict) -> list[tuple[str, str]]:
    return sorted((name, value) for name, value in record["headers"]
                  if name not in MAY_CHANGE)


def assert_received_alike(upstream: str, direct: Callable[[], object],
                          via: Callable[[], object]) -> dict:
    """The upstream got the same request from the SDK directly and through the gateway:
    method, path, query and every header but those of MAY_CHANGE. Returns the direct one."""
    sent, forwarded = received(upstream, direct), received(upstream, via)
    assert (forwarded["method"], forwarded["path"], forwarded["query"]) == \
        (sent["method"], sent["path"], sent["query"])
    expected, got = comparable_headers(sent), comparable_headers(forwarded)
    assert got == expected, {"missing or changed": sorted(set(expected) - set(got)),
                             "added or changed": sorted(set(got) - set(expected))}
    return sent


def assert_gateway_headers(headers) -> None:
    assert headers["x-mnemom-agent"].startswith("smolt-")
    assert headers["x-mnemom-session"]
    assert headers["x-smoltbot-agent"] == headers["x-mnemom-agent"]
    assert float(headers["x-mnemom-overhead-ms"]) >= 0


@pytest.fixture
def routes(daemon: Daemon, upstream: str) -> dict[str, tuple[str, str]]:
    """(direct, via gateway) base URLs per provider."""
    gw = daemon.base_url
    return {p: (upstream, f"{gw}/{p}") for p in ("anthropic", "openai", "gemini")}


def test_anthropic_messages_create(routes):
    direct, via = (anthropic_client(u) for u in routes["anthropic"])
    kwargs = dict(model="claude-test", max_tokens=2048, messages=MESSAGES)
    raw_direct = direct.messages.with_raw_response.create(**kwargs)
    raw_via = via.messages.with_raw_response.create(**kwargs)
    assert raw_via.status_code == raw_direct.status_code == 200
    assert raw_via.http_response.content == raw_direct.http_response.content
    assert raw_via.http_response.headers["content-type"] == "application/json"
    assert_gateway_headers(raw_via.http_response.headers)
    message = raw_via.parse()
    assert message == raw_direct.parse()
    assert [b.type for b in message.content][:2] == ["thinking", "text"]
    assert message.content[0].thinking == canned.THINKING_TEXT
    assert message.content[1].text == canned.TEXT


def test_anthropic_messages_stream(routes, upstream):
    direct, via = (anthropic_client(u) for u in routes["anthropic"])
    kwargs = dict(model="claude-test", max_tokens=2048, messages=MESSAGES)
    with via.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == canned.TEXT
    assert final.content[0].thinking == canned.THINKING_TEXT
    with direct.messages.stream(**kwargs) as stream:
        assert stream.get_final_message() == final
    with via.messages.with_streaming_response.create(stream=True, **kwargs) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        body_via = b"".join(response.http_response.iter_bytes())
    with direct.messages.with_streaming_response.create(stream=True, **kwargs) as response:
        body_direct = b"".join(response.http_response.iter_bytes())
    assert body_via == body_direct
    assert canned.split_sse_events(body_via) == canned.split_sse_events(body_direct)

    # The key reached the provider untouched, in whatever header this SDK put it.
    def stream(client: anthropic.Anthropic) -> Callable[[], object]:
        def call() -> None:
            with client.messages.stream(**kwargs) as events:
                events.get_final_message()
        return call

    sent = assert_received_alike(upstream, stream(direct), stream(via))
    assert KEY in {value.removeprefix("Bearer ") for _, value in sent["headers"]}


def test_openai_chat_completions(routes):
    direct, via = (openai_client(u) for u in routes["openai"])
    kwargs = dict(model="gpt-test", messages=MESSAGES)
    raw_direct = direct.chat.completions.with_raw_response.create(**kwargs)
    raw_via = via.chat.completions.with_raw_response.create(**kwargs)
    assert raw_via.status_code == 200
    assert raw_via.http_response.content == raw_direct.http_response.content
    assert_gateway_headers(raw_via.http_response.headers)
    completion = raw_via.parse()
    assert completion.choices[0].message.content == canned.TEXT
    assert completion == raw_direct.parse()


def test_openai_chat_completions_stream(routes):
    direct, via = (openai_client(u) for u in routes["openai"])
    kwargs = dict(model="gpt-test", messages=MESSAGES, stream=True)
    chunks_via = list(via.chat.completions.create(**kwargs))
    chunks_direct = list(direct.chat.completions.create(**kwargs))
    assert chunks_via == chunks_direct
    assert "".join(c.choices[0].delta.content or "" for c in chunks_via if c.choices) == \
        canned.TEXT
    with via.chat.completions.with_streaming_response.create(**kwargs) as response:
        body_via = b"".join(response.http_response.iter_bytes())
    with direct.chat.completions.with_streaming_response.create(**kwargs) as response:
        body_direct = b"".join(response.http_response.iter_bytes())
    assert body_via == body_direct
    assert body_via.rstrip().endswith(b"data: [DONE]")


def test_openai_responses(routes):
    direct, via = (openai_client(u) for u in routes["openai"])
    kwargs = dict(model="o-test", input="Say hello in three scripts")
    raw_via = via.responses.with_raw_response.create(**kwargs)
    raw_direct = direct.responses.with_raw_response.create(**kwargs)
    assert raw_via.http_response.content == raw_direct.http_response.content
    response = raw_via.parse()
    assert response.output_text == canned.TEXT
    events_via = [e.type for e in via.responses.create(stream=True, **kwargs)]
    events_direct = [e.type for e in direct.responses.create(stream=True, **kwargs)]
    assert events_via == events_direct
    assert events_via[0] == "response.created" and events_via[-1] == "response.completed"


def test_gemini_generate_content(routes):
    direct, via = (gemini_client(u) for u in routes["gemini"])
    contents = "Say hello in three scripts"
    result_via = via.models.generate_content(model="gemini-test", contents=contents)
    result_direct = direct.models.generate_content(model="gemini-test", contents=contents)
    parts = result_via.candidates[0].content.parts
    assert [p.text for p in parts if p.thought] == [canned.THINKING_TEXT]
    assert result_via.text == canned.TEXT
    assert result_via.model_dump(exclude={"sdk_http_response"}) == \
        result_direct.model_dump(exclude={"sdk_http_response"})
    assert_gateway_headers(result_via.sdk_http_response.headers)


def test_gemini_generate_content_stream(routes, upstream):
    direct, via = (gemini_client(u) for u in routes["gemini"])
    contents = "Say hello in three scripts"
    chunks_via = list(via.models.generate_content_stream(model="gemini-test", contents=contents))
    chunks_direct = list(direct.models.generate_content_stream(model="gemini-test",
                                                               contents=contents))
    dump = [c.model_dump(exclude={"sdk_http_response"}) for c in chunks_via]
    assert dump == [c.model_dump(exclude={"sdk_http_response"}) for c in chunks_direct]
    assert "".join(c.text or "" for c in chunks_via) == canned.TEXT
    streamed = [r for r in fetch_requests(upstream) if "streamGenerateContent" in r["path"]]
    assert streamed and all("alt=sse" in r["query"] for r in streamed)


# --- what the provider receives ----------------------------------------------------------------


def anthropic_call(client: anthropic.Anthropic) -> Callable[[], object]:
    return lambda: client.messages.with_raw_response.create(
        model="claude-test", max_tokens=2048, messages=MESSAGES).http_response.headers


def openai_call(client: openai.OpenAI) -> Callable[[], object]:
    return lambda: client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES).http_response.headers


def gemini_call(client: genai.Client) -> Callable[[], object]:
    return lambda: client.models.generate_content(
        model="gemini-test", contents="Say hello").sdk_http_response.headers


def gemini_stream_call(client: genai.Client) -> Callable[[], object]:
    return lambda: [c.text for c in client.models.generate_content_stream(
        model="gemini-test", contents="Say hello")]


#: (provider route, client, call, the header that must carry the key, its value).
CASES = {
    "anthropic x-api-key": ("anthropic", anthropic_x_api_key_client, anthropic_call,
                            "x-api-key", KEY),
    "anthropic as the SDK sends it": ("anthropic", anthropic_client, anthropic_call,
                                      None, None),
    "openai authorization": ("openai", openai_client, openai_call,
                             "authorization", f"Bearer {KEY}"),
    "gemini x-goog-api-key": ("gemini", gemini_client, gemini_call, "x-goog-api-key", KEY),
    "gemini stream": ("gemini", gemini_client, gemini_stream_call, "x-goog-api-key", KEY),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_provider_receives_what_the_sdk_sent(routes, upstream, case):
    provider, make_client, make_call, key_header, key_value = CASES[case]
    direct_base, via_base = routes[provider]
    direct, via = make_client(direct_base), make_client(via_base)
    responses: list[object] = []
    sent = assert_received_alike(upstream, make_call(direct),
                                 lambda: responses.append(make_call(via)()))
    headers = dict(sent["headers"])
    if key_header is not None:
        # The case really exercises that header: the SDK sent the key there and only there.
        assert headers[key_header] == key_value
        others = {"x-api-key", "authorization", "x-goog-api-key"} - {key_header}
        assert others.isdisjoint(headers), sorted(others & set(headers))
    else:
        assert KEY in {value.removeprefix("Bearer ") for value in headers.values()}
    if not isinstance(responses[0], list):  # a stream's chunks carry no gateway headers
        assert responses[0]["x-mnemom-agent"] == AGENT_ID, "the agent is derived from KEY"
