"""The management API through a running daemon with real storage (SPEC §10).

``test_every_documented_operation`` walks ``/v1/openapi.json`` and calls every operation
it lists — the success case, 400, 401, 403 for a viewer writing and 404 for unknown
objects — checking each status is documented and each answer matches its schema, so
the document and the server cannot drift apart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from typing import Any

import pytest
from jsonschema import validate

from tests.e2e.api import (
    INTERNAL_KEY,
    JWT_SECRET,
    SUPABASE_SECRET,
    ApiDaemon,
    api_call,
    make_jwt,
    proxied_call,
)
from tests.e2e.conftest import pg_rows
from tests.fakes.process import wait_until
from tests.fakes.rawhttp import raw_request

UNKNOWN = {"agent_id": "smolt-00000000", "checkpoint_id": "ic-unknown",
           "trace_id": "tr-unknown", "webhook_id": "wh-unknown", "delivery_id": "whd-unknown"}
POLICY: dict[str, Any] = {
    "meta": {"schema_version": "1.0", "name": "walk", "scope": "agent"},
    "capability_mappings": {"web": {"tools": ["web_*"], "card_actions": ["inference"]}},
    "forbidden": [{"pattern": "send_*", "reason": "no data out", "severity": "critical"}],
    "defaults": {"unmapped_tool_action": "warn", "unmapped_severity": "medium",
                 "fail_open": False},
}
#: A body each writing operation succeeds with.
GOOD_BODIES: dict[str, Any] = {
    "put_enforcement": {"mode": "nudge"},
    "put_settings": {"nudge_strategy": "threshold", "nudge_threshold": 2},
    "put_conscience": {"values": [{"type": "BOUNDARY", "content": "Never exfiltrate data"}]},
    "containment_pause": {"reason": "walk"}, "containment_resume": {},
    "containment_kill": {"reason": "walk", "actor": "tester"}, "containment_reactivate": {},
    "put_policy": {"auto_containment_threshold": 3},
    # Never sent anything: no verdicts happen here (analysis is off).
    "create_webhook": {"url": "https://hooks.example.com/walk",
                       "event_types": ["verdict.boundary_violation"]},
    "update_webhook": {"description": "changed"},
    "put_org_policy": POLICY, "put_agent_policy": POLICY,
    "evaluate_policy": {"policy": POLICY, "tools": ["web_search", "send_email"]},
    # Not a certificate: verified, and found invalid (200).
    "verify_certificate": {"certificate": {"type": "IntegrityCertificate"}},
}
#: A body each writing operation must refuse with 400.
BAD_BODIES: dict[str, Any] = {
    "put_enforcement": {"mode": "bogus"}, "put_settings": {"nudge_rate": 2},
    "put_card": {"values": "honesty"}, "put_conscience": {"values": []},
    "containment_pause": {"reason": 5}, "containment_resume": {"actor": ""},
    "containment_kill": {"extra": True}, "containment_reactivate": {"reason": ["x"]},
    "put_policy": {"auto_containment_threshold": 1},
    "create_webhook": {"url": "http://plain.example.com/h"},
    "update_webhook": {"enabled": "yes"},
    "put_org_policy": {"meta": {"schema_version": "2.0"}},
    "put_agent_policy": {**POLICY, "forbidden": [{"pattern": "", "reason": "r"}]},
    "evaluate_policy": {"tools": "send_email"},
    "verify_certificate": {"certificate": "cert-1"},
}


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) in document order, deletions last."""
    found = [(method.upper(), path, op) for path, ops in document["paths"].items()
             for method, op in ops.items()]
    return sorted(found, key=lambda item: item[0] == "DELETE")


