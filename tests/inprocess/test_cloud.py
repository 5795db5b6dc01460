"""Mnemom's cloud contracts through the whole daemon: license check, heartbeat and hybrid
analysis against a fake Mnemom cloud that checks every field (``tests/fakes/cloud.py``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mnemomd import __version__
from tests.fakes import canned
from tests.fakes.cloud import ANALYZE_PATH, HEARTBEAT_PATH, LICENSE_PATH, FakeCloud
from tests.harness import InProcessDaemon
from tests.integrity.fakes import VERDICT_VIOLATION

CLOUD = "http://cloud.test"
DAY = 86400
USER_MARKER = "USER-PROMPT-MARKER-91c2"
CALL_HEADERS = {"x-api-key": "sk-ant-agent", "content-type": "application/json"}
CALL_BODY = json.dumps({"model": "claude-x", "max_tokens": 2048, "messages": [
    {"role": "user", "content": f"please help {USER_MARKER}"}]}).encode()


@pytest.fixture
def license_token(tmp_path: Path) -> tuple[str, str]:
    """(public key path, a license for a year, checked online)."""
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "license.pem"
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    token = jwt.encode({"license_id": "lic-1", "plan_id": "enterprise",
                        "exp": 2_000_000_000 + 365 * DAY, "is_offline": False,
                        "max_activations": 2, "feature_flags": {}, "limits": {}},
                       key, algorithm="EdDSA")
    return str(path), token


@pytest.fixture
def with_cloud(tmp_path: Path) -> Iterator[Callable[..., tuple[InProcessDaemon, FakeCloud]]]:
    """A daemon whose Mnemom cloud is the fake, served before the daemon starts."""
    daemons: list[InProcessDaemon] = []

    def make(cloud: FakeCloud | None = None, **settings: str) -> tuple[InProcessDaemon,
                                                                      FakeCloud]:
        cloud = cloud or FakeCloud()
        daemon = InProcessDaemon(tmp_path / f"d{len(daemons)}", {
            "MNEMOM_OFFLINE": "false", "MNEMOM_API_URL": CLOUD,
            "HEARTBEAT_URL": CLOUD + HEARTBEAT_PATH, **settings})
        daemon.network.serve("cloud.test", 80, cloud.site(daemon.reactor))
        daemons.append(daemon)
        daemon.start()
        return daemon, cloud

    yield make
    for daemon in daemons:
        daemon.stop()


def licensed(license_token: tuple[str, str]) -> dict[str, str]:
    key_path, token = license_token
    return {"MNEMOM_LICENSE_PUBLIC_KEY": key_path, "MNEMOM_LICENSE_JWT": token}


def deployment_id(daemon: InProcessDaemon) -> str:
    return (daemon.data_dir / "deployment-id").read_text().strip()


def test_license_check_and_heartbeat_at_start_are_the_contract(with_cloud, license_token):
    daemon, cloud = with_cloud(**licensed(license_token))
    token = license_token[1]
    [check] = cloud.of(LICENSE_PATH)
    assert check["method"] == "POST"
    assert check["body"] == {"license": token, "instance_id": deployment_id(daemon),
                             "instance_metadata": {"gateway_version": __version__}}
    [beat] = cloud.of(HEARTBEAT_PATH)
    assert beat["headers"]["authorization"] == f"Bearer {token}"
    assert set(beat["body"]) == {"deployment_id", "license_jwt", "version",
                                 "heartbeat_data", "timestamp"}
    assert (beat["body"]["deployment_id"], beat["body"]["license_jwt"],
            beat["body"]["version"]) == (deployment_id(daemon), token, __version__)
    assert cloud.violations == []
    # Then on their intervals: one heartbeat a minute.
    daemon.advance(60)
    assert len(cloud.of(HEARTBEAT_PATH)) == 2
    assert cloud.violations == []


def test_a_license_the_cloud_rejects_becomes_invalid(with_cloud, license_token):
    cloud = FakeCloud()
    cloud.license_status = 409  # max_activations exceeded
    daemon, _ = with_cloud(cloud, **licensed(license_token))
    ready = daemon.request("GET", "/health/ready")
    license_check = ready.json()["checks"]["license"]
    assert license_check["status"] == "invalid"
    assert "http_409" in license_check["reason"]
    refused = daemon.request("POST", "/anthropic/v1/messages", CALL_HEADERS, CALL_BODY)
    assert refused.status == 403
    daemon.take_errors()  # the invalid license is logged at error, as it should be


def test_an_unreachable_cloud_keeps_the_license_in_its_grace(with_cloud, license_token):
    cloud = FakeCloud()
    cloud.license_status = 503
    daemon, _ = with_cloud(cloud, **licensed(license_token))
    assert len(cloud.of(LICENSE_PATH)) == 1
    assert daemon.request("GET", "/health/ready").json()["checks"]["license"]["status"] \
        == "valid"
    assert daemon.request("POST", "/anthropic/v1/messages", CALL_HEADERS,
                          CALL_BODY).status == 200


def test_no_heartbeat_and_no_license_check_without_a_license(with_cloud):
    daemon, cloud = with_cloud()
    daemon.advance(3600)
    assert cloud.requests == []


def test_offline_makes_no_connection_while_traffic_analysis_and_jobs_run(
        with_cloud, license_token):
    daemon, cloud = with_cloud(MNEMOM_OFFLINE="true", **licensed(license_token))
    for _ in range(3):
        exchange = daemon.request("POST", "/anthropic/v1/messages", CALL_HEADERS, CALL_BODY)
        assert exchange.status == 200
    daemon.advance(3600)  # every job has ticked, heartbeat and license check included
    assert len(daemon.analysis.requests) == 3
    assert cloud.connections == 0


def hybrid(**settings: str) -> dict[str, str]:
    return {"ANALYSIS_PROVIDER": "mnemom", "MNEMOM_ANALYZE_URL": CLOUD + ANALYZE_PATH,
            "MNEMOM_API_KEY": "mk-cloud-key", "AIP_DEFAULT_ENFORCEMENT": "enforce",
            **settings}


def test_hybrid_violation_blocks_in_enforce_mode_and_is_stored_here(with_cloud):
    cloud = FakeCloud()
    cloud.analyze_default = VERDICT_VIOLATION
    daemon, _ = with_cloud(cloud, **hybrid())
    exchange = daemon.request("POST", "/anthropic/v1/messages", CALL_HEADERS, CALL_BODY)
    assert exchange.status == 403
    assert exchange.json()["type"] == "integrity_violation"
    [(checkpoint_id, verdict)] = daemon.rows("SELECT id, verdict FROM integrity_checkpoints")
    assert (exchange.json()["checkpoint_id"], verdict) == (checkpoint_id, "boundary_violation")
    [sent] = cloud.of(ANALYZE_PATH)
    assert cloud.violations == []
    assert sent["headers"]["x-mnemom-api-key"] == "mk-cloud-key"
    assert sent["body"]["thinking_block"] == canned.THINKING_TEXT
    assert sent["body"]["store_checkpoint"] is False
    wire = sent["raw"].decode()
    for marker in (USER_MARKER, canned.TEXT, "sk-ant-agent"):
        assert marker not in wire


@pytest.mark.parametrize("status", [402, 429])
def test_hybrid_quota_and_rate_limit_follow_the_failure_mode(with_cloud, status: int):
    cloud = FakeCloud()
    cloud.analyze_default = f"status:{status}"
    daemon, _ = with_cloud(cloud, **hybrid(AIP_FAILURE_MODE="fail_closed"))
    exchange = daemon.request("POST", "/anthropic/v1/messages", CALL_HEADERS, CALL_BODY)
    assert exchange.status == 403
    [(verdict,)] = daemon.rows("SELECT verdict FROM integrity_checkpoints")
    assert verdict == "boundary_violation"


# -- docs/data-residency.md is what leaves -----------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "data-residency.md"


def documented_fields(name: str) -> dict[str, str]:
    """{field path: when it is sent} of the table after ``<!-- fields: name -->``."""
    lines = DOC.read_text().split(f"<!-- fields: {name} -->", 1)[1].strip().splitlines()
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1]
    return rows


def field_paths(doc: object, prefix: str = "") -> set[str]:
    """``a.b``, ``a[].b`` for every leaf (and every list) of a JSON document."""
    if isinstance(doc, dict):
        paths: set[str] = set()
        for key, value in doc.items():
            paths |= field_paths(value, f"{prefix}.{key}" if prefix else key)
        return paths
    if isinstance(doc, list):
        paths = {prefix}
        for item in doc:
            if isinstance(item, dict):
                paths |= field_paths(item, prefix + "[]")
        return paths
    return {prefix}


def assert_documented(name: str, bodies: list[dict]) -> None:
    table = documented_fields(name)
    received = set().union(*(field_paths(b) for b in bodies))
    assert received <= set(table), f"sent but not documented: {received - set(table)}"
    always = {f for f, when in table.items() if when == "always"}
    assert always <= received, f"documented as always sent, not sent: {always - received}"


def test_data_residency_tables_are_what_the_cloud_received(with_cloud, license_token):
    daemon, cloud = with_cloud(**licensed(license_token))
    hybrid_daemon, hybrid_cloud = with_cloud(**hybrid(AIP_DEFAULT_ENFORCEMENT="observe"))
    hybrid_daemon.request("POST", "/anthropic/v1/messages", CALL_HEADERS, CALL_BODY)
    hybrid_daemon.request("POST", "/anthropic/v1/messages", CALL_HEADERS, CALL_BODY)
    assert cloud.violations == [] and hybrid_cloud.violations == []
    assert_documented("license", [r["body"] for r in cloud.of(LICENSE_PATH)])
    assert_documented("heartbeat", [r["body"] for r in cloud.of(HEARTBEAT_PATH)])
    analyzed = [r["body"] for r in hybrid_cloud.of(ANALYZE_PATH)]
    assert len(analyzed) == 2 and "window_context" in analyzed[1]
    assert_documented("analyze", analyzed)
