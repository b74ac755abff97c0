"""Every status.loadBalancer.ingress IP of a service answers, with real packets.

emu's own clusters give a LoadBalancer one address (its allocator), so this
test builds the node by hand, as test_ipvs_uml.py does with a UML guest, here
from network namespaces of this host's kernel: a node (eth0 on a shared link,
a pod link), a pod serving HTTP behind it, and a client on the node's link.
The node's rules are emu's nftables renderer's for a LoadBalancer with two
ingress IPs, written by the real proxier; the addresses are held by the real
LoadBalancers announcer of the node's agent (emu/node/agent/edge.py), whose
commands run in the node's namespace. The client then reaches the service on
the second address as on the first: ARP finds the node, the node's rules send
it to the pod. Needs root (network namespaces); no Docker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from emu.node.agent.edge import LoadBalancers
from emu.node.proxy import nftables
from emu.node.records import ClusterState, NodeState, ServicePortState, ServiceState
from emu.node.services import Endpoint

NODE_IP, CLIENT_IP, POD_IP, GATEWAY = "192.0.2.2", "192.0.2.9", "10.244.0.2", "10.244.0.1"
FIRST, SECOND = "192.0.2.100", "192.0.2.101"
ROOT = str(Path(__file__).resolve().parents[2])


def _sh(*argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, **kwargs)


@pytest.fixture()
def lab():
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("needs Linux, root, ip and nft (network namespaces)")
    tag = uuid.uuid4().hex[:6]
    node, client, pod = f"emulb-n-{tag}", f"emulb-c-{tag}", f"emulb-p-{tag}"
    server = None
    try:
        for ns in (node, client, pod):
            _sh("ip", "netns", "add", ns)
        for near, far, ns in ((f"lbn{tag}", f"lbc{tag}", client), (f"lbp{tag}", f"lbq{tag}", pod)):
            _sh("ip", "link", "add", near, "netns", node, "type", "veth", "peer", "name", far, "netns", ns)
        batch = {
            node: [f"link set lbn{tag} name eth0", "link set eth0 up", f"addr add {NODE_IP}/24 dev eth0",
                   f"link set lbp{tag} up", f"addr add {GATEWAY}/24 dev lbp{tag}", "link set lo up"],
            client: [f"link set lbc{tag} name eth0", "link set eth0 up", f"addr add {CLIENT_IP}/24 dev eth0",
                     "link set lo up"],
            pod: [f"link set lbq{tag} name eth0", "link set eth0 up", f"addr add {POD_IP}/24 dev eth0",
                  f"route add default via {GATEWAY}", "link set lo up"],
        }  # fmt: skip
        for ns, lines in batch.items():
            _sh("ip", "-n", ns, "-batch", "-", input="\n".join(lines) + "\n")
        _sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        server = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, "-m", "http.server", "8080",
                                   "--bind", POD_IP], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        ready = "for i in $(seq 100); do curl -s -o /dev/null -m 1 http://%s:8080/ && exit 0; sleep 0.1; done; exit 1"
        _sh("ip", "netns", "exec", node, "sh", "-c", ready % POD_IP)  # the pod serves before the test goes on
        yield node, client, pod
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for ns in (node, client, pod):
            _sh("ip", "netns", "del", ns, check=False)


def _state() -> tuple[ClusterState, dict]:
    node = NodeState("n1", "control-plane", {}, "10.244.0.0/24", NODE_IP, "c")
    state = ClusterState("lb", "lb", "192.0.2.0/24", {"podSubnet": "10.244.0.0/16", "serviceSubnet": "10.96.0.0/12",
                         "proxyMode": "nftables"}, [node])  # fmt: skip
    port = ServicePortState("http", 80, "TCP", 8080, 30060)
    service = ServiceState("default", "lb", "LoadBalancer", "10.96.0.60", [port], {"app": "web"},
                           load_balancer_ip=FIRST, load_balancer_ips=[FIRST, SECOND])  # fmt: skip
    state.services[service.key] = service
    return state, {service.key: {"http": [Endpoint(POD_IP, 8080, "n1", "default/web")]}}


def _get(client: str, address: str) -> int:
    """curl's exit code for a GET to http://ADDRESS/ from the client (0: answered)."""
    return _sh("ip", "netns", "exec", client, "curl", "-s", "-o", "/dev/null", "--max-time", "3", f"http://{address}/",
               check=False).returncode  # fmt: skip


def test_every_ingress_ip_answers(lab):
    node, client, _ = lab
    if shutil.which("curl") is None:
        pytest.skip("needs curl")

    def in_node(argv, **kwargs):
        return subprocess.run(["ip", "netns", "exec", node, *argv], **kwargs)

    state, endpoints = _state()
    proxy = nftables.NftablesProxier()
    proxy.apply(in_node, proxy.render(state, "n1", endpoints), None)
    assert _get(client, SECOND) != 0  # nothing holds the address yet: no answer (and the client's ARP failed)
    announced: list[str] = []

    def announce(address, log):  # the agent's own gratuitous ARP, sent from the node's namespace
        announced.append(address)
        code = f"from emu.node.agent.edge import gratuitous_arp; gratuitous_arp({address!r}, print)"
        in_node([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": ROOT})

    balancers = LoadBalancers("n1", lambda message: None, run=in_node, announce=announce)
    balancers.update(state, endpoints)
    assert _get(client, FIRST) == 0
    assert _get(client, SECOND) == 0  # the second ingress IP answers as the first
    assert sorted(announced) == [FIRST, SECOND]
    state.services["default/lb"].load_balancer_ips = [FIRST]  # the second leaves the status: released
    balancers.update(state, endpoints)
    _sh("ip", "netns", "exec", client, "ip", "neigh", "flush", "dev", "eth0")
    assert _get(client, SECOND) != 0 and _get(client, FIRST) == 0
