"""CPU per call of the tool-policy step on the proxy path, with a 100-rule policy and
without any policy, side by side.

Each call runs the real ``PolicyStep.check`` (the tool names read from a described
Anthropic request, the policy asked for, evaluated, the counter bumped) against a policy
book that answers at once, as a cache hit does: 60 forbidden rules, 30 capability mappings
of 3 globs each and 10 escalation triggers (100 rules), against a request offering 12
tools (8 mapped, 2 unmapped, 2 forbidden), under ``warn`` so every call is forwarded
and recorded. ``cold`` offers 6 names never seen before on every call (their findings are not
cached yet); ``warm`` the same 12 names each time, as an agent sends them. Recording
(violations, tools first seen) is a queued write and is left out. The target is
≤ 0.1 ms of CPU per call. One command:

    python -m bench.policy [--calls 20000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from twisted.internet.defer import succeed  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from mnemomd.agents.identity import Agent  # noqa: E402
from mnemomd.agents.policies import ActivePolicy  # noqa: E402
from mnemomd.ops.metrics import GatewayMetrics  # noqa: E402
from mnemomd.policy import compile_policy, parse_policy  # noqa: E402
from mnemomd.providers import PROVIDERS  # noqa: E402
from mnemomd.proxy.policy import PolicyStep  # noqa: E402

TOOLS = ["web_search", "browse_page", "fetch_url", "read_ticket_7", "list_tickets",
         "read_file", "summarise", "translate", "calendar_lookup", "weather",
         "send_email", "delete_record"]


def hundred_rule_policy() -> dict[str, Any]:
    """60 forbidden rules, 30 mappings of 3 globs, 10 triggers."""
    forbidden = [{"pattern": f"{verb}_*", "reason": "forbidden", "severity": "critical"}
                 for verb in ("send", "delete")]
    forbidden += [{"pattern": f"danger_{n}_*", "reason": "forbidden", "severity": "high"}
                  for n in range(58)]
    mappings = {f"cap_{n}": {"tools": [f"tool_{n}_*", f"other_{n}", f"x?_{n}"],
                             "card_actions": [f"action_{n}"]} for n in range(27)}
    mappings["browsing"] = {"tools": ["web_search", "browse_*", "fetch_url"],
                            "card_actions": ["browse"]}
    mappings["tickets"] = {"tools": ["read_ticket*", "list_tickets"],
                           "card_actions": ["read_tickets"]}
    mappings["files"] = {"tools": ["read_file", "summarise", "translate"],
                         "card_actions": ["read"]}
    triggers = [{"condition": f"tool_matches('*payment_{n}*')", "action": "escalate",
                 "reason": "needs a human"} for n in range(10)]
    return {"meta": {"schema_version": "1.0", "name": "bench", "scope": "agent"},
            "capability_mappings": mappings, "forbidden": forbidden,
            "escalation_triggers": triggers,
            "defaults": {"unmapped_tool_action": "warn", "unmapped_severity": "medium",
                         "fail_open": False, "enforcement_mode": "warn",
                         "grace_period_hours": 0}}


class _Book:
    """A policy book that answers at once (a cache hit)."""

    def __init__(self, active: ActivePolicy | None) -> None:
        self._active = active

    def active(self, agent_id: str) -> Any:
        return succeed(self._active)

    def failed(self, message: str, failure: Any) -> None:
        raise AssertionError(message)


def request_body(names: list[str]) -> bytes:
    return json.dumps({"model": "claude-x", "max_tokens": 1024,
                       "messages": [{"role": "user", "content": "hi"}],
                       "tools": [{"name": n, "description": "a tool",
                                  "input_schema": {"type": "object"}} for n in names]}).encode()


def per_call_us(step: PolicyStep, calls: int, body_of: Callable[[int], bytes]) -> float:
    """CPU µs per ``PolicyStep.check``; bodies are described before the clock starts
    (the proxy describes a request once, for integrity and policy alike)."""
    provider = PROVIDERS["anthropic"]
    agent = Agent("0" * 16, "smolt-bench", "bench")
    infos = [provider.describe_request(b"/v1/messages", b"", body_of(n)) for n in range(calls)]
    results: list[Any] = []
    started = time.process_time()
    for info in infos:
        step.check(agent, provider, info, b"x").addCallback(results.append)
    elapsed = time.process_time() - started
    assert len(results) == calls
    return elapsed / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args(argv)
    compiled = compile_policy(parse_policy(hundred_rule_policy()))
    active = ActivePolicy(compiled, "warn", ("bench",))
    warm_body = request_body(TOOLS)

    def cold_body(n: int) -> bytes:
        return request_body([f"{name}_{n}" if i % 2 else name for i, name in
                             enumerate(TOOLS)])

    rows = []
    for label, policy, body_of in (("no policy", None, lambda n: warm_body),
                                   ("100 rules, warm", active, lambda n: warm_body),
                                   ("100 rules, cold", active, cold_body)):
        step = PolicyStep(Clock(), _Book(policy), GatewayMetrics())  # type: ignore[arg-type]
        per_call_us(step, 1000, body_of)  # warm-up
        rows.append((label, per_call_us(step, args.calls, body_of)))
    print(f"{'case':<18} {'CPU µs/call':>12}")
    for label, us in rows:
        print(f"{label:<18} {us:>12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
