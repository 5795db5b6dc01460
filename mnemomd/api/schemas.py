"""The shapes the management API accepts and returns, in one place.

Request bodies are pydantic models: the same class validates a body and describes it in
the OpenAPI document. Responses are JSON Schema written out here; the handlers build
plain dicts and a test walks every operation to check they carry the keys promised.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mnemomd.webhooks.store import EVENT_TYPES

MODES = ("observe", "nudge", "enforce")
WITHOUT_REASONING = ("allow", "analyse_output", "refuse")
NUDGE_STRATEGIES = ("always", "sampling", "threshold", "off")
VERDICTS = ("clear", "review_needed", "boundary_violation")
CONTAINMENT_STATUSES = ("active", "paused", "killed")
CONTAINMENT_SCOPES = ("agent", "key")
CONSCIENCE_TYPES = ("BOUNDARY", "FEAR", "COMMITMENT", "BELIEF", "HOPE")
#: Events a webhook endpoint may subscribe to (SPEC §7), and ``*``: every event but
#: ``verdict.clear`` and ``webhook.test``, which are subscribed to by name.
WEBHOOK_EVENTS = (*EVENT_TYPES, "*")
#: What an endpoint created without ``event_types`` hears.
DEFAULT_WEBHOOK_EVENTS = ("*",)

Mode = Literal["observe", "nudge", "enforce"]
NudgeStrategy = Literal["always", "sampling", "threshold", "off"]
WithoutReasoning = Literal["allow", "analyse_output", "refuse"]
WebhookEvent = Literal["verdict.clear", "verdict.review_needed", "verdict.boundary_violation",
                       "drift.detected", "agent.paused", "agent.resumed", "agent.killed",
                       "nudge.created", "policy.violation", "webhook.test", "*"]


class Body(BaseModel):
    """A request body: unknown fields and loose types are mistakes worth a 400."""

    model_config = ConfigDict(extra="forbid", strict=True)


class EnforcementBody(Body):
    mode: Mode


class SettingsBody(Body):
    """Any subset of the settings; omitted ones keep their value."""

    aip_enabled: bool | None = None
    aap_enabled: bool | None = None
    nudge_strategy: NudgeStrategy | None = None
    nudge_rate: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    nudge_threshold: Annotated[int, Field(ge=1, le=1000)] | None = None
    #: What ``enforce`` does with a response without analysable reasoning.
    without_reasoning: WithoutReasoning | None = None


class ConscienceValueBody(Body):
    type: Literal["BOUNDARY", "FEAR", "COMMITMENT", "BELIEF", "HOPE"]
    content: Annotated[str, Field(min_length=1, max_length=2000)]
    id: Annotated[str, Field(min_length=1, max_length=128)] | None = None


class ConscienceBody(Body):
    values: Annotated[list[ConscienceValueBody], Field(min_length=1, max_length=100)]


class ContainmentBody(Body):
    reason: Annotated[str, Field(max_length=500)] | None = None
    actor: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    #: ``agent``: this agent alone; ``key``: every agent of its API key, names first used
    #: later included. Omitted: ``kill`` takes the key, ``pause`` the agent, ``resume``
    #: and ``reactivate`` the scope in force.
    scope: Literal["agent", "key"] | None = None


class PolicyBody(Body):
    """``null`` turns auto-containment off."""

    auto_containment_threshold: Annotated[int, Field(ge=2, le=1000)] | None


class WebhookCreateBody(Body):
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    description: Annotated[str, Field(max_length=500)] | None = None
    event_types: Annotated[list[WebhookEvent], Field(min_length=1)] | None = None
    allow_http: bool = False
    enabled: bool = True


class WebhookUpdateBody(Body):
    url: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    description: Annotated[str, Field(max_length=500)] | None = None
    event_types: Annotated[list[WebhookEvent], Field(min_length=1)] | None = None
    allow_http: bool | None = None
    enabled: bool | None = None


# -- response schemas ------------------------------------------------------------------

STRING: dict[str, Any] = {"type": "string"}
INTEGER: dict[str, Any] = {"type": "integer"}
NUMBER: dict[str, Any] = {"type": "number"}
BOOLEAN: dict[str, Any] = {"type": "boolean"}
OBJECT: dict[str, Any] = {"type": "object"}
MILLIS: dict[str, Any] = {"type": "integer", "description": "epoch milliseconds"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "enum" in schema:
        return {**schema, "type": [schema["type"], "null"], "enum": [*schema["enum"], None]}
    return {**schema, "type": [schema["type"], "null"]}


def enum(values: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def obj(properties: dict[str, dict[str, Any]], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object whose properties are all present (``optional`` ones may be missing)."""
    return {"type": "object", "properties": properties,
            "required": [k for k in properties if k not in optional]}


