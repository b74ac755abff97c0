"""The StatefulSet controller, as kube-controller-manager's (pkg/controller/statefulset).

Pods are named "<statefulset>-<ordinal>" with spec.hostname = that name and
spec.subdomain = spec.serviceName (so the headless service's DNS names them
"<pod>.<service>"), and the labels statefulset.kubernetes.io/pod-name,
apps.kubernetes.io/pod-index and controller-revision-hash.

podManagementPolicy OrderedReady: ordinals are created in order, the next only when
every lower one is Running and Ready; scaling down removes the highest ordinal first,
one at a time, and only while the others are Running and Ready. Parallel: every
missing pod is created and every surplus pod deleted at once. A Failed pod is deleted
and made again. updateStrategy RollingUpdate replaces pods whose revision is not the
update revision from the highest ordinal down to spec.updateStrategy.rollingUpdate.
partition, one at a time, waiting for each to be Running and Ready; OnDelete leaves
them. Status: replicas, readyReplicas, availableReplicas, currentReplicas,
updatedReplicas, currentRevision, updateRevision, observedGeneration, collisionCount.

Revisions: kube-controller-manager stores ControllerRevisions, which this API server
does not serve; the revision name is "<statefulset>-<hash of the pod template>"
(the Deployment's template_hash), and status.currentRevision remembers the last
completed one. `kubectl rollout status sts/x` works; `rollout history/undo` for
StatefulSets (which read ControllerRevisions) do not."""

from __future__ import annotations

import re

from emu.apiserver.controllers.deployment import template_hash
from emu.apiserver.mirror import emu_owned
from emu.apiserver.controllers.framework import Controller, Watch, being_deleted, labels_of, mapper_owner
from emu.apiserver.controllers.replicaset import (
    add_owner_indexes,
    candidates,
    claim,
    pod_available,
    pod_from_template,
    pod_ready,
)

STS = "statefulsets.apps"
POD_NAME = "statefulset.kubernetes.io/pod-name"
POD_INDEX = "apps.kubernetes.io/pod-index"
REVISION_LABEL = "controller-revision-hash"


def ordinal(sts_name: str, pod: dict) -> int | None:
    """The pod's ordinal when its name is "<sts>-<n>" (getParentNameAndOrdinal), else None."""
    m = re.fullmatch(re.escape(sts_name) + r"-(\d+)", pod["metadata"]["name"])
    return int(m.group(1)) if m else None


