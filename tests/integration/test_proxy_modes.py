"""Every kube-proxy mode passes the same service tests, with real packets.

One cluster per mode (module-scoped, parametrised): ClusterIP over TCP and UDP
to every endpoint, NodePort on every node, a LoadBalancer address from
outside, a pod reaching itself through its service (hairpin), ClientIP
affinity, a service without endpoints refusing, an endpoint replaced behind
its service, and a UDP client that keeps its source port across the
replacement of the only endpoint (kube-proxy's stale conntrack cleanup).
iptables and nftables run on docker nodes; ipvs runs on User-mode Linux
nodes (`runtime: uml`: the guest kernel has ip_vs, this host's may not), the
host outside the cluster a guest of its own, and is skipped only where UML
cannot run here (not Linux, not root), saying so.
"""

from __future__ import annotations

import os
import signal

import pytest

from emu.api.topology.load import load_text
from emu.control.cluster import Cluster
from emu.node.proxy.base import KernelMissing
from emu.node.proxy.ipvs import require_ip_vs
from tests.integration.helpers import uml_or_skip
from tests.integration.test_service_traffic import UDP_CLIENT, curl_many, endpoint_list, ip_of, outside_curl, wait_for

NETEXEC = ("{name: netexec, workload: netexec, ports: [{name: http, containerPort: 8080}, "
           "{name: udp, containerPort: 8081, protocol: UDP}]}")  # fmt: skip
LAB = f"""\
name: modes
networking: {{proxyMode: MODE}}
RUNTIME
nodes:
  - {{name: cp, role: control-plane}}
  - {{name: w1}}
  - {{name: w2}}
pods:
  - name: client
    node: w1
    containers: [{{name: shell, command: [sleep, infinity]}}]
  - name: solo
    node: w2
    labels: {{app: solo}}
    containers: [{NETEXEC}]
deployments:
  - name: backend
    replicas: 3
    template:
      labels: {{app: backend}}
      containers: [{NETEXEC}]
  - name: echo
    replicas: 1
    template:
      labels: {{app: echo}}
      containers: [{NETEXEC}]
services:
  - name: backend
    type: NodePort
    selector: {{app: backend}}
    ports:
      - {{name: http, port: 80, targetPort: http}}
      - {{name: udp, port: 53, targetPort: udp, protocol: UDP}}
  - name: sticky
    selector: {{app: backend}}
    sessionAffinity: ClientIP
    ports: [{{port: 80, targetPort: 8080}}]
  - name: lb
    type: LoadBalancer
    selector: {{app: backend}}
    ports: [{{port: 80, targetPort: http}}]
  - name: solo
    selector: {{app: solo}}
    ports: [{{port: 80, targetPort: 8080}}]
  - name: local
    type: NodePort
    externalTrafficPolicy: Local
    selector: {{app: solo}}
    ports: [{{port: 80, targetPort: 8080}}]
  - name: echo
    selector: {{app: echo}}
    ports: [{{port: 53, targetPort: 8081, protocol: UDP}}]
  - name: nobody
    selector: {{app: nobody}}
    ports: [{{port: 80}}]
"""

# Each mode's own listing, and a line of it that shows kube-proxy's shape.
LISTINGS = {
    "iptables": (["iptables-save", "-t", "nat"], "-m statistic --mode random --probability 0.33333333349"),
    "nftables": (["nft", "list", "table", "ip", "kube-proxy"], "numgen random mod 3 vmap {"),
    "ipvs": (["ipvsadm", "-Ln"], "Masq    1      "),  # a real server: masqueraded, weight 1
}
# Where each mode runs: ipvs on User-mode Linux nodes, whose kernel has ip_vs.
RUNTIMES = {"iptables": "docker", "nftables": "docker", "ipvs": "uml"}

# One source port, as a resolver keeps: answers, or "timeout" for each of 3 tries.
UDP_FIXED_PORT = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 40053))
s.settimeout(1)
for _ in range(3):
    s.sendto(b"hostname", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recvfrom(1024)[0].decode())
        break
    except socket.timeout:
        print("timeout")
