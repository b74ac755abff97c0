"""The hub's controller part: pods of a lost node move to the nodes still up.

When a node has been NotReady for a while (15 s, records.NodeTiming.evict_after), the hub (the agent on
the first control-plane node) does what Kubernetes' taint-based eviction and
the ReplicaSet controller do together: each Deployment's pod on that node is
placed again, on the least loaded node still up, with a new IP from that
node's pod CIDR (host-local style, so never its predecessor's), and keeps its
name (emu names a deployment's pods by replica, so the next `emu apply` keeps
them where they are). Pods of no controller, and pods pinned to that node by
nodeName, cannot move: they are reported lost, as Kubernetes leaves such pods
on an unreachable node. The new state goes to every node through the hub's
watch; the node a pod moved to wires it (emu.node.agent.pods), and a node that
comes back deletes the pods it no longer holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from emu.node.records import ClusterState, HostLocalIPAM, PodState

# Kubernetes waits 300 s (the default toleration of node.kubernetes.io/unreachable);
# a lab is shorter-lived, so emu moves pods sooner (records.NodeTiming.evict_after).
# kube-controller-manager's node lifecycle controller: when more than two nodes and at
# least this share of them are NotReady at once (PartialDisruption), the fault is more
# likely its own view (or a machine too busy to report) than so many nodes, and it
# stops evicting, or in a cluster of more than LARGE_CLUSTER nodes slows to
# SECONDARY_RATE nodes a second.
UNHEALTHY_THRESHOLD = 0.55  # --unhealthy-zone-threshold
LARGE_CLUSTER = 50  # --large-cluster-size-threshold
SECONDARY_RATE = 0.01  # --secondary-node-eviction-rate


def evictable(due: set[str], not_ready: int, nodes: int, since_last: float) -> tuple[set[str], bool]:
    """Of the nodes `due` for eviction, those whose pods may move now, and
    whether the cluster is in PartialDisruption: `not_ready` of `nodes` are
    NotReady, the last eviction was `since_last` seconds ago."""
    if not (not_ready > 2 and not_ready >= UNHEALTHY_THRESHOLD * nodes):
        return due, False
    if nodes <= LARGE_CLUSTER or since_last < 1 / SECONDARY_RATE or not due:
        return set(), True
    return {min(due)}, True


@dataclass
class Eviction:
    moved: list[tuple[PodState, PodState]] = field(default_factory=list)  # (before, after)
    stranded: list[PodState] = field(default_factory=list)  # pods that cannot move

    @property
    def changed(self) -> bool:
        return bool(self.moved)


def _pinned_deployments(state: ClusterState) -> set[str]:
    """Deployments whose pods name their node (spec.nodeName): they stay put."""
    return {
        f"Deployment/{d['name']}"
        for d in state.topology.get("deployments", [])
        if isinstance(d, dict) and (d.get("template") or {}).get("node")
    }


def evict(state: ClusterState, lost: set[str]) -> Eviction:
    """Move the movable pods off the `lost` nodes, in `state` (bumping its
    generation when anything moved)."""
    result = Eviction()
    up = [n for n in state.nodes if n.name not in lost]
    targets = [n for n in up if n.role == "worker"] or up
    pinned = _pinned_deployments(state)
    leaving = sorted((p for p in state.pods.values() if p.node in lost), key=lambda p: p.key)
    if not targets:
        result.stranded = leaving
        return result
    load = {n.name: 0 for n in targets}
    used: dict[str, set[str]] = {n.name: set() for n in targets}
    for pod in state.pods.values():
        if pod.node in load:
            load[pod.node] += 1
            used[pod.node].add(pod.ip)
    ipam = {n.name: HostLocalIPAM(n, used[n.name], state.last_pod_ip.get(n.name)) for n in targets}
    order = [n.name for n in targets]
    for pod in leaving:
        if not pod.owner or pod.owner in pinned:
            result.stranded.append(pod)
            continue
        target = min(order, key=lambda name: (load[name], order.index(name)))
        load[target] += 1
        moved = replace(pod, node=target, ip=ipam[target].allocate())
        state.pods[pod.key] = moved
        result.moved.append((pod, moved))
    if result.moved:
        for name, allocator in ipam.items():
            if allocator.last:
                state.last_pod_ip[name] = allocator.last
        state.generation += 1
    return result
