"""Fixtures for the release artefacts: the frozen binary, the tarball, installed roots.

Everything is built by ``packaging/build.py``, the script a release uses. The frozen build
is made once per session and kept in ``build/packaging/`` keyed by the source hash, so a
second run on an unchanged tree reuses it; a fresh clone always builds.

A test that needs an outside tool (podman, debootstrap, systemd-analyze, kubectl, ...)
skips with the reason when the tool is missing, except under CI (``CI`` set), where a
missing tool fails the test: CI must show these tests ran.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.e2e.conftest import postgres_url, upstream, upstream_url  # noqa: F401
from tests.e2e.test_license import signing  # noqa: F401
from tests.fakes.process import REPO_ROOT
from tests.support import unavailable

BUILD_SCRIPT = REPO_ROOT / "packaging" / "build.py"
BUILD_CACHE = REPO_ROOT / "build" / "packaging"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.packaging)


def require_tool(name: str, package: str) -> str:
    """The path of ``name``; skips (fails under CI) naming the Debian package if missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        unavailable(f"{name} is not installed (Debian package {package})")
    assert path is not None
    return path


def load_build_script() -> ModuleType:
    """packaging/build.py as a module (the folder is not a package: it would shadow the
    ``packaging`` library)."""
    spec = importlib.util.spec_from_file_location("mnemomd_build", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_build(*args: str, env: dict[str, str] | None = None) -> str:
    """Run packaging/build.py as a release would; returns what it made (its last line)."""
    result = subprocess.run([sys.executable, str(BUILD_SCRIPT), *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=1200,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise AssertionError(f"build.py {' '.join(args)} failed:\n{result.stderr[-6000:]}")
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def build_script() -> ModuleType:
    return load_build_script()


@pytest.fixture(scope="session")
def frozen_dir(build_script: ModuleType) -> Path:
    """The one-dir frozen build (``mnemomd`` and ``_internal/`` inside)."""
    if importlib.util.find_spec("PyInstaller") is None:
        unavailable("PyInstaller is not installed (it is in the test extra)")
    dist = BUILD_CACHE / f"frozen-{build_script.source_hash()[:16]}"
    binary = dist / "mnemomd"
    if not (binary / "mnemomd").is_file():
        if BUILD_CACHE.is_dir():
            for stale in BUILD_CACHE.glob("frozen-*"):
                shutil.rmtree(stale)
        run_build("binary", "--dist", str(dist))
    return binary


@pytest.fixture(scope="session")
def frozen(frozen_dir: Path) -> list[str]:
    """The command that runs the frozen binary."""
    return [str(frozen_dir / "mnemomd")]


@pytest.fixture(scope="session")
def tarball(frozen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(run_build("tarball", "--binary", str(frozen_dir),
                          "--dist", str(tmp_path_factory.mktemp("tarball"))))


@pytest.fixture
def unpacked(tarball: Path, tmp_path: Path) -> Path:
    """The tarball unpacked, as an operator would; returns its top directory."""
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp_path / "unpacked", filter="tar")
    (top,) = (tmp_path / "unpacked").iterdir()
    return top


def run_script(script: Path, *args: str, destdir: Path) -> str:
    result = subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                            env={**os.environ, "DESTDIR": str(destdir)}, timeout=120)
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture
def installed(unpacked: Path, tmp_path: Path) -> Path:
    """A root the tarball was installed into with DESTDIR (default prefix /usr/local)."""
    root = tmp_path / "root"
    run_script(unpacked / "install.sh", destdir=root)
    return root
