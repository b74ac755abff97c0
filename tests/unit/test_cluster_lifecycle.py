"""Cluster's lifecycle against an engine in memory (emu.testing.fakeprovider):
create, converge, the cluster's lock, clean-up after a failed `up`, and `down`.
No Docker: what the nodes do with the plans (the data path) is the integration
tests' (tests/integration)."""

import threading

import pytest

from emu.api.topology.load import load_text
from emu.control.cluster import Cluster
from emu.control.runtime.provider import LABEL_CLUSTER, LABEL_NODE, LABEL_ROLE, ExecResult, NodeSpec
from emu.errors import EmuError
from emu.node.agent import AGENT_URL, HOLD_FILE, LOCK_DIR, STATE_FILE
from emu.node.plan import cni
from emu.testing.fakeprovider import NODE_HANDLERS, EngineError, FakeEngine, FakeProvider, Handler

LAB = """\
name: lab
nodes:
  - {name: cp, role: control-plane}
  - {name: w1}
pods:
  - name: web
    node: w1
    labels: {app: web}
    containers:
      - name: server
        workload: netexec
        ports: [{name: http, containerPort: 8080}]
  - name: tools
    node: cp
    containers: [{name: shell, command: [sleep, infinity]}]
services:
  - name: web
    selector: {app: web}
    ports: [{name: http, port: 80, targetPort: 8080}]
"""
EXTRA_POD = """\
  - name: extra
    node: w1
    containers: [{name: shell, command: [sleep, infinity]}]
"""
PLAN = ["sh", f"{cni.PLAN_DIR}/run.sh"]
SAFETY = 30  # s: how long a test waits for a thread it let go before it calls the run broken (never a pass condition)

# (conftest.py): emu's files in the test's directory; the fake engine's nodes answer as state-file agents
pytestmark = pytest.mark.usefixtures("home", "state_file_agents")


_PKIS: dict = {}


