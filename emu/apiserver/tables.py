"""Tables as kube-apiserver serves them (meta.k8s.io/v1 Table, issue 21).

`kubectl get` asks for `application/json;as=Table;v=v1;g=meta.k8s.io` and
prints the server's columns. The columns and cells here are those of
kubernetes/pkg/printers/internalversion/printers.go (the server always
fills the wide columns; kubectl hides priority 1 unless -o wide); kinds it
does not print get the default table convertor's NAME and CREATED AT.
Ages are apimachinery's duration.HumanDuration.

Pure functions over object dicts, standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

_DOC = {
    'name': (
        'Name must be unique within a namespace. Is required when creating resources, although some '
        'resources may allow a client to request the generation of an appropriate name automatically. '
        'Name is primarily intended for creation idempotence and configuration definition. Cannot be '
        'updated. More info: '
        'https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names'
    ),
    'creationTimestamp': (
        'CreationTimestamp is a timestamp representing the server time when this object was created. It '
        'is not guaranteed to be set in happens-before order across separate operations. Clients may not '
        'set this value. It is represented in RFC3339 form and is in UTC.  Populated by the system. '
        'Read-only. Null for lists. More info: '
        'https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata'
    ),
    'pod.podIP': (
        'podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet '
        'allocated.'
    ),
    'pod.nodeName': (
        'NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for '
        'scheduling by the scheduler defined in schedulerName. Once this field is set, the kubelet for '
        'this node becomes responsible for the lifecycle of this pod. This field should not be used to '
        'express a desire for the pod to be scheduled on a specific node. '
        'https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#nodename'
    ),
    'pod.nominatedNodeName': (
        'nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be '
        'scheduled right away as preemption victims receive their graceful termination periods. This '
        'field does not guarantee that the pod will be scheduled on this node. Scheduler may decide to '
        'place the pod elsewhere if other nodes become available sooner. Scheduler may also decide to '
        'give the resources on this node to a higher priority pod that is created after preemption. As a '
        'result, this field may be different than PodSpec.nodeName when the pod is scheduled.'
    ),
    'pod.readinessGates': (
        'If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all '
        'its containers are ready AND all conditions specified in the readiness gates have status equal '
        'to "True" More info: https://git.k8s.io/enhancements/keps/sig-network/580-pod-readiness-gates'
    ),
    'pod.nodeSelector': (
        'NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must '
        "match a node's labels for the pod to be scheduled on that node. More info: "
        'https://kubernetes.io/docs/concepts/configuration/assign-pod-node/'
    ),
    'svc.type': (
        'type determines how the Service is exposed. Defaults to ClusterIP. Valid options are '
        'ExternalName, ClusterIP, NodePort, and LoadBalancer. "ClusterIP" allocates a cluster-internal IP'
        ' address for load-balancing to endpoints. Endpoints are determined by the selector or if that is'
        ' not specified, by manual construction of an Endpoints object or EndpointSlice objects. If '
        'clusterIP is "None", no virtual IP is allocated and the endpoints are published as a set of '
        'endpoints rather than a virtual IP. "NodePort" builds on ClusterIP and allocates a port on every'
        ' node which routes to the same endpoints as the clusterIP. "LoadBalancer" builds on NodePort and'
        ' creates an external load-balancer (if supported in the current cloud) which routes to the same '
        'endpoints as the clusterIP. "ExternalName" aliases this service to the specified externalName. '
        'Several other fields do not apply to ExternalName services. More info: https://kubernetes.io/doc'
        's/concepts/services-networking/service/#publishing-services-service-types'
    ),
    'svc.clusterIP': (
        'clusterIP is the IP address of the service and is usually assigned randomly. If an address is '
        'specified manually, is in-range (as per system configuration), and is not in use, it will be '
        'allocated to the service; otherwise creation of the service will fail. This field may not be '
        'changed through updates unless the type field is also being changed to ExternalName (which '
        'requires this field to be blank) or the type field is being changed from ExternalName (in which '
        'case this field may optionally be specified, as describe above).  Valid values are "None", empty'
        ' string (""), or a valid IP address. Setting this to "None" makes a "headless service" (no '
        'virtual IP), which is useful when direct endpoint connections are preferred and proxying is not '
        'required.  Only applies to types ClusterIP, NodePort, and LoadBalancer. If this field is '
        'specified when creating a Service of type ExternalName, creation will fail. This field will be '
        'wiped when updating a Service to type ExternalName. More info: '
        'https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies'
    ),
    'svc.externalIPs': (
        'externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic '
        'for this service.  These IPs are not managed by Kubernetes.  The user is responsible for '
        'ensuring that traffic arrives at a node with this IP.  A common example is external '
        'load-balancers that are not part of the Kubernetes system.'
    ),
    'svc.ports': (
        'The list of ports that are exposed by this service. More info: '
        'https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies'
    ),
    'svc.selector': (
        'Route service traffic to pods with label keys and values matching this selector. If empty or not'
        ' present, the service is assumed to have an external process managing its endpoints, which '
        'Kubernetes will not modify. Only applies to types ClusterIP, NodePort, and LoadBalancer. Ignored'
        ' if type is ExternalName. More info: '
        'https://kubernetes.io/docs/concepts/services-networking/service/'
    ),
    'ep.subsets': (
        'The set of all endpoints is the union of all subsets. Addresses are placed into subsets '
        'according to the IPs they share. A single address with multiple ports, some of which are ready '
        'and some of which are not (because they come from different containers) will result in the '
        'address being displayed in different subsets for the different ports. No address will appear in '
        'both Addresses and NotReadyAddresses in the same subset. Sets of addresses and ports that '
        'comprise a service.'
    ),
    'node.kubeletVersion': (
        'Kubelet Version reported by the node.'
    ),
    'node.osImage': (
        'OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).'
    ),
    'node.kernelVersion': (
        "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."
    ),
    'node.containerRuntimeVersion': (
        'ContainerRuntime Version reported by the node through runtime remote API (e.g. '
        'containerd://1.4.2).'
    ),
    'node.addresses': (
        'List of addresses reachable to the node. Queried from cloud provider, if available. More info: '
        'https://kubernetes.io/docs/reference/node/node-status/#addresses Note: This field is declared as'
        ' mergeable, but the merge key is not sufficiently unique, which can cause data corruption when '
        'it is merged. Callers should instead use a full-replacement patch. See https://pr.k8s.io/79391 '
        'for an example. Consumers should assume that addresses can change during the lifetime of a Node.'
        ' However, there are some exceptions where this may not be possible, such as Pods that inherit a '
        "Node's address in its own status or consumers of the downward API (status.hostIP)."
    ),
    'event.lastTimestamp': (
        'The time at which the most recent occurrence of this event was recorded.'
    ),
    'event.type': (
        'Type of this event (Normal, Warning), new types could be added in the future'
    ),
    'event.reason': (
        'This should be a short, machine understandable string that gives the reason for the transition '
        "into the object's current status."
    ),
    'event.fieldPath': (
        'If referring to a piece of an object instead of an entire object, this string should contain a '
        'valid JSON/Go field access statement, such as desiredState.manifest.containers[2]. For example, '
        'if the object reference is to a container within a pod, this would take on a value like: '
        '"spec.containers{name}" (where "name" refers to the name of the container that triggered the '
        'event) or if no container name is specified "spec.containers[2]" (container with index 2 in this'
        ' pod). This syntax is chosen only to have some well-defined way of referencing a part of an '
        'object.'
    ),
    'event.message': (
        'A human-readable description of the status of this operation.'
    ),
    'event.firstTimestamp': (
        'The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)'
    ),
    'event.count': (
        'The number of times this event has occurred.'
    ),
    'secret.type': (
        'Used to facilitate programmatic handling of secret data. More info: '
        'https://kubernetes.io/docs/concepts/configuration/secret/#secret-types'
    ),
    'secret.data': (
        "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or "
        "'.'. The serialized form of the secret data is a base64 encoded string, representing the "
        'arbitrary (possibly non-string) data value here. Described in '
        'https://tools.ietf.org/html/rfc4648#section-4'
    ),
    'sa.secrets': (
        'Secrets is a list of the secrets in the same namespace that pods running using this '
        'ServiceAccount are allowed to use. Pods are only limited to this list if this service account '
        'has a "kubernetes.io/enforce-mountable-secrets" annotation set to "true". The '
        '"kubernetes.io/enforce-mountable-secrets" annotation is deprecated since v1.32. Prefer separate '
        'namespaces to isolate access to mounted secrets. This field should not be used to find '
        'auto-generated service account token secrets for use outside of pods. Instead, tokens can be '
        'requested directly using the TokenRequest API, or service account token secrets can be manually '
        'created. More info: https://kubernetes.io/docs/concepts/configuration/secret'
    ),
    'cm.data': (
        "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_'"
        " or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in "
        'Data must not overlap with the keys in the BinaryData field, this is enforced during validation '
        'process.'
    ),
    'deploy.updatedReplicas': (
        'Total number of non-terminating pods targeted by this deployment that have the desired template '
        'spec.'
    ),
    'deploy.availableReplicas': (
        'Total number of available non-terminating pods (ready for at least minReadySeconds) targeted by '
        'this deployment.'
    ),
    'rs.replicas': (
        'Replicas is the number of desired pods. This is a pointer to distinguish between explicit zero '
        'and unspecified. Defaults to 1. More info: '
        'https://kubernetes.io/docs/concepts/workloads/controllers/replicaset'
    ),
    'rs.statusReplicas': (
        'Replicas is the most recently observed number of non-terminating pods. More info: '
        'https://kubernetes.io/docs/concepts/workloads/controllers/replicaset'
    ),
    'rs.readyReplicas': (
        'The number of non-terminating pods targeted by this ReplicaSet with a Ready Condition.'
    ),
    'ds.desiredNumberScheduled': (
        'The total number of nodes that should be running the daemon pod (including nodes correctly '
        'running the daemon pod). More info: '
        'https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/'
    ),
    'ds.currentNumberScheduled': (
        'The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon '
        'pod. More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/'
    ),
    'ds.numberReady': (
        'numberReady is the number of nodes that should be running the daemon pod and have one or more of'
        ' the daemon pod running with a Ready Condition.'
    ),
    'ds.updatedNumberScheduled': (
        'The total number of nodes that are running updated daemon pod'
    ),
    'ds.numberAvailable': (
        'The number of nodes that should be running the daemon pod and have one or more of the daemon pod'
        ' running and available (ready for at least spec.minReadySeconds)'
    ),
    'lease.holderIdentity': (
        'holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader '
        'Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name '
        'field.'
    ),
    'eps.addressType': (
        'addressType specifies the type of address carried by this EndpointSlice. All addresses in this '
        'slice must be the same type. This field is immutable after creation. The following address types'
        ' are currently supported: * IPv4: Represents an IPv4 Address. * IPv6: Represents an IPv6 '
        'Address. * FQDN: Represents a Fully Qualified Domain Name. (Deprecated) The EndpointSlice '
        'controller only generates, and kube-proxy only processes, slices of addressType "IPv4" and '
        '"IPv6". No semantics are defined for the "FQDN" type.'
    ),
    'eps.ports': (
        'ports specifies the list of network ports exposed by each endpoint in this slice. Each port must'
        ' have a unique name. Each slice may include a maximum of 100 ports. Services always have at '
        'least 1 port, so EndpointSlices generated by the EndpointSlice controller will likewise always '
        'have at least 1 port. EndpointSlices used for other purposes may have an empty ports list.'
    ),
    'eps.endpoints': (
        'endpoints is a list of unique endpoints in this slice. Each slice may include a maximum of 1000 '
        'endpoints.'
    ),
}
_DOC.update({
    "event.involvedObject": "The object that this event is about.",
    "event.source": "The component reporting this event. Should be a short machine understandable string.",
    "deploy.selector": (
        "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones "
        "affected by this deployment. It must match the pod template's labels."),
    "rs.selector": (
        "Selector is a label query over pods that should match the replica count. Label keys and values "
        "that must match in order to be controlled by this replica set. It must match the pod template's "
        "labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/"
        "#label-selectors"),
    "ds.selector": (
        "A label query over pods that are managed by the daemon set. Must match in order to be controlled. "
        "It must match the pod template's labels. More info: "
        "https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors"),
    "np.podSelector": (
        "podSelector selects the pods to which this NetworkPolicy object applies. The array of rules is "
        "applied to any pods selected by this field. An empty selector matches all pods in the policy's "
        "namespace. Multiple network policies can select the same set of pods. In this case, the ingress "
        "rules for each are combined additively. This field is optional. If it is not specified, it "
        "defaults to an empty selector."),
    "rb.roleRef": (
        "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace. "
        "If the RoleRef cannot be resolved, the Authorizer must return an error. This field is immutable."),
    "crb.roleRef": (
        "RoleRef can only reference a ClusterRole in the global namespace. If the RoleRef cannot be "
        "resolved, the Authorizer must return an error. This field is immutable."),
})

_CONTAINERS = "Names of each container in the template."
_IMAGES = "Images referenced by each container in the template."


def _col(name: str, type_: str = "string", doc: str = "", priority: int = 0, format_: str = "") -> dict:
    return {"name": name, "type": type_, "format": format_,
            "description": _DOC.get(doc, doc), "priority": priority}


_NAME = _col("Name", doc="name", format_="name")
_AGE = _col("Age", doc="creationTimestamp")

COLUMNS: dict[str, list[dict]] = {
    "pods": [
        _NAME,
        _col("Ready", doc="The aggregate readiness state of this pod for accepting traffic."),
        _col("Status", doc="The aggregate status of the containers in this pod."),
        _col("Restarts", doc="The number of times the containers in this pod have been restarted and when "
                             "the last container in this pod has restarted."),
        _AGE,
        _col("IP", doc="pod.podIP", priority=1),
        _col("Node", doc="pod.nodeName", priority=1),
        _col("Nominated Node", doc="pod.nominatedNodeName", priority=1),
        _col("Readiness Gates", doc="pod.readinessGates", priority=1),
    ],
    "nodes": [
        _NAME,
        _col("Status", doc="The status of the node"),
        _col("Roles", doc="The roles of the node"),
        _AGE,
        _col("Version", doc="node.kubeletVersion"),
        _col("Internal-IP", doc="node.addresses", priority=1),
        _col("External-IP", doc="node.addresses", priority=1),
        _col("OS-Image", doc="node.osImage", priority=1),
        _col("Kernel-Version", doc="node.kernelVersion", priority=1),
        _col("Container-Runtime", doc="node.containerRuntimeVersion", priority=1),
    ],
    "namespaces": [_NAME, _col("Status", doc="The status of the namespace"), _AGE],
    "services": [
        _NAME,
        _col("Type", doc="svc.type"),
        _col("Cluster-IP", doc="svc.clusterIP"),
        _col("External-IP", doc="svc.externalIPs"),
        _col("Port(s)", doc="svc.ports"),
        _AGE,
        _col("Selector", doc="svc.selector", priority=1),
    ],
    "endpoints": [_NAME, _col("Endpoints", doc="ep.subsets"), _AGE],
    "endpointslices": [
        _NAME,
        _col("AddressType", doc="eps.addressType"),
        _col("Ports", doc="eps.ports"),
        _col("Endpoints", doc="eps.endpoints"),
        _AGE,
    ],
    "configmaps": [_NAME, _col("Data", doc="cm.data"), _AGE],
    "secrets": [_NAME, _col("Type", doc="secret.type"), _col("Data", doc="secret.data"), _AGE],
    "serviceaccounts": [_NAME, _col("Secrets", doc="sa.secrets"), _AGE],
    "events": [
        _col("Last Seen", doc="event.lastTimestamp"),
        _col("Type", doc="event.type"),
        _col("Reason", doc="event.reason"),
        _col("Object", doc="event.involvedObject"),
        _col("Subobject", doc="event.fieldPath", priority=1),
        _col("Source", doc="event.source", priority=1),
        _col("Message", doc="event.message"),
        _col("First Seen", doc="event.firstTimestamp", priority=1),
        _col("Count", doc="event.count", priority=1),
        _col("Name", doc="name", priority=1, format_="name"),
    ],
    "leases": [_NAME, _col("Holder", doc="lease.holderIdentity"), _AGE],
    "deployments": [
        _NAME,
        _col("Ready", doc="Number of the pod with ready state"),
        _col("Up-to-date", doc="deploy.updatedReplicas"),
        _col("Available", doc="deploy.availableReplicas"),
        _AGE,
        _col("Containers", doc=_CONTAINERS, priority=1),
        _col("Images", doc=_IMAGES, priority=1),
        _col("Selector", doc="deploy.selector", priority=1),
    ],
    "replicasets": [
        _NAME,
        _col("Desired", "integer", doc="rs.replicas"),
        _col("Current", "integer", doc="rs.statusReplicas"),
        _col("Ready", "integer", doc="rs.readyReplicas"),
        _AGE,
        _col("Containers", doc=_CONTAINERS, priority=1),
        _col("Images", doc=_IMAGES, priority=1),
        _col("Selector", doc="rs.selector", priority=1),
    ],
    "statefulsets": [
        _NAME,
        _col("Ready", doc="Number of the pod with ready state"),
        _AGE,
        _col("Containers", doc=_CONTAINERS, priority=1),
        _col("Images", doc=_IMAGES, priority=1),
    ],
    "daemonsets": [
        _NAME,
        _col("Desired", "integer", doc="ds.desiredNumberScheduled"),
        _col("Current", "integer", doc="ds.currentNumberScheduled"),
        _col("Ready", "integer", doc="ds.numberReady"),
        _col("Up-to-date", "integer", doc="ds.updatedNumberScheduled"),
        _col("Available", "integer", doc="ds.numberAvailable"),
        _col("Node Selector", doc="pod.nodeSelector"),
        _AGE,
        _col("Containers", doc=_CONTAINERS, priority=1),
        _col("Images", doc=_IMAGES, priority=1),
        _col("Selector", doc="ds.selector", priority=1),
    ],
    "networkpolicies": [_NAME, _col("Pod-Selector", doc="np.podSelector"), _AGE],
    "ingresses": [
        _NAME,
        _col("Class", doc="The name of the IngressClass resource that should be used for additional "
                          "configuration"),
        _col("Hosts", doc="Hosts that incoming requests are matched against before the ingress rule"),
        _col("Address", doc="Address is a list containing ingress points for the load-balancer"),
        _col("Ports", doc="Ports of TLS configurations that open"),
        _AGE,
    ],
    "ingressclasses": [
        _NAME,
        _col("Controller", doc="Controller that is responsible for handling this class"),
        _col("Parameters", doc="A reference to a resource with additional parameters"),
        _AGE,
    ],
    "rolebindings": [
        _NAME,
        _col("Role", doc="rb.roleRef"),
        _AGE,
        _col("Users", doc="Users in the roleBinding", priority=1),
        _col("Groups", doc="Groups in the roleBinding", priority=1),
        _col("ServiceAccounts", doc="ServiceAccounts in the roleBinding", priority=1),
    ],
    "clusterrolebindings": [
        _NAME,
        _col("Role", doc="crb.roleRef"),
        _AGE,
        _col("Users", doc="Users in the clusterRoleBinding", priority=1),
        _col("Groups", doc="Groups in the clusterRoleBinding", priority=1),
        _col("ServiceAccounts", doc="ServiceAccounts in the clusterRoleBinding", priority=1),
    ],
}

# Kinds without a printer (Role, ClusterRole, ...): the default table convertor.
DEFAULT_COLUMNS = [_NAME, _col("Created At", "date", doc="creationTimestamp")]


# ---------------------------------------------------------------------------
# Time


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 time (metav1.Time or MicroTime) as an aware datetime; None if unset or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration: about 2-3 significant figures ("5s", "3m2s", "2d3h")."""
    total = int(seconds)  # Go's int(d.Seconds()) truncates toward zero
    if total < -1:
        return "<invalid>"
    if total < 0:
        return "0s"
    if total < 60 * 2:
        return f"{total}s"
    minutes = total // 60
    if minutes < 10:
        rest = total % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = total // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _since(text: Any, now: datetime) -> str:
    moment = parse_time(text)
    if moment is None:
        return "<unknown>"
    return human_duration((now - moment).total_seconds())


