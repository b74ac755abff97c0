"""A realistic app, driven as on kind (issue 21's "Done when"): one multi-document
manifest (a Namespace, a ConfigMap, a Deployment of agnhost netexec taking its
settings from the ConfigMap as env, envFrom and a volume, and a Service) applied
with the real kubectl; then `kubectl wait`, `kubectl exec` reaching the Service by
its DNS name and showing the ConfigMap's values, `kubectl logs`, `kubectl
port-forward svc/web` reached from the host, `kubectl scale` with the Service's
endpoints following, `kubectl rollout restart` with new pods (a watch of the
Python client sees their pod IPs assigned), and `kubectl delete ns` removing
everything in it from the nodes. Every command here works unchanged on kind
(agnhost's image has curl, env and cat).

Not in this manifest yet: a NetworkPolicy and an Ingress. Both are taken from
kubectl and enforced or served from the API server, each driven with the real
kubectl in a module of its own (test_netpol_kubectl.py, test_ingress_api.py)."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import urllib.request

import pytest

from emu.node.agent.kubelet import IPAM_DIR
from tests import labs
from tests.integration import helpers
from tests.integration.helpers import KUBECTL, skip_without_kubectl
from tests.waiting import wait_for

LAB = labs.load("kapp")
NS = "shop"
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.52"
APP_CONF = "mode=shop\ncolor=blue\n"
MANIFEST = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: web-config, namespace: {NS}}}
data:
  GREETING: hello from the shop
  STORE_NAME: emu-shop
  app.conf: |
    mode=shop
    color=blue
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NS}, labels: {{app: web}}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: netexec
          image: {AGNHOST}
          args: [netexec, --http-port=8080]
          ports: [{{name: http, containerPort: 8080}}]
          env:
            - name: GREETING
              valueFrom: {{configMapKeyRef: {{name: web-config, key: GREETING}}}}
            - name: POD_NAME
              valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
          envFrom:
            - configMapRef: {{name: web-config}}
              prefix: CFG_
          readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}
          volumeMounts: [{{name: config, mountPath: /etc/web, readOnly: true}}]
      volumes:
        - name: config
          configMap: {{name: web-config}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""


@pytest.fixture(scope="module")
def cluster(make_module_cluster):
    skip_without_kubectl()
    return make_module_cluster(LAB, "kapp")


@pytest.fixture(scope="module")
def context(cluster) -> str:
    return f"emu-{cluster.name}"


def kubectl(context: str, *argv: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    return helpers.kubectl("--request-timeout=30s", *argv, context=context, check=check, stdin=stdin, timeout=240)


def web_pods(context: str) -> dict[str, dict]:
    """The app's pods that are not being deleted, by name."""
    found = json.loads(kubectl(context, "get", "pods", "-n", NS, "-l", "app=web", "-o", "json").stdout)["items"]
    return {p["metadata"]["name"]: p for p in found if not p["metadata"].get("deletionTimestamp")}


def all_pod_names(context: str) -> set[str]:
    """Every pod in the namespace, those being deleted too."""
    found = kubectl(context, "get", "pods", "-n", NS, "-o", "name").stdout.split()
    return {name.removeprefix("pod/") for name in found}


