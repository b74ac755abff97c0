"""The Docker provider: every call emu makes to the Docker engine is here.

Nodes are containers labelled io.emu.cluster=<name>, found by label as kind
does, on one bridge network per cluster. Nodes get NET_ADMIN, SYS_ADMIN and
NET_RAW, never --privileged.
"""

from __future__ import annotations

import io
import ipaddress
import os
import tarfile
import time
from collections.abc import Callable, Iterable

from emu.errors import EmuError
from emu.control.runtime.provider import (
    LABEL_CLUSTER,
    LABEL_HOST,
    LABEL_NODE,
    LABEL_ROLE,
    ROLE_EXTERNAL,
    ContainerRecord,
    ExecResult,
    NodeSpec,
    Progress,
    run_parallel,
)
from emu.control.runtime import stream
from emu.control.runtime.sandbox import ImagePods

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


def _port_free(mapping) -> bool:
    """Whether this machine could listen on the mapping's address and port."""
    import socket

    kind = socket.SOCK_STREAM if mapping.protocol == "TCP" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind((mapping.listen_address, mapping.host_port))
            return True
        except OSError:
            return False


def tar_archive(files: dict[str, str | bytes], mode: int = 0o644) -> bytes:
    """A tar archive of `files` (path -> text or bytes) to extract at /, in their
    order, with their directories; scripts (*.sh) executable."""
    buffer = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        directories: set[str] = set()
        for path, content in files.items():
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
            data = content if isinstance(content, bytes) else content.encode()
            info = tarfile.TarInfo("/".join(parts))
            info.size = len(data)
            info.mode = 0o755 if path.endswith(".sh") else mode
            info.mtime = now
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def docker_unreachable_message(error: Exception, host: str = "") -> str:
    if host:
        return (
            f"host {host}: cannot reach its Docker engine ({error}). Check the host with "
            "`emu hosts check --hosts FILE`, start Docker there, and try again."
        )
    return (
        f"cannot reach the Docker engine ({error}). Start Docker (on Debian or Ubuntu as root: "
        "`scripts/ensure-docker.sh` installs and starts one) and try again."
    )


def already_removed(error) -> bool:
    """A removal's error that means done: 404 (no such container/network: someone removed it first) or 409
    "removal ... is already in progress" (someone is removing it now)."""
    text = str(getattr(error, "explanation", None) or error).lower()
    status = getattr(error, "status_code", None)
    return status == 404 or "no such container" in text or "no such network" in text or (
        status == 409 and "already in progress" in text
    )


KILL_ATTEMPTS = 5


def kill_pending(error) -> bool:
    """dockerd's 500 when a killed container's exit event did not come within its
    own wait ("cannot remove - tried to kill container, but did not receive an exit
    event"), seen on a loaded machine: the kill goes on, so asking again succeeds."""
    text = str(getattr(error, "explanation", None) or error).lower()
    return getattr(error, "status_code", None) == 500 and "did not receive an exit event" in text


