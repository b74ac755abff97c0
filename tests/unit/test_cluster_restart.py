"""A cluster some of whose nodes are down (a restarted engine or host, a `docker stop`), against an engine in
memory (emu.testing.fakeprovider): what `emu status` names and its exit code, and `emu up` starting the
stopped nodes instead of refusing or recreating them. That the started nodes serve again (packets) is
tests/integration/test_host_restart.py's."""

import json

import pytest

from emu.api.topology.load import load_text
from emu.api.topology.model import Host
from emu.control.cluster import Cluster
from emu.errors import EmuError
from emu.testing.fakeprovider import FakeEngine, FakeProvider

LAB = """\
name: lab
nodes:
  - {name: cp, role: control-plane}
  - {name: w1}
  - {name: w2}
pods:
  - name: web
    node: w2
    labels: {app: web}
    containers:
      - name: server
        workload: netexec
        ports: [{name: http, containerPort: 8080}]
  - name: tools
    node: w1
    containers: [{name: shell, command: [sleep, infinity]}]
services:
  - name: web
    selector: {app: web}
    ports: [{name: http, port: 80, targetPort: 8080}]
"""
HOSTS = [Host(name=f"h{i}", address=f"10.0.0.{i}") for i in (1, 2, 3)]

# (conftest.py): emu's files in the test's directory; the fake engine's nodes answer as state-file agents
pytestmark = pytest.mark.usefixtures("home", "state_file_agents")


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


def spread_topology():
    topology = load_text(LAB)
    return topology.model_copy(update={"hosts": HOSTS})


def up(engine: FakeEngine, hosts: bool = False) -> Cluster:
    topology = spread_topology() if hosts else load_text(LAB)
    cluster = Cluster("lab", runtime=FakeProvider(engine, HOSTS if hosts else None))
    cluster.up(topology)
    return cluster


def later(engine: FakeEngine, hosts: bool = False) -> Cluster:
    """The cluster as a later emu command finds it."""
    return Cluster("lab", runtime=FakeProvider(engine, HOSTS if hosts else None))


def test_node_containers_are_made_to_rebuild_their_pods_when_they_start_again(engine):
    up(engine)
    for name in ("lab-cp", "lab-w1", "lab-w2"):
        command = " ".join(engine.containers[name].command)
        assert "/etc/emu/plan/boot/run.sh" in command  # the boot script a restarted container runs


def test_a_healthy_cluster_has_no_problems(engine):
    up(engine)
    state, problems = later(engine).health()
    assert [n.name for n in state.nodes] == ["cp", "w1", "w2"]
    assert problems == []


def test_health_names_a_stopped_node_its_container_and_what_to_do(engine):
    up(engine)
    engine.stop("lab-w2", "Exited (137) 4 seconds ago")
    _, problems = later(engine).health()
    assert len(problems) == 1
    problem = problems[0]
    assert problem.node == "w2"
    assert "node w2: its container lab-w2 is not running (Exited (137) 4 seconds ago)" in problem.what
    assert "`emu up FILE` starts it again" in problem.fix


def test_health_names_a_removed_node_container(engine):
    up(engine)
    del engine.containers["lab-w1"]
    _, problems = later(engine).health()
    assert [p.node for p in problems] == ["w1"]
    assert "is gone" in problems[0].what and "emu down lab" in problems[0].fix


def test_health_names_an_unreachable_host_and_its_nodes(engine):
    up(engine, hosts=True)
    placed = {n.name: n.host for n in later(engine, hosts=True).state().nodes}
    down = placed["w2"]
    engine.hosts_down[down] = f"host {down}: cannot reach its Docker engine (connection refused)."
    state, problems = later(engine, hosts=True).health()
    assert [(p.host, p.node) for p in problems] == [(down, "")]
    assert f"host {down}: cannot reach its Docker engine" in problems[0].what
    assert "w2" in problems[0].what  # the nodes on it
    assert "start by themselves" in problems[0].fix


def test_up_starts_stopped_nodes_and_says_so_instead_of_recreating(engine):
    up(engine)
    serials = {name: c.serial for name, c in engine.containers.items()}
    engine.stop("lab-w1")
    engine.stop("lab-w2")
    change = later(engine).up(load_text(LAB))
    assert not change.created
    assert [line.split(" (")[0] for line in change.started] == ["node w1", "node w2"]
    assert all(line.endswith(": started") for line in change.started)
    assert change.changed
    assert {name: c.serial for name, c in engine.containers.items()} == serials  # the same containers
    assert all(c.running for c in engine.containers.values())
    assert [c.target for c in engine.calls_of("start_node")] == ["lab-w1", "lab-w2"]
    # It waited for the started nodes' agents (GET /wait) after starting them.
    first_start = engine.calls.index(engine.calls_of("start_node")[0])
    waits = [c for c in engine.calls[first_start:] if c.method == "exec" and "/wait?" in c.script]
    assert {c.target for c in waits} >= {"lab-w1", "lab-w2"}
    _, problems = later(engine).health()
    assert problems == []


