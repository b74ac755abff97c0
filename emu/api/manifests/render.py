"""The cluster's objects in their Kubernetes form (`emu get -o yaml|json`) and as
kubectl's tables print them (`emu get`, `-o wide`).

Pure: fed the state, the containers' status (Cluster.pod_status) and the time.
"""

from __future__ import annotations

import datetime
import math
import uuid
from collections.abc import Callable

from emu.control import imagepods
from emu.node.kube import podstatus
from emu.node.plan import cni
from emu.node.records import ClusterState, PodState, ServiceState
from emu.node.services import LabelIndex, control_planes
from emu.api.topology.model import Topology
from emu.api.topology.scheduling import node_labels
from emu.apiserver.tables import human_duration

Status = dict[str, dict[str, dict]]  # pod key -> container -> {state, ready, restarts, started}

# kubectl's names for each resource (what `kubectl get` accepts), to the kind.
RESOURCE_NAMES = {
    "Pod": ("pods", "pod", "po"),
    "Service": ("services", "service", "svc"),
    "Endpoints": ("endpoints", "ep"),
    "Deployment": ("deployments", "deployment", "deploy"),
    "StatefulSet": ("statefulsets", "statefulset", "sts"),
    "DaemonSet": ("daemonsets", "daemonset", "ds"),
    "ConfigMap": ("configmaps", "configmap", "cm"),
    "Namespace": ("namespaces", "namespace", "ns"),
    "Node": ("nodes", "node", "no"),
}
API_VERSIONS = {"Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1"}


