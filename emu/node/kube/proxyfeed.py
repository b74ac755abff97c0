"""kube-proxy's view of the cluster, fed by the API server's Services and
EndpointSlices (never Pods), as pkg/proxy's ServiceChangeTracker and
EndpointsChangeTracker build it.

The proxiers (emu.node.proxy) render a node's rules from a ClusterState and
the ready endpoints per service port: `ProxyFeed.snapshot()` gives exactly
those inputs, made from API objects:
- `state.services`: one ServiceState per Service (spec.type, clusterIP,
  ports, selector, sessionAffinity, traffic policies, the LoadBalancer
  address from status.loadBalancer.ingress);
- `state.nodes`: the Nodes (name, InternalIP, role, podCIDR), which the
  nftables and ipvs modes ask for this node's IP and the LoadBalancer
  owner choice (emu.node.services.load_balancer_owner) for every node;
- `state.networking`: kube-proxy's own configuration (clusterCIDR, the
  service CIDR, the proxy mode), given to the feed, not read from the API;
- endpoints: {service key: {port name: [Endpoint]}} from the service's
  EndpointSlices (label kubernetes.io/service-name): each endpoint whose
  `conditions.ready` is not false, once per address and port across slices,
  ordered by address, as emu.node.services.all_endpoints orders them; and
  those still serving while they terminate (Endpoint.terminating) that this
  node may fall back to (kube-proxy's ProxyTerminatingEndpoints, GA in 1.28: a
  service whose pods are all shutting down keeps answering until they are
  gone): every one where a port has no ready endpoint, and this node's own
  where the port has a Local traffic policy. The proxiers sort them as
  kube-proxy's CategorizeEndpoints does, for the cluster's and for the node's
  own endpoints apart (emu.node.services.categorize_endpoints); what all nodes
  agree on (the LoadBalancer owner) takes emu.node.services.usable_endpoints.

Changes are recorded as they come (the informers' handlers) and applied at
the next snapshot, for the services they touch only: an EndpointSlice update
recomputes that one service's endpoints; the other services' entries stay the
same objects, so the renderers' caches skip them. `on_change` (e.g. the sync
job's Runner.request) is called after every change that can alter the rules.
Standard library only: it runs in the node agent.
"""

from __future__ import annotations

import ipaddress
import sys
import threading
from collections.abc import Callable

from emu.node.kube.client import Client, resource_path
from emu.node.kube.informer import Informer, key_of
from emu.node.records import ClusterState, NodeState, ServicePortState, ServiceState
from emu.node.services import TOPOLOGY_MODE_ANNOTATION, Endpoint, _address_order, uses_local_endpoints

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
TERMINATING = "terminating"  # slice_endpoints' readiness of a serving, terminating endpoint
LIST_PAGE = 100  # objects a list page (client-go's default is 500: see ProxyFeed.informers)
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds: Kubernetes' default sessionAffinityConfig.clientIP.timeoutSeconds

SERVICES_PATH = resource_path("v1", "services")
ENDPOINT_SLICES_PATH = resource_path("discovery.k8s.io/v1", "endpointslices")
NODES_PATH = resource_path("v1", "nodes")


