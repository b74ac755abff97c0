"""nodes[].netem in the topology (emu.control.netem.declared/converge): set at
`emu up`, changed and removed by `emu apply`, refused before anything is made
where the nodes' kernel has no netem. Over the fake engine with a `tc` that
keeps each interface's qdisc (the data path is tests/integration/test_netem.py's)."""

import pytest

from emu.api.topology.load import load_text
from emu.control.cluster import Cluster
from emu.errors import EmuError
from emu.testing.fakeprovider import ExecResult, FakeEngine, FakeProvider, Handler

LAB = """\
name: lab
nodes:
  - {name: cp, role: control-plane}
  - {name: w1, netem: {delayMs: 50}}
  - {name: w2, netem: {delayMs: 50, jitterMs: 5, lossPercent: 1}}
"""


# (conftest.py): emu's files in the test's directory; the fake engine's nodes answer as state-file agents
pytestmark = pytest.mark.usefixtures("home", "state_file_agents")


class UmlLike(FakeProvider):
    """A runtime whose nodes have a kernel of their own (as uml's): netem is there."""

    name = "uml"


def tc(container, argv, engine) -> ExecResult:
    """tc qdisc replace|del|show dev IF [root netem ARGS]: one root qdisc per interface."""
    qdiscs = engine.__dict__.setdefault("qdiscs", {})
    interface = argv[argv.index("dev") + 1]
    key = (container.name, interface)
    if argv[2] == "replace":
        qdiscs[key] = " ".join(argv[argv.index("netem") + 1:])
    elif argv[2] == "del":
        qdiscs.pop(key, None)
    elif key in qdiscs:
        return ExecResult(0, f"qdisc netem 8001: root refcnt 2 limit 1000 {qdiscs[key]}\n")
    return ExecResult(0, "")


def engine_with_tc() -> FakeEngine:
    engine = FakeEngine()
    engine.handlers.insert(0, Handler("tc", lambda argv: argv[:2] == ["tc", "qdisc"], tc))
    return engine


def test_up_sets_each_nodes_declared_netem_on_its_eth0():
    engine = engine_with_tc()
    Cluster("lab", runtime=UmlLike(engine)).up(load_text(LAB))
    assert engine.qdiscs == {("lab-w1", "eth0"): "delay 50ms", ("lab-w2", "eth0"): "delay 50ms 5ms loss 1%"}


def test_apply_changes_and_removes_what_the_topology_changed():
    engine = engine_with_tc()
    cluster = Cluster("lab", runtime=UmlLike(engine))
    cluster.up(load_text(LAB))
    changed = LAB.replace("{name: w1, netem: {delayMs: 50}}", "{name: w1, netem: {delayMs: 20}}")
    changed = changed.replace("  - {name: w2, netem: {delayMs: 50, jitterMs: 5, lossPercent: 1}}", "  - {name: w2}")
    Cluster("lab", runtime=UmlLike(engine)).apply(load_text(changed))
    assert engine.qdiscs == {("lab-w1", "eth0"): "delay 20ms"}


def test_a_kernel_without_netem_is_refused_before_anything_is_made(monkeypatch):
    from emu.control import netem

    monkeypatch.setattr(netem, "host_has_netem", lambda release=None: False)
    engine = engine_with_tc()
    with pytest.raises(EmuError, match=r"topology: nodes w1, w2 have netem: link impairment needs the kernel's "
                                       r"netem qdisc .* `runtime: uml`"):  # fmt: skip
        Cluster("lab", runtime=FakeProvider(engine)).up(load_text(LAB))
    assert engine.containers == {} and engine.networks == {}


@pytest.mark.parametrize("netem, problem", [
    ("{}", "give at least one of delayMs"),
    ("{jitterMs: 5}", "jitterMs varies a delay: give delayMs too"),
    ("{lossPercent: 101}", "less than or equal to 100"),
    ("{delayMs: -1}", "greater than or equal to 0"),
    ("{delay: 50}", "delay"),
])  # fmt: skip
def test_bad_netem_is_a_topology_error_naming_the_field(netem, problem):
    with pytest.raises(Exception) as caught:
        load_text(f"name: lab\nnodes: [{{name: a, netem: {netem}}}]\n")
    assert "nodes[0].netem" in str(caught.value) and problem in str(caught.value)
