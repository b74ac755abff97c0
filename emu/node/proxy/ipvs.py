"""kube-proxy's IPVS mode, as pkg/proxy/ipvs writes it: rendered, not yet programmed.

Every service address is bound to the dummy interface kube-ipvs0 and is an
IPVS virtual server (the scheduler rr unless networking says otherwise;
ClientIP affinity is IPVS persistence, `-p TIMEOUT`) with one masqueraded real
server per endpoint (`-m -w 1`); NodePorts are virtual servers on the node's
IP. ipsets name what the iptables rules match (KUBE-CLUSTER-IP, KUBE-LOOP-BACK,
KUBE-NODE-PORT-TCP, KUBE-LOAD-BALANCER, KUBE-IPVS-IPS, ...) and a few KUBE-*
chains mark, masquerade, accept and filter around them.

`emu plan --rules` renders all of it anywhere. Programming it needs the
kernel's ip_vs, which this project's build machine lacks, so `emu up` refuses
the mode before creating anything (`require_ip_vs` names the module) and emu
does not program IPVS yet. Standard library only: it runs in the agent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from emu.node.proxy.base import MASQ_MARK, Bootstrap, KernelMissing, Proxier, Runner, service_ports
from emu.node.records import ClusterState, NodeState

IP_VS_MARKERS = ("/proc/net/ip_vs", "/sys/module/ip_vs")
DUMMY = "kube-ipvs0"
SCHEDULER = "rr"

# (name, type, comment) as kube-proxy's ipsetInfo.
IPSETS = [
    ("KUBE-LOOP-BACK", "hash:ip,port,ip", "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    ("KUBE-CLUSTER-IP", "hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose"),
    ("KUBE-EXTERNAL-IP", "hash:ip,port", "Kubernetes service external ip + port for masquerade and filter purpose"),
    ("KUBE-EXTERNAL-IP-LOCAL", "hash:ip,port", "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    ("KUBE-LOAD-BALANCER", "hash:ip,port", "Kubernetes service lb portal"),
    ("KUBE-LOAD-BALANCER-FW", "hash:ip,port",
     "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    ("KUBE-LOAD-BALANCER-LOCAL", "hash:ip,port",
     "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "hash:ip,port,ip",
     "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net",
     "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"),
    ("KUBE-NODE-PORT-TCP", "bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"),
    ("KUBE-NODE-PORT-LOCAL-TCP", "bitmap:port", "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    ("KUBE-NODE-PORT-UDP", "bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "bitmap:port", "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    ("KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port", "Kubernetes health check node port"),
    ("KUBE-IPVS-IPS", "hash:ip", "Addresses on the ipvs interface"),
]  # fmt: skip
COMMENTS = {name: comment for name, _, comment in IPSETS}

# (set, table, from chain, to, match, protocol) as kube-proxy's ipsetWithIptablesChain.
SET_RULES = [
    ("KUBE-LOOP-BACK", "nat", "KUBE-POSTROUTING", "MASQUERADE", "dst,dst,src", ""),
    ("KUBE-LOAD-BALANCER", "nat", "KUBE-SERVICES", "KUBE-LOAD-BALANCER", "dst,dst", ""),
    ("KUBE-LOAD-BALANCER-LOCAL", "nat", "KUBE-LOAD-BALANCER", "RETURN", "dst,dst", ""),
    ("KUBE-NODE-PORT-LOCAL-TCP", "nat", "KUBE-NODE-PORT", "RETURN", "dst", "tcp"),
    ("KUBE-NODE-PORT-TCP", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "tcp"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "nat", "KUBE-NODE-PORT", "RETURN", "dst", "udp"),
    ("KUBE-NODE-PORT-UDP", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "udp"),
    ("KUBE-LOAD-BALANCER-FW", "filter", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL", "dst,dst", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", "dst,dst,src", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", "dst,dst,src", ""),
]
CHAINS = {
    "nat": ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ"],
    "filter": ["KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL",
               "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER"],
}  # fmt: skip
# (table, built-in chain, KUBE-* chain, comment) as kube-proxy's iptablesJumpChain.
JUMPS = [
    ("nat", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "PREROUTING", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
    ("filter", "FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules"),
    ("filter", "INPUT", "KUBE-NODE-PORT", "kubernetes health check rules"),
    ("filter", "INPUT", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    ("filter", "FORWARD", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    ("filter", "INPUT", "KUBE-IPVS-FILTER", "kubernetes ipvs access filter"),
    ("filter", "OUTPUT", "KUBE-IPVS-OUT-FILTER", "kubernetes ipvs access filter"),
]


def require_ip_vs() -> None:
    """Raise KernelMissing unless this machine's kernel has IPVS loaded."""
    if any(os.path.exists(path) for path in IP_VS_MARKERS):
        return
    release = os.uname().release
    modules = f"/lib/modules/{release}/kernel/net/netfilter/ipvs"
    loadable = os.path.isdir(modules) and any(name.startswith("ip_vs.ko") for name in os.listdir(modules))
    fix = (
        "load it with `modprobe ip_vs` (as root on the Docker host) and try again"
        if loadable
        else "this kernel was built without it; use proxyMode iptables or nftables, or a host whose kernel has IPVS"
    )
    raise KernelMissing(
        f"proxyMode ipvs needs the kernel module ip_vs, which kernel {release} does not have loaded "
        f"(no {IP_VS_MARKERS[0]}); {fix}"
    )