def page(items: dict[str, Any]) -> dict[str, Any]:
    return obj({"items": array(items), "total": INTEGER, "limit": INTEGER,
                "offset": INTEGER})


ERROR = obj({"error": STRING, "type": STRING})

AGENT = obj({
    "agent_id": STRING, "agent_hash": STRING, "name": nullable(STRING),
    "enforcement_mode": enum(MODES), "aip_enabled": BOOLEAN, "aap_enabled": BOOLEAN,
    "nudge_strategy": enum(NUDGE_STRATEGIES), "nudge_rate": NUMBER,
    "nudge_threshold": INTEGER, "containment_status": enum(CONTAINMENT_STATUSES),
    "containment_scope": nullable(enum(CONTAINMENT_SCOPES)),
    "agent_containment_status": enum(CONTAINMENT_STATUSES),
    "key_containment_status": enum(CONTAINMENT_STATUSES), "key_hash": nullable(STRING),
    "containment_reason": nullable(STRING), "containment_changed_at": nullable(MILLIS),
    "auto_containment_threshold": nullable(INTEGER), "created_at": MILLIS,
    "updated_at": MILLIS, "last_seen_at": nullable(MILLIS),
    "without_reasoning": enum(WITHOUT_REASONING)})
ENFORCEMENT = obj({"agent_id": STRING, "mode": enum(MODES)})
SETTINGS = obj({"agent_id": STRING, "aip_enabled": BOOLEAN, "aap_enabled": BOOLEAN,
                "nudge_strategy": enum(NUDGE_STRATEGIES), "nudge_rate": NUMBER,
                "nudge_threshold": INTEGER, "without_reasoning": enum(WITHOUT_REASONING)})
CARD = obj({"agent_id": STRING, "card": OBJECT, "updated_at": MILLIS})
CONSCIENCE_VALUE = obj({"type": enum(CONSCIENCE_TYPES), "content": STRING,
                        "id": nullable(STRING)}, optional=("id",))
CONSCIENCE = obj({"agent_id": STRING, "values": array(CONSCIENCE_VALUE),
                  "is_default": BOOLEAN, "updated_at": nullable(MILLIS)})
CHECKPOINT = obj({
    "id": STRING, "agent_id": STRING, "session_id": STRING, "provider": STRING,
    "model": nullable(STRING), "verdict": STRING, "concerns": array(OBJECT),
    "reasoning_summary": nullable(STRING), "conscience_context": nullable(OBJECT),
    "window_position": nullable(OBJECT), "analysis_metadata": nullable(OBJECT),
    "thinking_block_hash": nullable(STRING), "synthetic": BOOLEAN,
    "synthetic_reason": nullable(STRING), "trace_id": nullable(STRING),
    "output_block_hash": nullable(STRING), "created_at": MILLIS})
SCORE = obj({"agent_id": STRING, "total_checks": INTEGER, "clear_count": INTEGER,
             "review_count": INTEGER, "violation_count": INTEGER, "integrity_ratio": NUMBER,
             "latest_verdict": nullable(STRING), "latest_at": nullable(MILLIS)})
#: An agent of ``GET /v1/agents?include=integrity``: its score and its last verdicts.
AGENT_WITH_INTEGRITY = {**AGENT, "properties": {**AGENT["properties"], "integrity": {
    **SCORE, "properties": {**SCORE["properties"], "recent_verdicts": array(STRING)},
    "required": [*SCORE["required"], "recent_verdicts"]}}}