# ---------------------------------------------------------------------------
# Formatting helpers (labels, selectors, containers)


def format_labels(labels: dict | None) -> str:
    """labels.FormatLabels: k=v sorted by key, comma-joined; <none> when empty."""
    if not labels:
        return "<none>"
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def selector_string(selector: dict | None) -> str:
    """A LabelSelector as labels.Selector.String() prints it ("" for none or empty)."""
    if not selector:
        return ""
    requirements: list[tuple[str, str]] = []
    for key, value in (selector.get("matchLabels") or {}).items():
        requirements.append((key, f"{key}={value}"))
    for expression in selector.get("matchExpressions") or []:
        key = expression.get("key", "")
        operator = expression.get("operator", "")
        values = ",".join(sorted(str(v) for v in expression.get("values") or []))
        if operator == "In":
            requirements.append((key, f"{key} in ({values})"))
        elif operator == "NotIn":
            requirements.append((key, f"{key} notin ({values})"))
        elif operator == "Exists":
            requirements.append((key, key))
        elif operator == "DoesNotExist":
            requirements.append((key, f"!{key}"))
        else:
            return "<error>"
    return ",".join(text for _, text in sorted(requirements, key=lambda r: r[0]))


def format_label_selector(selector: dict | None) -> str:
    """metav1.FormatLabelSelector: the selector string, <none> when it selects by nothing."""
    text = selector_string(selector)
    return text or "<none>"


