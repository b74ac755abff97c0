"""How users reach their hosts (issue 27): a non-root SSH user in the docker group, one that is not (refused
with what to do, before anything changes). The hosts are the lab's (tests/hostlab.py): real dockerds, each with
its own sshd in a network namespace. These tests drive only the lab's engines, never this machine's, so they
do not take the integration lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emu.api.topology.model import Host
from emu.errors import EmuError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from tests import hostlab

    if os.geteuid() != 0:
        pytest.skip("the multi-host lab needs root: network namespaces, dockerd and sshd per host")
    home = tmp_path_factory.mktemp("emu-home")
    with pytest.MonkeyPatch.context() as patch, hostlab.session(3, progress=lambda message: None) as lab:
        patch.setenv("EMU_HOME", str(home))
        yield lab


@pytest.fixture(autouse=True)
def clean_engines(request):
    """Each lab test starts from engines in no swarm with no containers."""
    if "lab" in request.fixturenames:
        from tests import hostlab

        for host in request.getfixturevalue("lab").hosts:
            hostlab.clean_engine(host)


def entries(lab, **users: str) -> list[dict]:
    """Inventory entries of the named hosts, each with its SSH user (h1="emu-docker", h3="root")."""
    from tests import hostlab

    return [hostlab.inventory_entry(lab.host(name), user) for name, user in users.items()]


def write(tmp_path: Path, hosts: list[dict], **extra) -> Path:
    path = tmp_path / "hosts.yaml"
    path.write_text(yaml.safe_dump({"hosts": hosts, **extra}, sort_keys=False))
    return path


def swarm_state(lab_host) -> str:
    from tests import hostlab

    return hostlab.check_guard(lab_host)["Swarm"]["LocalNodeState"]


# -- a non-root SSH user ---------------------------------------------------------------------------------------------


def test_a_user_in_the_docker_group_checks_prepares_and_reaches_the_engine(lab, tmp_path):
    from emu.control.runtime.swarm import SwarmRuntime

    inventory = write(tmp_path, entries(lab, h1="emu-docker", h3="root"))
    check = emu("hosts", "check", str(inventory))
    assert check.returncode == 0, check.stdout + check.stderr
    prepare = emu("hosts", "prepare", "-q", str(inventory))
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    assert swarm_state(lab.host("h1")) == "active"
    # emu's own path to the engine: the socket forwarded over SSH, opened there as emu-docker.
    runtime = SwarmRuntime([Host.model_validate(e) for e in yaml.safe_load(inventory.read_text())["hosts"]])
    try:
        assert runtime.manager().host == "h1"
        assert runtime.engine("h1").api.info()["Labels"] == ["io.emu.testhost=1"]
    finally:
        runtime.close()


def test_a_user_outside_the_docker_group_is_told_what_to_do_and_nothing_changes(lab, tmp_path):
    from emu.control.runtime.swarm import SwarmRuntime

    # h2 first: its tunnel opens beside h1's, and the refusal must come from h2's own, not the last one opened.
    inventory = write(tmp_path, entries(lab, h2="emu-plain", h1="root"))
    fix = "add emu-plain to the group docker on h2 (as root: usermod -aG docker emu-plain"
    check = emu("hosts", "check", str(inventory))
    assert check.returncode == 1, check.stdout + check.stderr
    assert "emu-plain may not use the Docker engine at /run/emu-hostlab/h2/docker.sock" in check.stdout, check.stdout
    assert fix in check.stdout and "or set h2's dockerSocket to the socket of a rootless engine" in check.stdout

    prepare = emu("hosts", "prepare", "-q", str(inventory))
    assert prepare.returncode == 1 and "Traceback" not in prepare.stderr, prepare.stderr
    assert fix in prepare.stderr and "prepare changed nothing" in prepare.stderr, prepare.stderr
    assert swarm_state(lab.host("h1")) == swarm_state(lab.host("h2")) == "inactive"

    runtime = SwarmRuntime([Host.model_validate(e) for e in yaml.safe_load(inventory.read_text())["hosts"]])
    try:
        with pytest.raises(EmuError) as caught:
            runtime.engines()
    finally:
        runtime.close()
    assert "host h2: emu-plain may not use the Docker engine" in str(caught.value) and fix in str(caught.value)


# -- a host behind a jump host -------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["host", "inventory"])
def test_check_prepare_and_the_engine_through_a_jump_host(lab, tmp_path, where):
    """h3 answers SSH only from the other hosts; h1 is the bastion (per host jump:, or the inventory's default)."""
    from emu.control.runtime.swarm import SwarmRuntime
    from emu.api.topology.load import load_inventory
    from tests import hostlab

    h1, h3 = entries(lab, h1="root", h3="root")
    bastion = f"root@{lab.host('h1').address}:22"
    with hostlab.unreachable_from_controller(lab.host("h3")):
        direct = emu("hosts", "check", str(write(tmp_path, [h1, h3])))
        assert direct.returncode == 1 and "h3: error: SSH to root@10.213.0.13:22 failed" in direct.stdout, direct.stdout

        if where == "host":
            inventory = write(tmp_path, [h1, {**h3, "jump": bastion}])
        else:
            inventory = write(tmp_path, [h1, h3], jump=bastion)  # h1's own jump: through itself
        check = emu("hosts", "check", str(inventory))
        assert check.returncode == 0, check.stdout + check.stderr
        prepare = emu("hosts", "prepare", "-q", str(inventory))
        assert prepare.returncode == 0, prepare.stdout + prepare.stderr
        assert swarm_state(lab.host("h3")) == "active"
        runtime = SwarmRuntime(load_inventory(inventory))
        try:  # emu's own path to h3's engine: its socket forwarded over SSH through h1
            assert runtime.manager().host == "h1"
            assert runtime.engine("h3").api.info()["Swarm"]["LocalNodeState"] == "active"
        finally:
            runtime.close()


def test_a_jump_host_that_is_not_user_at_host_port_is_refused(lab, tmp_path):
    inventory = write(tmp_path, [{**entries(lab, h1="root")[0], "jump": "root@h1:ssh"}])
    check = emu("hosts", "check", str(inventory))
    assert check.returncode != 0 and "'root@h1:ssh' is not a jump host" in check.stderr, check.stderr


# -- a host key that changed ------------------------------------------------------------------------------------------


@pytest.fixture
def changed_key(lab, tmp_path) -> tuple[Path, Path]:
    """An inventory of h1 and h2 whose known_hosts file holds another key for h2 (line 2): as after h2 was
    reinstalled, or with someone in between. Returns the inventory and the known_hosts file."""
    from tests import hostlab

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    lines = hostlab.KNOWN_HOSTS.read_text().splitlines()
    assert lines[1].startswith(lab.host("h2").address + " ")
    lines[1] = f"{lab.host('h2').address} {' '.join(other)}"
    known.write_text("\n".join(lines) + "\n")
    hosts = [{**entry, "knownHosts": str(known)} for entry in entries(lab, h1="root", h2="root")]
    return write(tmp_path, hosts), known


def test_a_changed_host_key_is_refused_naming_the_host_the_line_and_the_command(lab, changed_key):
    from emu.control.runtime.swarm import SwarmRuntime
    from emu.api.topology.load import load_inventory

    inventory, known = changed_key
    before = known.read_text()
    said = f"h2: the SSH host key of 10.213.0.12 changed: it is not the ssh-ed25519 key on line 2 of {known}"
    fix = f"ssh-keygen -R 10.213.0.12 -f {known}"
    check = emu("hosts", "check", str(inventory))
    assert check.returncode == 1 and "host key changed (ERROR)" in check.stdout, check.stdout
    assert said.split(": ", 1)[1] in check.stdout and fix in check.stdout, check.stdout
    prepare = emu("hosts", "prepare", "-q", str(inventory))
    assert prepare.returncode == 1 and said in prepare.stderr and fix in prepare.stderr, prepare.stderr
    assert swarm_state(lab.host("h1")) == "inactive"
    runtime = SwarmRuntime(load_inventory(inventory))  # up's path: OpenSSH's tunnel to the engine's socket
    try:
        with pytest.raises(EmuError) as caught:
            runtime.engines()
    finally:
        runtime.close()
    assert said in str(caught.value) and fix in str(caught.value), caught.value
    assert known.read_text() == before  # never accepted anew


def emu(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emu.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ})
