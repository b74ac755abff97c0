"""The scheduler: binds each pod without spec.nodeName to a node, as kube-scheduler's
default profile does for what networking needs.

Filters, in kube-scheduler's plugin order (the first that fails names the node's reason):
NodeUnschedulable (spec.unschedulable, unless tolerated), NodeName, TaintToleration
(NoSchedule and NoExecute taints; a node whose Ready condition is not True counts as
tainted node.kubernetes.io/not-ready:NoSchedule, as the node lifecycle controller
taints it), NodeAffinity (spec.nodeSelector and requiredDuringScheduling terms,
matchExpressions In/NotIn/Exists/DoesNotExist/Gt/Lt and matchFields metadata.name),
PodTopologySpread (whenUnsatisfiable DoNotSchedule: maxSkew over the topologyKey's
domains among the nodes the pod's node affinity allows) and InterPodAffinity (required
podAffinity and podAntiAffinity terms by topologyKey, and existing pods' anti-affinity).
Not modelled: resource requests (NodeResourcesFit), ports, volumes, preferred terms, preemption.
Scoring, deterministic: fewest pods of the same controller on the node (spreading,
as the default topology spread by hostname), then fewest pods, then node name.
A bind writes spec.nodeName and the PodScheduled condition (what the Binding
subresource writes) and an Event Scheduled; a pod no node fits gets PodScheduled
False/Unschedulable and an Event FailedScheduling, with kube-scheduler's message."""

from __future__ import annotations

import collections

from emu.apiserver import errors, resources, storage
from emu.apiserver.controllers.framework import Controller, Watch, controller_of, info_for, obj_key
from emu.apiserver.selectors import LabelSelector

NOT_READY_TAINT = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}

REASON_UNSCHEDULABLE = "node(s) were unschedulable"
UNSCHEDULABLE_RETRY = 300.0  # kube-scheduler's podMaxInUnschedulablePodsDuration
REASON_NODE_NAME = "node(s) didn't match the requested node name"
REASON_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
REASON_AFFINITY_RULES = "node(s) didn't match pod affinity rules"
REASON_ANTI_AFFINITY = "node(s) didn't match pod anti-affinity rules"
REASON_EXISTING_ANTI_AFFINITY = "node(s) didn't satisfy existing pods anti-affinity rules"
REASON_SPREAD = "node(s) didn't match pod topology spread constraints"
REASON_SPREAD_LABEL = "node(s) didn't match pod topology spread constraints (missing required label)"


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
    """A NodeSelectorTerm: every matchExpression on labels and matchField on metadata.name match;
    an empty term matches nothing."""
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


# Reasons a preemption could cure (the filter answers Unschedulable, not UnschedulableAndUnresolvable): with every
# pod at priority 0 there is never a victim, so preemption reports "No preemption victims found".
RESOLVABLE = {REASON_ANTI_AFFINITY, REASON_EXISTING_ANTI_AFFINITY, REASON_SPREAD}


def fit_error(reasons: list[str], total: int) -> str:
    """kube-scheduler's FitError message: a histogram of the reasons, sorted, then preemption's verdict."""
    if total == 0:
        return "no nodes available to schedule pods"
    counts = collections.Counter(reasons)
    hist = sorted(f"{n} {r}" for r, n in counts.items())
    resolvable = sum(n for r, n in counts.items() if r in RESOLVABLE)
    verdict = []
    if total - resolvable:
        verdict.append(f"{total - resolvable} Preemption is not helpful for scheduling")
    if resolvable:
        verdict.append(f"{resolvable} No preemption victims found for incoming pod")
    return (f"0/{total} nodes are available: {', '.join(hist)}. "
            f"preemption: 0/{total} nodes are available: {', '.join(sorted(verdict))}.")


def _selector(sel: dict | None) -> LabelSelector | None:
    """A metav1.LabelSelector as a LabelSelector; None (matches nothing) when absent, as upstream treats nil."""
    if not isinstance(sel, dict):
        return None
    text = resources._format_selector(sel)
    return LabelSelector.parse(text) if text else LabelSelector()


def _term_matches_pod(term: dict, owner_ns: str, pod: dict) -> bool:
    """A PodAffinityTerm (labelSelector, namespaces; default the term owner's namespace) matches `pod`."""
    namespaces = term.get("namespaces") or [owner_ns]
    if (pod.get("metadata") or {}).get("namespace", "") not in namespaces and not term.get("namespaceSelector"):
        return False
    sel = _selector(term.get("labelSelector"))
    return sel is not None and sel.matches((pod.get("metadata") or {}).get("labels") or {})


