"""Churn: pods, deployments and services made and removed, round after round,
with traffic through them; afterwards nothing they had is left on any node:
no namespace, veth, file, process, rule, conntrack entry or address.
EMU_CHURN_ROUNDS sets how many rounds it churns (default 6: rounds of a fixed
seed, so every run churns the same; the first 6 already delete pods by hand,
leave a service selecting nothing, rename the deployment and scale it to 0);
EMU_CHURN_SECONDS makes it churn at least that long (a soak)."""

from __future__ import annotations

import json
import os
import random
import time

import pytest

from emu.api.topology.load import load_text
from tests import labs

BASE = labs.load("churn")
NETEXEC = "{name: netexec, workload: netexec, ports: [{name: http, containerPort: 8080}]}"


def topology(rng: random.Random, round_: int) -> str:
    """The base lab plus a random handful of pods, a deployment and services."""
    lines = [BASE]
    pods = [f"  - {{name: p{round_}-{i}, labels: {{app: a{i % 3}}}, containers: [{NETEXEC}]}}" for i in range(rng.randint(0, 6))]
    lines += pods
    lines.append("deployments:")
    lines.append(f"  - {{name: d{rng.randint(0, 1)}, replicas: {rng.randint(0, 5)}, template: {{labels: {{app: a0}}, containers: [{NETEXEC}]}}}}")
    services = [
        f"  - {{name: s{round_}-{app}, selector: {{app: a{app}}}, ports: [{{port: 80, targetPort: 8080}}]}}"
        for app in range(3)
        if rng.random() < 0.7
    ]
    if services:
        lines.append("services:")
        lines += services
    return "\n".join(lines) + "\n"


def node_holds(cluster, node: str) -> dict[str, set[str]]:
    # stderr goes nowhere: a node without pods has none of these folders, and
    # Docker interleaves the two streams of an exec in no fixed order, so an
    # ls error could split a line ("...directoryrun").
    script = (
        "exec 2>/dev/null; echo netns $(ls /run/netns); echo ports $(ls /sys/class/net/cni0/brif);"
        "echo scripts $(ls /etc/emu/containers); echo run $(ls /run/emu/pods); echo files $(ls /etc/netns);"
        "echo logs $(ls /var/log/emu/pods); echo wrappers $(pgrep -f '[e]mu-container' | wc -l);"
        "echo chains $(iptables-save -t nat | grep -o '^:KUBE-SVC-[A-Z0-9]*' | sort -u);"
        "echo conntrack $(conntrack -L | grep -o 'src=10\\.244\\.[0-9.]*' | sort -u | cut -d= -f2)"
    )
    output = cluster.node_exec(node, ["sh", "-c", script]).output
    return {line.split(" ")[0]: set(line.split()[1:]) for line in output.splitlines() if line.strip()}


def client_node_endpoints(cluster, service) -> set[str]:
    """The endpoint IPs the client's node (w1) programs for the service now, as its agent says."""
    result = cluster.node_exec("w1", ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:10250/endpoints"])
    assert result.ok, result.output
    ports = json.loads(result.output).get(service.key, {})
    return {endpoint.rsplit(":", 1)[0] for endpoints in ports.values() for endpoint in endpoints}


def check_service(cluster, state, service, where: str) -> int:
    """One request through the service right after a change: it must be answered by
    one of the pods the service selects; with none, refused. It may fail only in the
    window a change explains, while the client's node does not program every selected
    pod yet (a readiness report on its way); then, once it does (15 s at most), the
    request is sent again and must be answered. Returns 1 if there was one to answer."""
    selected = {p.ip: p.name for p in state.pods.values() if service.selects(p)}
    url = f"http://{service.cluster_ip}/hostname"
    result = cluster.exec("client", ["curl", "-sS", "--max-time", "2", url])
    what = f"{where}: service {service.key} selecting {sorted(selected.values())}"
    if not selected:
        assert result.exit_code == 7, f"{what}: not refused: {result.exit_code} {result.output}"
        return 0
    if not result.ok:
        assert client_node_endpoints(cluster, service) != set(selected), (
            f"{what}: failed with every selected pod programmed on w1: {result.output}")
        deadline = time.monotonic() + 15
        while client_node_endpoints(cluster, service) != set(selected):
            assert time.monotonic() < deadline, f"{what}: w1 did not program every selected pod within 15 s"
            time.sleep(0.2)
        result = cluster.exec("client", ["curl", "-sS", "--max-time", "2", url])
        assert result.ok, f"{what}: failed with every selected pod programmed on w1: {result.output}"
    assert result.output.strip() in selected.values(), f"{what}: answered by {result.output.strip()!r}"
    return 1


@pytest.fixture(scope="module")
def churn(make_module_cluster):
    return make_module_cluster(BASE, "churn")


def test_nothing_is_left_over_after_churn(churn):
    rng = random.Random(20261128)
    seconds = float(os.environ.get("EMU_CHURN_SECONDS", "0"))
    least = int(os.environ.get("EMU_CHURN_ROUNDS", "6"))
    deadline, rounds, answered, deleted = time.monotonic() + seconds, 0, 0, 0
    before = {node.name: node_holds(churn, node.name) for node in churn.state().nodes}
    while time.monotonic() < deadline or rounds < least:
        text = topology(rng, rounds).replace("name: churn", f"name: {churn.name}", 1)
        churn.apply(load_text(text))  # returns once every node programmed it and the pods are ready
        state = churn.state()
        for service in state.services.values():
            if service.name.startswith("s") and service.cluster_ip:
                answered += check_service(churn, state, service, f"round {rounds}")
        # Some pods deleted by hand in between, as `kubectl delete pod` would.
        victims = [p.key for p in state.pods.values() if p.name.startswith("p") and rng.random() < 0.2]
        for key in victims:
            churn.delete_pod(key)
        deleted += len(victims)
        rounds += 1
    assert answered > 0, "no churned service selected a pod: the churn proved nothing"
    assert deleted > 0, "no pod was deleted by hand: churn longer (EMU_CHURN_ROUNDS)"
    churn.apply(load_text(BASE.replace("name: churn", f"name: {churn.name}", 1)))
    state = churn.state()
    assert sorted(state.pods) == ["default/client"]
    assert sorted(state.services) == ["default/kubernetes"]
    for node in state.nodes:
        holds = node_holds(churn, node.name)
        netns = {p.netns for p in state.pods_on(node.name)}
        where = f"node {node.name} after {rounds} rounds"
        assert holds["netns"] == netns, where
        assert holds["ports"] == {p.host_veth for p in state.pods_on(node.name)}, where
        for kind in ("scripts", "run", "files", "logs"):
            assert holds[kind] <= netns, f"{where}: {kind} of removed pods left: {holds[kind] - netns}"
        assert holds["wrappers"] == {str(sum(len(p.containers) for p in state.pods_on(node.name)))}, where
        assert holds["chains"] == before[node.name]["chains"], f"{where}: service chains left"
        live = {p.ip for p in state.pods.values()} | {n.gateway for n in state.nodes}  # bridges: the nodes' own
        assert holds["conntrack"] <= live, f"{where}: conntrack entries of removed pods: {holds['conntrack'] - live}"
