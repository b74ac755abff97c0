"""Link impairment: delay, jitter, loss, rate and corruption on one interface of a
node, as containerlab's `tools netem` and Mininet's TCLink give them.

    emu netem set TARGET --delay 100 --jitter 10 --loss 5 --rate 1000 --corrupt 1
    emu netem show [TARGET]
    emu netem reset TARGET

A TARGET is a node (its eth0, the link to the cluster network), node/NAME:IFACE
(any interface of a node), or a pod (NAME or NAMESPACE/NAME; pod/NAME when a node
has the same name): the host side of its veth on its node, so the impairment
applies to what the pod receives. Each is a `tc qdisc replace ... root netem`
on that interface, in the node's kernel: one direction, egress of the interface
named, as netem works (a delay set on both ends of a link doubles the RTT).

netem needs the kernel's sch_netem qdisc. User-mode Linux nodes (`runtime:
uml`) have a kernel of their own with it. Docker nodes share the host's kernel:
where that kernel has no sch_netem (as here), every command is refused before
anything changes, naming the module and `runtime: uml`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from emu.errors import EmuError
from emu.node.records import ClusterState

DEFAULT_INTERFACE = "eth0"
INTERFACE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")  # what Linux takes as an interface name (IFNAMSIZ - 1)


@dataclass(frozen=True)
class Impairment:
    """What netem does to each packet leaving the interface; None: not set."""

    delay_ms: float | None = None
    jitter_ms: float | None = None
    loss_pct: float | None = None
    rate_kbit: float | None = None
    corrupt_pct: float | None = None

    def validate(self) -> None:
        """A clear error for values netem cannot take (before anything changes)."""
        given = {name: value for name, value in self.__dict__.items() if value is not None}
        if not given:
            raise EmuError("emu netem set: give at least one of --delay, --jitter, --loss, --rate, --corrupt")
        flags = {"delay_ms": "--delay MS", "jitter_ms": "--jitter MS", "loss_pct": "--loss PCT",
                 "rate_kbit": "--rate KBIT", "corrupt_pct": "--corrupt PCT"}  # fmt: skip
        for name, value in given.items():
            if not math.isfinite(value) or value < 0:
                raise EmuError(f"emu netem set: {flags[name]} is {value:g}; it must be a number of 0 or more")
        for name in ("loss_pct", "corrupt_pct"):
            if name in given and given[name] > 100:
                raise EmuError(f"emu netem set: {flags[name]} is {given[name]:g}%; a percentage is at most 100")
        if self.rate_kbit is not None and self.rate_kbit < 1:
            raise EmuError(f"emu netem set: --rate KBIT is {self.rate_kbit:g}; the least rate is 1 kbit/s")
        if self.jitter_ms and not self.delay_ms:
            raise EmuError("emu netem set: --jitter varies a delay; give --delay MS too (netem's jitter needs one)")

    def tc_arguments(self) -> list[str]:
        """netem's own arguments, e.g. ['delay', '100ms', '10ms', 'loss', '5%']."""
        args: list[str] = []
        if self.delay_ms is not None:
            args += ["delay", f"{self.delay_ms:g}ms"] + ([f"{self.jitter_ms:g}ms"] if self.jitter_ms else [])
        if self.loss_pct is not None:
            args += ["loss", f"{self.loss_pct:g}%"]
        if self.corrupt_pct is not None:
            args += ["corrupt", f"{self.corrupt_pct:g}%"]
        if self.rate_kbit is not None:
            args += ["rate", f"{self.rate_kbit:g}kbit"]
        return args


@dataclass(frozen=True)
class Link:
    """One interface of a node that an impairment is set on."""

    name: str  # node/w1:eth0
    node: str
    container: str
    interface: str
    description: str


