"""Configuration: one table of settings, in sections, three sources, one precedence order.

A setting has an environment name (``PORT``), a YAML key (``port``) and sometimes a
command-line flag (``--port``). A flag beats the environment, which beats the YAML file,
which beats the built-in default. Each row of ``SETTINGS`` also names the section that
holds its value (``listener.port``): a component is given its section, never the whole
configuration, so what it can read is visible in its constructor.

Every value is parsed and checked up front, then the checks that span settings run on
whatever parsed, and every problem is reported together in one ``ConfigError`` so an
operator fixes their file in one pass, not one error per restart. Names that are not
settings (a typo in a YAML key, a misspelt ``MNEMOM_*`` variable) are reported with the
nearest real name.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from mnemomd.providers import PROVIDERS, Provider, ProviderRegistry

#: Exit status for configuration errors (sysexits.h EX_CONFIG); systemd units use it in
#: ``RestartPreventExitStatus`` so a broken config does not restart in a loop.
EX_CONFIG = 78

DEFAULT_CONFIG_PATH = "/etc/mnemomd/mnemomd.yaml"

ROLES = ("all", "gateway", "scheduler")
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("json", "text")
WITHOUT_REASONING_CHOICES = ("allow", "analyse_output", "refuse")

class ConfigError(Exception):
    """Every problem found in the configuration, each naming where the value came from."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def render(self) -> str:
        lines = [f"mnemomd: {len(self.problems)} configuration problem(s):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


# -- value parsers: each takes a raw value (str from env/flags, native from YAML) ---------


def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be a string")
    return str(value).strip()


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _int_in(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        try:
            number = int(_text(value))
        except ValueError:
            raise ValueError("must be an integer") from None
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}")
        return number

    return parse


def _seconds(low: float, high: float) -> Callable[[object], float]:
    def parse(value: object) -> float:
        if isinstance(value, bool):
            raise ValueError("must be a number of seconds")
        text = _text(value).lower().removesuffix("s").strip()
        try:
            number = float(text)
        except ValueError:
            raise ValueError("must be a number of seconds") from None
        if not low <= number <= high or number != number:
            raise ValueError(f"must be between {low:g} and {high:g} seconds")
        return number

    return parse


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}


def _byte_size(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise ValueError("must be a size in bytes")
        match = re.fullmatch(r"(\d+)\s*([a-zA-Z]*)", _text(value))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _SIZE_UNITS:
            raise ValueError("must be a size in bytes, e.g. 33554432 or 32MiB")
        number = int(match.group(1)) * _SIZE_UNITS[unit]
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high} bytes")
        return number

    return parse


def _choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value).lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


