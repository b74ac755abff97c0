"""The DaemonSet controller, as kube-controller-manager's (pkg/controller/daemon).

One pod per eligible node. A node is eligible when the daemon pod (the template with
the DaemonSet's default tolerations) fits it by the scheduler's filters on the node's
own taints, nodeSelector and node affinity (not by unschedulable, which daemon pods
tolerate, nor by readiness). Each pod is pinned to its node the way upstream pins it:
the required node affinity's terms get matchFields metadata.name In [node], and the
scheduler binds it. Pods on nodes no longer eligible, and extra pods on one node, are
deleted. A Failed pod is deleted and made again.

Default tolerations (AddOrUpdateDaemonPodTolerations): not-ready and unreachable
NoExecute; disk-pressure, memory-pressure, pid-pressure and unschedulable
NoSchedule; network-unavailable NoSchedule for hostNetwork pods.

updateStrategy RollingUpdate (maxUnavailable, an int or a percentage of the desired
number, rounded up; maxSurge is not implemented): pods of an older template
(controller-revision-hash) are deleted, not-ready ones first, while no more than
maxUnavailable of the desired pods are unavailable; their replacements come on the
next pass. OnDelete leaves them. Status: desiredNumberScheduled,
currentNumberScheduled, numberMisscheduled, numberReady, updatedNumberScheduled,
numberAvailable, numberUnavailable, observedGeneration. Revisions are the template's
hash as for StatefulSets (no ControllerRevisions are stored)."""

from __future__ import annotations

from emu.apiserver.controllers.deployment import scaled_value, template_hash
from emu.apiserver.mirror import emu_owned
from emu.apiserver.controllers.framework import (
    Controller,
    Watch,
    being_deleted,
    jcopy,
    labels_of,
    mapper_owner,
    obj_key,
)
from emu.apiserver.controllers.replicaset import (
    add_owner_indexes,
    candidates,
    claim,
    pod_available,
    pod_from_template,
    pod_ready,
)
from emu.apiserver.controllers.scheduler import affinity_matches, tolerates

DS = "daemonsets.apps"
REVISION_LABEL = "controller-revision-hash"
TEMPLATE_GENERATION = "pod-template-generation"

DEFAULT_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]
NETWORK_UNAVAILABLE = {"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"}


def daemon_pod_spec(template: dict) -> dict:
    """The template's pod spec with the default daemon tolerations added (those it does not have)."""
    spec = jcopy((template or {}).get("spec") or {})
    tols = spec.setdefault("tolerations", [])
    wanted = DEFAULT_TOLERATIONS + ([NETWORK_UNAVAILABLE] if spec.get("hostNetwork") else [])
    for t in wanted:
        if not any(x.get("key") == t["key"] and x.get("effect") == t["effect"] for x in tols):
            tols.append(dict(t))
    return spec


def should_run(pod_spec: dict, node: dict) -> bool:
    """nodeShouldRunDaemonPod: node name, node affinity/selector, and the node's NoSchedule/NoExecute taints."""
    want = pod_spec.get("nodeName")
    if want and want != node["metadata"]["name"]:
        return False
    if not affinity_matches(pod_spec, node):
        return False
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not any(
                tolerates(t, taint) for t in pod_spec.get("tolerations") or []):
            return False
    return True


def pin_to_node(spec: dict, node_name: str) -> None:
    """ReplaceDaemonSetPodNodeNameNodeAffinity: every required term gets matchFields metadata.name In [node]."""
    field = {"key": "metadata.name", "operator": "In", "values": [node_name]}
    node_affinity = spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = []
    for term in required.get("nodeSelectorTerms") or []:
        term = dict(term)
        term["matchFields"] = [dict(field)]
        terms.append(term)
    if not terms:
        terms = [{"matchFields": [dict(field)]}]
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": terms}


