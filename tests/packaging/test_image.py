"""The container image, built with podman from Debian packages and no registry: the base is
a debootstrap root filesystem imported under the Dockerfile's FROM name.

podman runs as root with runc, the vfs storage driver, cgroupfs and a file event log, in a
storage root of the test's own, so it works on hosts without overlayfs or a systemd
manager, and with ``default_ulimits = []`` (through ``CONTAINERS_CONF``) because raising
the default limits fails on hosts that cap them. If podman is there but cannot run a
container at all, the test skips with podman's reason.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import provider_env
from tests.fakes.local import closed_port
from tests.fakes.process import REPO_ROOT, wait_until
from tests.fakes.rawhttp import raw_request
from tests.packaging.conftest import require_tool, run_build

#: The debootstrap root filesystem is kept here between runs: making it takes a while.
ROOTFS_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
    "mnemomd-test" / "rootfs"
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
"""


@dataclass
class Engine:
    command: list[str]
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 300,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.command, *args], env={**os.environ, **self.env},
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed:\n{result.stderr}")
        return result

    @property
    def build_env(self) -> dict[str, str]:
        return {**self.env, "CONTAINER_ENGINE": shlex.join(self.command)}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    podman = require_tool("podman", "podman")
    require_tool("runc", "runc")
    require_tool("debootstrap", "debootstrap")
    # A short path: conmon's socket paths under it must fit in a sockaddr_un.
    base = Path(tempfile.mkdtemp(prefix="mnpod"))
    (base / "containers.conf").write_text(CONTAINERS_CONF)
    engine = Engine([podman, "--root", str(base / "storage"), "--runroot", str(base / "run"),
                     "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager",
                     "cgroupfs", "--events-backend", "file"],
                    {"CONTAINERS_CONF": str(base / "containers.conf")})
    try:
        run_build("base-image", "--cache", str(ROOTFS_CACHE), env=engine.build_env)
        probe = engine("run", "--rm", "--network", "host",
                       "docker.io/library/debian:bookworm-slim", "true", check=False)
        if probe.returncode != 0:
            pytest.skip(f"podman cannot run containers on this machine: {probe.stderr[-500:]}")
        yield engine
    finally:
        engine("rm", "--all", "--force", check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def image(engine: Engine, frozen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    tag = f"localhost/mnemomd-test:{uuid.uuid4().hex[:8]}"
    return run_build("image", "--binary", str(frozen_dir), "--tag", tag,
                     "--dist", str(tmp_path_factory.mktemp("image")), env=engine.build_env)


def live_status(base_url: str) -> int | None:
    try:
        with raw_request(base_url, "GET", "/health/live") as r:
            return r.status
    except OSError:
        return None


def test_container_answers_health_and_proxies(engine, image, upstream):
    port = closed_port()
    name = f"mnemomd-test-{port}"
    env = provider_env(upstream) | {"HOST": "127.0.0.1", "PORT": str(port)}
    engine("run", "--detach", "--name", name, "--network", "host",
           *(f"--env={k}={v}" for k, v in env.items()), image)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: live_status(base_url) == 200, timeout=60,
                   what="/health/live in the container")
        with raw_request(base_url, "POST", "/anthropic/v1/messages", b"{}",
                         {"x-api-key": "sk-container"}, timeout=20) as r:
            assert r.status == 200
            assert r.header("x-mnemom-agent").startswith("smolt-")
        assert engine("healthcheck", "run", name, check=False).returncode == 0
        assert engine("exec", name, "id", "-u").stdout.strip() == "10001"
        assert "mnemomd.db" in engine("exec", name, "ls", "/data").stdout.split()
        engine("stop", "--time", "30", name)
        exit_code = engine("inspect", "--format", "{{.State.ExitCode}}", name).stdout
        assert exit_code.strip() == "0"
    finally:
        engine("rm", "--force", name, check=False)


def test_compose_migrates_before_gateway_and_scheduler_start():
    compose = yaml.safe_load((REPO_ROOT / "packaging" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "gateway", "scheduler"}
    assert services["migrate"]["command"] == ["migrate"]
    for role in ("gateway", "scheduler"):
        service = services[role]
        assert service["command"] == ["run", "--role", role]
        assert service["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"}
        assert service["environment"]["MIGRATE_ON_START"] == "false"
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert service["environment"]["DATABASE_URL"].startswith("postgresql://")