def resolve(state: ClusterState, text: str) -> Link:
    """The interface a TARGET names (see the module's docstring)."""
    text = text.strip()
    kind, slash, rest = text.partition("/")
    explicit = kind if slash and kind in ("node", "pod") else ""
    rest = rest if explicit else text
    name, colon, interface = rest.partition(":")
    if not name or (colon and not interface):
        raise EmuError(f"TARGET '{text}': expected a node, node/NAME:IFACE, or a pod (NAME or NAMESPACE/NAME)")
    if colon and not INTERFACE.match(interface):
        raise EmuError(f"TARGET '{text}': '{interface}' is not an interface name")
    node = next((n for n in state.nodes if name in (n.name, n.container)), None) if explicit != "pod" else None
    pod_key = name if "/" in name else f"default/{name}"
    pod = state.pods.get(pod_key) if explicit != "node" and not colon else None
    if node is not None and pod is not None and not explicit:
        raise EmuError(f"TARGET '{text}' names both a node and a pod; say node/{name} or pod/{name}")
    if node is not None:
        chosen = interface or DEFAULT_INTERFACE
        owner = next((p for p in state.pods.values() if p.node == node.name and p.host_veth == chosen), None)
        what = f" (host side of pod {owner.key})" if owner else ""
        description = f"node {node.name}, {chosen}{what}"
        return Link(f"node/{node.name}:{chosen}", node.name, node.container, chosen, description)
    if pod is not None:
        host = state.node(pod.node)
        return Link(f"node/{pod.node}:{pod.host_veth}", pod.node, host.container, pod.host_veth,
                    f"pod {pod.key}: {pod.host_veth} on node {pod.node}, the host side of its eth0")  # fmt: skip
    nodes = ", ".join(n.name for n in state.nodes)
    pods = ", ".join(sorted(state.pods)) or "none"
    if explicit == "node" or colon:
        raise EmuError(f"TARGET '{text}': no node '{name}' in cluster '{state.name}' (nodes: {nodes})")
    raise EmuError(f"TARGET '{text}': no node or pod '{name}' in cluster '{state.name}' (nodes: {nodes}; pods: {pods})")


def host_has_netem(release: str | None = None) -> bool:
    """Whether this machine's kernel has sch_netem loaded, built in, or as a module to load."""
    release = release or os.uname().release
    if os.path.exists("/sys/module/sch_netem"):
        return True
    directory = f"/lib/modules/{release}/kernel/net/sched"
    if os.path.isdir(directory) and any(n.startswith("sch_netem.ko") for n in os.listdir(directory)):
        return True
    try:
        with open(f"/lib/modules/{release}/modules.builtin") as builtin:
            return any("sch_netem.ko" in line for line in builtin)
    except OSError:
        return False


def require_netem(runtime) -> None:
    """Raise unless the nodes' kernel has netem: a uml node's own kernel does; docker
    nodes share this host's, which may not."""
    kind = getattr(runtime, "name", "docker")
    if kind == "uml":
        return
    release = os.uname().release
    if kind == "docker" and host_has_netem(release):
        return
    where = ("docker nodes share this host's kernel" if kind == "docker" else
             f"the nodes of this {kind} cluster run on kernels emu cannot check")  # fmt: skip
    raise EmuError(
        f"link impairment needs the kernel's netem qdisc (sch_netem), and {where} ({release}, no sch_netem); "
        "make the cluster with `runtime: uml` in its topology (or `emu up --runtime uml`): User-mode Linux nodes "
        "have a kernel of their own with netem"
    )


def set_impairment(cluster, target: str, impairment: Impairment) -> Link:
    """Replace whatever qdisc the interface's root has with netem as asked."""
    impairment.validate()
    state = cluster.state()
    link = resolve(state, target)
    require_netem(cluster.runtime)
    argv = ["tc", "qdisc", "replace", "dev", link.interface, "root", "netem", *impairment.tc_arguments()]
    port = getattr(cluster.runtime, "command_port", None)
    if port and link.interface == DEFAULT_INTERFACE:
        argv = ["sh", "-c", exempt_script(link.interface, port, impairment)]
    result = cluster.runtime.exec(link.container, argv)
    if not result.ok:
        raise EmuError(f"setting netem on {link.description} failed: {result.output.strip()}")
    return link


def exempt_script(interface: str, port: int, impairment: Impairment) -> str:
    """netem on `interface` for everything but the replies of emu's command server
    (TCP source port `port`), which a uml node sends over its eth0 too: emu must
    still reach a node whose link loses every packet, as `docker exec` does. A prio
    qdisc with two bands: everything to band 2 (netem), the command server's
    replies to band 1 (a plain fifo) by a u32 filter, added before netem."""
    netem = " ".join(impairment.tc_arguments())
    return (f"tc qdisc del dev {interface} root 2>/dev/null; "
            f"tc qdisc add dev {interface} root handle 1: prio bands 2 priomap {' '.join(['1'] * 16)} && "
            f"tc filter add dev {interface} parent 1: protocol ip prio 1 u32 match ip sport {port} 0xffff "
            f"flowid 1:1 && tc qdisc add dev {interface} parent 1:2 handle 20: netem {netem}")  # fmt: skip


