"""Rules that span fields: names unique, CIDRs sane, pods fit their nodes.

Each check yields (yaml_path, message). Pure: no Docker, no files.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterator

from emu.node.records import KUBE_DNS_INDEX, KUBERNETES_INDEX, planner_pod_range, well_known_ip
from emu.api.topology.model import PodTemplate, Topology
from emu.api.topology.names import daemonset_pod_name, deployment_pod_names, statefulset_pod_names
from emu.api.topology.scheduling import candidate_nodes, node_labels

NODE_CIDR_PREFIX = 24  # one /24 of podSubnet per node, as kubeadm's default --node-cidr-mask-size
# A /24 holds 256 addresses: network, gateway (the bridge) and broadcast are not pods'.
# What emu's planner may place on a node: its range of the /24 (the rest is the kubelet's).
PODS_PER_NODE = len(planner_pod_range(f"10.0.0.0/{NODE_CIDR_PREFIX}"))

Finding = tuple[tuple, str]


def check_topology(topology: Topology) -> list[Finding]:
    """Every cross-field problem of a topology that passed the schema."""
    return [
        *_check_subnets(topology),
        *_check_nodes(topology),
        *_check_workloads(topology),
        *_check_capacity(topology),
        *_check_networks(topology),
        *_check_services(topology),
        *_check_edge(topology),
    ]


def _check_subnets(topology: Topology) -> Iterator[Finding]:
    pods = ipaddress.IPv4Network(topology.networking.pod_subnet)
    services = ipaddress.IPv4Network(topology.networking.service_subnet)
    if pods.prefixlen > NODE_CIDR_PREFIX:
        yield (
            ("networking", "podSubnet"),
            f"podSubnet {pods} is smaller than one node's /{NODE_CIDR_PREFIX}; "
            f"use a /{NODE_CIDR_PREFIX} or larger (e.g. 10.244.0.0/16)",
        )
    elif len(topology.nodes) > 2 ** (NODE_CIDR_PREFIX - pods.prefixlen):
        yield (
            ("networking", "podSubnet"),
            f"podSubnet {pods} holds {2 ** (NODE_CIDR_PREFIX - pods.prefixlen)} node CIDRs "
            f"(/{NODE_CIDR_PREFIX} each) but there are {len(topology.nodes)} nodes; use a larger podSubnet",
        )
    if services.prefixlen > 28:
        yield (
            ("networking", "serviceSubnet"),
            f"serviceSubnet {services} is too small: it must hold the kubernetes and kube-dns "
            "service IPs; use a /28 or larger (e.g. 10.96.0.0/16)",
        )
    for index, server in enumerate(topology.dns.upstreams):
        try:
            ipaddress.IPv4Address(server.rsplit(":", 1)[0] if server.count(":") == 1 else server)
        except ValueError:
            yield (("dns", "upstreams", index), f"'{server}' is not an IPv4 address (optionally with :port)")
    if pods.overlaps(services):
        yield (
            ("networking", "serviceSubnet"),
            f"serviceSubnet {services} overlaps podSubnet {pods}; choose ranges that do not overlap",
        )


def _unique_names(items, key: str, what: str) -> Iterator[Finding]:
    """A finding for each item whose name an earlier one already has."""
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.name in seen:
            yield (
                (key, index, "name"),
                f"{what} name '{item.name}' is used twice (also {key}[{seen[item.name]}]); {what} names must be unique",
            )
        seen.setdefault(item.name, index)


def _check_nodes(topology: Topology) -> Iterator[Finding]:
    yield from _unique_names(topology.nodes, "nodes", "node")
    yield from _unique_names(topology.hosts, "hosts", "host")
    hosts = [host.name for host in topology.hosts]
    for index, node in enumerate(topology.nodes):
        # Without hosts: the inventory may come with `emu up --hosts FILE`; place_nodes checks then.
        if hosts and node.host is not None and node.host not in hosts:
            message = f"node '{node.name}' names host '{node.host}', which is not under hosts: ({', '.join(hosts)})"
            yield (("nodes", index, "host"), message)
    if topology.runtime == "uml":
        if hosts:
            yield (("runtime",), "runtime uml runs every node on this machine; remove hosts: or use runtime: docker")
        for path, _, template in _templates(topology):
            for c_index, container in enumerate(template.containers):
                if container.runs_image:
                    yield (
                        path + ("containers", c_index, "image"),
                        f"container '{container.name}' runs an image, which needs the docker runtime (a uml node "
                        "has no container engine); use runtime: docker, or a command or workload instead",
                    )


def _check_dns_policy(template: PodTemplate, path: tuple, what: str) -> Iterator[Finding]:
    if template.dns_policy == "None" and (template.dns_config is None or not template.dns_config.nameservers):
        yield (path + ("dnsPolicy",), f"{what} has dnsPolicy None, so dnsConfig.nameservers must list at least one")
    config = template.dns_config
    if config is not None:
        for index, server in enumerate(config.nameservers):
            try:
                ipaddress.IPv4Address(server)
            except ValueError:
                yield (path + ("dnsConfig", "nameservers", index), f"'{server}' is not an IPv4 address")
        if len(config.nameservers) > 3:
            yield (path + ("dnsConfig", "nameservers"), "at most 3 nameservers (a resolv.conf limit)")
        if len(config.searches) > 32:
            yield (path + ("dnsConfig", "searches"), "at most 32 search domains")


def _check_template(template: PodTemplate, path: tuple, node_names: set[str], what: str) -> Iterator[Finding]:
    yield from _check_dns_policy(template, path, what)
    if template.node is not None and template.node not in node_names:
        yield (
            path + ("node",),
            f"{what} is pinned to node '{template.node}', which is not in nodes "
            f"(known: {', '.join(sorted(node_names))}); fix the name or add the node",
        )
    names = Counter(c.name for c in template.containers)
    ports: dict[tuple[int, str], str] = {}
    port_names: dict[str, str] = {}
    for c_index, container in enumerate(template.containers):
        c_path = path + ("containers", c_index)
        if names[container.name] > 1:
            yield (c_path + ("name",), f"container name '{container.name}' is used twice in {what}")
            names[container.name] = 1  # report once
        for p_index, port in enumerate(container.ports):
            p_path = c_path + ("ports", p_index)
            key = (port.container_port, port.protocol)
            if key in ports:
                yield (
                    p_path + ("containerPort",),
                    f"port {port.container_port}/{port.protocol} is declared twice in {what} "
                    f"(also by container '{ports[key]}'); containers of a pod share one network namespace",
                )
            ports.setdefault(key, container.name)
            if port.name is not None:
                if port.name in port_names:
                    yield (p_path + ("name",), f"port name '{port.name}' is used twice in {what}")
                port_names.setdefault(port.name, container.name)


def _check_workloads(topology: Topology) -> Iterator[Finding]:
    node_names = {n.name for n in topology.nodes}
    pod_names: dict[tuple[str, str], str] = {}

    def claim(namespace: str, name: str, owner: str, path: tuple) -> Iterator[Finding]:
        key = (namespace, name)
        if key in pod_names:
            yield (path, f"pod '{namespace}/{name}' is defined twice ({owner} and {pod_names[key]}); rename one")
        pod_names.setdefault(key, owner)

    for index, pod in enumerate(topology.pods):
        path = ("pods", index)
        yield from claim(pod.namespace, pod.name, f"pods[{index}]", path + ("name",))
        yield from _check_template(pod, path, node_names, f"pod '{pod.name}'")

    deployments: set[tuple[str, str]] = set()
    for index, deployment in enumerate(topology.deployments):
        path = ("deployments", index)
        key = (deployment.namespace, deployment.name)
        if key in deployments:
            yield (path + ("name",), f"deployment '{deployment.namespace}/{deployment.name}' is defined twice")
        deployments.add(key)
        yield from _check_template(
            deployment.template, path + ("template",), node_names, f"deployment '{deployment.name}'"
        )
        for name in deployment_pod_names(deployment):
            yield from claim(deployment.namespace, name, f"deployments[{index}]", path + ("name",))
    yield from _check_controllers(topology, claim, node_names)


def _check_capacity(topology: Topology) -> Iterator[Finding]:
    pinned: Counter[str] = Counter()
    floating = 0
    first_path: dict[str, tuple] = {}
    for index, pod in enumerate(topology.pods):
        if pod.node:
            pinned[pod.node] += 1
            first_path.setdefault(pod.node, ("pods", index, "node"))
        else:
            floating += 1
    for key, sets in (("deployments", topology.deployments), ("statefulSets", topology.stateful_sets)):
        for index, replicated in enumerate(sets):
            if replicated.template.node:
                pinned[replicated.template.node] += replicated.replicas
                first_path.setdefault(replicated.template.node, (key, index, "template", "node"))
            else:
                floating += replicated.replicas
    nodes = [(n.name, n.role, dict(n.labels)) for n in topology.nodes]
    for index, daemonset in enumerate(topology.daemon_sets):
        for node in candidate_nodes(daemonset.template, nodes):
            pinned[node] += 1
            first_path.setdefault(node, ("daemonSets", index))
    for node, count in pinned.items():
        if count > PODS_PER_NODE:
            yield (
                first_path[node],
                f"{count} pods are pinned to node '{node}' but its /{NODE_CIDR_PREFIX} pod CIDR holds "
                f"{PODS_PER_NODE}; spread them over more nodes",
            )
    schedulable = [n.name for n in topology.nodes if n.role == "worker"] or [n.name for n in topology.nodes]
    room = sum(max(0, PODS_PER_NODE - pinned[name]) for name in schedulable)
    if floating > room:
        yield (
            ("nodes",),
            f"{floating} pods are not pinned to a node but the nodes that take them "
            f"({', '.join(schedulable)}) have room for {room}; add worker nodes or lower replicas",
        )


def _check_networks(topology: Topology) -> Iterator[Finding]:
    networking = topology.networking
    path = ("networking",)
    network = None
    if networking.cluster_network:
        network = ipaddress.IPv4Network(networking.cluster_network)
        if network.prefixlen > 24:
            yield (path + ("clusterNetwork",), f"clusterNetwork {network} is too small; use a /24 or larger")
        for name, other in (("podSubnet", networking.pod_subnet), ("serviceSubnet", networking.service_subnet)):
            if network.overlaps(ipaddress.IPv4Network(other)):
                yield (path + ("clusterNetwork",), f"clusterNetwork {network} overlaps {name} {other}")
    if networking.load_balancer_pool:
        first, dash, last = networking.load_balancer_pool.partition("-")
        try:
            addresses = [ipaddress.IPv4Address(first.strip()), ipaddress.IPv4Address(last.strip())]
        except ValueError:
            addresses = []
        if not dash or not addresses or addresses[0] > addresses[1]:
            yield (
                path + ("loadBalancerPool",),
                f"'{networking.load_balancer_pool}' is not a range FIRST-LAST (e.g. 172.28.0.200-172.28.0.250)",
            )
        elif network is None:
            yield (path + ("loadBalancerPool",), "a loadBalancerPool needs a fixed clusterNetwork to lie in")
        elif not all(a in network for a in addresses):
            yield (path + ("loadBalancerPool",), f"loadBalancerPool is not inside clusterNetwork {network}")


def _check_services(topology: Topology) -> Iterator[Finding]:
    subnet = ipaddress.IPv4Network(topology.networking.service_subnet)
    if subnet.prefixlen > 28:
        return  # _check_subnets says it is too small; kubernetes' and kube-dns' addresses may not exist
    seen: set[tuple[str, str]] = set()
    service_subnet = topology.networking.service_subnet
    cluster_ips: dict[str, str] = {well_known_ip(service_subnet, KUBERNETES_INDEX): "default/kubernetes"}
    if topology.dns.enabled:
        cluster_ips[well_known_ip(service_subnet, KUBE_DNS_INDEX)] = "kube-system/kube-dns"
    node_ports: dict[int, str] = {}
    templates = list(_templates(topology))
    for index, service in enumerate(topology.services):
        path = ("services", index)
        key = f"{service.namespace}/{service.name}"
        what = f"service '{key}'"
        if (service.namespace, service.name) in seen:
            yield (path + ("name",), f"{what} is defined twice")
        seen.add((service.namespace, service.name))
        if key == "default/kubernetes":
            yield (path + ("name",), "default/kubernetes is the API server's service, which every cluster has; rename yours")
        if key == "kube-system/kube-dns" and topology.dns.enabled:
            yield (path + ("name",), "kube-system/kube-dns is the cluster DNS service emu runs; rename yours or set dns.enabled: false")
        if service.type == "ExternalName":
            if not service.external_name:
                yield (path + ("externalName",), f"{what} has type ExternalName but no externalName (e.g. example.com)")
            if service.selector:
                yield (path + ("selector",), f"{what} has type ExternalName and a selector; an ExternalName service has no pods")
            if service.cluster_ip:
                yield (path + ("clusterIP",), f"{what} has type ExternalName and a clusterIP; remove the clusterIP")
        elif service.external_name:
            yield (path + ("externalName",), f"externalName needs type ExternalName ({what} is {service.type})")
        if service.cluster_ip and service.cluster_ip != "None":
            try:
                address = ipaddress.IPv4Address(service.cluster_ip)
            except ValueError:
                yield (path + ("clusterIP",), f"clusterIP '{service.cluster_ip}' is not an IPv4 address or None")
            else:
                if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
                    yield (path + ("clusterIP",), f"clusterIP {address} is not a usable address of serviceSubnet {subnet}")
                elif service.cluster_ip in cluster_ips:
                    yield (path + ("clusterIP",), f"clusterIP {address} is taken by service '{cluster_ips[service.cluster_ip]}'")
                cluster_ips.setdefault(service.cluster_ip, key)
        if service.cluster_ip == "None" and service.type != "ClusterIP":
            yield (path + ("clusterIP",), f"a headless service (clusterIP: None) must have type ClusterIP, not {service.type}")
        if service.type != "ExternalName" and service.cluster_ip != "None" and not service.ports:
            yield (path + ("ports",), f"{what} needs at least one port")
        if service.session_affinity_config is not None and service.session_affinity != "ClientIP":
            yield (path + ("sessionAffinityConfig",), "sessionAffinityConfig needs sessionAffinity: ClientIP")
        if (service.external_traffic_policy == "Local" and service.type not in ("NodePort", "LoadBalancer")
                and not service.external_ips):  # fmt: skip
            yield (
                path + ("externalTrafficPolicy",),
                f"externalTrafficPolicy: Local is for NodePort and LoadBalancer services and services with "
                f"externalIPs ({what} is {service.type})",
            )
        yield from _check_external_addresses(service, path, what)
        if service.load_balancer_ip and service.type != "LoadBalancer":
            yield (path + ("loadBalancerIP",), f"loadBalancerIP needs type LoadBalancer ({what} is {service.type})")
        # Only a named targetPort needs the selected pods (scanning every template for
        # every service took 15 s at 5,000 pods and 1,000 services).
        named = any(isinstance(port.target_port, str) for port in service.ports)
        selected = [
            t for _, namespace, t in templates
            if service.selector and namespace == service.namespace
            and all(t.labels.get(k) == v for k, v in service.selector.items())
        ] if named else []  # fmt: skip
        yield from _check_service_ports(service, path, what, node_ports, selected)
        yield from _check_health_check_node_port(service, path, what, node_ports)


def _check_external_addresses(service, path, what) -> Iterator[Finding]:
    """spec.externalIPs and spec.loadBalancerSourceRanges, as Kubernetes' ValidateService checks them."""
    if service.external_ips and service.type == "ExternalName":
        yield (path + ("externalIPs",), f"{what} has type ExternalName, which takes no externalIPs; remove them")
    for i, text in enumerate(service.external_ips):
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            yield (path + ("externalIPs", i),
                   f"'{text}' in externalIPs of {what} is not an IPv4 address (e.g. 192.0.2.10)")  # fmt: skip
            continue
        if address.is_unspecified or address.is_loopback or address.is_link_local or address.is_multicast:
            yield (path + ("externalIPs", i),
                   f"{address} in externalIPs of {what} is a special address (unspecified, loopback, "
                   "link-local or multicast); use an address clients can route to a node")  # fmt: skip
    if service.load_balancer_source_ranges and service.type != "LoadBalancer":
        yield (path + ("loadBalancerSourceRanges",),
               f"loadBalancerSourceRanges needs type LoadBalancer ({what} is {service.type})")  # fmt: skip
    for i, text in enumerate(service.load_balancer_source_ranges):
        try:
            ipaddress.IPv4Network(text.strip(), strict=False)
        except ValueError:
            message = f"'{text}' in loadBalancerSourceRanges of {what} is not an IPv4 CIDR (e.g. 203.0.113.0/24)"
            yield (path + ("loadBalancerSourceRanges", i), message)


