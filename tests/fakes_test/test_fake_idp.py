"""The fake identity provider's authorization code flow refuses what a real one would."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import jwt

from tests.fakes.idp import AUDIENCE, FakeIdentityProvider, s256

REDIRECT = "http://127.0.0.1:8787/console/"


def authorize(idp: FakeIdentityProvider, verifier: str = "v" * 43, **overrides: str) -> str:
    query = {"response_type": "code", "client_id": idp.client_id, "redirect_uri": REDIRECT,
             "state": "st", "code_challenge": s256(verifier), "code_challenge_method": "S256",
             **overrides}
    status, location = idp.authorize(query)
    assert status == 302, location
    params = parse_qs(urlsplit(location).query)
    assert params["state"] == ["st"]
    return params["code"][0]


def exchange(idp: FakeIdentityProvider, code: str, verifier: str = "v" * 43, **overrides: str):
    return idp.exchange({"grant_type": "authorization_code", "code": code,
                         "client_id": idp.client_id, "redirect_uri": REDIRECT,
                         "code_verifier": verifier, **overrides})


def test_the_right_verifier_gets_a_token_for_the_configured_user_once():
    idp = FakeIdentityProvider(algorithms=("RS256",))
    idp.user = {"sub": "vera@example", "roles": ["viewer"]}
    code = authorize(idp)
    status, answer = exchange(idp, code)
    assert status == 200
    claims = jwt.decode(answer["id_token"], options={"verify_signature": False})
    assert (claims["sub"], claims["roles"], claims["aud"]) == ("vera@example", ["viewer"],
                                                              AUDIENCE)
    assert exchange(idp, code) == (400, {"error": "invalid_grant"})  # used once


def test_a_wrong_verifier_client_or_redirect_is_refused():
    idp = FakeIdentityProvider(algorithms=("RS256",))
    assert exchange(idp, authorize(idp), verifier="w" * 43)[1]["error"] == \
        "invalid_grant: code_verifier"
    assert exchange(idp, authorize(idp), client_id="other")[1]["error"] == "invalid_client"
    assert exchange(idp, authorize(idp), redirect_uri="http://127.0.0.1:1/x")[1]["error"] == \
        "invalid_grant: redirect_uri"
    assert idp.authorize({"client_id": idp.client_id, "response_type": "code",
                          "redirect_uri": REDIRECT})[0] == 400  # no PKCE
    assert idp.authorize({"client_id": idp.client_id, "response_type": "code",
                          "redirect_uri": "https://evil.example/", "code_challenge": "x",
                          "code_challenge_method": "S256"})[0] == 400
