"""Tool policies in storage, and the policy each agent is held to, cached like its card.

``PolicyStore`` keeps the deployment-wide policy (owner ``*``) and one per agent, each
with a version, timestamps and a change history. ``PolicyBook`` is what the proxy asks
on every call: the deployment-wide and the agent's policy (KV cache, then the database),
merged and compiled once per version pair. When the database and the KV store both fail,
the last policies read stay in force (process memory, bounded), so an outage never lifts
a policy. Changes made through the API drop the cache entries they touch; other
processes see them within the cache TTL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mnemomd.agents.memory import Lru
from mnemomd.kv import KVCache
from mnemomd.ops.dependency import DependencyState, log_failure
from mnemomd.policy import (
    CompiledPolicy,
    Policy,
    compile_policy,
    effective_mode,
    merge_policies,
    parse_policy,
)
from mnemomd.storage.database import Cursor, Database

log = Logger()

#: The owner of the deployment-wide policy.
ORG = "*"
#: Agents whose last read policy is kept for outages.
MAX_REMEMBERED_POLICIES = 50_000
#: Compiled (merged) policies kept.
MAX_COMPILED = 1024
HISTORY_LIMIT = 100


def policy_cache_key(owner: str) -> str:
    return f"policy:{owner}"


@dataclass(frozen=True)
class StoredPolicy:
    id: str
    owner: str
    version: int
    document: dict[str, Any]
    created_at: int
    updated_at: int

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "agent_id": None if self.owner == ORG else self.owner,
                "scope": "org" if self.owner == ORG else "agent", "version": self.version,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "policy": self.document}

    def cached(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "version": self.version,
                "document": self.document, "created_at": self.created_at,
                "updated_at": self.updated_at}


_COLUMNS = "id, owner, version, document, created_at, updated_at"


def _row(row: tuple[Any, ...] | None) -> StoredPolicy | None:
    if row is None:
        return None
    return StoredPolicy(row[0], row[1], int(row[2]), json.loads(row[3]), int(row[4]),
                        int(row[5]))


class PolicyStore:
    """The ``policies`` and ``policy_history`` tables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, owner: str) -> Deferred[StoredPolicy | None]:
        def read(cursor: Cursor) -> StoredPolicy | None:
            return _row(cursor.execute(f"SELECT {_COLUMNS} FROM policies WHERE owner = ?",
                                       (owner,)).fetchone())

        return self._db.run_interaction("get_policy", read)

    def put(self, owner: str, document: dict[str, Any], now_ms: int) -> Deferred[StoredPolicy]:
        """Store ``document`` (already validated) as the owner's policy: a new one, or the
        next version of the one there."""
        text = json.dumps(document, separators=(",", ":"), sort_keys=True)

        def write(cursor: Cursor) -> StoredPolicy:
            current = _row(cursor.execute(f"SELECT {_COLUMNS} FROM policies WHERE owner = ?",
                                          (owner,)).fetchone())
            if current is None:
                policy_id = f"pol-{uuid.uuid4().hex}"
                cursor.execute("INSERT INTO policies (owner, id, version, document, "
                               "created_at, updated_at) VALUES (?, ?, 1, ?, ?, ?)",
                               (owner, policy_id, text, now_ms, now_ms))
                stored = StoredPolicy(policy_id, owner, 1, document, now_ms, now_ms)
                change = "created"
            else:
                version = current.version + 1
                cursor.execute("UPDATE policies SET version = ?, document = ?, updated_at = ? "
                               "WHERE owner = ?", (version, text, now_ms, owner))
                stored = StoredPolicy(current.id, owner, version, document,
                                      current.created_at, now_ms)
                change = "updated"
            cursor.execute("INSERT INTO policy_history (policy_id, owner, version, change, "
                           "document, changed_at) VALUES (?, ?, ?, ?, ?, ?)",
                           (stored.id, owner, stored.version, change, text, now_ms))
            return stored

        return self._db.run_interaction("put_policy", write)

    def delete(self, owner: str, now_ms: int) -> Deferred[bool]:
        def write(cursor: Cursor) -> bool:
            current = _row(cursor.execute(f"SELECT {_COLUMNS} FROM policies WHERE owner = ?",
                                          (owner,)).fetchone())
            if current is None:
                return False
            cursor.execute("DELETE FROM policies WHERE owner = ?", (owner,))
            cursor.execute("INSERT INTO policy_history (policy_id, owner, version, change, "
                           "document, changed_at) VALUES (?, ?, ?, 'deleted', NULL, ?)",
                           (current.id, owner, current.version + 1, now_ms))
            return True

        return self._db.run_interaction("delete_policy", write)

    def history(self, owner: str, limit: int = HISTORY_LIMIT) -> Deferred[list[dict[str, Any]]]:
        def read(cursor: Cursor) -> list[dict[str, Any]]:
            rows = cursor.execute(
                "SELECT policy_id, version, change, changed_at FROM policy_history "
                "WHERE owner = ? ORDER BY changed_at DESC, version DESC LIMIT ?",
                (owner, limit)).fetchall()
            return [{"policy_id": r[0], "version": int(r[1]), "change": r[2],
                     "changed_at": int(r[3])} for r in rows]

        return self._db.run_interaction("policy_history", read)