def kind_of(resource: str) -> str | None:
    """'svc' -> 'Service'; None if kubectl has no such resource here."""
    resource = resource.lower().split(".")[0]
    return next((kind for kind, names in RESOURCE_NAMES.items() if resource in names), None)


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def _uid(state: ClusterState, key: str) -> str:
    """A stable uid for an object (Kubernetes gives each a random one)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"emu://{state.name}/{key}/{state.created.get(key, '')}"))


class View:
    """One reading of a cluster, rendered as Kubernetes objects."""

    def __init__(self, state: ClusterState, status: Status, now: float, docker: dict[str, dict] | None = None):
        self.state = state
        self.status = status
        self.now = now
        self.docker = docker or {}  # image containers as Docker knows them (runtime.pod_container_states)
        self.topology = Topology.model_validate(state.topology) if state.topology else None
        self.index = LabelIndex(state.pods.values())

    # ---- facts -------------------------------------------------------------
    def created(self, key: str) -> str | None:
        return self.state.created.get(key)

    def age(self, key: str) -> str:
        epoch = _epoch(self.created(key))
        return "<unknown>" if epoch is None else human_duration(self.now - epoch)

    def metadata(self, key: str, name: str, namespace: str | None, labels: dict | None = None) -> dict:
        meta: dict = {"name": name}
        if namespace is not None:
            meta["namespace"] = namespace
        if labels:
            meta["labels"] = dict(sorted(labels.items()))
        meta["creationTimestamp"] = self.created(key)
        meta["uid"] = _uid(self.state, key)
        return meta

    def containers(self, pod: PodState) -> list[tuple[dict, dict]]:
        """(container spec, its status) of each container of a pod."""
        found = self.status.get(pod.key, {})
        return [(c, found.get(c["name"], {})) for c in pod.containers]

    def pod_ready(self, pod: PodState) -> bool:
        return all(s.get("ready") and s.get("state") == "Running" for _, s in self.containers(pod))

    def pod_phase(self, pod: PodState) -> str:
        finished = [self.finished(pod, c) for c, _ in self.containers(pod)]
        if finished and all(f is not None for f in finished):  # every container exited for good
            return "Succeeded" if all(f["exitCode"] == 0 for f in finished) else "Failed"
        return podstatus.phase([status for _, status in self.containers(pod)])

    def docker_state(self, pod: PodState, container: dict) -> dict | None:
        """An image container's state from Docker (None for other containers)."""
        if not cni.runs_image(container):
            return None
        return self.docker.get(imagepods.container_name(self.state, pod, container["name"]))

    def finished(self, pod: PodState, container: dict) -> dict | None:
        """An image container that exited and that its restartPolicy does not start
        again: {"exitCode", "reason"}; else None."""
        docker = self.docker_state(pod, container)
        if docker is None or docker["running"]:
            return None
        again = pod.restart_policy == "Always" or (pod.restart_policy == "OnFailure" and docker["exitCode"] != 0)
        if again:
            return None
        return {"exitCode": docker["exitCode"], "reason": "Completed" if docker["exitCode"] == 0 else "Error"}

    def image(self, container: dict) -> str:
        """The image a container names, else the node image whose programs it runs."""
        return podstatus.image_of(self.state, container)

    # ---- objects -----------------------------------------------------------
    def pod(self, pod: PodState) -> dict:
        key = f"Pod/{pod.uid}"
        meta = self.metadata(key, pod.name, pod.namespace, pod.labels)
        if pod.owner:
            kind, _, owner = pod.owner.partition("/")
            if kind == "Deployment":  # a Deployment's pods belong to its ReplicaSet
                kind, owner = "ReplicaSet", f"{owner}-{pod.labels.get('pod-template-hash', '')}"
            meta["ownerReferences"] = [{
                "apiVersion": "apps/v1", "kind": kind, "name": owner, "controller": True, "blockOwnerDeletion": True,
                "uid": _uid(self.state, f"{kind}/{pod.namespace}/{owner}"),
            }]  # fmt: skip
        containers, statuses = [], []
        started_times = []
        for container, status in self.containers(pod):
            spec: dict = {"name": container["name"], "image": self.image(container)}
            if container.get("command"):
                spec["command"] = container["command"]
            elif container.get("workload") == "netexec" and not container.get("image"):
                spec["command"] = ["python3", "/opt/emu/workloads/netexec.py"]
            if container.get("args"):
                spec["args"] = (["netexec"] if container.get("workload") == "netexec" and container.get("image") else []) + container["args"]
            for field in ("ports", "env", "readinessProbe", "volumeMounts"):
                if container.get(field):
                    spec[field] = _compact(container[field])
            if "readinessProbe" in spec:
                spec["readinessProbe"] = api_probe(spec["readinessProbe"])
            containers.append(spec)
            started = status.get("started")
            if started:
                started_times.append(started)
            entry = podstatus.container_status(self.state, pod, container, status)
            docker = self.docker_state(pod, container)
            if docker is not None:  # Docker keeps the count and why it stopped
                entry["restartCount"] = docker["restartCount"]
                if not docker["running"]:
                    terminated = {"exitCode": docker["exitCode"], "reason": "Completed" if docker["exitCode"] == 0
                                  else "Error", "startedAt": docker["startedAt"], "finishedAt": docker["finishedAt"]}  # fmt: skip
                    if docker["error"]:
                        terminated["message"] = docker["error"]
                    entry["ready"] = entry["started"] = False
                    if self.finished(pod, container) is not None:
                        entry["state"] = {"terminated": terminated}
                    else:
                        message = f"back-off restarting failed container {container['name']} in pod {pod.name}"
                        entry["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
                        entry["lastState"] = {"terminated": terminated}
            statuses.append(entry)
        spec = {
            "containers": containers,
            "dnsPolicy": pod.dns_policy,
            "enableServiceLinks": True,
            "nodeName": pod.node,
            "restartPolicy": pod.restart_policy,
            "terminationGracePeriodSeconds": pod.termination_grace_seconds,
        }
        if pod.dns_config:
            spec["dnsConfig"] = pod.dns_config
        if pod.hostname:
            spec["hostname"] = pod.hostname
        if pod.subdomain:
            spec["subdomain"] = pod.subdomain
        if pod.volumes:
            spec["volumes"] = [{"name": name} for name in sorted(pod.volumes)]
        start = podstatus.iso(min(started_times)) if started_times else None
        status = podstatus.pod_status(self.state, pod, statuses, self.pod_ready(pod), self.pod_phase(pod), start)
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}

    def service(self, service: ServiceState) -> dict:
        key = f"Service/{service.key}"
        spec: dict = {"type": service.type}
        if service.type != "ExternalName":
            spec["clusterIP"] = service.cluster_ip
            spec["clusterIPs"] = [service.cluster_ip]
            spec["ipFamilies"] = ["IPv4"]
            spec["ipFamilyPolicy"] = "SingleStack"
            spec["internalTrafficPolicy"] = service.internal_traffic_policy
        else:
            spec["externalName"] = service.external_name
        ports = []
        for port in service.ports:
            entry: dict = {"name": port.name} if port.name else {}
            entry.update({"port": port.port, "protocol": port.protocol, "targetPort": port.target_port})
            if port.node_port:
                entry["nodePort"] = port.node_port
            ports.append(entry)
        if ports:
            spec["ports"] = ports
        if service.selector:
            spec["selector"] = service.selector
        spec["sessionAffinity"] = "ClientIP" if service.affinity_timeout else "None"
        if service.affinity_timeout:
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": service.affinity_timeout}}
        if service.type in ("NodePort", "LoadBalancer") or service.external_ips:
            spec["externalTrafficPolicy"] = service.external_traffic_policy
        if service.external_ips:
            spec["externalIPs"] = list(service.external_ips)
        if service.load_balancer_ip:
            spec["loadBalancerIP"] = service.load_balancer_ip
        if service.load_balancer_source_ranges:
            spec["loadBalancerSourceRanges"] = list(service.load_balancer_source_ranges)
        if service.health_check_node_port:
            spec["healthCheckNodePort"] = service.health_check_node_port
        if service.traffic_distribution:
            spec["trafficDistribution"] = service.traffic_distribution
        balancer = {"ingress": [{"ip": ip, "ipMode": "VIP"} for ip in service.load_balancer_vips]}
        balancer = balancer if balancer["ingress"] else {}
        labels = {"component": "apiserver", "provider": "kubernetes"} if service.key == "default/kubernetes" else None
        if service.key == "kube-system/kube-dns":
            labels = {"k8s-app": "kube-dns"}
        return {
            "apiVersion": "v1", "kind": "Service", "metadata": self.metadata(key, service.name, service.namespace, labels),
            "spec": spec, "status": {"loadBalancer": balancer},
        }  # fmt: skip

    def endpoints(self, service: ServiceState) -> dict | None:
        """The service's Endpoints object (None for one without a selector or
        addresses: ExternalName). Subsets group addresses with the same ports."""
        key = f"Service/{service.key}"
        obj = {"apiVersion": "v1", "kind": "Endpoints", "metadata": self.metadata(key, service.name, service.namespace)}
        groups: dict[tuple, dict] = {}
        if service.key == "default/kubernetes":
            ports = tuple((p.name, int(p.target_port), p.protocol) for p in service.ports)
            groups[ports] = {"addresses": [{"ip": n.node_ip} for n in control_planes(self.state)], "notReadyAddresses": []}
        elif service.selector:
            for pod in sorted(self.index.selected(service), key=lambda p: tuple(int(x) for x in p.ip.split("."))):
                ports = tuple(
                    (p.name, pod.resolve_port(p.target_port), p.protocol)
                    for p in service.ports if pod.resolve_port(p.target_port) is not None
                )  # fmt: skip
                if not ports:
                    continue
                address: dict = {"ip": pod.ip}
                if pod.hostname and pod.subdomain == service.name:
                    address["hostname"] = pod.hostname
                address["nodeName"] = pod.node
                address["targetRef"] = {"kind": "Pod", "name": pod.name, "namespace": pod.namespace,
                                        "uid": _uid(self.state, f"Pod/{pod.uid}")}  # fmt: skip
                group = groups.setdefault(ports, {"addresses": [], "notReadyAddresses": []})
                group["addresses" if self.pod_ready(pod) else "notReadyAddresses"].append(address)
        elif service.type == "ExternalName":
            return None
        subsets = []
        for ports, group in groups.items():
            subset = {k: v for k, v in group.items() if v}
            subset["ports"] = [{**({"name": name} if name else {}), "port": port, "protocol": protocol}
                               for name, port, protocol in ports]  # fmt: skip
            subsets.append(subset)
        if subsets:
            obj["subsets"] = subsets
        return obj

    def controller(self, kind: str, item) -> dict:
        """A Deployment, StatefulSet or DaemonSet with its status from its pods."""
        key = f"{kind}/{item.namespace}/{item.name}"
        pods = [p for p in self.state.pods.values() if p.owner == f"{kind}/{item.name}" and p.namespace == item.namespace]
        ready = sum(1 for p in pods if self.pod_ready(p))
        template = pod_template(item.template, self.state)
        spec: dict = {"selector": {"matchLabels": dict(item.template.labels)}, "template": template}
        if kind != "DaemonSet":
            spec = {"replicas": item.replicas, **spec}
        if kind == "StatefulSet":
            spec["serviceName"] = item.service_name
            spec["podManagementPolicy"] = item.pod_management_policy
        status: dict = {"observedGeneration": 1}
        if kind == "DaemonSet":
            status.update({
                "desiredNumberScheduled": len(pods), "currentNumberScheduled": len(pods), "numberReady": ready,
                "numberAvailable": ready, "updatedNumberScheduled": len(pods), "numberMisscheduled": 0,
            })  # fmt: skip
        else:
            status.update({"replicas": len(pods), "updatedReplicas": len(pods)})
            if ready:
                status["readyReplicas"] = ready
                status["availableReplicas"] = ready
            if kind == "StatefulSet":
                status["currentReplicas"] = len(pods)
            else:
                available = ready >= item.replicas
                status["conditions"] = [{
                    "type": "Available", "status": "True" if available else "False",
                    "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                }]  # fmt: skip
        return {
            "apiVersion": "apps/v1", "kind": kind,
            "metadata": {**self.metadata(key, item.name, item.namespace), "generation": 1},
            "spec": spec, "status": status,
        }  # fmt: skip

    def config_map(self, item) -> dict:
        key = f"ConfigMap/{item.namespace}/{item.name}"
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": self.metadata(key, item.name, item.namespace),
                "data": dict(item.data)}  # fmt: skip

    def namespace(self, name: str) -> dict:
        # Its declared labels too: NetworkPolicies' namespaceSelectors match them in the API server's
        # objects (every node's policy agent watches those, emu.node.kube.policyfeed).
        labels = {**self.state.namespaces.get(name, {}), "kubernetes.io/metadata.name": name}
        return {"apiVersion": "v1", "kind": "Namespace",
                "metadata": self.metadata(f"Namespace/{name}", name, None, labels),
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}  # fmt: skip

    def node(self, node) -> dict:
        labels = node_labels(node.name, node.role, node.labels)
        has_workers = any(n.role == "worker" for n in self.state.nodes)
        spec: dict = {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]}
        if node.role == "control-plane" and has_workers:
            spec["taints"] = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
        return {
            "apiVersion": "v1", "kind": "Node", "metadata": self.metadata(f"Node/{node.name}", node.name, None, labels),
            "spec": spec,
            "status": {"addresses": [{"type": "InternalIP", "address": node.node_ip},
                                     {"type": "Hostname", "address": node.name}],
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]},
        }  # fmt: skip

    # ---- listing -----------------------------------------------------------
    def objects(self, kind: str) -> list[dict]:
        """Every object of a kind, ordered by namespace and name."""
        state, topology = self.state, self.topology
        if kind == "Pod":
            return [self.pod(p) for p in sorted(state.pods.values(), key=lambda p: (p.namespace, p.name))]
        services = [state.services[k] for k in sorted(state.services)]
        if kind == "Service":
            return [self.service(s) for s in services]
        if kind == "Endpoints":
            return [e for e in (self.endpoints(s) for s in services) if e is not None]
        if kind == "Node":
            return [self.node(n) for n in state.nodes]
        if kind == "Namespace":
            names = {p.namespace for p in state.pods.values()} | {s.namespace for s in state.services.values()}
            names |= {"default", "kube-node-lease", "kube-public", "kube-system"}
            if topology:
                names |= {n.name for n in topology.namespaces}
                names |= {c.namespace for c in topology.config_maps}
            return [self.namespace(n) for n in sorted(names)]
        if kind == "ConfigMap":
            return [self.config_map(c) for c in sorted(topology.config_maps if topology else [], key=_order)]
        from emu.control.state import with_system_objects

        effective = with_system_objects(topology) if topology else None
        items = {
            "Deployment": effective.deployments if effective else [],
            "StatefulSet": effective.stateful_sets if effective else [],
            "DaemonSet": effective.daemon_sets if effective else [],
        }[kind]
        return [self.controller(kind, item) for item in sorted(items, key=_order)]