def _check_health_check_node_port(service, path, what, node_ports: dict[int, str]) -> Iterator[Finding]:
    """spec.healthCheckNodePort, as Kubernetes' ValidateService and its node port allocator
    check it: only with type LoadBalancer and externalTrafficPolicy Local, and a node port
    no other port (this service's included) holds."""
    port = service.health_check_node_port
    if port is None:
        return
    where = path + ("healthCheckNodePort",)
    if service.type != "LoadBalancer" or service.external_traffic_policy != "Local":
        yield (where, f"healthCheckNodePort may only be set when type is 'LoadBalancer' and externalTrafficPolicy "
                      f"is 'Local' ({what} is {service.type}, {service.external_traffic_policy}); remove it")
    elif port in node_ports:
        yield (where, f"healthCheckNodePort {port} of {what} is taken by service '{node_ports[port]}'; "
                      "pick another node port or leave it out to have one allocated")
    node_ports.setdefault(port, f"{service.namespace}/{service.name}")


def _check_service_ports(service, path, what, node_ports: dict[int, str], selected: list) -> Iterator[Finding]:
    # A named targetPort must be a port name of the pods the service selects
    # (when it selects any: pods may come later).
    pod_port_names = {p.name for t in selected for c in t.containers for p in c.ports if p.name}
    key = f"{service.namespace}/{service.name}"
    seen_ports: set[tuple[int, str]] = set()
    seen_names: set[str] = set()
    for p_index, port in enumerate(service.ports):
        p_path = path + ("ports", p_index)
        if len(service.ports) > 1 and not port.name:
            yield (p_path, f"{what} has several ports, so each needs a name")
        if port.name:
            if port.name in seen_names:
                yield (p_path + ("name",), f"port name '{port.name}' is used twice in {what}")
            seen_names.add(port.name)
        if (port.port, port.protocol) in seen_ports:
            yield (p_path + ("port",), f"port {port.port}/{port.protocol} is declared twice in {what}")
        seen_ports.add((port.port, port.protocol))
        if isinstance(port.target_port, str) and selected and port.target_port not in pod_port_names:
            yield (
                p_path + ("targetPort",),
                f"targetPort '{port.target_port}' names no container port of the pods {what} selects "
                f"(their port names: {', '.join(sorted(pod_port_names)) or 'none'}); use a port number or one of those",
            )
        if port.node_port is not None:
            if service.type not in ("NodePort", "LoadBalancer"):
                yield (p_path + ("nodePort",), f"nodePort needs type NodePort or LoadBalancer ({what} is {service.type})")
            elif port.node_port in node_ports:
                yield (p_path + ("nodePort",), f"nodePort {port.node_port} is taken by service '{node_ports[port.node_port]}'")
            node_ports.setdefault(port.node_port, key)


