"""A fake Mnemom cloud: license validation, the deployment heartbeat and the analyze API.

It checks each request against Mnemom's contract field by field, as strictly as a test
should (an extra field, a missing one or a wrong type is a ``400`` whose ``error`` names
it, and is listed in ``violations``), records what arrived (``requests``) and what
connected (``connections``: a tripwire for ``MNEMOM_OFFLINE``), and answers as the real
service does: the license ``200`` or a scripted status (``403`` revoked, ``409`` too many
activations, ``503``); the heartbeat ``200``; the analyze API a checkpoint around a
scripted verdict, or a scripted ``401`` / ``402`` / ``429``.

In process, serve :meth:`FakeCloud.site` on the harness's memory network; as a real
HTTP server on 127.0.0.1: ``python -m tests.fakes.cloud --port 0`` (prints
``{"port": N}``; ``GET /_fake/requests`` and ``GET /_fake/connections`` report).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tests.integrity.fakes import VERDICT_REVIEW, hybrid_answer

LICENSE_PATH = "/v1/license/validate"
HEARTBEAT_PATH = "/v1/deployments/heartbeat"
ANALYZE_PATH = "/v1/analyze"

#: Field: (required, type) per contract; nested documents are checked on their own.
LICENSE_FIELDS = {"license": (True, str), "instance_id": (True, str),
                  "instance_metadata": (True, dict)}
INSTANCE_METADATA_FIELDS = {"gateway_version": (True, str)}
HEARTBEAT_FIELDS = {"deployment_id": (True, str), "license_jwt": (True, str),
                    "version": (True, str), "heartbeat_data": (True, dict),
                    "timestamp": (True, str)}
HEARTBEAT_DATA_FIELDS = {"uptime_seconds": (True, int), "health_status": (True, str),
                         "python_version": (True, str), "platform": (True, str),
                         "memory_usage_mb": (True, int)}
ANALYZE_FIELDS = {"thinking_block": (True, str), "thinking_metadata": (True, dict),
                  "agent_id": (True, str), "session_id": (True, str), "card": (True, dict),
                  "conscience_values": (False, list), "window_context": (False, list),
                  "task_context": (False, str), "store_checkpoint": (True, bool)}
THINKING_METADATA_FIELDS = {"provider": (True, str), "model": (True, str)}
CARD_FIELDS = {"card_id": (True, str), "values": (True, list)}
WINDOW_FIELDS = {"checkpoint_id": (True, str), "verdict": (True, str),
                 "reasoning_summary": (True, str)}
HEALTH_STATUSES = ("healthy", "degraded", "unknown")


def shape_problems(doc: Any, fields: Mapping[str, tuple[bool, type]], where: str) -> list[str]:
    """What in ``doc`` is not the contract's ``fields``: missing, extra, mistyped."""
    if not isinstance(doc, dict):
        return [f"{where}: not an object"]
    problems = [f"{where}.{name}: missing" for name, (required, _) in fields.items()
                if required and name not in doc]
    problems += [f"{where}.{name}: not in the contract" for name in doc if name not in fields]
    for name, (_, kind) in fields.items():
        value = doc.get(name)
        if name in doc and (not isinstance(value, kind)
                            or (kind is int and isinstance(value, bool))):
            problems.append(f"{where}.{name}: not a {kind.__name__}")
    return problems


def license_problems(body: Any) -> list[str]:
    problems = shape_problems(body, LICENSE_FIELDS, "body")
    if not problems:
        problems += shape_problems(body["instance_metadata"], INSTANCE_METADATA_FIELDS,
                                   "instance_metadata")
    return problems


def heartbeat_problems(body: Any, authorization: str | None) -> list[str]:
    problems = shape_problems(body, HEARTBEAT_FIELDS, "body")
    if problems:
        return problems
    problems += shape_problems(body["heartbeat_data"], HEARTBEAT_DATA_FIELDS,
                               "heartbeat_data")
    if body["heartbeat_data"].get("health_status") not in HEALTH_STATUSES:
        problems.append("heartbeat_data.health_status: not healthy/degraded/unknown")
    if authorization != f"Bearer {body['license_jwt']}":
        problems.append("authorization: not Bearer <license_jwt>")
    return problems


