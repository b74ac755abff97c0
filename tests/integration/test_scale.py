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
def twenty(make_module_cluster):
    return make_module_cluster(lab(), "twenty")  # 20 nodes: gone when the module is done


def answers(cluster, ip: str, count: int) -> list[str]:
    """The pods that answered `count` requests from the client pod to ip:80 ("(failed)" for a failure)."""
    script = f"for i in $(seq {count}); do curl -sS --max-time 2 http://{ip}/hostname || printf '(failed)'; echo; done"
    return cluster.exec("client", ["sh", "-c", script]).output.split()


def web_pods(state, app: str) -> set[str]:
    return {p.name for p in state.pods.values() if p.labels.get("app") == app}


def test_every_service_answers_from_every_node_and_reaches_every_endpoint(twenty):
    state = twenty.state()
    services = {f"web{i}": state.services[f"default/web{i}"].cluster_ip for i in range(10)}
    # From every node, one request to each service, answered by one of its pods.
    script = "; ".join(f"curl -sS --max-time 2 http://{ip}/hostname || printf '(failed)'; echo" for ip in services.values())
    outputs = twenty.runtime.parallel(lambda node: twenty.node_exec(node.name, ["sh", "-c", script]).output, state.nodes)
    for node, output in zip(state.nodes, outputs):
        for app, answer in zip(services, output.split()):
            assert answer in web_pods(state, app), (node.name, app, answer)
    # From the client pod, 40 requests a service reach each of its 4 pods (all 4 seen but 1 time in 20,000).
    for app, ip in services.items():
        assert set(answers(twenty, ip, 40)) == web_pods(state, app), app


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

    service = state.services["default/web3"].cluster_ip
    others = web_pods(state, "web3") - {pod.name}
    deadline = time.monotonic() + 20
    while not everywhere(False):
        assert time.monotonic() < deadline, "the failing pod stayed an endpoint on some node"
        time.sleep(0.3)
    # Traffic agrees: the service answers from the other three only.
    assert set(answers(twenty, service, 40)) == others
    assert twenty.exec("client", ["curl", "-sS", f"http://{address}/sethealth?status=ok"]).ok
    deadline = time.monotonic() + 20
    while not everywhere(True):
        assert time.monotonic() < deadline, "the recovered pod did not come back on every node"
        time.sleep(0.3)
    assert set(answers(twenty, service, 40)) == others | {pod.name}
