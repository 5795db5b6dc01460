"""A fake OpenID Connect identity provider: signing keys, tokens, discovery and JWKS.

:class:`FakeIdentityProvider` holds RS256, ES256 and EdDSA keys, mints tokens with any
claims and header, rotates its keys, and serves ``/.well-known/openid-configuration`` and
its JWK Set. For browser sign-in it also serves the authorization code flow with PKCE for
one public client: ``/authorize`` approves the configured user at once and redirects back
with a code; ``/token`` exchanges it only with the right ``code_verifier`` (S256),
``client_id`` and ``redirect_uri``, answering with CORS headers as real providers do.
``documents()`` gives discovery and JWKS as a URL → JSON mapping for unit tests; ``serve()``
runs them as a real HTTP server on 127.0.0.1 (a thread of the test process: the daemon
under test is another process) that can be taken down and brought back, and counts the
key set fetches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

JWKS_PATH = "/keys"
DISCOVERY_PATH = "/.well-known/openid-configuration"
AUTHORIZE_PATH = "/authorize"
TOKEN_PATH = "/token"
AUDIENCE = "mnemomd-test"


def s256(verifier: str) -> str:
    """The PKCE ``code_challenge`` of a verifier (RFC 7636, method S256)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def hs256_signed_with(secret: bytes, kid: str, issuer: str) -> str:
    """An owner token signed HS256 with ``secret`` (an attacker using the provider's public
    key as an HMAC secret). PyJWT refuses to make one, so it is signed by hand."""
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    claims = b64(json.dumps({"iss": issuer, "aud": AUDIENCE, "roles": ["owner"],
                             "sub": "mallory", "exp": int(time.time()) + 600}).encode())
    signature = b64(hmac.new(secret, header + b"." + claims, hashlib.sha256).digest())
    return (header + b"." + claims + b"." + signature).decode()


def _new_key(alg: str) -> Any:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


_ALGORITHM_OBJECTS = {"RS256": jwt.algorithms.RSAAlgorithm,
                      "ES256": jwt.algorithms.ECAlgorithm, "EdDSA": jwt.algorithms.OKPAlgorithm}