DRIFT_ALERT = obj({"id": STRING, "agent_id": STRING, "session_id": nullable(STRING),
                   "source": STRING, "severity": nullable(STRING), "alert": OBJECT,
                   "created_at": MILLIS})
TRACE = obj({"id": STRING, "agent_id": STRING, "session_id": nullable(STRING),
             "checkpoint_id": nullable(STRING), "trace": OBJECT,
             "verification": nullable(OBJECT), "verified": nullable(BOOLEAN),
             "created_at": MILLIS})
#: The kinds of timeline entries (``tool``: a tool first seen offered or called;
#: ``policy_violation``: a call a tool policy found fault with).
TIMELINE_KINDS = ("checkpoint", "trace", "nudge", "containment", "tool", "policy_violation")
TIMELINE_ENTRY = obj({"kind": enum(TIMELINE_KINDS),
                      "id": STRING, "created_at": MILLIS, "data": OBJECT})
CONTAINMENT_EVENT = obj({"id": STRING, "agent_id": STRING, "action": STRING,
                         "scope": enum(CONTAINMENT_SCOPES), "key_hash": nullable(STRING),
                         "from_status": STRING, "to_status": STRING, "actor": STRING,
                         "reason": nullable(STRING), "created_at": MILLIS})
CONTAINMENT = obj({"agent_id": STRING, "status": enum(CONTAINMENT_STATUSES),
                   "scope": nullable(enum(CONTAINMENT_SCOPES)),
                   "agent_status": enum(CONTAINMENT_STATUSES),
                   "key_status": enum(CONTAINMENT_STATUSES), "key_hash": nullable(STRING),
                   "reason": nullable(STRING), "changed_at": nullable(MILLIS),
                   "auto_containment_threshold": nullable(INTEGER),
                   "log": array(CONTAINMENT_EVENT)})
CONTAINMENT_CHANGE = obj({"agent_id": STRING, "action": STRING,
                          "scope": enum(CONTAINMENT_SCOPES), "from_status": STRING,
                          "to_status": STRING, "actor": STRING, "reason": nullable(STRING),
                          "key_hash": nullable(STRING), "key_known": BOOLEAN,
                          "agents": INTEGER,
                          "containment_status": enum(CONTAINMENT_STATUSES)})
POLICY = obj({"agent_id": STRING, "auto_containment_threshold": nullable(INTEGER)})
WEBHOOK = obj({"id": STRING, "url": STRING, "description": nullable(STRING),
               "event_types": array(enum(WEBHOOK_EVENTS)), "allow_http": BOOLEAN,
               "enabled": BOOLEAN, "consecutive_failures": INTEGER,
               "disabled_reason": nullable(STRING), "created_at": MILLIS,
               "updated_at": MILLIS})
WEBHOOK_WITH_SECRET = {**WEBHOOK, "properties": {**WEBHOOK["properties"], "secret": STRING},
                       "required": [*WEBHOOK["required"], "secret"]}
DELIVERY = obj({"id": STRING, "endpoint_id": STRING, "event_id": STRING,
                "event_type": STRING, "agent_id": nullable(STRING), "status": STRING,
                "attempts": INTEGER, "next_attempt_at": nullable(MILLIS),
                "last_status_code": nullable(INTEGER), "last_error": nullable(STRING),
                "created_at": MILLIS, "delivered_at": nullable(MILLIS)})
DELETED = obj({"id": STRING, "deleted": BOOLEAN})
OPENAPI = obj({"openapi": STRING, "info": OBJECT, "paths": OBJECT})
ME = obj({"name": STRING, "role": enum(("viewer", "admin", "owner"))})
VERSION = obj({"version": STRING, "build": STRING, "python": STRING, "twisted": STRING})
CONSOLE_CONFIG = obj({"oidc_issuer": nullable(STRING), "oidc_client_id": nullable(STRING)})


# -- tool policies ----------------------------------------------------------------------

POLICY_VERDICTS = ("pass", "warn", "fail")


class PolicyEvaluateBody(Body):
    """A policy document (else the agent's resolved policy) and the tool names to judge."""

    policy: dict[str, Any] | None = None
    agent_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    tools: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=512)]


