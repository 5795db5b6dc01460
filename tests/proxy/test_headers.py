"""Hop-by-hop and gateway header filtering in both directions."""

from __future__ import annotations

from twisted.web.http_headers import Headers

from mnemomd.proxy.headers import client_response_headers, upstream_request_headers


def test_request_headers_filtered():
    headers = Headers({
        b"Host": [b"gateway:8787"], b"Connection": [b"keep-alive, X-Private"],
        b"X-Private": [b"1"], b"Keep-Alive": [b"timeout=5"], b"TE": [b"trailers"],
        b"Transfer-Encoding": [b"chunked"], b"Content-Length": [b"12"],
        b"Proxy-Authorization": [b"Basic x"], b"Upgrade": [b"h2c"], b"Expect": [b"100-continue"],
        b"x-mnemom-session": [b"s1"], b"X-Mnemom-Anything": [b"z"],
        b"x-api-key": [b"sk-ant"], b"Authorization": [b"Bearer sk"],
        b"anthropic-version": [b"2023-06-01"], b"Content-Type": [b"application/json"],
    })
    kept = {name.lower() for name, _ in upstream_request_headers(headers).getAllRawHeaders()}
    assert kept == {b"x-api-key", b"authorization", b"anthropic-version", b"content-type"}


def test_auth_values_pass_untouched():
    headers = upstream_request_headers(Headers({b"Authorization": [b"Bearer  sk-Ab/+="]}))
    assert headers.getRawHeaders(b"authorization") == [b"Bearer  sk-Ab/+="]


def test_response_headers_keep_multiple_values_and_length():
    upstream = Headers({
        b"Set-Cookie": [b"a=1", b"b=2"], b"Content-Length": [b"10"], b"Connection": [b"close"],
        b"Transfer-Encoding": [b"chunked"], b"Retry-After": [b"7"],
    })
    kept = dict(client_response_headers(upstream))
    assert kept[b"Set-Cookie"] == [b"a=1", b"b=2"]
    assert kept[b"Content-Length"] == [b"10"]
    assert b"Connection" not in kept and b"Transfer-Encoding" not in kept