def _templates(topology: Topology):
    for index, pod in enumerate(topology.pods):
        yield ("pods", index), pod.namespace, pod
    for index, deployment in enumerate(topology.deployments):
        yield ("deployments", index, "template"), deployment.namespace, deployment.template
    for key, items in (("statefulSets", topology.stateful_sets), ("daemonSets", topology.daemon_sets)):
        for index, item in enumerate(items):
            yield (key, index, "template"), item.namespace, item.template


def _check_edge(topology: Topology) -> Iterator[Finding]:
    """Host port mappings, namespaces, NetworkPolicies, Ingresses and their secrets."""
    taken: dict[tuple[int, str], str] = {}
    for n_index, node in enumerate(topology.nodes):
        for m_index, mapping in enumerate(node.extra_port_mappings):
            path = ("nodes", n_index, "extraPortMappings", m_index)
            try:
                ipaddress.IPv4Address(mapping.listen_address)
            except ValueError:
                yield (path + ("listenAddress",), f"'{mapping.listen_address}' is not an IPv4 address (e.g. 127.0.0.1)")
            key = (mapping.host_port, mapping.protocol)
            if key in taken:
                yield (path + ("hostPort",), f"host port {mapping.host_port}/{mapping.protocol} is mapped twice "
                       f"(also by {taken[key]}); each host port can go to one node")  # fmt: skip
            taken.setdefault(key, f"node '{node.name}'")
    yield from _unique_names(topology.namespaces, "namespaces", "namespace")
    for key, what in (("network_policies", "networkPolicies"), ("ingresses", "ingresses"), ("secrets", "secrets")):
        seen: set[tuple[str, str]] = set()
        for index, item in enumerate(getattr(topology, key)):
            if (item.namespace, item.name) in seen:
                yield ((what, index, "name"), f"{what[:-1] if what.endswith('s') else what} "
                       f"'{item.namespace}/{item.name}' is defined twice")  # fmt: skip
            seen.add((item.namespace, item.name))
    services = {(s.namespace, s.name): s for s in topology.services}
    secrets = {(s.namespace, s.name): s for s in topology.secrets}
    for index, secret in enumerate(topology.secrets):
        for field_name, text in secret.string_data.items():
            if "-----BEGIN" not in text:
                yield (("secrets", index, "stringData", field_name), f"{field_name} is not PEM text (-----BEGIN ...)")
        if set(secret.string_data) != {"tls.crt", "tls.key"}:
            yield (("secrets", index, "stringData"), "a kubernetes.io/tls secret needs both tls.crt and tls.key")
    for index, ingress in enumerate(topology.ingresses):
        path = ("ingresses", index)
        backends = [(path + ("defaultBackend",), ingress.default_backend)] if ingress.default_backend else []
        for r_index, rule in enumerate(ingress.rules):
            for p_index, http_path in enumerate(rule.http.paths if rule.http else []):
                backends.append((path + ("rules", r_index, "http", "paths", p_index, "backend"), http_path.backend))
        if not backends:
            yield (path, f"ingress '{ingress.name}' has neither rules nor a defaultBackend")
        for b_path, backend in backends:
            service = services.get((ingress.namespace, backend.service.name))
            if service is None:
                yield (b_path + ("service", "name"), f"service '{ingress.namespace}/{backend.service.name}' is not "
                       "in services; an Ingress reaches services of its own namespace")  # fmt: skip
                continue
            wanted = backend.service.port.number or backend.service.port.name
            if not any(wanted in (port.port, port.name) for port in service.ports):
                known = ", ".join(f"{p.name or ''} {p.port}".strip() for p in service.ports) or "none"
                yield (b_path + ("service", "port"), f"service '{service.namespace}/{service.name}' has no port "
                       f"{wanted} (its ports: {known})")  # fmt: skip
        for t_index, tls in enumerate(ingress.tls):
            if tls.secret_name and (ingress.namespace, tls.secret_name) not in secrets:
                yield (path + ("tls", t_index, "secretName"), f"secret '{ingress.namespace}/{tls.secret_name}' is not "
                       "in secrets; add it (stringData tls.crt and tls.key) or leave secretName out for a "
                       "self-signed one")
    controller = topology.ingress_controller
    if controller.node and controller.node not in {n.name for n in topology.nodes}:
        yield (("ingressController", "node"), f"node '{controller.node}' is not in nodes")


