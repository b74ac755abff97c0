"""kube-proxy's nftables mode: `table ip kube-proxy` as pkg/proxy/nftables writes it.

The table holds base chains hooked into netfilter (filter-prerouting-pre-dnat,
filter-output-pre-dnat, filter-input, filter-forward, filter-output,
nat-prerouting, nat-output, nat-postrouting), dispatch chains (services,
masquerading, mark-for-masquerade, service-endpoints-check,
nodeport-endpoints-check, cluster-ips-check, firewall-check, reject-chain), the
sets and verdict maps they look packets up in (cluster-ips, nodeport-ips,
service-ips, service-nodeports, no-endpoint-services, no-endpoint-nodeports,
firewall-ips), and per service port the chains
`service-<hash>-<ns>/<name>/<proto>/<port>` (Cluster policy), `local-...`
(Local policy), `external-...` (NodePort and LoadBalancer traffic) and one
`endpoint-<hash>-...__<ip>/<port>` per endpoint, which a
`numgen random mod N vmap { ... }` picks from; ClientIP affinity keeps one
dynamic `affinity-...` set per endpoint.

`render` builds a Ruleset; `transaction` turns it into one `nft -f` file: the
whole table (created afresh, atomically), or given the previous ruleset only
what changed (chains added, flushed and refilled, or deleted; map elements
added and deleted), as kube-proxy's partial syncs do. Standard library only:
it runs in the node agent.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import time
from dataclasses import dataclass, field

from emu.node.proxy.base import (
    Bootstrap,
    Proxier,
    Runner,
    base32_8,
    masquerade_mark,
    no_gc,
    node_port_addresses,
    run_text,
    service_ports,
)
from emu.node.records import ClusterState, NodeState, ServicePortState, ServiceState, sha256
from emu.node.services import Categories, Endpoint, categorize_endpoints, port_name

TABLE = "ip kube-proxy"

# (name, declaration) of the sets and maps every sync declares, as kube-proxy's setupNFTables.
SETS = [
    ("set", "cluster-ips", 'type ipv4_addr ; comment "Active ClusterIPs" ;'),
    ("set", "nodeport-ips", 'type ipv4_addr ; comment "IPs that accept NodePort traffic" ;'),
    ("map", "no-endpoint-services", ("type ipv4_addr . inet_proto . inet_service : verdict ; "
     'comment "vmap to drop or reject packets to services with no endpoints" ;')),
    ("map", "no-endpoint-nodeports", ("type inet_proto . inet_service : verdict ; "
     'comment "vmap to drop or reject packets to service nodeports with no endpoints" ;')),
    ("map", "firewall-ips", ("type ipv4_addr . inet_proto . inet_service : verdict ; "
     'comment "destinations that are subject to LoadBalancerSourceRanges" ;')),
    ("map", "service-ips", ("type ipv4_addr . inet_proto . inet_service : verdict ; "
     'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ;')),
    ("map", "service-nodeports", 'type inet_proto . inet_service : verdict ; comment "NodePort traffic" ;'),
]  # fmt: skip

# Base chains: (name, type, hook, priority). Filtering runs before DNAT where it
# must see the service address (firewall), after it elsewhere.
BASE_CHAINS = [
    ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
    ("filter-output-pre-dnat", "filter", "output", -110),
    ("filter-forward", "filter", "forward", 0),
    ("filter-input", "filter", "input", 0),
    ("filter-output", "filter", "output", 0),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
]
# Regular chains that base chains jump to (and the jumps), as kube-proxy's nftablesJumpChains.
JUMPS = [
    ("filter-prerouting-pre-dnat", "ct state new jump firewall-check"),
    ("filter-output-pre-dnat", "ct state new jump firewall-check"),
    ("filter-input", "ct state new jump nodeport-endpoints-check"),
    ("filter-input", "ct state new jump service-endpoints-check"),
    ("filter-forward", "ct state new jump service-endpoints-check"),
    ("filter-forward", "ct state new jump cluster-ips-check"),
    ("filter-output", "ct state new jump service-endpoints-check"),
    ("filter-output", "ct state new jump cluster-ips-check"),
    ("nat-prerouting", "jump services"),
    ("nat-output", "jump services"),
    ("nat-postrouting", "jump masquerading"),
]
REGULAR_CHAINS = [
    "firewall-check", "service-endpoints-check", "nodeport-endpoints-check", "cluster-ips-check",
    "services", "masquerading", "mark-for-masquerade", "reject-chain",
]  # fmt: skip
CHAIN_COMMENTS = {"reject-chain": "helper for @no-endpoint-services / @no-endpoint-nodeports"}


@functools.lru_cache(maxsize=1 << 17)
def hash_and_truncate(name: str) -> str:
    """kube-proxy's chain name base: 8 base32 characters of sha256(name), '-', name
    (never truncated: emu's names are shorter than nftables' 256-character limit)."""
    return base32_8(sha256(name.encode()).digest()) + "-" + name


def port_base(service: ServiceState, port: ServicePortState) -> str:
    """'HASH-namespace/name/protocol/portname', e.g. ULMVA6XW-ns1/svc1/tcp/p80."""
    return hash_and_truncate(port_path(service, port))


def port_path(service: ServiceState, port: ServicePortState) -> str:
    return f"{service.namespace}/{service.name}/{port.protocol.lower()}/{port.name}"


def endpoint_base(service: ServiceState, port: ServicePortState, endpoint: Endpoint) -> str:
    """'HASH-namespace/name/protocol/portname__ip/port'."""
    return hash_and_truncate(f"{port_path(service, port)}__{endpoint.ip}/{endpoint.port}")


@dataclass
class PortRules:
    """One service port's share of the table: its chains (in the order they are
    declared), affinity sets and map elements."""

    name: str
    chains: dict[str, list[str]] = field(default_factory=dict)
    service: str = ""  # namespace/name: kube-proxy rewrites a changed service's ports together
    sets: dict[str, str] = field(default_factory=dict)  # affinity set -> declaration
    elements: list[tuple[str, str, str]] = field(default_factory=list)  # (set or map, key, " comment ... : value")


@dataclass
class Ruleset:
    """The node's kube-proxy table: `setup` (every full sync: base chains, jumps,
    sets and maps, their fixed rules) and every service port's rules."""

    setup: list[str]
    fixed_chains: dict[str, list[str]]
    ports: list[PortRules]
    # Service chains no port uses any more, flushed but not yet deleted, with when they
    # were last flushed (time.monotonic()), as kube-proxy's staleChains: set by apply.
    stale: dict[str, float] = field(default_factory=dict)

    def chains(self) -> dict[str, list[str]]:
        chains = dict(self.fixed_chains)
        for port in self.ports:
            chains.update(port.chains)
        return chains

    def elements(self) -> dict[tuple[str, str], str]:
        return {(name, key): value for port in self.ports for name, key, value in port.elements}

    def sets(self) -> dict[str, str]:
        return {name: declaration for port in self.ports for name, declaration in port.sets.items()}


