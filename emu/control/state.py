"""Cluster state and allocation (IPAM): which node runs which pod at which IP.

`plan_cluster` turns a declared Topology (plus the state of the running
cluster, if any) into the new ClusterState. It is pure and deterministic: the
same inputs give the same state, so plans render byte-identically and a second
`up` of the same file changes nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass

from emu.errors import EmuError
from emu.node.records import (
    KUBE_DNS_INDEX,
    KUBERNETES_INDEX,
    ClusterState,
    HostLocalIPAM,
    NodeState,
    PodState,
    ServicePortState,
    ServiceState,
    well_known_ip,
)
from emu.node.services import pod_service_env
from emu.api.topology.model import ConfigMap, Deployment, PodTemplate, Service, Topology
from emu.api.topology.names import (
    container_dump,
    daemonset_pod_name,
    deployment_pod_names,
    revision_hash,
    statefulset_pod_names,
    template_hash,
    template_spec,
)
from emu.api.topology.scheduling import candidate_nodes
from emu.api.topology.validate import NODE_CIDR_PREFIX


def container_name(cluster: str, node: str) -> str:
    return f"{cluster}-{node}"


def place_nodes(topology: Topology) -> dict[str, str]:
    """{node: host}: a node's own host: where it names one, else the host with
    the fewest nodes so far (ties: the first listed), so N nodes over H hosts
    differ by at most one per host beyond what was pinned. No hosts: every
    node on "" (this machine's engine)."""
    if not topology.hosts:
        pinned = [f"{node.name} (host: {node.host})" for node in topology.nodes if node.host]
        if pinned:
            raise EmuError(
                f"nodes name hosts but the lab has none: {', '.join(pinned)}; add a hosts: list to the topology "
                "or pass an inventory with `emu up --hosts FILE`, or remove host: to run on this machine"
            )
        return {node.name: "" for node in topology.nodes}
    order = [host.name for host in topology.hosts]
    load = dict.fromkeys(order, 0)
    for node in topology.nodes:
        if node.host:
            load[node.host] += 1
    placement = {}
    for node in topology.nodes:
        host = node.host or min(order, key=lambda h: (load[h], order.index(h)))
        if not node.host:
            load[host] += 1
        placement[node.name] = host
    return placement


def node_ips(network_subnet: str, count: int) -> list[str]:
    """Node addresses on the cluster network: .2, .3, ... (.1 is Docker's gateway)."""
    network = ipaddress.IPv4Network(network_subnet)
    if count + 2 > network.num_addresses - 1:
        raise EmuError(f"the cluster network {network} is too small for {count} nodes")
    return [str(network.network_address + 2 + i) for i in range(count)]


def _pod_spec_hash(template: PodTemplate) -> str:
    # Everything a running pod cannot change (pods are immutable but for labels).
    spec = template_spec(template, exclude={"labels"})
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# Where the cluster DNS server takes its zone from: "api" (it watches the API server as
# CoreDNS's kubernetes plugin does, emu.node.dns.kube) or "snapshot" (the file its node's
# agent writes). EMU_DNS_SOURCE chooses while both exist.
DNS_SOURCE = "api"


def dns_source() -> str:
    source = os.environ.get("EMU_DNS_SOURCE") or DNS_SOURCE
    if source not in ("api", "snapshot"):
        raise EmuError(f"EMU_DNS_SOURCE={source!r}: expected api or snapshot")
    return source


def coredns_args(topology: Topology) -> list[str]:
    """The DNS server's settings, as kubeadm's Corefile gives them to CoreDNS (none
    with the snapshot, which carries them)."""
    if dns_source() != "api":
        return []
    networking, dns = topology.networking, topology.dns
    args = ["--source", "api", "--zone", networking.dns_domain, "--ttl", str(dns.ttl),
            "--service-cidr", networking.service_subnet, "--pod-cidr", networking.pod_subnet]  # fmt: skip
    for upstream in dns.upstreams:
        args += ["--upstream", upstream]
    return args


def with_system_objects(topology: Topology) -> Topology:
    """The topology plus what every cluster runs: the cluster DNS (deployment
    kube-system/coredns behind service kube-system/kube-dns at the tenth
    address of serviceSubnet), as kubeadm sets it up."""
    if not topology.dns.enabled:
        return topology
    args = coredns_args(topology)
    planes = [n.name for n in topology.nodes if n.role == "control-plane"] or [topology.nodes[0].name]
    coredns = Deployment.model_validate(
        {
            "name": "coredns",
            "namespace": "kube-system",
            "replicas": topology.dns.replicas,
            "template": {
                "labels": {"k8s-app": "kube-dns"},
                "node": planes[0],
                "dnsPolicy": "Default",
                "containers": [
                    {
                        "name": "coredns",
                        "workload": "coredns",
                        **({"args": args} if args else {}),
                        "ports": [
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
                        ],
                        # Probed often so that a new cluster's DNS is ready at once.
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 0.2},
                    }
                ],
            },
        }
    )
    kube_dns = Service.model_validate(
        {
            "name": "kube-dns",
            "namespace": "kube-system",
            "selector": {"k8s-app": "kube-dns"},
            "clusterIP": well_known_ip(topology.networking.service_subnet, KUBE_DNS_INDEX),
            "ports": [
                {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "targetPort": 53, "protocol": "TCP"},
            ],
        }
    )
    return topology.model_copy(
        update={"deployments": [coredns, *topology.deployments], "services": [kube_dns, *topology.services]}
    )


