"""Hostile and broken input: every file emu reads gives a clear error (what,
where, what to do), never a traceback, a hang or unbounded memory.

Topologies and hosts inventories go through emu.api.topology.load; the cluster
state read back from the nodes through ClusterState.from_json. Alias bombs run
in a subprocess under a 1 GiB address-space limit, so an expansion that is not
bounded fails the test instead of taking the machine's memory.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from emu.errors import EmuError, TopologyError
from emu.node.records import ClusterState, StateError
from emu.control.state import plan_cluster
from emu.api.topology import load
from emu.api.load import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, load_file, load_inventory, load_text

GOOD = "name: lab\nnodes: [{name: cp, role: control-plane}]\n"


def problems(call, *args) -> list[str]:
    with pytest.raises(TopologyError) as caught:
        call(*args)
    return [line.strip() for line in str(caught.value).splitlines()[1:]]


# ---- not UTF-8 ------------------------------------------------------------------
def test_a_file_that_is_not_utf8_names_the_byte_and_its_place(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_bytes(b"name: lab\nnodes:\n  - name: caf\xe9\n")  # Latin-1
    assert problems(load_file, path) == [f"{path}:3:14: not UTF-8 text (byte 0xe9); save the file as UTF-8"]


def test_an_inventory_that_is_not_utf8(tmp_path):
    path = tmp_path / "hosts.yaml"
    path.write_bytes(b"\xff\xfehosts: []\n")  # UTF-16's byte order mark
    assert problems(load_inventory, path) == [f"{path}:1:1: not UTF-8 text (byte 0xff); save the file as UTF-8"]


def test_utf8_with_a_byte_order_mark_and_non_ascii_text_loads(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_bytes("\ufeff# café\n".encode() + GOOD.encode())
    assert load_file(path).name == "lab"


def test_control_characters_are_located():
    message = problems(load_text, "name: lab\nnodes: [{name: cp}]\n# é\x00\n", "lab.yaml")
    assert message == ["lab.yaml:3:4: not valid YAML: the character #x0000 is not allowed; remove it"]


def test_a_lone_surrogate_in_text_is_an_error():
    (message,) = problems(load_text, "name: '\ud800'\n", "lab.yaml")
    assert message in (
        "lab.yaml:1:8: not valid YAML: a character is not valid Unicode",  # libyaml
        "lab.yaml:1:8: not valid YAML: the character #xd800 is not allowed; remove it",  # Python's reader
    )


# ---- huge -------------------------------------------------------------------------
def test_a_huge_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "lab.yaml"
    with path.open("wb") as handle:
        handle.write(GOOD.encode())
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: NULs after the YAML
    (message,) = problems(load_file, path)
    assert message.startswith(f"{path}: the file is over 8 MiB; a topology is at most 8 MiB")


def test_a_huge_text_is_refused():
    (message,) = problems(load_text, GOOD + "#" * MAX_FILE_BYTES, "lab.yaml")
    assert message.startswith("lab.yaml: the text is 8.0 MiB; a topology is at most 8 MiB")


def test_too_many_nodes_without_aliases():
    text = "name: lab\nnodes: [" + ",".join(["1"] * (MAX_NODES + 1)) + "]\n"
    (message,) = problems(load_text, text, "lab.yaml")
    assert f"more than {MAX_NODES:,} YAML nodes" in message and message.startswith("lab.yaml:2:")


def test_a_special_file_that_never_ends_is_refused():
    (message,) = problems(load_file, "/dev/zero")
    assert "the file is over 8 MiB" in message


def test_an_unreadable_path_is_an_error(tmp_path):
    (message,) = problems(load_file, tmp_path)
    assert message.startswith(f"{tmp_path}: cannot read the file: ")


# ---- alias bombs (billion laughs) -------------------------------------------------
def bomb(levels: int = 9, width: int = 9) -> str:
    """name: &a [lol, lol, ...]; b: &b [*a, *a, ...]; ...: width ** levels nodes."""
    lines = ["name: lab", "nodes: [{name: cp, role: control-plane}]", "pods:"]
    lines.append(f"  - &l0 [{', '.join(['lol'] * width)}]")
    for level in range(1, levels + 1):
        lines.append(f"  - &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def merge_bomb(levels: int = 40) -> str:
    """The same through merge keys: each level merges the one below twice."""
    lines = ["name: lab", "nodes: [{name: cp, role: control-plane}]", "x0: &m0 {a: 1, b: 2}"]
    for level in range(1, levels + 1):
        lines.append(f"x{level}: &m{level} {{<<: [*m{level - 1}, *m{level - 1}], k{level}: {level}}}")
    return "\n".join(lines) + "\n"


def mapping_bomb(levels: int = 10) -> str:
    lines = ["name: lab", "nodes: [{name: cp}]", "networking:", "  a0: &a0 {x: y, z: w}"]
    for level in range(1, levels + 1):
        below = f"*a{level - 1}"
        lines.append(f"  a{level}: &a{level} {{p: {below}, q: {below}, r: {below}, s: {below}}}")
    return "\n".join(lines) + "\n"


MEMORY_CAP = 1 << 30


def run_capped(code: str) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter whose address space is capped at 1 GiB."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_CAP}, {MEMORY_CAP}))\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,  # only so a hang fails instead of blocking the suite; nothing is timed
        cwd=Path(__file__).parents[2],
    )


@pytest.mark.parametrize("shape", ["bomb", "merge_bomb", "mapping_bomb"])
def test_alias_bombs_are_refused_in_bounded_memory(tmp_path, shape):
    path = tmp_path / "bomb.yaml"
    path.write_text(globals()[shape]())
    result = run_capped(
        f"""
        from emu.errors import TopologyError
        from emu.api.load import load_file
        try:
            load_file({str(path)!r})
        except TopologyError as error:
            print(error)
        else:
            print("LOADED")
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "YAML nodes once its aliases are expanded" in result.stdout, result.stdout
    assert f"{path}:" in result.stdout


