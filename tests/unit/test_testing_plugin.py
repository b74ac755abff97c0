"""emu's pytest plugin where no cluster is made: idle unless asked, and clear
about a missing topology or Docker engine (pytester runs real inner sessions;
DOCKER_HOST points at a socket that does not exist, as on a machine without
Docker)."""

import pytest

# Imported here so pytester's inner runs share these modules rather than import
# them afresh each run (PyYAML's C parser keeps the event classes it first saw).
import emu.testing.plugin  # noqa: F401
import emu.api.topology.load  # noqa: F401

TOPOLOGY = """\
name: lab
nodes: [{name: cp, role: control-plane}]
pods: [{name: client, node: cp, containers: [{name: c, command: [sleep, infinity]}]}]
"""


@pytest.fixture(autouse=True)
def no_docker(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    monkeypatch.setenv("EMU_HOME", str(tmp_path / "emu-home"))


def test_idle_unless_asked(pytester):
    pytester.makepyfile("def test_plain(): assert 1 + 1 == 2")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("emu: *")


def test_a_cluster_without_a_topology_is_an_error_that_says_how(pytester):
    pytester.makepyfile("def test_lab(emu_cluster): pass")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*emu_cluster needs a topology: pass --emu-topology PATH*"])


def test_without_docker_an_error_by_default(pytester):
    pytester.makefile(".yaml", lab=TOPOLOGY)
    pytester.makepyfile("def test_one(emu_pod): pass\ndef test_two(emu_cluster): pass")
    result = pytester.runpytest("--emu-topology", "lab.yaml")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*emu needs a Docker engine: cannot reach the Docker engine*--emu-no-docker=skip*"])
    result.stdout.fnmatch_lines(["emu: topology */lab.yaml"])


def test_without_docker_a_skip_when_chosen(pytester):
    pytester.makefile(".yaml", lab=TOPOLOGY)
    pytester.makepyfile("def test_lab(emu_cluster): pass\ndef test_plain(): pass")
    result = pytester.runpytest("--emu-topology", "lab.yaml", "--emu-no-docker=skip", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*emu needs a Docker engine*"])


def test_ini_settings_name_the_topology_and_the_choice(pytester):
    pytester.mkdir("labs")
    (pytester.path / "labs" / "lab.yaml").write_text(TOPOLOGY)
    pytester.makeini("[pytest]\nemu_topology = labs/lab.yaml\nemu_no_docker = skip\n")
    pytester.makepyfile("def test_lab(emu_host): pass")
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)


def test_a_bad_topology_is_reported_with_its_place(pytester):
    pytester.makefile(".yaml", lab="name: lab\nnodes: [{name: cp, rol: control-plane}]\n")
    pytester.makepyfile("def test_lab(emu_cluster): pass")
    result = pytester.runpytest("--emu-topology", "lab.yaml")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["emu: *lab.yaml: 1 problem found; nothing was changed.", "*lab.yaml:2:*unknown key 'rol'*"])
    result.stdout.no_fnmatch_line("*During handling*")
