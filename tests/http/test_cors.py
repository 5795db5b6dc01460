"""CORS answers for preflights and real responses."""

from __future__ import annotations

from mnemomd.http import cors


def test_wildcard_by_default():
    headers = dict(cors.response_headers(b"https://app.example", ("*",)))
    assert headers[b"access-control-allow-origin"] == b"*"
    assert b"x-mnemom-agent" in headers[b"access-control-expose-headers"]
    assert b"X-AIP-Verdict" in headers[b"access-control-expose-headers"]


def test_allow_list_echoes_only_listed_origins():
    allowed = ("https://app.example",)
    headers = dict(cors.response_headers(b"https://app.example", allowed))
    assert headers[b"access-control-allow-origin"] == b"https://app.example"
    assert headers[b"vary"] == b"Origin"
    assert cors.response_headers(b"https://evil.example", allowed) == []
    assert cors.preflight_headers(b"https://evil.example", None, allowed) == []


def test_preflight_echoes_requested_headers():
    headers = dict(cors.preflight_headers(b"https://a", b"x-api-key, content-type", ("*",)))
    assert headers[b"access-control-allow-headers"] == b"x-api-key, content-type"
    assert b"POST" in headers[b"access-control-allow-methods"]
