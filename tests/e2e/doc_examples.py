"""Run the shell examples of a Markdown document and compare them with its outputs.

Every ```sh block is an example, unless the line before its fence is
``<!-- not run -->``. A ```json or ```text block that follows an example (before the next
example) is its expected output: JSON must have the same shape (the same keys, down
through objects and the first item of lists); text must have the same first line once
ids, times and numbers are masked. Values differ from run to run, shapes do not.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
_VOLATILE = re.compile(r"\b(smolt|ic|tr|whk|whd|ida|ndg|cl|evt|ac)-[0-9a-f.r]+\b"
                       r"|\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d|\b\d+(\.\d+)?\b")


@dataclass
class Example:
    document: str
    line: int
    script: str
    expected: str | None = None
    expected_kind: str | None = None

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"


def extract(path: Path) -> list[Example]:
    text = path.read_text(encoding="utf-8")
    examples: list[Example] = []
    for found in _FENCE.finditer(text):
        kind, body = found.group(1), found.group(2)
        line = text.count("\n", 0, found.start()) + 1
        before = text[:found.start()].rstrip().rsplit("\n", 1)[-1]
        if kind == "sh" and before.strip() != "<!-- not run -->":
            examples.append(Example(path.name, line, body))
        elif kind in ("json", "text") and examples and examples[-1].expected is None \
                and examples[-1].line < line:
            examples[-1].expected, examples[-1].expected_kind = body, kind
    return examples


def run(example: Example, env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(["bash", "-eo", "pipefail", "-c", example.script], env=env,
                            cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"{example.name} exited {result.returncode}:\n{example.script}\n"
                             f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result.stdout


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


def same_shape(expected: Any, actual: Any) -> bool:
    """Same keys at every level; an empty list or a null matches anything."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(
            same_shape(expected[k], actual[k]) for k in expected)
    if isinstance(expected, list) and isinstance(actual, list):
        return not expected or not actual or same_shape(expected[0], actual[0])
    return True


def masked_first_line(text: str) -> list[str]:
    first = text.strip().split("\n", 1)[0]
    return _VOLATILE.sub("#", first).split()


def check_output(example: Example, output: str) -> None:
    if example.expected is None:
        return
    if example.expected_kind == "json":
        actual = json.loads(output)
        expected = json.loads(example.expected)
        assert same_shape(expected, actual), (example.name, expected, actual)
        if isinstance(actual, dict) and "error" in actual:
            assert "error" in expected, (example.name, actual)
    else:
        assert masked_first_line(example.expected) == masked_first_line(output), \
            (example.name, example.expected, output)