PROBE_SECONDS = ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "terminationGracePeriodSeconds")


def api_probe(probe: dict) -> dict:
    """A probe as the API types it: its seconds are int32 and a period at least 1.
    emu's own pods probe faster than that (the cluster DNS every 0.2 s, so that a
    lab is ready sooner); the API shows the period rounded up, since a fraction
    makes kubectl's typed decoding (logs, describe, exec) fail on the pod."""
    shown = dict(probe)
    for field in PROBE_SECONDS:
        if isinstance(shown.get(field), float):
            shown[field] = max(1 if field == "periodSeconds" else 0, math.ceil(shown[field]))
    return shown


def _compact(value):
    """JSON data without null fields, and with whole floats as integers (periodSeconds: 1, not 1.0)."""
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _order(item) -> tuple[str, str]:
    return (item.namespace, item.name)


def pod_template(template, state: ClusterState) -> dict:
    """An emu pod template in Kubernetes' form (PodTemplateSpec)."""
    data = _compact(template.model_dump(mode="json", by_alias=True, exclude_defaults=True))
    labels = data.pop("labels", {})
    if "node" in data:
        data["nodeName"] = data.pop("node")
    containers = []
    for container in data.get("containers", []):
        workload = container.pop("workload", None)
        if workload == "netexec" and container.get("image"):
            container["args"] = ["netexec", *container.get("args", [])]
        elif workload:
            container["command"] = ["python3", f"/opt/emu/workloads/{workload}.py"]
        container.setdefault("image", state.node_image or "emu/node")
        containers.append(container)
    data["containers"] = containers
    return {"metadata": {"labels": labels}, "spec": data}


