"""Which build of mnemomd is running: named by ``mnemomd version`` and the console."""

from __future__ import annotations

import json
import os
import platform
import sys

from mnemomd import __version__


def build_name() -> str:
    """``source build``, or for a frozen binary what packaging/build.py put in BUILD_INFO."""
    bundle = getattr(sys, "_MEIPASS", None) if getattr(sys, "frozen", False) else None
    if bundle is None:
        return "source build"
    try:
        with open(os.path.join(bundle, "BUILD_INFO"), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return "frozen build"
    kind, build, built = (info.get(k, "?") for k in ("kind", "build", "built"))
    return f"frozen {kind} build {build}, {built}"


def version_info() -> dict[str, str]:
    """The version, the build and what it runs on (read once: none of it changes)."""
    import twisted

    return {"version": __version__, "build": build_name(),
            "python": platform.python_version(), "twisted": twisted.__version__}


def version_text() -> str:
    info = version_info()
    return (f"mnemomd {info['version']} ({info['build']}; Python {info['python']}, "
            f"Twisted {info['twisted']})")
