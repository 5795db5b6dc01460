"""Settings of the integrity analysis (SPEC §5.4, §5.5), independent of how they are read.

The config layer maps environment variables, YAML keys and flags onto
:class:`AnalysisSettings`; :func:`validate` lists every problem at once so that a bad
setup is reported in one message at startup rather than as failed analyses later. Which
backends exist, their official endpoints and their key settings come from the provider
registry (``mnemomd.providers``), which every function here takes as an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from mnemomd.providers import PROVIDERS, ProviderRegistry
from mnemomd.providers.analysis import AnalysisAPI, AnalysisTarget

FAILURE_MODES = ("fail_open", "fail_closed")
DEFAULT_ANALYSIS_MODEL = "claude-haiku-4-5-20251001"

MAX_RESPONSE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class AnalysisSettings:
    """How and where thinking is analysed, and what happens when that fails."""

    provider: str = "anthropic"
    model: str = DEFAULT_ANALYSIS_MODEL
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    analyze_url: str | None = None
    failure_mode: str = "fail_open"
    timeout_ms: int = 10_000
    min_evidence_tokens: int = 100
    store_evidence: bool = True
    breaker_failures: int = 5
    breaker_cooldown: float = 60.0
    #: Output tokens the analysis model may use for its verdict (the SDK's default).
    max_tokens: int = 1024
    #: Thinking tokens sent for analysis; longer thinking keeps its head and tail.
    thinking_token_budget: int = 4096
    #: Output tokens sent for output analysis (the TypeScript AIP SDK's default).
    output_token_budget: int = 2048
    #: Hybrid mode: ask Mnemom's service to store its checkpoint as well (``store_checkpoint``).
    store_checkpoint: bool = False
    #: Largest analysis response body accepted; a larger one is a failure.
    max_response_bytes: int = MAX_RESPONSE_BYTES

    @property
    def timeout(self) -> float:
        """The per-call timeout in seconds."""
        return self.timeout_ms / 1000.0

    def endpoint(self, providers: ProviderRegistry = PROVIDERS) -> str | None:
        """The base URL the backend calls: ``base_url``, else the API's official one; for
        an API that takes a whole URL (``mnemom``), ``analyze_url`` first."""
        api = providers.analysis.get(self.provider)
        if api is not None and api.full_url:
            url = self.analyze_url or self.base_url
        else:
            url = self.base_url or (api.official_base_url if api is not None else None)
        return url.rstrip("/") if url else None

    def target(self, providers: ProviderRegistry = PROVIDERS) -> AnalysisTarget:
        """Where the backend's calls go and as whom."""
        return AnalysisTarget(self.endpoint(providers) or "", self.model, self.api_key)


def _url_problem(name: str, url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{name} must be an http:// or https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return f"{name} must not contain credentials (set the API key instead)"
    if parts.fragment:
        return f"{name} must not have a fragment"
    try:
        parts.port  # noqa: B018 - raises on an invalid port
    except ValueError:
        return f"{name} has an invalid port"
    return None


def validate(settings: AnalysisSettings, providers: ProviderRegistry = PROVIDERS) -> list[str]:
    """Every problem that makes the analysis settings unusable; empty when they are fine.

    Messages name settings, never their secret values.
    """
    problems: list[str] = []
    api = providers.analysis.get(settings.provider)
    if api is None:
        problems.append(f"analysis provider must be one of {', '.join(providers.analysis)}")
    if settings.failure_mode not in FAILURE_MODES:
        problems.append(f"failure mode must be one of {', '.join(FAILURE_MODES)}")
    if not settings.model.strip():
        problems.append("analysis model must not be empty")
    if settings.timeout_ms <= 0:
        problems.append("analysis timeout must be positive")
    if settings.min_evidence_tokens < 0:
        problems.append("minimum evidence tokens must not be negative")
    if settings.breaker_failures < 1:
        problems.append("circuit breaker failure count must be at least 1")
    if settings.breaker_cooldown <= 0:
        problems.append("circuit breaker cool-down must be positive")
    if settings.max_tokens < 1:
        problems.append("analysis max tokens must be at least 1")
    if settings.thinking_token_budget < 1:
        problems.append("thinking token budget must be at least 1")
    if settings.output_token_budget < 1:
        problems.append("output token budget must be at least 1")
    if settings.max_response_bytes < 1:
        problems.append("analysis response size limit must be at least 1 byte")
    for name, url in (("ANALYSIS_BASE_URL", settings.base_url),
                      ("MNEMOM_ANALYZE_URL", settings.analyze_url)):
        if url is not None:
            problem = _url_problem(name, url)
            if problem:
                problems.append(problem)
    if api is not None and settings.endpoint(providers) is None:
        problems.append(f"{api.url_setting} is required when ANALYSIS_PROVIDER is {api.name}")
    if api is not None and api.key_rule == "required" and not settings.api_key:
        problems.append(f"{api.key_setting} (or ANALYSIS_API_KEY) is required when "
                        f"ANALYSIS_PROVIDER is {api.name}")
    return problems


def warnings(settings: AnalysisSettings, providers: ProviderRegistry = PROVIDERS) -> list[str]:
    """Conditions worth telling the operator that do not stop the daemon.

    A missing key for a cloud backend is not fatal: with every setting optional the
    daemon must start, and each analysis then fails by the failure mode.
    """
    found: list[str] = []
    api = providers.analysis.get(settings.provider)
    if api is not None and api.key_rule == "expected" and not settings.api_key:
        found.append(f"no API key for the {settings.provider} analysis backend: every "
                     f"analysis will fail ({settings.failure_mode})")
    return found


class AnalysisSection(Protocol):
    """What the analysis settings are read from: the ``analysis`` section of ``Config``."""

    analysis_provider: str
    analysis_model: str
    analysis_base_url: str | None
    analysis_api_key: str | None
    provider_api_keys: Mapping[str, str | None]
    mnemom_analyze_url: str | None
    mnemom_api_key: str | None
    mnemom_store_checkpoint: bool
    aip_failure_mode: str
    aip_analysis_timeout_ms: int
    aip_min_evidence_tokens: int
    aip_store_evidence: bool


def own_key(section: AnalysisSection, api: AnalysisAPI | None) -> str | None:
    """The chosen API's own key setting: a provider's ``<NAME>_API_KEY`` (kept by provider
    name), or an analysis-only API's own setting (``MNEMOM_API_KEY``); none for
    ``openai-compatible``, so the gateway's real OpenAI key never goes to a local server."""
    if api is None or not api.key_setting:
        return None
    if api.name in section.provider_api_keys:
        return section.provider_api_keys[api.name]
    return getattr(section, api.key_setting.lower(), None)


def from_config(section: AnalysisSection,
                providers: ProviderRegistry = PROVIDERS) -> AnalysisSettings:
    """Analysis settings from the configuration's ``analysis`` section.

    The key is ``ANALYSIS_API_KEY`` if set, else the chosen API's own key (``own_key``).
    """
    provider = section.analysis_provider
    api = providers.analysis.get(provider)
    return AnalysisSettings(
        provider=provider,
        model=section.analysis_model,
        base_url=section.analysis_base_url,
        api_key=section.analysis_api_key or own_key(section, api),
        analyze_url=section.mnemom_analyze_url,
        failure_mode=section.aip_failure_mode,
        timeout_ms=section.aip_analysis_timeout_ms,
        min_evidence_tokens=section.aip_min_evidence_tokens,
        store_evidence=section.aip_store_evidence,
        store_checkpoint=section.mnemom_store_checkpoint,
    )
