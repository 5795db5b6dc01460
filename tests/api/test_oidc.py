"""Operator sign-in with an identity provider: the pure parts, and the key cache driven by
a ``task.Clock`` with the provider's documents served from memory."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from mnemomd.api.auth import ApiCredentials, AuthRefused, Principal, for_identity_provider
from mnemomd.api.oidc import (
    OidcSettings,
    OidcVerifier,
    candidate_keys,
    claim_values,
    granted_role,
    jwks_uri,
    principal_from_claims,
    signing_keys,
    token_header,
    verify_token,
)
from mnemomd.config import ConfigError, load_config, role_map
from tests.fakes.idp import AUDIENCE, FakeIdentityProvider, hs256_signed_with

ISSUER = "https://idp.example.com"


@pytest.fixture(scope="module")
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(ISSUER)


def settings(**overrides: Any) -> OidcSettings:
    return OidcSettings(**{"issuer": ISSUER, "audience": AUDIENCE, **overrides})


class Documents:
    """The provider's documents by URL; ``down`` makes every fetch fail."""

    def __init__(self, documents: dict[str, Any]) -> None:
        self.documents = documents
        self.down = False
        self.fetched: list[str] = []
        self.gate: Deferred[None] | None = None

    def get_json(self, url: str) -> Deferred[object]:
        self.fetched.append(url)
        if self.down:
            return fail(ConnectionRefusedError("down"))
        if self.gate is not None:
            answer: Deferred[object] = Deferred()
            self.gate.addCallback(lambda result: (answer.callback(self.documents[url]),
                                                  result)[1])
            return answer
        return succeed(self.documents[url])


def principal(verifier: OidcVerifier, token: str) -> Principal | AuthRefused:
    outcome: list[Any] = []
    verifier.principal(token).addCallbacks(outcome.append, lambda f: outcome.append(f.value))
    assert outcome, "the answer should not wait for anything"
    return outcome[0]


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_a_token_of_each_algorithm_verifies_with_its_key(idp, alg):
    token = idp.token(alg, roles=["owner"])
    header_alg, kid = token_header(token)
    assert (header_alg, kid) == (alg, idp.kid(alg))
    keys = signing_keys(idp.jwks())
    [key] = candidate_keys(keys, alg, kid)
    claims = verify_token(token, alg, key, settings())
    assert principal_from_claims(claims, settings()) == Principal("owner", "alice@example")


def test_none_and_hs256_signed_with_the_public_key_are_refused(idp):
    unsigned = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60,
                           "roles": ["owner"]}, None, algorithm="none")
    with pytest.raises(AuthRefused) as caught:
        token_header(unsigned)
    assert caught.value.status == 401
    public_pem = jwt.PyJWK(idp.public_jwk(idp.kid("RS256"))).key.public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    forged = hs256_signed_with(public_pem, idp.kid("RS256"), ISSUER)
    with pytest.raises(AuthRefused) as caught:
        token_header(forged)
    assert caught.value.status == 401


@pytest.mark.parametrize("claims, status, message", [
    ({"lifetime": -3600}, 401, "Token expired"),
    ({"aud": "another-app"}, 401, "Invalid token"),
    ({"iss": "https://evil.example.com"}, 401, "Invalid token"),
    ({"exp": None, "lifetime": 0}, 401, "Invalid token"),
])
def test_expired_wrong_audience_wrong_issuer_and_exp_less_tokens_are_401(idp, claims, status,
                                                                          message):
    token = idp.token("ES256", **claims) if "exp" not in claims else jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "roles": ["admin"]},
        idp.keys[idp.kid("ES256")][1], algorithm="ES256", headers={"kid": idp.kid("ES256")})
    [key] = candidate_keys(signing_keys(idp.jwks()), "ES256", idp.kid("ES256"))
    with pytest.raises(AuthRefused) as caught:
        verify_token(token, "ES256", key, settings())
    assert (caught.value.status, caught.value.message) == (status, message)


def test_a_key_is_never_used_for_another_algorithm(idp):
    keys = signing_keys(idp.jwks())
    assert candidate_keys(keys, "ES256", idp.kid("RS256")) == []
    assert [k["kid"] for k in candidate_keys(keys, "EdDSA", None)] == [idp.kid("EdDSA")]
    encryption = {"keys": [{**idp.public_jwk(idp.kid("RS256")), "use": "enc"}]}
    assert signing_keys(encryption) == {}
    with pytest.raises(ValueError):
        signing_keys({"no": "keys"})


def test_roles_come_from_a_string_a_list_or_a_nested_claim():
    assert claim_values({"roles": "admin"}, "roles") == ["admin"]
    assert claim_values({"groups": ["a", 3, "b"]}, "groups") == ["a", "b"]
    assert claim_values({"realm_access": {"roles": ["viewer"]}}, "realm_access.roles") == \
        ["viewer"]
    assert claim_values({"roles": {"admin": True}}, "roles") == []
    assert granted_role(["viewer", "admin"], ()) == "admin"
    assert granted_role(["Admin"], ()) is None
    mapped = role_map("owner=grp-a,admin=grp-b,admin=grp-c")
    assert granted_role(["grp-c"], mapped) == "admin"
    assert granted_role(["admin"], mapped) is None  # a map replaces the role names
    with pytest.raises(AuthRefused) as caught:
        principal_from_claims({"sub": "x", "roles": ["staff"]}, settings())
    assert caught.value.status == 403
    assert principal_from_claims({"roles": "viewer"}, settings()).name == "oidc-viewer"


