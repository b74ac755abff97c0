"""Pod sandboxes kept as the state says: the kubelet's sync of this node's pods.

When a link of the node changes or a namespace file goes (emu.node.agent.wake), and
every POD_RELIST seconds besides, the agent looks at the node's network
namespaces and cni0's ports. A pod of this node whose namespace or veth is
gone is rebuilt in place (same name and IP, a new namespace, veth and
processes), as the kubelet recreates a pod sandbox; a pod the hub moved here
from a lost node is wired the same way; a pod emu made here that the state no
longer places here (a node that comes back after its pods were moved
elsewhere) is deleted. While an `emu` command changes the node (HOLD_FILE,
made by its plan and removed once the new state is in place), the agent keeps
its hands off the pods.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from emu.node.agent import CONTAINER_DIR, HOLD_FILE
from emu.node.agent import run as bounded_run
from emu.node.plan import NodePlan, cni
from emu.node.reconcile import sandbox_problem
from emu.node.records import ClusterState, PodState

POD_CHECK = 2.0  # seconds between looks where changes cannot be watched (the kubelet relists every 1 s),
POD_RELIST = 10.0  # and where they can, in case one went unseen
POD_GATHER = 0.2  # seconds a look waits after a change, for the changes that come with it
HOLD_MAX_AGE = 300.0  # a hold older than this was left by a command that died
REPAIR_SCRIPT = "/run/emu/agent/repair.sh"


@dataclass
class Seen:
    """What the node holds: namespaces, cni0's ports, and the pods emu made here
    (each has a directory of container start scripts)."""

    bridge: bool
    netns: set[str] = field(default_factory=set)
    ports: set[str] = field(default_factory=set)
    made: set[str] = field(default_factory=set)


@dataclass
class Work:
    rebuild: dict[str, str] = field(default_factory=dict)  # pod key -> why
    orphans: list[str] = field(default_factory=list)  # netns names

    @property
    def empty(self) -> bool:
        return not (self.rebuild or self.orphans)


def _listdir(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def look(root: str = "") -> Seen:
    """What this node holds now (three directory listings)."""
    return Seen(
        bridge=os.path.isdir(f"{root}/sys/class/net/cni0"),
        netns=_listdir(f"{root}/run/netns"),
        ports=_listdir(f"{root}/sys/class/net/cni0/brif"),
        made=_listdir(f"{root}{CONTAINER_DIR}"),
    )


def work(state: ClusterState, node: str, seen: Seen, local: list[PodState] | None = None) -> Work:
    """What to do so the node holds the pods the state places on it (`local`: those pods, if known)."""
    todo = Work()
    if not seen.bridge:
        return todo  # the node itself lost its network: its boot plan (or `emu up`) rebuilds it
    local = state.pods_on(node) if local is None else local
    for pod in local:
        problem = sandbox_problem(pod, seen.netns, seen.ports)
        if problem:
            todo.rebuild[pod.key] = problem if pod.netns in seen.made else "placed on this node, not wired yet"
    wanted = {pod.netns for pod in local}
    todo.orphans = sorted(seen.made - wanted)
    return todo


def plan(state: ClusterState, node: str, todo: Work) -> NodePlan:
    """The plan that does `todo`: broken pods replaced in place, orphans deleted."""
    pods: list[PodState] = [state.pods[key] for key in sorted(todo.rebuild)]
    result = cni.node_plan(state, state.node(node), pods, pods, new_node=False)
    if todo.orphans:
        if cni.DELETE_POD_FUNCTION not in result.steps:
            result.steps.insert(0, cni.DELETE_POD_FUNCTION)
        # The veth goes with its namespace; its name is not needed. The pod's IP
        # here is read from it (the state has its new one).
        result.steps[1:1] = [f"emu_delete_pod {shlex.quote(netns)} - ?" for netns in todo.orphans]
    if not result.empty:
        # Last look: an `emu` command's plan that landed since the agent looked wins.
        result.steps.insert(0, f"if [ -e {HOLD_FILE} ]; then echo 'held: an emu command is changing this node'; exit 0; fi")
    return result


def forget_flows(addresses: list[str], run: Callable = bounded_run) -> None:
    """Drop the node's connection tracking entries of pods that are gone: flows
    from them, to them, and those DNATed to them from a service address (whose
    entries live on the client's node, so every node does this). kube-proxy
    does it for UDP endpoints; for a pod that no longer exists it holds for TCP too."""
    for address in addresses:
        for how in ("-s", "-d", "--reply-src"):
            run(["conntrack", "-D", how, address], capture_output=True, check=False)


def held(now: Callable[[], float] = time.time, hold_file: str = HOLD_FILE) -> bool:
    """True while an `emu` command is changing this node."""
    try:
        return now() - os.stat(hold_file).st_mtime < HOLD_MAX_AGE
    except FileNotFoundError:
        return False


def run(node_plan: NodePlan, script: str = REPAIR_SCRIPT) -> subprocess.CompletedProcess:
    """Write the plan's files and run its script, as the controller would."""
    for path, text in node_plan.files.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
    os.makedirs(os.path.dirname(script), exist_ok=True)
    with open(script, "w") as handle:
        handle.write(node_plan.script)
    return subprocess.run(["sh", script], capture_output=True, text=True, timeout=120)
