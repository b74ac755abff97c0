"""Handles on a running cluster's pods, nodes and services, for tests.

Each is read from the cluster's state when made (`pod(cluster, "client")`), so
it names what was running then: a pod's IP, a service's cluster IP and ports.
Commands go through the cluster as `emu exec` sends them.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.control.cluster import Cluster, find_node, find_pod
from emu.errors import EmuError
from emu.node.records import NodeState, PodState, ServiceState
from emu.control.runtime.provider import ExecResult


def _argv(command: str | list[str]) -> list[str]:
    return ["sh", "-c", command] if isinstance(command, str) else list(command)


class _Namespaced:
    """name, namespace and NAMESPACE/NAME of a pod's or a service's state."""

    state: PodState | ServiceState

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def namespace(self) -> str:
        return self.state.namespace

    @property
    def key(self) -> str:
        """NAMESPACE/NAME, as the connectivity matrix labels pods."""
        return self.state.key

    def __str__(self) -> str:
        return self.key


@dataclass
class Pod(_Namespaced):
    """A pod: `ip`, `node`, `exec(...)`, and `host`, a testinfra Host in it."""

    cluster: Cluster
    state: PodState

    @property
    def ip(self) -> str:
        return self.state.ip

    @property
    def node(self) -> str:
        return self.state.node

    def exec(self, command: str | list[str], container: str | None = None) -> ExecResult:
        """Run a command (a string goes to `sh -c`) in the pod; stdout and stderr together."""
        return self.cluster.exec(self.key, _argv(command), container)

    @property
    def host(self):
        """A testinfra Host whose commands run in this pod (its first container)."""
        from emu.testing.backend import pod_host

        return pod_host(self.cluster, self.key)


@dataclass
class Node:
    """A node: `ip`, `pod_cidr`, `container`, `exec(...)` in its root namespace,
    and `host`, testinfra's docker:// Host for its container."""

    cluster: Cluster
    state: NodeState

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def ip(self) -> str:
        return self.state.node_ip

    @property
    def pod_cidr(self) -> str:
        return self.state.pod_cidr

    @property
    def container(self) -> str:
        return self.state.container

    @property
    def key(self) -> str:
        return f"node/{self.name}"

    def exec(self, command: str | list[str]) -> ExecResult:
        return self.cluster.node_exec(self.name, _argv(command))

    @property
    def host(self):
        import testinfra

        return testinfra.get_host(f"docker://{self.container}")

    def __str__(self) -> str:
        return self.key


@dataclass
class Service(_Namespaced):
    """A service: `cluster_ip`, `port(name)`, `node_port(name)`, `external_ip`,
    `dns_name`, and `endpoints()`, the ready endpoints the agents program."""

    cluster: Cluster
    state: ServiceState

    @property
    def type(self) -> str:
        return self.state.type

    @property
    def cluster_ip(self) -> str:
        return self.state.cluster_ip

    @property
    def external_ip(self) -> str | None:
        return self.state.load_balancer_ip

    @property
    def dns_name(self) -> str:
        """NAME.NAMESPACE, which a pod's resolver completes with svc.cluster.local."""
        return f"{self.name}.{self.namespace}"

    def _port(self, which: str | int | None):
        ports = self.state.ports
        if which is None and len(ports) == 1:
            return ports[0]
        for port in ports:
            if which in (port.name, port.port):
                return port
        known = ", ".join(f"{p.name or '<unnamed>'}={p.port}/{p.protocol}" for p in ports) or "none"
        raise EmuError(f"service {self.key} has no port {which!r} (ports: {known})")

    def port(self, which: str | int | None = None) -> int:
        """The service port called `which` (a name or number; the only one if None)."""
        return self._port(which).port

    def node_port(self, which: str | int | None = None) -> int:
        found = self._port(which)
        if found.node_port is None:
            raise EmuError(f"service {self.key} ({self.type}) has no node port on port {found.port}")
        return found.node_port

    def endpoints(self, which: str | int | None = None) -> list[str]:
        """Ready endpoints ("ip:port") of one port (the only one if None), as programmed now."""
        found = self._port(which)
        return sorted(self.cluster.endpoints().get(self.key, {}).get(found.name, []))


def pod(cluster: Cluster, reference: str) -> Pod:
    """The pod NAME (namespace default) or NAMESPACE/NAME."""
    return Pod(cluster, find_pod(cluster.state(), reference))


def node(cluster: Cluster, name: str) -> Node:
    return Node(cluster, find_node(cluster.state(), name))


def find_service(services: dict[str, ServiceState], reference: str) -> ServiceState:
    key = reference if "/" in reference else f"default/{reference}"
    if key in services:
        return services[key]
    known = ", ".join(sorted(services)) or "none"
    raise EmuError(f"no service '{reference}' (services: {known}); use NAME or NAMESPACE/NAME")


def service(cluster: Cluster, reference: str) -> Service:
    """The service NAME (namespace default) or NAMESPACE/NAME."""
    return Service(cluster, find_service(cluster.state().services, reference))
