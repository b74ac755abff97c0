"""emu trace without Docker: reading the kernel's trace output, resolving SRC and
DEST, and assembling recorded traces (captured from a real run of the default
lab) into hops, golden-tested."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from emu.errors import EmuError
from emu.node.records import ClusterState
from emu.node import tracer
from emu.observe import trace

DATA = Path(__file__).parent / "data" / "see"
EXTERNALS = {"internet": "172.28.0.5"}


def state() -> ClusterState:
    return ClusterState.from_json((DATA / "state.json").read_text())


def recorded(name: str) -> tuple[trace.TracePlan, dict]:
    """A trace captured from a real cluster (its plan and what the nodes reported)."""
    data = json.loads((DATA / f"trace-{name}.json").read_text())
    cluster = state()
    plan = data["plan"]
    source = trace.resolve_source(cluster, plan["source"], EXTERNALS)
    destination = trace.resolve_destination(cluster, plan["destination"], plan["proto"], source)
    return trace.plan_trace(cluster, source, destination, plan["proto"], plan["sport"]), data["collected"]


# ---- reading what the kernel reported ------------------------------------------------------

MONITOR = """\
add table ip emu_trace
trace id c3ddba45 bridge emu_trace prerouting packet: iif "veth6844d090" ether saddr 0a:58:0a:f4:01:02 ether daddr 16:8d:9d:f4:9c:d5 ip saddr 10.244.1.2 ip daddr 10.96.40.206 ip dscp 0x2d ip ecn not-ect ip ttl 64 ip id 17976 ip protocol tcp ip length 60 tcp sport 45680 tcp dport 80 tcp flags == syn tcp window 64240
trace id c3ddba45 bridge emu_trace prerouting unknown rule handle 3 (verdict continue)
trace id c3ddba45 bridge emu_trace prerouting policy accept
trace id 7d5d47ca ip nat POSTROUTING packet: iif "cni0" oif "eth0" ip saddr 10.244.1.2 ip daddr 10.244.2.3 ip dscp 0x2d ip ttl 63 ip id 17976 ip length 60 tcp sport 45680 tcp dport 8080 tcp flags == syn
trace id 7d5d47ca ip nat POSTROUTING rule ip daddr 127.0.0.11 counter jump DOCKER_POSTROUTING (verdict jump DOCKER_POSTROUTING)
trace id 7d5d47ca ip nat DOCKER_POSTROUTING verdict continue
trace id 7d5d47ca ip nat POSTROUTING policy accept
trace id 11111111 ip filter KUBE-SERVICES packet: iif "cni0" ip saddr 10.244.1.2 ip daddr 10.96.1.1 ip dscp 0x2d ip ttl 64 ip id 5 tcp sport 1 tcp dport 2 tcp flags == syn
trace id 11111111 ip filter KUBE-SERVICES rule ip daddr 10.96.1.1 reject (verdict drop)
"""


def test_monitor_lines_become_chain_evaluations():
    blocks = tracer.parse_monitor(MONITOR)
    assert [(b["family"], b["table"], b["chain"]) for b in blocks] == [
        ("bridge", "emu_trace", "prerouting"),
        ("ip", "nat", "POSTROUTING"),
        ("ip", "filter", "KUBE-SERVICES"),
    ]
    bridge, nat, rejected = blocks
    assert bridge["packet"] == {
        "iif": "veth6844d090",
        "saddr": "10.244.1.2",
        "daddr": "10.96.40.206",
        "ttl": 64,
        "id": 17976,
        "dscp": 45,
        "sport": 45680,
        "dport": 80,
        "flags": "syn",
        "proto": "tcp",
    }
    assert bridge["rules"] == []  # emu_trace's own rule only marks the packet
    assert nat["rules"][0]["text"] == "ip daddr 127.0.0.11 counter jump DOCKER_POSTROUTING"
    assert nat["rules"][0]["verdict"] == "jump DOCKER_POSTROUTING" and nat["verdict"] == "accept"
    assert rejected["verdict"] == "drop"


def nflog_message(prefix: str, hook: int, payload: bytes, indev: int) -> bytes:
    def attr(kind, value):
        length = 4 + len(value)
        return struct.pack("=HH", length, kind) + value + b"\0" * ((4 - length % 4) % 4)

    return (
        attr(tracer.ATTR_PACKET_HDR, struct.pack(">HBB", 0x0800, hook, 0))
        + attr(tracer.ATTR_PREFIX, prefix.encode() + b"\0")
        + attr(tracer.ATTR_INDEV, struct.pack(">I", indev))
        + attr(tracer.ATTR_PAYLOAD, payload)
    )


SYN = (
    bytes.fromhex("45b4003c4b4a40004006")
    + b"\0\0"
    + bytes([10, 244, 1, 2, 10, 96, 40, 206])
    + struct.pack(">HH", 45680, 80)
)


def test_iptables_legacy_trace_messages_are_read():
    event = tracer._nflog_event(nflog_message("TRACE: nat:KUBE-SVC-ZJMBFACUQCTMIK2C:rule:2 ", 0, SYN, 2))
    assert event["hook"] == 0 and event["in"] == 2
    assert event["packet"] == {
        "saddr": "10.244.1.2",
        "daddr": "10.96.40.206",
        "ttl": 64,
        "id": 0x4B4A,
        "dscp": 45,
        "proto": "tcp",
        "sport": 45680,
        "dport": 80,
    }
    blocks = tracer.parse_legacy([event, {**event, "prefix": "TRACE: nat:KUBE-SEP-X:rule:2 "}], {2: "cni0"})
    assert len(blocks) == 1 and blocks[0]["priority"] == -100 and blocks[0]["packet"]["iif"] == "cni0"
    assert [r["chain"] for r in blocks[0]["rules"]] == ["KUBE-SVC-ZJMBFACUQCTMIK2C", "KUBE-SEP-X"]


def test_legacy_blocks_fall_between_nft_chains_by_priority():
    packet = {"id": 7, "dscp": 45}
    nft = [
        {"family": "ip", "hook": "prerouting", "priority": p, "packet": packet, "chain": c, "rules": []}
        for p, c in ((-350, "prerouting"), (-50, "prerouting_after_dnat"))
    ] + [{"family": "ip", "hook": "forward", "priority": -350, "packet": packet, "chain": "forward", "rules": []}]
    legacy = [
        {"family": "ip", "hook": "prerouting", "priority": -100, "packet": packet, "chain": "NAT", "rules": []},
        {"family": "ip", "hook": "forward", "priority": 0, "packet": packet, "chain": "FILTER", "rules": []},
    ]
    order = [b["chain"] for b in tracer.merge(nft, legacy)]
    assert order == ["prerouting", "NAT", "prerouting_after_dnat", "forward", "FILTER"]


def test_iptables_save_is_indexed_by_chain_and_rule_number():
    rules = tracer.legacy_rules(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SEP-X - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n"
        "-A KUBE-SEP-X -s 10.244.1.3/32 -j KUBE-MARK-MASQ\n"
        "-A KUBE-SEP-X -p tcp -j DNAT --to-destination 10.244.1.3:8080\nCOMMIT\n"
    )
    assert rules["nat"]["PREROUTING"]["policy"] == "ACCEPT"
    text, verdict = trace.legacy_rule_text(rules, {"table": "nat", "chain": "KUBE-SEP-X", "type": "rule", "num": 2})
    assert verdict == "DNAT to 10.244.1.3:8080" and text.endswith("--to-destination 10.244.1.3:8080")
    assert (
        trace.legacy_rule_text(rules, {"table": "nat", "chain": "PREROUTING", "type": "policy", "num": 2})[1]
        == "accept"
    )


def test_trace_table_marks_the_probe_by_its_dscp_and_replies_by_their_tuple():
    ruleset = tracer.trace_ruleset("udp")
    assert "meta l4proto udp ip dscp 45 meta nftrace set 1" in ruleset
    assert "ip saddr . th sport . ip daddr . th dport @replies meta nftrace set 1" in ruleset
    assert "add @replies { ip daddr . th dport . ip saddr . th sport }" in ruleset
    assert "tcp flags & (syn | rst) != 0" in tracer.trace_ruleset("tcp")


def test_dns_answers_are_read():
    query = tracer.dns_query("kubernetes.default.svc.cluster.local")
    answer = (
        query[:2]
        + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
        + query[12:]
        + bytes.fromhex("c00c000100010000000500040a600001")
    )
    assert tracer.dns_answer(answer) == "NOERROR 10.96.0.1"
    assert tracer.dns_answer(query[:2] + b"\x81\x83" + query[4:]) == "NXDOMAIN"


def test_conntrack_entries_say_what_nat_did():
    [entry] = trace.parse_conntrack(
        "worker",
        "tcp      6 119 TIME_WAIT src=172.28.0.5 dst=172.28.0.3 sport=23805 dport=30080 "
        "src=10.244.2.2 dst=172.28.0.3 sport=8080 dport=61234 [ASSURED] mark=0 use=1",
    )
    assert entry["dnat"] == "10.244.2.2:8080" and entry["snat"] == "172.28.0.3:61234" and entry["state"] == "TIME_WAIT"
    [udp] = trace.parse_conntrack(
        "w",
        "udp      17 29 src=10.244.1.2 dst=10.244.0.2 sport=1 dport=53 src=10.244.0.2 dst=10.244.1.2 sport=53 dport=1 mark=0 use=1",
    )
    assert udp["dnat"] is None and udp["snat"] is None


# ---- resolving SRC and DEST ---------------------------------------------------------------


def test_sources():
    cluster = state()
    assert trace.resolve_source(cluster, "client", EXTERNALS).netns == "client"
    sidecar = trace.resolve_source(cluster, "web", EXTERNALS, "sidecar")
    assert sidecar.label == "container sidecar of pod default/web" and sidecar.container == "emutest-graph-x-worker2"
    assert trace.resolve_source(cluster, "node/worker", EXTERNALS).ip == "172.28.0.3"
    external = trace.resolve_source(cluster, "external/internet", EXTERNALS)
    assert (external.ip, external.container) == ("172.28.0.5", "emutest-graph-x-internet")
    assert trace.resolve_source(cluster, "external", EXTERNALS).ip == "172.28.0.5"


@pytest.mark.parametrize(
    "reference, message",
    [
        ("nobody", "no pod 'nobody'"),
        ("node/nope", "no node 'nope'"),
        ("external/other", "no external container 'other'"),
    ],
)
def test_bad_sources_say_what_exists(reference, message):
    with pytest.raises(EmuError, match=message):
        trace.resolve_source(state(), reference, EXTERNALS)


def test_no_external_container_says_how_to_make_one():
    with pytest.raises(EmuError, match="emu external internet"):
        trace.resolve_source(state(), "external/internet", {})


@pytest.mark.parametrize(
    "text, proto, kind, address, label",
    [
        ("echo", "tcp", "service", "10.96.40.206:80", "service default/echo port http"),
        ("default/echo:80", "tcp", "service", "10.96.40.206:80", "service default/echo port http"),
        (
            "kube-dns.kube-system.svc.cluster.local:53",
            "udp",
            "service",
            "10.96.0.10:53",
            "service kube-system/kube-dns port dns",
        ),
        ("10.96.0.10:53", "tcp", "service", "10.96.0.10:53", "service kube-system/kube-dns port dns-tcp"),
        ("web", "tcp", "pod", "10.244.2.2:8080", "pod default/web"),
        ("web", "udp", "pod", "10.244.2.2:8081", "pod default/web"),
        ("10.244.1.2:80", "tcp", "pod", "10.244.1.2:80", "pod default/client"),
        (
            "172.28.0.3:30080",
            "tcp",
            "service",
            "172.28.0.3:30080",
            "NodePort 30080 of service default/web on node worker",
        ),
        (
            "node/worker2:30080",
            "tcp",
            "service",
            "172.28.0.4:30080",
            "NodePort 30080 of service default/web on node worker2",
        ),
        ("172.28.0.223", "tcp", "service", "172.28.0.223:80", "LoadBalancer 172.28.0.223 of service default/echo-lb"),
        ("172.28.0.5:8080", "tcp", "address", "172.28.0.5:8080", "172.28.0.5 (outside the cluster)"),
        ("localhost:8080", "tcp", "pod", "127.0.0.1:8080", "localhost in pod default/client"),
    ],
)
def test_destinations(text, proto, kind, address, label):
    cluster = state()
    found = trace.resolve_destination(cluster, text, proto, trace.resolve_source(cluster, "client", EXTERNALS))
    assert (found.kind, f"{found.ip}:{found.port}", found.label) == (kind, address, label)


@pytest.mark.parametrize(
    "text, proto, message",
    [
        ("nothing", "tcp", "neither a pod, a service nor an IPv4 address"),
        ("echo:81", "tcp", "no TCP port 81"),
        ("echo", "udp", "no UDP port"),
        ("client", "tcp", "declares no TCP port"),
        ("172.28.0.3", "tcp", "give a port"),
        ("172.28.0.9", "tcp", "give a port for 172.28.0.9"),
        ("echo:99999", "tcp", "from 1 to 65535"),
        ("node/nope:30080", "tcp", "no node 'nope'"),
    ],
)
def test_bad_destinations_are_refused_with_what_to_do(text, proto, message):
    cluster = state()
    with pytest.raises(EmuError, match=message):
        trace.resolve_destination(cluster, text, proto, trace.resolve_source(cluster, "client", EXTERNALS))


def test_localhost_needs_a_pod_source():
    cluster = state()
    with pytest.raises(EmuError, match="from a pod"):
        trace.resolve_destination(
            cluster, "localhost:8080", "tcp", trace.resolve_source(cluster, "node/worker", EXTERNALS)
        )


def test_the_pods_a_service_may_send_to_are_watched():
    plan, _ = recorded("service")
    assert plan.watch == {
        "control-plane": [],
        "worker": ["client", "echo-rmkzqfjv2z-4qhkn", "echo-rmkzqfjv2z-mtplm"],
        "worker2": ["echo-rmkzqfjv2z-zg6cw"],
    }


# ---- assembling recorded traces --------------------------------------------------------------


@pytest.mark.parametrize("name", ["service", "nodeport"])
def test_recorded_traces_match_golden(golden, name):
    plan, collected = recorded(name)
    result = trace.assemble(state(), plan, collected)
    golden(f"graph/trace-{name}.txt", trace.render_text(result))
    json.dumps(result)  # --format json


def test_pod_to_service_hops():
    plan, collected = recorded("service")
    result = trace.assemble(state(), plan, collected)
    places = [p["place"] for p in result["request"]]
    assert places == ["pod default/client", "node worker", "node worker2", "pod default/echo-rmkzqfjv2z-zg6cw"]
    prerouting = result["request"][1]["hops"][0]
    assert prerouting["in_pod"] == "default/client" and prerouting["nat"] == "DNAT 10.96.40.206:80 -> 10.244.2.3:8080"
    dnat = [r for r in prerouting["rules"] if r["verdict"].startswith("DNAT")]
    assert [r["chain"] for r in dnat] == ["KUBE-SEP-" + dnat[0]["chain"][9:]] and dnat[0]["verdict"].endswith(
        "10.244.2.3:8080"
    )
    forward = result["request"][1]["hops"][1]
    assert forward["route"].startswith("10.244.2.3 from 10.244.1.2 via 172.28.0.4 dev eth0")
    assert result["outcome"]["dnat_to"] == "10.244.2.3:8080" and result["outcome"]["snat_to"] is None
    assert result["outcome"]["delivered_to"] == "pod default/echo-rmkzqfjv2z-zg6cw"
    assert [p["place"] for p in result["reply"]][-1] == "pod default/client"


def test_nodeport_hops_show_both_nats():
    plan, collected = recorded("nodeport")
    result = trace.assemble(state(), plan, collected)
    entry = result["request"][0]
    assert entry["place"] == "node worker" and entry["hops"][0]["in"] == "eth0"
    chains = [r["chain"] for r in entry["hops"][0]["rules"]]
    assert "KUBE-NODEPORTS" in chains and any(c.startswith("KUBE-EXT-") for c in chains)
    postrouting = entry["hops"][-1]
    assert postrouting["nat"].startswith("SNAT 172.28.0.5:") and "MASQUERADE" in postrouting["rules"][-1]["text"]
    assert result["outcome"]["snat_to"].startswith("172.28.0.3:")


def test_a_second_trace_on_a_node_is_refused_while_one_runs(tmp_path):
    busy = tmp_path / "trace"
    busy.mkdir()
    assert "another emu trace is running" in tracer.start(str(busy), 20000, "tcp", [])["error"]


@pytest.mark.parametrize(
    "text, verdict, named",
    [
        ("meta l4proto tcp dnat ip to 10.244.1.3:8080", "accept", "DNAT to 10.244.1.3:8080"),
        ("ip saddr 10.244.1.2 masquerade fully-random", "accept", "MASQUERADE"),
        ("ip daddr 10.96.1.1 tcp dport 80 reject", "drop", "REJECT"),
        ("jump services", "jump services", "jump services"),
    ],
)
def test_nftables_rules_are_named_by_what_they_did(text, verdict, named):
    assert trace.nft_verdict(text, verdict) == named