@pytest.fixture(autouse=True)
def one_pki_per_shape(monkeypatch):
    """The PKI up makes, made once per set of names and addresses: its RSA key is
    80 ms of CPU, half of this file's time. The fake checks no certificate."""
    from emu.control import apiserver

    made = apiserver.make_pki

    def make_pki(*args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in _PKIS:
            _PKIS[key] = made(*args, **kwargs)
        return _PKIS[key]

    monkeypatch.setattr(apiserver, "make_pki", make_pki)


def lab(text: str = LAB):
    return load_text(text)


def with_extra_pod():
    return lab(LAB.replace("services:", EXTRA_POD + "services:"))


def command(engine: FakeEngine, name: str = "lab", progress=None) -> Cluster:
    """A Cluster as a new `emu` command makes it: nothing but the engine in common with the last."""
    return Cluster(name, runtime=FakeProvider(engine), progress=progress or (lambda message: None))


def up(engine: FakeEngine, topology=None) -> Cluster:
    cluster = command(engine)
    cluster.up(topology or lab())
    return cluster


def leftovers(engine: FakeEngine, cluster: str = "lab") -> list[str]:
    """Everything of `cluster` the engine still holds."""
    provider = FakeProvider(engine)
    return [c.name for c in provider.cluster_containers(cluster)] + provider.cluster_networks(cluster)


def plan_runs(engine: FakeEngine, since: int = 0) -> dict[str, list]:
    """{node container: [its plan runs]} among the engine's calls from index `since`."""
    runs: dict[str, list] = {}
    for call in engine.calls[since:]:
        if call.method == "run_with_files" and call.argv == PLAN:
            runs.setdefault(call.target, []).append(call)
    return runs


def kube_contexts(home) -> str:
    path = home / "kubeconfig"
    return path.read_text() if path.exists() else ""


# ---- create --------------------------------------------------------------------------------


def test_up_makes_the_network_then_the_nodes_then_wires_them_then_the_api_server(home):
    engine = FakeEngine()
    up(engine)
    methods = [(c.method, c.target) for c in engine.calls]

    def first(predicate) -> int:
        return next(i for i, c in enumerate(engine.calls) if predicate(c))

    def last(predicate) -> int:
        return max(i for i, c in enumerate(engine.calls) if predicate(c))

    network = first(lambda c: c.method == "create_network")
    nodes = [i for i, c in enumerate(engine.calls) if c.method == "create_node"]
    plans = [i for i, c in enumerate(engine.calls) if c.argv == PLAN]
    published = [i for i, c in enumerate(engine.calls) if f"mv {STATE_FILE}.new" in c.script]
    ready = first(lambda c: "/readyz" in c.script)
    mirrors = [i for i, c in enumerate(engine.calls) if "/emu/mirror" in c.script]
    assert methods[0] == ("remove_cluster", "lab")  # a network left by an unfinished down goes first
    assert sorted(methods[i] for i in nodes) == [("create_node", "lab-cp"), ("create_node", "lab-w1")]  # in parallel
    assert network < min(nodes) and max(nodes) < min(plans)
    assert len(plans) == 2 and max(plans) < min(published) and len(published) == 2
    locked = first(lambda c: f"mkdir {LOCK_DIR} " in c.script)
    unlocked = first(lambda c: c.argv == ["rm", "-rf", LOCK_DIR])
    # The objects go into the API server while the nodes take the state and their pods come up
    # (the DNS server, its client, needs its pod there for its token), and again with the pods'
    # readiness once they answered.
    assert max(plans) < ready < mirrors[0] and len(mirrors) == 2 and max(published) < mirrors[1]
    assert max(nodes) < locked < min(plans) and methods[locked] == ("exec", "lab-cp")  # held while it wires them
    assert unlocked == last(lambda c: True) == mirrors[1] + 1  # let go last
    # Each plan's files: the hold first (the agent keeps off), the state to publish among them.
    for index in plans:
        assert engine.calls[index].paths[0] == HOLD_FILE
        assert STATE_FILE + ".new" in engine.calls[index].paths
    assert engine.unhandled == []


def test_what_up_made_carries_the_clusters_labels_and_addresses(home):
    engine = FakeEngine()
    up(engine)
    network = engine.networks["emu-lab"]
    assert network.labels == {LABEL_CLUSTER: "lab"}
    state = command(engine).state()
    for node in state.nodes:
        container = engine.containers[node.container]
        assert container.labels[LABEL_CLUSTER] == "lab"
        assert (container.labels[LABEL_ROLE], container.labels[LABEL_NODE]) == (node.role, node.name)
        assert container.network == "emu-lab" and container.ip == node.node_ip
        assert container.command == cni.NODE_COMMAND
    # The API server's port is published on its node only.
    published = {name: c.ports for name, c in engine.containers.items() if c.ports}
    assert list(published) == ["lab-cp"] and published["lab-cp"][0].container_port == cni.API_PORT


def test_a_later_command_finds_the_cluster_from_the_engine_alone(home):
    engine = FakeEngine()
    up(engine)
    later = command(engine)
    assert later.exists
    assert Cluster.names(FakeProvider(engine)) == ["lab"]
    state = later.state()
    assert state.generation == 1
    assert {"default/web", "default/tools"} <= set(state.pods)
    assert later.pod("web").node == "w1" and later.pod("tools").node == "cp"
    for node in state.nodes:
        files = engine.containers[node.container].files
        assert files[STATE_FILE].decode() == state.to_json()  # every node holds the same state
        assert STATE_FILE + ".new" not in files and HOLD_FILE not in files
        assert not engine.containers[node.container].is_directory(LOCK_DIR)
    # The API server holds the cluster's objects, and kubectl's context is merged.
    store = engine.containers["lab-cp"].store
    pods = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in store.list_objects("pods")}
    assert {("default", "web"), ("default", "tools")} <= pods
    assert "emu-lab" in kube_contexts(home)


