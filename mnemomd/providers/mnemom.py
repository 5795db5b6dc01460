"""Mnemom's hosted analysis service (hybrid mode): its own analyze API.

Contract (Mnemom's ``POST MNEMOM_ANALYZE_URL``, e.g. ``https://api.mnemom.ai/v1/analyze``).
Request headers ``X-Mnemom-Api-Key: <MNEMOM_API_KEY>`` and ``Content-Type:
application/json``; body::

    {"thinking_block": "<the reasoning>",
     "thinking_metadata": {"provider": "anthropic", "model": "<the agent's model>"},
     "agent_id": "…", "session_id": "…",
     "card": {"card_id": "…", "values": [{"name", "priority", "description"?}]},
     "conscience_values": [{"type", "content", "id"?}],              (when there are any)
     "window_context": [{"checkpoint_id", "verdict", "reasoning_summary"}],  (when any)
     "task_context": "anthropic call to <model>; tools used: …",   (≤ 200 characters)
     "store_checkpoint": false}

The service builds the conscience prompt itself, so neither the prompt, the user's
messages nor the response ever leave: ``task_context`` is the gateway's own description
of the call. Answer (2xx): ``{"checkpoint": {…AIP IntegrityCheckpoint…}, "proceed",
"recommended_action", "window_summary", "metering"}``. Errors: 400 (a malformed body),
401 (bad key), 402 (quota used up, account suspended), 403 (key without the analyze
scope), 429 (rate limit), 503: each is a failed analysis, like any backend's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from mnemomd.providers.analysis import (
    AnalysisAPI,
    AnalysisCall,
    AnalysisTarget,
    MalformedAnswer,
)

API_KEY_HEADER = "x-mnemom-api-key"
#: The analyze API reads at most this much of ``task_context``; the gateway sends no more.
MAX_TASK_CONTEXT = 200
VERDICTS = frozenset({"clear", "review_needed", "boundary_violation"})
SEVERITIES = frozenset({"low", "medium", "high", "critical"})
_MAX_CONCERNS = 32
_MAX_TEXT = 2000
_CHECKPOINT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def analyze_body(*, thinking: str, provider: str, model: str, agent_id: str,
                 session_id: str, card_id: str, card_values: Sequence[Mapping[str, Any]],
                 conscience_values: Sequence[Mapping[str, Any]],
                 window: Sequence[Mapping[str, Any]], task_context: str,
                 store_checkpoint: bool) -> dict[str, Any]:
    """The request body, field by field; optional fields only when they have content."""
    body: dict[str, Any] = {
        "thinking_block": thinking,
        "thinking_metadata": {"provider": provider, "model": model},
        "agent_id": agent_id,
        "session_id": session_id,
        "card": {"card_id": card_id, "values": [
            {k: v[k] for k in ("name", "priority", "description") if v.get(k) is not None}
            for v in card_values]},
    }
    values = [{k: v[k] for k in ("type", "content", "id") if v.get(k) is not None}
              for v in conscience_values]
    if values:
        body["conscience_values"] = values
    context = [{"checkpoint_id": str(e.get("checkpoint_id") or ""),
                "verdict": str(e.get("verdict") or "clear"),
                "reasoning_summary": str(e.get("reasoning_summary") or "")} for e in window]
    if context:
        body["window_context"] = context
    if task_context:
        body["task_context"] = task_context[:MAX_TASK_CONTEXT]
    body["store_checkpoint"] = bool(store_checkpoint)
    return body


def analyze_call(target: AnalysisTarget, body: Mapping[str, Any]) -> AnalysisCall:
    """The call: the body as it is, to the configured URL, with the API key header."""
    return AnalysisCall(target.endpoint, {API_KEY_HEADER: target.api_key or ""}, body)


def _text(value: Any, limit: int = _MAX_TEXT) -> str:
    return value[:limit] if isinstance(value, str) else ""


def checkpoint_of(answer: Any) -> dict[str, Any]:
    """What the gateway keeps of the service's checkpoint: verdict, concerns, reasoning
    summary, its checkpoint id and analysis model; raises :class:`MalformedAnswer` when
    there is no checkpoint with a known verdict."""
    checkpoint = answer.get("checkpoint") if isinstance(answer, Mapping) else None
    if not isinstance(checkpoint, Mapping) or checkpoint.get("verdict") not in VERDICTS:
        raise MalformedAnswer("no checkpoint with a verdict")
    concerns = []
    raw = checkpoint.get("concerns")
    for c in (raw if isinstance(raw, list) else [])[:_MAX_CONCERNS]:
        if not isinstance(c, Mapping):
            continue
        severity = c.get("severity")
        concerns.append({
            "category": _text(c.get("category"), 64) or "unknown",
            "severity": severity if severity in SEVERITIES else "medium",
            "description": _text(c.get("description")),
            "evidence": _text(c.get("evidence")),
            "relevant_card_field": _text(c.get("relevant_card_field"), 200) or None,
            "relevant_conscience_value": _text(c.get("relevant_conscience_value"), 200) or None,
        })
    remote_id = checkpoint.get("checkpoint_id")
    metadata = checkpoint.get("analysis_metadata")
    model = metadata.get("analysis_model") if isinstance(metadata, Mapping) else None
    return {
        "verdict": checkpoint["verdict"],
        "concerns": concerns,
        "reasoning_summary": _text(checkpoint.get("reasoning_summary")),
        "remote_checkpoint_id": (remote_id if isinstance(remote_id, str)
                                 and _CHECKPOINT_ID.fullmatch(remote_id) else None),
        "analysis_model": _text(model, 128) or "mnemom",
    }


def _no_prompt_calls(target: AnalysisTarget, system: str, user: str,
                     max_tokens: int) -> AnalysisCall:
    raise TypeError("the hybrid service takes the thinking block, never a prompt")


def _no_prompt_answers(answer: Any) -> str:
    raise MalformedAnswer("the hybrid service answers with a checkpoint")


ANALYSIS = AnalysisAPI(
    name="mnemom",
    build_request=_no_prompt_calls,
    parse_answer=_no_prompt_answers,
    key_setting="MNEMOM_API_KEY",
    key_rule="required",
    url_setting="MNEMOM_ANALYZE_URL",
    full_url=True,
    # Only the reasoning leaves for the hybrid service, never the response (SPEC §5.4).
    accepts_output=False,
    hybrid=True,
)
