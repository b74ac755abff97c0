"""What manifests' objects become: StatefulSet and DaemonSet pods, scheduling,
ConfigMaps as env and files, ordered start, and the objects and tables `emu get` prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emu.api.manifests import read_manifests
from emu.api.manifests.merge import merge
from emu.api.manifests.render import View, _endpoint_list, format_table, human_duration, kind_of, table
from emu.node.plan import cni
from emu.control.state import ordered_stages, plan_cluster, stamp_created
from emu.api.topology.load import load_text

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "tests" / "integration" / "manifests" / "shop.yaml"
NODES = "name: lab\nnodes:\n  - {name: cp, role: control-plane}\n  - {name: w1, labels: {disk: ssd}}\n  - name: w2\n"


def shop_state(extra: str = ""):
    topology, _ = merge(load_text(NODES + extra), read_manifests([str(SHOP)]), "t")
    return plan_cluster(topology, "emu-lab", "172.28.0.0/24")


def test_statefulset_pods_have_stable_names_hostnames_and_labels():
    state = shop_state()
    backend = [state.pods[f"shop/backend-{i}"] for i in (0, 1)]
    assert [(p.hostname, p.subdomain, p.owner) for p in backend] == [
        ("backend-0", "backend", "StatefulSet/backend"), ("backend-1", "backend", "StatefulSet/backend"),
    ]  # fmt: skip
    assert backend[1].labels["statefulset.kubernetes.io/pod-name"] == "backend-1"
    assert backend[1].labels["apps.kubernetes.io/pod-index"] == "1"
    assert backend[0].labels["controller-revision-hash"].startswith("backend-")
    assert cni.hosts_file(backend[0]).endswith("\tbackend-0.backend.shop.svc.cluster.local\tbackend-0\n")


def test_daemonset_one_pod_per_node_it_fits():
    daemonset = """
daemonSets:
  - name: everywhere
    template:
      tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
      containers: [{name: c, command: [sleep, infinity]}]
  - name: workers
    template:
      containers: [{name: c, command: [sleep, infinity]}]
  - name: ssd
    template:
      nodeSelector: {disk: ssd}
      containers: [{name: c, command: [sleep, infinity]}]
"""
    state = plan_cluster(load_text(NODES + daemonset), "n", "172.28.0.0/24")

    def nodes(owner: str) -> list[str]:
        return sorted(p.node for p in state.pods.values() if p.owner == owner)

    assert nodes("DaemonSet/everywhere") == ["cp", "w1", "w2"]
    assert nodes("DaemonSet/workers") == ["w1", "w2"]  # the control plane's taint
    assert nodes("DaemonSet/ssd") == ["w1"]
    # Stable names, one per node, and a second plan keeps every pod.
    again = plan_cluster(load_text(NODES + daemonset), "n", "172.28.0.0/24", previous=state)
    assert again.pods == state.pods


def test_node_selector_and_node_name_place_pods():
    pods = """
pods:
  - {name: a, nodeSelector: {kubernetes.io/hostname: w2}, containers: [{name: c, command: [sleep, infinity]}]}
  - {name: b, nodeSelector: {disk: ssd}, containers: [{name: c, command: [sleep, infinity]}]}
  - {name: c, node: cp, containers: [{name: c, command: [sleep, infinity]}]}
  - name: d
    nodeSelector: {node-role.kubernetes.io/control-plane: ""}
    tolerations: [{operator: Exists}]
    containers: [{name: c, command: [sleep, infinity]}]
"""
    state = plan_cluster(load_text(NODES + pods), "n", "172.28.0.0/24")
    assert {k: p.node for k, p in state.pods.items() if not k.startswith("kube-system")} == {
        "default/a": "w2", "default/b": "w1", "default/c": "cp", "default/d": "cp",
    }  # fmt: skip


def test_config_map_env_files_field_refs_and_expansion():
    state = shop_state()
    pod = next(p for p in state.pods.values() if p.owner == "Deployment/frontend")
    env = dict(line.split("=", 1) for line in cni.container_environment(pod, pod.containers[0]))
    assert env["GREETING"] == "hello from the config map"
    assert env["BACKEND_URL"] == "http://backend-0.backend:8080"  # $(BACKEND_HOST) expanded
    assert env["MY_POD_IP"] == pod.ip
    assert pod.volumes["config"]["shop.properties"].startswith("currency=EUR")
    files = cni.volume_files(pod)
    assert files[f"{cni.VOLUME_DIR}/{pod.netns}/config/GREETING"] == "hello from the config map"
    argv = cni.in_pod_argv(pod, pod.containers[0], ["true"])
    script = argv[argv.index("-c") + 1]
    # After what every pod gets (the node's keys hidden, its service account token): the volume, read-only.
    assert f"/var/run/secrets/kubernetes.io/serviceaccount; }} && mkdir -p /etc/shop && mount --bind {cni.VOLUME_DIR}/" \
           f"{pod.netns}/config /etc/shop && mount -o remount,bind,ro /etc/shop && hostname" in script  # fmt: skip


def test_items_sub_path_escapes_and_optional_config_maps():
    topology = NODES + """
