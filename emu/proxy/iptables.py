"""kube-proxy's iptables mode: the rules, chain names and comments it writes.

`render` builds the whole ruleset for one node as {table: {chain: [rules]}};
`restore_text` turns it into iptables-restore input, either in full or, given
the previous ruleset, only the chains that changed (kube-proxy's partial sync).
Only KUBE-* chains are written; the hooks that jump into them are installed
once per node (`hook_rules`). Standard library only: it runs in the node agent.
"""

from __future__ import annotations

import functools
import gc

from emu.records import ClusterState, ServicePortState, ServiceState, sha256
from emu.services import Endpoint, port_name

MASQ_MARK = "0x4000"
# Above this many endpoints kube-proxy leaves comments off endpoint (KUBE-SEP)
# rules, which makes large rulesets cheaper to restore; emu does the same.
LARGE_CLUSTER_ENDPOINTS = 1000
Ruleset = dict[str, dict[str, list[str]]]  # table -> chain -> rules (without "-A CHAIN")

# Chains written in full on every sync, in every table.
BASE_CHAINS = {
    "nat": ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"],
    "filter": ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD"],
}


# Two base32 characters for every 10-bit value: base64.b32encode is pure Python
# in 3.11 and this is 2.4x faster, which matters at 10,000 services.
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_B32_PAIRS = [_B32[i >> 5] + _B32[i & 31] for i in range(1024)]


@functools.lru_cache(maxsize=1 << 17)
def _hash(*parts: str) -> str:
    """kube-proxy's hash: base32 of sha256, first 16 characters (the first 10 bytes)."""
    n = int.from_bytes(sha256("".join(parts).encode()).digest()[:10], "big")
    p = _B32_PAIRS
    return (
        p[n >> 70] + p[(n >> 60) & 1023] + p[(n >> 50) & 1023] + p[(n >> 40) & 1023]
        + p[(n >> 30) & 1023] + p[(n >> 20) & 1023] + p[(n >> 10) & 1023] + p[n & 1023]
    )


def service_chain(name: str, protocol: str) -> str:
    return "KUBE-SVC-" + _hash(name, protocol)


def external_chain(name: str, protocol: str) -> str:
    return "KUBE-EXT-" + _hash(name, protocol)


def local_chain(name: str, protocol: str) -> str:
    return "KUBE-SVL-" + _hash(name, protocol)


def endpoint_chain(name: str, protocol: str, endpoint: str) -> str:
    return "KUBE-SEP-" + _hash(name, protocol, endpoint)


def comment(text: str) -> str:
    return f'-m comment --comment "{text}"' if " " in text else f"-m comment --comment {text}"