def pod_node(pod: dict) -> str:
    """The node a daemon pod is for: spec.nodeName, or the node its affinity pins it to."""
    if (pod.get("spec") or {}).get("nodeName"):
        return pod["spec"]["nodeName"]
    required = ((((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or []:
        for f in term.get("matchFields") or []:
            if f.get("key") == "metadata.name" and f.get("operator") == "In" and len(f.get("values") or []) == 1:
                return f["values"][0]
    return ""


class DaemonSetController(Controller):
    name = "daemonset-controller"

    def watches(self):
        return [Watch(DS), Watch("pods", mapper_owner("DaemonSet")), Watch("nodes", self._all_daemonsets)]

    def setup(self) -> None:
        add_owner_indexes(self.informer("pods"))

    def _all_daemonsets(self, node: dict) -> list[str]:
        return [obj_key(ds) for ds in self.informer(DS).list()]

    def reconcile(self, key: str) -> float | None:
        ds = self.informer(DS).get(key)
        if ds is None or emu_owned(ds):
            return None  # (emu's own are driven by emu's commands)
        pods = claim(self, ds, candidates(self.informer("pods"), ds, lambda p: not being_deleted(p)))
        template = (ds.get("spec") or {}).get("template") or {}
        revision = template_hash(template)
        spec = daemon_pod_spec(template)
        nodes = self.informer("nodes").list()
        eligible = {n["metadata"]["name"] for n in nodes if should_run(spec, n)}
        by_node: dict[str, list[dict]] = {}
        for p in sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"])):
            by_node.setdefault(pod_node(p), []).append(p)
        if not being_deleted(ds):
            self._manage(ds, spec, revision, eligible, by_node)
            self._rolling_update(ds, revision, eligible, by_node)
        return self._status(ds, revision, eligible, by_node)

    def _delete(self, ds: dict, pod: dict) -> None:
        if self.client.delete("pods", pod["metadata"].get("namespace", ""), pod["metadata"]["name"],
                              uid=pod["metadata"]["uid"]):
            self.client.event(ds, "Normal", "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}",
                              self.name)

    def _manage(self, ds: dict, spec: dict, revision: str, eligible: set[str],
                by_node: dict[str, list[dict]]) -> None:
        generation = str(ds["metadata"].get("generation", 1))
        for node_name in sorted(eligible):
            on = [p for p in by_node.get(node_name, []) if not being_deleted(p)]
            failed = [p for p in on if (p.get("status") or {}).get("phase") == "Failed"]
            for p in failed:
                self._delete(ds, p)
            on = [p for p in on if p not in failed]
            if not on:
                template = jcopy((ds.get("spec") or {}).get("template") or {})
                template["spec"] = jcopy(spec)
                pin_to_node(template["spec"], node_name)
                pod = pod_from_template(template, ds, generate_name=f"{ds['metadata']['name']}-")
                pod["metadata"]["labels"].update({REVISION_LABEL: revision, TEMPLATE_GENERATION: generation})
                created = self.client.create("pods", pod)
                by_node.setdefault(node_name, []).append(created)
                self.client.event(ds, "Normal", "SuccessfulCreate", f"Created pod: {created['metadata']['name']}",
                                  self.name)
            elif len(on) > 1:  # keep the oldest
                for p in on[1:]:
                    self._delete(ds, p)
                    by_node[node_name].remove(p)
        for node_name, ps in by_node.items():
            if node_name not in eligible:
                for p in ps:
                    if not being_deleted(p):
                        self._delete(ds, p)

    def _rolling_update(self, ds: dict, revision: str, eligible: set[str], by_node: dict[str, list[dict]]) -> None:
        strategy = (ds.get("spec") or {}).get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return
        desired = len(eligible)
        max_unavailable = scaled_value((strategy.get("rollingUpdate") or {}).get("maxUnavailable", 1), desired, True)
        min_ready = (ds.get("spec") or {}).get("minReadySeconds", 0) or 0
        now = self.now()
        unavailable = 0
        old_pods = []
        for node_name in sorted(eligible):
            ps = [p for p in by_node.get(node_name, []) if not being_deleted(p)]
            if not ps or not pod_available(ps[0], min_ready, now):
                unavailable += 1
            if ps and labels_of(ps[0]).get(REVISION_LABEL) != revision:
                old_pods.append(ps[0])
        # not-ready old pods go first: deleting them costs no availability
        for p in [p for p in old_pods if not pod_available(p, min_ready, now)]:
            self._delete(ds, p)
        budget = max_unavailable - unavailable
        for p in [p for p in old_pods if pod_available(p, min_ready, now)]:
            if budget <= 0:
                break
            self._delete(ds, p)
            budget -= 1

    def _status(self, ds: dict, revision: str, eligible: set[str], by_node: dict[str, list[dict]]) -> float | None:
        min_ready = (ds.get("spec") or {}).get("minReadySeconds", 0) or 0
        now = self.now()
        current = ready = available = updated = misscheduled = 0
        for node_name, ps in by_node.items():
            ps = [p for p in ps if not being_deleted(p)]
            if not ps:
                continue
            if node_name not in eligible:
                misscheduled += 1
                continue
            current += 1
            p = ps[0]
            if pod_ready(p):
                ready += 1
            if pod_available(p, min_ready, now):
                available += 1
            if labels_of(p).get(REVISION_LABEL) == revision:
                updated += 1
        desired = len(eligible)
        status = {"currentNumberScheduled": current, "numberMisscheduled": misscheduled,
                  "desiredNumberScheduled": desired, "numberReady": ready,
                  "observedGeneration": ds["metadata"].get("generation", 1),
                  "updatedNumberScheduled": updated, "numberAvailable": available,
                  "numberUnavailable": max(0, desired - available)}
        # omitempty in DaemonSetStatus; the first four are always written
        self.client.write_status(DS, ds, status, ("updatedNumberScheduled", "numberAvailable", "numberUnavailable"))
        return None
