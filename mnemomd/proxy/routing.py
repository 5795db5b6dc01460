"""Which provider and agent a request path names, and where it goes upstream.

Pure functions over raw request-target bytes. The upstream host is fixed per provider by
configuration, so nothing a client sends can point the proxy somewhere else; path tricks
(dot segments, encoded slashes, absolute URLs) are refused before any routing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from mnemomd.identity import is_valid_agent_name
from mnemomd.providers import PROVIDERS


class RouteError(Exception):
    """A request target the gateway refuses, with the HTTP answer it deserves."""

    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type


@dataclass(frozen=True)
class ProxyTarget:
    provider: str
    agent_name: str | None
    #: Raw path after the provider segment (``/v1/messages``), exactly as sent.
    rest: bytes
    #: Raw query string including the leading ``?``, or empty.
    query: bytes


_ENCODED_SEPARATOR = re.compile(rb"%(2f|5c|00)", re.IGNORECASE)
_FORBIDDEN_BYTES = re.compile(rb"[\x00-\x20\x7f\\]")


def split_target(uri: bytes) -> tuple[bytes, bytes]:
    """(path, query with its ``?``) of an origin-form request target."""
    path, sep, query = uri.partition(b"?")
    return path, sep + query


def check_path(path: bytes) -> None:
    """Refuse request targets that could escape the route they appear to name."""
    if not path.startswith(b"/"):
        raise RouteError(400, "Request target must be an absolute path", "invalid_request_error")
    if _FORBIDDEN_BYTES.search(path) or _ENCODED_SEPARATOR.search(path):
        raise RouteError(400, "Invalid characters in path", "invalid_request_error")
    for segment in path.split(b"/"):
        if unquote(segment.decode("latin-1")) in (".", ".."):
            raise RouteError(400, "Dot segments are not allowed in paths",
                             "invalid_request_error")


def parse_proxy_target(path: bytes, query: bytes) -> ProxyTarget | None:
    """The proxy route a checked path names, or None when it is not a proxy route."""
    segments = path.split(b"/", 4)
    name: str | None = None
    if len(segments) >= 2 and segments[1] == b"agent":
        if len(segments) < 4:
            return None
        name = unquote(segments[2].decode("latin-1"))
        if not is_valid_agent_name(name):
            raise RouteError(400, "Agent name must be 1-128 characters of A-Z a-z 0-9 . _ : @ -",
                             "invalid_request_error")
        provider_segment = segments[3]
        prefix_len = len(b"/agent/") + len(segments[2]) + 1 + len(provider_segment)
    else:
        if len(segments) < 2:
            return None
        provider_segment = segments[1]
        prefix_len = 1 + len(provider_segment)
    provider = provider_segment.decode("latin-1")
    if provider not in PROVIDERS:
        return None
    rest = path[prefix_len:]
    if rest and not rest.startswith(b"/"):
        return None
    return ProxyTarget(provider=provider, agent_name=name, rest=rest, query=query)


def upstream_url(base_url: str, target: ProxyTarget) -> bytes:
    """``{BASE}/{rest}`` with the query string unchanged."""
    rest = target.rest or b"/"
    return base_url.encode("ascii") + rest + target.query
