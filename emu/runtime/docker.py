"""The Docker provider: every call emu makes to the Docker engine is here.

Nodes are containers labelled io.emu.cluster=<name>, found by label as kind
does, on one bridge network per cluster. Nodes get NET_ADMIN, SYS_ADMIN and
NET_RAW, never --privileged.
"""

from __future__ import annotations

import io
import ipaddress
import tarfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from emu.errors import EmuError

LABEL_CLUSTER = "io.emu.cluster"
LABEL_ROLE = "io.emu.role"
LABEL_NODE = "io.emu.node"
NODE_CAPABILITIES = ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]
NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    # Pod traffic arrives on cni0 and leaves on eth0 with pod sources; strict
    # reverse-path filtering would drop the replies of host-gw routing.
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    # Bridged pod-to-pod replies must pass conntrack so service DNAT is undone
    # (kube-proxy requires br_netfilter for the same reason).
    "net.bridge.bridge-nf-call-iptables": "1",
}
# Where emu looks for a free /24 for a cluster's Docker network.
NETWORK_POOL = ipaddress.IPv4Network("172.28.0.0/14")


@dataclass
class ExecResult:
    exit_code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass
class NodeSpec:
    container: str
    hostname: str
    role: str
    cluster: str
    image: str
    network: str
    ip: str


def docker_unreachable_message(error: Exception) -> str:
    return (
        f"cannot reach the Docker engine ({error}). Start Docker (on Debian or Ubuntu as root: "
        "`scripts/ensure-docker.sh` installs and starts one) and try again."
    )


