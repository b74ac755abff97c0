"""The swarm provider: one cluster's nodes spread over several Docker hosts.

The hosts form a Docker Swarm (`emu hosts prepare` makes or joins it); the
cluster network is one attachable overlay network created on a manager, with
a fixed subnet and MTU 1450 (VXLAN's 50 bytes). Node containers stay ordinary
containers, each created on its own host's engine with a static address on
the overlay, so pod CIDR routes (host-gw) between nodes work across hosts as
they do on one bridge. Each host's engine is one DockerRuntime, reached over
an SSH tunnel (engine: ssh), TCP with TLS, or a local socket.
"""

from __future__ import annotations

import atexit
import ipaddress
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable

from emu.errors import EmuError
from emu.control.runtime.docker import DockerRuntime
from emu.control.runtime.provider import ContainerRecord, ExecResult, NodeSpec, Progress, run_parallel
from emu.api.topology.model import Host

OVERLAY_MTU = 1450  # 1500 less VXLAN's outer headers (50 bytes)
SSH_CONNECT_TIMEOUT = 5


def docker_range(subnet: str) -> str:
    """The part of the overlay's subnet Docker hands out itself (a swarm gives
    every host a load-balancer endpoint address on an attachable overlay): a /27
    just below the LoadBalancer pool (the last 32 addresses), far above the node
    addresses (.2, .3, ...), so the two never meet."""
    network = ipaddress.IPv4Network(subnet)
    if network.prefixlen > 24:
        raise EmuError(f"the cluster network {network} is too small for several hosts; use a /24 or larger")
    start = network.network_address + network.num_addresses - 96
    return str(ipaddress.IPv4Network(f"{start}/27"))


class SshTunnel:
    """`ssh -N -L LOCAL:REMOTE`: one SSH connection carrying a host's Docker API
    (its unix socket) for as long as this emu process runs. The docker SDK then
    talks to a local socket, and emu passes the host's own key and known_hosts,
    which the SDK's ssh:// cannot."""

    def __init__(self, host: Host):
        self.host = host
        self.directory = tempfile.mkdtemp(prefix="emu-ssh-")
        self.local = f"{self.directory}/{host.name}.sock"
        self.process: subprocess.Popen | None = None

    def options(self) -> list[str]:
        """ssh's options for this host; the tunnel's connection is a master others share (ControlPath)."""
        from emu.control.hosts import ssh_options

        return [
            *ssh_options(self.host), "-o", f"ControlPath={self.directory}/ssh", "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3", "-o", "StreamLocalBindUnlink=yes", "-p", str(self.host.port),
        ]  # fmt: skip

    def command(self) -> list[str]:
        host = self.host
        return ["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-o", "ControlMaster=yes", *self.options(),
                "-L", f"{self.local}:{host.docker_socket}", f"{host.user}@{host.address}"]

    def run(self, command: str, timeout: float = 20) -> str | None:
        """A shell command on the host over the tunnel's connection: its output, or None where it fails."""
        argv = ["ssh", "-o", "ControlMaster=no", *self.options(), f"{self.host.user}@{self.host.address}", command]
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return result.stdout if result.returncode == 0 else None

    def open(self, timeout: float = SSH_CONNECT_TIMEOUT + 5) -> str:
        """Start the tunnel; returns the SDK's base_url for it."""
        if shutil.which("ssh") is None:
            raise EmuError(
                f"host {self.host.name}: emu reaches its engine over SSH but this machine has no ssh client; "
                "install one (Debian: apt-get install openssh-client)"
            )
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while not listening(self.local):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                reason = self.process.stderr.read().decode(errors="replace").strip() if self.process.stderr else ""
                from emu.control.hosts import openssh_host_key_changed

                changed = openssh_host_key_changed(self.host, reason)
                if changed:
                    raise changed
                raise EmuError(
                    f"host {self.host.name}: SSH to {self.host.user}@{self.host.address}:{self.host.port}"
                    f"{' through the jump host ' + self.host.jump if self.host.jump else ''} failed"
                    f" ({reason or 'no answer within ' + str(int(timeout)) + ' s'}); check the address, the key "
                    "and that sshd runs there (`emu hosts check`)"
                )
            time.sleep(0.02)
        return f"unix://{self.local}"

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def listening(path: str) -> bool:
    """Whether a unix socket at path accepts connections. Its file alone does not
    say so: ssh binds the socket (the file appears) and listens a moment later, and
    a connection in between is refused (ECONNREFUSED), which a loaded machine hits."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(path)
        except OSError:  # no file yet, or bound but not yet listening
            return False
    return True


def engine_for(host: Host, tunnels: list[SshTunnel], timeout: int = 60) -> DockerRuntime:
    """A DockerRuntime for one host's engine, connected (it answers, or an
    EmuError names the host)."""
    tls = None
    tunnel = None
    if host.engine == "ssh":
        tunnel = SshTunnel(host)
        tunnels.append(tunnel)
        base_url = tunnel.open()
    else:
        base_url = host.engine
        if host.tls:
            import docker

            tls = docker.tls.TLSConfig(
                client_cert=(host.tls.cert, host.tls.key), ca_cert=host.tls.ca, verify=True
            )
    runtime = DockerRuntime(base_url=base_url, tls=tls, host=host.name, timeout=timeout)
    try:
        runtime.api  # connect now: a host that does not answer is named here
    except EmuError:
        if tunnel is not None:  # (not tunnels[-1]: the hosts' engines are opened in parallel)
            denied = access_problem(host, tunnel)
            if denied:
                raise EmuError(denied) from None
        raise
    return runtime


def access_problem(host: Host, tunnel: SshTunnel) -> str | None:
    """Why the SSH user may not use the engine's socket (the tunnel forwards it as that user), or None."""
    from emu.control.hosts import access_command, access_denied, parse_values

    values = parse_values(tunnel.run(access_command(host)) or "")
    if values.get("access") == "missing":  # SSH works, the engine does not: stopped, or restarting
        return (f"host {host.name}: SSH works but no Docker engine listens at {host.docker_socket} there (stopped or "
                f"restarting); start Docker on {host.name}, or fix its dockerSocket in the inventory")
    denied = access_denied(host, values)
    return f"host {host.name}: {denied[0]}; fix: {denied[1]}" if denied else None


