"""The offline tarball: install.sh into a staged root, run from there, upgrade, uninstall."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

from mnemomd import __version__
from tests.e2e.conftest import provider_env
from tests.e2e.daemon import daemon_environment, start_daemon
from tests.fakes.rawhttp import raw_request
from tests.packaging.conftest import require_tool, run_script

EDITED = "# edited by the operator\nport: 9999\n"


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def test_tarball_is_named_and_laid_out_for_install(tarball):
    assert tarball.name == f"mnemomd-{__version__}-linux-x86_64.tar.gz"
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    top = f"mnemomd-{__version__}-linux-x86_64"
    for member in ("install.sh", "uninstall.sh", "lib/mnemomd/mnemomd",
                   "systemd/mnemomd.service", "systemd/mnemomd@.service",
                   "systemd/mnemomd.sysusers", "systemd/mnemomd.tmpfiles",
                   "etc/mnemomd.yaml", "etc/mnemomd.env", "share/migrations/0001_initial.sql",
                   "share/doc/install.md", "share/doc/upgrade.md"):
        assert f"{top}/{member}" in names, member


def test_install_run_reinstall_and_uninstall(unpacked, tmp_path, upstream):
    root = tmp_path / "root"
    first = run_script(unpacked / "install.sh", destdir=root)
    assert "created" in first and (root / "etc/mnemomd/mnemomd.yaml").is_file()
    binary = root / "usr/local/bin/mnemomd"
    version = subprocess.run([str(binary), "version"], capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and "frozen onedir build" in version.stdout

    daemon = start_daemon(tmp_path / "run", provider_env(upstream), command=[str(binary)])
    try:
        with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", b"{}",
                         {"x-api-key": "sk-installed"}, timeout=20) as r:
            assert r.status == 200
    finally:
        assert daemon.stop() == 0

    config = root / "etc/mnemomd/mnemomd.yaml"
    config.write_text(EDITED)
    (root / "etc/mnemomd/mnemomd.env").write_text("ANTHROPIC_API_KEY=kept\n")
    (root / "var/lib/mnemomd/mnemomd.db").write_bytes(b"data")
    again = run_script(unpacked / "install.sh", destdir=root)
    assert f"kept {root}/etc/mnemomd/mnemomd.yaml" in again
    assert config.read_text() == EDITED
    assert (root / "etc/mnemomd/mnemomd.env").read_text() == "ANTHROPIC_API_KEY=kept\n"
    assert (root / "etc/mnemomd/mnemomd.yaml.example").read_text() == \
        (unpacked / "etc/mnemomd.yaml").read_text()
    assert subprocess.run([str(binary), "version"], capture_output=True,
                          timeout=60).returncode == 0

    uninstall = root / "usr/local/share/mnemomd/uninstall.sh"
    run_script(uninstall, destdir=root)
    assert files_under(root) == {
        "etc/mnemomd/mnemomd.yaml", "etc/mnemomd/mnemomd.yaml.example",
        "etc/mnemomd/mnemomd.env", "etc/mnemomd/mnemomd.env.example",
        "var/lib/mnemomd/mnemomd.db"}
    run_script(unpacked / "uninstall.sh", "--purge", destdir=root)
    assert files_under(root) == set()


def test_prefix_moves_the_binary_and_the_units_follow(unpacked, tmp_path):
    root = tmp_path / "root"
    run_script(unpacked / "install.sh", "--prefix", "/opt/mnemomd", destdir=root)
    assert (root / "opt/mnemomd/bin/mnemomd").resolve() == \
        (root / "opt/mnemomd/lib/mnemomd/mnemomd").resolve()
    for unit in ("mnemomd.service", "mnemomd@.service"):
        text = (root / "etc/systemd/system" / unit).read_text()
        assert "ExecStart=/opt/mnemomd/bin/mnemomd run" in text
        assert "/usr/local" not in text
    run_script(root / "opt/mnemomd/share/mnemomd/uninstall.sh", "--purge", destdir=root)
    assert files_under(root) == set()


def test_scripts_pass_shellcheck():
    shellcheck = require_tool("shellcheck", "shellcheck")
    scripts = sorted((Path(__file__).parents[2] / "packaging").glob("*.sh"))
    result = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_installed_config_template_is_valid_and_names_the_state_directory(installed, tmp_path):
    env = daemon_environment(tmp_path, {})
    del env["MNEMOM_DATA_DIR"]
    result = subprocess.run(
        [str(installed / "usr/local/bin/mnemomd"), "check-config", "--config",
         str(installed / "etc/mnemomd/mnemomd.yaml")],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "MNEMOM_DATA_DIR" in result.stdout and "/var/lib/mnemomd  [file " in result.stdout
