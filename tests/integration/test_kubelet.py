"""The kubelet's first slice (issue 21, section 4; docs/apiserver.md, stage 4) in a
real lab, driven with the real kubectl: a pod made with `kubectl run` is bound by
the API server's scheduler, wired and started by its node's agent with an address
from that node's own range, reported Ready, put in its Service's EndpointSlice,
reached by pod IP from another pod, its logs read with `kubectl logs`; after its
node restarts it runs again with the same address; `kubectl delete pod` stops it,
removes its namespace and veth and releases its address before the object goes.
emu's own pods stay emu's: kubectl's writes to them are refused (405)."""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from emu.api.load import load_text
from emu.node.agent.kubelet import IPAM_DIR
from emu.node.records import PodState, kubelet_pod_range
from tests import labs
from tests.integration import helpers
from tests.integration.helpers import skip_without_kubectl
from tests.waiting import wait_for

LAB = labs.load("kubelet")
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.52"
PROBED = f"""
apiVersion: v1
kind: Pod
metadata: {{name: idle, labels: {{role: idle}}}}
spec:
  containers:
    - name: netexec
      image: {AGNHOST}
      args: [netexec, --http-port=8080]
      ports: [{{name: http, containerPort: 8080}}]
      readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}
"""


@pytest.fixture(scope="module")
def cluster(make_module_cluster):
    skip_without_kubectl()
    return make_module_cluster(LAB, "kubelet")


def kubectl(cluster, *argv: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    return helpers.kubectl("--request-timeout=30s", *argv, context=f"emu-{cluster.name}", check=check, stdin=stdin)


def pod(cluster, name: str) -> dict | None:
    found = kubectl(cluster, "get", "pod", name, "-o", "json", "--ignore-not-found").stdout
    return json.loads(found) if found.strip() else None


def reach(cluster, ip: str) -> str:
    """What the pod at `ip` answers on /hostname, asked from emu's pod `client` through kubectl exec."""
    result = kubectl(cluster, "exec", "client", "--", "curl", "-sS", "--max-time", "3", f"http://{ip}:8080/hostname",
                     check=False)  # fmt: skip
    return result.stdout if result.returncode == 0 else ""


def slice_addresses(cluster) -> list[tuple[str, bool]]:
    slices = json.loads(kubectl(cluster, "get", "endpointslices", "-l", "kubernetes.io/service-name=web",
                                "-o", "json").stdout)["items"]  # fmt: skip
    return [(a, bool((e.get("conditions") or {}).get("ready"))) for s in slices for e in s.get("endpoints") or []
            for a in e["addresses"]]  # fmt: skip


def on_node(cluster, node: str, command: str) -> str:
    return cluster.node_exec(node, ["sh", "-c", command]).output


def test_a_pod_made_with_kubectl_runs_is_reached_and_is_deleted(cluster, runtime):
    kubectl(cluster, "run", "web", f"--image={AGNHOST}", "--labels=app=web", "--port=8080", "--",
            "netexec", "--http-port=8080")  # fmt: skip
    kubectl(cluster, "wait", "--for=condition=Ready", "pod/web", "--timeout=90s")
    made = pod(cluster, "web")
    node, ip = made["spec"]["nodeName"], made["status"]["podIP"]
    state = cluster.state()
    # Bound by the scheduler, addressed by its node's kubelet from the node's own range:
    # never an address emu's planner hands out.
    assert ip in kubelet_pod_range(state.node(node).pod_cidr)
    assert all(p.ip != ip for p in state.pods.values())
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(state.node(node).pod_cidr)
    assert made["status"]["phase"] == "Running" and made["status"]["hostIP"] == state.node(node).node_ip

    assert reach(cluster, ip) == "web"  # from emu's pod on w1, by pod IP, through kubectl exec
    wait_for(lambda: slice_addresses(cluster) == [(ip, True)], 30, f"the web EndpointSlice holding {ip}, ready")
    assert "GET /hostname" in kubectl(cluster, "logs", "web").stdout

    # The node restarts: the kubelet lists its pods again and wires web again, same address.
    runtime.api.restart(state.node(node).container, timeout=1)
    wait_for(lambda: reach(cluster, ip) == "web", 120, f"web answering at {ip} after its node {node} restarted")
    assert pod(cluster, "web")["status"]["podIP"] == ip
    kubectl(cluster, "wait", "--for=condition=Ready", "pod/web", "--timeout=60s")

    # kubectl delete: graceful; the kubelet stops it, unwires it, then the object goes.
    kubectl(cluster, "delete", "pod", "web", "--timeout=60s")
    assert pod(cluster, "web") is None
    assert "web" not in on_node(cluster, node, "ip netns list").split()
    assert on_node(cluster, node, f"ls {IPAM_DIR}").split() in ([], ["last_reserved_ip.0"])
    # (the bracket keeps the pattern from matching the shell that runs pgrep)
    assert on_node(cluster, node, "pgrep -f 'emu-containe[r] /run/emu/pods/web/' || true").strip() == ""
    veth = PodState("default", "web", node, ip, {}, [], "").host_veth
    assert on_node(cluster, node, f"ip link show {veth} >/dev/null 2>&1 && echo there || echo gone").strip() == "gone"
    assert reach(cluster, ip) == ""
    wait_for(lambda: slice_addresses(cluster) == [], 30, "the web EndpointSlice emptied")


def test_emu_keeps_its_own_pods_and_leaves_the_others_alone(cluster):
    refused = kubectl(cluster, "delete", "pod", "client", "--wait=false", check=False)
    assert refused.returncode != 0 and "driven by emu" in refused.stderr
    assert pod(cluster, "client")["metadata"]["annotations"]["emu.io/managed-by"] == "emu"
    # A Pod manifest (kubectl apply -f), Ready by its readiness probe.
    kubectl(cluster, "apply", "-f", "-", stdin=PROBED)
    kubectl(cluster, "wait", "--for=condition=Ready", "pod/idle", "--timeout=90s")
    before = pod(cluster, "idle")
    # emu's next command (a pod added) mirrors its objects: the pod made with kubectl stays as it was.
    more = LAB + "  - name: second\n    node: w2\n    containers: [{name: shell, command: [sleep, infinity]}]\n"
    cluster.apply(load_text(more).model_copy(update={"name": cluster.name}))
    assert pod(cluster, "second")["metadata"]["annotations"]["emu.io/managed-by"] == "emu"
    after = pod(cluster, "idle")
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["status"]["podIP"] == before["status"]["podIP"]
    kubectl(cluster, "delete", "pod", "idle", "--timeout=60s")
    assert pod(cluster, "idle") is None
