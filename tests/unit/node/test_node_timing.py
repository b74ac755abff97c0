"""One setting for how soon a silent node is lost: the topology's
controllerManager.nodeMonitorGracePeriod (kube-controller-manager's flag), and
what follows it: the nodes' Lease, their heartbeat to emu's hub, the hub's grace
and its eviction, the API server's node lifecycle controller."""

from __future__ import annotations

import pytest

from emu.api.load import load_text
from emu.control.state import plan_cluster
from emu.errors import EmuError
from emu.node.plan import cni
from emu.node.records import ClusterState, NodeTiming, parse_duration

LAB = """
name: timing
controllerManager:
  nodeMonitorGracePeriod: 16s
nodes:
  - name: cp
    role: control-plane
  - name: w1
"""


@pytest.mark.parametrize(("text", "seconds"), [("40s", 40.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0),
                                               ("1.5s", 1.5), ("2m0s", 120.0)])
def test_go_durations_are_read(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["40", "", "s", "1x", "-1s", "1s ", "1 s", "s1"])
def test_what_is_not_a_go_duration_is_refused(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_the_defaults_are_kubernetes_and_emus_own():
    timing = NodeTiming()
    assert (timing.grace, timing.lease_duration, timing.renew_interval) == (40.0, 40, 10.0)  # kubelet's
    assert (timing.heartbeat, timing.hub_grace, timing.evict_after) == (10.0, 25.0, 15.0)  # emu's hub's


def test_a_lab_shortens_every_time_together():
    state = plan_cluster(load_text(LAB), "emu-timing", "172.28.0.0/24")
    timing = state.node_timing
    assert (timing.grace, timing.lease_duration, timing.renew_interval) == (16.0, 16, 4.0)
    assert (timing.heartbeat, timing.hub_grace, timing.evict_after) == (4.0, 10.0, 6.0)
    # An agent reads the state slimmed to its node: the setting is still there.
    assert ClusterState.from_json(state.to_json(), node="w1").node_timing == timing
    # The API server's node lifecycle controller gets it on its command line.
    assert "--node-monitor-grace-period 16s" in cni.start_apiserver_line(state)


def test_a_lab_without_it_keeps_the_defaults():
    state = plan_cluster(load_text(LAB.replace("controllerManager:\n  nodeMonitorGracePeriod: 16s\n", "")),
                         "emu-timing", "172.28.0.0/24")  # fmt: skip
    assert state.node_timing == NodeTiming()
    assert ClusterState.from_json(state.to_json(), node="w1").node_timing == NodeTiming()


@pytest.mark.parametrize(("value", "message"), [("4s", "outside 8s..10m"), ("1h", "outside 8s..10m"),
                                                ('"40"', "not a duration"), ("40", "valid string")])
def test_a_grace_period_out_of_bounds_is_refused_with_where_and_why(value, message):
    with pytest.raises(EmuError, match=message) as error:
        load_text(LAB.replace("16s", value))
    assert "controllerManager.nodeMonitorGracePeriod" in str(error.value)


def test_the_api_server_takes_the_flag_as_kube_controller_manager_does(tmp_path, capsys):
    from emu.apiserver.__main__ import main

    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--insecure", "--node-monitor-grace-period", "40"])
    assert "not a duration" in capsys.readouterr().err
