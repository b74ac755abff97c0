"""Services seen from the data path: endpoints, environment variables, LB owners.

Standard library only: both the controller and the agent in each node use it,
so both agree on what a service's endpoints are.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import NamedTuple

from emu.node.records import ClusterState, PodState, ServicePortState, ServiceState, sha256


@dataclass(frozen=True, slots=True)  # (slots: a 40,000-endpoint lab holds 40,000 of them)
class Endpoint:
    ip: str
    port: int
    node: str | None  # None for an endpoint outside the pod network (kubernetes' API address)
    pod: str | None  # pod key
    # Not ready but serving while it terminates (its EndpointSlice conditions): kube-proxy
    # uses such an endpoint only where no ready one is (categorize_endpoints).
    terminating: bool = False

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


def port_name(service: ServiceState, port: ServicePortState) -> str:
    """kube-proxy's ServicePortName string: namespace/name, plus :port when the port is named."""
    return f"{service.key}:{port.name}" if port.name else service.key


class LabelIndex:
    """Pods by (namespace, label, value), so that finding a selector's pods costs
    what it matches, not the size of the cluster (1,000 services over 2,000 pods
    took 2.5 s by scanning, 20 ms this way)."""

    def __init__(self, pods):
        self.pods = list(pods)
        self.by_label: dict[tuple[str, str, str], list[PodState]] = {}
        for pod in self.pods:
            for key, value in pod.labels.items():
                self.by_label.setdefault((pod.namespace, key, value), []).append(pod)

    def selected(self, service: ServiceState) -> list[PodState]:
        """The pods the service's selector matches (none without a selector)."""
        if not service.selector:
            return []
        candidates = min(
            (self.by_label.get((service.namespace, key, value), []) for key, value in service.selector.items()),
            key=len,
        )
        return [pod for pod in candidates if service.selects(pod)]


def all_endpoints(state: ClusterState, ready: dict[str, bool]) -> dict[str, dict[str, list[Endpoint]]]:
    """{service key: {port name: ready endpoints}} for every service of the state."""
    index = LabelIndex(state.pods.values())
    return {key: service_endpoints(state, service, ready, index) for key, service in state.services.items()}


class EndpointTracker:
    """all_endpoints, kept from one sync to the next as the endpoints controller
    keeps EndpointSlices: worked out in full for a new state, then only for the
    services that select a pod whose readiness changed (a readiness change in a
    1,000-service lab: 60 ms in full, well under 1 ms this way)."""

    def __init__(self):
        self.state: ClusterState | None = None
        self.ready: dict[str, bool] = {}
        self.selected: dict[str, list[PodState]] = {}  # service key -> the pods its selector matches
        self.services_of: dict[str, list[str]] = {}  # pod uid -> keys of the services selecting it
        self.endpoints: dict[str, dict[str, list[Endpoint]]] = {}
        self.touched: set[str] | None = None  # the services the last update worked out again (None: all)

    def update(self, state: ClusterState, ready: dict[str, bool]) -> dict[str, dict[str, list[Endpoint]]]:
        """{service key: {port name: ready endpoints}}, as all_endpoints(state, ready).
        Entries of unchanged services are the same objects as last time: do not change them."""
        if state is not self.state:
            index = LabelIndex(state.pods.values())
            self.selected = {key: index.selected(service) for key, service in state.services.items()}
            self.services_of = {}
            for key, pods in self.selected.items():
                for pod in pods:
                    self.services_of.setdefault(pod.uid, []).append(key)
            touched = set(state.services)
            self.endpoints = {}
            self.touched = None
        else:
            changed = {uid for uid, now in ready.items() if self.ready.get(uid, False) != now}
            changed.update(uid for uid in self.ready if uid not in ready)
            touched = {key for uid in changed for key in self.services_of.get(uid, ())}
            self.endpoints = dict(self.endpoints)
            self.touched = touched
        for key in touched:
            self.endpoints[key] = _endpoints(state, state.services[key], self.selected[key], ready)
        self.state, self.ready = state, dict(ready)
        return self.endpoints


