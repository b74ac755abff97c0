"""The DNS server as a client of the API server (python3 -m emu.node.dns --source api):
a real server process against emu's real API server over TLS, authenticated by a
service account token in the directory a pod has it, authorized by RBAC
(kubeadm's system:coredns), asked with real DNS queries over UDP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord
from kube_testserver import ChildProcess, ClusterServer, free_port

from emu.api.load import load_text
from emu.apiserver import mirror
from emu.apiserver.auth import issue_token
from emu.control.apiserver import mirror_objects
from emu.control.state import plan_cluster
from emu.errors import EmuError
from emu.node.agent.tokens import Tokens
from emu.node.dns.kube import service_of, slice_of, snapshot
from emu.node.kube.client import in_cluster, resource_path

ROOT = str(Path(__file__).resolve().parents[3])
SERVICES = resource_path("v1", "services", "default")
SLICES = resource_path("discovery.k8s.io/v1", "endpointslices", "default")
ZONE = "cluster.local"


def free_udp_port() -> int:
    # The DNS server takes UDP and TCP on the same port: one free for both.
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def until(check, timeout: float = 20.0, what: str = ""):
    """check()'s first truthy value, asked every 50 ms (fails after `timeout`: never a pass by timing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not so within {timeout}s: {what}")


class DnsServer:
    """python3 -m emu.node.dns --source api, as in the coredns pod (a service account dir, the env)."""

    def __init__(self, tmp: Path, api, sa: Path | None = None):
        self.sa = sa or tmp / "serviceaccount"
        self.sa.mkdir(exist_ok=True)
        self.port, self.ready_port = free_udp_port(), free_port()
        self.log_path = tmp / "dns.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        env = {**os.environ, "PYTHONPATH": ROOT, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
               "KUBERNETES_SERVICE_PORT": api.url.rsplit(":", 1)[1]}  # fmt: skip
        argv = [sys.executable, "-m", "emu.node.dns", "--source", "api", "--host", "127.0.0.1", "--port",
                str(self.port), "--workers", "2", "--health-port", "0", "--metrics-port", "0", "--ready-port",
                str(self.ready_port), "--service-account-dir", str(self.sa), "--service-cidr", "10.96.0.0/12",
                "--pod-cidr", "10.244.0.0/16"]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def mount_token(self, pki: Path, namespace: str, name: str) -> None:
        """What the agent writes for a pod (emu.node.agent.tokens): token, ca.crt, namespace."""
        token = issue_token((pki / "sa.key").read_bytes(), namespace, name, f"uid-{name}", [], 3600)
        (self.sa / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
        (self.sa / "namespace").write_text(namespace)
        (self.sa / "token.new").write_text(token)
        os.replace(self.sa / "token.new", self.sa / "token")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ready_port}/ready", timeout=2) as answer:
                return answer.status == 200
        except urllib.error.HTTPError:
            return False
        except OSError:
            return False

    def ask(self, name: str, qtype: str = "A") -> DNSRecord:
        packet = bytes(DNSRecord.question(name, qtype).pack())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            for _ in range(5):
                s.sendto(packet, ("127.0.0.1", self.port))
                try:
                    return DNSRecord.parse(s.recv(4096))
                except TimeoutError:
                    continue
        raise AssertionError(f"no answer for {name} {qtype}")

    def addresses(self, name: str) -> list[str]:
        reply = self.ask(name)
        return sorted(str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture()
def api(tmp_path):
    server = ChildProcess(tmp_path / "api")
    yield server
    server.stop()


@pytest.fixture()
def dns(tmp_path, api):
    (tmp_path / "api").mkdir(exist_ok=True)
    server = DnsServer(tmp_path, api)
    yield server
    server.stop()


def service(name: str, **spec) -> dict:
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": 8080}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def endpoint_slice(service_name: str, endpoints: list[dict], port: int = 8080) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service_name}-abcde", "labels": {"kubernetes.io/service-name": service_name}},
            "endpoints": endpoints, "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}  # fmt: skip


