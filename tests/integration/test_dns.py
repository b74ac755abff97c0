"""Cluster DNS from pods, the checks of Kubernetes' DNS conformance tests
(test/e2e/network/dns.go): dig over UDP and TCP, and getent."""

from __future__ import annotations

import time

import pytest

from emu.topology.load import load_text

LAB = """\
name: dns
nodes: [{name: cp, role: control-plane}, {name: w1}, {name: w2}]
pods:
  - name: client
    node: w1
    containers: [{name: c, command: [sleep, infinity]}]
  - name: custom
    node: w2
    dnsPolicy: "None"
    dnsConfig:
      nameservers: [10.96.0.10]
      searches: [svc.cluster.local, example.internal]
      options: [{name: ndots, value: "2"}]
    containers: [{name: c, command: [sleep, infinity]}]
  - name: querier
    hostname: querier-0
    subdomain: dns-querier
    labels: {app: querier}
    containers: [{name: c, workload: netexec, ports: [{name: http, containerPort: 8080}]}]
deployments:
  - name: many
    replicas: 40
    template:
      labels: {app: many}
      containers: [{name: c, command: [nc, -lk, "80"], ports: [{name: http, containerPort: 80}]}]
services:
  - name: web
    selector: {app: querier}
    ports: [{name: http, port: 80, targetPort: http}]
  - name: dns-querier
    clusterIP: None
    selector: {app: querier}
    ports: [{name: http, port: 80, targetPort: http}]
  - name: many
    clusterIP: None
    selector: {app: many}
    ports: [{name: http, port: 80, targetPort: http}]
  - name: ext
    type: ExternalName
    externalName: www.example.com
"""


@pytest.fixture(scope="module")
def dns(make_cluster):
    return make_cluster(LAB, "dns")


def dig(cluster, pod: str, *args: str) -> str:
    result = cluster.exec(pod, ["dig", "+short", "+time=2", "+tries=1", *args])
    return result.output.strip()


def status(cluster, pod: str, *args: str) -> str:
    output = cluster.exec(pod, ["dig", "+time=2", "+tries=1", *args]).output
    return output.split("status: ", 1)[1].split(",", 1)[0]


