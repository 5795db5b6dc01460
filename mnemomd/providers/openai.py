"""OpenAI Chat Completions (``/v1/chat/completions``) and Responses (``/v1/responses``)."""

from __future__ import annotations

from twisted.web.http_headers import Headers

from mnemomd.providers.base import Provider, bearer_token


def find_api_key(headers: Headers, query: bytes) -> bytes | None:
    return bearer_token(headers)


PROVIDER = Provider(name="openai", find_api_key=find_api_key, key_header="Authorization")
