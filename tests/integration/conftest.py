"""Fixtures that build real clusters. Every cluster a test makes is named
emutest-*, removed when the test session ends (even on failure), and stale
ones from an interrupted run are removed when the next one starts. Clusters
are made per module (make_cluster), except the default lab several modules share.

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
from emu.control.runtime.swarm import SwarmRuntime
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


def _maker(runtime, made: list[Cluster]):
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

    return make


def _remove(made: list[Cluster]) -> None:
    if not os.environ.get("EMU_KEEP_CLUSTERS"):
        for cluster in made:
            cluster.down()


@pytest.fixture(scope="module")
def make_cluster(runtime):
    """make_cluster(topology_text_or_path, label) -> a running Cluster, removed when
    the module is done: a cluster left up keeps its agents busy (CPU every later
    test shares) and its host ports taken, so clusters must not pile up over the
    session. (For a module parametrised over proxy_mode: when that mode's tests
    are done.)"""
    made: list[Cluster] = []
    yield _maker(runtime, made)
    _remove(made)


@pytest.fixture(scope="module")
def make_module_cluster(make_cluster):
    """The same as make_cluster (module scope), by its older name."""
    return make_cluster


@pytest.fixture(scope="session")
def _make_session_cluster(runtime):
    """For a cluster shared by several modules (`lab`): removed at session end."""
    made: list[Cluster] = []
    yield _maker(runtime, made)
    _remove(made)


# The proxy modes (networking.proxyMode) the behaviour modules run in: DNS
# (test_dns.py), NetworkPolicy (test_netpol.py), Ingress
# (test_ingress_traffic.py) and failover (test_failover.py) ask for
# `proxy_mode` and run once per entry (test_service_features.py runs the same
# two modes with a fixed network each). Add a mode here to add it to their matrix. Plain services run in every
# mode in test_proxy_modes.py; ipvs needs a kernel with ip_vs (test_ipvs_uml.py
# runs it on a User-mode Linux kernel).
PROXY_MODES = ["iptables", "nftables"]


@pytest.fixture(scope="module", params=PROXY_MODES)
def proxy_mode(request) -> str:
    return request.param


def in_proxy_mode(topology: str, mode: str) -> str:
    """The topology text with networking.proxyMode set after its first line (its name);
    it must have no networking section of its own."""
    first, _, rest = topology.partition("\n")
    assert "networking:" not in rest, "in_proxy_mode: the topology has a networking section already"
    return f"{first}\nnetworking: {{proxyMode: {mode}}}\n{rest}"


@pytest.fixture(scope="session")
def lab(_make_session_cluster) -> Cluster:
    """The default lab (topologies/default.yaml), shared by read-only tests of
    several modules (test_images, test_lifecycle, test_pod_network)."""
    return _make_session_cluster(ROOT / "topologies" / "default.yaml", "lab")


@pytest.fixture(scope="module")
def swarm_lab(tmp_path_factory):
    """Three hosts (tests/hostlab.py) in a swarm with emu's node image; emu's records in a private EMU_HOME.
    Module-scoped: each module that uses it gets hosts of its own (test_multihost stops an engine)."""
    from emu.control.hosts import prepare_hosts
    from emu.control.runtime.images import node_image_tag
    from tests import hostlab

    if os.geteuid() != 0:
        pytest.skip("the multi-host lab needs root: network namespaces, dockerd and sshd per host")
    home = tmp_path_factory.mktemp("emu-home")
    with pytest.MonkeyPatch.context() as patch, hostlab.session(3, progress=lambda message: None) as lab:
        patch.setenv("EMU_HOME", str(home))
        hosts = lab.models()
        prepare_hosts(hosts, [node_image_tag()], progress=lambda message: None)
        sweep = SwarmRuntime(hosts)
        for name in sweep.cluster_names():  # what an interrupted run left
            if name.startswith("emutest"):
                sweep.remove_cluster(name)
        sweep.close()
        yield lab
