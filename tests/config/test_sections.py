"""The settings table and the section dataclasses are one source of truth.

Each row of ``SETTINGS`` names its section; these tests prove that every section field is a
row and every row a field, with the same type (the parser's) and the same default.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest

from mnemomd.config import (
    ENV_PREFIX,
    ENV_READ_ELSEWHERE,
    PLACEMENTS,
    PROVIDER_ROWS,
    SECTIONS,
    SETTINGS,
    Config,
    ListenerConfig,
    ProxyConfig,
)

REPO = Path(__file__).resolve().parents[2]


def value_type(setting) -> object:
    """The type a row's value has: what its parser returns, or None when unset."""
    parsed = typing.get_type_hints(setting.parse)["return"]
    if setting.default is None and not setting.derived:
        return parsed | None if types.NoneType not in typing.get_args(parsed) else parsed
    return parsed


def section_fields(section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}


def test_every_row_is_placed_in_a_section():
    for setting in SETTINGS:
        place = PLACEMENTS[setting.env]
        assert place.section in SECTIONS, setting.env
        assert (setting.section == "") == (setting.env in PROVIDER_ROWS), setting.env


def test_each_row_is_a_field_of_its_section_with_the_same_type_and_default():
    for setting in SETTINGS:
        place = PLACEMENTS[setting.env]
        fields = section_fields(place.section)
        assert place.field in fields, f"{setting.env}: no field {place.path}"
        declared = typing.get_type_hints(SECTIONS[place.section])[place.field]
        got = fields[place.field]
        if place.provider is None:
            assert declared == value_type(setting), setting.env
            default = "" if setting.derived else setting.default
            assert got.default == default, setting.env
        else:  # one entry of a per-provider mapping
            assert typing.get_origin(declared) is typing.get_origin(typing.Mapping[str, str])
            assert typing.get_args(declared)[1] == value_type(setting), setting.env
            assert got.default_factory()[place.provider] == setting.default, setting.env
        assert got.repr is not setting.secret, f"{setting.env}: a secret must not be in repr"


def test_each_section_field_is_a_row():
    placed = {(p.section, p.field) for p in PLACEMENTS.values()}
    for name in SECTIONS:
        for field_name in section_fields(name):
            assert (name, field_name) in placed, f"{name}.{field_name} is not in SETTINGS"


def test_config_holds_exactly_the_sections():
    names = [f.name for f in dataclasses.fields(Config)]
    assert names[:len(SECTIONS)] == list(SECTIONS)
    assert names[len(SECTIONS):] == ["config_path", "sources", "warnings"]


def test_flat_names_read_and_build_sections():
    config = Config(port=9000, openai_base_url="http://o.local", gemini_api_key="g")
    assert config.listener == ListenerConfig(port=9000)
    assert config.port == 9000
    assert config.proxy.upstream_base_url("openai") == "http://o.local"
    assert config.upstream_base_url("anthropic") == ProxyConfig().upstream_base_urls["anthropic"]
    assert config.analysis.provider_api_keys["gemini"] == config.gemini_api_key == "g"
    assert dataclasses.replace(config, port=1).listener.port == 1
    with pytest.raises(TypeError, match="prot"):
        Config(prot=1)
    with pytest.raises(AttributeError):
        config.prot  # noqa: B018


def test_secrets_stay_out_of_repr():
    config = Config(anthropic_api_key="sk-ant-SECRET", redis_password="pw-SECRET",
                    internal_api_key="ik-SECRET", mnemom_license_jwt="jwt-SECRET")
    assert "SECRET" not in repr(config)


def test_every_setting_is_documented():
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    for setting in SETTINGS:
        assert f"| `{setting.env}` | `{setting.key}` |" in page, setting.env
    for name in SECTIONS:
        assert f"| `{name}` |" in page, f"section {name} is not in the sections table"


def test_every_mnemom_variable_the_code_reads_is_known():
    """The allow-list of ``MNEMOM_*`` names that are not settings is complete: nothing the
    daemon or its packaging reads would be reported as a typo."""
    known = {s.env for s in SETTINGS} | {o for s in SETTINGS for o in s.deprecated_env}
    read: set[str] = set()
    for path in (REPO / "mnemomd").rglob("*.py"):  # names as string literals
        read |= set(re.findall(rf"[\"']({ENV_PREFIX}[A-Z0-9_]+)[\"']", path.read_text("utf-8")))
    for folder in ("packaging", "deploy", "systemd"):  # unit files, env files, manifests
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.stat().st_size < 1_000_000:
                text = path.read_text("utf-8", errors="replace")
                read |= set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+\b", text))
    assert read - known - set(ENV_READ_ELSEWHERE) == set()
    assert set(ENV_READ_ELSEWHERE) <= read