def test_up_again_with_the_same_topology_changes_nothing(home):
    engine = FakeEngine()
    up(engine)
    containers = {name: c.serial for name, c in engine.containers.items()}
    since = len(engine.calls)
    change = command(engine).up(lab())
    assert not change.changed
    assert plan_runs(engine, since) == {}
    made = [c for c in engine.calls[since:] if c.method in ("create_network", "create_node", "remove_cluster")]
    assert made == []
    assert {name: c.serial for name, c in engine.containers.items()} == containers
    assert command(engine).state().generation == 1


# ---- converge --------------------------------------------------------------------------------


def test_apply_adds_a_pod_where_it_goes_and_leaves_the_rest_alone(home):
    engine = FakeEngine()
    up(engine)
    containers = {name: c.serial for name, c in engine.containers.items()}
    before = command(engine).state()
    since = len(engine.calls)
    change = command(engine).apply(with_extra_pod())
    assert (change.created, change.added, change.removed) == (False, ["default/extra"], [])
    assert {name: c.serial for name, c in engine.containers.items()} == containers  # no node made again
    assert [c for c in engine.calls[since:] if c.method in ("create_network", "create_node", "remove_cluster")] == []
    runs = plan_runs(engine, since)
    assert sorted(runs) == ["lab-cp", "lab-w1"]  # every node gets the new state with its plan
    after = command(engine).state()
    w1 = engine.containers["lab-w1"].text(f"{cni.PLAN_DIR}/pods.batch") or ""
    assert f"netns add {after.pods['default/extra'].netns}\n" in w1
    for pod in before.pods.values():  # the pods that were there are not made again, on either node
        assert f"netns add {pod.netns}" not in w1
    assert f"{cni.PLAN_DIR}/pods.batch" not in runs["lab-cp"][0].paths
    assert after.generation == 2
    assert {k: (p.uid, p.ip) for k, p in after.pods.items() if k in before.pods} == \
        {k: (p.uid, p.ip) for k, p in before.pods.items()}  # fmt: skip
    names = {o["metadata"]["name"] for o in engine.containers["lab-cp"].store.list_objects("pods")}
    assert "extra" in names
    assert engine.unhandled == []


def test_apply_removes_a_pod_from_its_node_only(home):
    engine = FakeEngine()
    up(engine, with_extra_pod())
    extra = command(engine).pod("extra")
    since = len(engine.calls)
    change = command(engine).apply(lab())
    assert (change.added, change.removed) == ([], ["default/extra"])
    runs = plan_runs(engine, since)
    w1_script = engine.containers["lab-w1"].text(f"{cni.PLAN_DIR}/run.sh")
    assert f"emu_delete_pod {extra.netns} " in w1_script
    cp_script = runs["lab-cp"][0]  # its plan names no pod
    assert "emu_delete_pod" not in engine.containers["lab-cp"].text(f"{cni.PLAN_DIR}/run.sh").split("}\n", 1)[-1]
    assert cp_script.paths[0] == HOLD_FILE
    assert "extra" not in {o["metadata"]["name"] for o in engine.containers["lab-cp"].store.list_objects("pods")}


def test_two_clusters_in_one_engine_are_kept_apart(home):
    engine = FakeEngine()
    up(engine)
    other = Cluster("other", runtime=FakeProvider(engine))
    other.up(lab(LAB.replace("name: lab", "name: other", 1)))
    assert Cluster.names(FakeProvider(engine)) == ["lab", "other"]
    assert engine.networks["emu-lab"].subnet != engine.networks["emu-other"].subnet
    other.down()
    assert leftovers(engine, "other") == []
    assert command(engine).state().generation == 1 and len(leftovers(engine, "lab")) == 3