def ingress_controller_node(topology: Topology) -> str | None:
    """The node of emu's ingress-nginx controller, or None when it is off (default: on with ingresses)."""
    controller = topology.ingress_controller
    if not (controller.enabled if controller.enabled is not None else bool(topology.ingresses)):
        return None
    ready = [n.name for n in topology.nodes if n.labels.get("ingress-ready") == "true"]
    planes = [n.name for n in topology.nodes if n.role == "control-plane"]
    return controller.node or (ready + planes + [topology.nodes[0].name])[0]


def with_ingress_controller(topology: Topology) -> Topology:
    """The topology plus emu's ingress-nginx (deployment and service in namespace
    ingress-nginx), as kind's users install it, when the controller is on."""
    from emu.node import ingress

    node = ingress_controller_node(topology)
    if node is None:
        return topology
    deployment = Deployment.model_validate(ingress.controller_deployment(node))
    service = Service.model_validate(ingress.controller_service(topology.ingress_controller.service_type))
    return topology.model_copy(
        update={"deployments": [*topology.deployments, deployment], "services": [*topology.services, service]}
    )


@dataclass
class DeclaredPod:
    """A pod the topology declares, directly or through a controller."""

    namespace: str
    name: str
    template: PodTemplate
    labels: dict[str, str]
    owner: str | None = None  # "Kind/name" of its controller
    node: str | None = None  # where a DaemonSet puts it
    hostname: str | None = None
    subdomain: str | None = None


