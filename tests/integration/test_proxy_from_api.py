"""kube-proxy's part of the node agents as a client of the API server
(docs/apiserver.md stage 4; the agents' --proxy-from api, cni.PROXY_FROM_API):
every node's service rules follow the Services and EndpointSlices the API
server holds, with packets as the proof and no `emu` command in between:
- a Service changed through the API (emu's own identity, as the mirror would
  write it) answers on its new port from every node;
- a pod whose readiness probe starts failing (its node's agent writes the pod's
  status, the API server's EndpointSlice controller drops it from the slice)
  leaves the service on every node, and comes back;
- the state file's services are not what the rules are made of: emptied on a
  node, that node still forwards every service;
- the API server down, the rules stay; back, a change made then reaches them.
Waits only bound how long a change may take; how fast it is, bench/ measures."""

from __future__ import annotations

import json
import shlex

import pytest

from emu.node.agent import PID_FILE, STATE_FILE
from emu.node.plan import cni
from tests.waiting import wait_for

LAB = """\
name: proxyapi
nodes:
  - {name: cp, role: control-plane}
  - {name: w1}
  - {name: w2}
pods:
  - name: client
    node: w1
    containers: [{name: shell, command: [sleep, infinity]}]
deployments:
  - name: echo
    replicas: 2
    template:
      labels: {app: echo}
      containers:
        - name: netexec
          workload: netexec
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 0.2, failureThreshold: 1}
services:
  - {name: echo, selector: {app: echo}, ports: [{name: http, port: 80, targetPort: http}]}
"""
NODES = ("cp", "w1", "w2")
SERVER = "^python3 -m emu.apiserver "


@pytest.fixture(scope="module")
def cluster(make_module_cluster):
    switch = pytest.MonkeyPatch()
    switch.setattr(cni, "PROXY_FROM_API", True)  # (the default; kept should it be switched off)
    try:
        yield make_module_cluster(LAB, "proxyapi")
    finally:
        switch.undo()


def as_emu(cluster, method: str, path: str, body: dict | None = None) -> dict:
    """A request to the API server as emu's own identity (emu-controller, which the mirror lets write Services)."""
    pki = cni.PKI_DIR
    argv = ["curl", "-sS", "--fail-with-body", "--max-time", "20", "--cacert", f"{pki}/ca.crt", "--cert",
            f"{pki}/emu-controller.crt", "--key", f"{pki}/emu-controller.key", "-X", method,
            f"https://127.0.0.1:{cni.API_PORT}{path}"]  # fmt: skip
    if body is not None:
        argv += ["-H", "Content-Type: application/merge-patch+json", "--data-binary", json.dumps(body)]
    result = cluster.node_exec("cp", argv)
    assert result.ok, result.output
    return json.loads(result.output)


def from_node(cluster, node: str, url: str) -> str:
    """What `url` answers from the node itself (its own traffic goes through its service rules)."""
    result = cluster.node_exec(node, ["curl", "-sS", "--max-time", "2", url])
    return result.output.strip() if result.ok else "(failed)"


def hostnames_from(cluster, node: str, url: str, count: int = 8) -> set[str]:
    return {from_node(cluster, node, url) for _ in range(count)}


def echo_pods(cluster) -> list:
    return sorted((p for p in cluster.state().pods.values() if p.labels.get("app") == "echo"), key=lambda p: p.name)


def everywhere(cluster, url: str, expected: set[str]) -> bool:
    return all(hostnames_from(cluster, node, url) == expected for node in NODES)


def test_up_waited_for_every_node_to_program_the_apis_view(cluster):
    """`emu up` returned once every agent's rules reflected the API's EndpointSlices of the
    ready pods: the service reaches both pods from every node at once, no waiting here."""
    ip = cluster.state().services["default/echo"].cluster_ip
    names = {p.name for p in echo_pods(cluster)}
    for node in NODES:
        assert hostnames_from(cluster, node, f"http://{ip}/hostname", 12) == names, node
        log = cluster.node_exec(node, ["cat", cni.AGENT_LOG]).output
        assert "synced resourceVersion" in log, f"{node}'s agent did not sync from the API server"


def test_a_service_changed_through_the_api_reaches_every_node(cluster):
    ip = cluster.state().services["default/echo"].cluster_ip
    service = as_emu(cluster, "GET", "/api/v1/namespaces/default/services/echo")
    ports = service["spec"]["ports"] + [{"name": "alt", "port": 8081, "targetPort": "http", "protocol": "TCP"}]
    as_emu(cluster, "PATCH", "/api/v1/namespaces/default/services/echo", {"spec": {"ports": ports}})
    names = {p.name for p in echo_pods(cluster)}
    wait_for(lambda: everywhere(cluster, f"http://{ip}:8081/hostname", names), 30,
             "the port added to the Service through the API did not answer on every node")  # fmt: skip
    changed = as_emu(cluster, "PATCH", "/api/v1/namespaces/default/services/echo",
                     {"spec": {"ports": service["spec"]["ports"]}})  # fmt: skip
    assert [p["port"] for p in changed["spec"]["ports"]] == [80], changed["spec"]["ports"]

    def gone() -> bool:
        # No pod answers on the removed port from any node. (What does answer, if anything,
        # is outside the cluster: with no rule for it the address leaves by the node's default
        # route, and something on the Docker host may accept the connection.)
        answers = {node: from_node(cluster, node, f"http://{ip}:8081/hostname") for node in NODES}
        return not set(answers.values()) & names

    wait_for(gone, 30, "the port removed from the Service through the API still answered")