def test_the_api_port_is_not_one_another_cluster_publishes(home, monkeypatch):
    """emu in a container (the compose labs) sees none of the host's published ports
    when it asks the kernel for a free one: the last CI run's compose lab was
    refused because its API port was one another cluster's API server held."""
    from emu.control import apiserver

    engine = FakeEngine()
    first = up(engine)
    held = first.state().api_endpoint.rsplit(":", 1)[1]
    offered = iter([int(held), int(held), 41234])
    monkeypatch.setattr(apiserver, "kernel_port", lambda address: next(offered))
    other = Cluster("other", runtime=FakeProvider(engine))
    other.up(lab(LAB.replace("name: lab", "name: other", 1)))
    assert other.state().api_endpoint == "https://127.0.0.1:41234"


# ---- the lock --------------------------------------------------------------------------------


class Gate:
    """Holds calls until the test lets them go: `entered` once `expected` of them are held."""

    def __init__(self, expected: int = 1) -> None:
        self.entered, self.go = threading.Event(), threading.Event()
        self.expected, self.held, self.count = expected, threading.Lock(), 0

    def __call__(self, *args):
        with self.held:
            self.count += 1
            if self.count == self.expected:
                self.entered.set()
        assert self.go.wait(SAFETY), "the test never let the held call go"


def in_thread(function, *args):
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_change_while_another_holds_the_lock_is_refused_naming_the_holder(home):
    engine = FakeEngine()
    up(engine)
    gate = Gate(2)  # both nodes' plans held: the apply is mid-way
    engine.intercept("run_with_files", gate, match=lambda container, files, argv: argv == PLAN, times=2)
    first, outcome = in_thread(command(engine).apply, with_extra_pod())
    assert gate.entered.wait(SAFETY)
    since = len(engine.calls)
    with pytest.raises(EmuError, match=r"cluster 'lab' is being changed by .*\(pid \d+.*emu unlock lab"):
        command(engine).apply(lab(LAB.replace("node: w1", "node: cp")))
    assert plan_runs(engine, since) == {}  # refused before it touched a node
    with pytest.raises(EmuError, match="is being changed by"):
        command(engine).update(lambda topology: topology)
    gate.go.set()
    first.join(SAFETY)
    assert "error" not in outcome and outcome["value"].added == ["default/extra"]
    # Released: the next command goes ahead.
    assert not engine.containers["lab-cp"].is_directory(LOCK_DIR)
    change = command(engine).apply(lab(LAB.replace("services:", EXTRA_POD.replace("extra", "more") + "services:")))
    assert change.added == ["default/more"] and change.removed == ["default/extra"]


def test_the_lock_is_on_the_hub_node_the_agents_lock(home):
    engine = FakeEngine()
    up(engine)
    seen = []
    engine.intercept("exec", lambda container, argv: seen.append(container),
                     match=lambda container, argv: argv[:2] == ["sh", "-c"] and f"mkdir {LOCK_DIR} " in argv[2])
    command(engine).apply(with_extra_pod())
    assert seen == ["lab-cp"]  # the control-plane node's, whose agent takes it to move a lost node's pods


def test_an_apply_that_fails_releases_the_lock_and_the_hold_and_keeps_the_state(home):
    engine = FakeEngine()
    up(engine)
    before = command(engine).state().to_json()
    engine.fail("run_with_files", match=lambda container, files, argv: container == "lab-w1" and argv == PLAN,
                result=ExecResult(1, "RTNETLINK answers: File exists"))  # fmt: skip
    with pytest.raises(EmuError, match=r"node w1: the plan failed \(exit 1\):\nRTNETLINK answers: File exists"):
        command(engine).apply(with_extra_pod())
    for name in ("lab-cp", "lab-w1"):
        node = engine.containers[name]
        assert not node.is_directory(LOCK_DIR) and HOLD_FILE not in node.files
        assert node.text(STATE_FILE) == before  # the state in force is the one before
    assert command(engine).apply(with_extra_pod()).added == ["default/extra"]


# ---- clean-up after a failed up ------------------------------------------------------------------

