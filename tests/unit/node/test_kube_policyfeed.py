"""The network policy agent's view fed by the API server (emu.node.kube.policyfeed):
the objects emu mirrors into the API render, on every node, the same sets and chains
as the state they come from; what the API may hold that emu cannot match matches
nothing (never everything); only what the renderer reads counts as a change.
Then through emu's real API server (TLS, RBAC) with the network policy agent's own
certificate: the agent's policy job follows kubectl-shaped writes and writes only
what changed (a pod's label: entries of one set), and the identity may do nothing else."""

from __future__ import annotations

import copy
import threading
import time
from types import SimpleNamespace

import pytest
from kube_testserver import InProcess

import emu.node.agent.__main__ as main
from emu.api.topology.load import load_text
from emu.control.apiserver import mirror_objects
from emu.control.state import plan_cluster
from emu.node import policy
from emu.node.agent.policy import PolicySync
from emu.node.kube.client import ApiError, resource_path
from emu.node.kube.policyfeed import PolicyFeed, policy_of, pod_of

LAB = """\
name: np
nodes: [{name: cp, role: control-plane}, {name: w1}, {name: w2}]
namespaces: [{name: x, labels: {team: blue}}, {name: y}]
pods:
  - {name: a, namespace: x, node: w1, labels: {pod: a}, containers: [{name: c, workload: netexec, ports: [{name: web, containerPort: 8080}]}]}
  - {name: b, namespace: x, node: w2, labels: {pod: b}, containers: [{name: c, workload: netexec, ports: [{name: web, containerPort: 9090}]}]}
  - {name: a, namespace: y, node: w1, labels: {pod: a}, containers: [{name: c, workload: netexec}]}
  - {name: b, namespace: y, node: w2, labels: {pod: b}, containers: [{name: c, workload: netexec}]}
networkPolicies:
  - name: allow-b
    namespace: x
    podSelector: {matchLabels: {pod: a}}
    ingress:
      - from: [{podSelector: {matchLabels: {pod: b}}}, {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
        ports: [{port: web}, {port: 81, endPort: 82, protocol: UDP}]
  - name: egress-dns
    namespace: x
    policyTypes: [Egress]
    egress: [{ports: [{port: 53, protocol: UDP}]}, {to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.244.0.0/16]}}]}]
  - name: deny-y
    namespace: y
    podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}
    ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}, podSelector: {}}]}]
"""


def fed(objects: list[dict]) -> PolicyFeed:
    feed = PolicyFeed()
    handlers = {"NetworkPolicy": feed.on_policy, "Pod": feed.on_pod, "Namespace": feed.on_namespace}
    for obj in objects:
        if obj["kind"] in handlers:
            handlers[obj["kind"]](copy.deepcopy(obj))
    return feed


def test_the_api_objects_of_a_state_render_every_node_s_rules_as_the_state_does():
    state = plan_cluster(load_text(LAB), "emu-np", "172.28.9.0/24")
    snapshot, _ = fed(mirror_objects(state, [], 0.0)).snapshot()
    assert {p.key: p.ip for p in snapshot.pods.values()} == {p.key: p.ip for p in state.pods.values()}
    for node in ("cp", "w1", "w2"):
        assert policy.render(snapshot, node) == policy.render(state, node), node
    assert policy.render(state, "w1").chains[policy.INGRESS_CHAIN]  # (there is something to compare)


def np(spec: dict, name: str = "p") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "x"}, "spec": spec}  # fmt: skip


def test_what_emu_cannot_match_matches_nothing_never_everything():
    ipv6_only = policy_of(np({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/8"}}]}]}))
    assert ipv6_only["policyTypes"] == ["Ingress"] and ipv6_only["ingress"] == []  # isolated, nothing allowed
    sctp = policy_of(np({"podSelector": {}, "ingress": [{"ports": [{"protocol": "SCTP", "port": 80}]}]}))
    assert sctp["ingress"] == []
    mixed = policy_of(np({"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.1.2.3/16", "except": ["10.1.5.0/24", "fd00::/64"]}},
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
        {"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}},
    ], "ports": [{"port": "web"}, {"port": 70000}, {"port": "Not_A_Name"}, {"port": 80, "endPort": 79}]}]}))
    assert mixed["ingress"] == [{"from": [{"ipBlock": {"cidr": "10.1.0.0/16", "except": ["10.1.5.0/24"]}}],
                                 "ports": [{"protocol": "TCP", "port": "web"}]}]  # fmt: skip
    assert policy_of(np({"podSelector": {"matchLabels": {"a": 1}}})) is None  # selects no pod
    feed = PolicyFeed()
    feed.on_policy(np({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}))
    assert feed.unreadable_policies() == {"x/p"} and feed.snapshot()[0].network_policies == []  # (the agent logs it)
    defaulted = policy_of(np({"podSelector": {}, "egress": [{}]}))
    assert defaulted["policyTypes"] == ["Ingress", "Egress"] and defaulted["egress"] == [{"to": [], "ports": []}]
    # A rendered policy of each kind does not fail (ipBlock host bits, ports as strings of digits).
    state = plan_cluster(load_text(LAB), "emu-np", "172.28.9.0/24")
    state.network_policies = [ipv6_only, sctp, mixed, policy_of(np({"podSelector": {}, "ingress": [
        {"ports": [{"port": "8080"}]}]}))]  # fmt: skip
    assert policy.render(state, "w1").chains