#: A policy document of schema "1.0", validated by the handler (see docs/policy.md);
#: ``Content-Type: application/yaml`` sends it as YAML.
POLICY_DOCUMENT: dict[str, Any] = {
    "type": "object", "description": "A tool policy, schema 1.0 (docs/policy.md)",
    "required": ["meta", "capability_mappings", "forbidden", "defaults"]}
COVERAGE = obj({"total_card_actions": INTEGER, "mapped_card_actions": array(STRING),
                "unmapped_actions": array(STRING), "coverage_pct": NUMBER})
POLICY_RECORD = obj({
    "id": nullable(STRING), "agent_id": nullable(STRING), "scope": enum(("org", "agent")),
    "source": enum(("file", "stored", "none")), "version": nullable(INTEGER),
    "created_at": nullable(MILLIS), "updated_at": nullable(MILLIS),
    "policy": nullable(OBJECT), "history": array(OBJECT), "warnings": array(STRING)})
RESOLVED_POLICY = obj({
    "agent_id": STRING, "active": BOOLEAN, "mode": nullable(enum(("off", "warn", "enforce"))),
    "policy": nullable(OBJECT), "coverage": nullable(COVERAGE), "warnings": array(STRING)})
POLICY_EVALUATION = obj({
    "verdict": enum(POLICY_VERDICTS), "mode": enum(("off", "warn", "enforce")),
    "violations": array(OBJECT), "warnings": array(OBJECT), "card_gaps": array(OBJECT),
    "coverage": nullable(COVERAGE)})
DELETED_POLICY = obj({"agent_id": STRING, "deleted": BOOLEAN})


# -- attestation (public: docs/attestation.md) --------------------------------------------

class VerifyBody(Body):
    """A certificate to check against this gateway's published keys; ``expected_root``:
    a Merkle root recorded earlier, which the proof must lead to."""

    certificate: dict[str, Any]
    expected_root: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


SIGNING_KEY = obj({"key_id": STRING, "public_key": STRING, "algorithm": enum(("Ed25519",)),
                   "created_at": MILLIS, "is_active": BOOLEAN})
KEYS = obj({"keys": array(SIGNING_KEY)})
PROOF_STEP = obj({"hash": STRING, "position": enum(("left", "right"))})
MERKLE_PROOF = obj({"leaf_hash": STRING, "leaf_index": INTEGER, "root": STRING,
                    "tree_size": INTEGER, "inclusion_proof": array(PROOF_STEP)})
INCLUSION_PROOF = {**MERKLE_PROOF, "properties": {**MERKLE_PROOF["properties"],
                                                  "checkpoint_id": STRING,
                                                  "agent_id": STRING},
                   "required": [*MERKLE_PROOF["required"], "checkpoint_id", "agent_id"]}
CERTIFICATE = obj({
    "@context": STRING, "type": enum(("IntegrityCertificate",)), "version": STRING,
    "certificate_id": STRING, "issued_at": STRING,
    "subject": obj({"checkpoint_id": STRING, "agent_id": STRING, "session_id": STRING,
                    "card_id": STRING}),
    "claims": OBJECT, "input_commitments": OBJECT,
    "proofs": obj({"signature": obj({"algorithm": STRING, "key_id": STRING, "value": STRING,
                                     "signed_payload": STRING}),
                   "chain": obj({"chain_hash": STRING, "prev_chain_hash": nullable(STRING),
                                 "position": INTEGER}),
                   "merkle": nullable(OBJECT), "verdict_derivation": {"type": "null"}}),
    "verification": obj({"keys_url": STRING, "certificate_url": STRING,
                         "verify_url": STRING})})
MERKLE_ROOT = obj({"agent_id": STRING, "merkle_root": nullable(STRING),
                   "tree_depth": INTEGER, "leaf_count": INTEGER,
                   "last_updated": nullable(STRING)})
CHECK = nullable(obj({"valid": BOOLEAN, "details": STRING}))
VERIFICATION = obj({"valid": BOOLEAN,
                    "checks": obj({"signature": CHECK, "chain": CHECK, "merkle": CHECK}),
                    "details": STRING})