def refuse_up() -> None:
    """`emu up` with proxyMode ipvs: the missing module named where the kernel
    lacks it, and where it has it, that emu only renders the mode so far."""
    require_ip_vs()
    raise KernelMissing(
        "proxyMode ipvs: emu renders kube-proxy's IPVS rules (`emu plan FILE --rules`) but does not program "
        "IPVS in nodes yet; use proxyMode iptables or nftables to run the cluster"
    )


@dataclass
class VirtualServer:
    protocol: str  # tcp | udp
    address: str  # ip:port
    persistence: int | None
    real_servers: list[str] = field(default_factory=list)  # ip:port


@dataclass
class IpvsRules:
    addresses: list[str]  # bound to kube-ipvs0
    servers: list[VirtualServer]
    sets: dict[str, list[str]]  # ipset -> entries
    iptables: dict[str, dict[str, list[str]]]  # table -> chain -> rules


def render(state: ClusterState, node: str, endpoints: dict, cache: dict | None = None) -> IpvsRules:
    pod_subnet = state.net.pod_subnet
    node_ip = next((n.node_ip for n in state.nodes if n.name == node), None)
    sets: dict[str, list[str]] = {name: [] for name, _, _ in IPSETS}
    addresses: list[str] = []
    servers: list[VirtualServer] = []
    for service, port, port_endpoints, _ in service_ports(state, endpoints):
        proto = port.protocol.lower()
        local = [e for e in port_endpoints if e.node == node]
        for e in local:  # a pod reaching itself through its service is masqueraded
            sets["KUBE-LOOP-BACK"].append(f"{e.ip},{proto}:{e.port},{e.ip}")
        # Real servers: every endpoint, or with a Local policy this node's (all of them when
        # it has none, so that its pods still reach the service, as kube-proxy does).
        every = [e.address for e in port_endpoints]
        near = [e.address for e in local] or every

        def serve(address: str, only_local: bool, proto=proto, every=every, near=near, timeout=service.affinity_timeout):
            servers.append(VirtualServer(proto, address, timeout, near if only_local else every))

        sets["KUBE-CLUSTER-IP"].append(f"{service.cluster_ip},{proto}:{port.port}")
        addresses.append(service.cluster_ip)
        serve(f"{service.cluster_ip}:{port.port}", service.internal_traffic_policy == "Local")
        external_local = service.external_traffic_policy == "Local"
        if service.type == "LoadBalancer" and service.load_balancer_ip:
            entry = f"{service.load_balancer_ip},{proto}:{port.port}"
            sets["KUBE-LOAD-BALANCER"].append(entry)
            if external_local:
                sets["KUBE-LOAD-BALANCER-LOCAL"].append(entry)
            addresses.append(service.load_balancer_ip)
            serve(f"{service.load_balancer_ip}:{port.port}", external_local)
        if port.node_port and service.type in ("NodePort", "LoadBalancer"):
            sets[f"KUBE-NODE-PORT-{proto.upper()}"].append(str(port.node_port))
            if external_local:
                sets[f"KUBE-NODE-PORT-LOCAL-{proto.upper()}"].append(str(port.node_port))
            if node_ip:  # kube-proxy's default --nodeport-addresses (primary): the node's own IP
                serve(f"{node_ip}:{port.node_port}", external_local)
    addresses = sorted(set(addresses), key=_ip_order)
    sets["KUBE-IPVS-IPS"] = list(addresses)
    sets = {name: sorted(set(entries)) for name, entries in sets.items()}
    return IpvsRules(addresses, servers, sets, iptables_rules(sets, pod_subnet))


def _ip_order(ip: str) -> tuple:
    return tuple(int(part) for part in ip.split("."))


def _comment(text: str) -> str:
    return f'-m comment --comment "{text}"'


