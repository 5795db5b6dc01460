"""Who may call the management API (SPEC §10.1), decided without a reactor."""

from __future__ import annotations

import time

import jwt
import pytest

from mnemomd.api.auth import (
    ApiCredentials,
    AuthRefused,
    Principal,
    authenticate,
    bearer_token,
    credentials_from_config,
    is_loopback,
    subject_name,
)
from mnemomd.config import load_config

KEY = "internal-key-123"
MNEMOM = "mnemom-secret-0123456789abcdef0123"
SUPABASE = "supabase-secret-0123456789abcdef01"
BOTH = ApiCredentials(KEY, (MNEMOM, SUPABASE))


def token(secret: str, **claims: object) -> bytes:
    body = {"exp": int(time.time()) + 3600, "role": "admin", "sub": "ops@example", **claims}
    return b"Bearer " + jwt.encode(body, secret, algorithm="HS256").encode()


def refused(credentials: ApiCredentials, header: bytes | None,
            peer: str | None = "127.0.0.1") -> AuthRefused:
    with pytest.raises(AuthRefused) as caught:
        authenticate(credentials, header, peer)
    return caught.value


@pytest.mark.parametrize("host, local", [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("::ffff:127.0.0.1", True),
    (None, True), ("192.0.2.7", False), ("::ffff:192.0.2.7", False), ("fd00::2", False),
    ("not-an-ip", False)])
def test_loopback_peers(host, local):
    assert is_loopback(host) is local


@pytest.mark.parametrize("header, expected", [
    (b"Bearer abc", "abc"), (b"bearer  abc ", "abc"), (b"Basic abc", None), (b"Bearer", None),
    (b"Bearer   ", None), (None, None), (b"", None)])
def test_bearer_token(header, expected):
    assert bearer_token(header) == expected


def test_no_credential_configured_serves_only_loopback_as_owner():
    none = ApiCredentials()
    assert authenticate(none, None, "127.0.0.1") == Principal("owner", "local")
    assert authenticate(none, None, None).role == "owner"  # a Unix socket peer
    assert refused(none, None, "192.0.2.7").status == 403


def test_without_credentials_relayed_or_browser_requests_are_not_local():
    """A reverse proxy on the host makes every client look like 127.0.0.1, and a web page
    can make a browser POST to a loopback address (text/plain JSON, no preflight): neither
    is an operator on the host."""
    none = ApiCredentials()
    with pytest.raises(AuthRefused) as caught:
        authenticate(none, None, "127.0.0.1", indirect=True)
    assert caught.value.status == 403
    # With credentials, the token decides, wherever the request came from.
    assert authenticate(BOTH, b"Bearer " + KEY.encode(), "127.0.0.1", indirect=True).role \
        == "owner"


@pytest.mark.parametrize("header", [b"x-forwarded-for", b"forwarded", b"x-real-ip",
                                    b"x-forwarded-host", b"origin"])
def test_indirect_requests_are_recognised(header):
    from twisted.web.test.requesthelper import DummyRequest

    from mnemomd.api.resource import indirect

    request = DummyRequest([b"v1", b"agents"])
    assert indirect(request) is False
    request.requestHeaders.addRawHeader(header, b"value")
    assert indirect(request) is True


def test_internal_key_is_owner_from_anywhere():
    principal = authenticate(BOTH, b"Bearer " + KEY.encode(), "192.0.2.7")
    assert principal == Principal("owner", "internal-api-key")


def test_missing_or_wrong_token_is_401_even_on_loopback():
    assert refused(BOTH, None).status == 401
    assert refused(BOTH, b"Bearer not-the-key").status == 401
    assert refused(ApiCredentials(KEY), token(MNEMOM)).status == 401  # JWTs not configured


@pytest.mark.parametrize("secret", [MNEMOM, SUPABASE])
def test_jwt_signed_with_either_secret_carries_its_role(secret):
    assert authenticate(BOTH, token(secret), "192.0.2.7") == Principal("admin", "ops@example")
    viewer = authenticate(BOTH, token(secret, role="viewer"), "192.0.2.7")
    assert viewer.role == "viewer" and not viewer.may("admin") and viewer.may("viewer")
    owner = authenticate(BOTH, token(secret, role="owner"), "192.0.2.7")
    assert owner == Principal("owner", "ops@example")


def test_each_role_may_do_what_the_roles_below_it_may():
    may = {role: {required for required in ("viewer", "admin", "owner")
                  if Principal(role, "x").may(required)} for role in ("viewer", "admin", "owner")}
    assert may == {"viewer": {"viewer"}, "admin": {"viewer", "admin"},
                   "owner": {"viewer", "admin", "owner"}}
    assert not Principal("nobody", "x").may("viewer")


def test_the_log_names_the_subject_never_the_token():
    subjectless = token(MNEMOM, sub="")
    principal = authenticate(BOTH, subjectless, "192.0.2.7")
    assert principal.name == "jwt-admin"
    assert subject_name({"sub": "a" * 300}, "x") == "a" * 128
    assert subject_name({"sub": "ops\n@example"}, "x") == "ops@example"


def test_supabase_service_role_is_owner_and_aud_is_not_checked():
    principal = authenticate(BOTH, token(SUPABASE, role="service_role", aud="authenticated"),
                             "127.0.0.1")
    assert principal.role == "owner"


def test_expired_wrongly_signed_unsigned_and_premature_tokens_are_refused():
    expired = refused(BOTH, token(MNEMOM, exp=int(time.time()) - 3600))
    assert (expired.status, expired.message) == (401, "Token expired")
    assert refused(BOTH, token("some-other-secret-0123456789abcdef")).status == 401
    unsigned = jwt.encode({"exp": int(time.time()) + 60, "role": "admin"}, None,
                          algorithm="none")
    assert refused(BOTH, b"Bearer " + unsigned.encode()).status == 401
    assert refused(BOTH, token(MNEMOM, nbf=int(time.time()) + 3600)).status == 401
    no_exp = jwt.encode({"role": "admin"}, MNEMOM, algorithm="HS256")
    assert refused(BOTH, b"Bearer " + no_exp.encode()).status == 401


@pytest.mark.parametrize("claims", [{"role": "authenticated"}, {"role": None}, {"role": 1}])
def test_valid_token_without_an_api_role_is_forbidden(claims):
    assert refused(BOTH, token(MNEMOM, **claims)).status == 403


def test_credentials_come_from_the_configuration():
    config = load_config(environ={"INTERNAL_API_KEY": KEY, "SUPABASE_JWT_SECRET": SUPABASE,
                                  "MNEMOM_DATA_DIR": "/nonexistent"},
                         default_config_path="/nonexistent.yaml")
    assert credentials_from_config(config.api) == ApiCredentials(KEY, (SUPABASE,))
    shown = {name: value for name, value, _ in config.describe()}
    assert shown["INTERNAL_API_KEY"] == "********"
    assert shown["SUPABASE_JWT_SECRET"] == "********"
    assert shown["MNEMOM_JWT_SECRET"] == "(unset)"
