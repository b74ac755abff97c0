"""What keeps answering when part of the cluster stops, proven with packets:
several cluster DNS replicas (each answers; one hung, the service leaves it and
names still resolve), the forward cache of each replica (an upstream that
counts its queries), and a LoadBalancer address whose announcing node stops
(curl from a host outside the cluster still gets an answer, from another node).

The module runs once per proxy mode (conftest's proxy_mode). The node stop
comes last: the module's cluster is put back (node started, replica
continued) in each test's finally, so a failure does not poison the next
test."""

from __future__ import annotations


import pytest

from tests.integration.conftest import in_proxy_mode
from tests.waiting import wait_for
from tests import labs

# Answers NAME.counted.example.com (TTL 30) and NAME.uncached.example.com (TTL 0)
# with 192.0.2.N, N the number of queries for that name it has seen: whether a
# second query reached it is in the answer.

# The LoadBalancer service is named so that its owner (emu.node.services.load_balancer_owner,
# a hash of node and service) is w2, not the hub cp: stopping w2 moves the address.
LAB = labs.load("failover")
KUBE_DNS = "10.96.0.10"


@pytest.fixture(scope="module")
def cluster(make_module_cluster, proxy_mode):
    return make_module_cluster(in_proxy_mode(LAB, proxy_mode), f"failover-{proxy_mode[:3]}")


@pytest.fixture(scope="module")
def outside(cluster) -> str:
    return cluster.run_external("outside")



def replicas(cluster) -> list:
    return sorted((p for p in cluster.state().pods.values() if p.owner == "Deployment/coredns"), key=lambda p: p.ip)


def dig(cluster, server: str, *args: str) -> str:
    return cluster.exec("client", ["dig", "+short", "+time=2", "+tries=1", f"@{server}", *args]).output.strip()


def dns_endpoints(cluster, node: str) -> set[str]:
    """The kube-dns endpoints the agent on `node` programs (what waits are bounded on, not what is asserted)."""
    import json

    from emu.node.agent import AGENT_URL

    answer = cluster.node_exec(node, ["curl", "-sS", "--max-time", "5", f"{AGENT_URL}/endpoints"])
    return set(json.loads(answer.output).get("kube-system/kube-dns", {}).get("dns", [])) if answer.ok else set()


def requests_counted(cluster, replica) -> float:
    """The DNS queries a replica's server counted (its /metrics, read from the client pod)."""
    result = cluster.exec("client", ["curl", "-sS", "--max-time", "5", f"http://{replica.ip}:9153/metrics"])
    assert result.ok, result.output
    return sum(float(line.rpartition(" ")[2]) for line in result.output.splitlines()
               if line.startswith("coredns_dns_requests_total{"))  # fmt: skip


def test_every_dns_replica_answers_and_the_service_spreads_over_them(cluster):
    pods = replicas(cluster)
    assert len(pods) == 3 and len({p.ip for p in pods}) == 3, pods
    web = cluster.state().services["default/web"].cluster_ip
    for pod in pods:  # each replica itself: a cluster name over UDP and TCP, and a name from upstream
        assert dig(cluster, pod.ip, "web.default.svc.cluster.local") == web, pod.name
        assert dig(cluster, pod.ip, "+tcp", "web.default.svc.cluster.local") == web, pod.name
        assert dig(cluster, pod.ip, "a.uncached.example.com").startswith("192.0.2."), pod.name
    before = {p.name: requests_counted(cluster, p) for p in pods}
    for _ in range(30):  # through the service, a new source port each: spread over all three
        assert dig(cluster, KUBE_DNS, "web.default.svc.cluster.local") == web
    # (the scrapes themselves are HTTP, not DNS: they count nothing)
    wait_for(lambda: all(requests_counted(cluster, p) > before[p.name] for p in pods), 10,
             "every replica did not get some of 30 queries through kube-dns")  # fmt: skip


def test_each_replica_caches_what_it_forwarded(cluster):
    first, second = replicas(cluster)[:2]

    def ask(pod, name: str) -> str:  # over TCP: one process of the replica, so one cache
        return dig(cluster, pod.ip, "+tcp", name)

    assert ask(first, "one.counted.example.com") == "192.0.2.1"
    assert ask(first, "one.counted.example.com") == "192.0.2.1"  # from its cache: the upstream saw one query
    ttl = cluster.exec("client", ["dig", "+noall", "+answer", "+tcp", "+time=2", "+tries=1", f"@{first.ip}",
                                  "one.counted.example.com"]).output.split()  # fmt: skip
    assert 0 <= int(ttl[1]) <= 30, ttl
    assert ask(second, "one.counted.example.com") == "192.0.2.2"  # another replica, its own cache: it asked
    # TTL 0: never kept, every query reaches the upstream.
    assert [ask(first, "two.uncached.example.com") for _ in range(3)] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]


