"""The connectivity matrix without Docker: targets, addresses, the truth tables."""

import pytest

from emu.errors import EmuError
from emu.control.state import plan_cluster
from emu.testing.matrix import Reachability, Target, address_of, parse_targets
from emu.api.topology.load import load_text

LAB = """\
name: lab
nodes: [{name: cp, role: control-plane}, {name: w1}]
pods:
  - {name: client, node: w1, containers: [{name: c, command: [sleep, infinity]}]}
  - name: web
    node: cp
    labels: {app: web}
    containers: [{name: s, workload: netexec, ports: [{name: http, containerPort: 8080}]}]
  - name: db
    namespace: data
    node: w1
    containers: [{name: s, workload: netexec}]
services:
  - {name: web, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
"""


@pytest.fixture(scope="module")
def state():
    return plan_cluster(load_text(LAB), "emu-lab", "172.28.0.0/24")


def test_targets_take_ports_and_protocols_they_lack():
    parsed = parse_targets(["web", "db:5432", "dns:53/udp"], ports=[80, 8080], protocols=["tcp", "udp"])
    assert [t.label for t in parsed] == [
        "web:80/TCP", "web:80/UDP", "web:8080/TCP", "web:8080/UDP", "db:5432/TCP", "db:5432/UDP", "dns:53/UDP",
    ]  # fmt: skip
    assert parse_targets(["kube-system/kube-dns:53/UDP"]) == [Target("kube-system/kube-dns", 53, "UDP")]
    assert parse_targets([Target("10.0.0.1", 1)]) == [Target("10.0.0.1", 1, "TCP")]


@pytest.mark.parametrize(
    "targets, ports, protocols, message",
    [
        (["web"], (), ("TCP",), "has no port"),
        (["web:0"], (), ("TCP",), "not 1-65535"),
        (["web"], [80], ("SCTP",), "not TCP or UDP"),
        ([":80"], (), ("TCP",), "write HOST"),
    ],
)
def test_bad_targets_say_what_to_write(targets, ports, protocols, message):
    with pytest.raises(EmuError, match=message):
        parse_targets(targets, ports, protocols)


def test_addresses_follow_kubectl_names(state):
    web_ip, db_ip = state.pods["default/web"].ip, state.pods["data/db"].ip
    assert address_of(state, "web") == "web.default"  # the service: what the name means to a pod
    assert address_of(state, "pod/web") == web_ip
    assert address_of(state, "svc/web") == "web.default"
    assert address_of(state, "data/db") == db_ip  # no service of that name: the pod
    assert address_of(state, "pod/data/db") == db_ip
    assert address_of(state, "client") == state.pods["default/client"].ip
    assert address_of(state, "node/w1") == state.node("w1").node_ip
    assert address_of(state, "example.com") == "example.com"
    assert address_of(state, "10.96.0.10") == "10.96.0.10"
    with pytest.raises(EmuError, match="no service default/nope"):
        address_of(state, "svc/nope")


def matrix() -> Reachability:
    found = Reachability(["default/client", "default/web"], ["web:80/TCP", "pod/web:9/TCP"])
    found.observed = {
        ("default/client", "web:80/TCP"): (True, "connected to 10.96.0.20:80"),
        ("default/client", "pod/web:9/TCP"): (False, "connection refused from 10.244.0.2:9"),
        ("default/web", "web:80/TCP"): (False, "timed out after 2 s connecting to 10.96.0.20:80"),
        ("default/web", "pod/web:9/TCP"): (False, "connection refused from 10.244.0.2:9"),
    }
    return found


def test_the_observed_table_is_the_netpol_truth_table(golden):
    found = matrix()
    assert found.reachable("client", "web") and not found.reachable("default/web", "web:80/TCP")
    assert found.reason("client", "pod/web:9") == "connection refused from 10.244.0.2:9"
    assert found.report() == "observed:\n\n" + found.table()
    golden("matrix_observed.txt", found.table() + "\n")


def test_a_wrong_cell_fails_with_tables_and_reason(golden):
    found = matrix().expect(True).expect(False, target="pod/web:9/TCP")
    assert found.wrong() == [("default/web", "web:80/TCP")]
    with pytest.raises(AssertionError) as failure:
        found.assert_expected()
    report = str(failure.value).strip()
    assert report.startswith("reachability: correct:3, incorrect:1, result=false")
    assert report.endswith("default/web -> web:80/TCP: expected reachable, observed unreachable: timed out after 2 s "
                           "connecting to 10.96.0.20:80")  # fmt: skip
    golden("matrix_report.txt", report + "\n")


def test_expectations_met_pass_and_unknown_cells_are_named():
    found = matrix().expect(False).expect(True, source="client", target="web")
    found.assert_expected()
    assert "result=true" in found.report()
    with pytest.raises(AssertionError, match="nothing expected"):
        matrix().assert_expected()
    with pytest.raises(KeyError, match="no one cell"):
        found.reachable("nobody", "web")
