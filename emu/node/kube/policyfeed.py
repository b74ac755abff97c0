"""A CNI's network policy agent's view of the cluster, fed by the API server's
NetworkPolicies, Pods and Namespaces, as Calico's, Cilium's and kube-router's
network policy controllers list and watch them.

emu.node.policy renders a node's ipsets and iptables chains from a ClusterState;
`PolicyFeed.snapshot()` gives it exactly the inputs it reads, made from API objects:
- `state.network_policies`: each NetworkPolicy in the form emu's state holds
  (name, namespace and its spec's podSelector, policyTypes, ingress, egress), made
  safe to render (`policy_of`): every NetworkPolicy in the API, emu's mirrored ones
  and kubectl's alike;
- `state.pods`: every pod with an IPv4 address (status.podIPs) that takes part in
  policies: its namespace, name, labels, node (spec.nodeName) and declared
  container ports (named ports); not host-network pods, whose address is their
  node's, nor pods that ran to their end (Succeeded, Failed), whose address may be
  another pod's already (`pod_of`);
- `state.namespaces`: each Namespace's labels (kubernetes.io/metadata.name
  included, as the API server sets it).

A change is recorded as it comes (the informers' handlers) only when what the
renderer reads changed: a pod's status written by its kubelet, its readiness,
annotations, or a policy's resourceVersion alone change nothing and wake nothing.
`on_change` (e.g. the policy job's Runner.request) is called after every change
that can alter the rules; `changes` counts them (the sync's version: a snapshot
that has not changed is not rendered again). Standard library only: it runs in the
node agent.
"""

from __future__ import annotations

import ipaddress
import re
import sys
import threading
from collections.abc import Callable

from emu.node.kube.client import Client, resource_path
from emu.node.kube.informer import Informer, key_of
from emu.node.records import ClusterState, PodState

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
LIST_PAGE = 100  # as proxyfeed's: smaller pages leave less of a list's parsing behind in the heap
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
PROTOCOLS = ("TCP", "UDP")  # what emu.node.policy matches (the nodes' iptables has no sctp match here)
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # IANA_SVC_NAME, as Kubernetes validates it

NETWORK_POLICIES_PATH = resource_path("networking.k8s.io/v1", "networkpolicies")
PODS_PATH = resource_path("v1", "pods")
NAMESPACES_PATH = resource_path("v1", "namespaces")

PARSED = "_parsed"  # where the feed's transforms keep an object's parsed form


# ---- API objects as the renderer reads them ---------------------------------------


def selector_of(selector) -> dict | None:
    """A LabelSelector as {matchLabels, matchExpressions}, None when it is not one
    (the API server validates them; a selector emu cannot read must match nothing,
    never everything)."""
    if selector is None or not isinstance(selector, dict):
        return None
    labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not isinstance(labels, dict) or not isinstance(expressions, list):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        return None
    parsed = []
    for expression in expressions:
        if not isinstance(expression, dict) or expression.get("operator") not in OPERATORS:
            return None
        key, operator, values = expression.get("key"), expression["operator"], expression.get("values") or []
        if not isinstance(key, str) or not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return None
        if (operator in ("In", "NotIn")) != bool(values):  # as Kubernetes validates them
            return None
        parsed.append({"key": key, "operator": operator, "values": list(values)})
    return {"matchLabels": dict(labels), "matchExpressions": parsed}


def _ipv4_block(block) -> dict | None:
    """An ipBlock with its CIDR and excepts as IPv4 networks (host bits cleared, as
    ipset stores them); None for an IPv6 block (it matches no IPv4 packet) or one that
    does not parse."""
    if not isinstance(block, dict):
        return None
    try:
        cidr = ipaddress.ip_network(str(block.get("cidr", "")).strip(), strict=False)
        excepts = [ipaddress.ip_network(str(e).strip(), strict=False) for e in block.get("except") or []]
    except ValueError:
        return None
    if cidr.version != 4:
        return None
    return {"cidr": str(cidr), "except": [str(e) for e in excepts if e.version == 4]}


def _peer(peer) -> dict | None:
    """A from/to peer, None when it cannot match anything emu can tell."""
    if not isinstance(peer, dict):
        return None
    has_selectors = peer.get("podSelector") is not None or peer.get("namespaceSelector") is not None
    if peer.get("ipBlock") is not None:
        if has_selectors:
            return None
        block = _ipv4_block(peer["ipBlock"])
        return {"ipBlock": block} if block else None
    if not has_selectors:
        return None
    out = {}
    for field in ("podSelector", "namespaceSelector"):
        if peer.get(field) is not None:
            selector = selector_of(peer[field])
            if selector is None:
                return None
            out[field] = selector
    return out


