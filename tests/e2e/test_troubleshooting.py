"""Every command of docs/troubleshooting.md runs, as a reader would type it, against a
running daemon, with its log saved to the file the document reads (``MNEMOMD_LOG``)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.api import ApiDaemon
from tests.e2e.doc_examples import check_output, extract, run
from tests.e2e.test_docs import example_environment
from tests.fakes.process import REPO_ROOT

DOCUMENT = REPO_ROOT / "docs" / "troubleshooting.md"


def test_every_troubleshooting_command_runs(api_daemon: ApiDaemon, tmp_path: Path):
    examples = extract(DOCUMENT)
    assert len(examples) >= 10
    env = example_environment(api_daemon, tmp_path)
    log = tmp_path / "mnemomd.log"
    log.write_text("\n".join(line for line in api_daemon.daemon.lines
                             if line.startswith("{")) + "\n")
    env["MNEMOMD_LOG"] = str(log)
    outputs = {}
    for example in examples:
        outputs[example.name] = run(example, env, tmp_path)
        check_output(example, outputs[example.name])
    # The first look at a healthy daemon, and the configuration error it shows.
    assert '"status":"ok"' in next(iter(outputs.values())).replace(" ", "")
    assert any("exit status 78" in output for output in outputs.values())