def setup(state: ClusterState, node: NodeState | None) -> tuple[list[str], dict[str, list[str]]]:
    """kube-proxy's setupNFTables: the table's declarations and fixed rules, and
    those fixed chains with their rules (for the kernel check)."""
    service_cidr = state.net.service_subnet
    chains: dict[str, list[str]] = {name: [] for name, *_ in BASE_CHAINS}
    chains.update({name: [] for name in REGULAR_CHAINS})
    for source, rule in JUMPS:
        chains[source].append(rule)
    mark = masquerade_mark(state.net.masquerade_bit)
    chains["mark-for-masquerade"].append(f"mark set mark or {mark}")
    chains["masquerading"] += [f"mark and {mark} == 0 return", f"mark set mark xor {mark}",
                               "masquerade fully-random"]  # fmt: skip
    chains["cluster-ips-check"] += [
        'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
        f'ip daddr {{ {service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"',
    ]
    chains["reject-chain"].append("reject")
    chains["service-endpoints-check"].append("ip daddr . meta l4proto . th dport vmap @no-endpoint-services")
    # networking.nodePortAddresses: the node's addresses in nodeport-ips (loopback left out:
    # kube-proxy's nftables mode has no localhost NodePorts), or, for every address
    # (nodePortAddresses: []), no set and a fib lookup that leaves 127.0.0.0/8 out.
    addresses = node_port_addresses(state, node.name, "nftables") if node is not None else [None]
    nodeports = "fib daddr type local ip daddr != 127.0.0.0/8" if addresses is None else "ip daddr @nodeport-ips"
    chains["nodeport-endpoints-check"].append(f"{nodeports} meta l4proto . th dport vmap @no-endpoint-nodeports")
    chains["firewall-check"].append("ip daddr . meta l4proto . th dport vmap @firewall-ips")
    chains["services"] += [
        "ip daddr . meta l4proto . th dport vmap @service-ips",
        f"{nodeports} meta l4proto . th dport vmap @service-nodeports",
    ]
    lines = [f'add table {TABLE} {{ comment "rules for kube-proxy" ; }}']
    for name, kind, hook, priority in BASE_CHAINS:
        lines.append(f"add chain {TABLE} {name} {{ type {kind} hook {hook} priority {priority} ; }}")
    for name in REGULAR_CHAINS:
        note = f' {{ comment "{CHAIN_COMMENTS[name]}" ; }}' if name in CHAIN_COMMENTS else ""
        lines.append(f"add chain {TABLE} {name}{note}")
    lines += [f"add {kind} {TABLE} {name} {{ {declaration} }}" for kind, name, declaration in SETS
              if addresses is not None or name != "nodeport-ips"]  # fmt: skip
    for name, rules in chains.items():
        lines += [f"add rule {TABLE} {name} {rule}" for rule in rules]
    for ip in addresses or ():
        if ip is not None and not ip.startswith("127."):
            lines.append(f"add element {TABLE} nodeport-ips {{ {ip} }}")
    return lines, chains


