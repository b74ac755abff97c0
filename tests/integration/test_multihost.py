"""One cluster over three Docker hosts: real dockerd daemons, each in its own
network namespace with its own sshd (tests/hostlab.py), joined in a Docker
Swarm by `emu hosts prepare`; node containers on an attachable overlay;
engines reached over real SSH. Every check moves real packets across hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emu.control.cluster import Cluster
from emu.errors import EmuError
from emu.control.runtime.swarm import SwarmRuntime
from emu.api.topology.load import load_text
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
NETEXEC = "{name: netexec, workload: netexec, ports: [{name: http, containerPort: 8080}]}"
LAB = f"""\
name: spread
nodes:
  - {{name: cp, role: control-plane}}
  - {{name: w1}}
  - {{name: w2}}
pods:
  - name: client
    node: w1
    containers: [{{name: shell, command: [sleep, infinity]}}]
  - name: web
    node: w2
    labels: {{app: web}}
    containers: [{NETEXEC}]
  - name: near
    node: cp
    labels: {{app: echo}}
    containers: [{NETEXEC}]
deployments:
  - name: echo
    replicas: 2
    template:
      labels: {{app: echo}}
      containers: [{NETEXEC}]
services:
  - name: echo
    selector: {{app: echo}}
    ports: [{{name: http, port: 80, targetPort: http}}]
  - name: web
    type: NodePort
    selector: {{app: web}}
    ports: [{{name: http, port: 80, targetPort: http, nodePort: 30080}}]
  - name: echo-lb
    type: LoadBalancer
    selector: {{app: echo}}
    ports: [{{name: http, port: 80, targetPort: http}}]
"""


@pytest.fixture(scope="module")
def lab(swarm_lab):
    return swarm_lab  # (conftest.py: three hosts in a swarm with emu's node image)


@pytest.fixture(scope="module")
def spread(lab, new_name, runtime) -> Cluster:
    """The lab's three nodes on three hosts (cp on h1, w1 on h2, w2 on h3)."""
    topology = load_text(LAB).model_copy(update={"name": new_name("spread"), "hosts": lab.models()})
    cluster = Cluster(topology.name, runtime=SwarmRuntime(topology.hosts))
    try:
        cluster.up(topology)
        overlay_settled(cluster)
        yield cluster
    finally:
        if not os.environ.get("EMU_KEEP_CLUSTERS"):
            cluster.down()


def overlay_settled(cluster: Cluster) -> None:
    """Every pod reaches the pods on the other hosts. The swarm's overlay learns its
    peers by gossip: on a loaded machine a host the managers marked down for a moment
    has lost its peers' entries until the gossip adds them back (a CI run once saw
    the pods of h2 cut off from h1 and h3 for all of this module)."""
    pods = {name: pod_ip(cluster, name) for name in ("near", "client", "web")}

    def every_pair() -> bool:
        return all(cluster.exec(a, ["ping", "-c", "1", "-W", "1", ip]).ok
                   for a in pods for b, ip in pods.items() if a != b)  # fmt: skip

    if not every_pair():
        try:
            wait_for(every_pair, 90, "pods on the three hosts reaching each other over the overlay")
        except BaseException:
            for node in cluster.state().nodes:
                routes = cluster.node_exec(node.name, ["ip", "route"]).output
                print(f"--- node {node.name} on {node.host}: ip route\n{routes}", file=sys.stderr)
            raise


def pod_ip(cluster: Cluster, name: str) -> str:
    return cluster.pod(name).ip


def curl(cluster: Cluster, pod: str, url: str) -> str:
    result = cluster.exec(pod, ["curl", "-sS", "--max-time", "5", url])
    assert result.ok, result.output
    return result.output.strip()


def test_nodes_run_on_their_hosts(spread):
    state = spread.state()
    assert [(n.name, n.host) for n in state.nodes] == [("cp", "h1"), ("w1", "h2"), ("w2", "h3")]
    runtime = spread.runtime
    for node in state.nodes:
        engine = runtime.engine(node.host)
        assert [r.name for r in engine.cluster_containers(spread.name) if r.is_node] == [node.container]
    assert state.mtu == 1450


def test_status_shows_each_nodes_host(spread, lab):
    result = emu("status", "--json", "--name", spread.name)
    assert result.returncode == 0, result.stderr
    nodes = {n["name"]: n["host"] for n in json.loads(result.stdout)["nodes"]}
    assert nodes == {"cp": "h1", "w1": "h2", "w2": "h3"}


def test_pod_to_pod_across_hosts_keeps_the_client_ip(spread):
    client, web = pod_ip(spread, "client"), pod_ip(spread, "web")
    seen = curl(spread, "client", f"http://{web}:8080/clientip")
    assert seen.rsplit(":", 1)[0] == client  # no NAT between pods on different hosts


