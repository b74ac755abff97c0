"""The ingress controller as a client of the API server, as ingress-nginx is: emu's
real API server (TLS, service account tokens, RBAC, emu's mirror), the controller
pod's token as the node's token manager gets it, its watch of Ingresses,
IngressClasses, Services and EndpointSlices, the nginx.conf it renders from them
and the status it writes. (nginx itself and real requests: the integration test
tests/integration/test_ingress_api.py.)"""

from __future__ import annotations

import dataclasses
import time

import pytest
from kube_testserver import ClusterServer

from emu.api.load import load_text
from emu.apiserver import mirror
from emu.control.apiserver import mirror_objects
from emu.control.state import plan_cluster
from emu.node import ingress
from emu.node.agent import ingress as agent_ingress
from emu.node.agent.tokens import Tokens
from emu.node.kube.client import ApiError, Client, resource_path

LAB = """\
name: lab
nodes: [{name: control-plane, role: control-plane}, {name: worker}]
deployments:
  - name: web
    replicas: 1
    template:
      labels: {app: web}
      containers: [{name: c, workload: netexec, ports: [{name: http, containerPort: 8080}]}]
services:
  - {name: web, selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
ingresses:
  - name: emu-web
    rules: [{host: emu.example.com, http: {paths: [{path: /, pathType: Prefix,
             backend: {service: {name: web, port: {number: 80}}}}]}}]
  - name: elsewhere
    ingressClassName: traefik
    defaultBackend: {service: {name: web, port: {number: 80}}}
"""
INGRESSES = resource_path("networking.k8s.io/v1", "ingresses", "default")
SERVICES = resource_path("v1", "services", "default")
SLICES = resource_path("discovery.k8s.io/v1", "endpointslices", "default")


def until(check, timeout: float = 10.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def kubectl_ingress(name: str, host: str, path: str = "/", **spec) -> dict:
    rule = {"host": host, "http": {"paths": [{"path": path, "pathType": "Prefix",
                                              "backend": {"service": {"name": "api", "port": {"name": "http"}}}}]}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name},
            "spec": {"rules": [rule], **spec}}  # fmt: skip


@pytest.fixture()
def cluster(tmp_path):
    """emu's API server holding a mirrored lab with an ingress controller; the controller
    pod's token, as the node's token manager writes it."""
    state = plan_cluster(load_text(LAB), "emu-lab", "172.28.0.0/24")
    served = ClusterServer(tmp_path / "api", ("endpointslice", "serviceaccount"))
    objects = mirror_objects(state, [], 1_700_000_000.0)
    mirror.sync(served.store, objects)
    pod = ingress.controller_pod(state)
    tokens = Tokens(pod.node, directory=str(tmp_path / "tokens"), ca_file=str(served.pki / "ca.crt"))
    assert tokens.request(served.client(f"nodes/{pod.node}"), pod)  # as ingress-nginx/ingress-nginx
    token_file = tmp_path / "tokens" / pod.netns / "token"
    controller = Client(served.url, str(served.pki / "ca.crt"), token_file=str(token_file))
    yield state, served, controller, token_file
    served.stop()


def test_the_mirror_runs_the_controller_as_its_service_account_with_the_nginx_class(cluster):
    state, served, controller, _ = cluster
    pod = served.client().get(resource_path("v1", "pods", ingress.NAMESPACE, ingress.controller_pod(state).name))
    assert pod["spec"]["serviceAccountName"] == "ingress-nginx"
    ingress_class = served.client().get(resource_path("networking.k8s.io/v1", "ingressclasses", "", "nginx"))
    assert ingress_class["spec"]["controller"] == "k8s.io/ingress-nginx"


def test_rbac_gives_the_controller_what_ingress_nginx_reads_and_writes_and_nothing_more(cluster):
    _, _, controller, _ = cluster
    for path in (INGRESSES, resource_path("networking.k8s.io/v1", "ingressclasses"), SERVICES, SLICES):
        controller.list(path)
    for path in (resource_path("v1", "secrets", "default"), resource_path("v1", "pods", "default")):
        with pytest.raises(ApiError) as denied:
            controller.list(path)
        assert denied.value.code == 403
    with pytest.raises(ApiError) as denied:
        controller.create(INGRESSES, kubectl_ingress("mine", "a.example.com"))
    assert denied.value.code == 403


