"""The topology file's schema: what a person writes to describe a lab.

Keys are camelCase in YAML, as in Kubernetes manifests. Unknown keys are
errors (a typo must not be silently ignored). Cross-field rules (duplicates,
CIDR sizes, pinned nodes) live in :mod:`emu.api.topology.validate`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from emu.node.records import (
    DEFAULT_DNS_DOMAIN,
    DEFAULT_POD_SUBNET,
    DEFAULT_PROXY_MODE,
    DEFAULT_SERVICE_SUBNET,
    parse_duration,
)

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Kubernetes' IANA_SVC_NAME: what a container port's name may be.
PORT_NAME = r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


def _dns_label(value: str) -> str:
    import re

    if len(value) > 63 or not re.match(DNS1123_LABEL, value):
        raise ValueError(
            f"'{value}' is not a DNS-1123 label: use at most 63 lower-case letters, digits "
            "and '-', starting and ending with a letter or digit (e.g. 'web-1')"
        )
    return value


def _port_name(value: str) -> str:
    import re

    if len(value) > 15 or not re.match(PORT_NAME, value) or "--" in value:
        raise ValueError(
            f"'{value}' is not a valid port name: use at most 15 lower-case letters, "
            "digits and '-', with at least one letter (e.g. 'http')"
        )
    return value


def _ipv4_network(value: str) -> str:
    try:
        network = ipaddress.IPv4Network(value, strict=True)
    except ValueError as error:
        raise ValueError(
            f"'{value}' is not an IPv4 CIDR with its host bits zero (e.g. 10.244.0.0/16): {error}"
        ) from None
    return str(network)


DNSLabel = Annotated[str, AfterValidator(_dns_label)]
PortName = Annotated[str, AfterValidator(_port_name)]
IPv4CIDR = Annotated[str, AfterValidator(_ipv4_network)]
Port = Annotated[int, Field(ge=1, le=65535)]


class Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        strict=False,
    )


class Networking(Model):
    """Address plan and proxy mode of the cluster."""

    pod_subnet: IPv4CIDR = Field(DEFAULT_POD_SUBNET, description="Pod addresses; each node gets one /24 of it.")
    service_subnet: IPv4CIDR = Field(DEFAULT_SERVICE_SUBNET, description="Service (ClusterIP) addresses.")
    proxy_mode: Literal["iptables", "ipvs", "nftables"] = Field(
        DEFAULT_PROXY_MODE, description="How service rules are written, as kube-proxy's --proxy-mode."
    )
    dns_domain: str = Field(DEFAULT_DNS_DOMAIN, description="The cluster's DNS domain.")
    cluster_network: IPv4CIDR | None = Field(
        None, description="The Docker network's subnet (a /24 or larger); default: a free /24 emu picks."
    )
    load_balancer_pool: str | None = Field(
        None,
        description="LoadBalancer addresses on the cluster network, FIRST-LAST; default: the last 32 of it.",
    )
    # kube-proxy's options that change its rules, named as its KubeProxyConfiguration names them.
    masquerade_all: bool | None = Field(
        None, description="kube-proxy's masqueradeAll: SNAT every packet to a cluster IP; default: false."
    )
    cluster_cidr: str | None = Field(
        None,
        alias="clusterCIDR",
        description=("kube-proxy's clusterCIDR, its local-traffic detector: cluster IP traffic from outside it is "
                     'masqueraded; default: podSubnet; "" for none.'),
    )
    masquerade_bit: Annotated[int, Field(ge=0, le=31)] | None = Field(
        None, description="kube-proxy's masqueradeBit: the bit of the packet mark that asks for SNAT; default: 14 (0x4000)."
    )
    node_port_addresses: list[str] | None = Field(
        None,
        description=("kube-proxy's nodePortAddresses: CIDRs whose node addresses take NodePorts, or [primary] (the "
                     "node's IP); [] for every address; default: [] in iptables mode, [primary] in nftables mode."),
    )

    @field_validator("cluster_cidr")
    @classmethod
    def _cluster_cidr(cls, value: str | None) -> str | None:
        return value if not value else _ipv4_network(value)

    @field_validator("node_port_addresses")
    @classmethod
    def _node_port_addresses(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if "primary" in value:
            if value != ["primary"]:
                raise ValueError(
                    "'primary' stands alone in nodePortAddresses (kube-proxy's rule); use [primary] or CIDRs"
                )
            return value
        return [_ipv4_network(cidr) for cidr in value]

    @field_validator("dns_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        labels = value.rstrip(".").split(".")
        for label in labels:
            _dns_label(label)
        return ".".join(labels)


class PortMapping(Model):
    """A port of the Docker host forwarded to the node container, as kind's extraPortMappings."""

    container_port: Port = Field(description="Port on the node: a NodePort, or 80/443 of the ingress controller.")
    host_port: Port = Field(description="Port on the Docker host (curl http://localhost:HOSTPORT/).")
    listen_address: str = Field("0.0.0.0", description="Host address to listen on (127.0.0.1: this machine only).")
    protocol: Literal["TCP", "UDP"] = "TCP"


