"""emu.control.hosts: telling engines and machines apart (issue 27), without SSH or Docker."""

from __future__ import annotations

import pytest

from emu.api.topology.model import Host
from emu.control.hosts import (
    ERROR,
    OK,
    Identity,
    evaluate,
    identity_clashes,
    parse_identity,
    parse_probe,
    probe_script,
    refuse_clashes,
)
from emu.errors import EmuError

H1 = Host(name="h1", address="10.0.0.1")
H2 = Host(name="h2", address="10.0.0.2")
H3 = Host(name="h3", address="10.0.0.3")


def ids(engine: str = "", node: str = "", machine: str = "") -> Identity:
    return Identity(engine, node, machine)


def test_distinct_hosts_and_unknown_parts_clash_with_nothing():
    identities = {"h1": ids("E1", "N1", "M1"), "h2": ids("E2", "", "M2"), "h3": ids()}
    assert identity_clashes([H1, H2, H3], identities) == []
    assert identity_clashes([H1, H2], {"h1": ids(), "h2": ids()}) == []


def test_one_engine_through_two_machines_names_the_socket():
    """The issue's inventory: no dockerSocket, so every host's SSH reached /var/run/docker.sock of one engine."""
    identities = {"h1": ids("E1", "", "M1"), "h2": ids("E1", "", "M2"), "h3": ids("E1", "", "M3")}
    clashes = identity_clashes([H1, H2, H3], identities)
    assert [(c.host, c.first, c.field) for c in clashes] == [("h2", "h1", "dockerSocket"), ("h3", "h1", "dockerSocket")]
    assert "h2 and h1 are one Docker engine" in clashes[0].message
    assert "/var/run/docker.sock (the default, as no dockerSocket is given)" in clashes[0].message
    assert clashes[0].fix == "set h2's dockerSocket to the socket of h2's own engine"


def test_one_address_twice_names_the_address():
    twin = Host(name="h2", address="10.0.0.1")
    clashes = identity_clashes([H1, twin], {"h1": ids("E1", "", "M1"), "h2": ids("E1", "", "M1")})
    assert [(c.host, c.field) for c in clashes] == [("h2", "address")]
    assert "both have the address 10.0.0.1" in clashes[0].message


def test_a_dns_name_and_an_address_of_one_machine_name_the_address():
    named = Host(name="h2", address="one.example")
    clashes = identity_clashes([H1, named], {"h1": ids("E1", "", "M1"), "h2": ids("E1", "", "M1")})
    assert [(c.field, c.shared) for c in clashes] == [("address", "engine")]
    assert "10.0.0.1 and one.example are one machine" in clashes[0].message


def test_an_engine_url_twice_names_the_engine():
    a = Host(name="h1", address="10.0.0.1", engine="tcp://10.0.0.1:2376")
    b = Host(name="h2", address="10.0.0.2", engine="tcp://10.0.0.1:2376")
    clashes = identity_clashes([a, b], {"h1": ids("E1"), "h2": ids("E1")})
    assert [(c.host, c.field) for c in clashes] == [("h2", "engine")]


def test_two_engines_on_one_machine_and_a_copied_swarm_node():
    machine = identity_clashes([H1, H2], {"h1": ids("E1", "", "M1"), "h2": ids("E2", "", "M1")})
    assert [(c.shared, c.field) for c in machine] == [("machine", "address")]
    assert "systemd-machine-id-setup" in machine[0].fix  # a cloned VM image
    node = identity_clashes([H1, H2], {"h1": ids("E1", "N1", "M1"), "h2": ids("E2", "N1", "M2")})
    assert [c.shared for c in node] == ["swarm node"]
    assert "docker swarm leave --force on h2" in node[0].fix


def test_refusal_names_every_clash():
    identities = {"h1": ids("E1"), "h2": ids("E1"), "h3": ids("E1")}
    with pytest.raises(EmuError) as caught:
        refuse_clashes([H1, H2, H3], identities, "prepare them")
    message = str(caught.value)
    assert message.startswith("the inventory names one engine twice, so emu does not prepare them:")
    assert "h2 and h1 are one Docker engine" in message and "h3 and h1 are one Docker engine" in message
    assert message.count("fix: set h") == 2


def test_parse_identity():
    assert parse_identity("HRSN:4T3G abc123\n", "3d12\n") == Identity("HRSN:4T3G", "abc123", "3d12")
    assert parse_identity("HRSN:4T3G \n") == Identity("HRSN:4T3G", "", "")
    assert parse_identity("") == Identity()


BASE = """\
docker_rc=0
docker_out=20.10.24
swarm=inactive
"""


def test_check_reports_the_clash_on_the_later_host():
    probes = {
        "h1": parse_probe(BASE + "engine_id=E1\nnode_id=\nmachine_id=M1\n"),
        "h2": parse_probe(BASE + "engine_id=E1\nnode_id=\nmachine_id=M2\n"),
    }
    reports = evaluate([H1, H2], probes)
    assert reports[0].finding("identity").level == OK
    found = reports[1].finding("identity")
    assert (found.level, found.value) == (ERROR, "=h1")
    assert "dockerSocket" in found.fix and not reports[1].ok


def test_the_probe_asks_for_the_identity():
    script = probe_script(H1, ["10.0.0.2"])
    assert "{{.ID}} {{.Swarm.NodeID}}" in script and "/etc/machine-id" in script and "__" not in script
