"""emu/apiserver/tables.py: the Table kube-apiserver serves for `kubectl get`.

Expected cells follow kubernetes/pkg/printers/internalversion/printers.go
(the server fills the wide columns too) and apimachinery's HumanDuration.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from emu.apiserver.tables import format_label_selector, human_duration, selector_string, table

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def ago(**delta) -> str:
    return (NOW - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(name="x", age=timedelta(seconds=5), **extra) -> dict:
    return {"name": name, "namespace": "default", "creationTimestamp": (NOW - age).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "uid": "u-" + name, **extra}


def cells(resource: str, obj: dict) -> list:
    return table(resource, [obj], now=NOW)["rows"][0]["cells"]


def header(resource: str) -> list[tuple[str, str, int]]:
    return [(c["name"], c["type"], c["priority"]) for c in table(resource, [], now=NOW)["columnDefinitions"]]


# ---------------------------------------------------------------------------
# Ages


@pytest.mark.parametrize("seconds,text", [
    (-2, "<invalid>"), (-1, "0s"), (0, "0s"), (1, "1s"), (119, "119s"), (120, "2m"), (121, "2m1s"),
    (599, "9m59s"), (600, "10m"), (179 * 60 + 59, "179m"), (3 * 3600, "3h"), (3 * 3600 + 60, "3h1m"),
    (8 * 3600 - 1, "7h59m"), (8 * 3600, "8h"), (47 * 3600 + 3599, "47h"), (48 * 3600, "2d"),
    (49 * 3600, "2d1h"), (8 * 86400 - 1, "7d23h"), (8 * 86400, "8d"), (2 * 365 * 86400 - 1, "729d"),
    (2 * 365 * 86400, "2y"), (3 * 365 * 86400 + 10 * 86400, "3y10d"), (8 * 365 * 86400, "8y"),
    (9 * 365 * 86400 + 86400, "9y"),
])
def test_human_duration_matches_apimachinery(seconds, text):
    assert human_duration(seconds) == text


def test_age_of_an_object_without_a_creation_time_is_unknown():
    assert cells("configmaps", {"metadata": {"name": "c"}}) == ["c", 0, "<unknown>"]


# ---------------------------------------------------------------------------
# Pods

POD_COLUMNS = [("Name", "string", 0), ("Ready", "string", 0), ("Status", "string", 0),
               ("Restarts", "string", 0), ("Age", "string", 0), ("IP", "string", 1), ("Node", "string", 1),
               ("Nominated Node", "string", 1), ("Readiness Gates", "string", 1)]


def test_pod_columns():
    assert header("pods") == POD_COLUMNS
    assert table("pods", [], now=NOW)["columnDefinitions"][0]["format"] == "name"


def pod(status: dict, spec: dict | None = None, **metadata) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta("web", timedelta(minutes=3, seconds=2), **metadata),
            "spec": spec or {"containers": [{"name": "c", "image": "nginx"}], "nodeName": "node1"},
            "status": status}


RUNNING = {"running": {"startedAt": ago(minutes=3)}}


def cs(state: dict, ready=False, restarts=0, last_finished=None, name="c") -> dict:
    status = {"name": name, "state": state, "ready": ready, "restartCount": restarts}
    if last_finished is not None:
        status["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": last_finished}}
    return status


POD_CASES = [
    ("running and ready",
     pod({"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
          "conditions": [{"type": "Ready", "status": "True"}],
          "containerStatuses": [cs(RUNNING, ready=True)]}),
     ["web", "1/1", "Running", "0", "3m2s", "10.244.1.5", "node1", "<none>", "<none>"]),
    ("pending, not scheduled",
     pod({"phase": "Pending"}, spec={"containers": [{"name": "c"}]}),
     ["web", "0/1", "Pending", "0", "3m2s", "<none>", "<none>", "<none>", "<none>"]),
    ("container creating",
     pod({"phase": "Pending", "containerStatuses": [cs({"waiting": {"reason": "ContainerCreating"}})]}),
     ["web", "0/1", "ContainerCreating", "0", "3m2s", "<none>", "node1", "<none>", "<none>"]),
    ("crash loop with restarts and when the last one was",
     pod({"phase": "Running", "containerStatuses": [
         cs({"waiting": {"reason": "CrashLoopBackOff"}}, restarts=4, last_finished=ago(seconds=75))]}),
     ["web", "0/1", "CrashLoopBackOff", "4 (75s ago)", "3m2s", "<none>", "node1", "<none>", "<none>"]),
    ("completed",
     pod({"phase": "Succeeded", "containerStatuses": [
         cs({"terminated": {"exitCode": 0, "reason": "Completed"}})]}),
     ["web", "0/1", "Completed", "0", "3m2s", "<none>", "node1", "<none>", "<none>"]),
    ("error",
     pod({"phase": "Failed", "containerStatuses": [cs({"terminated": {"exitCode": 1, "reason": "Error"}})]}),
     ["web", "0/1", "Error", "0", "3m2s", "<none>", "node1", "<none>", "<none>"]),
    ("terminated without a reason shows the exit code, or the signal",
     pod({"phase": "Running", "containerStatuses": [
         cs({"terminated": {"exitCode": 137}}, name="a"), cs({"terminated": {"exitCode": 0, "signal": 9}}, name="b")]},
         spec={"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "node1"}),
     ["web", "0/2", "ExitCode:137", "0", "3m2s", "<none>", "node1", "<none>", "<none>"]),
    ("terminating",
     pod({"phase": "Running", "containerStatuses": [cs(RUNNING, ready=True)]}, deletionTimestamp=ago(seconds=1)),
     ["web", "1/1", "Terminating", "0", "3m2s", "<none>", "node1", "<none>", "<none>"]),
    ("deleted on a lost node",
     pod({"phase": "Running", "reason": "NodeLost", "containerStatuses": [cs(RUNNING, ready=True)]},
         deletionTimestamp=ago(seconds=1)),
     ["web", "1/1", "Unknown", "0", "3m2s", "<none>", "node1", "<none>", "<none>"]),
    ("a completed container next to a running one in a ready pod",
     pod({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": [
         cs(RUNNING, ready=True, name="a"), cs({"terminated": {"exitCode": 0, "reason": "Completed"}}, name="b")]},
         spec={"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "node1"}),
     ["web", "1/2", "Running", "0", "3m2s", "<none>", "node1", "<none>", "<none>"]),
    ("the same when the pod is not ready",
     pod({"phase": "Running", "containerStatuses": [
         cs(RUNNING, ready=True, name="a"), cs({"terminated": {"exitCode": 0, "reason": "Completed"}}, name="b")]},
         spec={"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "node1"}),
     ["web", "1/2", "NotReady", "0", "3m2s", "<none>", "node1", "<none>", "<none>"]),
    ("init containers still running",
     pod({"phase": "Pending", "initContainerStatuses": [
         cs({"terminated": {"exitCode": 0, "reason": "Completed"}}, name="i1"), cs(RUNNING, name="i2")]},
         spec={"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "c"}],
               "nodeName": "node1"}),
     ["web", "0/1", "Init:1/2", "0", "3m2s", "<none>", "node1", "<none>", "<none>"]),
    ("an init container crash-looping",
     pod({"phase": "Pending", "initContainerStatuses": [
         cs({"waiting": {"reason": "CrashLoopBackOff"}}, restarts=2, last_finished=ago(minutes=1), name="i1")]},
         spec={"initContainers": [{"name": "i1"}], "containers": [{"name": "c"}], "nodeName": "node1"}),
     ["web", "0/1", "Init:CrashLoopBackOff", "2 (60s ago)", "3m2s", "<none>", "node1", "<none>", "<none>"]),
    ("an init container failed without a reason",
     pod({"phase": "Pending", "initContainerStatuses": [cs({"terminated": {"exitCode": 2}}, name="i1")]},
         spec={"initContainers": [{"name": "i1"}], "containers": [{"name": "c"}], "nodeName": "node1"}),
     ["web", "0/1", "Init:ExitCode:2", "0", "3m2s", "<none>", "node1", "<none>", "<none>"]),
    ("a started sidecar counts among the containers",
     pod({"phase": "Running", "conditions": [{"type": "Initialized", "status": "True"}],
          "initContainerStatuses": [dict(cs(RUNNING, ready=True, restarts=1, last_finished=ago(hours=2),
                                            name="proxy"), started=True)],
          "containerStatuses": [cs(RUNNING, ready=True)]},
         spec={"initContainers": [{"name": "proxy", "restartPolicy": "Always"}], "containers": [{"name": "c"}],
               "nodeName": "node1"}),
     ["web", "2/2", "Running", "1 (120m ago)", "3m2s", "<none>", "node1", "<none>", "<none>"]),
    ("scheduling gated",
     pod({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                              "reason": "SchedulingGated"}]}),
     ["web", "0/1", "SchedulingGated", "0", "3m2s", "<none>", "node1", "<none>", "<none>"]),
    ("readiness gates and a nominated node",
     pod({"phase": "Running", "nominatedNodeName": "node2", "podIPs": [{"ip": "fd00::5"}],
          "conditions": [{"type": "example.com/lb", "status": "True"}, {"type": "example.com/dns", "status": "False"}],
          "containerStatuses": [cs(RUNNING, ready=True)]},
         spec={"containers": [{"name": "c"}], "nodeName": "node1",
               "readinessGates": [{"conditionType": "example.com/lb"}, {"conditionType": "example.com/dns"}]}),
     ["web", "1/1", "Running", "0", "3m2s", "fd00::5", "node1", "node2", "1/2"]),
]


@pytest.mark.parametrize("obj,expected", [c[1:] for c in POD_CASES], ids=[c[0] for c in POD_CASES])
def test_pod_rows(obj, expected):
    assert cells("pods", obj) == expected


def test_finished_pods_carry_the_completed_row_condition():
    done = table("pods", [pod({"phase": "Succeeded"}), pod({"phase": "Failed"}), pod({"phase": "Running"})],
                 now=NOW)["rows"]
    assert done[0]["conditions"] == [{"type": "Completed", "status": "True", "reason": "Succeeded",
                                      "message": "The pod has completed successfully."}]
    assert done[1]["conditions"][0]["reason"] == "Failed"
    assert "conditions" not in done[2]


# ---------------------------------------------------------------------------
# Row objects and table metadata


def test_rows_carry_partial_object_metadata_by_default():
    obj = pod({"phase": "Running"})
    out = table("pods", [obj], now=NOW, resource_version="42")
    assert out["kind"] == "Table" and out["apiVersion"] == "meta.k8s.io/v1"
    assert out["metadata"] == {"resourceVersion": "42"}
    assert out["rows"][0]["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                        "metadata": obj["metadata"]}


def test_include_object_none_and_object():
    obj = pod({"phase": "Running"})
    assert "object" not in table("pods", [obj], "None", now=NOW)["rows"][0]
    assert table("pods", [obj], "Object", now=NOW)["rows"][0]["object"] == obj
    with pytest.raises(ValueError):
        table("pods", [obj], "Everything", now=NOW)


def test_no_headers_leaves_out_the_column_definitions():
    out = table("pods", [pod({"phase": "Running"})], now=NOW, no_headers=True, continue_token="abc")
    assert "columnDefinitions" not in out
    assert out["metadata"] == {"continue": "abc"}


def test_unknown_kinds_get_the_default_name_and_created_at():
    assert header("roles") == [("Name", "string", 0), ("Created At", "date", 0)]
    assert cells("clusterroles", {"metadata": meta("view", timedelta(days=3))}) == ["view", "2026-12-04T12:00:00Z"]
    assert cells("widgets", {"metadata": {"name": "w"}}) == ["w", "0001-01-01T00:00:00Z"]


# ---------------------------------------------------------------------------
# Other kinds


def test_nodes():
    assert header("nodes") == [("Name", "string", 0), ("Status", "string", 0), ("Roles", "string", 0),
                               ("Age", "string", 0), ("Version", "string", 0), ("Internal-IP", "string", 1),
                               ("External-IP", "string", 1), ("OS-Image", "string", 1),
                               ("Kernel-Version", "string", 1), ("Container-Runtime", "string", 1)]
    node = {"metadata": meta("cp", timedelta(days=2, hours=3),
                             labels={"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "master",
                                     "node-role.kubernetes.io/": ""}),
            "spec": {"unschedulable": True},
            "status": {"conditions": [{"type": "MemoryPressure", "status": "False"},
                                      {"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "Hostname", "address": "cp"},
                                     {"type": "InternalIP", "address": "172.18.0.2"}],
                       "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                                    "kernelVersion": "6.18.0", "containerRuntimeVersion": "containerd://1.7"}}}
    assert cells("nodes", node) == ["cp", "Ready,SchedulingDisabled", "control-plane,master", "2d3h", "v1.32.0",
                                    "172.18.0.2", "<none>", "Debian GNU/Linux 12 (bookworm)", "6.18.0",
                                    "containerd://1.7"]
    bare = {"metadata": meta("w1"), "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    assert cells("nodes", bare) == ["w1", "NotReady", "<none>", "5s", "", "<none>", "<none>", "<unknown>",
                                    "<unknown>", "<unknown>"]
    assert cells("nodes", {"metadata": meta("w2")})[1] == "Unknown"


def test_namespaces():
    assert header("namespaces") == [("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)]
    assert cells("namespaces", {"metadata": meta("kube-system", timedelta(hours=5)),
                                "status": {"phase": "Active"}}) == ["kube-system", "Active", "5h"]


SERVICE_CASES = [
    ("cluster IP", {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                    "selector": {"k8s-app": "kube-dns"},
                    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}, {},
     ["svc", "ClusterIP", "10.96.0.10", "<none>", "53/UDP,53/TCP", "5s", "k8s-app=kube-dns"]),
    ("headless", {"type": "ClusterIP", "clusterIPs": ["None"], "ports": []}, {},
     ["svc", "ClusterIP", "None", "<none>", "<none>", "5s", "<none>"]),
    ("node port with external IPs", {"type": "NodePort", "clusterIPs": ["10.96.1.1"], "externalIPs": ["1.2.3.4"],
                                     "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}],
                                     "selector": {"b": "2", "a": "1"}}, {},
     ["svc", "NodePort", "10.96.1.1", "1.2.3.4", "80:30080/TCP", "5s", "a=1,b=2"]),
    ("load balancer pending", {"type": "LoadBalancer", "clusterIPs": ["10.96.1.2"],
                               "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]}, {},
     ["svc", "LoadBalancer", "10.96.1.2", "<pending>", "443:31443/TCP", "5s", "<none>"]),
    ("load balancer with addresses", {"type": "LoadBalancer", "clusterIPs": ["10.96.1.2"], "externalIPs": ["9.9.9.9"],
                                      "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]},
     {"loadBalancer": {"ingress": [{"ip": "172.18.0.9"}, {"hostname": "lb.example"}, {"ip": "172.18.0.9"}]}},
     ["svc", "LoadBalancer", "10.96.1.2", "172.18.0.9,lb.example,9.9.9.9", "443:31443/TCP", "5s", "<none>"]),
    ("external name", {"type": "ExternalName", "externalName": "example.com"}, {},
     ["svc", "ExternalName", "<none>", "example.com", "<none>", "5s", "<none>"]),
]


@pytest.mark.parametrize("spec,status,expected", [c[1:] for c in SERVICE_CASES], ids=[c[0] for c in SERVICE_CASES])
def test_services(spec, status, expected):
    assert cells("services", {"metadata": meta("svc"), "spec": spec, "status": status}) == expected


def test_service_columns():
    assert header("services") == [("Name", "string", 0), ("Type", "string", 0), ("Cluster-IP", "string", 0),
                                  ("External-IP", "string", 0), ("Port(s)", "string", 0), ("Age", "string", 0),
                                  ("Selector", "string", 1)]


def test_endpoints():
    subsets = [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
                "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]},
               {"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 80}]}]
    assert cells("endpoints", {"metadata": meta("web"), "subsets": subsets}) == [
        "web", "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 2 more...", "5s"]
    assert cells("endpoints", {"metadata": meta("web"), "subsets": [{"addresses": [{"ip": "fd00::1"}],
                                                                    "ports": [{"port": 80}]}]})[1] == "[fd00::1]:80"
    assert cells("endpoints", {"metadata": meta("none")}) == ["none", "<none>", "5s"]


def test_endpointslices():
    assert header("endpointslices") == [("Name", "string", 0), ("AddressType", "string", 0),
                                        ("Ports", "string", 0), ("Endpoints", "string", 0), ("Age", "string", 0)]
    eps = {"metadata": meta("web-abc12"), "addressType": "IPv4",
           "ports": [{"name": "http", "port": 80}, {"name": "named"}, {}],
           "endpoints": [{"addresses": [f"10.0.0.{i}"]} for i in range(1, 6)]}
    assert cells("endpointslices", eps) == ["web-abc12", "IPv4", "80,named,*",
                                            "10.0.0.1,10.0.0.2,10.0.0.3 + 2 more...", "5s"]
    empty = {"metadata": meta("e"), "addressType": "IPv6"}
    assert cells("endpointslices", empty) == ["e", "IPv6", "<unset>", "<unset>", "5s"]


def test_configmaps_secrets_serviceaccounts_leases():
    assert cells("configmaps", {"metadata": meta("cm"), "data": {"a": "1", "b": "2"},
                                "binaryData": {"c": "AA=="}}) == ["cm", 3, "5s"]
    assert header("secrets") == [("Name", "string", 0), ("Type", "string", 0), ("Data", "string", 0),
                                 ("Age", "string", 0)]
    secret = {"metadata": meta("s"), "type": "Opaque", "data": {"k": "dg=="}}
    assert cells("secrets", secret) == ["s", "Opaque", 1, "5s"]
    assert cells("serviceaccounts", {"metadata": meta("default")}) == ["default", 0, "5s"]
    assert cells("leases", {"metadata": meta("node1"), "spec": {"holderIdentity": "node1"}}) == ["node1", "node1", "5s"]
    assert cells("leases", {"metadata": meta("free"), "spec": {}}) == ["free", "", "5s"]


def test_events_core_and_events_k8s_io():
    assert [c[0] for c in header("events")] == ["Last Seen", "Type", "Reason", "Object", "Subobject", "Source",
                                                "Message", "First Seen", "Count", "Name"]
    core = {"apiVersion": "v1", "kind": "Event", "metadata": meta("web.1"), "type": "Normal", "reason": "Pulled",
            "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{c}"},
            "source": {"component": "kubelet", "host": "node1"}, "message": " Pulled image \n",
            "firstTimestamp": ago(minutes=10), "lastTimestamp": ago(minutes=2), "count": 3}
    assert cells("events", core) == ["2m", "Normal", "Pulled", "pod/web", "spec.containers{c}", "kubelet, node1",
                                     "Pulled image", "10m", 3, "web.1"]
    new = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": meta("web.2"), "type": "Warning",
           "reason": "BackOff", "regarding": {"kind": "Pod", "name": "web"}, "note": "Back-off",
           "eventTime": ago(seconds=30), "reportingController": "kubelet",
           "series": {"count": 7, "lastObservedTime": ago(seconds=4)}}
    assert cells("events", new) == ["4s", "Warning", "BackOff", "pod/web", "", "kubelet", "Back-off", "30s", 7,
                                    "web.2"]
    single = {"metadata": meta("n.1"), "involvedObject": {"kind": "Node"}, "eventTime": ago(seconds=9)}
    assert cells("events", single) == ["9s", "", "", "node", "", "", "", "9s", 1, "n.1"]


def workload(kind: str, spec: dict, status: dict) -> dict:
    template = {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}, {"name": "log", "image": "busybox"}]}}
    return {"kind": kind, "metadata": meta("web", timedelta(minutes=42)),
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template, **spec}, "status": status}


def test_deployments():
    assert header("deployments") == [("Name", "string", 0), ("Ready", "string", 0), ("Up-to-date", "string", 0),
                                     ("Available", "string", 0), ("Age", "string", 0), ("Containers", "string", 1),
                                     ("Images", "string", 1), ("Selector", "string", 1)]
    obj = workload("Deployment", {"replicas": 3}, {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2})
    assert cells("deployments", obj) == ["web", "2/3", 3, 2, "42m", "web,log", "nginx:1.25,busybox", "app=web"]
    assert cells("deployments", workload("Deployment", {"replicas": 0}, {}))[1:4] == ["0/0", 0, 0]


def test_replicasets_statefulsets_daemonsets():
    rs = workload("ReplicaSet", {"replicas": 3}, {"replicas": 3, "readyReplicas": 1})
    assert cells("replicasets", rs) == ["web", 3, 3, 1, "42m", "web,log", "nginx:1.25,busybox", "app=web"]
    sts = workload("StatefulSet", {"replicas": 2}, {"readyReplicas": 2})
    assert cells("statefulsets", sts) == ["web", "2/2", "42m", "web,log", "nginx:1.25,busybox"]
    ds = workload("DaemonSet", {}, {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2,
                                    "updatedNumberScheduled": 3, "numberAvailable": 2})
    assert cells("daemonsets", ds) == ["web", 3, 3, 2, 3, 2, "<none>", "42m", "web,log", "nginx:1.25,busybox",
                                       "app=web"]
    ds["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/os": "linux"}
    assert cells("daemonsets", ds)[6] == "kubernetes.io/os=linux"


def test_label_selectors_print_as_kubernetes_prints_them():
    selector = {"matchLabels": {"tier": "front", "app": "web"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]},
                                     {"key": "zone", "operator": "NotIn", "values": ["b"]},
                                     {"key": "canary", "operator": "DoesNotExist"},
                                     {"key": "beta", "operator": "Exists"}]}
    assert selector_string(selector) == "app=web,beta,!canary,env in (dev,prod),tier=front,zone notin (b)"
    assert format_label_selector({}) == "<none>"
    assert format_label_selector(None) == "<none>"


def test_networkpolicies():
    assert header("networkpolicies") == [("Name", "string", 0), ("Pod-Selector", "string", 0), ("Age", "string", 0)]
    assert cells("networkpolicies", {"metadata": meta("deny"), "spec": {"podSelector": {}}}) == ["deny", "<none>", "5s"]
    assert cells("networkpolicies", {"metadata": meta("web"), "spec": {"podSelector": {"matchLabels": {"app": "web"}}}}
                 ) == ["web", "app=web", "5s"]


def test_ingresses_and_ingressclasses():
    assert [c[0] for c in header("ingresses")] == ["Name", "Class", "Hosts", "Address", "Ports", "Age"]
    ing = {"metadata": meta("web"), "spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["a.example"]}],
                                             "rules": [{"host": f"h{i}.example"} for i in range(5)]},
           "status": {"loadBalancer": {"ingress": [{"ip": "172.18.0.5"}]}}}
    assert cells("ingresses", ing) == ["web", "nginx", "h0.example,h1.example,h2.example + 2 more...",
                                       "172.18.0.5", "80, 443", "5s"]
    assert cells("ingresses", {"metadata": meta("any"), "spec": {"rules": [{}]}}) == [
        "any", "<none>", "*", "", "80", "5s"]
    klass = {"metadata": meta("nginx"), "spec": {"controller": "k8s.io/ingress-nginx",
                                                 "parameters": {"apiGroup": "k8s.example.com", "kind": "Params",
                                                                "name": "p"}}}
    assert cells("ingressclasses", klass) == ["nginx", "k8s.io/ingress-nginx", "Params.k8s.example.com/p", "5s"]
    assert cells("ingressclasses", {"metadata": meta("c"), "spec": {"controller": "x"}})[2] == "<none>"


def test_role_bindings():
    assert [c[0] for c in header("clusterrolebindings")] == ["Name", "Role", "Age", "Users", "Groups",
                                                             "ServiceAccounts"]
    binding = {"metadata": meta("admins"), "roleRef": {"kind": "ClusterRole", "name": "admin"},
               "subjects": [{"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"},
                            {"kind": "Group", "name": "system:masters"},
                            {"kind": "ServiceAccount", "namespace": "kube-system", "name": "ctrl"}]}
    assert cells("rolebindings", binding) == ["admins", "ClusterRole/admin", "5s", "alice, bob", "system:masters",
                                              "kube-system/ctrl"]
    assert cells("clusterrolebindings", binding)[:2] == ["admins", "ClusterRole/admin"]


def test_the_resource_may_be_given_as_the_servers_resource_info():
    from emu.apiserver import resources
    info = resources.lookup("apps", "v1", "deployments")
    obj = workload("Deployment", {"replicas": 1}, {"readyReplicas": 1})
    assert table(info, [obj], now=NOW)["rows"][0]["cells"][:2] == ["web", "1/1"]
