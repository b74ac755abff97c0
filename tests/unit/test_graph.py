"""emu graph: the picture of a fixed cluster, in every format, byte for byte;
and what is missing in the nodes drawn as missing."""

from __future__ import annotations

import json
import re
import xml.dom.minidom
from pathlib import Path

import pytest

from emu.node import reconcile
from emu.errors import EmuError
from emu.node.records import ClusterState
from emu.observe import graph

DATA = Path(__file__).parent / "data" / "see"


def state() -> ClusterState:
    """The default lab as a real run stored it (tests/unit/data/see/state.json)."""
    return ClusterState.from_json((DATA / "state.json").read_text())


def endpoints(cluster: ClusterState) -> dict:
    """Every selected pod ready, as the agents would report it."""
    found: dict = {}
    for key, service in cluster.services.items():
        for port in service.ports:
            addresses = []
            if key == "default/kubernetes":
                addresses = [f"{n.node_ip}:{port.target_port}" for n in cluster.nodes if n.role == "control-plane"]
            for pod in cluster.pods.values():
                target = pod.resolve_port(port.target_port)
                if service.selects(pod) and target is not None:
                    addresses.append(f"{pod.ip}:{target}")
            found.setdefault(key, {})[port.name] = sorted(addresses)
    return found


def facts(cluster: ClusterState) -> dict[str, graph.NodeFacts]:
    """What healthy nodes of this state hold (as OBSERVE would report it)."""
    result = {}
    lb = {s.load_balancer_ip for s in cluster.services.values() if s.load_balancer_ip}
    for index, node in enumerate(cluster.nodes):
        seen = reconcile.Observed(bridge=True, agent=True)
        seen.alive = {f"{p.netns}/{c['name']}" for p in cluster.pods_on(node.name) for c in p.containers}
        eth0 = [f"{node.node_ip}/24"] + ([f"{a}/32" for a in sorted(lb)] if index == 2 else [])
        links = {
            "eth0": {"up": True, "master": None, "addresses": eth0},
            "cni0": {"up": True, "master": None, "addresses": [f"{node.gateway}/24"]},
        }
        for pod in cluster.pods_on(node.name):
            links[pod.host_veth] = {"up": True, "master": "cni0", "addresses": []}
        routes = [{"dst": o.pod_cidr, "gateway": o.node_ip, "dev": "eth0"} for o in cluster.nodes if o is not node]
        pod_links = {
            p.netns: {"eth0": {"up": True, "master": None, "addresses": [f"{p.ip}/24"]}}
            for p in cluster.pods_on(node.name)
        }
        result[node.name] = graph.NodeFacts(seen, links, routes, pod_links, {})
    return result


EXTERNALS = [("emutest-graph-x-internet", "172.28.0.5")]


@pytest.mark.parametrize("fmt, suffix", [("mermaid", "mmd"), ("dot", "dot"), ("svg", "svg"), ("drawio", "drawio")])
def test_healthy_cluster_matches_golden(golden, fmt, suffix):
    cluster = state()
    drawn = graph.render(graph.build(cluster, endpoints(cluster), facts(cluster), EXTERNALS), fmt)
    golden(f"graph/default.{suffix}", drawn)
    # Deterministic: the same cluster, the same bytes.
    assert drawn == graph.render(graph.build(cluster, endpoints(cluster), facts(cluster), EXTERNALS), fmt)


def test_missing_interfaces_and_routes_are_drawn_missing(golden):
    cluster = state()
    found = facts(cluster)
    client = cluster.pods["default/client"]
    del found["worker"].links[client.host_veth]  # its veth deleted by hand
    found["worker"].routes = [r for r in found["worker"].routes if r["dst"] != "10.244.2.0/24"]
    found["worker2"].links["cni0"]["up"] = False
    del found["worker2"].pod_links["web"]  # the pod's namespace is gone
    drawn = graph.build(cluster, endpoints(cluster), found, EXTERNALS)
    worker = next(n for n in drawn.nodes if n.name == "worker")
    assert next(p for p in worker.pods if p.key == "default/client").veth.status == "missing"
    assert [r.status for r in worker.routes] == ["ok", "missing"]
    worker2 = next(n for n in drawn.nodes if n.name == "worker2")
    assert worker2.bridge.status == "down"
    assert next(p for p in worker2.pods if p.key == "default/web").missing
    golden("graph/missing.mmd", graph.render(drawn, "mermaid"))
    text = graph.render(drawn, "svg")
    assert "veth veth6844d090 (missing)" in text and 'stroke="#d00000"' in text


