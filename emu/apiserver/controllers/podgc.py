"""The pod garbage collector, as kube-controller-manager's podgc controller.

- Orphaned pods: a pod bound (spec.nodeName) to a Node that does not exist is deleted
  once the node has been missing for 40 s (upstream's quarantine, which lets a node that
  is being re-registered come back), checked against the store before deleting.
- Unscheduled terminating pods: a pod being deleted that was never bound has no kubelet
  to finish it; it is deleted at once.
- Terminated pods (Succeeded or Failed) beyond terminated-pod-gc-threshold (12,500) are
  deleted, oldest first.
Queue keys are the pods' "namespace/name"."""

from __future__ import annotations

from emu.apiserver.controllers.framework import Controller, Watch, being_deleted, obj_key

QUARANTINE = 40.0
TERMINATED_THRESHOLD = 12_500


def _node_name(pod: dict) -> str:
    return (pod.get("spec") or {}).get("nodeName") or ""


def _terminated(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


class PodGCController(Controller):
    name = "pod-garbage-collector"

    def __init__(self, quarantine: float = QUARANTINE, threshold: int = TERMINATED_THRESHOLD):
        super().__init__()
        self.quarantine = quarantine
        self.threshold = threshold
        self.missing_since: dict[str, float] = {}  # node name -> when this controller first saw it missing

    def watches(self):
        return [Watch("pods", self._pod_keys), Watch("nodes", self._node_pods)]

    def setup(self) -> None:
        pods = self.informer("pods")
        if "nodeName" not in pods.index_fns:
            pods.add_index("nodeName", lambda p: [_node_name(p)])
        pods.add_index("terminated", lambda p: ["yes"] if _terminated(p) else [])

    def _pod_keys(self, pod: dict) -> list[str]:
        name = _node_name(pod)
        if (name and self.informer("nodes").get(name) is None) or (being_deleted(pod) and not name) \
                or _terminated(pod):
            return [obj_key(pod)]
        return []

    def _node_pods(self, node: dict) -> list[str]:
        return [obj_key(p) for p in self.informer("pods").by_index("nodeName", node["metadata"]["name"])]

    def reconcile(self, key: str) -> float | None:
        pod = self.informer("pods").get(key)
        if pod is None:
            return None
        meta = pod["metadata"]
        ns = meta.get("namespace", "")
        node_name = _node_name(pod)
        if being_deleted(pod) and not node_name:
            self.client.delete("pods", ns, meta["name"], uid=meta.get("uid", ""))
            return None
        if _terminated(pod):
            self._terminated_over_threshold()
        if not node_name:
            return None
        if self.informer("nodes").get(node_name) is not None:
            self.missing_since.pop(node_name, None)
            return None
        now = self.manager.clock()
        since = self.missing_since.setdefault(node_name, now)
        if now - since < self.quarantine:
            return since + self.quarantine - now
        if self.client.get("nodes", "", node_name) is not None:
            return None  # the cache lags: the node is back
        if self.client.delete("pods", ns, meta["name"], uid=meta.get("uid", "")):
            self.log(f"deleted pod {ns}/{meta['name']}: it was bound to node {node_name}, which no longer exists")
        return None

    def _terminated_over_threshold(self) -> None:
        done = self.informer("pods").by_index("terminated", "yes")
        extra = len(done) - self.threshold
        if extra <= 0:
            return
        done.sort(key=lambda p: (p["metadata"].get("creationTimestamp", ""), obj_key(p)))
        for p in done[:extra]:
            self.client.delete("pods", p["metadata"].get("namespace", ""), p["metadata"]["name"],
                               uid=p["metadata"].get("uid", ""))