class SwarmRuntime:
    """A provider over several Docker engines joined in one swarm."""

    mtu = OVERLAY_MTU

    def __init__(self, hosts: list[Host], timeout: int = 60):
        if not hosts:
            raise EmuError("a multi-host cluster needs at least one host")
        self.hosts = list(hosts)
        self.timeout = timeout
        self._engines: dict[str, DockerRuntime] = {}
        self._tunnels: list[SshTunnel] = []
        self._lock = threading.Lock()
        self._where: dict[str, str] = {}  # container -> host
        self._manager: str | None = None
        self._identities: dict = {}  # host -> emu.control.hosts.Identity
        self._unreachable: dict[str, str] = {}  # host -> why its engine did not answer (unreachable_hosts)
        atexit.register(self.close)

    def close(self) -> None:
        for tunnel in self._tunnels:
            tunnel.close()
        self._tunnels.clear()
        self._engines.clear()

    # ---- engines -----------------------------------------------------------
    def engines(self, distinct: bool = True) -> dict[str, DockerRuntime]:
        """Every host's engine, connected in parallel (the first call opens them and tells them apart).
        distinct: refuse an inventory that names one engine or machine twice (emu.control.hosts.identity_clashes),
        as anything emu would do there goes wrong (twice the containers, one engine counted as two hosts)."""
        from emu.control.hosts import refuse_clashes

        with self._lock:
            if not self._engines and not self._unreachable:
                connected = self.parallel(lambda host: engine_for(host, self._tunnels, self.timeout), self.hosts)
                engines = {host.name: runtime for host, runtime in zip(self.hosts, connected)}
                self._identities = dict(zip(engines, self.parallel(lambda h: self._identify(h, engines[h.name]),
                                                                   self.hosts)))
                self._engines = engines
        if distinct:
            refuse_clashes(self.hosts, self._identities, "drive a cluster over them")
        return self._engines

    def unreachable_hosts(self) -> dict[str, str]:
        """{host: why its engine does not answer}, connecting every host that does: a command that only
        looks (`emu status`) goes on with those and names the others. From then on this provider drives
        only the hosts that answered; engine(HOST) of another raises its reason."""
        with self._lock:
            if not self._engines and not self._unreachable:
                def connect(host: Host) -> DockerRuntime | str:
                    try:
                        return engine_for(host, self._tunnels, self.timeout)
                    except EmuError as error:
                        return str(error)

                connected = dict(zip((h.name for h in self.hosts), self.parallel(connect, self.hosts)))
                engines = {name: found for name, found in connected.items() if isinstance(found, DockerRuntime)}
                answering = [h for h in self.hosts if h.name in engines]
                self._identities = dict(zip((h.name for h in answering),
                                            self.parallel(lambda h: self._identify(h, engines[h.name]), answering)))
                self._engines = engines
                self._unreachable = {name: found for name, found in connected.items() if isinstance(found, str)}
        return dict(self._unreachable)

    def swarm_nodes_down(self) -> dict[str, str]:
        """{host: its swarm node's state and message} for the hosts a manager among those that answer counts as
        not ready (a stopped engine, a host gone), {} when no manager answers."""
        self.unreachable_hosts()
        engines = dict(self._engines)
        for name, engine in engines.items():
            try:
                swarm = engine.api.info().get("Swarm") or {}
                if not swarm.get("ControlAvailable"):
                    continue
                nodes = {node["ID"]: node.get("Status") or {} for node in engine.api.nodes()}
            except Exception:  # noqa: BLE001 - a manager that stopped answering since: ask another
                continue
            down = {}
            for host in self.hosts:
                identity = self._identities.get(host.name)
                node_id = identity.node_id if identity else ""
                if not node_id:  # a host that does not answer: find its node by its address
                    node_id = next((i for i, s in nodes.items() if s.get("Addr") == host.swarm_address), "")
                status = nodes.get(node_id)
                if status and status.get("State") != "ready":
                    message = status.get("Message") or ""
                    down[host.name] = f"{status.get('State')}{' (' + message + ')' if message else ''}"
            return down
        return {}

    def _identify(self, host: Host, engine: DockerRuntime):
        """The engine's ID and swarm node ID (docker info), and its machine's machine-id where emu reaches the
        host over SSH (through the tunnel's connection)."""
        from emu.control.hosts import MACHINE_ID_COMMAND, Identity

        info = engine.api.info()
        machine = ""
        tunnel = next((t for t in self._tunnels if t.host.name == host.name), None)
        if tunnel is not None:
            machine = (tunnel.run(MACHINE_ID_COMMAND) or "").strip()
        return Identity(info.get("ID") or "", (info.get("Swarm") or {}).get("NodeID") or "", machine)

    def engine(self, host: str) -> DockerRuntime:
        engines = self.engines()
        if host in self._unreachable:
            raise EmuError(self._unreachable[host])
        if host not in engines:
            raise EmuError(f"no host '{host}' (hosts: {', '.join(h.name for h in self.hosts)})")
        return engines[host]

    def manager(self, distinct: bool = True) -> DockerRuntime:
        """A swarm manager among the hosts; every host must be in that swarm."""
        if self._manager is None:
            engines = self.engines(distinct)
            infos = dict(zip(engines, self.parallel(lambda e: e.api.info().get("Swarm") or {}, list(engines.values()))))
            outside = [h for h, swarm in infos.items() if swarm.get("LocalNodeState") != "active"]
            if outside:
                raise EmuError(
                    f"hosts not in a swarm: {', '.join(outside)}; run `emu hosts prepare --hosts FILE` to make or "
                    "join one"
                )
            managers = [h for h, swarm in infos.items() if swarm.get("ControlAvailable")]
            if not managers and self._unreachable:
                raise EmuError(
                    f"no swarm manager answers among the hosts that do; {'; '.join(self._unreachable.values())}"
                )
            if not managers:
                raise EmuError(
                    "none of the hosts is a swarm manager; add a manager of their swarm to the hosts, or run "
                    "`emu hosts prepare`"
                )
            members = {node["ID"] for node in engines[managers[0]].api.nodes()}
            strangers = [h for h, swarm in infos.items() if swarm.get("NodeID") not in members]
            if strangers:
                raise EmuError(
                    f"hosts {', '.join(strangers)} are in another swarm than {managers[0]}'s; make them leave it "
                    "(`docker swarm leave`) and run `emu hosts prepare`"
                )
            self._manager = managers[0]
        return self.engines(distinct)[self._manager]

    def _engine_of(self, container: str) -> DockerRuntime:
        host = self._where.get(container)
        if host is None:  # a container another emu process made: ask every host
            engines = self.engines()
            found = self.parallel(
                lambda e: bool(e.api.containers(all=True, filters={"name": f"^/{container}$"})), list(engines.values())
            )
            hosts = [name for name, here in zip(engines, found) if here]
            if not hosts:
                raise EmuError(f"no container '{container}' on any of the hosts ({', '.join(engines)})")
            host = self._where[container] = hosts[0]
        return self.engine(host)

    # ---- discovery -----------------------------------------------------------
    def cluster_names(self) -> list[str]:
        return sorted({name for names in self.parallel(lambda e: e.cluster_names(), self._all()) for name in names})

    def cluster_containers(self, cluster: str) -> list[ContainerRecord]:
        records = [record for found in self.parallel(lambda e: e.cluster_containers(cluster), self._all()) for record in found]
        for record in records:
            self._where[record.name] = record.host
        return sorted(records, key=lambda record: record.name)

    def cluster_networks(self, cluster: str) -> list[str]:
        return self.manager().cluster_networks(cluster)

    def pick_subnet(self, requested: str | None, avoid: list[str]) -> str:
        """A subnet no network on any host overlaps (the overlay reaches them all)."""
        engines = self._all()
        for engine in engines:
            if requested:
                engine.check_subnet_free(requested)
        if requested:
            return requested
        taken = [str(subnet) for found in self.parallel(lambda e: e.used_subnets(), engines) for _, subnet in found]
        return engines[0].free_subnet([*avoid, *taken])

    # ---- creation --------------------------------------------------------------
    def create_network(self, name: str, subnet: str, cluster: str) -> None:
        from emu.control.runtime.remembered import remember

        remember(cluster, self.hosts)  # from here on `emu down` can find it, whatever happens next
        # No MTU option: Docker's is the underlay's, and containers get 50 bytes less
        # (1450 on the 1500-byte networks `emu hosts check` asks for), OVERLAY_MTU.
        self.manager().create_network(
            name, subnet, cluster, driver="overlay", attachable=True, ip_range=docker_range(subnet)
        )

    def create_node(self, spec: NodeSpec) -> None:
        self.engine(spec.host).create_node(spec)
        self._where[spec.container] = spec.host

    def published_ports(self, host: str | None = None) -> dict[tuple[int, str], str]:
        """The host ports published on `host`'s engine (every engine's when None)."""
        engines = [self.engine(host)] if host else list(self.engines().values())
        return {key: holder for engine in engines for key, holder in engine.published_ports().items()}

    def start_node(self, container: str) -> None:
        self._engine_of(container).start_node(container)

    def check_ports(self, specs: list[NodeSpec]) -> None:
        for host in {spec.host for spec in specs if spec.ports}:
            self.engine(host).check_ports([spec for spec in specs if spec.host == host])

    def run_external(self, cluster: str, name: str, network: str, image: str) -> None:
        manager = self.manager()
        self.ship_images([image], lambda message: None, hosts=[manager.host])
        manager.run_external(cluster, name, network, image)
        self._where[name] = manager.host

    def node_image(self, progress: Progress) -> str:
        """The node image, built where emu runs (or on the first host when this
        machine has no engine) and shipped to every host that lacks it."""
        try:
            source = DockerRuntime()
            tag = source.node_image(progress)
        except EmuError:
            source = self.engine(self.hosts[0].name)
            tag = source.node_image(progress)
        self.ship_images([tag], progress, source=source)
        return tag

    def ship_images(
        self, tags: list[str], progress: Progress, source: DockerRuntime | None = None, hosts: list[str] | None = None
    ) -> dict[str, list[str]]:
        """docker save | docker load of each tag to every host (of `hosts`) that
        lacks it, hosts in parallel. Returns {host: tags shipped}."""
        source = source or DockerRuntime()
        targets = [self.engine(h) for h in (hosts or [host.name for host in self.hosts])]

        def ship(target: DockerRuntime) -> list[str]:
            shipped = []
            for tag in tags:
                if target.has_image(tag):
                    continue
                if target.base_url == source.base_url and target.host == source.host:
                    continue
                started = time.monotonic()
                target.api.load_image(source.api.get_image(tag))
                if not target.has_image(tag):
                    raise EmuError(f"host {target.host}: loading image {tag} did not make it appear there")
                progress(f"image {tag} shipped to {target.host} in {time.monotonic() - started:.1f}s")
                shipped.append(tag)
            return shipped

        return dict(zip([t.host for t in targets], self.parallel(ship, targets)))

    # ---- files and commands ------------------------------------------------------
    def exec(self, container: str, argv: list[str], environment: dict[str, str] | None = None) -> ExecResult:
        return self._engine_of(container).exec(container, argv, environment)

    def exec_split(self, container: str, argv: list[str]) -> tuple[int, bytes, bytes]:
        return self._engine_of(container).exec_split(container, argv)

    def exec_detached(self, container: str, argv: list[str]) -> None:
        self._engine_of(container).exec_detached(container, argv)

    def exec_stream(self, container: str, argv: list[str]):
        return self._engine_of(container).exec_stream(container, argv)

    def put_files(self, container: str, files: dict[str, str | bytes], mode: int = 0o644) -> None:
        self._engine_of(container).put_files(container, files, mode)

    def run_with_files(self, container: str, files: dict[str, str | bytes], argv: list[str]) -> ExecResult:
        return self._engine_of(container).run_with_files(container, files, argv)

    def read_file(self, container: str, path: str, limit: int | None = None) -> str | None:
        return self._engine_of(container).read_file(container, path, limit)

    def container_ip(self, container: str, network: str) -> str:
        return self._engine_of(container).container_ip(container, network)

    def interactive(self, container: str, argv: list[str], tty: bool) -> int:
        return self._engine_of(container).interactive(container, argv, tty)

    # ---- image pods: on the engine of their node --------------------------------
    def ensure_images(self, images: list[str], node_container: str = "") -> list[str]:
        return self._engine_of(node_container).ensure_images(images)

    def start_sandbox(self, pod) -> None:
        self._engine_of(pod.node_container).start_sandbox(pod)

    def create_containers(self, pod) -> None:
        self._engine_of(pod.node_container).create_containers(pod)

    def start_containers(self, pod) -> None:
        self._engine_of(pod.node_container).start_containers(pod)

    def remove_pod_containers(self, cluster: str, pod) -> int:
        return self._engine_of(pod.node_container).remove_pod_containers(cluster, pod)

    def container_logs(self, name: str, follow: bool = False) -> str:
        return self._engine_of(name).container_logs(name, follow)

    def pod_container_states(self, cluster: str) -> dict[str, dict]:
        states: dict[str, dict] = {}
        for found in self.parallel(lambda engine: engine.pod_container_states(cluster), self._all()):
            states.update(found)
        return states

    def parallel(self, function: Callable, items: list) -> list:
        return run_parallel(function, items)

    # ---- removal -----------------------------------------------------------------
    def remove_cluster(self, cluster: str) -> tuple[int, int]:
        """Every host's containers of the cluster, then the overlay (the swarm is
        left as it was); the record of the cluster goes last. An inventory that
        names one engine twice (a cluster made before emu refused them) is not
        refused here: each engine is cleaned once."""
        from emu.control.runtime.remembered import forget

        every = self.engines(distinct=False)
        seen: set[str] = set()
        engines = []
        for name, engine in every.items():
            engine_id = self._identities[name].engine_id
            if not engine_id or engine_id not in seen:
                engines.append(engine)
                seen.add(engine_id)
        containers = sum(self.parallel(lambda e: e.remove_containers(cluster), engines))
        manager = self.manager(distinct=False)
        networks = manager.remove_networks(cluster)
        # Workers drop their view of the overlay once no container of theirs uses it.
        deadline = time.monotonic() + 10
        workers = [e for e in engines if e is not manager]
        while any(e.cluster_networks(cluster) for e in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        forget(cluster)
        self._where = {c: h for c, h in self._where.items() if not c.startswith(f"{cluster}-")}
        return containers, networks

    def _all(self) -> list[DockerRuntime]:
        return list(self.engines().values())
