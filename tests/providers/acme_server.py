"""A fake Acme API: a ``twisted.web`` resource that speaks the wire format of ``acme.py``.

``POST /v1/generate`` is answered with the fake's ``answer``: one JSON document, or, when
the body asks to ``stream``, the SSE events ``reasoning``, ``output``, ``call`` and
``done``. Any other path is a 404 in Acme's error shape. Every request is kept as it
arrived, so a test can say what the gateway forwarded, byte for byte; the bytes of each
answer come from ``answer_json`` and ``answer_events``, so a test can say what it got back
without copying them.

The same fake plays an Acme model used as the analysis backend: its ``output`` is then the
verdict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from mnemomd.providers.base import sse_event

GENERATE_PATH = b"/v1/generate"


@dataclass(frozen=True)
class AcmeAnswer:
    """What Acme's model says: its reasoning, its visible output and its tool calls."""

    model: str = "acme-large-2"
    reasoning: str = "The user wants a summary; I will read the file first."
    output: str = "Here is the summary."
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()


def answer_json(answer: AcmeAnswer) -> bytes:
    """The whole answer as Acme sends it when nothing is streamed."""
    return json.dumps({"model": answer.model, "reasoning": answer.reasoning,
                       "output": answer.output,
                       "calls": [{"tool": tool, "args": args} for tool, args in answer.calls]},
                      separators=(",", ":")).encode()


def answer_events(answer: AcmeAnswer) -> list[bytes]:
    """The answer as Acme streams it: reasoning first, then output, calls and ``done``."""
    events = [sse_event("reasoning", {"text": answer.reasoning})] if answer.reasoning else []
    events.append(sse_event("output", {"text": answer.output}))
    events += [sse_event("call", {"tool": tool, "args": args}) for tool, args in answer.calls]
    events.append(sse_event("done", {"model": answer.model}))
    return events


@dataclass(frozen=True)
class AcmeRequest:
    """One request as it reached Acme."""

    method: bytes
    path: bytes
    query: bytes
    headers: dict[bytes, list[bytes]] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class FakeAcme(Resource):
    """Acme's API, answering every generate call with ``answer``."""

    isLeaf = True

    def __init__(self, answer: AcmeAnswer | None = None) -> None:
        super().__init__()
        self.answer = answer or AcmeAnswer()
        self.requests: list[AcmeRequest] = []

    def render(self, request: Request) -> bytes:
        uri = request.uri or b""
        path, _, query = uri.partition(b"?")
        body = request.content.read() if request.content is not None else b""
        self.requests.append(AcmeRequest(
            request.method, path, b"?" + query if query else b"",
            {name.lower(): list(values)
             for name, values in request.requestHeaders.getAllRawHeaders()}, body))
        if request.method != b"POST" or path != GENERATE_PATH:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": {"type": "not_found", "message": "No such route"}}
                              ).encode()
        try:
            streamed = json.loads(body).get("stream") is True
        except (ValueError, AttributeError):
            streamed = False
        if streamed:
            request.setHeader(b"content-type", b"text/event-stream")
            return b"".join(answer_events(self.answer))
        request.setHeader(b"content-type", b"application/json")
        return answer_json(self.answer)