def service_state(obj: dict) -> ServiceState:
    """A Service object as the proxiers' ServiceState."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    ports = [
        ServicePortState(
            name=p.get("name") or "",
            port=int(p["port"]),
            protocol=p.get("protocol") or "TCP",
            target_port=p.get("targetPort", p["port"]),
            node_port=p.get("nodePort") or None,
        )
        for p in spec.get("ports") or []
    ]
    affinity = None
    if spec.get("sessionAffinity") == "ClientIP":
        config = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
        affinity = int(config.get("timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT)
    # kube-proxy programs the addresses the load balancer published in status, never the
    # deprecated spec.loadBalancerIP (a request the load balancer may refuse: a pending
    # Service must not get an address on a node).
    ingress = [i.get("ip") for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]
    ingress = [ip for ip in ingress if ip]
    load_balancer_ip = (ingress[0] if ingress else None) if kind == "LoadBalancer" else None
    # kube-proxy's LoadBalancerSourceRanges: trimmed, each a CIDR (the API server validated them).
    ranges = [str(ipaddress.IPv4Network(r.strip(), strict=False)) for r in spec.get("loadBalancerSourceRanges") or []
              if _ipv4_network(r)]  # fmt: skip
    return ServiceState(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        type=kind,
        cluster_ip="" if kind == "ExternalName" else spec.get("clusterIP") or "",
        ports=ports,
        selector=spec.get("selector") or None,
        external_name=spec.get("externalName"),
        affinity_timeout=affinity,
        external_traffic_policy=spec.get("externalTrafficPolicy") or "Cluster",
        internal_traffic_policy=spec.get("internalTrafficPolicy") or "Cluster",
        load_balancer_ip=load_balancer_ip,
        external_ips=[ip for ip in spec.get("externalIPs") or [] if _ipv4_address(ip)] if kind != "ExternalName"
        else [],  # fmt: skip
        load_balancer_source_ranges=ranges if kind == "LoadBalancer" else [],
        load_balancer_ips=ingress if kind == "LoadBalancer" and len(ingress) > 1 else [],
        # kube-proxy reads it only where the service needs a health check (apiservice.NeedsHealthCheck).
        health_check_node_port=(spec.get("healthCheckNodePort") or None)
        if kind == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local" else None,  # fmt: skip
        traffic_distribution=spec.get("trafficDistribution") or None,
        topology_mode=(meta.get("annotations") or {}).get(TOPOLOGY_MODE_ANNOTATION) or None,
    )


def _ipv4_address(text) -> bool:
    """kube-proxy skips addresses of the other family (and what does not parse)."""
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _ipv4_network(text) -> bool:
    try:
        ipaddress.IPv4Network(str(text).strip(), strict=False)
    except ValueError:
        return False
    return True


def node_state(obj: dict) -> NodeState:
    """A Node object as the proxiers' NodeState (its InternalIP, role and podCIDR)."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    labels = meta.get("labels") or {}
    address = next((a.get("address", "") for a in status.get("addresses") or [] if a.get("type") == "InternalIP"), "")
    return NodeState(
        name=meta.get("name", ""),
        role="control-plane" if CONTROL_PLANE_LABEL in labels else "worker",
        labels=dict(labels),
        pod_cidr=spec.get("podCIDR") or "",
        node_ip=address,
        container="",
    )


def slice_endpoints(obj: dict) -> list[tuple[str, str, Endpoint, bool]]:
    """(port name, protocol, Endpoint, ready) for every endpoint and port of an EndpointSlice;
    ready is True, False, or TERMINATING for one not ready that serves while it terminates."""
    if obj.get("addressType", "IPv4") != "IPv4":
        return []  # emu's data path is IPv4 only, as a single-stack kube-proxy
    out = []
    intern = sys.intern  # node names, port names and protocols repeat over every slice
    for endpoint in obj.get("endpoints") or []:
        addresses = endpoint.get("addresses") or []
        if not addresses:
            continue
        conditions = endpoint.get("conditions") or {}
        ready = conditions.get("ready") is not False  # unset means ready (and unset serving, serving)
        if not ready and conditions.get("serving") is not False and conditions.get("terminating"):
            ready = TERMINATING
        ref = endpoint.get("targetRef") or {}
        pod = f"{ref.get('namespace', '')}/{ref.get('name', '')}" if ref.get("kind") == "Pod" else None
        node = intern(endpoint["nodeName"]) if endpoint.get("nodeName") else None
        for port in obj.get("ports") or []:
            if port.get("port") is None:
                continue
            out.append((intern(port.get("name") or ""), intern(port.get("protocol") or "TCP"),
                        Endpoint(addresses[0], int(port["port"]), node, pod, ready == TERMINATING), ready))  # fmt: skip
    return out


PARSED = "_parsed"  # where the feed's transforms keep an object's parsed form


def _slim(obj: dict, parsed, labels: dict | None = None) -> dict:
    """What the informer's cache keeps of an object for the feed: its identity and
    resourceVersion, and the parsed form the handlers read (client-go's transform,
    used as kube-proxy would to hold less: the raw objects of 1,000 services and
    their slices were 10 MB of an agent)."""
    meta = obj.get("metadata") or {}
    slim = {"name": meta.get("name", ""), "resourceVersion": meta.get("resourceVersion", "")}
    if meta.get("namespace"):
        slim["namespace"] = sys.intern(meta["namespace"])
    if labels:
        slim["labels"] = labels
    return {"metadata": slim, PARSED: parsed}


def slim_service(obj: dict) -> dict:
    return obj if PARSED in obj else _slim(obj, service_state(obj))


