"""Agent administration from the command line, straight through the storage layer.

Changes are written to the database and the agent's cache entry is dropped from the
shared KV store, so every replica applies them to the agent's next call; a replica on
an in-memory store notices the changed row within seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import UTC, datetime
from typing import IO, Any

from twisted.internet.defer import inlineCallbacks

from mnemomd.config import Config
from mnemomd.directory import agent_cache_key
from mnemomd.kv import KVCache, make_kv_store
from mnemomd.storage.database import Database
from mnemomd.storage.enforcement import EnforcementError, EnforcementStore


def settings_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The columns an ``agent settings`` call changes."""
    changes: dict[str, Any] = {}
    if args.nudge_strategy is not None:
        changes["nudge_strategy"] = args.nudge_strategy
    if args.nudge_rate is not None:
        changes["nudge_rate"] = args.nudge_rate
    if args.nudge_threshold is not None:
        changes["nudge_threshold"] = args.nudge_threshold
    if args.aip is not None:
        changes["aip_enabled"] = args.aip == "on"
    if args.aap is not None:
        changes["aap_enabled"] = args.aap == "on"
    if args.auto_containment is not None:
        text = args.auto_containment.strip().lower()
        if text == "off":
            changes["auto_containment_threshold"] = None
        elif text.isdigit():
            changes["auto_containment_threshold"] = int(text)
        else:
            raise EnforcementError("--auto-containment takes a number >= 2, or off")
    return changes


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


@inlineCallbacks
def _execute(reactor: Any, config: Config, args: argparse.Namespace) -> Any:
    db = Database(reactor, config.database_url)
    db.start()
    kv = make_kv_store(reactor, config.redis_url, config.redis_password, None)
    store = EnforcementStore(db)
    now_ms = int(reactor.seconds() * 1000)
    try:
        if args.command == "enforcement":
            agent = yield store.update_settings(args.agent_id, {"enforcement_mode": args.mode},
                                                now_ms)
            result: dict[str, Any] = {"agent": dataclasses.asdict(agent)}
        elif args.agent_command == "show":
            agent = yield store.agent(args.agent_id)
            log = yield store.containment_log(args.agent_id)
            nudges = yield store.nudges(args.agent_id)
            result = {"agent": dataclasses.asdict(agent), "containment_log": log,
                      "nudges": nudges}
        elif args.agent_command == "settings":
            agent = yield store.update_settings(args.agent_id, settings_changes(args), now_ms)
            result = {"agent": dataclasses.asdict(agent)}
        else:
            change = yield store.contain(args.agent_id, args.agent_command, args.actor,
                                         args.reason, now_ms)
            agent = change.agent
            result = {"agent": dataclasses.asdict(agent), "action": change.action,
                      "from": change.from_status, "to": change.to_status}
        yield KVCache(kv, "", 1).invalidate(agent_cache_key(agent.agent_hash))
        return result
    finally:
        yield kv.close()
        db.close()


def render(result: dict[str, Any], out: IO[str]) -> None:
    agent = result["agent"]
    if "action" in result:
        out.write(f"{agent['agent_id']}: {result['from']} -> {result['to']}\n")
    rows = [("agent", agent["agent_id"]), ("name", agent["name"] or "-"),
            ("enforcement", agent["enforcement_mode"]),
            ("containment", agent["containment_status"]),
            ("aip", "on" if agent["aip_enabled"] else "off"),
            ("nudge strategy", f"{agent['nudge_strategy']} (rate {agent['nudge_rate']:g}, "
                               f"threshold {agent['nudge_threshold']})"),
            ("auto-containment", str(agent["auto_containment_threshold"] or "off"))]
    for name, value in rows:
        out.write(f"{name:<17} {value}\n")
    for entry in result.get("containment_log", []):
        out.write(f"{_when(entry['created_at'])}  {entry['action']:<10} "
                  f"{entry['from_status']} -> {entry['to_status']}  by {entry['actor']}"
                  f"  {entry['reason'] or ''}\n")
    for nudge in result.get("nudges", []):
        out.write(f"nudge {nudge['id']}  {nudge['status']}  {_when(nudge['created_at'])}\n")


def run_admin_command(config: Config, args: argparse.Namespace, out: IO[str]) -> int:
    from twisted.internet import reactor

    outcome: dict[str, Any] = {}

    def go() -> None:
        d = _execute(reactor, config, args)
        d.addBoth(lambda result: outcome.setdefault("result", result))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    result = outcome.get("result")
    if isinstance(result, dict):
        if getattr(args, "json", False):
            out.write(json.dumps(result, indent=2, default=str) + "\n")
        else:
            render(result, out)
        return 0
    error = getattr(result, "value", result)
    import sys

    print(f"mnemomd: {error}", file=sys.stderr)
    return 1 if not isinstance(error, EnforcementError) else 2
