"""OpenAI-compatible servers (vLLM, Ollama, llama.cpp) as the analysis backend only.

Not a proxy route: agents reach such servers through ``/openai/…`` with
``OPENAI_BASE_URL``. As an analysis backend it differs from OpenAI's own API in three ways:
the base URL is required (there is no official one), the key is optional and never
defaults to the gateway's OpenAI key (which must not be sent to a local server), and the
widely supported ``max_tokens`` is sent instead of ``max_completion_tokens``.
"""

from __future__ import annotations

from mnemomd.providers.analysis import AnalysisAPI
from mnemomd.providers.openai import chat_analysis_answer, chat_analysis_request

ANALYSIS = AnalysisAPI(
    name="openai-compatible",
    build_request=chat_analysis_request("max_tokens"),
    parse_answer=chat_analysis_answer,
    key_rule="optional",
)
