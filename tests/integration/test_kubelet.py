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


LAST_REACH: dict[str, str] = {}  # ip -> how the last failed reach ended (for a failure's message)


def reach(cluster, ip: str) -> str:
    """What the pod at `ip` answers on /hostname, asked from emu's pod `client` through kubectl exec."""
    result = kubectl(cluster, "exec", "client", "--", "curl", "-sS", "--max-time", "3", f"http://{ip}:8080/hostname",
                     check=False)  # fmt: skip
    if result.returncode != 0:
        LAST_REACH[ip] = f"kubectl exec client -- curl: exit {result.returncode}: {result.stderr.strip()[-300:]}"
    return result.stdout if result.returncode == 0 else ""


def slice_addresses(cluster) -> list[tuple[str, bool]]:
    slices = json.loads(kubectl(cluster, "get", "endpointslices", "-l", "kubernetes.io/service-name=web",
                                "-o", "json").stdout)["items"]  # fmt: skip
    return [(a, bool((e.get("conditions") or {}).get("ready"))) for s in slices for e in s.get("endpoints") or []
            for a in e["addresses"]]  # fmt: skip


def on_node(cluster, node: str, command: str) -> str:
    return cluster.node_exec(node, ["sh", "-c", command]).output


def seen_from_node(cluster, name: str) -> str:
    """For a failure's message: the pod as the API and its node see it (an intermittent
    failure, a Ready pod not answering, was seen twice and not yet explained)."""
    made = pod(cluster, name) or {}
    node, ip = (made.get("spec") or {}).get("nodeName", ""), (made.get("status") or {}).get("podIP", "")
    if not node:
        return json.dumps(made)[:2000]
    script = (f"ip netns list; ip -n {name} addr 2>&1 | grep -w inet; ip neigh show {ip}; "
              f"ls -l /run/emu/pods/{name}/ 2>&1; cat /run/emu/pods/{name}/*.pid 2>&1; "
              f"tail -n 20 /var/log/emu/pods/{name}/*.log 2>&1; grep -F '{name}' /var/log/emu/agent.log | tail -n 30; "
              f"ip route get {ip}; bridge link | grep -c cni0; ip -n {name} link show eth0; "
              "iptables-save -c | grep -E 'DROP|REJECT' | grep -v '^.0:0.'; "
              f"conntrack -L -d {ip} 2>&1 | head -5; sysctl net.ipv4.ip_forward")
    return (f"the last try: {LAST_REACH.get(ip, '-')}\n"
            f"pod {name} on {node} at {ip}, status {json.dumps(made.get('status'))[:1500]}\n{on_node(cluster, node, script)}")


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


def test_a_service_made_with_kubectl_is_programmed_on_every_node_and_named_by_dns(cluster):
    """kube-proxy's part of every node and the DNS server watch the API server, so a
    Service made with kubectl (`kubectl expose`) works as emu's own: its cluster IP,
    its name and its node port on every node answer; deleted, its rules go."""
    kubectl(cluster, "run", "kweb", f"--image={AGNHOST}", "--labels=app=kweb", "--port=8080", "--",
            "netexec", "--http-port=8080")  # fmt: skip
    kubectl(cluster, "wait", "--for=condition=Ready", "pod/kweb", "--timeout=90s")
    kubectl(cluster, "expose", "pod", "kweb", "--name=kweb", "--type=NodePort", "--port=80", "--target-port=8080")
    service = json.loads(kubectl(cluster, "get", "svc", "kweb", "-o", "json").stdout)
    assert "emu.io/managed-by" not in (service["metadata"].get("annotations") or {})
    ip, node_port = service["spec"]["clusterIP"], service["spec"]["ports"][0]["nodePort"]

    def ask(url: str) -> str:
        found = kubectl(cluster, "exec", "client", "--", "curl", "-sS", "--max-time", "3", url, check=False)
        return found.stdout if found.returncode == 0 else ""

    wait_for(lambda: ask(f"http://{ip}/hostname") == "kweb", 30, f"kweb answering at its cluster IP {ip}")
    wait_for(lambda: ask("http://kweb.default.svc.cluster.local/hostname") == "kweb", 30, "kweb answering by name")
    for node in cluster.state().nodes:
        answer = on_node(cluster, "cp", f"curl -sS --max-time 3 http://{node.node_ip}:{node_port}/hostname")
        assert answer == "kweb", (node.name, answer)
    kubectl(cluster, "delete", "svc", "kweb")
    wait_for(lambda: ask(f"http://{ip}/hostname") == "", 30, f"the rules of kweb's cluster IP {ip} gone")
    kubectl(cluster, "delete", "pod", "kweb", "--timeout=60s")


DEPLOYMENT = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: kdep}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: kdep}}}}
  template:
    metadata: {{labels: {{app: kdep}}}}
    spec:
      containers:
        - name: netexec
          image: {AGNHOST}
          args: [netexec, --http-port=8080]
          ports: [{{containerPort: 8080}}]