def test_the_memory_cap_is_in_force():
    """So the test above means something: under the cap, a gigabyte cannot be had
    (an expansion walked as a tree, as before these limits, dies the same way)."""
    result = run_capped(f"data = bytearray({MEMORY_CAP})")
    assert result.returncode != 0 and "MemoryError" in result.stderr


def test_a_small_alias_still_works():
    nodes = "nodes:\n  - &n {name: cp, role: control-plane}\n  - {<<: *n, name: w, role: worker}"
    text = GOOD.replace("nodes: [{name: cp, role: control-plane}]", nodes)
    assert [node.name for node in load_text(text).nodes] == ["cp", "w"]


def test_an_alias_inside_the_node_it_names():
    (message,) = problems(load_text, "name: &a [x, *a]\nnodes: []\n", "lab.yaml")
    assert message == (
        "lab.yaml:1:14: the alias '*a' is inside the node '&a' it names, which makes the document infinite; "
        "refer to a node outside it"
    )


def test_an_undefined_alias():
    (message,) = problems(load_text, "name: *nope\nnodes: []\n", "lab.yaml")
    assert message.startswith("lab.yaml:1:7: not valid YAML: found undefined alias")


# ---- deep nesting -----------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "name: " + "[" * 100_000 + "]" * 100_000 + "\n",  # flow sequences
        "name: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n",  # flow mappings
        "name: " + "[" * 100_000 + "\n",  # never closed
        "name:\n" + "".join(" " * i + "- \n" for i in range(3_000)),  # block sequences
        "nodes:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 1_000)),  # block mappings
    ],
    ids=["flow-seq", "flow-map", "unclosed", "block-seq", "block-map"],
)
def test_deep_nesting_is_an_error_not_a_recursion_error(text):
    (message,) = problems(load_text, text, "lab.yaml")
    assert f"nested more than {MAX_DEPTH} deep" in message or "maximum nesting depth" in message
    assert message.startswith("lab.yaml:")


