"""describe_request: which API, model and streaming flag a request has, never raising."""

from __future__ import annotations

import pytest

from mnemomd.providers import PROVIDERS, RequestInfo
from tests.fakes import canned

BODY = canned.encode_json({"model": "m-1", "stream": True, "messages": []})


def describe(provider: str, path: bytes, body: bytes = BODY, query: bytes = b"") -> RequestInfo:
    return PROVIDERS[provider].describe_request(path, query, body)


@pytest.mark.parametrize("provider, path, api", [
    ("anthropic", b"/v1/messages", "anthropic.messages"),
    ("anthropic", b"/v1/messages/", "anthropic.messages"),
    ("anthropic", b"/api/v1/messages", "anthropic.messages"),
    ("anthropic", b"/v1/chat/completions", "openai.chat"),  # Anthropic's OpenAI compat
    ("anthropic", b"/v1/messages/count_tokens", None),
    ("anthropic", b"/v1/messages/batches", None),
    ("anthropic", b"/v1/models", None),
    ("openai", b"/v1/chat/completions", "openai.chat"),
    ("openai", b"/v1/responses", "openai.responses"),
    ("openai", b"/v1/responses/resp_1", None),
    ("openai", b"/v1/responses/resp_1/cancel", None),
    ("openai", b"/v1/embeddings", None),
    ("openai", b"/v1/files", None),
    ("openai", b"/v1/completions", None),
    ("gemini", b"/v1beta/openai/chat/completions", "openai.chat"),
])
def test_json_body_apis(provider, path, api):
    info = describe(provider, path)
    assert info.api == api
    if api is None:
        assert info == RequestInfo(None, None, False, None)  # forwarded, never parsed
    else:
        assert (info.model, info.streaming_requested) == ("m-1", True)
        assert info.json_body == {"model": "m-1", "stream": True, "messages": []}


@pytest.mark.parametrize("path, model, streaming", [
    (b"/v1beta/models/gemini-2.5-pro:generateContent", "gemini-2.5-pro", False),
    (b"/v1beta/models/gemini-2.5-flash:streamGenerateContent", "gemini-2.5-flash", True),
    (b"/v1/models/gemini-1.5-pro-002:generateContent", "gemini-1.5-pro-002", False),
    (b"/v1alpha/models/gemini-3-pro-preview:streamGenerateContent", "gemini-3-pro-preview",
     True),
    (b"/v1beta/tunedModels/my-model-abc:generateContent", "tunedModels/my-model-abc", False),
    (b"/v1beta/models/gemini-2.5-pro%3AgenerateContent", "gemini-2.5-pro", False),
    (b"/v1/projects/p/locations/us/publishers/google/models/gemini-2.5-pro:generateContent",
     "gemini-2.5-pro", False),
])
def test_gemini_model_and_streaming_from_url(path, model, streaming):
    body = canned.encode_json({"contents": [{"parts": [{"text": "hi"}]}]})
    info = describe("gemini", path, body, b"?alt=sse")
    assert (info.api, info.model, info.streaming_requested) == ("gemini.generate", model,
                                                                streaming)
    assert info.json_body == {"contents": [{"parts": [{"text": "hi"}]}]}


@pytest.mark.parametrize("path, model", [
    (b"/v1beta/models/gemini-2.5-pro:countTokens", "gemini-2.5-pro"),
    (b"/v1beta/models/text-embedding-004:embedContent", "text-embedding-004"),
    (b"/v1beta/models", None),
    (b"/v1beta/files", None),
    (b"/v1beta/models/:generateContent", None),
])
def test_gemini_other_endpoints(path, model):
    assert describe("gemini", path) == RequestInfo(None, model, False, None)


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'"s"', b"\xff\xfe",
                                  b"[" * 100_000, b'{"model": 5, "stream": "yes"}'])
def test_bodies_that_are_not_usable_json_objects(body):
    info = describe("openai", b"/v1/chat/completions", body)
    assert info.api == "openai.chat"
    assert info.model is None and not info.streaming_requested
    if info.json_body is not None:
        assert info.json_body == {"model": 5, "stream": "yes"}


def test_azure_deployment_names_the_model():
    body = canned.encode_json({"messages": []})
    info = describe("openai", b"/openai/deployments/gpt4o-prod/chat/completions", body,
                    b"?api-version=2024-10-21")
    assert (info.api, info.model) == ("openai.chat", "gpt4o-prod")


def test_hostile_paths_never_raise():
    for provider in PROVIDERS:
        for path in [b"", b"/", b"\xff\xfe/%zz:%%", b"/" * 10_000, b":" * 1000,
                     b"/models/" + b"x" * 100_000 + b":generateContent"]:
            info = describe(provider, path, b"{}")
            assert isinstance(info, RequestInfo)
            assert info.model is None or len(info.model) <= 256


def test_request_bodies_are_parsed_strictly():
    """A body the upstream would refuse is never rewritten into one it accepts."""
    info = describe("anthropic", b"/v1/messages", b'{"model": "m", "system": "a\nb"}')
    assert (info.api, info.json_body) == ("anthropic.messages", None)