def parse_base_url(value: object) -> str:
    """An upstream base URL: http(s), a host, an optional path prefix, nothing else."""
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials (the client's own key is forwarded)")
    try:
        parts.port  # noqa: B018 - raises on an invalid port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def parse_heartbeat_url(value: object) -> str:
    """A full endpoint URL: unlike base URLs it keeps its path."""
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials")
    return text


#: The management API's roles, lowest first: each can do what the ones before it can.
API_ROLES = ("viewer", "admin", "owner")


def parse_oidc_issuer(value: object) -> str:
    """An identity provider's issuer URL: https, or http on a loopback host only."""
    text = _text(value).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an https:// URL with a host")
    if parts.query or parts.fragment or parts.username is not None:
        raise ValueError("must not have a query string, fragment or credentials")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError("must be https:// (http:// only for a loopback host)")
    return text


def parse_claim_path(value: object) -> str:
    """A claim name, or a dotted path of names into nested objects."""
    text = _text(value)
    if not re.fullmatch(r"[A-Za-z0-9_:/\-]+(\.[A-Za-z0-9_:/\-]+)*", text):
        raise ValueError("must be a claim name such as roles or groups, or a dotted path "
                         "such as realm_access.roles")
    return text


def role_map(text: str | None) -> tuple[tuple[str, str], ...]:
    """``owner=grp-a,admin=grp-b`` as ((role, claim value), ...); ValueError if malformed.
    A role may be given several values."""
    if not text:
        return ()
    pairs = []
    for item in text.split(","):
        role, equals, claim_value = (part.strip() for part in item.partition("="))
        if not equals or not claim_value:
            raise ValueError(f"{item.strip()!r} is not role=value")
        if role not in API_ROLES:
            raise ValueError(f"{role!r} is not a role (one of {', '.join(API_ROLES)})")
        pairs.append((role, claim_value))
    return tuple(pairs)


def parse_role_map_text(value: object) -> str:
    """A role map, checked and written back in one spelling."""
    return ",".join(f"{role}={claim_value}" for role, claim_value in role_map(_text(value)))


def parse_host(value: object) -> str:
    text = _text(value)
    if not text or any(c.isspace() for c in text):
        raise ValueError("must be a host name or IP address")
    return text


def parse_listen(value: object) -> str | None:
    """A Twisted server endpoint description; checked for shape here, opened at start."""
    text = _text(value)
    if not text:
        return None
    kind = text.split(":", 1)[0]
    if kind not in ("tcp", "tcp6", "ssl", "unix", "systemd") or ":" not in text:
        raise ValueError("must be a Twisted endpoint such as tcp:8787, ssl:8443:privateKey=… "
                         "or unix:/run/mnemomd/http.sock")
    return text


def parse_origins(value: object) -> tuple[str, ...]:
    items = value if isinstance(value, list) else _text(value).split(",")
    origins = tuple(_text(item) for item in items if _text(item))
    if not origins:
        raise ValueError("must list at least one origin, or *")
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
    return origins


def parse_database_url_setting(value: object) -> str:
    from mnemomd.storage.database import DatabaseURLError, parse_database_url

    text = _text(value)
    try:
        parse_database_url(text)
    except DatabaseURLError as e:
        raise ValueError(str(e)) from None
    return text


def parse_redis_url_setting(value: object) -> str:
    from mnemomd.kv import parse_redis_target

    text = _text(value)
    parse_redis_target(text)  # ValueError with a message that never repeats the URL
    return text


def parse_path(value: object) -> str:
    text = _text(value)
    if not text:
        raise ValueError("must be a path")
    return text


@dataclass(frozen=True)
class Setting:
    """One configuration value and everything needed to read it from any source."""

    env: str
    parse: Callable[[object], object]
    default: object
    help: str
    flag: str | None = None
    secret: bool = False
    deprecated_env: tuple[str, ...] = ()
    #: The section that holds the value (``listener`` for ``listener.port``); empty only
    #: for the per-provider rows, which ``PROVIDER_ROWS`` places.
    section: str = ""
    #: The default is worked out at load time (from the environment, or from another
    #: setting), so the section's field starts as "" rather than as ``default``.
    derived: bool = False

    @property
    def key(self) -> str:
        """YAML key and attribute name."""
        return self.env.lower()


def upstream_settings(providers: ProviderRegistry) -> tuple[Setting, ...]:
    """``<NAME>_BASE_URL`` of each provider, its official API by default."""
    return tuple(Setting(p.base_url_setting, parse_base_url, p.base_url,
                         f"upstream for /{p.name}/… routes") for p in providers.values())


def provider_key_settings(providers: ProviderRegistry) -> tuple[Setting, ...]:
    """``<NAME>_API_KEY``: the gateway's own key for each provider that can analyse."""
    return tuple(Setting(p.analysis.key_setting, _text, None,
                         f"the gateway's own {p.title} key, for analysis", secret=True)
                 for p in providers.values()
                 if p.analysis is not None and p.analysis.key_setting)


#: The per-provider rows, generated from the provider registry.
PROVIDER_SETTINGS = (upstream_settings(PROVIDERS), provider_key_settings(PROVIDERS))

SETTINGS: tuple[Setting, ...] = (
    Setting("HOST", parse_host, "0.0.0.0", "address to listen on", flag="--host",
            section="listener"),
    Setting("PORT", _int_in(0, 65535), 8787, "TCP port to listen on (0 picks a free one)",
            flag="--port", section="listener"),
    Setting("LISTEN", parse_listen, None,
            "Twisted endpoint description; replaces HOST and PORT when set", flag="--listen",
            section="listener"),
    Setting("MNEMOM_ROLE", _choice(ROLES), "all",
            "which half of the daemon runs: all, gateway or scheduler", flag="--role",
            deprecated_env=("SMOLTBOT_ROLE",), section="daemon"),
    Setting("MNEMOM_WORKERS", _int_in(1, 256), 1,
            "reactor processes sharing the port under one supervisor (1: one process, no "
            "supervisor; more needs REDIS_URL)", flag="--workers", section="daemon"),
    Setting("MNEMOM_DATA_DIR", parse_path, None,
            "directory for embedded state (default: $STATE_DIRECTORY under systemd, else "
            "$XDG_DATA_HOME/mnemomd)", flag="--data-dir", section="daemon", derived=True),
    Setting("LOG_LEVEL", _choice(LOG_LEVELS), "info", "debug, info, warn or error",
            flag="--log-level", section="logging"),
    Setting("LOG_FORMAT", _choice(LOG_FORMATS), "json",
            "json (one object per line) or text", flag="--log-format", section="logging"),
    *PROVIDER_SETTINGS[0],
    Setting("UPSTREAM_TIMEOUT", _seconds(0.001, 86400), 600.0,
            "seconds to wait for upstream response headers before answering 504", section="proxy"),
    Setting("STREAM_IDLE_TIMEOUT", _seconds(0.001, 86400), 300.0,
            "longest silence allowed inside a response body before both sides are closed",
            section="proxy"),
    Setting("MAX_REQUEST_BODY_BYTES", _byte_size(1, 1024**3), 32 * 1024**2,
            "largest request body accepted; larger bodies get 413", section="listener"),
    Setting("STREAM_CAPTURE_BYTES", _byte_size(0, 64 * 1024**2), 1024**2,
            "bytes of each response kept in memory for analysis", section="proxy"),
    Setting("UPSTREAM_MAX_CONNECTIONS_PER_HOST", _int_in(1, 10000), 256,
            "persistent upstream connections kept per host", section="proxy"),
    Setting("CORS_ALLOWED_ORIGINS", parse_origins, ("*",),
            "comma-separated origins allowed by CORS, or *", section="proxy"),
    Setting("SHUTDOWN_GRACE_SECONDS", _seconds(0, 3600), 25.0,
            "how long in-flight requests may finish after SIGTERM", section="listener"),
    Setting("REQUEST_TIMEOUT", _seconds(0.001, 3600), 60.0,
            "deadline for receiving a whole request, head and body, counted from the "
            "connection opening or the request's first byte (not reset by each byte); "
            "past it the client gets 408 and the connection closes", section="listener"),
    Setting("MAX_CONNECTIONS_PER_CLIENT", _int_in(0, 1_000_000), 256,
            "open connections allowed from one client IP address (0: no limit); one more "
            "is answered 429 and closed", section="listener"),
    Setting("DATABASE_URL", parse_database_url_setting, None,
            "sqlite:///absolute/path.db or postgresql://user@host/db (default: SQLite file "
            "mnemomd.db in MNEMOM_DATA_DIR)", secret=False, section="storage", derived=True),
    Setting("MIGRATE_ON_START", parse_bool, True,
            "apply pending schema migrations at startup", section="storage"),
    Setting("SPOOL_MAX_BYTES", _byte_size(1024 * 1024, 1024**4), 256 * 1024**2,
            "largest size of the durable local spool (MNEMOM_DATA_DIR/spool) that keeps "
            "bookkeeping while the database is down or behind; past it bookkeeping is "
            "shed, counted and logged", section="storage"),
    Setting("WRITE_QUEUE_MAX_ROWS", _int_in(100, 10_000_000), 50_000,
            "bookkeeping writes held in memory for the batch writer; past it they go to "
            "the spool", section="storage"),
    Setting("REDIS_URL", parse_redis_url_setting, None,
            "redis://host:port/db for a shared KV store (default: in-memory, single node)",
            section="storage"),
    Setting("REDIS_PASSWORD", _text, None, "Redis password (overrides one in REDIS_URL)",
            secret=True, section="storage"),
    Setting("AIP_ENABLED", parse_bool, True, "integrity analysis on or off", section="integrity"),
    Setting("AAP_ENABLED", parse_bool, True,
            "trace outbox rows (AP-traces) for agents with aap_enabled on or off",
            section="integrity"),
    Setting("AIP_ATTESTATION", parse_bool, True,
            "sign, hash-chain and Merkle-log every checkpoint (docs/attestation.md)",
            section="integrity"),
    Setting("MNEMOM_SIGNING_KEY_FILE", parse_path, None,
            "Ed25519 private key (PEM) that signs checkpoints; default: signing-key.pem in "
            "MNEMOM_DATA_DIR, created on first start (mode 0600)", section="integrity"),
    Setting("AIP_DEFAULT_ENFORCEMENT", _choice(("observe", "nudge", "enforce")), "observe",
            "enforcement mode given to new agents", section="integrity"),
    Setting("AIP_DEFAULT_WITHOUT_REASONING", _choice(WITHOUT_REASONING_CHOICES), "allow",
            "what enforce does, for new agents, with a response that has no analysable "
            "reasoning: allow (deliver unverified), analyse_output or refuse",
            section="integrity"),
    Setting("AIP_FAILURE_MODE", _choice(("fail_open", "fail_closed")), "fail_open",
            "verdict when analysis fails: synthetic clear, or synthetic boundary_violation",
            section="analysis"),
    Setting("AIP_ANALYSIS_TIMEOUT_MS", _int_in(100, 600_000), 10_000,
            "longest wait for the analysis model, in milliseconds", section="analysis"),
    Setting("MNEMOM_POLICY_FILE", parse_path, None,
            "YAML tool policy (schema 1.0) for the whole deployment, validated at startup; "
            "while set, PUT /v1/policy is refused", section="proxy"),
    Setting("AIP_HOLD_BUFFER_BYTES", _byte_size(64 * 1024, 64 * 1024**2), 1024**2,
            "enforce mode: output held for a verdict in memory per response; past it the "
            "upstream is paused, never released unanalysed", section="proxy"),
    Setting("AIP_HOLD_KEEPALIVE_SECONDS", _seconds(1, 10), 5.0,
            "enforce mode: seconds between keepalives on a stream held for a verdict",
            section="proxy"),
    Setting("AIP_MIN_EVIDENCE_TOKENS", _int_in(0, 1_000_000), 100,
            "thinking shorter than this (tokens ~ chars/4) is clear without analysis",
            section="analysis"),
    Setting("AIP_STORE_EVIDENCE", parse_bool, True,
            "keep short evidence excerpts (200 chars) in concerns", section="analysis"),
    Setting("THINKING_INJECTION", _choice(("auto", "off")), "auto",
            "ask models to expose reasoning where that is valid for the request",
            section="integrity"),
    Setting("ANALYSIS_PROVIDER",
            _choice(tuple(PROVIDERS.analysis)),
            "anthropic", "analysis backend", section="analysis"),
    Setting("ANALYSIS_MODEL", _text, "claude-haiku-4-5-20251001", "analysis model",
            section="analysis"),
    Setting("ANALYSIS_BASE_URL", parse_base_url, None,
            "analysis endpoint (required for openai-compatible; default: the backend's "
            "official API)", section="analysis"),
    Setting("ANALYSIS_API_KEY", _text, None,
            "key for the analysis backend (default: the provider key below)", secret=True,
            section="analysis"),
    *PROVIDER_SETTINGS[1],
    Setting("MNEMOM_ANALYZE_URL", parse_base_url, None,
            "hybrid analysis endpoint (ANALYSIS_PROVIDER=mnemom)", section="analysis"),
    Setting("MNEMOM_API_KEY", _text, None, "key for the hybrid analysis endpoint",
            secret=True, section="analysis"),
    Setting("MNEMOM_STORE_CHECKPOINT", parse_bool, False,
            "ask the hybrid analysis service to store its checkpoint too (default: stored "
            "only here)", section="analysis"),
    Setting("MNEMOM_LICENSE_JWT", _text, None, "the license token", secret=True, section="license"),
    Setting("MNEMOM_LICENSE_PUBLIC_KEY", parse_path, None,
            "PEM file, or directory of <kid>.pem files, with the keys trusted to sign "
            "licenses", section="license"),
    Setting("LICENSE_REQUIRED", parse_bool, False,
            "refuse to start without a license (default: unlicensed evaluation)",
            section="license"),
    Setting("MNEMOM_API_URL", parse_base_url, "https://api.mnemom.ai",
            "where online license validation goes", section="cloud"),
    Setting("HEARTBEAT_URL", parse_heartbeat_url, "https://api.mnemom.ai/v1/deployments/heartbeat",
            "where the deployment heartbeat goes", section="cloud"),
    Setting("MNEMOM_OFFLINE", parse_bool, False,
            "no outbound calls except the LLM upstreams and the analysis backend", section="cloud"),
    Setting("OBSERVER_HEARTBEAT_INTERVAL_SECONDS", _seconds(0.01, 86400), 60.0,
            "seconds between heartbeats", section="observer"),
    Setting("OBSERVER_NUDGES_INTERVAL_SECONDS", _seconds(0.01, 86400), 300.0,
            "seconds between runs of the nudge expiry job", section="observer"),
    Setting("OBSERVER_RETENTION_INTERVAL_SECONDS", _seconds(0.01, 86400 * 7), 3600.0,
            "seconds between runs of the retention job", section="observer"),
    Setting("RETENTION_DAYS", _int_in(1, 36500), 365,
            "checkpoints, traces and webhook delivery logs older than this are deleted",
            section="observer"),
    Setting("OBSERVER_LICENSE_INTERVAL_SECONDS", _seconds(0.01, 86400 * 7), 3600.0,
            "seconds between online license checks", section="observer"),
    Setting("OBSERVER_TRACES_INTERVAL_SECONDS", _seconds(0.01, 86400), 60.0,
            "seconds between runs of the AP-trace job", section="observer"),
    Setting("OBSERVER_DRIFT_INTERVAL_SECONDS", _seconds(0.01, 86400), 300.0,
            "seconds between runs of the behavioural drift job", section="observer"),
    Setting("OBSERVER_WEBHOOKS_INTERVAL_SECONDS", _seconds(0.01, 86400), 10.0,
            "seconds between runs of the webhook retry job", section="observer"),
    Setting("OUTBOX_TTL", _seconds(1, 86400), 600.0,
            "seconds a trace outbox row (with its excerpts) may exist, whatever happens",
            section="observer"),
    Setting("TRACE_DECISIONS", _choice(("auto", "heuristic")), "auto",
            "auto: decision analysis by the analysis backend when one is usable; "
            "heuristic: never send excerpts to the backend", section="observer"),
    Setting("INTERNAL_API_KEY", _text, None,
            "bearer token with the owner role on the management API", secret=True, section="api"),
    Setting("MNEMOM_JWT_SECRET", _text, None,
            "HS256 secret that signs management API tokens (role owner, admin or viewer)",
            secret=True, section="api"),
    Setting("SUPABASE_JWT_SECRET", _text, None,
            "a Supabase project's JWT secret, accepted like MNEMOM_JWT_SECRET", secret=True,
            section="api"),
    Setting("MNEMOM_OIDC_ISSUER", parse_oidc_issuer, None,
            "the identity provider whose RS256/ES256/EdDSA tokens sign operators in to the "
            "management API (its /.well-known/openid-configuration is read)", section="api"),
    Setting("MNEMOM_OIDC_AUDIENCE", _text, None,
            "the aud claim those tokens must carry (the client id registered at the "
            "identity provider); required with MNEMOM_OIDC_ISSUER", section="api"),
    Setting("MNEMOM_OIDC_ROLE_CLAIM", parse_claim_path, "roles",
            "the claim holding the caller's roles or groups (a string or a list; a dotted "
            "path such as realm_access.roles reaches into an object)", section="api"),
    Setting("MNEMOM_OIDC_ROLE_MAP", parse_role_map_text, None,
            "which claim values grant which role, e.g. owner=grp-a,admin=grp-b,viewer=grp-c; "
            "unset: a value equal to a role name grants it", section="api"),
    Setting("MNEMOM_OIDC_REFRESH_SECONDS", _seconds(1, 3600), 30.0,
            "the identity provider's keys are fetched again (for a token naming an unknown "
            "key) at most once per this many seconds", section="api"),
    Setting("MNEMOM_OIDC_CLIENT_ID", _text, None,
            "the public client id the web console signs in with at the identity provider "
            "(authorization code flow with PKCE); unset: the console takes tokens only",
            section="api"),
)


SETTINGS_BY_ENV = {s.env: s for s in SETTINGS}
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}

