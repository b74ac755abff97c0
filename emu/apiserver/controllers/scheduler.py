"""The scheduler: binds each pod without spec.nodeName to a node, as kube-scheduler's
default profile does for what networking needs.

Filters, in kube-scheduler's plugin order (the first that fails names the node's reason):
NodeUnschedulable (spec.unschedulable, unless tolerated), NodeName, TaintToleration
(NoSchedule and NoExecute taints; a node whose Ready condition is not True counts as
tainted node.kubernetes.io/not-ready:NoSchedule, as the node lifecycle controller
taints it), NodeAffinity (spec.nodeSelector and requiredDuringScheduling terms,
matchExpressions In/NotIn/Exists/DoesNotExist/Gt/Lt and matchFields metadata.name).
Scoring, deterministic: fewest pods of the same controller on the node (spreading,
as the default topology spread by hostname), then fewest pods, then node name.
A bind writes spec.nodeName and the PodScheduled condition (what the Binding
subresource writes) and an Event Scheduled; a pod no node fits gets PodScheduled
False/Unschedulable and an Event FailedScheduling, with kube-scheduler's message."""

from __future__ import annotations

import collections

from emu.apiserver import errors, storage
from emu.apiserver.controllers.framework import Controller, Watch, controller_of, info_for, obj_key

NOT_READY_TAINT = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}

REASON_UNSCHEDULABLE = "node(s) were unschedulable"
UNSCHEDULABLE_RETRY = 300.0  # kube-scheduler's podMaxInUnschedulablePodsDuration
REASON_NODE_NAME = "node(s) didn't match the requested node name"
REASON_AFFINITY = "node(s) didn't match Pod's node affinity/selector"


def node_ready(node: dict) -> bool:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def tolerates(toleration: dict, taint: dict) -> bool:
    """v1.Toleration.ToleratesTaint."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    op = toleration.get("operator") or "Equal"
    if key and key != taint.get("key"):
        return False
    if not key and op != "Exists":
        return False
    if op == "Exists":
        return True
    return (toleration.get("value") or "") == (taint.get("value") or "")


def node_taints(node: dict) -> list[dict]:
    """The node's taints, with not-ready's when the Ready condition is not True and no lifecycle taint says so."""
    taints = list((node.get("spec") or {}).get("taints") or [])
    if not node_ready(node) and not any(t.get("key") in ("node.kubernetes.io/not-ready",
                                                          "node.kubernetes.io/unreachable") for t in taints):
        taints.append(dict(NOT_READY_TAINT))
    return taints


def untolerated_taint(pod_spec: dict, node: dict) -> dict | None:
    """The first NoSchedule/NoExecute taint of the node the pod does not tolerate."""
    tols = pod_spec.get("tolerations") or []
    for taint in node_taints(node):
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(tolerates(t, taint) for t in tols):
            return taint
    return None


def _requirement(expr: dict, value: str | None) -> bool:
    op = expr.get("operator")
    values = expr.get("values") or []
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt"):
        try:
            have, want = int(value), int(values[0])
        except (TypeError, ValueError, IndexError):
            return False
        return have > want if op == "Gt" else have < want
    return False


def term_matches(term: dict, node: dict) -> bool:
    """A NodeSelectorTerm: every matchExpression on labels and matchField on metadata.name; an empty term matches nothing."""
    exprs = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not exprs and not fields:
        return False
    labels = (node.get("metadata") or {}).get("labels") or {}
    for e in exprs:
        if not _requirement(e, labels.get(e.get("key"))):
            return False
    for f in fields:
        value = node["metadata"].get("name") if f.get("key") == "metadata.name" else None
        if not _requirement(f, value):
            return False
    return True


def affinity_matches(pod_spec: dict, node: dict) -> bool:
    """spec.nodeSelector and nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution (terms ORed)."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    for k, v in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if required is not None:
        return any(term_matches(t, node) for t in required.get("nodeSelectorTerms") or [])
    return True


def filter_reason(pod_spec: dict, node: dict, check_unschedulable: bool = True) -> str | None:
    """Why the pod cannot go to the node (kube-scheduler's wording), or None when it fits."""
    unschedulable = check_unschedulable and (node.get("spec") or {}).get("unschedulable")
    if unschedulable and not any(tolerates(t, UNSCHEDULABLE_TAINT) for t in pod_spec.get("tolerations") or []):
        return REASON_UNSCHEDULABLE
    want = pod_spec.get("nodeName")
    if want and want != node["metadata"]["name"]:
        return REASON_NODE_NAME
    taint = untolerated_taint(pod_spec, node)
    if taint is not None:
        return f"node(s) had untolerated taint {{{taint.get('key', '')}: {taint.get('value', '')}}}"
    if not affinity_matches(pod_spec, node):
        return REASON_AFFINITY
    return None