def parse_netem(output: str, interface: str | None = None) -> dict[str, str]:
    """interface -> netem's settings, from `tc qdisc show` (a netem at the root, or
    under the prio qdisc of exempt_script); `interface`: the one `tc qdisc show dev` was asked about."""
    found = {}
    for line in output.splitlines():
        match = re.match(r"qdisc netem \S+ (?:dev (\S+) )?(?:root|parent 1:2) (?:refcnt \d+ )?(.*)$", line.strip())
        if match and (match.group(1) or interface):  # `tc qdisc show dev IFACE` leaves out "dev IFACE"
            found[match.group(1) or interface] = match.group(2).strip()
    return found


def show(cluster, target: str | None = None) -> list[tuple[Link, str]]:
    """Each impaired interface with netem's settings (of `target`, or of every node)."""
    state = cluster.state()
    if target is not None:
        link = resolve(state, target)
        require_netem(cluster.runtime)
        output = cluster.runtime.exec(link.container, ["tc", "qdisc", "show", "dev", link.interface]).output
        settings = parse_netem(output, link.interface).get(link.interface)
        return [(link, settings)] if settings else []
    require_netem(cluster.runtime)
    outputs = cluster.runtime.parallel(lambda n: cluster.runtime.exec(n.container, ["tc", "qdisc", "show"]).output,
                                       list(state.nodes))  # fmt: skip
    found = []
    for node, output in zip(state.nodes, outputs):
        for interface, settings in sorted(parse_netem(output).items()):
            found.append((resolve(state, f"node/{node.name}:{interface}"), settings))
    return found


def reset(cluster, target: str) -> tuple[Link, bool]:
    """Remove netem from the interface (the kernel's default qdisc again);
    (link, False) when there was none."""
    state = cluster.state()
    link = resolve(state, target)
    require_netem(cluster.runtime)
    current = cluster.runtime.exec(link.container, ["tc", "qdisc", "show", "dev", link.interface])
    if not current.ok:
        raise EmuError(f"reading the qdisc of {link.description} failed: {current.output.strip()}")
    if link.interface not in parse_netem(current.output, link.interface):
        return link, False
    result = cluster.runtime.exec(link.container, ["tc", "qdisc", "del", "dev", link.interface, "root"])
    if not result.ok:
        raise EmuError(f"removing netem from {link.description} failed: {result.output.strip()}")
    return link, True


# ---- impairments declared in the topology (nodes[].netem) ----------------------------------


def declared(topology) -> dict[str, Impairment]:
    """{node name: its Impairment} for the topology's nodes with `netem:`."""
    return _by_node(topology.nodes)


def declared_in(topology: dict) -> dict[str, Impairment]:
    """declared() of a state's topology (its JSON form, validated when it was loaded),
    without validating the whole topology again (a big lab's services and pods)."""
    from emu.api.topology.model import Node

    return _by_node([Node.model_validate(node) for node in topology.get("nodes", []) if node.get("netem")])


def _by_node(nodes) -> dict[str, Impairment]:
    return {
        node.name: Impairment(node.netem.delay_ms, node.netem.jitter_ms, node.netem.loss_percent,
                              node.netem.rate_kbit, node.netem.corrupt_percent)  # fmt: skip
        for node in nodes if node.netem is not None
    }


def check_declared(topology, runtime) -> None:
    """Before anything is made: the nodes' kernel must have netem when a node asks for it."""
    wanted = sorted(declared(topology))
    if wanted:
        try:
            require_netem(runtime)
        except EmuError as error:
            raise EmuError(f"topology: nodes {', '.join(wanted)} have netem: {error}") from None


def converge(cluster, before: dict[str, Impairment], after: dict[str, Impairment]) -> list[str]:
    """Each node's eth0 as the topology now says: netem set where it is new or changed,
    removed where the topology no longer has it. What it did, one line a node."""
    done = []
    for node, impairment in sorted(after.items()):
        if before.get(node) != impairment:
            link = set_impairment(cluster, f"node/{node}:{DEFAULT_INTERFACE}", impairment)
            done.append(f"{link.description}: netem {' '.join(impairment.tc_arguments())}")
    for node in sorted(set(before) - set(after)):
        link, removed = reset(cluster, f"node/{node}:{DEFAULT_INTERFACE}")
        if removed:
            done.append(f"{link.description}: netem removed")
    return done
