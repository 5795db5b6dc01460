"""Provider adapters, one module each; ``PROVIDERS`` is the only registry.

Adding a provider: write a module that builds a ``Provider`` (its official base URL and
settings, API ids, request description, injection, extraction and, optionally, its
analysis API) and list it below. Routing, the configuration's per-provider settings and
the analysis backend choices all derive from ``PROVIDERS``.
"""

from __future__ import annotations

from mnemomd.providers import anthropic, gemini, mnemom, openai, openai_compatible
from mnemomd.providers.analysis import AnalysisAPI, AnalysisCall, AnalysisTarget
from mnemomd.providers.anthropic import ANTHROPIC_MESSAGES
from mnemomd.providers.base import (
    Extraction,
    Provider,
    RequestInfo,
    ToolCall,
    decode_body,
)
from mnemomd.providers.gemini import GEMINI_GENERATE
from mnemomd.providers.openai import OPENAI_CHAT, OPENAI_RESPONSES
from mnemomd.providers.registry import ProviderRegistry

PROVIDERS = ProviderRegistry(
    (anthropic.PROVIDER, openai.PROVIDER, gemini.PROVIDER),
    analysis_only=(openai_compatible.ANALYSIS, mnemom.ANALYSIS),
)

#: Whether a 400 blames the injected reasoning parameter (see ``Provider.injection_hints``).
injection_rejected = PROVIDERS.injection_rejected

__all__ = [
    "ANTHROPIC_MESSAGES",
    "GEMINI_GENERATE",
    "OPENAI_CHAT",
    "OPENAI_RESPONSES",
    "PROVIDERS",
    "AnalysisAPI",
    "AnalysisCall",
    "AnalysisTarget",
    "Extraction",
    "Provider",
    "ProviderRegistry",
    "RequestInfo",
    "ToolCall",
    "decode_body",
    "injection_rejected",
]