def render(
    state: ClusterState,
    node: str,
    endpoints: dict[str, dict[str, list[Endpoint]]],
    pod_subnet: str | None = None,
    cache: dict | None = None,
) -> Ruleset:
    """The node's table for every proxied service. `endpoints` holds the ready
    endpoints per service key and port name (emu.node.services.all_endpoints), with
    those serving while they terminate that this node may fall back to.

    With a `cache` (a dict the caller keeps between syncs), service ports whose
    service and endpoints are unchanged are not rendered again."""
    with no_gc():
        net = state.net
        pod_subnet = net.cluster_cidr if pod_subnet is None else pod_subnet  # "": no detector
        masquerade_all = net.masquerade_all
        node_state = next((n for n in state.nodes if n.name == node), None)
        lines, fixed = setup(state, node_state)
        node_ip = node_state.node_ip if node_state is not None else None
        ports, used = [], {}
        for service, port, port_endpoints, identity in service_ports(state, endpoints, node):
            cache_key = (identity, node, node_ip, pod_subnet, masquerade_all)
            rendered = cache.get(cache_key) if cache is not None else None
            if rendered is None:
                categories = categorize_endpoints(state, service, port, node, port_endpoints)
                rendered = render_port(service, port, categories, pod_subnet, node_ip, masquerade_all)
            used[cache_key] = rendered
            ports.append(rendered)
        if cache is not None:
            cache.clear()
            cache.update(used)
        return Ruleset(lines, fixed, ports)


def _contains(cidr: str, ip: str) -> bool:
    return ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(cidr, strict=False)


