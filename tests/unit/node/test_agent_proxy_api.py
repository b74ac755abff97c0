"""The node agent's kube-proxy part fed by the API server (--proxy-from api):
emu's real API server in this process (TLS, RBAC), the agent's real sync job,
feed and informers with kube-proxy's certificate; only the writing of rules
into the kernel is recorded instead of done (the proxiers' rendering of a feed's
snapshot is proven equal to the state's in test_kube_proxyfeed; packets through
those rules in tests/integration/test_proxy_from_api.py).

What the agent's rules are made of here comes from the API only: its state
file declares a service the API does not have, and lacks the one the API has."""

from __future__ import annotations

import threading

import pytest
from kube_testserver import InProcess

import emu.node.agent.__main__ as main
from emu.api.topology.load import load_text
from emu.control.state import plan_cluster
from emu.node.kube.client import resource_path

LAB = """\
name: lab
nodes:
  - {name: control-plane, role: control-plane}
  - {name: worker}
services:
  - name: only-in-the-state-file
    selector: {app: nobody}
    ports: [{port: 81, targetPort: 8080}]
"""
SERVICES = resource_path("v1", "services", "default")
SLICES = resource_path("discovery.k8s.io/v1", "endpointslices", "default")


class RecordedRules:
    """ProxySync's place in the agent: what each sync would write (services and ready endpoints)."""

    def __init__(self):
        self.syncs: list[tuple[dict, dict]] = []
        self.changed = threading.Condition()
        self.check_period = 3600.0

    def sync(self, state, node, endpoints) -> int:
        with self.changed:
            self.syncs.append(({k: s.cluster_ip for k, s in state.services.items()},
                               {k: {p: [e.address for e in eps] for p, eps in by_port.items()}
                                for k, by_port in endpoints.items()}))  # fmt: skip
            self.changed.notify_all()
        return 1

    def check(self, nodes: int = 1) -> list[str]:
        return []

    def due(self, nodes: int = 1) -> bool:
        return False

    def next_look_in(self) -> float:
        return self.check_period

    def wait_for(self, predicate, timeout: float = 30) -> bool:
        """Whether a sync whose (services, endpoints) satisfy the predicate came within `timeout` (a bound)."""
        with self.changed:
            return self.changed.wait_for(lambda: bool(self.syncs) and predicate(*self.syncs[-1]), timeout)


class Nothing:
    def sync(self, *args) -> int:
        return 0

    def update(self, *args) -> None:
        pass

    def wait_revision(self, *args) -> bool:
        return True


def node(name: str, ip: str, ready: str = "True") -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"podCIDR": "10.244.0.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                       "conditions": [{"type": "Ready", "status": ready}]}}  # fmt: skip


def web_service() -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}


def web_slice(ready: bool) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abcde", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "worker",
                           "conditions": {"ready": ready, "serving": ready, "terminating": False}}]}  # fmt: skip


@pytest.fixture()
def setup(tmp_path):
    server = InProcess(tmp_path, bookmark_interval=3600)  # no bookmarks: catching up must list
    admin = server.client()
    admin.create(resource_path("v1", "nodes"), node("control-plane", "172.28.0.2"))
    admin.create(resource_path("v1", "nodes"), node("worker", "172.28.0.3"))
    state = plan_cluster(load_text(LAB), "emu-lab", "172.28.0.0/24")
    snapshot = tmp_path / "state.json"
    snapshot.write_text(state.to_json())
    agent = main.Agent("worker", snapshot=str(snapshot), proxy_from="api", policy_from="state")
    agent.api.connect = lambda state, name: server.client("kube-proxy")  # kube-proxy's certificate and RBAC role
    agent.proxy = rules = RecordedRules()
    agent.policies, agent.ingress, agent.load_balancers = Nothing(), Nothing(), Nothing()
    agent.health.synced = lambda *args: None  # (its health check servers would listen on this machine's ports)
    agent.load()
    agent.syncer.start()
    yield agent, admin, rules
    for informer in agent.api.informers:
        informer.stop()
    server.stop()


