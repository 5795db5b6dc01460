"""Recovering truncated JSON documents, and refusing hostile ones without raising."""

from __future__ import annotations

import json

import pytest

from mnemomd.providers.jsonutil import (
    MISSING,
    Parsed,
    decode_text,
    dumps_request,
    loads,
    parse_document,
    parse_partial,
    repair,
)


@pytest.mark.parametrize("cut, expected", [
    ('{"a":"b', {"a": "b"}),
    ('{"a":"b","c', {"a": "b"}),
    ('{"a":"b","c":', {"a": "b"}),
    ('{"a":[1,2,{"x":"y\\u00', {"a": [1, 2, {"x": "y"}]}),
    ('{"a":"x\\', {"a": "x"}),
    ('{"a":tru', {}),
    ('{"a":12', {}),  # a number at the very end may itself be cut short
    ('{"a":12,', {"a": 12}),
    ('[{"t":1},\r\n{"t":"ab', [{"t": 1}, {"t": "ab"}]),
    (' {"a" : [ "b" , 2 ] , "c":"d', {"a": ["b", 2], "c": "d"}),
    ('"abc', "abc"),
    ("{", {}),
    ("[", []),
    ('{"a":1}trailing', {"a": 1}),
])
def test_repair_keeps_what_was_said(cut, expected):
    fixed = repair(cut)
    assert fixed is not None
    assert json.loads(fixed) == expected


@pytest.mark.parametrize("bad", ["", "   ", "x", "}", '{"a" "b"}', '{"a":"x\\q"}', "[1,,2]",
                                 "tru", '{"a":1]'])
def test_repair_refuses_garbage(bad):
    assert parse_partial(bad) is MISSING


def test_every_prefix_of_a_document_parses_to_a_prefix_of_its_content():
    doc = {"k": "héllo 世界 🌍 \"q\" \\ \u2028", "list": [1, 2.5, True, None, {"n": []}]}
    text = json.dumps(doc, ensure_ascii=False)
    for end in range(1, len(text)):
        value = parse_partial(text[:end])
        if value is MISSING:
            continue
        assert isinstance(value, dict)
        assert doc["k"].startswith(value.get("k", ""))


def test_escaped_unicode_cut_inside_surrogate_pair():
    assert parse_partial('{"a":"\\ud83d\\ude') == {"a": "\ud83d"}


def test_deeply_nested_input_never_raises():
    for text in ["[" * 100_000, '{"a":' * 100_000, "[" * 100_000 + "]" * 100_000]:
        assert loads(text) is MISSING
        assert parse_partial(text) is MISSING
        assert parse_document(text.encode()) == Parsed(MISSING, False)


def test_parse_document_exact_or_repaired():
    assert parse_document(b'{"a":1}') == Parsed({"a": 1}, True)
    assert parse_document(b'\xef\xbb\xbf{"a":1}') == Parsed({"a": 1}, True)
    assert parse_document(b'{"a":"b').value == {"a": "b"}
    assert not parse_document(b'{"a":"b').exact
    assert parse_document(b"\xff\xfe") == Parsed(MISSING, False)


def test_parsed_knows_which_objects_the_cut_left_open():
    parsed = parse_document(b'{"done":{"x":1},"parts":[{"text":"a"},{"text":"b')
    assert parsed.is_open(parsed.value)
    assert not parsed.is_open(parsed.value["done"])
    first, last = parsed.value["parts"]
    assert parsed.is_open(last) and not parsed.is_open(first)
    parsed = parse_document(b'{"parts":[{"text":"a"}],"usage":{"n":')
    assert not parsed.is_open(parsed.value["parts"][0])


def test_decode_text_drops_a_cut_character_and_replaces_bad_bytes():
    data = "é世🌍".encode()
    assert decode_text(data[:-1]) == "é世"
    assert decode_text(b"a\xffb") == "a\ufffdb"


def test_huge_flat_and_unterminated_inputs():
    parsed = parse_document(b"[" + b"1," * 500_000)
    assert not parsed.exact and len(parsed.value) == 500_000
    parsed = parse_document(b'{"t":"' + b"x" * 5_000_000)
    assert parsed.value == {"t": "x" * 5_000_000}


@pytest.mark.parametrize("body", [
    b'{"model":"m","temperature":1e400}', b'{"x":-1e400}', b'{"x":[1,2,1E999]}',
    b'{"x":NaN}', b'{"x":Infinity}',
])
def test_a_number_json_cannot_write_back_is_not_re_serialised(body):
    value = loads(body, strict=True)
    assert value is not MISSING  # Python reads it (as inf or nan) ...
    assert dumps_request(value) is None  # ... but will not write invalid JSON back


def test_a_request_body_json_can_write_back_is_re_serialised():
    value = {"a": 1e300, "b": -0.5, "c": 10**40, "t": "h\u00e9llo \U0001f30d", "s": "\ud800"}
    encoded = dumps_request(value)
    assert encoded is not None
    assert json.loads(encoded) == value
    assert b"Infinity" not in encoded and b"NaN" not in encoded