class Netem(Model):
    """Link impairment on a node's link to the cluster network (its eth0), as `emu
    netem set NODE` sets it: netem on the interface's egress, so a delay on two
    nodes adds up in the round trip between them (containerlab's `tools netem`,
    Mininet's TCLink). Needs a kernel with sch_netem: `runtime: uml` here."""

    delay_ms: Annotated[float, Field(ge=0)] | None = Field(None, description="Delay each packet, in ms.")
    jitter_ms: Annotated[float, Field(ge=0)] | None = Field(None, description="Vary the delay by up to this, in ms.")
    loss_percent: Annotated[float, Field(ge=0, le=100)] | None = Field(None, description="Drop this % of packets.")
    rate_kbit: Annotated[float, Field(ge=1)] | None = Field(None, description="Limit the rate, in kbit/s.")
    corrupt_percent: Annotated[float, Field(ge=0, le=100)] | None = Field(
        None, description="Corrupt one bit in this % of packets."
    )

    @model_validator(mode="after")
    def _something_and_jitter_with_delay(self) -> Netem:
        if all(value is None for value in self.__dict__.values()):
            raise ValueError("give at least one of delayMs, jitterMs, lossPercent, rateKbit, corruptPercent")
        if self.jitter_ms and not self.delay_ms:
            raise ValueError("jitterMs varies a delay: give delayMs too (netem's jitter needs one)")
        return self


class Node(Model):
    """One Kubernetes node: a Docker container."""

    name: DNSLabel
    role: Literal["control-plane", "worker"] = "worker"
    labels: dict[str, str] = Field(default_factory=dict)
    host: DNSLabel | None = Field(
        None, description="The host (a name under hosts:) this node runs on; default: spread evenly over the hosts."
    )
    extra_port_mappings: list[PortMapping] = Field(
        default_factory=list, description="Docker host ports forwarded to this node (kind's extraPortMappings)."
    )
    netem: Netem | None = Field(
        None, description="Impairment (delay, jitter, loss, rate, corruption) on the node's link to the cluster "
        "network, set at `emu up` and kept by `emu apply`; runtime: uml only (its kernel has netem)."
    )


class EngineTLS(Model):
    """Client certificates for a Docker engine reached over TCP with TLS."""

    ca: str = Field(description="Path of the CA certificate that signed the engine's certificate.")
    cert: str = Field(description="Path of the client certificate.")
    key: str = Field(description="Path of the client certificate's key.")


def _jump_host(value: str) -> str:
    parse_jump(value, "root")
    return value


JumpHost = Annotated[str, AfterValidator(_jump_host)]  # user@host[:port], as ssh -J takes it