def running_and_ready(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and pod_ready(pod)


def update_revision(sts: dict) -> str:
    return f"{sts['metadata']['name']}-{template_hash((sts.get('spec') or {}).get('template') or {})}"


class StatefulSetController(Controller):
    name = "statefulset-controller"

    def watches(self):
        return [Watch(STS), Watch("pods", mapper_owner("StatefulSet"))]

    def setup(self) -> None:
        add_owner_indexes(self.informer("pods"))

    def _new_pod(self, sts: dict, i: int, revision: str) -> dict:
        name = f"{sts['metadata']['name']}-{i}"
        pod = pod_from_template((sts.get("spec") or {}).get("template") or {}, sts, name=name)
        labels = pod["metadata"].setdefault("labels", {})
        labels.update({POD_NAME: name, POD_INDEX: str(i), REVISION_LABEL: revision})
        pod["spec"]["hostname"] = name
        if (sts.get("spec") or {}).get("serviceName"):
            pod["spec"]["subdomain"] = sts["spec"]["serviceName"]
        return pod

    def reconcile(self, key: str) -> float | None:
        sts = self.informer(STS).get(key)
        if sts is None or emu_owned(sts):
            return None  # (emu's own are driven by emu's commands)
        sts_name = sts["metadata"]["name"]
        members = [p for p in candidates(self.informer("pods"), sts, lambda p: not being_deleted(p))
                   if ordinal(sts_name, p) is not None]
        pods = claim(self, sts, members)
        spec = sts.get("spec") or {}
        replicas = spec.get("replicas", 1)
        parallel = spec.get("podManagementPolicy") == "Parallel"
        revision = update_revision(sts)
        by_ordinal: dict[int, dict] = {}
        for p in sorted(pods, key=lambda p: (being_deleted(p), p["metadata"].get("creationTimestamp", ""))):
            by_ordinal.setdefault(ordinal(sts_name, p), p)
        if not being_deleted(sts):
            self._sync_pods(sts, by_ordinal, replicas, parallel, revision)
        return self._status(sts, list(by_ordinal.values()), revision)

    def _sync_pods(self, sts: dict, by_ordinal: dict[int, dict], replicas: int, parallel: bool,
                   revision: str) -> None:
        ns = sts["metadata"].get("namespace", "")
        name = sts["metadata"]["name"]

        def create(i: int) -> None:
            pod = self.client.create("pods", self._new_pod(sts, i, revision))
            by_ordinal[i] = pod
            self.client.event(sts, "Normal", "SuccessfulCreate",
                              f"create Pod {pod['metadata']['name']} in StatefulSet {name} successful", self.name)

        def delete(i: int) -> None:
            pod = by_ordinal.pop(i)
            if self.client.delete("pods", ns, pod["metadata"]["name"], uid=pod["metadata"]["uid"]):
                self.client.event(sts, "Normal", "SuccessfulDelete",
                                  f"delete Pod {pod['metadata']['name']} in StatefulSet {name} successful",
                                  self.name)

        # replicas [0, replicas): make what is missing, replace what failed
        for i in range(replicas):
            pod = by_ordinal.get(i)
            if pod is not None and (pod.get("status") or {}).get("phase") == "Failed" and not being_deleted(pod):
                delete(i)
                pod = None
            if pod is None:
                create(i)
                if not parallel:
                    return  # OrderedReady: wait for it to be Running and Ready
                continue
            if not parallel and (being_deleted(pod) or not running_and_ready(pod)):
                return  # OrderedReady: the next ordinal waits for this one
        # condemned: ordinals >= replicas, highest first
        condemned = sorted((i for i in by_ordinal if i >= replicas), reverse=True)
        if condemned:
            if parallel:
                for i in condemned:
                    if not being_deleted(by_ordinal[i]):
                        delete(i)
                return
            if any(not running_and_ready(by_ordinal[i]) and not being_deleted(by_ordinal[i])
                   for i in range(replicas) if i in by_ordinal):
                return
            i = condemned[0]
            if not being_deleted(by_ordinal[i]):
                delete(i)
            return
        # rolling update: from the highest ordinal down to the partition, one pod at a time
        strategy = (sts.get("spec") or {}).get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return
        partition = (strategy.get("rollingUpdate") or {}).get("partition", 0) or 0
        for i in range(replicas - 1, partition - 1, -1):
            pod = by_ordinal.get(i)
            if pod is None:
                return
            if labels_of(pod).get(REVISION_LABEL) != revision and not being_deleted(pod):
                delete(i)
                return
            if not running_and_ready(pod):
                return

    def _status(self, sts: dict, pods: list[dict], revision: str) -> float | None:
        spec = sts.get("spec") or {}
        old = sts.get("status") or {}
        current = old.get("currentRevision") or revision
        min_ready = spec.get("minReadySeconds", 0) or 0
        now = self.now()
        live = [p for p in pods if not being_deleted(p)]
        status = {
            "observedGeneration": sts["metadata"].get("generation", 1),
            "replicas": len(pods),
            "readyReplicas": sum(1 for p in pods if running_and_ready(p)),
            "availableReplicas": sum(1 for p in pods if running_and_ready(p) and pod_available(p, min_ready, now)),
            "currentReplicas": sum(1 for p in live if labels_of(p).get(REVISION_LABEL) == current),
            "updatedReplicas": sum(1 for p in live if labels_of(p).get(REVISION_LABEL) == revision),
            "currentRevision": current,
            "updateRevision": revision,
            "collisionCount": old.get("collisionCount", 0),
        }
        strategy = spec.get("updateStrategy") or {}
        replicas = spec.get("replicas", 1)
        # completeRollingUpdate: every pod at the update revision and ready: it becomes the current one
        if strategy.get("type", "RollingUpdate") == "RollingUpdate" and status["updatedReplicas"] >= replicas \
                and status["readyReplicas"] >= replicas and status["replicas"] == replicas:
            status["currentRevision"] = revision
            status["currentReplicas"] = status["updatedReplicas"]
        self.client.write_status(STS, sts, status,
                                 ("readyReplicas", "availableReplicas", "currentReplicas", "updatedReplicas"))
        return None
