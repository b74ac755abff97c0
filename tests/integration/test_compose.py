"""The compose lab: `docker compose up` brings a cluster up from emu's controller container,
building that container's image itself as in a fresh clone (its `build:`).

Cost: with Docker's build cache (any earlier build of the same Dockerfile) the
rebuild takes a few seconds; without it, 41 s on the project machine (Debian's
packages for emu's dependencies; `docker compose build --no-cache`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from emu.control.cluster import Cluster
from emu.control.runtime.images import ImageBuilder

ROOT = Path(__file__).resolve().parents[2]
LAB = """\
name: {name}
nodes: [{{name: cp, role: control-plane}}, {{name: w1}}]
pods:
  - name: client
    containers: [{{name: c, command: [sleep, infinity]}}]
  - name: server
    labels: {{app: server}}
    containers: [{{name: s, workload: netexec, ports: [{{name: http, containerPort: 8080}}]}}]
services:
  - name: server
    selector: {{app: server}}
    ports: [{{port: 80, targetPort: http}}]
"""


def compose_available() -> bool:
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


def compose_base_image(runtime) -> str:
    """EMU_BASE_IMAGE for the compose build: debian:trixie-slim where it is here or
    can be pulled, else the local Debian 12 image emu makes (as the compose file says)."""
    builder = ImageBuilder(runtime)
    if builder.exists("debian:trixie-slim"):
        return "debian:trixie-slim"
    try:
        runtime.api.pull("debian", tag="trixie-slim")
        return "debian:trixie-slim"
    except Exception:  # no registry (the project machine): docker pull fails at once
        return builder.base_image()


@pytest.mark.skipif(not compose_available(), reason="docker compose is not installed (scripts/ensure-docker.sh installs it)")
def test_docker_compose_up_brings_the_lab_up(runtime, new_name, tmp_path):
    # As in a fresh clone: no controller image; `up --build` must make it from the checkout.
    # (The node image and Docker's build cache stay: the controller builds the node image
    # itself when it is missing, as `emu up` does on the host.)
    if ImageBuilder(runtime).exists("emu/controller:latest"):
        runtime.api.remove_image("emu/controller:latest")
    name = new_name("compose")
    (tmp_path / "lab.yaml").write_text(LAB.format(name=name))
    env = {**os.environ, "EMU_TOPOLOGIES": str(tmp_path), "EMU_TOPOLOGY": "lab.yaml",
           "EMU_BASE_IMAGE": compose_base_image(runtime)}  # fmt: skip
    compose = ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "-p", name]
    try:
        up = subprocess.run([*compose, "up", "--build", "--exit-code-from", "emu"], env=env, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        built = runtime.api.inspect_image("emu/controller:latest")
        assert built["Config"]["Labels"]["io.emu.image"] == "controller"
        cluster = Cluster(name, runtime=runtime)
        answer = cluster.exec("client", ["curl", "-sS", "--max-time", "5", "http://server/hostname"])
        assert answer.output == "server", answer.output
        status = subprocess.run([*compose, "run", "--rm", "emu", "status", "--json", "--name", name], env=env,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert status.returncode == 0 and '"name": "server"' in status.stdout, status.stderr
        down = subprocess.run([*compose, "run", "--rm", "emu", "down", name], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert down.returncode == 0 and "removed" in down.stdout, down.stdout + down.stderr
        assert runtime.cluster_containers(name) == []
    finally:
        subprocess.run([*compose, "down", "--remove-orphans"], env=env, capture_output=True, timeout=120)
        runtime.remove_cluster(name)
