"""The policy grammar, schema ``"1.0"``: a document in, a ``Policy`` or every problem out.

A policy that fails validation is rejected whole; each problem names its path
(``forbidden[2].severity: must be one of critical, high, medium, low``), so a policy's
author fixes the file in one pass. Keys the grammar does not know are problems too: a
misspelt ``enforcement_mode`` must not silently leave a policy in ``warn``.

Globs are ``*`` (any run of characters, none included), ``?`` (exactly one character),
everything else literal and case-sensitive, as Mnemom matches them. They match tool names
only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

SCHEMA_VERSIONS = ("1.0",)
SCOPES = ("org", "agent")
SEVERITIES = ("low", "medium", "high", "critical")
UNMAPPED_ACTIONS = ("allow", "warn", "deny")
TRIGGER_ACTIONS = ("escalate", "warn", "deny")
ENFORCEMENT_MODES = ("off", "warn", "enforce")

#: Bounds that keep a policy (and the work of evaluating it) finite.
MAX_POLICY_BYTES = 1024 * 1024
MAX_ENTRIES = 1000
MAX_GLOB_CHARS = 256
MAX_TEXT_CHARS = 2000
MAX_NAME_CHARS = 200
MAX_GRACE_HOURS = 24 * 365

_CONDITION = re.compile(r"""tool_matches\((?:'([^']*)'|"([^"]*)")\)""")


