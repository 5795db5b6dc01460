"""Google Gemini API (``/v1beta/models/{model}:generateContent`` and streaming)."""

from __future__ import annotations

from twisted.web.http_headers import Headers

from mnemomd.providers.base import Provider, first_header, query_param


def find_api_key(headers: Headers, query: bytes) -> bytes | None:
    """``x-goog-api-key`` header, or the ``key`` query parameter older clients use."""
    key = first_header(headers, b"x-goog-api-key")
    if key is not None and key.strip():
        return key.strip()
    return query_param(query, "key")


PROVIDER = Provider(name="gemini", find_api_key=find_api_key, key_header="x-goog-api-key")
