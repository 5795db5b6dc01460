"""Every claim of the threat model names a proof that exists.

``docs/security.md`` backs each row of its "mnemomd does | proved by" tables with tests
(``path::name``, a method as ``path::Class::name``) or fault probes
(``python -m bench.faults <probe>``). A cited test that is renamed or deleted, a probe
that is dropped, or a row without a proof fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.arch.imports import PACKAGE_ROOT

REPO_ROOT = PACKAGE_ROOT.parent
PAGE = REPO_ROOT / "docs" / "security.md"
_TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::([\w:]+)`")
_PROBE_REF = re.compile(r"`python -m bench\.faults ([\w-]+)`")


def defined_names(path: Path) -> set[str]:
    """``name`` for each module-level function and class, ``Class::method`` for methods."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}::{item.name}" for item in node.body
                         if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef))
    return names


def missing_tests(text: str, root: Path = REPO_ROOT) -> list[str]:
    missing = []
    for path, name in sorted(set(_TEST_REF.findall(text))):
        file = root / path
        if not file.is_file() or name not in defined_names(file):
            missing.append(f"{path}::{name}")
    return missing


def claim_rows(text: str) -> list[tuple[str, str]]:
    """(claim, proof) for every row of a "mnemomd does | proved by" table."""
    rows = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("| mnemomd does | proved by |"):
            in_table = True
            continue
        if in_table and line.startswith("|---"):
            continue
        if in_table and line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            rows.append((cells[0], cells[-1] if len(cells) > 1 else ""))
            continue
        in_table = False
    return rows


def test_every_cited_test_exists():
    assert missing_tests(PAGE.read_text(encoding="utf-8")) == []


def test_every_cited_probe_exists():
    from bench.faults.probes import PROBES

    cited = set(_PROBE_REF.findall(PAGE.read_text(encoding="utf-8")))
    assert cited and cited <= set(PROBES), cited - set(PROBES)


def test_every_claim_names_its_proof():
    rows = claim_rows(PAGE.read_text(encoding="utf-8"))
    assert len(rows) >= 30
    unproved = [claim for claim, proof in rows
                if not (_TEST_REF.search(proof) or _PROBE_REF.search(proof))]
    assert unproved == []


def test_the_check_sees_a_missing_test_and_an_unproved_row(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "def test_a():\n    pass\n\nclass T:\n    def test_b(self):\n        pass\n")
    text = ("`tests/test_x.py::test_a` `tests/test_x.py::T::test_b` "
            "`tests/test_x.py::test_gone` `tests/test_y.py::test_a`")
    assert missing_tests(text, tmp_path) == ["tests/test_x.py::test_gone",
                                             "tests/test_y.py::test_a"]
    table = "| mnemomd does | proved by |\n|---|---|\n| a claim | nothing |\n\nprose\n"
    assert claim_rows(table) == [("a claim", "nothing")]
