"""RBAC authorization, evaluated as Kubernetes' RBAC authorizer does (docs/apiserver.md).

A request is allowed when a rule reached through a binding that names the
user allows it: first every ClusterRoleBinding, then the RoleBindings of the
request's namespace (which may reference a Role there or a ClusterRole).
Subjects are Users, Groups and ServiceAccounts (a ServiceAccount subject
without a namespace means the binding's own). Rules match verbs, API groups,
resources ("*", "resource/subresource", "*/subresource") and resourceNames, or
nonResourceURLs (a trailing "*" matches a prefix). Members of system:masters
are always allowed, as kube-apiserver's privileged-group authorizer allows
them before RBAC. Nothing else is allowed: there is no other authorizer.

Also: forbidden_message(), kube-apiserver's exact Forbidden text, and
bootstrap_objects(), the default ClusterRoles and ClusterRoleBindings a
kubeadm cluster has.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable, Iterator

from emu.apiserver.types import Attributes, Decision, User

RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_VERSION = f"{RBAC_GROUP}/v1"
SUPERUSER_GROUP = "system:masters"
SA_PREFIX = "system:serviceaccount:"
# The nodes' network policy agent: its certificate's user (emu.control.pki) and its ClusterRole.
NETWORK_POLICY_USER = "emu-network-policy"
NETWORK_POLICY_ROLE = "emu-network-policy"

Lister = Callable[[str, "str | None"], list[dict]]


def _q(text: str) -> str:
    """Go's %q for the strings Kubernetes quotes (names, verbs, paths)."""
    return json.dumps(text, ensure_ascii=False)


# --- rule matching (Kubernetes' rbac/v1 helpers) --------------------------------------------------


def verb_matches(rule: dict, verb: str) -> bool:
    return any(v == "*" or v == verb for v in rule.get("verbs") or ())


def api_group_matches(rule: dict, group: str) -> bool:
    return any(g == "*" or g == group for g in rule.get("apiGroups") or ())


def resource_matches(rule: dict, combined: str, subresource: str) -> bool:
    """combined is "resource" or "resource/subresource"; "*/sub" matches any resource's sub."""
    for r in rule.get("resources") or ():
        if r == "*" or r == combined:
            return True
        if subresource and r == "*/" + subresource:
            return True
    return False


def resource_name_matches(rule: dict, name: str) -> bool:
    names = rule.get("resourceNames") or ()
    # A rule naming objects never matches a request without a name (list, watch, create).
    return not names or name in names


def non_resource_url_matches(rule: dict, path: str) -> bool:
    for url in rule.get("nonResourceURLs") or ():
        if url == "*" or url == path:
            return True
        if url.endswith("*") and path.startswith(url.rstrip("*")):
            return True
    return False


def rule_allows(attributes: Attributes, rule: dict) -> bool:
    """Whether one PolicyRule allows the request."""
    if attributes.is_resource_request:
        combined = attributes.resource
        if attributes.subresource:
            combined += "/" + attributes.subresource
        return (
            verb_matches(rule, attributes.verb)
            and api_group_matches(rule, attributes.api_group)
            and resource_matches(rule, combined, attributes.subresource)
            and resource_name_matches(rule, attributes.name)
        )
    return verb_matches(rule, attributes.verb) and non_resource_url_matches(rule, attributes.path)


# --- subjects ---------------------------------------------------------------------------------------


def _applies_to_user(user: User, subject: dict, namespace: str) -> bool:
    kind = subject.get("kind")
    name = subject.get("name", "")
    if kind == "User":
        return user.name == name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        # Kubernetes defaults the subject's namespace to the binding's (RoleBindings only).
        sa_ns = subject.get("namespace") or namespace
        if not sa_ns:
            return False
        return user.name == f"{SA_PREFIX}{sa_ns}:{name}"
    return False


def _applies(user: User, subjects: Iterable[dict] | None, namespace: str) -> dict | None:
    for subject in subjects or ():
        if isinstance(subject, dict) and _applies_to_user(user, subject, namespace):
            return subject
    return None


