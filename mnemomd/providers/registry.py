"""The list of providers everything else derives from.

Routing looks up route names here, the configuration generates each provider's settings
from it, and the analysis takes its choice of backends from it. A registry is immutable:
``including`` returns a new one, so a test (or a build with an extra provider) adds a
provider without changing the daemon's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from mnemomd.providers.analysis import AnalysisAPI
from mnemomd.providers.base import Provider, RequestInfo, blames_injection


def _unique(kind: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"two {kind} are named {name!r}")
        seen.add(name)


class ProviderRegistry(Mapping[str, Provider]):
    """Providers by route name, plus the analysis APIs that are no proxy route.

    As a mapping it holds the proxy's providers (``/anthropic/…``); ``analysis`` holds every
    ``ANALYSIS_PROVIDER`` choice: each provider's own analysis API, in registration order,
    then the analysis-only ones (``openai-compatible``, ``mnemom``).
    """

    def __init__(self, providers: Iterable[Provider] = (),
                 analysis_only: Iterable[AnalysisAPI] = ()) -> None:
        listed = tuple(providers)
        self._analysis_only = tuple(analysis_only)
        _unique("providers", (p.name for p in listed))
        for provider in listed:
            if provider.analysis is not None and provider.analysis.name != provider.name:
                raise ValueError(f"the analysis API of provider {provider.name!r} must carry "
                                 "its name")
        apis = [p.analysis for p in listed if p.analysis is not None]
        apis += self._analysis_only
        _unique("analysis APIs", (api.name for api in apis))
        self._providers = MappingProxyType({p.name: p for p in listed})
        self._analysis = MappingProxyType({api.name: api for api in apis})
        hints: dict[str, tuple[str, ...]] = {}
        for provider in listed:
            for api, words in provider.injection_hints.items():
                hints[api] = (*hints.get(api, ()), *words)
        self._hints = MappingProxyType(hints)

    def __getitem__(self, name: str) -> Provider:
        return self._providers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)

    def __repr__(self) -> str:
        return f"<ProviderRegistry {', '.join(self._providers)}>"

    @property
    def analysis(self) -> Mapping[str, AnalysisAPI]:
        """Every analysis API by ``ANALYSIS_PROVIDER`` name."""
        return self._analysis

    def including(self, *providers: Provider) -> ProviderRegistry:
        """A new registry with ``providers`` added after these; this one is unchanged."""
        return ProviderRegistry((*self._providers.values(), *providers), self._analysis_only)

    def injection_rejected(self, info: RequestInfo, status: int, body: bytes) -> bool:
        """Whether a 400 answer blames the parameter ``inject_thinking`` added, for the API
        ``info`` names, whichever provider's route carried it."""
        return blames_injection(self._hints.get(getattr(info, "api", None) or ""), status,
                                body)
