"""Every lab of topologies/labs/ brought up fresh and its own checks run on it,
so the labs' READMEs stay true."""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LABS = ROOT / "topologies" / "labs"
FOLDERS = sorted(path.parent for path in LABS.glob("*/lab.yaml"))


def checks(folder: Path) -> list:
    """The lab's test functions, each taking the running lab."""
    sys.path.insert(0, str(LABS))  # labcheck, which the labs' checks import
    try:
        [path] = folder.glob("test_*.py")
        spec = importlib.util.spec_from_file_location(f"lab_{folder.name.replace('-', '_')}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(LABS))
    return [function for name, function in inspect.getmembers(module, inspect.isfunction) if name.startswith("test_")]


@pytest.mark.parametrize("folder", FOLDERS, ids=[folder.name for folder in FOLDERS])
def test_lab(folder, make_cluster):
    cluster = make_cluster(folder / "lab.yaml", f"lab-{folder.name[:12]}")
    try:
        found = checks(folder)
        assert found, f"{folder} has no checks"
        for check in found:
            check(cluster)
    finally:
        cluster.down()  # one lab at a time: the next one gets the machine


def test_each_lab_has_its_compose_file_and_readme():
    assert [folder.name for folder in FOLDERS] == [
        "container-to-container",
        "dns",
        "internet-to-service",
        "pod-to-pod",
        "pod-to-service",
    ]
    for folder in FOLDERS:
        compose = yaml.safe_load((folder / "docker-compose.yml").read_text())
        service = compose["services"]["emu"]
        assert service["image"] == "emu/controller:latest" and service["command"] == ["up", "/lab/lab.yaml"]
        assert_builds_the_controller(service, folder)
        assert ".:/lab:ro" in service["volumes"] and "/var/run/docker.sock:/var/run/docker.sock" in service["volumes"]
        readme = (folder / "README.md").read_text()
        assert "docker compose up" in readme and "emu trace" in readme and "emu graph" in readme, folder.name


def assert_builds_the_controller(service: dict, folder: Path) -> None:
    """`docker compose up` in a fresh clone builds the controller from the checkout."""
    assert service["pull_policy"] == "never"  # built here, never a registry's image given the Docker socket
    build = service["build"]
    assert (folder / build["context"]).resolve() == ROOT, folder
    assert build["dockerfile"] == "images/controller/source.Dockerfile" and (ROOT / build["dockerfile"]).is_file()
    assert build["args"]["BASE_IMAGE"] == "${EMU_BASE_IMAGE:-debian:trixie-slim}"
    assert "network_mode" not in service  # its own network: emu asks the API server from inside its node


def test_the_root_compose_file_builds_the_controller_too():
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["emu"]
    assert service["image"] == "emu/controller:latest"
    assert_builds_the_controller(service, ROOT)


def compose_available() -> bool:
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(
    not compose_available(), reason="docker compose is not installed (scripts/ensure-docker.sh installs it)"
)
def test_a_lab_comes_up_with_docker_compose_from_its_folder(runtime, new_name):
    """As its README says: docker compose in the lab's folder (the controller
    container, the lab's folder mounted); under a test name, then its checks."""
    from emu.control.cluster import Cluster
    from emu.control.runtime.images import ImageBuilder

    ImageBuilder(runtime).build_all()
    folder = LABS / "pod-to-service"
    name = new_name("lab-compose")
    compose = ["docker", "compose", "-p", name]
    try:
        up = subprocess.run(
            [*compose, "run", "--rm", "emu", "up", "/lab/lab.yaml", "--name", name],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        cluster = Cluster(name, runtime=runtime)
        for check in checks(folder):
            check(cluster)
        traced = subprocess.run(
            [*compose, "run", "--rm", "emu", "trace", "client", "echo", "--name", name],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert traced.returncode == 0 and "KUBE-SEP-" in traced.stdout, traced.stdout + traced.stderr
    finally:
        subprocess.run([*compose, "down", "--remove-orphans"], cwd=folder, capture_output=True, timeout=120)
        runtime.remove_cluster(name)