class Host(Model):
    """One machine with a Docker engine, for a cluster spread over several (Docker Swarm)."""

    name: DNSLabel = Field(description="How nodes (host:) and messages name this machine.")
    address: str = Field(description="Address (IP or DNS name) that SSH and the other hosts' swarm traffic use.")
    user: str = Field("root", description="SSH user.")
    port: Port = Field(22, description="SSH port.")
    ssh_key: str | None = Field(None, description="Path of the SSH private key; default: ssh's own choice.")
    known_hosts: str | None = Field(
        None, description="ssh's known_hosts file for this host; default: ssh's own (new keys are accepted once)."
    )
    engine: str = Field(
        "ssh",
        description="How emu reaches the host's Docker engine: ssh (through an SSH tunnel to dockerSocket, the "
        "default), tcp://HOST:PORT (with tls:), or unix:///PATH (an engine on this machine).",
    )
    docker_socket: str = Field(
        "/var/run/docker.sock", description="The Docker engine's socket on the host (for engine: ssh and over SSH)."
    )
    tls: EngineTLS | None = None
    advertise_address: str | None = Field(
        None, description="Address the host advertises to the swarm; default: address."
    )
    jump: JumpHost | None = Field(
        None, description="A jump host (bastion) SSH goes through, as ssh -J: user@host[:port] (user: this host's "
        "user when left out); its key and known_hosts are this host's sshKey and knownHosts.",
    )

    @property
    def jump_target(self) -> tuple[str, str, int] | None:
        """(user, address, port) of the jump host, or None."""
        return parse_jump(self.jump, self.user) if self.jump else None

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        if value != "ssh" and not value.startswith(("tcp://", "unix://")):
            raise ValueError(f"'{value}' is not an engine address: use ssh, tcp://HOST:PORT or unix:///PATH")
        return value

    @property
    def swarm_address(self) -> str:
        return self.advertise_address or self.address


def parse_jump(value: str, default_user: str) -> tuple[str, str, int]:
    """user@host[:port] (host: a DNS name, an IPv4 address, or an IPv6 one in brackets) as (user, host, port)."""
    import re

    match = re.fullmatch(r"(?:([A-Za-z0-9._][-A-Za-z0-9._]*)@)?(\[[0-9A-Fa-f:.]+\]|[-A-Za-z0-9.]+)(?::(\d+))?", value)
    port = int(match.group(3)) if match and match.group(3) else 22
    if not match or not 1 <= port <= 65535:
        raise ValueError(f"'{value}' is not a jump host: write user@host or user@host:port (an IPv6 address in "
                         "brackets: user@[2001:db8::1]:22)")
    return match.group(1) or default_user, match.group(2).strip("[]"), port


class Inventory(Model):
    """A file naming the hosts of a lab (emu up --hosts FILE): the topology's hosts: on its own."""

    hosts: Annotated[list[Host], Field(min_length=1)]
    jump: JumpHost | None = Field(None, description="The jump host of every host that names none (see hosts[].jump).")


class ContainerPort(Model):
    name: PortName | None = None
    container_port: Port
    protocol: Literal["TCP", "UDP"] = "TCP"


class ConfigMapKeySelector(Model):
    name: DNSLabel = Field(description="The ConfigMap (in the pod's namespace).")
    key: str
    optional: bool = False


class ObjectFieldSelector(Model):
    field_path: Literal[
        "metadata.name", "metadata.namespace", "spec.nodeName", "spec.serviceAccountName",
        "status.hostIP", "status.podIP",
    ]  # fmt: skip


class EnvVarSource(Model):
    config_map_key_ref: ConfigMapKeySelector | None = None
    field_ref: ObjectFieldSelector | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.config_map_key_ref is None) == (self.field_ref is None):
            raise ValueError("valueFrom needs exactly one of configMapKeyRef or fieldRef")
        return self


class EnvVar(Model):
    name: Annotated[str, Field(pattern=ENV_NAME)]
    value: str = ""
    value_from: EnvVarSource | None = Field(None, description="A ConfigMap key or a field of the pod (downward API).")


class ConfigMapEnvSource(Model):
    name: DNSLabel
    optional: bool = False


class EnvFromSource(Model):
    """Every key of a ConfigMap as an environment variable (keys that are not valid names are skipped)."""

    config_map_ref: ConfigMapEnvSource
    prefix: str = ""


