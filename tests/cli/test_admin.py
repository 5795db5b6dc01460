"""The management commands' pure parts: where the daemon is, and how results print."""

from __future__ import annotations

import io

import pytest

from mnemomd.cli.admin import (
    CommandError,
    api_url,
    auto_containment,
    describe_change,
    table,
    when,
)
from mnemomd.config import load_config


def config(**env: str):
    return load_config(environ={"MNEMOM_DATA_DIR": "/nonexistent", **env},
                       default_config_path="/nonexistent.yaml")


@pytest.mark.parametrize("env, expected", [
    ({}, "http://127.0.0.1:8787"),
    ({"HOST": "10.1.2.3", "PORT": "9000"}, "http://10.1.2.3:9000"),
    ({"HOST": "::"}, "http://[::1]:8787"),
    ({"LISTEN": "tcp:8443:interface=127.0.0.2"}, "http://127.0.0.2:8443"),
    ({"LISTEN": "tcp:8443"}, "http://127.0.0.1:8443"),
])
def test_url_from_the_configuration(env, expected):
    assert api_url(config(**env), None, {}) == expected


def test_flag_beats_environment_beats_configuration():
    assert api_url(config(), "http://a:1/", {"MNEMOMD_URL": "http://b:2"}) == "http://a:1"
    assert api_url(config(), None, {"MNEMOMD_URL": "http://b:2"}) == "http://b:2"


def test_a_unix_socket_listener_needs_an_explicit_url():
    with pytest.raises(CommandError, match="give --url"):
        api_url(config(LISTEN="unix:/run/mnemomd/http.sock"), None, {})


def test_table_aligns_columns_and_renders_times_and_empties():
    out = io.StringIO()
    table([{"id": "smolt-1", "name": None, "created_at": 0, "ok": True},
           {"id": "smolt-22", "name": "planner", "created_at": 1767225600000, "ok": False}],
          [("id", "AGENT"), ("name", "NAME"), ("created_at", "CREATED"), ("ok", "OK")], out)
    assert out.getvalue().splitlines() == [
        "AGENT     NAME     CREATED              OK",
        "smolt-1   -        -                    yes",
        "smolt-22  planner  2026-01-01 00:00:00  no",
    ]
    assert when(None) == "-"


def test_auto_containment_values():
    assert auto_containment("3") == 3 and auto_containment(" OFF ") is None
    with pytest.raises(CommandError):
        auto_containment("two")


def change(**fields):
    return {"agent_id": "smolt-1", "from_status": "active", "to_status": "killed",
            "scope": "key", "agents": 3, "key_known": True, "containment_status": "killed",
            **fields}


def test_a_containment_change_says_its_scope_and_what_still_holds_the_agent():
    assert describe_change(change()) == "smolt-1: active -> killed (key, 3 agents)\n"
    assert describe_change(change(scope="agent", agents=1)) == \
        "smolt-1: active -> killed (agent)\n"
    assert describe_change(change(from_status="paused", to_status="active",
                                  containment_status="paused")) == \
        "smolt-1: paused -> active (key, 3 agents); the agent is paused by its agent scope\n"
    first, warning = describe_change(change(agents=1, key_known=False)).splitlines()
    assert first == "smolt-1: active -> killed (key, 1 agent)"
    assert warning.startswith("warning: ") and "key is not known yet" in warning
