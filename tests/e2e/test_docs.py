"""The examples in docs/api.md and docs/cli.md, run against a running daemon.

Each document's examples run in order in one shell environment per document, as a reader
would type them; see ``doc_examples`` for how outputs are compared.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.e2e.api import INTERNAL_KEY, JWT_SECRET, ApiDaemon
from tests.e2e.daemon import daemon_environment
from tests.e2e.doc_examples import Example, check_output, extract, run
from tests.fakes.process import REPO_ROOT

DOCUMENTS = ("api.md", "cli.md")


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
    for example in examples:
        check_output(example, run(example, env, tmp_path))


def test_examples_are_found_and_compared(tmp_path: Path):
    document = tmp_path / "doc.md"
    document.write_text("<!-- not run -->\n```sh\nexit 1\n```\n\n```sh\necho '{\"a\": [1]}'\n"
                        "```\n\nprints\n\n```json\n{\"a\": [2]}\n```\n\n```sh\necho hi\n```\n")
    first, second = extract(document)
    assert (first.script, first.expected_kind) == ("echo '{\"a\": [1]}'\n", "json")
    assert second.expected is None
    check_output(first, '{"a": [3]}')
    with pytest.raises(AssertionError):
        check_output(first, '{"b": [3]}')
    with pytest.raises(AssertionError):
        check_output(first, '{"a": [1], "error": "x"}')