configMaps:
  - {name: settings, data: {a.conf: "A", b.conf: "B", PRICE: "5"}}
pods:
  - name: p
    volumes:
      - {name: v, configMap: {name: settings, items: [{key: a.conf, path: conf/app.conf}]}}
      - {name: gone, configMap: {name: nothing, optional: true}}
      - {name: scratch, emptyDir: {}}
    containers:
      - name: c
        command: [sh, -c, "echo $(PRICE) $$(PRICE) $(UNSET)"]
        envFrom: [{configMapRef: {name: nothing, optional: true}}, {configMapRef: {name: settings}, prefix: CFG_}]
        env: [{name: PRICE, value: "$(CFG_PRICE) EUR"}]
        volumeMounts: [{name: v, mountPath: /etc/app.conf, subPath: conf/app.conf}]
"""
    pod = plan_cluster(load_text(topology), "n", "172.28.0.0/24").pods["default/p"]
    assert pod.volumes == {"v": {"conf/app.conf": "A"}, "gone": {}, "scratch": {}}
    assert pod.containers[0]["command"] == ["sh", "-c", "echo 5 EUR $(PRICE) $(UNSET)"]
    env = {e["name"]: e["value"] for e in pod.containers[0]["env"]}
    assert env == {"CFG_a.conf": "A", "CFG_b.conf": "B", "CFG_PRICE": "5", "PRICE": "5 EUR"}
    script = cni.mount_commands(pod, pod.containers[0])
    assert 'touch /etc/app.conf && mount --bind /var/lib/emu/volumes/p/v/conf/app.conf /etc/app.conf' in script


def test_ordered_ready_statefulsets_start_pod_by_pod():
    state = shop_state()
    stages = ordered_stages(None, state)
    assert len(stages) == 2
    (first, wait_first), (second, wait_second) = stages
    assert "shop/backend-0" in first.pods and "shop/backend-1" not in first.pods
    assert wait_first == [state.pods["shop/backend-0"].uid] and second is state
    assert any(k.startswith("shop/frontend-") for k in first.pods)  # unordered pods start at once
    # Scaling up from a running set: only the new ordinals, in order; Parallel: at once.
    topology, _ = merge(load_text(NODES), read_manifests([str(SHOP)]), "t")
    scaled = topology.model_copy(update={"stateful_sets": [topology.stateful_sets[0].model_copy(update={"replicas": 4})]})
    bigger = plan_cluster(scaled, "n", "172.28.0.0/24", previous=state)
    assert [sorted(k for k in s.pods if "backend" in k) for s, _ in ordered_stages(state, bigger)] == [
        ["shop/backend-0", "shop/backend-1", "shop/backend-2"],
        ["shop/backend-0", "shop/backend-1", "shop/backend-2", "shop/backend-3"],
    ]
    parallel = scaled.model_copy(update={"stateful_sets": [scaled.stateful_sets[0].model_copy(
        update={"pod_management_policy": "Parallel"})]})  # fmt: skip
    assert len(ordered_stages(state, plan_cluster(parallel, "n", "172.28.0.0/24", previous=state))) == 1


def test_grace_period_reaches_the_delete_step():
    state = shop_state()
    backend = state.pods["shop/backend-0"]
    plan = cni.node_plan(state, state.node(backend.node), [], [backend], new_node=False)
    assert f"emu_delete_pod shop.backend-0 {backend.host_veth} {backend.ip} - 5" in plan.script
    assert 'kill -TERM $pids' in plan.script


# ---- emu get -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "seconds, text",
    [(-5, "<invalid>"), (-1, "0s"), (59, "59s"), (119, "119s"), (120, "2m"), (125, "2m5s"), (600, "10m"),
     (3 * 3600 + 60, "3h1m"), (9 * 3600, "9h"), (3 * 86400 + 3600, "3d1h"), (10 * 86400, "10d"),
     (3 * 365 * 86400 + 86400, "3y1d"), (9 * 365 * 86400, "9y")],
)  # fmt: skip
def test_ages_as_kubectl_prints_them(seconds, text):
    assert human_duration(seconds) == text


def running(state, ready: dict[str, bool] | None = None, started: int = 1_000) -> dict:
    return {
        pod.key: {c["name"]: {"state": "Running", "ready": (ready or {}).get(pod.key, True), "restarts": 0,
                              "started": started} for c in pod.containers}
        for pod in state.pods.values()
    }  # fmt: skip


def view(state, status=None, now=1_060.0):
    stamp_created(state, None, 1_000.0)
    return View(state, status or running(state), now)


def test_pod_objects_carry_status_as_kubernetes_does():
    state = shop_state()
    pod = view(state).pod(state.pods["shop/backend-0"])
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet"
    assert pod["spec"]["hostname"] == "backend-0" and pod["spec"]["subdomain"] == "backend"
    status = pod["status"]
    assert status["podIP"] == state.pods["shop/backend-0"].ip and status["hostIP"] == state.node(pod["spec"]["nodeName"]).node_ip
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert status["containerStatuses"][0]["state"] == {"running": {"startedAt": "1970-01-01T00:16:40Z"}}
    frontend = next(p for p in state.pods.values() if p.owner == "Deployment/frontend")
    owner = view(state).pod(frontend)["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ReplicaSet" and owner["name"] == f"frontend-{frontend.labels['pod-template-hash']}"
    probe = view(state).pod(frontend)["spec"]["containers"][0]["readinessProbe"]
    assert probe == {"failureThreshold": 3, "httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 0,
                     "periodSeconds": 1, "successThreshold": 1, "timeoutSeconds": 1}  # fmt: skip


def test_endpoints_split_ready_and_not_ready_with_hostnames():
    state = shop_state()
    status = running(state, ready={"shop/backend-1": False})
    endpoints = view(state, status).endpoints(state.services["shop/backend"])
    [subset] = endpoints["subsets"]
    assert [(a["ip"], a["hostname"]) for a in subset["addresses"]] == [(state.pods["shop/backend-0"].ip, "backend-0")]
    assert [a["targetRef"]["name"] for a in subset["notReadyAddresses"]] == ["backend-1"]
    assert subset["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    kubernetes = view(state).endpoints(state.services["default/kubernetes"])
    assert kubernetes["subsets"] == [{"addresses": [{"ip": "172.28.0.2"}], "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}]


def test_endpoint_column_shows_three_then_counts():
    obj = {"subsets": [{"addresses": [{"ip": f"10.0.0.{i}"} for i in range(1, 3)],
                        "ports": [{"port": 53}, {"port": 9153}]}]}  # fmt: skip
    assert _endpoint_list(obj) == "10.0.0.1:53,10.0.0.2:53,10.0.0.1:9153 + 1 more..."
    assert _endpoint_list({}) == "<none>"


def test_tables_have_kubectls_columns():
    state = shop_state()
    shown = view(state, now=1_000 + 3 * 60 + 7)
    pods = [o for o in shown.objects("Pod") if o["metadata"]["namespace"] == "shop"]
    text = format_table(table(shown, "Pod", pods, wide=True, namespaced_column=False))
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE",
                                "READINESS", "GATES"]  # fmt: skip
    assert lines[1].split()[:5] == ["backend-0", "1/1", "Running", "0", "3m7s"]
    assert lines[0].index("READY") == lines[1].index("1/1")  # columns line up
    services = format_table(table(shown, "Service", shown.objects("Service"), wide=False, namespaced_column=True))
    assert "shop          frontend     NodePort    " in services and "80:30480/TCP" in services
    assert "shop          backend      ClusterIP   None " in services
    deployments = format_table(table(shown, "Deployment", shown.objects("Deployment"), False, True)).splitlines()
    assert deployments[0].split() == ["NAMESPACE", "NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert deployments[2].split() == ["shop", "frontend", "2/2", "2", "2", "3m7s"]
    assert kind_of("svc") == "Service" and kind_of("deployments.apps") == "Deployment" and kind_of("bogus") is None


def test_objects_are_json(tmp_path):
    state = shop_state()
    shown = view(state)
    for kind in ("Pod", "Service", "Endpoints", "Deployment", "StatefulSet", "DaemonSet", "ConfigMap", "Namespace", "Node"):
        for obj in shown.objects(kind):
            assert json.loads(json.dumps(obj))["kind"] == kind
    [sts] = shown.objects("StatefulSet")
    assert sts["spec"]["serviceName"] == "backend" and sts["status"]["readyReplicas"] == 2
