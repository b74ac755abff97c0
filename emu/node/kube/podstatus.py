"""A pod's `status` as the kubelet reports it, from what a node sees of its
containers: one definition for the node agent, which writes it to the API
server (emu.node.agent.apistatus), and for emu's own rendering of a cluster
(emu.api.manifests.render.View, `emu get -o yaml` and the objects mirrored
before a node has reported).

A container's entry, as the agent's kubelet knows it: {"state": "Running" |
"Exited" | absent (not started yet), "exitCode": int | None, "ready": bool,
"restarts": int, "started": epoch seconds | None}.
Standard library only: it runs in the node agent.
"""

from __future__ import annotations

import time

from emu.node.records import ClusterState, PodState

CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")


def iso(epoch: float | None) -> str | None:
    """RFC 3339 in UTC, to the second, as Kubernetes writes timestamps."""
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def image_of(state: ClusterState, container: dict) -> str:
    """The image a container names, else the node image whose programs it runs."""
    return container.get("image") or state.node_image or "emu/node"


def container_status(state: ClusterState, pod: PodState, container: dict, entry: dict) -> dict:
    """One entry of status.containerStatuses."""
    running = entry.get("state") == "Running"
    if running:
        current = {"running": {"startedAt": iso(entry.get("started"))}}
    elif entry:
        current = {"waiting": {"reason": "CrashLoopBackOff"}}
    else:
        current = {"waiting": {"reason": "ContainerCreating"}}
    return {
        "name": container["name"], "image": image_of(state, container), "imageID": "",
        "containerID": f"emu://{state.node(pod.node).container}/{pod.netns}/{container['name']}",
        "ready": bool(entry.get("ready")) and running, "restartCount": int(entry.get("restarts", 0)),
        "started": running, "state": current,
    }  # fmt: skip


def phase(entries: list[dict]) -> str:
    """Running once every container runs (or has run); Pending before any has started."""
    states = [entry.get("state") for entry in entries]
    if all(state == "Running" for state in states):
        return "Running"
    return "Pending" if all(state is None for state in states) else "Running"


def pod_status(
    state: ClusterState, pod: PodState, statuses: list[dict], ready: bool, pod_phase: str,
    start: str | None, transitions: dict[str, str | None] | None = None,
) -> dict:  # fmt: skip
    """The pod's status object. `transitions`: each condition's lastTransitionTime
    (default: the pod's creation)."""
    created = state.created.get(f"Pod/{pod.uid}")
    transitions = transitions or {}
    values = {"PodReadyToStartContainers": True, "Initialized": True, "Ready": ready, "ContainersReady": ready,
              "PodScheduled": True}  # fmt: skip
    node = state.node(pod.node)
    return {
        "phase": pod_phase,
        "conditions": [
            {"type": kind, "status": "True" if values[kind] else "False", "lastProbeTime": None,
             "lastTransitionTime": transitions.get(kind, created)}
            for kind in CONDITIONS
        ],
        "hostIP": node.node_ip,
        "hostIPs": [{"ip": node.node_ip}],
        "podIP": pod.ip,
        "podIPs": [{"ip": pod.ip}],
        "startTime": start or created,
        "containerStatuses": statuses,
        "qosClass": "BestEffort",
    }  # fmt: skip


def from_entries(state: ClusterState, pod: PodState, entries: dict[str, dict],
                 transitions: dict[str, str | None] | None = None) -> dict:  # fmt: skip
    """The status of a pod whose containers all run on its node (no image
    containers): what the node agent reports."""
    found = [entries.get(c["name"], {}) for c in pod.containers]
    statuses = [container_status(state, pod, c, e) for c, e in zip(pod.containers, found)]
    ready = all(e.get("ready") and e.get("state") == "Running" for e in found)
    started = [e["started"] for e in found if e.get("started")]
    return pod_status(state, pod, statuses, ready, phase(found), iso(min(started)) if started else None, transitions)
