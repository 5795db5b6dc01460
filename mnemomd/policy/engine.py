"""Compile a policy once, evaluate the tool names of a request against it, merge two.

Evaluation, per tool: every matching forbidden rule fires; every matching escalation
trigger fires; the capability mappings are tried in declaration order and the first whose
globs match wins; a tool neither mapped nor forbidden gets ``unmapped_tool_action``. Each
tool ends as ``allow``, ``warn``, ``deny`` or ``escalate``, and the request as ``pass``,
``warn`` or ``fail`` (``fail`` when any tool is ``deny`` or ``escalate``). A forbidden
``critical`` or ``high`` match denies, ``medium`` and ``low`` ones warn; a trigger does
what its ``action`` says. Only ``enforce`` blocks a ``fail`` (a gateway has no human to
approve an escalation, so ``escalate`` blocks too); ``warn`` reports it and forwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mnemomd.policy.grammar import (
    ENFORCEMENT_MODES,
    SEVERITIES,
    UNMAPPED_ACTIONS,
    CapabilityMapping,
    Defaults,
    Policy,
)

#: Tools evaluated per request at most; a request offering more is judged on the first
#: ones and, being beyond any real agent, fails on the excess (``too_many_tools``).
MAX_TOOLS = 512
#: Distinct tool names whose findings a compiled policy remembers.
FINDINGS_CACHE = 4096

_ACTION_RANK = {"allow": 0, "warn": 1, "deny": 2, "escalate": 3}
_BLOCKING = ("deny", "escalate")


def glob_regex(pattern: str) -> str:
    """A glob as a regular expression: ``*`` any run, ``?`` one character, else literal."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return "".join(parts)


def _alternation(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{glob_regex(p)})" for p in patterns), re.DOTALL)


@dataclass(frozen=True)
class Finding:
    """What one tool came to: its action, the capability it maps to, what fired."""

    tool: str
    action: str
    capability: str | None
    violations: tuple[dict[str, Any], ...] = ()
    warnings: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Evaluation:
    """A request's verdict under a policy, and the mode it was judged in."""

    verdict: str
    mode: str
    violations: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        """Whether the request is refused: a ``fail`` under ``enforce``."""
        return self.mode == "enforce" and self.verdict == "fail"

    @property
    def shown(self) -> str:
        """``X-Policy-Verdict``: a ``fail`` that is only reported (``warn``) shows ``warn``."""
        return "warn" if self.verdict == "fail" and self.mode != "enforce" else self.verdict


def violation(kind: str, tool: str, *, capability: str | None = None, rule: str | None = None,
              reason: str, severity: str) -> dict[str, Any]:
    return {"type": kind, "tool": tool, "capability": capability, "rule": rule,
            "reason": reason, "severity": severity}


