"""The compose lab as a fresh clone meets it: plain `docker compose up` (no
`--build`, no `emu images build` first) finds neither emu image, builds the
controller from the checkout (its `build:`; never pulled: `pull_policy: never`),
and the controller builds the node image through the Docker socket; the lab
answers; `emu down` in the controller and `docker compose down` leave nothing.

What a fresh clone lacks is made so here without disturbing other runs: the
controller image gets a throwaway name (a second compose file names it), and
the node image's tag is set aside (tagged under another name, so its layers
stay and the rebuild takes Docker's build cache) and put back afterwards.

Cost: with Docker's build cache (any earlier build of the same Dockerfiles)
the builds take a few seconds; without it, the controller 41 s on the project
machine (Debian's packages for emu's dependencies; `docker compose build
--no-cache`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from emu.control.cluster import Cluster
from emu.control.runtime.images import ImageBuilder, node_image_tag
from emu.control.runtime.provider import LABEL_CLUSTER

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "com.docker.compose.project"
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


def left_by(runtime, label: str) -> list[str]:
    """Containers (running or not), networks and volumes labelled LABEL (key=value)."""
    api = runtime.api
    return ([f"container {c['Names'][0]}" for c in api.containers(all=True, filters={"label": label})]
            + [f"network {n['Name']}" for n in api.networks(filters={"label": label})]
            + [f"volume {v['Name']}" for v in api.volumes(filters={"label": label}).get("Volumes") or []])  # fmt: skip


@pytest.mark.skipif(not compose_available(), reason="docker compose is not installed (scripts/ensure-docker.sh installs it)")
def test_docker_compose_up_builds_what_it_needs_and_down_leaves_nothing(runtime, new_name, tmp_path):
    builder = ImageBuilder(runtime)
    name = new_name("compose")
    controller = f"emutest/controller:{name}"
    node = node_image_tag()
    node_repository, node_tag = node.split(":")
    aside = f"emutest/node-aside:{name}"
    assert not builder.exists(controller)
    (tmp_path / "throwaway.yml").write_text(f"services:\n  emu:\n    image: {controller}\n")
    (tmp_path / "lab.yaml").write_text(LAB.format(name=name))
    env = {**os.environ, "EMU_TOPOLOGIES": str(tmp_path), "EMU_TOPOLOGY": "lab.yaml",
           "EMU_BASE_IMAGE": compose_base_image(runtime)}  # fmt: skip
    compose = ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "-f", str(tmp_path / "throwaway.yml"),
               "-p", name]  # fmt: skip
    if builder.exists(node):
        runtime.api.tag(node, "emutest/node-aside", name)
        runtime.api.remove_image(node)  # only the tag goes: the image keeps its other name
    try:
        assert not builder.exists(node)
        up = subprocess.run([*compose, "up", "--exit-code-from", "emu"], env=env, capture_output=True, text=True,
                            timeout=900)  # fmt: skip
        output = up.stdout + up.stderr
        assert up.returncode == 0, output
        assert "Pulling" not in output, output  # built, not looked for in a registry
        assert runtime.api.inspect_image(controller)["Config"]["Labels"]["io.emu.image"] == "controller"
        assert builder.exists(node), f"the controller did not build {node}:\n{output}"
        cluster = Cluster(name, runtime=runtime)
        answer = cluster.exec("client", ["curl", "-sS", "--max-time", "5", "http://server/hostname"])
        assert answer.output == "server", answer.output
        status = subprocess.run([*compose, "run", "--rm", "emu", "status", "--json", "--name", name], env=env,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert status.returncode == 0 and '"name": "server"' in status.stdout, status.stderr
        assert left_by(runtime, f"{PROJECT}={name}")  # the controller's container and network, until down
        down = subprocess.run([*compose, "run", "--rm", "emu", "down", name], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert down.returncode == 0 and "removed" in down.stdout, down.stdout + down.stderr
        assert left_by(runtime, f"{LABEL_CLUSTER}={name}") == []
        down = subprocess.run([*compose, "down"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert left_by(runtime, f"{PROJECT}={name}") == []
    finally:
        subprocess.run([*compose, "down", "--remove-orphans"], env=env, capture_output=True, timeout=120)
        runtime.remove_cluster(name)
        if builder.exists(controller):
            runtime.api.remove_image(controller)
        if builder.exists(aside):
            if not builder.exists(node):
                runtime.api.tag(aside, node_repository, node_tag)
            runtime.api.remove_image(aside)
