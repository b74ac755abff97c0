"""The uml provider: nodes with a kernel of their own (User-mode Linux guests).

A sibling of `docker.DockerRuntime` behind the same seam (emu.control.runtime.provider):
each node is a UML guest booted from the node image's root filesystem
(emu.control.runtime.uml), on a host bridge that is the cluster network, and
every command, file and stream goes through the guest's command server
(emu.control.runtime.umlguest). Since no engine keeps labels, the provider
keeps records on disk under the guests' state directory, so any later `emu`
command finds a cluster again:

    STATE_DIR/clusters/NAME/cluster.json        network, subnet, bridge
    STATE_DIR/clusters/NAME/nodes/CONTAINER.json  hostname, role, address, boot id, command, host ports
    STATE_DIR/clusters/NAME/forward/PORT.pid    a host port's relay (umlforward)
    STATE_DIR/guests/CONTAINER/                 the guest's own files (uml.Guest)

Each record is written before what it names is made, so `remove_cluster`
(also after a failed `up`) finds and removes every process, tap, bridge and
file. A node whose kernel is gone (killed from outside) is reported not
running, and `start_node` boots it again on its own disk (`emu up`). The
bridge gets Docker's rules for a bridge network (nodes reach beyond this
host, masqueraded). What docker nodes get from their engine, a
guest gets after it boots: its hostname, /etc/hosts and resolv.conf, the node
sysctls (br_netfilter loaded first) and the node's command. Host ports are TCP relays on the host (umlforward), as
Docker's userland proxy. Image pods need a Docker engine and are refused
with a clear error; an external host (`emu external`) is a small guest of its
own on the bridge.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from emu.control.runtime import stream, uml, umlforward, umlguest
from emu.control.runtime.provider import (
    ROLE_EXTERNAL,
    ContainerRecord,
    ExecResult,
    NodeSpec,
    PortMapping,
    Progress,
    run_parallel,
)
from emu.errors import EmuError

NETWORK_POOL = ipaddress.IPv4Network("172.28.0.0/14")  # where a free /24 is looked for, as the docker provider
MEMORY = os.environ.get("EMU_UML_MEMORY") or "768M"  # each guest's; the 2-node lab's use 100 and 60 MB: room for pods
EXTERNAL_MEMORY = "256M"  # an external host's guest (netexec and curl)
BOOT_TIMEOUT = 120.0
EXEC_TIMEOUT = 3600.0  # a docker exec has none; the command server needs one (its maximum)
NODE_SYSCTLS = {  # as the docker provider gives its node containers (emu.control.runtime.docker)
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.bridge.bridge-nf-call-iptables": "1",
}
# A guest killed from outside loses what its page cache held; what it wrote reaches its disk (the
# host's page cache, which outlives it) within a second or two, so the node boots again with the
# files it had (its state, plans and boot script, the API server's data), not 30 s older ones.
GUEST_SYSCTLS = {"vm.dirty_expire_centisecs": "100", "vm.dirty_writeback_centisecs": "100"}
GUEST_MOUNT = "mount -o remount,commit=1 /"  # ext4's journal every second, not every 5
KILLED = "down: its UML kernel process is gone"  # a uml node's status when it is not running
IMAGE_PODS = (
    "image pods (containers with an image) need the docker runtime: a uml node has no container engine; "
    "use runtime: docker, or give the container a command or a workload instead of an image"
)


def bridge_name(cluster: str) -> str:
    """The cluster network's host bridge: interface names have at most 15 characters."""
    import hashlib

    return "emub" + hashlib.sha256(cluster.encode()).hexdigest()[:10]