"""


def test_a_deployment_made_with_kubectl_rolls_out_scales_and_goes_with_its_pods(cluster):
    """The API server's Deployment and ReplicaSet controllers make its pods, the scheduler
    binds them, their nodes' kubelets run them; `kubectl delete` takes the ReplicaSet and
    the pods with it (the garbage collector)."""
    def pods() -> dict[str, str]:
        found = json.loads(kubectl(cluster, "get", "pods", "-l", "app=kdep", "-o", "json").stdout)["items"]
        return {p["metadata"]["name"]: (p.get("status") or {}).get("podIP", "") for p in found}

    kubectl(cluster, "apply", "-f", "-", stdin=DEPLOYMENT)
    kubectl(cluster, "rollout", "status", "deployment/kdep", "--timeout=120s")
    running = pods()
    assert len(running) == 2 and all(name.startswith("kdep-") for name in running), running
    for name, ip in running.items():
        # (Ready once started, as a pod without a readiness probe: netexec may still be starting.)
        # Not yet explained: in about a third of today's runs one of these Ready pods answered
        # from the client on w1 only 30 s or more after rollout status, with no neighbour entry
        # for it on its node (the packets did not reach its bridge); the wait is generous and its
        # failure says what the node shows.
        try:
            wait_for(lambda ip=ip, name=name: reach(cluster, ip) == name, 90, f"{name} answering at {ip}")
        except pytest.fail.Exception:
            pytest.fail(f"{name} did not answer at {ip} within 90s; what its node shows:\n{seen_from_node(cluster, name)}")
    kubectl(cluster, "scale", "deployment", "kdep", "--replicas=3")
    kubectl(cluster, "rollout", "status", "deployment/kdep", "--timeout=120s")
    assert len(pods()) == 3 and set(running) <= set(pods())
    replica_sets = json.loads(kubectl(cluster, "get", "rs", "-l", "app=kdep", "-o", "json").stdout)["items"]
    assert [rs["status"].get("readyReplicas") for rs in replica_sets] == [3]
    kubectl(cluster, "delete", "deployment", "kdep")
    wait_for(lambda: pods() == {}, 90, "the pods of the deleted deployment kdep gone")
    assert json.loads(kubectl(cluster, "get", "rs", "-l", "app=kdep", "-o", "json").stdout)["items"] == []
    # (the garbage collector deletes the pods outright; their kubelets then stop them)
    wait_for(lambda: all(reach(cluster, ip) == "" for ip in running.values()), 30, "kdep's pods stopped")


STATEFUL = f"""
apiVersion: v1
kind: Service
metadata: {{name: kdb}}
spec: {{clusterIP: None, selector: {{app: kdb}}, ports: [{{name: http, port: 8080}}]}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: kdb}}
spec:
  serviceName: kdb
  replicas: 2
  selector: {{matchLabels: {{app: kdb}}}}
  template:
    metadata: {{labels: {{app: kdb}}}}
    spec:
      containers: [{{name: netexec, image: {AGNHOST}, args: [netexec, --http-port=8080]}}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: kds}}
spec:
  selector: {{matchLabels: {{app: kds}}}}
  template:
    metadata: {{labels: {{app: kds}}}}
    spec:
      containers: [{{name: pause, image: {AGNHOST}, args: [pause]}}]
"""


def test_a_statefulset_and_a_daemonset_made_with_kubectl_run_and_their_pods_are_named(cluster):
    """The StatefulSet controller makes kdb-0 then kdb-1, each named in DNS under its
    headless Service (hostname.subdomain); the DaemonSet controller one pod a node."""
    kubectl(cluster, "apply", "-f", "-", stdin=STATEFUL)
    kubectl(cluster, "rollout", "status", "statefulset/kdb", "--timeout=120s")
    kubectl(cluster, "rollout", "status", "daemonset/kds", "--timeout=120s")
    for name in ("kdb-0", "kdb-1"):
        ip = pod(cluster, name)["status"]["podIP"]

        def named(name=name, ip=ip) -> bool:
            found = kubectl(cluster, "exec", "client", "--", "getent", "hosts", f"{name}.kdb.default.svc.cluster.local",
                            check=False).stdout.split()  # fmt: skip
            return found[:1] == [ip]

        wait_for(named, 30, f"{name}.kdb answering with {ip}")
        wait_for(lambda ip=ip, name=name: reach(cluster, ip) == name, 30, f"{name} answering at {ip}")
    daemons = json.loads(kubectl(cluster, "get", "pods", "-l", "app=kds", "-o", "json").stdout)["items"]
    status = json.loads(kubectl(cluster, "get", "ds", "kds", "-o", "json").stdout)["status"]
    assert len(daemons) == status["desiredNumberScheduled"] == status["numberReady"] >= 2
    assert len({p["spec"]["nodeName"] for p in daemons}) == len(daemons)  # one a node
    kubectl(cluster, "delete", "-f", "-", stdin=STATEFUL)
    wait_for(lambda: json.loads(kubectl(cluster, "get", "pods", "-l", "app in (kdb,kds)", "-o", "json").stdout)["items"]
             == [], 90, "the pods of the deleted StatefulSet and DaemonSet gone")  # fmt: skip
