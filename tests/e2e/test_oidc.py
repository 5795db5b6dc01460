"""Operators signed in by an identity provider, against a running daemon (issue 19).

A fake provider (discovery and JWKS on 127.0.0.1) issues RS256 and ES256 tokens; the
daemon verifies them with keys it fetched and cached, applies the owner / admin / viewer
roles, picks up a rotated key without a restart, and keeps serving from its cache while
the provider is down. Its log never holds a token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.e2e.api import api_call, proxied_call
from tests.e2e.daemon import Daemon
from tests.fakes.idp import AUDIENCE, FakeIdentityProvider, hs256_signed_with
from tests.fakes.process import wait_until


@pytest.fixture
def idp() -> Iterator[FakeIdentityProvider]:
    provider = FakeIdentityProvider(algorithms=("RS256", "ES256"))
    provider.serve()
    yield provider
    provider.stop()


def oidc_daemon(start, idp: FakeIdentityProvider) -> Daemon:
    return start({"MNEMOM_OIDC_ISSUER": idp.issuer, "MNEMOM_OIDC_AUDIENCE": AUDIENCE,
                  "MNEMOM_OIDC_REFRESH_SECONDS": "1", "AIP_ENABLED": "false"})


def new_agent(daemon: Daemon, token: str) -> str:
    """An agent made by a proxied call; its id, read with ``token``."""
    assert proxied_call(daemon, f"sk-oidc-{time.monotonic_ns()}")[0] == 200
    return api_call(daemon.base_url, "GET", "/v1/agents?limit=1",
                    token=token).body["items"][0]["agent_id"]


def test_roles_from_the_identity_provider(start, idp):
    daemon = oidc_daemon(start, idp)
    owner = idp.token("RS256", roles=["owner"], sub="olga@example")
    admin = idp.token("ES256", roles=["admin"], sub="adam@example")
    viewer = idp.token("RS256", roles="viewer", sub="vera@example")
    agent = new_agent(daemon, owner)
    base = f"/v1/agents/{agent}"

    def call(method: str, path: str, token: str | None, body=None):
        return api_call(daemon.base_url, method, path, body, token=token)

    # A viewer reads only.
    assert call("GET", base, viewer).status == 200
    assert call("GET", f"{base}/containment", viewer).status == 200
    for method, path, body in (("POST", f"{base}/containment/pause", None),
                               ("PUT", f"{base}/enforcement", {"mode": "nudge"})):
        refused = call(method, path, viewer, body)
        assert (refused.status, refused.body["type"]) == (403, "permission_error"), path
    # An admin pauses and resumes, but may not kill.
    paused = call("POST", f"{base}/containment/pause", admin)
    assert (paused.status, paused.body["actor"]) == (200, "adam@example")
    assert call("POST", f"{base}/containment/resume", admin).status == 200
    killed_by_admin = call("POST", f"{base}/containment/kill", admin)
    assert killed_by_admin.status == 403
    assert killed_by_admin.body["error"].endswith("needs the owner role")
    assert call("PUT", "/v1/policy", admin, {"meta": {"schema_version": "1.0"}}).status == 403
    # An owner kills.
    killed = call("POST", f"{base}/containment/kill", owner)
    assert (killed.status, killed.body["to_status"], killed.body["actor"]) == \
        (200, "killed", "olga@example")
    log = call("GET", f"{base}/containment", viewer).body["log"]
    assert [(e["action"], e["actor"]) for e in log] == [
        ("kill", "olga@example"), ("resume", "adam@example"), ("pause", "adam@example")]
    timeline = call("GET", f"{base}/timeline?kind=containment", viewer).body["items"]
    assert len(timeline) == 3
    assert all(owner not in str(entry) and admin not in str(entry) for entry in timeline)
    # A token granting no role is 403; no token at all is 401.
    staff = idp.token("RS256", roles=["staff"])
    assert call("GET", "/v1/agents", staff).status == 403
    assert call("GET", "/v1/agents", None).status == 401
    # The public attestation operations stay public.
    assert call("GET", "/v1/keys", None).status == 200
    output = daemon.output()
    for token in (owner, admin, viewer, staff):
        assert token not in output and token.split(".")[2] not in output


def test_bad_tokens_are_401(start, idp):
    daemon = oidc_daemon(start, idp)
    other = FakeIdentityProvider(idp.issuer, ("RS256",))  # same issuer name, other keys
    rs_private = idp.keys[idp.kid("RS256")][1]
    now = int(time.time())
    claims = {"iss": idp.issuer, "aud": AUDIENCE, "sub": "x", "roles": ["owner"],
              "exp": now + 600}
    public_pem = rs_private.public_key().public_bytes(Encoding.PEM,
                                                      PublicFormat.SubjectPublicKeyInfo)

    bad = {
        "expired": idp.token("RS256", lifetime=-3600, roles=["owner"]),
        "wrong audience": idp.token("ES256", aud="another-app", roles=["owner"]),
        "wrong issuer": idp.token("RS256", iss="https://evil.example.com", roles=["owner"]),
        "unknown kid": other.token("RS256", roles=["owner"]),
        "alg none": jwt.encode(claims, None, algorithm="none", headers={"kid": "x"}),
        "hs256 with the public key": hs256_signed_with(public_pem, idp.kid("RS256"), idp.issuer),
        "signed by another key under a known kid": jwt.encode(
            claims, other.keys[other.kid("RS256")][1], algorithm="RS256",
            headers={"kid": idp.kid("RS256")}),
    }
    assert api_call(daemon.base_url, "GET", "/v1/agents",
                    token=idp.token(roles=["viewer"])).status == 200
    for what, token in bad.items():
        answer = api_call(daemon.base_url, "GET", "/v1/agents", token=token)
        assert (answer.status, answer.body["type"]) == (401, "authentication_error"), what
        assert answer.headers["WWW-Authenticate"].startswith("Bearer"), what
    output = daemon.output()
    assert not [what for what, token in bad.items()
                if token in output or (token.split(".")[2] and token.split(".")[2] in output)]


def test_a_rotated_key_is_picked_up_and_cached_keys_outlive_an_outage(start, idp):
    daemon = oidc_daemon(start, idp)
    before = idp.token("RS256", roles=["viewer"])
    assert api_call(daemon.base_url, "GET", "/v1/agents", token=before).status == 200
    fetches = idp.jwks_fetches
    idp.rotate("ES256")
    after = idp.token("ES256", roles=["viewer"])
    # Refused until the refresh interval (1 s here) allows a fetch, then accepted.
    wait_until(lambda: api_call(daemon.base_url, "GET", "/v1/agents",
                                token=after).status == 200,
               timeout=15, interval=0.2, what="the rotated key to be accepted")
    assert idp.jwks_fetches > fetches
    # The provider goes away: cached keys keep working, and so does the proxy.
    idp.stop()
    unknown = FakeIdentityProvider(idp.issuer, ("RS256",)).token(roles=["viewer"])
    for _ in range(3):
        assert api_call(daemon.base_url, "GET", "/v1/agents", token=unknown).status == 401
        assert api_call(daemon.base_url, "GET", "/v1/agents", token=after).status == 200
    assert proxied_call(daemon, "sk-during-outage-0000")[0] == 200
    # Once the interval allows it, an unknown kid makes the daemon try the provider.
    wait_until(lambda: api_call(daemon.base_url, "GET", "/v1/agents", token=unknown).status
               == 401 and "could not be fetched" in daemon.output(), timeout=15,
               interval=0.2, what="the failed refresh to be logged")
    assert api_call(daemon.base_url, "GET", "/v1/agents", token=after).status == 200
    assert after not in daemon.output() and unknown not in daemon.output()