"""


def uml_nodes_or_skip() -> None:
    """ipvs runs on uml nodes: skipped, saying why, only where UML cannot run here;
    uml clusters an interrupted run left are removed first (the integration lock is ours)."""
    from emu.control.runtime.umlprovider import UmlRuntime, known_clusters
    from emu.testing import sweep

    uml_or_skip()
    for stale in known_clusters():
        if stale.startswith("emutest-") and not sweep.owner_alive(stale):
            UmlRuntime().remove_cluster(stale)


@pytest.fixture(scope="module", params=["iptables", "nftables", "ipvs"])
def mode(request, make_module_cluster):
    name = request.param
    if RUNTIMES[name] == "uml":
        uml_nodes_or_skip()
    lab = LAB.replace("MODE", name).replace("RUNTIME", f"runtime: {RUNTIMES[name]}")
    cluster = make_module_cluster(lab, f"px-{name[:3]}")
    wait_for(lambda: len(endpoint_list(cluster, "default/backend")) == 3, "backend's 3 endpoints")
    return name, cluster


@pytest.fixture(scope="module")
def outside(mode) -> str:
    return mode[1].run_external("outside")


def names_of(cluster, app: str) -> set[str]:
    return {p.name for p in cluster.state().pods.values() if p.labels.get("app") == app}


def listing(cluster, mode: str, node: str) -> str:
    return cluster.node_exec(node, LISTINGS[mode][0]).output


def test_rules_are_written_in_the_modes_own_shape(mode):
    name, cluster = mode
    for node in cluster.state().nodes:
        assert LISTINGS[name][1] in listing(cluster, name, node.name), node.name
    other = "nftables" if name == "iptables" else "iptables"
    assert "default/backend" not in listing(cluster, other, "cp")  # one mode at a time


# What a real node always holds in the mode, even with nothing to put there.
ALWAYS = {
    "iptables": (["iptables-save", "-t", "filter"], [":KUBE-NODEPORTS - [0:0]", ":KUBE-FIREWALL - [0:0]",
                 ":KUBE-PROXY-FIREWALL - [0:0]", "-A INPUT -j KUBE-FIREWALL",
                 ('-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
                  "-j KUBE-PROXY-FIREWALL")]),
    "nftables": (["nft", "list", "table", "ip", "kube-proxy"], ["map firewall-ips {", "chain firewall-check {",
                 "chain reject-chain {", "ip daddr @cluster-ips reject"]),
    "ipvs": (["sh", "-c", "ip -d link show kube-ipvs0; ipset list -n; iptables-save"],
             ["dummy", "KUBE-LOAD-BALANCER-SOURCE-CIDR", "KUBE-HEALTH-CHECK-NODE-PORT", "KUBE-IPVS-IPS",
              ":KUBE-SOURCE-RANGES-FIREWALL - [0:0]", ":KUBE-IPVS-OUT-FILTER - [0:0]",
              '-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER']),
}  # fmt: skip


def test_chains_kube_proxy_always_declares_exist(mode):
    name, cluster = mode
    argv, wanted = ALWAYS[name]
    text = cluster.node_exec("w2", argv).output
    assert [line for line in wanted if line not in text] == []


def test_cluster_ip_reaches_every_endpoint_over_tcp(mode):
    name, cluster = mode
    # Random picks need 40 tries to meet all 3 endpoints; IPVS's rr takes them in turn (each curl in a
    # UML guest costs a slow process start, so 6 there: two rounds).
    count = 6 if name == "ipvs" else 40
    answers = curl_many(cluster, "client", f"http://{ip_of(cluster, 'default/backend')}/hostname", count)
    assert len(answers) == count and set(answers) == names_of(cluster, "backend")


def test_cluster_ip_reaches_every_endpoint_over_udp(mode):
    _, cluster = mode
    result = cluster.exec("client", ["python3", "-c", UDP_CLIENT, ip_of(cluster, "default/backend"), "53", "40"])
    assert result.ok, result.output
    assert set(result.output.split()) == names_of(cluster, "backend")


def test_node_port_answers_on_every_node(mode, outside):
    _, cluster = mode
    node_port = cluster.state().services["default/backend"].ports[0].node_port
    for node in cluster.state().nodes:  # cp has no backend: it forwards to another node
        code, answer = outside_curl(cluster, f"http://{node.node_ip}:{node_port}/hostname")
        assert code == 0 and answer in names_of(cluster, "backend"), f"{node.name}: {answer}"


def test_load_balancer_address_answers_from_outside(mode, outside):
    _, cluster = mode
    address = cluster.state().services["default/lb"].load_balancer_ip
    answers = {outside_curl(cluster, f"http://{address}/hostname") for _ in range(6)}
    assert all(code == 0 for code, _ in answers) and {a for _, a in answers} <= names_of(cluster, "backend")


def test_local_policy_drops_outside_traffic_where_no_endpoint_is_but_not_pods_or_the_node(mode, outside):
    """kube-proxy's externalTrafficPolicy: Local. Only solo's node (w2) takes
    traffic from outside, keeping the client's address; on w1 a pod or the
    node itself still reaches the service (short-circuited to its endpoints)."""
    _, cluster = mode
    state = cluster.state()
    node_port = state.services["default/local"].ports[0].node_port
    w1, w2 = state.node("w1").node_ip, state.node("w2").node_ip
    code, answer = outside_curl(cluster, f"http://{w2}:{node_port}/clientip")
    assert code == 0 and answer.split(":")[0] == outside, answer
    code, answer = outside_curl(cluster, f"http://{w1}:{node_port}/hostname")
    assert code != 0, f"w1 answered {answer} from outside without a local endpoint"
    assert curl_many(cluster, "client", f"http://{w1}:{node_port}/hostname", 3) == ["solo"] * 3
    result = cluster.node_exec("w1", ["curl", "-sS", "--max-time", "3", f"http://{w1}:{node_port}/hostname"])
    assert result.output.strip() == "solo", result.output


def test_pod_reaches_itself_through_its_service(mode):
    _, cluster = mode
    assert curl_many(cluster, "solo", f"http://{ip_of(cluster, 'default/solo')}/hostname", 5) == ["solo"] * 5


def test_client_ip_affinity_keeps_one_backend(mode):
    _, cluster = mode
    answers = curl_many(cluster, "client", f"http://{ip_of(cluster, 'default/sticky')}/hostname", 20)
    assert len(answers) == 20 and len(set(answers)) == 1


def test_service_without_endpoints_is_refused(mode):
    _, cluster = mode
    result = cluster.exec("client", ["curl", "-sS", "--max-time", "5", f"http://{ip_of(cluster, 'default/nobody')}/"])
    assert result.exit_code == 7, result.output  # 7: connection refused (28 would be a time-out)


def test_replaced_endpoint_is_followed_by_every_node(mode):
    name, cluster = mode
    before = cluster.state()
    pod = min((p for p in before.pods.values() if p.labels.get("app") == "backend"), key=lambda p: p.name)
    cluster.delete_pod(pod.name)
    new = cluster.state().pods[pod.key].ip
    assert new != pod.ip
    wait_for(lambda: f"{new}:8080" in endpoint_list(cluster, "default/backend"), "the new pod's endpoint", 10)
    for node in before.nodes:
        wait_for(lambda node=node: f"{new}:8080" in listing(cluster, name, node.name), f"{node.name}'s rules to add {new}",
                 10)  # fmt: skip
        assert f"{pod.ip}:8080" not in listing(cluster, name, node.name), f"{node.name} kept the old endpoint"
    answers = curl_many(cluster, "client", f"http://{ip_of(cluster, 'default/backend')}/hostname", 30)
    assert set(answers) == names_of(cluster, "backend")


def test_udp_client_follows_a_replaced_endpoint_from_the_same_port(mode):
    """Without kube-proxy's `conntrack -D`, the flow stays NATed to the dead pod."""
    name, cluster = mode
    address = ip_of(cluster, "default/echo")
    [pod] = [p for p in cluster.state().pods.values() if p.labels.get("app") == "echo"]
    first = cluster.exec("client", ["python3", "-c", UDP_FIXED_PORT, address, "53"]).output.split()
    assert first == [pod.name], first
    cluster.delete_pod(pod.name)
    new = cluster.state().pods[pod.key].ip
    client_node = cluster.state().pods["default/client"].node
    wait_for(lambda: f"{new}:8081" in listing(cluster, name, client_node), "the client's node to program the new pod", 10)
    again = cluster.exec("client", ["python3", "-c", UDP_FIXED_PORT, address, "53"]).output.split()
    assert again and again[-1] == pod.name, f"still sent to the old endpoint: {again}"


