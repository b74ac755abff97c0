"""Several Docker hosts: the hosts: list, inventories, node placement and the
overlay's MTU in the plans."""

import pytest

from emu.control.cluster import node_plans
from emu.errors import EmuError, TopologyError
from emu.node.plan import cni
from emu.control.state import place_nodes, plan_cluster
from emu.api.topology.load import load_inventory, load_text, with_hosts

HOSTS = """\
hosts:
  - {name: h1, address: 10.213.0.11}
  - {name: h2, address: 10.213.0.12, engine: "unix:///run/h2.sock"}
  - {name: h3, address: 10.213.0.13, user: emu, port: 2222}
"""


def lab(nodes: str, hosts: str = HOSTS):
    return load_text(f"name: lab\ndns: {{enabled: false}}\n{hosts}nodes:\n{nodes}", "lab.yaml")


def test_nodes_spread_evenly_in_order():
    topology = lab("".join(f"  - {{name: n{i}}}\n" for i in range(7)))
    assert place_nodes(topology) == {
        "n0": "h1", "n1": "h2", "n2": "h3", "n3": "h1", "n4": "h2", "n5": "h3", "n6": "h1",
    }  # fmt: skip


def test_pinned_nodes_count_towards_the_spread():
    topology = lab("  - {name: a, host: h1}\n  - {name: b, host: h1}\n  - {name: c}\n  - {name: d}\n  - {name: e}\n")
    placement = place_nodes(topology)
    assert placement == {"a": "h1", "b": "h1", "c": "h2", "d": "h3", "e": "h2"}


def test_no_hosts_means_this_machine():
    topology = lab("  - {name: a}\n", hosts="")
    assert place_nodes(topology) == {"a": ""}
    assert plan_cluster(topology, "emu-lab", "172.28.5.0/24").nodes[0].host == ""


def test_state_records_each_nodes_host():
    topology = lab("  - {name: a}\n  - {name: b}\n")
    state = plan_cluster(topology, "emu-lab", "10.213.1.0/24", mtu=1450)
    assert [(n.name, n.host) for n in state.nodes] == [("a", "h1"), ("b", "h2")]
    assert state.mtu == 1450


def test_unknown_host_is_an_error_with_its_line():
    [message] = str(_problems(lab, "  - {name: a, host: h9}\n")).splitlines()[1:]
    assert "lab.yaml:8:15:" in message and "nodes[0].host" in message and "'h9'" in message and "h1, h2, h3" in message


def test_host_without_hosts_list_says_how_to_add_one():
    topology = lab("  - {name: a, host: h1}\n", hosts="")  # the inventory may come with --hosts
    with pytest.raises(EmuError) as caught:
        plan_cluster(topology, "emu-lab", "172.28.5.0/24")
    assert "a (host: h1)" in str(caught.value) and "--hosts FILE" in str(caught.value)


def test_duplicate_host_and_bad_engine():
    text = HOSTS + "  - {name: h1, address: 10.0.0.9, engine: ftp://x}\n"
    message = str(_problems(lab, "  - {name: a}\n", hosts=text))
    assert "hosts[3].engine" in message and "not an engine address" in message
    text = HOSTS + "  - {name: h1, address: 10.0.0.9}\n"
    assert "host name 'h1' is used twice" in str(_problems(lab, "  - {name: a}\n", hosts=text))


def test_inventory_file_and_merge(tmp_path):
    path = tmp_path / "hosts.yaml"
    path.write_text(HOSTS)
    hosts = load_inventory(path)
    assert [h.name for h in hosts] == ["h1", "h2", "h3"]
    assert hosts[2].user == "emu" and hosts[2].port == 2222 and hosts[0].engine == "ssh"
    merged = with_hosts(lab("  - {name: a, host: h3}\n", hosts=""), hosts, str(path))
    assert place_nodes(merged) == {"a": "h3"}
    with pytest.raises(TopologyError) as caught:
        with_hosts(lab("  - {name: a, host: h3}\n", hosts=""), [hosts[0]], str(path))
    assert "nodes[0].host: node 'a' names host 'h3', which is not under hosts: (h1)" in str(caught.value)
    path.write_text("hosts: []\n")
    with pytest.raises(TopologyError) as caught:
        load_inventory(path)
    assert "hosts" in str(caught.value)


def test_running_nodes_are_not_moved_between_hosts():
    first = plan_cluster(lab("  - {name: a}\n  - {name: b}\n"), "emu-lab", "10.213.1.0/24")
    with pytest.raises(EmuError) as caught:
        plan_cluster(lab("  - {name: a, host: h3}\n  - {name: b}\n"), "emu-lab", "10.213.1.0/24", first)
    assert "a (h1 -> h3)" in str(caught.value) and "emu down" in str(caught.value)


def test_overlay_mtu_reaches_bridge_and_pod_veths():
    text = "  - {name: a}\npods:\n  - name: p\n    containers: [{name: c, command: [sleep, infinity]}]\n"
    state = plan_cluster(lab(text), "emu-lab", "10.213.1.0/24", mtu=1450)
    [plan] = node_plans(None, state)
    assert "link add cni0 mtu 1450 type bridge" in plan.files[f"{cni.PLAN_DIR}/node.batch"]
    assert "type veth peer name eth0 mtu 1450 address 0a:58:" in plan.files[f"{cni.PLAN_DIR}/pods.batch"]
    one_host = plan_cluster(lab(text, hosts=""), "emu-lab", "10.213.1.0/24")
    [plan] = node_plans(None, one_host)
    assert "mtu" not in plan.files[f"{cni.PLAN_DIR}/node.batch"] + plan.files[f"{cni.PLAN_DIR}/pods.batch"]


def _problems(make, nodes, **kwargs):
    with pytest.raises(TopologyError) as caught:
        make(nodes, **kwargs)
    return caught.value
