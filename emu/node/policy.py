"""NetworkPolicy (networking.k8s.io/v1) as iptables rules over ipsets, for one node.

Pure and standard library only: the node agent renders with it (emu.node.agent.policy).

Where it acts: every packet between pods passes the FORWARD chain of the node
it leaves and of the node it reaches (bridged traffic too: nodes set
bridge-nf-call-iptables), after kube-proxy's DNAT, so a policy sees the pod
behind a service. FORWARD jumps first to EMU-NETPOL:

    EMU-NETPOL           replies (conntrack ESTABLISHED/RELATED) return at once;
                         a new connection whose source is a local pod isolated for
                         egress goes to EMU-NETPOL-EGRESS, one whose destination is a
                         local pod isolated for ingress to EMU-NETPOL-INGRESS
    EMU-NETPOL-INGRESS   for each policy selecting the destination (its set of
                         local pods, EMU-NPT-<hash>), jump to its chain
                         EMU-NP-ING-<hash>, which marks 0x10000 when one of its
                         rules allows the connection; unmarked: REJECT
    EMU-NETPOL-EGRESS    the same for egress, mark 0x20000

A node writes rules only for its own pods: the source's node checks egress, the
destination's node ingress, as Kubernetes defines isolation (a pod is isolated
for a direction when any policy of that type selects it; what the policies
allow is added together). Peers are ipsets of pod IPs (one per distinct
selector, shared by every policy that uses it), ipBlocks hash:net sets whose
excepts are `nomatch` entries, named ports hash:ip,port sets; so the number of
rules grows with the policies' rules, never with pairs of pods.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
from dataclasses import dataclass, field

from emu.node.records import ClusterState, PodState, sha256

MAIN_CHAIN = "EMU-NETPOL"
INGRESS_CHAIN = "EMU-NETPOL-INGRESS"
EGRESS_CHAIN = "EMU-NETPOL-EGRESS"
INGRESS_ISOLATED = "EMU-NP-INGRESS-ISOLATED"  # local pods some policy isolates for ingress
EGRESS_ISOLATED = "EMU-NP-EGRESS-ISOLATED"
INGRESS_MARK = "0x10000"
EGRESS_MARK = "0x20000"
MARKS = "0x30000"
CHAIN_PREFIXES = ("EMU-NETPOL", "EMU-NP-")
SET_PREFIX = "EMU-NP"
BASE_CHAINS = [MAIN_CHAIN, INGRESS_CHAIN, EGRESS_CHAIN]
HOOK = f'FORWARD -m comment --comment "emu network policies" -j {MAIN_CHAIN}'

Sets = dict[str, tuple[str, tuple[str, ...]]]  # name -> (ipset type, sorted entries)
Chains = dict[str, list[str]]  # chain -> rules, without "-A CHAIN"


@dataclass
class PolicyRules:
    """One node's rules: ipsets and filter-table chains."""

    sets: Sets = field(default_factory=dict)
    chains: Chains = field(default_factory=dict)


@functools.lru_cache(maxsize=1 << 14)
def _hash(*parts: str) -> str:
    """16 base32 characters of sha256, as kube-proxy names its chains."""
    digest = sha256("\0".join(parts).encode()).digest()
    return base64.b32encode(digest[:10]).decode()


