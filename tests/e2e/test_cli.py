"""The real ``mnemomd`` management commands against a running daemon (SPEC §10.3)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.api import INTERNAL_KEY, ApiDaemon
from tests.e2e.daemon import daemon_environment, mnemomd_command
from tests.fakes.process import wait_until


@pytest.fixture(scope="module")
def cli(api_daemon: ApiDaemon, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("cli")

    def run(*args: str, env: dict[str, str] | None = None,
            expect: int = 0) -> subprocess.CompletedProcess[str]:
        merged = {"MNEMOMD_URL": api_daemon.url, "MNEMOMD_TOKEN": INTERNAL_KEY} | (env or {})
        result = subprocess.run([*mnemomd_command(), *args],
                                env=daemon_environment(Path(home), merged),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == expect, (args, result.stdout, result.stderr)
        return result

    return run


@pytest.fixture(scope="module")
def agent(api_daemon: ApiDaemon) -> str:
    agent_id = api_daemon.new_agent()
    api_daemon.seed(agent_id)
    return agent_id


def test_agents_list_and_show(cli, agent):
    lines = cli("agents", "list").stdout.splitlines()
    assert lines[0].split() == ["AGENT", "NAME", "MODE", "STATUS", "LAST", "SEEN", "CREATED"]
    assert any(line.startswith(agent) and "observe" in line for line in lines[1:])
    assert lines[-1].endswith(f"of {len(lines) - 2}")
    listed = json.loads(cli("agents", "list", "--json", "--limit", "1").stdout)
    assert (listed["limit"], len(listed["items"])) == (1, 1)
    shown = cli("agents", "show", agent).stdout
    assert f"agent             {agent}" in shown and "enforcement       observe" in shown


def test_enforcement_set_and_show(cli, agent):
    assert cli("enforcement", "set", agent, "enforce").stdout == f"{agent}: enforce\n"
    assert json.loads(cli("enforcement", "show", agent, "--json").stdout)["mode"] == "enforce"
    cli("enforcement", "set", agent, "observe")


def test_containment_commands_and_log(cli, agent):
    assert cli("agent", "pause", agent, "--reason", "checking").stdout == \
        f"{agent}: active -> paused (agent)\n"
    assert cli("agent", "resume", agent).stdout == f"{agent}: paused -> active (agent)\n"
    assert cli("agent", "kill", agent, "--actor", "ops@example").stdout == \
        f"{agent}: active -> killed (key, 1 agent)\n"
    assert cli("agent", "reactivate", agent).stdout == \
        f"{agent}: killed -> active (key, 1 agent)\n"
    assert cli("agent", "kill", agent, "--scope", "agent").stdout == \
        f"{agent}: active -> killed (agent)\n"
    assert cli("agent", "reactivate", agent).stdout == f"{agent}: killed -> active (agent)\n"
    refused = cli("agent", "resume", agent, expect=1)
    assert refused.stderr == "mnemomd: 409 cannot resume an agent that is active\n"
    shown = json.loads(cli("agent", "show", agent, "--json").stdout)
    assert [(e["action"], e["actor"], e["scope"]) for e in shown["containment_log"]] == [
        ("pause", "internal-api-key", "agent"), ("resume", "internal-api-key", "agent"),
        ("kill", "internal-api-key for ops@example", "key"),
        ("reactivate", "internal-api-key", "key"),
        ("kill", "internal-api-key", "agent"), ("reactivate", "internal-api-key", "agent")]
    assert [n["status"] for n in shown["nudges"]] == ["pending"]
    table = cli("agent", "show", agent).stdout
    assert "WHEN" in table and "checking" in table and "NUDGE" in table


def test_agent_settings(cli, agent):
    result = json.loads(cli("agent", "settings", agent, "--nudge-strategy", "sampling",
                            "--nudge-rate", "0.25", "--aap", "off", "--auto-containment", "3",
                            "--json").stdout)
    assert (result["agent"]["nudge_strategy"], result["agent"]["nudge_rate"],
            result["agent"]["aap_enabled"], result["agent"]["auto_containment_threshold"]) == \
        ("sampling", 0.25, False, 3)
    off = json.loads(cli("agent", "settings", agent, "--auto-containment", "off",
                         "--json").stdout)
    assert off["agent"]["auto_containment_threshold"] is None
    bad = cli("agent", "settings", agent, "--nudge-rate", "2", expect=1)
    assert bad.stderr.startswith("mnemomd: 400 nudge_rate:")
    assert "nothing to change" in cli("agent", "settings", agent, expect=2).stderr


def test_agent_settings_without_reasoning(cli, agent):
    shown = cli("agent", "settings", agent, "--without-reasoning", "refuse").stdout
    assert "if no reasoning   refuse" in shown
    result = json.loads(cli("agent", "settings", agent, "--without-reasoning",
                            "analyse_output", "--json").stdout)
    assert result["settings"]["without_reasoning"] == "analyse_output"
    assert result["agent"]["without_reasoning"] == "analyse_output"
    cli("agent", "settings", agent, "--without-reasoning", "sometimes", expect=2)
    cli("agent", "settings", agent, "--without-reasoning", "allow")


def test_checkpoints_and_traces(cli, agent):
    lines = cli("checkpoints", agent).stdout.splitlines()
    assert lines[0].split()[:3] == ["CHECKPOINT", "VERDICT", "SESSION"]
    assert "boundary_violation" in lines[1] and lines[-1] == "1-1 of 1"
    assert cli("checkpoints", agent, "--verdict", "clear").stdout.splitlines()[-1] == \
        "0-0 of 0"
    traces = json.loads(cli("traces", agent, "--json").stdout)
    assert traces["total"] == 1 and traces["items"][0]["verified"] is True


def test_webhooks(cli, api_daemon: ApiDaemon):
    created = cli("webhooks", "create", api_daemon.receiver.url + "/cli", "--allow-http",
                  "--description", "ops", "--event", "agent.paused", "--event",
                  "agent.killed").stdout
    secret = next(line.split(": ", 1)[1] for line in created.splitlines()
                  if line.startswith("secret: "))
    api_daemon.secrets.append(secret)
    assert "not shown again" in created
    webhook_id = next(line.split()[1] for line in created.splitlines()
                      if line.startswith("webhook"))
    listed = cli("webhooks", "list").stdout
    assert webhook_id in listed and "agent.paused,agent.killed" in listed
    assert secret not in listed and secret not in cli("webhooks", "show", webhook_id).stdout
    queued = cli("webhooks", "test", webhook_id).stdout
    delivery_id = queued.split(":")[0]
    assert queued == f"{delivery_id}: webhook.test queued\n"
    history = wait_until(lambda: (out := cli("webhooks", "deliveries", webhook_id).stdout)
                         and "delivered" in out and out, timeout=15, what="the delivery")
    assert delivery_id in history and "webhook.test" in history
    again = cli("webhooks", "redeliver", webhook_id, delivery_id).stdout
    assert again.endswith(": webhook.test queued\n") and not again.startswith(delivery_id)
    updated = json.loads(cli("webhooks", "update", webhook_id, "--enable", "off",
                             "--json").stdout)
    assert updated["enabled"] is False
    disabled = cli("webhooks", "test", webhook_id, expect=1)
    assert disabled.stderr == f"mnemomd: 409 webhook endpoint {webhook_id} is disabled; " \
        "enable it first\n"
    rotated = json.loads(cli("webhooks", "rotate-secret", webhook_id, "--json").stdout)
    api_daemon.secrets.append(rotated["secret"])
    assert rotated["secret"] != secret
    assert cli("webhooks", "delete", webhook_id).stdout == f"{webhook_id}: deleted\n"
    gone = cli("webhooks", "show", webhook_id, expect=1)
    assert gone.stderr == f"mnemomd: 404 No webhook endpoint {webhook_id}\n"
    http = cli("webhooks", "create", "http://receiver.internal/h", expect=1)
    assert "allow_http" in http.stderr


def test_errors_are_clear_and_exit_non_zero(cli, api_daemon: ApiDaemon):
    missing = cli("agents", "show", "smolt-00000000", expect=1)
    assert missing.stderr == "mnemomd: 404 No agent smolt-00000000\n" and missing.stdout == ""
    no_token = cli("agents", "list", env={"MNEMOMD_TOKEN": ""}, expect=1)
    assert no_token.stderr == "mnemomd: 401 Missing bearer token\n"
    down = cli("agents", "list", "--url", "http://127.0.0.1:9", expect=3)
    assert down.stderr.startswith("mnemomd: the daemon is not reachable at "
                                  "http://127.0.0.1:9")
    assert cli("enforcement", "set", "smolt-1", "strict", expect=2).returncode == 2


def test_url_and_token_default_to_the_configuration(cli, api_daemon: ApiDaemon, agent):
    """With no --url or MNEMOMD_URL, HOST and PORT say where; INTERNAL_API_KEY is the token."""
    env = {"MNEMOMD_URL": "", "MNEMOMD_TOKEN": "", "HOST": "0.0.0.0",
           "PORT": str(api_daemon.daemon.port), "INTERNAL_API_KEY": INTERNAL_KEY}
    assert agent in cli("agents", "list", env=env).stdout