def test_a_service_made_through_the_api_is_answered_and_its_endpoints_follow_readiness(api, dns):
    admin = api.client()
    # Before the token is mounted, and so before the first sync: not ready, SERVFAIL (CoreDNS's).
    assert dns.ask(f"kubernetes.default.svc.{ZONE}").header.rcode == RCODE.SERVFAIL
    assert not dns.ready()
    dns.mount_token(api.pki, "kube-system", "coredns")
    until(dns.ready, what="/ready after the informers synced")
    web = admin.create(SERVICES, service("web"))
    ip = web["spec"]["clusterIP"]
    assert until(lambda: dns.addresses(f"web.default.svc.{ZONE}"), what="web's A") == [ip]
    # A headless service: its ready endpoints, by hostname; an endpoint turning unready leaves.
    admin.create(SERVICES, service("db", clusterIP="None"))
    slice_ = admin.create(SLICES, endpoint_slice("db", [
        {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": True}},
        {"addresses": ["10.244.2.6"], "hostname": "db-1", "conditions": {"ready": True}},
    ]))  # fmt: skip
    until(lambda: dns.addresses(f"db.default.svc.{ZONE}") == ["10.244.1.5", "10.244.2.6"], what="db's two")
    assert dns.addresses(f"db-1.db.default.svc.{ZONE}") == ["10.244.2.6"]
    slice_["endpoints"][1]["conditions"]["ready"] = False
    admin.update(f"{SLICES}/{slice_['metadata']['name']}", slice_)
    until(lambda: dns.addresses(f"db.default.svc.{ZONE}") == ["10.244.1.5"], what="db-1 gone when unready")
    assert dns.ask(f"db-1.db.default.svc.{ZONE}").header.rcode == RCODE.NXDOMAIN
    # A changed service: its new ExternalName.
    admin.create(SERVICES, service("ext", type="ExternalName", externalName="www.example.com", ports=[]))
    reply = until(lambda: [rr for rr in dns.ask(f"ext.default.svc.{ZONE}", "CNAME").rr], what="ext's CNAME")
    assert str(reply[0].rdata) == "www.example.com."
    # A namespace made through the API exists in DNS (NODATA, not NXDOMAIN).
    assert dns.ask(f"team.svc.{ZONE}").header.rcode == RCODE.NXDOMAIN
    admin.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    until(lambda: dns.ask(f"team.svc.{ZONE}").header.rcode == RCODE.NOERROR, what="namespace team")
    # Deleted: gone.
    admin.delete(f"{SERVICES}/web")
    until(lambda: dns.ask(f"web.default.svc.{ZONE}").header.rcode == RCODE.NXDOMAIN, what="web deleted")


def test_a_token_rbac_does_not_allow_is_refused_and_the_log_says_so(api, dns):
    dns.mount_token(api.pki, "default", "default")  # not bound to system:coredns
    until(lambda: "forbidden" in dns.text(), what="the refusal in the log")
    text = dns.text()
    assert 'User "system:serviceaccount:default:default" cannot list resource' in text, text
    assert not dns.ready()
    assert dns.ask(f"kubernetes.default.svc.{ZONE}").header.rcode == RCODE.SERVFAIL


def test_with_the_api_server_down_it_answers_from_its_cache_then_resumes_watching(api, dns):
    admin = api.client()
    dns.mount_token(api.pki, "kube-system", "coredns")
    ip = admin.create(SERVICES, service("web"))["spec"]["clusterIP"]
    until(lambda: dns.addresses(f"web.default.svc.{ZONE}") == [ip], what="web's A")
    api.kill()
    for _ in range(10):
        assert dns.addresses(f"web.default.svc.{ZONE}") == [ip]
        time.sleep(0.1)
    assert dns.ready()  # synced once: CoreDNS stays ready while the API is away
    api.start()
    other = api.client().create(SERVICES, service("late"))["spec"]["clusterIP"]
    assert until(lambda: dns.addresses(f"late.default.svc.{ZONE}"), what="late's A after the restart") == [other]
    assert dns.addresses(f"web.default.svc.{ZONE}") == [ip]


def test_the_client_reads_a_rotated_token_file(api, tmp_path):
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "ca.crt").write_bytes((api.pki / "ca.crt").read_bytes())
    key = (api.pki / "sa.key").read_bytes()
    (sa / "token").write_text(issue_token(key, "default", "default", "u1", [], 600))
    client = in_cluster(str(sa), {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)})
    whoami = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    path = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    assert client.create(path, whoami)["status"]["userInfo"]["username"] == "system:serviceaccount:default:default"
    (sa / "token.new").write_text(issue_token(key, "kube-system", "coredns", "u2", [], 600))
    os.replace(sa / "token.new", sa / "token")
    assert client.create(path, whoami)["status"]["userInfo"]["username"] == "system:serviceaccount:kube-system:coredns"