class VolumeMount(Model):
    name: DNSLabel = Field(description="A volume of the pod.")
    mount_path: Annotated[str, Field(pattern=r"^/")]
    read_only: bool = False
    sub_path: str = Field("", description="One file of the volume, mounted as the file mountPath.")

    @field_validator("sub_path")
    @classmethod
    def _sub_path(cls, value: str) -> str:
        return _relative_path(value) if value else value


class HTTPGetAction(Model):
    path: str = "/"
    port: Port | PortName


class TCPSocketAction(Model):
    port: Port | PortName


class ExecAction(Model):
    command: Annotated[list[str], Field(min_length=1)]


class Probe(Model):
    """A readiness probe, run by the node's agent from the node's root namespace
    (exec probes run inside the pod), as the kubelet does."""

    http_get: HTTPGetAction | None = None
    tcp_socket: TCPSocketAction | None = None
    exec: ExecAction | None = None
    initial_delay_seconds: Annotated[int, Field(ge=0)] = 0
    period_seconds: Annotated[float, Field(gt=0)] = 10
    timeout_seconds: Annotated[float, Field(gt=0)] = 1
    success_threshold: Annotated[int, Field(ge=1)] = 1
    failure_threshold: Annotated[int, Field(ge=1)] = 3

    @model_validator(mode="after")
    def _one_handler(self):
        handlers = [h for h in (self.http_get, self.tcp_socket, self.exec) if h is not None]
        if len(handlers) != 1:
            raise ValueError("a probe needs exactly one of httpGet, tcpSocket or exec")
        return self


class Container(Model):
    """A process group of a pod. Either a command or a built-in workload."""

    name: DNSLabel
    command: list[str] | None = Field(
        None, description="Program and arguments, run in the pod's network namespace."
    )
    workload: Literal["netexec", "coredns", "pause"] | None = Field(
        None,
        description="A built-in workload: netexec (HTTP /hostname, /clientip, /echo; UDP echo), coredns "
        "(emu's cluster DNS server) or pause (does nothing, as the pause container).",
    )
    args: list[str] = Field(default_factory=list, description="Arguments for the command or workload.")
    ports: list[ContainerPort] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    env_from: list[EnvFromSource] = Field(default_factory=list)
    volume_mounts: list[VolumeMount] = Field(default_factory=list)
    readiness_probe: Probe | None = None
    image: str | None = Field(
        None,
        description="A container image: run as a Docker container in the pod's network namespace (command and "
        "args replace its entrypoint and cmd, as in Kubernetes). With a workload, only a name `emu get` shows.",
    )

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, value):
        # A string is a shell command line, as people write it in a terminal.
        if isinstance(value, str):
            return ["/bin/sh", "-c", value]
        return value

    @model_validator(mode="after")
    def _one_program(self):
        if self.workload is not None and self.command is not None:
            raise ValueError(f"container '{self.name}' has both 'command' and 'workload'; keep one")
        if self.workload is None and self.command is None and self.image is None:
            raise ValueError(
                f"container '{self.name}' needs 'image' (a container image), 'command' (a program run with "
                "the node image's programs) or 'workload' (a built-in one, e.g. netexec)"
            )
        if self.command is not None and not self.command:
            raise ValueError(f"container '{self.name}': 'command' is empty")
        return self

    @property
    def runs_image(self) -> bool:
        """Whether the container is its image run as a Docker container (not a built-in workload)."""
        return self.image is not None and self.workload is None


class DNSOption(Model):
    name: str
    value: str | None = None


class PodDNSConfig(Model):
    """Extra resolv.conf settings, merged as Kubernetes merges them."""

    nameservers: list[str] = Field(default_factory=list)
    searches: list[str] = Field(default_factory=list)
    options: list[DNSOption] = Field(default_factory=list)


def _relative_path(value: str) -> str:
    if value.startswith("/") or ".." in value.split("/") or not value.strip("/"):
        raise ValueError(f"'{value}' must be a relative path without '..' (e.g. conf/app.properties)")
    return value


