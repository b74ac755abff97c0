"""emu trace on a real cluster: each flow of the article traced with a real
packet, and the hops the kernel reported checked (which chain DNATed, to which
endpoint, SNAT or not, the rule that rejected)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from emu.observe import trace
from tests import labs

LAB = labs.load("trace")


@pytest.fixture(scope="module")
def cluster(make_cluster):
    made = make_cluster(LAB, "trace")
    made.external_ip = made.run_external("internet")
    return made


@pytest.fixture(scope="module")
def state(cluster):
    return cluster.state()


def traced(cluster, state, source, destination, proto="tcp", container=None) -> dict:
    plan = trace.plan_for(cluster, state, source, destination, proto, container)
    return trace.assemble(state, plan, trace.run_trace(cluster, state, plan))


def hops(result: dict, direction: str = "request") -> list[tuple[str, dict]]:
    return [(place["place"], hop) for place in result[direction] for hop in place["hops"]]


def rules(result: dict) -> list[dict]:
    return [rule for _, hop in hops(result) for rule in hop["rules"]]


def test_container_to_container_over_localhost(cluster, state):
    result = traced(cluster, state, "web", "localhost:8080", container="sidecar")
    assert result["probe"]["result"] == "connected" and result["probe"]["reply"] == "web"
    assert [p["place"] for p in result["request"]] == ["pod default/web"]  # never left the pod's namespace
    assert [(h["hook"], h["in"] or h["out"]) for _, h in hops(result)] == [
        ("output", "lo"),
        ("postrouting", "lo"),
        ("prerouting", "lo"),
        ("input", "lo"),
    ]


def test_pod_to_pod_on_one_node_crosses_the_bridge(cluster, state):
    neighbour = state.pods["default/neighbour"]
    result = traced(cluster, state, "client", "neighbour")
    assert result["probe"]["reply"] == "neighbour"
    assert [p["place"] for p in result["request"]] == ["pod default/client", "node worker", "pod default/neighbour"]
    forward = next(h for place, h in hops(result) if place == "node worker" and h["hook"] == "forward")
    assert forward["bridged"] and (forward["in_pod"], forward["out_pod"]) == ("default/client", "default/neighbour")
    assert forward["out_port"] == neighbour.host_veth and forward["route"] is None
    assert all(h["nat"] is None for _, h in hops(result))


def test_pod_to_pod_across_nodes_is_routed_without_nat(cluster, state):
    worker2 = state.node("worker2")
    result = traced(cluster, state, "client", "web")
    assert result["probe"]["reply"] == "web"
    assert [p["place"] for p in result["request"]] == [
        "pod default/client",
        "node worker",
        "node worker2",
        "pod default/web",
    ]
    forward = next(h for place, h in hops(result) if place == "node worker" and h["hook"] == "forward")
    assert forward["out"] == "eth0" and f"via {worker2.node_ip} dev eth0" in forward["route"]
    arrived = next(h for place, h in hops(result) if place == "pod default/web" and h["hook"] == "input")
    assert arrived["before"].startswith(f"{state.pods['default/client'].ip}:")  # the client's own IP: no NAT
    assert all(h["nat"] is None for _, h in hops(result))
    assert result["outcome"]["delivered_to"] == "pod default/web"


def test_pod_to_service_is_dnatted_by_a_kube_sep_chain(cluster, state):
    result = traced(cluster, state, "client", "echo")
    endpoint = f"{state.pods['default/neighbour'].ip}:8080"
    assert result["probe"]["reply"] == "neighbour"
    dnat = [r for r in rules(result) if r["verdict"].startswith("DNAT")]
    assert len(dnat) == 1 and dnat[0]["chain"].startswith("KUBE-SEP-") and dnat[0]["verdict"] == f"DNAT to {endpoint}"
    chains = [r["chain"] for r in rules(result) if r["table"] == "nat"]
    assert chains.index("KUBE-SERVICES") < chains.index(next(c for c in chains if c.startswith("KUBE-SVC-")))
    assert result["outcome"]["dnat_to"] == endpoint  # conntrack agrees
    assert result["reply"][-1]["place"] == "pod default/client"
    restored = [h["nat"] for _, h in hops(result, "reply") if h["nat"]]
    assert restored == [f"reply source restored {endpoint} -> {state.services['default/echo'].cluster_ip}:80"]


def test_dns_over_udp_to_the_kube_dns_service(cluster, state):
    result = traced(cluster, state, "client", "kube-system/kube-dns:53", proto="udp")
    assert result["probe"]["result"] == "answered" and result["probe"]["reply"] == "NOERROR 10.96.0.1"
    coredns = next(p for p in state.pods.values() if p.namespace == "kube-system")
    assert result["outcome"]["dnat_to"] == f"{coredns.ip}:53"
    assert result["outcome"]["delivered_to"] == f"pod {coredns.key}"


def test_egress_leaves_with_the_node_ip(cluster, state):
    worker = state.node("worker")
    result = traced(cluster, state, "client", f"{cluster.external_ip}:8080")
    assert result["probe"]["reply"] == f"{cluster.name}-internet"
    postrouting = next(h for place, h in hops(result) if place == "node worker" and h["hook"] == "postrouting")
    assert (
        postrouting["nat"].startswith(f"SNAT {state.pods['default/client'].ip}:")
        and f"-> {worker.node_ip}:" in postrouting["nat"]
    )
    masquerade = [r for r in postrouting["rules"] if r["verdict"] == "MASQUERADE"]
    assert [r["chain"] for r in masquerade] == ["EMU-MASQ-AGENT"]
    assert result["outcome"]["snat_to"].startswith(f"{worker.node_ip}:")


def test_ingress_through_a_nodeport(cluster, state):
    worker = state.node("worker")
    result = traced(cluster, state, "external/internet", f"{worker.node_ip}:30080")
    assert result["probe"]["reply"] == "web"
    assert result["request"][0]["place"] == "node worker" and result["request"][0]["hops"][0]["in"] == "eth0"
    chains = [r["chain"] for r in rules(result)]
    assert "KUBE-NODEPORTS" in chains and "KUBE-MARK-MASQ" in chains and any(c.startswith("KUBE-EXT-") for c in chains)
    assert result["outcome"]["dnat_to"] == f"{state.pods['default/web'].ip}:8080"
    assert result["outcome"]["snat_to"].startswith(f"{worker.node_ip}:")  # masqueraded: the reply comes back this way
    assert [p["place"] for p in result["request"]][-1] == "pod default/web"


def test_ingress_through_a_load_balancer_address(cluster, state):
    address = state.services["default/web-lb"].load_balancer_ip
    result = traced(cluster, state, "external/internet", address)
    assert result["probe"]["reply"] == "web"
    first = result["request"][0]
    assert first["kind"] == "node" and first["hops"][0]["before"].endswith(f"-> {address}:80")
    lb_rule = next(r for r in rules(result) if r["chain"] == "KUBE-SERVICES" and r["table"] == "nat")
    assert "loadbalancer IP" in lb_rule["text"] and address in lb_rule["text"]
    assert result["outcome"]["dnat_to"] == f"{state.pods['default/web'].ip}:8080"


def test_a_service_without_endpoints_rejects_and_the_rule_is_named(cluster, state):
    result = traced(cluster, state, "client", "nobody")
    assert result["probe"]["result"] == "refused"
    stopped = result["outcome"]["stopped"]
    assert stopped["place"] == "node worker" and stopped["verdict"] == "reject"
    assert stopped["rule"]["table"] == "filter" and stopped["rule"]["chain"] == "KUBE-SERVICES"
    assert "has no endpoints" in stopped["rule"]["text"] and "-j REJECT" in stopped["rule"]["text"]
    assert result["outcome"]["delivered_to"] is None


def test_the_command_prints_the_hops_and_leaves_nothing_behind(cluster, state):
    run = subprocess.run(
        [sys.executable, "-m", "emu.cli", "trace", "--name", cluster.name, "client", "echo"], capture_output=True, text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "DNAT 10.96." in run.stdout and "KUBE-SEP-" in run.stdout and "first reply (reply):" in run.stdout
    for node in state.nodes:
        left = cluster.runtime.exec(
            node.container,
            [
                "sh",
                "-c",
                "nft list tables; ls /run/emu/trace 2>&1; "
                "cat /proc/sys/net/netfilter/nf_log/2; ps -eo args | grep '^nft monitor' || true",
            ],
        )
        assert "emu_trace" not in left.output and "nfnetlink_log" not in left.output, left.output
        assert "No such file" in left.output
        assert "nft monitor" not in left.output, left.output  # (what the grep above finds: a monitor left running)


def test_bad_input_is_refused_before_anything_runs(cluster):
    run = subprocess.run(
        [sys.executable, "-m", "emu.cli", "trace", "--name", cluster.name, "client", "nothing-here"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and "neither a pod, a service nor an IPv4 address" in run.stderr
    assert "Traceback" not in run.stderr
