"""Services the way kube-proxy's iptables mode makes them work, proven with real packets."""

from __future__ import annotations

import time

import pytest

from emu.api.topology.load import load_text
from tests import labs

LAB = labs.load("services")

UDP_CLIENT = """\
import socket, sys
names = []
for _ in range(int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(b"hostname", (sys.argv[1], int(sys.argv[2])))
    names.append(s.recvfrom(1024)[0].decode())
    s.close()
print("\\n".join(names))
"""


@pytest.fixture(scope="module")
def svc(make_module_cluster):
    cluster = make_module_cluster(LAB, "svc")
    wait_for(lambda: len(endpoint_list(cluster, "default/backend")) == 3, "backend's 3 endpoints")
    return cluster


def wait_for(condition, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def endpoint_list(cluster, service: str, port: str = "http") -> list[str]:
    return cluster.endpoints().get(service, {}).get(port, [])


def ip_of(cluster, service: str) -> str:
    return cluster.state().services[service].cluster_ip


def backend_names(cluster) -> set[str]:
    return {p.name for p in cluster.state().pods.values() if p.labels.get("app") == "backend"}


def curl_many(cluster, pod: str, url: str, count: int = 30) -> list[str]:
    script = f"for i in $(seq {count}); do curl -sS --max-time 3 {url}; echo; done"
    result = cluster.exec(pod, ["sh", "-c", script])
    assert result.ok, result.output
    return [line for line in result.output.splitlines() if line]


def outside_curl(cluster, url: str) -> tuple[int, str]:
    result = cluster.runtime.exec(f"{cluster.name}-outside", ["curl", "-sS", "--max-time", "3", url])
    return result.exit_code, result.output.strip()


@pytest.fixture(scope="module")
def outside(svc) -> str:
    return svc.run_external("outside")


def test_cluster_ip_reaches_every_endpoint_over_tcp(svc):
    answers = curl_many(svc, "client", f"http://{ip_of(svc, 'default/backend')}/hostname", 40)
    assert len(answers) == 40
    assert set(answers) == backend_names(svc)


def test_cluster_ip_reaches_every_endpoint_over_udp(svc):
    result = svc.exec("client", ["python3", "-c", UDP_CLIENT, ip_of(svc, "default/backend"), "53", "40"])
    assert result.ok, result.output
    assert set(result.output.split()) == backend_names(svc)


def test_rules_read_like_kube_proxys(svc):
    rules = svc.node_exec("cp", ["iptables-save", "-t", "nat"]).output
    assert "-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment \"default/kubernetes:https cluster IP\"" in rules
    assert "-j KUBE-SVC-NPX46M4PTMTKRN6Y" in rules
    assert "-m statistic --mode random --probability 0.33333333349" in rules
    assert ":KUBE-MARK-MASQ" in rules and "MARK --set-xmark 0x4000/0x4000" in rules


def test_node_port_answers_on_every_node_including_one_without_endpoints(svc, outside):
    node_port = svc.state().services["default/backend"].ports[0].node_port
    names = backend_names(svc)
    for node in svc.state().nodes:
        code, answer = outside_curl(svc, f"http://{node.node_ip}:{node_port}/hostname")
        assert code == 0 and answer in names, f"{node.name}: {answer}"


def test_local_policy_answers_only_where_an_endpoint_is_and_keeps_client_ip(svc, outside):
    state = svc.state()
    node_port = state.services["default/local"].ports[0].node_port
    home = state.pods["default/local-backend"].node
    cluster_port = state.services["default/backend"].ports[0].node_port
    for node in state.nodes:
        code, answer = outside_curl(svc, f"http://{node.node_ip}:{node_port}/clientip")
        if node.name == home:
            assert code == 0 and answer.split(":")[0] == outside, answer
        else:
            # Dropped, as kube-proxy drops it (curl's exit 28, a timeout): not refused, not
            # unreachable, and the node does answer a NodePort whose policy is Cluster.
            assert code == 28, f"{node.name} without a local endpoint: {code} {answer}"
            assert outside_curl(svc, f"http://{node.node_ip}:{cluster_port}/hostname")[0] == 0, node.name


def test_load_balancer_address_answers_from_outside(svc, outside):
    address = svc.state().services["default/lb"].load_balancer_ip
    assert address
    code, answer = outside_curl(svc, f"http://{address}/hostname")
    assert code == 0 and answer in backend_names(svc)


def test_internal_traffic_policy_local_answers_only_from_the_clients_node(svc):
    ip = ip_of(svc, "default/internal-local")
    # client is on w1 with the only endpoint: always answered by it.
    assert curl_many(svc, "client", f"http://{ip}/hostname", 5) == ["local-backend"] * 5
    # solo is on w2, which has none: dropped, as kube-proxy drops it (curl's 28, a timeout), not sent across.
    far = svc.exec("solo", ["curl", "-sS", "--max-time", "3", f"http://{ip}/hostname"])
    assert far.exit_code == 28, (far.exit_code, far.output)


def test_pod_reaches_itself_through_its_service(svc):
    assert curl_many(svc, "solo", f"http://{ip_of(svc, 'default/solo')}/hostname", 5) == ["solo"] * 5


def test_client_ip_affinity_keeps_one_backend(svc):
    answers = curl_many(svc, "client", f"http://{ip_of(svc, 'default/sticky')}/hostname", 20)
    assert len(answers) == 20 and len(set(answers)) == 1


def test_service_without_endpoints_is_refused(svc):
    result = svc.exec("client", ["curl", "-sS", "--max-time", "5", f"http://{ip_of(svc, 'default/nobody')}/"])
    assert result.exit_code == 7, result.output  # 7: connection refused (28 would be a time-out)


def test_readiness_takes_a_pod_out_and_brings_it_back(svc):
    state = svc.state()
    pod = min((p for p in state.pods.values() if p.labels.get("app") == "backend"), key=lambda p: p.name)
    address = f"{pod.ip}:8080"
    assert address in endpoint_list(svc, "default/backend")
    svc.exec("client", ["curl", "-sS", f"http://{pod.ip}:8080/sethealth?status=fail"])
    wait_for(lambda: address not in endpoint_list(svc, "default/backend"), "the failing pod to leave", 10)
    for node in state.nodes:
        wait_for(lambda: address not in svc.node_exec(node.name, ["iptables-save", "-t", "nat"]).output,
                 f"{node.name}'s rules to drop {address}", 5)
    answers = curl_many(svc, "client", f"http://{ip_of(svc, 'default/backend')}/hostname", 20)
    assert pod.name not in answers
    # As kubectl shows it: running, not ready.
    assert svc.pod_status(svc.state())[pod.key]["netexec"] == {"state": "Running", "exitCode": None, "ready": False, "restarts": 0}
    svc.exec("client", ["curl", "-sS", f"http://{pod.ip}:8080/sethealth?status=ok"])
    wait_for(lambda: address in endpoint_list(svc, "default/backend"), "the recovered pod to return", 10)


def test_deleted_pod_is_recreated_with_new_ip_behind_the_same_service(svc):
    before = svc.state()
    pod = min((p for p in before.pods.values() if p.labels.get("app") == "backend"), key=lambda p: p.name)
    service_ip = ip_of(svc, "default/backend")
    svc.delete_pod(pod.name)
    after = svc.state()
    assert after.pods[pod.key].ip != pod.ip
    assert ip_of(svc, "default/backend") == service_ip
    new_address = f"{after.pods[pod.key].ip}:8080"
    wait_for(lambda: new_address in endpoint_list(svc, "default/backend"), "the new pod's endpoint", 10)
    for node in after.nodes:
        # Each node programs the new pod once its readiness reaches that node's agent.
        wait_for(lambda: new_address in svc.node_exec(node.name, ["iptables-save", "-t", "nat"]).output,
                 f"{node.name}'s rules to add {new_address}", 10)
        rules = svc.node_exec(node.name, ["iptables-save", "-t", "nat"]).output
        assert f"{pod.ip}:8080" not in rules, f"{node.name} still has the old endpoint"
    answers = curl_many(svc, "client", f"http://{service_ip}/hostname", 30)
    assert set(answers) == backend_names(svc)


def test_scaling_updates_endpoints_everywhere(svc):
    svc.scale("backend", 4)
    wait_for(lambda: len(endpoint_list(svc, "default/backend")) == 4, "4 endpoints", 10)
    svc.scale("backend", 3)
    wait_for(lambda: len(endpoint_list(svc, "default/backend")) == 3, "3 endpoints", 10)
    for node in svc.state().nodes:
        rules = svc.node_exec(node.name, ["iptables-save", "-t", "nat"]).output
        assert rules.count("default/backend:http -> ") == 3


ENV_LAB = labs.load("env")


def test_service_variables_only_in_pods_created_after_the_service(make_module_cluster):
    cluster = make_module_cluster(ENV_LAB, "env")
    later = ENV_LAB.replace("name: env", f"name: {cluster.name}") + """\
  - name: late
    containers: [{name: c, command: [sleep, infinity]}]
  - name: unlinked
    enableServiceLinks: false
    containers: [{name: c, command: [sleep, infinity]}]
services:
  - name: my-svc
    selector: {app: x}
    ports: [{name: web, port: 8080}]
"""
    cluster.apply(load_text(later))
    ip = cluster.state().services["default/my-svc"].cluster_ip
    late = dict(line.split("=", 1) for line in cluster.exec("late", ["env"]).output.splitlines())
    assert late["MY_SVC_SERVICE_HOST"] == ip
    assert late["MY_SVC_SERVICE_PORT"] == "8080" and late["MY_SVC_SERVICE_PORT_WEB"] == "8080"
    assert late["MY_SVC_PORT"] == f"tcp://{ip}:8080"
    assert late["MY_SVC_PORT_8080_TCP_ADDR"] == ip and late["MY_SVC_PORT_8080_TCP_PROTO"] == "tcp"
    assert late["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    early = cluster.exec("early", ["env"]).output
    assert "MY_SVC_SERVICE_HOST" not in early
    unlinked = cluster.exec("unlinked", ["env"]).output
    assert "MY_SVC_SERVICE_HOST" not in unlinked and "KUBERNETES_SERVICE_HOST=10.96.0.1" in unlinked