def _containers(template_spec: dict) -> tuple[str, str]:
    containers = template_spec.get("containers") or []
    return (",".join(c.get("name", "") for c in containers),
            ",".join(c.get("image", "") for c in containers))


def _template_spec(obj: dict) -> dict:
    return ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}


def _list_with_more(items: list[str], count: int, limit: int = 3) -> str:
    text = ",".join(items[:limit])
    if count > limit:
        return f"{text} + {count - limit} more..."
    return text or "<unset>"


def _join_host_port(host: str, port: Any) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------
# Rows


def _pod_row(pod: dict, now: datetime) -> tuple[list, list | None]:
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    meta = pod.get("metadata") or {}
    phase = status.get("phase", "")
    reason = status.get("reason") or phase
    conditions = status.get("conditions") or []
    for condition in conditions:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"

    init_specs = {c.get("name"): c for c in spec.get("initContainers") or []}

    def restartable(name: str) -> bool:
        return (init_specs.get(name) or {}).get("restartPolicy") == "Always"

    total = len(spec.get("containers") or []) + sum(1 for n in init_specs if restartable(n))
    ready = restarts = sidecar_restarts = 0
    last_restart: datetime | None = None
    last_sidecar_restart: datetime | None = None

    def finished(container: dict) -> datetime | None:
        terminated = (container.get("lastState") or {}).get("terminated")
        return parse_time(terminated.get("finishedAt")) if terminated else None

    initializing = False
    init_statuses = status.get("initContainerStatuses") or []
    for index, container in enumerate(init_statuses):
        restarts += int(container.get("restartCount") or 0)
        ended = finished(container)
        if ended and (last_restart is None or last_restart < ended):
            last_restart = ended
        is_sidecar = restartable(container.get("name", ""))
        if is_sidecar:
            sidecar_restarts += int(container.get("restartCount") or 0)
            if ended and (last_sidecar_restart is None or last_sidecar_restart < ended):
                last_sidecar_restart = ended
        state = container.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated is not None and int(terminated.get("exitCode") or 0) == 0:
            continue
        if is_sidecar and container.get("started"):
            if container.get("ready"):
                ready += 1
            continue
        if terminated is not None:
            if not terminated.get("reason"):
                if terminated.get("signal"):
                    reason = f"Init:Signal:{terminated['signal']}"
                else:
                    reason = f"Init:ExitCode:{int(terminated.get('exitCode') or 0)}"
            else:
                reason = "Init:" + terminated["reason"]
        elif waiting is not None and waiting.get("reason") and waiting["reason"] != "PodInitializing":
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{index}/{len(spec.get('initContainers') or [])}"
        initializing = True
        break

    initialized = any(c.get("type") == "Initialized" and c.get("status") == "True" for c in conditions)
    if not initializing or initialized:
        restarts = sidecar_restarts
        last_restart = last_sidecar_restart
        has_running = False
        for container in reversed(status.get("containerStatuses") or []):
            restarts += int(container.get("restartCount") or 0)
            ended = finished(container)
            if ended and (last_restart is None or last_restart < ended):
                last_restart = ended
            state = container.get("state") or {}
            waiting, terminated = state.get("waiting"), state.get("terminated")
            if waiting is not None and waiting.get("reason"):
                reason = waiting["reason"]
            elif terminated is not None and terminated.get("reason"):
                reason = terminated["reason"]
            elif terminated is not None:
                if terminated.get("signal"):
                    reason = f"Signal:{terminated['signal']}"
                else:
                    reason = f"ExitCode:{int(terminated.get('exitCode') or 0)}"
            elif container.get("ready") and state.get("running") is not None:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            pod_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
            reason = "Running" if pod_ready else "NotReady"

    if meta.get("deletionTimestamp") and status.get("reason") == "NodeLost":
        reason = "Unknown"
    elif meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed"):
        reason = "Terminating"

    restarts_text = str(restarts)
    if restarts and last_restart is not None:
        restarts_text = f"{restarts} ({human_duration((now - last_restart).total_seconds())} ago)"

    ips = status.get("podIPs") or []
    # Kubernetes reads podIPs (the kubelet writes both); podIP covers objects written without it.
    pod_ip = (ips[0].get("ip") if ips else status.get("podIP")) or "<none>"
    gates = spec.get("readinessGates") or []
    gates_text = "<none>"
    if gates:
        true = 0
        for gate in gates:
            for condition in conditions:
                if condition.get("type") == gate.get("conditionType"):
                    true += condition.get("status") == "True"
                    break
        gates_text = f"{true}/{len(gates)}"
    cells = [meta.get("name", ""), f"{ready}/{total}", reason, restarts_text,
             _since(meta.get("creationTimestamp"), now), pod_ip, spec.get("nodeName") or "<none>",
             status.get("nominatedNodeName") or "<none>", gates_text]
    row_conditions = None
    if phase == "Succeeded":
        row_conditions = [{"type": "Completed", "status": "True", "reason": "Succeeded",
                           "message": "The pod has completed successfully."}]
    elif phase == "Failed":
        row_conditions = [{"type": "Completed", "status": "True", "reason": "Failed",
                           "message": "The pod failed."}]
    return cells, row_conditions


