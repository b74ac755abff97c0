"""Service fields kube-proxy honours beyond addresses and ports, with real packets,
in the iptables and nftables modes.

One cluster per mode (module-scoped) on a fixed cluster network, so that the
topology can name a node's address: the `outside` service has externalIPs
(w1's own address, which the external host reaches, and an address nothing
holds, which pods still reach: kube-proxy captures it before routing); two
LoadBalancer services have loadBalancerSourceRanges: `fenced` takes pods only
(10.244.0.0/16), so the external host is dropped and a pod answered; `open`
takes the cluster network, external host included; `checked` is a LoadBalancer
with externalTrafficPolicy Local, whose healthCheckNodePort each node's agent
serves as kube-proxy does. The SNAT mark is kube-proxy's masqueradeBit 15
(0x8000), not the default 14. The one backend runs on cp, so every answer crosses
from the node that took the packet, and only cp has a local endpoint.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.integration.test_service_traffic import outside_curl, wait_for

NETWORKS = {"iptables": "172.31.246", "nftables": "172.31.247"}
UNHELD = "198.51.100.7"  # an externalIP no machine holds (TEST-NET-2)
LAB = """\
name: svcfeat
networking: {{proxyMode: {mode}, clusterNetwork: {net}.0/24, loadBalancerPool: {net}.100-{net}.110, masqueradeBit: 15}}
nodes:
  - {{name: cp, role: control-plane}}
  - {{name: w1}}
pods:
  - name: client
    node: w1
    containers: [{{name: shell, command: [sleep, infinity]}}]
  - name: web
    node: cp
    labels: {{app: web}}
    containers: [{{name: netexec, workload: netexec, ports: [{{name: http, containerPort: 8080}}]}}]
services:
  - name: outside
    selector: {{app: web}}
    externalIPs: [{net}.3, {unheld}]
    ports: [{{name: http, port: 80, targetPort: http}}]
  - name: fenced
    type: LoadBalancer
    selector: {{app: web}}
    loadBalancerSourceRanges: [10.244.0.0/16]
    ports: [{{name: http, port: 80, targetPort: http}}]
  - name: open
    type: LoadBalancer
    selector: {{app: web}}
    loadBalancerSourceRanges: [203.0.113.0/24, {net}.0/24]
    ports: [{{name: http, port: 80, targetPort: http}}]
  - name: checked
    type: LoadBalancer
    externalTrafficPolicy: Local
    selector: {{app: web}}
    ports: [{{name: http, port: 80, targetPort: http}}]
