"""The agent's healing jobs without a node: which pods it wires again or
deletes (emu.node.agent.pods), and where a lost node's pods move (emu.node.agent.evict)."""

import ipaddress
import os

from emu.node.agent import evict as evicting
from emu.node.agent import pods
from emu.node.plan import cni
from emu.node.records import ClusterState
from emu.control.state import plan_cluster
from emu.api.topology.load import load_text

LAB = """\
name: lab
dns: {enabled: false}
nodes: [{name: cp, role: control-plane}, {name: w1}, {name: w2}, {name: w3}]
pods:
  - {name: bare, node: w1, containers: [{name: c, command: [sleep, infinity]}]}
deployments:
  - name: web
    replicas: 4
    template: {labels: {app: web}, containers: [{name: c, command: [sleep, infinity]}]}
  - name: pinned
    replicas: 1
    template: {node: w1, labels: {app: pinned}, containers: [{name: c, command: [sleep, infinity]}]}
"""


def state() -> ClusterState:
    # Through JSON, as the agent holds it.
    return ClusterState.from_json(plan_cluster(load_text(LAB), "emu-lab", "172.28.5.0/24").to_json())


def healthy(s: ClusterState, node: str) -> pods.Seen:
    local = s.pods_on(node)
    return pods.Seen(
        bridge=True,
        netns={p.netns for p in local},
        ports={p.host_veth for p in local},
        made={p.netns for p in local},
    )


def test_a_healthy_node_needs_nothing():
    s = state()
    assert pods.work(s, "w1", healthy(s, "w1")).empty


def test_pods_whose_namespace_or_veth_vanished_are_wired_again_in_place():
    s = state()
    seen = healthy(s, "w1")
    web = next(p for p in s.pods_on("w1") if p.owner == "Deployment/web")
    seen.netns.discard("bare")
    seen.ports.discard(web.host_veth)
    todo = pods.work(s, "w1", seen)
    assert todo.rebuild == {"default/bare": "its network namespace is gone", web.key: f"its veth {web.host_veth} is gone from cni0"}
    plan = pods.plan(s, "w1", todo)
    assert f"emu_delete_pod bare {s.pods['default/bare'].host_veth} {s.pods['default/bare'].ip} replaced" in plan.script
    assert f"addr add {s.pods['default/bare'].ip}/24 dev eth0" in plan.files[f"{cni.PLAN_DIR}/pod-bare.batch"]


def test_a_node_without_its_bridge_is_left_to_its_boot_plan():
    s = state()
    assert pods.work(s, "w1", pods.Seen(bridge=False)).empty


def test_pods_made_here_that_the_state_moved_away_are_deleted():
    s = state()
    seen = healthy(s, "w1")
    seen.made.add("gone-elsewhere")
    seen.netns.add("gone-elsewhere")
    seen.netns.add("made-by-hand")  # a namespace emu did not make is not emu's to delete
    todo = pods.work(s, "w1", seen)
    assert todo.orphans == ["gone-elsewhere"] and not todo.rebuild
    script = pods.plan(s, "w1", todo).script
    assert script.index("emu_delete_pod() {") < script.index("emu_delete_pod gone-elsewhere - ?")


def test_a_pod_placed_here_but_not_wired_is_wired():
    s = state()
    seen = healthy(s, "w2")
    moved = s.pods_on("w2")[0]
    for part in (seen.netns, seen.ports, seen.made):
        part.difference_update({moved.netns, moved.host_veth})
    assert pods.work(s, "w2", seen).rebuild == {moved.key: "placed on this node, not wired yet"}


def test_the_hold_of_a_running_command_keeps_the_agent_off(tmp_path):
    hold = tmp_path / "hold"
    assert not pods.held(hold_file=str(hold))
    hold.touch()
    assert pods.held(hold_file=str(hold))
    old = os.stat(hold).st_mtime - pods.HOLD_MAX_AGE - 1
    os.utime(hold, (old, old))
    assert not pods.held(hold_file=str(hold))  # left by a command that died