def _node_row(node: dict, now: datetime) -> list:
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    states = []
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    if ready:
        states.append("Ready" if ready[-1].get("status") == "True" else "NotReady")
    else:
        states.append("Unknown")
    if spec.get("unschedulable"):
        states.append("SchedulingDisabled")
    roles = set()
    for key, value in (meta.get("labels") or {}).items():
        if key.startswith("node-role.kubernetes.io/"):
            role = key[len("node-role.kubernetes.io/"):]
            if role:
                roles.add(role)
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    info = status.get("nodeInfo") or {}

    def address(kind: str) -> str:
        for item in status.get("addresses") or []:
            if item.get("type") == kind:
                return item.get("address", "")
        return "<none>"
    return [meta.get("name", ""), ",".join(states), ",".join(sorted(roles)) or "<none>",
            _since(meta.get("creationTimestamp"), now), info.get("kubeletVersion", ""),
            address("InternalIP"), address("ExternalIP"), info.get("osImage") or "<unknown>",
            info.get("kernelVersion") or "<unknown>", info.get("containerRuntimeVersion") or "<unknown>"]


def _service_row(svc: dict, now: datetime) -> list:
    meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
    kind = spec.get("type", "")
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    cluster_ip = ips[0] if ips else "<none>"
    external = spec.get("externalIPs") or []
    if kind in ("ClusterIP", "NodePort"):
        external_ip = ",".join(external) or "<none>"
    elif kind == "LoadBalancer":
        lb = sorted({i.get("ip") or i.get("hostname") for i in
                     ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
                     if i.get("ip") or i.get("hostname")})
        if external:
            external_ip = ",".join(lb + external)
        else:
            external_ip = ",".join(lb) or "<pending>"
    elif kind == "ExternalName":
        external_ip = spec.get("externalName", "")
    else:
        external_ip = "<unknown>"
    ports = []
    for port in spec.get("ports") or []:
        protocol = port.get("protocol", "TCP")
        if port.get("nodePort"):
            ports.append(f"{port.get('port')}:{port['nodePort']}/{protocol}")
        else:
            ports.append(f"{port.get('port')}/{protocol}")
    return [meta.get("name", ""), kind, cluster_ip, external_ip, ",".join(ports) or "<none>",
            _since(meta.get("creationTimestamp"), now), format_labels(spec.get("selector"))]


