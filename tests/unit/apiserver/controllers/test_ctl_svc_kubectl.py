"""The service-side controllers running (threads) inside a real in-process API server, driven by the
real kubectl: EndpointSlices and Endpoints follow a Service's ready pods, `kubectl delete ns` completes."""

from __future__ import annotations

import json
import time

import pytest

from emu.apiserver.controllers import build_manager
from emu.apiserver.controllers.framework import Client
from emu.apiserver.controllers.services_registry import register

MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
""" + "".join(f"""---
apiVersion: v1
kind: Pod
metadata: {{name: web-{i}, namespace: x, labels: {{app: web}}}}
spec:
  nodeName: n1
  containers: [{{name: app, image: nginx, ports: [{{name: http, containerPort: 8080}}]}}]
""" for i in range(2))


def eventually(fn, what: str, bound: float = 20.0):
    """fn() until it returns a true value; the bound only keeps a broken run from hanging."""
    end = time.monotonic() + bound
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not reached (last: {got!r})")
        time.sleep(0.05)


@pytest.fixture()
def controllers(apiserver):
    # the API server's own namespace finalizer would do the namespace controller's job; off, as the lead wires it
    apiserver.server._finalize_namespace_later = lambda name: None
    m = build_manager(apiserver.store, enabled=(), log=lambda s: None)
    register(m, {"api_addresses": ["127.0.0.1"], "enabled": ("kubernetes-service", "endpointslice", "endpoints",
                                                              "namespace", "serviceaccount")})
    m.start()
    yield m
    m.stop()


def test_endpointslices_follow_ready_pods_and_namespace_deletion_completes(apiserver, kubectl, controllers):
    c = Client(apiserver.store)
    c.create("nodes", {"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}}})
    kubectl("apply", "-f", "-", input=MANIFEST)

    def kubelet(name, ip):  # what the node's kubelet writes: an IP and Ready
        def change(p):
            p["status"].update(phase="Running", podIP=ip, podIPs=[{"ip": ip}],
                               conditions=[{"type": "Ready", "status": "True"}])
            return p
        c.mutate("pods", "x", name, change, status=True)

    kubelet("web-0", "10.244.1.10")
    kubelet("web-1", "10.244.1.11")

    def ready_slice():
        items = json.loads(kubectl("get", "endpointslices", "-n", "x", "-l", "kubernetes.io/service-name=web",
                                   "-o", "json"))["items"]
        eps = [e for s in items for e in s.get("endpoints") or [] if e["conditions"]["ready"]]
        return items if len(eps) == 2 else None

    [sl] = eventually(ready_slice, "two ready endpoints")
    assert sl["metadata"]["generateName"] == "web-"
    assert sl["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert sl["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert sorted(e["addresses"][0] for e in sl["endpoints"]) == ["10.244.1.10", "10.244.1.11"]
    assert {e["zone"] for e in sl["endpoints"]} == {"z1"}
    table = kubectl("get", "endpointslices", "-n", "x", "-l", "kubernetes.io/service-name=web")
    header, row = table.splitlines()
    assert header.split() == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    assert row.split()[:4] == [sl["metadata"]["name"], "IPv4", "8080", "10.244.1.10,10.244.1.11"]
    ep = eventually(lambda: "10.244.1.11" in kubectl("get", "endpoints", "web", "-n", "x") and
                    kubectl("get", "endpoints", "web", "-n", "x"), "Endpoints")
    assert "10.244.1.10:8080,10.244.1.11:8080" in ep
    assert eventually(lambda: "default" in kubectl("get", "serviceaccounts", "-n", "x"), "default ServiceAccount")
    assert "10.96.0.1" in eventually(lambda: kubectl("get", "svc", "kubernetes", "-n", "default", check=False),
                                     "default/kubernetes")

    # kubectl waits for the namespace to go: the namespace controller empties it and lets it go
    kubectl("delete", "ns", "x", "--timeout=60s", timeout=90)
    p = kubectl.run("get", "ns", "x", check=False)
    assert p.returncode != 0 and 'namespaces "x" not found' in p.stderr
    assert apiserver.store.namespaces_in_use("x") == []
