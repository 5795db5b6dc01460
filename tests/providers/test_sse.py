"""The shared SSE parser: framing per the event-stream rules, however the bytes are cut."""

from __future__ import annotations

import pytest

from mnemomd.providers.sse import SSEEvent, SSEParser, looks_like_sse, parse_sse
from tests.fakes import canned


def feed_all(pieces: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    events.extend(parser.close())
    return events


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings(eol):
    body = eol.join([b"event: a", b"data: 1", b"", b"data: 2", b"", b""])
    assert [(e.event, e.data) for e in parse_sse(body)] == [("a", "1"), ("message", "2")]


def test_multi_line_data_comments_ids_and_fields():
    body = (b": keep-alive comment\n"
            b"id: 7\nevent: delta\ndata: first\ndata:second\ndata\nretry: 10\nunknown: x\n\n"
            b"data:  two spaces keep one\n\n")
    first, second = parse_sse(body)
    assert first == SSEEvent("delta", "first\nsecond\n", "7", True)
    assert second.data == " two spaces keep one"


def test_events_without_data_are_not_dispatched():
    assert parse_sse(b"event: ping\n\n: comment\n\nid: 3\n\n") == []


def test_bom_is_ignored_even_when_split():
    events = feed_all([b"\xef", b"\xbb", b"\xbfdata: x\n\n"])
    assert [e.data for e in events] == ["x"]


@pytest.mark.parametrize("api", list(canned.Api))
@pytest.mark.parametrize("seed", range(3))
def test_canned_streams_split_anywhere_give_the_same_events(api, seed):
    body = b"".join(canned.canned(api, True, "m"))  # type: ignore[arg-type]
    whole = parse_sse(body)
    assert len(whole) == len(canned.split_sse_events(body))
    assert feed_all(canned.tiny_pieces(body, seed=seed)) == whole
    assert feed_all([bytes([b]) for b in body]) == whole


def test_crlf_split_between_cr_and_lf_is_one_line_end():
    events = feed_all([b"data: a\r", b"\n\r", b"\n", b"data: b\r\n\r\n"])
    assert [e.data for e in events] == ["a", "b"]


def test_multibyte_characters_decoded_after_reassembly():
    data = "data: héllo 世界 🌍\n\n".encode()
    events = feed_all([data[i:i + 1] for i in range(len(data))])
    assert events[0].data == "héllo 世界 🌍"


def test_truncated_final_event_is_kept_and_marked():
    body = "data: ok\n\ndata: {\"t\": \"世".encode()[:-1]
    ok, cut = parse_sse(body)
    assert ok.terminated and ok.data == "ok"
    assert not cut.terminated and cut.data == '{"t": "'  # half a character is dropped


def test_invalid_utf8_is_replaced_not_raised():
    (event,) = parse_sse(b"data: \xff\xfe ok \xc3\n\n")
    assert event.data == "\ufffd\ufffd ok \ufffd"


def test_ten_megabytes_of_data_lines_is_one_event():
    body = b"data: x\n" * (10 * 1024 * 1024 // 8)
    (event,) = parse_sse(body)
    assert not event.terminated
    assert len(event.data) == 2 * len(body) // 8 - 1


def test_one_huge_line_fed_in_small_chunks():
    parser = SSEParser()
    line = b"data: " + b"y" * 2_000_000
    for start in range(0, len(line), 4096):
        assert parser.feed(line[start:start + 4096]) == []
    assert [len(e.data) for e in parser.feed(b"\n\n")] == [2_000_000]


def test_looks_like_sse():
    assert looks_like_sse(b"data: {}\n\n")
    assert looks_like_sse(b"\n\nevent: x\n")
    assert looks_like_sse(b": comment\n")
    assert not looks_like_sse(b'{"data": 1}')
    assert not looks_like_sse(b"")
