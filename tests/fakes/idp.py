"""A fake OpenID Connect identity provider: signing keys, tokens, discovery and JWKS.

:class:`FakeIdentityProvider` holds RS256, ES256 and EdDSA keys, mints tokens with any
claims and header, rotates its keys, and serves ``/.well-known/openid-configuration`` and
its JWK Set. ``documents()`` gives both as a URL → JSON mapping for unit tests; ``serve()``
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

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

JWKS_PATH = "/keys"
DISCOVERY_PATH = "/.well-known/openid-configuration"
AUDIENCE = "mnemomd-test"


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
                "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"]}

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
            def do_GET(self) -> None:  # noqa: N802
                if not provider.up:
                    self.send_error(503)
                    return
                if self.path == DISCOVERY_PATH:
                    document = provider.discovery()
                elif self.path == JWKS_PATH:
                    provider.jwks_fetches += 1
                    document = provider.jwks()
                else:
                    self.send_error(404)
                    return
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

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
