"""Management commands (``mnemomd agents …``, ``agent …``, ``webhooks …``) over the API.

The commands are clients of a running daemon's management API, never of its database:
the daemon validates, logs, invalidates caches and reaches every replica, and the CLI
needs no database credentials. A command is one short-lived process making a few
HTTP calls, so it uses the standard library's blocking client rather than a reactor.
"""

from __future__ import annotations

import argparse
import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import quote, urlencode

from mnemomd.config import Config

URL_ENV = "MNEMOMD_URL"
TOKEN_ENV = "MNEMOMD_TOKEN"
REQUEST_TIMEOUT_SECONDS = 30.0
#: Exit statuses: the API refused or failed the request; the daemon was not reachable.
EXIT_API_ERROR = 1
EXIT_UNREACHABLE = 3


class CommandError(Exception):
    """A command that did not succeed, with the message and exit status to show."""

    def __init__(self, message: str, status: int = EXIT_API_ERROR) -> None:
        super().__init__(message)
        self.status = status


def api_url(config: Config, given: str | None, environ: Mapping[str, str]) -> str:
    """``--url``, else ``$MNEMOMD_URL``, else where the configuration says the daemon listens."""
    url = given or environ.get(URL_ENV)
    if url:
        return url.rstrip("/")
    host, port = config.host, config.port
    if config.listen:
        found = re.fullmatch(r"tcp6?:(\d+)(?::interface=(.+))?", config.listen)
        if found is None:
            raise CommandError(f"cannot reach LISTEN={config.listen} over HTTP from here; "
                               f"give --url or {URL_ENV}", EXIT_UNREACHABLE)
        port = int(found.group(1))
        host = (found.group(2) or "127.0.0.1").replace("\\:", ":")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass
class ApiClient:
    base_url: str
    token: str | None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                query: Mapping[str, Any] | None = None) -> Any:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.base_url + path + (f"?{urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("content-type", "application/json")
        if self.token:
            request.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", "replace")[:200] or e.reason
            raise CommandError(f"{e.code} {message}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CommandError(f"the daemon is not reachable at {self.base_url} ({reason})",
                               EXIT_UNREACHABLE) from None


def segment(value: str) -> str:
    return quote(value, safe="")


# -- rendering ---------------------------------------------------------------------------


def when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]],
          out: IO[str]) -> None:
    """Aligned columns under a header; ``columns`` is (key, title), ``*_at`` keys are times."""
    cells = [[when(row.get(key)) if key.endswith("_at") else cell(row.get(key))
              for key, _ in columns] for row in rows]
    titles = [title for _, title in columns]
    widths = [max([len(t)] + [len(r[i]) for r in cells]) for i, t in enumerate(titles)]
    for line in [titles, *cells]:
        out.write("  ".join(text.ljust(width) for text, width in zip(line, widths,
                                                                     strict=True)).rstrip()
                  + "\n")


def fields(record: Mapping[str, Any], names: Sequence[tuple[str, str]], out: IO[str]) -> None:
    """One ``name  value`` line per field of a single record."""
    width = max(len(title) for _, title in names)
    for key, title in names:
        value = record.get(key)
        text = when(value) if key.endswith("_at") else cell(value)
        out.write(f"{title:<{width}}  {text}\n")


def page_footer(result: Mapping[str, Any], out: IO[str]) -> None:
    shown = len(result["items"])
    first = result["offset"] + 1 if shown else 0
    out.write(f"{first}-{result['offset'] + shown} of {result['total']}\n")


AGENT_COLUMNS = (("agent_id", "AGENT"), ("name", "NAME"), ("enforcement_mode", "MODE"),
                 ("containment_status", "STATUS"), ("last_seen_at", "LAST SEEN"),
                 ("created_at", "CREATED"))
