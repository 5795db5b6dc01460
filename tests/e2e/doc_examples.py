"""Run the shell examples of a Markdown document and compare them with its outputs.

Every ```sh block is an example, unless the line before its fence is
``<!-- not run -->``. A ```json or ```text block that follows an example (before the next
example) is its expected output. Text must have the same first line once ids, times and
numbers are masked. JSON must match value for value (:func:`mismatches`): the same keys,
lists of the same length, and equal values, except placeholders, which are what differs
from run to run by nature:

- an id of the documented form ``<prefix>-<hex>`` (``smolt-ff57218d``, ``whk-…``) matches
  any id with the same prefix;
- a lower-case hex string of 16 or more characters (a hash, a secret) matches any hex
  string of the same length;
- a number under a key ending in ``_at`` (a time in epoch milliseconds) matches any number.

Stand-ins are values a document uses for things of the reader's own (their receiver's
URL); the test maps each to this run's value before comparing.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
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


_ID = re.compile(r"(smolt|ic|tr|whk|whd|ida|ndg|cl|evt|ac)-[0-9a-f]+")
_HEX = re.compile(r"[0-9a-f]{16,}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _placeholder_matches(expected: Any, actual: Any, key: str) -> bool | None:
    """Whether ``actual`` fits the placeholder ``expected``; None if it is no placeholder."""
    if isinstance(expected, str) and (found := _ID.fullmatch(expected)):
        return isinstance(actual, str) and (other := _ID.fullmatch(actual)) is not None \
            and other.group(1) == found.group(1)
    if isinstance(expected, str) and _HEX.fullmatch(expected):
        return isinstance(actual, str) and len(actual) == len(expected) \
            and _HEX.fullmatch(actual) is not None
    if key.endswith("_at") and _is_number(expected):
        return _is_number(actual)
    return None


def mismatches(expected: Any, actual: Any, path: str = "$", key: str = "") -> list[str]:
    """Where ``actual`` differs from the documented ``expected``, as JSON paths; placeholders
    (see the module's docstring) match any value of their kind."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            return [f"{path}: keys {sorted(expected)} != {sorted(actual)}"]
        return [problem for k in expected
                for problem in mismatches(expected[k], actual[k], f"{path}.{k}", k)]
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: {len(expected)} items documented, {len(actual)} returned"]
        return [problem for n, (e, a) in enumerate(zip(expected, actual, strict=True))
                for problem in mismatches(e, a, f"{path}[{n}]", key)]
    fits = _placeholder_matches(expected, actual, key)
    if fits is None:
        fits = type(expected) is type(actual) and expected == actual \
            or _is_number(expected) and _is_number(actual) and expected == actual
    return [] if fits else [f"{path}: documented {expected!r}, returned {actual!r}"]


def masked_first_line(text: str) -> list[str]:
    first = text.strip().split("\n", 1)[0]
    return _VOLATILE.sub("#", first).split()


def check_output(example: Example, output: str,
                 stand_ins: Mapping[str, str] | None = None) -> None:
    if example.expected is None:
        return
    documented = example.expected
    for stand_in, value in (stand_ins or {}).items():
        documented = documented.replace(stand_in, value)
    if example.expected_kind == "json":
        actual = json.loads(output)
        expected = json.loads(documented)
        problems = mismatches(expected, actual)
        assert not problems, (example.name, problems, actual)
        if isinstance(actual, dict) and "error" in actual:
            assert "error" in expected, (example.name, actual)
    else:
        assert masked_first_line(documented) == masked_first_line(output), \
            (example.name, documented, output)
