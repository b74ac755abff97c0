"""emu capture's pure parts: TARGETs resolved against a recorded state, the
commands run in the nodes, the time-ordered merge, the pcapng blocks, decoding."""

from __future__ import annotations

import io
import socket
import struct
from pathlib import Path

import dpkt
import pytest

from emu.errors import EmuError
from emu.node.records import ClusterState
from emu.observe import capture
from emu.observe.capture import Merger, PcapngWriter, Target

STATE = Path(__file__).parent / "data" / "see" / "state.json"
EXTERNALS = {"internet": "emutest-graph-x-internet"}


@pytest.fixture(scope="module")
def state() -> ClusterState:
    return ClusterState.from_json(STATE.read_text())


def names(state, *texts, interface=None):
    return [t.name for t in capture.resolve_targets(state, list(texts), EXTERNALS, interface)]


# ---- targets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("client", ("", "client", None)),
        ("client:lo", ("", "client", "lo")),
        ("kube-system/coredns-x", ("", "kube-system/coredns-x", None)),
        ("pod/client", ("pod", "client", None)),
        ("node/worker:cni0", ("node", "worker", "cni0")),
        ("node/worker", ("node", "worker", None)),
        ("external/internet", ("external", "internet", None)),
        ("svc/echo", ("svc", "echo", None)),
        ("service/kube-system/kube-dns", ("svc", "kube-system/kube-dns", None)),
    ],
)
def test_split_target(text, expected):
    assert capture.split_target(text) == expected


@pytest.mark.parametrize("text", ["", "node/", "node/worker:", "svc/echo:eth0"])
def test_split_target_refuses(text):
    with pytest.raises(EmuError):
        capture.split_target(text)


def test_a_pod_is_its_eth0_inside_its_namespace_run_from_the_node(state):
    (target,) = capture.resolve_targets(state, ["client"], EXTERNALS)
    assert target == Target(
        "client/eth0",
        "emutest-graph-x-worker",
        "eth0",
        "client",
        "pod default/client on node worker, eth0",
        "default/client",
    )
    assert capture.tcpdump_argv(target, "tcp") == [
        "ip", "netns", "exec", "client", "tcpdump", "--immediate-mode", "-U", "-B", "8192", "-w", "-", "-s", "0", "-i", "eth0", "tcp",
    ]  # fmt: skip
    assert capture.check_argv(target, "tcp")[:5] == ["ip", "netns", "exec", "client", "sh"]


def test_pods_outside_default_keep_their_namespace_in_the_name(state):
    (target,) = capture.resolve_targets(state, ["kube-system/coredns-fl657nmg76-txzwc"], EXTERNALS)
    assert target.name == "kube-system/coredns-fl657nmg76-txzwc/eth0"
    assert target.netns == "kube-system.coredns-fl657nmg76-txzwc"


def test_node_interfaces_from_the_target_or_dash_i_default_eth0(state):
    assert names(state, "node/worker:cni0", "node/worker2") == ["node/worker:cni0", "node/worker2:eth0"]
    assert names(state, "node/worker", interface="cni0") == ["node/worker:cni0"]
    (veth,) = capture.resolve_targets(state, ["node/worker:veth6844d090"], EXTERNALS)
    assert veth.pod == "default/client" and "host side of pod default/client" in veth.description
    (node,) = capture.resolve_targets(state, ["node/worker:eth0"], EXTERNALS)
    assert node.netns is None and capture.tcpdump_argv(node, "", 5)[:1] == ["tcpdump"]
    assert capture.tcpdump_argv(node, "", 5)[-2:] == ["-c", "5"]


def test_a_service_is_every_endpoint_pods_host_side_veth(state):
    targets = capture.resolve_targets(state, ["svc/echo"], EXTERNALS)
    assert [(t.name, t.pod, t.netns) for t in targets] == [
        ("node/worker:veth5e07dcab", "default/echo-rmkzqfjv2z-4qhkn", None),
        ("node/worker:veth24930666", "default/echo-rmkzqfjv2z-mtplm", None),
        ("node/worker2:vethe1f81e43", "default/echo-rmkzqfjv2z-zg6cw", None),
    ]
    assert names(state, "echo") == [t.name for t in targets]  # a bare name that is no pod: the service
    assert names(state, "web") == ["web/eth0"]  # a pod and a service: the pod
    assert names(state, "svc/web") == ["node/worker2:veth82b3ade9"]


def test_the_same_interface_named_twice_is_captured_once(state):
    assert names(state, "svc/web", "node/worker2:veth82b3ade9", "web", "pod/web") == [
        "node/worker2:veth82b3ade9",
        "web/eth0",
    ]


