"""The examples in docs/api.md and docs/cli.md, run against a running daemon.

Each document's examples run in order in one shell environment per document, as a reader
would type them; see ``doc_examples`` for how outputs are compared.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.e2e.api import INTERNAL_KEY, JWT_SECRET, ApiDaemon
from tests.e2e.daemon import daemon_environment
from tests.e2e.doc_examples import Example, check_output, extract, mismatches, run
from tests.fakes.process import REPO_ROOT

DOCUMENTS = ("api.md", "cli.md")
#: The documents' receiver URL for ``$WEBHOOK``: in the tests, the daemon's local receiver.
DOCUMENTED_RECEIVER = "http://alerts.internal:8080/mnemom"


def example_environment(api_daemon: ApiDaemon, home: Path) -> dict[str, str]:
    """The variables the documents promise: the daemon, a token and objects to look at."""
    agent_id = api_daemon.new_agent()
    seeded = api_daemon.seed(agent_id)
    webhook = api_daemon.new_webhook("/docs")
    delivery = api_daemon.call("POST", f"/v1/webhooks/{webhook['id']}/test").body
    env = daemon_environment(home, {
        "MNEMOMD_URL": api_daemon.url, "MNEMOMD_TOKEN": INTERNAL_KEY,
        "MNEMOM_JWT_SECRET": JWT_SECRET, "AGENT": agent_id,
        "CHECKPOINT": seeded["checkpoint_id"], "TRACE": seeded["trace_id"],
        "WEBHOOK": webhook["id"], "DELIVERY": delivery["id"]})
    # The interpreter running the tests has PyJWT and this checkout's `mnemomd`.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.mark.parametrize("document", DOCUMENTS)
def test_documented_examples_run(api_daemon: ApiDaemon, tmp_path: Path, document: str):
    examples: list[Example] = extract(REPO_ROOT / "docs" / document)
    assert len(examples) >= 10, f"{document} should show its usage with examples"
    env = example_environment(api_daemon, tmp_path)
    stand_ins = {DOCUMENTED_RECEIVER: api_daemon.receiver.url + "/docs"}
    for example in examples:
        check_output(example, run(example, env, tmp_path), stand_ins)


def test_examples_are_found_and_compared(tmp_path: Path):
    document = tmp_path / "doc.md"
    document.write_text("<!-- not run -->\n```sh\nexit 1\n```\n\n```sh\necho '{\"a\": [1]}'\n"
                        "```\n\nprints\n\n```json\n{\"a\": [2]}\n```\n\n```sh\necho hi\n```\n")
    first, second = extract(document)
    assert (first.script, first.expected_kind) == ("echo '{\"a\": [1]}'\n", "json")
    assert second.expected is None
    check_output(first, '{"a": [2]}')
    for wrong in ('{"a": [3]}', '{"a": ["2"]}', '{"a": [2, 2]}', '{"b": [2]}',
                  '{"a": [2], "error": "x"}'):
        with pytest.raises(AssertionError):
            check_output(first, wrong)


def test_placeholders_match_any_value_of_their_kind_and_nothing_else():
    documented = {"id": "whk-303fa6859a154eab8dba78851f6ddfa8", "agent_id": "smolt-ff57218d",
                  "secret": "5f1c" * 16, "created_at": 1795315973248, "total": 2,
                  "name": None, "enabled": True, "url": "http://alerts.internal:8080/mnemom"}
    run_value = {"id": "whk-0a19807bbbd84c1b9922314fa6e70e6d", "agent_id": "smolt-06e1fd33",
                 "secret": "0123456789abcdef" * 4, "created_at": 1800000000000, "total": 2,
                 "name": None, "enabled": True, "url": "http://127.0.0.1:1234/docs"}
    assert mismatches(documented, run_value) == ["$.url: documented "
                                                 "'http://alerts.internal:8080/mnemom', "
                                                 "returned 'http://127.0.0.1:1234/docs'"]
    for key, wrong in (("id", "whd-0a19807bbbd84c1b9922314fa6e70e6d"), ("secret", "5f1c"),
                       ("created_at", None), ("total", 3), ("name", "x"), ("enabled", 1)):
        assert mismatches(documented, run_value | {key: wrong, "url": documented["url"]}), key
    example = Example("doc.md", 1, "", json.dumps(documented), "json")
    check_output(example, json.dumps(run_value),
                 {"http://alerts.internal:8080/mnemom": "http://127.0.0.1:1234/docs"})
