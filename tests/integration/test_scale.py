"""A 20-node lab converges: every pod ready and counted ready on every node,
every service's rules on every node, and a readiness change reaches them all.
How fast is measured in bench/scale.py and bench/propagation.py, not here."""

from __future__ import annotations

import time

import pytest

NODES = 20


def lab() -> str:
    lines = ["name: twenty", "nodes:", "  - {name: n0, role: control-plane}"]
    lines += [f"  - {{name: n{i}}}" for i in range(1, NODES)]
    lines += [
        "pods:",
        "  - {name: client, node: n1, containers: [{name: c, command: [sleep, infinity]}]}",
        "deployments:",
    ]
    for i in range(10):
        lines += [
            f"  - name: web{i}",
            "    replicas: 4",
            "    template:",
            f"      labels: {{app: web{i}}}",
            "      enableServiceLinks: false",
            "      containers:",
            "        - name: netexec",
            "          workload: netexec",
            "          ports: [{name: http, containerPort: 8080}]",
            "          readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 0.5, failureThreshold: 1}",
        ]
    lines.append("services:")
    lines += [f"  - {{name: web{i}, selector: {{app: web{i}}}, ports: [{{port: 80, targetPort: http}}]}}" for i in range(10)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def twenty(make_cluster):
    return make_cluster(lab(), "twenty")


def test_every_node_counts_every_pod_ready_and_programs_every_service(twenty):
    state = twenty.state()
    assert len(state.nodes) == NODES and len({p.node for p in state.pods.values()}) >= 10
    script = "curl -s --max-time 2 http://127.0.0.1:10250/unready; echo; iptables-save -t nat | grep -c '^-A KUBE-SEP-'"
    outputs = twenty.runtime.parallel(lambda node: twenty.node_exec(node.name, ["sh", "-c", script]).output, state.nodes)
    for node, output in zip(state.nodes, outputs):
        unready, seps = output.split()
        assert unready == "[]", (node.name, unready)
        assert int(seps) >= 2 * 10 * 4, (node.name, seps)  # DNAT and masquerade rule per endpoint


def test_a_readiness_change_reaches_every_node(twenty):
    state = twenty.state()
    pod = min((p for p in state.pods.values() if p.labels.get("app") == "web3"), key=lambda p: p.name)
    address = f"{pod.ip}:8080"
    assert twenty.exec("client", ["curl", "-sS", f"http://{address}/sethealth?status=fail"]).ok

    def everywhere(present: bool) -> bool:
        outputs = twenty.runtime.parallel(
            lambda node: twenty.node_exec(node.name, ["curl", "-s", "--max-time", "2", "http://127.0.0.1:10250/endpoints"]).output,
            state.nodes,
        )
        return all((address in output) == present for output in outputs)

    deadline = time.monotonic() + 20
    while not everywhere(False):
        assert time.monotonic() < deadline, "the failing pod stayed an endpoint on some node"
        time.sleep(0.3)
    assert twenty.exec("client", ["curl", "-sS", f"http://{address}/sethealth?status=ok"]).ok
    deadline = time.monotonic() + 20
    while not everywhere(True):
        assert time.monotonic() < deadline, "the recovered pod did not come back on every node"
        time.sleep(0.3)
