"""``mnemomd policy check`` / ``evaluate`` without a daemon; a broken policy file is exit 78."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnemomd.cli.main import main
from mnemomd.config import EX_CONFIG

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "browsing-policy.yaml"

FIVE_MISTAKES = """
meta:
  schema_version: "2.0"
  name: broken
  scope: agent
capability_mappings:
  web:
    tools: []
    card_actions: [browse]
forbidden:
  - pattern: "send_*"
    reason: nothing goes out
    severity: severe
escalation_triggers:
  - condition: "tool_name == 'x'"
    action: escalate
    reason: r
defaults:
  unmapped_tool_action: warn
  unmapped_severity: medium
  fail_open: maybe
"""


def test_docs_example_is_valid(capsys):
    assert main(["policy", "check", str(EXAMPLE)], environ={}) == 0
    assert "valid (browsing-agent" in capsys.readouterr().out


def test_five_mistakes_all_reported_with_paths(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text(FIVE_MISTAKES)
    assert main(["policy", "check", str(path)], environ={}) == 1
    err = capsys.readouterr().err
    assert "5 problem(s)" in err
    for where in ("meta.schema_version:", "capability_mappings.web.tools:",
                  "forbidden[0].severity:", "escalation_triggers[0].condition:",
                  "defaults.fail_open:"):
        assert f"  {where}" in err, where


def test_evaluate_locally(capsys):
    assert main(["policy", "evaluate", str(EXAMPLE), "--tool", "web_search"], environ={}) == 0
    assert capsys.readouterr().out == "pass\n"
    assert main(["policy", "evaluate", str(EXAMPLE), "--tool", "send_email"], environ={}) == 1


def test_broken_policy_file_is_a_configuration_error(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text(FIVE_MISTAKES)
    environ = {"MNEMOM_POLICY_FILE": str(path), "MNEMOM_DATA_DIR": str(tmp_path)}
    assert main(["check-config"], environ=environ) == EX_CONFIG
    err = capsys.readouterr().err
    assert f"MNEMOM_POLICY_FILE ({path}): forbidden[0].severity" in err


@pytest.mark.parametrize("content", [None, "meta: [unclosed"])
def test_missing_or_unparsable_file_is_a_configuration_error(tmp_path, content, capsys):
    path = tmp_path / "p.yaml"
    if content is not None:
        path.write_text(content)
    environ = {"MNEMOM_POLICY_FILE": str(path), "MNEMOM_DATA_DIR": str(tmp_path)}
    assert main(["check-config"], environ=environ) == EX_CONFIG
