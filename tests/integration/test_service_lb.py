"""LoadBalancer Services made with the real kubectl get an address of the lab's pool
(the API server's servicelb controller, emu.apiserver.controllers.servicelb), as on a
cloud, on kind with cloud-provider-kind, or with MetalLB: `kubectl get svc` shows the
EXTERNAL-IP, the node agents (which watch Services as kube-proxy does) announce and
serve it, a client outside the cluster reaches it with real HTTP, and `kubectl delete
svc` releases it. emu's own LoadBalancer Services and kubectl's keep out of each
other's addresses in both directions; a request the pool cannot meet stays pending
with a Warning Event saying why."""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from emu.api.load import load_text
from emu.errors import EmuError
from tests import labs
from tests.integration import helpers
from tests.integration.helpers import skip_without_kubectl
from tests.waiting import wait_for

# The kubectl lab (cp, w1, the echo deployment) with one LoadBalancer Service of emu's own.
def emu_lb(name: str, extra: str = "") -> str:
    """A services: entry of the topology, a LoadBalancer of emu's own in front of the echo pods."""
    ports = "[{port: 80, targetPort: 8080}]"
    return f"  - {{name: {name}, type: LoadBalancer, {extra}selector: {{app: echo}}, ports: {ports}}}\n"


LAB = labs.load("kubectl") + emu_lb("elb")
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.52"
DEPLOYMENT = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: kweb}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: kweb}}}}
  template:
    metadata: {{labels: {{app: kweb}}}}
    spec:
      containers:
        - name: netexec
          image: {AGNHOST}
          args: [netexec, --http-port=8080]
          ports: [{{containerPort: 8080}}]
"""


def service(name: str, load_balancer_ip: str) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  type: LoadBalancer
  loadBalancerIP: {load_balancer_ip}
  selector: {{app: kweb}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


@pytest.fixture(scope="module")
def cluster(make_module_cluster):
    skip_without_kubectl()
    return make_module_cluster(LAB, "servicelb")


@pytest.fixture(scope="module")
def outside(cluster) -> str:
    return cluster.run_external("outside")


def kubectl(cluster, *argv: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    return helpers.kubectl("--request-timeout=30s", *argv, context=f"emu-{cluster.name}", check=check, stdin=stdin)


def external_ip(cluster, name: str) -> str:
    """The EXTERNAL-IP column of `kubectl get svc NAME` ("<pending>" while it has none)."""
    header, row = kubectl(cluster, "get", "svc", name).stdout.splitlines()
    return row.split()[header.split().index("EXTERNAL-IP")]


def from_outside(cluster, address: str) -> str:
    """What http://ADDRESS/hostname answers to the container outside the cluster ("" for nothing)."""
    found = cluster.runtime.exec(f"{cluster.name}-outside", ["curl", "-sS", "--max-time", "3",
                                                             f"http://{address}/hostname"])  # fmt: skip
    return found.output.strip() if found.exit_code == 0 else ""


def held_by_nodes(cluster, address: str) -> list[str]:
    """The nodes whose eth0 holds `address` (the announcing node, MetalLB layer-2 style)."""
    return [n.name for n in cluster.state().nodes
            if f" {address}/32 " in cluster.node_exec(n.name, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).output]


def pool(cluster) -> list[str]:
    first, last = (ipaddress.IPv4Address(a) for a in cluster.state().load_balancer_pool)
    return [str(ipaddress.IPv4Address(v)) for v in range(int(first), int(last) + 1)]


def warnings(cluster, name: str) -> list[dict]:
    items = json.loads(kubectl(cluster, "get", "events", "-o", "json").stdout)["items"]
    return [e for e in items if e["involvedObject"]["name"] == name and e["type"] == "Warning"]


