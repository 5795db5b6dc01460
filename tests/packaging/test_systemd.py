"""The systemd units, user and directory snippets, checked by systemd's own tools on a root
the tarball was installed into."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import require_tool

#: Where Debian keeps systemd's own units; verify needs the targets the units depend on.
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


@pytest.fixture
def verify_root(installed: Path) -> Path:
    """The installed root plus systemd's own units, so ``--root`` verification resolves
    sysinit.target and friends as on a real host."""
    if not SYSTEM_UNITS.is_dir():
        pytest.fail(f"{SYSTEM_UNITS} is missing although systemd-analyze is installed")
    shutil.copytree(SYSTEM_UNITS, installed / "usr/lib/systemd/system", symlinks=True)
    return installed


@pytest.mark.parametrize("unit", ["mnemomd.service", "mnemomd@gateway.service",
                                  "mnemomd@scheduler.service"])
def test_units_pass_systemd_analyze_verify(verify_root, unit):
    analyze = require_tool("systemd-analyze", "systemd")
    result = subprocess.run([analyze, "verify", f"--root={verify_root}", unit],
                            capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values, and only warns: those count too.
    assert result.returncode == 0 and result.stdout + result.stderr == "", \
        result.stdout + result.stderr


def test_units_carry_the_hardening_and_notify_settings():
    for name in ("mnemomd.service", "mnemomd@.service"):
        text = (Path(__file__).parents[2] / "systemd" / name).read_text()
        settings = {line for line in text.splitlines() if "=" in line and line[0] != "#"}
        assert {"Type=notify", "NotifyAccess=main", "User=mnemomd", "StateDirectory=mnemomd",
                "EnvironmentFile=-/etc/mnemomd/mnemomd.env", "ProtectSystem=strict",
                "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
                "CapabilityBoundingSet=", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                "SystemCallFilter=@system-service", "RestartPreventExitStatus=78",
                "Restart=on-failure"} <= settings
        assert any(s.startswith("WatchdogSec=") for s in settings)
    assert "ExecStart=/usr/local/bin/mnemomd run --role %i" in \
        (Path(__file__).parents[2] / "systemd" / "mnemomd@.service").read_text()


def test_sysusers_and_tmpfiles_create_the_user_and_directories(installed):
    sysusers = require_tool("systemd-sysusers", "systemd")
    tmpfiles = require_tool("systemd-tmpfiles", "systemd")
    subprocess.run([sysusers, f"--root={installed}", "mnemomd.conf"],
                   check=True, capture_output=True, timeout=60)
    passwd = (installed / "etc/passwd").read_text().splitlines()
    (entry,) = [line for line in passwd if line.startswith("mnemomd:")]
    uid, gid, _, home, shell = entry.split(":")[2:]
    assert int(uid) < 1000 and home == "/var/lib/mnemomd" and shell == "/usr/sbin/nologin"
    shutil.rmtree(installed / "var/lib/mnemomd")
    subprocess.run([tmpfiles, f"--root={installed}", "--create",
                    "mnemomd.conf"], check=True, capture_output=True,
                   timeout=60)
    state = (installed / "var/lib/mnemomd").stat()
    assert (state.st_uid, state.st_gid, state.st_mode & 0o777) == (int(uid), int(gid), 0o750)
