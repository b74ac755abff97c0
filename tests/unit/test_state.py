"""Allocation: pod CIDRs, node IPs, pod IPs, scheduling, and what a re-apply keeps."""

import pytest

from emu.control.cluster import pod_changes
from emu.control.state import ClusterState, deployment_pod_names, plan_cluster
from emu.api.topology.load import load_text

LAB = """\
name: lab
dns: {enabled: false}
nodes:
  - {name: cp, role: control-plane}
  - {name: w1}
  - {name: w2}
pods:
  - name: client
    node: w1
    containers: [{name: shell, command: [sleep, infinity]}]
deployments:
  - name: web
    replicas: 3
    template:
      labels: {app: web}
      containers: [{name: netexec, workload: netexec}]
"""


def plan(text=LAB, previous=None):
    return plan_cluster(load_text(text), "emu-lab", "172.28.5.0/24", previous)


def test_node_cidrs_and_ips_follow_node_order():
    state = plan()
    assert [(n.name, n.pod_cidr, n.node_ip, n.container) for n in state.nodes] == [
        ("cp", "10.244.0.0/24", "172.28.5.2", "lab-cp"),
        ("w1", "10.244.1.0/24", "172.28.5.3", "lab-w1"),
        ("w2", "10.244.2.0/24", "172.28.5.4", "lab-w2"),
    ]
    assert state.nodes[1].gateway == "10.244.1.1"


def test_pods_get_ips_from_their_node_cidr_and_spread_over_workers():
    state = plan()
    assert state.pods["default/client"].ip == "10.244.1.2"
    nodes = sorted(p.node for p in state.pods.values())
    assert nodes.count("cp") == 0  # the control plane takes no unpinned pods
    assert nodes.count("w1") == 2 and nodes.count("w2") == 2
    for pod in state.pods.values():
        assert pod.ip.startswith(state.node(pod.node).pod_cidr.rsplit(".", 2)[0])
    assert len({p.ip for p in state.pods.values()}) == 4


def test_planning_is_deterministic(seeded_runs):
    runs = seeded_runs("from tests.unit.test_state import plan; print(plan().to_json())")
    assert set(runs) == {plan().to_json() + "\n"}


def test_state_round_trips_through_json():
    state = plan()
    assert ClusterState.from_json(state.to_json()) == state


def test_deployment_pod_names_look_like_kubernetes_and_survive_scaling():
    topology = load_text(LAB)
    names = deployment_pod_names(topology.deployments[0])
    assert len(names) == 3
    for name in names:
        prefix, template_hash, suffix = name.rsplit("-", 2)
        assert prefix == "web" and len(template_hash) == 10 and len(suffix) == 5
    bigger = load_text(LAB.replace("replicas: 3", "replicas: 5"))
    assert deployment_pod_names(bigger.deployments[0])[:3] == names


def test_reapply_of_the_same_topology_changes_nothing():
    first = plan()
    second = plan(previous=first)
    assert second.to_json() == first.to_json()
    assert pod_changes(first, second) == ([], [])


def test_scaling_keeps_existing_pods_where_they_are():
    first = plan()
    second = plan(LAB.replace("replicas: 3", "replicas: 5"), previous=first)
    added, removed = pod_changes(first, second)
    assert len(added) == 2 and removed == []
    for key, pod in first.pods.items():
        assert second.pods[key].ip == pod.ip and second.pods[key].node == pod.node
    third = plan(LAB.replace("replicas: 3", "replicas: 1"), previous=second)
    added, removed = pod_changes(second, third)
    assert added == [] and len(removed) == 4


def test_recreated_pod_gets_a_new_ip_like_host_local():
    first = plan()
    without = plan(LAB.replace("    node: w1\n", "    node: w2\n"), previous=first)
    added, removed = pod_changes(first, without)
    assert [p.name for p in added] == ["client"] and [p.name for p in removed] == ["client"]
    # Moved back: host-local hands out the next address, not the freed one.
    back = plan(LAB, previous=without)
    assert back.pods["default/client"].ip != first.pods["default/client"].ip


