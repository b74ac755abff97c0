"""The pods' streaming subresources in a real lab, with the real kubectl
(/usr/bin/kubectl) and the official Python client: logs (-f), exec (exit
codes, stdin), cp, and the Python client's exec and port-forward. The API
server (first control-plane node) proxies logs and exec to the pod's node
agent, and port-forward to the pod's IP (emu.apiserver.streaming)."""

from __future__ import annotations

import queue
import subprocess
import threading

import pytest

from tests import labs
from tests.integration import helpers
from tests.integration.helpers import KUBECTL, skip_without_kubectl

# Two nodes: the API server's node reaches the pod on the other through its agent.
LAB = labs.load("stream")


def kubectl(*argv: str, **options) -> subprocess.CompletedProcess:
    """helpers.kubectl with its output in bytes (what cp and exec carry)."""
    return helpers.kubectl(*argv, text=False, **options)


@pytest.fixture(scope="module")
def cluster(make_cluster):
    skip_without_kubectl()
    return make_cluster(LAB, "stream")


@pytest.fixture(scope="module")
def context(cluster) -> str:
    return f"emu-{cluster.name}"


def test_exec_runs_in_the_pod_with_its_exit_code_and_stdin(cluster, context):
    assert kubectl("exec", "web", "--", "hostname", context=context).stdout == b"web\n"
    # a pod on the API server's own node: its agent is asked from the node's own address
    assert kubectl("exec", "beside", "--", "hostname", context=context).stdout == b"beside\n"
    failed = kubectl("exec", "web", "--", "sh", "-c", "echo no >&2; exit 3", context=context, check=False)
    assert failed.returncode == 3 and b"no\n" in failed.stderr
    assert kubectl("exec", "-i", "web", "--", "cat", context=context, stdin="one\ntwo\n").stdout == b"one\ntwo\n"
    pod_ip = cluster.state().pods["default/web"].ip
    inside = kubectl("exec", "web", "--", "ip", "-4", "-o", "addr", "show", "eth0", context=context).stdout
    assert f" {pod_ip}/".encode() in inside  # its own network namespace


def test_logs_show_requests_and_follow_new_ones(cluster, context):
    kubectl("exec", "web", "--", "curl", "-sf", "http://127.0.0.1:8080/hostname?first", context=context)
    assert b"/hostname?first" in kubectl("logs", "web", context=context).stdout
    assert kubectl("logs", "web", "-c", "netexec", "--tail=1", context=context).stdout.count(b"\n") == 1
    follow = subprocess.Popen([KUBECTL, "--context", context, "logs", "-f", "web", "--tail=1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follow.stdout], daemon=True).start()
    try:
        assert b"/hostname?first" in lines.get(timeout=30)
        kubectl("exec", "web", "--", "curl", "-sf", "http://127.0.0.1:8080/hostname?second", context=context)
        assert b"/hostname?second" in lines.get(timeout=30)  # a line written after kubectl began to follow
    finally:
        follow.kill()
        follow.wait()


def test_cp_into_and_out_of_a_pod(cluster, context, tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(b"emu cp\n" * 1000)
    kubectl("cp", str(source), "web:/tmp/emu-cp-test.txt", context=context)
    assert kubectl("exec", "web", "--", "wc", "-c", "/tmp/emu-cp-test.txt", context=context).stdout.split()[0] == b"7000"
    back = tmp_path / "out.txt"
    kubectl("cp", "web:/tmp/emu-cp-test.txt", str(back), context=context)
    assert back.read_bytes() == source.read_bytes()


def test_python_client_exec_and_portforward(cluster, context):
    from kubernetes import client, config
    from kubernetes.stream import portforward, stream

    api = client.CoreV1Api(config.new_client_from_config(context=context))
    resp = stream(api.connect_get_namespaced_pod_exec, "web", "default", command=["sh", "-c", "hostname; exit 4"],
                  stdin=False, stdout=True, stderr=True, tty=False, _preload_content=False)
    resp.run_forever(timeout=30)
    assert resp.read_stdout() == "web\n" and resp.returncode == 4

    pf = portforward(api.connect_get_namespaced_pod_portforward, "web", "default", ports="8080")
    sock = pf.socket(8080)
    sock.settimeout(30)
    sock.sendall(b"GET /hostname HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    sock.close()
    assert data.split(b"\r\n")[0].endswith(b" 200 OK") and data.endswith(b"\r\n\r\nweb")


def test_the_node_agents_streams_answer_the_api_servers_node_only(cluster):
    # Another node (w1's own agent asked from w1) is refused: only the API server may run commands in pods.
    state = cluster.state()
    w1 = next(n for n in state.nodes if n.name == "w1")
    url = f"http://{w1.node_ip}:10250/exec/default/web/netexec?command=id"
    result = cluster.runtime.exec(w1.container, ["curl", "-s", url])
    assert "may not ask for pods' streams" in result.output


def test_kubectl_port_forward_reaches_the_pod_from_the_host(cluster, context):
    import re
    import urllib.request

    proc = subprocess.Popen([KUBECTL, "--context", context, "port-forward", "pod/web", ":8080"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        found = re.search(r"127\.0\.0\.1:(\d+) -> 8080", lines.get(timeout=30))
        assert found
        for _ in range(2):
            with urllib.request.urlopen(f"http://127.0.0.1:{found.group(1)}/hostname", timeout=30) as answer:
                assert answer.read() == b"web"
    finally:
        proc.kill()
        proc.wait()


def test_rbac_reading_logs_is_not_running_commands(cluster, context, tmp_path):
    # A service account allowed to read pods and their logs, and to `get` pods/exec (as `view`-like
    # roles grant), but not to `create` pods/exec: its logs work, its exec is Forbidden.
    from emu.apiserver.auth import issue_token

    role = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: log-reader, namespace: default}
rules:
  - {apiGroups: [""], resources: [pods, pods/log, pods/exec], verbs: [get, list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: log-reader, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: log-reader}
subjects: [{kind: ServiceAccount, name: reader, namespace: default}]
"""
    kubectl("apply", "-f", "-", context=context, stdin=role)
    key = cluster.node_exec("cp", ["cat", "/etc/emu/pki/sa.key"]).output.encode()
    token = issue_token(key, "default", "reader", "uid-reader", [], 600)
    (tmp_path / "empty").write_text("")
    as_reader = [KUBECTL, "--kubeconfig", str(tmp_path / "empty"), "--server", cluster.state().api_endpoint,
                 "--insecure-skip-tls-verify", "--token", token, "-n", "default"]  # fmt: skip
    logs = subprocess.run([*as_reader, "logs", "web"], capture_output=True, text=True, timeout=60, check=False)
    assert logs.returncode == 0 and "netexec" in logs.stdout
    refused = subprocess.run([*as_reader, "exec", "web", "--", "true"], capture_output=True, text=True, timeout=60, check=False,
                             stdin=subprocess.DEVNULL)  # fmt: skip
    assert refused.returncode != 0
    assert ('pods "web" is forbidden: User "system:serviceaccount:default:reader" cannot create resource '
            '"pods/exec" in API group "" in the namespace "default"') in refused.stderr
