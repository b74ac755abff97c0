"""Fixtures that build real clusters. Every cluster a test makes is named
emutest-*, removed when the test session ends (even on failure), and stale
ones from an interrupted run are removed when the next one starts.

Each name is registered with the pid of the test run that made it
(OWNERS/NAME), and the sweep spares clusters whose run is still alive, and
running emutest-* clusters no test run made (made by hand), so two test runs
(say in two git worktrees) can share one Docker engine."""

from __future__ import annotations

import fcntl
import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from emu.cluster import Cluster
from emu.errors import EmuError
from emu.runtime.docker import DockerRuntime
from emu.topology.load import load_file, load_text

ROOT = Path(__file__).resolve().parents[2]
TEST_PREFIX = "emutest"
OWNERS = Path(os.environ.get("TMPDIR", "/tmp")) / "emutest-owners"


def _owner_alive(name: str) -> bool:
    """True when the test run that made cluster NAME is still running."""
    try:
        pid = int((OWNERS / name).read_text())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _disown(name: str) -> None:
    (OWNERS / name).unlink(missing_ok=True)


LOCK = Path(os.environ.get("TMPDIR", "/tmp")) / "emutest-integration.lock"


def _one_run_at_a_time():
    """Hold LOCK for this test session: integration runs on one machine take
    turns (two at once on 2 cores make timeouts fail), waiting for each other."""
    handle = open(LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        print(f"\nwaiting for another integration test run (pid {holder}) to finish...", file=sys.__stderr__, flush=True)
        started = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        print(f"waited {time.monotonic() - started:.0f} s", file=sys.__stderr__, flush=True)
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


@pytest.fixture(scope="session")
def runtime():
    lock = _one_run_at_a_time()
    runtime = DockerRuntime()
    try:
        runtime.api
    except EmuError as error:
        pytest.fail(f"integration tests need Docker: {error}", pytrace=False)
    for name in runtime.cluster_names():
        if not name.startswith(TEST_PREFIX) or _owner_alive(name):
            continue
        if not (OWNERS / name).exists() and any(c.running for c in runtime.cluster_containers(name)):
            continue  # made by hand (not by a test run) and running: someone is using it
        runtime.remove_cluster(name)
        _disown(name)
    # What an interrupted compose test left: its controller container and network.
    project = "com.docker.compose.project"
    for container in runtime.api.containers(all=True, filters={"label": project}):
        name = container["Labels"][project]
        if name.startswith(TEST_PREFIX) and not _owner_alive(name):
            runtime.api.remove_container(container["Id"], force=True)
    for network in runtime.api.networks(filters={"label": project}):
        name = network["Labels"][project]
        if name.startswith(TEST_PREFIX) and not _owner_alive(name):
            runtime.api.remove_network(network["Id"])
    yield runtime
    for owner in OWNERS.glob(f"{TEST_PREFIX}-*"):
        if owner.read_text() == str(os.getpid()):
            owner.unlink(missing_ok=True)
    lock.close()


def unique_name(label: str) -> str:
    """A fresh emutest-* name, registered to this test run (see OWNERS)."""
    name = f"{TEST_PREFIX}-{label}-{uuid.uuid4().hex[:4]}"
    OWNERS.mkdir(parents=True, exist_ok=True)
    (OWNERS / name).write_text(str(os.getpid()))
    return name


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
