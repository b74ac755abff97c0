"""Topology validation: every rule gives its message, file line and YAML path."""

import json
from pathlib import Path

import pytest

from emu.errors import TopologyError
from emu.api.load import load_file, load_text
from emu.api.topology.model import json_schema

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
name: lab
nodes:
  - name: cp
    role: control-plane
  - name: w1
pods:
  - name: a
    containers:
      - name: c
        workload: netexec
"""


def problems(text: str) -> list[str]:
    with pytest.raises(TopologyError) as caught:
        load_text(text, "lab.yaml")
    return [p.render("lab.yaml") for p in caught.value.problems]


def test_default_topology_is_valid():
    topology = load_file(ROOT / "topologies" / "default.yaml")
    assert len(topology.nodes) == 3
    assert any(len(p.containers) == 2 for p in topology.pods)


def test_all_shipped_topologies_are_valid():
    for path in sorted((ROOT / "topologies").glob("*.yaml")):
        load_file(path)


def test_defaults():
    topology = load_text(BASE)
    assert topology.networking.pod_subnet == "10.244.0.0/16"
    assert topology.networking.service_subnet == "10.96.0.0/16"
    assert topology.networking.dns_domain == "cluster.local"
    assert topology.networking.proxy_mode == "iptables"
    assert topology.pods[0].namespace == "default"


def test_unknown_key_names_line_and_allowed_keys():
    text = BASE.replace("      - name: c\n", "      - name: c\n        imagee: x\n")
    [message] = problems(text)
    assert message.startswith("lab.yaml:10:9: pods[0].containers[0].imagee: unknown key 'imagee'")
    assert "allowed here:" in message and "workload" in message


def test_unknown_top_level_key():
    [message] = problems(BASE + "servics: []\n")
    assert "lab.yaml:11:1: servics: unknown key 'servics'" in message


def test_duplicate_yaml_key():
    messages = problems(BASE.replace("name: lab\n", "name: lab\nname: lab2\n"))
    assert any("lab.yaml:2:1: name: key 'name' is given twice" in m for m in messages)


def test_duplicate_node_names():
    [message] = problems(BASE.replace("  - name: w1\n", "  - name: cp\n"))
    assert message.startswith("lab.yaml:5:5: nodes[1].name: node name 'cp' is used twice")


def test_duplicate_pod_names():
    text = BASE + "  - name: a\n    containers:\n      - name: c\n        command: [sleep, '1']\n"
    [message] = problems(text)
    assert "pods[1].name: pod 'default/a' is defined twice" in message
    assert message.startswith("lab.yaml:11:")


def test_same_pod_name_in_other_namespace_is_fine():
    text = BASE + "  - name: a\n    namespace: other\n    containers:\n      - name: c\n        workload: netexec\n"
    assert len(load_text(text).pods) == 2


def test_name_not_dns_label():
    [message] = problems(BASE.replace("  - name: a\n", "  - name: Web_1\n"))
    assert "lab.yaml:7:5: pods[0].name: 'Web_1' is not a DNS-1123 label" in message


def test_node_name_too_long():
    [message] = problems(BASE.replace("name: w1", "name: " + "w" * 64))
    assert "nodes[1].name" in message and "at most 63" in message


def test_overlapping_subnets():
    text = BASE + "networking:\n  podSubnet: 10.0.0.0/8\n  serviceSubnet: 10.96.0.0/16\n"
    [message] = problems(text)
    assert "lab.yaml:13:3: networking.serviceSubnet: serviceSubnet 10.96.0.0/16 overlaps podSubnet 10.0.0.0/8" in message


def test_pod_subnet_smaller_than_a_node_cidr():
    [message] = problems(BASE + "networking:\n  podSubnet: 10.244.0.0/25\n")
    assert "networking.podSubnet: podSubnet 10.244.0.0/25 is smaller than one node's /24" in message


def test_pod_subnet_too_small_for_node_count():
    [message] = problems(BASE + "networking:\n  podSubnet: 10.244.0.0/24\n")
    assert "holds 1 node CIDRs (/24 each) but there are 2 nodes" in message


def test_bad_cidr():
    [message] = problems(BASE + "networking:\n  podSubnet: 10.244.0.1/16\n")
    assert "networking.podSubnet: '10.244.0.1/16' is not an IPv4 CIDR with its host bits zero" in message


def test_pinned_to_unknown_node():
    [message] = problems(BASE.replace("  - name: a\n", "  - name: a\n    node: w9\n"))
    assert message.startswith("lab.yaml:8:5: pods[0].node: pod 'a' is pinned to node 'w9'")
    assert "known: cp, w1" in message


def test_too_many_pods_for_a_node():
    text = BASE + "deployments:\n  - name: d\n    replicas: 300\n    template:\n      node: w1\n" \
        "      containers:\n        - name: c\n          workload: netexec\n"
    messages = problems(text)
    assert any("300 pods are pinned to node 'w1' but its /24 pod CIDR holds 190" in m for m in messages)


def test_too_many_floating_pods():
    text = BASE + "deployments:\n  - name: d\n    replicas: 300\n    template:\n" \
        "      containers:\n        - name: c\n          workload: netexec\n"
    messages = problems(text)
    assert any("301 pods are not pinned to a node but the nodes that take them (w1) have room for 190" in m
               for m in messages)


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_bad_port(port):
    text = BASE + f"        ports:\n          - containerPort: {port}\n"
    [message] = problems(text)
    assert f"pods[0].containers[0].ports[0].containerPort: port {port} is out of range: a port is 1-65535" in message
    assert message.startswith("lab.yaml:12:")


def test_bad_protocol():
    text = BASE + "        ports:\n          - containerPort: 80\n            protocol: ICMP\n"
    [message] = problems(text)
    assert "protocol: must be 'TCP' or 'UDP' (got 'ICMP')" in message


def test_duplicate_port_in_pod():
    text = BASE + "        ports:\n          - containerPort: 80\n      - name: d\n        workload: netexec\n" \
        "        ports:\n          - containerPort: 80\n"
    [message] = problems(text)
    assert "port 80/TCP is declared twice in pod 'a' (also by container 'c')" in message


def test_container_needs_command_or_workload():
    [message] = problems(BASE.replace("        workload: netexec\n", ""))
    assert "needs 'image' (a container image), 'command'" in message


def test_missing_nodes():
    [message] = problems("name: lab\n")
    assert "nodes: 'nodes' is required here" in message


def test_not_yaml():
    [message] = problems("nodes: [\n")
    assert "not valid YAML" in message and message.startswith("lab.yaml:2:")


def test_several_problems_reported_together():
    text = BASE.replace("  - name: w1\n", "  - name: cp\n").replace("  - name: a\n", "  - name: a\n    node: zz\n")
    assert len(problems(text)) == 2


def test_error_text_says_nothing_changed():
    with pytest.raises(TopologyError) as caught:
        load_text("name: lab\n", "lab.yaml")
    assert "nothing was changed" in str(caught.value)


def test_missing_file():
    with pytest.raises(TopologyError) as caught:
        load_file("/nonexistent/lab.yaml")
    assert "cannot read the file" in str(caught.value)


def test_committed_json_schema_is_current():
    committed = json.loads((ROOT / "docs" / "topology.schema.json").read_text())
    assert committed == json_schema(), "regenerate with: emu schema > docs/topology.schema.json"


@pytest.mark.parametrize("mode", ["iptables", "ipvs", "nftables"])
def test_every_kube_proxy_mode_validates(mode):
    assert load_text(BASE + f"networking:\n  proxyMode: {mode}\n").networking.proxy_mode == mode


SERVICE = BASE + """\
services:
  - name: svc
    type: TYPE
    selector: {app: a}
    ports: [{port: 80}]
