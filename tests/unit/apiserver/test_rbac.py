"""emu.apiserver.rbac: decisions as Kubernetes' RBAC authorizer makes them, its messages, the bootstrap policy."""

from __future__ import annotations

import pytest

from emu.apiserver.rbac import (
    Authorizer,
    bootstrap_objects,
    forbidden_details,
    forbidden_message,
)
from emu.apiserver.types import Attributes, User

G = "rbac.authorization.k8s.io"


def role(name, rules, ns=None):
    meta = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"kind": "Role" if ns else "ClusterRole", "metadata": meta, "rules": rules}


def binding(name, role_kind, role_name, subjects, ns=None):
    meta = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"kind": "RoleBinding" if ns else "ClusterRoleBinding", "metadata": meta,
            "roleRef": {"apiGroup": G, "kind": role_kind, "name": role_name}, "subjects": subjects}


def user(name):
    return {"apiGroup": G, "kind": "User", "name": name}


def group(name):
    return {"apiGroup": G, "kind": "Group", "name": name}


def sa(name, ns=None):
    s = {"kind": "ServiceAccount", "name": name}
    if ns:
        s["namespace"] = ns
    return s


class Store:
    """The shape of the server's lister: objects by resource plural and namespace."""

    def __init__(self, objects):
        self.objects = objects
        self.calls = []

    def __call__(self, plural, namespace):
        self.calls.append((plural, namespace))
        kind = {"roles": "Role", "clusterroles": "ClusterRole", "rolebindings": "RoleBinding",
                "clusterrolebindings": "ClusterRoleBinding"}[plural]
        return [o for o in self.objects
                if o["kind"] == kind and (namespace is None or o["metadata"].get("namespace") == namespace)]


def res(u, verb, resource, ns="", group="", sub="", name="", groups=()):
    return Attributes(User(u, tuple(groups)), verb, ns, group, "v1", resource, sub, name, True, "")


def nonres(u, verb, path, groups=()):
    return Attributes(User(u, tuple(groups)), verb, path=path, is_resource_request=False)


