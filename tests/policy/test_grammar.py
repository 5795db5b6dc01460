"""The policy grammar: every required field, enums, globs, versions, duplicates."""

from __future__ import annotations

import copy

import pytest

from mnemomd.policy import PolicyError, load_policy_text, parse_policy, policy_document

VALID = {
    "meta": {"schema_version": "1.0", "name": "browser", "scope": "agent"},
    "capability_mappings": {
        "web_browsing": {"tools": ["browse_*", "fetch_url"], "card_actions": ["browse"]},
    },
    "forbidden": [{"pattern": "send_*", "reason": "no data out", "severity": "critical"}],
    "escalation_triggers": [{"condition": "tool_matches('*payment*')", "action": "escalate",
                             "reason": "money"}],
    "defaults": {"unmapped_tool_action": "warn", "unmapped_severity": "medium",
                 "fail_open": False},
}


def problems_of(doc) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(doc)
    return caught.value.problems


def without(path: str) -> dict:
    doc = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    target = doc
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        del target[int(last)]
    else:
        del target[last]
    return doc


def test_valid_policy_parses_with_defaults():
    policy = parse_policy(VALID)
    assert policy.meta.name == "browser"
    assert policy.defaults.enforcement_mode == "warn"
    assert policy.defaults.grace_period_hours == 24
    assert policy.escalation_triggers[0].pattern == "*payment*"
    assert parse_policy(policy_document(policy)) == policy


@pytest.mark.parametrize("path", [
    "meta", "meta.schema_version", "meta.name", "meta.scope", "capability_mappings",
    "capability_mappings.web_browsing.tools", "capability_mappings.web_browsing.card_actions",
    "forbidden", "forbidden.0.pattern", "forbidden.0.reason", "forbidden.0.severity",
    "escalation_triggers.0.condition", "escalation_triggers.0.action",
    "escalation_triggers.0.reason", "defaults", "defaults.unmapped_tool_action",
    "defaults.unmapped_severity", "defaults.fail_open",
])
def test_every_required_field_missing_is_named(path):
    expected = (path.replace(".0.", "[0].").replace("forbidden.0", "forbidden[0]"))
    found = problems_of(without(path))
    assert any(p.startswith(expected + ":") and "required" in p for p in found), found


def test_optional_fields_may_be_missing():
    doc = without("escalation_triggers")
    del doc["defaults"]["fail_open"]
    doc["defaults"]["fail_open"] = True
    assert parse_policy(doc).escalation_triggers == ()


def test_unknown_schema_version_rejected():
    doc = copy.deepcopy(VALID)
    doc["meta"]["schema_version"] = "2.0"
    assert problems_of(doc)[0].startswith("meta.schema_version: unknown schema version")
    doc["meta"]["schema_version"] = 1.0
    assert "quote it" in problems_of(doc)[0]


def test_duplicate_mapping_names_rejected_in_yaml_and_json():
    text = """
meta: {schema_version: "1.0", name: x, scope: org}
capability_mappings:
  read: {tools: [a], card_actions: [r]}
  read: {tools: [b], card_actions: [r]}
forbidden: []
defaults: {unmapped_tool_action: allow, unmapped_severity: low, fail_open: true}
"""
    with pytest.raises(PolicyError, match="duplicate name \"read\""):
        load_policy_text(text)
    as_json = ('{"meta": {"schema_version": "1.0", "name": "x", "scope": "org"}, '
               '"capability_mappings": {"r": {"tools": ["a"], "card_actions": ["r"]}, '
               '"r": {"tools": ["b"], "card_actions": ["r"]}}, "forbidden": [], '
               '"defaults": {"unmapped_tool_action": "allow", "unmapped_severity": "low", '
               '"fail_open": true}}')
    with pytest.raises(PolicyError, match="duplicate name"):
        load_policy_text(as_json, "json")


@pytest.mark.parametrize("glob", ["", " send", "a\tb", "x" * 300, 7, None, ["a"]])
def test_bad_globs_rejected(glob):
    doc = copy.deepcopy(VALID)
    doc["forbidden"][0]["pattern"] = glob
    doc["capability_mappings"]["web_browsing"]["tools"] = [glob]
    found = problems_of(doc)
    assert any(p.startswith("forbidden[0].pattern:") for p in found)
    assert any(p.startswith("capability_mappings.web_browsing.tools") for p in found)


def test_bad_trigger_condition_rejected():
    doc = copy.deepcopy(VALID)
    doc["escalation_triggers"][0]["condition"] = "tool_name == 'x'"
    assert "the only supported expression" in problems_of(doc)[0]


@pytest.mark.parametrize("path,value", [
    ("meta.scope", "team"), ("forbidden.0.severity", "severe"),
    ("escalation_triggers.0.action", "block"), ("defaults.unmapped_tool_action", "escalate"),
    ("defaults.unmapped_severity", "HIGH"), ("defaults.enforcement_mode", "block"),
    ("defaults.fail_open", "no"), ("defaults.grace_period_hours", -1),
    ("defaults.grace_period_hours", True),
])
def test_bad_enums_and_values_rejected(path, value):
    doc = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    target = doc
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[last] = value
    found = problems_of(doc)
    assert len(found) == 1
    assert found[0].startswith(path.replace(".0.", "[0].") + ":")


def test_unknown_keys_named():
    doc = copy.deepcopy(VALID)
    doc["defaults"]["enforcment_mode"] = "enforce"
    assert problems_of(doc) == [
        "defaults.enforcment_mode: is not part of the policy grammar (known: "
        "unmapped_tool_action, unmapped_severity, fail_open, enforcement_mode, "
        "grace_period_hours)"]


def test_every_problem_reported_at_once():
    doc = copy.deepcopy(VALID)
    doc["meta"]["scope"] = "x"
    doc["forbidden"][0]["severity"] = "x"
    doc["forbidden"].append({"pattern": "", "reason": "r", "severity": "low"})
    doc["defaults"]["fail_open"] = "x"
    doc["capability_mappings"]["web_browsing"]["tools"] = []
    found = problems_of(doc)
    assert [p.split(":")[0] for p in found] == [
        "meta.scope", "capability_mappings.web_browsing.tools", "forbidden[0].severity",
        "forbidden[1].pattern", "defaults.fail_open"]


def test_not_a_mapping_and_bad_syntax():
    with pytest.raises(PolicyError, match=r"\(policy\): must be a mapping"):
        parse_policy([1, 2])
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy_text("meta: [unclosed")
    with pytest.raises(PolicyError, match="larger than"):
        load_policy_text("#" * (1024 * 1024 + 1))
