"""Incremental Server-Sent Events parser (WHATWG event-stream rules), bytes in, events out.

Shared by every provider: the proxy sees upstream bytes cut anywhere (mid-line, mid-CRLF,
mid-character), so framing works on bytes and UTF-8 is decoded only once an event is
reassembled. Work is linear in the input however it is chunked.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"
_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. ``terminated`` is False for a final event cut short."""

    event: str
    data: str
    id: str | None = None
    terminated: bool = True


def _text(raw: bytes, final: bool = True) -> str:
    """UTF-8 with bad bytes replaced; unless ``final``, a cut-off last character is dropped."""
    if final:
        return raw.decode("utf-8", "replace")
    return codecs.getincrementaldecoder("utf-8")("replace").decode(raw, final=False)


class SSEParser:
    """Feed bytes as they arrive; get complete events back.

    Lines end in CRLF, LF or a lone CR; a trailing CR is held back until the next byte
    shows whether it starts a CRLF. Comments (``:``) and unknown fields are ignored,
    ``data`` lines of one event are joined with ``\\n``.
    """

    def __init__(self, framed: bool = False) -> None:
        # With ``framed``, each dispatched event's end offset is kept for ``feed_framed``.
        self._framed = framed
        self._ends: list[int] = []
        self._consumed = 0  # stream offset of _buf[0]
        self._buf = bytearray()
        self._searched = 0  # bytes of _buf known to hold no line terminator
        self._started = False
        self._data: list[bytes] = []
        self._event = b""
        self._id: bytes | None = None
        self._has_fields = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse ``chunk``; return the events it completed."""
        if not chunk:
            return []
        buf = self._buf
        buf += chunk
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(bytes(buf)):
                return []
            if buf.startswith(_BOM):
                del buf[: len(_BOM)]
                self._consumed += len(_BOM)
            self._started = True
        searched = self._searched
        end = max(buf.rfind(b"\n", searched), buf.rfind(b"\r", searched)) + 1
        if end and end == len(buf) and buf[end - 1] == 0x0D:
            # A CR as the last byte may be half of a CRLF: keep its line for later.
            end = max(buf.rfind(b"\n", searched, end - 1), buf.rfind(b"\r", searched, end - 1)) + 1
            self._searched = len(buf) - 1 - end
        else:
            self._searched = len(buf) - end
        if end <= 0:
            return []
        region = bytes(buf[:end])
        del buf[:end]
        events: list[SSEEvent] = []
        if self._framed:
            self._framed_lines(region, events)
        else:
            self._lines(region.splitlines(), events)
        self._consumed += end
        return events

    def feed_framed(self, chunk: bytes) -> list[tuple[SSEEvent, int]]:
        """``feed`` for a parser built with ``framed=True``: each event with the stream
        offset just past its blank line, so a relay can pass on the exact bytes of whole
        events and keep the rest."""
        events = self.feed(chunk)
        ends, self._ends = self._ends, []
        return list(zip(events, ends, strict=True))

    def close_framed(self) -> list[tuple[SSEEvent, int]]:
        """``close`` with offsets, as ``feed_framed``: a final event ends at the input's end."""
        events = self.close()
        ends, self._ends = self._ends, []
        return list(zip(events, ends, strict=True))

    def close(self) -> list[SSEEvent]:
        """End of input: flush a final line and an event that never got its blank line."""
        events: list[SSEEvent] = []
        if not self._started and self._buf.startswith(_BOM):
            del self._buf[: len(_BOM)]
        if self._buf:
            self._lines(bytes(self._buf).splitlines(), events)
            self._consumed += len(self._buf)
            self._buf.clear()
        self._searched = 0
        if self._data:
            events.append(self._make(terminated=False))
            if self._framed:
                self._ends.append(self._consumed)
        self._reset()
        return events

    def _framed_lines(self, region: bytes, events: list[SSEEvent]) -> None:
        """``_lines`` one line at a time, noting where each dispatched event ends."""
        start = 0
        for match in _EOL.finditer(region):
            before = len(events)
            self._lines([region[start:match.start()]], events)
            start = match.end()
            if len(events) > before:
                self._ends.append(self._consumed + start)

    def _lines(self, lines: list[bytes], events: list[SSEEvent]) -> None:
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(self._make(terminated=True))
                self._reset()
                data = self._data
                continue
            if line[0] == 0x3A:  # ":" comment
                continue
            name, colon, value = line.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                self._event = value
            elif name == b"id":
                if b"\x00" not in value:
                    self._id = value

    def _make(self, terminated: bool) -> SSEEvent:
        return SSEEvent(
            event=_text(self._event) or "message",
            data=_text(b"\n".join(self._data), final=terminated),
            id=None if self._id is None else _text(self._id),
            terminated=terminated,
        )

    def _reset(self) -> None:
        self._data = []
        self._event = b""


def parse_sse(body: bytes) -> list[SSEEvent]:
    """All events of a whole (possibly truncated) event-stream body."""
    parser = SSEParser()
    events = parser.feed(body)
    events.extend(parser.close())
    return events


def looks_like_sse(body: bytes) -> bool:
    """Whether a body without a trustworthy content type starts like an event stream."""
    head = body[:64].lstrip(_BOM).lstrip()
    return head.startswith((b"data:", b"event:", b"id:", b":", b"retry:"))