class DockerRuntime(ImagePods):
    """One Docker engine through the SDK's low-level API: this machine's (the
    default: DOCKER_HOST or the local socket) or the one at `base_url`. Image
    pods' containers: emu.control.runtime.sandbox."""

    mtu = 1500  # a bridge network's

    def __init__(self, base_url: str | None = None, tls=None, host: str = "", timeout: int = 120):
        self._api = None
        self.base_url = base_url or os.environ.get("DOCKER_HOST") or None  # as the docker CLI does
        self.tls = tls
        self.host = host  # the name errors use for this engine's machine ("" for this machine)
        self.timeout = timeout

    @property
    def api(self):
        if self._api is None:
            import docker

            try:
                client = docker.APIClient(
                    base_url=self.base_url, tls=self.tls or False, version="auto", timeout=self.timeout,
                    max_pool_size=128,  # `emu up` holds an exec open on every node at once (Cluster.wait)
                )  # fmt: skip
                client.ping()
            except Exception as error:  # the SDK raises several kinds here
                raise EmuError(docker_unreachable_message(error, self.host)) from None
            self._api = client
        return self._api

    # ---- discovery -------------------------------------------------------
    def cluster_names(self) -> list[str]:
        containers = self.api.containers(all=True, filters={"label": LABEL_CLUSTER})
        networks = self.api.networks(filters={"label": LABEL_CLUSTER})
        names = {c["Labels"][LABEL_CLUSTER] for c in containers}
        names |= {n["Labels"][LABEL_CLUSTER] for n in networks}
        return sorted(names)

    def cluster_containers(self, cluster: str) -> list[ContainerRecord]:
        containers = self.api.containers(all=True, filters={"label": f"{LABEL_CLUSTER}={cluster}"})
        return sorted(
            (
                ContainerRecord(
                    name=c["Names"][0].lstrip("/"),
                    cluster=cluster,
                    role=c["Labels"].get(LABEL_ROLE, ""),
                    node=c["Labels"].get(LABEL_NODE, ""),
                    host=self.host,
                    running=c.get("State") == "running",
                    status=c.get("Status") or c.get("State") or "",
                )
                for c in containers
            ),
            key=lambda record: record.name,
        )

    def cluster_networks(self, cluster: str) -> list[str]:
        return sorted(n["Name"] for n in self.api.networks(filters={"label": f"{LABEL_CLUSTER}={cluster}"}))

    def pick_subnet(self, requested: str | None, avoid: list[str]) -> str:
        """The cluster network's subnet: `requested` if free, else a free /24."""
        return self.check_subnet_free(requested) if requested else self.free_subnet(avoid)

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
    def create_network(
        self,
        name: str,
        subnet: str,
        cluster: str,
        driver: str = "bridge",
        attachable: bool = False,
        ip_range: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        import docker

        network = ipaddress.IPv4Network(subnet)
        ipam = docker.types.IPAMConfig(
            pool_configs=[
                docker.types.IPAMPool(subnet=subnet, gateway=str(network.network_address + 1), iprange=ip_range)
            ]
        )
        self.api.create_network(
            name, driver=driver, ipam=ipam, labels={LABEL_CLUSTER: cluster}, attachable=attachable, options=options
        )

    def published_ports(self, host: str | None = None) -> dict[tuple[int, str], str]:
        """{(host port, "TCP"|"UDP"): the container publishing it} over this engine's
        running containers. What a port probe cannot see when emu runs in a container
        of its own (the compose labs) or the engine is elsewhere."""
        return {
            (port.get("PublicPort"), port.get("Type", "tcp").upper()): container["Names"][0].lstrip("/")
            for container in self.api.containers() for port in container.get("Ports") or [] if port.get("PublicPort")
        }  # fmt: skip

    def check_ports(self, specs: list[NodeSpec]) -> None:
        """Refuse, before anything is made, host ports that are taken: by a
        container of this engine, or (for this machine's engine) by anything
        listening here."""
        wanted = [(spec.hostname, mapping) for spec in specs for mapping in spec.ports]
        if not wanted:
            return
        published = self.published_ports()
        for node, mapping in wanted:
            where = f"host port {mapping.host_port}/{mapping.protocol} (node {node}, extraPortMappings)"
            holder = published.get((mapping.host_port, mapping.protocol))
            if holder:
                raise EmuError(f"{where} is already published by container {holder}; choose another hostPort")
            if not self.host and not _port_free(mapping):
                raise EmuError(
                    f"{where} is already in use on this machine at {mapping.listen_address}; "
                    "stop what listens there or choose another hostPort"
                )

    def create_node(self, spec: NodeSpec) -> None:
        """Create and start one node container."""
        api = self.api
        bindings = {
            f"{m.container_port}/{m.protocol.lower()}": (m.listen_address, m.host_port) for m in spec.ports
        }  # fmt: skip
        host_config = api.create_host_config(
            port_bindings=bindings or None,
            cap_add=NODE_CAPABILITIES,
            sysctls=NODE_SYSCTLS,
            init=True,
            network_mode=spec.network,
            security_opt=["apparmor=unconfined"],  # `ip netns` mounts; docker-default AppArmor forbids it
            # Back when the engine starts again (a reboot, a restarted dockerd), as kind's nodes are; its
            # command then rebuilds its pods (cni.NODE_COMMAND). One a user stopped stays stopped.
            restart_policy={"Name": "unless-stopped"},
        )
        networking = api.create_networking_config(
            {spec.network: api.create_endpoint_config(ipv4_address=spec.ip)}
        )
        container = api.create_container(
            spec.image,
            command=spec.command,
            ports=[(m.container_port, m.protocol.lower()) for m in spec.ports] or None,
            name=spec.container,
            hostname=spec.hostname,
            labels={
                LABEL_CLUSTER: spec.cluster, LABEL_ROLE: spec.role, LABEL_NODE: spec.hostname, LABEL_HOST: spec.host,
            },  # fmt: skip
            host_config=host_config,
            networking_config=networking,
            detach=True,
        )
        api.start(container["Id"])

    def start_node(self, container: str) -> None:
        """Start a stopped node container again (its command rebuilds its pods: cni.NODE_COMMAND)."""
        import docker

        try:
            self.api.start(container)
        except docker.errors.APIError as error:
            where = f"host {self.host}: " if self.host else ""
            raise EmuError(
                f"{where}Docker would not start node container {container} ({error.explanation or error}); "
                f"see why with `docker {'-H HOST ' if self.host else ''}logs {container}`"
            ) from None

    def run_external(self, cluster: str, name: str, network: str, image: str) -> None:
        """A container outside the cluster on its network (a client or server 'on the internet').
        Labelled with the cluster so that `down` removes it too."""
        api = self.api
        container = api.create_container(
            image,
            command=["sleep", "infinity"],
            name=name,
            hostname=name,
            labels={LABEL_CLUSTER: cluster, LABEL_ROLE: ROLE_EXTERNAL, LABEL_HOST: self.host},
            host_config=api.create_host_config(network_mode=network, init=True),
            detach=True,
        )
        api.start(container["Id"])

    def node_image(self, progress: Progress) -> str:
        """The node image's tag, built on this engine if it lacks it."""
        from emu.control.runtime.images import ImageBuilder

        return ImageBuilder(self, progress).ensure_node_image()

    def has_image(self, tag: str) -> bool:
        import docker

        try:
            self.api.inspect_image(tag)
            return True
        except docker.errors.ImageNotFound:
            return False

    def exec_detached(self, container: str, argv: list[str]) -> None:
        """Start a long-running command in a container without waiting for it."""
        exec_id = self.api.exec_create(container, argv)["Id"]
        self.api.exec_start(exec_id, detach=True)

    def exec_stream(self, container: str, argv: list[str]):
        """Start argv in a container and return a DockerStream: its stdout read
        as it comes; terminate()/close() end it by the marker in its environment,
        and it ends by itself when this connection does (emu.control.runtime.stream)."""
        marker = stream.new_marker()
        exec_id = self.api.exec_create(
            container, stream.wrapped(argv), stdin=True, stdout=True, stderr=True,
            environment={stream.MARKER_VARIABLE: marker},
        )["Id"]  # fmt: skip
        return stream.DockerStream(self, container, exec_id, stream.attach(self.api, exec_id), marker)

    def container_ip(self, container: str, network: str) -> str:
        detail = self.api.inspect_container(container)
        return detail["NetworkSettings"]["Networks"][network]["IPAddress"]

    # ---- files and commands ----------------------------------------------
    def put_files(self, container: str, files: dict[str, str | bytes], mode: int = 0o644) -> None:
        """Write files into a container in one call (a tar archive extracted at /),
        in the order of `files`: the first is in place before the next is written."""
        self.api.put_archive(container, "/", tar_archive(files, mode))

    def run_with_files(self, container: str, files: dict[str, str | bytes], argv: list[str]) -> ExecResult:
        """put_files, then exec argv, in one exec: the files travel as a tar archive
        on its stdin, which the node's tar extracts (in order) before argv runs.
        A put_archive costs the engine about 80 ms of CPU more than this (it starts
        a helper process to extract): 50 nodes to a big lab."""
        import socket

        script = 'tar -x -f - -C / && exec "$@"'
        exec_id = self.api.exec_create(container, ["sh", "-c", script, "sh", *argv], stdin=True)["Id"]
        channel = stream.attach(self.api, exec_id)
        try:
            channel.sendall(tar_archive(files))
            channel.shutdown(socket.SHUT_WR)  # the end of stdin: tar finishes
            output = b"".join(chunk for _, chunk in channel.frames())
        finally:
            channel.close()
        exit_code = self.api.exec_inspect(exec_id)["ExitCode"]
        return ExecResult(exit_code if exit_code is not None else -1, output.decode(errors="replace"))

    def read_file(self, container: str, path: str, limit: int | None = None) -> str | None:
        """A file's text (bytes that are not UTF-8 replaced), None if it is not
        there; one larger than `limit` bytes is refused before it is read."""
        import docker

        try:
            chunks, stat = self.api.get_archive(container, path)
        except docker.errors.NotFound:
            return None
        if limit is not None and stat.get("size", 0) > limit:
            raise EmuError(
                f"{path} in container {container} is {stat['size']:,} bytes, over emu's limit of {limit:,}; "
                "it is damaged or not emu's: remove the cluster with `emu down`"
            )
        data = b"".join(chunks)
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            member = archive.next()
            handle = archive.extractfile(member) if member else None
            return handle.read().decode(errors="replace") if handle else None

    def exec(self, container: str, argv: list[str], environment: dict[str, str] | None = None) -> ExecResult:
        """Run a command in a container and wait for it; output is stdout and stderr together."""
        api = self.api
        exec_id = api.exec_create(container, argv, stdout=True, stderr=True, environment=environment)["Id"]
        output, _, _ = stream.run_attached(api, exec_id)
        exit_code = api.exec_inspect(exec_id)["ExitCode"]
        return ExecResult(exit_code if exit_code is not None else -1, output.decode(errors="replace"))

    def exec_split(self, container: str, argv: list[str]) -> tuple[int, bytes, bytes]:
        """Run a command and wait for it: (exit code, stdout, stderr) kept apart, as
        bytes (testinfra's backends need them so)."""
        exec_id = self.api.exec_create(container, argv, stdout=True, stderr=True)["Id"]
        _, stdout, stderr = stream.run_attached(self.api, exec_id)
        exit_code = self.api.exec_inspect(exec_id)["ExitCode"]
        return (exit_code if exit_code is not None else -1, stdout, stderr)

    def interactive(self, container: str, argv: list[str], tty: bool) -> int:
        """Run argv in the container with this terminal attached (the docker CLI's
        `exec -i [-t]`); returns its exit code."""
        import subprocess

        engine = ["-H", self.base_url] if self.base_url else []
        return subprocess.call(["docker", *engine, "exec", "-i", *(["-t"] if tty else []), container, *argv])

    def parallel(self, function: Callable, items: list) -> list:
        return run_parallel(function, items)

    # ---- removal ---------------------------------------------------------
    def remove_containers(self, cluster: str) -> int:
        """Remove every container labelled with the cluster, and wait until they are gone."""
        import docker

        containers = self.api.containers(all=True, filters={"label": f"{LABEL_CLUSTER}={cluster}"})

        def remove(container: dict) -> None:
            for attempt in range(KILL_ATTEMPTS):
                try:
                    self.api.remove_container(container["Id"], force=True, v=True)
                    return
                except docker.errors.APIError as error:
                    if already_removed(error):
                        self._wait_removed(container["Id"], cluster)
                        return
                    if not kill_pending(error) or attempt == KILL_ATTEMPTS - 1:
                        raise
                    time.sleep(1.0)  # dockerd gave up waiting for the kill; the process is still going away


        self.parallel(remove, containers)
        return len(containers)

    def _wait_removed(self, container: str, cluster: str, patience: float = 60.0) -> None:
        """Another remover (a second emu, a second inventory entry for this engine) is at it: wait for its end."""
        import docker

        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            try:
                self.api.inspect_container(container)
            except docker.errors.NotFound:
                return
            time.sleep(0.2)
        where = f"host {self.host}: " if self.host else ""
        raise EmuError(f"{where}container {container[:12]} of cluster '{cluster}' is still being removed after "
                       f"{patience:.0f} s; run `emu down {cluster}` again")

    def remove_networks(self, cluster: str, patience: float = 10.0) -> int:
        """Remove the cluster's networks. An engine that has just removed many
        containers may still count endpoints on a network for a moment: retry,
        then say what is wrong instead of a traceback."""
        import docker

        networks = self.api.networks(filters={"label": f"{LABEL_CLUSTER}={cluster}"})
        for network in networks:
            deadline = time.monotonic() + patience
            while True:
                try:
                    self.api.remove_network(network["Id"])
                    break
                except docker.errors.APIError as error:
                    if already_removed(error):
                        break
                    where = f"host {self.host}: " if self.host else ""
                    # An engine may count endpoints (a swarm: attachment tasks) of containers
                    # it has just removed for a moment after.
                    stale = "active endpoints" in str(error) or "in use by task" in str(error)
                    if stale and time.monotonic() < deadline:
                        time.sleep(0.5)
                        continue
                    advice = (
                        "its containers are gone but the engine keeps a stale endpoint: restart the Docker engine, "
                        "then run `emu down` again"
                        if stale
                        else "remove it by hand with `docker network rm`"
                    )
                    raise EmuError(
                        f"{where}Docker would not remove network {network['Name']} of cluster '{cluster}' "
                        f"({error.explanation or error}); {advice}"
                    ) from None
        return len(networks)

    def remove_cluster(self, cluster: str) -> tuple[int, int]:
        """Remove every container and network labelled with the cluster. Returns the counts."""
        containers = self.remove_containers(cluster)
        return containers, self.remove_networks(cluster)
