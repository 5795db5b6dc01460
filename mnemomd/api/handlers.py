"""What each management API operation does: thin steps over the stores.

A handler takes an ``ApiCall`` and returns ``(status, payload)`` or a Deferred of it;
problems are raised as ``ApiError``. Every change to what the gateway acts on drops the
agent's KV cache entries at once (replicas sharing Redis see it on their next call) and
bumps ``agents.updated_at`` (replicas on their own cache drop theirs within seconds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aap.schemas.alignment_card import AlignmentCard
from pydantic import ValidationError
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import IReactorTime

from mnemomd.agents.identity import effective_containment
from mnemomd.agents.policies import PolicyBook
from mnemomd.api import schemas as s
from mnemomd.api.attestation import AttestationHandlers
from mnemomd.api.auth import Principal
from mnemomd.api.policies import PolicyHandlers
from mnemomd.api.queries import ManagementStore, Page, new_card_id
from mnemomd.api.routes import ApiError, Route, describe_validation_error
from mnemomd.enforcement.store import EnforcementError, EnforcementStore
from mnemomd.integrity.ledger import AttestationLedger
from mnemomd.ops.build import version_info
from mnemomd.storage.traces import TraceStore
from mnemomd.webhooks.delivery import check_url, new_secret
from mnemomd.webhooks.store import WebhookStore

#: What an operation returns: ``(status, payload)``, now or later.
HandlerResult = tuple[int, dict[str, Any]] | Deferred[tuple[int, dict[str, Any]]]

SETTINGS_FIELDS = ("aip_enabled", "aap_enabled", "nudge_strategy", "nudge_rate",
                   "nudge_threshold", "without_reasoning")


@dataclasses.dataclass(frozen=True)
class ApiCall:
    route: Route
    params: dict[str, str]
    query: dict[str, Any]
    body: Any
    principal: Principal
    now_ms: int


def page_payload(page: Page, query: dict[str, Any]) -> dict[str, Any]:
    return {"items": page.items, "total": page.total, "limit": query["limit"],
            "offset": query["offset"]}


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"No {what} {ident}", "not_found")


def validate_card(agent_id: str, document: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """An alignment card the AAP model accepts, with the agent's id and a card id.

    ``agent_id`` may be omitted but not name another agent; ``card_id`` and
    ``issued_at`` are filled in when missing.
    """
    if document.get("agent_id", agent_id) != agent_id:
        raise ApiError(400, f"card.agent_id must be {agent_id}")
    filled = {"card_id": new_card_id(),
              "issued_at": datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(),
              **document, "agent_id": agent_id}
    try:
        card = AlignmentCard.model_validate(filled)
    except ValidationError as e:
        raise ApiError(400, f"invalid alignment card: {describe_validation_error(e)}") from None
    return card.model_dump(mode="json", exclude_none=True)


def settings_view(agent: dict[str, Any]) -> dict[str, Any]:
    return {"agent_id": agent["agent_id"], **{k: agent[k] for k in SETTINGS_FIELDS}}


def containment_actor(call: ApiCall) -> str:
    """Who the log names: always the authenticated caller (a token's subject, never the
    token). A body ``actor`` naming someone else is kept beside it, as whom the caller
    acted for, so no caller can write another name in its place."""
    body = call.body
    caller = call.principal.name
    if body is None or not body.actor or body.actor == caller:
        return caller
    return f"{caller} for {body.actor}"


class ApiHandlers(PolicyHandlers, AttestationHandlers):
    """One method per operation of the route table (``Route.handler`` names it)."""

    def __init__(self, clock: IReactorTime, store: ManagementStore,
                 enforcement: EnforcementStore, webhooks: WebhookStore, traces: TraceStore,
                 invalidate_agent: Callable[[str, str], Deferred[list[None]]],
                 events_queued: Callable[[], None],
                 openapi: Callable[[], dict[str, Any]],
                 output_analysis: bool = True, policies: PolicyBook | None = None,
                 attestation: AttestationLedger | None = None,
                 console_config: dict[str, str | None] | None = None) -> None:
        self._clock = clock
        #: Read once, while the service is built (a frozen build's BUILD_INFO is a file).
        self._version = version_info()
        #: What the console needs before sign-in: the OIDC issuer and its client id.
        self._console_config = console_config or {"oidc_issuer": None,
                                                  "oidc_client_id": None}
        #: The attestation record (``integrity.ledger``), for the public operations.
        self._attestation = attestation
        #: Tool policies (``agents.policies.PolicyBook``).
        self._policy_book = policies
        #: Whether the analysis backend may be sent output (``analyse_output``).
        self._output_analysis = output_analysis
        self._store = store
        self._enforcement = enforcement
        self._webhooks = webhooks
        self._traces = traces
        #: Tells the webhook dispatcher that deliveries were queued (send them now).
        self._events_queued = events_queued
        self._invalidate_agent = invalidate_agent
        self._openapi = openapi

    def dispatch(self, call: ApiCall) -> HandlerResult:
        handler: Callable[[ApiCall], HandlerResult] = getattr(self, call.route.handler)
        return handler(call)

    def openapi(self, call: ApiCall) -> tuple[int, dict[str, Any]]:
        return 200, self._openapi()

    def get_me(self, call: ApiCall) -> tuple[int, dict[str, Any]]:
        return 200, {"name": call.principal.name, "role": call.principal.role}

    def get_version(self, call: ApiCall) -> tuple[int, dict[str, Any]]:
        return 200, dict(self._version)

    def get_console_config(self, call: ApiCall) -> tuple[int, dict[str, Any]]:
        return 200, dict(self._console_config)

    # -- agents -----------------------------------------------------------------------

    @inlineCallbacks
    def _agent(self, agent_id: str) -> Any:
        agent = yield self._store.agent(agent_id)
        if agent is None:
            raise not_found("agent", agent_id)
        return agent

    @inlineCallbacks
    def list_agents(self, call: ApiCall) -> Any:
        q = call.query
        result = yield self._store.list_agents(q["limit"], q["offset"],
                                               q["containment_status"], q["enforcement_mode"])
        if q["include"] == "integrity":
            scores = yield self._store.integrity_scores([a["agent_id"] for a in result.items])
            for agent in result.items:
                agent["integrity"] = scores[agent["agent_id"]]
        return 200, page_payload(result, q)

    @inlineCallbacks
    def get_agent(self, call: ApiCall) -> Any:
        agent = yield self._agent(call.params["agent_id"])
        return 200, agent

    @inlineCallbacks
    def get_enforcement(self, call: ApiCall) -> Any:
        agent = yield self._agent(call.params["agent_id"])
        return 200, {"agent_id": agent["agent_id"], "mode": agent["enforcement_mode"]}

    @inlineCallbacks
    def _change_settings(self, agent_id: str, changes: dict[str, Any], now_ms: int) -> Any:
        yield self._agent(agent_id)
        try:
            agent = yield self._enforcement.update_settings(agent_id, changes, now_ms)
        except EnforcementError as e:
            raise ApiError(400, str(e)) from None
        yield self._invalidate_agent(agent.agent_hash, agent_id)
        fresh = yield self._agent(agent_id)
        return fresh

    @inlineCallbacks
    def put_enforcement(self, call: ApiCall) -> Any:
        agent = yield self._change_settings(call.params["agent_id"],
                                            {"enforcement_mode": call.body.mode}, call.now_ms)
        return 200, {"agent_id": agent["agent_id"], "mode": agent["enforcement_mode"]}

    @inlineCallbacks
    def get_settings(self, call: ApiCall) -> Any:
        agent = yield self._agent(call.params["agent_id"])
        return 200, settings_view(agent)

    @inlineCallbacks
    def put_settings(self, call: ApiCall) -> Any:
        changes = call.body.model_dump(exclude_none=True)
        if not changes:
            raise ApiError(400, f"give at least one of {', '.join(SETTINGS_FIELDS)}")
        if changes.get("without_reasoning") == "analyse_output" and not self._output_analysis:
            # The hybrid backend is promised the reasoning only, never the response.
            raise ApiError(409, "without_reasoning analyse_output needs an analysis backend "
                                "that may receive the response; this one may not: use refuse",
                           "conflict")
        agent = yield self._change_settings(call.params["agent_id"], changes, call.now_ms)
        return 200, settings_view(agent)

    # -- card and conscience ----------------------------------------------------------

    @inlineCallbacks
    def get_card(self, call: ApiCall) -> Any:
        agent_id = call.params["agent_id"]
        yield self._agent(agent_id)
        stored = yield self._store.card(agent_id)
        if stored is None:
            raise not_found("alignment card for agent", agent_id)
        return 200, {"agent_id": agent_id, **stored}

    @inlineCallbacks
    def put_card(self, call: ApiCall) -> Any:
        agent_id = call.params["agent_id"]
        agent = yield self._agent(agent_id)
        card = validate_card(agent_id, call.body, call.now_ms)
        yield self._store.replace_card(agent_id, card, call.now_ms)
        yield self._invalidate_agent(agent["agent_hash"], agent_id)
        return 200, {"agent_id": agent_id, "card": card, "updated_at": call.now_ms}

    @inlineCallbacks
    def get_conscience(self, call: ApiCall) -> Any:
        agent_id = call.params["agent_id"]
        stored = yield self._store.conscience(agent_id)
        if stored is None:
            raise not_found("agent", agent_id)
        return 200, {"agent_id": agent_id, **stored}

    @inlineCallbacks
    def _replace_conscience(self, call: ApiCall, values: list[dict[str, Any]] | None) -> Any:
        agent_id = call.params["agent_id"]
        agent = yield self._agent(agent_id)
        yield self._store.replace_conscience(agent_id, values, call.now_ms)
        yield self._invalidate_agent(agent["agent_hash"], agent_id)
        stored = yield self._store.conscience(agent_id)
        return 200, {"agent_id": agent_id, **stored}

    def put_conscience(self, call: ApiCall) -> Deferred[Any]:
        values = [v.model_dump(exclude_none=True) for v in call.body.values]
        return self._replace_conscience(call, values)

    def reset_conscience(self, call: ApiCall) -> Deferred[Any]:
        return self._replace_conscience(call, None)

    # -- checkpoints, integrity, drift, traces, timeline ------------------------------

    @inlineCallbacks
    def list_checkpoints(self, call: ApiCall) -> Any:
        agent_id, q = call.params["agent_id"], call.query
        yield self._agent(agent_id)
        result = yield self._store.checkpoints(agent_id, q["limit"], q["offset"], q["verdict"],
                                               q["session_id"])
        return 200, page_payload(result, q)

    @inlineCallbacks
    def get_checkpoint(self, call: ApiCall) -> Any:
        checkpoint = yield self._store.checkpoint(call.params["checkpoint_id"])
        if checkpoint is None:
            raise not_found("checkpoint", call.params["checkpoint_id"])
        return 200, checkpoint

    @inlineCallbacks
    def get_integrity(self, call: ApiCall) -> Any:
        agent_id = call.params["agent_id"]
        yield self._agent(agent_id)
        score = yield self._store.integrity_score(agent_id)
        return 200, score

    @inlineCallbacks
    def list_drift(self, call: ApiCall) -> Any:
        agent_id, q = call.params["agent_id"], call.query
        yield self._agent(agent_id)
        result = yield self._store.drift_alerts(agent_id, q["limit"], q["offset"])
        return 200, page_payload(result, q)

    @inlineCallbacks
    def list_traces(self, call: ApiCall) -> Any:
        agent_id, q = call.params["agent_id"], call.query
        yield self._agent(agent_id)
        traces, total = yield self._traces.list_for_agent(agent_id, q["limit"], q["offset"])
        return 200, page_payload(Page([t.public() for t in traces], total), q)

    @inlineCallbacks
    def get_trace(self, call: ApiCall) -> Any:
        trace = yield self._traces.get(call.params["trace_id"])
        if trace is None:
            raise not_found("trace", call.params["trace_id"])
        return 200, trace.public()

    @inlineCallbacks
    def get_timeline(self, call: ApiCall) -> Any:
        agent_id, q = call.params["agent_id"], call.query
        yield self._agent(agent_id)
        kinds = (q["kind"],) if q["kind"] else s.TIMELINE_KINDS
        result = yield self._store.timeline(agent_id, q["limit"], q["offset"], kinds)
        return 200, page_payload(result, q)

    # -- containment ------------------------------------------------------------------

    @inlineCallbacks
    def get_containment(self, call: ApiCall) -> Any:
        agent = yield self._agent(call.params["agent_id"])
        log = yield self._store.containment_log(agent["agent_id"], agent["key_hash"], 100, 0)
        return 200, {"agent_id": agent["agent_id"], "status": agent["containment_status"],
                     "scope": agent["containment_scope"],
                     "agent_status": agent["agent_containment_status"],
                     "key_status": agent["key_containment_status"],
                     "key_hash": agent["key_hash"],
                     "reason": agent["containment_reason"],
                     "changed_at": agent["containment_changed_at"],
                     "auto_containment_threshold": agent["auto_containment_threshold"],
                     "log": log.items}

    @inlineCallbacks
    def _contain(self, call: ApiCall, action: str) -> Any:
        agent_id = call.params["agent_id"]
        yield self._agent(agent_id)
        actor = containment_actor(call)
        try:
            change = yield self._enforcement.contain(agent_id, action, actor, call.body.reason,
                                                     call.now_ms, call.body.scope)
        except EnforcementError as e:
            raise ApiError(409, str(e), "conflict") from None
        # Every agent the change holds or frees, on every replica sharing the KV store
        # (the others notice within a poll interval).
        yield invalidate_in_batches(self._invalidate_agent, change.agents)
        self._events_queued()  # agent.paused / resumed / killed
        status, _ = effective_containment(change.agent)
        return 200, {"agent_id": agent_id, "action": action, "scope": change.scope,
                     "from_status": change.from_status, "to_status": change.to_status,
                     "actor": actor, "reason": change.reason, "key_hash": change.key_hash,
                     "key_known": change.key_known, "agents": len(change.agents),
                     "containment_status": status}

    def containment_pause(self, call: ApiCall) -> Deferred[Any]:
        return self._contain(call, "pause")

    def containment_resume(self, call: ApiCall) -> Deferred[Any]:
        return self._contain(call, "resume")

    def containment_kill(self, call: ApiCall) -> Deferred[Any]:
        return self._contain(call, "kill")

    def containment_reactivate(self, call: ApiCall) -> Deferred[Any]:
        return self._contain(call, "reactivate")

    @inlineCallbacks
    def put_policy(self, call: ApiCall) -> Any:
        threshold = call.body.auto_containment_threshold
        agent = yield self._change_settings(call.params["agent_id"],
                                            {"auto_containment_threshold": threshold},
                                            call.now_ms)
        return 200, {"agent_id": agent["agent_id"],
                     "auto_containment_threshold": agent["auto_containment_threshold"]}

    # -- webhooks ---------------------------------------------------------------------

    @inlineCallbacks
    def create_webhook(self, call: ApiCall) -> Any:
        body = call.body
        check_webhook_url(body.url, body.allow_http)
        events = list(dict.fromkeys(body.event_types or s.DEFAULT_WEBHOOK_EVENTS))
        secret = new_secret()
        endpoint = yield self._webhooks.create_endpoint(
            body.url, events, secret, call.now_ms, body.description, body.allow_http)
        if not body.enabled:
            endpoint = yield self._webhooks.update_endpoint(endpoint.id, {"enabled": False},
                                                            call.now_ms)
        return 201, {**endpoint.public(), "secret": secret}

    @inlineCallbacks
    def list_webhooks(self, call: ApiCall) -> Any:
        endpoints, total = yield self._webhooks.endpoints(call.query["limit"],
                                                          call.query["offset"])
        return 200, page_payload(Page([e.public() for e in endpoints], total), call.query)

    @inlineCallbacks
    def _endpoint(self, webhook_id: str) -> Any:
        endpoint = yield self._webhooks.endpoint(webhook_id)
        if endpoint is None:
            raise not_found("webhook endpoint", webhook_id)
        return endpoint

    @inlineCallbacks
    def get_webhook(self, call: ApiCall) -> Any:
        endpoint = yield self._endpoint(call.params["webhook_id"])
        return 200, endpoint.public()

    @inlineCallbacks
    def update_webhook(self, call: ApiCall) -> Any:
        webhook_id = call.params["webhook_id"]
        current = yield self._endpoint(webhook_id)
        changes = call.body.model_dump(exclude_unset=True)
        for name in ("url", "event_types", "allow_http", "enabled"):
            if name in changes and changes[name] is None:
                raise ApiError(400, f"{name} cannot be null")
        if not changes:
            raise ApiError(400, "give at least one field to change")
        check_webhook_url(changes.get("url", current.url),
                          changes.get("allow_http", current.allow_http))
        if "event_types" in changes:
            changes["event_types"] = list(dict.fromkeys(changes["event_types"]))
        endpoint = yield self._webhooks.update_endpoint(webhook_id, changes, call.now_ms)
        if endpoint is None:
            raise not_found("webhook endpoint", webhook_id)
        return 200, endpoint.public()

    @inlineCallbacks
    def delete_webhook(self, call: ApiCall) -> Any:
        webhook_id = call.params["webhook_id"]
        deleted = yield self._webhooks.delete_endpoint(webhook_id)
        if not deleted:
            raise not_found("webhook endpoint", webhook_id)
        return 200, {"id": webhook_id, "deleted": True}

    @inlineCallbacks
    def rotate_webhook_secret(self, call: ApiCall) -> Any:
        secret = new_secret()
        endpoint = yield self._webhooks.rotate_secret(call.params["webhook_id"], secret,
                                                      call.now_ms)
        if endpoint is None:
            raise not_found("webhook endpoint", call.params["webhook_id"])
        return 200, {**endpoint.public(), "secret": secret}

    @inlineCallbacks
    def _queued(self, delivery_id: str) -> Any:
        delivery = yield self._webhooks.delivery(delivery_id)
        self._events_queued()
        return 202, delivery.public()

    @inlineCallbacks
    def test_webhook(self, call: ApiCall) -> Any:
        """A ``webhook.test`` event for this endpoint alone, whatever it subscribes to."""
        endpoint = yield self._endpoint(call.params["webhook_id"])
        if not endpoint.enabled:
            raise ApiError(409, f"webhook endpoint {endpoint.id} is disabled; enable it first",
                           "conflict")
        queued = yield self._webhooks.emit("webhook.test", None,
                                           {"message": "Test event from mnemomd",
                                            "endpoint_id": endpoint.id},
                                           call.now_ms, endpoint_id=endpoint.id)
        if not queued:  # disabled between the check above and the emit
            raise ApiError(409, f"webhook endpoint {endpoint.id} is disabled; enable it first",
                           "conflict")
        result = yield self._queued(queued[0])
        return result

    @inlineCallbacks
    def list_deliveries(self, call: ApiCall) -> Any:
        q = call.query
        yield self._endpoint(call.params["webhook_id"])
        deliveries, total = yield self._webhooks.deliveries(call.params["webhook_id"],
                                                            q["limit"], q["offset"])
        return 200, page_payload(Page([d.public() for d in deliveries], total), q)

    @inlineCallbacks
    def redeliver(self, call: ApiCall) -> Any:
        webhook_id, delivery_id = call.params["webhook_id"], call.params["delivery_id"]
        earlier = yield self._webhooks.delivery(delivery_id)
        if earlier is None or earlier.endpoint_id != webhook_id:
            raise not_found("delivery", delivery_id)
        new_id = yield self._webhooks.redeliver(delivery_id, call.now_ms)
        result = yield self._queued(new_id)
        return result


#: Agents whose cache entries are dropped at once after a key's containment changed.
INVALIDATION_BATCH = 500


@inlineCallbacks
def invalidate_in_batches(invalidate: Callable[[str, str], Any],
                          agents: Sequence[tuple[str, str]]) -> Any:
    """Drop the cache entries of ``agents`` ((hash, id) pairs), a bounded batch at a time:
    a key may carry many named agents."""
    for start in range(0, len(agents), INVALIDATION_BATCH):
        yield gatherResults([maybeDeferred(invalidate, hash_, agent_id)
                             for hash_, agent_id in agents[start:start + INVALIDATION_BATCH]])
    return None


def check_webhook_url(url: str, allow_http: bool) -> None:
    problem = check_url(url, allow_http)
    if problem is not None:
        raise ApiError(400, f"url {problem}")
