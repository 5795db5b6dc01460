"""What the gateway needs to know about one LLM provider's HTTP API.

Everything provider-specific lives behind this interface so the proxy stays generic:
adding a provider means adding one module that builds a ``Provider``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from twisted.web.http_headers import Headers


def first_header(headers: Headers, name: bytes) -> bytes | None:
    values = headers.getRawHeaders(name)
    return values[0] if values else None


def bearer_token(headers: Headers) -> bytes | None:
    """The token of an ``Authorization: Bearer …`` header, if there is one."""
    value = first_header(headers, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token


def query_param(query: bytes, name: str) -> bytes | None:
    """A query-string parameter, percent-decoded, or None."""
    text = query.decode("latin-1").removeprefix("?")
    for key, value in parse_qsl(text, keep_blank_values=False):
        if key == name and value:
            return value.encode("latin-1")
    return None


@dataclass(frozen=True)
class Provider:
    """An LLM provider as the proxy sees it."""

    name: str
    #: How the credential the agent sends is found: (request headers, raw query) -> key.
    find_api_key: Callable[[Headers, bytes], bytes | None]
    #: The header named in the 401 answer when no credential is sent.
    key_header: str
