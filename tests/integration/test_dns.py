"""Cluster DNS from pods, the checks of Kubernetes' DNS conformance tests
(test/e2e/network/dns.go): dig over UDP and TCP, and getent; and where emu
answers as CoreDNS does beyond them (issue 14): ExternalName addresses,
forwarding over TCP, rotating answers, endpoint names, header flags.

The lab's upstream DNS server is a pod (`upstream`) behind a service with a
fixed address that `dns.upstreams` names. It answers www.example.com; for
big.example.com it truncates every UDP answer and gives the 40 addresses only
over TCP; transport.example.com TXT says which transport asked (TTL 0, so
never cached)."""

from __future__ import annotations

import time

import pytest

from emu.api.topology.load import load_text
from tests.integration.conftest import in_proxy_mode
from tests import labs

UPSTREAM_IP = "10.96.0.53"

LAB = labs.load("dns")


@pytest.fixture(scope="module")
def dns(make_module_cluster, proxy_mode):
    text = in_proxy_mode(LAB, proxy_mode)
    cluster = make_module_cluster(text, f"dns-{proxy_mode[:3]}")
    cluster.lab = text.replace("name: dns\n", f"name: {cluster.name}\n", 1)
    return cluster


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


def lab_text(cluster) -> str:
    """The module's lab as it was made: what a test that changes it applies again at its end."""
    return cluster.lab


def test_external_name_then_cluster_ip(dns):
    assert dig(dns, "client", "CNAME", "ext.default.svc.cluster.local") == "www.example.com."
    changed = lab_text(dns).replace(
        "  - name: ext\n    type: ExternalName\n    externalName: www.example.com\n",
        "  - name: ext\n    selector: {app: querier}\n    ports: [{port: 80, targetPort: 8080}]\n",
    )
    try:  # (an apply that fails half way is undone too)
        dns.apply(load_text(changed))
        ip = dns.state().services["default/ext"].cluster_ip
        wait_for(lambda: dig(dns, "client", "ext.default.svc.cluster.local") == ip, "ext's A record", 15)
    finally:  # the module's lab again, for the tests after this one
        dns.apply(load_text(lab_text(dns)))
    wait_for(lambda: dig(dns, "client", "CNAME", "ext.default.svc.cluster.local") == "www.example.com.",
             "ext to be an ExternalName again", 15)  # fmt: skip


def test_dns_policy_none_with_custom_config(dns):
    resolv = dns.exec("custom", ["cat", "/etc/resolv.conf"]).output
    assert resolv == "search svc.cluster.local example.internal\nnameserver 10.96.0.10\noptions ndots:2\n"
    ip = dns.state().services["default/web"].cluster_ip
    assert dns.exec("custom", ["getent", "hosts", "web.default"]).output.split()[0] == ip


def test_unknown_name_is_nxdomain_and_outside_names_go_upstream(dns):
    assert status(dns, "client", "nope.default.svc.cluster.local") == "NXDOMAIN"
    assert dig(dns, "client", "www.example.com") == "192.0.2.7"
    assert status(dns, "client", "nope.example.com") == "NXDOMAIN"  # the upstream's answer


def test_external_name_answers_carry_the_targets_addresses(dns):
    """A stub that does not follow CNAMEs (dig shows the reply as it came)
    gets the address in the same answer: from the upstream for a name outside
    the cluster, from the zone for a service name."""
    for flag in ("+notcp", "+tcp"):
        assert dig(dns, "client", flag, "outside.default.svc.cluster.local").split() == ["www.example.com.", "192.0.2.7"]
    ip = dns.state().services["default/web"].cluster_ip
    assert dig(dns, "client", "alias.default.svc.cluster.local").split() == ["web.default.svc.cluster.local.", ip]
    assert dns.exec("client", ["getent", "hosts", "alias.default.svc.cluster.local"]).output.split()[0] == ip


def test_forwarding_follows_the_clients_transport_and_truncation(dns):
    for flag, transport in (("+notcp", "udp"), ("+tcp", "tcp")):
        assert dig(dns, "client", flag, "TXT", "transport.example.com") == f'"{transport}"'
    # The upstream gives these 40 addresses only over TCP: a UDP client with
    # room for them gets them whole because emu asked again over TCP.
    output = dns.exec("client", ["dig", "+time=2", "+tries=1", "+notcp", "+ignore", "+bufsize=4096", "big.example.com"]).output
    assert " tc" not in output.split("flags:", 1)[1].split(";", 1)[0]
    assert len(dig(dns, "client", "+notcp", "+bufsize=4096", "big.example.com").split()) == 40
    # Without room (no EDNS: 512 bytes) it is truncated, and dig's retry over TCP gets them.
    assert len(dig(dns, "client", "+noedns", "big.example.com").split()) == 40


def test_answers_rotate_over_several_queries(dns):
    answers = [dig(dns, "client", "many.default.svc.cluster.local").split() for _ in range(8)]
    assert len({tuple(sorted(a)) for a in answers}) == 1 and len(answers[0]) == 40
    assert len({a[0] for a in answers}) >= 4, answers  # not the same pod first every time
    tcp = [dig(dns, "client", "+tcp", "many.default.svc.cluster.local").split()[0] for _ in range(4)]
    assert len(set(tcp)) >= 2, tcp