"""

# What each mode's listing on w1 holds for these fields, as kube-proxy writes them
# (in iptables-save's order of matches).
SHAPES = {
    "iptables": (["iptables-save"], ['-A KUBE-SERVICES -d {net}.3/32 -p tcp -m comment --comment '
                                      '"default/outside:http external IP" -m tcp --dport 80 -j KUBE-EXT-',
                                      '-s 10.244.0.0/16 -m comment --comment "default/fenced:http loadbalancer IP" '
                                      "-j KUBE-EXT-",
                                      '-p tcp -m comment --comment "default/fenced:http traffic not accepted by '
                                      "KUBE-FW-",
                                      '--comment "other traffic to default/fenced:http will be dropped by '
                                      'KUBE-PROXY-FIREWALL"']),
    "nftables": (["nft", "list", "table", "ip", "kube-proxy"], ["{unheld} . tcp . 80 : goto external-",
                                                                 ": goto firewall-", "ip saddr != 10.244.0.0/16 drop"]),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(NETWORKS))
def lab(request, make_module_cluster):
    mode, net = request.param, NETWORKS[request.param]
    cluster = make_module_cluster(LAB.format(mode=mode, net=net, unheld=UNHELD), f"sf-{mode[:3]}")
    for service in ("outside", "fenced", "open", "checked"):
        wait_for(lambda s=service: len(cluster.endpoints().get(f"default/{s}", {}).get("http", [])) == 1,
                 f"{service}'s endpoint")  # fmt: skip
    cluster.run_external("outside")
    return mode, net, cluster


def lb_ip(cluster, name: str) -> str:
    return cluster.state().services[f"default/{name}"].load_balancer_ip


def pod_curl(cluster, url: str) -> tuple[int, str]:
    result = cluster.exec("client", ["curl", "-sS", "--max-time", "3", url])
    return result.exit_code, result.output.strip()


def test_rules_have_kube_proxys_shape(lab):
    mode, net, cluster = lab
    argv, wanted = SHAPES[mode]
    text = cluster.node_exec("w1", argv).output
    missing = [line for line in (w.format(net=net, unheld=UNHELD) for w in wanted) if line not in text]
    assert missing == [], text


def test_external_ip_answers_from_the_external_host(lab):
    """w1's own address is one of the service's externalIPs: port 80 there is the service."""
    _, net, cluster = lab
    assert outside_curl(cluster, f"http://{net}.3/hostname") == (0, "web")


def test_external_ip_answers_from_a_pod_though_no_machine_holds_it(lab):
    _, _, cluster = lab
    assert pod_curl(cluster, f"http://{UNHELD}/hostname") == (0, "web")


def test_source_ranges_drop_a_client_outside_them_and_answer_one_inside(lab):
    _, _, cluster = lab
    address = lb_ip(cluster, "fenced")
    code, answer = outside_curl(cluster, f"http://{address}/hostname")
    assert code == 28, f"the external host, outside 10.244.0.0/16, got an answer: {code} {answer}"  # 28: dropped
    assert pod_curl(cluster, f"http://{address}/hostname") == (0, "web")


def test_source_ranges_take_the_external_host_when_a_range_holds_it(lab):
    _, _, cluster = lab
    assert outside_curl(cluster, f"http://{lb_ip(cluster, 'open')}/hostname") == (0, "web")


def test_the_snat_mark_of_another_masquerade_bit_still_masquerades(lab):
    """A NodePort on w1 whose endpoint is on cp: kube-proxy marks the packet (bit 15
    here) and masquerades it to w1's address on the way out, so the pod sees w1 as
    the client; a mark set and matched on different bits would leave the client pod's
    own address."""
    mode, net, cluster = lab
    state = cluster.state()
    node_port = state.services["default/open"].ports[0].node_port
    code, answer = pod_curl(cluster, f"http://{state.node('w1').node_ip}:{node_port}/clientip")
    assert code == 0 and answer.rsplit(":", 1)[0] == state.node("w1").node_ip, (code, answer)
    rules = cluster.node_exec("w1", SHAPES[mode][0]).output
    assert re.search(r"0x0*8000\b", rules) and not re.search(r"0x0*4000\b", rules), rules


def outside_get(cluster, url: str) -> tuple[int | None, str]:
    """(HTTP status, body) of a GET from the external host; status None when nothing answered."""
    argv = ["curl", "-sS", "--max-time", "3", "-w", "\n%{http_code}", url]
    result = cluster.runtime.exec(f"{cluster.name}-outside", argv)
    body, _, status = result.output.strip().rpartition("\n")
    return (int(status) if result.exit_code == 0 and status.isdigit() else None), body


def test_health_check_node_port_answers_with_each_nodes_local_endpoints(lab):
    """kube-proxy's service health server: 200 on the node with the service's endpoint, 503
    on the other, each with its count, so a load balancer sends traffic to cp only."""
    _, _, cluster = lab
    state = cluster.state()
    port = state.services["default/checked"].health_check_node_port
    assert 30000 <= port <= 32767
    nodes = {n.name: n.node_ip for n in state.nodes}
    wait_for(lambda: all(outside_get(cluster, f"http://{ip}:{port}/")[0] for ip in nodes.values()),
             "every node's health check server")  # fmt: skip
    answers = {name: outside_get(cluster, f"http://{ip}:{port}/") for name, ip in nodes.items()}
    assert {name: status for name, (status, _) in answers.items()} == {"cp": 200, "w1": 503}, answers
    for name, count in (("cp", 1), ("w1", 0)):
        assert json.loads(answers[name][1]) == {"service": {"namespace": "default", "name": "checked"},
                                                 "localEndpoints": count, "serviceProxyHealthy": True}  # fmt: skip


def test_kube_proxy_healthz_answers_on_every_node(lab):
    _, _, cluster = lab
    for node in cluster.state().nodes:
        status, body = outside_get(cluster, f"http://{node.node_ip}:10256/healthz")
        assert status == 200, (node.name, body)
        assert set(json.loads(body)) == {"lastUpdated", "currentTime", "nodeEligible"}


def test_kubectl_shows_the_health_check_node_port(lab):
    """The Service object in the API server carries it, as a real cluster's does."""
    _, _, cluster = lab
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian's kubectl package)")
    result = subprocess.run([kubectl, "--context", f"emu-{cluster.name}", "get", "service", "checked", "-o", "json"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    spec = json.loads(result.stdout)["spec"]
    port = cluster.state().services["default/checked"].health_check_node_port
    assert (spec["healthCheckNodePort"], spec["externalTrafficPolicy"]) == (port, "Local")


def test_localhost_node_port_answers_in_iptables_mode_only(lab):
    """kube-proxy's localhost NodePorts: in iptables mode 127.0.0.1:NODEPORT on a node is the
    service (route_localnet, masqueraded to the pod on cp); its nftables mode does not take
    127.0.0.1, so nothing answers there (curl: 7, connection refused)."""
    mode, _, cluster = lab
    node_port = cluster.state().services["default/open"].ports[0].node_port
    result = cluster.node_exec("w1", ["curl", "-sS", "--max-time", "3", f"http://127.0.0.1:{node_port}/hostname"])
    if mode == "iptables":
        assert (result.exit_code, result.output.strip()) == (0, "web")
    else:
        assert result.exit_code == 7, result.output
    route_localnet = cluster.node_exec("w1", ["cat", "/proc/sys/net/ipv4/conf/all/route_localnet"]).output.strip()
    assert route_localnet == ("1" if mode == "iptables" else "0")
