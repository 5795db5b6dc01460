"""The tool names each request shape offers the model, as tool policies see them."""

from __future__ import annotations

import json

from mnemomd.providers import PROVIDERS
from mnemomd.providers.base import MAX_OFFERED_TOOLS


def offered(provider: str, path: str, body: dict):
    p = PROVIDERS[provider]
    info = p.describe_request(path.encode(), b"", json.dumps(body).encode())
    return p.offered_tools(info)


def test_anthropic_tools_server_tools_and_choice():
    result = offered("anthropic", "/v1/messages", {
        "model": "claude-sonnet-4-5", "stream": True,
        "tools": [{"name": "send_email", "input_schema": {}},
                  {"type": "web_search_20250305", "name": "web_search"},
                  {"type": "bash_20250124"}],
        "tool_choice": {"type": "tool", "name": "send_email"}})
    assert result.names == ("send_email", "web_search", "bash_20250124", "send_email")


def test_tool_choice_without_tools_is_seen():
    assert offered("anthropic", "/v1/messages",
                   {"tool_choice": {"type": "tool", "name": "send_x"}}).names == ("send_x",)
    assert offered("openai", "/v1/chat/completions", {
        "tool_choice": {"type": "function", "function": {"name": "send_x"}}}).names == (
        "send_x",)


def test_openai_chat_functions_custom_and_legacy():
    result = offered("openai", "/v1/chat/completions", {
        "tools": [{"type": "function", "function": {"name": "read_ticket"}},
                  {"type": "custom", "custom": {"name": "patch"}}],
        "functions": [{"name": "send_fax"}], "function_call": {"name": "send_fax"}})
    assert result.names == ("read_ticket", "patch", "send_fax", "send_fax")


def test_responses_builtins_by_type():
    result = offered("openai", "/v1/responses", {
        "tools": [{"type": "function", "name": "send_email"}, {"type": "web_search"},
                  {"type": "mcp", "server_label": "x"}],
        "tool_choice": {"type": "allowed_tools", "mode": "auto",
                        "tools": [{"type": "function", "name": "lookup"}]}})
    assert result.names == ("send_email", "web_search", "mcp", "lookup")


def test_gemini_both_spellings_builtins_and_allowed_names():
    result = offered("gemini", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", {
        "tools": [{"functionDeclarations": [{"name": "read_ticket"}],
                   "function_declarations": [{"name": "send_email"}]},
                  {"google_search": {}}, {"codeExecution": {}}, {"somethingNew": {}}],
        "tool_config": {"function_calling_config": {"allowed_function_names": ["send_sms"]}}})
    assert result.names == ("read_ticket", "send_email", "google_search", "code_execution",
                            "somethingNew", "send_sms")


def test_non_string_names_and_bounds():
    result = offered("anthropic", "/v1/messages", {"tools": [{"name": ["send_email"]}, 7]})
    assert result.names == ('["send_email"]', "7")
    many = offered("openai", "/v1/responses", {
        "tools": [{"type": "function", "name": f"t{i}"} for i in range(MAX_OFFERED_TOOLS + 5)]})
    assert len(many.names) == MAX_OFFERED_TOOLS and many.overflow


def test_other_endpoints_offer_nothing():
    assert offered("openai", "/v1/embeddings", {"tools": [{"name": "x"}]}).names == ()
