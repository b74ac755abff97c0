"""Several hosts as users meet them (issue 27): an inventory that names one engine twice is refused before
anything changes, a prepare that fails leaves every engine as it found it, and removals that race each other
count as done. The hosts are the lab's (tests/hostlab.py): real dockerds with their own sshd."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import pytest
import yaml

from emu.control.runtime.docker import DockerRuntime
from emu.errors import EmuError

ROOT = Path(__file__).resolve().parents[2]
MANY_FILES = 50000  # a container whose removal takes about a second here: time for a second remover to meet it


def test_a_removal_already_in_progress_counts_as_done(runtime, new_name):
    """Two removers of one cluster at once (two `emu down`s, or one engine under two names): the second meets
    Docker's 409 "removal ... is already in progress" and must count the container as removed."""
    cluster = new_name("race")
    api = runtime.api
    fill = f"mkdir /d && cd /d && seq 1 {MANY_FILES} | xargs touch && touch /filled && sleep infinity"
    image = runtime.node_image(lambda message: None)
    container = api.create_container(image, ["sh", "-c", fill], name=f"{cluster}-big",
                                     labels={"io.emu.cluster": cluster})["Id"]
    try:
        api.start(container)
        while api.exec_start(api.exec_create(container, ["sh", "-c", "test -f /filled && echo yes"])).strip() != b"yes":
            time.sleep(0.2)
        first = threading.Thread(target=lambda: api.remove_container(container, force=True, v=True))
        first.start()
        while api.inspect_container(container)["State"]["Status"] != "removing":
            time.sleep(0.02)
        assert DockerRuntime().remove_containers(cluster) == 1  # no APIError 409
        first.join()
        with pytest.raises(docker.errors.NotFound):
            api.inspect_container(container)
    finally:
        try:
            api.remove_container(container, force=True, v=True)
        except docker.errors.APIError:
            pass


# -- one engine named twice: check, prepare and up refuse it, and change nothing -----------------------------------


@pytest.fixture(scope="module")
def lab(runtime, tmp_path_factory):
    """The lab's hosts out of any swarm, with no containers; emu's records in a private EMU_HOME."""
    from tests import hostlab

    if os.geteuid() != 0:
        pytest.skip("the multi-host lab needs root: network namespaces, dockerd and sshd per host")
    home = tmp_path_factory.mktemp("emu-home")
    with pytest.MonkeyPatch.context() as patch, hostlab.session(3, progress=lambda message: None) as lab:
        patch.setenv("EMU_HOME", str(home))
        yield lab


@pytest.fixture(autouse=True)
def clean_engines(request):
    """Each lab test starts from engines in no swarm with no containers, whatever the one before left."""
    if "lab" in request.fixturenames:
        from tests import hostlab

        for host in request.getfixturevalue("lab").hosts:
            hostlab.clean_engine(host)


def engine_state(lab_host) -> tuple:
    """What a test must find unchanged on a lab engine: its swarm state and node, its containers and networks."""
    from tests import hostlab

    info = hostlab.check_guard(lab_host)
    containers = hostlab.docker(lab_host, "ps", "-aq").stdout.split()
    networks = sorted(hostlab.docker(lab_host, "network", "ls", "--format", "{{.Name}}").stdout.split())
    networks = [n for n in networks if n != "docker_gwbridge"]  # Docker's own, made in its time after a swarm init
    return info["Swarm"]["LocalNodeState"], info["Swarm"]["NodeID"], containers, networks


def twice(lab, how: str) -> str:
    """An inventory of h1 and an entry h2 that reaches h1's engine again: through h2's sshd and h1's socket
    (socket), or h1's own address and socket (address)."""
    from tests import hostlab

    h1, h2 = hostlab.inventory_entry(lab.host("h1")), hostlab.inventory_entry(lab.host("h2"))
    h2["dockerSocket"] = h1["dockerSocket"]
    if how == "address":
        h2["address"] = h1["address"]
    return yaml.safe_dump({"hosts": [h1, h2]}, sort_keys=False)


@pytest.fixture(params=[("socket", "dockerSocket"), ("address", "address")], ids=["socket", "address"])
def twice_inventory(lab, tmp_path, request) -> tuple[Path, str]:
    """An inventory that names h1's engine twice, and the field the refusal must name."""
    how, field = request.param
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(twice(lab, how))
    return inventory, field