def slim_slice(obj: dict) -> dict:
    if PARSED in obj:
        return obj
    service = ((obj.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
    return _slim(obj, slice_endpoints(obj), {SERVICE_NAME_LABEL: service} if service else None)


def node_ready(obj: dict) -> bool:
    """Whether the Node's Ready condition is True (the node lifecycle controller sets
    it Unknown when the node's Lease is not renewed): MetalLB's speakers leave a node
    that is not Ready out of the LoadBalancer owner choice."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


READY = "_ready"  # where slim_node keeps node_ready


def slim_node(obj: dict) -> dict:
    if PARSED in obj:
        return obj
    slim = _slim(obj, node_state(obj))
    slim[READY] = node_ready(obj)
    return slim


class ProxyFeed:
    """kube-proxy's view of Services, EndpointSlices and Nodes.

    node: this node's name. networking: kube-proxy's configuration as the
    state's `networking` spells it (podSubnet = clusterCIDR, serviceSubnet,
    proxyMode). on_change: called (from an informer's thread) after a change
    that can alter the rules."""

    def __init__(self, node: str, networking: dict, on_change: Callable[[], None] = lambda: None):
        self.node = node
        self.networking = dict(networking)
        self.on_change = on_change
        self.lock = threading.Lock()
        self.services: dict[str, ServiceState] = {}
        self.service_objects: dict[str, dict] = {}
        self.slices: dict[str, dict[str, list]] = {}  # service key -> slice name -> slice_endpoints(slice)
        self.nodes: dict[str, NodeState] = {}
        self.not_ready: set[str] = set()  # nodes whose Ready condition is not True
        self.endpoints: dict[str, dict[str, list[Endpoint]]] = {}
        self.dirty: set[str] = set()  # services whose endpoints must be worked out again
        self.state: ClusterState | None = None  # the last snapshot's (None: make a new one)
        self.touched: set[str] = set()  # the services the last snapshot worked out again
        self.changes = 0  # changes recorded (tests and benches wait on it)
        self.changed = threading.Condition(self.lock)

    # ---- handlers (informers' threads) -------------------------------------------
    def _changed(self, services: set[str], structure: bool) -> None:
        """Record a change (self.lock held by the caller)."""
        self.dirty |= services
        if structure:
            self.state = None
        self.changes += 1
        self.changed.notify_all()

    def on_service(self, obj: dict) -> None:
        """A Service added or changed."""
        key = key_of(obj)
        state = slim_service(obj)[PARSED]
        with self.lock:
            old = self.services.get(key)
            self.services[key] = state
            self._changed({key}, structure=old != state)
        self.on_change()

    def on_service_deleted(self, obj: dict) -> None:
        key = key_of(obj)
        with self.lock:
            self.services.pop(key, None)
            self.endpoints.pop(key, None)
            self.dirty.discard(key)
            self._changed(set(), structure=True)
        self.on_change()

    def on_slice(self, obj: dict) -> None:
        """An EndpointSlice added or changed."""
        meta = obj.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not service:
            return  # a slice no service owns: kube-proxy ignores it too
        key = f"{meta.get('namespace', '')}/{service}"
        with self.lock:
            self.slices.setdefault(key, {})[meta.get("name", "")] = slim_slice(obj)[PARSED]
            self._changed({key}, structure=False)
        self.on_change()

    def on_slice_deleted(self, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not service:
            return
        key = f"{meta.get('namespace', '')}/{service}"
        with self.lock:
            slices = self.slices.get(key, {})
            slices.pop(meta.get("name", ""), None)
            if not slices:
                self.slices.pop(key, None)
            self._changed({key}, structure=False)
        self.on_change()

    def on_node(self, obj: dict) -> None:
        slim = slim_node(obj)
        state, ready = slim[PARSED], slim.get(READY, True)
        with self.lock:
            if self.nodes.get(state.name) != state:
                self.nodes[state.name] = state
                self._changed(set(), structure=True)
            if ready == (state.name in self.not_ready):
                (self.not_ready.discard if ready else self.not_ready.add)(state.name)
                self._changed(set(), structure=False)
        self.on_change()

    def on_node_deleted(self, obj: dict) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        with self.lock:
            self.nodes.pop(name, None)
            self.not_ready.discard(name)
            self._changed(set(), structure=True)
        self.on_change()

    def set_networking(self, networking: dict) -> None:
        """kube-proxy's configuration changed (a new proxy mode, clusterCIDR, ...): the next snapshot has it."""
        with self.lock:
            if dict(networking) == self.networking:
                return  # (asked at every sync: a call that changes nothing must not wake another)
            self.networking = dict(networking)
            self._changed(set(), structure=True)
        self.on_change()

    def lost_nodes(self) -> set[str]:
        """The nodes the API calls not Ready."""
        with self.lock:
            return set(self.not_ready)

    # ---- the view -----------------------------------------------------------------
    def snapshot(self) -> tuple[ClusterState, dict[str, dict[str, list[Endpoint]]]]:
        """(state, endpoints) as the proxiers take them, with every change recorded so far.
        Entries of unchanged services are the same objects as last time: do not change them."""
        with self.lock:
            if self.state is None:  # services or nodes changed: a new state (the endpoints of the rest stay)
                self.state = ClusterState(
                    name="", network="", network_subnet="", networking=self.networking,
                    nodes=[self.nodes[name] for name in sorted(self.nodes)], services=dict(self.services),
                )  # fmt: skip
            touched = self.dirty & set(self.services)
            self.endpoints = dict(self.endpoints)
            self.touched = touched
            for key in touched:
                self.endpoints[key] = self._service_endpoints(self.services[key], self.slices.get(key, {}), self.node)
            self.dirty = set()
            return self.state, self.endpoints

    @staticmethod
    def _service_endpoints(service: ServiceState, slices: dict[str, list], node: str) -> dict[str, list[Endpoint]]:
        """{port name: the endpoints `node` may use} of one service, from its slices: the
        ready ones; where none is ready, those serving while they terminate; and where the
        port uses a Local traffic policy, this node's serving terminating ones too (kube-proxy
        falls back to them when this node has no ready one, whatever other nodes have)."""
        by_port: dict[tuple[str, str], dict[str, Endpoint]] = {}
        fallback: dict[tuple[str, str], dict[str, Endpoint]] = {}
        for entries in slices.values():
            for name, protocol, endpoint, ready in entries:
                if ready is True:
                    by_port.setdefault((name, protocol), {}).setdefault(endpoint.address, endpoint)
                elif ready == TERMINATING:
                    fallback.setdefault((name, protocol), {}).setdefault(endpoint.address, endpoint)
        result = {}
        for port in service.ports:
            found = by_port.get((port.name, port.protocol))
            terminating = fallback.get((port.name, port.protocol), {})
            if not found:
                found = terminating
            elif terminating and uses_local_endpoints(service, port):
                mine = {a: e for a, e in terminating.items() if e.node == node and a not in found}
                found = {**found, **mine} if mine else found
            result[port.name] = sorted(found.values(), key=lambda e: _address_order(e.address))
        return result

    def wait_for(self, changes: int, timeout: float) -> bool:
        """Whether at least `changes` changes have been recorded, waiting up to `timeout` seconds."""
        with self.lock:
            return self.changed.wait_for(lambda: self.changes >= changes, timeout)

    # ---- the informers ---------------------------------------------------------------
    def informers(self, client: Client, log: Callable[[str], None] = lambda message: None,
                  nodes: bool = True, **options) -> list[Informer]:  # fmt: skip
        """Informers (not started) that feed this view: Services, EndpointSlices and,
        with `nodes`, Nodes. `options` go to every Informer (page_size, watch_timeout).
        Pages of 100: a list of 1,000 services in pages of 500 left the agent 2.5 MB
        bigger (the heap that parsed them stays fragmented), in pages of 100 it did not."""
        options.setdefault("page_size", LIST_PAGE)
        made = [
            Informer(client, SERVICES_PATH, on_add=self.on_service, on_update=lambda old, new: self.on_service(new),
                     on_delete=self.on_service_deleted, log=log, name="services", transform=slim_service, **options),
            Informer(client, ENDPOINT_SLICES_PATH, on_add=self.on_slice, on_update=lambda old, new: self.on_slice(new),
                     on_delete=self.on_slice_deleted, log=log, name="endpointslices", transform=slim_slice,
                     **options),
        ]  # fmt: skip
        if nodes:
            made.append(Informer(client, NODES_PATH, on_add=self.on_node, on_update=lambda old, new: self.on_node(new),
                                 on_delete=self.on_node_deleted, log=log, name="nodes", transform=slim_node,
                                 **options))  # fmt: skip
        return made