def iptables_rules(sets: dict[str, list[str]], pod_subnet: str) -> dict[str, dict[str, list[str]]]:
    """kube-proxy's writeIptablesRules for the IPVS proxier."""
    tables: dict[str, dict[str, list[str]]] = {t: {c: [] for c in chains} for t, chains in CHAINS.items()}
    nat, filt = tables["nat"], tables["filter"]
    nat["KUBE-SERVICES"].append("-s 127.0.0.0/8 -j RETURN")
    for name, table, source, target, match, proto in SET_RULES:
        if sets.get(name):
            protocol = f"-p {proto} " if proto else ""
            tables[table][source].append(
                f"{protocol}{_comment(COMMENTS[name])} -m set --match-set {name} {match} -j {target}"
            )
    if sets["KUBE-CLUSTER-IP"]:
        nat["KUBE-SERVICES"].append(
            f"{_comment(COMMENTS['KUBE-CLUSTER-IP'])} -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s {pod_subnet} "
            "-j KUBE-MARK-MASQ"
        )
    nat["KUBE-SERVICES"].append("-m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
    nat["KUBE-LOAD-BALANCER"].append("-j KUBE-MARK-MASQ")
    filt["KUBE-SOURCE-RANGES-FIREWALL"].append("-j DROP")
    for name in ("KUBE-CLUSTER-IP", "KUBE-LOAD-BALANCER"):  # accepted, whatever else the node's rules say
        if sets[name]:
            nat["KUBE-SERVICES"].append(f"-m set --match-set {name} dst,dst -j ACCEPT")
    filt["KUBE-FORWARD"] += [
        f'{_comment("kubernetes forwarding rules")} -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT',
        f'{_comment("kubernetes forwarding conntrack rule")} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
    ]
    filt["KUBE-NODE-PORT"].append(
        f"{_comment(COMMENTS['KUBE-HEALTH-CHECK-NODE-PORT'])} -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT"
    )
    # Nothing on the node answers on a service address but the services' own ports.
    for name, match in [("KUBE-LOAD-BALANCER", "dst,dst"), ("KUBE-CLUSTER-IP", "dst,dst"),
                        ("KUBE-EXTERNAL-IP", "dst,dst"), ("KUBE-EXTERNAL-IP-LOCAL", "dst,dst"),
                        ("KUBE-HEALTH-CHECK-NODE-PORT", "dst")]:  # fmt: skip
        filt["KUBE-IPVS-FILTER"].append(f"-m set --match-set {name} {match} -j RETURN")
    filt["KUBE-IPVS-FILTER"].append("-m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT")
    nat["KUBE-POSTROUTING"] += [
        f"-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-j MARK --xor-mark {MASQ_MARK}",
        f'{_comment("kubernetes service traffic requiring SNAT")} -j MASQUERADE --random-fully',
    ]
    nat["KUBE-MARK-MASQ"].append(f"-j MARK --or-mark {MASQ_MARK}")
    return tables


def ipvsadm_text(servers: list[VirtualServer]) -> str:
    """ipvsadm-restore input (what `ipvsadm -S -n` prints)."""
    out = []
    for vs in servers:
        flag = "-t" if vs.protocol == "tcp" else "-u"
        persistent = f" -p {vs.persistence}" if vs.persistence else ""
        out.append(f"-A {flag} {vs.address} -s {SCHEDULER}{persistent}")
        out += [f"-a {flag} {vs.address} -r {real} -m -w 1" for real in vs.real_servers]
    return "\n".join(out) + "\n"


def ipset_text(sets: dict[str, list[str]]) -> str:
    """ipset restore input: every set of kube-proxy's, created if missing, and its entries."""
    out = []
    for name, kind, _ in IPSETS:
        shape = "range 0-65535" if kind == "bitmap:port" else "family inet hashsize 1024 maxelem 65536"
        out.append(f"create {name} {kind} {shape} -exist")
        out += [f"add {name} {entry} -exist" for entry in sets.get(name, [])]
    return "\n".join(out) + "\n"


def restore_text(tables: dict[str, dict[str, list[str]]]) -> str:
    out = []
    for table in ("filter", "nat"):
        out.append(f"*{table}")
        out += [f":{chain} - [0:0]" for chain in tables[table]]
        for chain, rules in tables[table].items():
            out += [f"-A {chain} {rule}" for rule in rules]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def hook_rules() -> str:
    """The jumps from the built-in chains, installed once when the node is made."""
    out = []
    for table in ("nat", "filter"):
        out.append(f"*{table}")
        out += [f":{chain} - [0:0]" for chain in CHAINS[table]]
        out += [f"-I {builtin} 1 {_comment(note)} -j {chain}" for t, builtin, chain, note in reversed(JUMPS)
                if t == table]  # fmt: skip
        out.append("COMMIT")
    return "\n".join(out) + "\n"


class IpvsProxier(Proxier):
    """Renders kube-proxy's IPVS mode; does not program it (see the module's doc)."""

    mode = "ipvs"

    def bootstrap(self, state: ClusterState, node: NodeState, plan_dir: str) -> Bootstrap:
        path = f"{plan_dir}/kube-proxy-hooks.rules"
        return Bootstrap(
            {path: hook_rules()},
            [f"ip link add {DUMMY} type dummy", f"iptables-restore --noflush {path}"],
        )

    def render(self, state, node, endpoints, cache=None) -> IpvsRules:
        return render(state, node, endpoints)

    def text(self, rules: IpvsRules, previous: IpvsRules | None = None) -> str:
        return "\n".join([
            f"# ip -batch: the service addresses on {DUMMY}",
            *(f"addr replace {address}/32 dev {DUMMY}" for address in rules.addresses),
            "# ipset restore",
            ipset_text(rules.sets).rstrip(),
            "# ipvsadm-restore",
            ipvsadm_text(rules.servers).rstrip(),
            "# iptables-restore --noflush",
            restore_text(rules.iptables),
        ])  # fmt: skip

    def apply(self, run: Runner, rules, previous=None) -> int:
        refuse_up()
        return 0

    def adopt(self, run: Runner) -> None:
        return None

    def lost(self, run: Runner, rules) -> list[str]:
        return []


PROXIER = IpvsProxier()