AGENT_FIELDS = (("agent_id", "agent"), ("name", "name"), ("enforcement_mode", "enforcement"),
                ("containment_status", "containment"), ("containment_scope", "scope"),
                ("containment_reason", "reason"), ("key_hash", "key"),
                ("aip_enabled", "aip"), ("aap_enabled", "aap"),
                ("nudge_strategy", "nudge strategy"), ("nudge_rate", "nudge rate"),
                ("nudge_threshold", "nudge threshold"),
                ("auto_containment_threshold", "auto-containment"),
                ("without_reasoning", "if no reasoning"),
                ("created_at", "created"), ("last_seen_at", "last seen"))
CHECKPOINT_COLUMNS = (("id", "CHECKPOINT"), ("verdict", "VERDICT"), ("session_id", "SESSION"),
                      ("model", "MODEL"), ("synthetic", "SYNTHETIC"), ("created_at", "CREATED"))
TRACE_COLUMNS = (("id", "TRACE"), ("session_id", "SESSION"), ("checkpoint_id", "CHECKPOINT"),
                 ("verified", "VERIFIED"), ("created_at", "CREATED"))
LOG_COLUMNS = (("created_at", "WHEN"), ("action", "ACTION"), ("scope", "SCOPE"),
               ("agent_id", "VIA"), ("from_status", "FROM"), ("to_status", "TO"),
               ("actor", "ACTOR"), ("reason", "REASON"))
NUDGE_COLUMNS = (("id", "NUDGE"), ("status", "STATUS"), ("session_id", "SESSION"),
                 ("created_at", "CREATED"))
WEBHOOK_COLUMNS = (("id", "WEBHOOK"), ("url", "URL"), ("enabled", "ENABLED"),
                   ("consecutive_failures", "FAILURES"), ("event_types", "EVENTS"))
WEBHOOK_FIELDS = (("id", "webhook"), ("url", "url"), ("description", "description"),
                  ("event_types", "events"), ("enabled", "enabled"),
                  ("allow_http", "allow http"), ("consecutive_failures", "failures"),
                  ("disabled_reason", "disabled reason"), ("created_at", "created"))
DELIVERY_COLUMNS = (("id", "DELIVERY"), ("event_type", "EVENT"), ("status", "STATUS"),
                    ("attempts", "ATTEMPTS"), ("last_status_code", "HTTP"),
                    ("created_at", "CREATED"))


# -- commands ----------------------------------------------------------------------------


def on_off(value: str | None) -> bool | None:
    return None if value is None else value == "on"


def settings_body(args: argparse.Namespace) -> dict[str, Any]:
    body = {"nudge_strategy": args.nudge_strategy, "nudge_rate": args.nudge_rate,
            "nudge_threshold": args.nudge_threshold, "aip_enabled": on_off(args.aip),
            "aap_enabled": on_off(args.aap), "without_reasoning": args.without_reasoning}
    return {k: v for k, v in body.items() if v is not None}


def auto_containment(text: str) -> int | None:
    text = text.strip().lower()
    if text == "off":
        return None
    if not text.isdigit():
        raise CommandError("--auto-containment takes a number >= 2, or off", 2)
    return int(text)


def _pagination(args: argparse.Namespace) -> dict[str, Any]:
    return {"limit": args.limit, "offset": args.offset}