def _never_programmed(engine: FakeEngine) -> None:
    """The nodes take the state (publish) but their agents never say it is programmed."""
    healthy = next(h for h in NODE_HANDLERS if h.name == "publish/wait")

    def answer(node, argv, engine):
        healthy.run(node, argv, engine)
        return ExecResult(0, '{"ports_left": [], "programmed": false, "unready": null}\n')

    engine.handlers.insert(0, Handler("agent stuck", lambda argv: f"{AGENT_URL}/wait?" in " ".join(argv), answer))


def _plan_of(node: str):
    return lambda container, files, argv: container == f"lab-{node}" and argv == PLAN


FAILURES = {
    "create_network": (lambda e: e.fail("create_network"), EngineError),
    "create_node of the second node": (lambda e: e.fail("create_node", match=lambda spec: spec.hostname == "w1"),
                                       EngineError),
    "the plan of a node exits 1": (lambda e: e.fail("run_with_files", match=_plan_of("w1"),
                                                    result=ExecResult(1, "Cannot find device cni0")), EmuError),
    "the engine drops a plan's exec": (lambda e: e.fail("run_with_files", match=_plan_of("cp"),
                                                        error=EngineError("connection reset")), EngineError),
    "an agent never programs the state": (_never_programmed, EmuError),
    "the API server is not ready": (lambda e: e.fail("exec", match=lambda c, argv: "/readyz" in " ".join(argv),
                                                     result=ExecResult(1, "last answer: 000")), EmuError),
    "the API server refuses the objects": (
        lambda e: e.fail("run_with_files", match=lambda c, files, argv: "/emu/mirror" in " ".join(argv),
                         result=ExecResult(0, '{"message": "etcdserver: too many requests"}\n500')), EmuError),
    "Ctrl-C while waiting": (lambda e: e.fail("exec", match=lambda c, argv: "/wait?" in " ".join(argv),
                                              error=KeyboardInterrupt()), KeyboardInterrupt),
}  # fmt: skip


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_up_leaves_nothing_of_the_cluster(home, failure):
    engine = FakeEngine()
    arrange, raised = FAILURES[failure]
    arrange(engine)
    said = []
    with pytest.raises(raised):
        command(engine, progress=said.append).up(lab())
    assert leftovers(engine) == []
    assert engine.intercepts == []  # the failure was met (not skipped by some other error)
    assert Cluster.names(FakeProvider(engine)) == []
    assert "emu-lab" not in kube_contexts(home)
    assert "failed; removing what was created" in said
    # and the next `up` starts afresh
    engine.handlers = list(NODE_HANDLERS)
    command(engine).up(lab())
    assert command(engine).state().generation == 1


def test_a_failed_up_leaves_other_clusters_alone(home):
    engine = FakeEngine()
    Cluster("other", runtime=FakeProvider(engine)).up(lab(LAB.replace("name: lab", "name: other", 1)))
    engine.fail("create_node", match=lambda spec: spec.hostname == "w1")
    with pytest.raises(EngineError):
        command(engine).up(lab())
    assert leftovers(engine) == [] and len(leftovers(engine, "other")) == 3


def test_up_refused_before_anything_is_made_makes_nothing(home):
    engine = FakeEngine()
    text = LAB.replace("- {name: w1}", "- {name: w1, extraPortMappings: [{containerPort: 80, hostPort: 8080}]}")
    Cluster("other", runtime=FakeProvider(engine)).up(lab(text.replace("name: lab", "name: other", 1)))
    since = len(engine.calls)
    with pytest.raises(EmuError, match="host port 8080/TCP .* already published by container other-w1"):
        command(engine).up(lab(text))
    assert [c.method for c in engine.calls[since:]] == ["remove_cluster"]  # the leftover sweep, nothing made
    assert leftovers(engine) == [] and len(leftovers(engine, "other")) == 3


def test_up_sweeps_a_network_left_without_containers(home):
    engine = FakeEngine()
    FakeProvider(engine).create_network("emu-lab", "172.28.0.0/24", "lab")  # a down the engine did not finish
    up(engine)
    assert command(engine).state().network == "emu-lab"


# ---- down --------------------------------------------------------------------------------