def test_externals(state):
    assert names(state, "external/internet", "external/internet:lo") == [
        "external/internet:eth0",
        "external/internet:lo",
    ]
    (target,) = capture.resolve_targets(state, ["external/internet"], EXTERNALS)
    assert target.container == "emutest-graph-x-internet"


@pytest.mark.parametrize(
    "text, words",
    [
        ("nosuch", ["no pod or service 'nosuch'", "default/client"]),
        ("pod/echo", ["no pod 'echo'"]),
        ("node/worker9:eth0", ["no node 'worker9'", "control-plane, worker, worker2"]),
        ("external/nope", ["no external container 'nope'", "internet"]),
        ("svc/nope", ["no service 'nope'", "default/echo"]),
        ("svc/kubernetes", ["selects no pod"]),
    ],
)
def test_unknown_targets_are_named(state, text, words):
    with pytest.raises(EmuError) as error:
        capture.resolve_targets(state, [text], EXTERNALS)
    assert f"TARGET '{text}'" in str(error.value)
    for word in words:
        assert word in str(error.value)


def test_unwritable_paths_are_refused(tmp_path):
    capture.check_writable(str(tmp_path / "ok.pcapng"))
    capture.check_writable("-")
    with pytest.raises(EmuError, match="does not exist"):
        capture.check_writable(str(tmp_path / "missing" / "x.pcapng"))
    with pytest.raises(EmuError, match="is a directory"):
        capture.check_writable(str(tmp_path))


def test_a_bad_count_is_refused_before_anything_runs():
    with pytest.raises(EmuError, match="-c 0"):
        capture.Capture(runtime=None, targets=[Target("a/eth0", "c", "eth0")], count=0)


# ---- merging in time order --------------------------------------------------------------


def test_the_earliest_packet_waits_for_a_stream_that_may_still_send_an_earlier_one():
    merger = Merger(2, hold=0.25)
    merger.add(0, 100, b"a1", received=10.0)
    assert merger.ready(10.1) == []  # stream 1 is quiet, not ended: it may still send something before 100
    merger.add(1, 90, b"b1", received=10.1)
    assert merger.ready(10.1) == [(1, 90, b"b1", None)]  # b1 first; a1 waits again (stream 1 is empty)
    assert merger.ready(10.26) == [(0, 100, b"a1", None)]  # held long enough


def test_streams_interleave_by_timestamp_and_drain_in_order():
    merger = Merger(3, hold=1.0)
    for stream, stamps in enumerate([[1, 4, 7], [2, 5, 8], [3, 6, 9]]):
        for stamp in stamps:
            merger.add(stream, stamp, f"{stream}:{stamp}".encode(), received=0.0)
    out = merger.ready(0.0)
    assert [t for _, t, _, _ in out] == [1, 2, 3, 4, 5, 6, 7]  # 8 waits: stream 0 has nothing pending
    merger.end(0)
    assert [t for _, t, _, _ in merger.ready(0.0)] == [8]
    merger.end(1)
    merger.end(2)
    assert [(s, t) for s, t, _, _ in merger.ready(0.0)] == [(2, 9)]
    assert merger.drain() == []


def test_an_ended_stream_does_not_hold_the_others():
    merger = Merger(2, hold=100)
    merger.end(1)
    merger.add(0, 5, b"x", received=0.0)
    assert merger.ready(0.0) == [(0, 5, b"x", None)]


# ---- pcapng blocks ------------------------------------------------------------------------


def blocks(data: bytes) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    while offset < len(data):
        kind, length = struct.unpack_from("<II", data, offset)
        assert length % 4 == 0 and struct.unpack_from("<I", data, offset + length - 4)[0] == length
        out.append((kind, data[offset : offset + length]))
        offset += length
    return out


def options(body: bytes) -> dict[int, bytes]:
    found, offset = {}, 0
    while offset + 4 <= len(body):
        code, length = struct.unpack_from("<HH", body, offset)
        if code == 0:
            break
        found[code] = body[offset + 4 : offset + 4 + length]
        offset += 4 + (length + 3) // 4 * 4
    return found


