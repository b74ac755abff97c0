"""The compose lab: `docker compose up` brings a cluster up from emu's controller container."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from emu.cluster import Cluster
from emu.runtime.images import ImageBuilder

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


@pytest.mark.skipif(not compose_available(), reason="docker compose is not installed (scripts/ensure-docker.sh installs it)")
def test_docker_compose_up_brings_the_lab_up(runtime, new_name, tmp_path):
    ImageBuilder(runtime).build_all()  # what the lab's instructions say to run first
    name = new_name("compose")
    (tmp_path / "lab.yaml").write_text(LAB.format(name=name))
    env = {**os.environ, "EMU_TOPOLOGIES": str(tmp_path), "EMU_TOPOLOGY": "lab.yaml"}
    compose = ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "-p", name]
    try:
        up = subprocess.run([*compose, "up", "--exit-code-from", "emu"], env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
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