class FakeIdentityProvider:
    def __init__(self, issuer: str = "http://127.0.0.1:0",
                 algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")) -> None:
        self.issuer = issuer
        #: kid -> (alg, private key), in the order published.
        self.keys: dict[str, tuple[str, Any]] = {}
        for alg in algorithms:
            self.add_key(alg)
        self.jwks_fetches = 0
        self.up = True
        #: The public client allowed to sign in, and who the authorization endpoint approves.
        self.client_id = AUDIENCE
        self.user: dict[str, Any] = {"sub": "alice@example", "roles": ["admin"]}
        #: code -> (client_id, redirect_uri, code_challenge, user claims); used once.
        self.codes: dict[str, tuple[str, str, str, dict[str, Any]]] = {}
        #: Every token request's outcome: "issued" or why it was refused.
        self.token_outcomes: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- keys and tokens --

    def add_key(self, alg: str) -> str:
        kid = f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        self.keys[kid] = (alg, _new_key(alg))
        return kid

    def rotate(self, alg: str = "RS256") -> str:
        """Publish a new key of ``alg`` in place of every old one; its kid."""
        kid = self.add_key(alg)
        self.keys = {kid: self.keys[kid]}
        return kid

    def kid(self, alg: str) -> str:
        return next(k for k, (a, _) in self.keys.items() if a == alg)

    def public_jwk(self, kid: str) -> dict[str, Any]:
        alg, private = self.keys[kid]
        jwk = json.loads(_ALGORITHM_OBJECTS[alg].to_jwk(private.public_key()))
        return {**jwk, "kid": kid, "use": "sig", "alg": alg}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk(kid) for kid in self.keys]}

    def discovery(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "jwks_uri": self.issuer + JWKS_PATH,
                "authorization_endpoint": self.issuer + AUTHORIZE_PATH,
                "token_endpoint": self.issuer + TOKEN_PATH,
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"]}

    # -- the authorization code flow with PKCE --

    def authorize(self, query: dict[str, str]) -> tuple[int, str]:
        """(status, redirect location or error text) for an authorization request."""
        if query.get("client_id") != self.client_id:
            return 400, "unknown client_id"
        if query.get("response_type") != "code":
            return 400, "response_type must be code"
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return 400, "PKCE with S256 is required"
        redirect_uri = query.get("redirect_uri", "")
        if not redirect_uri.startswith(("http://127.0.0.1:", "http://localhost:")):
            return 400, "redirect_uri not registered"
        code = uuid.uuid4().hex
        self.codes[code] = (self.client_id, redirect_uri, query["code_challenge"],
                            dict(self.user))
        separator = "&" if "?" in redirect_uri else "?"
        state = urlencode({"code": code, "state": query.get("state", "")})
        return 302, f"{redirect_uri}{separator}{state}"

    def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """(status, JSON answer) for a token request."""
        def refuse(error: str) -> tuple[int, dict[str, Any]]:
            self.token_outcomes.append(error)
            return 400, {"error": error}

        if form.get("grant_type") != "authorization_code":
            return refuse("unsupported_grant_type")
        found = self.codes.pop(form.get("code", ""), None)
        if found is None:
            return refuse("invalid_grant")
        client_id, redirect_uri, challenge, user = found
        if form.get("client_id") != client_id:
            return refuse("invalid_client")
        if form.get("redirect_uri") != redirect_uri:
            return refuse("invalid_grant: redirect_uri")
        if s256(form.get("code_verifier", "")) != challenge:
            return refuse("invalid_grant: code_verifier")
        self.token_outcomes.append("issued")
        claims = {k: v for k, v in user.items() if k not in ("sub", "roles")}
        token = self.token("RS256", roles=user.get("roles"), sub=user["sub"], **claims)
        return 200, {"access_token": token, "id_token": token, "token_type": "Bearer",
                     "expires_in": 3600}

    def documents(self) -> dict[str, Any]:
        return {self.issuer + DISCOVERY_PATH: self.discovery(),
                self.issuer + JWKS_PATH: self.jwks()}

    def token(self, alg: str = "RS256", *, kid: str | None = None, lifetime: int = 3600,
              roles: Any = ("admin",), sub: str = "alice@example", **claims: Any) -> str:
        """A token signed with the provider's key of ``alg`` (or the key ``kid``)."""
        kid = kid or self.kid(alg)
        key_alg, private = self.keys[kid]
        now = int(time.time())
        if roles is not None and not isinstance(roles, str):
            roles = list(roles)
        body = {"iss": self.issuer, "aud": AUDIENCE, "sub": sub, "iat": now,
                "exp": now + lifetime, "roles": roles, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, private, algorithm=key_alg, headers={"kid": kid})

    # -- a real server --

    def serve(self) -> str:
        """Serve on 127.0.0.1 (a free port); sets and returns the issuer URL."""
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def _json(self, status: int, document: Any) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.send_header("access-control-allow-origin", "*")
                self.send_header("cache-control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_OPTIONS(self) -> None:  # noqa: N802
                self.send_response(204)
                self.send_header("access-control-allow-origin", "*")
                self.send_header("access-control-allow-methods", "GET, POST")
                self.send_header("access-control-allow-headers", "content-type")
                self.send_header("content-length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802
                if not provider.up or urlsplit(self.path).path != TOKEN_PATH:
                    self.send_error(503 if not provider.up else 404)
                    return
                length = int(self.headers.get("content-length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                self._json(*provider.exchange(form))

            def do_GET(self) -> None:  # noqa: N802
                if not provider.up:
                    self.send_error(503)
                    return
                parts = urlsplit(self.path)
                if parts.path == AUTHORIZE_PATH:
                    status, where = provider.authorize(dict(parse_qsl(parts.query)))
                    self.send_response(status)
                    if status == 302:
                        self.send_header("location", where)
                    body = b"" if status == 302 else where.encode()
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if self.path == DISCOVERY_PATH:
                    document = provider.discovery()
                elif self.path == JWKS_PATH:
                    provider.jwks_fetches += 1
                    document = provider.jwks()
                else:
                    self.send_error(404)
                    return
                self._json(200, document)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self.issuer

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._server = None