def test_in_cluster_without_its_environment_or_files_says_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined"):
        in_cluster(str(tmp_path), {})
    with pytest.raises(FileNotFoundError, match=f"no {tmp_path}/token"):
        in_cluster(str(tmp_path), {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"})


def test_the_snapshot_from_api_objects_has_the_agents_shape():
    services = [service_of({"metadata": {"name": "db", "namespace": "default", "resourceVersion": "3"},
                            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}})]  # fmt: skip
    slices = [slice_of({**endpoint_slice("db", [
        {"addresses": ["10.244.2.6"], "hostname": "db-1", "conditions": {"ready": False}},
        {"addresses": ["10.244.1.5"], "conditions": {}},
    ]), "metadata": {"name": "db-x", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "db"}}})]  # fmt: skip
    namespaces = [{"metadata": {"name": "default"}}]
    settings = {"zone": ZONE, "ttl": 5, "upstreams": [], "serviceSubnet": "10.96.0.0/12", "podSubnet": "10.244.0.0/16"}
    assert snapshot(settings, services, slices, namespaces) == {**settings, "namespaces": ["default"], "services": [
        {"namespace": "default", "name": "db", "type": "ClusterIP", "clusterIP": "None", "externalName": None,
         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
         "endpoints": [{"ip": "10.244.1.5", "hostname": None, "ready": True, "ports": {"http": 8080}},
                       {"ip": "10.244.2.6", "hostname": "db-1", "ready": False,
                        "ports": {"http": 8080}}]}]}  # fmt: skip


LAB = """
name: lab
nodes: [{name: control-plane, role: control-plane}, {name: worker}]
services:
  - {name: web, clusterIP: 10.96.0.50, ports: [{name: http, port: 80}]}
"""


def test_the_coredns_pod_of_a_mirrored_cluster_gets_its_token_and_rbac_lets_it_watch(tmp_path, monkeypatch):
    """The chain of a cluster without Docker: emu's mirror makes the ServiceAccount
    kube-system/coredns and runs the coredns pod as it; the node asks a token for the
    pod (emu.node.agent.tokens, NodeRestriction); with it the DNS server lists and
    watches as system:coredns (kubeadm's binding) and answers the lab's services."""
    monkeypatch.setenv("EMU_DNS_SOURCE", "api")
    state = plan_cluster(load_text(LAB), "emu-lab", "172.28.0.0/24")
    served = ClusterServer(tmp_path / "api")
    try:
        objects = mirror_objects(state, [], 1_700_000_000.0)
        assert {"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "coredns", "namespace": "kube-system"}} in objects  # fmt: skip
        mirror.sync(served.store, objects)
        pod = next(p for p in state.pods.values() if p.namespace == "kube-system")
        assert "--source" in pod.containers[0]["args"]
        tokens = Tokens(pod.node, directory=str(tmp_path / "tokens"), ca_file=str(served.pki / "ca.crt"))
        assert tokens.request(served.client(f"nodes/{pod.node}"), pod)
        dns = DnsServer(tmp_path, served, tmp_path / "tokens" / pod.netns)
        try:
            until(dns.ready, what="/ready")
            assert dns.addresses(f"web.default.svc.{ZONE}") == ["10.96.0.50"]
            assert dns.addresses(f"kube-dns.kube-system.svc.{ZONE}") == ["10.96.0.10"]
            assert "kubernetes API: synced" in dns.text() and "forbidden" not in dns.text()
        finally:
            dns.stop()
    finally:
        served.stop()


def coredns_args_of(state) -> list[str]:
    pods = [p for p in state.pods.values() if p.namespace == "kube-system"]
    assert len(pods) == 1
    return pods[0].containers[0].get("args", [])


def test_the_coredns_pods_settings_are_the_topologys(monkeypatch):
    monkeypatch.setenv("EMU_DNS_SOURCE", "api")
    lab = LAB + "dns: {ttl: 30, upstreams: ['10.0.0.2', '10.0.0.3:5353']}\nnetworking: {dnsDomain: lab.example}\n"
    new = plan_cluster(load_text(lab), "emu-lab", "172.28.0.0/24")
    assert coredns_args_of(new) == ["--source", "api", "--zone", "lab.example", "--ttl", "30", "--service-cidr",
                                    "10.96.0.0/16", "--pod-cidr", "10.244.0.0/16", "--upstream", "10.0.0.2",
                                    "--upstream", "10.0.0.3:5353"]  # fmt: skip
    monkeypatch.setenv("EMU_DNS_SOURCE", "snapshot")
    assert coredns_args_of(plan_cluster(load_text(lab), "emu-lab", "172.28.0.0/24")) == []
    monkeypatch.setenv("EMU_DNS_SOURCE", "etcd")
    with pytest.raises(EmuError, match="EMU_DNS_SOURCE='etcd': expected api or snapshot"):
        plan_cluster(load_text(lab), "emu-lab", "172.28.0.0/24")
