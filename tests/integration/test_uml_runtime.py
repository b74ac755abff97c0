"""The uml runtime end to end: `emu up --runtime uml` of a small lab in IPVS
mode (a control-plane and a worker, each a User-mode Linux guest, two pods, a
ClusterIP service), real curl between pods across the nodes and to the
ClusterIP through the guests' IPVS, the cluster found again by later emu
commands from its records alone, a node whose kernel is killed from outside
named by `emu status` and booted again by `emu up`, and `emu down` leaving no
UML process, relay, tap, bridge, forwarding rule or file.

Skipped where UML cannot run (not Linux, not root); where it is missing and
this is Debian as root, scripts/ensure-uml.sh installs it first. Docker is
needed once, to make the root filesystem from the node image.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emu.control.cluster import Cluster
from emu.control.runtime import uml
from emu.control.runtime.select import cluster_names, provider_for
from emu.control.runtime.umlprovider import UmlRuntime, bridge_name, known_clusters
from emu.testing import sweep
from tests.integration.helpers import uml_or_skip

ROOT = Path(__file__).resolve().parents[2]
NETEXEC = "{name: s, workload: netexec, ports: [{name: http, containerPort: 8080}]}"
# No `runtime:` here: `emu up --runtime uml` chooses it, and later commands find it by its records.
LAB = f"""
name: NAME
networking: {{proxyMode: ipvs}}
nodes:
  - {{name: cp, role: control-plane}}
  - {{name: w1}}
pods:
  - {{name: a, node: cp, labels: {{app: web}}, containers: [{NETEXEC}]}}
  - {{name: b, node: w1, labels: {{app: web}}, containers: [{NETEXEC}]}}
services:
  - {{name: web, selector: {{app: web}}, clusterIP: 10.96.0.80, ports: [{{port: 80, targetPort: http}}]}}
