"""Build mnemomd's release artefacts: the frozen binary, the offline tarball, the image.

    python packaging/build.py binary  [--dist DIR] [--onefile]
    python packaging/build.py tarball [--dist DIR] [--binary DIR]
    python packaging/build.py base-image [--mirror URL] [--cache DIR]
    python packaging/build.py image   [--dist DIR] [--binary DIR] [--tag NAME]

``binary`` runs PyInstaller on ``packaging/mnemomd.spec`` (a one-dir build unless
``--onefile``). ``tarball`` wraps a one-dir build with the systemd units, config templates,
migrations, docs and the install scripts. ``base-image`` makes the image's base from
Debian packages with debootstrap and imports it under the name the Dockerfile's ``FROM``
uses, for hosts with no container registry. ``image`` builds ``packaging/Dockerfile``
around a one-dir build. The container engine is ``$CONTAINER_ENGINE`` (a command line,
global flags included), else podman, else docker. Each command prints what it made.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from importlib.metadata import distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
#: What the Dockerfile's FROM names; ``base-image`` imports the debootstrap root under it.
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
BASE_SUITE = "bookworm"
#: Everything a build is made from; the source hash covers these.
SOURCE_PATHS = ("mnemomd", "migrations", "docs", "packaging", "systemd", "setup.cfg",
                "pyproject.toml")


def version() -> str:
    namespace: dict[str, str] = {}
    exec((ROOT / "mnemomd" / "__init__.py").read_text(), namespace)
    return namespace["__version__"]


def source_files() -> Iterable[Path]:
    for name in SOURCE_PATHS:
        path = ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from sorted(p for p in path.rglob("*")
                              if p.is_file() and "__pycache__" not in p.parts)


def source_hash() -> str:
    """A digest of the sources, and of the Python and packages that freeze them."""
    digest = hashlib.sha256(f"{sys.version}\n{sys.executable}\n".encode())
    installed = sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions())
    digest.update("\n".join(installed).encode())
    for path in source_files():
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_id() -> str:
    """The git commit when building from a checkout (``+dirty`` if changed), else the
    source hash."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                *SOURCE_PATHS], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"src-{source_hash()[:12]}"
    return commit + ("+dirty" if dirty else "")


def run(command: Sequence[str], **kwargs: object) -> None:
    print("+ " + shlex.join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def build_binary(dist: Path, onefile: bool = False) -> Path:
    """Freeze mnemomd with PyInstaller; returns the one-dir folder (or the one file)."""
    dist.mkdir(parents=True, exist_ok=True)
    work = dist / ".pyinstaller"
    info = work / "BUILD_INFO"
    info.parent.mkdir(parents=True, exist_ok=True)
    info.write_text(json.dumps({
        "version": version(), "build": build_id(),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kind": "onefile" if onefile else "onedir",
    }) + "\n")
    run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
         "--distpath", str(dist), "--workpath", str(work / "work"),
         str(PACKAGING / "mnemomd.spec"), "--", "--build-info", str(info),
         *(["--onefile"] if onefile else [])], cwd=ROOT)
    return dist / "mnemomd"


def tarball_name() -> str:
    return f"mnemomd-{version()}-linux-{platform.machine()}"


