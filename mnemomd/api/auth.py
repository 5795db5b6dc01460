"""Who is calling the management API, decided by pure functions (SPEC §10.1).

A bearer token is either the ``INTERNAL_API_KEY`` (an admin) or an HS256 JWT signed with
``MNEMOM_JWT_SECRET`` or ``SUPABASE_JWT_SECRET`` carrying a ``role`` claim. With no
credential configured at all the API serves loopback clients only, as an admin: an
operator on the host can use it out of the box, nobody else can.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

import jwt

from mnemomd.config import ApiConfig

ROLES = ("admin", "viewer")
#: Supabase's own server key is a JWT with this role; it can do anything there, so here too.
SUPABASE_SERVICE_ROLE = "service_role"
#: Clock skew tolerated on ``exp`` and ``nbf``, in seconds.
JWT_LEEWAY_SECONDS = 30


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its role and a name for the containment log."""

    role: str
    name: str

    def may(self, required: str) -> bool:
        return required == "viewer" or self.role == "admin"


@dataclass(frozen=True)
class AuthRefused(Exception):
    """The caller may not use the API: 401 (who are you?) or 403 (not you, not here)."""

    status: int
    message: str


@dataclass(frozen=True)
class ApiCredentials:
    internal_api_key: str | None = None
    jwt_secrets: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.internal_api_key) or bool(self.jwt_secrets)


def credentials_from_config(api: ApiConfig) -> ApiCredentials:
    secrets = tuple(s for s in (api.mnemom_jwt_secret, api.supabase_jwt_secret) if s)
    return ApiCredentials(api.internal_api_key or None, secrets)


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback; a Unix socket peer (no host) is local."""
    if host is None:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


#: Headers that say a request did not come straight from a local program: a reverse proxy
#: relayed it (its peer address is then the proxy's), or a browser sent it on behalf of
#: some web page (cross-site requests to a loopback address). Without credentials the API
#: serves neither.
INDIRECT_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-real-ip",
                    b"origin")


def bearer_token(authorization: bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _same_secret(given: str, expected: str) -> bool:
    """Constant-time, and the digests make the comparison independent of lengths too."""
    return hmac.compare_digest(hashlib.sha256(given.encode("utf-8", "replace")).digest(),
                               hashlib.sha256(expected.encode("utf-8")).digest())


def decode_jwt(token: str, secrets: tuple[str, ...]) -> dict[str, object]:
    """Claims of a token one of ``secrets`` signed; raises AuthRefused(401) otherwise.

    ``exp`` is required and ``nbf`` honoured. The audience is not checked: Supabase
    stamps ``aud: authenticated`` on its tokens and no audience is configured here.
    """
    expired = False
    for secret in secrets:
        try:
            return jwt.decode(token, secret, algorithms=["HS256"],
                              options={"require": ["exp"], "verify_aud": False},
                              leeway=JWT_LEEWAY_SECONDS)
        except jwt.ExpiredSignatureError:
            expired = True
        except jwt.PyJWTError:
            continue
    raise AuthRefused(401, "Token expired" if expired else "Invalid token")


def authenticate(credentials: ApiCredentials, authorization: bytes | None,
                 peer_host: str | None, indirect: bool = False) -> Principal:
    """The caller behind a request, or AuthRefused saying why not. ``indirect``: the
    request carries one of ``INDIRECT_HEADERS`` (relayed by a proxy, or sent by a browser),
    so a loopback peer address does not make it local."""
    token = bearer_token(authorization)
    if not credentials.configured:
        if indirect or not is_loopback(peer_host):
            raise AuthRefused(403, "The management API only serves loopback clients until "
                                   "INTERNAL_API_KEY or MNEMOM_JWT_SECRET is set")
        return Principal("admin", "local")
    if token is None:
        raise AuthRefused(401, "Missing bearer token")
    if credentials.internal_api_key and _same_secret(token, credentials.internal_api_key):
        return Principal("admin", "internal-api-key")
    if not credentials.jwt_secrets:
        raise AuthRefused(401, "Invalid token")
    claims = decode_jwt(token, credentials.jwt_secrets)
    role = claims.get("role")
    if role == SUPABASE_SERVICE_ROLE:
        role = "admin"
    if role not in ROLES:
        raise AuthRefused(403, "Token has no role of admin or viewer")
    subject = claims.get("sub")
    return Principal(str(role), str(subject) if subject else f"jwt-{role}")


#: Who calls a public operation (the attestation endpoints): nobody in particular.
ANONYMOUS = Principal("public", "anonymous")


def authenticate_public(credentials: ApiCredentials, peer_host: str | None,
                        indirect: bool = False) -> Principal:
    """The caller of a public operation: anyone, once the API has a credential configured
    (it then listens beyond loopback); with none, loopback clients only, as for the rest
    of the API (an install nobody configured publishes nothing). A token is not needed
    and not checked."""
    if not credentials.configured and (indirect or not is_loopback(peer_host)):
        raise AuthRefused(403, "The management API only serves loopback clients until "
                               "INTERNAL_API_KEY or MNEMOM_JWT_SECRET is set")
    return ANONYMOUS