def test_cluster_ip_reaches_endpoints_on_other_hosts(spread):
    service = spread.state().services["default/echo"]
    expected = {p.name for p in spread.state().pods.values() if p.labels.get("app") == "echo"}
    hosts_of = {p.name: spread.state().node(p.node).host for p in spread.state().pods.values()}
    assert {hosts_of[name] for name in expected} - {"h2"}, "some endpoint must be on another host than the client"
    seen = {curl(spread, "client", f"http://{service.cluster_ip}/hostname") for _ in range(30)}
    assert seen == expected


def test_node_port_on_another_host(spread):
    state = spread.state()
    # The client is on h2, the node asked is cp on h1 and the web pod is on h3.
    assert curl(spread, "client", f"http://{state.node('cp').node_ip}:30080/hostname") == "web"


def test_load_balancer_address_answers_from_every_host(spread):
    state = spread.state()
    address = state.services["default/echo-lb"].load_balancer_ip
    echo = {p.name for p in state.pods.values() if p.labels.get("app") == "echo"}
    for pod in ("client", "web", "near"):
        assert curl(spread, pod, f"http://{address}/hostname") in echo


def test_dns_from_pods_on_every_host(spread):
    cluster_ip = spread.state().services["default/echo"].cluster_ip
    for pod in ("near", "client", "web"):  # on h1, h2, h3
        result = spread.exec(pod, ["getent", "hosts", "echo"])
        assert result.ok and result.output.split()[0] == cluster_ip, (pod, result.output)


def test_pods_take_the_overlay_mtu_and_big_transfers_cross(spread):
    web = pod_ip(spread, "web")
    assert spread.exec("client", ["cat", "/sys/class/net/eth0/mtu"]).output.strip() == "1450"
    # 1422 bytes of ICMP payload + 28 of headers fill 1450 exactly, unfragmented.
    assert spread.exec("client", ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", web]).ok
    assert not spread.exec("client", ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1423", web]).ok
    # 5 MB of random bytes from a server on h3 to a client on h2: full-size segments all the way.
    serve = (
        "head -c 5000000 /dev/urandom >/tmp/emu-big.bin && sha256sum </tmp/emu-big.bin && "
        "cd /tmp && setsid python3 -m http.server 9000 >/dev/null 2>&1 </dev/null &"
    )
    server = spread.exec("web", ["sh", "-c", serve])
    assert server.ok, server.output
    sent = server.output.split()[0]
    # The server starts in the background; on a loaded machine Python takes a while to listen.
    listening = ["sh", "-c", "ss -ltn 'sport = :9000' | grep -q LISTEN"]
    wait_for(lambda: spread.exec("web", listening).ok, 60, "the pod's HTTP server on :9000 listening")
    fetch = f"curl -sS --retry 5 --retry-connrefused --max-time 20 http://{web}:9000/emu-big.bin | sha256sum"
    received = spread.exec("client", ["sh", "-c", fetch])
    assert received.ok and received.output.split()[0] == sent, received.output
    spread.exec("web", ["pkill", "-f", "http.server 9000"])


def test_down_leaves_nothing_on_any_host(lab, new_name):
    topology = load_text("name: x\ndns: {enabled: false}\nnodes: [{name: a}, {name: b}]\n")
    topology = topology.model_copy(update={"name": new_name("gone"), "hosts": lab.models()[:2]})
    cluster = Cluster(topology.name, runtime=SwarmRuntime(topology.hosts))
    cluster.up(topology)
    assert emu("down", topology.name).returncode == 0  # found through emu's record of its hosts
    for host in lab.models():
        engine = SwarmRuntime([host]).engine(host.name)
        assert engine.cluster_containers(topology.name) == []
        assert [n for n in engine.api.networks() if n["Name"] == f"emu-{topology.name}"] == []
    assert not (Path(os.environ["EMU_HOME"]) / "clusters" / f"{topology.name}.json").exists()


def test_a_stopped_engine_is_named_and_prepare_brings_the_host_back(lab, spread, tmp_path):
    """Last: it stops an engine, which a lab engine does not survive with its swarm state."""
    from emu.control.hosts import prepare_hosts
    from emu.control.runtime.images import node_image_tag
    from tests import hostlab

    spread.down()
    h2 = lab.host("h2")
    hostlab.stop_dockerd(h2)
    try:
        with pytest.raises(EmuError) as caught:
            SwarmRuntime(lab.models()).engines()
        assert "host h2: SSH works but no Docker engine listens" in str(caught.value), caught.value
        (tmp_path / "hosts.yaml").write_text(lab.inventory_yaml())
        (tmp_path / "lab.yaml").write_text("name: emutest-never\nnodes: [{name: a}, {name: b}]\n")
        result = emu("up", str(tmp_path / "lab.yaml"), "--hosts", str(tmp_path / "hosts.yaml"))
        assert result.returncode == 1 and "host h2" in result.stderr and "Traceback" not in result.stderr
    finally:
        hostlab.start_dockerd(h2)
        hostlab.wait_dockerd(h2)
    prepare_hosts(lab.models(), [node_image_tag()], progress=lambda message: None)
    SwarmRuntime(lab.models()).manager()  # every host in one swarm again


def emu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "emu.cli", *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ},
    )  # fmt: skip