FLUSH = {
    "iptables": ["iptables", "-t", "nat", "-F", "KUBE-SERVICES"],
    "nftables": ["nft", "flush", "chain", "ip", "kube-proxy", "services"],
    "ipvs": ["ipvsadm", "-C"],  # every virtual server gone
}


def test_flushed_dispatch_chain_is_written_again(mode):
    name, cluster = mode
    url = f"http://{ip_of(cluster, 'default/backend')}/hostname"
    names = names_of(cluster, "backend")
    assert cluster.node_exec("w1", FLUSH[name]).ok
    # The agents' check runs every second or two here, but its period grows with what reading
    # the rules costs (a 1% budget): on this 2-core machine under other test runs, up to a minute.
    # In a UML guest a check costs 0.39 s of CPU (every ~2 minutes), but the agent looks at the
    # IPVS table every second without starting a process, and checks when it moved.
    wait_for(lambda: "service rules lost" in cluster.node_exec("w1", ["cat", "/var/log/emu/agent.log"]).output,
             "w1's agent to notice", 120)  # fmt: skip
    # Judged by who answers: without the DNAT the packet leaves the node, and something outside may answer.
    wait_for(lambda: cluster.exec("client", ["curl", "-sS", "--max-time", "1", url]).output.strip() in names,
             "the service again", 10)  # fmt: skip


