"""Defensive JSON helpers for captured provider traffic.

The proxy keeps a capped copy of each response, so documents arrive cut off mid-string,
mid-character or mid-escape, and hostile upstreams can send anything. These helpers never
raise, run in linear time, and recover what a truncated document did say (``repair``).
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass, field
from typing import Any

#: Nesting deeper than this is refused outright (``json`` itself would hit recursion limits).
MAX_DEPTH = 256

# One token per match, with leading whitespace; possessive quantifiers never backtrack.
_TOKEN = re.compile(
    r'[ \t\n\r]*+(?:(")|([{\[])|([}\]])|(,)|(:)'
    r"|(-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?(?:[eE][+-]?[0-9]++)?|true|false|null))"
)
_QUOTE, _OPEN, _CLOSE, _COMMA, _COLON, _SCALAR = range(1, 7)
# The well-formed part of a string from its opening quote: stops at the closing quote, a
# bad escape, or a half-written escape at the end.
_STRING_BODY = re.compile(r'"[^"\\]*+(?:(?:\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})[^"\\]*+)*+')
_CUT_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?")


class _Missing:
    """Sentinel type: no JSON value could be read (distinct from JSON ``null``)."""


MISSING: Any = _Missing()


def decode_text(data: bytes) -> str:
    """UTF-8 text of ``data``: invalid bytes replaced, a cut-off final character dropped."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(data, final=False)
    return text[1:] if text.startswith("\ufeff") else text


def loads(text: str | bytes, strict: bool = False) -> Any:
    """``json.loads`` that returns ``MISSING`` instead of raising on any input.

    Responses are read leniently (raw control characters in strings are accepted);
    requests use ``strict`` so a body we would rewrite is one the upstream accepts too.
    """
    try:
        return json.loads(text, strict=strict)
    except (ValueError, RecursionError, TypeError):
        return MISSING


def dumps_request(value: Any) -> bytes | None:
    """A rewritten request body as JSON, or None when JSON cannot say it back exactly.

    ``json.loads`` reads ``1e400`` as infinity, and ``json.dumps`` would write that back as
    ``Infinity``, which is not JSON: the upstream would refuse a body the client sent
    valid. A caller that gets None forwards the client's own bytes unchanged instead.
    """
    try:
        try:
            return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
        except UnicodeEncodeError:  # lone surrogates: only the escaped form is valid
            return json.dumps(value, allow_nan=False).encode()
    except (ValueError, RecursionError, TypeError):
        return None


def repair(text: str) -> str | None:
    """Close a JSON document that was cut short, or None when nothing sensible is left.

    Keeps everything up to the last complete value (or an open string value, closed after
    its last well-formed character) and appends the missing closing brackets. Not a
    validator: the result still goes through ``json.loads``.
    """
    fixed = _repair(text)
    return None if fixed is None else fixed[0]


def _repair(text: str) -> tuple[str, int] | None:
    """``repair`` plus how many containers the cut left open."""
    closers: list[str] = []
    key, colon, value, after = 0, 1, 2, 3
    state = value
    safe = 0
    pos = 0
    n = len(text)
    token = _TOKEN.match
    while True:
        match = token(text, pos)
        if match is None:
            break  # end of text, garbage, or a literal cut short
        kind = match.lastindex
        if kind == _QUOTE:
            start = match.end() - 1
            body = _STRING_BODY.match(text, start)
            end = body.end()  # type: ignore[union-attr]
            if end < n and text[end] == "\\" and _CUT_ESCAPE.fullmatch(text, end):
                n = end  # the text stops inside an escape sequence
            if end >= n:
                if state != value:
                    break
                return text[:end] + '"' + "".join(reversed(closers)), len(closers)
            if text[end] != '"':
                return None
            pos = end + 1
            if state == key:
                state = colon
            elif state == value:
                state, safe = after, pos
            else:
                return None
        elif kind == _OPEN:
            if state != value or len(closers) >= MAX_DEPTH:
                return None
            closer = "}" if text[match.end() - 1] == "{" else "]"
            closers.append(closer)
            state = key if closer == "}" else value
            pos = safe = match.end()
        elif kind == _CLOSE:
            if not closers or closers[-1] != text[match.end() - 1]:
                return None
            closers.pop()
            pos = match.end()
            state, safe = after, pos
        elif kind == _COMMA:
            if state != after or not closers:
                return None
            state = key if closers[-1] == "}" else value
            pos = match.end()
        elif kind == _COLON:
            if state != colon:
                return None
            state = value
            pos = match.end()
        else:
            if state != value or match.end() >= n:
                break  # misplaced, or a scalar that may itself be cut short
            pos = match.end()
            state, safe = after, pos
        if not closers and state == after:
            break
    if safe == 0:
        return None
    return text[:safe] + "".join(reversed(closers)), len(closers)


@dataclass(frozen=True)
class Parsed:
    """A parsed document; ``exact`` is False when it was repaired after a cut.

    The containers a cut left open are always the chain of last values from the root;
    ``is_open`` tells a reader that an object may be missing fields that came later
    (Gemini writes ``"thought": true`` after the text it qualifies).
    """

    value: Any
    exact: bool
    open_ids: frozenset[int] = field(default=frozenset())

    def is_open(self, node: object) -> bool:
        return id(node) in self.open_ids


def _open_chain(value: Any, depth: int) -> frozenset[int]:
    ids: set[int] = set()
    node = value
    for _ in range(depth):
        if isinstance(node, dict) and node:
            ids.add(id(node))
            node = next(reversed(node.values()))
        elif isinstance(node, list) and node:
            ids.add(id(node))
            node = node[-1]
        else:
            if isinstance(node, dict | list):
                ids.add(id(node))
            break
    return frozenset(ids)


def parse_document(data: bytes) -> Parsed:
    """The JSON document in ``data``, repaired if it was cut short.

    ``value`` is ``MISSING`` when nothing can be recovered.
    """
    text = decode_text(data)
    value = loads(text)
    if value is not MISSING:
        return Parsed(value, True)
    return parse_partial_document(text)


def parse_partial_document(text: str) -> Parsed:
    """``parse_partial`` that also says which containers the cut left open."""
    fixed = _repair(text)
    if fixed is None:
        return Parsed(MISSING, False)
    value = loads(fixed[0])
    if value is MISSING:
        return Parsed(MISSING, False)
    return Parsed(value, False, _open_chain(value, fixed[1]))


def parse_partial(text: str) -> Any:
    """The value a truncated JSON text starts with, or ``MISSING``."""
    return parse_partial_document(text).value
