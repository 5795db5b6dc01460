"""Configuration: one table of settings, three sources, one precedence order.

A setting has an environment name (``PORT``), a YAML key (``port``) and sometimes a
command-line flag (``--port``). A flag beats the environment, which beats the YAML file,
which beats the built-in default. Every value is parsed and checked up front, and every
problem is reported together so an operator fixes their file in one pass, not one error
per restart.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import yaml

from mnemomd.providers import PROVIDERS, ProviderRegistry

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


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be a string")
    return str(value).strip()


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
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


def _seconds(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
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


def _byte_size(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
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


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value).lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


def parse_base_url(value: Any) -> str:
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


def parse_heartbeat_url(value: Any) -> str:
    """A full endpoint URL: unlike base URLs it keeps its path."""
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials")
    return text


def parse_host(value: Any) -> str:
    text = _text(value)
    if not text or any(c.isspace() for c in text):
        raise ValueError("must be a host name or IP address")
    return text


def parse_listen(value: Any) -> str | None:
    """A Twisted server endpoint description; checked for shape here, opened at start."""
    text = _text(value)
    if not text:
        return None
    kind = text.split(":", 1)[0]
    if kind not in ("tcp", "tcp6", "ssl", "unix", "systemd") or ":" not in text:
        raise ValueError("must be a Twisted endpoint such as tcp:8787, ssl:8443:privateKey=… "
                         "or unix:/run/mnemomd/http.sock")
    return text


def parse_origins(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else _text(value).split(",")
    origins = tuple(_text(item) for item in items if _text(item))
    if not origins:
        raise ValueError("must list at least one origin, or *")
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
    return origins


def parse_database_url_setting(value: Any) -> str:
    from mnemomd.storage.database import DatabaseURLError, parse_database_url

    text = _text(value)
    try:
        parse_database_url(text)
    except DatabaseURLError as e:
        raise ValueError(str(e)) from None
    return text


def parse_redis_url_setting(value: Any) -> str:
    from mnemomd.kv import parse_redis_target

    text = _text(value)
    parse_redis_target(text)  # ValueError with a message that never repeats the URL
    return text


def parse_path(value: Any) -> str:
    text = _text(value)
    if not text:
        raise ValueError("must be a path")
    return text


@dataclass(frozen=True)
class Setting:
    """One configuration value and everything needed to read it from any source."""

    env: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    flag: str | None = None
    secret: bool = False
    deprecated_env: tuple[str, ...] = ()

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
    Setting("HOST", parse_host, "0.0.0.0", "address to listen on", flag="--host"),
    Setting("PORT", _int_in(0, 65535), 8787, "TCP port to listen on (0 picks a free one)",
            flag="--port"),
    Setting("LISTEN", parse_listen, None,
            "Twisted endpoint description; replaces HOST and PORT when set", flag="--listen"),
    Setting("MNEMOM_ROLE", _choice(ROLES), "all",
            "which half of the daemon runs: all, gateway or scheduler", flag="--role",
            deprecated_env=("SMOLTBOT_ROLE",)),
    Setting("MNEMOM_DATA_DIR", parse_path, None,
            "directory for embedded state (default: $STATE_DIRECTORY under systemd, else "
            "$XDG_DATA_HOME/mnemomd)", flag="--data-dir"),
    Setting("LOG_LEVEL", _choice(LOG_LEVELS), "info", "debug, info, warn or error",
            flag="--log-level"),
    Setting("LOG_FORMAT", _choice(LOG_FORMATS), "json",
            "json (one object per line) or text", flag="--log-format"),
    *PROVIDER_SETTINGS[0],
    Setting("UPSTREAM_TIMEOUT", _seconds(0.001, 86400), 600.0,
            "seconds to wait for upstream response headers before answering 504"),
    Setting("STREAM_IDLE_TIMEOUT", _seconds(0.001, 86400), 300.0,
            "longest silence allowed inside a response body before both sides are closed"),
    Setting("MAX_REQUEST_BODY_BYTES", _byte_size(1, 1024**3), 32 * 1024**2,
            "largest request body accepted; larger bodies get 413"),
    Setting("STREAM_CAPTURE_BYTES", _byte_size(0, 64 * 1024**2), 1024**2,
            "bytes of each response kept in memory for analysis"),
    Setting("UPSTREAM_MAX_CONNECTIONS_PER_HOST", _int_in(1, 10000), 256,
            "persistent upstream connections kept per host"),
    Setting("CORS_ALLOWED_ORIGINS", parse_origins, ("*",),
            "comma-separated origins allowed by CORS, or *"),
    Setting("SHUTDOWN_GRACE_SECONDS", _seconds(0, 3600), 25.0,
            "how long in-flight requests may finish after SIGTERM"),
    Setting("DATABASE_URL", parse_database_url_setting, None,
            "sqlite:///absolute/path.db or postgresql://user@host/db (default: SQLite file "
            "mnemomd.db in MNEMOM_DATA_DIR)", secret=False),
    Setting("MIGRATE_ON_START", parse_bool, True,
            "apply pending schema migrations at startup"),
    Setting("REDIS_URL", parse_redis_url_setting, None,
            "redis://host:port/db for a shared KV store (default: in-memory, single node)"),
    Setting("REDIS_PASSWORD", _text, None, "Redis password (overrides one in REDIS_URL)",
            secret=True),
    Setting("AIP_ENABLED", parse_bool, True, "integrity analysis on or off"),
    Setting("AIP_DEFAULT_ENFORCEMENT", _choice(("observe", "nudge", "enforce")), "observe",
            "enforcement mode given to new agents"),
    Setting("AIP_DEFAULT_WITHOUT_REASONING", _choice(WITHOUT_REASONING_CHOICES), "allow",
            "what enforce does, for new agents, with a response that has no analysable "
            "reasoning: allow (deliver unverified), analyse_output or refuse"),
    Setting("AIP_FAILURE_MODE", _choice(("fail_open", "fail_closed")), "fail_open",
            "verdict when analysis fails: synthetic clear, or synthetic boundary_violation"),
    Setting("AIP_ANALYSIS_TIMEOUT_MS", _int_in(100, 600_000), 10_000,
            "longest wait for the analysis model, in milliseconds"),
    Setting("AIP_MIN_EVIDENCE_TOKENS", _int_in(0, 1_000_000), 100,
            "thinking shorter than this (tokens ~ chars/4) is clear without analysis"),
    Setting("AIP_STORE_EVIDENCE", parse_bool, True,
            "keep short evidence excerpts (200 chars) in concerns"),
    Setting("THINKING_INJECTION", _choice(("auto", "off")), "auto",
            "ask models to expose reasoning where that is valid for the request"),
    Setting("ANALYSIS_PROVIDER", _choice(tuple(PROVIDERS.analysis)), "anthropic",
            "analysis backend"),
    Setting("ANALYSIS_MODEL", _text, "claude-haiku-4-5-20251001", "analysis model"),
    Setting("ANALYSIS_BASE_URL", parse_base_url, None,
            "analysis endpoint (required for openai-compatible; default: the backend's "
            "official API)"),
    Setting("ANALYSIS_API_KEY", _text, None,
            "key for the analysis backend (default: the provider key below)", secret=True),
    *PROVIDER_SETTINGS[1],
    Setting("MNEMOM_ANALYZE_URL", parse_base_url, None,
            "hybrid analysis endpoint (ANALYSIS_PROVIDER=mnemom)"),
    Setting("MNEMOM_API_KEY", _text, None, "key for the hybrid analysis endpoint",
            secret=True),
    Setting("MNEMOM_LICENSE_JWT", _text, None, "the license token", secret=True),
    Setting("MNEMOM_LICENSE_PUBLIC_KEY", parse_path, None,
            "PEM file, or directory of <kid>.pem files, with the keys trusted to sign "
            "licenses"),
    Setting("LICENSE_REQUIRED", parse_bool, False,
            "refuse to start without a license (default: unlicensed evaluation)"),
    Setting("MNEMOM_API_URL", parse_base_url, "https://api.mnemom.ai",
            "where online license validation goes"),
    Setting("HEARTBEAT_URL", parse_heartbeat_url, "https://api.mnemom.ai/v1/deployments/heartbeat",
            "where the deployment heartbeat goes"),
    Setting("MNEMOM_OFFLINE", parse_bool, False,
            "no outbound calls except the LLM upstreams and the analysis backend"),
    Setting("OBSERVER_HEARTBEAT_INTERVAL_SECONDS", _seconds(0.01, 86400), 60.0,
            "seconds between heartbeats"),
    Setting("OBSERVER_NUDGES_INTERVAL_SECONDS", _seconds(0.01, 86400), 300.0,
            "seconds between runs of the nudge expiry job"),
    Setting("OBSERVER_RETENTION_INTERVAL_SECONDS", _seconds(0.01, 86400 * 7), 3600.0,
            "seconds between runs of the retention job"),
    Setting("RETENTION_DAYS", _int_in(1, 36500), 365,
            "checkpoints, traces and webhook delivery logs older than this are deleted"),
    Setting("OBSERVER_LICENSE_INTERVAL_SECONDS", _seconds(0.01, 86400 * 7), 3600.0,
            "seconds between online license checks"),
    Setting("OBSERVER_TRACES_INTERVAL_SECONDS", _seconds(0.01, 86400), 60.0,
            "seconds between runs of the AP-trace job"),
    Setting("OBSERVER_DRIFT_INTERVAL_SECONDS", _seconds(0.01, 86400), 300.0,
            "seconds between runs of the behavioural drift job"),
    Setting("OBSERVER_WEBHOOKS_INTERVAL_SECONDS", _seconds(0.01, 86400), 10.0,
            "seconds between runs of the webhook retry job"),
    Setting("OUTBOX_TTL", _seconds(1, 86400), 600.0,
            "seconds a trace outbox row (with its excerpts) may exist, whatever happens"),
    Setting("TRACE_DECISIONS", _choice(("auto", "heuristic")), "auto",
            "auto: decision analysis by the analysis backend when one is usable; "
            "heuristic: never send excerpts to the backend"),
    Setting("INTERNAL_API_KEY", _text, None,
            "bearer token with the admin role on the management API", secret=True),
    Setting("MNEMOM_JWT_SECRET", _text, None,
            "HS256 secret that signs management API tokens (role admin or viewer)",
            secret=True),
    Setting("SUPABASE_JWT_SECRET", _text, None,
            "a Supabase project's JWT secret, accepted like MNEMOM_JWT_SECRET", secret=True),
)

SETTINGS_BY_ENV = {s.env: s for s in SETTINGS}
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}

_C = TypeVar("_C")


def _with_provider_attributes(cls: type[_C]) -> type[_C]:
    """Adds one attribute per generated provider row (``anthropic_base_url``,
    ``anthropic_api_key``, …) before ``dataclass`` reads the class, so that registering a
    provider is enough for its settings to reach ``Config``."""
    for setting in (*PROVIDER_SETTINGS[0], *PROVIDER_SETTINGS[1]):
        cls.__annotations__[setting.key] = "str | None" if setting.default is None else "str"
        setattr(cls, setting.key, setting.default)
    return cls


@dataclass(frozen=True)
@_with_provider_attributes
class Config:
    """The effective configuration, typed, plus where each value came from."""

    host: str = "0.0.0.0"
    port: int = 8787
    listen: str | None = None
    mnemom_role: str = "all"
    mnemom_data_dir: str = ""
    log_level: str = "info"
    log_format: str = "json"
    upstream_timeout: float = 600.0
    stream_idle_timeout: float = 300.0
    max_request_body_bytes: int = 32 * 1024**2
    stream_capture_bytes: int = 1024**2
    upstream_max_connections_per_host: int = 256
    cors_allowed_origins: tuple[str, ...] = ("*",)
    shutdown_grace_seconds: float = 25.0
    database_url: str = ""
    migrate_on_start: bool = True
    redis_url: str | None = None
    redis_password: str | None = None
    aip_enabled: bool = True
    aip_default_enforcement: str = "observe"
    aip_default_without_reasoning: str = "allow"
    aip_failure_mode: str = "fail_open"
    aip_analysis_timeout_ms: int = 10_000
    aip_min_evidence_tokens: int = 100
    aip_store_evidence: bool = True
    thinking_injection: str = "auto"
    analysis_provider: str = "anthropic"
    analysis_model: str = "claude-haiku-4-5-20251001"
    analysis_base_url: str | None = None
    analysis_api_key: str | None = None
    mnemom_analyze_url: str | None = None
    mnemom_api_key: str | None = None
    mnemom_license_jwt: str | None = None
    mnemom_license_public_key: str | None = None
    license_required: bool = False
    mnemom_api_url: str = "https://api.mnemom.ai"
    heartbeat_url: str = "https://api.mnemom.ai/v1/deployments/heartbeat"
    mnemom_offline: bool = False
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
    internal_api_key: str | None = None
    mnemom_jwt_secret: str | None = None
    supabase_jwt_secret: str | None = None
    config_path: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def role(self) -> str:
        return self.mnemom_role

    @property
    def listen_description(self) -> str:
        """The endpoint the gateway listens on, from LISTEN or HOST and PORT."""
        if self.listen:
            return self.listen
        host = self.host.replace(":", r"\:")
        return f"tcp:{self.port}:interface={host}"

    def upstream_base_url(self, provider: str) -> str:
        return str(getattr(self, PROVIDERS[provider].base_url_setting.lower()))

    def describe(self) -> list[tuple[str, str, str]]:
        """(setting, value with secrets masked, source) for ``check-config``."""
        rows = []
        for setting in SETTINGS:
            value = getattr(self, setting.key)
            rows.append((setting.env, mask(setting, value), self.sources.get(setting.env,
                                                                              "default")))
        return rows


def mask(setting: Setting, value: Any) -> str:
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


def read_config_file(path: str) -> dict[str, Any]:
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


def load_config(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_path: str | None = None,
    default_config_path: str = DEFAULT_CONFIG_PATH,
) -> Config:
    """Build the effective configuration or raise ConfigError listing every problem.

    ``flags`` maps environment names (``PORT``) to command-line values; ``config_path``
    is the ``--config`` flag. Nothing is read from the process globals unless passed in.
    """
    flags = dict(flags or {})
    environ = dict(os.environ if environ is None else environ)
    problems: list[str] = []
    warnings: list[str] = []

    path = config_path or environ.get("MNEMOM_CONFIG") or None
    file_values: dict[str, Any] = {}
    if path is None and os.path.isfile(default_config_path):
        path = default_config_path
    if path is not None:
        try:
            file_values = read_config_file(path)
        except ConfigError as e:
            problems += e.problems
    for key in file_values:
        if str(key).lower() not in SETTINGS_BY_KEY:
            problems.append(f"config file {path}: unknown setting {key!r}")

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        raw, source = None, "default"
        file_key = next((k for k in file_values if str(k).lower() == setting.key), None)
        if file_key is not None and file_values[file_key] is not None:
            raw, source = file_values[file_key], f"file {path}"
        for old in setting.deprecated_env:
            if environ.get(old, "") != "":
                warnings.append(f"{old} is deprecated; use {setting.env}")
                raw, source = environ[old], f"env {old}"
        if environ.get(setting.env, "") != "":
            raw, source = environ[setting.env], f"env {setting.env}"
        if flags.get(setting.env) is not None:
            raw, source = flags[setting.env], f"flag {setting.flag}"
        if raw is None:
            values[setting.key] = setting.default
            continue
        try:
            values[setting.key] = setting.parse(raw)
        except ValueError as e:
            shown = "********" if setting.secret else repr(
                mask(setting, raw) if isinstance(raw, str) else raw)
            problems.append(f"{setting.env} ({source}): {shown} {e}")
            continue
        sources[setting.env] = source

    if values.get("mnemom_data_dir") is None:
        values["mnemom_data_dir"] = default_data_dir(environ)
    if values.get("database_url") is None and values.get("mnemom_data_dir"):
        data_dir = os.path.abspath(values["mnemom_data_dir"])
        values["database_url"] = f"sqlite://{data_dir}/mnemomd.db"
    if problems:
        raise ConfigError(problems)
    config = Config(**values, config_path=path, sources=sources, warnings=tuple(warnings))
    from mnemomd.config import analysis

    analysis_settings = analysis.from_config(config)
    cross_problems = analysis.validate(analysis_settings)
    if config.license_required and not config.mnemom_license_jwt:
        cross_problems.append("LICENSE_REQUIRED is true but MNEMOM_LICENSE_JWT is not set")
    if config.mnemom_license_public_key:
        from mnemomd.cloud.license import LicenseKeyError, load_trusted_keys

        try:
            load_trusted_keys(config.mnemom_license_public_key)
        except LicenseKeyError as e:
            cross_problems.append(f"MNEMOM_LICENSE_PUBLIC_KEY: {e}")
    cross_problems += without_reasoning_problems(config)
    if cross_problems:
        raise ConfigError(cross_problems)
    if config.aip_enabled:
        config = dataclasses.replace(
            config, warnings=config.warnings + tuple(analysis.warnings(analysis_settings))
            + tuple(without_reasoning_warnings(config)))
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


def without_reasoning_problems(config: Config) -> list[str]:
    """A default ``analyse_output`` the analysis backend may not carry out."""
    if (config.aip_default_without_reasoning == "analyse_output"
            and not output_analysis_allowed(config.analysis_provider)):
        return [f"AIP_DEFAULT_WITHOUT_REASONING=analyse_output cannot be used with "
                f"ANALYSIS_PROVIDER={config.analysis_provider}: that backend never receives "
                f"the response; use refuse"]
    return []


def without_reasoning_warnings(config: Config) -> list[str]:
    """New agents in enforce mode that turning reasoning off lets through unverified."""
    if (config.aip_default_enforcement == "enforce"
            and config.aip_default_without_reasoning == "allow"):
        return [f"AIP_DEFAULT_ENFORCEMENT=enforce with AIP_DEFAULT_WITHOUT_REASONING=allow: "
                f"{OPT_OUT_WARNING}"]
    return []