def execute(client: ApiClient, args: argparse.Namespace, out: IO[str]) -> Any:
    """Run one management command; returns the JSON result (rendered unless ``--json``)."""
    command = args.command
    if command == "agents":
        if args.agents_command == "list":
            result = client.request("GET", "/v1/agents", query={
                **_pagination(args), "containment_status": args.status,
                "enforcement_mode": args.mode})
            return result, lambda: (table(result["items"], AGENT_COLUMNS, out),
                                    page_footer(result, out))
        agent = client.request("GET", f"/v1/agents/{segment(args.agent_id)}")
        return agent, lambda: fields(agent, AGENT_FIELDS, out)
    if command == "enforcement":
        path = f"/v1/agents/{segment(args.agent_id)}/enforcement"
        if args.enforcement_command == "set":
            result = client.request("PUT", path, {"mode": args.mode})
        else:
            result = client.request("GET", path)
        return result, lambda: out.write(f"{result['agent_id']}: {result['mode']}\n")
    if command == "agent":
        return agent_command(client, args, out)
    if command == "checkpoints":
        result = client.request("GET", f"/v1/agents/{segment(args.agent_id)}/checkpoints",
                                query={**_pagination(args), "verdict": args.verdict,
                                       "session_id": args.session})
        return result, lambda: (table(result["items"], CHECKPOINT_COLUMNS, out),
                                page_footer(result, out))
    if command == "traces":
        result = client.request("GET", f"/v1/agents/{segment(args.agent_id)}/traces",
                                query=_pagination(args))
        return result, lambda: (table(result["items"], TRACE_COLUMNS, out),
                                page_footer(result, out))
    if command == "webhooks":
        return webhook_command(client, args, out)
    if command == "policy":
        return policy_command(client, args, out)
    raise CommandError(f"unknown command {command}", 2)


def policy_command(client: ApiClient, args: argparse.Namespace, out: IO[str]) -> Any:
    """``policy set`` and ``policy show`` (``check`` and ``evaluate`` run locally)."""
    from mnemomd.policy import PolicyError, policy_document, read_policy_file

    path = f"/v1/agents/{segment(args.agent_id)}/policy"
    if args.policy_command == "set":
        try:
            policy = read_policy_file(args.file)
        except PolicyError as e:
            raise CommandError("\n".join([f"{args.file}: invalid policy"]
                                          + [f"  {p}" for p in e.problems]), 1) from None
        result = client.request("PUT", path, policy_document(policy))
        return result, lambda: out.write(
            f"{result['agent_id']}: policy {result['id']} version {result['version']}\n"
            + "".join(f"warning: {w}\n" for w in result["warnings"]))
    result = client.request("GET", f"{path}/resolved" if args.resolved else path)
    return result, lambda: out.write(json.dumps(result.get("policy"), indent=2) + "\n")


def agent_command(client: ApiClient, args: argparse.Namespace, out: IO[str]) -> Any:
    base = f"/v1/agents/{segment(args.agent_id)}"
    action = args.agent_command
    if action == "show":
        agent = client.request("GET", base)
        containment = client.request("GET", f"{base}/containment")
        timeline = client.request("GET", f"{base}/timeline", query={"kind": "nudge",
                                                                    "limit": 20})
        nudges = [{"id": e["id"], "created_at": e["created_at"], **e["data"]}
                  for e in timeline["items"]]
        # A history reads top-down: oldest first (the API lists newest first).
        history = list(reversed(containment["log"]))
        nudges.reverse()
        result = {"agent": agent, "containment_log": history, "nudges": nudges}

        def render() -> None:
            fields(agent, AGENT_FIELDS, out)
            for rows, columns in ((history, LOG_COLUMNS), (nudges, NUDGE_COLUMNS)):
                if rows:
                    out.write("\n")
                    table(rows, columns, out)

        return result, render
    if action == "settings":
        result: dict[str, Any] = {}
        body = settings_body(args)
        if body:
            result["settings"] = client.request("PUT", f"{base}/settings", body)
        if args.auto_containment is not None:
            result["policy"] = client.request(
                "PUT", f"{base}/containment/policy",
                {"auto_containment_threshold": auto_containment(args.auto_containment)})
        if not result:
            raise CommandError("nothing to change: give at least one setting option", 2)
        agent = client.request("GET", base)
        result["agent"] = agent
        return result, lambda: fields(agent, AGENT_FIELDS, out)
    body = {k: v for k, v in (("reason", args.reason), ("actor", args.actor),
                              ("scope", args.scope)) if v}
    change = client.request("POST", f"{base}/containment/{action}", body)
    return change, lambda: out.write(describe_change(change))


