"""Anthropic Messages API (``/v1/messages``)."""

from __future__ import annotations

from twisted.web.http_headers import Headers

from mnemomd.providers.base import Provider, bearer_token, first_header


def find_api_key(headers: Headers, query: bytes) -> bytes | None:
    """``x-api-key``; an OAuth-style ``Authorization: Bearer`` token also identifies."""
    key = first_header(headers, b"x-api-key")
    if key is not None and key.strip():
        return key.strip()
    return bearer_token(headers)


PROVIDER = Provider(name="anthropic", find_api_key=find_api_key, key_header="x-api-key")
