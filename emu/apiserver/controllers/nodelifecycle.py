"""Node lifecycle, as kube-controller-manager's node-lifecycle controller and
taint-eviction controller do it, from Leases (coordination.k8s.io/v1 in
kube-node-lease) and Node status.

One pass over every node (upstream's monitorNodeHealth), run on every Node,
Lease or relevant Pod change and at least every `monitor_period` seconds:
- health: a node is heard from when its Lease's renewTime or its Ready
  condition's lastHeartbeatTime changes (the time of that observation counts,
  not the timestamps' values, so clock skew does not matter). Not heard from
  for `grace_period` (node-monitor-grace-period, 40 s; `startup_grace_period`
  60 s for a node that never posted a Ready condition): Ready and the pressure
  conditions become Unknown ("NodeStatusUnknown", "Kubelet stopped posting
  node status.") and the node's pods get Ready=False (MarkPodsNotReady).
  Heard from again: the conditions this controller set Unknown are put back to
  the kubelet's healthy values (emu's agents renew the Lease but need not
  re-post node status; upstream leaves that to the kubelet).
- taints from conditions: Ready Unknown -> node.kubernetes.io/unreachable,
  Ready False -> node.kubernetes.io/not-ready, NoSchedule always and NoExecute
  (with timeAdded) when the zone's state allows evictions;
  spec.unschedulable -> node.kubernetes.io/unschedulable:NoSchedule.
- zone states (zone = topology.kubernetes.io/region + zone labels): more than
  2 and at least 55% of a zone's nodes not Ready is PartialDisruption: no new
  NoExecute taints there (upstream's eviction rate 0 for zones of at most 50
  nodes); every node of every zone not Ready: no NoExecute taints anywhere
  (upstream's "master disruption mode": the problem is more likely the
  control plane's).
- eviction (the taint-eviction controller): a pod on a node with NoExecute
  taints it does not tolerate is deleted at once; one that tolerates them all
  for tolerationSeconds is deleted that long after the taint's timeAdded
  (upstream counts from when it noticed the pod; same thing for a running
  controller, and it survives a restart); tolerated without a limit: stays.
  Pods get the DisruptionTarget condition and a TaintManagerEviction Event first.
  The 300 s comes from the pods' tolerations, which the DefaultTolerationSeconds
  admission adds (resources.prepare_create): a shorter value for emu is that
  admission's to choose, not this controller's.

Not modelled: the eviction rate limits (0.1 node/s, 0.01 in large partially
disrupted zones); the MemoryPressure/DiskPressure/PIDPressure taints."""

from __future__ import annotations

import calendar
import copy
import time

from emu.apiserver.controllers.framework import Controller, Watch, obj_key

LEASE_KEY = "leases.coordination.k8s.io"
LEASE_NAMESPACE = "kube-node-lease"
MONITOR_KEY = "node-lifecycle"  # the one queue key: every pass looks at every node, as upstream's monitor loop

TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
LABEL_ZONE = "topology.kubernetes.io/zone"
LABEL_REGION = "topology.kubernetes.io/region"
LABEL_EXCLUDE_DISRUPTION = "node.kubernetes.io/exclude-disruption"

NORMAL, PARTIAL, FULL = "Normal", "PartialDisruption", "FullDisruption"

