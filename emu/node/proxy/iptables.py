"""kube-proxy's iptables mode: the rules, chain names and comments it writes.

`render` builds the whole ruleset for one node as {table: {chain: [rules]}};
`restore_text` turns it into iptables-restore input, either in full or, given
the previous ruleset, only the chains that changed (kube-proxy's partial sync).
Only KUBE-* chains are written; the hooks that jump into them are installed
once per node (`hook_rules`). Standard library only: it runs in the node agent.
"""

from __future__ import annotations

import functools
import io
import ipaddress

from emu.node.proxy.base import (
    B32_PAIRS,
    Bootstrap,
    Proxier,
    Runner,
    localhost_node_ports,
    masquerade_mark,
    no_gc,
    node_port_addresses,
    run_text,
    service_ports,
)
from emu.node.records import ClusterState, NodeState, ServicePortState, ServiceState, sha256
from emu.node.services import Categories, Endpoint, categorize_endpoints, port_name

# Above this many endpoints kube-proxy leaves comments off endpoint (KUBE-SEP)
# rules, which makes large rulesets cheaper to restore; emu does the same.
LARGE_CLUSTER_ENDPOINTS = 1000
Ruleset = dict[str, dict[str, list[str]]]  # table -> chain -> rules (without "-A CHAIN")

# Chains written in full on every sync, in every table.
BASE_CHAINS = {
    "nat": ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"],
    # KUBE-NODEPORTS (health check node ports) and KUBE-PROXY-FIREWALL
    # (loadBalancerSourceRanges) stay empty without those fields; KUBE-FIREWALL holds the
    # localnet guard (LOCALNET_GUARD). A real node always has them and the jumps.
    "filter": ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-FIREWALL",
               "KUBE-PROXY-FIREWALL"],
}  # fmt: skip


# Localhost NodePorts (kube-proxy's iptables.localhostNodePorts, on by default): 127.0.0.1:NODEPORT
# on a node reaches the service. The nat rules already take it (KUBE-SERVICES' last rule matches
# every local destination, 127.0.0.1 included); the kernel routes a packet from 127.0.0.1 to a
# pod only with route_localnet, which kube-proxy sets at start (ROUTE_LOCALNET_STEP), and which
# would also let other hosts reach the node's 127.0.0.1 services: kube-proxy's KUBE-FIREWALL
# rule drops what arrives for 127.0.0.0/8 from elsewhere but is not a DNATed connection.
LOCALNET_GUARD = (
    '-m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 '
    "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
)
ROUTE_LOCALNET = "net.ipv4.conf.all.route_localnet"
# /proc/sys is read-only in a Docker node (writable in a User-mode Linux one): a private
# mount namespace may remount it read-write; the setting itself is the node's network
# namespace's.
ROUTE_LOCALNET_STEP = (
    f"sysctl -q -w {ROUTE_LOCALNET}=1 2>/dev/null || unshare -m sh -c "
    f"'mount -o remount,rw /proc/sys && echo 1 >/proc/sys/{ROUTE_LOCALNET.replace('.', '/')}'"
)


def _hash(*parts: str) -> str:
    """kube-proxy's hash: base32 of sha256, first 16 characters (the first 10 bytes)."""
    n = int.from_bytes(sha256("".join(parts).encode()).digest()[:10], "big")
    p = B32_PAIRS
    return (
        p[n >> 70] + p[(n >> 60) & 1023] + p[(n >> 50) & 1023] + p[(n >> 40) & 1023]
        + p[(n >> 30) & 1023] + p[(n >> 20) & 1023] + p[(n >> 10) & 1023] + p[n & 1023]
    )


@functools.lru_cache(maxsize=1 << 17)
def _chain(prefix: str, *parts: str) -> str:
    """A chain's name, made once: a sync names each endpoint's chain three times
    (in KUBE-SVC, for itself, in KUBE-SVL), and 40,000 endpoints' names made
    anew each time held 9 MB of copies."""
    return prefix + _hash(*parts)


def service_chain(name: str, protocol: str) -> str:
    return _chain("KUBE-SVC-", name, protocol)


def external_chain(name: str, protocol: str) -> str:
    return _chain("KUBE-EXT-", name, protocol)


def local_chain(name: str, protocol: str) -> str:
    return _chain("KUBE-SVL-", name, protocol)


def firewall_chain(name: str, protocol: str) -> str:
    return _chain("KUBE-FW-", name, protocol)


