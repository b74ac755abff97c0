"""emu netem's pure parts: values checked, netem's arguments, TARGETs resolved
against a recorded state, `tc qdisc show` read back, and the refusal where the
nodes' kernel has no netem coming before any command runs in a node."""

from __future__ import annotations

from pathlib import Path

import pytest

from emu.cli import parse_args
from emu.control import netem
from emu.control.netem import Impairment
from emu.errors import EmuError
from emu.node.records import ClusterState

STATE = Path(__file__).parent / "data" / "see" / "state.json"


@pytest.fixture(scope="module")
def state() -> ClusterState:
    return ClusterState.from_json(STATE.read_text())


def test_arguments_in_netems_order():
    full = Impairment(delay_ms=100, jitter_ms=10, loss_pct=5, rate_kbit=1000, corrupt_pct=0.5)
    assert full.tc_arguments() == ["delay", "100ms", "10ms", "loss", "5%", "corrupt", "0.5%", "rate", "1000kbit"]
    assert Impairment(loss_pct=100).tc_arguments() == ["loss", "100%"]


@pytest.mark.parametrize(
    "impairment, message",
    [
        (Impairment(), "at least one of"),
        (Impairment(delay_ms=-1), "--delay MS is -1"),
        (Impairment(loss_pct=100.5), "at most 100"),
        (Impairment(corrupt_pct=101), "at most 100"),
        (Impairment(delay_ms=float("nan")), "a number of 0 or more"),
        (Impairment(delay_ms=float("inf")), "a number of 0 or more"),
        (Impairment(rate_kbit=0), "least rate is 1 kbit"),
        (Impairment(jitter_ms=5), "give --delay MS too"),
    ],
)
def test_impossible_values_are_refused(impairment, message):
    with pytest.raises(EmuError, match=message):
        impairment.validate()


def test_targets(state):
    assert netem.resolve(state, "worker").name == "node/worker:eth0"
    assert netem.resolve(state, "node/worker:cni0").interface == "cni0"
    web = netem.resolve(state, "web")  # a pod: the host side of its veth, on its node
    assert (web.node, web.container, web.interface) == ("worker2", "emutest-graph-x-worker2", "veth82b3ade9")
    assert netem.resolve(state, "pod/default/web") == web
    assert "host side of pod default/web" in netem.resolve(state, "node/worker2:veth82b3ade9").description


@pytest.mark.parametrize(
    "text, message",
    [
        ("nowhere", "no node or pod 'nowhere'"),
        ("node/web", "no node 'web'"),
        ("node/worker:", "expected a node"),
        ("node/worker:a b", "not an interface name"),
        ("pod/worker", "no node or pod 'worker'"),
    ],
)
def test_bad_targets(state, text, message):
    with pytest.raises(EmuError, match=message):
        netem.resolve(state, text)


def test_qdisc_listing_is_read_back():
    output = (
        "qdisc noqueue 0: dev lo root refcnt 2\n"
        "qdisc netem 8001: dev eth0 root refcnt 2 limit 1000 delay 100ms  10ms loss 5%\n"
        "qdisc netem 8002: dev veth1 parent 1:1 limit 1000 delay 1ms\n"
    )
    assert netem.parse_netem(output) == {"eth0": "limit 1000 delay 100ms  10ms loss 5%"}


class Docker:
    """A docker provider that records any command it is asked to run."""

    name = "docker"

    def __init__(self, state):
        self.calls = []
        self._state = state

    def exec(self, container, argv, environment=None):
        self.calls.append(argv)
        raise AssertionError("no command may run in a node")


class Cluster:
    def __init__(self, runtime, state):
        self.runtime, self._state = runtime, state

    def state(self):
        return self._state


def test_docker_nodes_without_netem_are_refused_before_anything_runs(state, monkeypatch):
    monkeypatch.setattr(netem, "host_has_netem", lambda release=None: False)
    cluster = Cluster(Docker(state), state)
    for call in (lambda: netem.set_impairment(cluster, "web", Impairment(delay_ms=10)),
                 lambda: netem.show(cluster), lambda: netem.reset(cluster, "worker")):  # fmt: skip
        with pytest.raises(EmuError, match=r"no sch_netem\); make the cluster with `runtime: uml`"):
            call()
    assert cluster.runtime.calls == []


def test_command_line():
    args = parse_args(["netem", "set", "web", "--delay", "50", "--loss", "1"])
    assert (args.action, args.target, args.delay, args.loss, args.rate) == ("set", "web", 50.0, 1.0, None)
    assert parse_args(["netem", "show"]).target is None
    for argv in (["netem", "reset"], ["netem", "set"], ["netem", "reset", "web", "--delay", "5"]):
        with pytest.raises(SystemExit):
            parse_args(argv)


def test_a_uml_nodes_eth0_keeps_emus_command_channel_unimpaired():
    script = netem.exempt_script("eth0", 7070, Impairment(loss_pct=100))
    assert "u32 match ip sport 7070 0xffff flowid 1:1" in script
    assert script.index("tc filter add") < script.index("netem loss 100%")  # the reply to this very command passes
    listing = "qdisc prio 1: dev eth0 root refcnt 2 bands 2\nqdisc netem 20: dev eth0 parent 1:2 limit 1000 loss 100%\n"
    assert netem.parse_netem(listing) == {"eth0": "limit 1000 loss 100%"}


def test_the_listing_of_one_interface_names_none():
    """`tc qdisc show dev IFACE` leaves "dev IFACE" out of its lines."""
    listing = "qdisc netem 8001: root refcnt 2 limit 1000 delay 100ms\n"
    assert netem.parse_netem(listing, "veth1") == {"veth1": "limit 1000 delay 100ms"}
    assert netem.parse_netem(listing) == {}
