"""kube-proxy's IPVS mode programmed into a real kernel: a User-mode Linux node.

One UML guest is booted from emu's node image (emu.control.runtime.uml); inside it,
pods are network namespaces on cni0 made with emu's own CNI lines, running
emu's netexec. The cluster view is rendered by the real IPVS renderer and
written by the real apply code, whose command runner is the guest's command
channel. Real packets then go from a client pod (and from the host, for the
NodePort) through the guest's IPVS to the pods.

Skipped where UML cannot run (not Linux, not root); where it is missing and
this is Debian as root, scripts/ensure-uml.sh installs it first.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import urllib.request
from pathlib import Path

import pytest

from emu.node.plan import cni
from emu.node.proxy import proxier
from emu.control.runtime import uml
from emu.control.runtime.images import ImageBuilder
from emu.node.services import service_endpoints
from emu.control.state import plan_cluster
from emu.api.topology.load import load_text
from tests.integration.helpers import uml_or_skip

BRIDGE = "emutest-umlbr"
SUBNET = "192.168.213.0/24"
STATE = Path(os.environ.get("TMPDIR", "/tmp")) / "emutest-uml"
NETEXEC = {"name": "s", "workload": "netexec", "ports": [{"name": "http", "containerPort": 8080}]}

TOPOLOGY = f"""
name: ipvs
networking: {{proxyMode: ipvs}}
nodes:
  - {{name: n1}}
pods:
  - {{name: web-a, node: n1, labels: {{app: web}}, containers: [{NETEXEC}]}}
  - {{name: web-b, node: n1, labels: {{app: web}}, containers: [{NETEXEC}]}}
  - {{name: web-c, node: n1, labels: {{app: web}}, containers: [{NETEXEC}]}}
  - {{name: client, node: n1, containers: [{NETEXEC}]}}
services:
  - name: web
    type: NodePort
    selector: {{app: web}}
    clusterIP: 10.96.0.50
    ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]
  - name: sticky
    selector: {{app: web}}
    clusterIP: 10.96.0.51
    sessionAffinity: ClientIP
    sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 600}}}}
    ports: [{{port: 80, targetPort: 8080}}]
  - name: lb
    type: LoadBalancer
    selector: {{app: web}}
    ports: [{{port: 80, targetPort: 8080}}]
"""
WEB = {"web-a", "web-b", "web-c"}


class Recorder:
    """The guest's command runner, keeping what each call was given (to show what a sync wrote)."""

    def __init__(self, guest: uml.Guest):
        self.guest = guest
        self.calls: list[tuple[list[str], str]] = []

    def __call__(self, argv, **kwargs):
        self.calls.append((list(argv), kwargs.get("input") or ""))
        return self.guest.run(argv, **kwargs)

    def writes(self) -> dict[str, str]:
        """tool -> input, for the calls that wrote something."""
        return {argv[0]: text for argv, text in self.calls if text}


@pytest.fixture(scope="module")
def state():
    return plan_cluster(load_text(TOPOLOGY), "emutest-ipvs", SUBNET)


GATEWAY = str(next(ipaddress.ip_network(SUBNET).hosts()))


@pytest.fixture(scope="module")
def rootfs(runtime):
    """The node image as a UML root filesystem, and the host bridge the guests share."""
    uml_or_skip()
    image = uml.make_rootfs(ImageBuilder(runtime).ensure_node_image())
    for name in uml.guests(STATE):  # what an interrupted run left (the integration lock is ours)
        uml.remove_guest(name, STATE)
    uml.delete_bridge(BRIDGE)
    uml.ensure_bridge(BRIDGE, f"{GATEWAY}/24")
    yield image
    uml.delete_bridge(BRIDGE)
    assert not Path("/sys/class/net", BRIDGE).exists()


