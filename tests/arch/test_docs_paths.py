"""The documents name files that exist, and link to pages and sections that exist.

A module that moves leaves its old path behind in the prose, where nothing fails on it
and a newcomer follows it to nothing. Every ``.py`` path in code (backticks or a fenced
block) of ``docs/*.md`` and ``README.md`` must name a file, either from the repository
root (``tests/fakes/upstream.py``, ``mnemomd/proxy/relay.py``) or inside the package
(``proxy/relay.py``); every relative link must reach its file and, for a page, its
heading.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.arch.imports import PACKAGE_ROOT

REPO_ROOT = PACKAGE_ROOT.parent

#: ``a/b.py``, ``mnemomd/a/b.py``: at least one directory, so a bare ``base.py`` in a
#: sentence about one package is not guessed at. ``<name>.py`` placeholders never match.
_PY_PATH = re.compile(r"(?<![\w./<>-])((?:[\w.-]+/)+[\w-]+\.py)\b")
_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def documents(root: Path = REPO_ROOT) -> list[Path]:
    return sorted((root / "docs").glob("*.md")) + [root / "README.md"]


def code_of(text: str) -> list[str]:
    """The code in a Markdown text: fenced blocks whole, then inline spans elsewhere."""
    blocks = [m.group(0) for m in _FENCE.finditer(text)]
    prose = _FENCE.sub("", text)
    return blocks + [m.group(2) for m in _CODE_SPAN.finditer(prose)]


def named_paths(text: str) -> list[str]:
    """Every ``.py`` path written as code in a Markdown text, in order, once each."""
    found = [m.group(1) for code in code_of(text) for m in _PY_PATH.finditer(code)]
    return list(dict.fromkeys(found))


def resolves(path: str, root: Path = REPO_ROOT) -> bool:
    """A path from the repository root, or one inside the package (``proxy/relay.py``)."""
    return (root / path).is_file() or (root / "mnemomd" / path).is_file()


def missing_paths(root: Path = REPO_ROOT) -> list[str]:
    return [f"{doc.relative_to(root)}: `{path}`" for doc in documents(root)
            for path in named_paths(doc.read_text(encoding="utf-8"))
            if not resolves(path, root)]


def anchors(text: str) -> set[str]:
    """The heading anchors of a page, made the way GitHub makes them."""
    seen: dict[str, int] = {}
    result = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(root: Path = REPO_ROOT) -> list[str]:
    problems = []
    for doc in documents(root):
        text = doc.read_text(encoding="utf-8")
        for link in _LINK.findall(_FENCE.sub("", text)):
            if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:
                continue
            target, _, anchor = link.partition("#")
            page = (doc.parent / target).resolve() if target else doc
            where = f"{doc.relative_to(root)}: ({link})"
            if not page.exists():
                problems.append(f"{where} names no file")
            elif anchor and page.suffix == ".md" \
                    and anchor not in anchors(page.read_text(encoding="utf-8")):
                problems.append(f"{where} names no heading")
    return problems


def test_every_python_path_in_the_docs_exists():
    assert missing_paths() == []


def test_every_relative_link_in_the_docs_reaches_its_page_and_heading():
    assert broken_links() == []


# -- the tests of the tests: each check fails on the mistake it exists to catch ---------


def _tree(tmp_path: Path, docs: dict[str, str], files: tuple[str, ...]) -> Path:
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("", encoding="utf-8")
    (tmp_path / "docs").mkdir(exist_ok=True)
    for name, text in docs.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_an_old_module_path_is_caught(tmp_path):
    root = _tree(tmp_path, {
        "README.md": "The relay is `mnemomd/proxy/relay.py`; "
                     "its tests are `tests/proxy/test_relay.py`.\n",
        "docs/architecture.md": (
            "| `agents/store.py` | `AgentStore` |\n"
            "| `storage/agents.py` | the old home of `AgentStore` |\n"
            "```\n proxy/handler.py  ProxyHandler.handle\n cloud/license.py\n```\n"
            "Adding one: `mnemomd/providers/<name>.py`; `python bench/run.py --quick`.\n"
            "Plain prose naming storage/webhooks.py is not code.\n"),
    }, ("mnemomd/proxy/relay.py", "mnemomd/agents/store.py", "mnemomd/proxy/handler.py",
        "tests/proxy/test_relay.py", "bench/run.py"))
    assert missing_paths(root) == ["docs/architecture.md: `cloud/license.py`",
                                   "docs/architecture.md: `storage/agents.py`"]


def test_a_link_to_a_moved_page_or_heading_is_caught(tmp_path):
    root = _tree(tmp_path, {
        "README.md": "[arch](docs/architecture.md#testing-in-process), "
                     "[gone](docs/gone.md), [web](https://example.com/x)\n",
        "docs/architecture.md": "# Architecture\n\n### proxy/relay.py: the relay\n\n"
                                "## Testing in process\n\n```\n# not a heading\n```\n",
        "docs/operations.md": "[retry](architecture.md#proxyrelaypy-the-relay) and "
                              "[old](architecture.md#gatewaypy-the-front-door) and "
                              "[fence](architecture.md#not-a-heading) and [self](#operations)\n"
                              "\n# Operations\n",
    }, ())
    assert broken_links(root) == [
        "docs/operations.md: (architecture.md#gatewaypy-the-front-door) names no heading",
        "docs/operations.md: (architecture.md#not-a-heading) names no heading",
        "README.md: (docs/gone.md) names no file",
    ]