def endpoint_chain(name: str, protocol: str, endpoint: str) -> str:
    return _chain("KUBE-SEP-", name, protocol, endpoint)


def _contains(cidr: str, ip: str) -> bool:
    return ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(cidr, strict=False)


def comment(text: str) -> str:
    return f'-m comment --comment "{text}"' if " " in text else f"-m comment --comment {text}"


def hook_rules() -> str:
    """iptables-restore --noflush text run once when a node is made: the jumps
    from the built-in chains into kube-proxy's, as kube-proxy installs them."""
    portals = comment("kubernetes service portals")
    external = comment("kubernetes externally-visible service portals")
    firewall = comment("kubernetes load balancer firewall")
    return "\n".join(
        [
            "*nat",
            *(f":{chain} - [0:0]" for chain in BASE_CHAINS["nat"]),
            f"-I PREROUTING 1 {portals} -j KUBE-SERVICES",
            f"-I OUTPUT 1 {portals} -j KUBE-SERVICES",
            f"-I POSTROUTING 1 {comment('kubernetes postrouting rules')} -j KUBE-POSTROUTING",
            "COMMIT",
            "*filter",
            *(f":{chain} - [0:0]" for chain in BASE_CHAINS["filter"]),
            f"-I INPUT 1 -m conntrack --ctstate NEW {firewall} -j KUBE-PROXY-FIREWALL",
            f"-I INPUT 2 {comment('kubernetes health check service ports')} -j KUBE-NODEPORTS",
            f"-I INPUT 3 -m conntrack --ctstate NEW {external} -j KUBE-EXTERNAL-SERVICES",
            "-I INPUT 4 -j KUBE-FIREWALL",
            f"-I FORWARD 1 -m conntrack --ctstate NEW {firewall} -j KUBE-PROXY-FIREWALL",
            f"-I FORWARD 2 {comment('kubernetes forwarding rules')} -j KUBE-FORWARD",
            f"-I FORWARD 3 -m conntrack --ctstate NEW {portals} -j KUBE-SERVICES",
            f"-I FORWARD 4 -m conntrack --ctstate NEW {external} -j KUBE-EXTERNAL-SERVICES",
            f"-I OUTPUT 1 -m conntrack --ctstate NEW {firewall} -j KUBE-PROXY-FIREWALL",
            f"-I OUTPUT 2 -m conntrack --ctstate NEW {portals} -j KUBE-SERVICES",
            "-I OUTPUT 3 -j KUBE-FIREWALL",
            "COMMIT",
            "",
        ]
    )


class _Builder:
    def __init__(self):
        self.tables: Ruleset = {table: {chain: [] for chain in chains} for table, chains in BASE_CHAINS.items()}

    def add(self, table: str, chain: str, rule: str) -> None:
        self.tables[table].setdefault(chain, []).append(rule)


class _Recorder:
    """Collects one service port's rules, grouped by chain, so that they can be
    replayed from a cache."""

    def __init__(self):
        self.rules: dict[tuple[str, str], list[str]] = {}

    def add(self, table: str, chain: str, rule: str) -> None:
        self.rules.setdefault((table, chain), []).append(rule)


def render(
    state: ClusterState,
    node: str,
    endpoints: dict[str, dict[str, list[Endpoint]]],
    pod_subnet: str | None = None,
    cache: dict | None = None,
) -> Ruleset:
    """The node's whole ruleset for every proxied service. `endpoints` holds the
    ready endpoints per service key and port name (emu.node.services.service_endpoints),
    with those serving while they terminate that this node may fall back to.
    `pod_subnet` overrides networking.clusterCIDR, the local-traffic detector ("": none).

    With a `cache` (a dict the caller keeps between syncs), service ports whose
    service and endpoints are unchanged are not rendered again; the cache is
    left holding only the entries this ruleset used."""
    with no_gc():
        return _render(state, node, endpoints, state.net.cluster_cidr if pod_subnet is None else pod_subnet, cache)