@pytest.fixture(scope="module")
def guest(rootfs, state):
    """A booted UML node with the IPVS bootstrap, cni0 and the four pods running netexec."""
    node = state.node("n1")
    machine = uml.Guest("emutest-ipvs-n1", rootfs, BRIDGE, f"{node.node_ip}/24", gateway=GATEWAY, state_dir=STATE)
    try:
        machine.boot()
        boot = proxier("ipvs").bootstrap(state, node, "/etc/emu")
        for path, text in boot.files.items():
            machine.run(["sh", "-c", f"mkdir -p {shlex.quote(os.path.dirname(path))} && cat > {shlex.quote(path)}"],
                        input=text, check=True)  # fmt: skip
        for step in boot.steps:
            machine.sh(step)
        for path, text in cni.workload_files().items():
            machine.run(["sh", "-c", f"mkdir -p {os.path.dirname(path)} && cat > {path}"], input=text, check=True)
        machine.run(["ip", "-batch", "-"], input=cni.node_setup_batch(state, node), check=True)
        for pod in state.pods.values():
            if pod.name not in WEB | {"client"}:
                continue
            machine.run(["ip", "-batch", "-"], input=cni.pod_root_batch(pod), check=True)
            machine.run(["ip", "-n", pod.netns, "-batch", "-"], input=cni.pod_namespace_batch(pod, node), check=True)
            container = pod.containers[0]
            argv = cni.in_pod_argv(pod, container, cni.container_command(container))
            machine.sh(f"{shlex.join(argv)} >/var/log/emu/{pod.netns}.log 2>&1 </dev/null &")
        for pod in state.pods.values():
            if pod.name in WEB:  # netexec answers before the test goes on
                machine.sh(f"for i in $(seq 100); do ip netns exec client curl -s -m 2 {pod.ip}:8080/hostname "
                           f"&& exit 0; sleep 0.2; done; exit 1", timeout=60)  # fmt: skip
        yield machine
    finally:
        machine.shutdown()


def _endpoints(state, without=()):
    ready = {pod.uid: pod.name in WEB - set(without) for pod in state.pods.values()}
    return {key: service_endpoints(state, service, ready) for key, service in state.services.items()}


def _ask(guest, url: str, times: int) -> list[str]:
    """GET url `times` times from the client pod, each a new connection; the answers."""
    script = f"for i in $(seq {times}); do curl -s -m 5 {url}; echo; done"
    return guest.sh(f"ip netns exec client sh -c {shlex.quote(script)}", timeout=120).split()


def test_ipvs_serves_cluster_ip_node_port_and_affinity(guest, state):
    proxy = proxier("ipvs")
    node = state.node("n1")
    pods = {pod.name: pod for pod in state.pods.values()}
    rules = proxy.render(state, "n1", _endpoints(state))
    run = Recorder(guest)
    proxy.apply(run, rules, None)  # a new node: read the kernel (nothing), write everything

    listing = guest.sh("ipvsadm -Ln")
    assert "TCP  10.96.0.50:80 rr" in listing and f"TCP  {node.node_ip}:30080 rr" in listing
    assert "TCP  10.96.0.51:80 rr persistent 600" in listing
    for name in WEB:
        assert f"-> {pods[name].ip}:8080" in listing
    assert "Masq" in listing
    assert "10.96.0.50/32" in guest.sh("ip -o addr show dev kube-ipvs0")
    assert "10.96.0.50,tcp:80" in guest.sh("ipset list KUBE-CLUSTER-IP")
    assert "-A KUBE-SERVICES" in guest.sh("iptables-save -t nat")
    assert proxy.lost(run, rules) == []
    # What `emu plan --rules` shows for a new node is what was written, tool by tool.
    shown = proxy.text(rules)
    for tool, text in run.writes().items():
        assert text.rstrip("\n") in shown, tool

    # ClusterIP from a pod: every endpoint answers, in turn (rr).
    answers = _ask(guest, "http://10.96.0.50/hostname", 6)
    assert sorted(answers) == sorted([*WEB, *WEB])
    # NodePort on the node's address, from a pod and from the host (outside the node).
    assert set(_ask(guest, f"http://{node.node_ip}:30080/hostname", 6)) == WEB
    from_host = {
        urllib.request.urlopen(f"http://{node.node_ip}:30080/hostname", timeout=10).read().decode() for _ in range(6)
    }
    assert from_host == WEB
    # LoadBalancer: its address is on kube-ipvs0 too, reached from a pod and from the host.
    lb = state.services["default/lb"].load_balancer_ip
    assert lb and f"TCP  {lb}:80 rr" in listing and f"{lb},tcp:80" in guest.sh("ipset list KUBE-LOAD-BALANCER")
    assert set(_ask(guest, f"http://{lb}/hostname", 6)) == WEB
    assert urllib.request.urlopen(f"http://{lb}/hostname", timeout=10).read().decode() in WEB
    # ClientIP affinity is persistence: one client stays on one endpoint.
    sticky = _ask(guest, "http://10.96.0.51/hostname", 8)
    assert len(sticky) == 8 and len(set(sticky)) == 1 and sticky[0] in WEB

    # web-c leaves: the next sync writes only the difference.
    before = guest.sh("ipvsadm -S -n").splitlines()
    changed = proxy.render(state, "n1", _endpoints(state, without={"web-c"}))
    run = Recorder(guest)
    proxy.apply(run, changed, rules)
    gone = f"{pods['web-c'].ip}:8080"
    writes = run.writes()
    assert set(writes) == {"ipvsadm", "ipset"}  # no address, no chain rewritten
    ipvsadm_lines = writes["ipvsadm"].splitlines()
    assert ipvsadm_lines and all(line.startswith("-d ") and line.endswith(f"-r {gone}") for line in ipvsadm_lines)
    assert writes["ipset"] == f"del KUBE-LOOP-BACK {pods['web-c'].ip},tcp:8080,{pods['web-c'].ip} -exist\n"
    after = guest.sh("ipvsadm -S -n").splitlines()
    assert sorted(set(before) - set(after)) == sorted(line for line in before if f"-r {gone} " in line)
    assert set(after) - set(before) == set()
    assert set(_ask(guest, "http://10.96.0.50/hostname", 6)) == WEB - {"web-c"}
    assert proxy.lost(run, changed) == []

    # A real server deleted by hand is noticed as lost, and a full sync puts it back.
    guest.sh(f"ipvsadm -d -t 10.96.0.50:80 -r {pods['web-a'].ip}:8080")
    assert proxy.lost(run, changed) == [f"real server {pods['web-a'].ip}:8080 of TCP 10.96.0.50:80 missing"]
    proxy.apply(run, changed, proxy.forget())
    assert proxy.lost(run, changed) == []
    assert set(_ask(guest, "http://10.96.0.50/hostname", 4)) == {"web-a", "web-b"}