def _declared_pods(topology: Topology) -> list[DeclaredPod]:
    """Every pod the topology declares: bare pods, and the pods of deployments,
    StatefulSets (<name>-N, hostname <name>-N, subdomain serviceName) and
    DaemonSets (one on every node that fits)."""
    pods = [DeclaredPod(p.namespace, p.name, p, dict(p.labels), None, None, p.hostname, p.subdomain) for p in topology.pods]
    for deployment in topology.deployments:
        pod_hash = template_hash(deployment.template)
        labels = {**deployment.template.labels, "pod-template-hash": pod_hash}
        for name in deployment_pod_names(deployment):
            template = deployment.template
            pods.append(DeclaredPod(deployment.namespace, name, template, labels, f"Deployment/{deployment.name}",
                                    None, template.hostname, template.subdomain))  # fmt: skip
    for statefulset in topology.stateful_sets:
        revision = f"{statefulset.name}-{revision_hash(statefulset.template)}"
        for ordinal, name in enumerate(statefulset_pod_names(statefulset)):
            labels = {
                **statefulset.template.labels,
                "apps.kubernetes.io/pod-index": str(ordinal),
                "controller-revision-hash": revision,
                "statefulset.kubernetes.io/pod-name": name,
            }
            subdomain = statefulset.service_name or statefulset.template.subdomain
            pods.append(DeclaredPod(statefulset.namespace, name, statefulset.template, labels,
                                    f"StatefulSet/{statefulset.name}", None, name, subdomain))  # fmt: skip
    nodes = [(n.name, n.role, dict(n.labels)) for n in topology.nodes]
    for daemonset in topology.daemon_sets:
        labels = {
            **daemonset.template.labels,
            "controller-revision-hash": revision_hash(daemonset.template),
            "pod-template-generation": "1",
        }
        for node in candidate_nodes(daemonset.template, nodes):
            template = daemonset.template
            pods.append(DeclaredPod(daemonset.namespace, daemonset_pod_name(daemonset, node), template, labels,
                                    f"DaemonSet/{daemonset.name}", node, template.hostname, template.subdomain))  # fmt: skip
    return pods


ENV_NAME_PATTERN = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_REFERENCE = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values, command and args: a defined
    variable's value, an undefined reference left as written, $$ for a $."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


def configure_pod(pod: PodState, template: PodTemplate, config_maps: dict[tuple[str, str], ConfigMap], node: NodeState,
                  services: dict[str, ServiceState]) -> None:  # fmt: skip
    """Resolve what a pod takes from ConfigMaps and from itself when it is created,
    as the kubelet does: each container's env (envFrom, then env; valueFrom
    configMapKeyRef and fieldRef; $(VAR) references, the Services' variables
    among them), $(VAR) in command and args, and the files of its volumes."""
    service_env: dict[str, str] = {}
    if any("$(" in text for c in template.containers for text in [*(v.value or "" for v in c.env),
                                                                   *(c.command or []), *(c.args or [])]):
        # Made only where a reference may name one: 7,000 of them in a namespace of 1,000 Services.
        service_env = pod_service_env(services, pod, pod.enable_service_links)
    fields = {
        "metadata.name": pod.name, "metadata.namespace": pod.namespace, "spec.nodeName": pod.node,
        "spec.serviceAccountName": "default", "status.hostIP": node.node_ip, "status.podIP": pod.ip,
    }  # fmt: skip

    def config_map(name: str) -> dict[str, str] | None:
        found = config_maps.get((pod.namespace, name))
        return dict(found.data) if found is not None else None

    for container, declared in zip(pod.containers, template.containers):
        env: dict[str, str] = {}
        for source in declared.env_from:
            data = config_map(source.config_map_ref.name) or {}
            for key, value in data.items():
                if ENV_NAME_PATTERN.match(source.prefix + key):
                    env[source.prefix + key] = value
        for variable in declared.env:
            if variable.value_from is None:
                env[variable.name] = expand(variable.value, {**service_env, **env})
            elif variable.value_from.field_ref is not None:
                env[variable.name] = fields[variable.value_from.field_ref.field_path]
            else:
                selector = variable.value_from.config_map_key_ref
                value = (config_map(selector.name) or {}).get(selector.key)
                if value is not None:  # an optional key that is missing: no variable
                    env[variable.name] = value
        container.pop("envFrom", None)
        if env or "env" in container:
            container["env"] = [{"name": name, "value": value} for name, value in env.items()]
        every = {**service_env, **env}
        if container.get("command"):
            container["command"] = [expand(part, every) for part in container["command"]]
        if container.get("args"):
            container["args"] = [expand(part, every) for part in container["args"]]
    for volume in template.volumes:
        files: dict[str, str] = {}
        if volume.config_map is not None:
            data = config_map(volume.config_map.name) or {}
            if volume.config_map.items:
                files = {item.path: data[item.key] for item in volume.config_map.items if item.key in data}
            else:
                files = data
        pod.volumes[volume.name] = files


