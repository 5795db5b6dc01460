"""``mnemomd check-config``: values by section, warnings, and what ``--strict`` fails on."""

from __future__ import annotations

import pytest

from mnemomd.cli.main import main
from mnemomd.config import EX_CONFIG, SECTIONS

#: A configuration with no warning: integrity analysis off, so no analysis key is needed.
QUIET = {"AIP_ENABLED": "false"}


@pytest.fixture
def check(tmp_path, capsys):
    config = tmp_path / "m.yaml"
    config.write_text("port: 9999\n")

    def run(env: dict[str, str], *flags: str) -> tuple[int, str, str]:
        environ = {"MNEMOM_DATA_DIR": str(tmp_path / "data"), **env}
        code = main(["check-config", "--config", str(config), *flags], environ)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_values_are_shown_section_by_section(check):
    code, out, _ = check(QUIET)
    assert code == 0
    lines = out.splitlines()
    headers = [line for line in lines if line.startswith("[")]
    assert headers == [f"[{name}]" for name in SECTIONS]
    listener = lines[lines.index("[listener]") + 1:lines.index("[logging]")]
    assert any(line.split()[:2] == ["PORT", "9999"] and "[file " in line for line in listener)
    assert lines[-1] == "Configuration OK"


def test_unknown_variable_is_a_warning_and_strict_fails_on_it(check):
    env = {**QUIET, "MNEMOM_ROEL": "scheduler"}
    code, out, _ = check(env)
    assert code == 0
    assert "warning: MNEMOM_ROEL is not a setting (did you mean MNEMOM_ROLE?)" in out
    assert "MNEMOM_ROLE" in out and out.rstrip().endswith("Configuration OK")

    code, out, _ = check(env, "--strict")
    assert code == EX_CONFIG
    assert "warning: MNEMOM_ROEL is not a setting (did you mean MNEMOM_ROLE?)" in out
    assert out.rstrip().endswith("check-config --strict: warnings count as errors")


def test_strict_passes_without_warnings(check):
    assert check(QUIET, "--strict")[0] == 0


def test_value_and_cross_setting_problems_in_one_message(check):
    code, out, err = check({"PORT": "eighty", "LICENSE_REQUIRED": "yes"})
    assert code == EX_CONFIG
    assert out == ""
    assert err.splitlines() == [
        "mnemomd: 2 configuration problem(s):",
        "  - [listener.port] PORT (env PORT): 'eighty' must be an integer",
        "  - LICENSE_REQUIRED is true but MNEMOM_LICENSE_JWT is not set",
    ]


def test_node_adapter_settings_each_get_one_line_naming_the_replacement(check):
    secret = "sb_secret_do-not-print-0123456789"
    env = {**QUIET, "SUPABASE_URL": "https://abcd.supabase.co", "SUPABASE_KEY": secret,
           "SUPABASE_SECRET_KEY": secret, "SMOLTBOT_ROLE": "gateway"}
    code, out, _ = check(env)
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 4
    by_name = {line.split()[1]: line for line in warnings}
    assert set(by_name) == {"SUPABASE_URL", "SUPABASE_KEY", "SUPABASE_SECRET_KEY",
                            "SMOLTBOT_ROLE"}
    assert "DATABASE_URL" in by_name["SUPABASE_URL"]
    for name in ("SUPABASE_KEY", "SUPABASE_SECRET_KEY"):
        assert "DATABASE_URL" in by_name[name] and "INTERNAL_API_KEY" in by_name[name]
    assert "use MNEMOM_ROLE" in by_name["SMOLTBOT_ROLE"]
    assert secret not in out and "abcd.supabase.co" not in out
    assert check(env, "--strict")[0] == EX_CONFIG


def test_oidc_settings_are_shown_and_nothing_is_fetched(check):
    # The issuer is a closed port: check-config must neither connect nor fail.
    code, out, _ = check({**QUIET, "MNEMOM_OIDC_ISSUER": "http://127.0.0.1:9",
                          "MNEMOM_OIDC_AUDIENCE": "mnemomd",
                          "MNEMOM_OIDC_ROLE_MAP": "owner=sec,admin=ops",
                          "MNEMOM_OIDC_CLIENT_ID": "mnemomd-console"})
    assert code == 0
    api = out.split("[api]\n", 1)[1].splitlines()
    shown = {line.split()[0]: line.split()[1] for line in api if line.startswith("MNEMOM_OIDC")}
    assert shown == {"MNEMOM_OIDC_ISSUER": "http://127.0.0.1:9",
                     "MNEMOM_OIDC_AUDIENCE": "mnemomd", "MNEMOM_OIDC_ROLE_CLAIM": "roles",
                     "MNEMOM_OIDC_ROLE_MAP": "owner=sec,admin=ops",
                     "MNEMOM_OIDC_REFRESH_SECONDS": "30.0",
                     "MNEMOM_OIDC_CLIENT_ID": "mnemomd-console"}