@dataclass(frozen=True)
class ActivePolicy:
    """The policy an agent is held to now, compiled, and the mode it runs in."""

    compiled: CompiledPolicy
    mode: str
    #: (org id, org version, agent id, agent version): what it was built from.
    source: tuple[Any, ...]

    @property
    def policy(self) -> Policy:
        return self.compiled.policy


class PolicyBook:
    """The resolved policy of each agent, for the proxy and the API."""

    def __init__(self, clock: IReactorTime, store: PolicyStore, cache: KVCache,
                 file_policy: Policy | None = None,
                 outages: Sequence[DependencyState] = ()) -> None:
        """``file_policy`` is the deployment-wide policy of ``MNEMOM_POLICY_FILE``: it is
        the org policy, and ``PUT /v1/policy`` is refused while it is set."""
        self._clock = clock
        self.store = store
        self._store = store
        self._cache = cache
        self._outages = outages
        self.file_policy = file_policy
        self._remembered: Lru[str, dict[str, Any] | None] = Lru(MAX_REMEMBERED_POLICIES)
        self._compiled: Lru[tuple[Any, ...], CompiledPolicy] = Lru(MAX_COMPILED)
        self._parsed: Lru[tuple[str, int], Policy] = Lru(MAX_COMPILED)

    @inlineCallbacks
    def stored(self, owner: str) -> Any:
        """The owner's stored policy as cached (``cached()``), or None: KV cache, the
        database, or (both down) the last one read; fails only when none was ever read."""
        cached = yield self._cache.get_json(policy_cache_key(owner))
        entry = yield self._entry(owner, cached)
        return entry

    @inlineCallbacks
    def _entry(self, owner: str, cached: Any) -> Any:
        """``stored`` once the cache was read (``cached``)."""
        key = policy_cache_key(owner)
        if isinstance(cached, dict):
            entry = cached.get("policy")
            self._remembered.put(owner, entry)
            return entry
        try:
            stored = yield self._store.get(owner)
        except Exception:
            if owner in self._remembered:
                return self._remembered.get(owner)
            raise
        entry = stored.cached() if stored is not None else None
        self._remembered.put(owner, entry)
        self._cache.set_json(key, {"policy": entry})
        return entry

    def invalidate(self, owner: str) -> Deferred[Any]:
        self._remembered.pop(owner)
        return self._cache.invalidate(policy_cache_key(owner))

    def _policy(self, entry: dict[str, Any]) -> Policy:
        key = (entry["id"], entry["version"])
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = parse_policy(entry["document"])
            self._parsed.put(key, parsed)
        return parsed

    @inlineCallbacks
    def org(self) -> Any:
        """The deployment-wide policy entry (None from the file, see ``file_policy``)."""
        if self.file_policy is not None:
            return None
        entry = yield self.stored(ORG)
        return entry

    @inlineCallbacks
    def active(self, agent_id: str | None) -> Any:
        """The ``ActivePolicy`` of an agent (None: no policy, or one that is ``off``);
        the org's and the agent's entries are read from the cache in one round trip."""
        owners = ([] if self.file_policy is not None else [ORG]) + \
            ([agent_id] if agent_id else [])
        cached = yield self._cache.get_json_many(*(policy_cache_key(o) for o in owners))
        entries = {}
        for owner, hit in zip(owners, cached, strict=True):
            entries[owner] = yield self._entry(owner, hit)
        return self.resolve(entries.get(ORG), entries.get(agent_id) if agent_id else None)

    def resolve(self, org_entry: dict[str, Any] | None, agent_entry: dict[str, Any] | None,
                keep_off: bool = False) -> ActivePolicy | None:
        """The merged, compiled policy (None: none, or ``off`` unless ``keep_off``)."""
        org = self.file_policy
        org_key: tuple[Any, ...] = ("file",) if org is not None else (None, None)
        stamps: list[int] = []
        if org_entry is not None:
            org = self._policy(org_entry)
            org_key = (org_entry["id"], org_entry["version"])
            stamps.append(org_entry["updated_at"])
        agent = None
        agent_key: tuple[Any, ...] = (None, None)
        if agent_entry is not None:
            agent = self._policy(agent_entry)
            agent_key = (agent_entry["id"], agent_entry["version"])
            stamps.append(agent_entry["updated_at"])
        merged = merge_policies(org, agent)
        if merged is None:
            return None
        source = org_key + agent_key
        compiled = self._compiled.get(source)
        if compiled is None:
            compiled = compile_policy(merged)
            self._compiled.put(source, compiled)
        stored_at = max(stamps) / 1000 if stamps else None
        mode = effective_mode(merged, stored_at, self._clock.seconds())
        if mode == "off" and not keep_off:
            return None
        return ActivePolicy(compiled, mode, source)

    def failed(self, message: str, failure: Any) -> None:
        log_failure(log, message, failure, self._outages)
