"""A fake analysis model as a separate process: Anthropic Messages and OpenAI chat APIs.

The daemon under test sends its conscience prompts here. Tests script the answers
(``POST /_fake/script``), can hold answers until released (``POST /_fake/release``) to
prove what waits for analysis and what does not, delay them by a fixed time
(``delay:<ms>`` or ``delay:<ms>:<action>``, for benchmarks), and read what was asked
(``GET /_fake/requests``).

Run as ``python -m tests.fakes.analysis --port 0``; prints ``{"port": N}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.integrity.fakes import envelope, model_text


class FakeAnalysis:
    def __init__(self, clock: IReactorTime | None = None, record: bool = True) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.clock = clock
        self.default: Any = "valid"
        self.script: list[Any] = []
        self.requests: list[dict[str, Any]] = []
        self.held: list[tuple[Request, str, Any]] = []
        #: Whether requests are kept for ``GET /_fake/requests`` (not in a long benchmark).
        self.record = record

    def answer(self, request: Request, dialect: str, action: Any) -> None:
        if request._disconnected:
            return
        if isinstance(action, str) and action.startswith("status:"):
            request.setResponseCode(int(action.split(":")[1]))
            body = b'{"error": "scripted failure"}'
        else:
            request.setResponseCode(200)
            body = json.dumps(envelope(dialect, model_text(action) or "")).encode()
        request.setHeader(b"content-type", b"application/json")
        request.write(body)
        request.finish()

    def handle(self, request: Request) -> bytes | int:
        path = request.path.decode()
        if path.startswith("/_fake/"):
            return self.control(request, path)
        dialect = "anthropic" if path.endswith("/messages") else "openai"
        body = request.content.read()
        if self.record:
            self.requests.append({"path": path, "dialect": dialect,
                                  "body": body.decode("utf-8", "replace")})
        action = self.script.pop(0) if self.script else self.default
        if isinstance(action, str) and action.startswith("hold"):
            self.held.append((request, dialect, action.partition(":")[2] or "valid"))
            return NOT_DONE_YET
        if isinstance(action, str) and action.startswith("delay:"):
            delay, _, then = action[len("delay:"):].partition(":")
            self.clock.callLater(float(delay) / 1000, self.answer, request, dialect,
                                 then or "valid")
            return NOT_DONE_YET
        self.answer(request, dialect, action)
        return NOT_DONE_YET

    def control(self, request: Request, path: str) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        if path == "/_fake/script":
            data = json.loads(request.content.read() or b"{}")
            self.script = list(data.get("actions", []))
            self.default = data.get("default", self.default)
            return b"{}"
        if path == "/_fake/release":
            # {"answer": action} answers every held request with that action instead.
            data = json.loads(request.content.read() or b"{}")
            held, self.held = self.held, []
            for pending, dialect, action in held:
                self.answer(pending, dialect, data.get("answer", action))
            return json.dumps({"released": len(held)}).encode()
        if path == "/_fake/requests":
            if request.method == b"DELETE":
                self.requests = []
                return b"[]"
            return json.dumps(self.requests).encode()
        if path == "/_fake/held":
            return json.dumps({"held": len(self.held)}).encode()
        request.setResponseCode(404)
        return b"{}"


class _Root(Resource):
    isLeaf = True

    def __init__(self, fake: FakeAnalysis) -> None:
        super().__init__()
        self.fake = fake

    def render(self, request: Request) -> bytes | int:
        return self.fake.handle(request)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-record", dest="record", action="store_false",
                        help="keep no requests (a long benchmark would grow without bound)")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    site = Site(_Root(FakeAnalysis(reactor, record=args.record)))
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    port = reactor.listenTCP(args.port, site, interface="127.0.0.1")
    print(json.dumps({"port": port.getHost().port}), flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