def outbound_rules(bridge: str, subnet: str) -> list[tuple[str, list[str]]]:
    """(table, rule) that let nodes reach beyond this host, as Docker's for a
    bridge network: their traffic masqueraded to the host's address, and
    forwarded out (and its replies in) past Docker's FORWARD policy DROP."""
    return [
        ("nat", ["POSTROUTING", "-s", subnet, "!", "-o", bridge, "-j", "MASQUERADE"]),
        ("filter", ["FORWARD", "-i", bridge, "!", "-o", bridge, "-j", "ACCEPT"]),
        ("filter", ["FORWARD", "-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]),
    ]


def known_clusters(state_dir: Path | None = None) -> list[str]:
    """Names of the uml clusters with records here (no root needed to read them)."""
    root = Path(state_dir or uml.STATE_DIR) / "clusters"
    try:
        return sorted(p.name for p in root.iterdir() if (p / "cluster.json").exists())
    except OSError:
        return []


def external_address(subnet: ipaddress.IPv4Network, taken: set[str]) -> str | None:
    """An external host's address: the highest free one below the default
    LoadBalancer pool (the subnet's last 32 addresses, emu.control.state), away
    from the nodes' (the first ones); None when 64 tries find none free."""
    below_pool = subnet.broadcast_address - 33
    free = (below_pool - i for i in range(64) if below_pool - i > subnet.network_address)
    return next((str(ip) for ip in free if str(ip) not in taken), None)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(json.dumps(data, indent=1))
    temporary.replace(path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise EmuError(f"{path}: cannot read emu's record ({error}); remove the cluster with `emu down`") from None


def resolv_conf(host: Path = Path("/etc/resolv.conf")) -> str:
    """A node's /etc/resolv.conf, as Docker makes a container's: the host's,
    without nameservers on loopback (unreachable from the node), and Google's
    public ones if none is left. (A node's pods copy its lines: an empty file
    would fail their plan.)"""
    try:
        lines = host.read_text().splitlines()
    except OSError:
        lines = []
    kept = [line for line in lines if not line.strip().startswith("#") and line.strip()]
    kept = [line for line in kept if not (line.split()[0] == "nameserver" and line.split()[1:2] and
                                          line.split()[1].startswith(("127.", "::1")))]  # fmt: skip
    if not any(line.split()[0] == "nameserver" for line in kept):
        kept += ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]
    return "\n".join(kept) + "\n"


def _host_routes() -> list[tuple[str, ipaddress.IPv4Network]]:
    """(device, destination) of this host's IPv4 routes (Docker's bridges among them)."""
    result = uml.run_host(["ip", "-4", "-o", "route", "show", "table", "all"], check=False)
    routes = []
    for line in result.stdout.splitlines():
        words = line.split()
        if not words or words[0] in ("default", "broadcast", "local", "unreachable", "multicast"):
            continue
        device = words[words.index("dev") + 1] if "dev" in words else ""
        with contextlib.suppress(ValueError):
            routes.append((device, ipaddress.IPv4Network(words[0], strict=False)))
    return routes


class UmlStream:
    """A command in a guest whose stdout is read as it comes (`exec_stream`): the
    command server's "stream" answer, in Docker's attach framing, ending with a
    frame of kind 3 that holds the exit code. Closing the connection kills the
    command in the guest; terminate() and close() also signal it by its marker."""

    def __init__(self, runtime: UmlRuntime, container: str, guest: uml.Guest, argv: list[str]):
        self.runtime, self.container, self.marker = runtime, container, stream.new_marker()
        request = {"boot": guest.boot_id, "op": "stream", "argv": list(argv),
                   "env": {stream.MARKER_VARIABLE: self.marker}}  # fmt: skip
        self._sock = socket.create_connection((guest.ip, umlguest.PORT), timeout=10)
        self._sock.settimeout(None)
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        self._buffer = bytearray()
        self._stderr = bytearray()
        self._lock = threading.Lock()
        self._ended = False
        self._closed = False
        self._exit: int | None = None

    def _recv(self) -> bytes:
        try:
            return self._sock.recv(1 << 18)
        except OSError:
            return b""

    def read(self) -> bytes:
        while not self._ended:
            chunk = self._recv()
            if not chunk:
                self._ended = True
                break
            self._buffer += chunk
            if self._buffer[:1] == b"{":  # a JSON answer: the request was refused
                self._ended = True
                with self._lock:
                    self._stderr += bytes(self._buffer)
                break
            out = []
            for kind, payload in stream.take_frames(self._buffer):
                if kind == 2:
                    with self._lock:
                        self._stderr += payload
                elif kind == 3:
                    self._exit = int(payload)
                else:
                    out.append(payload)
            if out:
                return b"".join(out)
        return b""

    def errors(self) -> str:
        with self._lock:
            return self._stderr.decode(errors="replace")

    def terminate(self) -> None:
        self.runtime.exec(self.container, stream.kill_argv(self.marker, "TERM"))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with contextlib.suppress(EmuError):
                self.runtime.exec(self.container, stream.kill_argv(self.marker, "KILL"))
        finally:
            for close in (lambda: self._sock.shutdown(socket.SHUT_RDWR), self._sock.close):
                with contextlib.suppress(OSError):
                    close()

    def exit_code(self) -> int | None:
        return self._exit if self._ended else None


class UmlRuntime:
    """Clusters of User-mode Linux nodes on this machine (needs root on Linux)."""

    mtu = 1500  # the host bridge's and the taps'
    name = "uml"
    kernel_has_ip_vs = True  # the UML kernel's modules include ip_vs (proxyMode ipvs runs)
    command_port = umlguest.PORT  # emu's channel into a node shares its eth0 (emu netem leaves it unimpaired)

    def __init__(self, state_dir: Path | None = None):
        self.state_dir = Path(state_dir or uml.STATE_DIR)
        self._guests: dict[str, uml.Guest] = {}
        self._lock = threading.Lock()

    # ---- records ---------------------------------------------------------
    def _cluster_dir(self, cluster: str) -> Path:
        return self.state_dir / "clusters" / cluster

    def _cluster_record(self, cluster: str) -> dict | None:
        return _read_json(self._cluster_dir(cluster) / "cluster.json")

    def _node_records(self, cluster: str) -> list[dict]:
        directory = self._cluster_dir(cluster) / "nodes"
        if not directory.is_dir():
            return []
        return [record for path in sorted(directory.glob("*.json")) if (record := _read_json(path))]

    def _node_record(self, container: str) -> dict:
        return self._find_node(container)[1]

    def _find_node(self, container: str) -> tuple[str, dict]:
        """(cluster, record) of a node or external host."""
        for cluster in known_clusters(self.state_dir):
            path = self._cluster_dir(cluster) / "nodes" / f"{container}.json"
            record = _read_json(path)
            if record:
                return cluster, record
        raise EmuError(f"no uml node '{container}' (no record under {self.state_dir / 'clusters'}); see `emu status`")

    def _guest(self, container: str) -> uml.Guest:
        with self._lock:
            guest = self._guests.get(container)
        if guest is None:
            record = self._node_record(container)
            guest = uml.Guest(container, Path(record["rootfs"]), record["bridge"], record["address"],
                              gateway=record.get("gateway"), state_dir=self.state_dir,
                              boot_id=record["boot"])  # fmt: skip
            with self._lock:
                self._guests[container] = guest
        return guest

    def _running(self, container: str) -> bool:
        return uml.guest_running(container, self.state_dir)

    def _forget_guest(self, container: str) -> None:
        """Drop this process's handle on a guest whose kernel is gone, reaping its
        process if this process booted it (a killed kernel stays a zombie of ours)."""
        with self._lock:
            guest = self._guests.pop(container, None)
        if guest is not None and guest.process is not None:
            guest.process.poll()

    # ---- discovery -------------------------------------------------------
    def cluster_names(self) -> list[str]:
        return known_clusters(self.state_dir)

    def cluster_containers(self, cluster: str) -> list[ContainerRecord]:
        records = []
        for record in self._node_records(cluster):
            running = self._running(record["container"])
            records.append(ContainerRecord(record["container"], cluster, record["role"],
                                           record.get("node", record["hostname"]), "", running,
                                           "" if running else KILLED))  # fmt: skip
        return records

    def cluster_networks(self, cluster: str) -> list[str]:
        record = self._cluster_record(cluster)
        return [record["network"]] if record else []

    def pick_subnet(self, requested: str | None, avoid: list[str]) -> str:
        """`requested` if no route of this host overlaps it, else a free /24."""
        routes = _host_routes()
        if requested:
            wanted = ipaddress.IPv4Network(requested)
            for device, taken in routes:
                if taken.overlaps(wanted):
                    raise EmuError(
                        f"networking.clusterNetwork {wanted} overlaps {taken} on this host (device {device}); "
                        "choose another subnet, or leave clusterNetwork out and emu picks a free one"
                    )
            return str(wanted)
        taken = [network for _, network in routes] + [ipaddress.IPv4Network(a) for a in avoid]
        for candidate in NETWORK_POOL.subnets(new_prefix=24):
            if not any(candidate.overlaps(t) for t in taken):
                return str(candidate)
        raise EmuError(f"no free /24 left in {NETWORK_POOL} for the cluster network; remove unused networks")

    # ---- creation --------------------------------------------------------
    def create_network(self, name: str, subnet: str, cluster: str) -> None:
        """The host bridge, holding the subnet's first address (the nodes' gateway)."""
        uml.require_uml()
        network = ipaddress.IPv4Network(subnet)
        gateway = str(network.network_address + 1)
        record = {"name": cluster, "network": name, "subnet": subnet, "bridge": bridge_name(cluster),
                  "gateway": gateway}  # fmt: skip
        _write_json(self._cluster_dir(cluster) / "cluster.json", record)  # first: `down` finds what follows
        self._ensure_network(record)

    @staticmethod
    def _ensure_network(record: dict) -> None:
        """The cluster's bridge and its rules, made where they are missing (a cluster's
        first `up`; a node started again after this host restarted without them)."""
        network = ipaddress.IPv4Network(record["subnet"])
        uml.ensure_bridge(record["bridge"], f"{record['gateway']}/{network.prefixlen}")
        if shutil.which("iptables"):
            for table, rule in outbound_rules(record["bridge"], record["subnet"]):
                if uml.run_host(["iptables", "-w", "-t", table, "-C", *rule], check=False).returncode:
                    uml.run_host(["iptables", "-w", "-t", table, "-I", *rule])

    def node_image(self, progress: Progress) -> str:
        """The node image's tag, its root filesystem made if missing (the image built with Docker then)."""
        from emu.control.runtime.images import node_image_tag

        uml.ensure_uml()
        tag = node_image_tag()
        self._rootfs(tag, progress)
        return tag

    def _rootfs(self, image: str, progress: Progress = lambda message: None) -> Path:
        with self._lock:  # nodes are created in parallel: one makes it, the others wait
            path = uml.rootfs_path(image)
            if not path.exists():
                from emu.control.runtime.docker import DockerRuntime
                from emu.control.runtime.images import ImageBuilder, node_image_tag

                docker = DockerRuntime()
                if image == node_image_tag():
                    ImageBuilder(docker, progress).ensure_node_image()
                path = uml.make_rootfs(image, api=docker.api, progress=progress)
            return path

    def published_ports(self, host: str | None = None) -> dict[tuple[int, str], str]:
        """None that a probe here would miss: uml nodes' host ports are relays run on this
        machine, so a port in use by one is found by binding it (check_ports)."""
        return {}

    def start_node(self, container: str) -> None:
        """Boot a node whose kernel is gone (killed from outside, crashed) again in place,
        as a stopped node container is started: on its own disk (its files, among them
        the state and boot script its command rebuilds its pods from: cni.NODE_COMMAND),
        at its address, through a new tap on the cluster's bridge (made again if it
        went), with a new boot id; then what create_node gives it after boot, the relays
        of its host ports that went with it, and its command. Nothing for a node that
        runs. What it cannot boot from is an error before anything changes."""
        if self._running(container):
            return
        cluster, record = self._find_node(container)
        network = self._cluster_record(cluster)
        where = f"uml node {container} cannot boot again in place"
        redo = f"nothing was changed; `emu down {cluster}`, then `emu up FILE`"
        if network is None:
            raise EmuError(f"{where}: cluster '{cluster}' has no network record; {redo}")
        if "command" not in record:
            raise EmuError(f"{where}: its record was written by an older emu, without the node's command; {redo}")
        rootfs = Path(record["rootfs"])
        if not rootfs.exists():
            raise EmuError(f"{where}: the root filesystem it was made from, {rootfs}, is gone (a newer node image "
                           f"or emu replaced it); {redo}")  # fmt: skip
        disk = uml.guest_dir(self.state_dir, container) / "root.cow"
        if not disk.exists():
            raise EmuError(f"{where}: its disk {disk} is gone, and with it its pods' files; {redo}")
        self._forget_guest(container)
        with self._lock:  # nodes are started in parallel: one makes what is missing
            self._ensure_network(network)
        guest = uml.Guest(container, rootfs, record["bridge"], record["address"], gateway=record.get("gateway"),
                          memory=record.get("memory", MEMORY), state_dir=self.state_dir)  # fmt: skip
        record["boot"] = guest.boot_id  # first: a later emu command talks to the new boot
        _write_json(self._cluster_dir(cluster) / "nodes" / f"{container}.json", record)
        guest.boot(BOOT_TIMEOUT, keep_disk=True)
        with self._lock:
            self._guests[container] = guest
        self._set_up(guest, record["hostname"], record["ip"])
        for mapping in record.get("ports", []):
            pid_file = self._cluster_dir(cluster) / "forward" / f"{mapping['host_port']}.pid"
            if not _relay_alive(pid_file):
                self._forward(cluster, PortMapping(**mapping), record["ip"])
        self.exec_detached(container, record["command"])

    def check_ports(self, specs: list[NodeSpec]) -> None:
        """Host ports: TCP only (a relay on the host), and free here."""
        for spec in specs:
            for mapping in spec.ports:
                where = f"host port {mapping.host_port}/{mapping.protocol} (node {spec.hostname}, extraPortMappings)"
                if mapping.protocol != "TCP":
                    raise EmuError(f"{where}: uml nodes forward TCP host ports only; use runtime: docker for UDP")
                with socket.socket() as probe:
                    try:
                        probe.bind((mapping.listen_address, mapping.host_port))
                    except OSError:
                        raise EmuError(
                            f"{where} is already in use on this machine at {mapping.listen_address}; "
                            "stop what listens there or choose another hostPort"
                        ) from None

    def create_node(self, spec: NodeSpec) -> None:
        """Boot the node's guest with its IP, give it what a node container gets, start its command."""
        network = self._cluster_record(spec.cluster)
        if network is None:
            raise EmuError(f"cluster '{spec.cluster}' has no network yet (create_network first)")
        prefix = ipaddress.IPv4Network(network["subnet"]).prefixlen
        rootfs = self._rootfs(spec.image)
        guest = uml.Guest(spec.container, rootfs, network["bridge"], f"{spec.ip}/{prefix}", gateway=network["gateway"],
                          memory=MEMORY, state_dir=self.state_dir)  # fmt: skip
        # What start_node boots it again with, too: its memory, command and host ports.
        record = {"container": spec.container, "hostname": spec.hostname, "role": spec.role, "ip": spec.ip,
                  "address": guest.address, "gateway": guest.gateway, "bridge": guest.bridge, "rootfs": str(rootfs),
                  "boot": guest.boot_id, "memory": guest.memory, "command": list(spec.command),
                  "ports": [dataclasses.asdict(mapping) for mapping in spec.ports]}  # fmt: skip
        _write_json(self._cluster_dir(spec.cluster) / "nodes" / f"{spec.container}.json", record)
        guest.boot(BOOT_TIMEOUT)
        with self._lock:
            self._guests[spec.container] = guest
        self._set_up(guest, spec.hostname, spec.ip)
        for mapping in spec.ports:
            self._forward(spec.cluster, mapping, spec.ip)
        self.exec_detached(spec.container, spec.command)

    @staticmethod
    def _set_up(guest: uml.Guest, hostname: str, ip: str) -> None:
        """What Docker gives a node container, after each boot: its hostname, /etc/hosts,
        resolv.conf, the node sysctls (br_netfilter loaded first); and the guest's own."""
        sysctls = " ".join(f"{key}={value}" for key, value in {**NODE_SYSCTLS, **GUEST_SYSCTLS}.items())
        hosts = f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n"
        name = shlex.quote(hostname)
        setup = (f"hostname {name} && echo {name} >/etc/hostname && printf %s {shlex.quote(hosts)} >/etc/hosts && "
                 f"printf %s {shlex.quote(resolv_conf())} >/etc/resolv.conf && "
                 f"modprobe br_netfilter && sysctl -q -w {sysctls} && {GUEST_MOUNT}")  # fmt: skip
        guest.sh(setup)

    def _forward(self, cluster: str, mapping, target: str) -> None:
        """A relay from the host port to the node (its pid recorded with the cluster)."""
        pid_file = self._cluster_dir(cluster) / "forward" / f"{mapping.host_port}.pid"
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-I", umlforward.__file__, mapping.listen_address, str(mapping.host_port), target,
                str(mapping.container_port)]  # fmt: skip
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)  # fmt: skip
        pid_file.write_text(str(process.pid))
        if process.stdout.readline().strip() != b"ready":
            process.wait(5)
            error = process.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
            raise EmuError(f"could not forward host port {mapping}: {' '.join(error) or 'the relay exited'}")
        process.stdout.close()
        process.stderr.close()

    def run_external(self, cluster: str, name: str, network: str, image: str) -> None:
        """A host outside the cluster on its network: a small guest of its own on the
        cluster's bridge (a client or server 'on the internet', as the docker
        provider's external container), at a free address below the LoadBalancer
        pool. Recorded with the nodes (role external), so `down` removes it too."""
        record = self._cluster_record(cluster)
        if record is None:
            raise EmuError(f"cluster '{cluster}' has no network (is it up? see `emu status`)")
        subnet = ipaddress.IPv4Network(record["subnet"])
        ip = external_address(subnet, {node.get("ip") for node in self._node_records(cluster)} | {record["gateway"]})
        if ip is None:
            raise EmuError(f"no free address for the external host {name} in {subnet} below its LoadBalancer pool")
        rootfs = self._rootfs(image)
        guest = uml.Guest(name, rootfs, record["bridge"], f"{ip}/{subnet.prefixlen}", gateway=record["gateway"],
                          memory=EXTERNAL_MEMORY, state_dir=self.state_dir)  # fmt: skip
        node_record = {"container": name, "hostname": name, "node": "", "role": ROLE_EXTERNAL, "ip": ip,
                       "address": guest.address, "gateway": guest.gateway, "bridge": guest.bridge,
                       "rootfs": str(rootfs), "boot": guest.boot_id}  # fmt: skip
        _write_json(self._cluster_dir(cluster) / "nodes" / f"{name}.json", node_record)  # first: `down` finds it
        guest.boot(BOOT_TIMEOUT)
        with self._lock:
            self._guests[name] = guest
        hosts = f"127.0.0.1\tlocalhost\n{ip}\t{name}\n"
        guest.sh(f"hostname {shlex.quote(name)} && printf %s {shlex.quote(hosts)} >/etc/hosts && "
                 f"printf %s {shlex.quote(resolv_conf())} >/etc/resolv.conf")  # fmt: skip

    # ---- commands and files ----------------------------------------------
    def _run(self, container: str, argv: list[str], input: bytes | None = None):
        guest = self._guest(container)
        try:
            return guest.run(argv, input=input, timeout=EXEC_TIMEOUT)
        except (OSError, uml.UmlError) as error:
            if self._booted_again(container, guest):  # by another emu command: its new boot answers
                return self._run(container, argv, input)
            if not isinstance(error, OSError):
                raise
            state = "running" if self._running(container) else "its kernel process is gone"
            raise EmuError(
                f"node {container} (a uml guest, {state}) did not answer on {guest.ip}:{umlguest.PORT} ({error}); "
                "`emu status` says what is down, and `emu up FILE` boots a stopped node again"
            ) from None

    def _booted_again(self, container: str, guest: uml.Guest) -> bool:
        """Whether the node's record names another boot than this process's handle
        (start_node in another emu process): the handle is then dropped."""
        try:
            booted = self._node_record(container)["boot"] != guest.boot_id
        except EmuError:
            return False
        if booted:
            self._forget_guest(container)
        return booted

    def exec(self, container: str, argv: list[str], environment: dict[str, str] | None = None) -> ExecResult:
        """Run a command in the node and wait for it; output is stdout and stderr together, in order."""
        variables = [f"{key}={value}" for key, value in (environment or {}).items()]
        full = ["sh", "-c", 'exec "$@" 2>&1', "sh", *(["env", *variables] if variables else []), *argv]
        result = self._run(container, full)
        return ExecResult(result.returncode, result.stdout.decode(errors="replace"))

    def exec_split(self, container: str, argv: list[str]) -> tuple[int, bytes, bytes]:
        result = self._run(container, argv)
        return result.returncode, result.stdout, result.stderr

    def exec_detached(self, container: str, argv: list[str]) -> None:
        """Start a long-running command in the node without waiting for it."""
        self._run(container, ["sh", "-c", 'setsid "$@" >/dev/null 2>&1 </dev/null &', "sh", *argv])

    def exec_stream(self, container: str, argv: list[str]) -> UmlStream:
        return UmlStream(self, container, self._guest(container), argv)

    def put_files(self, container: str, files: dict[str, str | bytes], mode: int = 0o644) -> None:
        from emu.control.runtime.docker import tar_archive

        result = self._run(container, ["tar", "-x", "-f", "-", "-C", "/"], input=tar_archive(files, mode))
        if result.returncode != 0:
            raise EmuError(f"writing files into node {container} failed: {result.stderr.decode(errors='replace')}")

    def run_with_files(self, container: str, files: dict[str, str | bytes], argv: list[str]) -> ExecResult:
        """put_files, then argv, in one request: the files as a tar archive on its stdin."""
        from emu.control.runtime.docker import tar_archive

        script = 'exec 2>&1; tar -x -f - -C / && exec "$@"'
        result = self._run(container, ["sh", "-c", script, "sh", *argv], input=tar_archive(files))
        return ExecResult(result.returncode, result.stdout.decode(errors="replace"))

    def read_file(self, container: str, path: str, limit: int | None = None) -> str | None:
        script = ('[ -f "$1" ] || exit 44; size=$(stat -L -c %s "$1"); '
                  'if [ -n "$2" ] && [ "$size" -gt "$2" ]; then echo "$size"; exit 45; fi; exec cat "$1"')  # fmt: skip
        result = self._run(container, ["sh", "-c", script, "sh", path, "" if limit is None else str(limit)])
        if result.returncode == 44:
            return None
        if result.returncode == 45:
            raise EmuError(
                f"{path} in node {container} is {int(result.stdout):,} bytes, over emu's limit of {limit:,}; "
                "it is damaged or not emu's: remove the cluster with `emu down`"
            )
        if result.returncode != 0:
            raise EmuError(f"reading {path} in node {container} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode(errors="replace")

    def container_ip(self, container: str, network: str) -> str:
        return self._node_record(container)["ip"]

    def interactive(self, container: str, argv: list[str], tty: bool) -> int:
        """Run argv in the node, its output shown as it comes (no terminal: the
        command server has none; stdin is not passed)."""
        handle = self.exec_stream(container, argv)
        try:
            while chunk := handle.read():
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            sys.stderr.write(handle.errors())
            code = handle.exit_code()
            return code if code is not None else 1
        finally:
            handle.close()

    def parallel(self, function: Callable, items: list) -> list:
        return run_parallel(function, items)

    # ---- removal ---------------------------------------------------------
    def remove_cluster(self, cluster: str) -> tuple[int, int]:
        """Every guest (process, tap, files), host port relay, the bridge and the records.
        Returns (nodes, networks)."""
        directory = self._cluster_dir(cluster)
        record = self._cluster_record(cluster)
        nodes = self._node_records(cluster)
        self.parallel(lambda node: self._remove_guest(node["container"]), nodes)
        for pid_file in sorted((directory / "forward").glob("*.pid")):
            _kill_relay(pid_file)
        if record:
            if shutil.which("iptables"):
                for table, rule in outbound_rules(record["bridge"], record["subnet"]):
                    while uml.run_host(["iptables", "-w", "-t", table, "-D", *rule], check=False).returncode == 0:
                        pass
            uml.delete_bridge(record["bridge"])
        shutil.rmtree(directory, ignore_errors=True)
        return len(nodes), 1 if record else 0

    def _remove_guest(self, container: str) -> None:
        """A guest this process booted is killed and reaped here first: its
        kernel's process would stay a zombie of this process, which
        remove_guest would wait for in vain."""
        with self._lock:
            guest = self._guests.pop(container, None)
        if guest is not None and guest.process is not None and guest.process.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(guest.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                guest.process.wait(5)
        uml.remove_guest(container, self.state_dir)

    # ---- image pods: a uml node has no container engine --------------------
    def ensure_images(self, images: list[str], node_container: str) -> list[str]:
        raise EmuError(IMAGE_PODS)

    def start_sandbox(self, pod) -> None:
        raise EmuError(IMAGE_PODS)

    def create_containers(self, pod) -> None:
        raise EmuError(IMAGE_PODS)

    def start_containers(self, pod) -> None:
        raise EmuError(IMAGE_PODS)

    def remove_pod_containers(self, cluster: str, pod) -> int:
        return 0  # none were made

    def container_logs(self, name: str, follow: bool = False) -> str:
        raise EmuError(IMAGE_PODS)

    def pod_container_states(self, cluster: str) -> dict[str, dict]:
        return {}


def _relay_alive(pid_file: Path) -> int | None:
    """The pid of a host port's relay if it runs (that pid may have been reused by something else)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text())
        if umlforward.__file__ in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return pid
    return None


def _kill_relay(pid_file: Path) -> None:
    """Kill a host port's relay, if that pid is still one."""
    pid = _relay_alive(pid_file)
    if pid is not None:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
