"""Fixtures that build real clusters. Every cluster a test makes is named
emutest-*, removed when the test session ends (even on failure), and stale
ones from an interrupted run are removed when the next one starts.

Each name is registered with the pid of the test run that made it, and the
sweep spares clusters whose run is still alive, and running emutest-* clusters
no test run made (made by hand), so two test runs (say in two git worktrees)
can share one Docker engine: emu.testing.sweep, which the pytest plugin for
users (emu.testing.plugin) uses too."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from emu.control.cluster import Cluster
from emu.errors import EmuError
from emu.control.runtime.docker import DockerRuntime
from emu.testing import sweep
from emu.api.load import load_file, load_text

ROOT = Path(__file__).resolve().parents[2]
TEST_PREFIX = "emutest"
LOCK = Path(os.environ.get("TMPDIR", "/tmp")) / "emutest-integration.lock"


@pytest.fixture(scope="session")
def runtime():
    # Integration runs on one machine take turns (two at once on 2 cores make timeouts fail).
    lock = sweep.run_lock(LOCK)
    runtime = DockerRuntime()
    try:
        runtime.api
    except EmuError as error:
        pytest.fail(f"integration tests need Docker: {error}", pytrace=False)
    sweep.sweep(runtime, prefix=TEST_PREFIX)
    # What an interrupted compose test left: its controller container and network.
    project = "com.docker.compose.project"
    for container in runtime.api.containers(all=True, filters={"label": project}):
        name = container["Labels"][project]
        if name.startswith(TEST_PREFIX) and not sweep.owner_alive(name):
            runtime.api.remove_container(container["Id"], force=True)
    for network in runtime.api.networks(filters={"label": project}):
        name = network["Labels"][project]
        if name.startswith(TEST_PREFIX) and not sweep.owner_alive(name):
            runtime.api.remove_network(network["Id"])
    yield runtime
    sweep.disown_all()
    lock.close()


def unique_name(label: str) -> str:
    """A fresh emutest-* name, registered to this test run (see emu.testing.sweep)."""
    return sweep.register(f"{TEST_PREFIX}-{label}-{uuid.uuid4().hex[:4]}")


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
