"""Which provider and agent a request path names, and where it goes upstream.

Pure functions over raw request-target bytes. The upstream host is fixed per provider by
configuration, so nothing a client sends can point the proxy somewhere else; path tricks
(dot segments, encoded slashes, absolute URLs) are refused before any routing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from mnemomd.agents.identity import is_valid_agent_name
from mnemomd.http.paths import RouteError
from mnemomd.providers import PROVIDERS, Provider


@dataclass(frozen=True)
class ProxyTarget:
    provider: str
    agent_name: str | None
    #: Raw path after the provider segment (``/v1/messages``), exactly as sent.
    rest: bytes
    #: Raw query string including the leading ``?``, or empty.
    query: bytes


def parse_proxy_target(path: bytes, query: bytes,
                       providers: Mapping[str, Provider] = PROVIDERS) -> ProxyTarget | None:
    """The proxy route a checked path names, or None when it is not a proxy route: the
    first segment (after ``/agent/{name}``) must be a provider registered in ``providers``."""
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
    if provider not in providers:
        return None
    rest = path[prefix_len:]
    if rest and not rest.startswith(b"/"):
        return None
    return ProxyTarget(provider=provider, agent_name=name, rest=rest, query=query)


def upstream_url(base_url: str, target: ProxyTarget) -> bytes:
    """``{BASE}/{rest}`` with the query string unchanged."""
    rest = target.rest or b"/"
    return base_url.encode("ascii") + rest + target.query