def _endpoints_row(ep: dict, now: datetime) -> list:
    meta = ep.get("metadata") or {}
    subsets = ep.get("subsets") or []
    listed: list[str] = []
    count = 0
    for subset in subsets:
        addresses = [a.get("ip", "") for a in subset.get("addresses") or []]
        ports = subset.get("ports") or []
        if not ports:
            count += len(addresses)
            listed.extend(addresses)
            continue
        for port in ports:
            count += len(addresses)
            listed.extend(_join_host_port(a, port.get("port")) for a in addresses)
    if not subsets:
        text = "<none>"
    else:
        text = ",".join(listed[:3])
        if count > 3:
            text = f"{text} + {count - 3} more..."
    return [meta.get("name", ""), text, _since(meta.get("creationTimestamp"), now)]


def _endpointslice_row(eps: dict, now: datetime) -> list:
    meta = eps.get("metadata") or {}
    ports = []
    for port in eps.get("ports") or []:
        if port.get("port") is not None:
            ports.append(str(port["port"]))
        elif port.get("name") is not None:
            ports.append(port["name"])
        else:
            ports.append("*")
    addresses = [a for e in eps.get("endpoints") or [] for a in e.get("addresses") or []]
    return [meta.get("name", ""), eps.get("addressType", ""), _list_with_more(ports, len(ports)),
            _list_with_more(addresses, len(addresses)), _since(meta.get("creationTimestamp"), now)]