def test_nesting_a_topology_needs_is_allowed():
    pod = "  - name: p\n    containers:\n      - name: c\n        command: [sh, -c, x]\n"
    pod += "        env:\n          - {name: A, value: b}\n"
    text = GOOD + "pods:\n" + pod
    assert [pod.name for pod in load_text(text).pods] == ["p"]


# ---- duplicate keys and values Python cannot hold ------------------------------
def test_duplicate_keys_are_still_reported():
    assert problems(load_text, "name: a\nname: b\nnodes: [{name: cp}]\n", "lab.yaml") == [
        "lab.yaml:2:1: name: key 'name' is given twice; keep one"
    ]


def test_duplicate_keys_in_an_inventory(tmp_path):
    path = tmp_path / "hosts.yaml"
    path.write_text("hosts:\n  - name: h1\n    name: h2\n")
    assert any("key 'name' is given twice" in m for m in problems(load_inventory, path))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2024-02-30", "cannot read the value '2024-02-30': day is out of range for month"),
        ("9" * 5_000, "Exceeds the limit (4300 digits) for integer string conversion"),
    ],
)
def test_values_python_cannot_hold_are_located(value, expected):
    (message,) = problems(load_text, f"name: lab\nnodes: [{{name: cp}}]\nextra: {value}\n", "lab.yaml")
    assert message.startswith("lab.yaml:3:8: not valid YAML: ") and expected in message
    assert len(message) < 300


def test_a_list_as_a_mapping_key():
    assert problems(load_text, "? [a]\n: 1\n", "lab.yaml") == ["lab.yaml:1:3: not valid YAML: found unhashable key"]


def test_a_key_with_brackets_is_named():
    (message,) = problems(load_text, GOOD + "a[0]: 1\n", "lab.yaml")
    assert message.startswith("lab.yaml:3:1: a[0]: unknown key 'a[0]'")


def test_many_problems_are_capped():
    text = "name: lab\nnodes: [{name: cp}]\npods: [" + ",".join(["1"] * 5_000) + "]\n"
    lines = problems(load_text, text, "lab.yaml")
    assert len(lines) == load.MAX_PROBLEMS + 1
    assert lines[-1] == "lab.yaml: ... and 4,900 more problems; fix the ones above first"


def test_a_huge_value_is_shortened_in_the_message():
    (message,) = problems(load_text, "name: lab\nnodes: " + "x" * 100_000 + "\n", "lab.yaml")
    assert len(message) < 300


# ---- the cluster state read back from nodes --------------------------------------
@pytest.fixture()
def state() -> ClusterState:
    return plan_cluster(load_text(GOOD), "emu-lab", "172.28.5.0/24")


def test_state_round_trip(state):
    assert ClusterState.from_json(state.to_json()) == state


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "not JSON"),
        (b"{\"name\": \"caf\xe9\"}", "not UTF-8"),
        ("{\"version\": 2, \"nodes\": [", "not JSON"),
        ("[" * 200_000 + "]" * 200_000, "nested too deep"),
        ("{\"version\": 2, \"x\": " + "[" * 200_000 + "]" * 200_000 + "}", "nested too deep"),
        ("[]", "not a JSON object"),
        ("{\"version\": 2}", "KeyError: 'nodes'"),
        ("{\"version\": 2, \"nodes\": [1], \"pods\": {}}", "TypeError"),
        ("{\"version\": 2, \"nodes\": [], \"pods\": []}", "AttributeError"),
        ("{\"version\": 2, \"x\": " + "9" * 5_000 + "}", "not JSON: Exceeds the limit"),
    ],
    ids=["empty", "latin1", "truncated", "deep", "deep-inside", "list", "no-nodes", "bad-node", "bad-pods", "bigint"],
)
def test_a_damaged_state_file_is_a_state_error(text, reason):
    with pytest.raises(StateError) as caught:
        ClusterState.from_json(text)
    message = str(caught.value)
    assert message.startswith("the cluster's state file is damaged (") and reason in message
    assert message.endswith("recreate the cluster with `emu down` and `emu up`") and len(message) < 300
    # EmuError for the CLI (no traceback), ValueError for the node agent (it keeps running).
    assert isinstance(caught.value, EmuError) and isinstance(caught.value, ValueError)
    # The node agent reads it member by member (NodeReader): damaged the same way, a StateError too.
    with pytest.raises(StateError, match=r"^the cluster's state file is damaged \(.*emu up`$"):
        ClusterState.from_json(text, node="w1")