# -- where each value lives -----------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a setting's value lives: ``section.field``, or an entry of a per-provider
    mapping (``proxy.upstream_base_urls.openai``), so that a provider added to the
    registry needs no new field in any section."""

    section: str
    field: str
    provider: str | None = None

    @property
    def path(self) -> str:
        """The setting path named in error messages."""
        where = f"{self.section}.{self.field}"
        return f"{where}.{self.provider}" if self.provider else where


#: The per-provider rows (generated from the provider registry) are placed by provider
#: name, not by a ``section`` of their own.
PROVIDER_ROWS: Mapping[str, Placement] = {
    **{p.base_url_setting: Placement("proxy", "upstream_base_urls", p.name)
       for p in PROVIDERS.values()},
    **{p.analysis.key_setting: Placement("analysis", "provider_api_keys", p.name)
       for p in PROVIDERS.values() if p.analysis is not None and p.analysis.key_setting},
}


def placement(setting: Setting) -> Placement:
    return PROVIDER_ROWS.get(setting.env) or Placement(setting.section, setting.key)


PLACEMENTS: Mapping[str, Placement] = {s.env: placement(s) for s in SETTINGS}
_PLACEMENT_BY_KEY: Mapping[str, Placement] = {s.key: PLACEMENTS[s.env] for s in SETTINGS}


def provider_defaults(field_name: str) -> dict[str, Any]:
    """The table's defaults of one per-provider mapping, keyed by provider."""
    return {place.provider: SETTINGS_BY_ENV[env].default for env, place in PROVIDER_ROWS.items()
            if place.field == field_name and place.provider is not None}


