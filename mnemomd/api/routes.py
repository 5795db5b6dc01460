"""The management API's route table: the single source for dispatch and OpenAPI.

Each ``Route`` names its method, path template, handler, required role, query
parameters, body model and response schema. The server matches requests against this
table and ``openapi.py`` describes exactly this table, so the two cannot drift apart.
Parsing of paths, queries and bodies lives here as pure functions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from pydantic import BaseModel, ValidationError

from mnemomd.api import schemas as s

#: Largest management API request body (cards are the biggest documents).
MAX_BODY_BYTES = 1024 * 1024
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class ApiError(Exception):
    """A request the API answers with a JSON error instead of a result."""

    def __init__(self, status: int, message: str, error_type: str = "invalid_request_error",
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.headers = headers


@dataclass(frozen=True)
class QueryParam:
    name: str
    description: str
    kind: str = "string"  # string | integer
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    default: Any = None
    max_length: int = 256

    def parse(self, raw: str) -> Any:
        if self.kind == "integer":
            if not re.fullmatch(r"-?[0-9]{1,9}", raw):
                raise ApiError(400, f"{self.name} must be an integer")
            value = int(raw)
            if self.minimum is not None and value < self.minimum or \
                    self.maximum is not None and value > self.maximum:
                raise ApiError(400, f"{self.name} must be between {self.minimum} and "
                                    f"{self.maximum}" if self.maximum is not None
                               else f"{self.name} must be at least {self.minimum}")
            return value
        if self.choices and raw not in self.choices:
            raise ApiError(400, f"{self.name} must be one of {', '.join(self.choices)}")
        if not raw or len(raw) > self.max_length:
            raise ApiError(400, f"{self.name} must be 1 to {self.max_length} characters")
        if "\x00" in raw:
            raise ApiError(400, f"{self.name} must not contain NUL characters")
        return raw

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": self.kind}
        if self.choices:
            schema["enum"] = list(self.choices)
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.default is not None:
            schema["default"] = self.default
        return schema


PAGINATION = (
    QueryParam("limit", "items per page", "integer", minimum=1, maximum=MAX_LIMIT,
               default=DEFAULT_LIMIT),
    QueryParam("offset", "items to skip", "integer", minimum=0, maximum=10**9, default=0),
)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: str
    role: str
    summary: str
    tag: str
    response: dict[str, Any]
    status: int = 200
    body: type[BaseModel] | None = None
    #: A body validated by the handler itself (the alignment card, by the AAP model).
    body_schema: dict[str, Any] | None = None
    #: The body may also be YAML (``Content-Type: application/yaml``): the handler gets
    #: it as a ``RawDocument`` either way.
    accepts_yaml: bool = False
    query: tuple[QueryParam, ...] = ()
    errors: tuple[int, ...] = ()
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path)
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))

    @property
    def operation_id(self) -> str:
        return self.handler

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)

    @property
    def takes_body(self) -> bool:
        return self.body is not None or self.body_schema is not None

    @property
    def statuses(self) -> tuple[int, ...]:
        """Every status this operation can answer with, the success first."""
        common = (400, 403) if self.role == PUBLIC else (400, 401, 403)
        found = (404,) if self.path_params else ()
        body = (413,) if self.takes_body else ()
        return tuple(dict.fromkeys((self.status, *common, *found, *body, *self.errors)))


#: The role of operations anyone may call, without a token (the attestation endpoints).
PUBLIC = "public"
AGENT = "/v1/agents/{agent_id}"
WEBHOOK = "/v1/webhooks/{webhook_id}"
CONTAINMENT_ACTION_HELP = {
    "pause": "Pause the agent (scope agent, the default) or every agent of its API key "
             "(scope key): their calls get 403 until resumed",
    "resume": "Resume a paused agent or key (default scope: the one in force)",
    "kill": "Kill every agent of the agent's API key, names first used later included "
            "(scope key, the default), or the agent alone (scope agent): their calls get "
            "403 until reactivated",
    "reactivate": "Reactivate a killed or paused agent or key (default scope: the one in "
                  "force)",
}

#: Pausing and resuming are an admin's; killing and reactivating an owner's (Mnemom's RBAC).
CONTAINMENT_ACTION_ROLE = {"pause": "admin", "resume": "admin", "kill": "owner",
                           "reactivate": "owner"}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/openapi.json", "openapi", "viewer", "This document", "meta", s.OPENAPI),
    Route("GET", "/v1/me", "get_me", "viewer",
          "Who the token names and its role (the console shows the controls it allows)",
          "meta", s.ME),
    Route("GET", "/v1/version", "get_version", "viewer",
          "The running version and build, as `mnemomd version` names them", "meta",
          s.VERSION),
    # Public: the console reads it before anyone has signed in.
    Route("GET", "/v1/console/config", "get_console_config", PUBLIC,
          "How the web console signs in: the identity provider's issuer and the console's "
          "public client id (both null without OIDC sign-in)", "meta", s.CONSOLE_CONFIG),
    Route("GET", "/v1/agents", "list_agents", "viewer", "List agents, newest first", "agents",
          s.page(s.AGENT_WITH_INTEGRITY),
          query=(*PAGINATION,
                 QueryParam("containment_status", "only agents in this state",
                            choices=s.CONTAINMENT_STATUSES),
                 QueryParam("enforcement_mode", "only agents in this mode", choices=s.MODES),
                 QueryParam("include", "integrity: add each agent's integrity score and its "
                                       "last 20 verdicts (oldest first)",
                            choices=("integrity",)))),
    Route("GET", AGENT, "get_agent", "viewer", "One agent", "agents", s.AGENT),
    Route("GET", f"{AGENT}/enforcement", "get_enforcement", "viewer",
          "The agent's enforcement mode", "enforcement", s.ENFORCEMENT),
    Route("PUT", f"{AGENT}/enforcement", "put_enforcement", "admin",
          "Set the enforcement mode; applies to the agent's next call", "enforcement",
          s.ENFORCEMENT, body=s.EnforcementBody),
    Route("GET", f"{AGENT}/settings", "get_settings", "viewer",
          "AIP, AAP, nudge and without-reasoning settings", "enforcement", s.SETTINGS),
    Route("PUT", f"{AGENT}/settings", "put_settings", "admin",
          "Change any subset of the settings", "enforcement", s.SETTINGS,
          body=s.SettingsBody, errors=(409,)),
    Route("GET", f"{AGENT}/card", "get_card", "viewer", "The agent's AAP alignment card",
          "card", s.CARD),
    Route("PUT", f"{AGENT}/card", "put_card", "admin",
          "Replace the alignment card (validated by the AAP model)", "card", s.CARD,
          body_schema={"$ref": "#/components/schemas/AlignmentCard"}),
    Route("GET", f"{AGENT}/conscience", "get_conscience", "viewer",
          "The agent's conscience values", "conscience", s.CONSCIENCE),
    Route("PUT", f"{AGENT}/conscience", "put_conscience", "admin",
          "Replace the conscience values", "conscience", s.CONSCIENCE, body=s.ConscienceBody),
    Route("DELETE", f"{AGENT}/conscience", "reset_conscience", "admin",
          "Reset the conscience values to the AIP defaults", "conscience", s.CONSCIENCE),
    Route("GET", f"{AGENT}/checkpoints", "list_checkpoints", "viewer",
          "Integrity checkpoints, newest first", "checkpoints", s.page(s.CHECKPOINT),
          query=(*PAGINATION,
                 QueryParam("verdict", "only this verdict", choices=s.VERDICTS),
                 QueryParam("session_id", "only this session", max_length=128))),
    Route("GET", "/v1/checkpoints/{checkpoint_id}", "get_checkpoint", "viewer",
          "One integrity checkpoint", "checkpoints", s.CHECKPOINT),
    Route("GET", f"{AGENT}/integrity", "get_integrity", "viewer",
          "Integrity score: checks by verdict and the clear ratio", "checkpoints", s.SCORE),
    Route("GET", f"{AGENT}/drift", "list_drift", "viewer", "Drift alerts, newest first",
          "checkpoints", s.page(s.DRIFT_ALERT), query=PAGINATION),
    Route("GET", f"{AGENT}/traces", "list_traces", "viewer", "AP-traces, newest first",
          "traces", s.page(s.TRACE), query=PAGINATION),
    Route("GET", "/v1/traces/{trace_id}", "get_trace", "viewer", "One AP-trace", "traces",
          s.TRACE),
    Route("GET", f"{AGENT}/timeline", "get_timeline", "viewer",
          "Checkpoints, traces, nudges, containment changes, tools first seen and tool "
          "policy violations, newest first", "agents", s.page(s.TIMELINE_ENTRY),
          query=(*PAGINATION, QueryParam("kind", "only one kind of entry",
                                         choices=s.TIMELINE_KINDS))),
    Route("GET", f"{AGENT}/containment", "get_containment", "viewer",
          "Containment state and its log", "containment", s.CONTAINMENT),
    *(Route("POST", f"{AGENT}/containment/{action}", f"containment_{action}",
            CONTAINMENT_ACTION_ROLE[action], help_text, "containment", s.CONTAINMENT_CHANGE,
            body=s.ContainmentBody, errors=(409,))
      for action, help_text in CONTAINMENT_ACTION_HELP.items()),
    Route("PUT", f"{AGENT}/containment/policy", "put_policy", "admin",
          "Auto-containment: pause after N consecutive boundary violations", "containment",
          s.POLICY, body=s.PolicyBody),
    Route("GET", "/v1/policy", "get_org_policy", "viewer",
          "The deployment-wide tool policy (from MNEMOM_POLICY_FILE, or stored)", "policies",
          s.POLICY_RECORD),
    Route("PUT", "/v1/policy", "put_org_policy", "owner",
          "Store the deployment-wide tool policy (JSON, or YAML with Content-Type: "
          "application/yaml); 409 while MNEMOM_POLICY_FILE is set", "policies",
          s.POLICY_RECORD, body_schema=s.POLICY_DOCUMENT, accepts_yaml=True, errors=(409,)),
    Route("POST", "/v1/policy/evaluate", "evaluate_policy", "owner",
          "Evaluate tool names against a policy, or an agent's resolved policy", "policies",
          s.POLICY_EVALUATION, body=s.PolicyEvaluateBody),
    Route("GET", f"{AGENT}/policy", "get_agent_policy", "viewer",
          "The agent's own tool policy and its change history", "policies", s.POLICY_RECORD),
    Route("PUT", f"{AGENT}/policy", "put_agent_policy", "owner",
          "Store the agent's tool policy (JSON, or YAML with Content-Type: "
          "application/yaml)", "policies", s.POLICY_RECORD, body_schema=s.POLICY_DOCUMENT,
          accepts_yaml=True),
    Route("DELETE", f"{AGENT}/policy", "delete_agent_policy", "owner",
          "Remove the agent's tool policy (the deployment-wide one still applies)",
          "policies", s.DELETED_POLICY),
    Route("GET", f"{AGENT}/policy/resolved", "get_resolved_policy", "viewer",
          "The policy the agent is held to (deployment-wide merged with its own), its mode "
          "now and its coverage of the agent's card", "policies", s.RESOLVED_POLICY),
    # Public, as Mnemom's: anyone may check a certificate (docs/attestation.md).
    Route("GET", "/v1/keys", "list_keys", PUBLIC,
          "Every public key that signed a stored checkpoint (old ones stay, retired)",
          "attestation", s.KEYS),
    Route("GET", "/v1/checkpoints/{checkpoint_id}/certificate", "get_certificate", PUBLIC,
          "The checkpoint's IntegrityCertificate (AIP certificates 1.0.0)", "attestation",
          s.CERTIFICATE),
    Route("GET", "/v1/checkpoints/{checkpoint_id}/inclusion-proof", "get_inclusion_proof",
          PUBLIC, "The checkpoint's Merkle inclusion proof in its agent's current tree",
          "attestation", s.INCLUSION_PROOF),
    Route("GET", f"{AGENT}/merkle-root", "get_merkle_root", PUBLIC,
          "The root of the agent's Merkle tree of checkpoints", "attestation",
          s.MERKLE_ROOT),
    Route("POST", "/v1/verify", "verify_certificate", PUBLIC,
          "Verify a certificate against the published keys", "attestation",
          s.VERIFICATION, body=s.VerifyBody),
    Route("POST", "/v1/webhooks", "create_webhook", "admin",
          "Register an endpoint; the answer shows its secret, once", "webhooks",
          s.WEBHOOK_WITH_SECRET, status=201, body=s.WebhookCreateBody),
    Route("GET", "/v1/webhooks", "list_webhooks", "viewer",
          "Webhook endpoints, in the order they were created",
          "webhooks", s.page(s.WEBHOOK), query=PAGINATION),
    Route("GET", WEBHOOK, "get_webhook", "viewer", "One webhook endpoint", "webhooks",
          s.WEBHOOK),
    Route("PATCH", WEBHOOK, "update_webhook", "admin",
          "Change an endpoint; enabling it again clears its failure count", "webhooks",
          s.WEBHOOK, body=s.WebhookUpdateBody),
    Route("DELETE", WEBHOOK, "delete_webhook", "admin",
          "Delete an endpoint and its delivery history", "webhooks", s.DELETED),
    Route("POST", f"{WEBHOOK}/rotate-secret", "rotate_webhook_secret", "admin",
          "Replace the signing secret; the answer shows the new one, once", "webhooks",
          s.WEBHOOK_WITH_SECRET),
    Route("POST", f"{WEBHOOK}/test", "test_webhook", "admin",
          "Queue a webhook.test event for this endpoint", "webhooks", s.DELIVERY,
          status=202, errors=(409,)),
    Route("GET", f"{WEBHOOK}/deliveries", "list_deliveries", "viewer",
          "Delivery history, newest first", "webhooks", s.page(s.DELIVERY),
          query=PAGINATION),
    Route("POST", f"{WEBHOOK}/deliveries/{{delivery_id}}/redeliver", "redeliver", "admin",
          "Send a delivery's event again, as a new delivery", "webhooks", s.DELIVERY,
          status=202),
)


def match(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route for a request and its path parameters; ApiError 404 or 405 if none."""
    allowed = []
    for route in ROUTES:
        found = route.pattern.match(path)
        if found is None:
            continue
        if route.method == method:
            params = {k: unquote(v) for k, v in found.groupdict().items()}
            for name, value in params.items():
                if "/" in value or not value.strip() or len(value) > 256:
                    raise ApiError(404, f"Not found: invalid {name}", "not_found")
            return route, params
        allowed.append(route.method)
    if allowed:
        raise ApiError(405, f"Method {method} not allowed", "method_not_allowed",
                       ((b"allow", ", ".join(allowed).encode()),))
    raise ApiError(404, "Not found", "not_found")


