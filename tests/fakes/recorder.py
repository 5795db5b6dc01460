"""A tiny HTTP server in a thread that records what it is sent and answers as told.

Stands in for the vendor's license and heartbeat endpoints, and as a tripwire: a test
can point an outbound URL at one and assert nothing ever connected.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.status = 200
        #: Statuses for the next requests, in order; ``status`` once it runs out.
        self.statuses: list[int] = []
        self.answer: Any = {"valid": True}
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                recorder.connections += 1
                super().setup()

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                recorder.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": body.decode("utf-8", "replace"),
                                          "raw": body})
                data = json.dumps(recorder.answer).encode()
                status = recorder.statuses.pop(0) if recorder.statuses else recorder.status
                recorder.requests[-1]["status"] = status
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