# -- the sections: each field is a row of SETTINGS (tests/config/test_sections.py) ---------


@dataclass(frozen=True)
class DaemonConfig:
    """Which half of the daemon runs, and where its embedded state lives."""

    mnemom_role: str = "all"
    mnemom_workers: int = 1
    mnemom_data_dir: str = ""

    @property
    def role(self) -> str:
        return self.mnemom_role

    @property
    def workers(self) -> int:
        return self.mnemom_workers


@dataclass(frozen=True)
class ListenerConfig:
    """The front door: where it listens, the largest body it takes, how long a request may
    take to arrive, how many connections one client may hold, how long it drains."""

    host: str = "0.0.0.0"
    port: int = 8787
    listen: str | None = None
    max_request_body_bytes: int = 32 * 1024**2
    shutdown_grace_seconds: float = 25.0
    request_timeout: float = 60.0
    max_connections_per_client: int = 256

    @property
    def listen_description(self) -> str:
        """The endpoint the gateway listens on, from LISTEN or HOST and PORT."""
        if self.listen:
            return self.listen
        host = self.host.replace(":", r"\:")
        return f"tcp:{self.port}:interface={host}"


@dataclass(frozen=True)
class LoggingConfig:
    log_level: str = "info"
    log_format: str = "json"


@dataclass(frozen=True)
class ProxyConfig:
    """How calls are forwarded: where to, how long to wait, what is kept for analysis."""

    upstream_base_urls: Mapping[str, str] = field(
        default_factory=lambda: provider_defaults("upstream_base_urls"))
    upstream_timeout: float = 600.0
    stream_idle_timeout: float = 300.0
    stream_capture_bytes: int = 1024**2
    upstream_max_connections_per_host: int = 256
    cors_allowed_origins: tuple[str, ...] = ("*",)
    aip_hold_buffer_bytes: int = 1024**2
    aip_hold_keepalive_seconds: float = 5.0
    mnemom_policy_file: str | None = None

    def upstream_base_url(self, provider: str | Provider) -> str:
        """Where a provider's routes go: its ``<NAME>_BASE_URL`` setting, or, for a provider
        the settings table has no row for (one registered by a build or a test), its own
        official API. A name must have a row."""
        if isinstance(provider, str):
            return self.upstream_base_urls[provider]
        return self.upstream_base_urls.get(provider.name, provider.base_url)


