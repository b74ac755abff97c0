"""A realistic app from plain Kubernetes manifests (manifests/shop.yaml: a frontend
Deployment behind a NodePort service, a backend StatefulSet behind a headless
service, a ConfigMap as env and files), brought up with `emu up` (the topology
names the manifests), its flows checked with real requests and DNS lookups,
`emu get` checked against what runs, then `emu delete -f` and `emu apply -f`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emu.api import manifests
from emu.cli import main
from tests.integration.helpers import curl

HERE = Path(__file__).parent / "manifests"
SHOP = HERE / "shop.yaml"


@pytest.fixture(scope="module")
def shop(make_cluster):
    return make_cluster(HERE / "lab.yaml", "manifests")


def frontend_pods(state) -> list:
    return sorted((p for p in state.pods.values() if p.owner == "Deployment/frontend"), key=lambda p: p.name)


def get(cluster, capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(["get", *args, "--name", cluster.name]) == 0
    return capsys.readouterr().out


def test_statefulset_pods_answer_by_their_stable_dns_names(shop):
    state = shop.state()
    frontend = frontend_pods(state)[0].key
    for ordinal in (0, 1):
        assert curl(shop, frontend, f"http://backend-{ordinal}.backend:8080/hostname") == f"backend-{ordinal}"
    # The headless service's name: every ready backend pod, no virtual IP.
    addresses = shop.exec(frontend, ["getent", "ahostsv4", "backend"]).output.split()
    assert {state.pods["shop/backend-0"].ip, state.pods["shop/backend-1"].ip} <= set(addresses)
    assert shop.exec("shop/backend-1", ["hostname", "-f"]).output.strip() == "backend-1.backend.shop.svc.cluster.local"


def test_frontend_is_reached_through_its_cluster_ip_and_node_port(shop):
    state = shop.state()
    names = {p.name for p in frontend_pods(state)}
    assert curl(shop, "shop/backend-0", "http://frontend/hostname") in names
    assert curl(shop, "shop/backend-0", "http://frontend.shop.svc.cluster.local/hostname") in names
    ip = shop.run_external("internet")
    for node in state.nodes:  # NodePort 30480 on every node, from outside the cluster
        answer = shop.runtime.exec(f"{shop.name}-internet", ["curl", "-sS", "--max-time", "5",
                                                             f"http://{node.node_ip}:30480/hostname"])  # fmt: skip
        assert answer.output.strip() in names, (node.name, answer.output)
    assert ip


def test_the_running_containers_see_the_config_map(shop):
    state = shop.state()
    for pod in frontend_pods(state):
        node = state.node(pod.node).container
        pid = shop.runtime.exec(node, ["cat", f"/run/emu/pods/{pod.netns}/web.pid"]).output.strip()
        environ = shop.runtime.exec(node, ["cat", f"/proc/{pid}/environ"]).output.split("\0")
        assert "GREETING=hello from the config map" in environ
        assert "BACKEND_URL=http://backend-0.backend:8080" in environ  # $(BACKEND_HOST) expanded
        assert f"MY_POD_IP={pod.ip}" in environ
        # The process's own view of its filesystem: the ConfigMap's keys as files, read-only.
        properties = shop.runtime.exec(node, ["cat", f"/proc/{pid}/root/etc/shop/shop.properties"]).output
        assert "currency=EUR" in properties
        write = shop.exec(pod.key, ["sh", "-c", "echo x > /etc/shop/GREETING"])
        assert not write.ok and "Read-only file system" in write.output


def test_statefulset_pods_started_in_order(shop):
    state = shop.state()
    pods = {p.name: p for p in state.pods.values() if p.owner == "StatefulSet/backend"}
    started = {}
    for name, pod in pods.items():
        node = state.node(pod.node).container
        started[name] = int(shop.runtime.exec(node, ["stat", "-c", "%Y", f"/run/emu/pods/{pod.netns}/api.pid"]).output)
    # backend-1 waited for backend-0 to be ready, which its probe's initialDelaySeconds: 2 holds back.
    assert started["backend-1"] >= started["backend-0"] + 1, started


def test_get_prints_what_runs(shop, capsys):
    state = shop.state()
    lines = get(shop, capsys, "pods", "-n", "shop", "-o", "wide").splitlines()
    assert lines[0].split()[:7] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {p.name for p in state.pods.values() if p.namespace == "shop"}
    for name, row in rows.items():
        pod = state.pods[f"shop/{name}"]
        assert row[1:3] == ["1/1", "Running"] and row[5:7] == [pod.ip, pod.node]
    endpoints = json.loads(get(shop, capsys, "endpoints", "backend", "-n", "shop", "-o", "json"))
    [subset] = endpoints["subsets"]
    assert sorted((a["hostname"], a["ip"]) for a in subset["addresses"]) == [
        (f"backend-{i}", state.pods[f"shop/backend-{i}"].ip) for i in (0, 1)
    ]
    service = json.loads(get(shop, capsys, "svc", "frontend", "-n", "shop", "-o", "json"))
    assert service["spec"]["clusterIP"] == state.services["shop/frontend"].cluster_ip
    assert service["spec"]["ports"][0]["nodePort"] == 30480
    deployments = get(shop, capsys, "deploy", "-A").splitlines()
    assert any(line.split()[:5] == ["shop", "frontend", "2/2", "2", "2"] for line in deployments), deployments
    pod = json.loads(get(shop, capsys, "pod", "backend-0", "-n", "shop", "-o", "json"))
    assert pod["status"]["podIP"] == state.pods["shop/backend-0"].ip
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"


def test_daemonsets_follow_node_selectors_and_taints(shop):
    daemonsets = manifests.read_manifests([str(HERE / "daemonsets.yaml")])
    manifests.apply(shop, daemonsets)
    state = shop.state()
    placed = {owner: sorted(p.node for p in state.pods.values() if p.owner == owner)
              for owner in ("DaemonSet/node-probe", "DaemonSet/ssd-only")}  # fmt: skip
    assert placed == {"DaemonSet/node-probe": ["worker", "worker2"], "DaemonSet/ssd-only": ["worker"]}
    for pod in state.pods.values():
        if pod.owner == "DaemonSet/node-probe":  # each answers on its pod IP from its own node
            assert shop.node_exec(pod.node, ["curl", "-sS", f"http://{pod.ip}:9000/hostname"]).output == pod.name
    _, deleted, missing = manifests.delete(shop, daemonsets)
    assert len(deleted) == 2 and not missing
    assert not [p for p in shop.state().pods.values() if p.owner and p.owner.startswith("DaemonSet/")]


def test_network_policy_and_ingress_from_manifests(shop):
    edge = manifests.read_manifests([str(HERE / "shop-edge.yaml")])
    manifests.apply(shop, edge)
    state = shop.state()
    frontend = frontend_pods(state)[0].key
    assert curl(shop, frontend, "http://backend-0.backend:8080/hostname") == "backend-0"  # allowed
    blocked = shop.exec("shop/visitor", ["curl", "-sS", "--max-time", "3", "http://backend-0.backend:8080/hostname"])
    # The policy lets only the frontend in: refused (emu's policy REJECT, curl's exit 7, "Couldn't
    # connect"), not a name the visitor could not resolve (6) nor a timeout (28).
    assert blocked.exit_code == 7, (blocked.exit_code, blocked.output)
    address = state.services["ingress-nginx/ingress-nginx-controller"].load_balancer_ip
    node = state.nodes[1].name
    answer = shop.node_exec(node, ["curl", "-sS", "--max-time", "5", "-H", "Host: shop.example.com", f"http://{address}/hostname"])
    assert answer.output in {p.name for p in frontend_pods(state)}, answer.output
    _, deleted, missing = manifests.delete(shop, edge)
    assert len(deleted) == 3 and not missing
    assert curl(shop, "shop/backend-1", "http://backend-0.backend:8080/hostname") == "backend-0"  # open again


def test_delete_removes_what_the_file_made_and_apply_brings_it_back(shop, capsys):
    assert main(["delete", "-f", str(SHOP), "--name", shop.name]) == 0
    assert 'statefulset.apps "backend" deleted' in capsys.readouterr().out
    state = shop.state()
    assert not [p for p in state.pods.values() if p.namespace == "shop"]
    assert not [s for s in state.services if s.startswith("shop/")]
    node = state.nodes[1].container
    assert not shop.runtime.exec(node, ["sh", "-c", "ls /var/lib/emu/volumes/ 2>/dev/null | grep shop"]).output
    lookup = shop.runtime.exec(node, ["dig", "+short", "@10.96.0.10", "backend-0.backend.shop.svc.cluster.local"])
    assert lookup.output.strip() == ""

    assert main(["apply", "-f", str(SHOP), "--name", shop.name, "-q"]) == 0
    assert "deployment.apps/frontend created" in capsys.readouterr().out
    state = shop.state()
    assert curl(shop, frontend_pods(state)[0].key, "http://backend-1.backend:8080/hostname") == "backend-1"