def fit_error(reasons: list[str], total: int) -> str:
    """kube-scheduler's FitError message: a histogram of the reasons, sorted, then preemption's verdict."""
    if total == 0:
        return "no nodes available to schedule pods"
    counts = collections.Counter(reasons)
    hist = sorted(f"{n} {r}" for r, n in counts.items())
    return (f"0/{total} nodes are available: {', '.join(hist)}. "
            f"preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling.")


def _terminal(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _owner_uid(pod: dict) -> str:
    ref = controller_of(pod)
    return ref.get("uid", "") if ref else ""


class Scheduler(Controller):
    """kube-scheduler's default-scheduler profile (see the module docstring)."""

    name = "default-scheduler"

    def watches(self):
        return [Watch("pods", self._pod_keys), Watch("nodes", self._pending_keys)]

    def setup(self) -> None:
        pods = self.informer("pods")
        pods.add_index("nodeName", lambda p: [(p.get("spec") or {}).get("nodeName") or ""])
        # what scoring counts, kept by the informer instead of walking each node's pods per decision
        pods.add_index("node-active", lambda p: [p["spec"]["nodeName"]] if (p.get("spec") or {}).get("nodeName")
                       and not _terminal(p) else [])
        pods.add_index("node-owner", lambda p: [f'{p["spec"]["nodeName"]}/{_owner_uid(p)}']
                       if (p.get("spec") or {}).get("nodeName") and not _terminal(p) and _owner_uid(p) else [])

    def _pod_keys(self, pod: dict) -> list[str]:
        spec = pod.get("spec") or {}
        if spec.get("nodeName") or (pod.get("metadata") or {}).get("deletionTimestamp"):
            return []
        if (spec.get("schedulerName") or "default-scheduler") != "default-scheduler":
            return []
        return [obj_key(pod)]

    def _pending_keys(self, node: dict) -> list[str]:
        # a node added or changed may fit pods that fitted nowhere (the scheduling queue's move on node events)
        return [k for p in self.informer("pods").by_index("nodeName", "") for k in self._pod_keys(p)]

    def reconcile(self, key: str) -> float | None:
        pod = self.informer("pods").get(key)
        if pod is None or not self._pod_keys(pod) or _terminal(pod):
            return None
        spec = pod.get("spec") or {}
        nodes = self.informer("nodes").list()
        reasons: list[str] = []
        fits: list[dict] = []
        for node in nodes:
            why = filter_reason(spec, node)
            if why is None:
                fits.append(node)
            else:
                reasons.append(why)
        if not fits:
            self._unschedulable(pod, fit_error(reasons, len(nodes)))
            # node events retry it at once; this is the scheduling queue's periodic flush of unschedulable pods
            return UNSCHEDULABLE_RETRY
        owner = _owner_uid(pod)
        pods_informer = self.informer("pods")

        def score(node: dict) -> tuple:
            name = node["metadata"]["name"]
            same = pods_informer.count("node-owner", f"{name}/{owner}") if owner else 0
            return same, pods_informer.count("node-active", name), name

        target = min(fits, key=score)["metadata"]["name"]
        self._bind(pod, target)
        return None

    def _bind(self, pod: dict, node_name: str) -> None:
        meta = pod["metadata"]
        info = info_for("pods")
        ns, name, uid = meta.get("namespace", ""), meta["name"], meta.get("uid")

        def fn(current):
            # what POST pods/<name>/binding does, in one transaction
            if current is None or current["metadata"].get("uid") != uid:
                return None
            if (current.get("spec") or {}).get("nodeName"):
                raise errors.conflict("pods/binding", name, why=f'pod {name} is already assigned to node '
                                                                f'"{current["spec"]["nodeName"]}"')
            if current["metadata"].get("deletionTimestamp"):
                return None
            current.setdefault("spec", {})["nodeName"] = node_name
            conds = current.setdefault("status", {}).setdefault("conditions", [])
            conds[:] = [c for c in conds if c.get("type") != "PodScheduled"]
            conds.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                          "lastTransitionTime": storage.now_rfc3339()})
            return current

        etype, out = self.client.store.write("pods", ns, name, fn, info.field_values)
        if etype:
            self.client.event(out, "Normal", "Scheduled", f"Successfully assigned {ns}/{name} to {node_name}",
                              self.name)

    def _unschedulable(self, pod: dict, message: str) -> None:
        def change(p: dict):
            conds = p.setdefault("status", {}).setdefault("conditions", [])
            for c in conds:
                if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("message") == message:
                    return None
            conds[:] = [c for c in conds if c.get("type") != "PodScheduled"]
            conds.append({"type": "PodScheduled", "status": "False", "lastProbeTime": None,
                          "lastTransitionTime": storage.now_rfc3339(), "reason": "Unschedulable",
                          "message": message})
            return p

        meta = pod["metadata"]
        before = self.client.get("pods", meta.get("namespace", ""), meta["name"])
        out = self.client.mutate("pods", meta.get("namespace", ""), meta["name"], change, status=True)
        if out is not None and before is not None and out.get("metadata", {}).get("resourceVersion") != \
                before["metadata"].get("resourceVersion"):
            self.client.event(out, "Warning", "FailedScheduling", message, self.name)