@dataclass(frozen=True)
class StorageConfig:
    """The database and the KV store."""

    database_url: str = ""
    migrate_on_start: bool = True
    redis_url: str | None = None
    redis_password: str | None = field(default=None, repr=False)
    spool_max_bytes: int = 256 * 1024**2
    write_queue_max_rows: int = 50_000


@dataclass(frozen=True)
class IntegrityConfig:
    """Whether calls are analysed, how new agents are enforced, whether reasoning is
    asked for."""

    aip_enabled: bool = True
    aap_enabled: bool = True
    aip_attestation: bool = True
    mnemom_signing_key_file: str | None = None
    aip_default_enforcement: str = "observe"
    aip_default_without_reasoning: str = "allow"
    thinking_injection: str = "auto"


@dataclass(frozen=True)
class AnalysisConfig:
    """The analysis backend, and what a failed analysis counts as."""

    aip_failure_mode: str = "fail_open"
    aip_analysis_timeout_ms: int = 10_000
    aip_min_evidence_tokens: int = 100
    aip_store_evidence: bool = True
    analysis_provider: str = "anthropic"
    analysis_model: str = "claude-haiku-4-5-20251001"
    analysis_base_url: str | None = None
    analysis_api_key: str | None = field(default=None, repr=False)
    provider_api_keys: Mapping[str, str | None] = field(
        default_factory=lambda: provider_defaults("provider_api_keys"), repr=False)
    mnemom_analyze_url: str | None = None
    mnemom_api_key: str | None = field(default=None, repr=False)
    mnemom_store_checkpoint: bool = False

    @property
    def timeout(self) -> float:
        """The analysis timeout in seconds."""
        return self.aip_analysis_timeout_ms / 1000


@dataclass(frozen=True)
class LicenseConfig:
    mnemom_license_jwt: str | None = field(default=None, repr=False)
    mnemom_license_public_key: str | None = None
    license_required: bool = False


@dataclass(frozen=True)
class CloudConfig:
    """Mnemom's own services: online license checks and the heartbeat."""

    mnemom_api_url: str = "https://api.mnemom.ai"
    heartbeat_url: str = "https://api.mnemom.ai/v1/deployments/heartbeat"
    mnemom_offline: bool = False


@dataclass(frozen=True)
class ObserverConfig:
    """The periodic jobs: how often each runs, and what they keep."""

    observer_heartbeat_interval_seconds: float = 60.0
    observer_nudges_interval_seconds: float = 300.0
    observer_retention_interval_seconds: float = 3600.0
    retention_days: int = 365
    observer_license_interval_seconds: float = 3600.0
    observer_traces_interval_seconds: float = 60.0
    observer_drift_interval_seconds: float = 300.0
    observer_webhooks_interval_seconds: float = 10.0
    outbox_ttl: float = 600.0
    trace_decisions: str = "auto"


@dataclass(frozen=True)
class ApiConfig:
    """Who may use the management API."""

    internal_api_key: str | None = field(default=None, repr=False)
    mnemom_jwt_secret: str | None = field(default=None, repr=False)
    supabase_jwt_secret: str | None = field(default=None, repr=False)
    mnemom_oidc_issuer: str | None = None
    mnemom_oidc_audience: str | None = None
    mnemom_oidc_role_claim: str = "roles"
    mnemom_oidc_role_map: str | None = None
    mnemom_oidc_refresh_seconds: float = 30.0
    mnemom_oidc_client_id: str | None = None


#: The sections by name, in the order ``check-config`` shows them.
SECTIONS: Mapping[str, type] = {
    "daemon": DaemonConfig, "listener": ListenerConfig, "logging": LoggingConfig,
    "proxy": ProxyConfig, "storage": StorageConfig, "integrity": IntegrityConfig,
    "analysis": AnalysisConfig, "license": LicenseConfig, "cloud": CloudConfig,
    "observer": ObserverConfig, "api": ApiConfig,
}

