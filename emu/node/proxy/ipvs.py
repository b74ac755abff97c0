"""kube-proxy's IPVS mode, as pkg/proxy/ipvs writes it: rendered and programmed.

Every service address is bound to the dummy interface kube-ipvs0 and is an
IPVS virtual server (the scheduler rr unless networking says otherwise;
ClientIP affinity is IPVS persistence, `-p TIMEOUT`) with one masqueraded real
server per endpoint (`-m -w 1`); NodePorts are virtual servers on the node's
IP. ipsets name what the iptables rules match (KUBE-CLUSTER-IP, KUBE-LOOP-BACK,
KUBE-NODE-PORT-TCP, KUBE-LOAD-BALANCER, KUBE-IPVS-IPS, ...) and a few KUBE-*
chains mark, masquerade, accept and filter around them.

`apply` writes only the difference from what the kernel holds (read from it by
`adopt` on the first sync, then what was written last): addresses on
kube-ipvs0 with `ip -batch`, set members with `ipset restore`, virtual and real
servers with `ipvsadm -R` (-A/-E/-D, -a/-e/-d), the changed KUBE-* chains with
`iptables-restore --noflush`. `text` is exactly that input, so `emu plan
--rules` shows what is programmed. It needs a kernel with ip_vs (a User-mode
Linux node has one); on docker nodes of a kernel without it `emu up` refuses
the mode before creating anything (`refuse_up` names the module). Standard
library only: it runs in the agent.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from emu.node.proxy import iptables
from emu.node.proxy.base import (
    MASQ_MARK,
    Bootstrap,
    KernelMissing,
    Proxier,
    Runner,
    masquerade_mark,
    node_addresses,
    node_port_addresses,
    service_ports,
)
from emu.node.records import ClusterState, NodeState
from emu.node.services import Categories, categorize_endpoints

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
    """`emu up` with proxyMode ipvs on docker nodes: the missing module named
    where the kernel lacks it, and where it has it, that docker nodes do not run
    the mode yet (IPVS is programmed on User-mode Linux nodes, emu.control.runtime.uml)."""
    require_ip_vs()
    raise KernelMissing(
        "proxyMode ipvs: emu programs IPVS on User-mode Linux nodes (emu/control/runtime/uml.py), not yet on docker "
        "nodes; `emu plan FILE --rules` shows the rules; use proxyMode iptables or nftables to run the cluster"
    )


@dataclass
class VirtualServer:
    protocol: str  # tcp | udp
    address: str  # ip:port
    persistence: int | None
    real_servers: list[str] = field(default_factory=list)  # ip:port
    scheduler: str = SCHEDULER
    weights: dict[str, int] = field(default_factory=dict)  # real server -> weight, where not 1 (read from a kernel)

    @property
    def key(self) -> tuple[str, str]:
        return self.protocol, self.address


@dataclass
class IpvsRules:
    addresses: list[str]  # bound to kube-ipvs0
    servers: list[VirtualServer]
    sets: dict[str, list[str]]  # ipset -> entries; a set not named here does not exist
    iptables: dict[str, dict[str, list[str]]]  # table -> chain -> rules
    dummy: bool = True  # whether kube-ipvs0 exists (only a kernel read can say it does not)


def empty() -> IpvsRules:
    """What a node holds before the first sync: kube-ipvs0 (made by the bootstrap) and nothing else."""
    return IpvsRules([], [], {}, {"filter": {}, "nat": {}})


def render(state: ClusterState, node: str, endpoints: dict, cache: dict | None = None) -> IpvsRules:
    """The node's IPVS rules. With a `cache` the caller keeps between syncs, an
    unchanged service port's servers and set members are taken from it, not made
    again (the cache is left holding only the entries this render used)."""
    net = state.net
    scheduler = SCHEDULER  # kube-proxy's default; the topology has no --ipvs-scheduler yet
    node_ip = next((n.node_ip for n in state.nodes if n.name == node), None)
    node_ips = tuple(ipvs_node_ips(state, node))
    sets: dict[str, list[str]] = {name: [] for name, _, _ in IPSETS}
    addresses: list[str] = []
    servers: list[VirtualServer] = []
    used = {}
    for service, port, port_endpoints, identity in service_ports(state, endpoints, node):
        key = (identity, node, node_ip, node_ips, scheduler)
        made = cache.get(key) if cache is not None else None
        if made is None:
            categories = categorize_endpoints(state, service, port, node, port_endpoints)
            made = _render_port(service, port, port_endpoints, categories, node, node_ip, scheduler, node_ips)
        used[key] = made
        port_servers, entries, port_addresses = made
        servers += port_servers
        addresses += port_addresses
        for name, entry in entries:
            sets[name].append(entry)
    if cache is not None:
        cache.clear()
        cache.update(used)
    addresses = sorted(set(addresses), key=_ip_order)
    sets["KUBE-IPVS-IPS"] = list(addresses)
    sets = {name: sorted(set(entries)) for name, entries in sets.items()}
    return IpvsRules(addresses, servers, sets,
                     iptables_rules(sets, net.cluster_cidr, net.masquerade_all, masquerade_mark(net.masquerade_bit)))


def ipvs_node_ips(state: ClusterState, node: str) -> list[str]:
    """The addresses a NodePort gets a virtual server on, as kube-proxy's IPVS proxier picks
    them: with nodePortAddresses, the node's addresses in them (primary: its IP); without,
    every local address but kube-ipvs0's (GetAllLocalAddressesExcept); never loopback,
    which IPVS does not serve."""
    held = next((n for n in state.nodes if n.name == node), None)
    if held is None:
        return []
    wanted = node_port_addresses(state, node, "ipvs")
    addresses = node_addresses(held) if wanted is None else wanted
    return [ip for ip in addresses if not ip.startswith("127.")]


def _render_port(service, port, port_endpoints, categories: Categories, node: str, node_ip: str | None,
                 scheduler: str, node_ips: tuple[str, ...] = ()):  # fmt: skip
    """One service port's virtual servers, (set, member) pairs and service addresses."""
    proto = port.protocol.lower()
    servers: list[VirtualServer] = []
    entries: list[tuple[str, str]] = []
    addresses = [service.cluster_ip]
    for e in port_endpoints:  # a pod reaching itself through its service is masqueraded
        if e.node == node:  # (every endpoint here, serving or not, as kube-proxy's endpointsMap has them)
            entries.append(("KUBE-LOOP-BACK", f"{e.ip},{proto}:{e.port},{e.ip}"))
    # Real servers (kube-proxy's syncEndpoint): the Cluster-policy endpoints, or with a
    # Local policy this node's; where it has none, the Cluster-policy ones (so that its
    # pods still reach the service; none for an internalTrafficPolicy Local service that
    # has no external destination, which never uses the Cluster policy).
    every = [e.address for e in categories.cluster]
    near = [e.address for e in categories.local] or every

    def serve(address: str, only_local: bool) -> None:
        servers.append(VirtualServer(proto, address, service.affinity_timeout, near if only_local else every, scheduler))

    entries.append(("KUBE-CLUSTER-IP", f"{service.cluster_ip},{proto}:{port.port}"))
    serve(f"{service.cluster_ip}:{port.port}", service.internal_traffic_policy == "Local")
    external_local = service.external_traffic_policy == "Local"
    for ip in service.external_ips:
        kind = "KUBE-EXTERNAL-IP-LOCAL" if external_local else "KUBE-EXTERNAL-IP"
        entries.append((kind, f"{ip},{proto}:{port.port}"))
        if ip != node_ip:  # an address the node has already is not bound to kube-ipvs0 again
            addresses.append(ip)
        serve(f"{ip}:{port.port}", external_local)
    ranges = service.load_balancer_source_ranges
    from_node = bool(node_ip) and any(
        ipaddress.IPv4Address(node_ip) in ipaddress.IPv4Network(cidr, strict=False) for cidr in ranges
    )
    for ip in service.load_balancer_vips:
        entry = f"{ip},{proto}:{port.port}"
        entries.append(("KUBE-LOAD-BALANCER", entry))
        if external_local:
            entries.append(("KUBE-LOAD-BALANCER-LOCAL", entry))
        if ranges:  # loadBalancerSourceRanges: KUBE-SOURCE-RANGES-FIREWALL drops the rest
            entries.append(("KUBE-LOAD-BALANCER-FW", entry))
            entries += [("KUBE-LOAD-BALANCER-SOURCE-CIDR", f"{entry},{cidr}") for cidr in ranges]
            if from_node:
                entries.append(("KUBE-LOAD-BALANCER-SOURCE-IP", f"{entry},{ip}"))
        addresses.append(ip)
        serve(f"{ip}:{port.port}", external_local)
    if port.node_port and service.type in ("NodePort", "LoadBalancer"):
        entries.append((f"KUBE-NODE-PORT-{proto.upper()}", str(port.node_port)))
        if external_local:
            entries.append((f"KUBE-NODE-PORT-LOCAL-{proto.upper()}", str(port.node_port)))
        for ip in node_ips:  # one virtual server on each address nodePortAddresses leaves the node
            serve(f"{ip}:{port.node_port}", external_local)
    if service.health_check_node_port:  # KUBE-NODE-PORT (filter) accepts these whether or not an endpoint is here
        entries.append(("KUBE-HEALTH-CHECK-NODE-PORT", str(service.health_check_node_port)))
    return servers, entries, addresses


