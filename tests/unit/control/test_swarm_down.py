"""SwarmRuntime over hosts some of which do not answer (a stopped or restarting engine): the hosts that answer
are driven, the others named with their reason; the swarm nodes a manager counts as down. The engines here
are stand-ins answering `docker info` and `docker node ls` as Docker does (no container is run: that is
tests/integration/test_host_restart.py's)."""

import pytest

from emu.api.topology.model import Host
from emu.control.runtime import swarm
from emu.control.runtime.swarm import SwarmRuntime
from emu.errors import EmuError

HOSTS = [Host(name=f"h{i}", address=f"10.0.0.{i}", engine="tcp://10.0.0.%d:2375" % i) for i in (1, 2, 3)]


class Api:
    def __init__(self, node_id: str, manager: bool, nodes: list[dict]):
        self.node_id, self.manager, self._nodes = node_id, manager, nodes

    def info(self) -> dict:
        return {"ID": f"engine-{self.node_id}",
                "Swarm": {"NodeID": self.node_id, "LocalNodeState": "active", "ControlAvailable": self.manager}}

    def nodes(self) -> list[dict]:
        return self._nodes

    def containers(self, **filters) -> list[dict]:
        return []


class Engine:
    def __init__(self, host: str, api: Api):
        self.host, self.api = host, api


@pytest.fixture
def runtime(monkeypatch):
    nodes = [
        {"ID": "n1", "Status": {"State": "ready", "Addr": "10.0.0.1"}},
        {"ID": "n2", "Status": {"State": "ready", "Addr": "10.0.0.2"}},
        {"ID": "n3", "Status": {"State": "down", "Message": "heartbeat failure", "Addr": "10.0.0.3"}},
    ]
    answering = {"h1": Api("n1", True, nodes), "h2": Api("n2", False, nodes)}

    def engine_for(host, tunnels, timeout=60):
        if host.name not in answering:
            raise EmuError(f"host {host.name}: cannot reach its Docker engine (connection refused)")
        return Engine(host.name, answering[host.name])

    monkeypatch.setattr(swarm, "engine_for", engine_for)
    monkeypatch.setattr(swarm, "DockerRuntime", Engine)  # what unreachable_hosts counts as connected
    made = SwarmRuntime(HOSTS)
    yield made
    made.close()


def test_hosts_that_do_not_answer_are_named_and_the_others_driven(runtime):
    assert runtime.unreachable_hosts() == {"h3": "host h3: cannot reach its Docker engine (connection refused)"}
    assert sorted(runtime.engines()) == ["h1", "h2"]
    with pytest.raises(EmuError, match="host h3: cannot reach its Docker engine"):
        runtime.engine("h3")


def test_a_strict_command_is_refused_naming_the_host(runtime):
    with pytest.raises(EmuError, match="host h3: cannot reach its Docker engine"):
        runtime.engines()


def test_swarm_nodes_down_as_the_manager_sees_them_found_by_address_for_a_host_that_does_not_answer(runtime):
    assert runtime.swarm_nodes_down() == {"h3": "down (heartbeat failure)"}