def test_up_of_a_cluster_whose_nodes_all_run_starts_nothing(engine):
    up(engine)
    change = later(engine).up(load_text(LAB))
    assert change.started == [] and not change.changed
    assert engine.calls_of("start_node") == []


def test_a_node_that_does_not_start_is_an_error_naming_what_started_and_what_is_left(engine):
    from emu.testing.fakeprovider import EngineError

    up(engine)
    engine.stop("lab-w1")
    engine.stop("lab-w2")
    engine.fail("start_node", match=lambda name: name == "lab-w2", error=EngineError("cannot allocate address"))
    before = len(engine.calls)
    with pytest.raises(EmuError) as raised:
        later(engine).up(load_text(LAB))
    message = str(raised.value)
    assert "node w2: cannot allocate address" in message
    assert "started: w1" in message
    assert "emu down lab" in message
    assert engine.containers["lab-w1"].running and not engine.containers["lab-w2"].running
    assert [c.method for c in engine.calls[before:]] == ["start_node", "start_node"]  # nothing else was done


def test_up_refuses_when_a_node_container_is_gone(engine):
    up(engine)
    del engine.containers["lab-w2"]
    with pytest.raises(EmuError, match=r"node\(s\) w2 have no container \(lab-w2\).*emu down lab"):
        later(engine).up(load_text(LAB))


def test_status_names_what_is_down_and_exits_1(engine, monkeypatch, capsys):
    from emu.cli import common, objects

    up(engine)
    engine.stop("lab-w2")
    monkeypatch.setattr(common, "_cluster", lambda args, *rest: later(engine))
    monkeypatch.setattr(objects, "_cluster", lambda args, *rest: later(engine))

    class Args:
        json = True
        name = "lab"

    assert objects.cmd_status(Args()) == 1
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert {n["name"]: n["status"] for n in data["nodes"]} == {"cp": "Ready", "w1": "Ready", "w2": "NotReady"}
    assert data["problems"][0]["node"] == "w2"
    assert "node w2: its container lab-w2 is not running" in err and "emu up FILE" in err
    pods = {p["name"]: p["containers"][0]["state"] for p in data["pods"]}
    assert pods["web"] == "Unknown" and pods["tools"] == "Running"

    Args.json = False
    assert objects.cmd_status(Args()) == 1
    out, err = capsys.readouterr()
    assert "NotReady" in out and "not all up (1 problem)" in err

    later(engine).up(load_text(LAB))
    Args.json = True
    assert objects.cmd_status(Args()) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == []


def test_up_of_a_runtime_that_cannot_start_nodes_says_so_and_changes_nothing(engine):
    class Unstartable(FakeProvider):
        start_node = property(lambda self: (_ for _ in ()).throw(AttributeError("start_node")))

    up(engine)
    engine.stop("lab-w1")
    before = len(engine.calls)
    with pytest.raises(EmuError, match=r"node\(s\) w1 are not running and its runtime cannot start a node again; "
                                       r"nothing was changed: `emu down lab`"):
        Cluster("lab", runtime=Unstartable(engine)).up(load_text(LAB))
    assert engine.calls[before:] == []


def test_state_is_read_from_a_running_node_when_the_first_is_stopped(engine):
    """A stopped uml node's files are on a disk no kernel reads: the state comes from a node that runs."""
    up(engine)
    engine.stop("lab-cp")
    engine.fail("read_file", match=lambda container, path: container == "lab-cp", times=None,
                error=EmuError("node lab-cp (a uml guest, not running) did not answer"))  # fmt: skip
    state, problems = later(engine).health()
    assert [n.name for n in state.nodes] == ["cp", "w1", "w2"] and [p.node for p in problems] == ["cp"]


def test_a_stopped_uml_node_is_started_by_emu_up_not_by_docker(engine):
    class Uml(FakeProvider):
        name = "uml"

    up(engine)
    engine.stop("lab-w2", status="down: its UML kernel process is gone")
    _, [problem] = Cluster("lab", runtime=Uml(engine)).health()
    assert problem.what == "node w2: its container lab-w2 is not running (down: its UML kernel process is gone)"
    assert "emu up FILE" in problem.fix and "docker" not in problem.fix
