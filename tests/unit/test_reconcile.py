"""Drift between the state and what a node holds, and the plans that mend it."""

from emu.node import reconcile
from emu.node.plan import cni
from emu.control.state import plan_cluster
from emu.api.topology.load import load_text

LAB = """\
name: lab
dns: {enabled: false}
nodes: [{name: cp, role: control-plane}, {name: w1}]
pods:
  - {name: a, node: w1, containers: [{name: c, command: [sleep, infinity]}, {name: d, command: [sleep, infinity]}]}
  - {name: b, node: w1, containers: [{name: c, command: [sleep, infinity]}]}
"""


def state():
    return plan_cluster(load_text(LAB), "emu-lab", "172.28.5.0/24")


def healthy_output(s, node: str) -> str:
    pods = s.pods_on(node)
    lines = ["bridge", "netns " + " ".join(p.netns for p in pods), "ports " + " ".join(p.host_veth for p in pods)]
    lines += [f"alive {cni.RUN_DIR}/{p.netns}/{c['name']}.pid" for p in pods for c in p.containers]
    return "\n".join([*lines, "agent"]) + "\n"


def test_a_healthy_node_has_no_drift():
    s = state()
    found = reconcile.drift(s, s.node("w1"), reconcile.Observed.parse(healthy_output(s, "w1")))
    assert found.empty and found.describe() == []


def test_each_broken_pod_is_named_with_what_is_wrong():
    s = state()
    a, b = s.pods["default/a"], s.pods["default/b"]
    output = healthy_output(s, "w1").replace(f"alive {cni.RUN_DIR}/a/d.pid", f"dead {cni.RUN_DIR}/a/d.pid")
    output = output.replace(f" {b.host_veth}", "").replace("agent\n", "")
    found = reconcile.drift(s, s.node("w1"), reconcile.Observed.parse(output))
    assert found.pods == {"default/a": "container d is not running", "default/b": f"its veth {b.host_veth} is gone from cni0"}
    assert found.agent
    assert "node w1: its agent is not running" in found.describe()
    plan = reconcile.repair_plan(s, s.node("w1"), found)
    script = plan.script
    # Each broken pod is deleted (keeping its files) and made again, with the same IP.
    assert f"emu_delete_pod a {a.host_veth} {a.ip} replaced" in script
    assert f"emu_delete_pod b {b.host_veth} {b.ip} replaced" in script
    assert f"addr add {a.ip}/24 dev eth0" in plan.files[f"{cni.PLAN_DIR}/pod-a.batch"]
    assert script.rstrip().splitlines()[-1] == cni.start_agent_line(s.node("w1"))


def test_a_node_without_its_bridge_is_rebuilt_by_its_boot_plan():
    s = state()
    found = reconcile.drift(s, s.node("w1"), reconcile.Observed.parse("netns \nports \nagent\n"))
    assert found.rebuild and "bridge cni0 is gone" in found.describe()[0]
    plan = reconcile.repair_plan(s, s.node("w1"), found)
    assert plan.steps == [f"sh {cni.BOOT_SCRIPT}"]