class CompiledPolicy:
    """A policy with its globs compiled once; evaluating the same tool name twice is a
    dictionary lookup (bounded)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._forbidden = [(re.compile(glob_regex(r.pattern), re.DOTALL), r)
                           for r in policy.forbidden]
        self._any_forbidden = _alternation([r.pattern for r in policy.forbidden])
        self._triggers = [(re.compile(glob_regex(t.pattern), re.DOTALL), t)
                          for t in policy.escalation_triggers]
        self._any_trigger = _alternation([t.pattern for t in policy.escalation_triggers])
        # One named group per mapping, in declaration order: the regex engine tries the
        # alternatives left to right, so the group that matched is the first mapping.
        groups = []
        self._by_group: dict[str, CapabilityMapping] = {}
        for index, mapping in enumerate(policy.capability_mappings):
            name = f"m{index}"
            self._by_group[name] = mapping
            inner = "|".join(f"(?:{glob_regex(p)})" for p in mapping.tools)
            groups.append(f"(?P<{name}>{inner})")
        self._mappings = re.compile("|".join(groups), re.DOTALL) if groups else None
        self._cache: dict[str, Finding] = {}

    def mapping_for(self, tool: str) -> CapabilityMapping | None:
        """The first mapping (in declaration order) whose globs match ``tool``."""
        if self._mappings is None:
            return None
        match = self._mappings.fullmatch(tool)
        return self._by_group[match.lastgroup] if match and match.lastgroup else None

    def finding(self, tool: str) -> Finding:
        cached = self._cache.get(tool)
        if cached is not None:
            return cached
        result = self._find(tool)
        if len(self._cache) >= FINDINGS_CACHE:
            self._cache.clear()
        self._cache[tool] = result
        return result

    def _find(self, tool: str) -> Finding:
        defaults = self.policy.defaults
        violations: list[dict[str, Any]] = []
        warnings: list[dict[str, Any]] = []
        action = "allow"
        forbidden = False
        if self._any_forbidden is not None and self._any_forbidden.fullmatch(tool):
            for regex, rule in self._forbidden:
                if regex.fullmatch(tool):
                    forbidden = True
                    violations.append(violation("forbidden", tool, rule=rule.pattern,
                                                reason=rule.reason, severity=rule.severity))
                    action = _stronger(action, "deny" if rule.severity in ("critical", "high")
                                       else "warn")
        if self._any_trigger is not None and self._any_trigger.fullmatch(tool):
            for regex, trigger in self._triggers:
                if not regex.fullmatch(tool):
                    continue
                if trigger.action == "warn":
                    warnings.append({"type": "escalation_triggered", "tool": tool,
                                     "rule": trigger.condition, "reason": trigger.reason})
                else:
                    violations.append(violation(
                        "escalation" if trigger.action == "escalate" else "escalation_denied",
                        tool, rule=trigger.condition, reason=trigger.reason, severity="high"))
                action = _stronger(action, trigger.action)
        mapping = self.mapping_for(tool)
        capability = mapping.name if mapping is not None else None
        if mapping is None and not forbidden:
            unmapped = defaults.unmapped_tool_action
            if unmapped == "deny":
                violations.append(violation(
                    "unmapped_denied", tool,
                    reason=f'Tool "{tool}" has no capability mapping and '
                           f'unmapped_tool_action is "deny"',
                    severity=defaults.unmapped_severity))
            elif unmapped == "warn":
                warnings.append({"type": "unmapped_tool", "tool": tool, "rule": None,
                                 "reason": f'Tool "{tool}" has no capability mapping'})
            action = _stronger(action, unmapped)
        for item in violations:
            item["capability"] = capability
        return Finding(tool, action, capability, tuple(violations), tuple(warnings))


def _stronger(a: str, b: str) -> str:
    return a if _ACTION_RANK[a] >= _ACTION_RANK[b] else b


def compile_policy(policy: Policy) -> CompiledPolicy:
    return CompiledPolicy(policy)


def effective_mode(policy: Policy, stored_at: float | None, now: float) -> str:
    """``enforcement_mode``, except that an ``enforce`` policy runs as ``warn`` for
    ``grace_period_hours`` after it was stored (``stored_at`` in seconds; None: a policy
    from the configuration file, which enforces from the start)."""
    mode = policy.defaults.enforcement_mode
    if mode == "enforce" and stored_at is not None \
            and now < stored_at + policy.defaults.grace_period_hours * 3600:
        return "warn"
    return mode


def unique_tools(names: Iterable[str]) -> list[str]:
    """Each name once, in order of first appearance."""
    return list(dict.fromkeys(names))


def evaluate(compiled: CompiledPolicy, tools: Iterable[str], mode: str,
             overflow: bool = False) -> Evaluation:
    """The verdict of a request offering ``tools`` (``overflow``: it offered more than
    the gateway reads, which fails: no real agent needs that many)."""
    names = unique_tools(tools)
    violations: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    worst = "allow"
    for name in names:
        found = compiled.finding(name)
        if found.violations:
            violations.extend(dict(v) for v in found.violations)
        if found.warnings:
            warnings.extend(dict(w) for w in found.warnings)
        worst = _stronger(worst, found.action)
    if overflow:
        violations.append(violation("too_many_tools", "*",
                                    reason=f"The request offers more than {MAX_TOOLS} tools",
                                    severity="high"))
        worst = "deny"
    verdict = "fail" if worst in _BLOCKING else "warn" if worst == "warn" else "pass"
    return Evaluation(verdict, mode, violations, warnings, names)


def error_evaluation(policy: Policy, mode: str, reason: str) -> Evaluation:
    """What an engine error comes to: ``fail_open`` passes with a warning, otherwise the
    request fails."""
    if policy.defaults.fail_open:
        return Evaluation("warn", mode, [], [{"type": "engine_error", "tool": None,
                                              "rule": None, "reason": reason}])
    return Evaluation("fail", mode, [violation("engine_error", "*", reason=reason,
                                               severity="critical")])


# -- cards: gaps and coverage ---------------------------------------------------------------


def bounded_actions(card: Mapping[str, Any] | None) -> list[str] | None:
    """A card's ``bounded_actions`` (``autonomy``, or the older ``autonomy_envelope``);
    None when there is no card."""
    if not isinstance(card, Mapping):
        return None
    for section in ("autonomy", "autonomy_envelope"):
        value = card.get(section)
        if isinstance(value, Mapping) and isinstance(value.get("bounded_actions"), list):
            return [a for a in value["bounded_actions"] if isinstance(a, str)]
    return []


def card_gaps(compiled: CompiledPolicy, tools: Iterable[str],
              actions: Sequence[str]) -> list[dict[str, Any]]:
    """Mapped tools whose capability needs card actions the card does not bound."""
    bounded = set(actions)
    gaps = []
    for name in unique_tools(tools):
        mapping = compiled.mapping_for(name)
        if mapping is None:
            continue
        missing = [a for a in mapping.card_actions if a not in bounded]
        if missing:
            gaps.append({"tool": name, "capability": mapping.name,
                         "missing_card_actions": missing,
                         "reason": f"Card missing actions [{', '.join(missing)}] required by "
                                   f'capability "{mapping.name}"'})
    return gaps


def mapping_gaps(policy: Policy, actions: Sequence[str]) -> list[str]:
    """Warnings for ``card_actions`` the card does not bound (they should all exist)."""
    bounded = set(actions)
    return [f"capability_mappings.{m.name}.card_actions: {a!r} is not in the card's "
            f"bounded_actions" for m in policy.capability_mappings for a in m.card_actions
            if a not in bounded]


def coverage(policy: Policy, actions: Sequence[str]) -> dict[str, Any]:
    """How many of the card's bounded actions some capability mapping covers."""
    total = list(dict.fromkeys(actions))
    mapped_set = {a for m in policy.capability_mappings for a in m.card_actions}
    mapped = [a for a in total if a in mapped_set]
    unmapped = [a for a in total if a not in mapped_set]
    pct = round(len(mapped) / len(total) * 100, 1) if total else 100.0
    return {"total_card_actions": len(total), "mapped_card_actions": mapped,
            "unmapped_actions": unmapped, "coverage_pct": pct}