def match_public(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The public route a request is for, or None (then ``match`` after authentication);
    an invalid path parameter is left for ``match`` to refuse."""
    for route in ROUTES:
        if route.role == PUBLIC and route.method == method and route.pattern.match(path):
            try:
                return match(method, path)
            except ApiError:
                return None
    return None


def parse_query(route: Route, query: bytes) -> dict[str, Any]:
    """Declared query parameters with their defaults; anything else is a 400."""
    try:
        pairs = parse_qsl(query.removeprefix(b"?").decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise ApiError(400, "query string is not UTF-8") from None
    declared = {p.name: p for p in route.query}
    values: dict[str, Any] = {p.name: p.default for p in route.query}
    seen: set[str] = set()
    for name, raw in pairs:
        param = declared.get(name)
        if param is None:
            raise ApiError(400, f"unknown query parameter {name!r}")
        if name in seen:
            raise ApiError(400, f"query parameter {name} given twice")
        seen.add(name)
        values[name] = param.parse(raw)
    return values


def describe_validation_error(error: ValidationError, limit: int = 3) -> str:
    """A short, human message naming the fields at fault."""
    parts = []
    for item in error.errors()[:limit]:
        where = ".".join(str(p) for p in item.get("loc", ())) or "body"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    more = len(error.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more problem(s)")
    return "; ".join(parts)


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """A JSON object, or ApiError 400 saying what is wrong with it."""
    if not raw.strip():
        raise ApiError(400, "request body must be a JSON object")
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8") from None
    except ValueError:
        raise ApiError(400, "request body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    if not isinstance(value, dict):
        raise ApiError(400, "request body must be a JSON object")
    if contains_nul(value):
        # No store keeps them (PostgreSQL text cannot), and no field needs one.
        raise ApiError(400, "request body must not contain NUL characters")
    return value


def contains_nul(value: Any) -> bool:
    """Whether a NUL character appears in any key or string of a parsed JSON document."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


@dataclass(frozen=True)
class RawDocument:
    """A body the handler parses itself: its bytes and ``json`` or ``yaml``."""

    raw: bytes
    media: str


YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def parse_body(route: Route, raw: bytes, content_type: str = "") -> Any:
    """The validated body of a request: a model instance, a raw object, or None."""
    if not route.takes_body:
        if raw.strip():
            raise ApiError(400, "this operation takes no request body")
        return None
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body exceeds {MAX_BODY_BYTES} bytes",
                       "request_too_large")
    if route.accepts_yaml:
        media = content_type.split(";")[0].strip().lower()
        if not raw.strip():
            raise ApiError(400, "request body must be a policy document")
        if b"\x00" in raw:
            raise ApiError(400, "request body must not contain NUL characters")
        return RawDocument(raw, "yaml" if media in YAML_TYPES else "json")
    if route.body is None:
        return parse_json_body(raw)
    if route.body is s.ContainmentBody and not raw.strip():
        return s.ContainmentBody()
    document = parse_json_body(raw)
    try:
        return route.body.model_validate(document)
    except ValidationError as e:
        raise ApiError(400, describe_validation_error(e)) from None