#: The rows of each section, in table order.
SETTINGS_BY_SECTION: Mapping[str, tuple[Setting, ...]] = {
    name: tuple(s for s in SETTINGS if PLACEMENTS[s.env].section == name) for name in SECTIONS
}


@dataclass(frozen=True, init=False)
class Config:
    """The effective configuration: one section per concern, plus where each value came
    from and what the operator should be warned about.

    Components are given a section (``config.proxy``), not this object. A setting's YAML
    key also works as an attribute (``config.port`` reads ``config.listener.port``) and as
    a constructor keyword (``Config(port=9000)``), which keeps tests short.
    """

    daemon: DaemonConfig
    listener: ListenerConfig
    logging: LoggingConfig
    proxy: ProxyConfig
    storage: StorageConfig
    integrity: IntegrityConfig
    analysis: AnalysisConfig
    license: LicenseConfig
    cloud: CloudConfig
    observer: ObserverConfig
    api: ApiConfig
    config_path: str | None
    sources: Mapping[str, str]
    warnings: tuple[str, ...]

    def __init__(self, *, config_path: str | None = None,
                 sources: Mapping[str, str] | None = None, warnings: tuple[str, ...] = (),
                 **values: object) -> None:
        """Sections given by name, or else their defaults; then settings given by YAML key
        replace single values in them."""
        sections: dict[str, Any] = {name: values.pop(name, None) or cls()
                                    for name, cls in SECTIONS.items()}
        for key, value in values.items():
            place = _PLACEMENT_BY_KEY.get(key)
            if place is None:
                raise TypeError(f"Config got {key!r}, which is not a setting or section")
            section = sections[place.section]
            if place.provider is not None:
                value = {**getattr(section, place.field), place.provider: value}
            sections[place.section] = dataclasses.replace(section, **{place.field: value})
        for name, section in sections.items():
            object.__setattr__(self, name, section)
        object.__setattr__(self, "config_path", config_path)
        object.__setattr__(self, "sources", dict(sources or {}))
        object.__setattr__(self, "warnings", tuple(warnings))

    def __getattr__(self, name: str) -> Any:
        """A setting by its YAML key, read from its section (flat access)."""
        place = _PLACEMENT_BY_KEY.get(name)
        if place is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value = getattr(getattr(self, place.section), place.field)
        return value if place.provider is None else value.get(place.provider)

    @property
    def role(self) -> str:
        return self.daemon.role

    @property
    def listen_description(self) -> str:
        return self.listener.listen_description

    def upstream_base_url(self, provider: str | Provider) -> str:
        return self.proxy.upstream_base_url(provider)

    def describe_sections(self) -> list[tuple[str, list[tuple[str, str, str]]]]:
        """Per section, (setting, value with secrets masked, source) for ``check-config``."""
        return [(name, [(s.env, mask(s, getattr(self, s.key)),
                         self.sources.get(s.env, "default")) for s in rows])
                for name, rows in SETTINGS_BY_SECTION.items()]

    def describe(self) -> list[tuple[str, str, str]]:
        """(setting, value with secrets masked, source), section by section."""
        return [row for _, rows in self.describe_sections() for row in rows]


def mask(setting: Setting, value: object) -> str:
    """Render a value for humans without revealing secrets or URL credentials."""
    if value is None:
        return "(unset)"
    if setting.secret:
        return "********"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if "://" in text:
        parts = urlsplit(text)
        userinfo, at, host = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            text = urlunsplit((parts.scheme, f"{user}:****@{host}", parts.path, parts.query,
                               parts.fragment))
    return text


def default_data_dir(environ: Mapping[str, str]) -> str:
    """systemd's StateDirectory when run as a unit, else the per-user XDG data dir."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return state
    base = environ.get("XDG_DATA_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "mnemomd")


def read_config_file(path: str) -> dict[object, object]:
    """Read the YAML file; raises ConfigError naming the file on any problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"config file {path}: cannot be read ({e.strerror})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"config file {path}: is not UTF-8 text"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"config file {path}: invalid YAML{where}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"config file {path}: must be a mapping of setting: value"])
    return data


# -- names that are not settings ----------------------------------------------------------

#: Environment names the daemon watches for typos.
ENV_PREFIX = "MNEMOM_"

#: ``MNEMOM_*`` variables that are read but are not settings, and who reads them.
ENV_READ_ELSEWHERE: Mapping[str, str] = {
    "MNEMOM_CONFIG": "the YAML file to read (load_config)",
    "MNEMOM_MIGRATIONS_DIR": "where the migration files are (mnemomd/storage/migrations.py)",
    "MNEMOM_WORKER": "a worker's place under the supervisor, set by it (mnemomd/ops/workers.py)",
}


#: Settings of the Node adapter (smoltbot) that mnemomd does not read, and what it uses
#: instead: said once per setting found, by ``check-config`` and at startup. (Its
#: ``SMOLTBOT_ROLE`` is still read, as a deprecated name of ``MNEMOM_ROLE``, and
#: ``REDIS_PASSWORD`` is a setting here too.)
NODE_ADAPTER_SETTINGS: Mapping[str, str] = {
    "SUPABASE_URL": "mnemomd does not use the Supabase REST API: set DATABASE_URL to the "
                    "project's Postgres connection string (postgresql://…, from the Supabase "
                    "dashboard's Connect dialog) to keep using that database",
    "SUPABASE_SECRET_KEY": "mnemomd needs no Supabase API key: it reaches the database "
                           "through DATABASE_URL; for the management API set "
                           "INTERNAL_API_KEY, MNEMOM_JWT_SECRET (or SUPABASE_JWT_SECRET) or "
                           "MNEMOM_OIDC_ISSUER",
    "SUPABASE_KEY": "mnemomd needs no Supabase API key: it reaches the database through "
                    "DATABASE_URL; for the management API set INTERNAL_API_KEY, "
                    "MNEMOM_JWT_SECRET (or SUPABASE_JWT_SECRET) or MNEMOM_OIDC_ISSUER",
}