class DockerRuntime:
    """Thin, explicit wrapper over the Docker SDK's low-level API."""

    def __init__(self):
        self._api = None

    @property
    def api(self):
        if self._api is None:
            import docker

            try:
                client = docker.APIClient(version="auto", timeout=120, max_pool_size=32)
                client.ping()
            except Exception as error:  # the SDK raises several kinds here
                raise EmuError(docker_unreachable_message(error)) from None
            self._api = client
        return self._api

    # ---- discovery -------------------------------------------------------
    def cluster_names(self) -> list[str]:
        containers = self.api.containers(all=True, filters={"label": LABEL_CLUSTER})
        networks = self.api.networks(filters={"label": LABEL_CLUSTER})
        names = {c["Labels"][LABEL_CLUSTER] for c in containers}
        names |= {n["Labels"][LABEL_CLUSTER] for n in networks}
        return sorted(names)

    def cluster_containers(self, cluster: str) -> list[dict]:
        return self.api.containers(all=True, filters={"label": f"{LABEL_CLUSTER}={cluster}"})

    def cluster_networks(self, cluster: str) -> list[dict]:
        return self.api.networks(filters={"label": f"{LABEL_CLUSTER}={cluster}"})

    def used_subnets(self) -> list[tuple[str, ipaddress.IPv4Network]]:
        """(network name, IPv4 subnet) of every Docker network."""
        subnets = []
        for network in self.api.networks():
            detail = self.api.inspect_network(network["Id"])
            for config in (detail.get("IPAM") or {}).get("Config") or []:
                try:
                    subnets.append((detail["Name"], ipaddress.IPv4Network(config["Subnet"], strict=False)))
                except (KeyError, ValueError):
                    continue
        return subnets

    def free_subnet(self, avoid: Iterable[str]) -> str:
        """A /24 that overlaps no Docker network and none of `avoid` (pod and service subnets)."""
        taken = [subnet for _, subnet in self.used_subnets()] + [ipaddress.IPv4Network(a) for a in avoid]
        for candidate in NETWORK_POOL.subnets(new_prefix=24):
            if not any(candidate.overlaps(t) for t in taken):
                return str(candidate)
        raise EmuError(f"no free /24 left in {NETWORK_POOL} for the cluster network; remove unused Docker networks")

    def check_subnet_free(self, subnet: str) -> str:
        """`subnet` if no Docker network overlaps it; else an error naming the one that does."""
        wanted = ipaddress.IPv4Network(subnet)
        for name, taken in self.used_subnets():
            if taken.overlaps(wanted):
                raise EmuError(
                    f"networking.clusterNetwork {wanted} overlaps Docker network '{name}' ({taken}); "
                    "choose another subnet, or leave clusterNetwork out and emu picks a free one"
                )
        return str(wanted)

    # ---- creation --------------------------------------------------------
    def create_network(self, name: str, subnet: str, cluster: str) -> None:
        import docker

        network = ipaddress.IPv4Network(subnet)
        ipam = docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=subnet, gateway=str(network.network_address + 1))]
        )
        self.api.create_network(name, driver="bridge", ipam=ipam, labels={LABEL_CLUSTER: cluster})

    def create_node(self, spec: NodeSpec) -> None:
        """Create and start one node container."""
        api = self.api
        host_config = api.create_host_config(
            cap_add=NODE_CAPABILITIES,
            sysctls=NODE_SYSCTLS,
            init=True,
            network_mode=spec.network,
            security_opt=["apparmor=unconfined"],  # `ip netns` mounts; docker-default AppArmor forbids it
        )
        networking = api.create_networking_config(
            {spec.network: api.create_endpoint_config(ipv4_address=spec.ip)}
        )
        container = api.create_container(
            spec.image,
            command=["sleep", "infinity"],
            name=spec.container,
            hostname=spec.hostname,
            labels={LABEL_CLUSTER: spec.cluster, LABEL_ROLE: spec.role, LABEL_NODE: spec.hostname},
            host_config=host_config,
            networking_config=networking,
            detach=True,
        )
        api.start(container["Id"])

    def run_external(self, cluster: str, name: str, network: str, image: str) -> None:
        """A container outside the cluster on its network (a client or server 'on the internet').
        Labelled with the cluster so that `down` removes it too."""
        api = self.api
        container = api.create_container(
            image,
            command=["sleep", "infinity"],
            name=name,
            hostname=name,
            labels={LABEL_CLUSTER: cluster, LABEL_ROLE: "external"},
            host_config=api.create_host_config(network_mode=network, init=True),
            detach=True,
        )
        api.start(container["Id"])

    def exec_detached(self, container: str, argv: list[str]) -> None:
        """Start a long-running command in a container without waiting for it."""
        exec_id = self.api.exec_create(container, argv)["Id"]
        self.api.exec_start(exec_id, detach=True)

    def container_ip(self, container: str, network: str) -> str:
        detail = self.api.inspect_container(container)
        return detail["NetworkSettings"]["Networks"][network]["IPAddress"]

    # ---- files and commands ----------------------------------------------
    def put_files(self, container: str, files: dict[str, str], mode: int = 0o644) -> None:
        """Write files into a container in one call (a tar archive extracted at /)."""
        buffer = io.BytesIO()
        now = time.time()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            directories: set[str] = set()
            for path in sorted(files):
                parts = path.strip("/").split("/")
                for depth in range(1, len(parts)):
                    directory = "/".join(parts[:depth])
                    if directory not in directories:
                        directories.add(directory)
                        info = tarfile.TarInfo(directory)
                        info.type = tarfile.DIRTYPE
                        info.mode = 0o755
                        info.mtime = now
                        archive.addfile(info)
                data = files[path].encode()
                info = tarfile.TarInfo("/".join(parts))
                info.size = len(data)
                info.mode = 0o755 if path.endswith(".sh") else mode
                info.mtime = now
                archive.addfile(info, io.BytesIO(data))
        self.api.put_archive(container, "/", buffer.getvalue())

    def read_file(self, container: str, path: str) -> str | None:
        import docker

        try:
            stream, _ = self.api.get_archive(container, path)
        except docker.errors.NotFound:
            return None
        data = b"".join(stream)
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            member = archive.next()
            handle = archive.extractfile(member) if member else None
            return handle.read().decode() if handle else None

    def exec(self, container: str, argv: list[str], environment: dict[str, str] | None = None) -> ExecResult:
        """Run a command in a container and wait for it; output is stdout and stderr together."""
        api = self.api
        exec_id = api.exec_create(container, argv, stdout=True, stderr=True, environment=environment)["Id"]
        output = api.exec_start(exec_id)
        exit_code = api.exec_inspect(exec_id)["ExitCode"]
        return ExecResult(exit_code if exit_code is not None else -1, output.decode(errors="replace"))

    def parallel(self, function: Callable, items: list) -> list:
        """function(item) for every item at once (nodes are independent); first error re-raised."""
        if len(items) <= 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
            return list(pool.map(function, items))

    # ---- removal ---------------------------------------------------------
    def remove_cluster(self, cluster: str) -> tuple[int, int]:
        """Remove every container and network labelled with the cluster. Returns the counts."""
        import docker

        containers = self.cluster_containers(cluster)

        def remove(container: dict) -> None:
            try:
                self.api.remove_container(container["Id"], force=True, v=True)
            except docker.errors.NotFound:
                pass

        self.parallel(remove, containers)
        networks = self.cluster_networks(cluster)
        for network in networks:
            try:
                self.api.remove_network(network["Id"])
            except docker.errors.NotFound:
                pass
        return len(containers), len(networks)