def test_check_refuses_one_engine_named_twice(twice_inventory):
    inventory, field = twice_inventory
    check = emu("hosts", "check", str(inventory))
    assert check.returncode == 1, check.stdout + check.stderr
    assert "h2 and h1 are one Docker engine" in check.stdout and f"set h2's {field}" in check.stdout, check.stdout


def test_prepare_refuses_one_engine_named_twice_and_changes_nothing(lab, twice_inventory):
    inventory, field = twice_inventory
    h1 = lab.host("h1")
    before = engine_state(h1)
    assert before[0] == "inactive"
    prepare = emu("hosts", "prepare", "-q", str(inventory))
    assert engine_state(h1) == before  # not made a swarm manager
    assert prepare.returncode == 1 and "Traceback" not in prepare.stderr, prepare.stderr
    assert "h2 and h1 are one Docker engine" in prepare.stderr and f"set h2's {field}" in prepare.stderr


def test_up_refuses_one_engine_named_twice_and_changes_nothing(lab, twice_inventory, tmp_path):
    """As the issue met it: the engine is in a swarm (a prepare of old made it a manager), and up is asked."""
    from tests import hostlab

    inventory, field = twice_inventory
    h1 = lab.host("h1")
    hostlab.docker(h1, "swarm", "init", "--advertise-addr", h1.address)
    before = engine_state(h1)
    topology = "name: emutest-twice\ndns: {enabled: false}\nnodes: [{name: a}, {name: b}]\n"
    (tmp_path / "lab.yaml").write_text(topology)
    up = emu("up", str(tmp_path / "lab.yaml"), "--hosts", str(inventory))
    assert engine_state(h1) == before  # no container, no network
    assert up.returncode == 1 and "Traceback" not in up.stderr, up.stderr
    assert "h2 and h1 are one Docker engine" in up.stderr and f"set h2's {field}" in up.stderr, up.stderr


# -- a prepare that fails or is interrupted leaves every engine as it found it ------------------------------------


@contextlib.contextmanager
def unreachable_manager(lab, joiner: str, manager: str):
    """The joiner's packets to the manager's swarm port (TCP 2377) dropped: its join waits, then fails."""
    netns, target = lab.host(joiner).netns, lab.host(manager).address
    rule = ["OUTPUT", "-p", "tcp", "-d", target, "--dport", "2377", "-j", "DROP"]
    subprocess.run(["ip", "netns", "exec", netns, "iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "netns", "exec", netns, "iptables", "-D", *rule], check=True)


def test_a_prepare_that_fails_on_the_second_host_leaves_the_first_as_it_was(lab):
    from emu.control.hosts import prepare_hosts

    hosts = lab.models()[:2]
    before = {h.name: engine_state(lab.host(h.name)) for h in hosts}
    assert {state[0] for state in before.values()} == {"inactive"}
    said: list[str] = []
    with unreachable_manager(lab, "h2", "h1"), pytest.raises(EmuError) as caught:
        prepare_hosts(hosts, [], progress=said.append)
    assert "h1: swarm initialised (h1 manages it)" in said  # it did change h1 first
    assert {h.name: engine_state(lab.host(h.name)) for h in hosts} == before
    message = str(caught.value)
    assert "h2: docker swarm join (to h1" in message and "prepare undid its changes" in message, message


def test_an_interrupted_prepare_leaves_every_engine_as_it_was(lab, tmp_path):
    from tests import hostlab

    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(hostlab.inventory_yaml(lab.hosts[:2]))
    h1, h2 = lab.host("h1"), lab.host("h2")
    before = {h.name: engine_state(h) for h in (h1, h2)}
    with unreachable_manager(lab, "h2", "h1"):
        prepare = subprocess.Popen([sys.executable, "-m", "emu.cli", "hosts", "prepare", str(inventory)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                   env={**os.environ})
        try:
            while hostlab.check_guard(h2)["Swarm"]["LocalNodeState"] != "pending":  # h1 made a swarm, h2 joins it
                assert prepare.poll() is None, prepare.communicate()
                time.sleep(0.1)
            prepare.send_signal(signal.SIGINT)  # Ctrl-C
            out, err = prepare.communicate(timeout=300)
        finally:
            prepare.kill()
    assert {h.name: engine_state(h) for h in (h1, h2)} == before
    assert prepare.returncode == 130 and "Traceback" not in err, out + err
    assert "h1: left the swarm" in err and "h2: left the swarm" in err, err  # progress: on stderr


def emu(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emu.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ})
