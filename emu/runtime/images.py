"""Node and controller images: built from images/, tagged by content hash.

The base is debian:bookworm-slim. Where it can't be pulled (no registry, as on
an offline machine) emu makes an equivalent from Debian's packages with
`mmdebstrap --variant=minbase bookworm - | docker import`, and says so.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from emu.errors import EmuError
from emu.runtime.docker import DockerRuntime

UPSTREAM_BASE = "debian:bookworm-slim"
LOCAL_BASE = "emu/debian:bookworm-slim"
REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO_ROOT / "images"

Progress = Callable[[str], None]


def _content_hash(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(REPO_ROOT)).encode())
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
    return "emu/node:" + _content_hash(_files_under(IMAGES_DIR / "node"))


def controller_image_tag() -> str:
    sources = _files_under(IMAGES_DIR / "controller", REPO_ROOT / "emu", REPO_ROOT / "pyproject.toml")
    return "emu/controller:" + _content_hash(sources)


class ImageBuilder:
    def __init__(self, runtime: DockerRuntime, progress: Progress = lambda message: None):
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

    def build(self, tag: str, dockerfile: str, buildargs: dict[str, str] | None = None) -> None:
        """docker build with the repository as context; raises EmuError with the build's last lines."""
        self.progress(f"building {tag}")
        tail: list[str] = []
        for chunk in self.runtime.api.build(
            path=str(REPO_ROOT),
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
            self.build(tag, "images/node/Dockerfile", {"BASE_IMAGE": base})
        return tag

    def ensure_controller_image(self) -> str:
        node = self.ensure_node_image()
        tag = controller_image_tag()
        if not self.exists(tag):
            self.build(tag, "images/controller/Dockerfile", {"NODE_IMAGE": node})
        return tag

    def build_all(self) -> list[str]:
        return [self.ensure_node_image(), self.ensure_controller_image()]
