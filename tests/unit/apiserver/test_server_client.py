"""The official Python `kubernetes` client against emu's API server, plus the
raw HTTP answers (Status bodies, media types) that clients rely on."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client, watch  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402


# the client sends strategic merge patches by default; merge patches need no patch.py
MERGE = {"_content_type": "application/merge-patch+json"}


def cm(name: str, ns: str = "default", labels: dict | None = None, data: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns,
                                                                  "labels": labels or {}}, "data": data or {}}


def http(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(code, headers, body) of a raw request."""
    req = urllib.request.Request(server.base_url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_create_list_watch_added_then_modified(apiserver):
    v1 = client.CoreV1Api(apiserver.client())
    rv = v1.list_namespaced_config_map("default").metadata.resource_version
    events: list[tuple[str, str, str]] = []
    started = threading.Event()

    def run():
        w = watch.Watch()
        started.set()
        for ev in w.stream(v1.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=10):
            events.append((ev["type"], ev["object"].metadata.name, ev["object"].data.get("k", "")))
            if len(events) == 2:
                w.stop()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait(5)
    created = v1.create_namespaced_config_map("default", cm("watched", data={"k": "1"}))
    assert created.metadata.uid and created.metadata.resource_version
    v1.patch_namespaced_config_map("watched", "default", {"data": {"k": "2"}}, **MERGE)
    t.join(15)
    assert events == [("ADDED", "watched", "1"), ("MODIFIED", "watched", "2")]
    names = [i.metadata.name for i in v1.list_namespaced_config_map("default").items]
    assert names == ["watched"]


def test_watch_from_too_old_revision_is_410(small_window_apiserver):
    server = small_window_apiserver
    v1 = client.CoreV1Api(server.client())
    first = v1.create_namespaced_config_map("default", cm("c0"))
    for i in range(1, 8):
        v1.create_namespaced_config_map("default", cm(f"c{i}"))
    with pytest.raises(ApiException) as exc:
        for _ in watch.Watch().stream(v1.list_namespaced_config_map, "default",
                                      resource_version=first.metadata.resource_version, timeout_seconds=5):
            pass
    assert exc.value.status == 410
    assert "too old resource version" in str(exc.value.reason)


def test_watch_after_restart_from_old_revision_is_410(apiserver):
    v1 = client.CoreV1Api(apiserver.client())
    old = v1.create_namespaced_config_map("default", cm("before"))
    v1.create_namespaced_config_map("default", cm("after"))
    apiserver.restart()
    v1 = client.CoreV1Api(apiserver.client())
    code, _, body = http(apiserver, "GET", f"/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=2"
                                           f"&resourceVersion={old.metadata.resource_version}")
    assert code == 200
    event = json.loads(body.splitlines()[0])
    assert event["type"] == "ERROR"
    stored = int(v1.list_namespaced_config_map("default").metadata.resource_version)
    assert event["object"] == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": f"too old resource version: {old.metadata.resource_version} ({stored})",
                               "reason": "Expired", "code": 410}


