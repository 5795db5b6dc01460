"""Header hygiene for both directions of the proxy.

Hop-by-hop headers describe one connection, not the message, so they never cross the
proxy; the gateway's own ``x-mnemom-*`` request headers are instructions to the gateway and
are not the provider's business.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.web.http_headers import Headers

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"proxy-connection", b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade",
})

#: Dropped from requests too: recomputed by the client side of the proxy.
REQUEST_ONLY = frozenset({b"host", b"content-length", b"expect"})


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """Header names listed in ``Connection``: hop-by-hop by declaration."""
    names: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection") or ():
        names.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(names)


def _keep(headers: Headers, drop: Iterable[bytes],
          drop_prefixes: tuple[bytes, ...] = ()) -> list[tuple[bytes, list[bytes]]]:
    dropped = HOP_BY_HOP | connection_tokens(headers) | frozenset(drop)
    kept = []
    for name, values in headers.getAllRawHeaders():
        lower = name.lower()
        if lower in dropped or lower.startswith(drop_prefixes) or lower.startswith(b"proxy-"):
            continue
        kept.append((name, list(values)))
    return kept


def upstream_request_headers(client_headers: Headers) -> Headers:
    """The client's headers as they should reach the provider (auth untouched)."""
    return Headers(dict(_keep(client_headers, REQUEST_ONLY, (b"x-mnemom-",))))


def client_response_headers(upstream_headers: Headers) -> list[tuple[bytes, list[bytes]]]:
    """The provider's response headers as they should reach the client.

    Twisted's client has already taken Content-Length out (the relay puts it back from
    the parsed length, since the body is relayed byte for byte).
    """
    return _keep(upstream_headers, ())