def fill(path: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, path
    return path


def check(response, operation: dict[str, Any], expected: int, what: str) -> None:
    assert response.status == expected, (what, response.status, response.body)
    documented = operation["responses"].get(str(expected))
    assert documented is not None, f"{what}: {expected} is not documented"
    schema = documented["content"]["application/json"]["schema"]
    if schema.get("$ref") == "#/components/schemas/Error":
        schema = {"type": "object", "required": ["error", "type"]}
    validate(response.body, schema)


@pytest.fixture(scope="module")
def walk_ids(api_daemon: ApiDaemon) -> dict[str, str]:
    agent_id = api_daemon.new_agent()
    seeded = api_daemon.seed(agent_id)
    created = api_daemon.new_webhook("/walk")
    delivery = api_daemon.call("POST", f"/v1/webhooks/{created['id']}/test")
    return {"agent_id": agent_id, "checkpoint_id": seeded["checkpoint_id"],
            "trace_id": seeded["trace_id"], "webhook_id": created["id"],
            "delivery_id": delivery.body["id"]}


def test_every_documented_operation(api_daemon: ApiDaemon, walk_ids: dict[str, str]):
    document = api_daemon.call("GET", "/v1/openapi.json").body
    listed = operations(document)
    ids = {op["operationId"] for _, _, op in listed}
    assert set(GOOD_BODIES) <= ids and set(BAD_BODIES) <= ids
    viewer = make_jwt(role="viewer")
    admin = make_jwt(role="admin")
    for method, template, operation in listed:
        name = operation["operationId"]
        path = fill(template, walk_ids)
        body = GOOD_BODIES.get(name)
        if name == "put_card":
            body = api_daemon.call("GET", fill("/v1/agents/{agent_id}/card", walk_ids)).body
            body = {**body["card"], "values": {"declared": ["honesty", "safety"]}}
        required = operation["x-required-role"]
        public = required == "public"
        writes = required in ("admin", "owner")

        if public:  # no token needed, none documented
            assert operation["security"] == [] and "401" not in operation["responses"]
        else:
            check(api_daemon.call(method, path, body, token=None), operation, 401,
                  f"{name} without a token")
        if writes:
            check(api_daemon.call(method, path, body, token=viewer), operation, 403,
                  f"{name} as a viewer")
        if required == "owner":
            check(api_daemon.call(method, path, body, token=admin), operation, 403,
                  f"{name} as an admin")
        if name in BAD_BODIES:
            check(api_daemon.call(method, path, BAD_BODIES[name]), operation, 400,
                  f"{name} with an invalid body")
        else:
            check(api_daemon.call(method, f"{path}?bogus=1", body), operation, 400,
                  f"{name} with an unknown query parameter")
        if "{" in template:
            unknown = fill(template, {**walk_ids, **{k: v for k, v in UNKNOWN.items()
                                                     if k != "webhook_id" or
                                                     "delivery_id" not in template}})
            check(api_daemon.call(method, unknown, body), operation, 404, f"{name} unknown")
        success = int(next(code for code in operation["responses"] if code.startswith("2")))
        response = api_daemon.call(method, path, body)
        check(response, operation, success, name)
        if "secret" in response.body:
            api_daemon.secrets.append(response.body["secret"])
        if not writes:
            check(api_daemon.call(method, path, body, token=viewer), operation, success,
                  f"{name} as a viewer")
        if public:
            check(api_daemon.call(method, path, body, token=None), operation, success,
                  f"{name} without a token")


def test_pagination_and_filters(api_daemon: ApiDaemon):
    agent_id = api_daemon.new_agent()
    api_daemon.seed(agent_id)
    api_daemon.seed(agent_id)
    base = f"/v1/agents/{agent_id}"
    first = api_daemon.call("GET", f"{base}/checkpoints?limit=1").body
    second = api_daemon.call("GET", f"{base}/checkpoints?limit=1&offset=1").body
    assert (first["total"], first["limit"], first["offset"]) == (2, 1, 0)
    assert first["items"][0]["id"] != second["items"][0]["id"]
    assert api_daemon.call("GET", f"{base}/checkpoints?verdict=clear").body["total"] == 0
    assert api_daemon.call("GET", f"{base}/checkpoints?session_id=s-1").body["total"] == 2
    timeline = api_daemon.call("GET", f"{base}/timeline").body
    assert timeline["total"] == 6  # two each of checkpoints, traces and nudges
    times = [entry["created_at"] for entry in timeline["items"]]
    assert times == sorted(times, reverse=True)
    assert {e["kind"] for e in timeline["items"]} == {"checkpoint", "trace", "nudge"}
    score = api_daemon.call("GET", f"{base}/integrity").body
    assert (score["total_checks"], score["violation_count"], score["integrity_ratio"]) == \
        (2, 2, 0.0)
    for bad in ("limit=0", "limit=501", "offset=-1", "limit=ten"):
        response = api_daemon.call("GET", f"/v1/agents?{bad}")
        assert response.status == 400 and "error" in response.body, bad


def test_invalid_input_is_400_with_a_reason(api_daemon: ApiDaemon):
    agent_id = api_daemon.new_agent()
    mode = api_daemon.call("PUT", f"/v1/agents/{agent_id}/enforcement", {"mode": "strict"})
    assert mode.status == 400 and "mode" in mode.body["error"]
    card = api_daemon.call("GET", f"/v1/agents/{agent_id}/card").body["card"]
    invalid = api_daemon.call("PUT", f"/v1/agents/{agent_id}/card",
                              {**card, "autonomy": {"bounded_actions": "everything"}})
    assert invalid.status == 400
    assert invalid.body["error"].startswith("invalid alignment card: autonomy")
    other = api_daemon.call("PUT", f"/v1/agents/{agent_id}/card",
                            {**card, "agent_id": "smolt-someone"})
    assert other.status == 400
    bad_json = api_daemon.call("PUT", f"/v1/agents/{agent_id}/enforcement", raw=b"{mode:")
    assert bad_json.status == 400 and bad_json.body["error"] == "request body is not valid JSON"
    assert api_daemon.call("GET", f"/v1/agents/{agent_id}/enforcement").body["mode"] == "observe"
    wrong = api_daemon.call("DELETE", f"/v1/agents/{agent_id}")
    assert wrong.status == 405 and wrong.headers["Allow"] == "GET"
    assert api_daemon.call("GET", "/v1/nothing").status == 404
    twice = api_daemon.call("POST", f"/v1/agents/{agent_id}/containment/resume")
    assert twice.status == 409 and twice.body["type"] == "conflict"


def test_card_and_conscience_round_trip(api_daemon: ApiDaemon):
    agent_id = api_daemon.new_agent()
    base = f"/v1/agents/{agent_id}"
    card = api_daemon.call("GET", f"{base}/card").body["card"]
    changed = {**card, "values": {"declared": ["honesty"]}}
    changed.pop("card_id")
    stored = api_daemon.call("PUT", f"{base}/card", changed).body["card"]
    assert stored["values"]["declared"] == ["honesty"] and stored["card_id"].startswith("ac-")
    assert api_daemon.call("GET", f"{base}/card").body["card"] == stored
    values = [{"type": "FEAR", "content": "Leaking customer data", "id": "fear-leak"}]
    assert api_daemon.call("PUT", f"{base}/conscience", {"values": values}).body["values"] == \
        values
    reset = api_daemon.call("DELETE", f"{base}/conscience").body
    assert reset["is_default"] is True and len(reset["values"]) > 1


def test_containment_and_mode_apply_to_the_next_proxied_call(api_daemon: ApiDaemon):
    key = "sk-containment-" + "x" * 8
    assert proxied_call(api_daemon.daemon, key)[0] == 200
    agent_id = api_daemon.call("GET", "/v1/agents?limit=1").body["items"][0]["agent_id"]
    paused = api_daemon.call("POST", f"/v1/agents/{agent_id}/containment/pause",
                             {"reason": "investigating"})
    assert paused.body["to_status"] == "paused" and paused.body["actor"] == "internal-api-key"
    assert proxied_call(api_daemon.daemon, key)[0] == 403
    api_daemon.call("POST", f"/v1/agents/{agent_id}/containment/resume")
    assert proxied_call(api_daemon.daemon, key)[0] == 200
    log = api_daemon.call("GET", f"/v1/agents/{agent_id}/containment").body["log"]
    assert [(e["action"], e["reason"]) for e in log] == [("resume", None),
                                                         ("pause", "investigating")]


def test_jwt_tokens(api_daemon: ApiDaemon):
    assert api_daemon.call("GET", "/v1/agents", token=make_jwt()).status == 200
    supabase = make_jwt(SUPABASE_SECRET, role="admin", aud="authenticated")
    assert api_daemon.call("GET", "/v1/agents", token=supabase).status == 200
    expired = api_daemon.call("GET", "/v1/agents", token=make_jwt(lifetime=-3600))
    assert (expired.status, expired.body["error"]) == (401, "Token expired")
    assert expired.headers["WWW-Authenticate"].startswith("Bearer")
    forged = make_jwt("not-the-secret-" + JWT_SECRET)
    assert api_daemon.call("GET", "/v1/agents", token=forged).status == 401
    viewer = make_jwt(role="viewer")
    agent_id = api_daemon.new_agent()
    refused = api_daemon.call("PUT", f"/v1/agents/{agent_id}/enforcement", {"mode": "enforce"},
                              token=viewer)
    assert refused.status == 403 and refused.body["type"] == "permission_error"
    by_admin = api_daemon.call("POST", f"/v1/agents/{agent_id}/containment/kill",
                               token=make_jwt(sub="alice@example"))
    assert (by_admin.status, by_admin.body["type"]) == (403, "permission_error")
    by_jwt = api_daemon.call("POST", f"/v1/agents/{agent_id}/containment/kill",
                             {"actor": "bob@example"},
                             token=make_jwt(role="owner", sub="alice@example"))
    # The log names the token's subject; a body actor only says for whom.
    assert by_jwt.body["actor"] == "alice@example for bob@example"


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_without_credentials_only_loopback_is_served(start):
    daemon = start(args=("run", "--host", "0.0.0.0", "--port", "0"))
    assert api_call(daemon.base_url, "GET", "/v1/agents", token=None).status == 200
    # A web page's cross-site POST (text/plain, no preflight) and a request relayed by a
    # reverse proxy on the host both arrive from 127.0.0.1: neither is served.
    for header in ({"origin": "https://evil.example", "content-type": "text/plain"},
                   {"x-forwarded-for": "198.51.100.7"}):
        with raw_request(daemon.base_url, "POST", "/v1/webhooks",
                         b'{"url":"https://evil.example/hook"}', header, timeout=20) as r:
            assert r.status == 403, header
            r.read_body()
    assert api_call(daemon.base_url, "GET", "/v1/webhooks", token=None).body["total"] == 0
    address = _non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback address on this host")
    remote = api_call(f"http://{address}:{daemon.port}", "GET", "/v1/agents", token=None)
    assert remote.status == 403 and "loopback" in remote.body["error"]


def test_scheduler_role_serves_no_api(start):
    """Nor the web console, which is a client of the API."""
    daemon = start(args=("run", "--host", "127.0.0.1", "--port", "0", "--role", "scheduler"))
    assert api_call(daemon.base_url, "GET", "/v1/agents", token=None).status == 404
    for path in ("/console/", "/console/app.js"):
        with raw_request(daemon.base_url, "GET", path) as response:
            assert response.status == 404 and b"<" not in response.read_body(), path


def test_changes_reach_every_replica(start, postgres_url):
    """Two replicas sharing PostgreSQL and Redis: a change made through one replica's API
    applies to the next call on the other."""
    env = {"DATABASE_URL": postgres_url, "REDIS_URL": "redis://127.0.0.1:6379/0",
           "INTERNAL_API_KEY": INTERNAL_KEY}
    one, two = start(env), start(env)
    key = "sk-replicas-" + postgres_url[-12:]
    assert proxied_call(one, key)[0] == 200 and proxied_call(two, key)[0] == 200
    agent_id = pg_rows(postgres_url, "SELECT id FROM agents")[0][0]
    api_call(one.base_url, "POST", f"/v1/agents/{agent_id}/containment/pause")
    assert proxied_call(two, key)[0] == 403 and proxied_call(one, key)[0] == 403
    api_call(two.base_url, "POST", f"/v1/agents/{agent_id}/containment/resume")
    assert proxied_call(one, key)[0] == 200
    api_call(two.base_url, "PUT", f"/v1/agents/{agent_id}/enforcement", {"mode": "enforce"})
    assert proxied_call(one, key)[1].get("x-aip-enforcement") == "enforce"
    assert json.loads(json.dumps(pg_rows(postgres_url, "SELECT enforcement_mode FROM agents")))\
        == [["enforce"]]


def test_changes_reach_replicas_without_a_shared_kv_store(start, postgres_url):
    """Replicas on their own in-memory KV stores: the one that took the change applies it
    to the next call, the other within its poll of changed agents."""
    env = {"DATABASE_URL": postgres_url, "INTERNAL_API_KEY": INTERNAL_KEY,
           "AIP_ENABLED": "false"}
    one, two = start(env), start(env)
    key = "sk-memory-" + postgres_url[-12:]
    assert proxied_call(one, key)[0] == 200 and proxied_call(two, key)[0] == 200
    agent_id = pg_rows(postgres_url, "SELECT id FROM agents")[0][0]
    api_call(one.base_url, "POST", f"/v1/agents/{agent_id}/containment/kill")
    assert proxied_call(one, key)[0] == 403
    wait_until(lambda: proxied_call(two, key)[0] == 403, timeout=15, interval=0.1,
               what="the other replica to notice the change")


def _signed_by(secret: str, request: dict[str, Any]) -> bool:
    headers = {k.lower(): v for k, v in request["headers"].items()}
    expected = hmac.new(secret.encode(), headers["x-aip-timestamp"].encode() + b"." +
                        request["raw"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-aip-signature"], f"sha256={expected}")


def test_webhook_test_redeliver_rotate_and_events_reach_the_receiver(api_daemon: ApiDaemon):
    receiver = api_daemon.receiver
    endpoint = api_daemon.new_webhook("/events", event_types=["agent.paused", "webhook.test"])
    path = f"/v1/webhooks/{endpoint['id']}"

    def received(where: str) -> list[dict[str, Any]]:
        return [r for r in receiver.requests if r["path"] == where]

    queued = api_daemon.call("POST", f"{path}/test")
    assert queued.status == 202 and queued.body["event_type"] == "webhook.test"
    first = wait_until(lambda: received("/events"), timeout=15, what="the test event")[0]
    assert _signed_by(endpoint["secret"], first)
    event = json.loads(first["raw"])
    assert (event["event_type"], event["agent_id"]) == ("webhook.test", None)
    wait_until(lambda: api_daemon.call("GET", f"{path}/deliveries").body["items"][0]["status"]
               == "delivered", timeout=15, what="the delivery to be recorded")

    again = api_daemon.call("POST", f"{path}/deliveries/{queued.body['id']}/redeliver")
    assert again.status == 202 and again.body["id"] != queued.body["id"]
    wait_until(lambda: len(received("/events")) == 2, timeout=15, what="the redelivery")
    assert json.loads(received("/events")[1]["raw"])["event_id"] == event["event_id"]

    rotated = api_daemon.call("POST", f"{path}/rotate-secret").body
    api_daemon.secrets.append(rotated["secret"])
    agent_id = api_daemon.new_agent()
    api_daemon.call("POST", f"/v1/agents/{agent_id}/containment/pause", {"reason": "hook"})
    paused = wait_until(lambda: len(received("/events")) == 3 and received("/events")[2],
                        timeout=15, what="the agent.paused event")
    assert _signed_by(rotated["secret"], paused)
    assert not _signed_by(endpoint["secret"], paused)
    body = json.loads(paused["raw"])
    assert (body["event_type"], body["agent_id"], body["data"]["reason"]) == \
        ("agent.paused", agent_id, "hook")
    history = api_daemon.call("GET", f"{path}/deliveries").body
    assert history["total"] == 3

    api_daemon.call("PATCH", path, {"enabled": False})
    refused = api_daemon.call("POST", f"{path}/test")
    assert refused.status == 409 and refused.body["type"] == "conflict"
    assert api_daemon.call("POST", f"{path}/deliveries/whd-unknown/redeliver").status == 404


def test_no_token_or_secret_is_logged(api_daemon: ApiDaemon):
    """Runs last in this module: every token and secret used above is searched for."""
    tokens = [INTERNAL_KEY, JWT_SECRET, SUPABASE_SECRET, make_jwt(), *api_daemon.secrets]
    assert api_daemon.secrets, "the walk should have handed out webhook secrets"
    api_daemon.call("GET", "/v1/agents", token="wrong-" + INTERNAL_KEY)
    output = api_daemon.daemon.output()
    assert "/v1/agents" in output  # the calls were logged...
    for secret in tokens:
        assert secret not in output  # ...without their credentials
    assert "wrong-" not in output


def test_a_seeded_certificate_verifies_through_the_public_api(api_daemon: ApiDaemon):
    agent_id = api_daemon.new_agent()
    checkpoint_id = api_daemon.seed(agent_id)["checkpoint_id"]
    cert = api_daemon.call("GET", f"/v1/checkpoints/{checkpoint_id}/certificate",
                           token=None).body
    root = api_daemon.call("GET", f"/v1/agents/{agent_id}/merkle-root", token=None).body
    assert (root["leaf_count"], root["merkle_root"]) == (1, cert["proofs"]["merkle"]["root"])
    result = api_daemon.call("POST", "/v1/verify", {"certificate": cert}, token=None).body
    assert result["valid"], result
    cert["claims"]["verdict"] = "clear"
    result = api_daemon.call("POST", "/v1/verify", {"certificate": cert}, token=None).body
    assert not result["valid"] and not result["checks"]["signature"]["valid"]
    keys = api_daemon.call("GET", "/v1/keys", token=None).body["keys"]
    assert all(k["algorithm"] == "Ed25519" and k["is_active"] for k in keys)
