"""Provider adapters, one module each; ``PROVIDERS`` is the only registry."""

from __future__ import annotations

from mnemomd.providers import anthropic, gemini, openai
from mnemomd.providers.base import (
    ANTHROPIC_MESSAGES,
    GEMINI_GENERATE,
    OPENAI_CHAT,
    OPENAI_RESPONSES,
    Extraction,
    Provider,
    RequestInfo,
    ToolCall,
    decode_body,
    injection_rejected,
)

PROVIDERS: dict[str, Provider] = {
    p.name: p for p in (anthropic.PROVIDER, openai.PROVIDER, gemini.PROVIDER)
}

__all__ = [
    "ANTHROPIC_MESSAGES",
    "GEMINI_GENERATE",
    "OPENAI_CHAT",
    "OPENAI_RESPONSES",
    "PROVIDERS",
    "Extraction",
    "Provider",
    "RequestInfo",
    "ToolCall",
    "decode_body",
    "injection_rejected",
]
