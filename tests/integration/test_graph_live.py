"""emu graph of a real cluster: what it draws is what the nodes hold, and a part
deleted by hand in a node is drawn as missing."""

from __future__ import annotations

import subprocess
import sys
import time
import xml.dom.minidom

import pytest

from emu.node.agent import PID_FILE
from emu.observe import graph
from tests import labs

LAB = labs.load("graph")


@pytest.fixture(scope="module")
def cluster(make_module_cluster):
    return make_module_cluster(LAB, "graph")


def emu(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emu.cli", *argv], capture_output=True, text=True, timeout=300)


def test_the_graph_is_what_the_nodes_hold(cluster):
    state = cluster.state()
    drawn = graph.observe(cluster)
    w1 = next(n for n in drawn.nodes if n.name == "w1")
    assert w1.eth0.text == f"eth0 {state.node('w1').node_ip}" and w1.bridge.status == "ok"
    assert [r.text for r in w1.routes] == [f"{state.node('cp').pod_cidr} via {state.node('cp').node_ip}"]
    web = next(p for p in w1.pods if p.key == "default/web")
    assert (web.veth.text, web.eth0.text) == (
        state.pods["default/web"].host_veth,
        f"eth0 {state.pods['default/web'].ip}",
    )
    assert [c.text for c in web.containers] == ["server", "sidecar"]
    dns = next(p for n in drawn.nodes for p in n.pods if p.dns)
    assert dns.key.startswith("kube-system/coredns-")
    service = next(s for s in drawn.services if s.key == "default/web")
    assert service.endpoints == [("default/web", f"{state.pods['default/web'].ip}:8080")]
    lb = state.services["default/web"].load_balancer_ip
    holder = next(n for n in drawn.nodes if lb in n.load_balancers)  # found on a node's eth0, not computed
    assert service.owner == holder.name and service.load_balancer_ip == lb


def test_every_format_renders_from_the_command(cluster):
    for fmt in graph.FORMATS:
        run = emu("graph", "--name", cluster.name, "--format", fmt)
        assert run.returncode == 0, run.stderr
        if fmt in ("svg", "drawio"):
            xml.dom.minidom.parseString(run.stdout)
        assert "default/web" in run.stdout and "cni0" in run.stdout


def test_a_veth_deleted_by_hand_is_drawn_missing(cluster):
    state = cluster.state()
    client = state.pods["default/client"]
    node = state.node("w1").container
    # The agent rewires a broken pod within seconds: held still while the graph looks.
    agent = f"kill -{{}} $(cat {PID_FILE})"
    cluster.runtime.exec(node, ["sh", "-c", agent.format("STOP")])
    try:
        cluster.runtime.exec(node, ["ip", "link", "del", client.host_veth])
        drawn = graph.observe(cluster)
        run = emu("graph", "--name", cluster.name, "--format", "mermaid")
    finally:  # the agent goes on, and wires the pod again: the module's cluster as it was
        continued = cluster.runtime.exec(node, ["sh", "-c", agent.format("CONT")])
    pod = next(p for n in drawn.nodes for p in n.pods if p.key == "default/client")
    assert pod.veth.status == "missing" and pod.eth0.status == "missing"  # the pair goes together
    assert f"veth {client.host_veth} (missing)" in run.stdout and "class " in run.stdout
    assert continued.ok, continued.output
    web = f"http://{state.services['default/web'].cluster_ip}/hostname"
    deadline = time.monotonic() + 30
    while cluster.exec("client", ["curl", "-sS", "--max-time", "1", web]).output.strip() != "web":
        assert time.monotonic() < deadline, "the agent did not wire the client pod again within 30s"
        time.sleep(0.5)


def test_a_route_deleted_by_hand_is_drawn_missing(cluster):
    state = cluster.state()
    cp = state.node("cp")
    w1 = state.node("w1")
    assert cluster.runtime.exec(cp.container, ["ip", "route", "del", w1.pod_cidr]).ok
    try:
        drawn = graph.observe(cluster)
    finally:  # the module's cluster as it was, for the tests after this one
        restored = cluster.runtime.exec(cp.container, ["ip", "route", "replace", w1.pod_cidr, "via", w1.node_ip])
    assert [r.status for r in next(n for n in drawn.nodes if n.name == "cp").routes] == ["missing"]
    assert restored.ok, restored.output
    assert [r.status for r in next(n for n in graph.observe(cluster).nodes if n.name == "cp").routes] != ["missing"]