def test_endpoint_names_and_ptr_for_a_cluster_ip_service(dns):
    querier = dns.state().pods["default/querier"]
    dashed = querier.ip.replace(".", "-")
    assert dig(dns, "client", f"{dashed}.web.default.svc.cluster.local") == querier.ip
    # One PTR for each service the pod is an endpoint of (earlier tests may have added some).
    assert set(dig(dns, "client", "-x", querier.ip).split()) >= {
        f"{dashed}.web.default.svc.cluster.local.",
        "querier-0.dns-querier.default.svc.cluster.local.",
    }
    assert dig(dns, "client", "SRV", "web.default.svc.cluster.local") == "0 100 80 web.default.svc.cluster.local."


def test_header_flags_case_and_refusals(dns):
    output = dns.exec("client", ["dig", "+time=2", "+tries=1", "WEB.Default.svc.cluster.local"]).output
    flags = output.split("flags:", 1)[1].split(";", 1)[0].split()
    assert "aa" in flags and "ra" not in flags  # authoritative, not recursive
    assert "WEB.Default.svc.cluster.local." in output.split("ANSWER SECTION:", 1)[1]
    assert status(dns, "client", "+edns=1", "+noednsnegotiation", "web.default.svc.cluster.local") == "BADVERS"
    assert "Transfer failed" in dns.exec("client", ["dig", "+time=2", "+tries=1", "AXFR", "cluster.local"]).output
    assert status(dns, "client", "quiet.svc.cluster.local") == "NOERROR"  # a namespace with a pod and no service
    assert status(dns, "client", "nowhere.svc.cluster.local") == "NXDOMAIN"


def test_service_created_and_deleted_resolves_and_goes(dns):
    # How soon is bench/dns.py's figure; here only that it happens (15 s bounds a hang).
    base = lab_text(dns)
    added = base + "  - name: fresh\n    selector: {app: querier}\n    ports: [{port: 80, targetPort: 8080}]\n"
    assert status(dns, "client", "fresh.default.svc.cluster.local") == "NXDOMAIN"
    try:
        dns.apply(load_text(added))
        ip = dns.state().services["default/fresh"].cluster_ip
        wait_for(lambda: dig(dns, "client", "fresh.default.svc.cluster.local") == ip, "fresh to resolve", 15)
    finally:
        dns.apply(load_text(base))
    wait_for(lambda: status(dns, "client", "fresh.default.svc.cluster.local") == "NXDOMAIN", "fresh to go", 15)


def test_the_emu_dns_command_resolves_as_a_node_and_as_a_pod(dns, capsys):
    from emu.cli import main as emu_main

    ip = dns.state().services["default/web"].cluster_ip
    for where in ([], ["--pod", "client"]):  # from a node with a default-namespace search list, from the pod
        assert emu_main(["dns", "--name", dns.name, *where, "web"]) == 0
        out = capsys.readouterr().out
        assert "status: NOERROR" in out and ip in out, (where, out)
    assert emu_main(["dns", "--name", dns.name, "web.default.svc.cluster.local.", "SRV"]) == 0
    assert "0 100 80 web.default.svc.cluster.local." in capsys.readouterr().out
    assert emu_main(["dns", "--name", dns.name, "nowhere.default.svc.cluster.local."]) == 0
    assert "status: NXDOMAIN" in capsys.readouterr().out


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


def scrape_metrics(cluster, pod: str, ip: str) -> dict[str, float]:
    """The coredns pod's /metrics as curl in `pod` reads it: {sample line's name and labels: value}."""
    result = cluster.exec(pod, ["curl", "-sS", "--max-time", "5", f"http://{ip}:9153/metrics"])
    assert result.ok, result.output
    samples = {}
    for line in result.output.splitlines():
        if line and not line.startswith("#"):
            name, _, number = line.rpartition(" ")
            samples[name] = float(number)
    return samples


def test_prometheus_metrics_on_9153_count_the_queries(dns):
    coredns = next(p for p in dns.state().pods.values() if p.namespace == "kube-system")
    udp_mx = 'coredns_dns_requests_total{server="dns://:53",zone=".",view="",proto="udp",family="1",type="MX"}'
    tcp_mx = udp_mx.replace('"udp"', '"tcp"')
    noerror = 'coredns_dns_responses_total{server="dns://:53",zone=".",view="",rcode="NOERROR",plugin="%s"}'
    cache = 'coredns_cache_%s_total{server="dns://:53",zones=".",view=""%s}'
    count = 'coredns_dns_request_duration_seconds_count{server="dns://:53",zone=".",view=""}'

    def served(samples: dict) -> float:  # NOERROR answers from the zone or the cache
        return sum(samples.get(noerror % plugin, 0) for plugin in ("kubernetes", "cache"))

    def cached(samples: dict) -> float:
        return sum(samples.get(cache % kind, 0) for kind in (("hits", ',type="denial"'), ("misses", "")))

    before = scrape_metrics(dns, "client", coredns.ip)
    for _ in range(3):  # MX: a type no other test asks, answered NOERROR without records
        assert status(dns, "client", "+notcp", "MX", "web.default.svc.cluster.local") == "NOERROR"
    assert status(dns, "client", "+tcp", "MX", "web.default.svc.cluster.local") == "NOERROR"
    after = {}

    def counted() -> bool:
        after.update(scrape_metrics(dns, "client", coredns.ip))
        return after.get(count, 0) >= before.get(count, 0) + 4

    wait_for(counted, "the durations of the 4 queries")
    assert after[udp_mx] - before.get(udp_mx, 0) == 3
    assert after[tcp_mx] - before.get(tcp_mx, 0) == 1
    assert served(after) - served(before) >= 4
    assert cached(after) - cached(before) >= 4  # each query a miss or a denial hit (workers cache apart)
    assert after['coredns_build_info{goversion="emu-python",revision="emu",version="1.11.3"}'] == 1