def node_adapter_notes(environ: Mapping[str, str]) -> list[str]:
    """One line per Node adapter setting present in the environment, saying what mnemomd
    reads instead (its values are never repeated: some are secrets)."""
    return [f"{name} is a Node adapter setting that mnemomd ignores; {instead}"
            for name, instead in NODE_ADAPTER_SETTINGS.items() if environ.get(name, "") != ""]


def nearest(name: str, candidates: list[str]) -> str | None:
    """The known name closest to a misspelt one, if any is close."""
    found = difflib.get_close_matches(name, candidates, n=1)
    return found[0] if found else None


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``MNEMOM_*`` variable that nothing reads: a typo such as
    ``MNEMOM_ROEL`` would otherwise leave the setting at its default without a word.

    Names are compared without the prefix, which every candidate would otherwise share.
    """
    deprecated = {old for s in SETTINGS for old in s.deprecated_env}
    bare = {name.removeprefix(ENV_PREFIX): name for name in [*SETTINGS_BY_ENV,
                                                             *ENV_READ_ELSEWHERE]}
    found = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in SETTINGS_BY_ENV \
                or name in ENV_READ_ELSEWHERE or name in deprecated:
            continue
        match = nearest(name.removeprefix(ENV_PREFIX), list(bare))
        found.append(f"{name} is not a setting"
                     + (f" (did you mean {bare[match]}?)" if match else ""))
    return found


def unknown_file_keys(path: str, file_values: Mapping[object, object]) -> list[str]:
    """A problem for each YAML key that is not a setting, with the nearest one."""
    found = []
    for key in file_values:
        if str(key).lower() in SETTINGS_BY_KEY:
            continue
        match = nearest(str(key).lower(), list(SETTINGS_BY_KEY))
        found.append(f"config file {path}: unknown setting {key!r}"
                     + (f" (did you mean {match!r}?)" if match else ""))
    return found


# -- loading ------------------------------------------------------------------------------


def raw_value(setting: Setting, flags: Mapping[str, object], environ: Mapping[str, str],
              file_values: Mapping[object, object], path: str | None) -> tuple[object, str]:
    """The winning raw value of one setting and its source, ``(None, "default")`` if unset."""
    raw: object = None
    source = "default"
    file_key = next((k for k in file_values if str(k).lower() == setting.key), None)
    if file_key is not None and file_values[file_key] is not None:
        raw, source = file_values[file_key], f"file {path}"
    for old in setting.deprecated_env:
        if environ.get(old, "") != "":
            raw, source = environ[old], f"env {old}"
    if environ.get(setting.env, "") != "":
        raw, source = environ[setting.env], f"env {setting.env}"
    if flags.get(setting.env) is not None:
        raw, source = flags[setting.env], f"flag {setting.flag}"
    return raw, source


def deprecated_in_use(environ: Mapping[str, str]) -> list[str]:
    return [f"{old} is deprecated; use {setting.env}" for setting in SETTINGS
            for old in setting.deprecated_env if environ.get(old, "") != ""]


def value_problem(setting: Setting, source: str, raw: object, error: ValueError) -> str:
    """One bad value, naming its setting path, setting and source, never a secret."""
    shown = "********" if setting.secret else repr(
        mask(setting, raw) if isinstance(raw, str) else raw)
    return f"[{PLACEMENTS[setting.env].path}] {setting.env} ({source}): {shown} {error}"


def cross_setting_problems(config: Config) -> list[str]:
    """Problems no single value has: the analysis settings together, the license."""
    from mnemomd.config import analysis

    problems = analysis.validate(analysis.from_config(config.analysis))
    problems += without_reasoning_problems(config.integrity, config.analysis)
    if config.cloud.mnemom_offline and config.analysis.analysis_provider == "mnemom":
        problems.append("ANALYSIS_PROVIDER=mnemom calls Mnemom's hosted analysis service, "
                        "which MNEMOM_OFFLINE=true forbids: choose another analysis provider "
                        "or unset MNEMOM_OFFLINE")
    license_ = config.license
    if license_.license_required and not license_.mnemom_license_jwt:
        problems.append("LICENSE_REQUIRED is true but MNEMOM_LICENSE_JWT is not set")
    if license_.mnemom_license_public_key:
        from mnemomd.cloud.license import LicenseKeyError, load_trusted_keys

        try:
            load_trusted_keys(license_.mnemom_license_public_key)
        except LicenseKeyError as e:
            problems.append(f"MNEMOM_LICENSE_PUBLIC_KEY: {e}")
    if config.api.mnemom_oidc_issuer and not config.api.mnemom_oidc_audience:
        problems.append("MNEMOM_OIDC_ISSUER is set but MNEMOM_OIDC_AUDIENCE is not: without "
                        "it a token the identity provider issued for any other application "
                        "would be accepted; set it to the client id registered for mnemomd")
    if config.api.mnemom_oidc_client_id and not config.api.mnemom_oidc_issuer:
        problems.append("MNEMOM_OIDC_CLIENT_ID is set but MNEMOM_OIDC_ISSUER is not: the "
                        "console has no identity provider to sign in with")
    problems += worker_problems(config)
    problems += policy_file_problems(config.proxy.mnemom_policy_file)
    return problems


def policy_file_problems(path: str | None) -> list[str]:
    """Every problem of the ``MNEMOM_POLICY_FILE`` policy, each with its path."""
    if not path:
        return []
    from mnemomd.policy import PolicyError, read_policy_file

    try:
        read_policy_file(path)
    except PolicyError as e:
        return [f"MNEMOM_POLICY_FILE ({path}): {problem}" for problem in e.problems]
    return []


def worker_problems(config: Config) -> list[str]:
    """What ``MNEMOM_WORKERS`` above 1 needs: state every worker shares, a role with a
    listener to share, and a TCP listener each worker can open with ``SO_REUSEPORT``."""
    workers = config.daemon.workers
    if workers == 1:
        return []
    problems = []
    if not config.storage.redis_url:
        problems.append(f"MNEMOM_WORKERS={workers} needs REDIS_URL: the in-memory KV store "
                        f"is private to one process, so workers would not share agent "
                        f"caches, nudges, sessions and job leases; set REDIS_URL or use "
                        f"MNEMOM_WORKERS=1")
    if config.daemon.role == "scheduler":
        problems.append(f"MNEMOM_WORKERS={workers} cannot be used with MNEMOM_ROLE=scheduler: "
                        f"the jobs run in one process; run the scheduler with one worker")
    from mnemomd.http.reuseport import ListenAddressError, tcp_address

    try:
        tcp_address(config.listener.listen_description)
    except ListenAddressError as e:
        problems.append(f"MNEMOM_WORKERS={workers}: {e}")
    return problems


def names_any(problem: str, envs: list[str]) -> bool:
    return any(re.search(rf"\b{re.escape(env)}\b", problem) for env in envs)


def load_config(
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    config_path: str | None = None,
    default_config_path: str = DEFAULT_CONFIG_PATH,
) -> Config:
    """Build the effective configuration or raise ConfigError listing every problem.

    ``flags`` maps environment names (``PORT``) to command-line values; ``config_path``
    is the ``--config`` flag. Nothing is read from the process globals unless passed in.
    A value that does not parse leaves its default in place, so the checks that span
    settings still run and their problems come in the same message; one that names the
    unparsable setting is left out, as that setting already has its own.
    """
    flags = dict(flags or {})
    environ = dict(os.environ if environ is None else environ)
    problems: list[str] = []

    path = config_path or environ.get("MNEMOM_CONFIG") or None
    file_values: dict[object, object] = {}
    if path is None and os.path.isfile(default_config_path):
        path = default_config_path
    if path is not None:
        try:
            file_values = read_config_file(path)
        except ConfigError as e:
            problems += e.problems
        problems += unknown_file_keys(path, file_values)

    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    failed: list[str] = []
    for setting in SETTINGS:
        raw, source = raw_value(setting, flags, environ, file_values, path)
        values[setting.key] = setting.default
        if raw is None:
            continue
        try:
            values[setting.key] = setting.parse(raw)
        except ValueError as e:
            problems.append(value_problem(setting, source, raw, e))
            failed.append(setting.env)
            continue
        sources[setting.env] = source

    if values["mnemom_data_dir"] is None:
        values["mnemom_data_dir"] = default_data_dir(environ)
    if values["database_url"] is None:
        data_dir = os.path.abspath(str(values["mnemom_data_dir"]))
        values["database_url"] = f"sqlite://{data_dir}/mnemomd.db"
    warnings = (deprecated_in_use(environ) + unknown_environment(environ)
                + node_adapter_notes(environ))
    config = Config(**values, config_path=path, sources=sources, warnings=tuple(warnings))
    problems += [p for p in cross_setting_problems(config) if not names_any(p, failed)]
    if problems:
        raise ConfigError(problems)
    if config.integrity.aip_enabled:
        from mnemomd.config import analysis

        config = dataclasses.replace(config, warnings=config.warnings + tuple(
            analysis.warnings(analysis.from_config(config.analysis)))
            + tuple(without_reasoning_warnings(config.integrity)))
    return config


#: Said by ``check-config`` and at startup whenever an enforce agent may opt out.
OPT_OUT_WARNING = (
    "An agent in enforce mode can opt out of enforcement by turning its reasoning off "
    "(temperature 0, thinking disabled, forced tool_choice, max_tokens <= 1024, a model "
    "without reasoning, OpenAI Chat Completions): set without_reasoning to analyse_output "
    "or refuse")


def output_analysis_allowed(analysis_provider: str, providers: ProviderRegistry = PROVIDERS,
                            ) -> bool:
    """Whether ``analyse_output`` may send a response to the analysis backend.

    The hybrid ``mnemom`` backend is promised never to receive the response (SPEC §5.4),
    so with it output analysis is refused everywhere and acts as ``refuse``.
    """
    api = providers.analysis.get(analysis_provider)
    return api is None or api.accepts_output


def without_reasoning_problems(integrity: IntegrityConfig,
                               analysis: AnalysisConfig) -> list[str]:
    """A default ``analyse_output`` the analysis backend may not carry out."""
    if (integrity.aip_default_without_reasoning == "analyse_output"
            and not output_analysis_allowed(analysis.analysis_provider)):
        return [f"AIP_DEFAULT_WITHOUT_REASONING=analyse_output cannot be used with "
                f"ANALYSIS_PROVIDER={analysis.analysis_provider}: that backend never receives "
                f"the response; use refuse"]
    return []


def without_reasoning_warnings(integrity: IntegrityConfig) -> list[str]:
    """New agents in enforce mode that turning reasoning off lets through unverified."""
    if (integrity.aip_default_enforcement == "enforce"
            and integrity.aip_default_without_reasoning == "allow"):
        return [f"AIP_DEFAULT_ENFORCEMENT=enforce with AIP_DEFAULT_WITHOUT_REASONING=allow: "
                f"{OPT_OUT_WARNING}"]
    return []