def test_a_hung_dns_replica_leaves_the_service_and_names_still_resolve(cluster):
    hung = replicas(cluster)[0]
    web = cluster.state().services["default/web"].cluster_ip
    pids = cluster.node_exec(hung.node, ["ip", "netns", "pids", hung.netns]).output.split()
    assert pids, f"no process in {hung.netns}"
    assert cluster.node_exec(hung.node, ["kill", "-STOP", *pids]).ok
    try:
        silent = cluster.exec("client", ["dig", "+time=2", "+tries=1", f"@{hung.ip}", "web.default.svc.cluster.local"])
        assert silent.exit_code == 9, silent.output  # dig's "no reply": it really does not answer
        # Its readiness probe (:8181/ready) times out: the service leaves it, on the client's node too.
        wait_for(lambda: f"{hung.ip}:53" not in dns_endpoints(cluster, "w1"), 60,
                 f"the hung replica {hung.name} did not leave kube-dns")  # fmt: skip
        answers = [dig(cluster, KUBE_DNS, "web.default.svc.cluster.local") for _ in range(30)]
        assert answers == [web] * 30  # one in three would time out if the hung replica were still in
        assert cluster.exec("client", ["getent", "hosts", "web"]).output.split()[0] == web
    finally:  # the module's cluster as it was
        cluster.node_exec(hung.node, ["kill", "-CONT", *pids])
    wait_for(lambda: f"{hung.ip}:53" in dns_endpoints(cluster, "w1"), 60, f"{hung.name} did not come back")
    assert dig(cluster, hung.ip, "web.default.svc.cluster.local") == web


def holders(cluster, address: str) -> list[str]:
    """The nodes that hold `address` on eth0 (read in each node, not computed)."""
    found = []
    for node in cluster.state().nodes:
        if not cluster.runtime.api.inspect_container(node.container)["State"]["Running"]:
            continue  # (a stopped node holds nothing)
        held = cluster.node_exec(node.name, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
        if held.ok and f" {address}/32 " in held.output:
            found.append(node.name)
    return found


def outside_curl(cluster, url: str) -> str | None:
    result = cluster.runtime.exec(f"{cluster.name}-outside", ["curl", "-sS", "--max-time", "2", url])
    return result.output.strip() if result.exit_code == 0 else None


def test_a_load_balancer_address_moves_when_its_node_stops(cluster, outside, runtime):
    from emu.node.services import load_balancer_owner

    state = cluster.state()
    service = state.services["default/web"]
    address = service.load_balancer_ip
    assert load_balancer_owner(state, service, {}) == "w2", "the lab's LoadBalancer should be announced by w2"
    wait_for(lambda: holders(cluster, address) == ["w2"], 30, f"{address} was not held by w2 alone")
    url = f"http://{address}/hostname"
    wait_for(lambda: {outside_curl(cluster, url) for _ in range(8)} == {"web1", "web2"}, 30,
             "the LoadBalancer address did not reach both pods from outside")  # fmt: skip
    container = state.node("w2").container
    runtime.api.stop(container, timeout=1)
    try:
        # w2 NotReady (the hub's grace), its endpoint leaves, and another node announces the address.
        wait_for(lambda: outside_curl(cluster, url) == "web1", 120,
                 f"{address} did not answer from outside after its node w2 stopped")  # fmt: skip
        assert [outside_curl(cluster, url) for _ in range(8)] == ["web1"] * 8
        assert len(holders(cluster, address)) == 1 and holders(cluster, address) != ["w2"]
    finally:
        runtime.api.start(container)
    # Back, w2 announces it again (the owner by hash) and the other node lets it go.
    wait_for(lambda: holders(cluster, address) == ["w2"], 90, f"w2 did not take {address} back")
    wait_for(lambda: {outside_curl(cluster, url) for _ in range(8)} == {"web1", "web2"}, 60,
             "the LoadBalancer address did not reach both pods again")  # fmt: skip
