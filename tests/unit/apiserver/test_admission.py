"""emu.apiserver.admission: NodeRestriction and NamespaceLifecycle with kube-apiserver's wording."""

from __future__ import annotations

import pytest

from emu.apiserver.admission import (
    AdmissionError,
    Chain,
    NamespaceLifecycle,
    NodeRestriction,
    node_identity,
)
from emu.apiserver.types import Attributes, User

NODE_A = User("system:node:a", ("system:nodes", "system:authenticated"))
ADMIN = User("kubernetes-admin", ("system:masters", "system:authenticated"))


def req(user, verb, resource, ns="", name="", sub="", group=""):
    return Attributes(user, verb, ns, group, "v1", resource, sub, name, True, "")


def pod(name="p", node="a", labels=None, uid="uid-p"):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "team", "uid": uid,
                                                            "labels": labels or {"app": "web"}},
            "spec": {"nodeName": node}, "status": {}}


def node(name="a", labels=None, taints=None):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"taints": taints or []}}


PODS = {("team", "on-a"): pod("on-a", "a"), ("team", "on-b"): pod("on-b", "b")}


def getter(resource, namespace, name):
    assert resource == "pods"
    return PODS.get((namespace, name))


def refused(attributes, old=None, new=None, plugin=None) -> AdmissionError:
    with pytest.raises(AdmissionError) as err:
        (plugin or NodeRestriction(getter)).admit(attributes, old, new)
    return err.value


def admitted(attributes, old=None, new=None, plugin=None) -> None:
    assert (plugin or NodeRestriction(getter)).admit(attributes, old, new) is None


def test_node_identity():
    assert node_identity(req(NODE_A, "get", "pods")) == ("a", True)
    assert node_identity(req(User("system:node:a", ("system:authenticated",)), "get", "pods")) == ("", False)
    assert node_identity(req(User("bob", ("system:nodes",)), "get", "pods")) == ("", False)


def test_non_nodes_are_not_restricted():
    admitted(req(ADMIN, "update", "nodes", name="b"), node("b"), node("b", taints=[{"key": "x"}]))
    admitted(req(ADMIN, "update", "pods", "team", "p", "status"), pod(node="b"), pod(node="b"))


def test_a_node_without_a_name_is_refused():
    err = refused(req(User("system:node:", ("system:nodes",)), "update", "nodes", name="a"), node(), node())
    assert err.message == 'nodes "a" is forbidden: could not determine node from user "system:node:"'


# --- Nodes ------------------------------------------------------------------------------------------


def test_own_node_and_its_status():
    admitted(req(NODE_A, "update", "nodes", name="a", sub="status"), node(), node())
    admitted(req(NODE_A, "patch", "nodes", name="a"), node(), node(labels={"kubernetes.io/hostname": "a"}))
    admitted(req(NODE_A, "create", "nodes"), None, node(labels={"node.kubernetes.io/exclude-from-lb": "",
                                                                 "kubernetes.io/os": "linux", "team": "x"}))


def test_another_node_is_refused():
    err = refused(req(NODE_A, "update", "nodes", name="b", sub="status"), node("b"), node("b"))
    assert (err.code, err.reason) == (403, "Forbidden")
    assert err.message == 'nodes "b" is forbidden: node "a" is not allowed to modify node "b"'
    assert err.details == {"name": "b", "kind": "nodes"}
    err = refused(req(NODE_A, "create", "nodes"), None, node("b"))
    assert err.message == 'nodes "b" is forbidden: node "a" is not allowed to modify node "b"'
    err = refused(req(NODE_A, "delete", "nodes", name="b"), node("b"), None)
    assert err.message == 'nodes "b" is forbidden: node "a" is not allowed to modify node "b"'


def test_taints_and_restricted_labels():
    err = refused(req(NODE_A, "update", "nodes", name="a"), node(), node(taints=[{"key": "k", "effect": "NoSchedule"}]))
    assert err.message == 'nodes "a" is forbidden: node "a" is not allowed to modify taints'
    err = refused(req(NODE_A, "update", "nodes", name="a"), node(labels={"node-role.kubernetes.io/control-plane": ""}),
                  node())
    assert err.message == 'nodes "a" is forbidden: is not allowed to modify labels: node-role.kubernetes.io/control-plane'
    err = refused(req(NODE_A, "create", "nodes"), None,
                  node(labels={"node-restriction.kubernetes.io/x": "1", "foo.k8s.io/y": "2"}))
    assert err.message == ('nodes "a" is forbidden: node "a" is not allowed to set the following labels: '
                           'foo.k8s.io/y, node-restriction.kubernetes.io/x')