def describe_change(change: Mapping[str, Any]) -> str:
    """``smolt-…: active -> killed (key, 3 agents)``, and a warning when the key of the
    agent is not known yet."""
    line = f"{change['agent_id']}: {change['from_status']} -> {change['to_status']}"
    if change.get("scope") == "key":
        count = change.get("agents", 0)
        line += f" (key, {count} agent{'s' if count != 1 else ''})"
    else:
        line += " (agent)"
    if change.get("containment_status") not in (None, change["to_status"]):
        other = "agent" if change.get("scope") == "key" else "key"
        line += f"; the agent is {change['containment_status']} by its {other} scope"
    text = line + "\n"
    if not change.get("key_known", True):
        text += ("warning: the agent has not called since keys were recorded, so its key is "
                 "not known yet; the change holds this agent now and every agent of its key "
                 "from its next call\n")
    return text


def webhook_command(client: ApiClient, args: argparse.Namespace, out: IO[str]) -> Any:
    action = args.webhooks_command
    if action == "list":
        result = client.request("GET", "/v1/webhooks", query=_pagination(args))
        return result, lambda: (table(result["items"], WEBHOOK_COLUMNS, out),
                                page_footer(result, out))
    if action == "create":
        body: dict[str, Any] = {"url": args.endpoint_url, "allow_http": args.allow_http}
        if args.description is not None:
            body["description"] = args.description
        if args.event:
            body["event_types"] = args.event
        endpoint = client.request("POST", "/v1/webhooks", body)
        return endpoint, lambda: show_with_secret(endpoint, out)
    path = f"/v1/webhooks/{segment(args.webhook_id)}"
    if action == "show":
        endpoint = client.request("GET", path)
        return endpoint, lambda: fields(endpoint, WEBHOOK_FIELDS, out)
    if action == "update":
        body = {"url": args.endpoint_url, "description": args.description,
                "event_types": args.event or None,
                "enabled": None if args.enable is None else args.enable == "on",
                "allow_http": None if args.allow_http is None else args.allow_http == "on"}
        endpoint = client.request("PATCH", path, {k: v for k, v in body.items()
                                                  if v is not None})
        return endpoint, lambda: fields(endpoint, WEBHOOK_FIELDS, out)
    if action == "delete":
        result = client.request("DELETE", path)
        return result, lambda: out.write(f"{result['id']}: deleted\n")
    if action == "rotate-secret":
        endpoint = client.request("POST", f"{path}/rotate-secret")
        return endpoint, lambda: show_with_secret(endpoint, out)
    if action == "test":
        delivery = client.request("POST", f"{path}/test")
        return delivery, lambda: out.write(
            f"{delivery['id']}: {delivery['event_type']} queued\n")
    if action == "deliveries":
        result = client.request("GET", f"{path}/deliveries", query=_pagination(args))
        return result, lambda: (table(result["items"], DELIVERY_COLUMNS, out),
                                page_footer(result, out))
    delivery = client.request("POST", f"{path}/deliveries/{segment(args.delivery_id)}"
                                      f"/redeliver")
    return delivery, lambda: out.write(f"{delivery['id']}: {delivery['event_type']} queued\n")


def show_with_secret(endpoint: Mapping[str, Any], out: IO[str]) -> None:
    fields(endpoint, WEBHOOK_FIELDS, out)
    out.write(f"\nsecret: {endpoint['secret']}\n"
              "Store this secret now: it is not shown again. Verify X-AIP-Signature with it.\n")


def run_admin_command(config: Config, args: argparse.Namespace, out: IO[str], err: IO[str],
                      environ: Mapping[str, str]) -> int:
    """Run a management command against the daemon's API; returns the exit status."""
    try:
        client = ApiClient(api_url(config, args.api_url, environ),
                           environ.get(TOKEN_ENV) or config.internal_api_key)
        result, render = execute(client, args, out)
    except CommandError as e:
        err.write(f"mnemomd: {e}\n")
        return e.status
    if args.json:
        out.write(json.dumps(result, indent=2) + "\n")
    else:
        render()
    return 0