def test_deployment_pods_of_a_lost_node_move_to_the_least_loaded_nodes_with_new_ips():
    s = state()
    before = {key: (p.node, p.ip) for key, p in s.pods.items()}
    generation = s.generation
    lost = s.pods_on("w1")
    result = evicting.evict(s, {"w1"})
    assert result.changed and s.generation == generation + 1
    moved = {before_.key: after for before_, after in result.moved}
    assert set(moved) == {p.key for p in lost if p.owner == "Deployment/web"}
    for key, after in moved.items():
        assert after.node in {"w2", "w3"} and after.name == key.split("/")[1]
        assert after.ip != before[key][1] and ipaddress.IPv4Address(after.ip) in ipaddress.IPv4Network(s.node(after.node).pod_cidr)
        assert s.pods[key] is after
    ips = [p.ip for p in s.pods.values()]
    assert len(ips) == len(set(ips))
    # A bare pod and a pod pinned to its node cannot move: they are lost with it.
    assert sorted(p.key for p in result.stranded) == sorted(p.key for p in lost if p.owner != "Deployment/web")
    assert all(s.pods[p.key].node == "w1" for p in result.stranded)
    # Nothing else moved.
    assert all((p.node, p.ip) == before[key] for key, p in s.pods.items() if key not in moved)


def test_nothing_moves_when_no_node_is_left_or_nothing_can_move():
    s = state()
    generation = s.generation
    result = evicting.evict(s, {"cp", "w1", "w2", "w3"})
    assert not result.changed and len(result.stranded) == len(s.pods) and s.generation == generation
    again = evicting.evict(state(), {"cp"})
    assert not again.changed


def test_flows_of_pods_gone_are_forgotten_in_every_direction():
    calls = []
    pods.forget_flows(["10.244.1.7"], run=lambda argv, **kw: calls.append(argv))
    assert calls == [
        ["conntrack", "-D", "-s", "10.244.1.7"],
        ["conntrack", "-D", "-d", "10.244.1.7"],
        ["conntrack", "-D", "--reply-src", "10.244.1.7"],
    ]


def test_the_agent_command_line():
    import pytest

    from emu.node.agent.__main__ import parse_options

    assert parse_options(["--node", "w1"])["--node"] == "w1"
    assert parse_options(["--node", "w1", "--port", "1234"])["--port"] == "1234"
    for bad in ([], ["--node"], ["--nod", "w1"], ["--node", "w1", "--port", "x"]):
        with pytest.raises(SystemExit):
            parse_options(bad)


def test_the_agents_plan_steps_aside_for_a_command_that_landed_meanwhile(tmp_path):
    import subprocess

    s = state()
    seen = healthy(s, "w1")
    seen.made.add("gone-elsewhere")
    plan = pods.plan(s, "w1", pods.work(s, "w1", seen))
    assert plan.steps[0].startswith(f"if [ -e {pods.HOLD_FILE} ]")
    guard = plan.steps[0].replace(pods.HOLD_FILE, str(tmp_path / "hold"))
    script = f"set -eu\n{guard}\necho went-on\n"
    assert subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60).stdout == "went-on\n"
    (tmp_path / "hold").touch()
    assert "went-on" not in subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60).stdout


def test_evictions_stop_when_most_nodes_go_notready_at_once():
    """kube-controller-manager's PartialDisruption: more than two nodes and at
    least 55% NotReady is more likely a busy machine than lost nodes."""
    assert evicting.evictable({"w1"}, 1, 3, 0.0) == ({"w1"}, False)  # one node lost: its pods move
    assert evicting.evictable({"w1", "w2"}, 2, 3, 0.0) == ({"w1", "w2"}, False)  # two are never a disruption
    assert evicting.evictable({"w1", "w2", "w3"}, 3, 5, 0.0) == (set(), True)  # 60%: none move
    assert evicting.evictable({"n1", "n2", "n3"}, 3, 6, 0.0) == ({"n1", "n2", "n3"}, False)  # 50%: all move
    due = {f"n{i}" for i in range(1, 61)}
    assert evicting.evictable(due, 60, 100, 5.0) == (set(), True)  # a large cluster: slowly ...
    assert evicting.evictable(due, 60, 100, 100.0) == ({"n1"}, True)  # ... one node every 100 s
    assert evicting.evictable(due, 60, 50, 1000.0) == (set(), True)  # 50 nodes is not large