def test_kubectl_expose_type_load_balancer_is_reached_from_outside_and_released_on_delete(cluster, outside):
    addresses = pool(cluster)
    emus = cluster.state().services["default/elb"].load_balancer_ip
    assert emus == addresses[0]  # emu's planner takes the lowest
    kubectl(cluster, "apply", "-f", "-", stdin=DEPLOYMENT)
    kubectl(cluster, "rollout", "status", "deployment/kweb", "--timeout=120s")
    kubectl(cluster, "expose", "deployment", "kweb", "--type=LoadBalancer", "--port=80", "--target-port=8080")
    address = wait_for(lambda: (ip := external_ip(cluster, "kweb")) != "<pending>" and ip, 30, "kweb's EXTERNAL-IP")
    assert address == addresses[-1] and address != emus  # the highest free address of the pool
    made = json.loads(kubectl(cluster, "get", "svc", "kweb", "-o", "json").stdout)
    assert made["status"]["loadBalancer"]["ingress"] == [{"ip": address, "ipMode": "VIP"}]
    described = kubectl(cluster, "describe", "svc", "kweb").stdout
    assert "EnsuredLoadBalancer" in described and f"LoadBalancer Ingress:     {address}" in described

    pods = {p["metadata"]["name"] for p in json.loads(kubectl(cluster, "get", "pods", "-l", "app=kweb", "-o",
                                                             "json").stdout)["items"]}  # fmt: skip
    # From outside the cluster, real HTTP: a node announces the address, its rules send it to a kweb pod.
    assert wait_for(lambda: from_outside(cluster, address) in pods, 30, f"kweb answering at {address}")
    assert len(held_by_nodes(cluster, address)) == 1
    assert from_outside(cluster, emus)  # emu's own LoadBalancer still answers

    # The other direction: emu's planner leaves kubectl's addresses alone.
    pinned = addresses[1]  # the next emu's planner would take
    kubectl(cluster, "apply", "-f", "-", stdin=service("kpin", pinned))
    wait_for(lambda: external_ip(cluster, "kpin") == pinned, 30, f"kpin holding the address it asked for, {pinned}")
    more = LAB + emu_lb("elb2")
    cluster.apply(load_text(more).model_copy(update={"name": cluster.name}))
    assert cluster.state().services["default/elb2"].load_balancer_ip == addresses[2]
    # ... and refuses, before changing anything, an address of kubectl's declared in the topology.
    before = cluster.state().to_json()
    clash = more + emu_lb("elb3", f"loadBalancerIP: {address}, ")
    with pytest.raises(EmuError, match=f"loadBalancerIP {address} is held by service default/kweb"):
        cluster.apply(load_text(clash).model_copy(update={"name": cluster.name}))
    assert cluster.state().to_json() == before

    # kubectl delete waits for the controller to release the address (its cleanup finalizer).
    kubectl(cluster, "delete", "svc", "kweb", "--timeout=60s")
    assert kubectl(cluster, "get", "svc", "kweb", "--ignore-not-found").stdout == ""
    wait_for(lambda: held_by_nodes(cluster, address) == [], 30, f"{address} gone from every node's eth0")
    wait_for(lambda: from_outside(cluster, address) == "", 30, f"nothing answering at {address}")
    kubectl(cluster, "delete", "svc", "kpin", "--timeout=60s")


def test_a_load_balancer_ip_outside_the_pool_stays_pending_with_a_warning(cluster):
    kubectl(cluster, "apply", "-f", "-", stdin=service("far", "203.0.113.7"))
    [warning] = wait_for(lambda: warnings(cluster, "far"), 30, "a Warning Event for far")
    assert warning["reason"] == "SyncLoadBalancerFailed"
    assert warning["source"]["component"] == "service-controller"
    first, last = cluster.state().load_balancer_pool
    assert (f"spec.loadBalancerIP 203.0.113.7 is not in the LoadBalancer pool {first}-{last}"
            in warning["message"])
    assert external_ip(cluster, "far") == "<pending>"
    made = json.loads(kubectl(cluster, "get", "svc", "far", "-o", "json").stdout)
    assert not made["metadata"].get("finalizers") and not made["status"]["loadBalancer"]  # nothing written
    # The nodes program its cluster IP but no LoadBalancer address: kube-proxy reads status, not the request.
    ip = made["spec"]["clusterIP"]
    for node in cluster.state().nodes:
        rules = wait_for(lambda n=node.name: (r := cluster.node_exec(n, ["iptables-save"]).output)
                         and f"-d {ip}/32" in r and r, 30, f"{node.name} programming far's cluster IP {ip}")
        assert "203.0.113.7" not in rules, node.name
    assert held_by_nodes(cluster, "203.0.113.7") == []
    kubectl(cluster, "delete", "svc", "far", "--timeout=60s")