def _describe_subject(subject: dict, namespace: str) -> str:
    if subject.get("kind") == "ServiceAccount":
        return f"{subject['kind']} {_q(subject.get('name', '') + '/' + (subject.get('namespace') or namespace))}"
    return f"{subject.get('kind')} {_q(subject.get('name', ''))}"


def _aggregate(errors: list[str]) -> str:
    """utilerrors.NewAggregate(...).Error(): one message as is, several deduplicated in brackets."""
    if len(errors) == 1:
        return errors[0]
    seen: list[str] = []
    for e in errors:
        if e not in seen:
            seen.append(e)
    return seen[0] if len(seen) == 1 else "[" + ", ".join(seen) + "]"


class Authorizer:
    """RBAC over the objects `lister(resource_plural, namespace_or_None)` returns.

    The lister is asked for "clusterrolebindings" and "clusterroles" (None),
    "rolebindings" and "roles" (a namespace), and returns the stored objects."""

    def __init__(self, lister: Lister):
        self._lister = lister

    def _visit(self, user: User, namespace: str) -> Iterator[tuple[str | None, dict | None, str | None]]:
        """(describer, rule, error) for every rule reaching `user` in `namespace`, in Kubernetes' order."""
        cluster_roles: dict[str, dict] | None = None

        def cluster_role(name: str) -> dict | None:
            nonlocal cluster_roles
            if cluster_roles is None:
                cluster_roles = {o.get("metadata", {}).get("name"): o for o in self._lister("clusterroles", None)}
            return cluster_roles.get(name)

        def role_rules(ref: dict, binding_ns: str) -> tuple[list[dict], str | None]:
            kind, name = ref.get("kind"), ref.get("name", "")
            if kind == "ClusterRole":
                role = cluster_role(name)
                if role is None:
                    return [], f"clusterrole.{RBAC_GROUP} {_q(name)} not found"
            elif kind == "Role":
                role = roles.get(name) if roles is not None else None
                if role is None:
                    return [], f"role.{RBAC_GROUP} {_q(name)} not found"
            else:
                return [], f"unsupported role reference kind: {_q(kind or '')}"
            return [r for r in role.get("rules") or () if isinstance(r, dict)], None

        roles = None
        for binding in self._lister("clusterrolebindings", None):
            subject = _applies(user, binding.get("subjects"), "")
            if subject is None:
                continue
            ref = binding.get("roleRef") or {}
            rules, error = role_rules(ref, "")
            if error:
                yield None, None, error
                continue
            name = binding.get("metadata", {}).get("name", "")
            describer = (f"ClusterRoleBinding {_q(name)} of {ref.get('kind')} {_q(ref.get('name', ''))} "
                         f"to {_describe_subject(subject, '')}")
            for rule in rules:
                yield describer, rule, None

        if namespace:
            roles = {o.get("metadata", {}).get("name"): o for o in self._lister("roles", namespace)}
            for binding in self._lister("rolebindings", namespace):
                subject = _applies(user, binding.get("subjects"), namespace)
                if subject is None:
                    continue
                ref = binding.get("roleRef") or {}
                rules, error = role_rules(ref, namespace)
                if error:
                    yield None, None, error
                    continue
                name = binding.get("metadata", {}).get("name", "")
                describer = (f"RoleBinding {_q(name + '/' + namespace)} of {ref.get('kind')} "
                             f"{_q(ref.get('name', ''))} to {_describe_subject(subject, namespace)}")
                for rule in rules:
                    yield describer, rule, None

    def authorize(self, attributes: Attributes) -> Decision:
        """Allowed, with the binding that allowed it as reason; or denied, with
        the reason kube-apiserver appends to the Forbidden message ("" or
        "RBAC: <errors>", e.g. a binding to a missing role)."""
        user = attributes.user
        if SUPERUSER_GROUP in user.groups:
            return Decision(True, "")
        errors: list[str] = []
        for describer, rule, error in self._visit(user, attributes.namespace):
            if error is not None:
                errors.append(error)
            elif rule_allows(attributes, rule):
                return Decision(True, f"RBAC: allowed by {describer}")
        return Decision(False, f"RBAC: {_aggregate(errors)}" if errors else "")

    def rules_for(self, user: User, namespace: str = "") -> tuple[list[dict], list[str]]:
        """Every rule reaching `user` in `namespace` and the errors met (for SelfSubjectRulesReview)."""
        rules, errors = [], []
        for _, rule, error in self._visit(user, namespace):
            if error is not None:
                errors.append(error)
            else:
                rules.append(rule)
        return rules, errors


