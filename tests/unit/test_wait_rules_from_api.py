"""`emu up`'s wait for the agents' rules from the API server (Cluster.wait_rules_from_api),
against a runtime that answers as the nodes would: the EndpointSlices are compared with
what the EndpointSlice controller makes of the pods listed (emu.apiserver's own code),
and the revision the agents are asked for is the newest of the lists'; an agent that does
not get there is named with what it had seen."""

from __future__ import annotations

import json

import pytest

from emu.api.topology.load import load_text
from emu.control.cluster import Cluster
from emu.control.runtime.provider import ExecResult
from emu.control.state import plan_cluster
from emu.errors import EmuError
from emu.node.plan import cni

LAB = """\
name: lab
nodes:
  - {name: cp, role: control-plane}
  - {name: w1}
"""


def items(kind: str, rv: int, objects: list[dict]) -> dict:
    return {"kind": f"{kind}List", "metadata": {"resourceVersion": str(rv)}, "items": objects}


def pod(name: str, ip: str, ready: bool) -> dict:
    return {"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "w1", "containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}  # fmt: skip


NODE = {"metadata": {"name": "w1"}, "status": {}}
SERVICE = {"metadata": {"name": "web", "namespace": "default"},
           "spec": {"selector": {"app": "web"},
                    "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}  # fmt: skip


def endpoint_slice(*endpoints: tuple[str, bool]) -> dict:
    return {"metadata": {"name": "web-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in endpoints]}  # fmt: skip


class Nodes:
    """The runtime: the API server's lists (one answer per exec, the last repeated), and the agents' /wait answers."""

    def __init__(self, lists: list[tuple], agents: dict[str, dict]):
        self.lists = lists
        self.agents = agents
        self.asked: list[str] = []

    def exec(self, container: str, argv: list[str]) -> ExecResult:
        script = argv[-1]
        if "/wait?revision=" in script:
            self.asked.append(script)
            return ExecResult(0, "\n".join(f"{node} {json.dumps(answer)}" for node, answer in self.agents.items()))
        if "tail" in argv:
            return ExecResult(0, "the agent's log")
        pods, slices, rv = self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]
        parts = [items("Pod", rv - 3, pods), items("Node", rv - 2, [NODE]), items("Service", rv - 1, [SERVICE]),
                 items("EndpointSlice", rv, slices)]  # fmt: skip
        return ExecResult(0, "".join(json.dumps(p) + "\n--- emu list ---\n" for p in parts))


@pytest.fixture()
def cluster(monkeypatch):
    monkeypatch.setattr(cni, "PROXY_FROM_API", True)
    state = plan_cluster(load_text(LAB), "emu-lab", "172.28.0.0/24")
    state.api_endpoint = "https://127.0.0.1:6443"
    return state


def test_waits_for_the_slices_to_reflect_the_ready_pods_then_asks_every_agent_for_that_revision(cluster, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    programmed = {"programmed": True, "revision": 40}
    nodes = Nodes([
        ([pod("a", "10.244.1.2", True)], [endpoint_slice(("10.244.1.2", False))], 30),  # the controller behind
        ([pod("a", "10.244.1.2", True)], [endpoint_slice(("10.244.1.2", True))], 40),
    ], {"cp": programmed, "w1": programmed})  # fmt: skip
    assert Cluster("lab", runtime=nodes).wait_rules_from_api(cluster, timeout=30) == 40
    assert len(nodes.asked) == 1 and "revision=40&" in nodes.asked[0]
    assert all(f"http://{n.node_ip}:10250/wait?revision=40" in nodes.asked[0] for n in cluster.nodes)


def test_an_agent_that_does_not_get_there_is_named_with_what_it_saw(cluster):
    behind = {"programmed": False, "caughtUp": True, "seenRevision": 40, "syncedRevision": 12}
    nodes = Nodes([([pod("a", "10.244.1.2", True)], [endpoint_slice(("10.244.1.2", True))], 40)],
                  {"cp": {"programmed": True}, "w1": behind})  # fmt: skip
    with pytest.raises(EmuError, match=r"node w1: its service rules did not reflect the API server's Services and "
                                       r"EndpointSlices at resourceVersion 40 .* made from 12"):  # fmt: skip
        Cluster("lab", runtime=nodes).wait_rules_from_api(cluster, timeout=30)


def test_slices_that_never_catch_up_are_an_error_that_says_which_service_and_how(cluster, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    nodes = Nodes([([pod("a", "10.244.1.2", True)], [], 40)], {})
    with pytest.raises(EmuError, match=r"did not reflect its pods' readiness .* service default/web lacks "
                                       r"\[10.244.1.2 ready=True\]"):  # fmt: skip
        Cluster("lab", runtime=nodes).wait_rules_from_api(cluster, timeout=0.01)


def test_nothing_is_waited_for_while_the_agents_read_the_state_file(cluster, monkeypatch):
    monkeypatch.setattr(cni, "PROXY_FROM_API", False)
    assert Cluster("lab", runtime=Nodes([], {})).wait_rules_from_api(cluster) == 0


class Flaky(Nodes):
    """Agents whose first `empty` answers are empty (an empty reply), then `answer`."""

    def __init__(self, lists, agents, empty: int):
        super().__init__(lists, agents)
        self.empty = empty

    def exec(self, container, argv):
        script = argv[-1]
        if "/wait?revision=" in script and self.empty > 0:
            self.empty -= 1
            self.asked.append(script)
            return ExecResult(0, "\n".join(f"{node} " for node in self.agents))
        return super().exec(container, argv)


def test_an_agent_that_gives_no_answer_is_asked_again_until_the_time_is_up(cluster, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    programmed = {"programmed": True, "revision": 40}
    lists = [([pod("a", "10.244.1.2", True)], [endpoint_slice(("10.244.1.2", True))], 40)]
    nodes = Flaky(lists, {"cp": programmed, "w1": programmed}, empty=2)
    assert Cluster("lab", runtime=nodes).wait_rules_from_api(cluster, timeout=30) == 40
    assert len(nodes.asked) == 3
    never = Flaky(lists, {"cp": programmed, "w1": programmed}, empty=10**6)
    with pytest.raises(EmuError, match=r"node (cp|w1): asking its agent .* resourceVersion 40 failed"):
        Cluster("lab", runtime=never).wait_rules_from_api(cluster, timeout=0.3)
