"""Evaluation order, severities, merge rules and the grace period."""

from __future__ import annotations

import copy

from twisted.internet.task import Clock

from mnemomd.policy import compile_policy, effective_mode, evaluate, merge_policies, parse_policy
from mnemomd.policy.engine import MAX_TOOLS, bounded_actions, card_gaps, coverage
from tests.policy.test_grammar import VALID


def policy(**changes):
    doc = copy.deepcopy(VALID)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            doc[section][field] = value
        else:
            doc[section] = value
    return parse_policy(doc)


def run(p, tools, mode="enforce"):
    return evaluate(compile_policy(p), tools, mode)


def test_forbidden_beats_mapping():
    p = policy(capability_mappings={"all": {"tools": ["*"], "card_actions": ["x"]}})
    result = run(p, ["send_email"])
    assert result.verdict == "fail" and result.blocked
    assert result.violations == [{"type": "forbidden", "tool": "send_email", "capability": "all",
                                  "rule": "send_*", "reason": "no data out",
                                  "severity": "critical"}]


def test_all_forbidden_rules_fire():
    p = policy(forbidden=[{"pattern": "send_*", "reason": "a", "severity": "low"},
                          {"pattern": "*_email", "reason": "b", "severity": "high"}])
    result = run(p, ["send_email"])
    assert [v["rule"] for v in result.violations] == ["send_*", "*_email"]
    assert result.verdict == "fail"


def test_first_mapping_wins():
    p = policy(capability_mappings={
        "narrow": {"tools": ["read_ticket"], "card_actions": ["a"]},
        "wide": {"tools": ["read_*"], "card_actions": ["b"]}})
    compiled = compile_policy(p)
    assert compiled.mapping_for("read_ticket").name == "narrow"
    assert compiled.mapping_for("read_mail").name == "wide"
    p2 = policy(capability_mappings={
        "wide": {"tools": ["read_*"], "card_actions": ["b"]},
        "narrow": {"tools": ["read_ticket"], "card_actions": ["a"]}})
    assert compile_policy(p2).mapping_for("read_ticket").name == "wide"


def test_unmapped_default_applies():
    for action, verdict in (("allow", "pass"), ("warn", "warn"), ("deny", "fail")):
        p = policy(defaults__unmapped_tool_action=action, escalation_triggers=[])
        result = run(p, ["mystery"])
        assert result.verdict == verdict, action
    denied = run(policy(defaults__unmapped_tool_action="deny",
                        defaults__unmapped_severity="low"), ["mystery"])
    assert denied.violations[0]["type"] == "unmapped_denied"
    assert denied.violations[0]["severity"] == "low"


def test_mapped_tool_passes_and_globs_are_literal_and_case_sensitive():
    p = policy()
    assert run(p, ["browse_page", "fetch_url"]).verdict == "pass"
    # ``Send_Email`` is not ``send_*``: it is unmapped (warn), not forbidden.
    assert run(p, ["Send_Email"]).verdict == "warn"
    assert run(p, ["fetch.url"]).verdict == "warn"  # "." is literal
    q = policy(forbidden=[{"pattern": "rm?", "reason": "r", "severity": "high"}])
    assert run(q, ["rmx"]).verdict == "fail"
    assert run(q, ["rmxx"]).verdict == "warn"


def test_severity_handling():
    for severity, verdict in (("critical", "fail"), ("high", "fail"), ("medium", "warn"),
                              ("low", "warn")):
        p = policy(forbidden=[{"pattern": "send_*", "reason": "r", "severity": severity}])
        assert run(p, ["send_x"]).verdict == verdict, severity


def test_escalation_triggers():
    assert run(policy(), ["make_payment"]).verdict == "fail"
    assert run(policy(), ["make_payment"]).violations[0]["type"] == "escalation"
    warn = policy(escalation_triggers=[{"condition": 'tool_matches("*pay*")',
                                        "action": "warn", "reason": "r"}])
    assert run(warn, ["browse_pay"]).verdict == "warn"