"""


def emu(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "emu.cli", *args], capture_output=True, text=True,
                          env=environment, timeout=600)  # fmt: skip


def left_behind(name: str, containers: list[str], pgids: list[int], addresses: list[str]) -> list[str]:
    """What of a removed uml cluster is still on this machine."""
    found = [f"UML processes in group {pgid}" for pgid in pgids if uml._uml_group(pgid)]
    for container in containers:  # a guest's processes, by the umid on their command line
        guests = subprocess.run(["pgrep", "-f", f"linux.uml .*umid={container} "], capture_output=True, text=True)
        found += [f"UML process {pid} of {container}" for pid in guests.stdout.split()]
    found += [f"tap {uml.tap_name(c)}" for c in containers if Path("/sys/class/net", uml.tap_name(c)).exists()]
    found += [f"files of {c}" for c in containers if uml.guest_dir(uml.STATE_DIR, c).exists()]
    if Path("/sys/class/net", bridge_name(name)).exists():
        found.append(f"bridge {bridge_name(name)}")
    if (uml.STATE_DIR / "clusters" / name).exists():
        found.append(f"records {uml.STATE_DIR / 'clusters' / name}")
    for address in addresses:  # a host port's relay to a node
        relays = subprocess.run(["pgrep", "-f", f"umlforward.py .* {address} "], capture_output=True, text=True)
        found += [f"host port relay {pid} to {address}" for pid in relays.stdout.split()]
    rules = subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True).stdout
    rules += subprocess.run(["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"], capture_output=True, text=True).stdout
    found += [f"iptables rule {line}" for line in rules.splitlines() if bridge_name(name) in line]
    return found


@pytest.fixture(scope="module")
def lab(runtime, tmp_path_factory):
    """`emu up --runtime uml` of the lab; removed at the end whatever happens."""
    uml_or_skip()
    for stale in known_clusters():  # what an interrupted run left (the integration lock is ours)
        if stale.startswith("emutest-") and not sweep.owner_alive(stale):
            UmlRuntime().remove_cluster(stale)
    name = sweep.register(f"emutest-uml-{os.urandom(2).hex()}")
    path = tmp_path_factory.mktemp("uml") / "lab.yaml"
    path.write_text(LAB.replace("NAME", name))
    try:
        up = emu("up", str(path), "--runtime", "uml", "-q")
        assert up.returncode == 0, up.stdout + up.stderr
        yield name
    finally:
        UmlRuntime().remove_cluster(name)
        sweep.disown(name)


def test_the_lab_comes_up_on_uml_nodes_and_serves_across_them(lab):
    cluster = Cluster(lab)  # found again: nothing but the records says it is a uml cluster
    assert isinstance(cluster.runtime, UmlRuntime) and isinstance(provider_for(lab), UmlRuntime)
    assert lab in cluster_names()
    nodes = {c.node: c for c in cluster.runtime.cluster_containers(lab)}
    assert set(nodes) == {"cp", "w1"} and all(c.running for c in nodes.values())
    state = cluster.state()
    pods = {pod.name: pod for pod in state.pods.values()}
    assert pods["a"].node == "cp" and pods["b"].node == "w1"
    # Each node is a kernel of its own: its hostname, its eth0 with the node IP.
    for node in state.nodes:
        assert cluster.node_exec(node.name, ["hostname"]).output.strip() == node.name
        assert f"inet {node.node_ip}/" in cluster.node_exec(node.name, ["ip", "-4", "addr", "show", "eth0"]).output

    # Pod to pod across nodes, with real curl, both ways.
    across = cluster.exec("a", ["curl", "-s", "-m", "10", f"http://{pods['b'].ip}:8080/hostname"])
    assert across.ok and across.output.strip() == "b"
    back = cluster.exec("b", ["curl", "-s", "-m", "10", f"http://{pods['a'].ip}:8080/hostname"])
    assert back.ok and back.output.strip() == "a"

    # The ClusterIP, through the guests' IPVS (rr: both endpoints in turn), by address and by name.
    script = "for i in 1 2 3 4; do curl -s -m 10 http://10.96.0.80/hostname; echo; done"
    answers = cluster.exec("b", ["sh", "-c", script]).output.split()
    assert sorted(answers) == ["a", "a", "b", "b"]
    named = cluster.exec("a", ["curl", "-s", "-m", "10", "http://web.default.svc.cluster.local/hostname"])
    assert named.output.strip() in {"a", "b"}
    listing = cluster.node_exec("w1", ["ipvsadm", "-Ln"]).output
    assert "TCP  10.96.0.80:80 rr" in listing
    assert f"-> {pods['a'].ip}:8080" in listing and f"-> {pods['b'].ip}:8080" in listing

    # The API server, published on this machine's 127.0.0.1 through the host port relay.
    kubectl = subprocess.run(["kubectl", "--context", f"emu-{lab}", "get", "pods", "-o", "json"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert kubectl.returncode == 0, kubectl.stderr
    assert {item["metadata"]["name"] for item in json.loads(kubectl.stdout)["items"]} == {"a", "b"}


def test_streams_files_and_errors_go_through_the_command_server(lab):
    runtime = UmlRuntime()
    node = f"{lab}-w1"
    handle = runtime.exec_stream(node, ["sh", "-c", "echo one; echo oops >&2; sleep 0.2; echo two; exit 3"])
    out = b""
    while chunk := handle.read():
        out += chunk
    handle.close()
    assert out == b"one\ntwo\n" and handle.errors() == "oops\n" and handle.exit_code() == 3
    runtime.put_files(node, {"/tmp/emutest/a.txt": "hello\n"})
    assert runtime.read_file(node, "/tmp/emutest/a.txt") == "hello\n"
    assert runtime.read_file(node, "/tmp/emutest/missing") is None
    with pytest.raises(Exception, match="over emu's limit"):
        runtime.read_file(node, "/tmp/emutest/a.txt", limit=2)
    both = runtime.exec(node, ["sh", "-c", "echo out; echo err >&2; exit 4"])
    assert (both.exit_code, both.output) == (4, "out\nerr\n")
    assert runtime.exec(node, ["sh", "-c", 'echo "$X"'], environment={"X": "y z"}).output == "y z\n"


@pytest.fixture
def outside(tmp_path):
    """A web server beyond this host, as far as the nodes can tell: in a network
    namespace of the host's own behind a veth pair, with no route back to the
    cluster network (only the host's masquerading gets a reply there)."""
    namespace, veth = "emutest-outside", "emutestout0"
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
    subprocess.run(["ip", "link", "del", veth], capture_output=True)
    (tmp_path / "marker").write_text("outside\n")
    for step in (["ip", "netns", "add", namespace],
                 ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace],
                 ["ip", "addr", "add", "192.168.251.1/30", "dev", veth], ["ip", "link", "set", veth, "up"],
                 ["ip", "-n", namespace, "addr", "add", "192.168.251.2/30", "dev", "eth0"],
                 ["ip", "-n", namespace, "link", "set", "eth0", "up"]):  # fmt: skip
        subprocess.run(step, check=True, capture_output=True)
    server = subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-m", "http.server", "--bind",
                               "192.168.251.2", "8099"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield "http://192.168.251.2:8099/marker"
    finally:
        server.kill()
        server.wait()
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)


