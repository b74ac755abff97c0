"""Which nodes a pod may run on, as the Kubernetes scheduler's filters decide it:
nodeName, nodeSelector against the node's labels (its own and the well-known
ones the kubelet sets), and taints against the pod's tolerations.

Pure; used by validation (a pod no node fits is an error) and by allocation.
"""

from __future__ import annotations

import platform

from emu.api.topology.model import PodTemplate, Toleration

CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
# kubeadm taints control-plane nodes so that workloads go to workers; emu's
# control plane carries it while the cluster has workers (kind drops it on a
# single-node cluster, so that its only node takes pods).
CONTROL_PLANE_TAINT = (CONTROL_PLANE_LABEL, "", "NoSchedule")
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}


def node_labels(name: str, role: str, labels: dict[str, str]) -> dict[str, str]:
    """A node's labels as the kubelet and kubeadm set them, plus the topology's own."""
    machine = platform.machine()
    well_known = {
        "kubernetes.io/arch": _ARCHITECTURES.get(machine, machine.lower()),
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
    }
    if role == "control-plane":
        well_known[CONTROL_PLANE_LABEL] = ""
    return {**well_known, **labels}


def node_taints(role: str, has_workers: bool) -> list[tuple[str, str, str]]:
    """(key, value, effect) of each taint a node carries."""
    return [CONTROL_PLANE_TAINT] if role == "control-plane" and has_workers else []


def tolerates(tolerations: list[Toleration], taint: tuple[str, str, str]) -> bool:
    """Whether a toleration matches the taint (the API's ToleratesTaint)."""
    key, value, effect = taint
    for toleration in tolerations:
        if toleration.effect and toleration.effect != effect:
            continue
        if toleration.operator == "Exists":
            if not toleration.key or toleration.key == key:
                return True
        elif toleration.key == key and toleration.value == value:
            return True
    return False


def fits(template: PodTemplate, labels: dict[str, str], taints: list[tuple[str, str, str]]) -> bool:
    """Whether the scheduler may put a pod of this template on a node with these
    labels and taints (nodeName is checked by the caller)."""
    if any(labels.get(key) != value for key, value in template.node_selector.items()):
        return False
    return all(tolerates(template.tolerations, taint) for taint in taints if taint[2] in ("NoSchedule", "NoExecute"))


def candidate_nodes(template: PodTemplate, nodes: list[tuple[str, str, dict[str, str]]]) -> list[str]:
    """Names of the nodes (name, role, labels) a pod of this template may go to:
    its node if pinned (nodeName skips the scheduler's filters, as in Kubernetes),
    else every node it fits."""
    if template.node is not None:
        return [name for name, _, _ in nodes if name == template.node]
    has_workers = any(role == "worker" for _, role, _ in nodes)
    if not template.node_selector:
        # Labels do not matter, only taints, which follow the role: decided once a role
        # (a 1,000-deployment lab asked 3,000 times for 50 nodes' labels, a third of its planning).
        allowed = {role: fits(template, {}, node_taints(role, has_workers)) for role in {role for _, role, _ in nodes}}
        return [name for name, role, _ in nodes if allowed[role]]
    return [
        name
        for name, role, labels in nodes
        if fits(template, node_labels(name, role, labels), node_taints(role, has_workers))
    ]
