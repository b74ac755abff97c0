"""emu capture on a real cluster: the article's flows captured at both ends and
asserted on the decoded packets (no NAT across nodes, the ClusterIP DNAT, the
egress SNAT to the node, a NodePort from outside), the command's pcapng, bad
input refused before anything starts, and no tcpdump left in any node after a
capture is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from emu.control.runtime import stream
from emu.observe import capture as engine
from emu.testing.capture import capture
from tests import labs
from tests.integration.helpers import curl

LAB = labs.load("capture")
TCP = "tcp port 80 or tcp port 8080 or tcp port 30080"


@pytest.fixture(scope="module")
def cluster(make_cluster):
    made = make_cluster(LAB, "capture")
    made.external_ip = made.run_external("internet")
    return made


@pytest.fixture(scope="module")
def state(cluster):
    return cluster.state()


def from_external(cluster, url: str) -> str:
    result = cluster.runtime.exec(f"{cluster.name}-internet", ["curl", "-sS", "--max-time", "5", url])
    assert result.ok, result.output
    return result.output


def streams_left(cluster, state) -> dict[str, str]:
    """Processes carrying a capture's marker, by container (nodes and the external)."""
    containers = [n.container for n in state.nodes] + [f"{cluster.name}-internet"]
    found = {}
    for container in containers:
        output = cluster.runtime.exec(container, ["sh", "-c", stream.LIST]).output.split()
        if output:
            found[container] = " ".join(output)
    return found


def test_pod_to_pod_across_nodes_keeps_both_addresses(cluster, state):
    client, web = state.pods["default/client"], state.pods["default/web"]
    with capture(cluster, "client", "web", "node/worker:eth0", filter="tcp port 8080") as seen:
        assert curl(cluster, "client", f"http://{web.ip}:8080/hostname") == "web"
    assert seen.targets == ["client/eth0", "node/worker:eth0", "web/eth0"]
    for target in seen.targets:  # the same addresses at the client, on the wire between nodes, at the server
        syn = seen.on(target).first(proto="tcp", flags="S")
        assert (syn.src, syn.dst, syn.dport) == (client.ip, web.ip, 8080), target
    sent, arrived = seen.on("client/eth0").first(flags="S"), seen.on("web/eth0").first(flags="S")
    assert sent.sport == arrived.sport and sent.time <= arrived.time


def test_pod_to_cluster_ip_shows_the_dnat(cluster, state):
    client, web = state.pods["default/client"], state.pods["default/web"]
    service = state.services["default/web"]
    with capture(cluster, "client", "svc/web", filter=TCP) as seen:
        assert curl(cluster, "client", f"http://{service.cluster_ip}/hostname") == "web"
    sent = seen.on("client/eth0").first(flags="S")
    assert (sent.src, sent.dst, sent.dport) == (client.ip, service.cluster_ip, 80)  # the client addressed the service
    delivered = seen.on(pod="default/web").first(flags="S")
    assert delivered.target == f"node/worker2:{web.host_veth}"
    assert (delivered.src, delivered.dst, delivered.dport) == (client.ip, web.ip, 8080)  # DNAT, no SNAT
    assert delivered.sport == sent.sport
    reply = seen.on("client/eth0").first(flags="SA")
    assert (reply.src, reply.sport) == (service.cluster_ip, 80)  # conntrack undid the DNAT on the way back


def test_egress_is_masqueraded_to_the_node_ip(cluster, state):
    client, worker = state.pods["default/client"], state.node("worker")
    external = cluster.external_ip
    with capture(cluster, "client", "node/worker:eth0", "external/internet", filter="tcp port 8080") as seen:
        curl(cluster, "client", f"http://{external}:8080/hostname")
    assert seen.on("client/eth0").first(flags="S").src == client.ip
    for target in ("node/worker:eth0", "external/internet:eth0"):
        syn = seen.on(target).first(flags="S")
        assert (syn.src, syn.dst) == (worker.node_ip, external), target


def test_node_port_from_the_external_host(cluster, state):
    web, worker = state.pods["default/web"], state.node("worker")
    with capture(cluster, "external/internet", "web", filter=TCP) as seen:
        assert from_external(cluster, f"http://{worker.node_ip}:30080/hostname") == "web"
    sent = seen.on("external/internet:eth0").first(flags="S")
    assert (sent.src, sent.dst, sent.dport) == (cluster.external_ip, worker.node_ip, 30080)
    arrived = seen.on("web/eth0").first(flags="S")
    # worker DNATs to the pod on worker2 and masquerades to its own address, so the reply comes back through it
    assert (arrived.src, arrived.dst, arrived.dport) == (worker.node_ip, web.ip, 8080)


def whole(data: bytes) -> bool:
    """Whether the pcapng ends exactly at the end of a block (nothing cut off)."""
    offset = 0
    while offset + 8 <= len(data):
        offset += int.from_bytes(data[offset + 4 : offset + 8], "little")
    return offset == len(data) and len(data) > 0


def emu(*argv: str, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "emu.cli", "capture", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options
    )


def wait_started(process: subprocess.Popen) -> str:
    line = process.stderr.readline().decode()
    assert line.startswith("capturing on"), line + process.stderr.read().decode()
    return line