def selector_matches(selector: dict | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector ({matchLabels, matchExpressions}) against labels; {} matches all."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def policy_key(policy: dict) -> str:
    return f"{policy['namespace']}/{policy['name']}"


def selected_pods(state: ClusterState, policy: dict, by_namespace: PodIndex | None = None) -> list[PodState]:
    """The pods a policy applies to: its namespace's pods matching podSelector."""
    return (by_namespace or pods_by_namespace(state)).matching(policy["namespace"], policy.get("podSelector") or {})


class PodIndex(dict):
    """Pods by namespace, and by (namespace, label, value), so that a selector
    with matchLabels looks only at the pods carrying its rarest pair."""

    def __init__(self, pods):
        super().__init__()
        self.by_label: dict[tuple[str, str, str], list[PodState]] = {}
        for pod in pods:
            self.setdefault(pod.namespace, []).append(pod)
            for key, value in pod.labels.items():
                self.by_label.setdefault((pod.namespace, key, value), []).append(pod)

    def matching(self, namespace: str, selector: dict | None) -> list[PodState]:
        pairs = (selector or {}).get("matchLabels") or {}
        candidates = (
            min((self.by_label.get((namespace, k, v), []) for k, v in pairs.items()), key=len) if pairs
            else self.get(namespace, [])
        )  # fmt: skip
        return [p for p in candidates if selector_matches(selector or {}, p.labels)]


def pods_by_namespace(state: ClusterState) -> PodIndex:
    return PodIndex(state.pods.values())


def peer_pods(state: ClusterState, namespace: str, peer: dict, by_namespace: PodIndex | None = None) -> list[PodState]:
    """The pods a from/to peer with selectors names: podSelector alone means the
    policy's namespace, namespaceSelector alone every pod of the matching
    namespaces, both together the matching pods of the matching namespaces."""
    pods_selector, namespaces_selector = peer.get("podSelector"), peer.get("namespaceSelector")
    if namespaces_selector is None:
        namespaces = [namespace]
    else:
        namespaces = [
            name for name, labels in state.namespaces.items() if selector_matches(namespaces_selector, labels)
        ]
    index = by_namespace or pods_by_namespace(state)
    return [p for name in namespaces for p in index.matching(name, pods_selector or {})]


def _net_entries(block: dict) -> tuple[str, ...]:
    """hash:net entries for an ipBlock: its CIDR, and its excepts as nomatch (the
    most specific entry wins). ipset takes no /0: two /1 halves instead."""
    def split(cidr: str) -> list[str]:
        network = ipaddress.IPv4Network(cidr)
        return [str(half) for half in network.subnets(new_prefix=1)] if network.prefixlen == 0 else [str(network)]

    entries = split(block["cidr"])
    entries += [f"{cidr} nomatch" for excepted in block.get("except") or [] for cidr in split(excepted)]
    return tuple(sorted(entries))


class _Renderer:
    def __init__(self, state: ClusterState, node: str):
        self.state = state
        self.node = node
        self.rules = PolicyRules()
        self.rules.chains = {chain: [] for chain in BASE_CHAINS}
        self.isolated = {"Ingress": set(), "Egress": set()}
        self.by_namespace = pods_by_namespace(state)

    def add_set(self, kind: str, key: str, set_type: str, entries) -> str:
        """The set named for `key`; `entries` (an iterable, or a function giving one) is
        read only the first time: policies that share a peer share its set."""
        name = f"{SET_PREFIX}{kind}-{_hash(key)}"
        if name not in self.rules.sets:
            self.rules.sets[name] = (set_type, tuple(sorted(set(entries() if callable(entries) else entries))))
        return name

    def peer_match(self, namespace: str, peer: dict, direction: str) -> str:
        if peer.get("ipBlock"):
            block = peer["ipBlock"]
            name = self.add_set("B", _canonical(block), "hash:net", lambda: _net_entries(block))
        else:
            scope = {"ns": namespace if peer.get("namespaceSelector") is None else None,
                     "pods": peer.get("podSelector"), "namespaces": peer.get("namespaceSelector")}  # fmt: skip
            name = self.add_set(
                "S", _canonical(scope), "hash:ip",
                lambda: (p.ip for p in peer_pods(self.state, namespace, peer, self.by_namespace)),
            )  # fmt: skip
        return f"-m set --match-set {name} {direction}"

    def port_matches(self, policy: dict, ports: list[dict], targets: list[PodState], ingress: bool) -> list[str]:
        """One match per port entry ("" for none: every port)."""
        if not ports:
            return [""]
        matches = []
        for port in ports:
            protocol = (port.get("protocol") or "TCP").lower()
            number, end = port.get("port"), port.get("endPort")
            if number is None:
                matches.append(f"-p {protocol}")
            elif isinstance(number, int):
                span = f"{number}:{end}" if end else str(number)
                matches.append(f"-p {protocol} -m {protocol} --dport {span}")
            else:
                # A named port means each destination pod's own port of that name:
                # the policy's pods for ingress, any pod for egress.
                pods = targets if ingress else list(self.state.pods.values())
                entries = [
                    f"{pod.ip},{protocol}:{p['containerPort']}"
                    for pod in pods for p in pod.container_ports()
                    if p.get("name") == number and (p.get("protocol") or "TCP").lower() == protocol
                ]  # fmt: skip
                scope = policy_key(policy) if ingress else "*"
                name = self.add_set("N", f"{scope}|{number}|{protocol}", "hash:ip,port", entries)
                matches.append(f"-p {protocol} -m set --match-set {name} dst,dst")
        return matches

    def policy(self, policy: dict) -> None:
        key = policy_key(policy)
        local = [p for p in selected_pods(self.state, policy, self.by_namespace) if p.node == self.node]
        if not local:
            return  # it isolates none of this node's pods: nothing to enforce here
        targets = self.add_set("T", key, "hash:ip", (p.ip for p in local))
        for direction in policy.get("policyTypes") or ["Ingress"]:
            ingress = direction == "Ingress"
            self.isolated[direction].update(p.ip for p in local)
            chain = f"EMU-NP-{'ING' if ingress else 'EGR'}-{_hash(key)}"
            dispatch = INGRESS_CHAIN if ingress else EGRESS_CHAIN
            self.rules.chains[dispatch].append(
                f'-m comment --comment "{key}" -m set --match-set {targets} {"dst" if ingress else "src"} -j {chain}'
            )
            rules = self.rules.chains.setdefault(chain, [])
            mark = INGRESS_MARK if ingress else EGRESS_MARK
            for index, rule in enumerate(policy.get("ingress" if ingress else "egress") or []):
                peers = rule.get("from" if ingress else "to") or [None]
                ports = self.port_matches(policy, rule.get("ports") or [], local, ingress)
                for peer in peers:
                    peer_match = self.peer_match(policy["namespace"], peer, "src" if ingress else "dst") if peer else ""
                    for port_match in ports:
                        words = [f'-m comment --comment "{key} {direction.lower()}[{index}]"', peer_match, port_match]
                        rules.append(" ".join(w for w in words if w) + f" -j MARK --set-xmark {mark}/{mark}")

    def render(self) -> PolicyRules:
        for policy in sorted(self.state.network_policies, key=policy_key):
            self.policy(policy)
        chains = self.rules.chains
        for direction, mark, dispatch, isolated_set, where in (
            ("Ingress", INGRESS_MARK, INGRESS_CHAIN, INGRESS_ISOLATED, "dst"),
            ("Egress", EGRESS_MARK, EGRESS_CHAIN, EGRESS_ISOLATED, "src"),
        ):
            self.rules.sets[isolated_set] = ("hash:ip", tuple(sorted(self.isolated[direction])))
            chains[dispatch] += [
                f"-m mark --mark {mark}/{mark} -j RETURN",
                f'-m comment --comment "no network policy allows this {direction.lower()}" -j REJECT',
            ]
        chains[MAIN_CHAIN] = [
            "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            f"-j MARK --set-xmark 0x0/{MARKS}",
            f"-m set --match-set {EGRESS_ISOLATED} src -j {EGRESS_CHAIN}",
            f"-m set --match-set {INGRESS_ISOLATED} dst -j {INGRESS_CHAIN}",
        ]
        return self.rules


def render(state: ClusterState, node: str) -> PolicyRules:
    """The node's policy rules: sets and chains (see the module's docstring)."""
    return _Renderer(state, node).render()


def ipset_restore_text(sets: Sets, previous: Sets | None, existing: list[str] | None = None) -> str:
    """`ipset restore` input that makes the kernel's sets `sets`, given what it
    holds (`previous`; None: unknown, so every set is created, and emptied if
    it is among `existing` (None: any may exist), and filled). Changed sets get
    only the entries added and deleted. Sets that are gone are destroyed by
    `ipset_destroy_text`, after the rules stop naming them."""
    lines = []
    for name in sorted(sets):
        set_type, entries = sets[name]
        old = (previous or {}).get(name)
        if old is not None and old[0] == set_type:
            before = set(old[1])
            lines += [f"del {name} {e.split(' ')[0]} -exist" for e in old[1] if e not in entries]
            lines += [f"add {name} {e} -exist" for e in entries if e not in before]
            continue
        lines.append(f"create {name} {set_type} family inet -exist")
        if existing is None or name in existing:
            lines.append(f"flush {name}")
        lines += [f"add {name} {e} -exist" for e in entries]
    return "\n".join(lines) + ("\n" if lines else "")


def ipset_destroy_text(sets: Sets, existing: list[str]) -> str:
    return "".join(f"destroy {name}\n" for name in sorted(existing) if name not in sets)


def iptables_restore_text(chains: Chains, previous: Chains | None) -> str:
    """iptables-restore --noflush input for the filter table: every chain (no
    `previous`), or only those that changed, and -X for those gone."""
    old = previous or {}
    write = [c for c in chains if previous is None or old.get(c) != chains[c]]
    gone = sorted(c for c in old if c not in chains)
    if not write and not gone:
        return ""
    lines = ["*filter", *(f":{chain} - [0:0]" for chain in [*write, *gone])]
    for chain in write:
        lines += [f"-A {chain} {rule}" for rule in chains[chain]]
    lines += [f"-X {chain}" for chain in gone]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def is_ours(name: str) -> bool:
    return name.startswith(CHAIN_PREFIXES)


def selected_by(state: ClusterState, key: str) -> list[PodState]:
    """The pods policy `key` (namespace/name) selects, for `emu describe netpol`."""
    for policy in state.network_policies:
        if policy_key(policy) == key:
            return sorted(selected_pods(state, policy), key=lambda p: p.key)
    raise KeyError(key)
