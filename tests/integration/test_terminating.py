"""kube-proxy's terminating endpoints (ProxyTerminatingEndpoints, GA in 1.28), end
to end with the real kubectl, in every proxy mode the kernel here has.

A pod made with kubectl runs agnhost netexec --delay-shutdown=30 (it serves on
for 30 s after SIGTERM; 90 on UML nodes, whose commands are slower) with
terminationGracePeriodSeconds twice that, and is the only
endpoint of the Service `web`. `kubectl delete pod --wait=false`: while it
terminates, its node's kubelet keeps it wired and Ready, the EndpointSlice
controller publishes it ready=false, serving=true, terminating=true, and
kube-proxy, finding no ready endpoint, falls back to it: the Service's
ClusterIP still answers from another pod with its name. The NodePort Service
`local` (externalTrafficPolicy: Local) selects it and a ready pod on another
node: on the terminating pod's node, which has no ready endpoint of its own,
traffic from outside the cluster still reaches it (kube-proxy's local
fallback). Once its process has exited, the pod is gone and `web` has no
endpoint: connections are refused (kube-proxy's REJECT), and `local` drops
outside traffic on that node.

When is a node's kube-proxy known to have seen the endpoint turn terminating?
An EndpointSlice written after it (the Service `barrier`'s, made by hand)
reaches the same watch after it: once the barrier's address is in a node's
rules, so is what the terminating endpoint makes of them.

iptables and nftables run on docker nodes; ipvs on User-mode Linux nodes (the
guest kernel has ip_vs, this host's may not), skipped only where UML cannot run
here, saying so."""

from __future__ import annotations

import json

import pytest

from tests.integration import helpers
from tests.integration.helpers import skip_without_kubectl
from tests.integration.test_proxy_modes import uml_nodes_or_skip
from tests.integration.test_service_traffic import outside_curl
from tests.waiting import wait_for

AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.52"
LAB = """\
name: term
networking: {proxyMode: MODE}
RUNTIME
nodes:
  - {name: cp, role: control-plane}
  - {name: w1}
  - {name: w2}
pods:
  - name: client
    node: w1
    containers: [{name: shell, command: [sleep, infinity]}]
"""
SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {tier: both}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: barrier}
spec: {ports: [{port: 80}]}
"""


def pods(delay: int) -> str:
    """steady on w1; web on w2, serving on for `delay` s after SIGTERM, in a grace period twice that."""
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: steady, labels: {{tier: both}}}}
spec:
  nodeName: w1
  containers: [{{name: netexec, image: {AGNHOST}, args: [netexec, --http-port=8080]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web, tier: both}}}}
spec:
  nodeName: w2
  terminationGracePeriodSeconds: {2 * delay}
  containers:
    - name: netexec
      image: {AGNHOST}
      args: [netexec, --http-port=8080, --delay-shutdown={delay}]
"""


BARRIER_IP = "10.255.255.1"  # an address no pod has: only ever looked for in the rules
BARRIER = f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: barrier-1
  labels: {{kubernetes.io/service-name: barrier}}
addressType: IPv4
ports: [{{name: "", port: 80, protocol: TCP}}]
endpoints: [{{addresses: ["{BARRIER_IP}"]}}]
"""
# Each mode's own listing of the service rules, and where it runs (ipvs: on User-mode Linux nodes,
# whose kernel has ip_vs; this host's may not).
LISTINGS = {"iptables": ["iptables-save", "-t", "nat"], "nftables": ["nft", "list", "table", "ip", "kube-proxy"],
            "ipvs": ["ipvsadm", "-Ln"]}  # fmt: skip
RUNTIMES = {"iptables": "docker", "nftables": "docker", "ipvs": "uml"}
# How long web serves on after SIGTERM: what the checks of its terminating time need, with room (a
# command in a UML guest is several times slower than in a container).
DELAY = {"docker": 30, "uml": 90}


@pytest.fixture(scope="module", params=["iptables", "nftables", "ipvs"])
def mode(request, make_module_cluster):
    skip_without_kubectl()
    if RUNTIMES[request.param] == "uml":
        uml_nodes_or_skip()
    lab = LAB.replace("MODE", request.param).replace("RUNTIME", f"runtime: {RUNTIMES[request.param]}")
    return request.param, make_module_cluster(lab, f"term-{request.param[:3]}")


def kubectl(cluster, *argv: str, check: bool = True, stdin: str | None = None):
    return helpers.kubectl("--request-timeout=30s", *argv, context=f"emu-{cluster.name}", check=check, stdin=stdin)


def get(cluster, *argv: str) -> dict | None:
    found = kubectl(cluster, "get", *argv, "-o", "json", "--ignore-not-found").stdout
    return json.loads(found) if found.strip() else None


def endpoints(cluster, service: str) -> list[tuple[str, bool, bool, bool]]:
    """(address, ready, serving, terminating) of each endpoint of the Service's slices, as kubectl shows them."""
    slices = get(cluster, "endpointslices", "-l", f"kubernetes.io/service-name={service}")["items"]
    out = []
    for found in slices:
        for endpoint in found.get("endpoints") or []:
            c = endpoint.get("conditions") or {}
            out += [(a, c.get("ready"), c.get("serving"), c.get("terminating")) for a in endpoint["addresses"]]
    return sorted(out)