def test_pcapng_layout_one_interface_block_per_target_then_packets_with_their_interface():
    out = io.BytesIO()
    writer = PcapngWriter(out, [("client/eth0", 1, "pod default/client"), ("node/worker:cni0", 1, "")])
    writer.write(1, 1_700_000_000_000_001, b"\x01" * 61)
    writer.write(0, 1_700_000_000_000_002, b"\x02" * 60, original_length=1500)
    data = out.getvalue()
    layout = blocks(data)
    assert [kind for kind, _ in layout] == [0x0A0D0D0A, 1, 1, 6, 6]
    assert struct.unpack_from("<I", layout[0][1], 8)[0] == 0x1A2B3C4D  # byte-order magic
    first, second = layout[1][1], layout[2][1]
    assert struct.unpack_from("<HH", first, 8) == (1, 0)  # linktype Ethernet
    assert options(first[16:-4]) == {2: b"client/eth0", 3: b"pod default/client"}
    assert options(second[16:-4]) == {2: b"node/worker:cni0"}
    iface, high, low, caplen, length = struct.unpack_from("<IIIII", layout[3][1], 8)
    assert (iface, (high << 32) | low, caplen, length) == (1, 1_700_000_000_000_001, 61, 61)
    assert layout[3][1][28 : 28 + 61] == b"\x01" * 61
    iface, _, _, caplen, length = struct.unpack_from("<IIIII", layout[4][1], 8)
    assert (iface, caplen, length) == (0, 60, 1500)
    # dpkt's own reader agrees (it reads the packets, not which interface they came on)
    assert [(round(ts * 1e6), len(p)) for ts, p in dpkt.pcapng.Reader(io.BytesIO(data))] == [
        (1_700_000_000_000_001, 61),
        (1_700_000_000_000_002, 60),
    ]
    interfaces, packets = capture.read_pcapng(data)
    assert [i["name"] for i in interfaces] == ["client/eth0", "node/worker:cni0"]
    assert [(i, t) for i, t, _ in packets] == [(1, 1_700_000_000_000_001), (0, 1_700_000_000_000_002)]


# ---- decoding ------------------------------------------------------------------------------


def frame(inner, proto) -> bytes:
    ip = dpkt.ip.IP(src=socket.inet_aton("10.244.1.2"), dst=socket.inet_aton("10.96.0.10"), p=proto, data=inner)
    ip.len = len(bytes(ip))
    return bytes(dpkt.ethernet.Ethernet(src=b"\x0a\x58" + b"\0" * 4, dst=b"\xff" * 6, type=0x0800, data=ip))


def test_decode_tcp_udp_arp():
    tcp = capture.decode(
        "client/eth0", 1.5, 1, frame(dpkt.tcp.TCP(sport=40000, dport=80, flags=0x12), 6), "default/client"
    )
    assert (tcp.proto, tcp.src, tcp.dst, tcp.sport, tcp.dport, tcp.flags, tcp.pod) == (
        "tcp", "10.244.1.2", "10.96.0.10", 40000, 80, "SA", "default/client",
    )  # fmt: skip
    assert "client/eth0 tcp 10.244.1.2:40000 > 10.96.0.10:80 [SA]" in str(tcp)
    udp = capture.decode("x", 0, 1, frame(dpkt.udp.UDP(sport=5353, dport=53), 17))
    assert (udp.proto, udp.sport, udp.dport) == ("udp", 5353, 53)
    arp = dpkt.arp.ARP(spa=socket.inet_aton("10.244.1.1"), tpa=socket.inet_aton("10.244.1.2"))
    seen = capture.decode("x", 0, 1, bytes(dpkt.ethernet.Ethernet(type=0x0806, data=arp)))
    assert (seen.proto, seen.src, seen.dst) == ("arp", "10.244.1.1", "10.244.1.2")


# ---- emu trace --pcap ------------------------------------------------------------------------


def test_trace_captures_the_source_every_node_and_the_watched_pods(state):
    from emu.observe import trace

    source = trace.resolve_source(state, "external/internet", {"internet": "172.28.0.5"})
    destination = trace.resolve_destination(state, "web", "tcp", source)
    plan = trace.plan_trace(state, source, destination, "tcp", 21000)
    targets = capture.trace_targets(state, plan)
    assert [t.name for t in targets] == [
        "external/internet:eth0",
        "node/control-plane:eth0",
        "node/worker:eth0",
        "node/worker2:eth0",
        "web/eth0",
    ]
    assert targets[0].container == "emutest-graph-x-internet" and targets[-1].netns == "web"
    assert capture.trace_filter(plan) == "port 21000 or icmp"


def test_every_capture_command_the_graph_offers_resolves_to_that_interface(state):
    import re

    svg = (Path(__file__).parent / "golden" / "graph" / "default.svg").read_text()
    commands = re.findall(r"<title>emu capture --name emutest-graph-x (\S+)</title>", svg)
    assert len(commands) == len(state.pods) * 2 + len(state.nodes) * 2  # each pod's eth0 and veth, each cni0 and eth0
    for text in commands:
        (target,) = capture.resolve_targets(state, [text], EXTERNALS)
        if text.startswith("node/"):
            assert target.name == text and target.netns is None
        else:
            assert target.name.endswith("/eth0") and target.pod == text