RelativePath = Annotated[str, AfterValidator(_relative_path)]


class KeyToPath(Model):
    key: str
    path: RelativePath


class ConfigMapVolumeSource(Model):
    name: DNSLabel
    items: list[KeyToPath] = Field(default_factory=list, description="Only these keys, at these paths; default: every key.")
    optional: bool = False


class Volume(Model):
    """A pod volume. emu models ConfigMap volumes (files) and emptyDir (an empty directory)."""

    name: DNSLabel
    config_map: ConfigMapVolumeSource | None = None
    empty_dir: dict | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.config_map is None) == (self.empty_dir is None):
            raise ValueError(f"volume '{self.name}' needs exactly one of configMap or emptyDir")
        return self


class Toleration(Model):
    """A taint the pod tolerates. emu's only taint is kubeadm's on control-plane nodes
    (node-role.kubernetes.io/control-plane:NoSchedule) while there are workers."""

    key: str = ""
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""


class PodTemplate(Model):
    """What a pod runs; shared by bare pods and deployments' templates."""

    labels: dict[str, str] = Field(default_factory=dict)
    hostname: DNSLabel | None = Field(None, description="The pod's hostname (default: its name).")
    subdomain: DNSLabel | None = Field(
        None, description="With a headless service of this name: <hostname>.<subdomain>.<ns>.svc.<zone> resolves."
    )
    dns_policy: Literal["ClusterFirst", "Default", "None"] = "ClusterFirst"
    dns_config: PodDNSConfig | None = None
    node: DNSLabel | None = Field(None, description="Pin the pod to this node; else it is spread over workers.")
    enable_service_links: bool = Field(True, description="Give the pod environment variables for services.")
    restart_policy: Literal["Always", "OnFailure", "Never"] = Field(
        "Always",
        description="When a container whose process ended is started again (the kubelet's rule; for image "
        "containers, Docker's restart policy).",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Only nodes with these labels (kubernetes.io/hostname and the like too)."
    )
    tolerations: list[Toleration] = Field(default_factory=list)
    termination_grace_period_seconds: Annotated[int, Field(ge=0, le=3600)] = Field(
        30, description="On deletion: SIGTERM, this long to exit, then SIGKILL."
    )
    volumes: list[Volume] = Field(default_factory=list)
    containers: Annotated[list[Container], Field(min_length=1)]


class Pod(PodTemplate):
    name: DNSLabel
    namespace: DNSLabel = "default"


def _always_restarted(controller, what: str):
    """A controller's pods always run (Kubernetes' validation of their template)."""
    if controller.template.restart_policy != "Always":
        raise ValueError(
            f"template.restartPolicy: Unsupported value: \"{controller.template.restart_policy}\": supported values: "
            f"\"Always\" (a {what}'s pods always run; use a bare pod for OnFailure or Never)"
        )
    return controller


class Deployment(Model):
    """Replicas of a pod template. Pods are named <name>-<template hash>-<suffix>."""

    name: DNSLabel
    namespace: DNSLabel = "default"
    replicas: Annotated[int, Field(ge=0, le=10000)] = 1
    template: PodTemplate

    @model_validator(mode="after")
    def _always_restarted(self):
        return _always_restarted(self, "deployment")


class StatefulSet(Model):
    """Pods with stable names <name>-0, <name>-1, ...; each has hostname <name>-N and subdomain
    serviceName, so a headless service of that name gives each a DNS name."""

    name: DNSLabel
    namespace: DNSLabel = "default"
    replicas: Annotated[int, Field(ge=0, le=10000)] = 1
    service_name: DNSLabel | None = Field(None, description="The headless service that gives the pods DNS names.")
    pod_management_policy: Literal["OrderedReady", "Parallel"] = Field(
        "OrderedReady", description="OrderedReady: pod N+1 starts once pod N is ready."
    )
    template: PodTemplate

    @model_validator(mode="after")
    def _always_restarted(self):
        return _always_restarted(self, "StatefulSet")