def plan_cluster(
    topology: Topology,
    network: str,
    network_subnet: str,
    previous: ClusterState | None = None,
    node_image: str = "",
    mtu: int = 1500,
    reserved: tuple[set[str], set[int], dict[str, str]] = (set(), set(), {}),
) -> ClusterState:
    """The desired cluster state for a topology, keeping what `previous` already runs;
    `reserved`: cluster IPs, node ports and LoadBalancer addresses ({address: "ns/name"})
    that Services made through the API hold."""
    networking = topology.networking.model_dump(mode="json", by_alias=True)
    for option in ("masqueradeAll", "clusterCIDR", "nodePortAddresses", "masqueradeBit"):  # kube-proxy's: only when given,
        if networking.get(option) is None:  # so a state from before them compares equal
            networking.pop(option, None)
    if previous is not None:
        _check_compatible(topology, networking, previous)
        nodes = previous.nodes
    else:
        pod_subnet = ipaddress.IPv4Network(topology.networking.pod_subnet)
        cidrs = pod_subnet.subnets(new_prefix=NODE_CIDR_PREFIX)
        addresses = node_ips(network_subnet, len(topology.nodes))
        placement = place_nodes(topology)
        nodes = [
            NodeState(
                name=node.name,
                role=node.role,
                labels=dict(node.labels),
                pod_cidr=str(next(cidrs)),
                node_ip=addresses[i],
                container=container_name(topology.name, node.name),
                host=placement[node.name],
            )
            for i, node in enumerate(topology.nodes)
        ]
    state = ClusterState(
        name=topology.name,
        network=network,
        network_subnet=network_subnet,
        networking=networking,
        nodes=nodes,
        last_pod_ip=dict(previous.last_pod_ip) if previous else {},
        topology=topology.model_dump(mode="json", by_alias=True, exclude_defaults=True),
        node_image=node_image or (previous.node_image if previous else ""),
        mtu=previous.mtu if previous else mtu,
        api_endpoint=previous.api_endpoint if previous else "",
    )
    state.load_balancer_pool = load_balancer_pool(topology, network_subnet)
    effective = with_ingress_controller(with_system_objects(topology))
    state.services = plan_services(effective, state, previous, reserved)
    old_pods = previous.pods if previous else {}
    declared_pods = _declared_pods(effective)

    # Pods that still match their declaration keep their node and IP.
    fresh = []
    for declared in declared_pods:
        key = f"{declared.namespace}/{declared.name}"
        spec_hash = _pod_spec_hash(declared.template)
        old = old_pods.get(key)
        if old is not None and old.spec_hash == spec_hash and (declared.node is None or declared.node == old.node):
            state.pods[key] = PodState(**{**asdict(old), "labels": declared.labels, "owner": declared.owner})
        else:
            fresh.append((declared, spec_hash))

    used = {node.name: {p.ip for p in state.pods.values() if p.node == node.name} for node in nodes}
    ipam = {n.name: HostLocalIPAM(n, used[n.name], state.last_pod_ip.get(n.name)) for n in nodes}
    load = {node.name: len(used[node.name]) for node in nodes}
    order = [n.name for n in nodes]
    node_info = [(n.name, n.role, dict(n.labels)) for n in nodes]
    config_maps = {(c.namespace, c.name): c for c in effective.config_maps}
    for declared, spec_hash in fresh:
        template = declared.template
        # The scheduler's spreading, simplified: the least loaded node the pod fits, first by order.
        candidates = [declared.node] if declared.node else candidate_nodes(template, node_info)
        if not candidates:
            raise EmuError(f"pod {declared.namespace}/{declared.name}: no node fits its nodeSelector and tolerations")
        node_name = min(candidates, key=lambda n: (load[n], order.index(n)))
        load[node_name] += 1
        ip = ipam[node_name].allocate()
        pod = PodState(
            namespace=declared.namespace,
            name=declared.name,
            node=node_name,
            ip=ip,
            labels=declared.labels,
            containers=[container_dump(c) for c in template.containers],
            spec_hash=spec_hash,
            owner=declared.owner,
            hostname=declared.hostname,
            subdomain=declared.subdomain,
            dns_policy=template.dns_policy,
            restart_policy=template.restart_policy,
            dns_config=template.dns_config.model_dump(mode="json", by_alias=True) if template.dns_config else None,
            termination_grace_seconds=template.termination_grace_period_seconds,
        )
        pod.enable_service_links = template.enable_service_links
        configure_pod(pod, template, config_maps, state.node(node_name), state.services)
        state.pods[pod.key] = pod
    state.last_pod_ip = {name: allocator.last for name, allocator in ipam.items() if allocator.last}
    state.namespaces = namespace_labels(effective)
    state.ingresses = [i.model_dump(mode="json", by_alias=True) for i in effective.ingresses]
    state.secrets = {f"{s.namespace}/{s.name}": dict(s.string_data) for s in effective.secrets}
    state.network_policies = [
        {**p.model_dump(mode="json", by_alias=True), "policyTypes": p.types} for p in effective.network_policies
    ]
    return state