def test_pods_reach_beyond_the_host(lab, outside):
    script = f"for i in $(seq 50); do curl -s -m 3 {outside} && exit 0; sleep 0.2; done; exit 1"
    reached = Cluster(lab).exec("b", ["sh", "-c", script])
    assert reached.ok and reached.output.strip() == "outside", reached.output


def test_a_killed_node_is_named_by_status_and_booted_again_by_up_with_its_pods(lab, tmp_path):
    """The control-plane's kernel killed from outside (kill -9 of the linux process): `emu status`
    names it and exits 1; `emu up FILE` boots it again on its own disk, and its pod answers at
    the same address across nodes and through the ClusterIP, the API server with every object."""
    runtime = UmlRuntime()
    container = f"{lab}-cp"
    before = Cluster(lab).state()
    old = int((uml.guest_dir(uml.STATE_DIR, container) / "pid").read_text())
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while uml.guest_running(container) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert uml._uml_group(old)  # its helpers outlive it: the process group alone would say it runs

    status = emu("status", "--name", lab)
    assert status.returncode == 1, status.stdout + status.stderr
    assert f"node cp: its container {container} is not running (down: its UML kernel process is gone)" in status.stderr
    assert "`emu up FILE` starts it again" in status.stderr and "docker" not in status.stderr

    path = tmp_path / "lab.yaml"
    path.write_text(LAB.replace("NAME", lab))
    up = emu("up", str(path), "-q")
    assert up.returncode == 0, up.stdout + up.stderr
    new = int((uml.guest_dir(uml.STATE_DIR, container) / "pid").read_text())
    assert new != old and uml.guest_running(container) and not uml._uml_group(old)
    assert emu("status", "--name", lab).returncode == 0

    cluster = Cluster(lab)
    pods = {pod.name: pod for pod in cluster.state().pods.values()}
    assert {name: pod.ip for name, pod in pods.items()} == {pod.name: pod.ip for pod in before.pods.values()}
    across = cluster.exec("b", ["curl", "-s", "-m", "10", f"http://{pods['a'].ip}:8080/hostname"])
    assert across.ok and across.output.strip() == "a"
    script = "for i in 1 2 3 4; do curl -s -m 10 http://10.96.0.80/hostname; echo; done"
    assert sorted(cluster.exec("a", ["sh", "-c", script]).output.split()) == ["a", "a", "b", "b"]
    kubectl = subprocess.run(["kubectl", "--context", f"emu-{lab}", "get", "pods", "-o", "json"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert kubectl.returncode == 0, kubectl.stderr
    assert {item["metadata"]["name"] for item in json.loads(kubectl.stdout)["items"]} == {"a", "b"}
    assert {c.node: c.running for c in runtime.cluster_containers(lab)} == {"cp": True, "w1": True}


def test_a_killed_node_that_fails_to_boot_again_is_left_down_and_said_why(lab, tmp_path):
    """w1's kernel killed, and its record set to too little memory for the UML kernel: `emu up` fails
    saying why, with the console's last lines, and leaves w1 down (no process or tap, its disk kept)
    and the rest running; once the cause is gone, `emu up` boots it (then `emu down` leaves nothing)."""
    container = f"{lab}-w1"
    record_path = uml.STATE_DIR / "clusters" / lab / "nodes" / f"{container}.json"
    record = json.loads(record_path.read_text())
    os.kill(int((uml.guest_dir(uml.STATE_DIR, container) / "pid").read_text()), signal.SIGKILL)
    record_path.write_text(json.dumps({**record, "memory": "8M"}))
    path = tmp_path / "lab.yaml"
    path.write_text(LAB.replace("NAME", lab))
    try:
        up = emu("up", str(path), "-q")
        assert up.returncode != 0
        assert f"node w1: guest {container} exited" in up.stderr and "while booting; console:" in up.stderr, up.stderr
        directory = uml.guest_dir(uml.STATE_DIR, container)
        assert sorted(p.name for p in directory.iterdir()) == ["console.log", "root.cow"]
        assert not Path("/sys/class/net", uml.tap_name(container)).exists()
        assert subprocess.run(["pgrep", "-f", f"linux.uml .*umid={container} "]).returncode == 1
        assert {c.node: c.running for c in UmlRuntime().cluster_containers(lab)} == {"cp": True, "w1": False}
    finally:
        record_path.write_text(json.dumps({**json.loads(record_path.read_text()), "memory": record["memory"]}))
    up = emu("up", str(path), "-q")
    assert up.returncode == 0, up.stdout + up.stderr
    answer = Cluster(lab).exec("a", ["curl", "-s", "-m", "10", f"http://{Cluster(lab).pod('b').ip}:8080/hostname"])
    assert answer.output.strip() == "b"


def test_emu_down_leaves_nothing(lab):
    runtime = UmlRuntime()
    containers = [c.name for c in runtime.cluster_containers(lab)]
    addresses = [runtime.container_ip(c, "") for c in containers]
    pgids = [int((uml.guest_dir(uml.STATE_DIR, c) / "pid").read_text()) for c in containers]
    assert len(containers) == 2 and all(uml._uml_group(pgid) for pgid in pgids)
    before = left_behind(lab, containers, pgids, addresses)  # what the check sees of a running cluster
    for thing in ("UML process ", "tap ", "files of ", "bridge ", "records ", "host port relay ", "iptables rule "):
        assert any(found.startswith(thing) for found in before), (thing, before)
    down = emu("down", lab)
    assert down.returncode == 0, down.stdout + down.stderr
    assert left_behind(lab, containers, pgids, addresses) == []
    assert lab not in cluster_names()
    kubeconfig = subprocess.run(["kubectl", "config", "get-contexts", "-o", "name"], capture_output=True, text=True)
    assert f"emu-{lab}" not in kubeconfig.stdout.split()


def test_a_failed_up_leaves_nothing(runtime, tmp_path):
    """Guests that cannot boot (too little memory for the UML kernel): `emu up`
    says why, with the console's last lines, and removes what it made."""
    uml_or_skip()
    name = sweep.register(f"emutest-umlfail-{os.urandom(2).hex()}")
    path = tmp_path / "lab.yaml"
    path.write_text(LAB.replace("NAME", name))
    try:
        environment = {**os.environ, "PYTHONPATH": str(ROOT), "EMU_UML_MEMORY": "8M"}
        up = subprocess.run([sys.executable, "-m", "emu.cli", "up", str(path), "--runtime", "uml", "-q"],
                            capture_output=True, text=True, env=environment, timeout=600)  # fmt: skip
        assert up.returncode != 0
        assert f"guest {name}-" in up.stderr and "while booting; console:" in up.stderr, up.stderr
        assert left_behind(name, [f"{name}-cp", f"{name}-w1"], [], []) == []
        assert name not in known_clusters()
    finally:
        UmlRuntime().remove_cluster(name)
        sweep.disown(name)