# -- argument parsing --------------------------------------------------------------------


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", dest="api_url",
                        help=f"the daemon's base URL (default: ${URL_ENV}, else "
                             "http://HOST:PORT from the configuration)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON")


def add_pagination(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=50, help="at most this many (1-500)")
    parser.add_argument("--offset", type=int, default=0, help="skip this many")


def add_management_commands(commands: Any, common: Any) -> None:
    """Register the API client commands; ``common`` adds --config and setting flags."""

    def command(parent: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, help=help_text)
        add_client_flags(parser)
        common(parser)
        return parser

    agents = commands.add_parser("agents", help="list and show agents")
    agents_commands = agents.add_subparsers(dest="agents_command", required=True)
    listing = command(agents_commands, "list", "agents, newest first")
    add_pagination(listing)
    listing.add_argument("--status", choices=("active", "paused", "killed"))
    listing.add_argument("--mode", choices=("observe", "nudge", "enforce"))
    command(agents_commands, "show", "one agent").add_argument("agent_id")

    enforcement = commands.add_parser("enforcement", help="an agent's enforcement mode")
    enforcement_commands = enforcement.add_subparsers(dest="enforcement_command",
                                                      required=True)
    set_mode = command(enforcement_commands, "set", "observe, nudge or enforce")
    set_mode.add_argument("agent_id")
    set_mode.add_argument("mode", choices=("observe", "nudge", "enforce"))
    command(enforcement_commands, "show", "the current mode").add_argument("agent_id")

    agent = commands.add_parser("agent", help="contain an agent or change its settings")
    agent_commands = agent.add_subparsers(dest="agent_command", required=True)
    for action in ("pause", "resume", "kill", "reactivate"):
        sub = command(agent_commands, action, f"{action} the agent")
        sub.add_argument("agent_id")
        sub.add_argument("--reason", help="why (kept in the containment log)")
        sub.add_argument("--actor", help="who (default: the API's name for your token)")
        default = {"kill": "key", "pause": "agent"}.get(action, "the scope in force")
        sub.add_argument("--scope", choices=("agent", "key"),
                         help=f"the agent alone, or every agent of its API key (default: "
                              f"{default})")
    command(agent_commands, "show", "the agent and its containment log").add_argument(
        "agent_id")
    settings = command(agent_commands, "settings", "change nudge, AIP/AAP, "
                                                   "auto-containment and without-reasoning "
                                                   "settings")
    settings.add_argument("agent_id")
    settings.add_argument("--nudge-strategy", choices=("always", "sampling", "threshold", "off"))
    settings.add_argument("--nudge-rate", type=float)
    settings.add_argument("--nudge-threshold", type=int)
    settings.add_argument("--aip", choices=("on", "off"))
    settings.add_argument("--aap", choices=("on", "off"))
    settings.add_argument("--without-reasoning", choices=("allow", "analyse_output", "refuse"),
                          help="what enforce does with a response that has no analysable "
                               "reasoning")
    settings.add_argument("--auto-containment", metavar="N|off",
                          help="pause after N consecutive boundary violations (N >= 2)")

    checkpoints = command(commands, "checkpoints", "an agent's integrity checkpoints")
    checkpoints.add_argument("agent_id")
    checkpoints.add_argument("--verdict", choices=("clear", "review_needed",
                                                   "boundary_violation"))
    checkpoints.add_argument("--session", help="only this session id")
    add_pagination(checkpoints)
    traces = command(commands, "traces", "an agent's AP-traces")
    traces.add_argument("agent_id")
    add_pagination(traces)

    policy = commands.add_parser("policy", help="tool policies: check, set, show, evaluate")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_commands.add_parser(
        "check", help="validate policy files (no daemon needed): exit 0, or every problem "
                      "and exit 1")
    check.add_argument("files", nargs="+", metavar="FILE")
    evaluate = policy_commands.add_parser(
        "evaluate", help="evaluate tool names against a policy file (no daemon needed)")
    evaluate.add_argument("file", metavar="FILE")
    evaluate.add_argument("--tool", action="append", default=[], dest="tools",
                          metavar="NAME", help="a tool name (repeat for several)")
    setting = command(policy_commands, "set", "store an agent's policy from a YAML file")
    setting.add_argument("agent_id", metavar="AGENT")
    setting.add_argument("file", metavar="FILE")
    show = command(policy_commands, "show", "an agent's policy (--resolved: merged)")
    show.add_argument("agent_id", metavar="AGENT")
    show.add_argument("--resolved", action="store_true")
    webhooks = commands.add_parser("webhooks", help="webhook endpoints and deliveries")
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", required=True)
    add_pagination(command(webhook_commands, "list", "registered endpoints"))
    create = command(webhook_commands, "create", "register an endpoint (prints its secret)")
    create.add_argument("endpoint_url", metavar="URL")
    create.add_argument("--description")
    create.add_argument("--event", action="append", metavar="EVENT_TYPE",
                        help="subscribe to this event type (repeat; default: *, every "
                             "event but verdict.clear and webhook.test)")
    create.add_argument("--allow-http", action="store_true",
                        help="allow a plain http:// URL (internal receivers)")
    command(webhook_commands, "show", "one endpoint").add_argument("webhook_id")
    update = command(webhook_commands, "update", "change an endpoint")
    update.add_argument("webhook_id")
    update.add_argument("--endpoint-url", metavar="URL", help="the receiver's new URL")
    update.add_argument("--description")
    update.add_argument("--event", action="append", metavar="EVENT_TYPE")
    update.add_argument("--enable", choices=("on", "off"))
    update.add_argument("--allow-http", choices=("on", "off"))
    for action, help_text in (("delete", "delete an endpoint and its deliveries"),
                              ("rotate-secret", "replace the secret (prints the new one)"),
                              ("test", "queue a webhook.test event")):
        command(webhook_commands, action, help_text).add_argument("webhook_id")
    deliveries = command(webhook_commands, "deliveries", "an endpoint's delivery history")
    deliveries.add_argument("webhook_id")
    add_pagination(deliveries)
    redeliver = command(webhook_commands, "redeliver", "send a delivery's event again")
    redeliver.add_argument("webhook_id")
    redeliver.add_argument("delivery_id")


