"""emu.control.hosts against real hosts: three Docker engines of tests/hostlab.py (each in its own network namespace,
with its own sshd), checked and prepared over real SSH. Only the lab's own daemons are driven; the main
engine only provides the image to ship (a tiny one made here)."""

from __future__ import annotations

import json
import subprocess
import tarfile
import io

import pytest

from emu.control.hosts import ERROR, check_hosts, format_reports, leave_swarm, prepare_hosts
from tests import hostlab as lab_module
from tests.hostlab import hostlab  # noqa: F401  (the session fixture)

PROBE_IMAGE = "emu-hostlab/probe:1"


def quiet(message: str) -> None:
    print(message)


@pytest.fixture(scope="module")
def probe_image() -> str:
    """A tiny image on this machine's engine (no registry needed): one file, made with docker import."""
    if subprocess.run(["docker", "image", "inspect", PROBE_IMAGE], capture_output=True, timeout=60).returncode != 0:
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            payload = b"emu hostlab probe image\n"
            info = tarfile.TarInfo("probe.txt")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        subprocess.run(["docker", "import", "-", PROBE_IMAGE], input=data.getvalue(), check=True,
                       capture_output=True, timeout=120)
    return PROBE_IMAGE


@pytest.fixture(scope="module")
def hosts(hostlab):
    """The lab's hosts as inventory entries; whatever swarm the tests make is left at the end, even on failure."""
    models = hostlab.models()
    yield models
    try:
        leave_swarm(models, progress=quiet)
    except Exception as error:  # a host stopped by a test; the lab's down cleans up anyway
        print(f"leave_swarm: {error}")


def manager_nodes(lab: lab_module.Lab) -> list[dict]:
    for host in lab.hosts:
        info = lab_module.check_guard(host)
        if info["Swarm"].get("ControlAvailable"):
            ids = lab_module.docker(host, "node", "ls", "-q").stdout.split()
            return json.loads(lab_module.docker(host, "node", "inspect", *ids).stdout)
    return []


def test_inventory_matches_the_host_model(hostlab):
    import yaml

    from emu.api.topology.model import Inventory

    inventory = Inventory.model_validate(yaml.safe_load(hostlab.inventory_yaml()))
    assert [h.name for h in inventory.hosts] == ["h1", "h2", "h3"]
    assert inventory.hosts[1].address == "10.213.0.12"
    assert inventory.hosts[1].docker_socket == "/run/emu-hostlab/h2/docker.sock"
    assert inventory.hosts[1].engine == "ssh"


def engine_version(host: lab_module.LabHost) -> str:
    """The version the host's engine gives on its own socket (no SSH on the way)."""
    return lab_module.docker(host, "version", "--format", "{{.Server.Version}}").stdout.strip()


def test_check_finds_healthy_hosts(hostlab, hosts):
    reports = check_hosts(hosts, progress=quiet)
    print(format_reports(reports))
    assert [r.host for r in reports] == ["h1", "h2", "h3"]
    for report in reports:
        assert not report.problems, format_reports(reports)
        assert report.finding("ssh").value == "ok"
        # The version read over SSH is the one of the engine at the host's socket.
        assert report.finding("docker").value == engine_version(hostlab.host(report.host)), report.host
        assert report.finding("ports").value in ("ok", "not listening")


def test_prepare_forms_a_swarm_and_ships_images(hostlab, hosts, probe_image):
    for host in hostlab.hosts:  # the data roots keep images between runs: make this one really travel
        lab_module.docker(host, "image", "rm", "-f", probe_image, check=False)
    shipped = prepare_hosts(hosts, [probe_image], progress=quiet)
    assert sorted(s.host for s in shipped) == ["h1", "h2", "h3"]
    assert all(s.images == [probe_image] and s.bytes > 0 for s in shipped)
    for host in hostlab.hosts:
        assert lab_module.docker(host, "image", "inspect", probe_image, check=False).returncode == 0

    nodes = manager_nodes(hostlab)
    assert len(nodes) == 3
    assert all(n["Status"]["State"] == "ready" for n in nodes)
    assert sorted(n["Spec"]["Labels"].get("io.emu.host") for n in nodes) == ["h1", "h2", "h3"]
    assert sorted(n["Status"]["Addr"] for n in nodes) == ["10.213.0.11", "10.213.0.12", "10.213.0.13"]

    # Idempotent: a second prepare only checks.
    messages: list[str] = []
    assert prepare_hosts(hosts, [probe_image], progress=messages.append) == []
    assert not [m for m in messages if "joined" in m or "initialised" in m or "loaded" in m], messages


def test_check_in_a_swarm_reaches_every_port(hosts):
    reports = check_hosts(hosts, progress=quiet)
    print(format_reports(reports))
    for report in reports:
        assert not report.problems, format_reports(reports)
        assert report.finding("ports").value == "ok"


def test_a_stopped_engine_is_named_and_prepare_brings_the_host_back(hostlab, hosts, probe_image):
    h3 = hostlab.host("h3")
    lab_module.stop_dockerd(h3)
    try:
        reports = check_hosts(hosts, progress=quiet)
        text = format_reports(reports)
        print(text)
        by_host = {r.host: r for r in reports}
        assert by_host["h1"].ok and by_host["h2"].ok
        [error] = by_host["h3"].errors
        assert error.check == "docker" and error.level == ERROR
        assert f"no Docker engine answers at {h3.socket} on h3" in error.message
        assert "h3: error: no Docker engine answers" in text
        with pytest.raises(Exception, match="h3"):
            prepare_hosts(hosts, [probe_image], progress=quiet)
    finally:
        hostlab_again = lab_module.up(3, progress=quiet)  # restarts h3's engine (its swarm state is gone)
    assert hostlab_again.hosts == hostlab.hosts
    # h3 rejoins as a new node; the node it was is removed from the manager's list.
    prepare_hosts(hosts, [probe_image], progress=quiet)
    nodes = manager_nodes(hostlab)
    assert len(nodes) == 3 and all(n["Status"]["State"] == "ready" for n in nodes)


def test_an_unreachable_host_is_reported(hosts):
    from emu.api.topology.model import Host

    ghost = Host(name="ghost", address="10.213.0.250", ssh_key=hosts[0].ssh_key, known_hosts=hosts[0].known_hosts)
    reports = check_hosts([*hosts[:1], ghost], progress=quiet)
    [error] = reports[1].errors
    assert error.check == "ssh" and "root@10.213.0.250:22" in error.message
    # The reachable host's probe of the ghost's swarm ports: blocked or unreachable, never fine.
    assert any(f.check == "ports" and f.level == ERROR and "ghost" in f.message for f in reports[0].findings)
