"""Topology-aware routing with real packets: nodes in two zones (topology.kubernetes.io/zone
labels), a backend in each; a client in zone a reaches only zone a's backend through a
service with trafficDistribution PreferClose, and both through one without it."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.integration.test_service_traffic import wait_for

REQUESTS = 24
LAB = """\
name: zones
networking: {proxyMode: iptables}
nodes:
  - {name: cp, role: control-plane, labels: {topology.kubernetes.io/zone: a}}
  - {name: a1, labels: {topology.kubernetes.io/zone: a}}
  - {name: b1, labels: {topology.kubernetes.io/zone: b}}
pods:
  - name: client
    node: cp
    containers: [{name: shell, command: [sleep, infinity]}]
  - name: web-a
    node: a1
    labels: {app: web}
    containers: [{name: netexec, workload: netexec, ports: [{name: http, containerPort: 8080}]}]
  - name: web-b
    node: b1
    labels: {app: web}
    containers: [{name: netexec, workload: netexec, ports: [{name: http, containerPort: 8080}]}]
services:
  - name: close
    selector: {app: web}
    trafficDistribution: PreferClose
    ports: [{name: http, port: 80, targetPort: http}]
  - name: anywhere
    selector: {app: web}
    ports: [{name: http, port: 80, targetPort: http}]
"""


@pytest.fixture(scope="module")
def zones(make_module_cluster):
    cluster = make_module_cluster(LAB, "topo")
    for service in ("close", "anywhere"):
        wait_for(lambda s=service: len(cluster.endpoints().get(f"default/{s}", {}).get("http", [])) == 2,
                 f"{service}'s endpoints")  # fmt: skip
    return cluster


def answers(cluster, service: str) -> list[str]:
    """The backends that answered REQUESTS new connections, one curl each."""
    script = f"for i in $(seq {REQUESTS}); do curl -sS --max-time 3 http://{service}/hostname; echo; done"
    result = cluster.exec("client", ["sh", "-c", script])
    assert result.exit_code == 0, result.output
    return [line.strip() for line in result.output.splitlines() if line.strip()]


def test_a_client_in_zone_a_reaches_only_zone_a(zones):
    assert answers(zones, "close") == ["web-a"] * REQUESTS


def test_without_the_field_both_zones_answer(zones):
    """The control: the same client, a service without trafficDistribution (both answering
    24 times at random fails one run in 8 million)."""
    assert set(answers(zones, "anywhere")) == {"web-a", "web-b"}


def test_kubectl_shows_the_field_and_the_zones(zones):
    """The Service and the Nodes in the API server carry what kube-proxy reads."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian's kubectl package)")
    context = ["--context", f"emu-{zones.name}"]
    service = subprocess.run([kubectl, *context, "get", "service", "close", "-o", "json"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert service.returncode == 0, service.stderr
    assert json.loads(service.stdout)["spec"]["trafficDistribution"] == "PreferClose"
    node = subprocess.run([kubectl, *context, "get", "node", "b1", "-o", "json"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert json.loads(node.stdout)["metadata"]["labels"]["topology.kubernetes.io/zone"] == "b"