def _ip_order(ip: str) -> tuple:
    return tuple(int(part) for part in ip.split("."))


def _comment(text: str) -> str:
    return f'-m comment --comment "{text}"'


def iptables_rules(
    sets: dict[str, list[str]], pod_subnet: str, masquerade_all: bool = False, mark: str = MASQ_MARK
) -> dict[str, dict[str, list[str]]]:
    """kube-proxy's writeIptablesRules for the IPVS proxier. `pod_subnet` is the
    local-traffic detector (networking.clusterCIDR; "": none)."""
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
        # masqueradeAll: every packet to a cluster IP; the detector: those from outside
        # clusterCIDR; neither: the node's own connections from a service address (kube-ipvs0
        # holds them all, so one may be picked as the source).
        match = f"{_comment(COMMENTS['KUBE-CLUSTER-IP'])} -m set --match-set KUBE-CLUSTER-IP"
        which = " dst,dst" if masquerade_all else f" dst,dst ! -s {pod_subnet}" if pod_subnet else " src,dst"
        nat["KUBE-SERVICES"].append(f"{match}{which} -j KUBE-MARK-MASQ")
    # External IPs: masqueraded (unless their policy is Local), and accepted from off the
    # machine or where the address is the node's own.
    for name in ("KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL"):
        if sets[name]:
            match = f"{_comment(COMMENTS[name])} -m set --match-set {name} dst,dst"
            if name == "KUBE-EXTERNAL-IP":
                nat["KUBE-SERVICES"].append(f"{match} -j KUBE-MARK-MASQ")
            nat["KUBE-SERVICES"] += [
                f"{match} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT",
                f"{match} -m addrtype --dst-type LOCAL -j ACCEPT",
            ]
    nat["KUBE-SERVICES"].append("-m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
    nat["KUBE-LOAD-BALANCER"].append("-j KUBE-MARK-MASQ")
    filt["KUBE-SOURCE-RANGES-FIREWALL"].append("-j DROP")
    for name in ("KUBE-CLUSTER-IP", "KUBE-LOAD-BALANCER"):  # accepted, whatever else the node's rules say
        if sets[name]:
            nat["KUBE-SERVICES"].append(f"-m set --match-set {name} dst,dst -j ACCEPT")
    filt["KUBE-FORWARD"] += [
        f'{_comment("kubernetes forwarding rules")} -m mark --mark {mark}/{mark} -j ACCEPT',
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
        f"-m mark ! --mark {mark}/{mark} -j RETURN",
        f"-j MARK --xor-mark {mark}",
        f'{_comment("kubernetes service traffic requiring SNAT")} -j MASQUERADE --random-fully',
    ]
    nat["KUBE-MARK-MASQ"].append(f"-j MARK --or-mark {mark}")
    return tables


# --- the differences, as each tool's input -------------------------------


def address_text(desired: list[str], current: list[str], dummy: bool = True) -> str:
    """`ip -batch` input: kube-ipvs0 (when missing), addresses to bind, addresses to unbind."""
    have, want = set(current), set(desired)
    out = [] if dummy else [f"link add {DUMMY} type dummy"]
    out += [f"addr replace {address}/32 dev {DUMMY}" for address in desired if address not in have]
    out += [f"addr del {address}/32 dev {DUMMY}" for address in sorted(have - want, key=_ip_order)]
    return "".join(line + "\n" for line in out)


def ipset_diff_text(desired: dict[str, list[str]], current: dict[str, list[str]]) -> str:
    """`ipset restore` input: the sets that do not exist yet, members to add, members to delete."""
    out = []
    for name, kind, _ in IPSETS:
        want = desired.get(name, [])
        if name not in current:
            shape = "range 0-65535" if kind == "bitmap:port" else "family inet hashsize 1024 maxelem 65536"
            out.append(f"create {name} {kind} {shape} -exist")
        have = set(current.get(name, ()))
        out += [f"add {name} {entry} -exist" for entry in want if entry not in have]
        wanted = set(want)
        out += [f"del {name} {entry} -exist" for entry in sorted(have - wanted)]
    return "".join(line + "\n" for line in out)


def _flag(protocol: str) -> str:
    return "-t" if protocol == "tcp" else "-u"


def _service_options(vs: VirtualServer) -> str:
    persistent = f" -p {vs.persistence}" if vs.persistence else ""
    return f"-s {vs.scheduler}{persistent}"


def ipvsadm_diff_text(desired: list[VirtualServer], current: list[VirtualServer]) -> str:
    """`ipvsadm -R` input turning the `current` virtual servers into the `desired` ones,
    as kube-proxy's sync compares the kernel's servers with its own: new servers
    added (-A, -a), changed scheduler or persistence edited in place (-E, which
    keeps the server's connections), real servers added, put back to weight 1
    (-e) or deleted (-d) one by one, and servers no longer wanted deleted (-D)."""
    have = {vs.key: vs for vs in current}
    out = []
    for vs in desired:
        flag, old = _flag(vs.protocol), have.get(vs.key)
        if old is None:
            out.append(f"-A {flag} {vs.address} {_service_options(vs)}")
        elif (old.scheduler, old.persistence or None) != (vs.scheduler, vs.persistence or None):
            out.append(f"-E {flag} {vs.address} {_service_options(vs)}")
        old_reals = set(old.real_servers) if old else set()
        for real in vs.real_servers:
            if real not in old_reals:
                out.append(f"-a {flag} {vs.address} -r {real} -m -w 1")
            elif old.weights.get(real, 1) != 1:
                out.append(f"-e {flag} {vs.address} -r {real} -m -w 1")
        wanted = set(vs.real_servers)
        out += [f"-d {flag} {vs.address} -r {real}" for real in (old.real_servers if old else []) if real not in wanted]
    wanted_keys = {vs.key for vs in desired}
    out += [f"-D {_flag(vs.protocol)} {vs.address}" for vs in current if vs.key not in wanted_keys]
    return "".join(line + "\n" for line in out)


def ipvsadm_text(servers: list[VirtualServer]) -> str:
    """ipvsadm -R input for an empty kernel (what `ipvsadm -S -n` prints for these servers)."""
    return ipvsadm_diff_text(servers, [])


def ipset_text(sets: dict[str, list[str]]) -> str:
    """ipset restore input for a node without kube-proxy's sets: every set, created, and its entries."""
    return ipset_diff_text(sets, {})


def restore_text(tables: dict[str, dict[str, list[str]]], previous=None) -> str:
    """iptables-restore --noflush input: every KUBE-* chain, or with `previous`
    only those that changed (and -X for those gone)."""
    text = iptables.restore_text(tables, previous)
    return text if text.strip() else ""


def changes(rules: IpvsRules, previous: IpvsRules | None) -> dict[str, str]:
    """What each tool is given to go from `previous` (None: a new node) to `rules`,
    by tool; an empty text means nothing to write with that tool."""
    before = previous or empty()
    return {
        "ip": address_text(rules.addresses, before.addresses, before.dummy),
        "ipset": ipset_diff_text(rules.sets, before.sets),
        "ipvsadm": ipvsadm_diff_text(rules.servers, before.servers),
        "iptables": restore_text(rules.iptables, None if previous is None else before.iptables),
    }


TOOLS = {  # tool -> (argv, heading in `text`)
    "ip": (["ip", "-force", "-batch", "-"], f"# ip -batch: the service addresses on {DUMMY}"),
    "ipset": (["ipset", "restore"], "# ipset restore"),
    # ipvsadm-restore would clear every server first (`ipvsadm -C`): -R applies the lines as they are.
    "ipvsadm": (["ipvsadm", "-R"], "# ipvsadm -R"),
    "iptables": (["iptables-restore", "--noflush", "--wait"], "# iptables-restore --noflush"),
}


# --- reading the kernel ---------------------------------------------------


# ipvsadm's options that take a value; the others (-m, -g, -i) are flags.
_VALUED = {"-s", "-p", "-M", "-r", "-w", "-x", "-y", "-b", "--pe"}


def _options(words: list[str]) -> dict[str, str]:
    options, index = {}, 0
    while index < len(words):
        if words[index] in _VALUED and index + 1 < len(words):
            options[words[index]] = words[index + 1]
            index += 2
        else:
            options[words[index]] = ""
            index += 1
    return options


def parse_ipvsadm_save(text: str) -> list[VirtualServer]:
    """The virtual servers in `ipvsadm -S -n` output (in the order listed)."""
    servers: dict[tuple[str, str], VirtualServer] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] not in ("-A", "-a") or words[1] not in ("-t", "-u"):
            continue  # firewall-mark (-f) servers are not kube-proxy's
        protocol = "tcp" if words[1] == "-t" else "udp"
        options = _options(words[3:])
        if words[0] == "-A":
            persistence = int(options["-p"]) if "-p" in options else None
            servers[(protocol, words[2])] = VirtualServer(
                protocol, words[2], persistence, [], options.get("-s", SCHEDULER)
            )
        elif (protocol, words[2]) in servers and "-r" in options:
            vs = servers[(protocol, words[2])]
            vs.real_servers.append(options["-r"])
            weight = int(options.get("-w", 1))
            if weight != 1:
                vs.weights[options["-r"]] = weight
    return list(servers.values())