def test_warn_mode_reports_but_does_not_block():
    result = run(policy(), ["send_email"], mode="warn")
    assert result.verdict == "fail" and not result.blocked and result.shown == "warn"


def test_duplicates_counted_once_and_overflow_fails():
    result = run(policy(), ["send_a", "send_a"])
    assert len(result.violations) == 1
    over = evaluate(compile_policy(policy()), ["browse_x"], "enforce", overflow=True)
    assert over.verdict == "fail" and over.violations[0]["type"] == "too_many_tools"
    assert MAX_TOOLS >= 128


def test_grace_period_with_clock():
    clock = Clock()
    clock.advance(1000)
    p = policy(defaults__enforcement_mode="enforce", defaults__grace_period_hours=2)
    stored = clock.seconds()
    assert effective_mode(p, stored, clock.seconds()) == "warn"
    clock.advance(2 * 3600 - 1)
    assert effective_mode(p, stored, clock.seconds()) == "warn"
    clock.advance(1)
    assert effective_mode(p, stored, clock.seconds()) == "enforce"
    assert effective_mode(p, None, clock.seconds()) == "enforce"  # from the file


def test_merge_rules():
    org = policy(
        meta={"schema_version": "1.0", "name": "org", "scope": "org"},
        capability_mappings={"read": {"tools": ["read_*"], "card_actions": ["read"]},
                             "web": {"tools": ["web_*"], "card_actions": ["browse"]}},
        escalation_triggers=[{"condition": "tool_matches('a')", "action": "warn",
                              "reason": "org"}],
        defaults={"unmapped_tool_action": "deny", "unmapped_severity": "low",
                  "fail_open": True, "enforcement_mode": "warn", "grace_period_hours": 1})
    agent = policy(
        capability_mappings={"read": {"tools": ["get_*"], "card_actions": ["read"]},
                             "mail": {"tools": ["mail_*"], "card_actions": ["mail"]}},
        forbidden=[{"pattern": "drop_*", "reason": "x", "severity": "high"}],
        escalation_triggers=[{"condition": "tool_matches('b')", "action": "warn",
                              "reason": "agent"}],
        defaults={"unmapped_tool_action": "allow", "unmapped_severity": "critical",
                  "fail_open": False, "enforcement_mode": "enforce",
                  "grace_period_hours": 48})
    merged = merge_policies(org, agent)
    assert [m.name for m in merged.capability_mappings] == ["read", "web", "mail"]
    assert merged.capability_mappings[0].tools == ("get_*",)
    assert [r.pattern for r in merged.forbidden] == ["send_*", "drop_*"]
    assert [t.reason for t in merged.escalation_triggers] == ["org", "agent"]
    d = merged.defaults
    assert (d.unmapped_tool_action, d.unmapped_severity, d.fail_open, d.enforcement_mode,
            d.grace_period_hours) == ("deny", "critical", False, "enforce", 1)
    assert merged.meta == agent.meta
    assert merge_policies(org, None) is org and merge_policies(None, agent) is agent
    both_forbid = merge_policies(policy(), policy())
    assert len(both_forbid.forbidden) == 1


def test_coverage_and_card_gaps():
    p = policy(capability_mappings={"web": {"tools": ["browse_*"], "card_actions": ["browse"]},
                                    "mail": {"tools": ["mail_*"], "card_actions": ["email"]}})
    card = {"autonomy": {"bounded_actions": ["browse", "read_tickets"]}}
    actions = bounded_actions(card)
    assert coverage(p, actions) == {"total_card_actions": 2, "mapped_card_actions": ["browse"],
                                    "unmapped_actions": ["read_tickets"], "coverage_pct": 50.0}
    gaps = card_gaps(compile_policy(p), ["mail_send", "browse_x"], actions)
    assert gaps == [{"tool": "mail_send", "capability": "mail", "missing_card_actions": ["email"],
                     "reason": 'Card missing actions [email] required by capability "mail"'}]
    assert bounded_actions({"autonomy_envelope": {"bounded_actions": ["x"]}}) == ["x"]
    assert bounded_actions(None) is None