# -- merge: the deployment-wide policy with an agent's --------------------------------------


def _max(order: Sequence[str], a: str, b: str) -> str:
    return a if order.index(a) >= order.index(b) else b


def merge_defaults(org: Defaults, agent: Defaults) -> Defaults:
    """The stronger of each: ``allow < warn < deny``, ``low < … < critical``, ``fail_open``
    only when both are, ``off < warn < enforce``, the shorter grace period."""
    return Defaults(
        unmapped_tool_action=_max(UNMAPPED_ACTIONS, org.unmapped_tool_action,
                                  agent.unmapped_tool_action),
        unmapped_severity=_max(SEVERITIES, org.unmapped_severity, agent.unmapped_severity),
        fail_open=org.fail_open and agent.fail_open,
        enforcement_mode=_max(ENFORCEMENT_MODES, org.enforcement_mode,
                              agent.enforcement_mode),
        grace_period_hours=min(org.grace_period_hours, agent.grace_period_hours),
    )


def merge_policies(org: Policy | None, agent: Policy | None) -> Policy | None:
    """The policy an agent is held to: mappings united (the agent's entry replaces an org
    entry of the same name, in its place), forbidden rules united, triggers org first,
    defaults the stronger of each, ``meta`` the agent's."""
    if org is None or agent is None:
        return agent if org is None else org
    agent_maps = {m.name: m for m in agent.capability_mappings}
    mappings = [agent_maps.pop(m.name, m) for m in org.capability_mappings]
    mappings += [m for m in agent.capability_mappings if m.name in agent_maps]
    return replace(
        agent,
        capability_mappings=tuple(mappings),
        forbidden=tuple(dict.fromkeys(org.forbidden + agent.forbidden)),
        escalation_triggers=org.escalation_triggers + agent.escalation_triggers,
        defaults=merge_defaults(org.defaults, agent.defaults),
    )