class DaemonSet(Model):
    """One pod on every node that its template's nodeSelector and tolerations allow."""

    name: DNSLabel
    namespace: DNSLabel = "default"
    template: PodTemplate

    @model_validator(mode="after")
    def _always_restarted(self):
        return _always_restarted(self, "DaemonSet")


class ConfigMap(Model):
    """Configuration for pods: as environment variables (env, envFrom) and as files (volumes)."""

    name: DNSLabel
    namespace: DNSLabel = "default"
    data: dict[str, str] = Field(default_factory=dict)

    @field_validator("data")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for key in value:
            if len(key) > 253 or not re.match(r"^[-._a-zA-Z0-9]+$", key) or key in (".", ".."):
                raise ValueError(f"'{key}' is not a valid ConfigMap key: use letters, digits, '-', '_' and '.'")
        return value


class ServicePort(Model):
    name: PortName | None = None
    port: Port
    target_port: Port | PortName | None = Field(None, description="Number or container port name; default: port.")
    protocol: Literal["TCP", "UDP"] = "TCP"
    node_port: Annotated[int, Field(ge=30000, le=32767)] | None = None


class ClientIPConfig(Model):
    timeout_seconds: Annotated[int, Field(ge=1, le=86400)] = 10800


class SessionAffinityConfig(Model):
    client_ip: ClientIPConfig = Field(default_factory=ClientIPConfig, alias="clientIP")


class Service(Model):
    """A Kubernetes Service: a stable virtual IP in front of the pods it selects."""

    name: DNSLabel
    namespace: DNSLabel = "default"
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] = "ClusterIP"
    selector: dict[str, str] | None = None
    ports: list[ServicePort] = Field(default_factory=list)
    cluster_ip: str | None = Field(
        None, alias="clusterIP", description="An address in serviceSubnet, or None for a headless service."
    )
    external_name: str | None = None
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_config: SessionAffinityConfig | None = None
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    internal_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    load_balancer_ip: str | None = Field(None, alias="loadBalancerIP")
    external_ips: list[str] = Field(
        default_factory=list, alias="externalIPs",
        description="Addresses outside the cluster that nodes take the service's ports on (routing them is yours).",
    )  # fmt: skip
    load_balancer_source_ranges: list[str] = Field(
        default_factory=list, description="CIDRs a LoadBalancer service takes clients from; the rest are dropped."
    )
    health_check_node_port: Annotated[int, Field(ge=30000, le=32767)] | None = Field(
        None, description="The node port load balancers ask for a node's local endpoints (LoadBalancer with "
        "externalTrafficPolicy Local); default: allocated."
    )
    traffic_distribution: Literal["PreferClose", "PreferSameZone", "PreferSameNode"] | None = Field(
        None, description="Topology-aware routing: each node sends to endpoints in its own zone "
        "(topology.kubernetes.io/zone node label), or on itself for PreferSameNode, where there are some."
    )