def owned_by_root(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """Tarball members carry no trace of who built them."""
    member.uid = member.gid = 0
    member.uname = member.gname = "root"
    return member


def build_tarball(dist: Path, binary: Path | None) -> Path:
    """``mnemomd-<version>-linux-<arch>.tar.gz``: everything install.sh needs, offline."""
    binary = binary or build_binary(dist / "binary")
    if not (binary / "mnemomd").is_file():
        raise SystemExit(f"{binary} is not a one-dir build (no mnemomd inside)")
    name = tarball_name()
    with tempfile.TemporaryDirectory(dir=dist) as staging:
        top = Path(staging) / name
        shutil.copytree(binary, top / "lib" / "mnemomd", symlinks=True)
        for script in ("install.sh", "uninstall.sh"):
            shutil.copy2(PACKAGING / script, top / script)
            (top / script).chmod(0o755)
        (top / "systemd").mkdir()
        for unit in sorted((ROOT / "systemd").iterdir()):
            shutil.copy2(unit, top / "systemd" / unit.name)
        (top / "etc").mkdir()
        for template in ("mnemomd.yaml", "mnemomd.env"):
            shutil.copy2(PACKAGING / "etc" / template, top / "etc" / template)
        shutil.copytree(ROOT / "migrations", top / "share" / "migrations")
        shutil.copytree(ROOT / "docs", top / "share" / "doc")
        shutil.copy2(ROOT / "README.md", top / "share" / "doc" / "README.md")
        (top / "VERSION").write_text(f"{version()} {build_id()}\n")
        archive = dist / f"{name}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(top, arcname=name, filter=owned_by_root)
    return archive


def container_engine() -> list[str]:
    configured = os.environ.get("CONTAINER_ENGINE", "")
    if configured:
        return shlex.split(configured)
    for engine in ("podman", "docker"):
        if shutil.which(engine):
            return [engine]
    raise SystemExit("no container engine: install podman (or docker), or set "
                     "CONTAINER_ENGINE")


def debian_mirror() -> str:
    """The Debian mirror apt uses on this host, so debootstrap needs no other source."""
    sources = [Path("/etc/apt/sources.list"),
               *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
               *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for source in sources:
        if not source.is_file():
            continue
        for line in source.read_text().splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and len(words) > 1:
                uri = words[1]
            elif words[:1] == ["deb"]:
                uri = next((w for w in words[1:] if "://" in w), "")
            else:
                continue
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def base_rootfs(cache: Path, mirror: str) -> Path:
    """A minimal Debian root filesystem as a tar, made once per suite and mirror."""
    key = hashlib.sha256(f"{BASE_SUITE} {mirror} minbase".encode()).hexdigest()[:12]
    archive = cache / f"debian-{BASE_SUITE}-{key}.tar"
    if archive.is_file():
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as work:
        target = Path(work) / "root"
        run(["debootstrap", "--variant=minbase", BASE_SUITE, str(target), mirror])
        shutil.rmtree(target / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        (target / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True)
        partial = archive.with_suffix(".tar.part")
        run(["tar", "-C", str(target), "--numeric-owner", "-cf", str(partial), "."])
        partial.rename(archive)
    return archive


def import_base_image(cache: Path, mirror: str) -> str:
    archive = base_rootfs(cache, mirror)
    run([*container_engine(), "import", "--change", "CMD [\"bash\"]", str(archive),
         BASE_IMAGE], stdout=subprocess.DEVNULL)
    return BASE_IMAGE


def build_image(dist: Path, binary: Path | None, tag: str) -> str:
    """Build packaging/Dockerfile around a one-dir build, never pulling anything."""
    binary = binary or build_binary(dist / "binary")
    with tempfile.TemporaryDirectory(dir=dist) as context:
        shutil.copytree(binary, Path(context) / "mnemomd", symlinks=True)
        shutil.copy2(PACKAGING / "Dockerfile", Path(context) / "Dockerfile")
        run([*container_engine(), "build", "--pull=never", "--format", "docker",
             "--build-arg", f"VERSION={version()}", "-t", tag, context])
    return tag


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mnemomd-build"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    binary = commands.add_parser("binary", help="the frozen binary (PyInstaller)")
    binary.add_argument("--onefile", action="store_true", help="one file instead of one dir")
    tarball = commands.add_parser("tarball", help="the offline tarball")
    base = commands.add_parser("base-image", help="import a debootstrap base image")
    base.add_argument("--mirror", default=None, help="Debian mirror (default: apt's)")
    base.add_argument("--cache", type=Path, default=default_cache(),
                      help="where the root filesystem tar is kept between builds")
    image = commands.add_parser("image", help="the container image")
    image.add_argument("--tag", default=f"mnemomd:{version()}")
    for sub in (binary, tarball, image):
        sub.add_argument("--dist", type=Path, default=ROOT / "dist",
                         help="output directory (default: dist/)")
    for sub in (tarball, image):
        sub.add_argument("--binary", type=Path, default=None,
                         help="an existing one-dir build to use instead of building one")
    args = parser.parse_args(argv)
    if args.command == "binary":
        print(build_binary(args.dist.resolve(), args.onefile))
    elif args.command == "tarball":
        args.dist.mkdir(parents=True, exist_ok=True)
        print(build_tarball(args.dist.resolve(), args.binary))
    elif args.command == "base-image":
        print(import_base_image(args.cache, args.mirror or debian_mirror()))
    else:
        args.dist.mkdir(parents=True, exist_ok=True)
        print(build_image(args.dist.resolve(), args.binary, args.tag))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