def test_rules_follow_services_and_endpoint_slices_written_to_the_api_not_the_state_file(setup):
    agent, admin, rules = setup
    assert rules.wait_for(lambda services, endpoints: services == {}), "the first sync, from the API's empty view"
    ip = admin.create(SERVICES, web_service())["spec"]["clusterIP"]
    assert rules.wait_for(lambda services, endpoints: services == {"default/web": ip}
                          and endpoints["default/web"] == {"": []})  # fmt: skip
    admin.create(SLICES, web_slice(ready=True))
    assert rules.wait_for(lambda services, endpoints: endpoints["default/web"] == {"": ["10.244.1.5:8080"]})
    admin.update(SLICES + "/web-abcde", {**web_slice(ready=False),
                                         "metadata": {**admin.get(SLICES + "/web-abcde")["metadata"]}})  # fmt: skip
    assert rules.wait_for(lambda services, endpoints: endpoints["default/web"] == {"": []}), "the pod turned unready"
    assert all("default/only-in-the-state-file" not in services for services, _ in rules.syncs)
    assert agent.endpoints["default/web"] == {"": []}  # GET /endpoints answers from the same view


def test_wait_revision_answers_once_the_rules_reflect_a_revision_written_anywhere(setup):
    """GET /wait?revision=R (`emu up`'s wait): R is past every service's and slice's last
    change (a ConfigMap written after them), which no watch of the agent sees; the agent
    lists again, syncs, and answers programmed at R or later."""
    agent, admin, rules = setup
    assert rules.wait_for(lambda services, endpoints: True)
    admin.create(SERVICES, web_service())
    later = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "later"}}
    revision = int(admin.create(resource_path("v1", "configmaps", "default"), later)["metadata"]["resourceVersion"])
    answer = agent.wait_revision(revision, timeout=30)
    assert answer["programmed"] and answer["caughtUp"] and answer["syncedRevision"] >= revision, answer
    assert "default/web" in rules.syncs[-1][0]
    handle = main.make_handler(agent)
    import io

    from emu.node.agent import web

    out = io.BytesIO()
    handle(web.Request("GET", f"/wait?revision={revision}&timeout=30", "127.0.0.1", {}, b""), out)
    assert out.getvalue().startswith(b"HTTP/1.1 200") and b'"programmed": true' in out.getvalue()


def test_a_node_not_ready_in_the_api_leaves_the_load_balancer_owner_choice(setup):
    agent, admin, rules = setup
    lost: list[tuple] = []
    agent.load_balancers.update = lambda state, endpoints, nodes: lost.append(tuple(nodes))
    assert rules.wait_for(lambda services, endpoints: True)
    path = resource_path("v1", "nodes", "", "control-plane", "status")
    current = admin.get(resource_path("v1", "nodes", "", "control-plane"))
    current["status"]["conditions"] = [{"type": "Ready", "status": "Unknown"}]
    admin.update(path, current)
    with rules.changed:
        assert rules.changed.wait_for(lambda: lost and lost[-1] == ("control-plane",), 30), lost


def test_an_agent_option_says_where_rules_come_from():
    assert main.parse_options(["--node", "w1"])["--proxy-from"] == "state"
    assert main.parse_options(["--node", "w1", "--proxy-from", "api"])["--proxy-from"] == "api"
    with pytest.raises(SystemExit, match="expected one of state, api"):
        main.parse_options(["--node", "w1", "--proxy-from", "hub"])
    agent = main.Agent("w1", snapshot="/nonexistent")
    assert agent.wait_revision(5, timeout=1)["error"].startswith("this agent's rules come from the state file")


def test_the_configuration_passed_at_every_sync_wakes_the_sync_only_when_it_changed():
    """ApiSource.start hands the state's networking to the feed at every sync: an unchanged
    one must not wake the sync again (it did: the sync job ran without end)."""
    from emu.node.kube.proxyfeed import ProxyFeed

    woken: list[bool] = []
    feed = ProxyFeed("worker", {"proxyMode": "iptables"}, on_change=lambda: woken.append(True))
    feed.set_networking({"proxyMode": "iptables"})
    assert woken == []
    feed.set_networking({"proxyMode": "nftables"})
    assert woken == [True] and feed.snapshot()[0].networking == {"proxyMode": "nftables"}


def test_the_hubs_readiness_reports_do_not_touch_the_rules(setup):
    """Readiness gathered by the hub still serves `emu up`'s wait for ready pods, but a
    report is no reason to make rules: only the API's view is."""
    agent, admin, rules = setup
    assert rules.wait_for(lambda services, endpoints: True)
    uids = {p.uid for p in agent.view.state.pods.values()}
    before = len(rules.syncs)
    agent.on_hub({"all": {"control-plane": {uid: True for uid in uids}}, "lost": []})
    agent.sync(agent.view)  # (as the sync job would, now: the report made the settling end)
    assert agent.synced_ready == {uid: True for uid in uids}  # the report was taken
    assert len(rules.syncs) == before
