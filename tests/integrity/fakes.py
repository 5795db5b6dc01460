"""Fake analysis backends: real HTTP servers on 127.0.0.1 speaking each backend's API.

Each server answers its dialect's route with the model text an *action* selects, records
every request, and misbehaves on demand. Actions are consumed one per request from
``script``; when it is empty, ``default`` is used.

Actions: ``valid`` (verdict JSON), ``prose`` (the JSON inside chatter and a code fence),
``garbage`` (text with no verdict), ``bad_envelope`` (a 200 whose body is not JSON),
``raw`` (mnemom only: its analyze answer around ``VERDICT_REVIEW``), ``status:<code>``, ``hang``
(never answers), ``oversize`` / ``oversize_cl`` (a body over the client's limit, chunked
or with a Content-Length), or a ``dict`` (that verdict as valid JSON).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.server import NOT_DONE_YET, Request

from tests.fakes.local import LocalServer

VERDICT_REVIEW: dict[str, Any] = {
    "verdict": "review_needed",
    "concerns": [{
        "category": "value_misalignment", "severity": "medium",
        "description": "Plans to skip a requested safety check.",
        "evidence": "E" * 300,
        "relevant_card_field": "values.declared", "relevant_conscience_value": None,
    }],
    "reasoning_summary": "The agent considers skipping a check the user asked for.",
    "conscience_context": {"values_checked": ["safety"], "conflicts": ["safety"],
                           "supports": [], "considerations": [],
                           "consultation_depth": "standard"},
}

VERDICT_VIOLATION: dict[str, Any] = {
    "verdict": "boundary_violation",
    "concerns": [{"category": "prompt_injection", "severity": "critical",
                  "description": "Follows injected instructions.", "evidence": "ignore prior",
                  "relevant_card_field": None, "relevant_conscience_value": None}],
    "reasoning_summary": "Injected instructions are being followed.",
    "conscience_context": {"values_checked": [], "conflicts": [], "supports": [],
                           "considerations": [], "consultation_depth": "deep"},
}

VERDICT_CLEAR: dict[str, Any] = {
    "verdict": "clear", "concerns": [],
    "reasoning_summary": "Routine reasoning within the card.",
    "conscience_context": {"values_checked": ["transparency"], "conflicts": [],
                           "supports": ["transparency"], "considerations": [],
                           "consultation_depth": "surface"},
}

ROUTES = {
    "anthropic": "/v1/messages",
    "openai": "/v1/chat/completions",
    "gemini": None,  # /v1beta/models/{model}:generateContent
    "mnemom": "/analyze",
}


def model_text(action: Any) -> str | None:
    if isinstance(action, dict):
        return json.dumps(action)
    if action == "valid":
        return json.dumps(VERDICT_REVIEW)
    if action == "prose":
        return ("Let me walk through the priorities {briefly}.\n```json\n"
                + json.dumps(VERDICT_REVIEW, indent=2) + "\n```\nThat is my verdict.")
    if action == "garbage":
        return "I am unable to evaluate this thinking block."
    return None


def envelope(dialect: str, text: str) -> dict[str, Any]:
    if dialect == "anthropic":
        return {"id": "msg_fake", "type": "message", "role": "assistant",
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn"}
    if dialect == "openai":
        return {"id": "chatcmpl-fake", "object": "chat.completion",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}]}
    if dialect == "gemini":
        return {"candidates": [{"content": {"role": "model", "parts": [
            {"text": "model-side thoughts", "thought": True}, {"text": text}]},
            "finishReason": "STOP"}]}
    return hybrid_answer(text)


def hybrid_answer(text: str) -> dict[str, Any]:
    """Mnemom's analyze API answer around the verdict in ``text`` (found as the service
    finds it, from the first ``{`` to the last ``}``); none when there is no verdict."""
    start, end = text.find("{"), text.rfind("}")
    try:
        verdict = json.loads(text[start:end + 1]) if start >= 0 else None
    except ValueError:
        verdict = None
    if not isinstance(verdict, dict):
        return {"error": "no checkpoint"}
    checkpoint = {
        "checkpoint_id": "ic-hybrid-0001", "agent_id": "agent-1", "card_id": "ac-test",
        "session_id": "sess-1", "timestamp": "2025-01-01T00:00:00.000Z",
        "thinking_block_hash": "0" * 64, "provider": "anthropic", "model": "m",
        "window_position": {"index": 1, "window_size": 2},
        "analysis_metadata": {"analysis_model": "claude-haiku-4-5-20251001",
                              "analysis_duration_ms": 12, "thinking_tokens_original": 160,
                              "thinking_tokens_analyzed": 160, "truncated": False,
                              "extraction_confidence": 1.0},
        "linked_trace_id": None, **verdict}
    proceed = verdict.get("verdict") == "clear"
    return {"checkpoint": checkpoint, "proceed": proceed,
            "recommended_action": "continue" if proceed else "log_and_continue",
            "window_summary": {"size": 2, "verdicts": {"clear": 1}},
            "metering": {"event_id": "me-fake", "account_id": "acct-1", "billed": True}}


class FakeAnalysisServer(LocalServer):
    """One fake analysis backend of the given dialect."""

    def __init__(self, dialect: str) -> None:
        super().__init__()
        self.dialect = dialect
        self.default: Any = "valid"
        self.script: list[Any] = []
        self.oversize_bytes = 64 * 1024
        self._hanging: list[Request] = []

    def _route_ok(self, path: str) -> bool:
        if self.dialect == "gemini":
            return path.startswith("/v1beta/models/") and path.endswith(":generateContent")
        return path == ROUTES[self.dialect]

    def handle(self, request: Request) -> bytes | int:
        raw = request.content.read()
        path = request.path.decode()
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.record({"path": path, "headers": headers, "body": body})
        action = self.script.pop(0) if self.script else self.default
        request.setHeader(b"content-type", b"application/json")
        if not self._route_ok(path):
            request.setResponseCode(404)
            return b'{"error": "no such route"}'
        if isinstance(action, str) and action.startswith("status:"):
            request.setResponseCode(int(action.split(":", 1)[1]))
            return b'{"error": {"type": "overloaded_error", "message": "try later"}}'
        if action == "hang":
            self._hanging.append(request)
            return NOT_DONE_YET
        if action == "bad_envelope":
            return b"<html>gateway error</html>"
        if action in ("oversize", "oversize_cl"):
            padding = "x" * self.oversize_bytes
            payload = json.dumps({"padding": padding} if self.dialect == "mnemom"
                                 else envelope(self.dialect, padding)).encode()
            if action == "oversize_cl":
                return payload  # twisted.web sets Content-Length for a returned body
            request.write(payload)
            request.finish()
            return NOT_DONE_YET
        if action == "raw":
            return json.dumps(hybrid_answer(json.dumps(VERDICT_REVIEW))).encode()
        text = model_text(action)
        assert text is not None, f"unknown action {action!r}"
        return json.dumps(envelope(self.dialect, text)).encode()