class PolicyError(ValueError):
    """Every problem of a policy document, each with its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Meta:
    schema_version: str
    name: str
    scope: str
    description: str | None = None


@dataclass(frozen=True)
class CapabilityMapping:
    name: str
    tools: tuple[str, ...]
    card_actions: tuple[str, ...]
    description: str | None = None


@dataclass(frozen=True)
class ForbiddenRule:
    pattern: str
    reason: str
    severity: str


@dataclass(frozen=True)
class EscalationTrigger:
    condition: str
    #: The glob inside ``tool_matches('…')``.
    pattern: str
    action: str
    reason: str


@dataclass(frozen=True)
class Defaults:
    unmapped_tool_action: str
    unmapped_severity: str
    fail_open: bool
    enforcement_mode: str = "warn"
    grace_period_hours: float = 24.0


@dataclass(frozen=True)
class Policy:
    meta: Meta
    #: In declaration order: the first mapping whose globs match a tool wins.
    capability_mappings: tuple[CapabilityMapping, ...]
    forbidden: tuple[ForbiddenRule, ...]
    escalation_triggers: tuple[EscalationTrigger, ...]
    defaults: Defaults


# -- problems are collected, never raised one at a time -----------------------------------


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")


def _mapping(value: object, path: str, problems: _Problems) -> Mapping[str, Any] | None:
    if not isinstance(value, Mapping):
        problems.add(path, "must be a mapping")
        return None
    return value


def _unknown_keys(doc: Mapping[str, Any], known: tuple[str, ...], path: str,
                  problems: _Problems) -> None:
    for key in doc:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            problems.add(where, f"is not part of the policy grammar (known: {', '.join(known)})")


def _text(doc: Mapping[str, Any], key: str, path: str, problems: _Problems, *,
          required: bool = True, limit: int = MAX_TEXT_CHARS) -> str | None:
    where = f"{path}.{key}" if path else key
    if key not in doc or doc[key] is None:
        if required:
            problems.add(where, "is required")
        return None
    value = doc[key]
    if not isinstance(value, str):
        problems.add(where, "must be a string")
        return None
    if required and not value.strip():
        problems.add(where, "must not be empty")
        return None
    if len(value) > limit:
        problems.add(where, f"must be at most {limit} characters")
        return None
    return value


def _choice(doc: Mapping[str, Any], key: str, choices: tuple[str, ...], path: str,
            problems: _Problems, default: str | None = None) -> str | None:
    where = f"{path}.{key}"
    if key not in doc or doc[key] is None:
        if default is None:
            problems.add(where, "is required")
        return default
    value = doc[key]
    if not isinstance(value, str) or value not in choices:
        problems.add(where, f"must be one of {', '.join(choices)} (got {_show(value)})")
        return None
    return value


def _show(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def glob_problem(pattern: object) -> str | None:
    """Why ``pattern`` is not a usable tool glob, or None."""
    if not isinstance(pattern, str):
        return "must be a string (a tool name glob)"
    if not pattern:
        return "must not be empty"
    if len(pattern) > MAX_GLOB_CHARS:
        return f"must be at most {MAX_GLOB_CHARS} characters"
    if any(ch.isspace() or not ch.isprintable() for ch in pattern):
        return "must not contain whitespace or control characters (tool names have none)"
    return None


def _glob(value: object, path: str, problems: _Problems) -> str | None:
    problem = glob_problem(value)
    if problem is not None:
        problems.add(path, problem)
        return None
    assert isinstance(value, str)
    return value


def _string_list(doc: Mapping[str, Any], key: str, path: str, problems: _Problems,
                 *, globs: bool) -> tuple[str, ...] | None:
    where = f"{path}.{key}"
    if key not in doc or doc[key] is None:
        problems.add(where, "is required")
        return None
    value = doc[key]
    if not isinstance(value, list):
        problems.add(where, "must be a list")
        return None
    if not value:
        problems.add(where, "must list at least one entry")
        return None
    if len(value) > MAX_ENTRIES:
        problems.add(where, f"must list at most {MAX_ENTRIES} entries")
        return None
    items: list[str] = []
    for index, item in enumerate(value):
        item_path = f"{where}[{index}]"
        if globs:
            checked = _glob(item, item_path, problems)
        elif not isinstance(item, str) or not item.strip():
            problems.add(item_path, "must be a non-empty string")
            checked = None
        else:
            checked = item
        if checked is not None:
            items.append(checked)
    return tuple(items) if len(items) == len(value) else None


def _list(doc: Mapping[str, Any], key: str, problems: _Problems,
          required: bool) -> list[Any] | None:
    if key not in doc or doc[key] is None:
        if required:
            problems.add(key, "is required (use [] for none)")
            return None
        return []
    value = doc[key]
    if not isinstance(value, list):
        problems.add(key, "must be a list")
        return None
    if len(value) > MAX_ENTRIES:
        problems.add(key, f"must list at most {MAX_ENTRIES} entries")
        return None
    return value


# -- the sections ---------------------------------------------------------------------------


def _meta(doc: Mapping[str, Any], problems: _Problems) -> Meta | None:
    if "meta" not in doc:
        problems.add("meta", "is required")
        return None
    meta = _mapping(doc["meta"], "meta", problems)
    if meta is None:
        return None
    _unknown_keys(meta, ("schema_version", "name", "description", "scope"), "meta", problems)
    version = meta.get("schema_version")
    if "schema_version" not in meta or version is None:
        problems.add("meta.schema_version", "is required")
        version = None
    elif version not in SCHEMA_VERSIONS or not isinstance(version, str):
        hint = " (quote it: \"1.0\")" if isinstance(version, int | float) else ""
        problems.add("meta.schema_version",
                     f"unknown schema version {_show(version)}; this build knows "
                     f"{', '.join(repr(v) for v in SCHEMA_VERSIONS)}{hint}")
        version = None
    name = _text(meta, "name", "meta", problems, limit=MAX_NAME_CHARS)
    description = _text(meta, "description", "meta", problems, required=False)
    scope = _choice(meta, "scope", SCOPES, "meta", problems)
    if version is None or name is None or scope is None:
        return None
    return Meta(version, name, scope, description)


def _mappings(doc: Mapping[str, Any], problems: _Problems,
              ) -> tuple[CapabilityMapping, ...] | None:
    if "capability_mappings" not in doc or doc["capability_mappings"] is None:
        problems.add("capability_mappings", "is required (use {} for none)")
        return None
    raw = _mapping(doc["capability_mappings"], "capability_mappings", problems)
    if raw is None:
        return None
    if len(raw) > MAX_ENTRIES:
        problems.add("capability_mappings", f"must hold at most {MAX_ENTRIES} mappings")
        return None
    mappings: list[CapabilityMapping] = []
    ok = True
    for name, entry in raw.items():
        path = f"capability_mappings.{name}"
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
            problems.add(path, "the capability name must be a non-empty string")
            ok = False
            continue
        body = _mapping(entry, path, problems)
        if body is None:
            ok = False
            continue
        _unknown_keys(body, ("description", "tools", "card_actions"), path, problems)
        description = _text(body, "description", path, problems, required=False)
        tools = _string_list(body, "tools", path, problems, globs=True)
        actions = _string_list(body, "card_actions", path, problems, globs=False)
        if tools is None or actions is None:
            ok = False
            continue
        mappings.append(CapabilityMapping(name, tools, actions, description))
    return tuple(mappings) if ok else None


def _forbidden(doc: Mapping[str, Any], problems: _Problems) -> tuple[ForbiddenRule, ...] | None:
    raw = _list(doc, "forbidden", problems, required=True)
    if raw is None:
        return None
    rules: list[ForbiddenRule] = []
    for index, entry in enumerate(raw):
        path = f"forbidden[{index}]"
        body = _mapping(entry, path, problems)
        if body is None:
            continue
        _unknown_keys(body, ("pattern", "reason", "severity"), path, problems)
        pattern = None
        if "pattern" not in body or body["pattern"] is None:
            problems.add(f"{path}.pattern", "is required")
        else:
            pattern = _glob(body["pattern"], f"{path}.pattern", problems)
        reason = _text(body, "reason", path, problems)
        severity = _choice(body, "severity", SEVERITIES, path, problems)
        if pattern is not None and reason is not None and severity is not None:
            rules.append(ForbiddenRule(pattern, reason, severity))
    return tuple(rules) if len(rules) == len(raw) else None


def _triggers(doc: Mapping[str, Any],
              problems: _Problems) -> tuple[EscalationTrigger, ...] | None:
    raw = _list(doc, "escalation_triggers", problems, required=False)
    if raw is None:
        return None
    triggers: list[EscalationTrigger] = []
    for index, entry in enumerate(raw):
        path = f"escalation_triggers[{index}]"
        body = _mapping(entry, path, problems)
        if body is None:
            continue
        _unknown_keys(body, ("condition", "action", "reason"), path, problems)
        condition = _text(body, "condition", path, problems, limit=MAX_GLOB_CHARS + 20)
        pattern = None
        if condition is not None:
            match = _CONDITION.fullmatch(condition.strip())
            if match is None:
                problems.add(f"{path}.condition",
                             "must be tool_matches('glob'), the only supported expression")
            else:
                pattern = _glob(match[1] if match[1] is not None else match[2],
                                f"{path}.condition", problems)
        action = _choice(body, "action", TRIGGER_ACTIONS, path, problems)
        reason = _text(body, "reason", path, problems)
        if condition is not None and pattern is not None and action is not None \
                and reason is not None:
            triggers.append(EscalationTrigger(condition.strip(), pattern, action, reason))
    return tuple(triggers) if len(triggers) == len(raw) else None


def _defaults(doc: Mapping[str, Any], problems: _Problems) -> Defaults | None:
    if "defaults" not in doc or doc["defaults"] is None:
        problems.add("defaults", "is required")
        return None
    body = _mapping(doc["defaults"], "defaults", problems)
    if body is None:
        return None
    _unknown_keys(body, ("unmapped_tool_action", "unmapped_severity", "fail_open",
                         "enforcement_mode", "grace_period_hours"), "defaults", problems)
    action = _choice(body, "unmapped_tool_action", UNMAPPED_ACTIONS, "defaults", problems)
    severity = _choice(body, "unmapped_severity", SEVERITIES, "defaults", problems)
    fail_open = body.get("fail_open")
    if "fail_open" not in body or fail_open is None:
        problems.add("defaults.fail_open", "is required")
        fail_open = None
    elif not isinstance(fail_open, bool):
        problems.add("defaults.fail_open", f"must be true or false (got {_show(fail_open)})")
        fail_open = None
    mode = _choice(body, "enforcement_mode", ENFORCEMENT_MODES, "defaults", problems,
                   default="warn")
    grace = body.get("grace_period_hours")
    if grace is None:
        grace = 24.0
    elif isinstance(grace, bool) or not isinstance(grace, int | float) \
            or not math.isfinite(grace) or not 0 <= grace <= MAX_GRACE_HOURS:
        problems.add("defaults.grace_period_hours",
                     f"must be a number of hours from 0 to {MAX_GRACE_HOURS} "
                     f"(got {_show(grace)})")
        grace = None
    if action is None or severity is None or fail_open is None or mode is None \
            or grace is None:
        return None
    return Defaults(action, severity, fail_open, mode, float(grace))


TOP_LEVEL = ("meta", "capability_mappings", "forbidden", "escalation_triggers", "defaults")


def parse_policy(doc: object) -> Policy:
    """The policy a document (parsed JSON or YAML) holds; ``PolicyError`` lists every
    problem otherwise."""
    problems = _Problems()
    body = _mapping(doc, "(policy)", problems)
    if body is None:
        raise PolicyError(problems.items)
    _unknown_keys(body, TOP_LEVEL, "", problems)
    meta = _meta(body, problems)
    mappings = _mappings(body, problems)
    forbidden = _forbidden(body, problems)
    triggers = _triggers(body, problems)
    defaults = _defaults(body, problems)
    if problems.items or meta is None or mappings is None or forbidden is None \
            or triggers is None or defaults is None:
        raise PolicyError(problems.items or ["(policy): invalid"])
    return Policy(meta, mappings, forbidden, triggers, defaults)


def policy_document(policy: Policy) -> dict[str, Any]:
    """The policy as a document of the grammar (what ``parse_policy`` reads back)."""
    meta: dict[str, Any] = {"schema_version": policy.meta.schema_version,
                            "name": policy.meta.name, "scope": policy.meta.scope}
    if policy.meta.description is not None:
        meta["description"] = policy.meta.description
    mappings: dict[str, Any] = {}
    for mapping in policy.capability_mappings:
        entry: dict[str, Any] = {}
        if mapping.description is not None:
            entry["description"] = mapping.description
        entry["tools"] = list(mapping.tools)
        entry["card_actions"] = list(mapping.card_actions)
        mappings[mapping.name] = entry
    defaults = policy.defaults
    return {
        "meta": meta,
        "capability_mappings": mappings,
        "forbidden": [{"pattern": r.pattern, "reason": r.reason, "severity": r.severity}
                      for r in policy.forbidden],
        "escalation_triggers": [{"condition": t.condition, "action": t.action,
                                 "reason": t.reason} for t in policy.escalation_triggers],
        "defaults": {
            "unmapped_tool_action": defaults.unmapped_tool_action,
            "unmapped_severity": defaults.unmapped_severity,
            "fail_open": defaults.fail_open,
            "enforcement_mode": defaults.enforcement_mode,
            "grace_period_hours": defaults.grace_period_hours,
        },
    }


# -- reading documents: duplicate keys are problems, not silently the last one -------------


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that records duplicate keys (YAML would keep the last silently)."""

    duplicates: list[str]

    def construct_mapping(self, node: yaml.MappingNode,  # type: ignore[override]
                          deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:
                continue
            if duplicate:
                self.duplicates.append(
                    f"line {key_node.start_mark.line + 1}: duplicate name {_show(key)} "
                    f"(each name may appear once)")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _json_pairs(duplicates: list[str]) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                duplicates.append(f"duplicate name {_show(key)} (each name may appear once)")
            result[key] = value
        return result

    return hook


def load_policy_text(text: str | bytes, media: str = "yaml") -> Policy:
    """A policy from YAML (``media="yaml"``) or JSON text: syntax errors, duplicate keys
    and grammar problems all come back as one ``PolicyError``."""
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyError([f"(policy): larger than {MAX_POLICY_BYTES} bytes"])
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError(["(policy): not UTF-8 text"]) from None
    duplicates: list[str] = []
    try:
        if media == "json":
            doc = json.loads(text, object_pairs_hook=_json_pairs(duplicates))
        else:
            loader = _StrictLoader(text)
            loader.duplicates = duplicates
            try:
                doc = loader.get_single_data()
            finally:
                loader.dispose()  # type: ignore[no-untyped-call]
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        kind = "JSON" if media == "json" else "YAML"
        raise PolicyError([f"(policy): not valid {kind}: {_first_line(e)}"]) from None
    try:
        policy = parse_policy(doc)
    except PolicyError as e:
        raise PolicyError(duplicates + e.problems) from None
    if duplicates:
        raise PolicyError(duplicates)
    return policy


def _first_line(error: Exception) -> str:
    return " ".join(str(error).split())[:200]


def read_policy_file(path: str) -> Policy:
    """The policy of a YAML (or ``.json``) file: blocking, for startup and the CLI."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_POLICY_BYTES + 1)
    except OSError as e:
        raise PolicyError([f"(file): cannot be read: {e.strerror or e}"]) from None
    return load_policy_text(data, "json" if path.endswith(".json") else "yaml")