def pod(name: str, ip: str | None, labels: dict, **status) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "x", "labels": labels},
            "spec": {"nodeName": "w1", "containers": [{"name": "c", "image": "agnhost"}]},
            "status": {**({"podIP": ip, "podIPs": [{"ip": ip}]} if ip else {}), **status}}  # fmt: skip


def test_only_what_the_rules_read_is_a_change():
    woken = []
    feed = PolicyFeed(lambda: woken.append(1))
    feed.on_pod(pod("a", "10.244.1.5", {"app": "web"}, phase="Running"))
    assert feed.changes == 1 and len(woken) == 1
    feed.on_pod(pod("a", "10.244.1.5", {"app": "web"}, phase="Running", conditions=[{"type": "Ready"}]))
    assert feed.changes == 1 and len(woken) == 1  # its kubelet's status write: nothing for the rules
    feed.on_pod(pod("a", "10.244.1.5", {"app": "api"}, phase="Running"))
    assert feed.changes == 2 and feed.snapshot()[0].pods["x/a"].labels == {"app": "api"}
    feed.on_pod(pod("a", "10.244.1.5", {"app": "api"}, phase="Succeeded"))  # its address may be reused
    assert "x/a" not in feed.snapshot()[0].pods
    assert pod_of(pod("n", None, {})) is None
    assert pod_of({**pod("h", "172.28.0.3", {}), "spec": {"hostNetwork": True}}) is None
    state, version = feed.snapshot()
    assert feed.snapshot() == (state, version)  # unchanged: the same state, not rendered again


# ---- through the API server, with the agent's own job ----------------------------------------


class Kernel:
    """What PolicySync runs, recorded (ipset and iptables inputs); nothing is done."""

    def __init__(self):
        self.calls: list[tuple[list[str], str]] = []
        self.lock = threading.Condition()

    def __call__(self, argv, input=None, **kwargs):
        with self.lock:
            self.calls.append((list(argv), input or ""))
            self.lock.notify_all()
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    def writes(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(argv[0], text) for argv, text in self.calls if argv[0] in ("ipset", "iptables-restore")]


NAMESPACES = resource_path("v1", "namespaces")
PODS = resource_path("v1", "pods", "x")
POLICIES = resource_path("networking.k8s.io/v1", "networkpolicies", "x")