def _left_behind(name: str, pgid: int | None) -> list[str]:
    found = []
    if pgid is not None and uml._uml_group(pgid):
        found.append(f"UML processes in group {pgid}")
    if Path("/sys/class/net", uml.tap_name(name)).exists():
        found.append(f"tap {uml.tap_name(name)}")
    if uml.guest_dir(STATE, name).exists():
        found.append(f"files in {uml.guest_dir(STATE, name)}")
    return found


def test_a_guest_killed_from_outside_is_removed_without_a_trace(rootfs):
    machine = uml.Guest("emutest-uml-kill", rootfs, BRIDGE, "192.168.213.3/24", gateway=GATEWAY, state_dir=STATE)
    machine.boot()
    try:
        assert machine.sh("hostname").strip() == "emutest-uml-kill"
        pgid = machine.process.pid
        os.kill(pgid, 9)  # the kernel's own process only, as the OOM killer would: its helpers live on
        machine.process.wait(10)
        # A later command knows only the guest's name and state directory.
        uml.remove_guest("emutest-uml-kill", STATE)
        assert _left_behind("emutest-uml-kill", pgid) == []
    finally:
        machine.shutdown()


def test_a_guest_that_cannot_boot_says_why_and_leaves_nothing(rootfs, tmp_path):
    broken = tmp_path / "not-a-filesystem.img"
    broken.write_bytes(b"\0" * (1 << 20))
    machine = uml.Guest("emutest-uml-broken", broken, BRIDGE, "192.168.213.4/24", state_dir=STATE)
    with pytest.raises(uml.UmlError, match="exited .* while booting; console:"):
        machine.boot(timeout=60)
    assert _left_behind("emutest-uml-broken", machine.process.pid) == []


def test_netem_delays_a_pods_packets(guest, state):
    pods = {pod.name: pod for pod in state.pods.values()}
    target = pods["web-a"].ip
    guest.sh("ip netns exec client tc qdisc add dev eth0 root netem delay 50ms")
    try:
        assert "netem" in guest.sh("ip netns exec client tc qdisc show dev eth0")
        out = guest.sh(f"ip netns exec client ping -c 3 -i 0.2 {target}", timeout=30)
        rtts = [float(word.split("=")[1]) for word in out.split() if word.startswith("time=")]
        assert len(rtts) == 3 and min(rtts) >= 50.0  # netem holds each packet at least its delay
    finally:
        guest.sh("ip netns exec client tc qdisc del dev eth0 root")