def _check_controllers(topology: Topology, claim, node_names: set[str]) -> Iterator[Finding]:
    """StatefulSets and DaemonSets (names, templates, the pods they make), ConfigMaps
    and namespaces (unique names), and what every pod takes from ConfigMaps."""
    nodes = [(n.name, n.role, dict(n.labels)) for n in topology.nodes]
    for key, what, items in (("statefulSets", "StatefulSet", topology.stateful_sets),
                             ("daemonSets", "DaemonSet", topology.daemon_sets),
                             ("configMaps", "ConfigMap", topology.config_maps)):  # fmt: skip
        seen: set[tuple[str, str]] = set()
        for index, item in enumerate(items):
            if (item.namespace, item.name) in seen:
                yield ((key, index, "name"), f"{what} '{item.namespace}/{item.name}' is defined twice")
            seen.add((item.namespace, item.name))
    for index, statefulset in enumerate(topology.stateful_sets):
        path = ("statefulSets", index)
        what = f"StatefulSet '{statefulset.name}'"
        yield from _check_template(statefulset.template, path + ("template",), node_names, what)
        for name in statefulset_pod_names(statefulset):
            yield from claim(statefulset.namespace, name, f"statefulSets[{index}]", path + ("name",))
    for index, daemonset in enumerate(topology.daemon_sets):
        path = ("daemonSets", index)
        yield from _check_template(daemonset.template, path + ("template",), node_names, f"DaemonSet '{daemonset.name}'")
        for node in candidate_nodes(daemonset.template, nodes):
            yield from claim(daemonset.namespace, daemonset_pod_name(daemonset, node), f"daemonSets[{index}]", path + ("name",))
    config_maps = {(c.namespace, c.name): c for c in topology.config_maps}
    for path, namespace, template in _templates(topology):
        if path[0] != "daemonSets" and template.node is None and not candidate_nodes(template, nodes):
            where = f"nodeSelector {template.node_selector}" if template.node_selector else "the control plane's taint"
            yield (
                path + ("nodeSelector",),
                f"no node fits these pods ({where}; node labels: "
                + "; ".join(f"{n.name}: {','.join(f'{k}={v}' for k, v in node_labels(n.name, n.role, n.labels).items())}"
                            for n in topology.nodes)
                + "); fix the nodeSelector, or label a node (nodes[].labels)",
            )  # fmt: skip
        yield from _check_config_references(template, path, namespace, config_maps)