def forbidden_message(attributes: Attributes, reason: str = "") -> str:
    """kube-apiserver's Forbidden Status message for a denied request, e.g.
    `pods is forbidden: User "x" cannot list resource "pods" in API group "" in the namespace "default"`;
    `: <reason>` follows when the authorizer gave one."""
    user = attributes.user.name if attributes.user else ""
    if not attributes.is_resource_request:
        text = f"User {_q(user)} cannot {attributes.verb} path {_q(attributes.path)}"
    else:
        resource = attributes.resource
        if attributes.subresource:
            resource += "/" + attributes.subresource
        if attributes.namespace:
            text = (f"User {_q(user)} cannot {attributes.verb} resource {_q(resource)} in API group "
                    f"{_q(attributes.api_group)} in the namespace {_q(attributes.namespace)}")
        else:
            text = (f"User {_q(user)} cannot {attributes.verb} resource {_q(resource)} in API group "
                    f"{_q(attributes.api_group)} at the cluster scope")
    if reason:
        text = f"{text}: {reason}"
    # apierrors.NewForbidden over the GroupResource (no subresource) and the name.
    qualified = attributes.resource if attributes.is_resource_request else ""
    if qualified and attributes.api_group:
        qualified += "." + attributes.api_group
    if not qualified:
        return f"forbidden: {text}"
    if not attributes.name:
        return f"{qualified} is forbidden: {text}"
    return f"{qualified} {_q(attributes.name)} is forbidden: {text}"


def forbidden_details(attributes: Attributes) -> dict:
    """The Status `details` kube-apiserver sends with that Forbidden (empty fields left out)."""
    details = {"name": attributes.name, "group": attributes.api_group,
               "kind": attributes.resource if attributes.is_resource_request else ""}
    return {k: v for k, v in details.items() if v}


# --- bootstrap policy ---------------------------------------------------------------------------------

READ = ("get", "list", "watch")
WRITE = ("create", "update", "patch", "delete", "deletecollection")
READ_WRITE = READ + WRITE

BOOTSTRAP_LABELS = {"kubernetes.io/bootstrapping": "rbac-defaults"}
AUTOUPDATE = {"rbac.authorization.kubernetes.io/autoupdate": "true"}
INGRESS_NGINX_LABELS = {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}


def _rule(verbs: Iterable[str], groups: Iterable[str] = (), resources: Iterable[str] = (),
          names: Iterable[str] = (), urls: Iterable[str] = ()) -> dict:
    """A PolicyRule with sorted lists, as Kubernetes' rule builder makes them."""
    rule: dict = {}
    if urls:
        rule["nonResourceURLs"] = sorted(urls)
    else:
        rule["apiGroups"] = sorted(groups)
        rule["resources"] = sorted(resources)
        if names:
            rule["resourceNames"] = sorted(names)
    rule["verbs"] = sorted(verbs)
    return rule


def _cluster_role(name: str, rules: list[dict], labels: dict | None = None, aggregate_from: str = "",
                  bootstrap: bool = True) -> dict:
    meta: dict = {"name": name}
    if bootstrap:
        meta["annotations"] = dict(AUTOUPDATE)
        meta["labels"] = {**BOOTSTRAP_LABELS, **(labels or {})}
    elif labels:
        meta["labels"] = dict(labels)
    role = {"apiVersion": RBAC_VERSION, "kind": "ClusterRole", "metadata": meta}
    if aggregate_from:
        role["aggregationRule"] = {
            "clusterRoleSelectors": [{"matchLabels": {f"rbac.authorization.k8s.io/aggregate-to-{aggregate_from}": "true"}}]
        }
    role["rules"] = rules
    return role