def hook_rules() -> str:
    """iptables-restore --noflush text run once when a node is made: the jumps
    from the built-in chains into kube-proxy's, as kube-proxy installs them."""
    portals = comment("kubernetes service portals")
    external = comment("kubernetes externally-visible service portals")
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
            f"-I INPUT 1 -m conntrack --ctstate NEW {external} -j KUBE-EXTERNAL-SERVICES",
            f"-I FORWARD 1 {comment('kubernetes forwarding rules')} -j KUBE-FORWARD",
            f"-I FORWARD 2 -m conntrack --ctstate NEW {portals} -j KUBE-SERVICES",
            f"-I FORWARD 3 -m conntrack --ctstate NEW {external} -j KUBE-EXTERNAL-SERVICES",
            f"-I OUTPUT 1 -m conntrack --ctstate NEW {portals} -j KUBE-SERVICES",
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
    ready endpoints per service key and port name (emu.services.service_endpoints).

    With a `cache` (a dict the caller keeps between syncs), service ports whose
    service and endpoints are unchanged are not rendered again; the cache is
    left holding only the entries this ruleset used."""
    # Rendering allocates many small objects and no cycles: the cyclic garbage
    # collector would only slow it down.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _render(state, node, endpoints, pod_subnet or state.networking["podSubnet"], cache)
    finally:
        if collecting:
            gc.enable()


def _render(state, node, endpoints, pod_subnet, cache) -> Ruleset:
    rules = _Builder()
    tables = rules.tables
    total = sum(len(eps) for by_port in endpoints.values() for eps in by_port.values())
    large = total > LARGE_CLUSTER_ENDPOINTS
    used = {}
    for key in sorted(state.services):
        service = state.services[key]
        if not service.proxied:
            continue
        for port in service.ports:
            port_endpoints = endpoints.get(key, {}).get(port.name, [])
            cache_key = (
                key, service.type, service.cluster_ip, service.load_balancer_ip, service.affinity_timeout,
                service.external_traffic_policy, service.internal_traffic_policy,
                port.name, port.port, port.protocol, port.node_port,
                tuple((e.ip, e.port, e.node) for e in port_endpoints), node, pod_subnet, large,
            )  # fmt: skip
            recorded = cache.get(cache_key) if cache is not None else None
            if recorded is None:
                recorder = _Recorder()
                _render_port(recorder, service, port, port_endpoints, node, pod_subnet, large)
                recorded = recorder.rules
            used[cache_key] = recorded
            for (table, chain), chain_rules in recorded.items():
                tables[table].setdefault(chain, []).extend(chain_rules)
    if cache is not None:
        cache.clear()
        cache.update(used)
    # The NodePort jump must stay last in KUBE-SERVICES.
    rules.add(
        "nat",
        "KUBE-SERVICES",
        f"{comment('kubernetes service nodeports; NOTE: this must be the last rule in this chain')} "
        "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
    )
    rules.add("nat", "KUBE-MARK-MASQ", f"-j MARK --or-mark {MASQ_MARK}")
    rules.add("nat", "KUBE-POSTROUTING", f"-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN")
    rules.add("nat", "KUBE-POSTROUTING", f"-j MARK --xor-mark {MASQ_MARK}")
    rules.add(
        "nat",
        "KUBE-POSTROUTING",
        f"{comment('kubernetes service traffic requiring SNAT')} -j MASQUERADE --random-fully",
    )
    rules.add("filter", "KUBE-FORWARD", "-m conntrack --ctstate INVALID -j DROP")
    rules.add(
        "filter",
        "KUBE-FORWARD",
        f"{comment('kubernetes forwarding rules')} -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
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
    endpoints: list[Endpoint],
    node: str,
    pod_subnet: str,
    large: bool = False,
) -> None:
    name = port_name(service, port)
    proto = port.protocol.lower()
    match = f"-m {proto} -p {proto}"
    svc, ext, svl = service_chain(name, proto), external_chain(name, proto), local_chain(name, proto)
    local = [e for e in endpoints if e.node == node]
    internal = local if service.internal_traffic_policy == "Local" else endpoints
    external = local if service.external_traffic_policy == "Local" else endpoints
    internal_chain = svl if service.internal_traffic_policy == "Local" else svc
    has_external = service.type in ("NodePort", "LoadBalancer")
    destination = f"-d {service.cluster_ip}/32 --dport {port.port}"

    # The cluster IP.
    if internal:
        rules.add("nat", "KUBE-SERVICES", f"{comment(name + ' cluster IP')} {match} {destination} -j {internal_chain}")
    else:
        verdict, why = ("DROP", "has no local endpoints") if endpoints else ("REJECT", "has no endpoints")
        rules.add("filter", "KUBE-SERVICES", f"{comment(f'{name} {why}')} {match} {destination} -j {verdict}")

    # NodePort and LoadBalancer: traffic from outside enters through KUBE-EXT.
    if has_external:
        targets = []
        if port.node_port:
            targets.append(("KUBE-NODEPORTS", f"--dport {port.node_port}", "-m addrtype --dst-type LOCAL "))
        if service.load_balancer_ip:
            targets.append(("KUBE-SERVICES", f"-d {service.load_balancer_ip}/32 --dport {port.port}", ""))
        for chain, where, local_only in targets:
            label = name if chain == "KUBE-NODEPORTS" else f"{name} loadbalancer IP"
            if external:
                rules.add("nat", chain, f"{comment(label)} {match} {where} -j {ext}")
            else:
                verdict, why = ("DROP", "has no local endpoints") if endpoints else ("REJECT", "has no endpoints")
                rules.add(
                    "filter", "KUBE-EXTERNAL-SERVICES", f"{comment(f'{name} {why}')} {local_only}{match} {where} -j {verdict}"
                )
        if external:
            if service.external_traffic_policy == "Local":
                rules.add("nat", ext, f"{comment(f'pod traffic for {name} external destinations')} -s {pod_subnet} -j {svc}")
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
                rules.add("nat", ext, f"-j {svl}")
            else:
                rules.add("nat", ext, f"{comment(f'masquerade traffic for {name} external destinations')} -j KUBE-MARK-MASQ")
                rules.add("nat", ext, f"-j {svc}")

    # KUBE-SVC balances over every endpoint; KUBE-SVL over this node's only.
    needs_svc = endpoints and (service.internal_traffic_policy == "Cluster" or has_external)
    needs_svl = local and (service.internal_traffic_policy == "Local" or service.external_traffic_policy == "Local")
    if needs_svc:
        rules.add(
            "nat",
            svc,
            f"{comment(name + ' cluster IP')} {match} {destination} ! -s {pod_subnet} -j KUBE-MARK-MASQ",
        )
        _balance(rules, svc, name, proto, endpoints, service.affinity_timeout)
    if needs_svl:
        _balance(rules, svl, name, proto, local, service.affinity_timeout)
    for endpoint in endpoints if needs_svc else local if needs_svl else []:
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
    """iptables-restore --noflush input. Without `previous`, every chain; with it,
    only the chains that changed, and -X for the ones gone (kube-proxy's partial
    sync; unlike kube-proxy, an unchanged KUBE-SERVICES is not rewritten either)."""
    out: list[str] = []
    for table in ("filter", "nat"):
        chains = ruleset.get(table, {})
        old = (previous or {}).get(table, {})
        write = [c for c in chains if previous is None or old.get(c) != chains[c]]
        gone = sorted(c for c in old if c not in chains)
        if previous is not None and not write and not gone:
            continue  # an untouched table is not sent: each one sent is a kernel round trip
        out.append(f"*{table}")
        out += [f":{chain} - [0:0]" for chain in [*write, *gone]]
        for chain in write:
            out += [f"-A {chain} {rule}" for rule in chains[chain]]
        out += [f"-X {chain}" for chain in gone]
        out.append("COMMIT")
    return "\n".join(out) + "\n"
