"""Node and controller images: built from images/, tagged by content hash.

The base is debian:bookworm-slim. Where it can't be pulled (no registry, as on
an offline machine) emu makes an equivalent from Debian's packages with
`mmdebstrap --variant=minbase bookworm - | docker import`, and says so.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from emu.errors import EmuError

UPSTREAM_BASE = "debian:bookworm-slim"
LOCAL_BASE = "emu/debian:bookworm-slim"
REPO_ROOT = Path(__file__).resolve().parents[3]
# The controller image carries images/ at /opt/emu/images and says so here.
IMAGES_DIR = Path(os.environ.get("EMU_IMAGES_DIR") or REPO_ROOT / "images")

Progress = Callable[[str], None]


class DockerEngine(Protocol):
    """What the builder needs of an engine: the Docker SDK's low-level client
    (emu.control.runtime.docker.DockerRuntime has it; this module does not import it)."""

    api: Any


def _content_hash(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _files_under(*roots: Path) -> list[Path]:
    files = []
    for root in roots:
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            files += [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return files


def node_image_tag() -> str:
    """emu/node:<hash of images/node>: a changed Dockerfile gets a new image."""
    if not (IMAGES_DIR / "node" / "Dockerfile").is_file():
        raise EmuError(
            f"images/node/Dockerfile is not at {IMAGES_DIR}; emu builds its images from a checkout of the "
            "emu repository (or set nodeImage in the topology to an image you built)"
        )
    return "emu/node:" + _content_hash(_files_under(IMAGES_DIR / "node"), IMAGES_DIR)


def controller_image_tag() -> str:
    sources = _files_under(IMAGES_DIR / "controller", REPO_ROOT / "emu", REPO_ROOT / "pyproject.toml")
    return "emu/controller:" + _content_hash(sources, REPO_ROOT)


class ImageBuilder:
    def __init__(self, runtime: DockerEngine, progress: Progress = lambda message: None):
        self.runtime = runtime
        self.progress = progress

    def exists(self, tag: str) -> bool:
        import docker

        try:
            self.runtime.api.inspect_image(tag)
            return True
        except docker.errors.ImageNotFound:
            return False

    def base_image(self) -> str:
        """A debian:bookworm-slim to build on: local, pulled, or made with mmdebstrap."""
        import docker

        for tag in (UPSTREAM_BASE, LOCAL_BASE):
            if self.exists(tag):
                return tag
        self.progress(f"pulling {UPSTREAM_BASE}")
        try:
            self.runtime.api.pull("debian", tag="bookworm-slim")
            return UPSTREAM_BASE
        except docker.errors.APIError as error:
            reason = str(error.explanation or error).splitlines()[0]
        if not shutil.which("mmdebstrap"):
            raise EmuError(
                f"cannot pull {UPSTREAM_BASE} ({reason}) and mmdebstrap is not installed to make it from "
                "Debian's packages; install mmdebstrap (apt-get install mmdebstrap) or make a registry reachable"
            )
        self.progress(
            f"{UPSTREAM_BASE} can't be pulled ({reason}); making {LOCAL_BASE} from Debian's packages "
            "with mmdebstrap (about 30 s, once)"
        )
        maker = subprocess.Popen(
            ["mmdebstrap", "--quiet", "--variant=minbase", "bookworm", "-"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            self.runtime.api.import_image_from_stream(maker.stdout, repository="emu/debian", tag="bookworm-slim")
        finally:
            maker.stdout.close()
            stderr = maker.stderr.read().decode(errors="replace")
            maker.wait()
        if maker.returncode != 0 or not self.exists(LOCAL_BASE):
            raise EmuError(f"mmdebstrap failed to make {LOCAL_BASE}:\n{stderr[-2000:]}")
        return LOCAL_BASE

    def build(self, tag: str, context: Path, buildargs: dict[str, str] | None = None, dockerfile: str = "Dockerfile") -> None:
        """docker build; raises EmuError with the build's last lines."""
        self.progress(f"building {tag}")
        tail: list[str] = []
        for chunk in self.runtime.api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=buildargs or {},
            rm=True,
            forcerm=True,
            decode=True,
        ):
            if "stream" in chunk:
                tail = (tail + chunk["stream"].splitlines())[-30:]
            if "error" in chunk:
                log = "\n".join(tail)
                raise EmuError(f"building {tag} failed: {chunk['error'].strip()}\n{log}")
        if not self.exists(tag):
            raise EmuError(f"building {tag} finished but the image is not there")

    def ensure_node_image(self) -> str:
        tag = node_image_tag()
        if not self.exists(tag):
            base = self.base_image()
            self.build(tag, IMAGES_DIR / "node", {"BASE_IMAGE": base})
        return tag

    def controller_wheels(self) -> Path:
        """Wheels of emu and its dependencies for the controller image, fetched by the
        host's pip (its index and certificates), so the image build needs no network."""
        import sys
        import tomllib

        wheels = REPO_ROOT / "build" / "controller-wheels"
        shutil.rmtree(wheels, ignore_errors=True)
        wheels.mkdir(parents=True)
        arch = {"aarch64": "aarch64", "arm64": "aarch64"}.get(self.runtime.api.info().get("Architecture"), "x86_64")
        requirements = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        # The node image's Python is Debian bookworm's 3.11.
        target = ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--only-binary=:all:"]
        for platform in ("manylinux2014", "manylinux_2_17", "manylinux_2_28"):
            target += ["--platform", f"{platform}_{arch}"]
        self.progress("fetching the controller's Python packages with pip")
        for command in (
            ["download", "--dest", str(wheels), *target, "--platform", "any", *requirements],
            ["wheel", "--no-deps", "--wheel-dir", str(wheels), str(REPO_ROOT)],
        ):
            result = subprocess.run(
                [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *command],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise EmuError(f"pip {command[0]} for the controller image failed:\n{result.stderr[-2000:]}")
        return wheels

    def ensure_controller_image(self) -> str:
        node = self.ensure_node_image()
        tag = controller_image_tag()
        if not self.exists(tag):
            self.controller_wheels()
            self.build(tag, REPO_ROOT, {"NODE_IMAGE": node}, dockerfile="images/controller/Dockerfile")
        return tag

    def build_all(self) -> list[str]:
        """Both images, also tagged :latest (what docker-compose.yml runs)."""
        tags = [self.ensure_node_image(), self.ensure_controller_image()]
        for tag in tags:
            repository = tag.split(":")[0]
            self.runtime.api.tag(tag, repository, "latest")
        return tags + [f"{tag.split(':')[0]}:latest" for tag in tags]