@pytest.fixture()
def agent(tmp_path):
    server = InProcess(tmp_path)
    admin = server.client()
    admin.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
    for name, ip, labels in (("server", "10.244.1.5", {"app": "server"}), ("client", "10.244.2.6", {})):
        obj = pod(name, None, labels)
        obj["spec"]["nodeName"] = "w1" if name == "server" else "w2"
        created = admin.create(PODS, obj)
        admin.update(PODS + f"/{name}/status", {**created, "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
    state = plan_cluster(load_text("name: np\nnodes: [{name: cp, role: control-plane}, {name: w1}, {name: w2}]\n"),
                         "emu-np", "172.28.9.0/24")  # fmt: skip
    snapshot = tmp_path / "state.json"
    snapshot.write_text(state.to_json())
    agent = main.Agent("w1", snapshot=str(snapshot), proxy_from="state", policy_from="api")
    agent.netpol.connect = lambda state, node: server.client("network-policy")  # its certificate and RBAC role
    kernel = Kernel()
    agent.policies = PolicySync(main.log, run=kernel)
    agent.load()
    agent.policy_job.start()
    yield agent, admin, kernel, server
    agent.netpol.stop()
    server.stop()


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def deny_all_but(labels: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "server", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": labels}}]}]}}  # fmt: skip


def test_the_policy_job_follows_the_api_and_a_label_change_writes_one_set_s_entries(agent):
    agent, admin, kernel, server = agent
    admin.create(POLICIES, deny_all_but({"role": "client"}))
    assert wait_until(lambda: policy.INGRESS_CHAIN in (agent.policies.chains or {})), "the policy reached the rules"
    chains = agent.policies.chains
    assert any("x/server" in rule for rule in chains[policy.INGRESS_CHAIN])
    assert agent.policies.sets[policy.INGRESS_ISOLATED][1] == ("10.244.1.5",)
    allowed = next(name for name, (kind, entries) in agent.policies.sets.items() if name.startswith("EMU-NPS"))
    assert agent.policies.sets[allowed][1] == ()
    before = len(kernel.writes())
    # kubectl label pod client role=client: one set gains the client's address; no chain is written.
    current = admin.get(PODS + "/client")
    current["metadata"]["labels"] = {"role": "client"}
    admin.update(PODS + "/client", current)
    assert wait_until(lambda: agent.policies.sets[allowed][1] == ("10.244.2.6",))
    assert kernel.writes()[before:] == [("ipset", f"add {allowed} 10.244.2.6 -exist\n")]
    # Its status written again (as its kubelet does): nothing to write.
    admin.update(PODS + "/client/status", {**admin.get(PODS + "/client"), "status": {
        "podIP": "10.244.2.6", "podIPs": [{"ip": "10.244.2.6"}], "phase": "Running"}})  # fmt: skip
    time.sleep(0.3)
    assert len(kernel.writes()) == before + 1
    # The policy deleted: no policy left, its chains and sets go.
    admin.delete(POLICIES + "/server")
    assert wait_until(lambda: agent.policies.chains == {} and agent.policies.sets == {})


def test_the_network_policy_identity_may_list_and_watch_what_it_renders_and_nothing_else(agent):
    _, _, _, server = agent
    identity = server.client("network-policy")
    for path in (resource_path("networking.k8s.io/v1", "networkpolicies"), resource_path("v1", "pods"),
                 resource_path("v1", "namespaces")):
        assert identity.list(path)["items"] is not None
    for path in (resource_path("v1", "secrets"), resource_path("v1", "services"), resource_path("v1", "nodes")):
        with pytest.raises(ApiError) as caught:
            identity.list(path)
        assert caught.value.code == 403
    with pytest.raises(ApiError) as caught:
        identity.create(POLICIES, deny_all_but({}))
    assert caught.value.code == 403
    with pytest.raises(ApiError) as caught:  # kube-proxy's identity may not read policies
        server.client("kube-proxy").list(resource_path("networking.k8s.io/v1", "networkpolicies"))
    assert caught.value.code == 403


def test_wait_revision_answers_once_the_policy_rules_too_reflect_the_revision(tmp_path):
    """GET /wait?revision=R (`emu up`'s and `emu apply`'s wait) covers the policy rules: an
    `emu apply` of a NetworkPolicy returns once every node enforces it."""
    from test_agent_proxy_api import Nothing, RecordedRules

    server = InProcess(tmp_path, bookmark_interval=3600)  # no bookmarks: catching up must list
    admin = server.client()
    admin.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
    created = admin.create(PODS, pod("server", None, {"app": "server"}))
    status = {"podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]}
    admin.update(PODS + "/server/status", {**created, "status": status})
    state = plan_cluster(load_text("name: np\nnodes: [{name: cp, role: control-plane}, {name: w1}]\n"),
                         "emu-np", "172.28.9.0/24")  # fmt: skip
    snapshot = tmp_path / "state.json"
    snapshot.write_text(state.to_json())
    agent = main.Agent("w1", snapshot=str(snapshot), proxy_from="api")
    assert agent.netpol is not None  # (--policy-from follows --proxy-from)
    agent.api.connect = lambda state, name: server.client("kube-proxy")
    agent.netpol.connect = lambda state, name: server.client("network-policy")
    agent.proxy = RecordedRules()
    agent.ingress, agent.load_balancers = Nothing(), Nothing()
    agent.health.synced = lambda *args: None
    agent.policies = PolicySync(main.log, run=Kernel())
    agent.load()
    agent.syncer.start()
    agent.policy_job.start()
    try:
        made = admin.create(POLICIES, deny_all_but({"role": "client"}))
        later = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "later"}}
        revision = int(admin.create(resource_path("v1", "configmaps", "x"), later)["metadata"]["resourceVersion"])
        assert revision > int(made["metadata"]["resourceVersion"])
        answer = agent.wait_revision(revision, timeout=30)
        assert answer["programmed"] and answer["policyRevision"] >= revision, answer
        assert any("x/server" in rule for rule in agent.policies.chains[policy.INGRESS_CHAIN])
    finally:
        agent.netpol.stop()
        for informer in agent.api.informers:
            informer.stop()
        server.stop()


def test_a_namespace_label_change_writes_one_set_s_entries(agent):
    agent, admin, kernel, server = agent
    admin.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}})
    other = pod("visitor", None, {})
    other["metadata"]["namespace"] = "y"
    created = admin.create(resource_path("v1", "pods", "y"), other)
    status = {"podIP": "10.244.2.9", "podIPs": [{"ip": "10.244.2.9"}]}
    admin.update(resource_path("v1", "pods", "y", "visitor", "status"), {**created, "status": status})
    from_blue = deny_all_but({})
    from_blue["spec"]["ingress"] = [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]
    admin.create(POLICIES, from_blue)
    assert wait_until(lambda: policy.INGRESS_CHAIN in (agent.policies.chains or {}))
    allowed = next(name for name in agent.policies.sets if name.startswith("EMU-NPS"))
    assert agent.policies.sets[allowed][1] == ()
    before = len(kernel.writes())
    # kubectl label namespace y team=blue: its pod joins the set; nothing else is written.
    admin.patch(resource_path("v1", "namespaces", "", "y"), {"metadata": {"labels": {"team": "blue"}}})
    assert wait_until(lambda: agent.policies.sets[allowed][1] == ("10.244.2.9",))
    assert kernel.writes()[before:] == [("ipset", f"add {allowed} 10.244.2.9 -exist\n")]
