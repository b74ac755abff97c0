"""What the nodes actually hold, against what the state says they should.

`OBSERVE` runs in a node (one exec) and lists what is there: the bridge, each
pod's namespace and veth, each container's process, the agent. `drift` turns
that into what is wrong, pod by pod, and `repair_plan` into the node plan
that mends it: a broken pod is replaced in place (same name and IP, new
namespace, veth and processes, as a kubelet recreates a pod sandbox); a node
that lost its bridge (a container restarted without rebuilding) runs its boot
plan. `emu up` and `apply` say "up to date" only when nothing drifted. Pure:
no Docker here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emu.node.agent import PID_FILE
from emu.node.plan import NodePlan, cni
from emu.node.records import ClusterState, NodeState, PodState

OBSERVE = f"""\
[ -e /sys/class/net/cni0 ] && echo bridge
echo "netns $(ls /run/netns 2>/dev/null | tr '\\n' ' ')"
echo "ports $(ls /sys/class/net/cni0/brif 2>/dev/null | tr '\\n' ' ')"
for f in {cni.RUN_DIR}/*/*.pid; do
  [ -e "$f" ] || continue
  if kill -0 "$(cat "$f")" 2>/dev/null; then echo "alive $f"; else echo "dead $f $(cat "${{f%.pid}}.exit" 2>/dev/null)"; fi
done
kill -0 "$(cat {PID_FILE} 2>/dev/null)" 2>/dev/null && echo agent
true
"""


@dataclass
class Observed:
    """What one node holds."""

    bridge: bool = False
    netns: set[str] = field(default_factory=set)
    ports: set[str] = field(default_factory=set)
    alive: set[str] = field(default_factory=set)  # "<netns>/<container>" whose process runs
    ended: dict[str, int | None] = field(default_factory=dict)  # "<netns>/<container>" -> exit code, if known
    agent: bool = False

    @classmethod
    def parse(cls, output: str) -> Observed:
        seen = cls()
        for line in output.splitlines():
            word, _, rest = line.partition(" ")
            if word == "bridge":
                seen.bridge = True
            elif word == "agent":
                seen.agent = True
            elif word == "netns":
                seen.netns = set(rest.split())
            elif word == "ports":
                seen.ports = set(rest.split())
            elif word == "alive":
                seen.alive.add(_container(rest))
            elif word == "dead":
                path, _, code = rest.partition(" ")
                seen.ended[_container(path)] = int(code) if code.strip().lstrip("-").isdigit() else None
        return seen


def _container(pid_file: str) -> str:
    return pid_file.removeprefix(cni.RUN_DIR + "/").removesuffix(".pid")


@dataclass
class Drift:
    """What is wrong on one node."""

    node: str
    rebuild: bool = False  # the node lost its network (bridge): run its boot plan
    pods: dict[str, str] = field(default_factory=dict)  # pod key -> what is wrong with it
    agent: bool = False  # the agent (and the loop that restarts it) is not running

    @property
    def empty(self) -> bool:
        return not (self.rebuild or self.pods or self.agent)

    def describe(self) -> list[str]:
        if self.rebuild:
            return [f"node {self.node}: its bridge cni0 is gone (the container started again without its pods)"]
        lines = [f"node {self.node}: pod {key}: {what}" for key, what in sorted(self.pods.items())]
        if self.agent:
            lines.append(f"node {self.node}: its agent is not running")
        return lines


def sandbox_problem(pod: PodState, netns: set[str], ports: set[str]) -> str | None:
    """What is wrong with a pod's sandbox (its namespace and veth), if anything.
    An image pod's sandbox is a Docker container only the controller makes: not here."""
    if cni.image_pod(pod):
        return None
    if pod.netns not in netns:
        return "its network namespace is gone"
    if pod.host_veth not in ports:
        return f"its veth {pod.host_veth} is gone from cni0"
    return None


def drift(state: ClusterState, node: NodeState, seen: Observed) -> Drift:
    found = Drift(node.name)
    if not seen.bridge:
        found.rebuild = True
        return found
    for pod in state.pods_on(node.name):
        if cni.image_pod(pod):
            continue  # Docker restarts its containers, and only the controller makes its sandbox
        problem = sandbox_problem(pod, seen.netns, seen.ports)
        if problem:
            found.pods[pod.key] = problem
        else:
            dead = [
                c["name"]
                for c in pod.containers
                if f"{pod.netns}/{c['name']}" not in seen.alive
                and pod.restarts_after(seen.ended.get(f"{pod.netns}/{c['name']}"))
            ]
            if dead:
                found.pods[pod.key] = f"container {', '.join(dead)} is not running"
    found.agent = not seen.agent
    return found


def repair_plan(state: ClusterState, node: NodeState, found: Drift) -> NodePlan:
    """The plan that mends a node's drift."""
    if found.rebuild:
        plan = NodePlan(node=node.name, container=node.container)
        plan.steps.append(f"sh {cni.BOOT_SCRIPT}")
        return plan
    broken: list[PodState] = [state.pods[key] for key in sorted(found.pods)]
    plan = cni.node_plan(state, node, broken, broken, new_node=False)
    if found.agent:
        plan.steps.append(cni.start_agent_line(node))
    return plan