"""


def test_external_ips_and_source_ranges_are_checked_with_the_service_and_field_named():
    text = SERVICE.replace("TYPE", "ClusterIP") + (
        "    externalIPs: [192.0.2.10, 192.0.2.300, 127.0.0.1]\n    loadBalancerSourceRanges: [10.0.0.0/8]\n"
    )
    assert problems(text) == [
        "lab.yaml:16:31: services[0].externalIPs[1]: '192.0.2.300' in externalIPs of service 'default/svc' "
        "is not an IPv4 address (e.g. 192.0.2.10)",
        "lab.yaml:16:44: services[0].externalIPs[2]: 127.0.0.1 in externalIPs of service 'default/svc' is a special "
        "address (unspecified, loopback, link-local or multicast); use an address clients can route to a node",
        "lab.yaml:17:5: services[0].loadBalancerSourceRanges: loadBalancerSourceRanges needs type LoadBalancer "
        "(service 'default/svc' is ClusterIP)",
    ]
    text = SERVICE.replace("TYPE", "LoadBalancer") + "    loadBalancerSourceRanges: [' 10.1.0.0/16', 10.0.0.0/33]\n"
    assert problems(text) == [
        "lab.yaml:16:48: services[0].loadBalancerSourceRanges[1]: '10.0.0.0/33' in loadBalancerSourceRanges of "
        "service 'default/svc' is not an IPv4 CIDR (e.g. 203.0.113.0/24)",
    ]


def test_external_ips_allow_a_local_external_traffic_policy_on_a_cluster_ip_service():
    text = SERVICE.replace("TYPE", "ClusterIP") + "    externalTrafficPolicy: Local\n"
    assert "externalTrafficPolicy: Local is for NodePort and LoadBalancer services" in problems(text)[0]
    assert load_text(text + "    externalIPs: [192.0.2.10]\n").services[0].external_ips == ["192.0.2.10"]


def test_health_check_node_port_is_checked_as_kubernetes_checks_it():
    local_lb = SERVICE.replace("TYPE", "LoadBalancer") + "    externalTrafficPolicy: Local\n"
    assert load_text(local_lb + "    healthCheckNodePort: 31000\n").services[0].health_check_node_port == 31000
    assert problems(SERVICE.replace("TYPE", "NodePort") + "    externalTrafficPolicy: Local\n"
                    "    healthCheckNodePort: 31000\n") == [  # fmt: skip
        "lab.yaml:17:5: services[0].healthCheckNodePort: healthCheckNodePort may only be set when type is "
        "'LoadBalancer' and externalTrafficPolicy is 'Local' (service 'default/svc' is NodePort, Local); remove it",
    ]
    taken = local_lb.replace("ports: [{port: 80}]", "ports: [{port: 80, nodePort: 31000}]")
    assert problems(taken + "    healthCheckNodePort: 31000\n") == [
        "lab.yaml:17:5: services[0].healthCheckNodePort: healthCheckNodePort 31000 of service 'default/svc' is taken "
        "by service 'default/svc'; pick another node port or leave it out to have one allocated",
    ]
    assert problems(local_lb + "    healthCheckNodePort: 80\n") == [
        "lab.yaml:17:5: services[0].healthCheckNodePort: node port 80 is out of range: node ports are 30000-32767; "
        "pick one there",
    ]
