"""A container engine in memory, behind emu's Provider protocol: Cluster's
lifecycle (create, converge, lock, clean-up after a failed `up`, `down`)
tested without Docker.

    engine = FakeEngine()
    Cluster("lab", runtime=FakeProvider(engine)).up(topology)
    Cluster("lab", runtime=FakeProvider(engine)).state()  # a later command finds it

`FakeEngine` is the engine (the Docker daemon): containers with their labels,
image, network address, published ports and a file system; networks with
their labels and subnet. `FakeProvider` is one emu command's client of it,
holding nothing of its own, so a second provider over the same engine sees
only what the engine holds, as a later `emu` command does.

What the engine checks as Docker would: a container or network name is taken
once; a node joins an existing network at a free address inside its subnet;
a host port is published once; exec needs a running container.

Commands run in a node (`exec`, `run_with_files`, `exec_detached`, ...) are
recorded in `engine.calls` and answered by the first entry of
`engine.handlers` whose `matches(argv)` is true, `NODE_HANDLERS` by default.
Each models what a healthy node does with one command emu sends, on the
container's files:

- lock:     `mkdir -p /etc/emu && mkdir /etc/emu/lock && printf holder` is an atomic mkdir (fails
            if the directory is there, as mkdir(2) does);
- rm:       `rm -f|-rf PATH...` removes files (and directories);
- plan:     `sh /etc/emu/plan/run.sh` (its files, state.json.new among them,
            already written by run_with_files) exits 0, and removes the
            hold file when the script's last line does;
- publish:  `mv state.json.new state.json && rm -f hold && kill -HUP agent`
            renames the file (fails like mv when there is no .new);
- wait:     the agent's GET /wait answers programmed when the node's
            state.json has the asked generation or a later one, every port
            answering and no pod unready (a node whose agent programs at once);
- readyz:   the API server is ready when its node holds the PKI (ca.crt);
- mirror:   POST /emu/mirror writes the objects into an in-memory store with
            emu.apiserver.mirror.sync (the real one) and answers its counts;
- services: GET /api/v1/services lists that store's Services;
- observe:  reconcile.OBSERVE (and `pod_status`'s READINESS line) report,
            from the node's state.json, every pod of the node in place, its
            processes alive, its agent running and every container ready;
- cat, tail -n N: a file's text.

Anything else exits 127 ("no handler") and is listed in `engine.unhandled`,
so a test sees a command it did not expect. Put a handler in front
(`engine.handlers.insert(0, Handler(...))`) to make a node answer otherwise.

Down: `engine.stop(NAME)` stops a container as `docker stop` or an engine
that went away would (exec refused, its files kept; `start_node` starts it
again, as Docker starts a stopped container); `engine.hosts_down[HOST] = WHY`
makes a host's engine unreachable, as a swarm provider sees one: its
containers are not listed, `unreachable_hosts()` names it.

Faults: `engine.fail(method, match=..., error=... | result=...)` makes a chosen
call fail (create_node of one node, a plan's exec, the wait, ...), and
`engine.intercept(method, action)` runs `action` first (to block a call
until a test lets it go). See `FakeEngine.intercept`.

What the fake cannot prove: anything of the data path. No script is run, no
namespace, veth, route, iptables rule or process exists; the handlers above
say what a healthy node would answer, they do not check the plan would make
it so. Packets, DNS answers, service rules, probes and image pods' processes
stay in the integration tests (tests/integration, real Docker).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from emu.control.runtime.provider import (
    LABEL_CLUSTER,
    LABEL_HOST,
    LABEL_NODE,
    LABEL_ROLE,
    ROLE_EXTERNAL,
    ROLE_POD,
    ContainerRecord,
    ExecResult,
    NodeSpec,
    Progress,
    run_parallel,
)
from emu.control.runtime.sandbox import LABEL_CONTAINER, LABEL_POD, LABEL_POD_UID, ImagePod
from emu.errors import EmuError
from emu.apiserver.mirror import PATH as MIRROR_PATH
from emu.node import reconcile
from emu.node.agent import AGENT_URL, HOLD_FILE, LOCK_DIR, STATE_FILE
from emu.node.plan import cni
from emu.node.records import ClusterState

NETWORK_POOL = ipaddress.IPv4Network("172.28.0.0/14")  # as the Docker provider's
FAKE_NODE_IMAGE = "emu/node:fake"


class EngineError(Exception):
    """What the engine answers a call it refuses (Docker's APIError: not an EmuError)."""


@dataclass
class FakeNetwork:
    name: str
    subnet: ipaddress.IPv4Network
    labels: dict[str, str]


@dataclass
class FakeContainer:
    name: str
    image: str
    labels: dict[str, str]
    hostname: str = ""
    network: str | None = None
    ip: str = ""
    command: list[str] = field(default_factory=list)
    ports: list = field(default_factory=list)  # PortMapping
    running: bool = True
    status: str = ""  # the engine's words for a stopped container ("Exited (137) ...")
    serial: int = 0  # the engine's creation counter: a container made again has a new one
    files: dict[str, bytes] = field(default_factory=dict)
    directories: set[str] = field(default_factory=set)  # made by mkdir (others follow from files)
    logs: str = ""
    store: object = None  # the API server's store, once something was mirrored to this node

    # ---- its file system ----
    def text(self, path: str) -> str | None:
        data = self.files.get(path)
        return None if data is None else data.decode(errors="replace")

    def is_directory(self, path: str) -> bool:
        path = path.rstrip("/")
        return path in self.directories or any(name.startswith(path + "/") for name in self.files)

    def remove(self, path: str, recursive: bool = False) -> None:
        path = path.rstrip("/")
        self.files.pop(path, None)
        if recursive:
            for name in [n for n in self.files if n.startswith(path + "/")]:
                del self.files[name]
            self.directories = {d for d in self.directories if d != path and not d.startswith(path + "/")}

    def state(self) -> ClusterState | None:
        text = self.text(STATE_FILE)
        return ClusterState.from_json(text) if text else None


@dataclass
class Call:
    """One call the engine was asked, in order: method, container (or network,
    or cluster) and, for commands, argv and the paths of the files sent."""

    method: str
    target: str
    argv: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    @property
    def script(self) -> str:
        """The shell text of `sh -c SCRIPT ...`, else the argv joined."""
        return self.argv[2] if self.argv[:2] == ["sh", "-c"] and len(self.argv) > 2 else shlex.join(self.argv)


@dataclass
class Handler:
    """How a node answers one kind of command: run(container, argv, engine)
    for the first handler whose matches(argv) is true."""

    name: str
    matches: Callable[[list[str]], bool]
    run: Callable[[FakeContainer, list[str], FakeEngine], ExecResult]


@dataclass
class Intercept:
    method: str
    action: Callable
    match: Callable[..., bool] | None
    times: int | None  # None: every matching call


class FakeEngine:
    """The engine's state, shared by every FakeProvider over it; thread-safe
    (emu calls it from many threads at once, as it does Docker)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.containers: dict[str, FakeContainer] = {}
        self.networks: dict[str, FakeNetwork] = {}
        self.images: set[str] = {FAKE_NODE_IMAGE}
        self.calls: list[Call] = []
        self.unhandled: list[Call] = []
        self.handlers: list[Handler] = list(NODE_HANDLERS)
        self.intercepts: list[Intercept] = []
        self.hosts_down: dict[str, str] = {}  # host -> why its engine does not answer
        self._serials = itertools.count(1)

    def stop(self, name: str, status: str = "Exited (137) 5 seconds ago") -> None:
        """Stop a container as `docker stop` (or an engine going away) does: its files stay."""
        with self.lock:
            found = self.container(name)
            found.running, found.status = False, status

    # ---- faults and hooks ----
    def intercept(self, method: str, action: Callable, match: Callable[..., bool] | None = None,
                  times: int | None = 1) -> None:  # fmt: skip
        """Run action(*args) when `method` (a Provider method's name) is called with
        args for which match(*args) is true, before the engine does anything
        (for run_with_files: once its files are written, as tar extracts them
        before the command runs). An exception raised by action is the call's;
        an ExecResult it returns is the answer of exec/run_with_files instead of
        the handler's; None lets the call go on. `times`: how many matching calls
        (None: all)."""
        with self.lock:
            self.intercepts.append(Intercept(method, action, match, times))

    def fail(self, method: str, match: Callable[..., bool] | None = None, error: BaseException | None = None,
             result: ExecResult | None = None, times: int | None = 1) -> None:  # fmt: skip
        """Make a matching call raise `error` (an EngineError by default) or,
        for a command, answer `result`."""
        if error is None and result is None:
            error = EngineError(f"injected failure of {method}")

        def action(*args):
            if error is not None:
                raise error
            return result

        self.intercept(method, action, match, times)

    def _intercepted(self, method: str, *args):
        with self.lock:
            chosen = None
            for entry in self.intercepts:
                if entry.method == method and (entry.match is None or entry.match(*args)):
                    chosen = entry
                    if entry.times is not None:
                        entry.times -= 1
                        if entry.times == 0:
                            self.intercepts.remove(entry)
                    break
        return chosen.action(*args) if chosen else None  # outside the lock: it may block

    # ---- looking ----
    def record(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)

    def container(self, name: str) -> FakeContainer:
        with self.lock:
            try:
                found = self.containers[name]
            except KeyError:
                raise EngineError(f"No such container: {name}") from None
            host = found.labels.get(LABEL_HOST, "")
            if host in self.hosts_down:
                raise EmuError(self.hosts_down[host])
            return found

    def of_cluster(self, cluster: str) -> list[FakeContainer]:
        with self.lock:
            return [c for c in self.containers.values() if c.labels.get(LABEL_CLUSTER) == cluster]

    def calls_of(self, method: str, target: str | None = None) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method and (target is None or c.target == target)]

    # ---- running a command in a container ----
    def run(self, container: FakeContainer, argv: list[str]) -> ExecResult:
        if not container.running:
            raise EngineError(f"container {container.name} is not running")
        for handler in list(self.handlers):
            if handler.matches(argv):
                return handler.run(container, argv, self)
        with self.lock:
            self.unhandled.append(Call("exec", container.name, list(argv)))
        return ExecResult(127, f"fake engine: no handler for {shlex.join(argv)[:200]}\n")

    def _add_container(self, made: FakeContainer) -> None:
        with self.lock:
            if made.name in self.containers:
                raise EngineError(f'Conflict. The container name "/{made.name}" is already in use')
            made.serial = next(self._serials)
            self.containers[made.name] = made


class FakeProvider:
    """emu's Provider over a FakeEngine (a new engine if none is given)."""

    mtu = 1500

    def __init__(self, engine: FakeEngine | None = None, hosts: list | None = None) -> None:
        self.engine = engine or FakeEngine()
        self.hosts = list(hosts or [])  # a topology's hosts (emu.api.topology.model.Host): nodes spread over them

    # ---- discovery ----
    def cluster_names(self) -> list[str]:
        engine = self.engine
        with engine.lock:
            names = {c.labels[LABEL_CLUSTER] for c in engine.containers.values() if LABEL_CLUSTER in c.labels}
            names |= {n.labels[LABEL_CLUSTER] for n in engine.networks.values() if LABEL_CLUSTER in n.labels}
        return sorted(names)

    def cluster_containers(self, cluster: str) -> list[ContainerRecord]:
        return sorted(
            (ContainerRecord(c.name, cluster, c.labels.get(LABEL_ROLE, ""), c.labels.get(LABEL_NODE, ""),
                             c.labels.get(LABEL_HOST, ""), c.running, "Up" if c.running else c.status or "Exited")
             for c in self.engine.of_cluster(cluster) if c.labels.get(LABEL_HOST, "") not in self.engine.hosts_down),
            key=lambda record: record.name,
        )  # fmt: skip

    def cluster_networks(self, cluster: str) -> list[str]:
        with self.engine.lock:
            return sorted(n.name for n in self.engine.networks.values() if n.labels.get(LABEL_CLUSTER) == cluster)

    def pick_subnet(self, requested: str | None, avoid: list[str]) -> str:
        self.engine._intercepted("pick_subnet", requested, avoid)
        with self.engine.lock:
            taken = [(n.name, n.subnet) for n in self.engine.networks.values()]
        if requested:
            wanted = ipaddress.IPv4Network(requested)
            for name, subnet in taken:
                if subnet.overlaps(wanted):
                    raise EmuError(f"networking.clusterNetwork {wanted} overlaps network '{name}' ({subnet})")
            return str(wanted)
        avoided = [subnet for _, subnet in taken] + [ipaddress.IPv4Network(a) for a in avoid]
        for candidate in NETWORK_POOL.subnets(new_prefix=24):
            if not any(candidate.overlaps(t) for t in avoided):
                return str(candidate)
        raise EmuError(f"no free /24 left in {NETWORK_POOL}")

    # ---- creation ----
    def create_network(self, name: str, subnet: str, cluster: str) -> None:
        self.engine.record(Call("create_network", name))
        self.engine._intercepted("create_network", name, subnet, cluster)
        with self.engine.lock:
            if name in self.engine.networks:
                raise EngineError(f"network with name {name} already exists")
            self.engine.networks[name] = FakeNetwork(name, ipaddress.IPv4Network(subnet), {LABEL_CLUSTER: cluster})

    def published_ports(self, host: str | None = None) -> dict[tuple[int, str], str]:
        with self.engine.lock:
            return {(m.host_port, m.protocol): c.name for c in self.engine.containers.values() for m in c.ports}

    def check_ports(self, specs: list[NodeSpec]) -> None:
        self.engine._intercepted("check_ports", specs)
        published = self.published_ports()
        for spec in specs:
            for mapping in spec.ports:
                holder = published.get((mapping.host_port, mapping.protocol))
                if holder:
                    raise EmuError(f"host port {mapping.host_port}/{mapping.protocol} (node {spec.hostname}, "
                                   f"extraPortMappings) is already published by container {holder}")  # fmt: skip

    def create_node(self, spec: NodeSpec) -> None:
        self.engine.record(Call("create_node", spec.container))
        self.engine._intercepted("create_node", spec)
        labels = {LABEL_CLUSTER: spec.cluster, LABEL_ROLE: spec.role, LABEL_NODE: spec.hostname, LABEL_HOST: spec.host}
        with self.engine.lock:
            self._check_address(spec.network, spec.ip)
            if spec.image not in self.engine.images:
                raise EngineError(f"No such image: {spec.image}")
            self.engine._add_container(FakeContainer(spec.container, spec.image, labels, spec.hostname, spec.network,
                                                     spec.ip, list(spec.command), list(spec.ports)))  # fmt: skip

    def start_node(self, container: str) -> None:
        self.engine.record(Call("start_node", container))
        self.engine._intercepted("start_node", container)
        with self.engine.lock:
            found = self.engine.container(container)
            found.running, found.status = True, ""

    def unreachable_hosts(self) -> dict[str, str]:
        """{host: why} of the hosts whose engine does not answer (engine.hosts_down)."""
        with self.engine.lock:
            return dict(self.engine.hosts_down)

    def _check_address(self, network: str, ip: str) -> None:
        found = self.engine.networks.get(network)
        if found is None:
            raise EngineError(f"network {network} not found")
        if ip and ipaddress.IPv4Address(ip) not in found.subnet:
            raise EngineError(f"no configured subnet contains IP address {ip} (network {network}: {found.subnet})")
        if ip and any(c.network == network and c.ip == ip for c in self.engine.containers.values()):
            raise EngineError(f"Address already in use: {ip} on network {network}")

    def run_external(self, cluster: str, name: str, network: str, image: str) -> None:
        self.engine.record(Call("run_external", name))
        self.engine._intercepted("run_external", cluster, name, network, image)
        labels = {LABEL_CLUSTER: cluster, LABEL_ROLE: ROLE_EXTERNAL, LABEL_HOST: ""}
        with self.engine.lock:
            found = self.engine.networks.get(network)
            if found is None:
                raise EngineError(f"network {network} not found")
            used = {c.ip for c in self.engine.containers.values() if c.network == network}
            # Docker's IPAM: the first free address above the gateway.
            ip = next(str(a) for a in list(found.subnet.hosts())[1:] if str(a) not in used)
            self.engine._add_container(FakeContainer(name, image, labels, name, network, ip, ["sleep", "infinity"]))

    def node_image(self, progress: Progress) -> str:
        return FAKE_NODE_IMAGE

    # ---- commands and files ----
    def exec(self, container: str, argv: list[str], environment: dict[str, str] | None = None) -> ExecResult:
        self.engine.record(Call("exec", container, list(argv)))
        answer = self.engine._intercepted("exec", container, argv)
        if isinstance(answer, ExecResult):
            return answer
        return self.engine.run(self.engine.container(container), list(argv))

    def exec_split(self, container: str, argv: list[str]) -> tuple[int, bytes, bytes]:
        result = self.exec(container, argv)
        return result.exit_code, result.output.encode(), b""

    def exec_detached(self, container: str, argv: list[str]) -> None:
        self.exec(container, argv)

    def exec_stream(self, container: str, argv: list[str]):
        return _Finished(self.exec(container, argv))

    def interactive(self, container: str, argv: list[str], tty: bool) -> int:
        return self.exec(container, argv).exit_code

    def put_files(self, container: str, files: dict[str, str | bytes], mode: int = 0o644) -> None:
        self.engine.record(Call("put_files", container, paths=list(files)))
        self.engine._intercepted("put_files", container, files)
        self._write(self.engine.container(container), files)

    def _write(self, target: FakeContainer, files: dict[str, str | bytes]) -> None:
        with self.engine.lock:
            for path, content in files.items():  # in order, as the tar archive is extracted
                target.files[path] = content if isinstance(content, bytes) else content.encode()

    def run_with_files(self, container: str, files: dict[str, str | bytes], argv: list[str]) -> ExecResult:
        self.engine.record(Call("run_with_files", container, list(argv), list(files)))
        target = self.engine.container(container)
        if not target.running:
            raise EngineError(f"container {container} is not running")
        self._write(target, files)
        answer = self.engine._intercepted("run_with_files", container, files, argv)
        if isinstance(answer, ExecResult):
            return answer
        return self.engine.run(target, list(argv))

    def read_file(self, container: str, path: str, limit: int | None = None) -> str | None:
        self.engine._intercepted("read_file", container, path)
        with self.engine.lock:
            data = self.engine.container(container).files.get(path)
        if data is None:
            return None
        if limit is not None and len(data) > limit:
            raise EmuError(f"{path} in container {container} is {len(data):,} bytes, over emu's limit of {limit:,}")
        return data.decode(errors="replace")

    def container_ip(self, container: str, network: str) -> str:
        found = self.engine.container(container)
        if found.network != network:
            raise EngineError(f"container {container} is not on network {network}")
        return found.ip

    def parallel(self, function: Callable, items: list) -> list:
        return run_parallel(function, items)

    # ---- removal ----
    def remove_cluster(self, cluster: str) -> tuple[int, int]:
        self.engine.record(Call("remove_cluster", cluster))
        self.engine._intercepted("remove_cluster", cluster)
        with self.engine.lock:
            containers = [c.name for c in self.engine.of_cluster(cluster)]
            for name in containers:
                del self.engine.containers[name]
            networks = [n.name for n in self.engine.networks.values() if n.labels.get(LABEL_CLUSTER) == cluster]
            for name in networks:
                if any(c.network == name for c in self.engine.containers.values()):
                    raise EngineError(f"network {name} has active endpoints")
                del self.engine.networks[name]
        return len(containers), len(networks)

    # ---- image pods: their sandboxes and containers are containers labelled as Docker's ----
    def ensure_images(self, images: list[str], node_container: str = "") -> list[str]:
        self.engine._intercepted("ensure_images", images, node_container)
        with self.engine.lock:
            pulled = sorted(set(images) - self.engine.images)
            self.engine.images |= set(images)
        return pulled

    def start_sandbox(self, pod: ImagePod) -> None:
        self.engine.record(Call("start_sandbox", pod.sandbox))
        self.engine._intercepted("start_sandbox", pod)
        self.engine._add_container(FakeContainer(pod.sandbox, pod.sandbox_image, _pod_labels(pod, "POD"), pod.hostname))

    def create_containers(self, pod: ImagePod) -> None:
        self.engine._intercepted("create_containers", pod)
        for container in pod.containers:
            made = FakeContainer(pod.container_name(container.name), container.image, _pod_labels(pod, container.name),
                                 pod.hostname, running=False)  # fmt: skip
            made.files = {path: text.encode() for path, text in container.files.items()}
            self.engine._add_container(made)

    def start_containers(self, pod: ImagePod) -> None:
        self.engine._intercepted("start_containers", pod)
        for container in pod.containers:
            self.engine.container(pod.container_name(container.name)).running = True

    def remove_pod_containers(self, cluster: str, pod: ImagePod) -> int:
        self.engine.record(Call("remove_pod_containers", pod.pod))
        with self.engine.lock:
            found = [c.name for c in self.engine.of_cluster(cluster) if c.labels.get(LABEL_POD_UID) == pod.uid_label]
            for name in found:
                del self.engine.containers[name]
        return len(found)

    def container_logs(self, name: str, follow: bool = False) -> str:
        return self.engine.container(name).logs

    def pod_container_states(self, cluster: str) -> dict[str, dict]:
        return {
            c.name: {"running": c.running, "exitCode": 0, "restartCount": 0, "startedAt": None, "finishedAt": None,
                     "error": ""}
            for c in self.engine.of_cluster(cluster) if LABEL_CONTAINER in c.labels
        }  # fmt: skip


def _pod_labels(pod: ImagePod, container: str) -> dict[str, str]:
    """An image pod's container's labels, as emu.control.runtime.sandbox gives them."""
    return {LABEL_CLUSTER: pod.cluster, LABEL_ROLE: ROLE_POD, LABEL_NODE: pod.node, LABEL_POD: pod.pod,
            LABEL_POD_UID: pod.uid_label, LABEL_CONTAINER: container}  # fmt: skip


class _Finished:
    """A StreamHandle of a command that has already ended (the fake runs it at once)."""

    def __init__(self, result: ExecResult) -> None:
        self.result, self.left = result, result.output.encode()

    def read(self) -> bytes:
        chunk, self.left = self.left, b""
        return chunk

    def errors(self) -> str:
        return ""

    def terminate(self) -> None:
        pass

    def close(self) -> None:
        pass

    def exit_code(self) -> int | None:
        return self.result.exit_code


# ---- the node's answers (see the module's docstring) -------------------------------------------


def _script(argv: list[str]) -> str:
    return argv[2] if argv[:2] == ["sh", "-c"] and len(argv) > 2 else ""


def _take_lock(node: FakeContainer, argv: list[str], engine: FakeEngine) -> ExecResult:
    holder = argv[4] if len(argv) > 4 else ""
    with engine.lock:  # mkdir(2) is atomic
        if node.is_directory(LOCK_DIR) or LOCK_DIR in node.files:
            return ExecResult(1, "")
        node.directories.add(LOCK_DIR)
        node.files[f"{LOCK_DIR}/holder"] = holder.encode()
    return ExecResult(0, "")


def _remove(node: FakeContainer, argv: list[str], engine: FakeEngine) -> ExecResult:
    flags = [a for a in argv[1:] if a.startswith("-")]
    recursive = any("r" in f for f in flags)
    with engine.lock:
        for path in (a for a in argv[1:] if not a.startswith("-")):
            node.remove(path, recursive)
    return ExecResult(0, "")


def _run_plan(node: FakeContainer, argv: list[str], engine: FakeEngine) -> ExecResult:
    script = node.text(argv[1]) or ""
    if not script:
        return ExecResult(2, f"sh: cannot open {argv[1]}: No such file\n")
    lines = script.rstrip("\n").splitlines()
    if lines and lines[-1] == f"rm -f {HOLD_FILE}":
        with engine.lock:
            node.remove(HOLD_FILE)
    return ExecResult(0, "")


def _agent_wait(node: FakeContainer, script: str) -> str:
    query = script.partition(f"{AGENT_URL}/wait?")[2].partition('"')[0]
    asked = int(dict(part.partition("=")[::2] for part in query.split("&")).get("generation", 0))
    state = node.state()
    programmed = state is not None and state.generation >= asked
    return json.dumps({"ports_left": [], "programmed": programmed, "unready": [] if programmed else None})


def _publish_or_wait(node: FakeContainer, argv: list[str], engine: FakeEngine) -> ExecResult:
    script = _script(argv)
    if f"mv {STATE_FILE}.new {STATE_FILE}" in script:
        with engine.lock:
            new = node.files.pop(STATE_FILE + ".new", None)
            if new is None:
                return ExecResult(1, f"mv: cannot stat '{STATE_FILE}.new': No such file or directory\n")
            node.files[STATE_FILE] = new
            node.remove(HOLD_FILE)
    if f"{AGENT_URL}/wait?" in script:
        return ExecResult(0, _agent_wait(node, script) + "\n")
    return ExecResult(0, "")


def _api_ready(node: FakeContainer, argv: list[str], engine: FakeEngine) -> ExecResult:
    if f"{cni.PKI_DIR}/ca.crt" in node.files:
        return ExecResult(0, "")
    return ExecResult(1, "last answer: 000\n")


def _api_down(node: FakeContainer) -> ExecResult | None:
    """curl's answer while the node holds no PKI (no API server runs there), else None."""
    if f"{cni.PKI_DIR}/ca.crt" in node.files:
        return None
    return ExecResult(7, "curl: (7) Failed to connect to 127.0.0.1 port 6443\n")


def _api_mirror(node: FakeContainer, argv: list[str], engine: FakeEngine) -> ExecResult:
    from emu.apiserver import errors
    from emu.apiserver.mirror import sync
    from emu.apiserver.storage import Store

    script = _script(argv)
    request = script.partition("--data-binary @")[2].split()[0].strip("'")
    body = node.files.pop(request, None)  # the script removes it
    if (down := _api_down(node)) is not None:
        return down
    with engine.lock:
        if node.store is None:
            node.store = Store(":memory:")
        try:
            counts = sync(node.store, json.loads(body or b"{}")["objects"])
        except errors.ApiError as error:
            return ExecResult(0, json.dumps({"kind": "Status", "message": str(error)}) + "\n400")
    return ExecResult(0, json.dumps(counts) + "\n200")


def _api_services(node: FakeContainer, argv: list[str], engine: FakeEngine) -> ExecResult:
    if (down := _api_down(node)) is not None:
        return down
    with engine.lock:
        items = node.store.list_objects("services") if node.store is not None else []
    return ExecResult(0, json.dumps({"kind": "ServiceList", "apiVersion": "v1", "items": items}) + "\n200")


def _observe(node: FakeContainer, argv: list[str], engine: FakeEngine) -> ExecResult:
    state = node.state()
    name = node.labels.get(LABEL_NODE, "")
    pods = [p for p in state.pods_on(name) if not cni.image_pod(p)] if state else []
    lines = ["bridge", f"netns {' '.join(p.netns for p in pods)}", f"ports {' '.join(p.host_veth for p in pods)}"]
    lines += [f"alive {cni.RUN_DIR}/{p.netns}/{c['name']}.pid" for p in pods for c in p.containers]
    lines.append("agent")
    if "READINESS" in _script(argv):
        ready = {p.key: {c["name"]: True for c in p.containers} for p in pods}
        lines.append("READINESS " + json.dumps({"containers": ready, "restarts": {}}))
    return ExecResult(0, "\n".join(lines) + "\n")


def _cat(node: FakeContainer, argv: list[str], engine: FakeEngine) -> ExecResult:
    text = node.text(argv[-1])
    if text is None:
        return ExecResult(1, f"{argv[0]}: {argv[-1]}: No such file or directory\n")
    if argv[0] == "tail":
        count = int(argv[argv.index("-n") + 1]) if "-n" in argv else 10
        text = "".join(text.splitlines(keepends=True)[-count:])
    return ExecResult(0, text)


NODE_HANDLERS = [
    Handler("lock", lambda argv: f"mkdir {LOCK_DIR} " in _script(argv), _take_lock),
    Handler("rm", lambda argv: argv[:1] == ["rm"], _remove),
    Handler("plan", lambda argv: argv == ["sh", f"{cni.PLAN_DIR}/run.sh"], _run_plan),
    Handler("publish/wait", lambda argv: f"mv {STATE_FILE}.new " in _script(argv)
            or f"{AGENT_URL}/wait?" in _script(argv), _publish_or_wait),  # fmt: skip
    Handler("readyz", lambda argv: "/readyz" in _script(argv), _api_ready),
    Handler("mirror", lambda argv: "-X POST" in _script(argv) and MIRROR_PATH in _script(argv), _api_mirror),
    Handler("services", lambda argv: argv[:1] == ["curl"] and argv[-1].endswith("/api/v1/services"), _api_services),
    Handler("observe", lambda argv: _script(argv).startswith(reconcile.OBSERVE), _observe),
    Handler("cat/tail", lambda argv: argv[:1] in (["cat"], ["tail"]) and len(argv) > 1, _cat),
]