def _subject(kind: str, name: str, namespace: str = "") -> dict:
    if kind == "ServiceAccount":
        return {"kind": kind, "name": name, "namespace": namespace}
    return {"apiGroup": RBAC_GROUP, "kind": kind, "name": name}


def _binding(name: str, role: str, subjects: list[dict], bootstrap: bool = True) -> dict:
    meta: dict = {"name": name}
    if bootstrap:
        meta["annotations"] = dict(AUTOUPDATE)
        meta["labels"] = dict(BOOTSTRAP_LABELS)
    binding = {
        "apiVersion": RBAC_VERSION,
        "kind": "ClusterRoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    }
    return binding


def _union(*rule_lists: list[dict]) -> list[dict]:
    """Rules of aggregated roles, in order, without repeats (as the aggregation controller merges them)."""
    out: list[dict] = []
    for rules in rule_lists:
        for r in rules:
            if r not in out:
                out.append(r)
    return out


def bootstrap_objects() -> list[dict]:
    """The default ClusterRoles and ClusterRoleBindings of a kubeadm cluster that matter to emu.

    Differences from kube-apiserver's own, on purpose: system:node is bound
    to the group system:nodes (there is no Node authorizer; NodeRestriction
    admission still limits what a node may change). Aggregated roles (admin,
    edit, view) carry their aggregation rule and the rules it yields."""
    events = _rule(("create", "update", "patch"), ("", "events.k8s.io"), ("events",))

    to_view = [
        _rule(READ, [""], ["pods", "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts",
                           "services", "services/status", "endpoints", "persistentvolumeclaims",
                           "persistentvolumeclaims/status", "configmaps"]),
        _rule(READ, [""], ["limitranges", "resourcequotas", "bindings", "events", "pods/status",
                           "resourcequotas/status", "namespaces/status", "replicationcontrollers/status", "pods/log"]),
        _rule(READ, [""], ["namespaces"]),
        _rule(READ, ["discovery.k8s.io"], ["endpointslices"]),
        _rule(READ, ["apps"], ["controllerrevisions", "statefulsets", "statefulsets/scale", "statefulsets/status",
                               "daemonsets", "daemonsets/status", "deployments", "deployments/scale",
                               "deployments/status", "replicasets", "replicasets/scale", "replicasets/status"]),
        _rule(READ, ["autoscaling"], ["horizontalpodautoscalers", "horizontalpodautoscalers/status"]),
        _rule(READ, ["batch"], ["jobs", "jobs/status", "cronjobs", "cronjobs/status"]),
        _rule(READ, ["extensions"], ["daemonsets", "daemonsets/status", "deployments", "deployments/scale",
                                     "deployments/status", "ingresses", "ingresses/status", "replicasets",
                                     "replicasets/scale", "replicasets/status", "replicationcontrollers/scale",
                                     "networkpolicies"]),
        _rule(READ, ["policy"], ["poddisruptionbudgets", "poddisruptionbudgets/status"]),
        _rule(READ, ["networking.k8s.io"], ["networkpolicies", "ingresses", "ingresses/status"]),
    ]
    to_edit = [
        _rule(READ, [""], ["pods/attach", "pods/proxy", "pods/exec", "pods/portforward", "secrets", "services/proxy"]),
        _rule(["impersonate"], [""], ["serviceaccounts"]),
        _rule(WRITE, [""], ["pods", "pods/attach", "pods/proxy", "pods/exec", "pods/portforward"]),
        _rule(["create"], [""], ["pods/eviction"]),
        _rule(WRITE, [""], ["replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts", "services",
                            "services/proxy", "persistentvolumeclaims", "configmaps", "secrets", "events"]),
        _rule(["create"], [""], ["serviceaccounts/token"]),
        _rule(WRITE, ["apps"], ["statefulsets", "statefulsets/scale", "daemonsets", "deployments",
                                "deployments/scale", "deployments/rollback", "replicasets", "replicasets/scale"]),
        _rule(WRITE, ["autoscaling"], ["horizontalpodautoscalers"]),
        _rule(WRITE, ["batch"], ["jobs", "cronjobs"]),
        _rule(WRITE, ["extensions"], ["daemonsets", "deployments", "deployments/scale", "deployments/rollback",
                                      "ingresses", "replicasets", "replicasets/scale", "replicationcontrollers/scale",
                                      "networkpolicies"]),
        _rule(WRITE, ["policy"], ["poddisruptionbudgets"]),
        _rule(WRITE, ["networking.k8s.io"], ["networkpolicies", "ingresses"]),
        _rule(READ_WRITE, ["coordination.k8s.io"], ["leases"]),
    ]
    to_admin = [
        _rule(["create"], ["authorization.k8s.io"], ["localsubjectaccessreviews"]),
        _rule(READ_WRITE, [RBAC_GROUP], ["roles", "rolebindings"]),
    ]
    view_rules = _union(to_view)
    edit_rules = _union(to_edit, view_rules)  # sorted by role name: system:aggregate-to-edit, view
    admin_rules = _union(edit_rules, to_admin)  # edit, system:aggregate-to-admin

    node_rules = [
        _rule(["create"], ["authentication.k8s.io"], ["tokenreviews"]),
        _rule(["create"], ["authorization.k8s.io"], ["subjectaccessreviews", "localsubjectaccessreviews"]),
        _rule(READ, [""], ["services"]),
        _rule(["create", "get", "list", "watch"], [""], ["nodes"]),
        _rule(["update", "patch"], [""], ["nodes/status"]),
        _rule(["update", "patch"], [""], ["nodes"]),
        _rule(["create", "update", "patch"], [""], ["events"]),
        _rule(READ, [""], ["pods"]),
        _rule(["create", "delete"], [""], ["pods"]),
        _rule(["update", "patch"], [""], ["pods/status"]),
        _rule(["create"], [""], ["pods/eviction"]),
        _rule(READ, [""], ["secrets", "configmaps"]),
        _rule(["get"], [""], ["persistentvolumeclaims", "persistentvolumes"]),
        _rule(["get"], [""], ["endpoints"]),
        _rule(["create", "get", "list", "watch"], ["certificates.k8s.io"], ["certificatesigningrequests"]),
        _rule(["get", "create", "update", "patch", "delete"], ["coordination.k8s.io"], ["leases"]),
        _rule(["get"], ["storage.k8s.io"], ["volumeattachments"]),
        _rule(["create"], [""], ["serviceaccounts/token"]),
        _rule(["get", "update", "patch"], [""], ["persistentvolumeclaims/status"]),
        _rule(READ, ["storage.k8s.io"], ["csidrivers"]),
        _rule(["get", "create", "update", "patch", "delete"], ["storage.k8s.io"], ["csinodes"]),
        _rule(READ, ["node.k8s.io"], ["runtimeclasses"]),
    ]

    roles = [
        _cluster_role("admin", admin_rules, aggregate_from="admin"),
        _cluster_role("cluster-admin", [_rule(["*"], ["*"], ["*"]), _rule(["*"], urls=["*"])]),
        _cluster_role("edit", edit_rules, labels={"rbac.authorization.k8s.io/aggregate-to-admin": "true"},
                      aggregate_from="edit"),
        _cluster_role("system:aggregate-to-admin", to_admin,
                      labels={"rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
        _cluster_role("system:aggregate-to-edit", to_edit,
                      labels={"rbac.authorization.k8s.io/aggregate-to-edit": "true"}),
        _cluster_role("system:aggregate-to-view", to_view,
                      labels={"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
        _cluster_role("system:basic-user", [
            _rule(["create"], ["authorization.k8s.io"], ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
            _rule(["create"], ["authentication.k8s.io"], ["selfsubjectreviews"]),
        ]),
        _cluster_role("system:discovery", [_rule(["get"], urls=[
            "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz",
            "/version", "/version/"])]),
        _cluster_role("system:kube-dns", [_rule(["list", "watch"], [""], ["endpoints", "services"])]),
        _cluster_role("system:node", node_rules),
        _cluster_role("system:node-proxier", [
            _rule(["list", "watch"], [""], ["services", "endpoints"]),
            _rule(READ, [""], ["nodes"]),
            events,
            _rule(["list", "watch"], ["discovery.k8s.io"], ["endpointslices"]),
        ]),
        _cluster_role("system:public-info-viewer", [_rule(["get"], urls=[
            "/healthz", "/livez", "/readyz", "/version", "/version/"])]),
        _cluster_role("system:service-account-issuer-discovery", [_rule(["get"], urls=[
            "/.well-known/openid-configuration", "/.well-known/openid-configuration/", "/openid/v1/jwks",
            "/openid/v1/jwks/"])]),
        _cluster_role("view", view_rules, labels={"rbac.authorization.k8s.io/aggregate-to-edit": "true"},
                      aggregate_from="view"),
        # The nodes' network policy agent (emu.node.agent.policy.PolicySource), as a CNI's
        # (Calico's calico-node, kube-router's) but narrower: it lists and watches what it
        # renders from and writes nothing (not a bootstrap role).
        _cluster_role(NETWORK_POLICY_ROLE, [
            _rule(["list", "watch"], ["networking.k8s.io"], ["networkpolicies"]),
            _rule(["list", "watch"], [""], ["pods", "namespaces"]),
        ], bootstrap=False),
        # kubeadm's CoreDNS role (not a bootstrap role: no bootstrapping label).
        _cluster_role("system:coredns", [
            _rule(["list", "watch"], [""], ["endpoints", "services", "pods", "namespaces"]),
            _rule(["list", "watch"], ["discovery.k8s.io"], ["endpointslices"]),
        ], bootstrap=False),
        # ingress-nginx's controller (its manifests' ClusterRole ingress-nginx, not a bootstrap
        # role), narrowed to what emu's controller (emu.node.agent.ingress) does: it lists and
        # watches Ingresses, IngressClasses, Services and EndpointSlices, and writes the status
        # of the Ingresses it serves; nothing else (no Secrets, no Pods, no Events).
        _cluster_role("ingress-nginx", [
            _rule(["list", "watch"], [""], ["services"]),
            _rule(["list", "watch"], ["discovery.k8s.io"], ["endpointslices"]),
            _rule(["list", "watch"], ["networking.k8s.io"], ["ingresses", "ingressclasses"]),
            _rule(["update"], ["networking.k8s.io"], ["ingresses/status"]),
        ], labels=INGRESS_NGINX_LABELS, bootstrap=False),
    ]
    bindings = [
        _binding("cluster-admin", "cluster-admin", [_subject("Group", SUPERUSER_GROUP)]),
        _binding("system:basic-user", "system:basic-user", [_subject("Group", "system:authenticated")]),
        _binding("system:discovery", "system:discovery", [_subject("Group", "system:authenticated")]),
        _binding("system:kube-dns", "system:kube-dns", [_subject("ServiceAccount", "kube-dns", "kube-system")]),
        _binding("system:node", "system:node", [_subject("Group", "system:nodes")]),
        _binding("system:node-proxier", "system:node-proxier", [_subject("User", "system:kube-proxy")]),
        _binding("system:public-info-viewer", "system:public-info-viewer",
                 [_subject("Group", "system:authenticated"), _subject("Group", "system:unauthenticated")]),
        _binding("system:service-account-issuer-discovery", "system:service-account-issuer-discovery",
                 [_subject("Group", "system:serviceaccounts")]),
        # kubeadm's own bindings.
        _binding("kubeadm:node-proxier", "system:node-proxier",
                 [_subject("ServiceAccount", "kube-proxy", "kube-system")], bootstrap=False),
        _binding("system:coredns", "system:coredns",
                 [_subject("ServiceAccount", "coredns", "kube-system")], bootstrap=False),
        _binding(NETWORK_POLICY_ROLE, NETWORK_POLICY_ROLE, [_subject("User", NETWORK_POLICY_USER)], bootstrap=False),
        _binding("ingress-nginx", "ingress-nginx",
                 [_subject("ServiceAccount", "ingress-nginx", "ingress-nginx")], bootstrap=False),
    ]
    return roles + bindings