def render_port(
    service: ServiceState,
    port: ServicePortState,
    categories: Categories,
    pod_subnet: str,
    node_ip: str | None = None,
    masquerade_all: bool = False,
) -> PortRules:
    """One service port, as kube-proxy's syncProxyRules writes it, from its endpoints as
    CategorizeEndpoints sorts them for this node (emu.node.services.categorize_endpoints)."""
    name = port_name(service, port)
    out = PortRules(name, service=service.key)
    proto = port.protocol.lower()
    base = port_base(service, port)
    cluster_chain, local_chain, external_chain = f"service-{base}", f"local-{base}", f"external-{base}"
    firewall_chain = f"firewall-{base}"
    internal_local = service.internal_traffic_policy == "Local"
    external_local = service.external_traffic_policy == "Local"
    node_port = port.node_port if service.type in ("NodePort", "LoadBalancer") else None
    lb_ips = service.load_balancer_vips
    external_ips = service.external_ips
    externally_accessible = bool(node_port or lb_ips or external_ips)
    # (each list is empty where the port never uses its policy)
    cluster_eps, local_eps, reachable = categories.cluster, categories.local, categories.reachable
    has_endpoints = categories.any
    uses_cluster_chain = bool(cluster_eps)
    uses_local_chain = bool(local_eps)
    internal_chain = local_chain if internal_local else cluster_chain
    has_internal = has_endpoints and not (internal_local and not local_eps)
    external_policy_chain = local_chain if external_local else cluster_chain
    has_external = has_endpoints and not (external_local and not local_eps)
    uses_external_chain = has_endpoints and externally_accessible
    internal_verdict = external_verdict = "drop" if has_endpoints else "goto reject-chain"

    # Each endpoint's chain name base, by the endpoint object (local ones are the same objects).
    bases = {id(e): endpoint_base(service, port, e) for e in reachable}
    # Chains are declared first (a rule may only name a chain that exists), in kube-proxy's order.
    if uses_cluster_chain:
        out.chains[cluster_chain] = []
    if uses_local_chain:
        out.chains[local_chain] = []
    if uses_external_chain:
        out.chains[external_chain] = []
    for endpoint in reachable:
        out.chains["endpoint-" + bases[id(endpoint)]] = []
    uses_firewall = bool(lb_ips and service.load_balancer_source_ranges)
    if uses_firewall:
        out.chains[firewall_chain] = []

    note = f' comment "{name}"'
    out.elements.append(("cluster-ips", service.cluster_ip, ""))
    address = f"{service.cluster_ip} . {proto} . {port.port}"
    if has_internal:
        out.elements.append(("service-ips", address, f" : goto {internal_chain}"))
    else:
        out.elements.append(("no-endpoint-services", address, f"{note} : {internal_verdict}"))
    for ip in external_ips:
        key = f"{ip} . {proto} . {port.port}"
        if has_endpoints:
            out.elements.append(("service-ips", key, f" : goto {external_chain}"))
        if not has_external:
            out.elements.append(("no-endpoint-services", key, f"{note} : {external_verdict}"))
    if uses_firewall:
        # Sources outside every range are dropped before DNAT (firewall-check, priority -110);
        # with a range holding this node's IP, the LoadBalancer IPs pass too (a node
        # reaching a VIP it holds speaks from it).
        sources = list(service.load_balancer_source_ranges)
        if node_ip and any(_contains(cidr, node_ip) for cidr in sources):
            sources += lb_ips
        out.chains[firewall_chain].append(f"ip saddr != {{ {' , '.join(sources)} }} drop")
    for ip in lb_ips:
        if has_endpoints:
            out.elements.append(("service-ips", f"{ip} . {proto} . {port.port}", f" : goto {external_chain}"))
        if uses_firewall:
            out.elements.append(("firewall-ips", f"{ip} . {proto} . {port.port}", f" : goto {firewall_chain}"))
    if not has_external:
        for ip in lb_ips:
            out.elements.append(("no-endpoint-services", f"{ip} . {proto} . {port.port}", f"{note} : {external_verdict}"))
    # A healthCheckNodePort needs nothing here: kube-proxy's nftables mode drops only what
    # its own sets and maps name, so the node's health server is reached as it is.
    if node_port:
        if has_endpoints:
            out.elements.append(("service-nodeports", f"{proto} . {node_port}", f" : goto {external_chain}"))
        if not has_external:
            out.elements.append(("no-endpoint-nodeports", f"{proto} . {node_port}", f"{note} : {external_verdict}"))

    # masqueradeAll masquerades every cluster IP packet; else the detector (clusterCIDR),
    # what comes from outside it; with neither, none.
    if has_internal and (masquerade_all or pod_subnet):
        outside = "" if masquerade_all else f" ip saddr != {pod_subnet}"
        out.chains[internal_chain].append(
            f"ip daddr {service.cluster_ip}{outside} jump mark-for-masquerade"
        )
    if uses_external_chain:
        rules = out.chains[external_chain]
        if not external_local:
            rules.append("jump mark-for-masquerade")  # endpoints may be on other nodes
        else:
            if pod_subnet:
                rules.append(f'ip saddr {pod_subnet} goto {cluster_chain} comment "short-circuit pod traffic"')
            rules += [
                'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"',
                f'fib saddr type local goto {cluster_chain} comment "short-circuit local traffic"',
            ]
        if has_external:
            rules.append(f"goto {external_policy_chain}")
    if service.affinity_timeout:
        for endpoint in reachable:
            out.sets["affinity-" + bases[id(endpoint)]] = (
                f"type ipv4_addr ; flags dynamic,timeout ; timeout {service.affinity_timeout}s ;"
            )
    if uses_cluster_chain:
        _balance(out.chains[cluster_chain], cluster_eps, bases, service.affinity_timeout)
    if uses_local_chain:
        _balance(out.chains[local_chain], local_eps, bases, service.affinity_timeout)
    for endpoint in reachable:
        base = bases[id(endpoint)]
        rules = out.chains["endpoint-" + base]
        rules.append(f"ip saddr {endpoint.ip} jump mark-for-masquerade")  # hairpin: the pod reaching itself
        if service.affinity_timeout:
            rules.append(f"update @affinity-{base} {{ ip saddr }}")
        rules.append(f"meta l4proto {proto} dnat to {endpoint.ip}:{endpoint.port}")
    return out