def ready(pod: dict) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def exec_in(context: str, pod: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return kubectl(context, "exec", "-n", NS, pod, "--", *argv, check=check)


def ask(context: str, pod: str, url: str) -> str:
    """What `curl URL` run in `pod` printed; "" when it failed."""
    found = exec_in(context, pod, "curl", "-sS", "--max-time", "3", url, check=False)
    return found.stdout if found.returncode == 0 else ""


def slice_endpoints(context: str) -> dict[str, bool]:
    """{address: ready} of the web Service's EndpointSlices."""
    found = kubectl(context, "get", "endpointslices", "-n", NS, "-l", "kubernetes.io/service-name=web",
                    "-o", "json").stdout  # fmt: skip
    return {address: bool((endpoint.get("conditions") or {}).get("ready"))
            for piece in json.loads(found)["items"] for endpoint in piece.get("endpoints") or []
            for address in endpoint["addresses"]}  # fmt: skip


def names_behind_the_service(context: str, pod: str, want: set[str], url: str = "http://web/hostname") -> set[str]:
    """The pod names that answer the Service's name from `pod`, asked until all of `want` did."""
    seen: set[str] = set()

    def all_seen() -> bool:
        answer = ask(context, pod, url)
        if answer:
            seen.add(answer)
        return want <= seen

    wait_for(all_seen, 120, f"{sorted(want)} answering {url} from {pod} (seen {sorted(seen)})")
    return seen


@pytest.fixture(scope="module")
def app(cluster, context) -> dict[str, dict]:
    """The app applied with one `kubectl apply -f` and all its pods Ready (`kubectl wait`)."""
    applied = kubectl(context, "apply", "-f", "-", stdin=MANIFEST).stdout.splitlines()
    assert applied == [f"namespace/{NS} created", "configmap/web-config created", "deployment.apps/web created",
                       "service/web created"]  # fmt: skip
    # (`kubectl wait --all` finds no pods before the Deployment's controllers made them, on kind too)
    wait_for(lambda: len(web_pods(context)) == 2, 60, "the Deployment's two pods made")
    kubectl(context, "wait", "--for=condition=Ready", "pod", "--all", "-n", NS, "--timeout=120s")
    pods = web_pods(context)
    assert len(pods) == 2 and all(ready(p) and p["status"]["podIP"] for p in pods.values())
    return pods


def test_the_lab_is_listed_as_on_kind(cluster, context):
    listed = kubectl(context, "get", "nodes,pods,svc", "-A").stdout
    for node in ("cp", "w1", "w2"):
        assert re.search(rf"^node/{node}\s+Ready\s", listed, re.M), listed
    assert re.search(r"^default\s+service/kubernetes\s+ClusterIP\s", listed, re.M), listed
    assert re.search(r"^kube-system\s+pod/coredns", listed, re.M), listed


def test_a_pod_reaches_the_service_by_name_and_has_the_config_maps_values(context, app):
    pod = sorted(app)[0]
    # By its short name (the pod's search path) and its full name, load-balanced over both pods.
    assert names_behind_the_service(context, pod, set(app)) == set(app)
    assert ask(context, pod, f"http://web.{NS}.svc.cluster.local/hostname") in app
    env = dict(line.split("=", 1) for line in exec_in(context, pod, "env").stdout.splitlines() if "=" in line)
    assert env["GREETING"] == "hello from the shop"  # env valueFrom configMapKeyRef
    assert env["CFG_STORE_NAME"] == "emu-shop" and env["CFG_GREETING"] == "hello from the shop"  # envFrom
    assert env["POD_NAME"] == pod  # fieldRef
    kubernetes = json.loads(kubectl(context, "get", "svc", "kubernetes", "-n", "default", "-o", "json").stdout)
    assert env["KUBERNETES_SERVICE_HOST"] == kubernetes["spec"]["clusterIP"]  # as every pod on kind has
    assert exec_in(context, pod, "cat", "/etc/web/app.conf").stdout == APP_CONF  # the ConfigMap volume
    assert exec_in(context, pod, "sh", "-c", "echo x > /etc/web/new", check=False).returncode != 0  # readOnly


def test_logs_show_the_requests_each_pod_served(context, app):
    first, second = sorted(app)
    ip = app[second]["status"]["podIP"]
    assert ask(context, first, f"http://{ip}:8080/echo?msg=emu-kapp-logs") == "emu-kapp-logs"
    assert "/echo?msg=emu-kapp-logs" in kubectl(context, "logs", "-n", NS, second).stdout
    every = kubectl(context, "logs", "-n", NS, "-l", "app=web", "--prefix").stdout
    assert f"[pod/{second}/netexec]" in every and "/echo?msg=emu-kapp-logs" in every


def test_port_forward_to_the_service_is_reached_from_the_host(context, app):
    proc = subprocess.Popen([KUBECTL, "--context", context, "port-forward", "-n", NS, "svc/web", ":80"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        found = re.search(r"127\.0\.0\.1:(\d+) -> 8080", lines.get(timeout=30))
        assert found
        for _ in range(2):  # one connection after another through the same forward
            with urllib.request.urlopen(f"http://127.0.0.1:{found.group(1)}/hostname", timeout=30) as answer:
                assert answer.status == 200 and answer.read().decode() in app
    finally:
        proc.kill()
        proc.wait()


def test_scale_and_the_services_endpoints_follow(context, app):
    kubectl(context, "scale", "deployment/web", "-n", NS, "--replicas=3")
    kubectl(context, "rollout", "status", "deployment/web", "-n", NS, "--timeout=120s")
    pods = wait_for(lambda: (found := web_pods(context)) and len(found) == 3 and found, 60, "three web pods")
    addresses = {p["status"]["podIP"] for p in pods.values()}
    wait_for(lambda: slice_endpoints(context) == dict.fromkeys(addresses, True), 60,
             f"the web Service's EndpointSlice holding {sorted(addresses)}, ready")  # fmt: skip
    endpoints = json.loads(kubectl(context, "get", "endpoints", "web", "-n", NS, "-o", "json").stdout)
    assert {a["ip"] for s in endpoints["subsets"] for a in s.get("addresses") or []} == addresses
    # and the nodes' rules: the new pod answers the Service's name too
    assert names_behind_the_service(context, sorted(app)[0], set(pods)) == set(pods)


def test_rollout_restart_replaces_every_pod_and_a_watch_sees_their_addresses(context, app):
    from kubernetes import client, config, watch

    api = client.CoreV1Api(config.new_client_from_config(context=context))
    listed = api.list_namespaced_pod(NS, label_selector="app=web")
    before = {p.metadata.name for p in listed.items}
    addressed: dict[str, str] = {}  # pod name -> the podIP the watch saw it get
    stop = threading.Event()

    def follow() -> None:
        stream = watch.Watch()
        for event in stream.stream(api.list_namespaced_pod, NS, label_selector="app=web",
                                   resource_version=listed.metadata.resource_version, timeout_seconds=240):
            pod = event["object"]
            if event["type"] in ("ADDED", "MODIFIED") and pod.status.pod_ip and pod.metadata.name not in before:
                addressed.setdefault(pod.metadata.name, pod.status.pod_ip)
            if stop.is_set():
                stream.stop()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    kubectl(context, "rollout", "restart", "deployment/web", "-n", NS)
    kubectl(context, "rollout", "status", "deployment/web", "-n", NS, "--timeout=180s")
    wait_for(lambda: not (all_pod_names(context) & before), 120, f"the old pods {sorted(before)} gone")
    pods = web_pods(context)
    assert len(pods) == len(before) and not set(pods) & before and all(ready(p) for p in pods.values())

    def replica_sets() -> list[tuple[int, int]]:
        found = json.loads(kubectl(context, "get", "rs", "-n", NS, "-l", "app=web", "-o", "json").stdout)["items"]
        return sorted((rs["spec"]["replicas"], rs["status"].get("readyReplicas", 0)) for rs in found)

    # the old ReplicaSet kept, scaled to 0, the new one with every pod ready
    wait_for(lambda: replica_sets() == [(0, 0), (len(before), len(before))], 60, "the ReplicaSets' status")
    current = {name: p["status"]["podIP"] for name, p in pods.items()}
    wait_for(lambda: current.items() <= addressed.items(), 60, f"the watch seeing {current} (saw {addressed})")
    stop.set()
    # New pods take the ConfigMap as the old ones did, and the variables of the Service made before them.
    assert exec_in(context, sorted(pods)[0], "cat", "/etc/web/app.conf").stdout == APP_CONF
    service_ip = json.loads(kubectl(context, "get", "svc", "web", "-n", NS, "-o", "json").stdout)["spec"]["clusterIP"]
    env = exec_in(context, sorted(pods)[0], "env").stdout.splitlines()
    assert f"WEB_SERVICE_HOST={service_ip}" in env and f"WEB_PORT=tcp://{service_ip}:80" in env


def test_deleting_the_namespace_removes_everything_in_it_from_the_nodes(cluster, context, app):
    pods = web_pods(context)
    assert pods
    service = json.loads(kubectl(context, "get", "svc", "web", "-n", NS, "-o", "json").stdout)
    cluster_ip = service["spec"]["clusterIP"]
    nodes = [node.name for node in cluster.state().nodes]

    def on_node(node: str, command: str) -> str:
        return cluster.node_exec(node, ["sh", "-c", command]).output

    held = {name: (p["spec"]["nodeName"], p["status"]["podIP"]) for name, p in pods.items()}
    for name, (node, ip) in held.items():
        assert f"{NS}.{name}" in on_node(node, "ip netns list").split() and ip in on_node(node, f"ls {IPAM_DIR}")
    for node in nodes:
        rules = on_node(node, "iptables-save -t nat")
        assert f"{NS}/web:http" in rules and f"-d {cluster_ip}/32" in rules, node
    kubectl(context, "delete", "ns", NS, "--timeout=180s")  # waits until the namespace is gone
    assert kubectl(context, "get", "ns", NS, check=False).returncode != 0
    assert kubectl(context, "get", "all", "-n", NS, "-o", "name").stdout == ""
    for node in nodes:
        assert f"{NS}." not in on_node(node, "ip netns list"), node  # every pod's network namespace
        # (the bracket keeps the pattern from matching the shell that runs pgrep)
        assert on_node(node, f"pgrep -f 'emu-containe[r] .*/{NS}\\.' || true").strip() == "", node
    for name, (node, ip) in held.items():
        assert ip not in on_node(node, f"ls {IPAM_DIR}").split(), (name, ip)  # its address released
    for node in nodes:
        # (rules follow the Service's deletion through each node's watch)
        wait_for(lambda node=node: f"{NS}/web" not in on_node(node, "iptables-save -t nat"), 30,
                 f"the rules of {NS}/web gone from {node}")  # fmt: skip
        assert f"-d {cluster_ip}/32" not in on_node(node, "iptables-save -t nat"), node  # not its cluster IP either
