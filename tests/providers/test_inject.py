"""Thinking injection (SPEC §5.1) and nudges (SPEC §6.3): when bodies change, and how."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from mnemomd.providers import PROVIDERS, RequestInfo, injection_rejected
from tests.fakes import canned

NOTICE = "[INTEGRITY NOTICE] Stay within your declared values."

PATHS = {
    "anthropic.messages": ("anthropic", b"/v1/messages"),
    "openai.chat": ("openai", b"/v1/chat/completions"),
    "openai.responses": ("openai", b"/v1/responses"),
    "gemini.generate": ("gemini", b"/v1beta/models/{model}:generateContent"),
}


def call(kind: str, api: str, body: dict[str, Any], *args: Any,
         model: str = "gemini-2.5-pro") -> dict[str, Any] | None:
    """Describe the request as the proxy would, inject, and check nothing was mutated."""
    provider, path = PATHS[api]
    raw = canned.encode_json(body)
    info = PROVIDERS[provider].describe_request(path.replace(b"{model}", model.encode()), b"",
                                                raw)
    assert info.api == api and info.json_body == body
    before = copy.deepcopy(info.json_body)
    inject = getattr(PROVIDERS[provider], kind)
    result = inject(info, info.json_body, *args)
    assert info.json_body == before  # the caller's dict is never touched
    if result is not None:
        assert result is not info.json_body
        json.dumps(result)  # still serialisable as sent upstream
    return result


def think(api: str, body: dict[str, Any], budget: int = 1024, **kw: Any) -> Any:
    return call("inject_thinking", api, body, budget, **kw)


def nudge(api: str, body: dict[str, Any], **kw: Any) -> Any:
    return call("inject_nudge", api, body, NOTICE, **kw)


# --------------------------------------------------------------------------
# Anthropic thinking.

USER = {"role": "user", "content": "hi"}
BASE = {"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": [USER]}
ENABLED = {"type": "enabled", "budget_tokens": 1024}


@pytest.mark.parametrize("model, supported", [
    ("claude-3-7-sonnet-20250219", True),
    ("claude-3-7-sonnet-latest", True),
    ("claude-sonnet-4-20250514", True),
    ("claude-sonnet-4-5", True),
    ("claude-opus-4-20250514", True),
    ("claude-opus-4-1-20250805", True),
    ("claude-haiku-4-5-20251001", True),
    ("claude-opus-4-5@20251101", True),
    ("claude-3-5-sonnet-20241022", False),
    ("claude-3-5-haiku-latest", False),
    ("claude-3-haiku-20240307", False),
    ("claude-3-opus-20240229", False),
    ("claude-instant-1.2", False),
    ("claude-2.1", False),
    ("my-finetune", False),
    ("", False),
])
def test_anthropic_models(model, supported):
    result = think("anthropic.messages", {**BASE, "model": model})
    assert result == ({**BASE, "model": model, "thinking": ENABLED} if supported else None)


def _tool_turn(thinking_first: bool) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]
    if thinking_first:
        blocks.insert(0, {"type": "thinking", "thinking": "…", "signature": "s"})
    return [USER, {"role": "assistant", "content": blocks},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                          "content": "ok"}]}]


@pytest.mark.parametrize("change, injected", [
    ({}, True),
    ({"stream": True}, True),
    ({"max_tokens": 1025}, True),
    ({"max_tokens": 1024}, False),  # must exceed the budget
    ({"max_tokens": 512}, False),
    ({"max_tokens": "4096"}, False),
    ({"max_tokens": True}, False),
    ({"max_tokens": None}, False),
    ({"temperature": 1}, True),
    ({"temperature": 1.0}, True),
    ({"temperature": 0.5}, False),
    ({"temperature": 0}, False),
    ({"temperature": None}, False),
    ({"top_k": 40}, False),
    ({"top_p": 0.9}, False),
    ({"tool_choice": {"type": "auto"}}, True),
    ({"tool_choice": {"type": "none"}}, True),
    ({"tool_choice": {"type": "any"}}, False),
    ({"tool_choice": {"type": "tool", "name": "f"}}, False),
    ({"tool_choice": "auto"}, False),
    ({"thinking": {"type": "disabled"}}, False),  # client-set values win
    ({"thinking": {"type": "enabled", "budget_tokens": 5000}}, False),
    ({"thinking": None}, False),
    ({"messages": [USER, {"role": "assistant", "content": "Sure, "}]}, False),  # prefill
    ({"messages": []}, False),
    ({"messages": "hi"}, False),
    ({"messages": _tool_turn(thinking_first=False)}, False),
    ({"messages": _tool_turn(thinking_first=True)}, True),
    ({"messages": [*_tool_turn(thinking_first=False),
                   {"role": "assistant", "content": "done"}, USER]}, True),
])
def test_anthropic_request_table(change, injected):
    body = {**BASE, **change}
    result = think("anthropic.messages", body)
    assert result == ({**body, "thinking": ENABLED} if injected else None)


def test_anthropic_budget_is_at_least_the_api_minimum():
    assert think("anthropic.messages", BASE, 500)["thinking"] == ENABLED
    assert think("anthropic.messages", BASE, 2048)["thinking"]["budget_tokens"] == 2048
    assert think("anthropic.messages", {**BASE, "max_tokens": 2048}, 2048) is None


# --------------------------------------------------------------------------
# OpenAI thinking.


@pytest.mark.parametrize("model", ["o3", "gpt-5", "deepseek-reasoner", "gpt-4o"])
def test_openai_chat_never_gets_reasoning_effort(model):
    assert think("openai.chat", {"model": model, "messages": [USER]}) is None


@pytest.mark.parametrize("model, injected", [
    ("o3", True), ("o3-pro", True), ("o4-mini-2025-04-16", True), ("o1", True),
    ("gpt-5", True), ("gpt-5-mini", True), ("gpt-5.1-codex", True), ("openai/gpt-5", True),
    ("ft:o4-mini-2025-04-16:org::abc", True),
    ("gpt-5-chat-latest", False), ("gpt-4o", False), ("gpt-4.1-mini", False),
    ("o1-mini", False), ("o1-preview", False), ("omni-moderation-latest", False),
    ("", False),
])
def test_openai_responses_reasoning_models(model, injected):
    body = {"model": model, "input": "hi"}
    result = think("openai.responses", body)
    assert result == ({**body, "reasoning": {"summary": "auto"}} if injected else None)


@pytest.mark.parametrize("reasoning", [{"effort": "low"}, {"summary": "detailed"}, None])
def test_openai_responses_client_reasoning_wins(reasoning):
    assert think("openai.responses", {"model": "o3", "input": "hi", "reasoning": reasoning}) is None


# --------------------------------------------------------------------------
# Gemini thinking.

INCLUDE = {"thinkingConfig": {"includeThoughts": True}}


@pytest.mark.parametrize("model, injected", [
    ("gemini-2.5-pro", True), ("gemini-2.5-flash", True), ("gemini-2.5-flash-lite", True),
    ("gemini-3-pro-preview", True), ("gemini-2.0-flash-thinking-exp-01-21", True),
    ("gemini-2.0-flash", False), ("gemini-2.0-flash-lite", False), ("gemini-1.5-pro", False),
    ("gemini-1.0-pro", False), ("gemini-2.5-flash-image-preview", False),
    ("gemini-2.5-flash-preview-tts", False), ("gemma-3-27b-it", False),
    ("gemini-flash-latest", False),
])
def test_gemini_models(model, injected):
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    result = think("gemini.generate", body, model=model)
    assert result == ({**body, "generationConfig": INCLUDE} if injected else None)


def test_gemini_tuned_models_are_left_alone():
    provider = PROVIDERS["gemini"]
    info = provider.describe_request(b"/v1beta/tunedModels/gemini-2-5-x:generateContent", b"",
                                     b"{}")
    assert info.api == "gemini.generate"
    assert provider.inject_thinking(info, {}, 1024) is None


@pytest.mark.parametrize("body, expected", [
    ({"generationConfig": {"temperature": 0.2}},
     {"generationConfig": {"temperature": 0.2, **INCLUDE}}),
    ({"generation_config": {"temperature": 0.2}},
     {"generation_config": {"temperature": 0.2,
                            "thinking_config": {"include_thoughts": True}}}),
    ({"contents": [], "safety_settings": []},
     {"contents": [], "safety_settings": [],
      "generation_config": {"thinking_config": {"include_thoughts": True}}}),
    ({"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}, None),
    ({"generationConfig": {"thinking_config": {}}}, None),
    ({"generationConfig": {}, "generation_config": {}}, None),
    ({"generationConfig": "bad"}, None),
    ({"generationConfig": None}, None),
])
def test_gemini_generation_config_shapes(body, expected):
    assert think("gemini.generate", body) == expected


# --------------------------------------------------------------------------
# Nudges.


@pytest.mark.parametrize("system, expected", [
    (None, NOTICE),
    ("Be terse.", NOTICE + "\n\nBe terse."),
    ("", NOTICE),
    ([{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
     [{"type": "text", "text": NOTICE},
      {"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}]),
])
def test_anthropic_system_shapes(system, expected):
    body = dict(BASE) if system is None else {**BASE, "system": system}
    assert nudge("anthropic.messages", body) == {**BASE, "system": expected}


def test_anthropic_unusable_system_is_left_alone():
    assert nudge("anthropic.messages", {**BASE, "system": {"text": "?"}}) is None


SYSTEM = {"role": "system", "content": "Be terse."}
DEVELOPER = {"role": "developer", "content": [{"type": "text", "text": "Be terse."}]}


@pytest.mark.parametrize("messages, expected", [
    ([SYSTEM, USER], [{"role": "system", "content": NOTICE + "\n\nBe terse."}, USER]),
    ([USER, SYSTEM], [USER, {"role": "system", "content": NOTICE + "\n\nBe terse."}]),
    ([DEVELOPER, USER],
     [{"role": "developer", "content": [{"type": "text", "text": NOTICE},
                                        {"type": "text", "text": "Be terse."}]}, USER]),
    ([{"role": "system", "content": None}, USER], [{"role": "system", "content": NOTICE}, USER]),
    ([USER], [{"role": "system", "content": NOTICE}, USER]),
    ([], [{"role": "system", "content": NOTICE}]),
])
def test_openai_chat_message_shapes(messages, expected):
    body = {"model": "gpt-4o", "messages": messages}
    assert nudge("openai.chat", body) == {"model": "gpt-4o", "messages": expected}


@pytest.mark.parametrize("body", [
    {"model": "o1-mini", "messages": [USER]},  # takes no system message at all
    {"model": "gpt-4o", "messages": "hi"},
    {"model": "gpt-4o", "messages": [{"role": "system", "content": 5}]},
])
def test_openai_chat_left_alone(body):
    assert nudge("openai.chat", body) is None


@pytest.mark.parametrize("instructions, expected", [
    (None, NOTICE), ("Be terse.", NOTICE + "\n\nBe terse.")])
def test_openai_responses_instructions(instructions, expected):
    body = {"model": "o3", "input": "hi"}
    if instructions is not None:
        body["instructions"] = instructions
    assert nudge("openai.responses", body) == {**body, "instructions": expected}
    assert nudge("openai.responses", {**body, "instructions": ["x"]}) is None


PART = {"text": NOTICE}


@pytest.mark.parametrize("body, expected", [
    ({}, {"systemInstruction": {"parts": [PART]}}),
    ({"systemInstruction": {"parts": [{"text": "Be terse."}]}},
     {"systemInstruction": {"parts": [PART, {"text": "Be terse."}]}}),
    ({"system_instruction": {"role": "system", "parts": [{"text": "Be terse."}]}},
     {"system_instruction": {"role": "system", "parts": [PART, {"text": "Be terse."}]}}),
    ({"system_instruction": {"parts": {"text": "Be terse."}}},
     {"system_instruction": {"parts": [PART, {"text": "Be terse."}]}}),
    ({"systemInstruction": {}}, {"systemInstruction": {"parts": [PART]}}),
    ({"systemInstruction": None}, {"systemInstruction": {"parts": [PART]}}),
    ({"generation_config": {}}, {"generation_config": {},
                                 "system_instruction": {"parts": [PART]}}),
    ({"systemInstruction": {}, "system_instruction": {}}, None),
    ({"systemInstruction": "Be terse."}, None),
    ({"systemInstruction": {"parts": 5}}, None),
])
def test_gemini_system_instruction_shapes(body, expected):
    assert nudge("gemini.generate", body) == expected


def test_compat_chat_endpoints_take_chat_nudges():
    body = {"model": "gemini-2.5-flash", "messages": [USER]}
    for provider, path in [("gemini", b"/v1beta/openai/chat/completions"),
                           ("anthropic", b"/v1/chat/completions")]:
        info = PROVIDERS[provider].describe_request(path, b"", canned.encode_json(body))
        result = PROVIDERS[provider].inject_nudge(info, body, NOTICE)
        assert result["messages"][0] == {"role": "system", "content": NOTICE}
        assert PROVIDERS[provider].inject_thinking(info, body, 1024) is None


def test_unknown_api_or_unusable_input_is_never_injected():
    unknown = RequestInfo(None, None, False, None)
    for provider in PROVIDERS.values():
        assert provider.inject_nudge(unknown, {"messages": []}, NOTICE) is None
        assert provider.inject_thinking(unknown, dict(BASE), 1024) is None
        for api in PATHS:
            info = RequestInfo(api, "m", False, None)
            assert provider.inject_nudge(info, "not a dict", NOTICE) is None  # type: ignore
            assert provider.inject_thinking(info, {**BASE, "max_tokens": 2**70}, "x") is None  # type: ignore


# --------------------------------------------------------------------------
# Upstream refusing what was injected.


@pytest.mark.parametrize("api, status, error, rejected", [
    ("openai.responses", 400, {"message": "Your organization must be verified to generate "
                                          "reasoning summaries.", "param": "reasoning.summary"},
     True),
    ("openai.responses", 400, {"message": "Invalid input", "param": "input"}, False),
    ("openai.responses", 500, {"message": "reasoning failed"}, False),
    ("anthropic.messages", 400, {"type": "invalid_request_error",
                                 "message": "thinking: budget_tokens must be less than "
                                            "max_tokens"}, True),
    ("gemini.generate", 400, {"code": 400, "message": "Thinking is not supported by this model.",
                              "status": "INVALID_ARGUMENT"}, True),
    ("openai.chat", 400, {"message": "reasoning_effort unsupported"}, False),
])
def test_injection_rejected(api, status, error, rejected):
    info = RequestInfo(api, "m", False, {})
    body = canned.encode_json({"error": error})
    assert injection_rejected(info, status, body) is rejected


def test_injection_rejected_tolerates_garbage():
    info = RequestInfo("anthropic.messages", "m", False, {})
    for body in [b"", b"thinking", b"[" * 100_000, b'{"error": "thinking"}']:
        assert injection_rejected(info, 400, body) is False
