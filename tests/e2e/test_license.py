"""License, heartbeat and offline mode through the daemon (SPEC §11)."""

from __future__ import annotations

import json
import subprocess
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.e2e.daemon import daemon_environment, mnemomd_command
from tests.fakes.process import wait_until
from tests.fakes.rawhttp import raw_request

DAY = 86400
BODY = b'{"model":"m","max_tokens":5,"messages":[]}'


@pytest.fixture
def signing(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "license.pem"
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))

    def token(exp: float, **claims) -> str:
        payload = {"license_id": "lic-1", "plan_id": "enterprise", "exp": int(exp),
                   "is_offline": True, "feature_flags": {}, "limits": {}} | claims
        return jwt.encode(payload, key, algorithm="EdDSA")

    return str(path), token


def call(daemon) -> tuple[int, dict]:
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", BODY,
                     {"x-api-key": "k"}) as r:
        return r.status, json.loads(r.read_body() or b"{}")


def ready(daemon) -> tuple[int, dict]:
    with raw_request(daemon.base_url, "GET", "/health/ready") as r:
        return r.status, json.loads(r.read_body())


def offline(extra: dict, recorders) -> dict:
    """Every vendor URL points at a tripwire; nothing may reach them."""
    return {"MNEMOM_OFFLINE": "true", "HEARTBEAT_URL": recorders().url + "/hb",
            "MNEMOM_API_URL": recorders().url, **extra}


def test_unlicensed_evaluation_is_said_once_and_in_readiness(start):
    daemon = start({"MNEMOM_OFFLINE": "true"})
    assert call(daemon)[0] == 200
    status, body = ready(daemon)
    assert status == 200 and body["checks"]["license"]["status"] == "unlicensed"
    daemon.stop()
    assert daemon.output().count("unlicensed evaluation") == 1


