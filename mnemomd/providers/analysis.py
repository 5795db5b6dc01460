"""How an LLM API is called as the integrity analysis backend (SPEC §5.4).

A provider module says what one analysis call looks like on its wire (URL, headers, JSON
body) and where the model's text is in the answer; ``mnemomd.integrity.backends`` does the
HTTP and turns every failure into a reason code. Keeping the two apart lets a provider be
added, and its analysis dialect tested, without touching the transport. Everything here is
pure: no I/O, no reactor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

#: How an analysis API treats the gateway's key:
#: ``expected``: calls need one; without it every analysis fails, which is a warning at start.
#: ``required``: calls need one, and starting without it is a configuration error.
#: ``optional``: sent when set (local servers often take none).
KeyRule = Literal["expected", "required", "optional"]

#: The setting that points analysis at a server, named when it is missing.
ANALYSIS_BASE_URL = "ANALYSIS_BASE_URL"


class MalformedAnswer(ValueError):
    """The analysis answer has no usable model text. Any exception a parser raises counts
    as malformed; this one says so on purpose."""


@dataclass(frozen=True)
class AnalysisTarget:
    """Where one analysis call goes and as whom, resolved from the analysis settings."""

    #: Base URL of the API, or the whole URL for APIs with ``full_url``.
    endpoint: str
    model: str
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AnalysisCall:
    """One analysis request as it goes on the wire: POST ``body`` as JSON to ``url``."""

    url: str
    headers: Mapping[str, str] = field(repr=False)
    body: Mapping[str, Any] = field(repr=False)


class AnalysisRequestBuilder(Protocol):
    def __call__(
        self, target: AnalysisTarget, system: str, user: str, max_tokens: int
    ) -> AnalysisCall: ...


class AnalysisAnswerParser(Protocol):
    def __call__(self, answer: Any) -> str: ...


@dataclass(frozen=True, kw_only=True)
class AnalysisAPI:
    """An API the analysis can call: its wire format and what it needs configured."""

    #: The ``ANALYSIS_PROVIDER`` value, also the backend's metric label.
    name: str
    #: (target, system prompt, user prompt, max output tokens) -> the request to send.
    build_request: AnalysisRequestBuilder
    #: The decoded JSON of a 2xx answer -> the model's text; raises when there is none.
    parse_answer: AnalysisAnswerParser
    #: Where calls go when no base URL is configured; None: the operator must name one.
    official_base_url: str | None = None
    #: The setting holding the gateway's own key for this API (``ANTHROPIC_API_KEY``), used
    #: when ``ANALYSIS_API_KEY`` is unset; None: only ``ANALYSIS_API_KEY`` is sent.
    key_setting: str | None = None
    key_rule: KeyRule = "expected"
    #: The setting named when no endpoint is configured.
    url_setting: str = ANALYSIS_BASE_URL
    #: The endpoint is the whole URL to POST to, not a base URL.
    full_url: bool = False
    #: Whether this API may be sent a response's output for analysis (``without_reasoning:
    #: analyse_output``); False for a service promised only the reasoning (SPEC §5.4).
    accepts_output: bool = True
    #: The API takes the thinking block and the card (Mnemom's analyze API) and answers
    #: with a checkpoint, instead of a prompt and the model's text.
    hybrid: bool = False


# --------------------------------------------------------------------------
# Helpers for the provider modules' builders and parsers.


def versioned_url(base: str, versions: tuple[str, ...], rest: str) -> str:
    """``base`` + ``rest``, adding the API version prefix (``versions[0]``) unless ``base``
    already ends with one, so base URLs work with or without it (as the SDKs accept)."""
    path = urlsplit(base).path.rstrip("/")
    if path.endswith(versions):
        return f"{base.rstrip('/')}{rest}"
    return f"{base.rstrip('/')}{versions[0]}{rest}"


def model_text(value: object) -> str:
    """The model's text, or ``MalformedAnswer`` when there is none."""
    if not isinstance(value, str) or not value.strip():
        raise MalformedAnswer("no text")
    return value


def join_text_parts(parts: object, kind_key: str | None = None, kind: str | None = None,
                    skip_key: str | None = None) -> str:
    """The ``text`` of a list of content parts, joined; parts of another ``kind`` or with
    a true ``skip_key`` (a model's own thoughts) are left out."""
    if not isinstance(parts, list):
        raise MalformedAnswer("no parts")
    texts = []
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            continue
        if kind_key is not None and part.get(kind_key) != kind:
            continue
        if skip_key is not None and part.get(skip_key):
            continue
        texts.append(part["text"])
    return model_text("".join(texts))