def _event_row(event: dict, now: datetime) -> list:
    meta = event.get("metadata") or {}
    if "regarding" in event or str(event.get("apiVersion", "")).startswith("events.k8s.io/"):
        # events.k8s.io/v1 names the same fields differently.
        involved = event.get("regarding") or {}
        source = event.get("deprecatedSource") or {}
        first, last = event.get("deprecatedFirstTimestamp"), event.get("deprecatedLastTimestamp")
        count = event.get("deprecatedCount") or 0
        message = event.get("note", "")
    else:
        involved = event.get("involvedObject") or {}
        source = event.get("source") or {}
        first, last = event.get("firstTimestamp"), event.get("lastTimestamp")
        count = event.get("count") or 0
        message = event.get("message", "")
    first_text = _since(first, now) if parse_time(first) else _since(event.get("eventTime"), now)
    last_text = _since(last, now) if parse_time(last) else first_text
    series = event.get("series")
    if series:
        last_text = _since(series.get("lastObservedTime"), now)
        count = series.get("count") or 0
    elif not count:
        count = 1
    kind = str(involved.get("kind", "")).lower()
    target = f"{kind}/{involved['name']}" if involved.get("name") else kind
    component = source.get("component") or event.get("reportingController") or ""
    instance = source.get("host") or event.get("reportingInstance") or ""
    source_text = f"{component}, {instance}" if instance else component
    return [last_text, event.get("type", ""), event.get("reason", ""), target,
            involved.get("fieldPath", ""), source_text, str(message).strip(), first_text, int(count),
            meta.get("name", "")]