class LabelSelectorRequirement(Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values(self):
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(Model):
    """Kubernetes' label selector: every matchLabels pair and every expression must hold ({} selects all)."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)


class Namespace(Model):
    """A namespace and its labels (every namespace also gets kubernetes.io/metadata.name: NAME)."""

    name: DNSLabel
    labels: dict[str, str] = Field(default_factory=dict)


class IPBlock(Model):
    cidr: IPv4CIDR
    except_: list[IPv4CIDR] = Field(default_factory=list, alias="except")

    @model_validator(mode="after")
    def _inside(self):
        outer = ipaddress.IPv4Network(self.cidr)
        for inner in self.except_:
            if not ipaddress.IPv4Network(inner).subnet_of(outer):
                raise ValueError(f"except {inner} is not inside cidr {self.cidr}")
        return self


class NetworkPolicyPeer(Model):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        selectors = self.pod_selector is not None or self.namespace_selector is not None
        if self.ip_block is not None and selectors:
            raise ValueError("a peer has either ipBlock or podSelector/namespaceSelector, not both")
        if self.ip_block is None and not selectors:
            raise ValueError("a peer needs podSelector, namespaceSelector or ipBlock")
        return self


class NetworkPolicyPort(Model):
    protocol: Literal["TCP", "UDP"] = "TCP"
    port: Port | PortName | None = Field(None, description="Number or a pod's port name; none: every port.")
    end_port: Port | None = Field(None, description="With a numeric port: the range port..endPort.")

    @model_validator(mode="after")
    def _range(self):
        if self.end_port is not None:
            if not isinstance(self.port, int):
                raise ValueError("endPort needs a numeric port")
            if self.end_port < self.port:
                raise ValueError(f"endPort {self.end_port} is below port {self.port}")
        return self


class NetworkPolicyIngressRule(Model):
    from_: list[NetworkPolicyPeer] = Field(default_factory=list, alias="from", description="none: every source")
    ports: list[NetworkPolicyPort] = Field(default_factory=list, description="none: every port")


class NetworkPolicyEgressRule(Model):
    to: list[NetworkPolicyPeer] = Field(default_factory=list, description="none: every destination")
    ports: list[NetworkPolicyPort] = Field(default_factory=list, description="none: every port")


class NetworkPolicy(Model):
    """networking.k8s.io/v1 NetworkPolicy (its spec at the top level, as services are written here)."""

    name: DNSLabel
    namespace: DNSLabel = "default"
    pod_selector: LabelSelector = Field(default_factory=LabelSelector, description="{}: every pod of the namespace")
    policy_types: list[Literal["Ingress", "Egress"]] | None = Field(
        None, description="default: Ingress, plus Egress when egress rules are given"
    )
    ingress: list[NetworkPolicyIngressRule] = Field(default_factory=list)
    egress: list[NetworkPolicyEgressRule] = Field(default_factory=list)

    @property
    def types(self) -> list[str]:
        if self.policy_types is not None:
            return list(dict.fromkeys(self.policy_types))
        return ["Ingress", "Egress"] if self.egress else ["Ingress"]


class IngressServicePort(Model):
    number: Port | None = None
    name: PortName | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.number is None) == (self.name is None):
            raise ValueError("a backend port needs exactly one of number or name")
        return self


class IngressServiceBackend(Model):
    name: DNSLabel
    port: IngressServicePort


class IngressBackend(Model):
    service: IngressServiceBackend


class HTTPIngressPath(Model):
    path: str = "/"
    path_type: Literal["Prefix", "Exact", "ImplementationSpecific"] = "Prefix"
    backend: IngressBackend

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in " ;{}\"\\'$#"):
            raise ValueError(f"path '{value}' must start with '/' and have no spaces, quotes or ; {{ }} $ #")
        return value


class HTTPIngressRuleValue(Model):
    paths: Annotated[list[HTTPIngressPath], Field(min_length=1)]


class IngressRule(Model):
    host: str | None = Field(None, description="A DNS name, or *.example.com; none: every host.")
    http: HTTPIngressRuleValue | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is None:
            return value
        labels = value.split(".")
        if labels[0] == "*":
            labels = labels[1:]
        for label in labels:
            _dns_label(label)
        return value


class IngressTLS(Model):
    hosts: list[str] = Field(default_factory=list)
    secret_name: DNSLabel | None = Field(
        None, description="A kubernetes.io/tls secret; none: a self-signed certificate."
    )


class Ingress(Model):
    """networking.k8s.io/v1 Ingress, served by emu's ingress-nginx controller."""

    name: DNSLabel
    namespace: DNSLabel = "default"
    ingress_class_name: str | None = Field("nginx", description="Only the class 'nginx' is served.")
    default_backend: IngressBackend | None = None
    rules: list[IngressRule] = Field(default_factory=list)
    tls: list[IngressTLS] = Field(default_factory=list)


class Secret(Model):
    """A kubernetes.io/tls secret for Ingress TLS: PEM text under stringData tls.crt and tls.key."""

    name: DNSLabel
    namespace: DNSLabel = "default"
    type: Literal["kubernetes.io/tls"] = "kubernetes.io/tls"
    string_data: dict[Literal["tls.crt", "tls.key"], str]


class IngressController(Model):
    """emu's ingress-nginx: nginx as pod ingress-nginx/ingress-nginx-controller-... behind a service."""

    enabled: bool | None = Field(None, description="default: on when the topology has ingresses")
    node: DNSLabel | None = Field(
        None, description="Its node; default: the first labelled ingress-ready=true, else the first control plane."
    )
    service_type: Literal["NodePort", "LoadBalancer"] = "LoadBalancer"


class ControllerManager(Model):
    """kube-controller-manager's settings a lab may change (KubeControllerManagerConfiguration's names)."""

    node_monitor_grace_period: str = Field(
        "40s",
        description=("How long a node may stay silent before it is NotReady and its pods leave every service "
                     "(--node-monitor-grace-period, a Go duration, 8s to 10m). The nodes' Leases last as long and "
                     "are renewed every quarter of it, as kubelets' nodeLeaseDurationSeconds pairs with it; emu's "
                     "eviction of a lost node's pods follows it too."),
    )

    @field_validator("node_monitor_grace_period")
    @classmethod
    def _grace(cls, value: str) -> str:
        seconds = parse_duration(value)
        if not 8 <= seconds <= 600:
            raise ValueError(f"{value} is outside 8s..10m: under 8s the nodes' Lease renewals (a quarter of it) "
                             "would race a busy machine; over 10m a lost node would never be noticed in a lab")
        return value


class ClusterDNS(Model):
    """The cluster DNS: pod kube-system/coredns behind service kube-system/kube-dns."""

    enabled: bool = True
    replicas: Annotated[int, Field(ge=1, le=10)] = 1
    ttl: Annotated[int, Field(ge=0, le=3600)] = Field(5, description="TTL of cluster records, as CoreDNS's default.")
    upstreams: list[str] = Field(
        default_factory=list, description="Servers for names outside the cluster domain; none: SERVFAIL at once."
    )


class Topology(Model):
    """A whole lab: the cluster's name, its address plan, nodes and workloads."""

    name: DNSLabel = Field("emu", description="Cluster name; node containers are named <name>-<node>.")
    node_image: str | None = Field(None, description="Node image to use instead of the one emu builds.")
    runtime: Literal["docker", "uml"] | None = Field(
        None,
        description="What runs the nodes: docker (containers on this machine's engine or the hosts') or uml "
        "(User-mode Linux guests on this machine, each a kernel of its own). Default: docker, or what a running "
        "cluster of this name was made with.",
    )
    networking: Networking = Field(default_factory=Networking)
    hosts: list[Host] = Field(
        default_factory=list,
        description="Docker hosts to spread the nodes over (Docker Swarm); none: this machine's engine.",
    )
    nodes: Annotated[list[Node], Field(min_length=1)]
    pods: list[Pod] = Field(default_factory=list)
    deployments: list[Deployment] = Field(default_factory=list)
    services: list[Service] = Field(default_factory=list)
    config_maps: list[ConfigMap] = Field(default_factory=list)
    stateful_sets: list[StatefulSet] = Field(default_factory=list)
    daemon_sets: list[DaemonSet] = Field(default_factory=list)
    manifests: list[str] = Field(
        default_factory=list,
        description="Kubernetes manifest files or directories (relative to this file) whose objects join the lab.",
    )
    dns: ClusterDNS = Field(default_factory=ClusterDNS)
    namespaces: list[Namespace] = Field(default_factory=list, description="Namespaces with labels (for policies).")
    network_policies: list[NetworkPolicy] = Field(default_factory=list)
    ingresses: list[Ingress] = Field(default_factory=list)
    secrets: list[Secret] = Field(default_factory=list)
    ingress_controller: IngressController = Field(default_factory=IngressController)
    controller_manager: ControllerManager = Field(default_factory=ControllerManager)


def json_schema() -> dict:
    """The JSON Schema of the topology file, for editors (yaml-language-server)."""
    schema = Topology.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "emu topology"
    return schema
