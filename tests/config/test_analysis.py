"""Analysis settings: defaults, endpoints, validation and mapping from the config."""

from __future__ import annotations

from dataclasses import replace

from mnemomd.config import Config
from mnemomd.config.analysis import AnalysisSettings, from_config, validate, warnings
from mnemomd.providers import PROVIDERS, mnemom


def test_defaults_are_valid_and_match_the_spec():
    s = AnalysisSettings()
    assert validate(s) == []
    assert (s.provider, s.model, s.failure_mode) == (
        "anthropic", "claude-haiku-4-5-20251001", "fail_open")
    assert (s.timeout_ms, s.min_evidence_tokens, s.store_evidence) == (10000, 100, True)
    assert (s.breaker_failures, s.breaker_cooldown) == (5, 60.0)
    assert s.timeout == 10.0


def test_endpoints_default_to_the_official_apis():
    assert AnalysisSettings().endpoint() == "https://api.anthropic.com"
    assert AnalysisSettings(provider="openai").endpoint() == "https://api.openai.com"
    assert AnalysisSettings(provider="gemini").endpoint() == \
        "https://generativelanguage.googleapis.com"
    assert AnalysisSettings(provider="openai-compatible").endpoint() is None
    assert AnalysisSettings(base_url="http://analysis.local/").endpoint() == \
        "http://analysis.local"
    assert AnalysisSettings(provider="mnemom", analyze_url="https://m.example/v1/analyze",
                            base_url="https://other").endpoint() == \
        "https://m.example/v1/analyze"


def test_validate_lists_every_problem():
    assert any("ANALYSIS_BASE_URL is required" in p
               for p in validate(AnalysisSettings(provider="openai-compatible")))
    problems = validate(AnalysisSettings(provider="mnemom"))
    assert any("MNEMOM_ANALYZE_URL" in p for p in problems)
    assert any("MNEMOM_API_KEY" in p for p in problems)
    assert validate(AnalysisSettings(provider="mnemom", analyze_url="https://m/analyze",
                                     api_key="k")) == []
    bad = AnalysisSettings(provider="cohere", failure_mode="maybe", timeout_ms=0,
                           breaker_failures=0, base_url="ftp://x",
                           min_evidence_tokens=-1)
    assert len(validate(bad)) == 6


def test_secrets_stay_out_of_messages_and_repr():
    s = AnalysisSettings(provider="mnemom", api_key="sk-secret",
                         base_url="https://user:pw@host")
    assert "sk-secret" not in repr(s)
    assert all("sk-secret" not in p and "pw" not in p for p in validate(s))
    assert any("credentials" in p for p in validate(s))


def test_missing_cloud_key_is_a_warning_not_an_error():
    assert validate(AnalysisSettings()) == []
    assert warnings(AnalysisSettings()) != []
    assert warnings(AnalysisSettings(api_key="k")) == []
    assert warnings(AnalysisSettings(provider="openai-compatible",
                                     base_url="http://llm:8080")) == []


def test_from_config_picks_the_backends_own_key():
    config = Config(analysis_provider="gemini", gemini_api_key="g", anthropic_api_key="a",
                    aip_failure_mode="fail_closed", aip_analysis_timeout_ms=2500,
                    aip_store_evidence=False)
    s = from_config(config.analysis)
    assert (s.provider, s.api_key, s.failure_mode, s.timeout_ms, s.store_evidence) == (
        "gemini", "g", "fail_closed", 2500, False)
    assert from_config(replace(config, analysis_api_key="override").analysis).api_key == "override"
    local = from_config(Config(analysis_provider="openai-compatible", openai_api_key="o",
                               analysis_base_url="http://llm:8080").analysis)
    assert local.api_key is None  # the real OpenAI key never goes to a local server
    hybrid = from_config(Config(analysis_provider="mnemom", mnemom_api_key="m",
                                mnemom_analyze_url="https://m.example/analyze").analysis)
    assert (hybrid.api_key, hybrid.endpoint()) == ("m", "https://m.example/analyze")


def test_request_urls_accept_bases_with_or_without_the_version():
    cases = [
        (AnalysisSettings(base_url="http://h"), "http://h/v1/messages"),
        (AnalysisSettings(base_url="http://h/v1"), "http://h/v1/messages"),
        (AnalysisSettings(provider="openai-compatible", base_url="http://h:11434"),
         "http://h:11434/v1/chat/completions"),
        (AnalysisSettings(provider="openai-compatible", base_url="http://h/openai/v1"),
         "http://h/openai/v1/chat/completions"),
        (AnalysisSettings(provider="gemini", model="models/gemini-2.5-flash"),
         "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
         ":generateContent"),
        (AnalysisSettings(provider="gemini", base_url="http://g/v1", model="gemini-x"),
         "http://g/v1/models/gemini-x:generateContent"),
    ]
    for settings, url in cases:
        api = PROVIDERS.analysis[settings.provider]
        assert api.build_request(settings.target(), "s", "u", 10).url == url
    hybrid = AnalysisSettings(provider="mnemom", analyze_url="https://m/a", api_key="k")
    assert mnemom.analyze_call(hybrid.target(), {}).url == "https://m/a"