def test_license_required_without_token_exits_78(tmp_path):
    env = daemon_environment(tmp_path, {"LICENSE_REQUIRED": "true"})
    result = subprocess.run([*mnemomd_command(), "run", "--port", "0"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert "MNEMOM_LICENSE_JWT" in result.stderr


def test_valid_license(start, signing):
    key_path, token = signing
    daemon = start({"MNEMOM_OFFLINE": "true", "MNEMOM_LICENSE_PUBLIC_KEY": key_path,
                    "MNEMOM_LICENSE_JWT": token(time.time() + 30 * DAY)})
    assert call(daemon)[0] == 200
    assert ready(daemon)[1]["checks"]["license"]["status"] == "valid"


def test_expired_within_grace_works_with_warnings(start, signing):
    key_path, token = signing
    daemon = start({"MNEMOM_OFFLINE": "true", "MNEMOM_LICENSE_PUBLIC_KEY": key_path,
                    "MNEMOM_LICENSE_JWT": token(time.time() - 2 * DAY)})
    assert call(daemon)[0] == 200
    status, body = ready(daemon)
    assert status == 200 and body["checks"]["license"]["status"] == "grace"
    assert json.loads(daemon.wait_for_line("grace"))["level"] == "warn"
    with raw_request(daemon.base_url, "GET", "/metrics") as r:
        assert 'gateway_license_state{state="grace"} 1.0' in r.read_body().decode()


@pytest.mark.parametrize("case", ["expired", "wrong_key", "garbage"])
def test_unusable_license_refuses_proxy_calls(start, signing, tmp_path, case):
    key_path, token = signing
    value = {"expired": token(time.time() - 30 * DAY), "garbage": "not.a.jwt",
             "wrong_key": jwt.encode({"license_id": "x", "exp": int(time.time()) + DAY},
                                     ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA")}
    daemon = start({"MNEMOM_OFFLINE": "true", "MNEMOM_LICENSE_PUBLIC_KEY": key_path,
                    "MNEMOM_LICENSE_JWT": value[case]}, wait_started=False)
    status, body = call(daemon)
    assert status == 403
    assert body == {"error": "License invalid or expired", "type": "license_error"}
    status, health = ready(daemon)
    assert status == 503 and health["checks"]["license"]["ok"] is False
    assert value[case] not in daemon.output()


def test_offline_mode_opens_no_connection_but_the_configured_ones(start, recorders, signing):
    key_path, token = signing
    tripwires = [recorders(), recorders()]
    daemon = start({"MNEMOM_OFFLINE": "true", "HEARTBEAT_URL": tripwires[0].url + "/hb",
                    "MNEMOM_API_URL": tripwires[1].url,
                    "OBSERVER_HEARTBEAT_INTERVAL_SECONDS": "0.05",
                    "OBSERVER_LICENSE_INTERVAL_SECONDS": "0.05",
                    "OBSERVER_NUDGES_INTERVAL_SECONDS": "0.05",
                    "OBSERVER_RETENTION_INTERVAL_SECONDS": "0.05",
                    "MNEMOM_LICENSE_PUBLIC_KEY": key_path,
                    "MNEMOM_LICENSE_JWT": token(time.time() + DAY, is_offline=False)})
    assert call(daemon)[0] == 200

    def runs(job: str) -> float:
        with raw_request(daemon.base_url, "GET", "/metrics") as r:
            for line in r.read_body().decode().splitlines():
                if line.startswith(f'gateway_cron_runs_total{{job="{job}"'):
                    return float(line.split()[-1])
        return 0.0

    jobs = ("heartbeat", "license", "nudges", "retention")
    wait_until(lambda: all(runs(job) >= 3 for job in jobs), timeout=20,
               what="every job to run several times")
    assert [t.connections for t in tripwires] == [0, 0]


def test_heartbeat_carries_only_documented_fields(start, recorders, signing):
    key_path, token = signing
    receiver = recorders()
    daemon = start({"HEARTBEAT_URL": receiver.url + "/v1/deployments/heartbeat",
                    "OBSERVER_HEARTBEAT_INTERVAL_SECONDS": "0.1",
                    "MNEMOM_API_URL": recorders().url,
                    "MNEMOM_LICENSE_PUBLIC_KEY": key_path,
                    "MNEMOM_LICENSE_JWT": token(time.time() + DAY)})
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages",
                     b'{"model":"m","messages":[{"role":"user","content":"PROMPT-XYZ"}]}',
                     {"x-api-key": "sk-HEARTBEAT-SECRET"}) as r:
        r.read_body()
    wait_until(lambda: len(receiver.requests) >= 2, timeout=20, what="two heartbeats")
    for request in receiver.requests:
        body = json.loads(request["body"])
        assert set(body) == {"deployment_id", "license_jwt", "version", "heartbeat_data",
                             "timestamp"}
        assert set(body["heartbeat_data"]) == {"uptime_seconds", "health_status",
                                               "python_version", "platform",
                                               "memory_usage_mb"}
        assert "SECRET" not in request["body"] and "PROMPT" not in request["body"]
    assert json.loads(receiver.requests[0]["body"])["deployment_id"] == \
        json.loads(receiver.requests[-1]["body"])["deployment_id"]


def test_online_validation_caches_and_revokes(start, recorders, signing):
    key_path, token = signing
    server = recorders()
    daemon = start({"MNEMOM_API_URL": server.url, "HEARTBEAT_URL": recorders().url,
                    "OBSERVER_LICENSE_INTERVAL_SECONDS": "0.1",
                    "MNEMOM_LICENSE_PUBLIC_KEY": key_path,
                    "MNEMOM_LICENSE_JWT": token(time.time() + DAY, is_offline=False)})
    wait_until(lambda: server.requests, timeout=20, what="an online validation")
    assert server.requests[0]["path"] == "/v1/license/validate"
    assert call(daemon)[0] == 200
    server.status = 503  # outage: keep the last good state
    seen = len(server.requests)
    wait_until(lambda: len(server.requests) > seen + 1, timeout=20, what="checks in outage")
    assert call(daemon)[0] == 200
    server.status, server.answer = 403, {"error": "License revoked"}
    wait_until(lambda: call(daemon)[0] == 403, timeout=20, what="revocation to apply")


def test_license_show(tmp_path, signing):
    key_path, token = signing
    env = daemon_environment(tmp_path, {"MNEMOM_LICENSE_PUBLIC_KEY": key_path,
                                        "MNEMOM_LICENSE_JWT": token(time.time() + 10 * DAY)})
    result = subprocess.run([*mnemomd_command(), "license", "show", "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["status"] == "valid" and shown["license_id"] == "lic-1"
    assert shown["plan_id"] == "enterprise" and 9.9 <= shown["days_left"] <= 10
    assert env["MNEMOM_LICENSE_JWT"] not in result.stdout
    unlicensed = subprocess.run([*mnemomd_command(), "license", "show"],
                                env=daemon_environment(tmp_path / "u", {}),
                                capture_output=True, text=True, timeout=60)
    assert unlicensed.returncode == 0 and "unlicensed" in unlicensed.stdout
