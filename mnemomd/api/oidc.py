"""Operators signed in by their company's identity provider (OpenID Connect).

A token from ``MNEMOM_OIDC_ISSUER`` is verified with PyJWT against the issuer's JSON Web
Key Set, found through its ``/.well-known/openid-configuration``. The pure functions
below pick the key, verify the token and read the role; :class:`OidcVerifier` is the thin
Twisted shell that fetches and caches the key set through the one outbound HTTP layer.

The key set is fetched at the first token, again when a token names a key id not in the
cache (the provider rotated its keys), and never more than once per
``MNEMOM_OIDC_REFRESH_SECONDS`` (30 s), so a stream of tokens with made-up key ids cannot turn the
daemon into a load generator against the provider. While the provider is unreachable the
cached keys keep working.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from mnemomd import __version__
from mnemomd.api.auth import JWT_LEEWAY_SECONDS, AuthRefused, Principal, subject_name
from mnemomd.config import API_ROLES, ApiConfig, role_map
from mnemomd.http.client import ClientSettings, HTTPClient, is_success

log = Logger()

#: The asymmetric algorithms an identity provider signs with; never HS* nor ``none``.
ALGORITHMS = ("RS256", "ES256", "EdDSA")
#: The JWK key type each algorithm needs (and, for EC, the curve).
KEY_TYPES = {"RS256": ("RSA", None), "ES256": ("EC", "P-256"), "EdDSA": ("OKP", None)}
REFRESH_INTERVAL_SECONDS = 30.0
FETCH_TIMEOUT_SECONDS = 10.0
MAX_DOCUMENT_BYTES = 512 * 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"


@dataclass(frozen=True)
class OidcSettings:
    """Whose tokens are accepted, for which audience, and where roles are read."""

    issuer: str
    audience: str
    role_claim: str = "roles"
    #: (role, claim value) pairs; empty: a claim value equal to a role name grants it.
    role_values: tuple[tuple[str, str], ...] = ()
    refresh_interval: float = REFRESH_INTERVAL_SECONDS

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + DISCOVERY_PATH


def settings_from_config(api: ApiConfig) -> OidcSettings | None:
    if not api.mnemom_oidc_issuer:
        return None
    return OidcSettings(api.mnemom_oidc_issuer, api.mnemom_oidc_audience or "",
                        api.mnemom_oidc_role_claim, role_map(api.mnemom_oidc_role_map),
                        api.mnemom_oidc_refresh_seconds)


# -- pure parts -----------------------------------------------------------------------


def token_header(token: str) -> tuple[str, str | None]:
    """The (alg, kid) of a token the provider may have signed; AuthRefused(401) for any
    other algorithm (``none``, HS256 signed with a public key, ...) or a non-JWT."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthRefused(401, "Invalid token") from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ALGORITHMS:
        raise AuthRefused(401, "Invalid token")
    return alg, kid if isinstance(kid, str) else None


