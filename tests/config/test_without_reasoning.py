"""``AIP_DEFAULT_WITHOUT_REASONING``: the default for new agents, what it cannot be combined
with, and what ``check-config`` says about ``allow``."""

from __future__ import annotations

import io

import pytest

from mnemomd.cli.main import check_config
from mnemomd.config import OPT_OUT_WARNING, ConfigError, load_config

NO_FILE = "/nonexistent/mnemomd.yaml"
HYBRID = {"ANALYSIS_PROVIDER": "mnemom", "MNEMOM_ANALYZE_URL": "https://analyze.example/x",
          "MNEMOM_API_KEY": "mk-1"}


def load(**env: str):
    return load_config({}, {"MNEMOM_DATA_DIR": "/nonexistent", "ANTHROPIC_API_KEY": "sk-a", **env},
                       default_config_path=NO_FILE)


def test_allow_is_the_default_and_each_mode_is_read():
    assert load().aip_default_without_reasoning == "allow"
    for mode in ("allow", "analyse_output", "refuse"):
        assert load(AIP_DEFAULT_WITHOUT_REASONING=mode.upper()).aip_default_without_reasoning \
            == mode
    with pytest.raises(ConfigError, match="AIP_DEFAULT_WITHOUT_REASONING"):
        load(AIP_DEFAULT_WITHOUT_REASONING="sometimes")


def test_analyse_output_with_the_hybrid_backend_is_an_error():
    with pytest.raises(ConfigError) as caught:
        load(AIP_DEFAULT_WITHOUT_REASONING="analyse_output", **HYBRID)
    assert "ANALYSIS_PROVIDER=mnemom" in caught.value.render()
    assert load(AIP_DEFAULT_WITHOUT_REASONING="refuse", **HYBRID).analysis_provider == "mnemom"
    assert load(AIP_DEFAULT_WITHOUT_REASONING="analyse_output",
                ANALYSIS_PROVIDER="openai").analysis_provider == "openai"


def test_enforce_with_allow_for_new_agents_is_a_warning():
    warned = load(AIP_DEFAULT_ENFORCEMENT="enforce")
    assert any(OPT_OUT_WARNING in w for w in warned.warnings)
    for quiet in (load(AIP_DEFAULT_ENFORCEMENT="enforce", AIP_DEFAULT_WITHOUT_REASONING="refuse"),
                  load(AIP_DEFAULT_ENFORCEMENT="observe"),
                  load(AIP_DEFAULT_ENFORCEMENT="enforce", AIP_ENABLED="false")):
        assert not any(OPT_OUT_WARNING in w for w in quiet.warnings)


def test_check_config_says_plainly_that_allow_lets_an_agent_opt_out():
    out = io.StringIO()
    assert check_config(load(), strict=True, out=out) == 0  # a note, not a warning
    assert f"note: AIP_DEFAULT_WITHOUT_REASONING is allow. {OPT_OUT_WARNING}." in out.getvalue()
    assert "turning its reasoning off" in OPT_OUT_WARNING
    strict = io.StringIO()
    assert check_config(load(AIP_DEFAULT_ENFORCEMENT="enforce"), strict=True, out=strict) != 0
    assert "warning: AIP_DEFAULT_ENFORCEMENT=enforce" in strict.getvalue()
    quiet = io.StringIO()
    check_config(load(AIP_DEFAULT_WITHOUT_REASONING="refuse"), strict=False, out=quiet)
    assert OPT_OUT_WARNING not in quiet.getvalue()