def wait_for(condition, what: str, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_kubernetes_default_over_udp_tcp_and_getent(dns):
    for flag in ("+notcp", "+tcp"):
        assert dig(dns, "client", flag, "kubernetes.default.svc.cluster.local") == "10.96.0.1"
    assert dns.exec("client", ["getent", "hosts", "kubernetes.default"]).output.split()[0] == "10.96.0.1"


def test_partial_names_through_the_search_path(dns):
    ip = dns.state().services["default/web"].cluster_ip
    for name in ("web", "web.default", "web.default.svc"):
        assert dig(dns, "client", "+search", name) == ip, name
        assert dns.exec("client", ["getent", "hosts", name]).output.split()[0] == ip


def test_srv_for_a_named_port(dns):
    for flag in ("+notcp", "+tcp"):
        assert dig(dns, "client", flag, "SRV", "_http._tcp.web.default.svc.cluster.local") == (
            "0 100 80 web.default.svc.cluster.local."
        )


def test_ptr_of_a_cluster_ip(dns):
    ip = dns.state().services["default/web"].cluster_ip
    assert dig(dns, "client", "-x", ip) == "web.default.svc.cluster.local."


def test_headless_service_and_pod_hostname_subdomain(dns):
    querier = dns.state().pods["default/querier"]
    assert dig(dns, "client", "dns-querier.default.svc.cluster.local") == querier.ip
    assert dig(dns, "client", "querier-0.dns-querier.default.svc.cluster.local") == querier.ip
    assert dig(dns, "client", "SRV", "_http._tcp.dns-querier.default.svc.cluster.local") == (
        "0 100 8080 querier-0.dns-querier.default.svc.cluster.local."
    )
    # The pod's own view: hostname and FQDN, as the kubelet sets them.
    assert dns.exec("querier", ["hostname"]).output.strip() == "querier-0"
    assert dns.exec("querier", ["hostname", "-f"]).output.strip() == "querier-0.dns-querier.default.svc.cluster.local"


def test_pod_a_record(dns):
    querier = dns.state().pods["default/querier"]
    name = querier.ip.replace(".", "-") + ".default.pod.cluster.local"
    assert dig(dns, "client", name) == querier.ip


def test_external_name_then_cluster_ip(dns):
    assert dig(dns, "client", "CNAME", "ext.default.svc.cluster.local") == "www.example.com."
    changed = LAB.replace("name: dns\n", f"name: {dns.name}\n", 1).replace(
        "  - name: ext\n    type: ExternalName\n    externalName: www.example.com\n",
        "  - name: ext\n    selector: {app: querier}\n    ports: [{port: 80, targetPort: 8080}]\n",
    )
    dns.apply(load_text(changed))
    ip = dns.state().services["default/ext"].cluster_ip
    wait_for(lambda: dig(dns, "client", "ext.default.svc.cluster.local") == ip, "ext's A record", 5)


def test_dns_policy_none_with_custom_config(dns):
    resolv = dns.exec("custom", ["cat", "/etc/resolv.conf"]).output
    assert resolv == "search svc.cluster.local example.internal\nnameserver 10.96.0.10\noptions ndots:2\n"
    ip = dns.state().services["default/web"].cluster_ip
    assert dns.exec("custom", ["getent", "hosts", "web.default"]).output.split()[0] == ip


def test_unknown_name_is_nxdomain_and_outside_names_fail_fast(dns):
    assert status(dns, "client", "nope.default.svc.cluster.local") == "NXDOMAIN"
    assert status(dns, "client", "www.example.com") == "SERVFAIL"


def test_service_created_and_deleted_resolve_within_a_second(dns):
    base = LAB.replace("name: dns\n", f"name: {dns.name}\n", 1).replace(
        "  - name: ext\n    type: ExternalName\n    externalName: www.example.com\n",
        "  - name: ext\n    selector: {app: querier}\n    ports: [{port: 80, targetPort: 8080}]\n",
    )
    added = base + "  - name: fresh\n    selector: {app: querier}\n    ports: [{port: 80, targetPort: 8080}]\n"
    dns.apply(load_text(added))
    ip = dns.state().services["default/fresh"].cluster_ip
    wait_for(lambda: dig(dns, "client", "fresh.default.svc.cluster.local") == ip, "fresh to resolve", 1.0)
    dns.apply(load_text(base))
    wait_for(lambda: status(dns, "client", "fresh.default.svc.cluster.local") == "NXDOMAIN", "fresh to go", 1.0)


def test_big_answer_truncated_over_udp_then_whole_over_tcp(dns):
    output = dns.exec("client", ["dig", "+time=2", "+tries=1", "+noedns", "+ignore", "many.default.svc.cluster.local"]).output
    assert " tc" in output.split("flags:", 1)[1].split(";", 1)[0]
    whole = dig(dns, "client", "+noedns", "many.default.svc.cluster.local")  # dig retries over TCP
    assert len(whole.split()) == 40


# Runs in a pod: sends every packet of a hex file (one a line) to the DNS
# service over UDP, then half a query over TCP and hangs up.
SEND = """\
import os, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for line in open(sys.argv[2]):
    sock.sendto(bytes.fromhex(line.strip()), (sys.argv[1], 53))
tcp = socket.create_connection((sys.argv[1], 53), 2)
tcp.sendall(b"\\x00\\x30" + os.urandom(20))
tcp.close()
print("sent")
"""


def test_garbage_packets_do_not_crash_or_stall_the_server(dns):
    from dnsfuzz import bad_queries

    state = dns.state()
    coredns = next(p for p in state.pods.values() if p.namespace == "kube-system")

    def server_processes() -> list[str]:
        return dns.node_exec(coredns.node, ["ip", "netns", "pids", coredns.netns]).output.split()

    before = server_processes()
    assert len(before) >= 2  # the main process and at least one more UDP worker
    # Pods share their node's filesystem: the packets go there as a file.
    client = state.pods["default/client"]
    packets = "".join(data.hex() + "\n" for data in bad_queries(seed=11, count=5000))
    dns.runtime.put_files(dns.state().node(client.node).container, {"/tmp/emu-fuzz.hex": packets})
    result = dns.exec("client", ["python3", "-c", SEND, "10.96.0.10", "/tmp/emu-fuzz.hex"])
    assert result.ok and "sent" in result.output, result.output
    ip = dns.state().services["default/web"].cluster_ip
    for flag in ("+notcp", "+tcp"):
        assert dig(dns, "client", flag, "web.default.svc.cluster.local") == ip
    assert server_processes() == before  # no process died
    health = dns.node_exec(coredns.node, ["curl", "-sS", f"http://{coredns.ip}:8080/health"]).output
    assert health == "OK"