def test_changed_container_spec_replaces_the_pod():
    first = plan()
    second = plan(LAB.replace("[sleep, infinity]", "[sleep, '100']"), previous=first)
    added, removed = pod_changes(first, second)
    assert [p.key for p in added] == ["default/client"] == [p.key for p in removed]


def test_labels_change_in_place():
    first = plan()
    second = plan(LAB.replace("    node: w1\n", "    node: w1\n    labels: {role: client}\n"), previous=first)
    assert pod_changes(first, second) == ([], [])
    assert second.pods["default/client"].labels == {"role": "client"}


def test_changing_nodes_of_a_running_cluster_is_refused():
    import pytest

    from emu.errors import EmuError

    first = plan()
    with pytest.raises(EmuError, match="emu changes pods of a running cluster, not its nodes"):
        plan(LAB.replace("  - {name: w2}\n", ""), previous=first)


def test_host_veth_names_fit_the_kernel_limit():
    for pod in plan().pods.values():
        assert len(pod.host_veth) <= 15


def test_neighbour_table_warning(tmp_path):
    from emu.control.cluster import neighbour_table_warning

    limit = tmp_path / "gc_thresh3"
    limit.write_text("1024\n")
    assert neighbour_table_warning(3, 10, limit) is None
    warning = neighbour_table_warning(10, 500, limit)
    assert "1164 ARP entries" in warning and "gc_thresh3=16384" in warning
    assert neighbour_table_warning(10, 500, tmp_path / "missing") is None


def test_the_default_wait_grows_with_the_rules_every_node_writes():
    from emu.control.cluster import default_wait

    small = plan_cluster(load_text(LAB), "emu-lab", "172.28.5.0/24")
    assert 30 < default_wait(small) < 31
    wide = LAB + "services:\n" + "".join(
        f"  - {{name: s{i}, selector: {{app: web}}, ports: [{{name: a, port: 80}}, {{name: b, port: 81}}]}}\n" for i in range(100)
    )
    state = plan_cluster(load_text(wide), "emu-lab", "172.28.5.0/24")
    web = sum(1 for pod in state.pods.values() if pod.labels.get("app") == "web")
    endpoints = 100 * 2 * web  # every service selects every web pod, on two ports
    assert web and default_wait(state) == pytest.approx(default_wait(small) + 0.00015 * endpoints * len(state.nodes))


HEALTH = LAB + """\
services:
  - name: lb
    type: LoadBalancer
    externalTrafficPolicy: Local
    selector: {app: web}
    ports: [{name: http, port: 80}, {name: alt, port: 81}]
  - name: np
    type: NodePort
    externalTrafficPolicy: Local
    selector: {app: web}
    ports: [{port: 80}]
"""


def test_a_local_load_balancer_gets_a_health_check_node_port_as_kubernetes_allocates_it():
    """Kubernetes' NeedsHealthCheck: type LoadBalancer with externalTrafficPolicy Local, a node
    port of its own from the same range; a NodePort service gets none."""
    state = plan(HEALTH)
    lb, np = state.services["default/lb"], state.services["default/np"]
    node_ports = {p.node_port for s in state.services.values() for p in s.ports if p.node_port}
    assert 30000 <= lb.health_check_node_port <= 32767 and lb.health_check_node_port not in node_ports
    assert np.health_check_node_port is None
    # Kept by a re-apply, declared where given, gone with externalTrafficPolicy Cluster.
    assert plan(HEALTH, state).services["default/lb"].health_check_node_port == lb.health_check_node_port
    declared = HEALTH.replace("    externalTrafficPolicy: Local\n", "    externalTrafficPolicy: Local\n"
                              "    healthCheckNodePort: 31999\n", 1)  # fmt: skip
    assert plan(declared, state).services["default/lb"].health_check_node_port == 31999
    cluster = HEALTH.replace("externalTrafficPolicy: Local", "externalTrafficPolicy: Cluster")
    assert plan(cluster, state).services["default/lb"].health_check_node_port is None
    assert ClusterState.from_json(state.to_json()).services["default/lb"] == lb
