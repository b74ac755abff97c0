"""The provider seam: what emu needs from a container engine, in emu's own records.

Two siblings implement it: `docker.DockerRuntime` (one engine, this machine's
or any one reachable) and `swarm.SwarmRuntime` (several engines joined in a
Docker Swarm, a cluster's nodes spread over them). Code outside emu/control/runtime/
sees only this interface and these records, never an engine's data shapes, as
kind's providers/{docker,podman,nerdctl} and Kathara's managers do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

LABEL_CLUSTER = "io.emu.cluster"
LABEL_ROLE = "io.emu.role"
LABEL_NODE = "io.emu.node"
LABEL_HOST = "io.emu.host"
ROLE_EXTERNAL = "external"
ROLE_POD = "pod"  # a sandbox or container of an image pod (emu.control.runtime.sandbox)

Progress = Callable[[str], None]


@dataclass
class ExecResult:
    exit_code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass
class NodeSpec:
    """A node container to create."""

    container: str
    hostname: str
    role: str
    cluster: str
    image: str
    network: str
    ip: str
    host: str = ""  # which Docker host ("" on one engine)
    command: list[str] = field(default_factory=lambda: ["sleep", "infinity"])
    ports: list[PortMapping] = field(default_factory=list)  # Docker host ports forwarded to the node


@dataclass(frozen=True)
class PortMapping:
    """A host port forwarded to a node's port (kind's extraPortMappings)."""

    listen_address: str
    host_port: int
    container_port: int
    protocol: str  # TCP | UDP

    def __str__(self) -> str:
        return f"{self.listen_address}:{self.host_port}->{self.container_port}/{self.protocol.lower()}"


@dataclass(frozen=True)
class ContainerRecord:
    """A container of a cluster, as a provider reports it."""

    name: str
    cluster: str
    role: str  # control-plane | worker | external
    node: str  # the node's name ("" for an external container)
    host: str  # the Docker host it is on ("" on one engine)
    running: bool
    status: str = ""  # the engine's words for its state ("Exited (137) 2 minutes ago"), for messages

    @property
    def is_node(self) -> bool:
        return self.role not in (ROLE_EXTERNAL, ROLE_POD)


class StreamHandle(Protocol):
    """A command running in a container whose stdout is read as it comes
    (`Provider.exec_stream`). The remote process is found again by a unique
    marker in its environment, so stopping it never depends on the connection."""

    def read(self) -> bytes:
        """The next chunk of the command's stdout; b"" once it has ended."""
        ...

    def errors(self) -> str:
        """What the command wrote to stderr so far."""
        ...

    def terminate(self) -> None:
        """Ask the command to end (SIGTERM): it finishes its output and the stream reaches its end."""
        ...

    def close(self) -> None:
        """Kill whatever is left of the command (SIGKILL) and drop the connection."""
        ...

    def exit_code(self) -> int | None:
        """The command's exit code once it has ended, else None."""
        ...


def run_parallel(function: Callable, items: list, workers: int = 16) -> list:
    """function(item) for every item, `workers` at a time (nodes and hosts are
    independent); first error re-raised."""
    from concurrent.futures import ThreadPoolExecutor

    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(function, items))


class Clusters(Protocol):
    """The clusters an engine holds: finding them and their parts, and removing
    them (kind's Provider: ListClusters, ListNodes, DeleteNodes)."""

    def cluster_names(self) -> list[str]: ...
    def cluster_containers(self, cluster: str) -> list[ContainerRecord]: ...
    def cluster_networks(self, cluster: str) -> list[str]: ...
    def published_ports(self, host: str | None = None) -> dict[tuple[int, str], str]: ...
    def remove_cluster(self, cluster: str) -> tuple[int, int]: ...
    def parallel(self, function: Callable, items: list) -> list: ...


class Provisioning(Protocol):
    """Making a cluster's network, node containers and external hosts, and starting
    a stopped node again (kind's Provider.Provision)."""

    mtu: int  # the cluster network's MTU, which pods' interfaces take

    def pick_subnet(self, requested: str | None, avoid: list[str]) -> str: ...
    def create_network(self, name: str, subnet: str, cluster: str) -> None: ...
    def check_ports(self, specs: list[NodeSpec]) -> None: ...
    def create_node(self, spec: NodeSpec) -> None: ...
    def start_node(self, container: str) -> None: ...
    def run_external(self, cluster: str, name: str, network: str, image: str) -> None: ...
    def node_image(self, progress: Progress) -> str: ...


class NodeExec(Protocol):
    """Work inside one node (or external) container, named by the container (kind's
    nodes.Node: Command, and its exec helpers): commands, files, its address."""

    def exec(self, container: str, argv: list[str], environment: dict[str, str] | None = None) -> ExecResult: ...
    def exec_split(self, container: str, argv: list[str]) -> tuple[int, bytes, bytes]: ...
    def exec_detached(self, container: str, argv: list[str]) -> None: ...
    def exec_stream(self, container: str, argv: list[str]) -> StreamHandle: ...
    def interactive(self, container: str, argv: list[str], tty: bool) -> int: ...
    def put_files(self, container: str, files: dict[str, str | bytes], mode: int = 0o644) -> None: ...
    def run_with_files(self, container: str, files: dict[str, str | bytes], argv: list[str]) -> ExecResult: ...
    def read_file(self, container: str, path: str, limit: int | None = None) -> str | None: ...
    def container_ip(self, container: str, network: str) -> str: ...


class Sandboxes(Protocol):
    """Image pods (emu.control.runtime.sandbox): a pause-like sandbox and the pod's
    containers in its network namespace, each on the engine of its node (the
    CRI's RunPodSandbox, CreateContainer, StartContainer ... as far as emu needs)."""

    def ensure_images(self, images: list[str], node_container: str) -> list[str]: ...
    def start_sandbox(self, pod) -> None: ...
    def create_containers(self, pod) -> None: ...
    def start_containers(self, pod) -> None: ...
    def remove_pod_containers(self, cluster: str, pod) -> int: ...
    def container_logs(self, name: str, follow: bool = False) -> str: ...
    def pod_container_states(self, cluster: str) -> dict[str, dict]: ...


class Provider(Clusters, Provisioning, NodeExec, Sandboxes, Protocol):
    """What the Cluster facade and the CLI call: the four interfaces above, which
    every runtime (docker, swarm, uml, and the fake in emu.testing) implements;
    each method names a container by its name and the provider finds the engine
    that holds it. Code that needs only one part asks for that part."""