def ask(cluster, url: str) -> tuple[int, str]:
    """(curl's exit code, what it printed) for one request from emu's pod `client` on w1."""
    result = cluster.exec("client", ["curl", "-sS", "--max-time", "3", url])
    return result.exit_code, result.output.strip()


def rules_hold(cluster, mode: str, node: str, text: str) -> bool:
    return text in cluster.node_exec(node, LISTINGS[mode]).output


def test_a_terminating_pod_serves_its_service_until_it_exits(mode):
    name, cluster = mode
    kubectl(cluster, "apply", "-f", "-", stdin=SERVICES)
    delay = DELAY[RUNTIMES[name]]
    kubectl(cluster, "apply", "-f", "-", stdin=pods(delay))
    kubectl(cluster, "wait", "--for=condition=Ready", "pod/web", "pod/steady", "--timeout=90s")
    web_ip = get(cluster, "pod", "web")["status"]["podIP"]
    steady_ip = get(cluster, "pod", "steady")["status"]["podIP"]
    cluster_ip = get(cluster, "service", "web")["spec"]["clusterIP"]
    node_port = get(cluster, "service", "local")["spec"]["ports"][0]["nodePort"]
    w2 = cluster.state().node("w2").node_ip
    outside = cluster.run_external("outside")
    wait_for(lambda: ask(cluster, f"http://{cluster_ip}/hostname") == (0, "web"), 60, "web answering at its ClusterIP")
    wait_for(lambda: outside_curl(cluster, f"http://{w2}:{node_port}/clientip")[1].startswith(f"{outside}:"), 60,
             "the Local NodePort answering on w2 with the outside client's address")  # fmt: skip
    assert outside_curl(cluster, f"http://{w2}:{node_port}/hostname") == (0, "web")

    # Deleted: SIGTERM; agnhost serves on for `delay` s (30 on docker nodes), in a grace period twice that.
    kubectl(cluster, "delete", "pod", "web", "--wait=false")
    wait_for(lambda: endpoints(cluster, "web") == [(web_ip, False, True, True)], 20,
             "web's endpoint published ready=false serving=true terminating=true")  # fmt: skip
    assert endpoints(cluster, "local") == sorted([(web_ip, False, True, True), (steady_ip, True, True, False)])
    pod = get(cluster, "pod", "web")
    assert pod["metadata"]["deletionTimestamp"] and pod["metadata"]["deletionGracePeriodSeconds"] == 2 * delay
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"  # it still serves
    # Written after web's slice changed: once w1's and w2's kube-proxy have it, they have that change too.
    kubectl(cluster, "apply", "-f", "-", stdin=BARRIER)
    for node in ("w1", "w2"):
        wait_for(lambda node=node: rules_hold(cluster, name, node, BARRIER_IP), 20,
                 f"{node}'s rules to have the barrier's endpoint")  # fmt: skip
    # No endpoint is ready: kube-proxy falls back to the serving, terminating one.
    assert [ask(cluster, f"http://{cluster_ip}/hostname") for _ in range(3)] == [(0, "web")] * 3
    # Local policy on w2: no ready endpoint of its own (steady is on w1): w2's terminating one.
    assert [outside_curl(cluster, f"http://{w2}:{node_port}/hostname") for _ in range(3)] == [(0, "web")] * 3
    assert get(cluster, "pod", "web")["metadata"]["deletionTimestamp"]  # still terminating after all that

    # Its delay is over: it exits, its kubelet removes it, and web has no endpoint left.
    wait_for(lambda: get(cluster, "pod", "web") is None, 3 * delay, "the pod web gone once its process exited")
    wait_for(lambda: endpoints(cluster, "web") == [], 20, "web's EndpointSlice emptied")
    # (curl's 7: connection refused, kube-proxy's REJECT of a service without endpoints; 28 would be a time-out)
    wait_for(lambda: ask(cluster, f"http://{cluster_ip}/hostname")[0] == 7, 20, "web's ClusterIP refusing")
    code, answer = outside_curl(cluster, f"http://{w2}:{node_port}/hostname")
    assert code != 0 and answer != "web", (code, answer)  # Local, and w2 has no endpoint at all now
    logs = cluster.node_exec("w2", ["cat", "/var/log/emu/agent.log"]).output
    assert "pod default/web: its containers exited" in logs  # it went by itself, not killed at the grace's end