def _render(state, node, endpoints, pod_subnet, cache) -> Ruleset:
    masquerade_all = state.net.masquerade_all
    rules = _Builder()
    tables = rules.tables
    total = sum(len(eps) for by_port in endpoints.values() for eps in by_port.values())
    large = total > LARGE_CLUSTER_ENDPOINTS
    used = {}
    shared: set[int] = set()  # ids of the cache's lists the ruleset holds
    node_ip = next((n.node_ip for n in state.nodes if n.name == node), None)
    for service, port, port_endpoints, identity in service_ports(state, endpoints, node):
        cache_key = (identity, node, node_ip, pod_subnet, large, masquerade_all)
        recorded = cache.get(cache_key) if cache is not None else None
        if recorded is None:
            recorder = _Recorder()
            categories = categorize_endpoints(state, service, port, node, port_endpoints)
            _render_port(recorder, service, port, categories, pod_subnet, large, node_ip, masquerade_all)
            recorded = recorder.rules
        used[cache_key] = recorded
        for (table, chain), chain_rules in recorded.items():
            held = tables[table].get(chain)
            if held is None:
                # The port's own chain (KUBE-SVC, -SEP ...): the cache's list itself, not a
                # copy. Shared, it is never added to: a second port's rules for the same
                # chain go to a list of the chain's own.
                tables[table][chain] = chain_rules
                shared.add(id(chain_rules))
            elif id(held) in shared:
                tables[table][chain] = held + chain_rules
            else:
                held.extend(chain_rules)
    if cache is not None:
        cache.clear()
        cache.update(used)
    # The NodePort jump must stay last in KUBE-SERVICES: every local address, or only
    # those of networking.nodePortAddresses.
    last = comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
    addresses = node_port_addresses(state, node, "iptables")
    if addresses is None:
        rules.add("nat", "KUBE-SERVICES", f"{last} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    for ip in addresses or ():
        rules.add("nat", "KUBE-SERVICES", f"{last} -d {ip}/32 -j KUBE-NODEPORTS")
    mark = masquerade_mark(state.net.masquerade_bit)
    rules.add("nat", "KUBE-MARK-MASQ", f"-j MARK --or-mark {mark}")
    rules.add("nat", "KUBE-POSTROUTING", f"-m mark ! --mark {mark}/{mark} -j RETURN")
    rules.add("nat", "KUBE-POSTROUTING", f"-j MARK --xor-mark {mark}")
    rules.add(
        "nat",
        "KUBE-POSTROUTING",
        f"{comment('kubernetes service traffic requiring SNAT')} -j MASQUERADE --random-fully",
    )
    if localhost_node_ports(addresses):
        rules.add("filter", "KUBE-FIREWALL", LOCALNET_GUARD)
    rules.add("filter", "KUBE-FORWARD", "-m conntrack --ctstate INVALID -j DROP")
    rules.add(
        "filter",
        "KUBE-FORWARD",
        f"{comment('kubernetes forwarding rules')} -m mark --mark {mark}/{mark} -j ACCEPT",
    )
    rules.add(
        "filter",
        "KUBE-FORWARD",
        f"{comment('kubernetes forwarding conntrack rule')} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    )
    return rules.tables


def _render_port(
    rules: _Recorder,
    service: ServiceState,
    port: ServicePortState,
    categories: Categories,
    pod_subnet: str,
    large: bool = False,
    node_ip: str | None = None,
    masquerade_all: bool = False,
) -> None:
    name = port_name(service, port)
    proto = port.protocol.lower()
    match = f"-m {proto} -p {proto}"
    svc, ext, svl = service_chain(name, proto), external_chain(name, proto), local_chain(name, proto)
    # kube-proxy's CategorizeEndpoints: the Cluster-policy endpoints (KUBE-SVC), the Local
    # ones (KUBE-SVL), and whether the service has any anywhere (no: REJECT; yes but none
    # for a Local policy here: DROP).
    cluster, local, has_endpoints = categories.cluster, categories.local, categories.any
    internal = local if service.internal_traffic_policy == "Local" else cluster
    external = local if service.external_traffic_policy == "Local" else cluster
    internal_chain = svl if service.internal_traffic_policy == "Local" else svc
    lb_ips = service.load_balancer_vips
    # kube-proxy's ExternallyAccessible: a node port, a LoadBalancer address or an external IP.
    has_external = service.type in ("NodePort", "LoadBalancer") or bool(service.external_ips)
    destination = f"-d {service.cluster_ip}/32 --dport {port.port}"

    # The cluster IP.
    if internal:
        rules.add("nat", "KUBE-SERVICES", f"{comment(name + ' cluster IP')} {match} {destination} -j {internal_chain}")
    else:
        verdict, why = ("DROP", "has no local endpoints") if has_endpoints else ("REJECT", "has no endpoints")
        rules.add("filter", "KUBE-SERVICES", f"{comment(f'{name} {why}')} {match} {destination} -j {verdict}")

    # External IPs, LoadBalancer IPs and the NodePort enter through KUBE-EXT whenever
    # the service has endpoints anywhere: with externalTrafficPolicy Local and none on
    # this node, traffic from pods and from the node itself still goes on to the
    # cluster's (short-circuited in KUBE-EXT); only traffic from outside, which KUBE-EXT
    # does not take, meets the DROP in KUBE-EXTERNAL-SERVICES. LoadBalancer IPs with
    # loadBalancerSourceRanges go through KUBE-FW first; what it does not pass on keeps
    # its LoadBalancer destination and meets the DROP in KUBE-PROXY-FIREWALL.
    no_external, why_not = ("DROP", "has no local endpoints") if has_endpoints else ("REJECT", "has no endpoints")
    firewalled = bool(has_endpoints and lb_ips and service.load_balancer_source_ranges)
    fw = firewall_chain(name, proto)
    refused = f"{comment(f'{name} {why_not}')} {match}"
    for ip in service.external_ips:
        where = f"-d {ip}/32 --dport {port.port}"
        if has_endpoints:
            rules.add("nat", "KUBE-SERVICES", f"{comment(name + ' external IP')} {match} {where} -j {ext}")
        if not external:
            rules.add("filter", "KUBE-EXTERNAL-SERVICES", f"{refused} {where} -j {no_external}")
    for ip in lb_ips:
        where = f"-d {ip}/32 --dport {port.port}"
        if has_endpoints:
            target = fw if firewalled else ext
            rules.add("nat", "KUBE-SERVICES", f"{comment(name + ' loadbalancer IP')} {match} {where} -j {target}")
        if firewalled:
            note = comment(f"{name} traffic not accepted by {fw}")
            rules.add("filter", "KUBE-PROXY-FIREWALL", f"{note} {match} {where} -j DROP")
    if not external:
        for ip in lb_ips:
            rules.add("filter", "KUBE-EXTERNAL-SERVICES", f"{refused} -d {ip}/32 --dport {port.port} -j {no_external}")
    if has_external and port.node_port:
        where = f"--dport {port.node_port}"
        if has_endpoints:
            rules.add("nat", "KUBE-NODEPORTS", f"{comment(name)} {match} {where} -j {ext}")
        if not external:
            local_only = f"{comment(f'{name} {why_not}')} -m addrtype --dst-type LOCAL {match}"
            rules.add("filter", "KUBE-EXTERNAL-SERVICES", f"{local_only} {where} -j {no_external}")
    if service.health_check_node_port:
        # Whether or not this node has an endpoint: the load balancer's health check must
        # reach the node's health server to hear the answer (200 or 503).
        note, health_port = comment(f"{name} health check node port"), service.health_check_node_port
        rules.add("filter", "KUBE-NODEPORTS", f"{note} -m tcp -p tcp --dport {health_port} -j ACCEPT")
    if has_external:
        if has_endpoints:
            if service.external_traffic_policy == "Local":
                if pod_subnet:  # the local-traffic detector (clusterCIDR)
                    pods = comment(f"pod traffic for {name} external destinations")
                    rules.add("nat", ext, f"{pods} -s {pod_subnet} -j {svc}")
                rules.add(
                    "nat",
                    ext,
                    f"{comment(f'masquerade LOCAL traffic for {name} external destinations')} "
                    "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
                )
                rules.add(
                    "nat",
                    ext,
                    f"{comment(f'route LOCAL traffic for {name} external destinations')} "
                    f"-m addrtype --src-type LOCAL -j {svc}",
                )
                if external:
                    rules.add("nat", ext, f"-j {svl}")
            else:
                rules.add("nat", ext, f"{comment(f'masquerade traffic for {name} external destinations')} -j KUBE-MARK-MASQ")
                rules.add("nat", ext, f"-j {svc}")
    if firewalled:
        # Each source range (and, when one holds this node's IP, the LoadBalancer IPs
        # themselves: a node reaching a VIP it holds speaks from it) goes on to KUBE-EXT.
        passed = list(service.load_balancer_source_ranges)
        if node_ip and any(_contains(cidr, node_ip) for cidr in passed):
            passed += lb_ips
        for source in passed:
            source = source if "/" in source else f"{source}/32"
            rules.add("nat", fw, f"{comment(name + ' loadbalancer IP')} -s {source} -j {ext}")
        rules.add("nat", fw, comment(f"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"))

    # KUBE-SVC balances over the Cluster-policy endpoints; KUBE-SVL over this node's only
    # (each empty where the service never uses that policy). The chain cluster IP traffic
    # takes masquerades what comes from outside the pod network.
    needs_svc, needs_svl = bool(cluster), bool(local)
    # masqueradeAll masquerades every cluster IP packet; else the detector, what comes from
    # outside clusterCIDR; with neither, none.
    if internal and (masquerade_all or pod_subnet):
        outside = "" if masquerade_all else f" ! -s {pod_subnet}"
        rules.add(
            "nat",
            internal_chain,
            f"{comment(name + ' cluster IP')} {match} {destination}{outside} -j KUBE-MARK-MASQ",
        )
    if needs_svc:
        _balance(rules, svc, name, proto, cluster, service.affinity_timeout)
    if needs_svl:
        _balance(rules, svl, name, proto, local, service.affinity_timeout)
    for endpoint in categories.reachable:
        sep = endpoint_chain(name, proto, endpoint.address)
        note = "" if large else comment(name) + " "
        rules.add("nat", sep, f"{note}-s {endpoint.ip}/32 -j KUBE-MARK-MASQ")
        affinity = f"-m recent --name {sep} --set " if service.affinity_timeout else ""
        rules.add("nat", sep, f"{note}{affinity}{match} -j DNAT --to-destination {endpoint.address}")


def _balance(
    rules: _Recorder, chain: str, name: str, proto: str, endpoints: list[Endpoint], affinity: int | None
) -> None:
    """Jump to each endpoint with probability 1/(n-i): uniform over n endpoints."""
    count = len(endpoints)
    if affinity:
        for endpoint in endpoints:
            sep = endpoint_chain(name, proto, endpoint.address)
            rules.add(
                "nat",
                chain,
                f"{comment(f'{name} -> {endpoint.address}')} -m recent --name {sep} --rcheck --seconds {affinity} "
                f"--reap -j {sep}",
            )
    for index, endpoint in enumerate(endpoints):
        sep = endpoint_chain(name, proto, endpoint.address)
        chance = ""
        if index < count - 1:
            chance = f" -m statistic --mode random --probability {1 / (count - index):.10f}"
        rules.add("nat", chain, f"{comment(f'{name} -> {endpoint.address}')}{chance} -j {sep}")


def restore_text(ruleset: Ruleset, previous: Ruleset | None = None) -> str:
    """iptables-restore --noflush input. Without `previous`, every chain; with it, as
    kube-proxy's partial sync writes it: both tables, their fixed chains (BASE_CHAINS:
    KUBE-SERVICES, KUBE-NODEPORTS ... and every filter chain) in full, of the service
    chains only those that changed, and -X for the ones gone. When nothing changed at
    all, nothing is sent (kube-proxy does not sync then either)."""
    out: list[str] = []
    old_tables = previous or {}
    changed = previous is None or any(
        old_tables.get(table, {}).get(chain) != rules
        for table, chains in ruleset.items() for chain, rules in chains.items()
    ) or any(chain not in ruleset.get(table, {}) for table, chains in old_tables.items() for chain in chains)
    if not changed:
        return "\n"
    for table in ("filter", "nat"):
        chains = ruleset.get(table, {})
        old = old_tables.get(table, {})
        fixed = BASE_CHAINS[table]
        write = [c for c in chains if previous is None or c in fixed or old.get(c) != chains[c]]
        gone = sorted(c for c in old if c not in chains)
        out.append(f"*{table}")
        out += [f":{chain} - [0:0]" for chain in [*write, *gone]]
        for chain in write:
            out += [f"-A {chain} {rule}" for rule in chains[chain]]
        out += [f"-X {chain}" for chain in gone]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def hook_jumps() -> set[tuple[str, str, str]]:
    """(table, built-in chain, KUBE-* target) of every hook rule."""
    jumps = set()
    table = ""
    for line in hook_rules().splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-I "):
            words = line.split()
            jumps.add((table, words[1], words[words.index("-j") + 1]))
    return jumps


def kernel_view(save_output: str) -> tuple[dict[tuple[str, str], int], set[tuple[str, str, str]]]:
    """From iptables-save: ({(table, KUBE-* chain): rule count}, {(table, chain, KUBE-* target) jumps})."""
    counts: dict[tuple[str, str], int] = {}
    jumps: set[tuple[str, str, str]] = set()
    table = ""
    # A line at a time, not splitlines(): at 1,000 services that list was 12,000
    # strings at once, and the agent kept 3.8 MB more after every check.
    for line in io.StringIO(save_output):
        if line.startswith("*"):
            table = line[1:].rstrip()
        elif line.startswith(":KUBE-"):
            counts[(table, line[1:].split()[0])] = 0
        elif line.startswith("-A "):
            words = line.split()
            chain = words[1]
            if chain.startswith("KUBE-"):
                counts[(table, chain)] = counts.get((table, chain), 0) + 1
            elif "-j" in words:
                target = words[words.index("-j") + 1]
                if target.startswith("KUBE-"):
                    jumps.add((table, chain, target))
    return counts, jumps


def differences(ruleset: Ruleset, save_output: str) -> list[str]:
    """What the kernel lacks of `ruleset` and of the hooks, as short phrases."""
    counts, jumps = kernel_view(save_output)
    found = []
    for table, chains in ruleset.items():
        for chain, rules in chains.items():
            have = counts.get((table, chain))
            if have is None:
                found.append(f"{table}/{chain} missing")
            elif have != len(rules):
                found.append(f"{table}/{chain} has {have} rules, not {len(rules)}")
    found += [f"{table}/{chain} no longer jumps to {target}" for table, chain, target in sorted(hook_jumps() - jumps)]
    return found


def hooks_text(missing: set[tuple[str, str, str]]) -> str:
    """iptables-restore --noflush text putting back the hook rules that are gone
    (and only those: -I twice would duplicate)."""
    table = ""
    lines: dict[str, list[str]] = {}
    for line in hook_rules().splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-I "):
            words = line.split()
            if (table, words[1], words[words.index("-j") + 1]) in missing:
                lines.setdefault(table, []).append(line)
    return "".join(
        f"*{table}\n" + "".join(f":{chain} - [0:0]\n" for chain in BASE_CHAINS[table])
        + "\n".join(rules) + "\nCOMMIT\n"
        for table, rules in lines.items()
    )


class IptablesProxier(Proxier):
    """kube-proxy's iptables mode through iptables-restore --noflush."""

    mode = "iptables"
    restore = ("iptables-restore", "--noflush", "--wait")

    def bootstrap(self, state: ClusterState, node: NodeState, plan_dir: str) -> Bootstrap:
        path = f"{plan_dir}/kube-proxy-hooks.rules"
        localhost = localhost_node_ports(node_port_addresses(state, node.name, "iptables"))
        localnet = [ROUTE_LOCALNET_STEP] if localhost else []
        return Bootstrap({path: hook_rules()}, [*localnet, f"iptables-restore --noflush {path}"])

    def render(self, state, node, endpoints, cache=None) -> Ruleset:
        return render(state, node, endpoints, cache=cache)

    def text(self, rules: Ruleset, previous: Ruleset | None = None) -> str:
        return restore_text(rules, previous)

    def apply(self, run: Runner, rules: Ruleset, previous: Ruleset | None = None) -> int:
        text = restore_text(rules, previous)
        if text.strip():
            run_text(run, [*self.restore], text, "iptables-restore")
        return sum(1 for line in text.splitlines() if line.startswith(":"))

    def adopt(self, run: Runner) -> Ruleset:
        """KUBE-* chains already in the kernel (an earlier agent's), so the first
        sync rewrites or deletes each of them."""
        found: Ruleset = {}
        for table in ("filter", "nat"):
            result = run(["iptables-save", "-t", table], capture_output=True, text=True)
            chains = [line[1:].split()[0] for line in result.stdout.splitlines() if line.startswith(":KUBE-")]
            found[table] = {chain: ["(unknown)"] for chain in chains if chain not in BASE_CHAINS[table]}
        return found

    def forget(self) -> Ruleset:
        return {}  # every chain counts as unwritten

    def lost(self, run: Runner, rules: Ruleset) -> list[str]:
        save = run(["iptables-save"], capture_output=True, text=True)
        if save.returncode != 0:
            return [f"iptables-save failed: {save.stderr.strip()}"]
        lost = differences(rules, save.stdout)
        if lost:
            missing = hook_jumps() - kernel_view(save.stdout)[1]
            if missing:
                run([*self.restore], input=hooks_text(missing), capture_output=True, text=True)
        return lost


PROXIER = IptablesProxier()