def analyze_problems(body: Any) -> list[str]:
    problems = shape_problems(body, ANALYZE_FIELDS, "body")
    if problems:
        return problems
    problems += shape_problems(body["thinking_metadata"], THINKING_METADATA_FIELDS,
                               "thinking_metadata")
    problems += shape_problems(body["card"], CARD_FIELDS, "card")
    for entry in body.get("window_context", []):
        problems += shape_problems(entry, WINDOW_FIELDS, "window_context[]")
    if len(body.get("task_context", "")) > 200:
        problems.append("task_context: over 200 characters")
    return problems


class FakeCloud:
    """Mnemom's cloud as the gateway meets it."""

    def __init__(self, api_key: str = "mk-cloud-key") -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.connections = 0
        #: Status the license service answers (200 valid; 403, 409, 410: rejected).
        self.license_status = 200
        #: Actions for the analyze API, one per call: a verdict dict or ``status:<code>``.
        self.analyze_script: list[Any] = []
        self.analyze_default: Any = VERDICT_REVIEW

    def of(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]

    def handle(self, request: Request) -> bytes:
        path = request.path.decode()
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        raw = request.content.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        request.setHeader(b"content-type", b"application/json")
        if path.startswith("/_fake/"):
            return self.control(path)
        self.requests.append({"path": path, "method": request.method.decode(),
                              "headers": headers, "body": body, "raw": raw})
        if path == LICENSE_PATH:
            return self.answer(request, license_problems(body), self.license_status,
                               {"valid": True, "license_id": "lic-1",
                                "next_check_seconds": 86400})
        if path == HEARTBEAT_PATH:
            return self.answer(request, heartbeat_problems(body, headers.get("authorization")),
                               200, {"deployment_id": (body or {}).get("deployment_id"),
                                     "status": "active", "next_heartbeat_seconds": 300})
        if path == ANALYZE_PATH:
            if headers.get("x-mnemom-api-key") != self.api_key:
                request.setResponseCode(401)
                return b'{"error": "Invalid API key"}'
            action = self.analyze_script.pop(0) if self.analyze_script else self.analyze_default
            status = int(action.split(":")[1]) if isinstance(action, str) else 200
            return self.answer(request, analyze_problems(body), status,
                               hybrid_answer(json.dumps(action)))
        request.setResponseCode(404)
        return b'{"error": "Not found"}'

    def answer(self, request: Request, problems: list[str], status: int,
               document: Any) -> bytes:
        if problems:
            self.violations += problems
            request.setResponseCode(400)
            return json.dumps({"error": "; ".join(problems)}).encode()
        request.setResponseCode(status)
        if status >= 300:
            return json.dumps({"error": f"scripted {status}"}).encode()
        return json.dumps(document).encode()

    def control(self, path: str) -> bytes:
        if path == "/_fake/requests":
            return json.dumps([{k: v for k, v in r.items() if k != "raw"}
                               for r in self.requests]).encode()
        if path == "/_fake/connections":
            return json.dumps({"connections": self.connections}).encode()
        return b"{}"

    def site(self, reactor: Any = None) -> Site:
        fake = self

        class _Root(Resource):
            isLeaf = True

            def render(self, request: Request) -> bytes:
                return fake.handle(request)

        class _CountingSite(Site):
            def buildProtocol(self, addr: IAddress) -> Protocol | None:  # noqa: N802
                fake.connections += 1
                return super().buildProtocol(addr)

        site = _CountingSite(_Root(), reactor=reactor) if reactor else _CountingSite(_Root())
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]
        return site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    port = reactor.listenTCP(args.port, FakeCloud().site(), interface="127.0.0.1")
    print(json.dumps({"port": port.getHost().port}), flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