def test_kubectl_owns_its_ingresses_and_emus_stay_emus(cluster):
    _, served, _, _ = cluster
    admin = served.client()
    made = admin.create(INGRESSES, kubectl_ingress("api", "api.example.com"))
    made["spec"]["rules"][0]["http"]["paths"][0]["path"] = "/v2"
    assert admin.update(f"{INGRESSES}/api", made)["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/v2"
    emus = admin.get(f"{INGRESSES}/emu-web")
    with pytest.raises(ApiError) as refused:
        admin.update(f"{INGRESSES}/emu-web", emus)
    assert refused.value.code == 405 and "emu apply -f" in refused.value.message
    # The next mirror leaves kubectl's alone; kubectl deletes it.
    state = plan_cluster(load_text(LAB), "emu-lab", "172.28.0.0/24")
    mirror.sync(served.store, mirror_objects(state, [], 1_700_000_000.0))
    assert admin.get(f"{INGRESSES}/api")["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/v2"
    admin.delete(f"{INGRESSES}/api")
    with pytest.raises(ApiError) as gone:
        admin.get(f"{INGRESSES}/api")
    assert gone.value.code == 404


def test_the_served_ingresses_follow_their_class_as_ingress_nginx_decides():
    nginx, other = ingress.ingress_class(), ingress.ingress_class("traefik")
    other["spec"]["controller"] = "traefik.io/ingress-controller"

    def ing(class_name=None, annotation=None) -> dict:
        obj = kubectl_ingress("x", "x.example.com")
        if class_name:
            obj["spec"]["ingressClassName"] = class_name
        if annotation:
            obj["metadata"]["annotations"] = {ingress.CLASS_ANNOTATION: annotation}
        return obj

    assert ingress.is_served(ing("nginx"), [nginx, other])
    assert not ingress.is_served(ing("nginx"), [other])  # no such IngressClass: ignored, as upstream
    assert not ingress.is_served(ing("traefik"), [nginx, other])
    assert ingress.is_served(ing(annotation="nginx"), [other]) and not ingress.is_served(ing(annotation="x"), [nginx])
    assert ingress.is_served(ing(), [nginx, other])  # no class, none default: kind's --watch-ingress-without-class
    other["metadata"]["annotations"] = {ingress.DEFAULT_CLASS_ANNOTATION: "true"}
    assert not ingress.is_served(ing(), [nginx, other])  # the default class is someone else's
    nginx["metadata"]["annotations"] = {ingress.DEFAULT_CLASS_ANNOTATION: "true"}
    nginx["metadata"]["creationTimestamp"] = "2030-01-01T00:00:00Z"
    assert ingress.is_served(ing(), [nginx, other])  # the newest default is ours


class Nginx:
    """What the job runs (iptables-restore, nginx -t), answered as a node would; the
    files go to a temporary folder."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, argv, **kwargs):
        import subprocess

        self.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_the_controller_serves_emus_and_kubectls_ingresses_from_the_api_and_publishes_its_address(
        cluster, tmp_path, monkeypatch):  # fmt: skip
    state, served, _, token_file = cluster
    folder = tmp_path / "nginx"
    monkeypatch.setattr(ingress, "CONFIG_DIR", str(folder))
    monkeypatch.setattr(ingress, "CONFIG", str(folder / "nginx.conf"))
    monkeypatch.setattr(ingress, "CERT_DIR", str(folder / "certs"))
    monkeypatch.setattr(ingress, "PID_FILE", str(folder / "nginx.pid"))
    (folder / "certs").mkdir(parents=True)
    for name in ("default.crt", "default.key"):
        (folder / "certs" / name).write_text("")
    logs: list[str] = []
    sync = agent_ingress.IngressSync(
        ingress.controller_pod(state).node, logs.append, run=Nginx(),
        connect=lambda s, pod: Client(served.url, str(served.pki / "ca.crt"), token_file=str(token_file)),
    )
    admin = served.client()
    admin.create(SERVICES, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api"},
                            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})  # fmt: skip
    admin.create(SLICES, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                          "metadata": {"name": "api-x", "labels": {"kubernetes.io/service-name": "api"}},
                          "endpoints": [{"addresses": ["10.244.1.77"], "conditions": {"ready": True}}],
                          "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})  # fmt: skip
    made = admin.create(INGRESSES, kubectl_ingress("api", "api.example.com", "/v1"))
    config = lambda: (folder / "nginx.conf").read_text() if (folder / "nginx.conf").exists() else ""  # noqa: E731
    sync.sync(state, {})
    until(sync.ready, what="the controller's informers to list")
    sync.sync(state, {})
    try:
        # kubectl's Ingress and emu's, to the ready endpoints; the other class's is not served.
        until(lambda: "server 10.244.1.77:8080" in config(), what="kubectl's Ingress in nginx.conf")
        assert "server_name api.example.com;" in config() and "server_name emu.example.com;" in config()
        assert "default/elsewhere" not in config()
        address = state.services[f"{ingress.NAMESPACE}/{ingress.NAME}"].load_balancer_ip
        for name in ("api", "emu-web"):
            assert until(lambda: (admin.get(f"{INGRESSES}/{name}").get("status") or {}).get("loadBalancer"),
                         what=f"{name}'s status") == {"ingress": [{"ip": address}]}  # fmt: skip
        elsewhere = admin.get(f"{INGRESSES}/elsewhere")
        assert not (elsewhere.get("status") or {}).get("loadBalancer", {}).get("ingress")
        # An edit reaches nginx.conf; wait_revision answers once it has.
        made = admin.get(f"{INGRESSES}/api")
        made["spec"]["rules"][0]["http"]["paths"][0]["path"] = "/v2"
        revision = int(admin.update(f"{INGRESSES}/api", made)["metadata"]["resourceVersion"])
        assert sync.wait_revision(revision, 10.0)
        assert "location ^~ /v2/" in config() and "/v1" not in config()
        # emu's next mirror keeps the address in emu's Ingress.
        mirror.sync(served.store, mirror_objects(state, [], 1_700_000_000.0))
        assert admin.get(f"{INGRESSES}/emu-web")["status"]["loadBalancer"] == {"ingress": [{"ip": address}]}
        # Another class: no longer served, and its address taken back.
        made = admin.get(f"{INGRESSES}/api")
        made["spec"]["ingressClassName"] = "traefik"
        admin.update(f"{INGRESSES}/api", made)
        until(lambda: "api.example.com" not in config(), what="the other class's Ingress leaving nginx.conf")
        until(lambda: not admin.get(f"{INGRESSES}/api")["status"].get("loadBalancer"), what="its status cleared")
        # Back to ours, then deleted: gone from nginx.conf.
        made = admin.get(f"{INGRESSES}/api")
        made["spec"]["ingressClassName"] = "nginx"
        admin.update(f"{INGRESSES}/api", made)
        until(lambda: "api.example.com" in config(), what="the Ingress back in nginx.conf")
        admin.delete(f"{INGRESSES}/api")
        until(lambda: "api.example.com" not in config(), what="the deleted Ingress leaving nginx.conf")
        assert "server_name emu.example.com;" in config()
    finally:
        sync.stop_watch()


def test_a_secret_that_arrives_after_its_ingress_has_nginx_reload(tmp_path, monkeypatch):
    """The controller may see an Ingress (from the API) before the state file with the TLS
    secret it names: the certificate's name holds a stand-in until then, and the secret's
    arrival must reload nginx although nginx.conf is the same text."""
    monkeypatch.setattr(ingress, "CERT_DIR", str(tmp_path / "certs"))
    lab = LAB + """\
  - name: secure
    tls: [{hosts: [tls.example.com], secretName: tls}]
    rules: [{host: tls.example.com, http: {paths: [{path: /, pathType: Prefix,
             backend: {service: {name: web, port: {number: 80}}}}]}}]
secrets:
  - {name: tls, stringData: {tls.crt: "-----BEGIN CERTIFICATE-----", tls.key: "-----BEGIN PRIVATE KEY-----"}}
"""
    state = plan_cluster(load_text(lab), "emu-lab", "172.28.0.0/24")
    sync = agent_ingress.IngressSync("control-plane", lambda message: None, run=Nginx())
    name = ingress.tls_hosts(state)["tls.example.com"]
    assert not sync.write_certificates(dataclasses.replace(state, secrets={}))  # openssl's stand-in
    for suffix in ("crt", "key"):
        (tmp_path / "certs" / f"{name}.{suffix}").write_text("stand-in")
    assert sync.write_certificates(state)  # the secret replaced it: reload
    assert (tmp_path / "certs" / f"{name}.crt").read_text() == "-----BEGIN CERTIFICATE-----"
    assert not sync.write_certificates(state)  # nothing new
