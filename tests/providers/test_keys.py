"""Where each provider's SDK puts the API key."""

from __future__ import annotations

import pytest
from twisted.web.http_headers import Headers

from mnemomd.providers import PROVIDERS
from mnemomd.providers.base import is_usable_key


def key(provider: str, headers: dict[bytes, list[bytes]], query: bytes = b"") -> bytes | None:
    return PROVIDERS[provider].find_api_key(Headers(headers), query)


def test_anthropic_x_api_key_then_bearer():
    assert key("anthropic", {b"x-api-key": [b"sk-ant"]}) == b"sk-ant"
    assert key("anthropic", {b"authorization": [b"Bearer sk-oauth"]}) == b"sk-oauth"
    assert key("anthropic", {b"x-api-key": [b"sk-ant"],
                             b"authorization": [b"Bearer other"]}) == b"sk-ant"
    assert key("anthropic", {b"x-api-key": [b"  "]}) is None


@pytest.mark.parametrize("value, expected", [
    (b"Bearer sk-o", b"sk-o"), (b"bearer   sk-o ", b"sk-o"), (b"Basic abc", None),
    (b"Bearer", None), (b"Bearer ", None), (b"sk-o", None),
])
def test_openai_bearer(value, expected):
    assert key("openai", {b"authorization": [value]}) == expected


def test_gemini_header_or_query():
    assert key("gemini", {b"x-goog-api-key": [b"g1"]}, b"?key=g2") == b"g1"
    assert key("gemini", {}, b"?alt=sse&key=g%2B2") == b"g+2"
    assert key("gemini", {}, b"?key=") is None
    assert key("gemini", {}, b"") is None


def test_key_header_names_for_401():
    assert {p: PROVIDERS[p].key_header for p in PROVIDERS} == {
        "anthropic": "x-api-key", "openai": "Authorization", "gemini": "x-goog-api-key"}


@pytest.mark.parametrize("query, expected", [
    (b"?key=%E2%82%AC", b"\xe2\x82\xac"),  # UTF-8 escapes: the client's bytes, not text
    (b"?key=%FF%00", b"\xff\x00"),
    (b"?key=\xe2\x82\xac", b"\xe2\x82\xac"),  # raw bytes in the request line
    (b"?key=%E2%82", b"\xe2\x82"),  # half a character
])
def test_gemini_query_key_outside_latin1_comes_back_as_bytes_without_raising(query, expected):
    assert key("gemini", {}, query) == expected


@pytest.mark.parametrize("value, usable", [
    (b"sk-ant-api03-AbC_d.e+f/g=", True), (b"\xe2\x82\xacuro", False), (b"sk\x00", False),
    (b"sk ant", False), (b"sk\tant", False), (b"\xff", False), (b"", False), (b"sk\x7f", False),
])
def test_only_visible_ascii_is_a_usable_key(value, usable):
    assert is_usable_key(value) is usable