def test_list_pagination_with_limit_and_continue(apiserver):
    v1 = client.CoreV1Api(apiserver.client())
    for i in range(25):
        v1.create_namespaced_config_map("default", cm(f"cm-{i:02d}"))
    seen, token, pages = [], None, 0
    while True:
        page = v1.list_namespaced_config_map("default", limit=10, _continue=token)
        pages += 1
        seen += [i.metadata.name for i in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert pages == 3
    assert seen == [f"cm-{i:02d}" for i in range(25)]


def test_expired_continue_token_is_410(small_window_apiserver):
    v1 = client.CoreV1Api(small_window_apiserver.client())
    for i in range(3):
        v1.create_namespaced_config_map("default", cm(f"a{i}"))
    token = v1.list_namespaced_config_map("default", limit=1).metadata._continue
    for i in range(8):
        v1.create_namespaced_config_map("default", cm(f"b{i}"))
    with pytest.raises(ApiException) as exc:
        v1.list_namespaced_config_map("default", limit=1, _continue=token)
    assert exc.value.status == 410
    assert json.loads(exc.value.body)["reason"] == "Expired"


def test_restart_keeps_every_object(apiserver):
    v1 = client.CoreV1Api(apiserver.client())
    apps = client.AppsV1Api(apiserver.client())
    v1.create_namespace({"metadata": {"name": "keep"}})
    v1.create_namespaced_config_map("keep", cm("settings", "keep", data={"a": "b"}))
    apps.create_namespaced_deployment("keep", {
        "metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})
    before = v1.list_namespaced_config_map("keep").metadata.resource_version
    apiserver.restart()
    v1 = client.CoreV1Api(apiserver.client())
    apps = client.AppsV1Api(apiserver.client())
    assert v1.read_namespaced_config_map("settings", "keep").data == {"a": "b"}
    assert apps.read_namespaced_deployment("web", "keep").spec.replicas == 1
    assert v1.list_namespaced_config_map("keep").metadata.resource_version == before
    after = v1.create_namespaced_config_map("keep", cm("new", "keep"))
    assert int(after.metadata.resource_version) == int(before) + 1


def test_conflict_and_already_exists(apiserver):
    v1 = client.CoreV1Api(apiserver.client())
    obj = v1.create_namespaced_config_map("default", cm("x"))
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map("default", cm("x"))
    assert exc.value.status == 409
    assert json.loads(exc.value.body)["message"] == 'configmaps "x" already exists'
    v1.patch_namespaced_config_map("x", "default", {"data": {"a": "1"}}, **MERGE)
    obj.data = {"a": "2"}
    with pytest.raises(ApiException) as exc:
        v1.replace_namespaced_config_map("x", "default", obj)
    body = json.loads(exc.value.body)
    assert (exc.value.status, body["reason"]) == (409, "Conflict")
    assert body["details"] == {"name": "x", "kind": "configmaps"}


def test_generate_name(apiserver):
    v1 = client.CoreV1Api(apiserver.client())
    made = v1.create_namespaced_config_map("default", {"metadata": {"generateName": "job-"}})
    suffix = made.metadata.name[len("job-"):]
    assert made.metadata.name.startswith("job-") and len(suffix) == 5
    assert set(suffix) <= set("bcdfghjklmnpqrstvwxz2456789")


def test_namespace_lifecycle(apiserver):
    v1 = client.CoreV1Api(apiserver.client())
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map("ghost", cm("x", "ghost"))
    assert exc.value.status == 404
    assert json.loads(exc.value.body)["message"] == 'namespaces "ghost" not found'
    v1.create_namespace({"metadata": {"name": "closing"}})
    # a finalizer keeps the namespace Terminating while we try to create in it
    v1.create_namespaced_config_map("closing", {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    v1.delete_namespace("closing")
    assert v1.read_namespace("closing").status.phase == "Terminating"
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map("closing", cm("y", "closing"))
    body = json.loads(exc.value.body)
    assert (exc.value.status, body["reason"]) == (403, "Forbidden")
    assert body["message"] == ('configmaps "y" is forbidden: unable to create new content in namespace closing '
                               'because it is being terminated')
    v1.patch_namespaced_config_map("held", "closing", {"metadata": {"finalizers": None}}, **MERGE)
    for ev in watch.Watch().stream(v1.list_namespace, field_selector="metadata.name=closing", timeout_seconds=10):
        if ev["type"] == "DELETED":
            break
    with pytest.raises(ApiException) as exc:
        v1.read_namespace("closing")
    assert exc.value.status == 404


def test_finalizers_hold_deletion(apiserver):
    v1 = client.CoreV1Api(apiserver.client())
    v1.create_namespaced_config_map("default", {"metadata": {"name": "f", "finalizers": ["example.com/x"]}})
    v1.delete_namespaced_config_map("f", "default")
    held = v1.read_namespaced_config_map("f", "default")
    assert held.metadata.deletion_timestamp is not None
    v1.patch_namespaced_config_map("f", "default", {"metadata": {"finalizers": []}}, **MERGE)
    with pytest.raises(ApiException) as exc:
        v1.read_namespaced_config_map("f", "default")
    assert exc.value.status == 404


def test_dry_run_is_not_stored(apiserver):
    v1 = client.CoreV1Api(apiserver.client())
    made = v1.create_namespaced_config_map("default", cm("dry"), dry_run="All")
    assert made.metadata.name == "dry"
    with pytest.raises(ApiException):
        v1.read_namespaced_config_map("dry", "default")


def test_invalid_is_422_with_causes(apiserver):
    apps = client.AppsV1Api(apiserver.client())
    with pytest.raises(ApiException) as exc:
        apps.create_namespaced_deployment("default", {
            "metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
                "metadata": {"labels": {"app": "other"}}, "spec": {"containers": [{"name": "web"}]}}}})
    body = json.loads(exc.value.body)
    assert (exc.value.status, body["reason"]) == (422, "Invalid")
    assert body["message"] == ('Deployment.apps "web" is invalid: [spec.template.metadata.labels: Invalid value: '
                               'map[string]string{"app":"other"}: `selector` does not match template `labels`, '
                               'spec.template.spec.containers[0].image: Required value]')
    assert [c["field"] for c in body["details"]["causes"]] == ["spec.template.metadata.labels",
                                                               "spec.template.spec.containers[0].image"]


def test_status_split_and_scale(apiserver):
    apps = client.AppsV1Api(apiserver.client())
    apps.create_namespaced_deployment("default", {
        "metadata": {"name": "web"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})
    d = apps.patch_namespaced_deployment_status("web", "default", {"status": {"replicas": 2}, "spec": {"replicas": 9}},
                                                **MERGE)
    assert (d.spec.replicas, d.status.replicas, d.metadata.generation) == (2, 2, 1)
    d = apps.patch_namespaced_deployment("web", "default", {"status": {"replicas": 7}, "spec": {"paused": True}},
                                         **MERGE)
    assert (d.status.replicas, d.spec.paused, d.metadata.generation) == (2, True, 2)
    scale = apps.read_namespaced_deployment_scale("web", "default")
    assert (scale.spec.replicas, scale.status.replicas, scale.status.selector) == (2, 2, "app=web")
    apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 4}}, **MERGE)
    assert apps.read_namespaced_deployment("web", "default").spec.replicas == 4


def test_service_defaults_and_immutable_cluster_ip(apiserver):
    v1 = client.CoreV1Api(apiserver.client())
    svc = v1.create_namespaced_service("default", {"metadata": {"name": "db"}, "spec": {"ports": [{"port": 5432}]}})
    assert svc.spec.type == "ClusterIP" and svc.spec.ports[0].target_port == 5432
    assert svc.spec.cluster_ips == [svc.spec.cluster_ip]
    with pytest.raises(ApiException) as exc:
        v1.patch_namespaced_service("db", "default", {"spec": {"clusterIP": "10.96.0.77"}}, **MERGE)
    body = json.loads(exc.value.body)
    assert body["reason"] == "Invalid" and "may not change once set" in body["message"]
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_service("default", {"metadata": {"name": "db2"}, "spec": {
            "clusterIP": svc.spec.cluster_ip, "ports": [{"port": 1}]}})
    assert "provided IP is already allocated" in json.loads(exc.value.body)["message"]


def test_pod_defaults_binding_and_field_selectors(apiserver):
    v1 = client.CoreV1Api(apiserver.client())
    pod = v1.create_namespaced_pod("default", {"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "image": "busybox"}]}})
    assert pod.status.phase == "Pending" and pod.spec.service_account_name == "default"
    assert pod.spec.containers[0].image_pull_policy == "Always"
    v1.create_namespaced_pod("default", {"metadata": {"name": "q"}, "spec": {"containers": [
        {"name": "c", "image": "busybox:1.36"}]}})
    # kube answers a binding with a Status (the client cannot read it as a V1Binding, against any cluster)
    v1.create_namespaced_binding("default", {"metadata": {"name": "p"}, "target": {"kind": "Node", "name": "w1"}},
                                 _preload_content=False)
    on_w1 = v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=w1").items
    assert [p.metadata.name for p in on_w1] == ["p"]
    unscheduled = v1.list_namespaced_pod("default", field_selector="spec.nodeName=").items
    assert [p.metadata.name for p in unscheduled] == ["q"]
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_pod_binding("p", "default", {"metadata": {"name": "p"}, "target": {"name": "w2"}},
                                         _preload_content=False)
    assert json.loads(exc.value.body)["message"] == ('Operation cannot be fulfilled on pods/binding "p": pod p is '
                                                     'already assigned to node "w1"')
    with pytest.raises(ApiException) as exc:
        v1.patch_namespaced_pod("q", "default", {"spec": {"containers": [{"name": "c", "image": "x",
                                                                          "command": ["sh"]}]}}, **MERGE)
    assert json.loads(exc.value.body)["reason"] == "Invalid"


def test_watch_label_selector_transitions(apiserver):
    v1 = client.CoreV1Api(apiserver.client())
    v1.create_namespaced_config_map("default", cm("m", labels={"team": "a"}))
    rv = v1.list_namespaced_config_map("default").metadata.resource_version
    v1.patch_namespaced_config_map("m", "default", {"metadata": {"labels": {"team": "b"}}}, **MERGE)
    v1.patch_namespaced_config_map("m", "default", {"metadata": {"labels": {"team": "a"}}}, **MERGE)
    v1.delete_namespaced_config_map("m", "default")
    events = [(e["type"], e["object"].metadata.labels["team"]) for e in watch.Watch().stream(
        v1.list_namespaced_config_map, "default", label_selector="team=a", resource_version=rv, timeout_seconds=1)]
    assert events == [("DELETED", "a"), ("ADDED", "a"), ("DELETED", "a")]


def test_bookmarks(apiserver):
    code, _, body = http(apiserver, "GET", "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=2"
                                           "&allowWatchBookmarks=true&resourceVersion=1")
    events = [json.loads(line) for line in body.splitlines()]
    assert events and all(e["type"] == "BOOKMARK" for e in events)
    assert events[-1]["object"]["kind"] == "ConfigMap"
    assert int(events[-1]["object"]["metadata"]["resourceVersion"]) >= 1


def test_raw_errors(apiserver):
    code, headers, body = http(apiserver, "POST", "/api/v1/namespaces/default/configmaps", b"{not json",
                               {"Content-Type": "application/json"})
    status = json.loads(body)
    assert (code, status["kind"], status["reason"]) == (400, "Status", "BadRequest")
    code, _, body = http(apiserver, "POST", "/api/v1/namespaces/default/configmaps",
                         json.dumps({"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "a"}}).encode(),
                         {"Content-Type": "application/json"})
    assert code == 400
    assert json.loads(body)["message"] == ("the API version in the data (apps/v1) does not match the expected API "
                                           "version (v1)")
    big = json.dumps(cm("big", data={"x": "a" * (3 * 1024 * 1024)})).encode()
    code, _, body = http(apiserver, "POST", "/api/v1/namespaces/default/configmaps", big,
                         {"Content-Type": "application/json"})
    assert code == 413
    assert json.loads(body) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": "Request entity too large: limit is 3145728",
                                "reason": "RequestEntityTooLarge", "code": 413}
    code, _, body = http(apiserver, "GET", "/api/v1/widgets")
    assert (code, json.loads(body)["message"]) == (404, "the server could not find the requested resource")
    code, _, body = http(apiserver, "PUT", "/api/v1/namespaces/default/configmaps/none",
                         json.dumps(cm("none")).encode(), {"Content-Type": "application/json"})
    assert (code, json.loads(body)["message"]) == (404, 'configmaps "none" not found')


def test_aggregated_discovery_and_tables(apiserver):
    accept = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
              "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json")
    code, headers, body = http(apiserver, "GET", "/apis", headers={"Accept": accept})
    assert headers["Content-Type"] == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    doc = json.loads(body)
    apps = next(i for i in doc["items"] if i["metadata"]["name"] == "apps")
    deploy = next(r for r in apps["versions"][0]["resources"] if r["resource"] == "deployments")
    assert deploy["scope"] == "Namespaced" and deploy["shortNames"] == ["deploy"]
    assert {s["subresource"] for s in deploy["subresources"]} == {"scale", "status"}
    code, headers, body = http(apiserver, "GET", "/api/v1/namespaces",
                               headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    table = json.loads(body)
    assert table["kind"] == "Table" and [r["cells"][0] for r in table["rows"]][0] == "default"
    code, _, body = http(apiserver, "GET", "/api/v1/namespaces/default", headers={
        "Accept": "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"})
    assert json.loads(body)["kind"] == "PartialObjectMetadata"


def test_table_rows_carry_each_object_as_stored(apiserver):
    # The Table path parses objects without their managedFields and splices the stored text back.
    for i, labels in enumerate([{"app": "a"}, {}, {"managedFields": "x"}]):
        body = json.dumps(cm(f"t{i}", labels=labels, data={"note": f'\x00,"managedFields":[{i}]'})).encode()
        assert http(apiserver, "POST", "/api/v1/namespaces/default/configmaps?fieldManager=m" + str(i), body,
                    {"Content-Type": "application/json"})[0] == 201  # fmt: skip
    stored = {o["metadata"]["name"]: o for o in json.loads(http(apiserver, "GET", "/api/v1/configmaps")[2])["items"]}
    assert all(o["metadata"]["managedFields"] for o in stored.values())
    for version in ("v1", "v1beta1"):
        accept = f"application/json;as=Table;v={version};g=meta.k8s.io"
        for include in ("Metadata", "Object", "None"):
            code, headers, body = http(apiserver, "GET", f"/api/v1/configmaps?includeObject={include}",
                                       headers={"Accept": accept})  # fmt: skip
            assert code == 200 and headers["Content-Type"] == f"{accept}"
            rows = json.loads(body)["rows"]
            assert [r["cells"][0] for r in rows] == sorted(stored)
            for row in rows:
                if include == "None":
                    assert "object" not in row
                    continue
                obj = stored[row["cells"][0]]
                partial = {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{version}",
                           "metadata": obj["metadata"]}
                want = obj if include == "Object" else partial
                assert row["object"] == want


def test_events_k8s_io_shares_core_events(apiserver):
    ev = client.EventsV1Api(apiserver.client())
    v1 = client.CoreV1Api(apiserver.client())
    ev.create_namespaced_event("default", {"metadata": {"name": "e1"}, "eventTime": "2026-01-01T00:00:00.000000Z",
                                           "reason": "Started", "note": "hello", "type": "Normal",
                                           "action": "Start", "reportingController": "emu/test",
                                           "reportingInstance": "emu-test",
                                           "regarding": {"kind": "Pod", "name": "p", "namespace": "default"}})
    core = v1.read_namespaced_event("e1", "default")
    assert (core.message, core.involved_object.name, core.reporting_component) == ("hello", "p", "emu/test")
    assert [e.metadata.name for e in v1.list_namespaced_event(
        "default", field_selector="involvedObject.name=p").items] == ["e1"]


def test_main_serves_and_stops_on_sigterm(tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.Popen([sys.executable, "-m", "emu.apiserver", "--data", str(tmp_path / "data"),
                             "--listen", "127.0.0.1:0", "--insecure"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        m = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
        assert m, line
        with urllib.request.urlopen(m.group(1) + "/healthz", timeout=10) as r:
            assert r.read() == b"ok"
        with urllib.request.urlopen(m.group(1) + "/api/v1/namespaces/default", timeout=10) as r:
            assert json.loads(r.read())["status"]["phase"] == "Active"
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=10)[1]
        assert proc.returncode == 0
        assert rest.splitlines()[-1] == "emu apiserver: stopped"
        assert (tmp_path / "data" / "state.db").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_watch_path_deletecollection_and_keep_alive(apiserver):
    from http.client import HTTPConnection

    v1 = client.CoreV1Api(apiserver.client())
    for name, team in (("a", "x"), ("b", "x"), ("c", "y")):
        v1.create_namespaced_config_map("default", cm(name, labels={"team": team}))
    # the deprecated /watch/ path with a name: that object only, current state first
    code, _, body = http(apiserver, "GET", "/api/v1/watch/namespaces/default/configmaps/b?timeoutSeconds=1")
    events = [json.loads(line) for line in body.splitlines()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "b")]
    deleted = v1.delete_collection_namespaced_config_map("default", label_selector="team=x", _preload_content=False)
    assert sorted(i["metadata"]["name"] for i in json.loads(deleted.data)["items"]) == ["a", "b"]
    assert [c.metadata.name for c in v1.list_namespaced_config_map("default").items] == ["c"]
    # one connection: a request refused before its body is read leaves the next one intact
    host, port = apiserver.base_url[len("http://"):].split(":")
    conn = HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/api/v1/namespaces/default/widgets", body=b'{"kind":"Widget"}',
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert (r.status, json.loads(r.read())["reason"]) == (404, "NotFound")
    conn.request("GET", "/api/v1/namespaces/default/configmaps/c")
    r = conn.getresponse()
    assert (r.status, json.loads(r.read())["metadata"]["name"]) == (200, "c")
    conn.request("GET", "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true"
                        "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")
    r = conn.getresponse()
    assert (r.status, json.loads(r.read())["reason"]) == (422, "Invalid")
    conn.close()


@pytest.mark.parametrize("method,path,query,want", [
    ("GET", "/api/v1/namespaces/default/pods", {}, ("list", "default", "", "pods", "", "")),
    ("GET", "/api/v1/namespaces/default/pods/web", {}, ("get", "default", "", "pods", "", "web")),
    ("GET", "/api/v1/pods", {"watch": ["true"]}, ("watch", "", "", "pods", "", "")),
    ("GET", "/api/v1/watch/namespaces/default/pods/web", {}, ("watch", "default", "", "pods", "", "web")),
    ("GET", "/api/v1/namespaces/default/pods", {"fieldSelector": ["metadata.name=web"]},
     ("list", "default", "", "pods", "", "web")),
    ("PUT", "/apis/apps/v1/namespaces/shop/deployments/web/scale", {},
     ("update", "shop", "apps", "deployments", "scale", "web")),
    ("PATCH", "/api/v1/namespaces/shop/status", {}, ("patch", "shop", "", "namespaces", "status", "shop")),
    ("GET", "/api/v1/namespaces/shop", {}, ("get", "shop", "", "namespaces", "", "shop")),
    ("DELETE", "/api/v1/namespaces/shop/configmaps", {}, ("deletecollection", "shop", "", "configmaps", "", "")),
    ("POST", "/api/v1/namespaces/shop/pods/web/binding", {}, ("create", "shop", "", "pods", "binding", "web")),
])
def test_request_info_as_kubernetes_builds_it(method, path, query, want):
    from emu.apiserver.server import request_info

    info = request_info(method, path, query)
    assert info.is_resource
    assert (info.verb, info.namespace, info.group, info.resource, info.subresource, info.name) == want


@pytest.mark.parametrize("path,verb", [("/api", "get"), ("/apis/apps", "get"), ("/healthz", "get"),
                                       ("/version", "get"), ("/api/v1", "get")])
def test_request_info_non_resource(path, verb):
    from emu.apiserver.server import request_info

    info = request_info("GET", path, {})
    assert not info.is_resource and info.verb == verb and info.path == path


def test_negotiate_and_human_duration():
    from emu.apiserver.errors import ApiError
    from emu.apiserver.server import human_duration, negotiate

    assert negotiate("") == ("json", "")
    assert negotiate("application/json;as=Table;v=v1;g=meta.k8s.io,application/json") == ("table", "v1")
    assert negotiate("application/vnd.kubernetes.protobuf,application/json") == ("json", "")
    assert negotiate("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io") == ("meta", "v1")
    with pytest.raises(ApiError) as exc:
        negotiate("application/vnd.kubernetes.protobuf")
    assert exc.value.code == 406
    assert [human_duration(s) for s in (5, 119, 150, 3600, 5 * 3600 + 600, 30 * 3600, 3 * 86400, 400 * 86400)] == \
        ["5s", "119s", "2m30s", "60m", "5h10m", "30h", "3d", "400d"]


def test_delete_answers_200_unless_orphan_dependents_is_false(apiserver):
    """kube-apiserver's delete handler: 200 with the object when it stays (a pod's graceful
    delete, finalizers), 202 only when the object stays and orphanDependents=false."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"nodeName": "w1", "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}]}}
    http(apiserver, "POST", "/api/v1/namespaces/default/pods", json.dumps(pod).encode(),
         {"Content-Type": "application/json"})
    code, _, body = http(apiserver, "DELETE", "/api/v1/namespaces/default/pods/p")
    obj = json.loads(body)
    assert (code, obj["kind"], obj["metadata"]["deletionGracePeriodSeconds"]) == (200, "Pod", 30)
    assert obj["metadata"]["deletionTimestamp"]
    v1 = client.CoreV1Api(apiserver.client())
    v1.create_namespaced_config_map("default", {"metadata": {"name": "f", "finalizers": ["example.com/x"]}})
    code, _, body = http(apiserver, "DELETE", "/api/v1/namespaces/default/configmaps/f?orphanDependents=false")
    assert (code, json.loads(body)["metadata"]["name"]) == (202, "f")
    v1.create_namespaced_config_map("default", {"metadata": {"name": "g", "finalizers": ["example.com/x"]}})
    code, _, _ = http(apiserver, "DELETE", "/api/v1/namespaces/default/configmaps/g",
                      json.dumps({"orphanDependents": True}).encode(), {"Content-Type": "application/json"})
    assert code == 200