def _port(port) -> dict | None:
    """A NetworkPolicyPort, None when it names what emu cannot match (SCTP, a bad port)."""
    if not isinstance(port, dict):
        return None
    protocol = port.get("protocol") or "TCP"
    if protocol not in PROTOCOLS:
        return None
    number, end = port.get("port"), port.get("endPort")
    out: dict = {"protocol": protocol}
    if number is None:
        return out if end is None else None
    if isinstance(number, str) and number.isdigit():
        number = int(number)  # an IntOrString written as a string of digits
    if isinstance(number, bool) or not isinstance(number, (int, str)):
        return None
    if isinstance(number, int):
        if not 1 <= number <= 65535:
            return None
        out["port"] = number
        if end is not None:
            if isinstance(end, bool) or not isinstance(end, int) or not number <= end <= 65535:
                return None
            out["endPort"] = end
        return out
    if end is not None or len(number) > 15 or not PORT_NAME.match(number):
        return None
    out["port"] = number
    return out


def _rule(rule, peers_field: str) -> dict | None:
    """An ingress or egress rule; None when nothing can match it: peers or ports were
    given and none is left (an empty list would mean every peer or port)."""
    if not isinstance(rule, dict):
        return None
    given_peers, given_ports = rule.get(peers_field) or [], rule.get("ports") or []
    if not isinstance(given_peers, list) or not isinstance(given_ports, list):
        return None
    peers = [p for p in (_peer(peer) for peer in given_peers) if p is not None]
    ports = [p for p in (_port(port) for port in given_ports) if p is not None]
    if (given_peers and not peers) or (given_ports and not ports):
        return None
    return {peers_field: peers, "ports": ports}


def policy_of(obj: dict) -> dict | None:
    """A NetworkPolicy object in the form emu.node.policy renders (emu's state's), None
    when its podSelector cannot be read (it then selects, and isolates, no pod).
    What emu cannot match (an IPv6 ipBlock, SCTP, a peer or port that does not parse)
    matches nothing: a rule left with no peer or port allows nothing, never everything."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    if not isinstance(spec, dict):
        return None
    selector = selector_of(spec.get("podSelector") if spec.get("podSelector") is not None else {})
    if selector is None:
        return None
    types = spec.get("policyTypes")
    if not isinstance(types, list) or not types:
        types = ["Ingress"] + (["Egress"] if spec.get("egress") else [])  # the API server's default
    types = [t for t in dict.fromkeys(types) if t in ("Ingress", "Egress")]
    policy = {"name": meta.get("name", ""), "namespace": meta.get("namespace") or "default",
              "podSelector": selector, "policyTypes": types}  # fmt: skip
    for direction, peers_field in (("ingress", "from"), ("egress", "to")):
        rules = spec.get(direction) or []
        parsed = (_rule(rule, peers_field) for rule in (rules if isinstance(rules, list) else []))
        policy[direction] = [r for r in parsed if r is not None]
    return policy


def _ipv4(text) -> str | None:
    try:
        return str(ipaddress.IPv4Address(text))
    except (ValueError, TypeError):
        return None


def pod_of(obj: dict) -> PodState | None:
    """A pod as the renderer reads it, None where no policy applies to it or names it:
    no IPv4 address yet, host network, or ran to its end."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    if spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    addresses = [a.get("ip") for a in status.get("podIPs") or [] if isinstance(a, dict)] or [status.get("podIP")]
    ip = next((found for found in map(_ipv4, addresses) if found), None)
    if ip is None:
        return None
    containers = []
    for container in spec.get("containers") or []:
        if not isinstance(container, dict):
            continue
        ports = [{"name": p["name"], "containerPort": p["containerPort"], "protocol": p.get("protocol") or "TCP"}
                 for p in container.get("ports") or []
                 if isinstance(p, dict) and p.get("name") and isinstance(p.get("containerPort"), int)]  # fmt: skip
        containers.append({"name": container.get("name", ""), "ports": ports} if ports else
                          {"name": container.get("name", "")})  # fmt: skip
    intern = sys.intern  # namespaces, nodes and label keys repeat over every pod
    labels = {intern(k): v for k, v in (meta.get("labels") or {}).items() if isinstance(v, str)}
    return PodState(namespace=intern(meta.get("namespace") or "default"), name=meta.get("name", ""),
                    node=intern(spec.get("nodeName") or ""), ip=ip, labels=labels, containers=containers,
                    spec_hash="")  # fmt: skip


def namespace_labels(obj: dict) -> dict[str, str]:
    """A Namespace's labels, with kubernetes.io/metadata.name (the API server sets it on every one)."""
    meta = obj.get("metadata") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if isinstance(v, str)}
    labels[NAMESPACE_NAME_LABEL] = meta.get("name", "")
    return labels


