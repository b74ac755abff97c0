"""Pod to pod: every pod has its own IP and reaches every other without NAT."""

from labcheck import hops, traced


def test_servers_see_the_client_pod_ip(lab):
    client = lab.pod("client").ip
    for server in ("neighbour", "faraway"):
        seen = lab.exec("client", ["curl", "-s", f"http://{lab.pod(server).ip}:8080/clientip"]).output
        assert seen.startswith(f"{client}:"), (server, seen)


def test_on_one_node_the_bridge_forwards_between_veths(lab):
    result = traced(lab, "client", "neighbour")
    assert [p["place"] for p in result["request"]] == ["pod default/client", "node node2", "pod default/neighbour"]
    forward = next(hop for place, hop in hops(result) if place == "node node2" and hop["hook"] == "forward")
    assert forward["bridged"] and forward["route"] is None
    assert (forward["in_pod"], forward["out_pod"]) == ("default/client", "default/neighbour")


def test_across_nodes_the_packet_is_routed_via_the_other_node(lab):
    node1 = lab.state().node("node1")
    result = traced(lab, "client", "faraway")
    assert [p["place"] for p in result["request"]] == [
        "pod default/client",
        "node node2",
        "node node1",
        "pod default/faraway",
    ]
    forward = next(hop for place, hop in hops(result) if place == "node node2" and hop["hook"] == "forward")
    assert f"via {node1.node_ip} dev eth0" in forward["route"]
    assert all(hop["nat"] is None for _, hop in hops(result))


def test_a_node_reaches_its_pods(lab):
    ip = lab.pod("neighbour").ip
    assert lab.node_exec("node2", ["curl", "-s", f"http://{ip}:8080/hostname"]).output == "neighbour"