def service_endpoints(
    state: ClusterState, service: ServiceState, ready: dict[str, bool], index: LabelIndex | None = None
) -> dict[str, list[Endpoint]]:
    """{service port name: ready endpoints}, ordered by address as EndpointSlices are.

    A pod counts when it matches the selector, is ready, and has the target port
    (a named targetPort is looked up per pod, as Kubernetes does). Pass an
    index when asking for many services of one state."""
    return _endpoints(state, service, (index or LabelIndex(state.pods.values())).selected(service), ready)


def _endpoints(
    state: ClusterState, service: ServiceState, selected: list[PodState], ready: dict[str, bool]
) -> dict[str, list[Endpoint]]:
    result: dict[str, list[Endpoint]] = {}
    for port in service.ports:
        endpoints: list[Endpoint] = []
        if service.key == "default/kubernetes":
            endpoints = [Endpoint(n.node_ip, int(port.target_port), None, None) for n in control_planes(state)]
        else:
            for pod in selected:
                if not ready.get(pod.uid, False):
                    continue
                target = pod.resolve_port(port.target_port)
                if target is not None:
                    endpoints.append(Endpoint(pod.ip, target, pod.node, pod.key))
        result[port.name] = sorted(endpoints, key=lambda e: _address_order(e.address))
    return result


def _address_order(address: str) -> tuple:
    ip, _, port = address.partition(":")
    return (tuple(int(part) for part in ip.split(".")), int(port))


def control_planes(state: ClusterState):
    planes = [n for n in state.nodes if n.role == "control-plane"]
    return planes or state.nodes[:1]


def load_balancer_owner(
    state: ClusterState, service: ServiceState, endpoints: dict[str, list[Endpoint]], lost: Collection[str] = ()
) -> str:
    """The node that answers for a LoadBalancer address (MetalLB layer 2 style):
    a stable choice by hash among the nodes that may announce it; with Local
    traffic policy only nodes with a ready endpoint may (with none ready anywhere,
    those with a serving terminating one: usable_endpoints). Nodes the hub calls
    NotReady (`lost`) may not, as MetalLB's speakers leave a failed node out,
    unless every node is."""
    candidates = [n.name for n in state.nodes if n.name not in lost] or [n.name for n in state.nodes]
    if service.external_traffic_policy == "Local":
        local = {e.node for eps in endpoints.values() for e in usable_endpoints(eps) if e.node}
        candidates = [n for n in candidates if n in local] or candidates
    return min(candidates, key=lambda node: sha256(f"{node}/{service.key}".encode()).hexdigest())


ZONE_LABEL = "topology.kubernetes.io/zone"
TOPOLOGY_MODE_ANNOTATION = "service.kubernetes.io/topology-mode"


def endpoint_hints(state: ClusterState, service: ServiceState, endpoints: list[Endpoint]) -> dict:
    """{endpoint: (zone hints, node hints)} as the EndpointSlice controller writes them
    (emu's controller does not write hints, so they are worked out here, from the same
    facts): trafficDistribution PreferClose and PreferSameZone hint each endpoint to its
    node's zone, PreferSameNode to its node as well; the topology-mode annotation Auto
    hints each to its zone when every zone with nodes has an endpoint (the controller
    spreads them by the zones' CPUs; emu's nodes are alike, so each zone keeps its own),
    and gives no hints otherwise, as the controller drops them. No zone, no hint."""
    zones = {n.name: n.labels.get(ZONE_LABEL) for n in state.nodes}
    distribution = service.traffic_distribution
    if (service.topology_mode or "").lower() == "auto":
        needed = {zone for zone in zones.values() if zone}
        have = {zones.get(e.node) for e in endpoints}
        if not needed or not needed <= have:
            return {}
        distribution = "PreferSameZone"
    if distribution not in ("PreferClose", "PreferSameZone", "PreferSameNode"):
        return {}
    hints = {}
    for endpoint in endpoints:
        zone = zones.get(endpoint.node)
        node_hint = (endpoint.node,) if distribution == "PreferSameNode" and endpoint.node else ()
        hints[endpoint] = ((zone,) if zone else (), node_hint)
    return hints


