"""Provider adapters, one module each; ``PROVIDERS`` is the only registry."""

from __future__ import annotations

from mnemomd.providers import anthropic, gemini, openai
from mnemomd.providers.base import Provider

PROVIDERS: dict[str, Provider] = {
    p.name: p for p in (anthropic.PROVIDER, openai.PROVIDER, gemini.PROVIDER)
}

__all__ = ["PROVIDERS", "Provider"]