@pytest.mark.parametrize("text", ["owner", "root=grp", "admin=", "owner=a,,"])
def test_a_malformed_role_map_is_a_configuration_error(text):
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"MNEMOM_OIDC_ROLE_MAP": text}, default_config_path="/none")
    assert "MNEMOM_OIDC_ROLE_MAP" in str(caught.value)


def test_oidc_settings_are_checked_and_shown():
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"MNEMOM_OIDC_ISSUER": "https://idp.example.com"},
                    default_config_path="/none")
    assert "MNEMOM_OIDC_AUDIENCE" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"MNEMOM_OIDC_ISSUER": "http://idp.example.com",
                             "MNEMOM_OIDC_AUDIENCE": "a"}, default_config_path="/none")
    assert "https" in str(caught.value)
    config = load_config(environ={"MNEMOM_OIDC_ISSUER": "https://idp.example.com/",
                                  "MNEMOM_OIDC_AUDIENCE": "mnemomd",
                                  "MNEMOM_OIDC_ROLE_CLAIM": "groups",
                                  "MNEMOM_OIDC_ROLE_MAP": "owner = ops , viewer=all"},
                         default_config_path="/none")
    shown = {name: value for name, value, _ in config.describe()}
    assert shown["MNEMOM_OIDC_ISSUER"] == "https://idp.example.com"
    assert shown["MNEMOM_OIDC_ROLE_MAP"] == "owner=ops,viewer=all"
    assert shown["MNEMOM_OIDC_ROLE_CLAIM"] == "groups"


def test_which_tokens_go_to_the_identity_provider(idp):
    both = ApiCredentials("internal-key", ("s" * 32,), oidc=True)
    assert for_identity_provider(both, idp.token("RS256"))
    assert not for_identity_provider(both, "internal-key")
    shared = jwt.encode({"role": "admin", "exp": int(time.time()) + 60}, "s" * 32,
                        algorithm="HS256")
    assert not for_identity_provider(both, shared)
    # Without shared secrets every JWT is the provider's to judge (and HS256 is refused).
    assert for_identity_provider(ApiCredentials(oidc=True), shared)
    assert not for_identity_provider(ApiCredentials("k", ("s" * 32,)), idp.token("RS256"))


def test_keys_are_fetched_once_and_cached(idp):
    documents = Documents(idp.documents())
    verifier = OidcVerifier(Clock(), settings(), documents)
    for alg in ("RS256", "ES256", "EdDSA"):
        assert principal(verifier, idp.token(alg, roles=["viewer"])).role == "viewer"
    assert documents.fetched == [ISSUER + "/.well-known/openid-configuration",
                                 ISSUER + "/keys"]


def test_an_unknown_kid_refreshes_at_most_once_per_interval():
    provider = FakeIdentityProvider(ISSUER, ("RS256",))
    documents = Documents(provider.documents())
    clock = Clock()
    verifier = OidcVerifier(clock, settings(), documents, refresh_interval=30)
    assert principal(verifier, provider.token()).role == "admin"
    old_kid = provider.kid("RS256")
    new_kid = provider.rotate("ES256")
    documents.documents = provider.documents()
    rotated = provider.token("ES256")
    clock.advance(5)
    refused = principal(verifier, rotated)  # too soon after the last fetch
    assert isinstance(refused, AuthRefused) and refused.status == 401
    assert len(documents.fetched) == 2
    clock.advance(30)
    assert principal(verifier, rotated).role == "admin"
    assert verifier.key_ids == (new_kid,) and old_kid not in verifier.key_ids
    assert documents.fetched[2:] == [ISSUER + "/keys"]  # discovery is not read again
    unpublished = provider.add_key("ES256")  # a kid the key set does not have
    clock.advance(1)
    for _ in range(5):  # unknown kids within the interval fetch nothing
        answer = principal(verifier, provider.token("ES256", kid=unpublished))
        assert isinstance(answer, AuthRefused) and answer.status == 401
    assert len(documents.fetched) == 3
    assert principal(verifier, provider.token("ES256", kid=new_kid)).role == "admin"


def test_while_the_provider_is_down_cached_keys_keep_working():
    provider = FakeIdentityProvider(ISSUER, ("RS256", "ES256"))
    documents = Documents(provider.documents())
    clock = Clock()
    verifier = OidcVerifier(clock, settings(), documents, refresh_interval=30)
    assert principal(verifier, provider.token("RS256")).role == "admin"
    documents.down = True
    clock.advance(60)
    provider.add_key("EdDSA")
    unknown = principal(verifier, provider.token("EdDSA"))
    assert isinstance(unknown, AuthRefused) and unknown.status == 401
    assert principal(verifier, provider.token("ES256", roles=["owner"])).role == "owner"


def test_concurrent_unknown_kids_share_one_fetch():
    provider = FakeIdentityProvider(ISSUER, ("RS256",))
    documents = Documents(provider.documents())
    documents.gate = Deferred()
    verifier = OidcVerifier(Clock(), settings(), documents)
    answers: list[Any] = []
    for _ in range(3):
        verifier.principal(provider.token()).addBoth(answers.append)
    assert answers == [] and len(documents.fetched) == 1
    documents.gate.callback(None)
    assert [a.role for a in answers] == ["admin"] * 3
    assert len(documents.fetched) == 2


def test_a_discovery_document_of_another_issuer_lends_no_keys():
    with pytest.raises(ValueError):
        jwks_uri({"issuer": "https://evil.example.com", "jwks_uri": "https://e/keys"}, ISSUER)
    with pytest.raises(ValueError):
        jwks_uri({"issuer": ISSUER}, ISSUER)
    assert jwks_uri({"issuer": ISSUER + "/", "jwks_uri": ISSUER + "/k"}, ISSUER) == \
        ISSUER + "/k"