def test_down_leaves_nothing(home):
    engine = FakeEngine()
    up(engine)
    assert "emu-lab" in kube_contexts(home)
    assert command(engine).down() == (2, 1)
    assert leftovers(engine) == [] and engine.containers == {} and engine.networks == {}
    assert "emu-lab" not in kube_contexts(home)
    assert list((home / "emu").rglob("lab*")) == []  # nor a file of emu's about it
    later = command(engine)
    assert not later.exists
    with pytest.raises(EmuError, match="no emu cluster named 'lab' is running"):
        later.state()
    assert command(engine).down() == (0, 0)  # twice is fine


def test_down_removes_the_external_containers_too(home):
    engine = FakeEngine()
    up(engine)
    provider = FakeProvider(engine)
    provider.run_external("lab", "lab-client", "emu-lab", "emu/node:fake")
    assert len(leftovers(engine)) == 4
    assert command(engine).down() == (3, 1)
    assert leftovers(engine) == []


HELD_AT = {  # method, which calls, how many
    # nodes made and being wired (both plans held), no state on them yet
    "the plans": ("run_with_files", lambda container, files, argv: argv == PLAN, 2),
    # the state in place on every node, the API server not asked yet
    "the API server": ("exec", lambda container, argv: "/readyz" in " ".join(argv), 1),
}


@pytest.mark.parametrize("where", list(HELD_AT))
@pytest.mark.parametrize("control_plane", ["cp", "x"])  # its container's name sorts before the worker's, or after
def test_a_change_while_up_is_still_creating_the_cluster_is_refused(home, where, control_plane):
    engine = FakeEngine()
    method, match, count = HELD_AT[where]
    gate = Gate(count)
    engine.intercept(method, gate, match=match, times=count)
    text = LAB.replace("name: cp,", f"name: {control_plane},").replace("node: cp", f"node: {control_plane}")
    first, outcome = in_thread(command(engine).up, lab(text))
    assert gate.entered.wait(SAFETY)
    since = len(engine.calls)
    with pytest.raises(EmuError, match=r"cluster 'lab' is being changed by .*emu unlock lab"):
        command(engine).apply(lab(text.replace("services:", EXTRA_POD + "services:")))
    assert plan_runs(engine, since) == {}  # refused before it touched a node
    gate.go.set()
    first.join(SAFETY)
    assert "error" not in outcome and outcome["value"].created
    assert not engine.containers[f"lab-{control_plane}"].is_directory(LOCK_DIR)  # released once up is done
    assert command(engine).apply(lab(text.replace("services:", EXTRA_POD + "services:"))).added == ["default/extra"]
    assert command(engine).state().generation == 2


def test_a_second_up_while_the_first_is_still_creating_the_cluster_is_refused(home):
    engine = FakeEngine()
    gate = Gate(2)  # the first up holds here: its network made, its nodes not yet
    engine.intercept("create_node", gate, times=2)
    first, outcome = in_thread(command(engine).up, lab())
    assert gate.entered.wait(SAFETY)
    since = len(engine.calls)
    with pytest.raises(EmuError, match=r"cluster 'lab' is being created by .*\(pid \d+"):
        command(engine).up(lab())
    assert engine.calls[since:] == []  # it neither swept the first's network nor made anything
    gate.go.set()
    first.join(SAFETY)
    assert "error" not in outcome and outcome["value"].created
    assert len(leftovers(engine)) == 3 and command(engine).state().generation == 1
    assert not command(engine).up(lab()).changed  # and once it is made, up converges it as ever


# ---- image pods: containers of the engine's own, labelled with the cluster ----------------------

IMAGE_POD = """\
  - name: img
    node: w1
    containers: [{name: app, image: "nginx:1.25"}]
"""