def port_mappings(state: ClusterState, node: str) -> list[dict]:
    """A node's extraPortMappings as declared ({containerPort, hostPort, listenAddress?, protocol?})."""
    for declared in state.topology.get("nodes", []):
        if declared.get("name") == node:
            return list(declared.get("extraPortMappings", []))
    return []


def _mapping_key(mapping: dict) -> tuple:
    return (mapping["containerPort"], mapping["hostPort"], mapping.get("listenAddress", "0.0.0.0"),
            mapping.get("protocol", "TCP"))  # fmt: skip


NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def namespace_labels(topology: Topology) -> dict[str, dict[str, str]]:
    """Every namespace the topology uses, with its labels and kubernetes.io/metadata.name, as the API server sets it."""
    names = {"default", "kube-system"}
    names |= {p.namespace for p in topology.pods} | {d.namespace for d in topology.deployments}
    names |= {s.namespace for s in topology.services} | {p.namespace for p in topology.network_policies}
    names |= {i.namespace for i in topology.ingresses}
    declared = {n.name: dict(n.labels) for n in topology.namespaces}
    return {name: {**declared.get(name, {}), NAMESPACE_NAME_LABEL: name} for name in sorted(names | set(declared))}


KUBERNETES_SERVICE = "default/kubernetes"