# --- Pods ---------------------------------------------------------------------------------------------


def test_status_of_own_pods_only():
    admitted(req(NODE_A, "update", "pods", "team", "p", "status"), pod(node="a"), pod(node="a"))
    admitted(req(NODE_A, "patch", "pods", "team", "p", "status"), pod(node="a"), pod(node="a"))
    err = refused(req(NODE_A, "update", "pods", "team", "p", "status"), pod(node="b"), pod(node="b"))
    assert err.message == ('pods "p" is forbidden: node "a" can only update pod status for pods with '
                           'spec.nodeName set to itself')
    err = refused(req(NODE_A, "update", "pods", "team", "p", "status"), pod(node="a"),
                  pod(node="a", labels={"app": "evil"}))
    assert err.message == 'pods "p" is forbidden: node "a" cannot update labels through pod status'


def test_pod_spec_updates_and_deletes():
    err = refused(req(NODE_A, "update", "pods", "team", "p"), pod(), pod())
    assert err.message == ('pods "p" is forbidden: unexpected operation "UPDATE", node "a" can only create and '
                           'delete mirror pods')
    admitted(req(NODE_A, "delete", "pods", "team", "p"), pod(node="a"), None)
    err = refused(req(NODE_A, "delete", "pods", "team", "p"), pod(node="b"), None)
    assert err.message == 'pods "p" is forbidden: node "a" can only delete pods with spec.nodeName set to itself'
    # Without `old` the plugin looks the pod up.
    admitted(req(NODE_A, "delete", "pods", "team", "on-a"))
    assert refused(req(NODE_A, "delete", "pods", "team", "gone")).code == 404


def test_pod_create_is_for_mirror_pods_only():
    err = refused(req(NODE_A, "create", "pods", "team"), None, pod("new"))
    assert err.message == ('pods "new" is forbidden: pod does not have "kubernetes.io/config.mirror" annotation, '
                           'node "a" can only create mirror pods')
    mirror = pod("static-a")
    mirror["metadata"]["annotations"] = {"kubernetes.io/config.mirror": "hash"}
    err = refused(req(NODE_A, "create", "pods", "team"), None, mirror)
    assert err.message == 'pods "static-a" is forbidden: node "a" can only create pods with an owner reference set to itself'
    mirror["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": "a", "uid": "n",
                                              "controller": True}]
    admitted(req(NODE_A, "create", "pods", "team"), None, mirror)
    mirror["spec"]["nodeName"] = "b"
    err = refused(req(NODE_A, "create", "pods", "team"), None, mirror)
    assert err.message == 'pods "static-a" is forbidden: node "a" can only create pods with spec.nodeName set to itself'


def test_eviction_and_other_subresources():
    admitted(req(NODE_A, "create", "pods", "team", "on-a", "eviction"), None, {"metadata": {"name": "on-a"}})
    err = refused(req(NODE_A, "create", "pods", "team", "on-b", "eviction"), None, {"metadata": {"name": "on-b"}})
    assert err.message == 'pods "on-b" is forbidden: node a can only evict pods with spec.nodeName set to itself'
    err = refused(req(NODE_A, "create", "pods", "team", "p", "binding"), None, {})
    assert err.message == ('pods "p" is forbidden: unexpected pod subresource "binding", only \'status\' and '
                           '\'eviction\' are allowed')
    # exec/attach/portforward are connections, which NodeRestriction does not see.
    admitted(req(NODE_A, "create", "pods", "team", "on-b", "exec"))
    # Reads are not admitted at all.
    admitted(req(NODE_A, "get", "pods", "team", "on-b"))


# --- Leases, tokens, others ----------------------------------------------------------------------------


def lease(name):
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name}}


