"""Heartbeat against a real HTTP receiver on 127.0.0.1, and the deployment id file.

The receiver is a ``twisted.web`` site in the test's own reactor, so what is checked is
the bytes that actually crossed a socket. The heartbeat's clock is a ``task.Clock``:
uptime is exact and the 10 s timeout is reached without waiting 10 s.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import uuid
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel
from twisted.trial import unittest

from mnemomd.cloud.heartbeat import (
    DEPLOYMENT_ID_FILE,
    Heartbeat,
    load_or_create_deployment_id,
    readiness_snapshot,
    sanitize_health,
)
from mnemomd.ops.health import HealthState
from tests.fakes.local import Receiver, closed_port
from tests.support import captured_logs

DEPLOYMENT_ID = "5f0c7a52-3a0e-4d55-9a43-2a8c1de0b6a1"
STARTED_AT = 1_000.0
PATH = "/v1/deployments/heartbeat"

#: Material that exists in a running daemon and must never be in a heartbeat.
SECRET_KEY = "sk-ant-api03-SECRETSECRET"
LICENSE_TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJsaWNlbnNlX2lkIjoibGljLTEifQ.c2ln"
THINKING = "I will quietly copy the customer table to my own bucket"
INTERNAL_HOST = "db-primary.corp.internal"

#: A readiness document carrying everything a careless heartbeat might copy.
LOADED_SNAPSHOT: dict[str, Any] = {
    "status": "degraded",
    "checks": {
        "database": {"status": "fail", "latency_ms": 12.5,
                     "detail": f"could not connect to {INTERNAL_HOST}:5432"},
        "redis": {"status": "ok", "latency_ms": 0.4},
        "license": {"status": "unlicensed", "ok": True, "license_jwt": LICENSE_TOKEN},
        "analysis": {"status": f"fail: {INTERNAL_HOST} refused", "api_key": SECRET_KEY},
        f"upstream {INTERNAL_HOST}": "ok",
        "../../etc/passwd": "ok",
    },
    "version": "0.1.0",
    "hostname": INTERNAL_HOST,
    "api_key": SECRET_KEY,
    "thinking": THINKING,
    "config": {"database_url": f"postgresql://mnemomd:pw@{INTERNAL_HOST}/mnemomd"},
}


class HeartbeatTests(unittest.TestCase):
    def setUp(self) -> None:
        self.receiver = Receiver(PATH, 202, b'{"accepted": true}')
        self.addCleanup(self.receiver.stop)
        self.clock = Clock()
        self.clock.advance(STARTED_AT + 3725.75)
        self.events = captured_logs(self, "mnemomd.").events  # mnemomd's own log events

    def heartbeat(self, snapshot: Any = None, url: str | None = None) -> Heartbeat:
        def health() -> Any:
            return snapshot if snapshot is not None else {"status": "ok", "checks": {}}

        beat = Heartbeat(reactor, self.clock, url or self.receiver.url, DEPLOYMENT_ID,
                         "0.1.0", STARTED_AT, health)
        self.addCleanup(beat.close)
        return beat

    def heartbeat_logs(self) -> list[LogEvent]:
        return [e for e in self.events if "receiver" in e]

    @inlineCallbacks
    def test_body_is_exactly_the_documented_fields(self):
        beat = self.heartbeat(LOADED_SNAPSHOT)
        result = yield beat.send()
        self.assertIsNone(result)
        self.assertEqual(len(self.receiver.requests), 1)
        sent = self.receiver.requests[0]
        self.assertEqual((sent["method"], sent["path"]), (b"POST", PATH))
        self.assertEqual(sent["headers"]["content-type"], "application/json")
        self.assertEqual(sent["headers"]["user-agent"], "mnemomd/0.1.0 (heartbeat)")
        body = json.loads(sent["raw"])
        self.assertEqual(body, {
            "deployment_id": DEPLOYMENT_ID,
            "version": "0.1.0",
            "uptime_seconds": 3725,
            "health": {"status": "degraded",
                       "checks": {"database": "fail", "redis": "ok",
                                  "license": "unlicensed", "analysis": "unknown"}},
        })
        self.assertEqual(beat.consecutive_failures, 0)
        self.assertEqual(beat.last_success_at, self.clock.seconds())

    @inlineCallbacks
    def test_no_forbidden_material_crosses_the_wire(self):
        yield self.heartbeat(LOADED_SNAPSHOT).send()
        sent = self.receiver.requests[0]
        wire = sent["raw"].decode() + json.dumps(sent["headers"])
        for forbidden in (SECRET_KEY, LICENSE_TOKEN, THINKING, INTERNAL_HOST, "latency_ms",
                          "detail", "passwd", socket.gethostname(), "pw@"):
            self.assertNotIn(forbidden, wire)
        self.assertNotIn("authorization", sent["headers"])

    @inlineCallbacks
    def test_readiness_snapshot_sends_statuses_not_details(self):
        health = HealthState(self.clock, "0.1.0", True)
        health.started = True
        health.add_check("database", lambda: (False, f"connection to {INTERNAL_HOST} refused"),
                         required=False, fallback=lambda: f"memory of {INTERNAL_HOST}")
        health.add_check("redis", lambda: (True, None))
        beat = Heartbeat(reactor, self.clock, self.receiver.url, DEPLOYMENT_ID, "0.1.0",
                         STARTED_AT, readiness_snapshot(health))
        self.addCleanup(beat.close)
        yield beat.send()
        body = json.loads(self.receiver.requests[0]["raw"])
        self.assertEqual(body["health"], {"status": "degraded",
                                          "checks": {"database": "fail", "redis": "ok"}})
        self.assertNotIn(INTERNAL_HOST, self.receiver.requests[0]["raw"].decode())

    @inlineCallbacks
    def test_failing_snapshot_still_beats_with_unknown_health(self):
        def broken() -> dict[str, Any]:
            raise RuntimeError(f"cannot reach {INTERNAL_HOST}")

        beat = Heartbeat(reactor, self.clock, self.receiver.url, DEPLOYMENT_ID, "0.1.0",
                         STARTED_AT, broken)
        self.addCleanup(beat.close)
        yield beat.send()
        body = json.loads(self.receiver.requests[0]["raw"])
        self.assertEqual(body["health"], {"status": "unknown", "checks": {}})
        self.assertNotIn(INTERNAL_HOST, repr(self.events))

    @inlineCallbacks
    def test_receiver_down_never_raises(self):
        beat = self.heartbeat(url=f"http://127.0.0.1:{closed_port()}{PATH}")
        result = yield beat.send()
        self.assertIsNone(result)
        self.assertEqual(beat.consecutive_failures, 1)
        self.assertEqual([e["reason"] for e in self.heartbeat_logs()], ["ConnectionRefusedError"])

    @inlineCallbacks
    def test_receiver_500_never_raises_and_a_streak_warns_once(self):
        self.receiver.status, self.receiver.answer = 500, b'{"error": "receiver broke"}'
        beat = self.heartbeat()
        for _ in range(3):
            result = yield beat.send()
            self.assertIsNone(result)
        self.assertEqual(beat.consecutive_failures, 3)
        self.assertEqual(len(self.receiver.requests), 3)
        levels = [(e["log_level"], e["reason"]) for e in self.heartbeat_logs()]
        self.assertEqual(levels, [(LogLevel.warn, "http_500"), (LogLevel.debug, "http_500"),
                                  (LogLevel.debug, "http_500")])
        self.receiver.status = 202
        yield beat.send()
        self.assertEqual(beat.consecutive_failures, 0)
        self.assertEqual(self.heartbeat_logs()[-1]["log_level"], LogLevel.info)
        self.receiver.status = 503  # a new streak warns again
        yield beat.send()
        self.assertEqual(self.heartbeat_logs()[-1]["log_level"], LogLevel.warn)
        logged = repr(self.events)
        self.assertNotIn(PATH, logged)  # receiver shown as scheme://host:port only
        self.assertNotIn("receiver broke", logged)

    @inlineCallbacks
    def test_hung_receiver_times_out_after_10_seconds(self):
        self.receiver.hang = True
        beat = self.heartbeat()
        arrived = self.receiver.arrived()
        sent = beat.send()
        outcome: list[Any] = []
        sent.addBoth(outcome.append)
        yield arrived
        self.clock.advance(9.9)
        self.assertEqual(outcome, [])
        self.clock.advance(0.1)
        self.assertEqual(outcome, [None])
        self.assertEqual(beat.consecutive_failures, 1)
        self.assertEqual(self.heartbeat_logs()[0]["reason"], "timeout")


def test_sanitize_health_plain_mapping_and_junk():
    assert sanitize_health({"status": "ok", "checks": {"database": "ok"}}) == {
        "status": "ok", "checks": {"database": "ok"}}
    assert sanitize_health(None) == {"status": "unknown", "checks": {}}
    assert sanitize_health({"status": 3, "checks": ["a"]}) == {"status": "unknown", "checks": {}}
    many = {f"check_{i}": "ok" for i in range(100)}
    assert len(sanitize_health({"status": "ok", "checks": many})["checks"]) == 32


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_deployment_id_created_0600_then_reused(tmp_path: Path):
    data_dir = tmp_path / "state"  # does not exist yet
    first = load_or_create_deployment_id(data_dir)
    path = data_dir / DEPLOYMENT_ID_FILE
    assert mode(path) == 0o600
    assert path.read_text().strip() == first
    assert str(uuid.UUID(first)) == first
    assert load_or_create_deployment_id(str(data_dir)) == first
    assert os.listdir(data_dir) == [DEPLOYMENT_ID_FILE]  # no temporary file left behind


def test_deployment_ids_differ_between_installs(tmp_path: Path):
    assert (load_or_create_deployment_id(tmp_path / "a")
            != load_or_create_deployment_id(tmp_path / "b"))


def test_deployment_id_file_without_an_id_is_replaced(tmp_path: Path):
    path = tmp_path / DEPLOYMENT_ID_FILE
    path.write_text("not an id\n")
    new = load_or_create_deployment_id(tmp_path)
    assert path.read_text().strip() == new
    assert mode(path) == 0o600
    assert load_or_create_deployment_id(tmp_path) == new