def topology_endpoints(state: ClusterState, service: ServiceState, node: str, endpoints: list[Endpoint]):
    """The endpoints `node` sends a service's cluster traffic to, as kube-proxy's topology
    filter picks them from the hints (pkg/proxy/topology.go): those hinted to this node
    when every endpoint has a node hint and one is this node's; else those hinted to its
    zone when every endpoint has a zone hint and one is this zone's; else all of them.
    Give it the ready endpoints: kube-proxy reads only theirs, and narrows only the
    Cluster-policy endpoints this way (categorize_endpoints)."""
    if not endpoints or not (service.traffic_distribution or service.topology_mode):
        return endpoints
    hints = endpoint_hints(state, service, endpoints)
    if not hints:
        return endpoints
    if all(hints.get(e, ((), ()))[1] for e in endpoints):
        mine = [e for e in endpoints if node in hints[e][1]]
        if mine:
            return mine
    zone = next((n.labels.get(ZONE_LABEL) for n in state.nodes if n.name == node), None)
    if zone and all(hints.get(e, ((), ()))[0] for e in endpoints):
        mine = [e for e in endpoints if zone in hints[e][0]]
        if mine:
            return mine
    return endpoints


def externally_accessible(service: ServiceState, port: ServicePortState) -> bool:
    """kube-proxy's ExternallyAccessible for a service port: a node port, a LoadBalancer
    address or an external IP."""
    node_port = port.node_port and service.type in ("NodePort", "LoadBalancer")
    return bool(node_port or service.load_balancer_vips or service.external_ips)


def uses_cluster_endpoints(service: ServiceState, port: ServicePortState) -> bool:
    """kube-proxy's UsesClusterEndpoints: internalTrafficPolicy Cluster, or any external
    destination (externalTrafficPolicy Local still short-circuits pods' and the node's own
    traffic to the cluster's endpoints)."""
    return service.internal_traffic_policy != "Local" or externally_accessible(service, port)


def uses_local_endpoints(service: ServiceState, port: ServicePortState) -> bool:
    """kube-proxy's UsesLocalEndpoints: internalTrafficPolicy Local, or externalTrafficPolicy
    Local (which counts on a NodePort or LoadBalancer service, or one with external IPs)
    where the port has an external destination."""
    external_local = service.external_traffic_policy == "Local" and (
        service.type in ("NodePort", "LoadBalancer") or bool(service.external_ips))
    return service.internal_traffic_policy == "Local" or (external_local and externally_accessible(service, port))


class Categories(NamedTuple):
    """A service port's endpoints as one node's proxier uses them (kube-proxy's CategorizeEndpoints)."""

    cluster: list[Endpoint]  # for Cluster traffic policy, topology applied ([]: the port never uses it)
    local: list[Endpoint]  # for Local traffic policy: this node's ([]: never used, or none here)
    reachable: list[Endpoint]  # both together: every endpoint this node may send the port's traffic to
    any: bool  # whether the port has a usable endpoint anywhere (reachable from here or not)


NO_CATEGORIES = Categories([], [], [], False)