def test_own_lease_only():
    admitted(req(NODE_A, "create", "leases", "kube-node-lease", group="coordination.k8s.io"), None, lease("a"))
    admitted(req(NODE_A, "update", "leases", "kube-node-lease", "a", group="coordination.k8s.io"), lease("a"), lease("a"))
    admitted(req(NODE_A, "delete", "leases", "kube-node-lease", "a", group="coordination.k8s.io"), lease("a"), None)
    err = refused(req(NODE_A, "update", "leases", "kube-node-lease", "b", group="coordination.k8s.io"),
                  lease("b"), lease("b"))
    assert err.message == ('leases.coordination.k8s.io "b" is forbidden: can only access node lease with the same '
                           'name as the requesting node')
    assert err.details == {"name": "b", "group": "coordination.k8s.io", "kind": "leases"}
    err = refused(req(NODE_A, "create", "leases", "kube-system", group="coordination.k8s.io"), None, lease("a"))
    assert err.message == ('leases.coordination.k8s.io "a" is forbidden: can only access leases in the '
                           '"kube-node-lease" system namespace')


def token_request(name="on-a", uid="uid-p"):
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}}}


def test_tokens_only_for_own_pods():
    admitted(req(NODE_A, "create", "serviceaccounts", "team", "default", "token"), None, token_request())
    err = refused(req(NODE_A, "create", "serviceaccounts", "team", "default", "token"), None, token_request("on-b"))
    assert err.message == ('serviceaccounts "default" is forbidden: node requested token bound to a pod scheduled '
                           'on a different node')
    err = refused(req(NODE_A, "create", "serviceaccounts", "team", "default", "token"), None,
                  {"spec": {"audiences": ["x"]}})
    assert err.message == 'serviceaccounts "default" is forbidden: node requested token not bound to a pod'
    err = refused(req(NODE_A, "create", "serviceaccounts", "team", "default", "token"), None,
                  token_request(uid="stale"))
    assert "does not match the UID in record" in err.message


def test_events_and_other_kinds_pass():
    admitted(req(NODE_A, "create", "events", "team"), None, {"metadata": {"name": "e"}})
    admitted(req(NODE_A, "create", "events", "team", group="events.k8s.io"), None, {"metadata": {"name": "e"}})
    admitted(req(NODE_A, "update", "configmaps", "team", "c"), {}, {})


# --- NamespaceLifecycle -----------------------------------------------------------------------------------

NAMESPACES = {
    "team": {"metadata": {"name": "team"}, "status": {"phase": "Active"}},
    "old": {"metadata": {"name": "old", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Terminating"}},
}


def lifecycle():
    return NamespaceLifecycle(NAMESPACES.get)


def test_create_in_missing_namespace_is_not_found():
    err = refused(req(ADMIN, "create", "configmaps", "nope"), None, {"metadata": {"name": "c"}}, plugin=lifecycle())
    assert (err.code, err.reason, err.message) == (404, "NotFound", 'namespaces "nope" not found')
    assert err.details == {"name": "nope", "kind": "namespaces"}


def test_create_in_terminating_namespace_is_forbidden():
    err = refused(req(ADMIN, "create", "pods", "old"), None, pod("p"), plugin=lifecycle())
    assert err.code == 403
    assert err.message == 'pods "p" is forbidden: unable to create new content in namespace old because it is being terminated'
    assert err.details["causes"][0]["reason"] == "NamespaceTerminating"


def test_lifecycle_allows_the_rest():
    admitted(req(ADMIN, "create", "configmaps", "team"), None, {"metadata": {"name": "c"}}, plugin=lifecycle())
    admitted(req(ADMIN, "update", "configmaps", "old", "c"), {}, {}, plugin=lifecycle())
    admitted(req(ADMIN, "delete", "configmaps", "old", "c"), {}, None, plugin=lifecycle())
    admitted(req(ADMIN, "create", "namespaces"), None, {"metadata": {"name": "new"}}, plugin=lifecycle())
    admitted(req(ADMIN, "create", "localsubjectaccessreviews", "nope", group="authorization.k8s.io"), None, {},
             plugin=lifecycle())


def test_immortal_namespaces():
    for name in ("default", "kube-system", "kube-public"):
        err = refused(req(ADMIN, "delete", "namespaces", name=name), {}, None, plugin=lifecycle())
        assert err.message == f'namespaces "{name}" is forbidden: this namespace may not be deleted'
    admitted(req(ADMIN, "delete", "namespaces", name="team"), {}, None, plugin=lifecycle())


def test_chain_first_refusal_wins():
    chain = Chain([lifecycle(), NodeRestriction(getter)])
    err = refused(req(NODE_A, "update", "pods", "team", "p", "status"), pod(node="b"), pod(node="b"), plugin=chain)
    assert "can only update pod status" in err.message
    err = refused(req(NODE_A, "create", "leases", "nope", group="coordination.k8s.io"), None, lease("a"), plugin=chain)
    assert err.code == 404
