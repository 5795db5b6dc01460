"""Who is calling the management API, decided by pure functions (SPEC §10.1).

A bearer token is the ``INTERNAL_API_KEY`` (an owner), an HS256 JWT signed with
``MNEMOM_JWT_SECRET`` or ``SUPABASE_JWT_SECRET`` carrying a ``role`` claim, or a token of
the identity provider named by ``MNEMOM_OIDC_ISSUER`` (verified by ``api/oidc.py``). With
no credential configured at all the API serves loopback clients only, as an owner: an
operator on the host can use it out of the box, nobody else can.

Roles are Mnemom's: a ``viewer`` reads; an ``admin`` also changes enforcement, settings,
cards, conscience values, webhooks, and pauses and resumes agents; only an ``owner`` kills,
reactivates and manages tool policies.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

import jwt

from mnemomd.config import API_ROLES, ApiConfig

#: Lowest first: a role may do everything the roles before it may.
ROLES = API_ROLES
_RANK = {role: rank for rank, role in enumerate(ROLES)}
#: Algorithms of the shared-secret tokens; any other ``alg`` is the identity provider's.
SHARED_SECRET_ALGORITHMS = ("HS256",)
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
        """Whether this caller's role reaches ``required`` (an unknown one: never)."""
        return _RANK.get(self.role, -1) >= _RANK.get(required, len(_RANK))


@dataclass(frozen=True)
class AuthRefused(Exception):
    """The caller may not use the API: 401 (who are you?) or 403 (not you, not here)."""

    status: int
    message: str


@dataclass(frozen=True)
class ApiCredentials:
    internal_api_key: str | None = None
    jwt_secrets: tuple[str, ...] = ()
    #: Tokens of an identity provider are accepted (``MNEMOM_OIDC_ISSUER``).
    oidc: bool = False

    @property
    def configured(self) -> bool:
        return bool(self.internal_api_key) or bool(self.jwt_secrets) or self.oidc


def credentials_from_config(api: ApiConfig) -> ApiCredentials:
    secrets = tuple(s for s in (api.mnemom_jwt_secret, api.supabase_jwt_secret) if s)
    return ApiCredentials(api.internal_api_key or None, secrets, bool(api.mnemom_oidc_issuer))


def token_algorithm(token: str) -> str | None:
    """The ``alg`` of a JWT's header, unverified; None if it is not a JWT."""
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except jwt.PyJWTError:
        return None
    return alg if isinstance(alg, str) else None


def for_identity_provider(credentials: ApiCredentials, token: str | None) -> bool:
    """Whether a token goes to the identity provider's verifier rather than
    :func:`authenticate`: OIDC is on, the token is not the internal key, and it is not a
    shared-secret JWT (which only :func:`authenticate` may accept). A token with
    ``alg: none`` or an HS256 one signed with a public key lands in one of the two and is
    refused there."""
    if not credentials.oidc or token is None:
        return False
    if credentials.internal_api_key and _same_secret(token, credentials.internal_api_key):
        return False
    return not (credentials.jwt_secrets
                and token_algorithm(token) in SHARED_SECRET_ALGORITHMS)


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
                                   "INTERNAL_API_KEY, MNEMOM_JWT_SECRET or "
                                   "MNEMOM_OIDC_ISSUER is set")
        return Principal("owner", "local")
    if token is None:
        raise AuthRefused(401, "Missing bearer token")
    if credentials.internal_api_key and _same_secret(token, credentials.internal_api_key):
        return Principal("owner", "internal-api-key")
    if not credentials.jwt_secrets:
        raise AuthRefused(401, "Invalid token")
    claims = decode_jwt(token, credentials.jwt_secrets)
    role = claims.get("role")
    if role == SUPABASE_SERVICE_ROLE:
        role = "owner"
    if role not in ROLES:
        raise AuthRefused(403, "Token has no role of owner, admin or viewer")
    return Principal(str(role), subject_name(claims, f"jwt-{role}"))


def subject_name(claims: dict[str, object], fallback: str) -> str:
    """The name the containment log and the timeline give a caller: the token's ``sub``
    (never the token itself), cut to the log's 128 characters."""
    subject = claims.get("sub")
    if isinstance(subject, str | int) and str(subject).strip():
        return "".join(c for c in str(subject) if c.isprintable())[:128] or fallback
    return fallback


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
                               "INTERNAL_API_KEY, MNEMOM_JWT_SECRET or "
                               "MNEMOM_OIDC_ISSUER is set")
    return ANONYMOUS
