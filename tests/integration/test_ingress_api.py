"""Ingress made with kubectl, served as on kind with ingress-nginx (issue 21): the
ingress controller watches the API server as its service account, so a
Deployment, Service and Ingress applied with the real kubectl are answered
through nginx from a host outside the cluster, with real HTTP; `kubectl get
ingress` shows the address the controller published; an edited Ingress routes
anew; a deleted one stops. emu's own Ingress is served beside it and stays emu's."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.integration import helpers
from tests.integration.helpers import skip_without_kubectl
from tests.waiting import wait_for

AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.52"
LAB = """\
name: ingapi
nodes:
  - {name: cp, role: control-plane, labels: {ingress-ready: "true"}}
  - {name: w1}
deployments:
  - name: echo
    replicas: 1
    template:
      labels: {app: echo}
      containers: [{name: c, workload: netexec, ports: [{name: http, containerPort: 8080}]}]
services:
  - {name: echo, selector: {app: echo}, ports: [{name: http, port: 80, targetPort: http}]}
ingresses:
  - name: emu-echo
    rules:
      - host: emu.example.com
        http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}]}
"""
APP = f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: shop}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: shop}}}}
  template:
    metadata: {{labels: {{app: shop}}}}
    spec:
      containers:
        - name: netexec
          image: {AGNHOST}
          args: [netexec, --http-port=8080]
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: shop}}
spec:
  selector: {{app: shop}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""
INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop}
spec:
  ingressClassName: nginx
  rules:
    - host: shop.example.com
      http:
        paths:
          - {path: PATH, pathType: Prefix, backend: {service: {name: shop, port: {name: http}}}}
"""


@pytest.fixture(scope="module")
def cluster(make_module_cluster):
    skip_without_kubectl()
    made = make_module_cluster(LAB, "ingapi")
    made.outside = f"{made.name}-outside"
    made.run_external("outside")
    return made


def kubectl(cluster, *argv: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    return helpers.kubectl("--request-timeout=30s", *argv, context=f"emu-{cluster.name}", check=check, stdin=stdin)


def address(cluster) -> str:
    return cluster.state().services["ingress-nginx/ingress-nginx-controller"].load_balancer_ip


def get(cluster, host: str, path: str) -> tuple[int, str]:
    """(status, body) of GET http://<the ingress's LoadBalancer address><path> with Host `host`,
    from the host outside the cluster; (0, why) when no answer came."""
    result = cluster.runtime.exec(cluster.outside, [
        "curl", "-sS", "--max-time", "5", "-o", "/dev/stdout", "-w", "\n%{http_code}", "-H", f"Host: {host}",
        f"http://{address(cluster)}{path}",
    ])  # fmt: skip
    body, _, code = result.output.rpartition("\n")
    return (int(code), body) if result.ok and code.strip().isdigit() else (0, result.output)


def shop_pods(cluster) -> set[str]:
    pods = json.loads(kubectl(cluster, "get", "pods", "-l", "app=shop", "-o", "json").stdout)["items"]
    return {p["metadata"]["name"] for p in pods}


def test_an_ingress_made_with_kubectl_is_served_published_edited_and_deleted(cluster):
    kubectl(cluster, "apply", "-f", "-", stdin=APP + "---\n" + INGRESS.replace("PATH", "/hostname"))
    kubectl(cluster, "rollout", "status", "deployment/shop", "--timeout=120s")
    pods = shop_pods(cluster)
    assert len(pods) == 2
    # Host and path: through nginx to both of the Deployment's pods.
    wait_for(lambda: get(cluster, "shop.example.com", "/hostname")[0] == 200, 60, "shop.example.com/hostname answering")
    answers = {get(cluster, "shop.example.com", "/hostname")[1] for _ in range(20)}
    assert answers == pods
    assert get(cluster, "shop.example.com", "/clientip")[0] == 404  # no rule for that path
    assert get(cluster, "other.example.com", "/hostname")[0] == 404  # nor for that host
    # The controller published its address, as kubectl shows it.
    ingress_address = address(cluster)
    wait_for(lambda: kubectl(cluster, "get", "ingress", "shop", "-o",
                             "jsonpath={.status.loadBalancer.ingress[0].ip}").stdout == ingress_address,
             30, "the shop Ingress's status naming the ingress's address")  # fmt: skip
    table = kubectl(cluster, "get", "ingress", "shop").stdout.splitlines()
    assert table[0].split() == ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]
    assert table[1].split()[:5] == ["shop", "nginx", "shop.example.com", ingress_address, "80"]
    # emu's own Ingress: served beside it, its address published too, and still emu's.
    assert get(cluster, "emu.example.com", "/hostname")[0] == 200
    wait_for(lambda: kubectl(cluster, "get", "ingress", "emu-echo", "-o",
                             "jsonpath={.status.loadBalancer.ingress[0].ip}").stdout == ingress_address,
             30, "emu's Ingress's status naming the ingress's address")  # fmt: skip
    refused = kubectl(cluster, "delete", "ingress", "emu-echo", check=False)
    assert refused.returncode != 0 and "emu apply -f" in refused.stderr

    # Edited with kubectl apply: another path routes, the old one no longer does.
    kubectl(cluster, "apply", "-f", "-", stdin=INGRESS.replace("PATH", "/clientip"))
    wait_for(lambda: get(cluster, "shop.example.com", "/clientip")[0] == 200, 30, "the edited path answering")
    status, body = get(cluster, "shop.example.com", "/clientip")
    assert status == 200 and ":" in body  # netexec's /clientip: the address nginx called from
    assert get(cluster, "shop.example.com", "/hostname")[0] == 404

    # Deleted: no longer served; emu's goes on.
    kubectl(cluster, "delete", "ingress", "shop")
    wait_for(lambda: get(cluster, "shop.example.com", "/clientip")[0] == 404, 30,
             "the deleted Ingress no longer served")
    assert get(cluster, "emu.example.com", "/hostname")[0] == 200
