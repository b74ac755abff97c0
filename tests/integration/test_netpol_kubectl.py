"""NetworkPolicy made with the real kubectl, enforced as on a cluster (issue 21): every
node's policy agent lists and watches the API server's NetworkPolicies, Pods and
Namespaces (emu.node.kube.policyfeed), so a policy kubectl applies isolates pods
within moments, a `kubectl label pod` moves a pod in or out of what a policy allows,
and `kubectl delete networkpolicy` opens the way again. Real packets: TCP connections
from the clients' network namespaces to the server, refused (the policy's REJECT)
or answered. The server is emu's pod; the clients are pods made with `kubectl run`
(run by their nodes' kubelets), so kubectl's pods are in policies too, as sources and
as the pods a policy isolates."""

from __future__ import annotations

import json
import subprocess

import pytest

from emu.node.records import PodState
from tests import labs
from tests.integration import helpers
from tests.integration.helpers import skip_without_kubectl
from tests.waiting import wait_for

LAB = labs.load("netpolapi")
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.52"
# "open" when the connection is made, "refused" when a REJECT (or no listener) answers, else what failed.
PROBE = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("open")
except ConnectionRefusedError:
    print("refused")
except OSError as error:
    print(type(error).__name__)
"""
DENY_ALL = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""
ALLOW_CLIENTS = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-allows-clients}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {role: client}}}]
      ports: [{port: http}]
"""


@pytest.fixture(scope="module")
def cluster(make_module_cluster):
    skip_without_kubectl()
    cluster = make_module_cluster(LAB, "netpolapi")
    for name in ("client", "other"):
        kubectl(cluster, "run", name, f"--image={AGNHOST}", "--port=8080", "--", "netexec", "--http-port=8080")
    kubectl(cluster, "wait", "--for=condition=Ready", "pod/client", "pod/other", "--timeout=90s")
    return cluster


def kubectl(cluster, *argv: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    return helpers.kubectl("--request-timeout=30s", *argv, context=f"emu-{cluster.name}", check=check, stdin=stdin)


PLACES: dict[tuple[str, str], tuple[str, str]] = {}


def where(cluster, name: str) -> tuple[str, str]:
    """(node, pod IP) of a pod, as the API server has it (asked once: labels move no pod)."""
    if (cluster.name, name) not in PLACES:
        pod = json.loads(kubectl(cluster, "get", "pod", name, "-o", "json").stdout)
        PLACES[(cluster.name, name)] = pod["spec"]["nodeName"], pod["status"]["podIP"]
    return PLACES[(cluster.name, name)]


def connect(cluster, source: str, target: str, port: int = 8080) -> str:
    """A TCP connection from pod `source`'s network namespace to pod `target`: 'open', 'refused', ..."""
    node, _ = where(cluster, source)
    _, ip = where(cluster, target)
    netns = PodState("default", source, node, "", {}, [], "").netns
    result = cluster.node_exec(node, ["ip", "netns", "exec", netns, "python3", "-c", PROBE, ip, str(port)])
    return result.output.strip().splitlines()[-1] if result.output.strip() else f"exit {result.exit_code}"


def expect(cluster, wanted: dict[tuple[str, str], str], what: str, timeout: float = 30) -> None:
    """Until every (source, target) connection is as `wanted` (the agents apply a change in
    moments; the limit is how long the test waits before it fails)."""
    seen: dict = {}

    def holds() -> bool:
        seen.update({pair: connect(cluster, *pair) for pair in wanted})
        return seen == wanted

    try:
        wait_for(holds, timeout, what, interval=0.1)
    except pytest.fail.Exception:
        logs = {node.name: cluster.node_exec(node.name, ["sh", "-c", "grep -i polic /var/log/emu/agent.log | tail -3"])
                .output for node in cluster.state().nodes}  # fmt: skip
        pytest.fail(f"{what}: wanted {wanted}, saw {seen}; the agents' last policy lines: {logs}")


def test_policies_applied_labelled_and_deleted_with_kubectl_are_enforced(cluster):
    everyone = {("client", "server"): "open", ("other", "server"): "open", ("server", "client"): "open"}
    expect(cluster, everyone, "every pod reaching every pod before any policy")

    kubectl(cluster, "apply", "-f", "-", stdin=DENY_ALL)
    made = json.loads(kubectl(cluster, "get", "networkpolicy", "default-deny", "-o", "json").stdout)
    assert "emu.io/managed-by" not in (made["metadata"].get("annotations") or {})  # kubectl's, not emu's
    # emu's pod and kubectl's pods alike are isolated for ingress.
    expect(cluster, {pair: "refused" for pair in everyone}, "default-deny refusing every connection")

    kubectl(cluster, "apply", "-f", "-", stdin=ALLOW_CLIENTS)
    kubectl(cluster, "label", "pod", "client", "role=client")
    expect(cluster, {("client", "server"): "open", ("other", "server"): "refused", ("server", "client"): "refused"},
           "the labelled client let in, the other still refused")  # fmt: skip

    kubectl(cluster, "label", "pod", "client", "role-")
    expect(cluster, {("client", "server"): "refused", ("other", "server"): "refused"}, "the label removed: refused")
    kubectl(cluster, "label", "pod", "other", "role=client")
    expect(cluster, {("client", "server"): "refused", ("other", "server"): "open"}, "the other pod labelled: let in")

    kubectl(cluster, "delete", "networkpolicy", "default-deny", "server-allows-clients")
    expect(cluster, everyone, "every pod reaching every pod once the policies are deleted")
    for node in cluster.state().nodes:  # no policy left: no chain, no hook
        rules = cluster.node_exec(node.name, ["iptables-save", "-t", "filter"]).output
        assert "EMU-NETPOL" not in rules, node.name