def test_a_pod_turning_unready_leaves_the_service_on_every_node_and_comes_back(cluster):
    ip = cluster.state().services["default/echo"].cluster_ip
    sick, well = echo_pods(cluster)
    url = f"http://{ip}/hostname"
    assert cluster.exec("client", ["curl", "-sS", f"http://{sick.ip}:8080/sethealth?status=fail"]).ok
    try:
        wait_for(lambda: everywhere(cluster, url, {well.name}), 30,
                 f"pod {sick.name} stayed in the service's rules after its readiness probe failed")  # fmt: skip
    finally:
        assert cluster.exec("client", ["curl", "-sS", f"http://{sick.ip}:8080/sethealth?status=ok"]).ok
    wait_for(lambda: everywhere(cluster, url, {sick.name, well.name}), 30, f"pod {sick.name} did not come back")


def test_a_node_whose_state_file_has_no_services_still_forwards_them(cluster):
    """The services of the state file pushed into each node are not what the rules are made of."""
    ip = cluster.state().services["default/echo"].cluster_ip
    empty = "import json,sys; s=json.load(open(sys.argv[1])); s['services']={}; json.dump(s, open(sys.argv[1], 'w'))"
    script = (f"cp {STATE_FILE} /tmp/state.kept && python3 -c {shlex.quote(empty)} {STATE_FILE} "
              f"&& kill -HUP $(cat {PID_FILE})")
    assert cluster.node_exec("w2", ["sh", "-c", script]).ok
    try:
        log = lambda: cluster.node_exec("w2", ["cat", cni.AGENT_LOG]).output  # noqa: E731
        wait_for(lambda: " 0 services " in log(), 30, "w2's agent did not read the state without services")
        names = {p.name for p in echo_pods(cluster)}
        assert hostnames_from(cluster, "w2", f"http://{ip}/hostname", 12) == names
        endpoints = json.loads(cluster.node_exec("w2", ["curl", "-sS", "http://127.0.0.1:10250/endpoints"]).output)
        assert sorted(endpoints["default/echo"]["http"]) == sorted(f"{p.ip}:8080" for p in echo_pods(cluster))
    finally:
        cluster.node_exec("w2", ["sh", "-c", f"cp /tmp/state.kept {STATE_FILE} && touch {STATE_FILE}"])


def test_rules_stay_while_the_api_server_is_down_and_a_change_after_it_is_back_arrives(cluster):
    ip = cluster.state().services["default/echo"].cluster_ip
    names = {p.name for p in echo_pods(cluster)}
    pid = cluster.node_exec("cp", ["pgrep", "-f", SERVER]).output.split()[0]
    supervisor = cluster.node_exec("cp", ["ps", "-o", "ppid=", "-p", pid]).output.strip()
    assert cluster.node_exec("cp", ["kill", "-STOP", supervisor]).ok
    try:
        assert cluster.node_exec("cp", ["kill", "-9", pid]).ok
        wait_for(lambda: not cluster.node_exec("cp", ["pgrep", "-f", SERVER]).ok, 10, "the API server did not end")
        assert everywhere(cluster, f"http://{ip}/hostname", names)
    finally:
        assert cluster.node_exec("cp", ["kill", "-CONT", supervisor]).ok
    ports = as_emu_when_up(cluster)
    as_emu(cluster, "PATCH", "/api/v1/namespaces/default/services/echo",
           {"spec": {"ports": ports + [{"name": "late", "port": 8082, "targetPort": "http", "protocol": "TCP"}]}})
    wait_for(lambda: everywhere(cluster, f"http://{ip}:8082/hostname", names), 60,
             "a Service change made once the API server was back did not reach every node")  # fmt: skip
    assert everywhere(cluster, f"http://{ip}/hostname", names)


def as_emu_when_up(cluster) -> list[dict]:
    """The echo Service's ports, once the API server answers again."""
    found: list = []

    def answered() -> bool:
        pki, path = cni.PKI_DIR, "/api/v1/namespaces/default/services/echo"
        result = cluster.node_exec("cp", ["curl", "-sS", "--fail", "--max-time", "5", "--cacert", f"{pki}/ca.crt",
                                          "--cert", f"{pki}/emu-controller.crt", "--key", f"{pki}/emu-controller.key",
                                          f"https://127.0.0.1:{cni.API_PORT}{path}"])  # fmt: skip
        if result.ok:
            found.append(json.loads(result.output)["spec"]["ports"])
        return result.ok

    wait_for(answered, 60, "the API server was not started again")
    return found[-1]
