"""The cluster DNS server as a client of the API server (issue 21, stage 4:
"the DNS server watches what CoreDNS's kubernetes plugin watches"), with the
real kubectl and dig from a pod: the coredns pods run as the ServiceAccount
kube-system/coredns, which kubeadm's system:coredns role lets list and watch;
an EndpointSlice written with kubectl, and a pod turning unready (its
EndpointSlice changed by the API server's controller from the status its
node wrote), are answered with no `emu` command; with the API server down
the DNS server answers from what it has, and watches again once it is back.
Waits only bound how long a change may take; how fast is bench/dns_api.py's."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests import labs
from tests.integration import helpers
from tests.integration.helpers import skip_without_kubectl
from tests.waiting import wait_for

LAB = labs.load("dnsapi")
SERVER = "^python3 -m emu.apiserver "  # the API server's process in its node (emu.node.plan.cni)


@pytest.fixture(scope="module")
def dns(make_module_cluster):
    skip_without_kubectl()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMU_DNS_SOURCE", "api")
        return make_module_cluster(LAB, "dnsapi")


def kubectl(cluster, *argv: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    return helpers.kubectl("--request-timeout=20s", *argv, context=f"emu-{cluster.name}", check=check, stdin=stdin)


def dig(cluster, *args: str) -> str:
    return cluster.exec("client", ["dig", "+short", "+time=2", "+tries=1", *args]).output.strip()


def status(cluster, *args: str) -> str:
    output = cluster.exec("client", ["dig", "+time=2", "+tries=1", *args]).output
    return output.split("status: ", 1)[1].split(",", 1)[0]


def endpoint_slice(name: str, address: str, hostname: str) -> str:
    return json.dumps({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": "manual"}},
        "endpoints": [{"addresses": [address], "hostname": hostname, "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    })  # fmt: skip


def coredns_pod(cluster) -> dict:
    pods = json.loads(kubectl(cluster, "get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-dns", "-o",
                              "json").stdout)["items"]  # fmt: skip
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def coredns_may(cluster, verb: str, group: str, resource: str) -> bool:
    """RBAC's answer for the service account kube-system/coredns (a SubjectAccessReview, as the API server
    authorizes its requests: the account and its groups)."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": "system:serviceaccount:kube-system:coredns",
        "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
        "resourceAttributes": {"verb": verb, "group": group, "resource": resource}}}  # fmt: skip
    # (--validate=false: kubectl 1.32 validates the kind against CRDs, which emu does not serve)
    answer = kubectl(cluster, "create", "--validate=false", "-f", "-", "-o", "json", stdin=json.dumps(review))
    return json.loads(answer.stdout)["status"]["allowed"]


def test_the_dns_pod_runs_as_coredns_and_lists_and_watches_through_rbac(dns):
    assert kubectl(dns, "get", "serviceaccount", "coredns", "-n", "kube-system", "-o", "name").stdout.strip() == \
        "serviceaccount/coredns"
    pod = coredns_pod(dns)
    assert pod["spec"]["serviceAccountName"] == "coredns"
    assert "--source" in pod["spec"]["containers"][0]["args"]
    for group, resource in (("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "namespaces")):
        for verb in ("list", "watch"):
            assert coredns_may(dns, verb, group, resource), (verb, resource)
    assert not coredns_may(dns, "create", "", "services")
    assert not coredns_may(dns, "list", "", "secrets")
    # (get --raw: `kubectl logs` decodes the pod first, and the coredns pod's readinessProbe has
    # periodSeconds 0.2, which is no int32 for kubectl: emu/control/state.py, not this test's to change)
    log = kubectl(dns, "get", "--raw", f"/api/v1/namespaces/kube-system/pods/{pod['metadata']['name']}/log").stdout
    assert "kubernetes API: synced" in log, log
    assert dig(dns, "kubernetes.default.svc.cluster.local") == "10.96.0.1"


def test_an_endpointslice_written_with_kubectl_is_answered(dns):
    kubectl(dns, "apply", "-f", "-", stdin=endpoint_slice("manual-a", "10.244.99.9", "m-0"))
    wait_for(lambda: dig(dns, "manual.default.svc.cluster.local") == "10.244.99.9", 20, "manual's A")
    assert dig(dns, "m-0.manual.default.svc.cluster.local") == "10.244.99.9"
    assert "manual.default.svc.cluster.local" in dig(dns, "-x", "10.244.99.9")
    kubectl(dns, "delete", "endpointslice", "manual-a")
    wait_for(lambda: status(dns, "manual.default.svc.cluster.local") == "NXDOMAIN", 20, "manual gone")


def test_a_pod_turning_unready_leaves_the_headless_answers_and_comes_back(dns):
    ip = dns.state().pods["default/web"].ip
    wait_for(lambda: dig(dns, "web.default.svc.cluster.local") == ip, 20, "web's A")
    assert dig(dns, "web-0.web.default.svc.cluster.local") == ip
    assert dns.exec("client", ["curl", "-sS", f"http://{ip}:8080/sethealth?status=fail"]).ok
    try:
        wait_for(lambda: status(dns, "web.default.svc.cluster.local") == "NXDOMAIN", 30, "web unready: no address")
    finally:
        assert dns.exec("client", ["curl", "-sS", f"http://{ip}:8080/sethealth?status=ok"]).ok
    wait_for(lambda: dig(dns, "web.default.svc.cluster.local") == ip, 30, "web ready again")


def test_with_the_api_server_down_it_answers_and_then_watches_again(dns):
    ip = dns.state().pods["default/web"].ip
    wait_for(lambda: dig(dns, "web.default.svc.cluster.local") == ip, 30, "web's A")
    pid = dns.node_exec("cp", ["pgrep", "-f", SERVER]).output.split()
    assert len(pid) == 1, pid
    supervisor = dns.node_exec("cp", ["ps", "-o", "ppid=", "-p", pid[0]]).output.strip()
    assert dns.node_exec("cp", ["kill", "-STOP", supervisor]).ok  # so that it stays down a while
    try:
        assert dns.node_exec("cp", ["kill", "-9", pid[0]]).ok
        wait_for(lambda: not dns.node_exec("cp", ["pgrep", "-f", SERVER]).output.split(), 10, "the server ended")
        for _ in range(5):
            assert dig(dns, "web.default.svc.cluster.local") == ip
            assert dig(dns, "kubernetes.default.svc.cluster.local") == "10.96.0.1"
    finally:
        assert dns.node_exec("cp", ["kill", "-CONT", supervisor]).ok
    wait_for(lambda: kubectl(dns, "get", "--raw", "/readyz", check=False).stdout.strip() == "ok", 30, "the server back")
    kubectl(dns, "apply", "-f", "-", stdin=endpoint_slice("manual-b", "10.244.99.10", "m-1"))
    wait_for(lambda: dig(dns, "m-1.manual.default.svc.cluster.local") == "10.244.99.10", 40, "a change after it")
    kubectl(dns, "delete", "endpointslice", "manual-b")