def _deployment_row(obj: dict, now: datetime) -> list:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    names, images = _containers(_template_spec(obj))
    return [meta.get("name", ""), f"{int(status.get('readyReplicas') or 0)}/{int(spec.get('replicas', 1))}",
            int(status.get("updatedReplicas") or 0), int(status.get("availableReplicas") or 0),
            _since(meta.get("creationTimestamp"), now), names, images, selector_string(spec.get("selector"))]


def _replicaset_row(obj: dict, now: datetime) -> list:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    names, images = _containers(_template_spec(obj))
    return [meta.get("name", ""), int(spec.get("replicas", 1)), int(status.get("replicas") or 0),
            int(status.get("readyReplicas") or 0), _since(meta.get("creationTimestamp"), now),
            names, images, format_label_selector(spec.get("selector"))]


def _statefulset_row(obj: dict, now: datetime) -> list:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    names, images = _containers(_template_spec(obj))
    return [meta.get("name", ""), f"{int(status.get('readyReplicas') or 0)}/{int(spec.get('replicas', 1))}",
            _since(meta.get("creationTimestamp"), now), names, images]


def _daemonset_row(obj: dict, now: datetime) -> list:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    template_spec = _template_spec(obj)
    names, images = _containers(template_spec)
    counts = [int(status.get(k) or 0) for k in ("desiredNumberScheduled", "currentNumberScheduled",
                                                  "numberReady", "updatedNumberScheduled", "numberAvailable")]
    return [meta.get("name", ""), *counts, format_labels(template_spec.get("nodeSelector")),
            _since(meta.get("creationTimestamp"), now), names, images,
            format_label_selector(spec.get("selector"))]


def _ingress_row(obj: dict, now: datetime) -> list:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    rules = spec.get("rules") or []
    hosts: list[str] = []
    more = False
    for rule in rules:
        if len(hosts) == 3:
            more = True
        if not more and rule.get("host"):
            hosts.append(rule["host"])
    hosts_text = ",".join(hosts) if hosts else "*"
    if hosts and more:
        hosts_text = f"{hosts_text} + {len(rules) - 3} more..."
    address = ",".join(sorted({i.get("ip") or i.get("hostname") for i in
                               (status.get("loadBalancer") or {}).get("ingress") or []
                               if i.get("ip") or i.get("hostname")}))
    return [meta.get("name", ""), spec.get("ingressClassName") or "<none>", hosts_text, address,
            "80, 443" if spec.get("tls") else "80", _since(meta.get("creationTimestamp"), now)]


def _ingressclass_row(obj: dict, now: datetime) -> list:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    parameters = "<none>"
    ref = spec.get("parameters")
    if ref:
        parameters = ref.get("kind", "")
        if ref.get("apiGroup") is not None:
            parameters += "." + ref["apiGroup"]
        parameters += "/" + ref.get("name", "")
    return [meta.get("name", ""), spec.get("controller", ""), parameters,
            _since(meta.get("creationTimestamp"), now)]