@pytest.mark.parametrize(
    "cut",
    [
        lambda t: t[: t.index('"pods"') + 40],  # cut short inside a pod
        lambda t: t + " {}",  # something after the state
        lambda t: t.replace('"pods": {', '"pods" {', 1),  # no colon
        lambda t: t.replace('"pods": {', '"pods": {"x": 1, ', 1),  # a pod that is not an object
        lambda t: t.replace('"pods": {', '"pods": {1: ', 1),  # a key that is not a string
    ],
    ids=["cut", "extra", "colon", "pod", "key"],
)
def test_a_state_file_damaged_inside_its_pods_is_a_state_error_for_the_agent_too(state, cut):
    with pytest.raises(StateError, match=r"^the cluster's state file is damaged \("):
        ClusterState.from_json(cut(state.to_json()), node="w1")


AGENT_LAB = """\
name: lab
nodes: [{name: cp, role: control-plane}, {name: w1}]
configMaps: [{name: conf, data: {a.txt: hello}}]
deployments:
  - name: web
    replicas: 4
    template:
      labels: {app: web}
      volumes: [{name: v, configMap: {name: conf}}]
      containers:
        - name: c
          workload: netexec
          ports: [{name: http, containerPort: 8080}]
          volumeMounts: [{name: v, mountPath: /conf}]
services:
  - {name: web, selector: {app: web}, ports: [{port: 80, targetPort: http}]}
"""


def test_an_agent_keeps_other_nodes_pods_without_what_only_their_node_needs():
    text = plan_cluster(load_text(AGENT_LAB), "emu-lab", "172.28.5.0/24").to_json()
    full, view = ClusterState.from_json(text), ClusterState.from_json(text, node="cp")
    assert {p.node for p in full.pods.values()} > {"cp"}, "the lab has pods on cp and elsewhere"
    assert all(p.volumes and p.spec_hash for p in full.pods.values() if p.node != "cp")
    assert view.pods.keys() == full.pods.keys() and view.services == full.services and view.nodes == full.nodes
    assert view.generation == full.generation and view.networking == full.networking and view.created == {}
    from emu.node.records import AGENT_TOPOLOGY

    assert view.topology == {key: full.topology[key] for key in AGENT_TOPOLOGY if key in full.topology}
    for key, pod in full.pods.items():
        kept = view.pods[key]
        if pod.node == "cp":
            assert kept == pod
            continue
        assert (kept.uid, kept.labels, kept.container_ports(), kept.hostname, kept.subdomain, kept.restart_policy) == (
            pod.uid, pod.labels, pod.container_ports(), pod.hostname, pod.subdomain, pod.restart_policy)  # fmt: skip
        assert (kept.volumes, kept.spec_hash) == ({}, "")


def test_a_state_file_of_another_version(state):
    text = state.to_json().replace('"version": 2', '"version": 1')
    with pytest.raises(StateError, match="has version 1, this emu reads 2"):
        ClusterState.from_json(text)


def test_a_state_file_over_the_limit_is_refused_before_parsing(monkeypatch, state):
    import emu.node.records

    text = state.to_json()
    monkeypatch.setattr(emu.node.records, "MAX_STATE_BYTES", len(text) - 1)
    with pytest.raises(StateError, match="over emu's limit of"):
        ClusterState.from_json(text)
    with pytest.raises(StateError, match="over emu's limit of"):
        ClusterState.from_json("{" + " " * len(text) + "}")


def test_a_state_over_the_limit_is_not_written(monkeypatch, state):
    import emu.node.records

    monkeypatch.setattr(emu.node.records, "MAX_STATE_BYTES", 1000)
    with pytest.raises(StateError, match="over emu's limit of 0 MiB .*make the cluster smaller"):
        state.to_json()