def kill_uml_node(cluster, node: str) -> str:
    """Kill a uml node's kernel from outside emu (the linux process, as `kill -9` would); its container name."""
    from emu.control.runtime import uml

    container = cluster.state().node(node).container
    pid = int((uml.guest_dir(uml.STATE_DIR, container) / "pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}/exe") or not _readable(f"/proc/{pid}/exe"),
             f"{node}'s kernel to be gone", 10)  # (a zombie's exe cannot be read)
    return container


def _readable(link: str) -> bool:
    try:
        return bool(os.readlink(link))
    except OSError:
        return False


def test_restarted_node_has_its_service_rules_again(mode, runtime):
    """A node container started again has a fresh network namespace: its boot
    plan and agent write the mode's rules anew (last: it disturbs the node).
    A uml node's kernel killed from outside is named by `emu status` and
    booted again by `emu up`, its pods at the same addresses."""
    name, cluster = mode
    solo = cluster.state().pods["default/solo"]  # a bare pod on w2
    if RUNTIMES[name] == "uml":
        container = kill_uml_node(cluster, "w2")
        _, problems = Cluster(cluster.name).health()  # as a later `emu status` finds it
        assert [(p.node, p.what) for p in problems] == [
            ("w2", f"node w2: its container {container} is not running (down: its UML kernel process is gone)")]
        topology = load_text(LAB.replace("MODE", name).replace("RUNTIME", "runtime: uml")).model_copy(
            update={"name": cluster.name})  # fmt: skip
        change = cluster.up(topology)  # `emu up`: the stopped node first
        assert change.started == [f"node w2 ({container}) was down: its UML kernel process is gone: started"]
        assert Cluster(cluster.name).health()[1] == []
    else:
        runtime.api.restart(cluster.state().node("w2").container, timeout=1)
    url = f"http://{ip_of(cluster, 'default/backend')}/hostname"
    names = names_of(cluster, "backend")

    def served() -> bool:
        result = cluster.node_exec("w2", ["curl", "-sS", "--max-time", "1", url])
        return result.ok and result.output.strip() in names

    wait_for(served, "w2's own rules to serve the cluster IP", 90)  # a second or two unloaded
    # All three backends again, w2's own once its restarted pod is ready.
    wait_for(lambda: LISTINGS[name][1] in listing(cluster, name, "w2"), "w2's rules to balance over 3 again", 60)
    # w2's bare pod back at its address, reached from another node.
    assert cluster.state().pods["default/solo"].ip == solo.ip
    direct = ["curl", "-sS", "--max-time", "1", f"http://{solo.ip}:8080/hostname"]
    wait_for(lambda: cluster.exec("client", direct).output.strip() == "solo", "pod solo on w2 at its address", 30)


def test_up_with_ipvs_fails_before_creating_anything(runtime, new_name):
    """`emu up` of docker nodes with proxyMode ipvs says why it cannot run (where
    the kernel lacks ip_vs, the module; where it has it, that emu programs IPVS on
    uml nodes, not yet on docker nodes) and leaves nothing behind."""
    from emu.errors import EmuError

    try:
        require_ip_vs()
        why = "not yet on docker nodes"
    except KernelMissing:
        why = "kernel module ip_vs"
    name = new_name("px-ipvs")
    topology = load_text(LAB.replace("MODE", "ipvs").replace("RUNTIME", "").replace("name: modes", f"name: {name}"))
    with pytest.raises(EmuError, match=why):
        Cluster(name, runtime=runtime).up(topology)
    assert name not in runtime.cluster_names()
