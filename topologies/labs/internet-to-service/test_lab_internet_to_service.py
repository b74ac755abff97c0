"""The internet: egress with the node's IP, ingress through a NodePort and a LoadBalancer."""

from labcheck import hops, internet, traced


def test_egress_leaves_with_the_node_ip(lab):
    outside = internet(lab)
    worker1 = lab.state().node("worker1").node_ip
    assert lab.exec("client", ["curl", "-s", f"http://{outside}:8080/clientip"]).output.startswith(f"{worker1}:")
    result = traced(lab, "client", f"{outside}:8080")
    postrouting = next(hop for place, hop in hops(result) if place == "node worker1" and hop["hook"] == "postrouting")
    assert postrouting["nat"].startswith("SNAT ") and f"-> {worker1}:" in postrouting["nat"]
    assert any(rule["verdict"] == "MASQUERADE" for rule in postrouting["rules"])


def test_a_nodeport_answers_on_every_node(lab):
    internet(lab)
    for node in lab.state().nodes:
        result = traced(lab, "external/internet", f"{node.node_ip}:30080")
        assert result["probe"]["reply"] == "web", node.name
        assert result["request"][0]["place"] == f"node {node.name}"
        assert "KUBE-NODEPORTS" in [rule["chain"] for _, hop in hops(result) for rule in hop["rules"]]


def test_a_load_balancer_address_is_answered_by_one_node(lab):
    internet(lab)
    address = lab.state().services["default/web-lb"].load_balancer_ip
    result = traced(lab, "external/internet", address)
    assert result["probe"]["reply"] == "web"
    assert result["outcome"]["dnat_to"] == f"{lab.pod('web').ip}:8080"
