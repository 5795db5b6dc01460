"""The console's files are in the wheel an operator installs, not only in this checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mnemomd.console.site import load_assets

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.packaging
def test_the_wheel_holds_every_console_file(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(tmp_path), str(REPO_ROOT)], check=True,
                   capture_output=True)
    wheel = next(tmp_path.glob("mnemomd-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = {f"mnemomd/console/static/{name}" for name in load_assets()}
    assert expected and expected <= names, expected - names