def signing_keys(jwks: object) -> dict[str, dict[str, Any]]:
    """The signing keys of a JWK Set by key id; keys without a ``kid`` get a position
    name, keys meant for encryption are left out. ValueError if it is not a JWK Set."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("not a JWK Set (no keys list)")
    found: dict[str, dict[str, Any]] = {}
    for index, key in enumerate(jwks["keys"]):
        if not isinstance(key, dict) or key.get("use", "sig") != "sig":
            continue
        kid = key.get("kid")
        found[kid if isinstance(kid, str) else f"#{index}"] = key
    return found


def candidate_keys(keys: Mapping[str, dict[str, Any]], alg: str,
                   kid: str | None) -> list[dict[str, Any]]:
    """The cached keys that may have signed a token: the one its ``kid`` names, or, with
    no ``kid``, every key of the algorithm's type. A key that declares another ``alg``,
    or is of another type than ``alg`` needs, is never one."""
    kty, crv = KEY_TYPES[alg]

    def fits(key: dict[str, Any]) -> bool:
        return key.get("kty") == kty and (crv is None or key.get("crv") == crv) \
            and key.get("alg", alg) == alg

    if kid is not None:
        key = keys.get(kid)
        return [key] if key is not None and fits(key) else []
    return [key for key in keys.values() if fits(key)]


def verify_token(token: str, alg: str, key: dict[str, Any],
                 settings: OidcSettings) -> dict[str, Any]:
    """The claims of a token ``key`` signed for ``settings``: issuer and audience match,
    ``exp`` is present and not past, ``nbf`` honoured. AuthRefused(401) otherwise."""
    try:
        public = jwt.PyJWK(key, algorithm=alg)
        return jwt.decode(token, public, algorithms=[alg], audience=settings.audience,
                          issuer=settings.issuer,
                          options={"require": ["exp", "iss", "aud"]},
                          leeway=JWT_LEEWAY_SECONDS)
    except jwt.ExpiredSignatureError:
        raise AuthRefused(401, "Token expired") from None
    except (jwt.PyJWTError, ValueError, TypeError):
        raise AuthRefused(401, "Invalid token") from None


def claim_values(claims: Mapping[str, Any], path: str) -> list[str]:
    """The strings at a claim (a dotted path reaches into objects): a string, or the
    strings of a list; nothing for anything else."""
    value: Any = claims
    for name in path.split("."):
        if not isinstance(value, dict):
            return []
        value = value.get(name)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def granted_role(values: list[str], role_values: tuple[tuple[str, str], ...]) -> str | None:
    """The highest role the claim values grant, or None."""
    pairs = role_values or tuple((role, role) for role in API_ROLES)
    granted = {role for role, value in pairs if value in values}
    return next((role for role in reversed(API_ROLES) if role in granted), None)


def principal_from_claims(claims: dict[str, Any], settings: OidcSettings) -> Principal:
    """The caller a verified token names; AuthRefused(403) if it grants no role."""
    role = granted_role(claim_values(claims, settings.role_claim), settings.role_values)
    if role is None:
        raise AuthRefused(403, f"Token grants no role: its {settings.role_claim} claim "
                               f"names none of owner, admin, viewer (MNEMOM_OIDC_ROLE_MAP)")
    return Principal(role, subject_name(claims, f"oidc-{role}"))


def jwks_uri(discovery: object, issuer: str) -> str:
    """The ``jwks_uri`` of a discovery document that is the issuer's own; ValueError
    otherwise (a document naming another issuer must not lend us its keys)."""
    if not isinstance(discovery, dict):
        raise ValueError("discovery document is not a JSON object")
    if str(discovery.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        raise ValueError("discovery document names another issuer")
    uri = discovery.get("jwks_uri")
    if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
        raise ValueError("discovery document has no jwks_uri")
    return uri


# -- the Twisted shell ----------------------------------------------------------------


class JsonFetcher(Protocol):
    """GETs a JSON document (``HttpJsonFetcher``; a dict-backed fake in unit tests)."""

    def get_json(self, url: str) -> Deferred[object]: ...


class HttpJsonFetcher:
    """JSON documents through the outbound HTTP layer: one small pool, a deadline, a cap."""

    def __init__(self, reactor: IReactorTCP, clock: IReactorTime | None = None) -> None:
        self._client = HTTPClient(reactor, clock, ClientSettings(max_per_host=1,
                                                                 connect_timeout=5.0))

    def get_json(self, url: str) -> Deferred[object]:
        headers = Headers({b"accept": [b"application/json"],
                           b"user-agent": [f"mnemomd/{__version__}".encode()]})
        d = self._client.exchange(b"GET", url, headers, None, timeout=FETCH_TIMEOUT_SECONDS,
                                  max_body=MAX_DOCUMENT_BYTES)

        def parse(reply: Any) -> object:
            if not is_success(reply.code):
                raise ValueError(f"{url} answered {reply.code}")
            return json.loads(reply.body)

        return d.addCallback(parse)

    def close(self) -> Deferred[None]:
        return self._client.close()


class OidcVerifier:
    """Verifies the identity provider's tokens with cached keys, refreshing them when a
    token names an unknown key, at most once per ``refresh_interval`` seconds."""

    def __init__(self, clock: IReactorTime, settings: OidcSettings, fetcher: JsonFetcher,
                 refresh_interval: float | None = None,
                 on_refresh: Callable[[bool], None] | None = None) -> None:
        self._clock = clock
        self.settings = settings
        self._fetcher = fetcher
        self._refresh_interval = settings.refresh_interval if refresh_interval is None \
            else refresh_interval
        self._on_refresh = on_refresh
        self._keys: dict[str, dict[str, Any]] = {}
        self._jwks_uri: str | None = None
        self._last_attempt: float | None = None
        self._refreshing: Deferred[None] | None = None

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def principal(self, token: str) -> Deferred[Principal]:
        """The caller a token names, or a failure with AuthRefused."""
        try:
            alg, kid = token_header(token)
        except AuthRefused as refusal:
            return fail(refusal)
        if candidate_keys(self._keys, alg, kid):
            return succeed(self._check(token, alg, kid))
        return self._refresh().addCallback(lambda _: self._check(token, alg, kid))

    def _check(self, token: str, alg: str, kid: str | None) -> Principal:
        keys = candidate_keys(self._keys, alg, kid)
        if not keys:
            raise AuthRefused(401, "Invalid token: unknown signing key")
        refusal = AuthRefused(401, "Invalid token")
        for key in keys:
            try:
                claims = verify_token(token, alg, key, self.settings)
            except AuthRefused as error:
                refusal = error
                continue
            return principal_from_claims(claims, self.settings)
        raise refusal

    def _refresh(self) -> Deferred[None]:
        """Fetch the key set again unless one was fetched (or tried) too recently; share
        a fetch under way. Never fails: a failed fetch keeps the cached keys."""
        if self._refreshing is not None:
            waiter: Deferred[None] = Deferred()
            self._refreshing.addBoth(lambda result: (waiter.callback(None), result)[1])
            return waiter
        now = self._clock.seconds()
        if self._last_attempt is not None and now - self._last_attempt < self._refresh_interval:
            return succeed(None)
        self._last_attempt = now
        self._refreshing = d = self._fetch()
        d.addCallbacks(self._fetched, self._failed)
        d.addBoth(self._done)
        return d

    def _fetch(self) -> Deferred[dict[str, dict[str, Any]]]:
        def from_discovery(discovery: object) -> Deferred[object]:
            self._jwks_uri = jwks_uri(discovery, self.settings.issuer)
            return self._fetcher.get_json(self._jwks_uri)

        if self._jwks_uri is not None:
            d = self._fetcher.get_json(self._jwks_uri)
        else:
            d = self._fetcher.get_json(self.settings.discovery_url).addCallback(from_discovery)
        return d.addCallback(signing_keys)

    def _fetched(self, keys: dict[str, dict[str, Any]]) -> None:
        self._keys = keys
        log.info("Identity provider keys loaded: {count} signing key(s)", count=len(keys))
        if self._on_refresh is not None:
            self._on_refresh(True)

    def _failed(self, failure: Failure) -> None:
        # The reason only (a URL and a status at most): never a token.
        log.warn("Identity provider keys could not be fetched ({reason}); the {count} "
                 "cached key(s) stay in use", reason=str(failure.value)[:200],
                 count=len(self._keys))
        if self._on_refresh is not None:
            self._on_refresh(False)

    def _done(self, _: object) -> None:
        self._refreshing = None