def parse_ipset_save(text: str) -> dict[str, list[str]]:
    """kube-proxy's sets (KUBE-*) and their members in `ipset save` output."""
    sets: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[1].startswith("KUBE-"):
            if words[0] == "create":
                sets.setdefault(words[1], [])
            elif words[0] == "add" and len(words) >= 3:
                sets.setdefault(words[1], []).append(words[2])
    return {name: sorted(entries) for name, entries in sets.items()}


def parse_addresses(text: str) -> list[str]:
    """IPv4 addresses in `ip -o -4 addr show dev kube-ipvs0` output."""
    found = []
    for line in text.splitlines():
        words = line.split()
        if "inet" in words:
            found.append(words[words.index("inet") + 1].split("/")[0])
    return sorted(found, key=_ip_order)


def _read(run: Runner, argv: list[str]) -> str:
    result = run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()[:2000]}")
    return result.stdout


def kernel_state(run: Runner) -> IpvsRules:
    """What the kernel holds of the IPVS mode: kube-ipvs0 and its addresses, the
    virtual servers, kube-proxy's ipsets, and the KUBE-* chains (their rules
    unknown: iptables-save spells rules its own way, so each is rewritten once)."""
    link = run(["ip", "-o", "-4", "addr", "show", "dev", DUMMY], capture_output=True, text=True)
    dummy = link.returncode == 0
    addresses = parse_addresses(link.stdout) if dummy else []
    servers = parse_ipvsadm_save(_read(run, ["ipvsadm", "-S", "-n"]))
    sets = parse_ipset_save(_read(run, ["ipset", "save"]))
    tables: dict[str, dict[str, list[str]]] = {}
    for table in ("filter", "nat"):
        save = _read(run, ["iptables-save", "-t", table])
        tables[table] = {line[1:].split()[0]: ["(unknown)"] for line in save.splitlines() if line.startswith(":KUBE-")}
    return IpvsRules(addresses, servers, sets, tables, dummy)


