"""emu's pytest plugin (entry point `pytest11: emu`).

Loaded by every pytest run in an environment with emu installed, it does
nothing until a test asks for one of its fixtures: no Docker call, no import
of emu's controller. Then `emu_cluster` brings up the topology of
`--emu-topology PATH` (or the ini setting `emu_topology`) once per session
(once per worker under pytest-xdist) and removes it at the end, also when
tests failed or the run was interrupted; a run that was killed leaves it
registered to a dead pid, and the next run's sweep removes it
(emu.testing.sweep, as emu's own test suite does).

    --emu-topology PATH   the topology (ini: emu_topology, relative to the ini file)
    --emu-name NAME       the cluster's name (ini: emu_name; default the topology's)
    --emu-keep            leave the cluster up when a test failed, for a look
    --emu-reuse           test against a running cluster of that name (converged to
                          the topology; made if missing) and leave it running
    --emu-no-docker error|skip  without a Docker engine: error (default) or skip
                          (ini: emu_no_docker)

Fixtures: emu_cluster (a Cluster), emu_clusters (path -> Cluster, for more
topologies), emu_pod / emu_node / emu_service / emu_host (name -> a handle,
or a testinfra Host for a pod), emu_capture (packets seen during a block).
See docs/testing.md.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

MESSAGES = pytest.StashKey[list]()


def pytest_addoption(parser):
    group = parser.getgroup("emu", "emu: Kubernetes-shaped networks in Docker (emu_cluster fixture)")
    group.addoption("--emu-topology", metavar="PATH", help="topology file the emu_cluster fixture brings up")
    group.addoption("--emu-name", metavar="NAME", help="name of that cluster (default: the topology's name)")
    group.addoption(
        "--emu-keep", action="store_true", help="leave the cluster up when a test failed (remove it with `emu down NAME`)"
    )
    group.addoption(
        "--emu-reuse",
        action="store_true",
        help="use a running cluster of that name (converged to the topology, made if missing) and leave it running",
    )
    group.addoption(
        "--emu-no-docker",
        choices=("error", "skip"),
        default=None,
        help="when no Docker engine answers: error (default) or skip the tests that need a cluster",
    )
    parser.addini("emu_topology", "topology file the emu_cluster fixture brings up (relative to this file)")
    parser.addini("emu_name", "name of that cluster (default: the topology's name)")
    parser.addini("emu_no_docker", "error or skip when no Docker engine answers", default="error")


def _setting(config, option: str, ini: str):
    value = config.getoption(option)
    if value:
        return value, Path(config.invocation_params.dir)
    value = config.getini(ini)
    if value:
        base = config.inipath.parent if config.inipath else config.rootpath
        return value, Path(base)
    return None, None


def pytest_report_header(config):
    topology, base = _setting(config, "emu_topology", "emu_topology")
    if topology:
        return f"emu: topology {base / topology}"
    return None


def pytest_configure(config):
    config.stash[MESSAGES] = []
    # testinfra's own `host` fixture then takes --hosts=emu://POD?context=CLUSTER too.
    try:
        from emu.testing.backend import register

        register()
    except Exception:  # no testinfra here: pod hosts are simply not offered
        pass


def pytest_terminal_summary(terminalreporter, config):
    messages = config.stash.get(MESSAGES, [])
    if messages:
        terminalreporter.section("emu")
        for message in messages:
            terminalreporter.write_line(message)


class Clusters:
    """The clusters of one test session, by topology file: made on first use,
    removed (or kept, or left) at the end."""

    def __init__(self, config):
        self.config = config
        self.made: dict[Path, tuple[object, bool]] = {}  # path -> (Cluster, reused)
        self.swept = False

    def _say(self, message: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(message)
        else:
            reporter.write_line(message)

    def _missing_docker(self, error) -> None:
        __tracebackhide__ = True
        choice = self.config.getoption("emu_no_docker") or self.config.getini("emu_no_docker") or "error"
        if choice not in ("error", "skip"):
            pytest.fail(f"emu_no_docker = {choice!r}: write error or skip", pytrace=False)
        message = f"emu needs a Docker engine: {error}"
        if choice == "skip":
            pytest.skip(message)
        pytest.fail(message + " (pass --emu-no-docker=skip to skip these tests instead)", pytrace=False)

    def get(self, topology: str | os.PathLike | None = None, name: str | None = None):
        """The cluster of `topology` (default: --emu-topology / emu_topology), made
        once per session."""
        __tracebackhide__ = True
        from emu.control.cluster import Cluster
        from emu.errors import EmuError
        from emu.control.runtime.select import provider_for
        from emu.testing import sweep
        from emu.api.load import load_file

        if topology is None:
            topology, base = _setting(self.config, "emu_topology", "emu_topology")
            if topology is None:
                pytest.fail(
                    "emu_cluster needs a topology: pass --emu-topology PATH, or set emu_topology in the "
                    "[pytest] section of pytest.ini (see docs/testing.md)",
                    pytrace=False,
                )
            name = name or _setting(self.config, "emu_name", "emu_name")[0]
            path = (base / topology).resolve()
        else:
            path = (Path(self.config.invocation_params.dir) / topology).resolve()
        if path in self.made:
            return self.made[path][0]
        loaded, problem = None, None
        try:
            loaded = load_file(path)
        except EmuError as error:
            problem = f"emu: {error}"
        if problem:  # failed outside the except block, so no chained traceback is shown
            pytest.fail(problem, pytrace=False)
        name = name or loaded.name
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        if worker:
            name = f"{name}-{worker}"
        try:
            runtime = provider_for(name, list(loaded.hosts), loaded.runtime)
            running = runtime.cluster_names()
        except EmuError as error:
            problem = str(error)
        if problem:
            self._missing_docker(problem)
        if not self.swept:
            self.swept = True
            removed = sweep.sweep(runtime)
            if removed:
                self._say(f"emu: removed clusters left by test runs that are gone: {', '.join(removed)}")
            running = runtime.cluster_names()
        reuse = self.config.getoption("emu_reuse")
        if name in running and not reuse:
            if sweep.registered(name) and sweep.owner_alive(name):
                pytest.fail(f"emu: cluster '{name}' belongs to another test run that is still going", pytrace=False)
            pytest.fail(
                f"emu: a cluster named '{name}' is already running and this test run did not make it; "
                f"pass --emu-reuse to test against it, or remove it with `emu down {name}`",
                pytrace=False,
            )
        if name not in running and not reuse:
            sweep.register(name)
        cluster = Cluster(name, runtime=runtime)
        self.made[path] = (cluster, bool(reuse))
        started = time.monotonic()
        verb = "converging" if name in running else "bringing up"
        self._say(f"emu: {verb} cluster '{name}' from {path}")
        try:
            cluster.up(loaded.model_copy(update={"name": name}))
        except EmuError as error:
            problem = f"emu: cluster '{name}' from {path}: {error}"
        if problem:
            pytest.fail(problem, pytrace=False)
        self._say(f"emu: cluster '{name}' ready in {time.monotonic() - started:.1f} s")
        return cluster

    def close(self, failed: int) -> list[str]:
        """Remove what this session made; return what to tell the user."""
        from emu.testing import sweep

        messages = []
        keep = self.config.getoption("emu_keep")
        for cluster, reused in self.made.values():
            if reused:
                messages.append(f"cluster '{cluster.name}' left running (--emu-reuse); `emu down {cluster.name}` removes it")
            elif keep and failed:
                sweep.disown(cluster.name)
                messages.append(
                    f"cluster '{cluster.name}' kept after {failed} failed test(s) (--emu-keep): look with "
                    f"`emu status --name {cluster.name}`, remove it with `emu down {cluster.name}`"
                )
            else:
                try:
                    cluster.down()
                finally:
                    sweep.disown(cluster.name)
        self.made.clear()
        return messages


@pytest.fixture(scope="session")
def emu_clusters(request):
    """emu_clusters(topology=None, name=None) -> a running Cluster of that topology
    file (default: --emu-topology), made once per session and removed at its end."""
    clusters = Clusters(request.config)
    yield clusters.get
    request.config.stash[MESSAGES].extend(clusters.close(request.session.testsfailed))


@pytest.fixture(scope="session")
def emu_cluster(emu_clusters):
    """The cluster of --emu-topology (or ini emu_topology): an emu.control.cluster.Cluster
    (exec, endpoints, state, host(POD) for a testinfra Host in a pod, ...)."""
    return emu_clusters()


@pytest.fixture(scope="session")
def emu_pod(emu_cluster):
    """emu_pod("client") -> emu.testing.Pod (ip, node, exec, host) of emu_cluster."""
    from emu.testing import lab

    return lambda reference: lab.pod(emu_cluster, reference)


@pytest.fixture(scope="session")
def emu_node(emu_cluster):
    """emu_node("worker") -> emu.testing.Node (ip, pod_cidr, container, exec, host)."""
    from emu.testing import lab

    return lambda name: lab.node(emu_cluster, name)


@pytest.fixture(scope="session")
def emu_service(emu_cluster):
    """emu_service("echo") -> emu.testing.Service (cluster_ip, port, node_port, endpoints)."""
    from emu.testing import lab

    return lambda reference: lab.service(emu_cluster, reference)


@pytest.fixture(scope="session")
def emu_capture(emu_cluster):
    """with emu_capture("client", "svc/echo", filter="tcp") as seen: ... -> the decoded
    packets each interface saw during the block (emu.testing.capture)."""
    from functools import partial

    from emu.testing.capture import capture

    return partial(capture, emu_cluster)


@pytest.fixture(scope="session")
def emu_host(emu_cluster):
    """emu_host("client", container=None) -> a testinfra Host whose commands run in the pod."""
    from emu.testing.backend import pod_host

    return lambda pod, container=None: pod_host(emu_cluster, pod, container)
