"""up, apply, down and failure: what a user sees of a cluster's life."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from emu.control.cluster import Cluster
from emu.errors import EmuError
from emu.api.topology.load import load_text
from tests import labs

SMALL = labs.load("small")


def emu(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "emu.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def docker_snapshot(runtime, name: str | None = None) -> tuple:
    """The engine's containers and networks; with `name`, those named after that
    cluster only (other test runs may share the engine meanwhile)."""
    containers = [(c["Id"], " ".join(c["Names"])) for c in runtime.api.containers(all=True)]
    networks = [(n["Id"], n["Name"]) for n in runtime.api.networks()]
    keep = (lambda text: name in text) if name else (lambda text: True)
    return sorted(i for i, text in containers if keep(text)), sorted(i for i, text in networks if keep(text))


def pids(cluster: Cluster, pod: str) -> str:
    state = cluster.state()
    found = state.pods[f"default/{pod}"] if "/" not in pod else state.pods[pod]
    return cluster.node_exec(found.node, ["sh", "-c", f"ip netns pids {found.netns} | sort"]).output


def test_up_twice_changes_nothing(make_cluster):
    cluster = make_cluster(SMALL, "twice")
    before = cluster.state()
    keeper_pids = pids(cluster, "keeper")
    topology = load_text(SMALL).model_copy(update={"name": cluster.name})
    change = cluster.up(topology)
    assert not change.changed
    assert cluster.state().to_json() == before.to_json()
    assert pids(cluster, "keeper") == keeper_pids


def test_apply_converges_and_leaves_other_pods_alone(make_cluster, tmp_path):
    cluster = make_cluster(SMALL, "apply")
    before = cluster.state()
    keeper_pids = pids(cluster, "keeper")
    changed = SMALL.replace("replicas: 2", "replicas: 1") + (
        "  - name: extra\n    replicas: 1\n    template:\n"
        "      containers: [{name: app, workload: netexec, ports: [{containerPort: 8080}]}]\n"
    )
    path = tmp_path / "small.yaml"
    path.write_text(changed.replace("name: small", f"name: {cluster.name}", 1))
    result = emu("apply", str(path))
    assert result.returncode == 0, result.stderr
    assert "1 pods added, 1 removed" in result.stdout

    after = cluster.state()
    assert after.pods["default/keeper"] == before.pods["default/keeper"]
    assert pids(cluster, "keeper") == keeper_pids  # untouched: same processes
    removed = set(before.pods) - set(after.pods)
    added = set(after.pods) - set(before.pods)
    assert len(removed) == 1 and len(added) == 1
    [gone] = [before.pods[k] for k in removed]
    [new] = [after.pods[k] for k in added]
    namespaces = cluster.node_exec(gone.node, ["ip", "netns", "list"]).output
    assert gone.netns not in namespaces.split()
    links = cluster.node_exec(gone.node, ["ip", "-o", "link"]).output
    assert gone.host_veth not in links
    answer = cluster.exec("keeper", ["curl", "-sS", "--max-time", "5", f"http://{new.ip}:8080/hostname"])
    assert answer.output == new.name
    # Applying the same file again is a no-op.
    again = emu("apply", str(path))
    assert again.returncode == 0 and "already up to date" in again.stdout


def test_down_leaves_nothing_behind(runtime, tmp_path, new_name):
    name = new_name("down")
    path = tmp_path / "lab.yaml"
    path.write_text(SMALL.replace("name: small", f"name: {name}", 1))
    try:
        up = emu("up", str(path), "--quiet")
        assert up.returncode == 0, up.stderr
        assert runtime.cluster_containers(name)
        down = emu("down", name)
        assert down.returncode == 0, down.stderr
        assert "2 containers, 1 networks" in down.stdout
        assert runtime.cluster_containers(name) == []
        assert runtime.cluster_networks(name) == []
        assert not [c for c in runtime.api.containers(all=True) if name in c["Names"][0]]
    finally:
        runtime.remove_cluster(name)


def test_failed_up_removes_what_it_created(runtime, new_name):
    # A node image without iproute2: nodes start, then the pod plan fails.
    name = new_name("fail")
    from emu.control.runtime.images import ImageBuilder

    base = ImageBuilder(runtime).base_image()
    topology = load_text(SMALL).model_copy(update={"name": name, "node_image": base})
    cluster = Cluster(name, runtime=runtime)
    try:
        with pytest.raises(EmuError, match="the plan failed"):
            cluster.up(topology)
        assert runtime.cluster_containers(name) == []
        assert runtime.cluster_networks(name) == []
    finally:
        runtime.remove_cluster(name)


BAD_TOPOLOGIES = {
    "unknown key": ("nodes:\n  - name: a\n    rol: worker\n", "lab.yaml:4:5: nodes[0].rol: unknown key 'rol'"),
    "duplicate node": ("nodes:\n  - name: a\n  - name: a\n", "nodes[1].name: node name 'a' is used twice"),
    "not a DNS label": ("nodes:\n  - name: Node_1\n", "nodes[0].name: 'Node_1' is not a DNS-1123 label"),
    "overlap": (
        "networking: {podSubnet: 10.0.0.0/8}\nnodes:\n  - name: a\n",
        "serviceSubnet 10.96.0.0/16 overlaps podSubnet 10.0.0.0/8",
    ),
    "too small": ("networking: {podSubnet: 10.244.0.0/26}\nnodes:\n  - name: a\n", "smaller than one node's /24"),
    "unknown node": (
        "nodes:\n  - name: a\npods:\n  - name: p\n    node: b\n    containers: [{name: c, workload: netexec}]\n",
        "lab.yaml:6:5: pods[0].node: pod 'p' is pinned to node 'b'",
    ),
    "bad port": (
        "nodes:\n  - name: a\npods:\n  - name: p\n    containers:\n      - name: c\n        workload: netexec\n"
        "        ports: [{containerPort: 70000}]\n",
        "port 70000 is out of range",
    ),
    "too many pods": (
        "nodes:\n  - name: a\ndeployments:\n  - name: d\n    replicas: 254\n    template:\n"
        "      containers: [{name: c, workload: netexec}]\n",
        "254 pods are not pinned to a node",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TOPOLOGIES))
def test_bad_topology_is_refused_and_docker_untouched(runtime, tmp_path, case, new_name):
    text, expected = BAD_TOPOLOGIES[case]
    path = tmp_path / "lab.yaml"
    name = new_name("bad")
    path.write_text(f"name: {name}\n" + text)
    before = docker_snapshot(runtime, name)
    result = emu("up", "lab.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr
    assert docker_snapshot(runtime, name) == before == ([], [])


def test_status_json_and_exec_from_another_process(lab):
    import json

    result = emu("status", "--name", lab.name, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [n["podCIDR"] for n in data["nodes"]] == ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
    pods = {p["name"]: p for p in data["pods"]}
    assert pods["web"]["containers"] == [
        {"name": "server", "state": "Running", "ready": True, "restartCount": 0, "exitCode": None},
        {"name": "sidecar", "state": "Running", "ready": True, "restartCount": 0, "exitCode": None},
    ]
    web_ip = pods["web"]["podIP"]
    answer = emu("exec", "--name", lab.name, "client", "--", "curl", "-sS", "--max-time", "5", f"http://{web_ip}:8080/hostname")
    assert answer.returncode == 0 and answer.stdout == "web"
    sidecar = emu("exec", "--name", lab.name, "web", "-c", "sidecar", "--", "curl", "-sS", "http://localhost:8080/echo?msg=hi")
    assert sidecar.returncode == 0 and sidecar.stdout == "hi"


def test_unknown_pod_is_a_clear_error(lab):
    result = emu("exec", "--name", lab.name, "nosuchpod", "--", "true")
    assert result.returncode == 1
    assert "no pod 'nosuchpod'" in result.stderr and "Traceback" not in result.stderr


def test_fixed_cluster_network_and_load_balancer_pool(make_cluster, runtime):
    text = SMALL.replace("  - name: keeper\n", "  - name: keeper\n    labels: {app: keeper}\n") + (
        "networking:\n  clusterNetwork: 172.31.250.0/24\n  loadBalancerPool: 172.31.250.100-172.31.250.101\n"
        "services:\n  - name: lb\n    type: LoadBalancer\n    selector: {app: keeper}\n"
        "    ports: [{port: 80, targetPort: 8080}]\n"
    )
    cluster = make_cluster(text, "fixednet")
    state = cluster.state()
    assert state.network_subnet == "172.31.250.0/24"
    assert state.nodes[0].node_ip == "172.31.250.2"
    assert state.services["default/lb"].load_balancer_ip == "172.31.250.100"
    # Real packets: from a container on that network, the pool's first address and the
    # first node's address (the service's NodePort) reach the service's pod.
    outside = cluster.run_external("outside")
    assert ipaddress.IPv4Address(outside) in ipaddress.IPv4Network("172.31.250.0/24")
    node_port = state.services["default/lb"].ports[0].node_port
    for url in ("http://172.31.250.100/hostname", f"http://172.31.250.2:{node_port}/hostname"):
        reply = cluster.runtime.exec(f"{cluster.name}-outside", ["curl", "-sS", "--max-time", "5", url])
        assert reply.ok and reply.output.strip() == "keeper", (url, reply.output)
    # A second cluster on the same subnet is refused before anything is made.
    clash = Cluster(cluster.name + "x", runtime=runtime)
    with pytest.raises(EmuError, match="overlaps Docker network"):
        clash.up(load_text(text).model_copy(update={"name": cluster.name + "x"}))
    assert not clash.exists


def test_a_host_port_in_use_is_refused_before_anything_is_made(runtime, new_name):
    import socket

    name = new_name("hostport")
    with socket.socket() as holder:  # something of this machine's listening on the port
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        text = SMALL.replace("name: small", f"name: {name}").replace(
            "  - {name: cp, role: control-plane}\n",
            f"  - {{name: cp, role: control-plane, extraPortMappings: [{{containerPort: 80, hostPort: {port}}}]}}\n",
        )
        with pytest.raises(EmuError, match=rf"host port {port}/TCP \(node cp, extraPortMappings\) is already in use"):
            Cluster(name, runtime=runtime).up(load_text(text))
    assert name not in runtime.cluster_names()