def _balance(rules: list[str], endpoints: list[Endpoint], bases: dict[int, str], timeout: int | None) -> None:
    """Affinity first (a client seen lately goes where it went), then a uniform pick."""
    if timeout:
        rules += [f"ip saddr @affinity-{bases[id(e)]} goto endpoint-{bases[id(e)]}" for e in endpoints]
    picks = " , ".join(f"{i} : goto endpoint-{bases[id(e)]}" for i, e in enumerate(endpoints))
    rules.append(f"numgen random mod {len(endpoints)} vmap {{ {picks} }}")


def full_text(rules: Ruleset, replace: bool = True) -> str:
    """The whole table as one transaction. With `replace`, whatever table was
    there goes first (add + delete, so it works whether or not one was)."""
    out = [rules.setup[0], f"delete table {TABLE}"] if replace else []
    out += rules.setup
    for port in rules.ports:
        out.append(f"# {port.name}")
        out += [f"add set {TABLE} {name} {{ {declaration} }}" for name, declaration in port.sets.items()]
        out += [f"add chain {TABLE} {chain}" for chain in port.chains]
        for chain, chain_rules in port.chains.items():
            out += [f"add rule {TABLE} {chain} {rule}" for rule in chain_rules]
        out += [f"add element {TABLE} {name} {{ {key}{value} }}" for name, key, value in port.elements]
    return "\n".join(out) + "\n"


# The element containers a full sync flushes and fills again (kube-proxy's nftElementStorage).
CONTAINERS = [("set", "cluster-ips"), ("map", "service-ips"), ("map", "firewall-ips"), ("map", "no-endpoint-services"),
              ("map", "no-endpoint-nodeports"), ("map", "service-nodeports")]  # fmt: skip
# How long a chain no rule uses any more is kept (flushed) before it is deleted: with
# kernels before 6.2 a chain a map element pointed to cannot be deleted at once.
STALE_AFTER = 1.0


def _setup_sync(rules: Ruleset, first: bool) -> list[str]:
    """kube-proxy's setupNFTables, as a full sync writes it: the table, every fixed
    chain created and flushed (base chains added and deleted once first, on a
    proxier's first sync, so changed hooks or priorities are taken), their rules,
    the sets and maps, and the element containers flushed."""
    declared = {line.split()[4]: line for line in rules.setup if line.startswith(("add set ", "add map "))}
    chain_lines = {line.split()[4]: line for line in rules.setup if line.startswith("add chain ")}
    fixed = rules.fixed_chains
    out = [rules.setup[0]]
    if first:
        for name, *_ in BASE_CHAINS:
            out += [f"add chain {TABLE} {name}", f"delete chain {TABLE} {name}"]
    made: set[str] = set()

    def ensure(chain: str) -> None:
        if chain not in made:
            made.add(chain)
            out.extend((chain_lines[chain], f"flush chain {TABLE} {chain}"))

    def rules_of(chain: str) -> list[str]:
        return [f"add rule {TABLE} {chain} {rule}" for rule in fixed[chain]]

    for name, *_ in BASE_CHAINS:
        ensure(name)
    for source, rule in JUMPS:
        ensure(rule.split()[-1])
        out.append(f"add rule {TABLE} {source} {rule}")
    for chain in ("services", "cluster-ips-check", "masquerading", "mark-for-masquerade"):
        ensure(chain)
    out += rules_of("mark-for-masquerade") + rules_of("masquerading")
    out.append(declared["cluster-ips"])
    out += rules_of("cluster-ips-check")
    # nodeport-ips: filled afresh, or (every address takes NodePorts) added and deleted,
    # which removes it whether or not it was there.
    nodeport_ips = next(f"add {kind} {TABLE} {name} {{ {d} }}" for kind, name, d in SETS if name == "nodeport-ips")
    out.append(nodeport_ips)
    if "nodeport-ips" in declared:
        out.append(f"flush set {TABLE} nodeport-ips")
        out += [line for line in rules.setup if line.startswith(f"add element {TABLE} nodeport-ips ")]
    else:
        out.append(f"delete set {TABLE} nodeport-ips")
    out += [declared["no-endpoint-services"], declared["no-endpoint-nodeports"]]
    ensure("reject-chain")
    out += rules_of("reject-chain") + rules_of("service-endpoints-check") + rules_of("nodeport-endpoints-check")
    out.append(declared["firewall-ips"])
    ensure("firewall-check")
    out += rules_of("firewall-check")
    out += [declared["service-ips"], declared["service-nodeports"]]
    out += rules_of("services")
    out += [f"flush {kind} {TABLE} {name}" for kind, name in CONTAINERS]
    return out