def _check_config_references(template, path: tuple, namespace: str, config_maps: dict) -> Iterator[Finding]:
    """ConfigMaps a pod takes env or files from exist in its namespace (unless
    optional), with the keys it names; volume mounts name volumes of the pod."""

    def missing(name: str, where: tuple) -> Finding:
        known = ", ".join(sorted(n for ns, n in config_maps if ns == namespace)) or "none"
        return (where, f"ConfigMap '{namespace}/{name}' does not exist (ConfigMaps in {namespace}: {known}); "
                       "add it, or mark the reference optional: true")  # fmt: skip

    volumes = {volume.name: volume for volume in template.volumes}
    for v_index, volume in enumerate(template.volumes):
        source = volume.config_map
        if source is None:
            continue
        where = path + ("volumes", v_index, "configMap")
        found = config_maps.get((namespace, source.name))
        if found is None:
            if not source.optional:
                yield missing(source.name, where + ("name",))
            continue
        for i_index, item in enumerate(source.items):
            if item.key not in found.data and not source.optional:
                yield (where + ("items", i_index, "key"), f"ConfigMap '{namespace}/{source.name}' has no key '{item.key}'")
    for c_index, container in enumerate(template.containers):
        c_path = path + ("containers", c_index)
        for e_index, source in enumerate(container.env_from):
            if (namespace, source.config_map_ref.name) not in config_maps and not source.config_map_ref.optional:
                yield missing(source.config_map_ref.name, c_path + ("envFrom", e_index, "configMapRef", "name"))
        for e_index, variable in enumerate(container.env):
            selector = variable.value_from.config_map_key_ref if variable.value_from else None
            if selector is None or selector.optional:
                continue
            where = c_path + ("env", e_index, "valueFrom", "configMapKeyRef")
            found = config_maps.get((namespace, selector.name))
            if found is None:
                yield missing(selector.name, where + ("name",))
            elif selector.key not in found.data:
                yield (where + ("key",), f"ConfigMap '{namespace}/{selector.name}' has no key '{selector.key}' "
                                         f"(its keys: {', '.join(sorted(found.data)) or 'none'})")  # fmt: skip
        for m_index, mount in enumerate(container.volume_mounts):
            if mount.name not in volumes:
                yield (c_path + ("volumeMounts", m_index, "name"),
                       f"volumeMount '{mount.name}' names no volume of the pod (volumes: {', '.join(volumes) or 'none'})")  # fmt: skip