def categorize_endpoints(
    state: ClusterState, service: ServiceState, port: ServicePortState, node: str, endpoints: list[Endpoint]
) -> Categories:
    """The endpoints `node` uses for a service port, from those it was given (ready ones and
    any serving while they terminate, ordered by address), as kube-proxy's CategorizeEndpoints
    (pkg/proxy/topology.go) sorts them:
    - cluster: the ready endpoints, narrowed by the topology hints (topology_endpoints; only
      the ready endpoints' hints count); with no ready endpoint anywhere, every serving
      terminating one, whatever the topology;
    - local: this node's ready endpoints; with none ready here, this node's serving
      terminating ones, even when another node has a ready one (the fallback is the node's
      own, apart from the cluster's);
    - reachable: the two together, in the order given;
    - any: whether any endpoint is usable anywhere (a REJECT when not, a DROP for a Local
      policy without local endpoints when so)."""
    if not endpoints:
        return NO_CATEGORIES
    if (service.internal_traffic_policy != "Local" and service.external_traffic_policy != "Local"
            and not (service.traffic_distribution or service.topology_mode)):  # fmt: skip
        # (most services: the Cluster policy alone, no topology, every endpoint ready)
        if not any(e.terminating for e in endpoints):
            return Categories(endpoints, [], endpoints, True)
    cluster: list[Endpoint] = []
    local: list[Endpoint] = []
    if uses_cluster_endpoints(service, port):
        ready = [e for e in endpoints if not e.terminating]
        if len(ready) == len(endpoints):
            ready = endpoints
        if ready and (service.traffic_distribution or service.topology_mode):
            cluster = topology_endpoints(state, service, node, ready)
        else:
            cluster = ready or endpoints  # no ready one: all of them serve while they terminate
    if uses_local_endpoints(service, port):
        mine = [e for e in endpoints if e.node == node]
        local = [e for e in mine if not e.terminating] or mine
    if not local:
        reachable = cluster
    elif not cluster:
        reachable = local
    else:
        chosen = {id(e) for e in cluster}
        if all(id(e) in chosen for e in local):
            reachable = cluster
        else:
            chosen.update(id(e) for e in local)
            reachable = [e for e in endpoints if id(e) in chosen]
    return Categories(cluster, local, reachable, True)


def usable_endpoints(endpoints: list[Endpoint]) -> list[Endpoint]:
    """A port's ready endpoints, or where none is ready those serving while they terminate:
    what every node agrees a port's endpoints are (a node's list also holds its own
    terminating ones where a Local traffic policy may use them)."""
    ready = [e for e in endpoints if not e.terminating]
    return ready or list(endpoints)


def health_check_node_ports(state: ClusterState) -> dict[str, int]:
    """{service key: healthCheckNodePort} of every service that has one (kube-proxy's
    ServicePortMap.HealthCheckNodePorts)."""
    return {key: s.health_check_node_port for key, s in state.services.items() if s.health_check_node_port}


def local_ready_endpoints(
    state: ClusterState, node: str, endpoints: dict[str, dict[str, list[Endpoint]]]
) -> dict[str, int]:
    """{service key: its ready endpoints on `node`}, for the services with a health check
    node port, counted by IP as kube-proxy's EndpointsMap.LocalReadyEndpoints counts them
    (a pod behind two of the service's ports is one endpoint; one that terminates is not
    counted, though it may still serve: the load balancer drains the node)."""
    counts = {}
    for key in health_check_node_ports(state):
        ips = {e.ip for eps in endpoints.get(key, {}).values() for e in eps if e.node == node and not e.terminating}
        if ips:
            counts[key] = len(ips)
    return counts


def env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def service_env(service: ServiceState) -> dict[str, str]:
    """The variables the kubelet gives a pod for one service (Docker-link style included)."""
    if not service.proxied or not service.ports:
        return {}
    prefix = env_name(service.name)
    ip = service.cluster_ip
    first = service.ports[0]
    env = {
        f"{prefix}_SERVICE_HOST": ip,
        f"{prefix}_SERVICE_PORT": str(first.port),
        f"{prefix}_PORT": f"{first.protocol.lower()}://{ip}:{first.port}",
    }
    for port in service.ports:
        if port.name:
            env[f"{prefix}_SERVICE_PORT_{env_name(port.name)}"] = str(port.port)
        link = f"{prefix}_PORT_{port.port}_{port.protocol}"
        env[link] = f"{port.protocol.lower()}://{ip}:{port.port}"
        env[f"{link}_PROTO"] = port.protocol.lower()
        env[f"{link}_PORT"] = str(port.port)
        env[f"{link}_ADDR"] = ip
    return env


def pod_service_env(services: dict[str, ServiceState], pod: PodState, enable_service_links: bool) -> dict[str, str]:
    """Variables for a pod created now: its namespace's services (unless
    enableServiceLinks is false) and always the kubernetes service."""
    env: dict[str, str] = {}
    if enable_service_links:
        for service in sorted(services.values(), key=lambda s: s.name):
            if service.namespace == pod.namespace:
                env.update(service_env(service))
    kubernetes = services.get("default/kubernetes")
    if kubernetes is not None:
        env.update(service_env(kubernetes))
    return env
