"""Configuration precedence, parsing and error reporting."""

from __future__ import annotations

import pytest

from mnemomd.config import SETTINGS_BY_ENV, ConfigError, load_config, mask

NO_FILE = "/nonexistent/mnemomd.yaml"


def load(flags=None, env=None, path=None):
    return load_config(flags or {}, env or {}, path, default_config_path=NO_FILE)


def test_defaults_need_no_environment():
    config = load()
    assert (config.host, config.port, config.role) == ("0.0.0.0", 8787, "all")
    assert config.upstream_timeout == 600.0
    assert config.stream_idle_timeout == 300.0
    assert config.max_request_body_bytes == 32 * 1024 * 1024
    assert config.anthropic_base_url == "https://api.anthropic.com"
    assert config.listen_description == "tcp:8787:interface=0.0.0.0"


def test_flag_beats_env_beats_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("port: 1111\nlog_level: debug\nhost: 10.0.0.1\n")
    config = load({"PORT": "3333"}, {"PORT": "2222", "LOG_LEVEL": "warn"}, str(path))
    assert config.port == 3333
    assert config.log_level == "warn"
    assert config.host == "10.0.0.1"
    assert config.sources["PORT"] == "flag --port"
    assert config.sources["LOG_LEVEL"] == "env LOG_LEVEL"
    assert config.sources["HOST"] == f"file {path}"