def _port_ops(port: PortRules, old_sets: dict[str, str]) -> tuple[list[str], list[str]]:
    """A rewritten service port's chains (created and flushed) and its rules, with its
    affinity sets declared between them; an affinity set whose declaration changed is
    deleted first (its chains, flushed just before, no longer name it)."""
    chains = []
    for chain in port.chains:
        chains += [f"add chain {TABLE} {chain}", f"flush chain {TABLE} {chain}"]
    body = []
    for name, declaration in port.sets.items():
        if name in old_sets and old_sets[name] != declaration:
            body.append(f"delete set {TABLE} {name}")
        body.append(f"add set {TABLE} {name} {{ {declaration} }}")
    for chain, chain_rules in port.chains.items():
        body += [f"add rule {TABLE} {chain} {rule}" for rule in chain_rules]
    return chains, body


def sync_ops(rules: Ruleset, previous: Ruleset | None = None, *args, **options) -> tuple[list[str], dict[str, float]]:
    """_sync_ops without the cyclic garbage collector (it would scan the whole
    ruleset's objects, 0.1 to 0.3 s at 10,000 services, for none to free)."""
    with no_gc():
        return _sync_ops(rules, previous, *args, **options)


def _sync_ops(
    rules: Ruleset,
    previous: Ruleset | None = None,
    existing: tuple[set[str], set[str]] | None = None,
    first: bool = False,
    stale: dict[str, float] | None = None,
    now: float = 0.0,
) -> tuple[list[str], dict[str, float]]:
    """One sync's nft -f transaction, as kube-proxy's syncProxyRules builds it, and the
    stale chains after it (name -> when flushed).

    Without `previous`, a full sync: the fixed chains and containers set up afresh
    (`_setup_sync`), every service chain created, flushed and filled, every element
    added; chains and affinity sets the kernel holds (`existing`: names, from nft
    list) that no service uses any more are flushed (chains) or deleted (sets).
    With `previous`, a partial sync: only the services whose ports changed (by
    identity: the renderer's cache hands back the same PortRules for an unchanged
    port) have their chains rewritten; map elements are added, replaced (delete and
    add) or deleted as they changed; the chains of changed services that are gone
    are flushed, and so again are the stale chains still held (`stale`, else
    previous.stale). A chain is deleted by a later, separate transaction once it has
    been stale for STALE_AFTER (`stale_deletion`), as kube-proxy does."""
    out: list[str] = []
    new_stale: dict[str, float] = {}
    if previous is None:
        out += _setup_sync(rules, first)
        old_ports: list[PortRules] = []
        new_ports = rules.ports
        held_chains, held_sets = existing if existing is not None else (set(), set())
        stale_before: dict[str, float] = {}
    else:
        if previous.setup != rules.setup:
            return _sync_ops(rules, None, (set(previous.chains()) | set(previous.stale), set(previous.sets())),
                             stale=stale, now=now)  # fmt: skip
        changed = _changed_services(previous.ports, rules.ports)
        old_ports = [port for port in previous.ports if (port.service or port.name) in changed]
        new_ports = [port for port in rules.ports if (port.service or port.name) in changed]
        held_chains = {chain for port in old_ports for chain in port.chains}
        held_sets = {name for port in old_ports for name in port.sets}
        stale_before = previous.stale if stale is None else stale
    old_sets = {name: d for port in old_ports for name, d in port.sets.items()}
    old_elements = {(name, key): value for port in old_ports for name, key, value in port.elements}
    active_chains: set[str] = set()
    active_sets: set[str] = set()
    bodies: list[str] = []
    new_elements: dict[tuple[str, str], str] = {}
    for port in new_ports:
        chains, body = _port_ops(port, old_sets)
        out += chains
        bodies += body
        active_chains.update(port.chains)
        active_sets.update(port.sets)
        for name, key, value in port.elements:
            new_elements.setdefault((name, key), value)
    out += bodies
    for (name, key), value in new_elements.items():
        old = old_elements.get((name, key))
        if old == value:
            continue
        if old is not None:
            out.append(f"delete element {TABLE} {name} {{ {key} }}")
        out.append(f"add element {TABLE} {name} {{ {key}{value} }}")
    # Chains no service uses: flushed now, deleted once stale long enough.
    gone = [chain for chain in held_chains if chain not in active_chains and "/" in chain]
    gone += [chain for chain in stale_before if chain not in active_chains and chain not in held_chains]
    for chain in sorted(gone):
        out.append(f"flush chain {TABLE} {chain}")
        new_stale[chain] = now
    out += [f"delete set {TABLE} {name}" for name in sorted(held_sets)
            if name not in active_sets and name.startswith("affinity-")]  # fmt: skip
    out += [f"delete element {TABLE} {name} {{ {key} }}" for name, key in old_elements
            if (name, key) not in new_elements]  # fmt: skip
    return out, new_stale


