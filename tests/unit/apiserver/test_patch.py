"""emu/apiserver/patch.py: JSON, merge and strategic merge patches and
server-side apply, checked against what kube-apiserver does with them.

The strategic merge cases restate, with Kubernetes' own fields, what
k8s.io/apimachinery/pkg/util/strategicpatch's tests expect when a patch is
applied; the kubectl cases are the bodies kubectl sends for apply, label,
annotate, scale, set image and rollout restart.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import pytest

from emu.apiserver.patch import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    PatchError,
    apply_patch,
    decode_apply_body,
    fields_v1,
    parse_fields_v1,
    path_string,
    server_side_apply,
    update_managed_fields,
)
from tests.unit.apiserver.patch_schemas import DEPLOYMENT, POD, SERVICE

T0 = datetime(2026, 12, 7, 10, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 12, 7, 11, 30, 0, tzinfo=UTC)


def smp(current: dict, patch: dict, schema=POD) -> dict:
    return apply_patch(STRATEGIC_MERGE_PATCH, current, json.dumps(patch).encode(), schema)


def pod(**spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}},
            "spec": spec}


def deployment(image="nginx:1.25", replicas=2) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image,
                                         "ports": [{"containerPort": 80, "protocol": "TCP"}]}]},
            },
        },
    }


# ---------------------------------------------------------------------------
# JSON patch (RFC 6902)


def test_json_patch_add_replace_remove():
    current = pod(containers=[{"name": "a", "image": "nginx"}])
    patch = [
        {"op": "add", "path": "/metadata/labels/tier", "value": "front"},
        {"op": "replace", "path": "/spec/containers/0/image", "value": "nginx:1.25"},
        {"op": "remove", "path": "/metadata/labels/app"},
    ]
    out = apply_patch(JSON_PATCH, current, json.dumps(patch).encode(), POD)
    assert out["metadata"]["labels"] == {"tier": "front"}
    assert out["spec"]["containers"][0]["image"] == "nginx:1.25"
    assert current["metadata"]["labels"] == {"app": "web"}, "the current object is not modified"


@pytest.mark.parametrize("patch", [
    [{"op": "test", "path": "/metadata/name", "value": "other"}],
    [{"op": "remove", "path": "/metadata/missing"}],
    [{"op": "frobnicate", "path": "/metadata/name"}],
    [{"path": "/metadata/name"}],
])
def test_json_patch_failures_are_422_with_kube_apiservers_generic_message(patch):
    with pytest.raises(PatchError) as error:
        apply_patch(JSON_PATCH, pod(), json.dumps(patch).encode(), POD)
    assert error.value.code == 422
    assert error.value.reason == "Invalid"
    assert error.value.message == "the server rejected our request due to an error in our request"


def test_json_patch_body_that_is_not_a_list_is_400():
    with pytest.raises(PatchError) as error:
        apply_patch(JSON_PATCH, pod(), b'{"op": "add"}', POD)
    assert (error.value.code, error.value.reason) == (400, "BadRequest")
    assert "cannot unmarshal object" in error.value.message


def test_json_patch_with_too_many_operations_is_413():
    ops = [{"op": "test", "path": "/kind", "value": "Pod"}] * 10001
    with pytest.raises(PatchError) as error:
        apply_patch(JSON_PATCH, pod(), json.dumps(ops).encode(), POD)
    assert error.value.code == 413
    assert error.value.message.endswith("The allowed maximum operations in a JSON patch is 10000, got 10001")


@pytest.mark.parametrize("content_type", [JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH])
def test_body_that_is_not_json_is_400_invalid_json_patch(content_type):
    with pytest.raises(PatchError) as error:
        apply_patch(content_type, pod(), b"{not json", POD)
    assert (error.value.code, error.value.message) == (400, "invalid JSON patch")


def test_unknown_content_type_is_415_listing_the_accepted_types():
    with pytest.raises(PatchError) as error:
        apply_patch("application/json", pod(), b"{}", POD)
    assert error.value.code == 415
    assert error.value.reason == "UnsupportedMediaType"
    assert error.value.message == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, "
        "application/strategic-merge-patch+json, application/apply-patch+yaml")


def test_content_type_parameters_are_ignored():
    out = apply_patch(MERGE_PATCH + "; charset=utf-8", pod(), b'{"metadata":{"labels":{"a":"b"}}}', POD)
    assert out["metadata"]["labels"] == {"app": "web", "a": "b"}


def test_status_is_the_v1_status_kube_apiserver_sends():
    error = PatchError("boom", 422)
    assert error.status() == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                              "status": "Failure", "message": "boom", "code": 422,
                              "reason": "Invalid"}


# ---------------------------------------------------------------------------
# Merge patch (RFC 7386)


def test_merge_patch_merges_objects_deletes_nulls_and_replaces_lists():
    current = pod(containers=[{"name": "a", "image": "x"}, {"name": "b", "image": "y"}])
    patch = {"metadata": {"labels": {"app": None, "new": "1"}},
             "spec": {"containers": [{"name": "c", "image": "z"}]}}
    out = apply_patch(MERGE_PATCH, current, json.dumps(patch).encode(), POD)
    assert out["metadata"]["labels"] == {"new": "1"}
    assert out["spec"]["containers"] == [{"name": "c", "image": "z"}]


def test_merge_patch_body_must_be_an_object():
    with pytest.raises(PatchError) as error:
        apply_patch(MERGE_PATCH, pod(), b"[1]", POD)
    assert (error.value.code, error.value.message) == (400, "Invalid JSON Patch")


def test_merge_and_json_patches_work_without_a_schema():
    out = apply_patch(MERGE_PATCH, {"kind": "Widget", "spec": {"a": 1}}, b'{"spec":{"b":2}}', None)
    assert out["spec"] == {"a": 1, "b": 2}


# ---------------------------------------------------------------------------
# Strategic merge patch: upstream strategicpatch cases, with Kubernetes' fields

C = [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]

STRATEGIC_CASES = [
    ("merging list merges an item by its merge key",
     pod(containers=copy.deepcopy(C)),
     {"spec": {"containers": [{"name": "b", "env": [{"name": "X", "value": "1"}]}]}},
     pod(containers=[C[0], {"name": "b", "image": "b:1", "env": [{"name": "X", "value": "1"}]}])),
    ("an item the live list lacks goes before the live items (no $setElementOrder)",
     pod(containers=copy.deepcopy(C)),
     {"spec": {"containers": [{"name": "c", "image": "c:1"}]}},
     pod(containers=[{"name": "c", "image": "c:1"}, *C])),
    ("$setElementOrder puts patched and live items in the given order",
     pod(containers=copy.deepcopy(C)),
     {"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
               "containers": [{"name": "c", "image": "c:1"}]}},
     pod(containers=[*C, {"name": "c", "image": "c:1"}])),
    ("$setElementOrder reorders without changing items; live-only items keep their place",
     pod(containers=[{"name": "1"}, {"name": "3", "image": "3"}, {"name": "4", "image": "4"},
                     {"name": "2", "image": "2"}, {"name": "9"}]),
     {"spec": {"$setElementOrder/containers": [{"name": "4"}, {"name": "2"}, {"name": "3"}, {"name": "1"}]}},
     pod(containers=[{"name": "4", "image": "4"}, {"name": "2", "image": "2"}, {"name": "3", "image": "3"},
                     {"name": "1"}, {"name": "9"}])),
    ("$patch: delete removes the item with that key",
     pod(containers=copy.deepcopy(C)),
     {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}},
     pod(containers=[C[1]])),
    ("$patch: delete of a missing item changes nothing",
     pod(containers=copy.deepcopy(C)),
     {"spec": {"containers": [{"name": "zz", "$patch": "delete"}]}},
     pod(containers=C)),
    ("adding and deleting in one list orders as upstream does (the live array's slots)",
     pod(containers=[{"name": "1"}, {"name": "2", "image": "b"}, {"name": "4", "image": "c"}]),
     {"spec": {"$setElementOrder/containers": [{"name": "2"}, {"name": "3"}],
               "containers": [{"name": "3"}, {"name": "1", "$patch": "delete"}]}},
     pod(containers=[{"name": "2", "image": "b"}, {"name": "4", "image": "c"}, {"name": "3"}])),
    ("$patch: replace in a list replaces the whole list",
     pod(containers=copy.deepcopy(C)),
     {"spec": {"containers": [{"name": "z", "image": "z:1"}, {"$patch": "replace"}]}},
     pod(containers=[{"name": "z", "image": "z:1"}])),
    ("$patch: replace in a map replaces the map",
     pod(containers=[], nodeSelector={"a": "1", "b": "2"}),
     {"spec": {"nodeSelector": {"c": "3", "$patch": "replace"}}},
     pod(containers=[], nodeSelector={"c": "3"})),
    ("$patch: delete in a map empties it",
     pod(containers=[], nodeSelector={"a": "1"}),
     {"spec": {"nodeSelector": {"$patch": "delete"}}},
     pod(containers=[], nodeSelector={})),
    ("null deletes a key",
     pod(containers=[], hostname="h", subdomain="s"),
     {"metadata": {"labels": {"app": None}}, "spec": {"hostname": None}},
     {**pod(containers=[], subdomain="s"), "metadata": {"name": "p", "namespace": "default", "labels": {}}}),
    ("a list without a strategy is replaced",
     pod(containers=[], tolerations=[{"key": "a", "operator": "Exists"}]),
     {"spec": {"tolerations": [{"key": "b", "operator": "Exists"}]}},
     pod(containers=[], tolerations=[{"key": "b", "operator": "Exists"}])),
    ("a nested list without a strategy is replaced inside a merged item",
     pod(containers=[{"name": "a", "args": ["x", "y"]}]),
     {"spec": {"containers": [{"name": "a", "args": ["z"]}]}},
     pod(containers=[{"name": "a", "args": ["z"]}])),
    ("container ports merge by containerPort, env by name, volumeMounts by mountPath",
     pod(containers=[{"name": "a", "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}],
                      "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]),
     {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "name": "http"}],
                               "env": [{"name": "A", "value": "2"}],
                               "volumeMounts": [{"mountPath": "/v", "readOnly": True}]}]}},
     pod(containers=[{"name": "a", "ports": [{"containerPort": 80, "name": "http"}],
                      "env": [{"name": "A", "value": "2"}],
                      "volumeMounts": [{"name": "v", "mountPath": "/v", "readOnly": True}]}])),
    ("a primitive list with the merge strategy is a union (new items first without an order)",
     {"metadata": {"name": "p", "finalizers": ["a", "b"]}},
     {"metadata": {"finalizers": ["c", "a"]}},
     {"metadata": {"name": "p", "finalizers": ["c", "a", "b"]}}),
    ("$deleteFromPrimitiveList removes values and $setElementOrder orders the rest",
     {"metadata": {"name": "p", "finalizers": ["a", "b", "c"]}},
     {"metadata": {"$setElementOrder/finalizers": ["c", "a"], "$deleteFromPrimitiveList/finalizers": ["b"]}},
     {"metadata": {"name": "p", "finalizers": ["c", "a"]}}),
    ("$deleteFromPrimitiveList of a missing list adds nothing",
     {"metadata": {"name": "p"}},
     {"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}},
     {"metadata": {"name": "p"}}),
    ("ownerReferences merge by uid",
     {"metadata": {"name": "p", "ownerReferences": [{"uid": "1", "name": "rs1"}]}},
     {"metadata": {"ownerReferences": [{"uid": "1", "controller": True}, {"uid": "2", "name": "rs2"}]}},
     {"metadata": {"name": "p", "ownerReferences": [{"uid": "1", "name": "rs1", "controller": True},
                                                   {"uid": "2", "name": "rs2"}]}}),
    ("volumes (merge,retainKeys): $retainKeys drops the old volume source",
     pod(containers=[], volumes=[{"name": "v", "emptyDir": {}}]),
     {"spec": {"volumes": [{"name": "v", "$retainKeys": ["configMap", "name"], "configMap": {"name": "cm"}}]}},
     pod(containers=[], volumes=[{"name": "v", "configMap": {"name": "cm"}}])),
    ("a new subtree keeps no directives and no nulls",
     {"spec": {}},
     {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": None}}},
     {"spec": {"strategy": {"type": "Recreate"}}}),
    ("a value of another JSON type replaces the live one",
     pod(containers=[], nodeSelector={"a": "1"}),
     {"spec": {"nodeSelector": "oops"}},
     pod(containers=[], nodeSelector="oops")),
]


@pytest.mark.parametrize("current,patch,expected", [c[1:] for c in STRATEGIC_CASES],
                         ids=[c[0] for c in STRATEGIC_CASES])
def test_strategic_merge_patch(current, patch, expected):
    before = copy.deepcopy(current)
    assert smp(current, patch) == expected
    assert current == before


def test_deployment_strategy_retain_keys_switches_to_recreate():
    # kubectl apply's patch when a manifest changes RollingUpdate to Recreate.
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": None, "type": "Recreate"}}}
    out = smp(deployment(), patch, DEPLOYMENT)
    assert out["spec"]["strategy"] == {"type": "Recreate"}


def test_service_ports_merge_by_port():
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
           "spec": {"ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}
    out = smp(svc, {"spec": {"$setElementOrder/ports": [{"port": 80}, {"port": 443}],
                             "ports": [{"port": 80, "targetPort": 9090}, {"port": 443, "targetPort": 8443}]}},
              SERVICE)
    assert out["spec"]["ports"] == [{"port": 80, "targetPort": 9090, "protocol": "TCP"},
                                    {"port": 443, "targetPort": 8443}]


@pytest.mark.parametrize("current,patch,code,text", [
    (pod(containers=C), {"spec": {"containers": [{"image": "x"}]}}, 500,
     "map: map[image:x] does not contain declared merge key: name"),
    (pod(containers=C), {"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                                  "containers": [{"name": "b"}, {"name": "a"}]}}, 500, "doesn't match"),
    (pod(containers=C), {"spec": {"containers": [{"name": "a", "$patch": "explode"}]}}, 500,
     "unknown patch type: explode"),
    (pod(containers=C), {"spec": {"containers": [{"name": "a", "$patch": "merge"}]}}, 500,
     "merging lists cannot yet be specified in the patch"),
    ({"metadata": {"finalizers": []}}, {"metadata": {"finalizers": [["b"]]}}, 422,
     "the server rejected our request due to an error in our request"),
    (pod(containers=[], volumes=[{"name": "v", "emptyDir": {}}]),
     {"spec": {"volumes": [{"name": "v", "$retainKeys": ["name"], "configMap": {"name": "cm"}}]}}, 400,
     "invalid patch format of retainKeys"),
    ({"metadata": {"finalizers": ["a"]}}, {"metadata": {"$deleteFromPrimitiveListfinalizers": ["a"]}}, 400,
     "invalid patch format of primitive list"),
])
def test_strategic_merge_patch_errors_have_kube_apiservers_codes(current, patch, code, text):
    with pytest.raises(PatchError) as error:
        smp(current, patch)
    assert error.value.code == code
    assert text in error.value.message


def test_lists_of_lists_are_refused_with_upstreams_reason():
    # ErrNoListOfLists is one of the two errors kube-apiserver turns into 422 Invalid.
    with pytest.raises(PatchError) as error:
        smp({"metadata": {"finalizers": []}}, {"metadata": {"finalizers": [["b"]]}})
    assert error.value.reason == "Invalid"


def test_strategic_merge_patch_without_a_schema_is_415_as_for_custom_resources():
    with pytest.raises(PatchError) as error:
        apply_patch(STRATEGIC_MERGE_PATCH, {"kind": "Widget"}, b"{}", None)
    assert error.value.code == 415
    assert error.value.message == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")


# ---------------------------------------------------------------------------
# The patches kubectl sends


def test_kubectl_label_and_annotate_send_merge_patches():
    current = deployment()
    labelled = apply_patch(MERGE_PATCH, current, b'{"metadata":{"labels":{"tier":"front"}}}', DEPLOYMENT)
    assert labelled["metadata"]["labels"] == {"app": "web", "tier": "front"}
    unlabelled = apply_patch(MERGE_PATCH, labelled, b'{"metadata":{"labels":{"tier":null}}}', DEPLOYMENT)
    assert unlabelled["metadata"]["labels"] == {"app": "web"}
    annotated = apply_patch(MERGE_PATCH, current, b'{"metadata":{"annotations":{"note":"hi"}}}', DEPLOYMENT)
    assert annotated["metadata"]["annotations"] == {"note": "hi"}


def test_kubectl_scale_sends_a_merge_patch_to_the_scale_subresource():
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale",
             "metadata": {"name": "web", "namespace": "default"},
             "spec": {"replicas": 2}, "status": {"replicas": 2, "selector": "app=web"}}
    out = apply_patch(MERGE_PATCH, scale, b'{"spec":{"replicas":5}}', None)
    assert out["spec"] == {"replicas": 5}
    assert out["status"] == scale["status"]


def test_kubectl_set_image_sends_a_two_way_strategic_patch():
    current = deployment()
    current["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "busybox"})
    body = (b'{"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"web"},{"name":"sidecar"}],'
            b'"containers":[{"image":"nginx:1.27","name":"web"}]}}}}')
    out = apply_patch(STRATEGIC_MERGE_PATCH, current, body, DEPLOYMENT)
    containers = out["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["web", "sidecar"]
    assert containers[0] == {"name": "web", "image": "nginx:1.27",
                             "ports": [{"containerPort": 80, "protocol": "TCP"}]}


def test_kubectl_rollout_restart_patches_the_template_annotation():
    body = (b'{"spec":{"template":{"metadata":{"annotations":'
            b'{"kubectl.kubernetes.io/restartedAt":"2026-12-07T11:00:00Z"}}}}}')
    out = apply_patch(STRATEGIC_MERGE_PATCH, deployment(), body, DEPLOYMENT)
    assert out["spec"]["template"]["metadata"] == {
        "labels": {"app": "web"},
        "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-07T11:00:00Z"}}


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def test_kubectl_apply_second_time_changes_the_container_and_keeps_server_fields():
    current = deployment()
    current["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"  # a default
    current["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    current["metadata"]["annotations"] = {LAST_APPLIED: '{"old":true}\n'}
    # kubectl's three-way patch: last-applied annotation, the changed image,
    # a removed env var, a new one, and the order of both lists.
    patch = {
        "metadata": {"annotations": {LAST_APPLIED: '{"new":true}\n'}},
        "spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}],
            "containers": [{
                "$setElementOrder/env": [{"name": "B"}],
                "env": [{"name": "B", "value": "2"}, {"$patch": "delete", "name": "A"}],
                "image": "nginx:1.27", "name": "web"}],
        }}},
    }
    out = smp(current, patch, DEPLOYMENT)
    assert out["metadata"]["annotations"] == {LAST_APPLIED: '{"new":true}\n'}
    assert out["spec"]["template"]["spec"]["containers"] == [{
        "name": "web", "image": "nginx:1.27", "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": 80, "protocol": "TCP"}],
        "env": [{"name": "B", "value": "2"}]}]


def test_kubectl_apply_renaming_a_container_deletes_the_old_one():
    current = deployment()
    patch = {"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "app"}],
        "containers": [{"image": "nginx:1.27", "name": "app"}, {"$patch": "delete", "name": "web"}]}}}}
    out = smp(current, patch, DEPLOYMENT)
    assert out["spec"]["template"]["spec"]["containers"] == [{"name": "app", "image": "nginx:1.27"}]


# ---------------------------------------------------------------------------
# Server-side apply


def applied_deployment(image="nginx:1.25", replicas=2, labels=None) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": labels or {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": image}]}}}}


def entry(obj: dict, manager: str) -> dict:
    found = [e for e in obj["metadata"]["managedFields"] if e["manager"] == manager]
    assert len(found) == 1, obj["metadata"]["managedFields"]
    return found[0]


def test_apply_creates_with_a_managed_fields_entry_in_fieldsv1_notation():
    out = server_side_apply(None, applied_deployment(), "kubectl", False, DEPLOYMENT, now=T0)
    assert out["spec"]["template"]["spec"]["containers"] == [{"name": "web", "image": "nginx:1.25"}]
    assert out["metadata"]["managedFields"] == [{
        "manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1",
        "time": "2026-12-07T10:00:00Z", "fieldsType": "FieldsV1",
        "fieldsV1": {
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:selector": {"f:matchLabels": {".": {}, "f:app": {}}},
                "f:template": {
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {"f:containers": {'k:{"name":"web"}': {
                        ".": {}, "f:image": {}, "f:name": {}}}},
                },
            },
        },
    }]


def test_apply_again_updates_the_object_and_the_same_entry():
    first = server_side_apply(None, applied_deployment(), "kubectl", False, DEPLOYMENT, now=T0)
    first["status"] = {"replicas": 2}
    second = server_side_apply(first, applied_deployment(image="nginx:1.27"), "kubectl", False,
                               DEPLOYMENT, now=T1)
    assert second["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"
    assert second["status"] == {"replicas": 2}
    assert len(second["metadata"]["managedFields"]) == 1
    assert entry(second, "kubectl")["time"] == "2026-12-07T11:30:00Z"
    # Applying the same again changes nothing, not even the entry's time.
    later = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    third = server_side_apply(second, applied_deployment(image="nginx:1.27"), "kubectl", False, DEPLOYMENT, now=later)
    assert third == second


def test_apply_removes_fields_the_manager_no_longer_applies():
    first = server_side_apply(None, applied_deployment(labels={"app": "web", "tier": "front"}),
                              "kubectl", False, DEPLOYMENT, now=T0)
    applied = applied_deployment()
    applied["spec"]["template"]["spec"]["containers"] = [{"name": "app", "image": "nginx:1.27"}]
    second = server_side_apply(first, applied, "kubectl", False, DEPLOYMENT, now=T1)
    assert second["metadata"]["labels"] == {"app": "web"}
    assert second["spec"]["template"]["spec"]["containers"] == [{"name": "app", "image": "nginx:1.27"}]


def test_apply_keeps_a_dropped_field_another_manager_owns():
    first = server_side_apply(None, applied_deployment(labels={"app": "web", "tier": "front"}),
                              "alice", False, DEPLOYMENT, now=T0)
    both = server_side_apply(first, {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "metadata": {"name": "web", "labels": {"tier": "front"}}},
                             "bob", False, DEPLOYMENT, now=T0)
    after = server_side_apply(both, applied_deployment(), "alice", False, DEPLOYMENT, now=T1)
    assert after["metadata"]["labels"] == {"app": "web", "tier": "front"}


def test_apply_conflict_names_the_other_manager_and_the_field():
    first = server_side_apply(None, applied_deployment(replicas=2), "alice", False, DEPLOYMENT, now=T0)
    with pytest.raises(PatchError) as error:
        server_side_apply(first, applied_deployment(replicas=3), "bob", False, DEPLOYMENT, now=T1)
    assert (error.value.code, error.value.reason) == (409, "Conflict")
    assert error.value.message == 'Apply failed with 1 conflict: conflict with "alice": .spec.replicas'
    assert error.value.causes == [{"type": "FieldManagerConflict", "message": 'conflict with "alice"',
                                   "field": ".spec.replicas"}]


def test_apply_conflicts_with_several_fields_are_listed_per_manager():
    first = server_side_apply(None, applied_deployment(replicas=2), "alice", False, DEPLOYMENT, now=T0)
    with pytest.raises(PatchError) as error:
        server_side_apply(first, applied_deployment(image="nginx:1.27", replicas=3), "bob", False,
                          DEPLOYMENT, now=T1)
    assert error.value.message == (
        'Apply failed with 2 conflicts: conflicts with "alice":\n'
        '- .spec.replicas\n'
        '- .spec.template.spec.containers[name="web"].image')


def test_apply_with_force_takes_the_field_over():
    first = server_side_apply(None, applied_deployment(replicas=2), "alice", False, DEPLOYMENT, now=T0)
    out = server_side_apply(first, {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "metadata": {"name": "web"}, "spec": {"replicas": 3}},
                            "bob", True, DEPLOYMENT, now=T1)
    assert out["spec"]["replicas"] == 3
    assert "f:replicas" not in entry(out, "alice")["fieldsV1"]["f:spec"]
    assert entry(out, "bob")["fieldsV1"] == {"f:spec": {"f:replicas": {}}}


def test_apply_of_the_same_value_shares_the_field_without_conflict():
    first = server_side_apply(None, applied_deployment(replicas=2), "alice", False, DEPLOYMENT, now=T0)
    out = server_side_apply(first, {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "metadata": {"name": "web"}, "spec": {"replicas": 2}},
                            "bob", False, DEPLOYMENT, now=T1)
    assert "f:replicas" in entry(out, "alice")["fieldsV1"]["f:spec"]
    assert "f:replicas" in entry(out, "bob")["fieldsV1"]["f:spec"]


def test_first_apply_to_an_untracked_object_conflicts_with_before_first_apply():
    current = deployment(replicas=2)
    with pytest.raises(PatchError) as error:
        server_side_apply(current, applied_deployment(replicas=4), "kubectl", False, DEPLOYMENT, now=T0)
    assert error.value.message == ('Apply failed with 1 conflict: conflict with "before-first-apply" '
                                   'using apps/v1: .spec.replicas')


def test_an_update_takes_ownership_and_conflicts_name_its_subresource():
    first = server_side_apply(None, applied_deployment(replicas=2), "kubectl", False, DEPLOYMENT, now=T0)
    scaled = copy.deepcopy(first)
    scaled["spec"]["replicas"] = 5
    scaled = update_managed_fields(first, scaled, "kubectl", DEPLOYMENT, subresource="scale", now=T1)
    # Ordered as kube-apiserver orders them: by operation, then time, then manager.
    assert [e["operation"] for e in scaled["metadata"]["managedFields"]] == ["Apply", "Update"]
    assert list(scaled["metadata"]["managedFields"][1]) == ["manager", "operation", "apiVersion", "time",
                                                            "fieldsType", "fieldsV1", "subresource"]
    update = [e for e in scaled["metadata"]["managedFields"] if e["operation"] == "Update"]
    assert update == [{"manager": "kubectl", "operation": "Update", "apiVersion": "apps/v1",
                       "subresource": "scale", "time": "2026-12-07T11:30:00Z",
                       "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
    with pytest.raises(PatchError) as error:
        server_side_apply(scaled, applied_deployment(replicas=2), "kubectl", False, DEPLOYMENT, now=T1)
    assert error.value.message == ('Apply failed with 1 conflict: conflict with "kubectl" with '
                                   'subresource "scale" using apps/v1: .spec.replicas')


def test_update_on_create_owns_every_field_it_set():
    created = update_managed_fields(None, pod(containers=[{"name": "a", "image": "x"}]),
                                    "kubectl-create", POD, now=T0)
    assert created["metadata"]["managedFields"] == [{
        "manager": "kubectl-create", "operation": "Update", "apiVersion": "v1",
        "time": "2026-12-07T10:00:00Z", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                     "f:spec": {"f:containers": {'k:{"name":"a"}': {".": {}, "f:image": {}, "f:name": {}}}}}}]


def test_an_update_that_removes_a_field_takes_it_from_every_owner():
    first = server_side_apply(None, applied_deployment(labels={"app": "web", "tier": "front"}), "alice", False,
                              DEPLOYMENT, now=T0)
    edited = copy.deepcopy(first)
    del edited["metadata"]["labels"]["tier"]
    edited["spec"]["replicas"] = 3
    out = update_managed_fields(first, edited, "kubectl-edit", DEPLOYMENT, now=T1)
    alice = entry(out, "alice")["fieldsV1"]
    assert alice["f:metadata"]["f:labels"] == {".": {}, "f:app": {}}
    assert "f:replicas" not in alice["f:spec"]
    assert entry(out, "kubectl-edit")["fieldsV1"] == {"f:spec": {"f:replicas": {}}}
    # An update that changes nothing adds no entry.
    same = update_managed_fields(out, copy.deepcopy(out), "other", DEPLOYMENT, now=T1)
    assert {e["manager"] for e in same["metadata"]["managedFields"]} == {"alice", "kubectl-edit"}


def test_apply_leaves_reset_fields_alone():
    current = server_side_apply(None, applied_deployment(), "kubectl", False, DEPLOYMENT, now=T0)
    current["status"] = {"replicas": 2}
    applied = dict(applied_deployment(), status={"replicas": 99})
    out = server_side_apply(current, applied, "kubectl", False, DEPLOYMENT, now=T1, reset_fields=("status",))
    assert out["status"] == {"replicas": 2}
    assert "f:status" not in entry(out, "kubectl")["fieldsV1"]


def test_apply_refuses_managed_fields_in_the_body():
    applied = applied_deployment()
    applied["metadata"]["managedFields"] = []
    with pytest.raises(PatchError) as error:
        server_side_apply(None, applied, "kubectl", False, DEPLOYMENT)
    assert (error.value.code, error.value.message) == (400, "metadata.managedFields must be nil")


def test_apply_body_is_json_and_other_yaml_is_refused_with_what_to_do():
    assert decode_apply_body(b'{"kind": "Pod"}') == {"kind": "Pod"}
    with pytest.raises(PatchError) as error:
        decode_apply_body(b"kind: Pod\n")
    assert error.value.code == 400
    assert "send the object as JSON" in error.value.message


def test_apply_patch_content_type_applies_with_the_given_manager():
    body = json.dumps(applied_deployment(replicas=4)).encode()
    out = apply_patch(APPLY_PATCH, deployment(), body, DEPLOYMENT, manager="kubectl", force=True, now=T0)
    assert out["spec"]["replicas"] == 4
    assert {e["manager"] for e in out["metadata"]["managedFields"]} == {"kubectl", "before-first-apply"}


def test_apply_patch_content_type_without_a_manager_only_merges():
    body = json.dumps(applied_deployment(image="nginx:1.27")).encode()
    out = apply_patch(APPLY_PATCH, deployment(), body, DEPLOYMENT)
    assert out["spec"]["template"]["spec"]["containers"] == [{
        "name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]
    assert "managedFields" not in out["metadata"]


def test_fieldsv1_round_trip_and_path_strings():
    tree = {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:ports": {'k:{"port":80}': {".": {}, "f:port": {}}}},
            "f:finalizers": {".": {}, 'v:"a"': {}}}
    paths = parse_fields_v1(tree)
    assert fields_v1(paths) == tree
    assert path_string(("f:spec", "f:ports", 'k:{"port":80}', "f:port")) == ".spec.ports[port=80].port"
    assert path_string(("f:metadata", "f:finalizers", 'v:"a"')) == '.metadata.finalizers[="a"]'


# ---------------------------------------------------------------------------
# With the served OpenAPI schema (openapi.py): list types and map keys


def test_patch_errors_are_the_servers_api_errors():
    from emu.apiserver.errors import ApiError
    error = PatchError("x", 409, causes=[{"type": "FieldManagerConflict"}])
    assert isinstance(error, ApiError)
    assert error.status()["details"] == {"causes": [{"type": "FieldManagerConflict"}]}


def test_apply_with_the_openapi_schema_keys_ports_by_port_and_protocol():
    from emu.apiserver import openapi
    schema = openapi.patch_schema("apps/v1", "Deployment")
    applied = applied_deployment()
    applied["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": 80}]
    out = server_side_apply(None, applied, "kubectl", False, schema, now=T0)
    container = entry(out, "kubectl")["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"][
        'k:{"name":"web"}']
    assert container["f:ports"] == {'k:{"containerPort":80,"protocol":"TCP"}': {".": {}, "f:containerPort": {}}}
    # The live object got its default protocol: the applied item still matches it.
    out["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"] = "TCP"
    applied["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": 80, "name": "http"}]
    again = server_side_apply(out, applied, "kubectl", False, schema, now=T1)
    assert again["spec"]["template"]["spec"]["containers"][0]["ports"] == [
        {"containerPort": 80, "protocol": "TCP", "name": "http"}]


def test_strategic_merge_with_the_openapi_schema():
    from emu.apiserver import openapi
    schema = openapi.patch_schema("apps/v1", "Deployment")
    out = smp(deployment(), {"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "web"}, {"name": "log"}],
        "containers": [{"name": "log", "image": "busybox"}]}}}}, schema)
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["web", "log"]
    out = smp(deployment(), {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate",
                                                   "rollingUpdate": None}}}, schema)
    assert out["spec"]["strategy"] == {"type": "Recreate"}
