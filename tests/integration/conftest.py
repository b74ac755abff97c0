"""Fixtures that build real clusters. Every cluster a test makes is named
emutest-*, removed when the test session ends (even on failure), and stale
ones from an interrupted run are removed when the next one starts."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from emu.cluster import Cluster
from emu.errors import EmuError
from emu.runtime.docker import DockerRuntime
from emu.topology.load import load_file, load_text

ROOT = Path(__file__).resolve().parents[2]
TEST_PREFIX = "emutest"


@pytest.fixture(scope="session")
def runtime() -> DockerRuntime:
    runtime = DockerRuntime()
    try:
        runtime.api
    except EmuError as error:
        pytest.fail(f"integration tests need Docker: {error}", pytrace=False)
    for name in runtime.cluster_names():
        if name.startswith(TEST_PREFIX):
            runtime.remove_cluster(name)
    # What an interrupted compose test left: its controller container and network.
    project = "com.docker.compose.project"
    for container in runtime.api.containers(all=True, filters={"label": project}):
        if container["Labels"][project].startswith(TEST_PREFIX):
            runtime.api.remove_container(container["Id"], force=True)
    for network in runtime.api.networks(filters={"label": project}):
        if network["Labels"][project].startswith(TEST_PREFIX):
            runtime.api.remove_network(network["Id"])
    return runtime


def unique_name(label: str) -> str:
    return f"{TEST_PREFIX}-{label}-{uuid.uuid4().hex[:4]}"


@pytest.fixture(scope="session")
def new_name():
    """new_name(label) -> a cluster name the stale-cluster sweep recognises."""
    return unique_name


@pytest.fixture(scope="session")
def make_cluster(runtime):
    """make_cluster(topology_text_or_path, label) -> a running Cluster, removed at session end."""
    made: list[Cluster] = []

    def make(topology, label: str, wait: bool = True) -> Cluster:
        name = unique_name(label)
        if isinstance(topology, Path):
            loaded = load_file(topology)
        else:
            loaded = load_text(topology)
        loaded = loaded.model_copy(update={"name": name})
        cluster = Cluster(name, runtime=runtime)
        made.append(cluster)
        cluster.up(loaded, wait=wait)
        return cluster

    yield make
    if not os.environ.get("EMU_KEEP_CLUSTERS"):
        for cluster in made:
            cluster.down()


@pytest.fixture(scope="session")
def lab(make_cluster) -> Cluster:
    """The default lab (topologies/default.yaml), shared by read-only tests."""
    return make_cluster(ROOT / "topologies" / "default.yaml", "lab")