def _changed_services(old: list[PortRules], new: list[PortRules]) -> set[str]:
    """The services (namespace/name) one of whose ports came, went or changed."""
    before = {port.name: port for port in old}
    changed = set()
    for port in new:
        was = before.pop(port.name, None)
        if was is not port and was != port:
            changed.add(port.service or port.name)
    changed.update(port.service or port.name for port in before.values())
    return changed


def stale_deletion(stale: dict[str, float], now: float) -> tuple[str, dict[str, float]]:
    """kube-proxy's first transaction of a sync: delete the chains stale for over
    STALE_AFTER ("" when none is); returns it and the chains still stale after it."""
    old = [chain for chain, since in stale.items() if since < now - STALE_AFTER]
    if not old:
        return "", stale
    text = "".join(f"delete chain {TABLE} {chain}\n" for chain in sorted(old))
    return text, {chain: since for chain, since in stale.items() if chain not in old}


def transaction(rules: Ruleset, previous: Ruleset | None = None, first: bool = False) -> str:
    """One sync's nft -f transaction from `previous` to `rules` (see sync_ops): a
    full sync when previous is None, else only what changed ("" when nothing did)."""
    ops, _ = sync_ops(rules, previous, first=first)
    return "\n".join(ops) + "\n" if ops else ""


def table_view(listing: str) -> tuple[dict[str, int], set[str]]:
    """From `nft -t list table ip kube-proxy`: ({chain: rule count}, {set and map names})."""
    counts: dict[str, int] = {}
    sets: set[str] = set()
    chain = None
    for line in listing.splitlines():
        words = line.split()
        if not words:
            continue
        if line.startswith("\tchain "):
            chain = words[1]
            counts[chain] = 0
        elif line.startswith(("\tset ", "\tmap ")):
            sets.add(words[1])
            chain = None
        elif line == "\t}":
            chain = None
        elif chain is not None and line.startswith("\t\t") and not _CHAIN_PROPERTY.match(line):
            counts[chain] += 1
    return counts, sets


_CHAIN_PROPERTY = re.compile(r"\t\t(type \S+ hook |comment \")")