def test_the_command_writes_one_pcapng_with_an_interface_per_target(cluster, state, tmp_path):
    web = state.pods["default/web"]
    path = tmp_path / "flow.pcapng"
    process = emu("--name", cluster.name, "client", "web", "-f", "tcp port 8080", "-c", "7", "-w", str(path))
    started = wait_started(process)
    assert "client/eth0, web/eth0" in started
    curl(cluster, "client", f"http://{web.ip}:8080/hostname")
    _, errors = process.communicate(timeout=30)
    assert process.returncode == 0 and "7 packets captured" in errors.decode(), errors
    assert whole(path.read_bytes())
    interfaces, packets = engine.read_pcapng(path.read_bytes())
    assert [(i["name"], i["linktype"]) for i in interfaces] == [("client/eth0", 1), ("web/eth0", 1)]
    assert interfaces[0]["description"] == "pod default/client on node worker, eth0"
    assert len(packets) == 7  # -c counts packets across every target
    assert [t for _, t, _ in packets] == sorted(t for _, t, _ in packets)
    decoded = [engine.decode(interfaces[i]["name"], t / 1e6, 1, d) for i, t, d in packets]
    assert {p.target for p in decoded} == {"client/eth0", "web/eth0"}
    assert decoded[0].flags == "S" and decoded[0].target == "client/eth0"  # the SYN leaves the client first


def test_stdout_streams_pcapng_as_it_comes(cluster, state):
    """`emu capture client -w - | wireshark -k -i -`: the blocks arrive while it runs."""
    web = state.pods["default/web"]
    process = emu("--name", cluster.name, "client", "-f", "tcp port 8080", "-w", "-")
    try:
        wait_started(process)
        header = os.read(process.stdout.fileno(), 4)
        assert header == b"\x0a\x0d\x0d\x0a"  # the Section Header Block, before any packet
        curl(cluster, "client", f"http://{web.ip}:8080/hostname")
        data = b""
        while not engine.read_pcapng(header + data)[1]:  # an Enhanced Packet Block, while the capture still runs
            data += os.read(process.stdout.fileno(), 65536)
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        rest, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    assert whole(header + data + rest)
    interfaces, packets = engine.read_pcapng(header + data + rest)
    assert [i["name"] for i in interfaces] == ["client/eth0"] and len(packets) >= 10


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nosuch"], "TARGET 'nosuch': no pod or service 'nosuch'"),
        (["client", "node/worker:nope0"], "node/worker:nope0: no interface 'nope0' in node/worker"),
        (["client", "-f", "tcp port"], "the capture filter 'tcp port' does not compile"),
        (
            ["client", "-w", "/nonexistent-dir/x.pcapng"],
            "-w /nonexistent-dir/x.pcapng: directory /nonexistent-dir does not exist",
        ),
    ],
)
def test_bad_input_is_refused_before_anything_starts(cluster, state, argv, message):
    process = emu("--name", cluster.name, *argv)
    out, errors = process.communicate(timeout=60)
    assert process.returncode == 1, errors
    assert message in errors.decode() and "Traceback" not in errors.decode(), errors
    assert out == b"" and "capturing on" not in errors.decode()
    assert streams_left(cluster, state) == {}


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_capture_killed_midway_leaves_no_tcpdump_in_any_node(cluster, state, tmp_path, how):
    path = tmp_path / "killed.pcapng"
    process = emu("--name", cluster.name, "client", "svc/web", "node/worker:eth0", "external/internet", "-w", str(path))
    wait_started(process)
    running = streams_left(cluster, state)
    assert len(running) == 3, running  # worker, worker2 and the external container each run theirs
    process.send_signal(how)
    process.communicate(timeout=30)
    deadline = time.monotonic() + 15  # SIGKILL: each node's watcher sees the connection close
    while streams_left(cluster, state) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert streams_left(cluster, state) == {}
    if how != signal.SIGKILL:  # Ctrl-C or SIGTERM: ended cleanly, a whole file
        assert process.returncode == 0
        assert whole(path.read_bytes())
        interfaces, _ = engine.read_pcapng(path.read_bytes())
        assert len(interfaces) == 4


def test_trace_saves_the_probe_at_each_hop_so_the_dnat_shows_as_two_destinations(cluster, state, tmp_path):
    client, web = state.pods["default/client"], state.pods["default/web"]
    service = state.services["default/web"]
    path = tmp_path / "trace.pcapng"
    run = subprocess.run(
        [sys.executable, "-m", "emu.cli", "trace", "--name", cluster.name, "client", f"{service.cluster_ip}:80",
         "--pcap", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    interfaces, packets = engine.read_pcapng(path.read_bytes())
    names = [i["name"] for i in interfaces]
    assert names == ["node/control-plane:eth0", "node/worker:eth0", "client/eth0", "node/worker2:eth0", "web/eth0"]
    syns = {
        names[i]: decoded for i, t, d in packets if (decoded := engine.decode(names[i], t / 1e6, 1, d)).flags == "S"
    }
    assert set(syns) == {"client/eth0", "node/worker:eth0", "node/worker2:eth0", "web/eth0"}
    assert (syns["client/eth0"].dst, syns["client/eth0"].dport) == (service.cluster_ip, 80)
    assert (syns["web/eth0"].src, syns["web/eth0"].dst, syns["web/eth0"].dport) == (client.ip, web.ip, 8080)
    assert len({p.sport for p in syns.values()}) == 1  # one probe, seen at each place
    assert streams_left(cluster, state) == {}