# ---- kubectl's tables ----------------------------------------------------------
Row = list[str]


def _ports(service: ServiceState) -> str:
    ports = [f"{p.port}:{p.node_port}/{p.protocol}" if p.node_port else f"{p.port}/{p.protocol}" for p in service.ports]
    return ",".join(ports) or "<none>"


def _selector(selector: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((selector or {}).items())) or "<none>"


def _containers_images(template: dict) -> tuple[str, str]:
    containers = template["spec"]["containers"]
    return ",".join(c["name"] for c in containers), ",".join(c["image"] for c in containers)


def table(view: View, kind: str, objects: list[dict], wide: bool, namespaced_column: bool) -> list[Row]:
    """kubectl's table for objects of one kind: a header row, then a row each."""
    age = lambda obj: human_duration(view.now - _epoch(obj["metadata"]["creationTimestamp"])) if obj["metadata"].get("creationTimestamp") else "<unknown>"  # noqa: E731
    columns: dict[str, tuple[list[str], list[str], Callable[[dict], Row]]] = {
        "Pod": (["NAME", "READY", "STATUS", "RESTARTS", "AGE"], ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"], _pod_row(view, age)),
        "Service": (["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"], ["SELECTOR"], _service_row(view, age)),
        "Endpoints": (["NAME", "ENDPOINTS", "AGE"], [], lambda o: ([o["metadata"]["name"], _endpoint_list(o), age(o)], [])),
        "Deployment": (["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], ["CONTAINERS", "IMAGES", "SELECTOR"], lambda o: (
            [o["metadata"]["name"], f"{o['status'].get('readyReplicas', 0)}/{o['spec']['replicas']}",
             str(o["status"]["updatedReplicas"]), str(o["status"].get("availableReplicas", 0)), age(o)],
            [*_containers_images(o["spec"]["template"]), _selector(o["spec"]["selector"]["matchLabels"])])),
        "StatefulSet": (["NAME", "READY", "AGE"], ["CONTAINERS", "IMAGES"], lambda o: (
            [o["metadata"]["name"], f"{o['status'].get('readyReplicas', 0)}/{o['spec']['replicas']}", age(o)],
            list(_containers_images(o["spec"]["template"])))),
        "DaemonSet": (["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "NODE SELECTOR", "AGE"],
                      ["CONTAINERS", "IMAGES", "SELECTOR"], lambda o: (
            [o["metadata"]["name"], *(str(o["status"][k]) for k in ("desiredNumberScheduled", "currentNumberScheduled",
             "numberReady", "updatedNumberScheduled", "numberAvailable")),
             _selector(o["spec"]["template"]["spec"].get("nodeSelector")), age(o)],
            [*_containers_images(o["spec"]["template"]), _selector(o["spec"]["selector"]["matchLabels"])])),
        "ConfigMap": (["NAME", "DATA", "AGE"], [], lambda o: ([o["metadata"]["name"], str(len(o.get("data", {}))), age(o)], [])),
        "Namespace": (["NAME", "STATUS", "AGE"], [], lambda o: ([o["metadata"]["name"], "Active", age(o)], [])),
        "Node": (["NAME", "STATUS", "ROLES", "AGE", "VERSION"], ["INTERNAL-IP", "EXTERNAL-IP"], lambda o: (
            [o["metadata"]["name"], "Ready",
             "control-plane" if "node-role.kubernetes.io/control-plane" in o["metadata"]["labels"] else "<none>",
             age(o), "emu"],
            [o["status"]["addresses"][0]["address"], "<none>"])),
    }  # fmt: skip
    header, extra, row = columns[kind]
    rows = [(["NAMESPACE"] if namespaced_column else []) + header + (extra if wide else [])]
    for obj in objects:
        base, more = row(obj)
        rows.append(([obj["metadata"].get("namespace", "")] if namespaced_column else []) + base + (more if wide else []))
    return rows


def _pod_row(view: View, age):
    def row(obj: dict) -> tuple[Row, Row]:
        statuses = obj["status"]["containerStatuses"]
        ready = sum(1 for s in statuses if s["ready"])
        restarts = sum(s["restartCount"] for s in statuses)
        text = str(restarts)
        if restarts:
            last = max((s["state"].get("running", {}).get("startedAt") or "" for s in statuses), default="")
            if last:
                text += f" ({human_duration(view.now - _epoch(last))} ago)"
        waiting = [s["state"]["waiting"]["reason"] for s in statuses if "waiting" in s["state"]]
        terminated = [s["state"]["terminated"]["reason"] for s in statuses if "terminated" in s["state"]]
        status = waiting[0] if waiting else terminated[-1] if terminated else obj["status"]["phase"]
        return (
            [obj["metadata"]["name"], f"{ready}/{len(statuses)}", status, text, age(obj)],
            [obj["status"]["podIP"], obj["spec"]["nodeName"], "<none>", "<none>"],
        )

    return row


def _service_row(view: View, age):
    def row(obj: dict) -> tuple[Row, Row]:
        service = view.state.services[f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"]
        if service.type == "ExternalName":
            external = service.external_name or "<none>"
        elif service.type == "LoadBalancer":
            external = service.load_balancer_ip or "<pending>"
        else:
            external = "<none>"
        cluster_ip = service.cluster_ip or "<none>"
        return (
            [service.name, service.type, cluster_ip, external, _ports(service), age(obj)],
            [_selector(service.selector)],
        )

    return row


def _endpoint_list(obj: dict, limit: int = 3) -> str:
    """Ready addresses as ip:port, port by port, at most 3 then '+ N more...' (kubectl's formatEndpoints)."""
    addresses = [
        f"{address['ip']}:{port['port']}"
        for subset in obj.get("subsets", [])
        for port in subset["ports"]
        for address in subset.get("addresses", [])
    ]
    if not addresses:
        return "<none>"
    text = ",".join(addresses[:limit])
    return text + (f" + {len(addresses) - limit} more..." if len(addresses) > limit else "")


def format_table(rows: list[Row]) -> str:
    """Columns padded as kubectl's tabwriter pads them (three spaces between)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"