class NftablesProxier(Proxier):
    """kube-proxy's nftables mode through nft -f, one transaction a sync (and, when
    chains have been stale long enough, one before it that deletes them)."""

    mode = "nftables"

    def __init__(self):
        self.flushed = False  # kube-proxy's: the base chains were re-created once

    def bootstrap(self, state: ClusterState, node: NodeState, plan_dir: str) -> Bootstrap:
        """The empty table (no services yet), so the node has kube-proxy's hooks
        from its first moment; the agent's first sync sets it up again and fills it."""
        path = f"{plan_dir}/kube-proxy.nft"
        lines, _ = setup(state, node)
        return Bootstrap({path: full_text(Ruleset(lines, {}, []))}, [f"nft -f {path}"])

    def render(self, state, node, endpoints, cache=None) -> Ruleset:
        return render(state, node, endpoints, cache=cache)

    def text(self, rules: Ruleset, previous: Ruleset | None = None) -> str:
        return transaction(rules, previous, first=previous is None and not self.flushed)

    def apply(self, run: Runner, rules: Ruleset, previous: Ruleset | None = None) -> int:
        now = time.monotonic()
        if previous is None:
            ops, stale = sync_ops(rules, None, existing(run), first=not self.flushed, now=now)
        else:
            held = self.delete_stale(run, previous.stale, now)
            ops, stale = sync_ops(rules, previous, stale=held, now=now)
        try:
            if ops:
                run_text(run, ["nft", "-f", "-"], "\n".join(ops) + "\n", "nft -f")
        except RuntimeError:
            if previous is not None:
                raise
            # A full sync the kernel refused (an affinity set left with another timeout cannot
            # be re-added in place): the table is replaced whole, as a last resort.
            ops, stale = full_text(rules).splitlines(), {}
            run_text(run, ["nft", "-f", "-"], "\n".join(ops) + "\n", "nft -f")
        self.flushed = True
        rules.stale = stale
        return sum(1 for line in ops if line.startswith(("add chain", "flush chain", "add element",
                                                          "delete element", "delete chain")))  # fmt: skip

    def delete_stale(self, run: Runner, stale: dict[str, float], now: float) -> dict[str, float]:
        """Delete the chains stale long enough (their own transaction, as kube-proxy);
        returns those still stale. One that cannot be deleted stays stale, is
        flushed again by the sync and tried again later."""
        text, held = stale_deletion(stale, now)
        if text and run(["nft", "-f", "-"], input=text, capture_output=True, text=True).returncode != 0:
            return stale
        return held

    def adopt(self, run: Runner) -> None:
        return None  # the first sync is a full one: it lists the chains and sets it finds (existing)

    def lost(self, run: Runner, rules: Ruleset) -> list[str]:
        if rules.stale:  # between syncs, as kube-proxy's periodic sync would
            rules.stale = self.delete_stale(run, rules.stale, time.monotonic())
        result = run(["nft", "-t", "list", "table", "ip", "kube-proxy"], capture_output=True, text=True)
        if result.returncode != 0:
            return [f"table {TABLE} missing ({result.stderr.strip()[:200]})"]
        counts, sets = table_view(result.stdout)
        found = []
        for chain, chain_rules in rules.chains().items():
            have = counts.get(chain)
            if have is None:
                found.append(f"chain {chain} missing")
            elif have != len(chain_rules):
                found.append(f"chain {chain} has {have} rules, not {len(chain_rules)}")
        declared = [line.split()[4] for line in rules.setup if line.startswith(("add set ", "add map "))]
        wanted = declared + list(rules.sets())
        found += [f"set {name} missing" for name in wanted if name not in sets]
        return found


def existing(run: Runner) -> tuple[set[str], set[str]]:
    """The chains and sets `table ip kube-proxy` holds (none when there is no table), as
    kube-proxy lists them before a full sync to find what no service uses any more."""
    found: list[set[str]] = []
    for argv in (["nft", "list", "chains", "ip"], ["nft", "-t", "list", "sets", "ip"]):
        result = run(argv, capture_output=True, text=True)
        names: set[str] = set()
        inside = False
        for line in result.stdout.splitlines() if result.returncode == 0 else ():
            if line.startswith("table "):
                inside = line.split()[1:3] == ["ip", "kube-proxy"]
            elif inside and line.startswith(("\tchain ", "\tset ", "\tmap ")):
                names.add(line.split()[1])
        found.append(names)
    return found[0], found[1]


PROXIER = NftablesProxier()