def test_an_image_pods_containers_are_made_around_its_nodes_plan_and_go_with_it(home):
    engine = FakeEngine()
    up(engine, lab(LAB.replace("services:", IMAGE_POD + "services:")))
    pods = {name: c for name, c in engine.containers.items() if c.labels[LABEL_ROLE] == "pod"}
    assert sorted(c.labels["io.emu.container"] for c in pods.values()) == ["POD", "app"]
    assert all(c.running for c in pods.values()) and "nginx:1.25" in engine.images
    sandbox = next(i for i, c in enumerate(engine.calls) if c.method == "start_sandbox")
    w1_plan = next(i for i, c in enumerate(engine.calls) if c.target == "lab-w1" and c.argv == PLAN)
    assert sandbox < w1_plan  # the plan wires the sandbox's namespace: it is there first
    change = command(engine).apply(lab())
    assert change.removed == ["default/img"]
    assert [name for name, c in engine.containers.items() if c.labels[LABEL_ROLE] == "pod"] == []


def test_a_failed_up_removes_image_pods_containers_too(home):
    engine = FakeEngine()
    engine.fail("run_with_files", match=_plan_of("w1"), result=ExecResult(1, "Cannot find device cni0"))
    with pytest.raises(EmuError, match="node w1: the plan failed"):
        command(engine).up(lab(LAB.replace("services:", IMAGE_POD + "services:")))
    assert leftovers(engine) == [] and engine.calls_of("start_sandbox")


# ---- the fake engine refuses what Docker refuses -------------------------------------------------


def test_the_fake_engine_refuses_what_docker_refuses(home):
    engine = FakeEngine()
    up(engine)
    provider = FakeProvider(engine)
    w1 = command(engine).state().node("w1")

    def node(name: str, ip: str, network: str = "emu-lab") -> NodeSpec:
        return NodeSpec(name, name, "worker", "lab", "emu/node:fake", network, ip)

    with pytest.raises(EngineError, match="already in use"):
        provider.create_node(node(w1.container, "172.28.0.9"))
    with pytest.raises(EngineError, match="Address already in use"):
        provider.create_node(node("lab-w2", w1.node_ip))
    with pytest.raises(EngineError, match="no configured subnet"):
        provider.create_node(node("lab-w2", "10.1.2.3"))
    with pytest.raises(EngineError, match="network emu-none not found"):
        provider.create_node(node("lab-w2", "172.28.0.9", "emu-none"))
    with pytest.raises(EngineError, match="already exists"):
        provider.create_network("emu-lab", "172.29.0.0/24", "lab")
    with pytest.raises(EngineError, match="No such container"):
        provider.exec("lab-w9", ["true"])
    assert provider.pick_subnet(None, []) != "172.28.0.0/24"  # the cluster's is taken
    result = provider.exec("lab-cp", ["sh", "-c", "echo hello"])
    assert result.exit_code == 127 and engine.unhandled[-1].argv[-1] == "echo hello"


def test_apply_plans_emus_services_around_those_made_through_the_api():
    from emu.control.state import plan_cluster

    engine = FakeEngine()
    cluster = up(engine)
    added = LAB + """\
  - name: extra
    type: NodePort
    selector: {app: web}
    ports: [{name: http, port: 80, targetPort: 8080}]
"""
    previous = cluster.state()
    blind = plan_cluster(lab(added), previous.network, previous.network_subnet, previous).services["default/extra"]
    # kubectl made a Service holding just the address and node port emu would pick.
    node = engine.container(cni.api_server_node(previous).container)
    node.store.create("services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "kweb", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": blind.cluster_ip, "clusterIPs": [blind.cluster_ip],
                 "ports": [{"port": 80, "protocol": "TCP", "nodePort": blind.ports[0].node_port}]}})  # fmt: skip
    command(engine).apply(lab(added))
    extra = command(engine).state().services["default/extra"]
    assert extra.cluster_ip != blind.cluster_ip and extra.ports[0].node_port != blind.ports[0].node_port
    assert node.store.get("services", "default", "kweb") is not None  # kubectl's, left alone
    assert node.store.get("services", "default", "extra")["spec"]["clusterIP"] == extra.cluster_ip
    assert engine.unhandled == []