OBJECTS = [
    role("pod-reader", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]),
    role("everything", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
    role("scaler", [{"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["update"]}]),
    role("logs-star", [{"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]}]),
    role("one-cm", [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["app-config"],
                     "verbs": ["get", "update", "list"]}]),
    role("urls", [{"nonResourceURLs": ["/healthz", "/apis/*", "/logs*"], "verbs": ["get"]}]),
    role("dep-editor", [{"apiGroups": ["apps"], "resources": ["deployments", "deployments/status"],
                         "verbs": ["create", "patch"]}]),
    role("ns-secrets", [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}], ns="team"),
    binding("readers", "ClusterRole", "pod-reader", [group("readers")]),
    binding("root", "ClusterRole", "everything", [user("root")]),
    binding("scalers", "ClusterRole", "scaler", [user("scaler")]),
    binding("logs-star", "ClusterRole", "logs-star", [user("star")]),
    binding("one-cm", "ClusterRole", "one-cm", [user("cm")]),
    binding("urls", "ClusterRole", "urls", [group("system:authenticated")]),
    binding("cluster-sa-without-ns", "ClusterRole", "everything", [sa("ghost")]),
    binding("team-edit", "ClusterRole", "dep-editor", [user("dev"), sa("builder")], ns="team"),
    binding("team-secrets", "Role", "ns-secrets", [sa("robot", "other")], ns="team"),
    binding("team-broken", "Role", "missing-role", [user("broken")], ns="team"),
    binding("cluster-broken", "ClusterRole", "missing-cr", [user("broken")]),
    binding("weird-kind", "Thing", "x", [user("weird")]),
]


CASES = [
    # (attributes, allowed)
    (res("alice", "list", "pods", "default", groups=["readers"]), True),
    (res("alice", "list", "pods", groups=["readers"]), True),  # cluster-wide list through a ClusterRoleBinding
    (res("alice", "delete", "pods", "default", groups=["readers"]), False),
    (res("alice", "get", "pods", "default", sub="log", groups=["readers"]), False),  # a subresource is its own
    (res("alice", "list", "pods", "default", group="apps", groups=["readers"]), False),
    (res("bob", "list", "pods", "default"), False),
    (res("root", "deletecollection", "widgets", "x", group="example.com"), True),
    (res("scaler", "update", "deployments", "d", group="apps", sub="scale"), True),
    (res("scaler", "update", "statefulsets", "d", group="apps", sub="scale"), True),
    (res("scaler", "update", "deployments", "d", group="apps"), False),
    (res("scaler", "update", "deployments", "d", group="apps", sub="status"), False),
    (res("star", "get", "pods", "d", sub="log"), False),  # "pods/*" is no wildcard in Kubernetes
    (res("cm", "get", "configmaps", "d", name="app-config"), True),
    (res("cm", "get", "configmaps", "d", name="other"), False),
    (res("cm", "list", "configmaps", "d"), False),  # resourceNames never match a request without a name
    (nonres("u", "get", "/healthz", groups=["system:authenticated"]), True),
    (nonres("u", "get", "/healthz/etcd", groups=["system:authenticated"]), False),
    (nonres("u", "get", "/apis/apps/v1", groups=["system:authenticated"]), True),
    (nonres("u", "get", "/apis", groups=["system:authenticated"]), False),  # "/apis/*" needs the slash
    (nonres("u", "get", "/logs/kube-apiserver.log", groups=["system:authenticated"]), True),
    (nonres("u", "get", "/logsXYZ", groups=["system:authenticated"]), True),
    (nonres("u", "post", "/healthz", groups=["system:authenticated"]), False),
    (nonres("root", "put", "/anything"), False),  # "*" on resources says nothing of paths
    (res("dev", "create", "deployments", "team", group="apps"), True),
    (res("dev", "patch", "deployments", "team", group="apps", sub="status"), True),
    (res("dev", "create", "deployments", "prod", group="apps"), False),  # RoleBinding: its namespace only
    (res("dev", "create", "deployments", "", group="apps"), False),
    (res("system:serviceaccount:team:builder", "create", "deployments", "team", group="apps"), True),
    (res("system:serviceaccount:prod:builder", "create", "deployments", "team", group="apps"), False),
    (res("system:serviceaccount:other:robot", "get", "secrets", "team"), True),
    (res("system:serviceaccount:team:robot", "get", "secrets", "team"), False),
    (res("system:serviceaccount:default:ghost", "get", "pods", "default"), False),  # SA subject needs a namespace
    (res("nobody", "get", "pods", "kube-system", groups=["system:masters"]), True),
    (nonres("nobody", "delete", "/x", groups=["system:masters"]), True),
    (res("weird", "get", "pods", "team"), False),
]


@pytest.mark.parametrize("attributes,allowed", CASES, ids=[
    f"{a.user.name}-{a.verb}-{a.resource or a.path}-{a.subresource}-{a.namespace}-{a.name}-{i}"
    for i, (a, _) in enumerate(CASES)])
def test_decision(attributes, allowed):
    assert Authorizer(Store(OBJECTS)).authorize(attributes).allowed is allowed


def test_allow_reason_names_the_binding():
    a = Authorizer(Store(OBJECTS))
    assert a.authorize(res("alice", "list", "pods", "x", groups=["readers"])).reason == (
        'RBAC: allowed by ClusterRoleBinding "readers" of ClusterRole "pod-reader" to Group "readers"')
    assert a.authorize(res("system:serviceaccount:team:builder", "create", "deployments", "team", group="apps")
                       ).reason == ('RBAC: allowed by RoleBinding "team-edit/team" of ClusterRole "dep-editor" '
                                    'to ServiceAccount "builder/team"')


def test_denial_reason_is_empty_or_names_missing_roles():
    a = Authorizer(Store(OBJECTS))
    assert a.authorize(res("bob", "get", "pods", "team")).reason == ""
    assert a.authorize(res("broken", "get", "pods")).reason == (
        'RBAC: clusterrole.rbac.authorization.k8s.io "missing-cr" not found')
    assert a.authorize(res("broken", "get", "pods", "team")).reason == (
        'RBAC: [clusterrole.rbac.authorization.k8s.io "missing-cr" not found, '
        'role.rbac.authorization.k8s.io "missing-role" not found]')
    assert a.authorize(res("weird", "get", "pods")).reason == 'RBAC: unsupported role reference kind: "Thing"'


def test_roles_are_read_only_when_needed():
    store = Store(OBJECTS)
    Authorizer(store).authorize(res("bob", "get", "pods"))
    assert store.calls == [("clusterrolebindings", None)]  # no binding applies: no role is read


def test_rules_for():
    rules, errors = Authorizer(Store(OBJECTS)).rules_for(User("dev"), "team")
    assert rules == [{"apiGroups": ["apps"], "resources": ["deployments", "deployments/status"],
                      "verbs": ["create", "patch"]}]
    assert errors == []


# --- kube-apiserver's Forbidden text -----------------------------------------------------------------

MESSAGES = [
    (res("x", "list", "pods", "default"),
     'pods is forbidden: User "x" cannot list resource "pods" in API group "" in the namespace "default"'),
    (res("x", "get", "pods", "default", name="web"),
     'pods "web" is forbidden: User "x" cannot get resource "pods" in API group "" in the namespace "default"'),
    (res("x", "list", "nodes"),
     'nodes is forbidden: User "x" cannot list resource "nodes" in API group "" at the cluster scope'),
    (res("x", "create", "pods", "default", sub="exec", name="web"),
     'pods "web" is forbidden: User "x" cannot create resource "pods/exec" in API group "" in the namespace '
     '"default"'),
    (res("system:serviceaccount:default:default", "list", "deployments", "default", group="apps"),
     'deployments.apps is forbidden: User "system:serviceaccount:default:default" cannot list resource '
     '"deployments" in API group "apps" in the namespace "default"'),
    (res("x", "watch", "clusterroles", group=G),
     'clusterroles.rbac.authorization.k8s.io is forbidden: User "x" cannot watch resource "clusterroles" in API '
     'group "rbac.authorization.k8s.io" at the cluster scope'),
    (nonres("x", "get", "/metrics"), 'forbidden: User "x" cannot get path "/metrics"'),
]


@pytest.mark.parametrize("attributes,message", MESSAGES)
def test_forbidden_message(attributes, message):
    assert forbidden_message(attributes) == message


def test_forbidden_message_with_reason_and_details():
    a = res("broken", "get", "pods", "team", name="p")
    assert forbidden_message(a, 'RBAC: role.rbac.authorization.k8s.io "r" not found').endswith(
        'in the namespace "team": RBAC: role.rbac.authorization.k8s.io "r" not found')
    assert forbidden_details(a) == {"name": "p", "kind": "pods"}
    assert forbidden_details(res("x", "list", "deployments", "d", group="apps")) == {"group": "apps",
                                                                                     "kind": "deployments"}


# --- the bootstrap policy ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy():
    objects = bootstrap_objects()
    extra = [
        binding("dev-edit", "ClusterRole", "edit", [sa("default")], ns="team"),
        binding("lead-admin", "ClusterRole", "admin", [user("lead")], ns="team"),
        binding("auditor-view", "ClusterRole", "view", [user("auditor")], ns="team"),
    ]
    for o in objects:
        o.setdefault("metadata", {})
    return Authorizer(Store(objects + extra))


def names(objects, kind):
    return {o["metadata"]["name"] for o in objects if o["kind"] == kind}


def test_bootstrap_objects_shape():
    objects = bootstrap_objects()
    assert {"cluster-admin", "admin", "edit", "view", "system:basic-user", "system:discovery",
            "system:public-info-viewer", "system:node", "system:node-proxier", "system:kube-dns"} <= names(
        objects, "ClusterRole")
    for o in objects:
        assert o["apiVersion"] == "rbac.authorization.k8s.io/v1"
    admin = next(o for o in objects if o["metadata"]["name"] == "cluster-admin" and o["kind"] == "ClusterRole")
    assert admin["metadata"]["labels"] == {"kubernetes.io/bootstrapping": "rbac-defaults"}
    assert admin["metadata"]["annotations"] == {"rbac.authorization.kubernetes.io/autoupdate": "true"}
    crb = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRoleBinding"}
    assert crb["cluster-admin"]["subjects"] == [{"apiGroup": G, "kind": "Group", "name": "system:masters"}]
    assert crb["system:node-proxier"]["subjects"] == [{"apiGroup": G, "kind": "User", "name": "system:kube-proxy"}]
    assert [s["name"] for s in crb["system:public-info-viewer"]["subjects"]] == [
        "system:authenticated", "system:unauthenticated"]
    # Every binding references a role that exists.
    assert {o["roleRef"]["name"] for o in crb.values()} <= names(objects, "ClusterRole")
    view = next(o for o in objects if o["metadata"]["name"] == "view")
    assert view["aggregationRule"] == {"clusterRoleSelectors": [
        {"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}]}


AUTHED = ["system:authenticated"]
NODE = ["system:nodes", "system:authenticated"]
SA_TEAM = ["system:serviceaccounts", "system:serviceaccounts:team", "system:authenticated"]

POLICY_CASES = [
    (nonres("u", "get", "/version", AUTHED), True),
    (nonres("u", "get", "/apis/apps/v1", AUTHED), True),
    (nonres("u", "get", "/openapi/v3", AUTHED), True),
    (nonres("u", "get", "/metrics", AUTHED), False),
    (nonres("system:anonymous", "get", "/healthz", ["system:unauthenticated"]), True),
    (nonres("system:anonymous", "get", "/api", ["system:unauthenticated"]), False),
    (res("u", "create", "selfsubjectaccessreviews", group="authorization.k8s.io", groups=AUTHED), True),
    (res("u", "list", "pods", "default", groups=AUTHED), False),
    (res("kubernetes-admin", "delete", "nodes", name="w1", groups=["system:masters", "system:authenticated"]), True),
    (res("system:node:w1", "update", "pods", "team", sub="status", name="p", groups=NODE), True),
    (res("system:node:w1", "update", "pods", "team", name="p", groups=NODE), False),
    (res("system:node:w1", "watch", "pods", groups=NODE), True),
    (res("system:node:w1", "update", "leases", "kube-node-lease", group="coordination.k8s.io", name="w1",
         groups=NODE), True),
    (res("system:node:w1", "create", "events", "team", groups=NODE), True),
    (res("system:node:w1", "patch", "nodes", sub="status", name="w1", groups=NODE), True),
    (res("system:node:w1", "create", "serviceaccounts", "team", sub="token", name="default", groups=NODE), True),
    (res("system:node:w1", "list", "secrets", groups=NODE), True),
    (res("system:node:w1", "create", "secrets", "team", groups=NODE), False),
    (res("system:kube-proxy", "watch", "endpointslices", group="discovery.k8s.io", groups=AUTHED), True),
    (res("system:kube-proxy", "list", "services", groups=AUTHED), True),
    (res("system:kube-proxy", "list", "pods", groups=AUTHED), False),
    (res("system:serviceaccount:kube-system:kube-proxy", "watch", "endpointslices", group="discovery.k8s.io",
         groups=["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]), True),
    (res("system:serviceaccount:kube-system:coredns", "watch", "namespaces",
         groups=["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]), True),
    (res("system:serviceaccount:team:default", "create", "deployments", "team", group="apps", groups=SA_TEAM), True),
    (res("system:serviceaccount:team:default", "update", "deployments", "team", group="apps", sub="scale",
         groups=SA_TEAM), True),
    (res("system:serviceaccount:team:default", "create", "pods", "team", sub="exec", name="p", groups=SA_TEAM), True),
    (res("system:serviceaccount:team:default", "get", "secrets", "team", name="s", groups=SA_TEAM), True),
    (res("system:serviceaccount:team:default", "create", "roles", "team", group=G, groups=SA_TEAM), False),
    (res("system:serviceaccount:team:default", "create", "deployments", "prod", group="apps", groups=SA_TEAM), False),
    (res("lead", "create", "rolebindings", "team", group=G, groups=AUTHED), True),
    (res("lead", "create", "networkpolicies", "team", group="networking.k8s.io", groups=AUTHED), True),
    (res("lead", "delete", "namespaces", name="team", groups=AUTHED), False),
    (res("auditor", "list", "endpointslices", "team", group="discovery.k8s.io", groups=AUTHED), True),
    (res("auditor", "get", "pods", "team", sub="log", name="p", groups=AUTHED), True),
    (res("auditor", "get", "secrets", "team", name="s", groups=AUTHED), False),
    (res("auditor", "update", "configmaps", "team", name="c", groups=AUTHED), False),
]


@pytest.mark.parametrize("attributes,allowed", POLICY_CASES, ids=[
    f"{a.user.name}-{a.verb}-{a.resource or a.path}-{a.subresource}-{a.namespace}-{i}"
    for i, (a, _) in enumerate(POLICY_CASES)])
def test_bootstrap_policy_decisions(policy, attributes, allowed):
    assert policy.authorize(attributes).allowed is allowed


def test_rule_matching_is_exact_and_case_sensitive():
    from emu.apiserver.rbac import rule_allows

    rule = {"apiGroups": ["g1", "g2"], "resources": ["r1", "r2"], "verbs": ["v1", "v2"]}
    for verb in ("v1", "v2"):
        for grp in ("g1", "g2"):
            for resource in ("r1", "r2"):
                assert rule_allows(res("u", verb, resource, group=grp), rule)
    assert not rule_allows(res("u", "V1", "r1", group="g1"), rule)
    assert not rule_allows(res("u", "v1", "R1", group="g1"), rule)
    assert not rule_allows(res("u", "v1", "r1", group="g3"), rule)
    assert not rule_allows(res("u", "v1", "r1", group="g1", sub="status"), rule)
    only_sub = {"apiGroups": ["*"], "resources": ["r1/s1"], "verbs": ["*"]}
    assert rule_allows(res("u", "x", "r1", group="any", sub="s1"), only_sub)
    assert not rule_allows(res("u", "x", "r1", group="any"), only_sub)
    assert not rule_allows(res("u", "x", "r1", group="any", sub="s2"), only_sub)
    # A resource rule never allows a path, a path rule never a resource.
    assert not rule_allows(nonres("u", "v1", "/r1"), rule)
    assert not rule_allows(res("u", "get", "anything"), {"nonResourceURLs": ["*"], "verbs": ["*"]})


def test_a_user_in_several_groups_gets_the_union():
    objects = [
        role("a", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]),
        role("b", [{"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}]),
        binding("a", "ClusterRole", "a", [group("ga")]),
        binding("b", "ClusterRole", "b", [group("gb")], ns="ns1"),
    ]
    a = Authorizer(Store(objects))
    assert a.authorize(res("joe", "get", "pods", "ns1", groups=["ga", "gb"])).allowed
    assert a.authorize(res("joe", "get", "services", "ns1", groups=["ga", "gb"])).allowed
    assert not a.authorize(res("joe", "get", "services", "ns2", groups=["ga", "gb"])).allowed
    assert not a.authorize(res("joe", "get", "services", "ns1", groups=["ga"])).allowed