def _binding_row(obj: dict, now: datetime) -> list:
    meta, ref = obj.get("metadata") or {}, obj.get("roleRef") or {}
    users, groups, accounts = [], [], []
    for subject in obj.get("subjects") or []:
        kind = subject.get("kind")
        if kind == "ServiceAccount":
            accounts.append(f"{subject.get('namespace', '')}/{subject.get('name', '')}")
        elif kind == "User":
            users.append(subject.get("name", ""))
        elif kind == "Group":
            groups.append(subject.get("name", ""))
    return [meta.get("name", ""), f"{ref.get('kind', '')}/{ref.get('name', '')}",
            _since(meta.get("creationTimestamp"), now), ", ".join(users), ", ".join(groups),
            ", ".join(accounts)]


def _simple(*cells: Callable[[dict], Any]) -> Callable[[dict, datetime], list]:
    def row(obj: dict, now: datetime) -> list:
        meta = obj.get("metadata") or {}
        return [meta.get("name", ""), *(cell(obj) for cell in cells), _since(meta.get("creationTimestamp"), now)]
    return row


_ROWS: dict[str, Callable[[dict, datetime], list]] = {
    "nodes": _node_row,
    "namespaces": _simple(lambda o: (o.get("status") or {}).get("phase", "")),
    "services": _service_row,
    "endpoints": _endpoints_row,
    "endpointslices": _endpointslice_row,
    "configmaps": _simple(lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
    "secrets": _simple(lambda o: o.get("type", ""), lambda o: len(o.get("data") or {})),
    "serviceaccounts": _simple(lambda o: len(o.get("secrets") or [])),
    "events": _event_row,
    "leases": _simple(lambda o: (o.get("spec") or {}).get("holderIdentity") or ""),
    "deployments": _deployment_row,
    "replicasets": _replicaset_row,
    "statefulsets": _statefulset_row,
    "daemonsets": _daemonset_row,
    "networkpolicies": _simple(lambda o: format_label_selector((o.get("spec") or {}).get("podSelector"))),
    "ingresses": _ingress_row,
    "ingressclasses": _ingressclass_row,
    "rolebindings": _binding_row,
    "clusterrolebindings": _binding_row,
}


def _default_row(obj: dict) -> list:
    meta = obj.get("metadata") or {}
    created = parse_time(meta.get("creationTimestamp"))
    # Go formats the zero time when an object has none.
    if created is None:
        return [meta.get("name", ""), "0001-01-01T00:00:00Z"]
    return [meta.get("name", ""), created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]


def columns(resource: str) -> list[dict]:
    """The column definitions of a resource's Table (plural name, e.g. "pods")."""
    return [dict(c) for c in COLUMNS.get(resource, DEFAULT_COLUMNS)]


def _row_object(obj: dict, include_object: str) -> dict | None:
    if include_object == "Object":
        return obj
    if include_object == "None":
        return None
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata") or {}}


def table_row(cells: list, obj: dict, include_object: str, conditions: list | None = None) -> dict:
    """One row of a Table: its cells, the row's conditions, the object as includeObject asks."""
    row: dict[str, Any] = {"cells": cells}
    if conditions:
        row["conditions"] = conditions
    row_object = _row_object(obj, include_object)
    if row_object is not None:
        row["object"] = row_object
    return row


def table_of(rows: list[dict], column_definitions: list[dict] | None, resource_version: str = "",
             continue_token: str = "", remaining_item_count: int | None = None) -> dict:
    """A meta.k8s.io/v1 Table of `rows` (column_definitions None: TableOptions.noHeaders)."""
    metadata: dict[str, Any] = {}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    if continue_token:
        metadata["continue"] = continue_token
    if remaining_item_count is not None:
        metadata["remainingItemCount"] = remaining_item_count
    result: dict[str, Any] = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}
    if column_definitions is not None:
        result["columnDefinitions"] = column_definitions
    result["rows"] = rows
    return result


def table(resource: Any, objects: list[dict], include_object: str = "Metadata",
          now: datetime | None = None, *, resource_version: str = "", continue_token: str = "",
          remaining_item_count: int | None = None, no_headers: bool = False) -> dict:
    """A meta.k8s.io/v1 Table of `objects` of `resource` (its plural name, or
    anything with a `plural` attribute such as resources.ResourceInfo).

    include_object is the request's includeObject: "None", "Metadata" (a
    PartialObjectMetadata per row, the default) or "Object". now is the time
    ages count from (the current time when None). no_headers leaves out the
    column definitions (TableOptions.noHeaders)."""
    # The server may hand its ResourceInfo rather than the plural name.
    resource = getattr(resource, "plural", resource)
    if include_object not in ("None", "Metadata", "Object"):
        raise ValueError(f"includeObject must be None, Metadata or Object, not {include_object!r}")
    moment = now or datetime.now(UTC)
    rows = []
    for obj in objects:
        conditions = None
        if resource == "pods":
            cells, conditions = _pod_row(obj, moment)
        elif resource in _ROWS:
            cells = _ROWS[resource](obj, moment)
        else:
            cells = _default_row(obj)
        rows.append(table_row(cells, obj, include_object, conditions))
    return table_of(rows, None if no_headers else columns(resource), resource_version, continue_token,
                    remaining_item_count)