def static_band(subnet: ipaddress.IPv4Network) -> int:
    """Kubernetes keeps the lower part of the service range for fixed addresses
    (min(max(16, size/16), 256)) and allocates dynamic ones above it."""
    return min(max(16, subnet.num_addresses // 16), 256)


def _stable_offset(key: str, size: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % size


def load_balancer_pool(topology: Topology, network_subnet: str) -> list[str]:
    """[first, last] LoadBalancer address on the cluster network."""
    network = ipaddress.IPv4Network(network_subnet)
    if topology.networking.load_balancer_pool:
        first, _, last = topology.networking.load_balancer_pool.partition("-")
        return [first.strip(), last.strip()]
    broadcast = network.broadcast_address
    return [str(broadcast - 32), str(broadcast - 1)]


def _pool_addresses(pool: list[str]) -> list[str]:
    first, last = ipaddress.IPv4Address(pool[0]), ipaddress.IPv4Address(pool[1])
    return [str(first + i) for i in range(int(last) - int(first) + 1)]


def _kubernetes_service(subnet: ipaddress.IPv4Network) -> ServiceState:
    # The API server's service: the first address, https 443 -> the control plane's 6443.
    return ServiceState(
        namespace="default",
        name="kubernetes",
        type="ClusterIP",
        cluster_ip=str(subnet.network_address + KUBERNETES_INDEX),
        ports=[ServicePortState(name="https", port=443, protocol="TCP", target_port=6443)],
    )


def plan_services(topology: Topology, state: ClusterState, previous: ClusterState | None,
                  reserved: tuple[set[str], set[int], dict[str, str]] = (set(), set(), {}),
                  ) -> dict[str, ServiceState]:  # fmt: skip
    """Services with their addresses and node ports: kept from `previous` where
    the service still asks for them, fixed where declared, else allocated around
    those `reserved` (the cluster IPs, node ports and LoadBalancer addresses of
    Services made through the API; a declared loadBalancerIP one of them holds is refused)."""
    subnet = ipaddress.IPv4Network(topology.networking.service_subnet)
    old = previous.services if previous else {}
    services = {KUBERNETES_SERVICE: _kubernetes_service(subnet)}
    used_ips = {services[KUBERNETES_SERVICE].cluster_ip, *reserved[0]}
    used_ips |= {s.cluster_ip for s in topology.services if s.cluster_ip and s.cluster_ip != "None"}
    used_node_ports = {p.node_port for s in topology.services for p in s.ports if p.node_port} | set(reserved[1])
    used_node_ports |= {s.health_check_node_port for s in topology.services if s.health_check_node_port}
    pool = _pool_addresses(state.load_balancer_pool)
    theirs = reserved[2] if len(reserved) > 2 else {}
    used_lb = {s.load_balancer_ip for s in topology.services if s.load_balancer_ip} | set(theirs)

    def keep(key: str, attribute: str, used: set, wanted_type: tuple[str, ...], service: Service):
        previous_service = old.get(key)
        if previous_service is None or previous_service.type not in wanted_type or service.type not in wanted_type:
            return None
        value = getattr(previous_service, attribute)
        return value if value and value != "None" and value not in used else None

    for service in sorted(topology.services, key=lambda s: (s.namespace, s.name)):
        key = f"{service.namespace}/{service.name}"
        if service.type == "ExternalName":
            cluster_ip = ""
        elif service.cluster_ip:
            cluster_ip = service.cluster_ip
        else:
            cluster_ip = keep(key, "cluster_ip", used_ips, ("ClusterIP", "NodePort", "LoadBalancer"), service)
            if cluster_ip is None:
                cluster_ip = _allocate_ip(subnet, key, used_ips)
            used_ips.add(cluster_ip)
        old_ports = {(p.port, p.protocol): p.node_port for p in old[key].ports} if key in old else {}
        ports = []
        for index, port in enumerate(service.ports):
            node_port = None
            if service.type in ("NodePort", "LoadBalancer"):
                node_port = port.node_port
                if node_port is None:
                    kept = old_ports.get((port.port, port.protocol))
                    node_port = kept if kept and kept not in used_node_ports else None
                if node_port is None:
                    node_port = _allocate_node_port(f"{key}:{port.name or index}", used_node_ports)
                used_node_ports.add(node_port)
            ports.append(
                ServicePortState(
                    name=port.name or "",
                    port=port.port,
                    protocol=port.protocol,
                    target_port=port.target_port if port.target_port is not None else port.port,
                    node_port=node_port,
                )
            )
        # Kubernetes' NeedsHealthCheck: a LoadBalancer with externalTrafficPolicy Local gets a
        # node port of its own from the same range (declared, kept, else allocated).
        health_port = None
        if service.type == "LoadBalancer" and service.external_traffic_policy == "Local":
            health_port = service.health_check_node_port
            if health_port is None and old.get(key) and old[key].external_traffic_policy == "Local":
                health_port = keep(key, "health_check_node_port", used_node_ports, ("LoadBalancer",), service)
            if health_port is None:
                health_port = _allocate_node_port(f"{key}:healthCheckNodePort", used_node_ports)
            used_node_ports.add(health_port)
        lb_ip = None
        if service.type == "LoadBalancer":
            lb_ip = service.load_balancer_ip or keep(key, "load_balancer_ip", used_lb, ("LoadBalancer",), service)
            if lb_ip is None:
                lb_ip = next((ip for ip in pool if ip not in used_lb), None)
                if lb_ip is None:
                    raise EmuError(
                        f"service {key}: the LoadBalancer pool {state.load_balancer_pool[0]}-"
                        f"{state.load_balancer_pool[1]} has no free address; widen networking.loadBalancerPool"
                    )
            elif lb_ip not in pool:
                raise EmuError(
                    f"service {key}: loadBalancerIP {lb_ip} is not in the pool "
                    f"{state.load_balancer_pool[0]}-{state.load_balancer_pool[1]} on the cluster network"
                )
            elif lb_ip in theirs:
                raise EmuError(
                    f"service {key}: loadBalancerIP {lb_ip} is held by service {theirs[lb_ip]}, made through the "
                    f"API (kubectl); delete that one with kubectl, or declare another address of the pool"
                )
            used_lb.add(lb_ip)
        affinity = None
        if service.session_affinity == "ClientIP":
            config = service.session_affinity_config
            affinity = config.client_ip.timeout_seconds if config else 10800
        services[key] = ServiceState(
            namespace=service.namespace,
            name=service.name,
            type=service.type,
            cluster_ip=cluster_ip,
            ports=ports,
            selector=dict(service.selector) if service.selector else None,
            external_name=service.external_name,
            affinity_timeout=affinity,
            external_traffic_policy=service.external_traffic_policy,
            internal_traffic_policy=service.internal_traffic_policy,
            load_balancer_ip=lb_ip,
            external_ips=list(service.external_ips),
            load_balancer_source_ranges=[
                str(ipaddress.IPv4Network(cidr.strip(), strict=False)) for cidr in service.load_balancer_source_ranges
            ],
            health_check_node_port=health_port,
            traffic_distribution=service.traffic_distribution,
        )
    return services


def _allocate_ip(subnet: ipaddress.IPv4Network, key: str, used: set[str]) -> str:
    """A dynamic service IP: a stable hash of the service's name, probing upward
    through the range above the static band."""
    start = static_band(subnet)
    size = subnet.num_addresses - 1 - start  # the broadcast address is not used
    offset = _stable_offset(key, size)
    for step in range(size):
        candidate = str(subnet.network_address + start + (offset + step) % size)
        if candidate not in used:
            return candidate
    raise EmuError(f"serviceSubnet {subnet} is full; use a larger one")


NODE_PORT_RANGE = range(30000, 32768)


def _allocate_node_port(key: str, used: set[int]) -> int:
    size = len(NODE_PORT_RANGE)
    offset = _stable_offset(key, size)
    for step in range(size):
        candidate = NODE_PORT_RANGE.start + (offset + step) % size
        if candidate not in used:
            return candidate
    raise EmuError("every node port (30000-32767) is taken")


def _check_compatible(topology: Topology, networking: dict, previous: ClusterState) -> None:
    declared = [(n.name, n.role) for n in topology.nodes]
    running = [(n.name, n.role) for n in previous.nodes]
    if declared != running:
        raise EmuError(
            f"the nodes of cluster '{previous.name}' are {running} but the topology declares {declared}; "
            "emu changes pods of a running cluster, not its nodes: run `emu down` and `emu up` to rebuild it"
        )
    declared_ports = {
        n.name: n.model_dump(mode="json", by_alias=True).get("extraPortMappings", []) for n in topology.nodes
    }
    running_ports = {n.name: port_mappings(previous, n.name) for n in topology.nodes}
    changed = [name for name in declared_ports if [_mapping_key(m) for m in declared_ports[name]]
               != [_mapping_key(m) for m in running_ports[name]]]  # fmt: skip
    if changed:
        raise EmuError(
            f"the extraPortMappings of node(s) {', '.join(changed)} differ from the running cluster "
            f"'{previous.name}'; Docker publishes ports only when a container is made: run `emu down` and `emu up`"
        )
    placement = place_nodes(topology)
    moved = [f"{n.name} ({n.host or 'this machine'} -> {placement[n.name] or 'this machine'})"
             for n in previous.nodes if placement.get(n.name) != n.host]  # fmt: skip
    if moved:
        raise EmuError(
            f"the topology puts nodes of the running cluster '{previous.name}' on other hosts: {', '.join(moved)}; "
            "emu does not move running nodes: run `emu down` and `emu up` to rebuild it there"
        )
    if networking != previous.networking:
        raise EmuError(
            f"the networking section differs from the running cluster '{previous.name}' "
            f"({previous.networking}); run `emu down` and `emu up` to change the address plan"
        )


def object_keys(state: ClusterState) -> list[str]:
    """The objects whose creation time `emu get` shows: "Kind/namespace/name"
    (a pod by its uid), those of the declared topology and the system's."""
    keys = [f"Pod/{pod.uid}" for pod in state.pods.values()]
    keys += [f"Service/{key}" for key in state.services]
    topology = state.topology
    for list_key, kind in (("deployments", "Deployment"), ("statefulSets", "StatefulSet"),
                           ("daemonSets", "DaemonSet"), ("configMaps", "ConfigMap")):  # fmt: skip
        keys += [f"{kind}/{item.get('namespace', 'default')}/{item['name']}" for item in topology.get(list_key, [])]
    keys += [f"Deployment/{p.namespace}/{p.owner.split('/', 1)[1]}" for p in state.pods.values()
             if p.owner and p.owner.startswith("Deployment/")]  # fmt: skip
    namespaces = {p.namespace for p in state.pods.values()} | {s.namespace for s in state.services.values()}
    namespaces |= {item["name"] for item in topology.get("namespaces", [])}
    namespaces |= {"default", "kube-node-lease", "kube-public", "kube-system"}
    keys += [f"Namespace/{name}" for name in namespaces]
    keys += [f"Node/{node.name}" for node in state.nodes]
    return sorted(set(keys))


def stamp_created(state: ClusterState, previous: ClusterState | None, now: float) -> None:
    """Give every object of the state its creation time: kept from `previous`
    for the objects it had, `now` for new ones."""
    import datetime

    stamp = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    before = previous.created if previous else {}
    state.created = {key: before.get(key, stamp) for key in object_keys(state)}


def ordered_stages(previous: ClusterState | None, desired: ClusterState) -> list[tuple[ClusterState, list[str]]]:
    """The steps from `previous` to `desired` when StatefulSets with
    podManagementPolicy OrderedReady gain pods: each step starts the next new
    pod of each such set (by ordinal), as the StatefulSet controller starts pod
    N+1 only once pod N is running and ready. (state, uids of the pods that must
    be ready before the next step) each; one step, with nothing to wait for,
    when nothing is ordered."""
    topology = desired.topology
    ordered = {
        (item.get("namespace", "default"), item["name"])
        for item in topology.get("statefulSets", [])
        if item.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
    }
    old = previous.pods if previous else {}
    waves: dict[str, int] = {}  # pod key -> the step it starts in
    by_set: dict[tuple[str, str], list[PodState]] = {}
    for pod in desired.pods.values():
        kind, _, owner = (pod.owner or "").partition("/")
        added = pod.key not in old or old[pod.key].spec_hash != pod.spec_hash or old[pod.key].ip != pod.ip
        if kind == "StatefulSet" and (pod.namespace, owner) in ordered and added:
            by_set.setdefault((pod.namespace, owner), []).append(pod)
    for pods in by_set.values():
        for step, pod in enumerate(sorted(pods, key=lambda p: int(p.name.rsplit("-", 1)[1]))):
            waves[pod.key] = step
    steps = max(waves.values(), default=0) + 1
    stages = []
    for step in range(steps):
        if step == steps - 1:
            stage = desired
        else:
            stage = ClusterState.from_json(desired.to_json())
            stage.pods = {k: p for k, p in stage.pods.items() if waves.get(k, 0) <= step}
        stages.append((stage, sorted(desired.pods[k].uid for k, wave in waves.items() if wave == step)))
    return stages
