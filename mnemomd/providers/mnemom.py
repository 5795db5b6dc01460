"""The hosted Mnemom analysis service (hybrid mode) as the analysis backend only.

Contract. Request: ``POST MNEMOM_ANALYZE_URL`` with ``Authorization: Bearer
MNEMOM_API_KEY`` and ``Content-Type: application/json``, body ``{"system": <conscience
system prompt>, "user": <conscience user prompt>, "max_tokens": <int>}``. Response: 2xx
with either ``{"text": <the analysis model's output>}`` or the verdict object itself
(``{"verdict": …, "concerns": […], …}``, as the conscience prompt asks for). Anything
else is malformed; non-2xx is a failure.
"""

from __future__ import annotations

import json
from typing import Any

from mnemomd.providers.analysis import (
    AnalysisAPI,
    AnalysisCall,
    AnalysisTarget,
    MalformedAnswer,
    model_text,
)


def analysis_request(target: AnalysisTarget, system: str, user: str,
                     max_tokens: int) -> AnalysisCall:
    """The prompt as it is, to the configured URL itself."""
    headers = {"authorization": f"Bearer {target.api_key}"}
    body = {"system": system, "user": user, "max_tokens": max_tokens}
    return AnalysisCall(target.endpoint, headers, body)


def analysis_answer(answer: Any) -> str:
    """``text``, or the verdict object handed on as JSON text for the verdict parser."""
    if isinstance(answer, dict) and isinstance(answer.get("text"), str):
        return model_text(answer["text"])
    if isinstance(answer, dict) and "verdict" in answer:
        return json.dumps(answer)
    raise MalformedAnswer("neither text nor a verdict")


ANALYSIS = AnalysisAPI(
    name="mnemom",
    build_request=analysis_request,
    parse_answer=analysis_answer,
    key_setting="MNEMOM_API_KEY",
    key_rule="required",
    url_setting="MNEMOM_ANALYZE_URL",
    full_url=True,
    # Only the reasoning leaves for the hybrid service, never the response (SPEC §5.4).
    accepts_output=False,
)