def test_config_file_from_environment(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("PORT: 4444\n")
    assert load(env={"MNEMOM_CONFIG": str(path)}).port == 4444


def test_default_config_file_used_only_when_present(tmp_path):
    path = tmp_path / "mnemomd.yaml"
    path.write_text("port: 5555\n")
    assert load_config({}, {}, None, default_config_path=str(path)).port == 5555


def test_every_problem_reported_at_once(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("prot: 1\nupstream_timeout: soon\n")
    with pytest.raises(ConfigError) as caught:
        load({"PORT": "99999"}, {"MNEMOM_ROLE": "boss", "OPENAI_BASE_URL": "ftp://x"}, str(path))
    text = caught.value.render()
    assert len(caught.value.problems) == 5
    for needle in ("unknown setting 'prot'", "UPSTREAM_TIMEOUT", "PORT (flag --port)",
                   "MNEMOM_ROLE (env MNEMOM_ROLE)", "OPENAI_BASE_URL"):
        assert needle in text


@pytest.mark.parametrize("content, needle", [
    ("port: [1, 2\n", "invalid YAML at line"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_broken_config_file_named(tmp_path, content, needle):
    path = tmp_path / "m.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load(path=str(path))
    assert needle in caught.value.render()
    assert str(path) in caught.value.render()


def test_missing_explicit_config_file_is_an_error():
    with pytest.raises(ConfigError, match="cannot be read"):
        load(path="/nonexistent/explicit.yaml")


def test_deprecated_role_alias_warns():
    config = load(env={"SMOLTBOT_ROLE": "gateway"})
    assert config.role == "gateway"
    assert any("SMOLTBOT_ROLE is deprecated" in w for w in config.warnings)
    assert load(env={"SMOLTBOT_ROLE": "gateway", "MNEMOM_ROLE": "scheduler"}).role == "scheduler"


@pytest.mark.parametrize("env, attr, expected", [
    ({"MAX_REQUEST_BODY_BYTES": "4MiB"}, "max_request_body_bytes", 4 * 1024 * 1024),
    ({"MAX_REQUEST_BODY_BYTES": "1000"}, "max_request_body_bytes", 1000),
    ({"UPSTREAM_TIMEOUT": "2.5"}, "upstream_timeout", 2.5),
    ({"UPSTREAM_TIMEOUT": "30s"}, "upstream_timeout", 30.0),
    ({"AIP_ENABLED": "off"}, "aip_enabled", False),
    ({"CORS_ALLOWED_ORIGINS": "https://a.example, http://b.example:8080"},
     "cors_allowed_origins", ("https://a.example", "http://b.example:8080")),
    ({"ANTHROPIC_BASE_URL": "http://127.0.0.1:9000/prefix/"}, "anthropic_base_url",
     "http://127.0.0.1:9000/prefix"),
    ({"LOG_FORMAT": "TEXT"}, "log_format", "text"),
])
def test_values_parsed(env, attr, expected):
    assert getattr(load(env=env), attr) == expected


@pytest.mark.parametrize("env", [
    {"PORT": "-1"}, {"PORT": "eighty"}, {"UPSTREAM_TIMEOUT": "0"}, {"UPSTREAM_TIMEOUT": "nan"},
    {"AIP_ENABLED": "maybe"}, {"MAX_REQUEST_BODY_BYTES": "12 parsecs"},
    {"GEMINI_BASE_URL": "https://host/path?x=1"}, {"GEMINI_BASE_URL": "not a url"},
    {"CORS_ALLOWED_ORIGINS": "javascript:alert(1)"}, {"LISTEN": "carrier-pigeon:1"},
    {"HOST": "two words"}, {"OPENAI_BASE_URL": "http://host:99999"},
    {"OPENAI_BASE_URL": "https://user:pass@proxy.example"},
])
def test_invalid_values_rejected(env):
    with pytest.raises(ConfigError) as caught:
        load(env=env)
    assert next(iter(env)) in caught.value.render()


def test_yaml_native_types(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("port: 9000\naip_enabled: false\ncors_allowed_origins: [https://x.example]\n")
    config = load(path=str(path))
    assert (config.port, config.aip_enabled) == (9000, False)
    assert config.cors_allowed_origins == ("https://x.example",)


def test_yaml_booleans_are_not_numbers(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("port: true\n")
    with pytest.raises(ConfigError, match="PORT"):
        load(path=str(path))


def test_listen_overrides_host_and_port():
    config = load(env={"LISTEN": "unix:/run/mnemomd/http.sock"})
    assert config.listen_description == "unix:/run/mnemomd/http.sock"


def test_ipv6_host_is_escaped_for_the_endpoint():
    assert load(env={"HOST": "::1"}).listen_description == r"tcp:8787:interface=\:\:1"


def test_data_dir_follows_systemd_then_xdg():
    assert load(env={"STATE_DIRECTORY": "/var/lib/mnemomd"}).mnemom_data_dir == "/var/lib/mnemomd"
    assert load(env={"XDG_DATA_HOME": "/x"}).mnemom_data_dir == "/x/mnemomd"
    assert load(env={"MNEMOM_DATA_DIR": "/d"}).mnemom_data_dir == "/d"


def test_url_credentials_masked_in_description():
    setting = SETTINGS_BY_ENV["OPENAI_BASE_URL"]
    shown = mask(setting, "https://user:hunter2@proxy.example:8443/v")
    assert "hunter2" not in shown
    assert shown == "https://user:****@proxy.example:8443/v"


def test_one_message_carries_value_and_cross_setting_problems(tmp_path):
    key_file = tmp_path / "not-a-key.pem"
    key_file.write_text("not a PEM key\n")
    with pytest.raises(ConfigError) as caught:
        load(env={"PORT": "eighty", "ANALYSIS_PROVIDER": "mnemom", "LICENSE_REQUIRED": "true",
                  "MNEMOM_LICENSE_PUBLIC_KEY": str(key_file)})
    problems = caught.value.problems
    assert problems[0] == "[listener.port] PORT (env PORT): 'eighty' must be an integer"
    assert "MNEMOM_ANALYZE_URL is required when ANALYSIS_PROVIDER is mnemom" in problems
    assert "LICENSE_REQUIRED is true but MNEMOM_LICENSE_JWT is not set" in problems
    assert any(p.startswith("MNEMOM_LICENSE_PUBLIC_KEY: ") for p in problems)
    assert len(problems) == 5  # the fifth: MNEMOM_API_KEY is required for mnemom
    assert caught.value.render().startswith("mnemomd: 5 configuration problem(s):")


def test_cross_setting_problem_about_an_unparsable_value_is_left_out():
    """An invalid ANALYSIS_BASE_URL is reported once, not also as missing."""
    with pytest.raises(ConfigError) as caught:
        load(env={"ANALYSIS_PROVIDER": "openai-compatible", "ANALYSIS_BASE_URL": "ftp://x"})
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(
        "[analysis.analysis_base_url] ANALYSIS_BASE_URL (env ANALYSIS_BASE_URL): 'ftp://x'")


def test_problems_name_the_setting_path():
    with pytest.raises(ConfigError) as caught:
        load(env={"GEMINI_BASE_URL": "gopher://x", "OUTBOX_TTL": "0"})
    assert [p.split()[0] for p in caught.value.problems] == [
        "[proxy.upstream_base_urls.gemini]", "[observer.outbox_ttl]"]


def test_unknown_environment_variable_warns_with_the_nearest_name():
    config = load(env={"MNEMOM_ROEL": "scheduler", "MNEMOM_LOG_LEVEL": "debug",
                       "MNEMOM_XYZZY": "1", "ROLE": "not ours"})
    assert config.role == "all"
    assert "MNEMOM_ROEL is not a setting (did you mean MNEMOM_ROLE?)" in config.warnings
    assert "MNEMOM_LOG_LEVEL is not a setting (did you mean LOG_LEVEL?)" in config.warnings
    assert "MNEMOM_XYZZY is not a setting" in config.warnings
    assert not any("ROLE is not" in w and "MNEMOM" not in w for w in config.warnings)


def test_names_read_elsewhere_or_deprecated_are_not_unknown(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("")
    config = load(env={"MNEMOM_CONFIG": str(path), "MNEMOM_MIGRATIONS_DIR": "/m",
                       "SMOLTBOT_ROLE": "gateway", "MNEMOM_OFFLINE": "true",
                       "ANALYSIS_PROVIDER": "openai-compatible",
                       "ANALYSIS_BASE_URL": "http://llm.local"})
    assert config.warnings == ("SMOLTBOT_ROLE is deprecated; use MNEMOM_ROLE",)


def test_unknown_yaml_key_is_an_error_with_the_nearest_name(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("upstream_timout: 5\nwibble: 1\n")
    with pytest.raises(ConfigError) as caught:
        load(path=str(path))
    assert caught.value.problems == [
        f"config file {path}: unknown setting 'upstream_timout' "
        "(did you mean 'upstream_timeout'?)",
        f"config file {path}: unknown setting 'wibble'",
    ]


def test_a_console_client_id_needs_an_issuer():
    with pytest.raises(ConfigError) as refused:
        load(env={"MNEMOM_OIDC_CLIENT_ID": "mnemomd-console"})
    assert "MNEMOM_OIDC_CLIENT_ID is set but MNEMOM_OIDC_ISSUER is not" in str(refused.value)