def _run_tool(run: Runner, tool: str, text: str) -> None:
    argv = TOOLS[tool][0]
    result = run(argv, input=text, capture_output=True, text=True)
    # ipvsadm -R goes on past a failed line and exits 0: what it prints is the failure.
    failed = result.returncode != 0 or (tool == "ipvsadm" and result.stderr.strip())
    if failed:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()[:2000]}\ninput:\n{text[:2000]}")


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


# Modules the mode loads (ip_vs with kube-proxy's usual schedulers, the set types
# it uses) and kube-proxy's sysctls for it: conntrack for IPVS connections (the
# masquerade rules need it), forwarding, dropping connections to a deleted real
# server, and bridged pod traffic through netfilter so a pod reaching a service
# whose endpoint is on its own bridge gets its reply un-NATed.
MODULES = ["ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack", "br_netfilter", "dummy",
           "ip_set_hash_ipport", "ip_set_hash_ipportip", "ip_set_hash_ipportnet", "ip_set_hash_ip",
           "ip_set_bitmap_port"]  # fmt: skip
SYSCTLS = {
    "net.ipv4.vs.conntrack": "1",
    "net.ipv4.vs.expire_nodest_conn": "1",
    "net.ipv4.vs.expire_quiescent_template": "1",
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
}


class IpvsProxier(Proxier):
    """kube-proxy's IPVS mode: kube-ipvs0, ipvsadm, ipset and a few iptables chains."""

    mode = "ipvs"

    def bootstrap(self, state: ClusterState, node: NodeState, plan_dir: str) -> Bootstrap:
        path = f"{plan_dir}/kube-proxy-hooks.rules"
        return Bootstrap(
            {path: hook_rules()},
            [
                f"modprobe -a {' '.join(MODULES)}",
                "sysctl -q -w " + " ".join(f"{key}={value}" for key, value in SYSCTLS.items()),
                f"ip link add {DUMMY} type dummy",
                f"ip link set {DUMMY} up",  # kube-proxy leaves it down; up is harmless and shows in `ip link`
                f"iptables-restore --noflush {path}",
            ],
        )

    def render(self, state, node, endpoints, cache=None) -> IpvsRules:
        return render(state, node, endpoints, cache)

    def text(self, rules: IpvsRules, previous: IpvsRules | None = None) -> str:
        """Each tool's input under its heading (tools with nothing to do are left out)."""
        out = []
        for tool, body in changes(rules, previous).items():
            if body.strip():
                out += [TOOLS[tool][1], body.rstrip("\n")]
        return "\n".join(out) + "\n"

    def apply(self, run: Runner, rules: IpvsRules, previous: IpvsRules | None = None) -> int:
        """Write the difference from `previous` (None: read the kernel first)."""
        if previous is None:
            previous = self.adopt(run)
        written = 0
        for tool, body in changes(rules, previous).items():
            if body.strip():
                _run_tool(run, tool, body)
                written += sum(1 for line in body.splitlines() if line and not line.startswith(("*", "COMMIT")))
        return written

    def adopt(self, run: Runner) -> IpvsRules:
        require = run(["test", "-e", IP_VS_MARKERS[0]], capture_output=True, text=True)
        if require.returncode != 0:
            raise RuntimeError(f"this node's kernel has no ip_vs ({IP_VS_MARKERS[0]} is missing); `modprobe ip_vs` first")
        return kernel_state(run)

    def lost(self, run: Runner, rules: IpvsRules) -> list[str]:
        """What the kernel lacks of `rules`: virtual servers, real servers,
        addresses on kube-ipvs0, set members, KUBE-* chains and their rule counts."""
        try:
            kernel = kernel_state(run)
        except RuntimeError as error:
            return [str(error)]
        found = []
        if not kernel.dummy:
            found.append(f"{DUMMY} missing")
        found += [f"{address} not on {DUMMY}" for address in rules.addresses if address not in set(kernel.addresses)]
        have = {vs.key: vs for vs in kernel.servers}
        for vs in rules.servers:
            old = have.get(vs.key)
            if old is None:
                found.append(f"virtual server {vs.protocol.upper()} {vs.address} missing")
                continue
            found += [f"real server {real} of {vs.protocol.upper()} {vs.address} missing"
                      for real in vs.real_servers if real not in old.real_servers]  # fmt: skip
        for name, entries in rules.sets.items():
            members = kernel.sets.get(name)
            if members is None:
                found.append(f"ipset {name} missing")
            elif set(entries) - set(members):
                found.append(f"ipset {name} lacks {len(set(entries) - set(members))} members")
        save = run(["iptables-save"], capture_output=True, text=True)
        counts, _ = iptables.kernel_view(save.stdout)
        for table, chains in rules.iptables.items():
            for chain, chain_rules in chains.items():
                count = counts.get((table, chain))
                if count is None:
                    found.append(f"{table}/{chain} missing")
                elif count != len(chain_rules):
                    found.append(f"{table}/{chain} has {count} rules, not {len(chain_rules)}")
        return found


PROXIER = IpvsProxier()