# the kubelet's healthy values, put back when a node is heard from again
HEALTHY = {
    "Ready": ("True", "KubeletReady", "kubelet is posting ready status"),
    "MemoryPressure": ("False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    "DiskPressure": ("False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    "PIDPressure": ("False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
}
OUR_REASONS = ("NodeStatusUnknown", "NodeStatusNeverUpdated")


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def parse_time(text: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (MicroTime's fraction allowed), None when unreadable."""
    if not text:
        return None
    base = text.rstrip("Z").split(".")[0].replace("T", " ")
    try:
        return float(calendar.timegm(time.strptime(base, "%Y-%m-%d %H:%M:%S")))
    except ValueError:
        return None


def condition(node: dict, ctype: str) -> dict | None:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def ready_status(node: dict) -> str:
    """"True", "False" or "Unknown" (a node without a Ready condition counts as Unknown)."""
    c = condition(node, "Ready")
    return c.get("status", "Unknown") if c else "Unknown"


def mark_unknown(conditions: list[dict], now: str, created: str = "") -> list[dict]:
    """Ready and the pressure conditions Unknown, as the controller writes them when the kubelet went quiet."""
    out = copy.deepcopy(conditions or [])
    have = {c.get("type"): c for c in out}
    for ctype in HEALTHY:
        c = have.get(ctype)
        if c is None:
            out.append({"type": ctype, "status": "Unknown", "lastHeartbeatTime": created or None,
                        "lastTransitionTime": now, "reason": "NodeStatusNeverUpdated",
                        "message": "Kubelet never posted node status."})
        elif c.get("status") != "Unknown":
            c.update(status="Unknown", reason="NodeStatusUnknown", message="Kubelet stopped posting node status.",
                     lastTransitionTime=now)
    return out


def mark_healthy(conditions: list[dict], now: str) -> list[dict]:
    """The conditions this controller set Unknown, back to the kubelet's healthy values."""
    out = copy.deepcopy(conditions or [])
    for c in out:
        healthy = HEALTHY.get(c.get("type"))
        if healthy and c.get("status") == "Unknown" and c.get("reason") in OUR_REASONS:
            status, reason, message = healthy
            c.update(status=status, reason=reason, message=message, lastTransitionTime=now, lastHeartbeatTime=now)
    return out


def zone_of(node: dict) -> str:
    labels = (node.get("metadata") or {}).get("labels") or {}
    region, zone = labels.get(LABEL_REGION, ""), labels.get(LABEL_ZONE, "")
    return f"{region}:\x00:{zone}" if region or zone else ""


def zone_state(nodes: list[dict], unhealthy_threshold: float = 0.55) -> str:
    """Normal, PartialDisruption (more than 2 and at least the threshold not Ready) or FullDisruption (none Ready)."""
    ready = sum(1 for n in nodes if ready_status(n) == "True")
    not_ready = len(nodes) - ready
    if ready == 0 and not_ready > 0:
        return FULL
    if not_ready > 2 and not_ready / max(1, len(nodes)) >= unhealthy_threshold:
        return PARTIAL
    return NORMAL


def desired_taints(node: dict, no_execute_allowed: bool, now: str) -> list[dict]:
    """The node's taints with the condition taints this controller owns brought up to date."""
    spec = node.get("spec") or {}
    ready = ready_status(node)
    ours = (TAINT_UNREACHABLE, TAINT_NOT_READY, TAINT_UNSCHEDULABLE)
    current = spec.get("taints") or []
    keep = [t for t in current if t.get("key") not in ours]
    want: list[tuple[str, str]] = []
    key = {"Unknown": TAINT_UNREACHABLE, "False": TAINT_NOT_READY}.get(ready)
    if key:
        want.append((key, "NoSchedule"))
        existing_ne = any(t.get("key") == key and t.get("effect") == "NoExecute" for t in current)
        swapped = any(t.get("key") in (TAINT_UNREACHABLE, TAINT_NOT_READY) and t.get("effect") == "NoExecute"
                      for t in current)
        if no_execute_allowed or existing_ne or swapped:
            want.append((key, "NoExecute"))
    if spec.get("unschedulable"):
        want.append((TAINT_UNSCHEDULABLE, "NoSchedule"))
    out = list(keep)
    for k, effect in want:
        old = next((t for t in current if t.get("key") == k and t.get("effect") == effect), None)
        if old is not None:
            out.append(old)
        elif effect == "NoExecute":
            out.append({"key": k, "effect": effect, "timeAdded": now})
        else:
            out.append({"key": k, "effect": effect})
    return out


def tolerates(toleration: dict, taint: dict) -> bool:
    """v1.Toleration.ToleratesTaint."""
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("key") and toleration["key"] != taint.get("key"):
        return False
    op = toleration.get("operator") or "Equal"
    if op == "Exists":
        return True
    return op == "Equal" and (toleration.get("value") or "") == (taint.get("value") or "")


def eviction_delay(pod: dict, taints: list[dict]) -> float | None:
    """Seconds after the taints were added when the pod is to be evicted: 0 when a NoExecute taint is not
    tolerated, the smallest tolerationSeconds of the tolerations used, None when it may stay for ever."""
    no_exec = [t for t in taints if t.get("effect") == "NoExecute"]
    if not no_exec:
        return None
    tols = (pod.get("spec") or {}).get("tolerations") or []
    used = []
    for t in no_exec:
        match = [x for x in tols if tolerates(x, t)]
        if not match:
            return 0.0
        used += match
    seconds = [x["tolerationSeconds"] for x in used if isinstance(x.get("tolerationSeconds"), int)]
    if not seconds:
        return None
    return float(max(0, min(seconds)))


class NodeLifecycleController(Controller):
    """Marks silent nodes Unknown, taints them, and evicts their pods after the pods' toleration."""

    name = "node-lifecycle-controller"

    def __init__(self, grace_period: float = 40.0, startup_grace_period: float = 60.0, monitor_period: float = 5.0,
                 unhealthy_zone_threshold: float = 0.55, large_cluster_threshold: int = 50,
                 restore_on_renew: bool = True):
        super().__init__()
        self.grace_period = grace_period
        self.startup_grace_period = startup_grace_period
        self.monitor_period = monitor_period
        self.unhealthy_zone_threshold = unhealthy_zone_threshold
        self.large_cluster_threshold = large_cluster_threshold
        self.restore_on_renew = restore_on_renew
        # node name -> (probe time, lease renewTime seen, Ready heartbeat seen)
        self.health: dict[str, tuple[float, str, str]] = {}
        self.zone_states: dict[str, str] = {}

    def watches(self) -> list[Watch]:
        return [Watch("nodes", lambda o: [MONITOR_KEY]),
                Watch(LEASE_KEY, lambda o: [MONITOR_KEY] if o["metadata"].get("namespace") == LEASE_NAMESPACE else []),
                Watch("pods", self._pod_matters)]

    def setup(self) -> None:
        self.informer("pods").add_index("nodeName", lambda p: [(p.get("spec") or {}).get("nodeName") or ""])
        self.queue.add(MONITOR_KEY)

    def _pod_matters(self, pod: dict) -> list[str]:
        """A pod on a node with NoExecute taints (it may have to go)."""
        node = self.informer("nodes").get((pod.get("spec") or {}).get("nodeName") or "")
        if node and any(t.get("effect") == "NoExecute" for t in (node.get("spec") or {}).get("taints") or []):
            return [MONITOR_KEY]
        return []

    # ------------------------------------------------------------ one pass

    def reconcile(self, key: str) -> float | None:
        if key != MONITOR_KEY:
            return None
        now = self.now()
        stamp = rfc3339(now)
        nodes = {obj_key(n): n for n in self.informer("nodes").list()}
        for gone in set(self.health) - set(nodes):
            del self.health[gone]
        wake = self.monitor_period
        for name, node in nodes.items():
            updated, until = self._health(name, node, now, stamp)
            nodes[name] = updated
            wake = min(wake, until)
        self.zone_states = self._zones(list(nodes.values()))
        all_full = bool(self.zone_states) and all(s == FULL for s in self.zone_states.values())
        for name, node in nodes.items():
            allowed = not all_full and self._evictions_allowed(zone_of(node), nodes)
            if all_full:
                node = self._set_taints(node, [t for t in desired_taints(node, False, stamp)
                                               if not (t.get("effect") == "NoExecute" and t.get("key") in
                                                       (TAINT_UNREACHABLE, TAINT_NOT_READY))])
            else:
                node = self._set_taints(node, desired_taints(node, allowed, stamp))
            if ready_status(node) != "True":
                self._mark_pods_not_ready(name, stamp)
            nxt = self._evict(node, now, stamp)
            if nxt is not None:
                wake = min(wake, nxt)
        return max(wake, 0.01)  # never 0: a pass that asks for itself at once would never settle

    def _health(self, name: str, node: dict, now: float, stamp: str) -> tuple[dict, float]:
        """Record whether the node was heard from; mark it Unknown past its grace (or healthy again).
        Returns (the node as now stored, seconds until its grace runs out)."""
        lease = self.informer(LEASE_KEY).get(f"{LEASE_NAMESPACE}/{name}")
        renew = ((lease or {}).get("spec") or {}).get("renewTime") or ""
        ready = condition(node, "Ready")
        beat = (ready or {}).get("lastHeartbeatTime") or ""
        seen = self.health.get(name)
        if seen is None or seen[1] != renew or seen[2] != beat:
            self.health[name] = (now, renew, beat)
        probe = self.health[name][0]
        grace = self.grace_period if ready is not None else self.startup_grace_period
        left = probe + grace - now
        conds = (node.get("status") or {}).get("conditions") or []
        if left <= 0:
            new = mark_unknown(conds, stamp, node["metadata"].get("creationTimestamp", ""))
        elif self.restore_on_renew and seen is not None and seen[1] != renew and renew:
            new = mark_healthy(conds, stamp)
        else:
            new = conds
        if new != conds:
            if left <= 0 and ready_status(node) == "True":
                self.client.event(node, "Normal", "NodeNotReady", f"Node {name} status is now: NodeNotReady",
                                  "node-controller")
            out = self.client.mutate("nodes", "", name, lambda n: self._with_conditions(n, new), status=True)
            node = out or node
            # our write changed the heartbeat we compare against only when we restored it
            fresh = condition(node, "Ready")
            self.health[name] = (self.health[name][0], renew, (fresh or {}).get("lastHeartbeatTime") or "")
        return node, (left if left > 0 else self.monitor_period)

    @staticmethod
    def _with_conditions(node: dict, conds: list[dict]) -> dict | None:
        st = node.setdefault("status", {})
        if st.get("conditions") == conds:
            return None
        st["conditions"] = conds
        return node

    def _zones(self, nodes: list[dict]) -> dict[str, str]:
        by_zone: dict[str, list[dict]] = {}
        for n in nodes:
            if LABEL_EXCLUDE_DISRUPTION in ((n.get("metadata") or {}).get("labels") or {}):
                continue
            by_zone.setdefault(zone_of(n), []).append(n)
        return {z: zone_state(ns, self.unhealthy_zone_threshold) for z, ns in by_zone.items()}

    def _evictions_allowed(self, zone: str, nodes: dict[str, dict]) -> bool:
        state = self.zone_states.get(zone, NORMAL)
        if state == PARTIAL:
            size = sum(1 for n in nodes.values() if zone_of(n) == zone)
            return size > self.large_cluster_threshold
        return True

    def _set_taints(self, node: dict, taints: list[dict]) -> dict:
        if ((node.get("spec") or {}).get("taints") or []) == taints:
            return node

        def change(n: dict) -> dict | None:
            spec = n.setdefault("spec", {})
            if (spec.get("taints") or []) == taints:
                return None
            if taints:
                spec["taints"] = taints
            else:
                spec.pop("taints", None)
            return n

        return self.client.mutate("nodes", "", node["metadata"]["name"], change) or node

    def _mark_pods_not_ready(self, node_name: str, stamp: str) -> None:
        for pod in self.informer("pods").by_index("nodeName", node_name):
            ready = next((c for c in (pod.get("status") or {}).get("conditions") or []
                          if c.get("type") == "Ready"), None)
            if ready is None or ready.get("status") != "True":
                continue

            def change(p: dict) -> dict | None:
                for c in (p.get("status") or {}).get("conditions") or []:
                    if c.get("type") == "Ready" and c.get("status") == "True":
                        c["status"] = "False"
                        c["lastTransitionTime"] = stamp
                        return p
                return None

            self.client.mutate("pods", pod["metadata"].get("namespace", ""), pod["metadata"]["name"], change,
                               status=True)

    def _evict(self, node: dict, now: float, stamp: str) -> float | None:
        """Delete the pods whose toleration of the node's NoExecute taints ran out; seconds until the next."""
        taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("effect") == "NoExecute"]
        if not taints:
            return None
        added = [parse_time(t.get("timeAdded")) for t in taints]
        start = max([a for a in added if a is not None], default=now)
        nxt = None
        for pod in self.informer("pods").by_index("nodeName", node["metadata"]["name"]):
            if pod["metadata"].get("deletionTimestamp"):
                continue
            delay = eviction_delay(pod, taints)
            if delay is None:
                continue
            due = start + delay - now
            if due > 0:
                nxt = due if nxt is None else min(nxt, due)
                continue
            self._evict_pod(pod, stamp)
        return nxt

    def _evict_pod(self, pod: dict, stamp: str) -> None:
        ns, name = pod["metadata"].get("namespace", ""), pod["metadata"]["name"]
        self.client.event(pod, "Normal", "TaintManagerEviction", f"Marking for deletion Pod {ns}/{name}",
                          "taint-eviction-controller")

        def change(p: dict) -> dict | None:
            conds = p.setdefault("status", {}).setdefault("conditions", [])
            if any(c.get("type") == "DisruptionTarget" for c in conds):
                return None
            conds.append({"type": "DisruptionTarget", "status": "True", "lastProbeTime": None,
                          "lastTransitionTime": stamp, "reason": "DeletionByTaintManager",
                          "message": "Taint manager: deleting due to NoExecute taint"})
            return p

        self.client.mutate("pods", ns, name, change, status=True)
        self.client.delete("pods", ns, name, uid=pod["metadata"].get("uid", ""))
