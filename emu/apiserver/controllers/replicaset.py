"""The ReplicaSet controller, as kube-controller-manager's: keeps spec.replicas pods of the
template, adopts orphan pods its selector matches and releases owned pods it no longer
matches, and reports status (replicas, fullyLabeledReplicas, readyReplicas,
availableReplicas, observedGeneration).

Pods are named with generateName "<replicaset>-" and carry the template's labels and
annotations and a controller ownerReference. Scaling down deletes the pods upstream's
ranking deletes first: unassigned before assigned, Pending before Unknown before
Running, not ready before ready, ready for less time before longer, more restarts
before fewer, newer before older."""

from __future__ import annotations

import calendar
import time

from emu.apiserver.mirror import emu_owned
from emu.apiserver.controllers.framework import (
    Controller,
    Watch,
    being_deleted,
    controller_of,
    controller_ref,
    jcopy,
    labels_of,
    mapper_owner,
    obj_key,
    owned_by,
    selector_of,
)

PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def parse_time(text: str | None) -> float | None:
    """RFC 3339 (as the API writes timestamps) to epoch seconds."""
    if not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def condition(obj: dict, ctype: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def pod_ready(pod: dict) -> bool:
    """The pod's Ready condition is True (podutil.IsPodReady)."""
    c = condition(pod, "Ready")
    return c is not None and c.get("status") == "True"


def pod_available(pod: dict, min_ready_seconds: int, now: float) -> bool:
    """Ready for at least minReadySeconds (podutil.IsPodAvailable)."""
    if not pod_ready(pod):
        return False
    if not min_ready_seconds:
        return True
    since = parse_time(condition(pod, "Ready").get("lastTransitionTime"))
    return since is not None and since + min_ready_seconds <= now


def available_in(pod: dict, min_ready_seconds: int, now: float) -> float | None:
    """Seconds until a ready pod becomes available (None when not ready or already available)."""
    if not pod_ready(pod) or not min_ready_seconds:
        return None
    since = parse_time(condition(pod, "Ready").get("lastTransitionTime")) or now
    left = since + min_ready_seconds - now
    return left if left > 0 else None


def pod_active(pod: dict) -> bool:
    """Not terminal and not being deleted (controller.FilterActivePods)."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and not being_deleted(pod)


def deletion_rank(pod: dict) -> tuple:
    """Sort key: pods to delete first come first (controller.ActivePods' Less)."""
    status = pod.get("status") or {}
    ready_since = parse_time((condition(pod, "Ready") or {}).get("lastTransitionTime")) or 0.0
    restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
    created = parse_time(pod["metadata"].get("creationTimestamp")) or 0.0
    return (1 if (pod.get("spec") or {}).get("nodeName") else 0,
            PHASE_RANK.get(status.get("phase", "Pending"), 0),
            1 if pod_ready(pod) else 0,
            -ready_since if pod_ready(pod) else 0.0,
            -restarts,
            -created,
            pod["metadata"]["name"])


def pod_from_template(template: dict, owner: dict, generate_name: str = "", name: str = "") -> dict:
    """A pod of `owner` made from its pod template (controller.GetPodFromTemplate)."""
    tmeta = template.get("metadata") or {}
    meta = {"namespace": owner["metadata"].get("namespace", ""), "labels": dict(tmeta.get("labels") or {}),
            "ownerReferences": [controller_ref(owner)]}
    if tmeta.get("annotations"):
        meta["annotations"] = dict(tmeta["annotations"])
    if tmeta.get("finalizers"):
        meta["finalizers"] = list(tmeta["finalizers"])
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = generate_name
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": jcopy(template.get("spec") or {})}


def add_owner_indexes(informer) -> None:
    """Indexes the workload controllers share on the pods and replicasets informers: by controller uid,
    and orphans by namespace."""
    if "controller" in informer.index_fns:
        return
    informer.add_index("controller", lambda p: [r["uid"] for r in [controller_of(p)] if r is not None])
    informer.add_index("orphans", lambda p: [] if controller_of(p) is not None else
                       [p["metadata"].get("namespace", "")])


def candidates(informer, owner: dict, active=pod_active) -> list[dict]:
    """Objects `owner` controls and active orphans of its namespace (what `claim` looks at)."""
    ns = owner["metadata"].get("namespace", "")
    return (informer.by_index("controller", owner["metadata"]["uid"])
            + [p for p in informer.by_index("orphans", ns) if active(p) and not emu_owned(p)])


def claim(ctl: Controller, owner: dict, pods: list[dict], resource: str = "pods") -> list[dict]:
    """The objects (pods, replica sets) `owner` controls after adopting matching orphans and releasing owned
    ones its selector no longer matches (controller.PodControllerRefManager.ClaimPods)."""
    sel = selector_of(owner)
    uid = owner["metadata"]["uid"]
    out = []
    for pod in pods:
        ref = controller_of(pod)
        matches = sel is not None and not sel.empty() and sel.matches(labels_of(pod))
        if ref is not None and ref.get("uid") == uid:
            if matches or being_deleted(owner):
                out.append(pod)
            else:
                _set_owner(ctl, resource, pod, uid, None)
        elif ref is None and matches and not being_deleted(owner) and not being_deleted(pod):
            adopted = _set_owner(ctl, resource, pod, None, owner)
            if adopted is not None and owned_by(adopted, owner):  # not taken by another controller meanwhile
                out.append(adopted)
    return out


def _set_owner(ctl: Controller, resource: str, pod: dict, release_uid: str | None, adopt: dict | None) -> dict | None:
    def change(p: dict):
        refs = p["metadata"].get("ownerReferences") or []
        if release_uid:
            refs = [r for r in refs if r.get("uid") != release_uid]
        if adopt is not None:
            if controller_of(p) is not None:
                return None  # someone else adopted it meanwhile
            refs = refs + [controller_ref(adopt)]
        p["metadata"]["ownerReferences"] = refs
        return p

    meta = pod["metadata"]
    return ctl.client.mutate(resource, meta.get("namespace", ""), meta["name"], change)


class ReplicaSetController(Controller):
    name = "replicaset-controller"

    def watches(self):
        return [Watch("replicasets.apps"), Watch("pods", self._pod_keys)]

    def setup(self) -> None:
        add_owner_indexes(self.informer("pods"))

    def _pod_keys(self, pod: dict) -> list[str]:
        keys = mapper_owner("ReplicaSet")(pod)
        if keys or controller_of(pod) is not None:
            return keys
        # an orphan: the replica sets that may adopt it
        ns = pod["metadata"].get("namespace", "")
        out = []
        for rs in self.informer("replicasets.apps").list(ns):
            sel = selector_of(rs)
            if sel is not None and not sel.empty() and sel.matches(labels_of(pod)):
                out.append(obj_key(rs))
        return out

    def reconcile(self, key: str) -> float | None:
        rs = self.informer("replicasets.apps").get(key)
        if rs is None or emu_owned(rs):
            return None  # (emu's own are driven by emu's commands)
        ns = rs["metadata"].get("namespace", "")
        pods = [p for p in claim(self, rs, candidates(self.informer("pods"), rs)) if pod_active(p)]
        spec = rs.get("spec") or {}
        want = spec.get("replicas", 1)
        if not being_deleted(rs):
            diff = len(pods) - want
            if diff < 0:
                template = spec.get("template") or {}
                for _ in range(-diff):
                    pod = pod_from_template(template, rs, generate_name=f"{rs['metadata']['name']}-")
                    created = self.client.create("pods", pod)
                    pods.append(created)
                    self.client.event(rs, "Normal", "SuccessfulCreate",
                                      f"Created pod: {created['metadata']['name']}", self.name)
            elif diff > 0:
                doomed = sorted(pods, key=deletion_rank)[:diff]
                for pod in doomed:
                    if self.client.delete("pods", ns, pod["metadata"]["name"], uid=pod["metadata"]["uid"]):
                        self.client.event(rs, "Normal", "SuccessfulDelete",
                                          f"Deleted pod: {pod['metadata']['name']}", self.name)
                names = {p["metadata"]["name"] for p in doomed}
                pods = [p for p in pods if p["metadata"]["name"] not in names]
        return self._status(rs, pods)

    def _status(self, rs: dict, pods: list[dict]) -> float | None:
        spec = rs.get("spec") or {}
        min_ready = spec.get("minReadySeconds", 0) or 0
        now = self.now()
        tlabels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        status = dict(rs.get("status") or {})
        status.update({
            "replicas": len(pods),
            "fullyLabeledReplicas": sum(1 for p in pods if all(labels_of(p).get(k) == v for k, v in tlabels.items())),
            "readyReplicas": sum(1 for p in pods if pod_ready(p)),
            "availableReplicas": sum(1 for p in pods if pod_available(p, min_ready, now)),
            "observedGeneration": rs["metadata"].get("generation", 1),
        })
        # Kubernetes omits zero counts (omitempty) except replicas
        self.client.write_status("replicasets.apps", rs, status,
                                 ("fullyLabeledReplicas", "readyReplicas", "availableReplicas"))
        waits = [w for w in (available_in(p, min_ready, now) for p in pods) if w is not None]
        return min(waits) if waits else None