MANAGEMENT_COMMANDS = ("agents", "enforcement", "agent", "checkpoints", "traces", "webhooks",
                       "policy")


def local_policy_command(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """``policy check`` and ``policy evaluate``: no daemon, no configuration."""
    from mnemomd.policy import PolicyError, compile_policy, evaluate, read_policy_file

    if args.policy_command == "check":
        status = 0
        for path in args.files:
            try:
                policy = read_policy_file(path)
            except PolicyError as e:
                status = 1
                err.write(f"{path}: {len(e.problems)} problem(s):\n")
                err.write("".join(f"  {p}\n" for p in e.problems))
                continue
            out.write(f"{path}: valid ({policy.meta.name}, "
                      f"{len(policy.capability_mappings)} mappings, "
                      f"{len(policy.forbidden)} forbidden rules)\n")
        return status
    try:
        policy = read_policy_file(args.file)
    except PolicyError as e:
        err.write(f"{args.file}: {len(e.problems)} problem(s):\n")
        err.write("".join(f"  {p}\n" for p in e.problems))
        return 1
    result = evaluate(compile_policy(policy), args.tools, policy.defaults.enforcement_mode)
    out.write(f"{result.verdict}\n")
    for v in result.violations:
        out.write(f"  {v['tool']}  {v['type']}  {v['rule'] or '-'}  {v['severity']}  "
                  f"{v['reason']}\n")
    for w in result.warnings:
        out.write(f"  {w['tool']}  {w['type']}  {w['reason']}\n")
    return 0 if result.verdict != "fail" else 1
