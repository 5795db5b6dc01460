"""The management API's tool-policy operations (a mixin of ``ApiHandlers``).

Documents are validated whole by the policy grammar (``mnemomd.policy``): a rejected one
is a 400 listing every problem with its path. Stored policies are invalidated in the KV
cache on change, so the next proxied call is judged by the new version.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from mnemomd.agents.policies import ORG, PolicyBook, StoredPolicy
from mnemomd.api.routes import ApiError, RawDocument
from mnemomd.policy import Policy, PolicyError, compile_policy, load_policy_text, parse_policy
from mnemomd.policy import evaluate as evaluate_tools
from mnemomd.policy.engine import (
    bounded_actions,
    card_gaps,
    coverage,
    mapping_gaps,
)
from mnemomd.policy.grammar import policy_document


def policy_problems(error: PolicyError) -> ApiError:
    return ApiError(400, "invalid policy: " + "; ".join(error.problems[:50]))


def read_document(body: Any) -> Policy:
    """The policy a request body holds, or ApiError 400 with every problem."""
    try:
        if isinstance(body, RawDocument):
            return load_policy_text(body.raw, body.media)
        return parse_policy(body)
    except PolicyError as e:
        raise policy_problems(e) from None


def record(stored: StoredPolicy | None, scope: str, agent_id: str | None,
           source: str, history: list[dict[str, Any]], document: dict[str, Any] | None = None,
           warnings: list[str] | None = None) -> dict[str, Any]:
    return {"id": stored.id if stored else None, "agent_id": agent_id, "scope": scope,
            "source": source, "version": stored.version if stored else None,
            "created_at": stored.created_at if stored else None,
            "updated_at": stored.updated_at if stored else None,
            "policy": stored.document if stored else document, "history": history,
            "warnings": warnings or []}


class PolicyHandlers:
    """Needs ``self._policy_book``, ``self._agent`` and ``self._store`` (``ApiHandlers``)."""

    _policy_book: PolicyBook | None

    def _book(self) -> PolicyBook:
        if self._policy_book is None:
            raise ApiError(503, "tool policies are not available here", "unavailable")
        return self._policy_book

    def _agent(self, agent_id: str) -> Deferred[Any]:  # pragma: no cover - ApiHandlers'
        raise NotImplementedError

    @inlineCallbacks
    def _card_actions(self, agent_id: str) -> Any:
        card = yield self._store.card(agent_id)  # type: ignore[attr-defined]
        return bounded_actions(card["card"] if card else None)

    @inlineCallbacks
    def get_org_policy(self, call: Any) -> Any:
        book = self._book()
        if book.file_policy is not None:
            return 200, record(None, "org", None, "file", [],
                               policy_document(book.file_policy))
        stored = yield book.store.get(ORG)
        history = yield book.store.history(ORG)
        return 200, record(stored, "org", None, "stored" if stored else "none", history)

    @inlineCallbacks
    def put_org_policy(self, call: Any) -> Any:
        book = self._book()
        if book.file_policy is not None:
            raise ApiError(409, "the deployment-wide policy comes from MNEMOM_POLICY_FILE; "
                                "change the file and restart", "conflict")
        policy = read_document(call.body)
        stored = yield book.store.put(ORG, policy_document(policy), call.now_ms)
        yield book.invalidate(ORG)
        history = yield book.store.history(ORG)
        return 200, record(stored, "org", None, "stored", history)

    @inlineCallbacks
    def get_agent_policy(self, call: Any) -> Any:
        agent_id = call.params["agent_id"]
        yield self._agent(agent_id)
        book = self._book()
        stored = yield book.store.get(agent_id)
        history = yield book.store.history(agent_id)
        return 200, record(stored, "agent", agent_id, "stored" if stored else "none", history)

    @inlineCallbacks
    def put_agent_policy(self, call: Any) -> Any:
        agent_id = call.params["agent_id"]
        yield self._agent(agent_id)
        book = self._book()
        policy = read_document(call.body)
        actions = yield self._card_actions(agent_id)
        stored = yield book.store.put(agent_id, policy_document(policy), call.now_ms)
        yield book.invalidate(agent_id)
        history = yield book.store.history(agent_id)
        return 200, record(stored, "agent", agent_id, "stored", history,
                           warnings=mapping_gaps(policy, actions or []))

    @inlineCallbacks
    def delete_agent_policy(self, call: Any) -> Any:
        agent_id = call.params["agent_id"]
        yield self._agent(agent_id)
        book = self._book()
        deleted = yield book.store.delete(agent_id, call.now_ms)
        yield book.invalidate(agent_id)
        return 200, {"agent_id": agent_id, "deleted": deleted}

    @inlineCallbacks
    def get_resolved_policy(self, call: Any) -> Any:
        agent_id = call.params["agent_id"]
        yield self._agent(agent_id)
        book = self._book()
        org = yield book.org()
        own = yield book.stored(agent_id)
        resolved = book.resolve(org, own, keep_off=True)
        actions = yield self._card_actions(agent_id)
        if resolved is None:
            return 200, {"agent_id": agent_id, "active": False, "mode": None, "policy": None,
                         "coverage": None, "warnings": []}
        policy = resolved.policy
        return 200, {"agent_id": agent_id, "active": resolved.mode != "off",
                     "mode": resolved.mode, "policy": policy_document(policy),
                     "coverage": coverage(policy, actions or []),
                     "warnings": mapping_gaps(policy, actions or [])}

    @inlineCallbacks
    def evaluate_policy(self, call: Any) -> Any:
        body = call.body
        book = self._book()
        actions: list[str] | None = None
        if body.agent_id is not None:
            yield self._agent(body.agent_id)
            actions = yield self._card_actions(body.agent_id)
        if body.policy is not None:
            policy = read_document(body.policy)
            compiled = compile_policy(policy)
            mode = policy.defaults.enforcement_mode
        elif body.agent_id is not None:
            org = yield book.org()
            own = yield book.stored(body.agent_id)
            resolved = book.resolve(org, own, keep_off=True)
            if resolved is None:
                raise ApiError(404, f"No tool policy applies to agent {body.agent_id}",
                               "not_found")
            compiled, mode, policy = resolved.compiled, resolved.mode, resolved.policy
        else:
            raise ApiError(400, "give a policy, an agent_id, or both")
        result = evaluate_tools(compiled, body.tools, mode)
        return 200, {
            "verdict": result.verdict, "mode": mode, "violations": result.violations,
            "warnings": result.warnings,
            "card_gaps": card_gaps(compiled, body.tools, actions) if actions is not None
            else [],
            "coverage": coverage(policy, actions) if actions is not None else None}