def test_graph_shows_what_the_article_draws():
    cluster = state()
    drawn = graph.build(cluster, endpoints(cluster), facts(cluster), EXTERNALS)
    text = graph.render(drawn, "mermaid")
    for expected in (
        "pod CIDR 10.244.1.0/24",
        "eth0 172.28.0.3",
        "bridge cni0 10.244.1.1/24",
        "veth veth6844d090",
        "eth0 10.244.1.2",
        "container sidecar",
        "route 10.244.2.0/24 via 172.28.0.4",
        "ClusterIP 10.96.40.206",
        "DNS pod kube-system/coredns",
        "LB 172.28.0.223",
        "external emutest-graph-x-internet 172.28.0.5",
    ):
        assert expected in text, expected
    lb = next(s for s in drawn.services if s.key == "default/echo-lb")
    assert lb.owner == "worker2"  # the node whose eth0 holds the address
    echo = next(s for s in drawn.services if s.key == "default/echo")
    assert sorted(pod for pod, _ in echo.endpoints) == sorted(
        p.key for p in cluster.pods.values() if p.labels.get("app") == "echo"
    )


def test_a_load_balancer_address_no_node_holds_is_said():
    cluster = state()
    found = facts(cluster)
    found["worker2"].links["eth0"]["addresses"] = ["172.28.0.4/24"]
    lb = next(s for s in graph.build(cluster, endpoints(cluster), found, []).services if s.key == "default/echo-lb")
    assert lb.owner is None and lb.load_balancer_ip == "172.28.0.223 (held by no node)"


def test_svg_and_drawio_are_well_formed_xml():
    cluster = state()
    drawn = graph.build(cluster, endpoints(cluster), facts(cluster), EXTERNALS)
    svg = xml.dom.minidom.parseString(graph.render(drawn, "svg"))
    assert svg.documentElement.tagName == "svg"
    ids = {g.getAttribute("id") for g in svg.getElementsByTagName("g")}
    assert {"node_worker", "cni0_worker", "pod_default_client", "svc_default_echo"} <= ids
    drawio = xml.dom.minidom.parseString(graph.render(drawn, "drawio"))
    cells = drawio.getElementsByTagName("mxCell")
    vertex_ids = {c.getAttribute("id") for c in cells if c.getAttribute("vertex")}
    for edge in (c for c in cells if c.getAttribute("edge")):
        assert edge.getAttribute("source") in vertex_ids and edge.getAttribute("target") in vertex_ids


def test_boxes_inside_a_node_stay_inside_it():
    cluster = state()
    boxes, _, width, height = graph.layout(graph.build(cluster, endpoints(cluster), facts(cluster), EXTERNALS))
    by_id = {box.id: box for box in boxes}
    for box in boxes:
        assert 0 <= box.x and box.x + box.w <= width and 0 <= box.y and box.y + box.h <= height, box.id
        if box.parent:
            outer = by_id[box.parent]
            assert outer.x <= box.x and box.x + box.w <= outer.x + outer.w, box.id
            assert outer.y <= box.y and box.y + box.h <= outer.y + outer.h, box.id


def test_observe_output_is_parsed():
    found = graph.NodeFacts.parse((DATA / "observe-worker2.txt").read_text())
    assert found.seen.bridge and "web" in found.seen.netns
    assert found.links["cni0"]["addresses"] == ["10.244.2.1/24"]
    assert found.links["veth82b3ade9"]["master"] == "cni0"
    assert found.pod_links["web"]["eth0"]["addresses"] == ["10.244.2.2/24"]
    assert {"dst": "10.244.0.0/24", "gateway": "172.28.0.2"}.items() <= found.routes[1].items()
    assert "web/sidecar" in found.seen.alive


def test_damaged_observe_output_draws_everything_missing():
    found = graph.NodeFacts.parse("garbage\n@@addr\n{not json\n@@route\n")
    assert found.links == {} and found.routes == []
    cluster = state()
    drawn = graph.build(cluster, endpoints(cluster), {"worker": found}, [])
    worker = next(n for n in drawn.nodes if n.name == "worker")
    assert worker.bridge.status == "missing" and all(r.status == "missing" for r in worker.routes)


def test_unknown_format_is_refused():
    with pytest.raises(EmuError, match="mermaid, dot, svg, drawio"):
        graph.render(graph.Graph("x", "n", "s", [], [], []), "png")


def test_identifiers_are_safe_in_every_format():
    assert re.fullmatch(r"\w+", graph._id("pod", "kube-system/coredns-abc.x"))
    assert json.dumps(graph._m('a "quoted" name')).count("#quot;") == 2


def test_on_several_hosts_the_route_to_a_load_balancer_address_names_its_node():
    cluster = state()
    found = facts(cluster)
    found["worker2"].links["eth0"]["addresses"] = ["172.28.0.4/24"]
    found["worker"].routes.append({"dst": "172.28.0.223", "gateway": "172.28.0.4", "dev": "eth0"})
    lb = next(s for s in graph.build(cluster, endpoints(cluster), found, []).services if s.key == "default/echo-lb")
    assert (lb.owner, lb.load_balancer_ip) == ("worker2", "172.28.0.223")