def _slim(obj: dict, parsed) -> dict:
    """What an informer's cache keeps: identity, resourceVersion and the parsed form."""
    if PARSED in obj:
        return obj
    meta = obj.get("metadata") or {}
    slim = {"name": meta.get("name", ""), "resourceVersion": meta.get("resourceVersion", "")}
    if meta.get("namespace"):
        slim["namespace"] = sys.intern(meta["namespace"])
    return {"metadata": slim, PARSED: parsed}


def slim_policy(obj: dict) -> dict:
    return obj if PARSED in obj else _slim(obj, policy_of(obj))


def slim_pod(obj: dict) -> dict:
    return obj if PARSED in obj else _slim(obj, pod_of(obj))


def slim_namespace(obj: dict) -> dict:
    return obj if PARSED in obj else _slim(obj, namespace_labels(obj))


# ---- the view -------------------------------------------------------------------------


class PolicyFeed:
    """NetworkPolicies, Pods and Namespaces as emu.node.policy reads them.

    on_change: called (from an informer's thread) after a change that can alter the rules."""

    def __init__(self, on_change: Callable[[], None] = lambda: None):
        self.on_change = on_change
        self.lock = threading.Lock()
        self.policies: dict[str, dict] = {}
        self.pods: dict[str, PodState] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.unreadable: set[str] = set()  # policies whose podSelector could not be read
        self.changes = 0  # changes recorded (the snapshot's version; tests and benches wait on it)
        self.changed = threading.Condition(self.lock)
        self.state: ClusterState | None = None  # the last snapshot (None: make a new one)

    def _record(self, table: dict, key: str, value) -> None:
        """table[key] = value (None: deleted); a change only when it differs. Calls on_change."""
        with self.lock:
            if table.get(key) == value:
                return
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
            self.state = None
            self.changes += 1
            self.changed.notify_all()
        self.on_change()

    # ---- handlers (informers' threads) -------------------------------------------
    def on_policy(self, obj: dict) -> None:
        key = key_of(obj)
        policy = slim_policy(obj)[PARSED]
        with self.lock:
            (self.unreadable.add if policy is None else self.unreadable.discard)(key)
        self._record(self.policies, key, policy)

    def on_policy_deleted(self, obj: dict) -> None:
        key = key_of(obj)
        with self.lock:
            self.unreadable.discard(key)
        self._record(self.policies, key, None)

    def on_pod(self, obj: dict) -> None:
        self._record(self.pods, key_of(obj), slim_pod(obj)[PARSED])

    def on_pod_deleted(self, obj: dict) -> None:
        self._record(self.pods, key_of(obj), None)

    def on_namespace(self, obj: dict) -> None:
        self._record(self.namespaces, key_of(obj), slim_namespace(obj)[PARSED])

    def on_namespace_deleted(self, obj: dict) -> None:
        self._record(self.namespaces, key_of(obj), None)

    # ---- the view -----------------------------------------------------------------
    def snapshot(self) -> tuple[ClusterState, int]:
        """(state, version): what emu.node.policy.render takes, with every change recorded
        so far, and the number of changes it holds (the same number: the same rules)."""
        with self.lock:
            if self.state is None:
                self.state = ClusterState(
                    name="", network="", network_subnet="", networking={}, nodes=[], pods=dict(self.pods),
                    namespaces=dict(self.namespaces),
                    network_policies=[self.policies[key] for key in sorted(self.policies)],
                    generation=self.changes,
                )  # fmt: skip
            return self.state, self.changes

    def unreadable_policies(self) -> set[str]:
        """The policies whose podSelector could not be read (they select no pod)."""
        with self.lock:
            return set(self.unreadable)

    def wait_for(self, changes: int, timeout: float) -> bool:
        """Whether at least `changes` changes have been recorded, waiting up to `timeout` seconds."""
        with self.lock:
            return self.changed.wait_for(lambda: self.changes >= changes, timeout)

    # ---- the informers ---------------------------------------------------------------
    def informers(self, client: Client, log: Callable[[str], None] = lambda message: None,
                  **options) -> list[Informer]:  # fmt: skip
        """Informers (not started) that feed this view: NetworkPolicies, Pods and
        Namespaces of every namespace. `options` go to every Informer."""
        options.setdefault("page_size", LIST_PAGE)
        made = []
        for path, name, added, deleted, transform in (
            (NETWORK_POLICIES_PATH, "networkpolicies", self.on_policy, self.on_policy_deleted, slim_policy),
            (PODS_PATH, "pods (network policy)", self.on_pod, self.on_pod_deleted, slim_pod),
            (NAMESPACES_PATH, "namespaces", self.on_namespace, self.on_namespace_deleted, slim_namespace),
        ):
            made.append(Informer(client, path, on_add=added, on_update=lambda old, new, added=added: added(new),
                                 on_delete=deleted, log=log, name=name, transform=transform, **options))  # fmt: skip
        return made