def _required_terms(spec: dict, kind: str) -> list[dict]:
    return ((spec.get("affinity") or {}).get(kind) or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or []


def _label(node: dict | None, key: str) -> str | None:
    return ((node or {}).get("metadata") or {}).get("labels", {}).get(key)


class Placement:
    """The bound pods and nodes one scheduling decision looks at (InterPodAffinity, PodTopologySpread)."""

    def __init__(self, nodes: list[dict], pods: list[dict]):
        self.nodes = {n["metadata"]["name"]: n for n in nodes}
        self.pods = [p for p in pods if (p.get("spec") or {}).get("nodeName") and not _terminal(p)
                     and not (p.get("metadata") or {}).get("deletionTimestamp")]

    def node_of(self, pod: dict) -> dict | None:
        return self.nodes.get(pod["spec"]["nodeName"])

    def inter_pod_reason(self, pod: dict, node: dict) -> str | None:
        """InterPodAffinity's Filter for `pod` on `node`."""
        spec = pod.get("spec") or {}
        ns = pod["metadata"].get("namespace", "")
        for term in _required_terms(spec, "podAffinity"):
            value = _label(node, term.get("topologyKey", ""))
            matching = [p for p in self.pods if _term_matches_pod(term, ns, p)]
            if value is not None and any(_label(self.node_of(p), term["topologyKey"]) == value for p in matching):
                continue
            # the first pod of a group that selects itself may go anywhere the topology key exists
            if not matching and value is not None and _term_matches_pod(term, ns, pod):
                continue
            return REASON_AFFINITY_RULES
        for term in _required_terms(spec, "podAntiAffinity"):
            value = _label(node, term.get("topologyKey", ""))
            if value is None:
                continue
            if any(_label(self.node_of(p), term["topologyKey"]) == value and _term_matches_pod(term, ns, p)
                   for p in self.pods):
                return REASON_ANTI_AFFINITY
        for other in self.pods:
            for term in _required_terms(other.get("spec") or {}, "podAntiAffinity"):
                if not _term_matches_pod(term, other["metadata"].get("namespace", ""), pod):
                    continue
                value = _label(self.node_of(other), term.get("topologyKey", ""))
                if value is not None and _label(node, term["topologyKey"]) == value:
                    return REASON_EXISTING_ANTI_AFFINITY
        return None

    def spread_reason(self, pod: dict, node: dict) -> str | None:
        """PodTopologySpread's Filter for the whenUnsatisfiable: DoNotSchedule constraints."""
        spec = pod.get("spec") or {}
        ns = pod["metadata"].get("namespace", "")
        labels = pod["metadata"].get("labels") or {}
        for c in spec.get("topologySpreadConstraints") or []:
            if c.get("whenUnsatisfiable", "DoNotSchedule") != "DoNotSchedule":
                continue
            key = c.get("topologyKey", "")
            if _label(node, key) is None:
                return REASON_SPREAD_LABEL
            sel = _selector(c.get("labelSelector"))
            # the domains: nodes with the key that the pod's node affinity and selector allow (nodeAffinityPolicy Honor)
            counts = {_label(n, key): 0 for n in self.nodes.values()
                      if _label(n, key) is not None and affinity_matches(spec, n)}
            for p in self.pods:
                if p["metadata"].get("namespace", "") != ns or sel is None \
                        or not sel.matches(p["metadata"].get("labels") or {}):
                    continue
                value = _label(self.node_of(p), key)
                if value in counts:
                    counts[value] += 1
            if not counts:
                continue
            self_match = 1 if sel is not None and sel.matches(labels) else 0
            skew = counts.get(_label(node, key), 0) + self_match - min(counts.values())
            if skew > int(c.get("maxSkew", 1)):
                return REASON_SPREAD
        return None


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
        pods.add_index("anti-affinity", lambda p: ["yes"] if (p.get("spec") or {}).get("nodeName")
                       and _required_terms(p.get("spec") or {}, "podAntiAffinity") else [])
        pods.add_index("node-owner", lambda p: [f'{p["spec"]["nodeName"]}/{_owner_uid(p)}']
                       if (p.get("spec") or {}).get("nodeName") and not _terminal(p) and _owner_uid(p) else [])

    def _anti_affinity_pods(self) -> bool:
        """Whether some bound pod has required anti-affinity (then every decision must respect it)."""
        return self.informer("pods").count("anti-affinity", "yes") > 0

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
        placement = None
        if _required_terms(spec, "podAffinity") or _required_terms(spec, "podAntiAffinity") \
                or spec.get("topologySpreadConstraints") or self._anti_affinity_pods():
            placement = Placement(nodes, self.informer("pods").list())
        for node in nodes:
            why = filter_reason(spec, node)
            if why is None and placement is not None:
                why = placement.spread_reason(pod, node) or placement.inter_pod_reason(pod, node)
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
