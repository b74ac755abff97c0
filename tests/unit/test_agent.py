"""The node agent's jobs against fakes: the kubelet's readiness, the hub, the
proxy sync's repair of lost rules, and LoadBalancer ownership."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from emu.node.agent.edge import LoadBalancers
from emu.node.agent.gossip import Hub
from emu.node.agent import probes, proxysync
from emu.node.agent.probes import Kubelet
from emu.node.agent.proxysync import ProxySync, differences, hook_jumps, ipvs_table
from emu.node.proxy import iptables
from emu.node.records import PodState
from emu.node.services import service_endpoints
from emu.control.state import plan_cluster
from emu.api.topology.load import load_text


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pod(name: str, probe: dict | None = None) -> PodState:
    container = {"name": "c", "readinessProbe": probe} if probe else {"name": "c"}
    return PodState("default", name, "n1", f"10.244.1.{len(name)}", {}, [container], "x")


class FakeWatch:
    """Which pods' processes run, as ProcessWatch reports it."""

    def __init__(self, alive: dict[str, bool], started: bool = False):
        self.alive = alive
        self.started_ = started
        self.codes: dict[str, int | None] = {}  # exit codes by pod name

    def __call__(self, pod):
        return [] if self.alive.get(pod.name, False) else [c["name"] for c in pod.containers]

    def started(self, pod, container):
        return self.started_

    def exit_code(self, pod, container):
        return self.codes.get(pod.name)

    def forget(self, pods):
        pass

    watched = False  # as where pidfds cannot be had: the processes are looked at every second

    def fds(self):
        return []

    def reap(self):
        return False


def test_kubelet_ready_follows_processes_and_probe_thresholds():
    clock, results = Clock(), {"probed": [False, True, True]}
    alive = {"a": True}
    kubelet = Kubelet(
        ThreadPoolExecutor(1),
        probe=lambda p, spec: results["probed"].pop(0),
        dead=FakeWatch(alive),
        clock=clock,
    )
    a, b = pod("a"), pod("bb", {"periodSeconds": 2, "failureThreshold": 1})
    kubelet.set_pods([a, b])
    assert kubelet.step() and kubelet.ready == {a.uid: True, b.uid: False}  # b: probe failed, process not alive
    alive["bb"] = True
    assert not kubelet.step()  # nothing due yet: the probe waits its period, processes their second
    assert kubelet.next_wake() == clock.now + 1.0
    clock.now += 2
    assert kubelet.step() and kubelet.ready[b.uid]
    assert kubelet.container_readiness() == {"default/a": {"c": True}, "default/bb": {"c": True}}
    kubelet.set_pods([a])  # b is gone: its probe with it
    assert list(kubelet.probes) == []
    idle = Kubelet(ThreadPoolExecutor(1), dead=FakeWatch({}), clock=clock)
    assert idle.next_wake() == clock.now + 1.0  # no pods, never checked: nothing due before a period


def test_dead_containers_start_again_with_the_kubelets_back_off():
    clock, alive, restarted = Clock(), {"a": True}, []
    kubelet = Kubelet(
        ThreadPoolExecutor(1), dead=FakeWatch(alive, started=True),
        restart=lambda pod, name: restarted.append(clock.now), clock=clock,
    )  # fmt: skip
    a = pod("a")
    kubelet.set_pods([a])
    kubelet.step()
    assert restarted == [] and kubelet.restart_counts() == {}
    crashes = []
    for _ in range(5):  # crash at once after every start
        alive["a"] = False
        crashes.append(clock.now)
        for _ in range(200):  # the longest back-off here is 80 s: a restart never comes in 200 looks only on a bug
            if len(restarted) == len(crashes):
                break
            clock.now += 1
            kubelet.step()
        assert len(restarted) == len(crashes), f"no restart within 200 s after crash {len(crashes)}"
    delays = [start - crash for crash, start in zip(crashes, restarted)]
    assert delays == [1, 11, 21, 41, 81]  # at the next check, then 10 s, 20 s, 40 s, 80 s later
    assert kubelet.restart_counts() == {"default/a": {"c": 5}}
    assert not kubelet.ready[a.uid]
    clock.now += 700  # running fine for more than 10 minutes: the back-off is forgotten, the count is not
    kubelet.step()
    crash = clock.now
    kubelet.step()
    assert restarted[-1] == crash and kubelet.restart_counts() == {"default/a": {"c": 6}}


@pytest.mark.parametrize(
    ("policy", "code", "restarts"),
    [
        ("Always", 0, True), ("Always", 1, True),
        ("OnFailure", 0, False), ("OnFailure", 137, True), ("OnFailure", None, False),  # None: not written yet
        ("Never", 0, False), ("Never", 1, False),
    ],
)  # fmt: skip
def test_ended_containers_follow_the_pods_restart_policy(policy, code, restarts):
    clock, restarted = Clock(), []
    watch = FakeWatch({"a": False}, started=True)
    watch.codes = {"a": code}
    kubelet = Kubelet(ThreadPoolExecutor(1), dead=watch, restart=lambda p, n: restarted.append(n), clock=clock)
    a = pod("a")
    a.restart_policy = policy
    kubelet.set_pods([a])
    kubelet.step()
    clock.now += 1
    kubelet.step()
    assert bool(restarted) == restarts


def test_containers_never_started_are_left_to_the_plan():
    clock, restarted = Clock(), []
    kubelet = Kubelet(ThreadPoolExecutor(1), dead=FakeWatch({}, started=False),
                      restart=lambda pod, name: restarted.append(name), clock=clock)  # fmt: skip
    kubelet.set_pods([pod("a")])
    kubelet.step()
    assert restarted == []


def test_hub_tells_watchers_only_of_changes_and_expires_silent_nodes():
    clock = Clock()
    hub = Hub(clock=clock, grace=15)
    hub.report("n1", {"p@1": True})
    watcher = hub.subscribe()
    assert watcher.get_nowait() == {"all": {"n1": {"p@1": True}}, "lost": []}
    hub.report("n1", {"p@1": True})  # a heartbeat: nothing to tell
    assert watcher.empty()
    hub.report("n2", {"q@2": False})
    assert watcher.get_nowait() == {"node": "n2", "ready": {"q@2": False}}
    clock.now += 10
    hub.report("n2", {"q@2": True})
    watcher.get_nowait()
    clock.now += 6  # n1 silent for 16 s, n2 for 6 s
    assert hub.expire(["n1", "n2", "n3"]) == ["n1"]
    assert watcher.get_nowait() == {"node": "n1", "ready": {}, "lost": True}
    assert hub.subscribe().get_nowait()["lost"] == ["n1"]
    assert hub.expire(["n1", "n2", "n3"]) == []  # told once
    hub.report("n1", {"p@1": True})  # back
    assert watcher.get_nowait() == {"node": "n1", "ready": {"p@1": True}}
    hub.unsubscribe(watcher)
    hub.report("n1", {"p@1": False})
    assert watcher.empty()


LAB = """\
name: lab
dns: {enabled: false}
nodes: [{name: cp, role: control-plane}, {name: w1}]
deployments:
  - name: web
    replicas: 2
    template:
      labels: {app: web}
      containers: [{name: c, workload: netexec, ports: [{containerPort: 8080}]}]
services:
  - {name: web, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
  - {name: lb, type: LoadBalancer, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
"""


def lab(hosts: str = ""):
    state = plan_cluster(load_text(LAB + hosts), "emu-lab", "172.28.5.0/24")
    ready = {p.uid: True for p in state.pods.values()}
    endpoints = {key: service_endpoints(state, s, ready) for key, s in state.services.items()}
    return state, endpoints


def save_output(ruleset: iptables.Ruleset, hooks: bool = True) -> str:
    """What iptables-save would print for a kernel holding `ruleset`."""
    lines = []
    for table in ("filter", "nat"):
        lines.append(f"*{table}")
        lines += [f":{chain} - [0:0]" for chain in ruleset.get(table, {})]
        if hooks:
            lines += [f"-A {chain} -j {target}" for t, chain, target in sorted(hook_jumps()) if t == table]
        for chain, rules in ruleset.get(table, {}).items():
            lines += [f"-A {chain} {rule}" for rule in rules]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class FakeKernel:
    """iptables-restore and iptables-save against a dict, as the proxy sync calls them."""

    def __init__(self):
        self.text = ""
        self.restores: list[str] = []

    def __call__(self, argv, **kwargs):
        if argv[0] == "iptables-restore":
            self.restores.append(kwargs["input"])
            return subprocess.CompletedProcess(argv, 0, "", "")
        return subprocess.CompletedProcess(argv, 0, self.text, "")


def test_proxy_sync_repairs_a_flushed_chain_with_a_full_resync():
    state, endpoints = lab()
    kernel = FakeKernel()
    proxy = ProxySync(log=lambda message: None, run=kernel)
    assert proxy.sync(state, "w1", endpoints) > 0
    kernel.text = save_output(proxy.previous)
    assert proxy.check() == [] and proxy.check_period >= 1.0
    assert proxy.sync(state, "w1", endpoints) == 0  # nothing changed: nothing written
    flushed = {table: dict(chains) for table, chains in proxy.previous.items()}
    flushed["nat"]["KUBE-SERVICES"] = []
    kernel.text = save_output(flushed)
    assert proxy.check() == [f"nat/KUBE-SERVICES has 0 rules, not {len(proxy_rules(state, endpoints))}"]
    written = proxy.sync(state, "w1", endpoints)
    assert written == sum(len(chains) for chains in iptables.render(state, "w1", endpoints).values())


IPVS_LISTING = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A600050:0050 rr
  -> 0AF40102:1F90      Masq    1      {active}          0
  -> 0AF40203:1F90      Masq    1      0          {inactive}
"""


class StubIpvs:
    """The IPVS proxier's place in ProxySync (its rules and kernel are the proxier's own tests')."""

    mode = "ipvs"

    def __init__(self):
        self.checks = 0

    def render(self, state, node, endpoints, cache=None):
        return {}

    def adopt(self, run):
        return {}

    def apply(self, run, rules, previous):
        return 0

    def lost(self, run, rules):
        self.checks += 1
        return ["virtual server TCP 10.96.0.80 missing"] if "0A600050" not in TABLE["text"] else []

    def forget(self):
        return None


TABLE = {"text": ""}


def test_the_ipvs_table_is_compared_without_its_connection_counts(tmp_path):
    listing = tmp_path / "ip_vs"
    listing.write_text(IPVS_LISTING.format(active=0, inactive=0))
    quiet = ipvs_table(listing)
    listing.write_text(IPVS_LISTING.format(active=12, inactive=40))  # traffic: the same servers
    assert ipvs_table(listing) == quiet
    listing.write_text(IPVS_LISTING.format(active=0, inactive=0).replace("Masq    1      0          0\n", "", 1))
    assert ipvs_table(listing) != quiet  # a real server gone
    assert ipvs_table(tmp_path / "missing") is None  # a kernel without IPVS


def test_a_flushed_ipvs_table_is_checked_at_once_not_at_the_next_check(monkeypatch):
    """A check costs a guest 0.39 s of CPU (6 tool runs), so 3 agents check every ~2 minutes; a look at
    the IPVS table costs no process: a table that moved since the last sync is checked at the next look."""
    state, endpoints = lab()
    now = {"t": 0.0}
    TABLE["text"] = IPVS_LISTING.format(active=0, inactive=0)
    proxy = ProxySync(log=lambda message: None, run=FakeKernel(), clock=lambda: now["t"],
                      table=lambda: TABLE["text"])  # fmt: skip
    proxy.proxier = stub = StubIpvs()
    monkeypatch.setattr(proxysync, "mode_of", lambda state: "ipvs")  # (the lab's nodes are docker's)
    proxy.sync(state, "w1", endpoints)
    proxy.check_period = 120.0  # what 0.39 s of CPU a check gets 3 agents sharing 1% of a core
    proxy.checked = (now["t"], now["t"])
    assert not proxy.due(nodes=3) and proxy.next_look_in() == 1.0  # the table as the sync left it
    now["t"] += 1.0
    TABLE["text"] = IPVS_LISTING.split("TCP")[0]  # ipvsadm -C
    assert proxy.due(nodes=3)
    assert proxy.check(nodes=3) == ["virtual server TCP 10.96.0.80 missing"] and stub.checks == 1
    proxy.check_period = 120.0  # (the stub's check took no time)
    TABLE["text"] = IPVS_LISTING.format(active=0, inactive=0)  # the full resync wrote it again
    proxy.sync(state, "w1", endpoints)
    now["t"] += 1.0
    assert not proxy.due(nodes=3)


def test_other_modes_never_read_the_ipvs_table():
    state, endpoints = lab()
    kernel = FakeKernel()

    def table():
        raise AssertionError("read the IPVS table in iptables mode")

    proxy = ProxySync(log=lambda message: None, run=kernel, table=table)
    proxy.sync(state, "w1", endpoints)
    kernel.text = save_output(proxy.previous)
    assert not proxy.due() and proxy.check() == [] and not proxy.due()
    assert proxy.table_seen is None  # looks only as often as checks


def test_syncs_between_checks_do_not_put_the_next_check_off():
    """A sync asked for (any change) between two checks: the next check is still a period after the last."""
    state, endpoints = lab()
    kernel = FakeKernel()
    now = {"t": 0.0}
    proxy = ProxySync(log=lambda message: None, run=kernel, clock=lambda: now["t"])
    proxy.sync(state, "w1", endpoints)
    kernel.text = save_output(proxy.previous)
    proxy.check(nodes=3)
    proxy.check_period = 15.0  # (a check of 50 ms, 3 agents)
    assert proxy.next_check_in() == 15.0
    for _ in range(3):  # changes every 4 s: each asks for a sync
        now["t"] += 4.0
        proxy.sync(state, "w1", endpoints)
    assert proxy.next_check_in() == 3.0 and not proxy.due()
    now["t"] += 4.0
    assert proxy.next_check_in() == 0.0 and proxy.due()  # due: the runner checks now
    proxy.check_period = 0.5
    proxy.checked = (now["t"], now["t"] + 2.0)  # a check that took longer than its period: a second's rest
    now["t"] += 2.0
    assert proxy.next_check_in() == 1.0


def proxy_rules(state, endpoints):
    return iptables.render(state, "w1", endpoints)["nat"]["KUBE-SERVICES"]


def test_lost_hooks_are_put_back_once():
    state, endpoints = lab()
    kernel = FakeKernel()
    proxy = ProxySync(log=lambda message: None, run=kernel)
    proxy.sync(state, "w1", endpoints)
    kernel.text = save_output(proxy.previous, hooks=False)
    lost = proxy.check()
    assert "nat/PREROUTING no longer jumps to KUBE-SERVICES" in lost
    hooks = kernel.restores[-1]
    assert hooks.count("-I PREROUTING 1") == 1 and "-I FORWARD 1" in hooks
    assert differences(proxy.previous or {}, save_output(iptables.render(state, "w1", endpoints))) == []


def test_load_balancer_owner_holds_the_address_and_others_route_on_several_hosts():
    hosts = "hosts: [{name: h1, address: 10.0.0.1}, {name: h2, address: 10.0.0.2}]\n"
    state, endpoints = lab(hosts)
    address = state.services["default/lb"].load_balancer_ip
    calls: dict[str, list] = {"cp": [], "w1": []}
    announced: list[str] = []

    def arp(address, log):  # a fake: a unit test sends no frame
        announced.append(address)

    def log(message):
        pass

    for node in ("cp", "w1"):
        LoadBalancers(node, log, run=lambda argv, **kw: calls[node].append(argv), announce=arp).update(state, endpoints)
    owner = "cp" if any("addr" in c for c in calls["cp"]) else "w1"
    assert announced == [address]  # one gratuitous ARP, from the owner
    other = "w1" if owner == "cp" else "cp"
    assert ["ip", "addr", "replace", f"{address}/32", "dev", "eth0"] in calls[owner]
    owner_ip = state.node(owner).node_ip
    assert calls[other] == [["ip", "route", "replace", f"{address}/32", "via", owner_ip, "dev", "eth0"]]
    single, endpoints = lab()
    calls = {"cp": [], "w1": []}
    for node in ("cp", "w1"):
        LoadBalancers(node, log, run=lambda argv, **kw: calls[node].append(argv), announce=arp).update(single, endpoints)
    assert not any("route" in argv for argv in calls["cp"] + calls["w1"])  # one host: ARP does it


def test_a_load_balancer_address_moves_off_a_node_the_hub_calls_not_ready_and_back():
    from emu.node.services import load_balancer_owner

    state, endpoints = lab()
    lb = state.services["default/lb"]
    address = lb.load_balancer_ip
    owner = load_balancer_owner(state, lb, endpoints["default/lb"])
    other = "w1" if owner == "cp" else "cp"
    assert load_balancer_owner(state, lb, endpoints["default/lb"], lost={owner}) == other
    assert load_balancer_owner(state, lb, endpoints["default/lb"], lost={"cp", "w1"}) == owner  # all lost: as before
    calls: list = []
    announced: list[str] = []
    balancers = LoadBalancers(other, lambda message: None, run=lambda argv, **kw: calls.append(argv),
                              announce=lambda address, log: announced.append(address))  # fmt: skip
    balancers.update(state, endpoints)
    assert calls == [] and announced == []
    balancers.update(state, endpoints, lost={owner})  # the owner stopped reporting: this node takes over
    assert calls == [["ip", "addr", "replace", f"{address}/32", "dev", "eth0"]] and announced == [address]
    balancers.update(state, endpoints)  # it reports again: the address goes back
    assert calls[1:] == [["ip", "addr", "del", f"{address}/32", "dev", "eth0"]]


def test_a_node_called_not_ready_wakes_the_sync_even_without_pods(tmp_path):
    """A node with no pods changes no readiness when it is lost, but its
    LoadBalancer addresses must move: the sync runs."""
    import emu.node.agent.__main__ as main

    agent = main.Agent("cp", snapshot=str(tmp_path / "state.json"))
    requested: list[bool] = []
    agent.syncer.request = lambda: requested.append(True)
    agent.on_hub({"all": {"w1": {}}, "lost": []})
    requested.clear()
    agent.on_hub({"node": "w1", "ready": {}, "lost": True})
    assert requested == [True] and agent.lost_nodes == {"w1"}
    agent.on_hub({"node": "w1", "ready": {}})  # it reports again
    assert requested == [True, True] and agent.lost_nodes == set()


def test_process_watch_holds_each_process_by_a_pidfd_until_it_ends(tmp_path, monkeypatch):
    import os
    import time

    import emu.node.agent
    from emu.node.agent import probes, wake

    monkeypatch.setattr(emu.node.agent, "RUN_DIR", str(tmp_path))
    watch = probes.ProcessWatch()
    p = pod("a")
    (tmp_path / "a").mkdir()
    pid_file = tmp_path / "a" / "c.pid"
    assert watch(p) == ["c"] and not watch.started(p, "c")  # no pid file yet
    running = subprocess.Popen(["sleep", "30"])
    try:
        pid_file.write_text(f"{running.pid}\n")
        assert watch(p) == [] and watch.started(p, "c") and watch.watched
        assert len(watch.fds()) == 1 and not watch.reap()
        pid_file.write_text("not a pid")
        assert watch(p) == []  # the process held still runs: the file is not read again
        running.kill()
        running.wait()
        assert wake.readable(watch.fds()) == watch.fds()  # what the kubelet's loop sleeps on
        assert watch.reap() and watch.fds() == []
        assert watch(p) == ["c"]  # ended, and the file names nothing that runs
    finally:
        running.kill()
        running.wait()
    ended = subprocess.Popen(["true"])  # not waited for: a zombie, which signal 0 would call alive
    time.sleep(0.2)
    pid_file.write_text(f"{ended.pid}\n")
    assert watch(p) == ["c"] and watch.fds() == []
    assert watch(p) == ["c"]  # and at the next look too: its pid is not taken for a running one
    ended.wait()
    keeps = subprocess.Popen(["sleep", "30"])
    try:
        pid_file.write_text(f"{keeps.pid}\n")
        assert watch(p) == [] and len(watch.fds()) == 1
        watch.forget([])
        assert watch.pids == {} and watch.fds() == []  # its pidfd closed with it
    finally:
        keeps.kill()
        keeps.wait()
    assert os.listdir(tmp_path / "a") == ["c.pid"]


def test_kubelet_looks_at_held_processes_only_now_and_then_and_at_once_when_one_ends():
    clock, alive = Clock(), {"a": True}

    class Held(FakeWatch):
        watched = True
        ended = False

        def reap(self):
            ended, self.ended = self.ended, False
            return ended

    watch = Held(alive, started=True)
    kubelet = Kubelet(ThreadPoolExecutor(1), dead=watch, restart=lambda p, n: None, clock=clock)
    a = pod("a")
    kubelet.set_pods([a])
    assert kubelet.step() and kubelet.ready[a.uid]
    assert kubelet.next_wake() == clock.now + probes.RELIST_PERIOD  # every process held: no need to look
    alive["a"], watch.ended = False, True  # its pidfd became readable
    assert kubelet.step() and not kubelet.ready[a.uid]  # seen at once, not RELIST_PERIOD later
    assert kubelet.next_wake() == clock.now + probes.ALIVE_PERIOD  # one is down: looked at every second


def test_restart_counts_outlive_the_agent(tmp_path):
    counts = str(tmp_path / "restarts.json")
    clock = Clock()
    a = pod("a")
    first = Kubelet(ThreadPoolExecutor(1), dead=FakeWatch({"a": False}, started=True),
                    restart=lambda p, n: None, clock=clock, counts_file=counts)  # fmt: skip
    first.set_pods([a])
    first.step()
    assert first.restart_counts() == {"default/a": {"c": 1}}
    second = Kubelet(ThreadPoolExecutor(1), dead=FakeWatch({"a": True}, started=True),
                     restart=lambda p, n: None, clock=clock, counts_file=counts)  # fmt: skip
    second.set_pods([a])
    second.step()
    assert second.restart_counts() == {"default/a": {"c": 1}}  # a new agent still knows
    (tmp_path / "restarts.json").write_text("garbage")
    assert Kubelet(ThreadPoolExecutor(1), counts_file=counts).saved_counts == {}


def test_a_new_state_is_synced_once_every_node_has_reported_its_pods(tmp_path, monkeypatch):
    """The settle gate: a sync waits for the readiness of the new state's pods on
    other nodes while their reports keep coming, unless their node is NotReady,
    and not beyond settle_quiet without a report or settle_time in all."""
    import emu.node.agent.__main__ as main

    text = LAB.replace("nodes: [{name: cp, role: control-plane}, {name: w1}]",
                       "nodes: [{name: cp, role: control-plane}, {name: w1}, {name: w2}]").replace("replicas: 2", "replicas: 4")  # fmt: skip
    state = plan_cluster(load_text(text), "emu-lab", "172.28.5.0/24")
    agent = main.Agent("cp", snapshot=str(tmp_path / "state.json"))
    agent.view = main.NodeView(state, "cp")
    agent.kubelet.ready = {p.uid: True for p in state.pods_on("cp")}
    now = [1000.0]
    monkeypatch.setattr(main.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(main.threading, "Timer", lambda *a: type("T", (), {"daemon": True, "start": lambda s: None,
                                                                          "is_alive": lambda s: True})())  # fmt: skip
    agent.loaded_at = now[0]
    assert state.pods_on("w1") and state.pods_on("w2"), "the lab puts pods on w1 and w2"
    assert agent.unknown(agent.view) == ["w1", "w2"] and agent.settling(agent.view)
    now[0] += main.settle_quiet(len(state.nodes)) - 0.5
    agent.on_hub({"node": "w1", "ready": {p.uid: False for p in state.pods_on("w1")}})  # known, if not ready
    assert agent.settling(agent.view)  # (each message from the hub wakes the sync loop, which asks)
    now[0] += main.settle_quiet(len(state.nodes)) - 0.5  # longer than SETTLE_QUIET since the state came, not since w1 reported
    assert agent.unknown(agent.view) == ["w2"] and agent.settling(agent.view)
    now[0] += 1
    assert not agent.settling(agent.view)  # w2 silent for settle_quiet: go ahead without it
    agent.on_hub({"node": "w2", "ready": {p.uid: True for p in state.pods_on("w2")}})
    assert agent.unknown(agent.view) == [] and not agent.settling(agent.view)

    agent.loaded_at = now[0]  # another new state
    agent.on_hub({"all": {}, "lost": ["w1", "w2"]})  # the hub calls them NotReady: nothing to wait for
    assert not agent.settling(agent.view)
    agent.on_hub({"all": {}, "lost": []})
    assert agent.settling(agent.view)
    for _ in range(int(main.settle_time(len(state.nodes)))):  # reports keep changing who is missing ...
        now[0] += 1
        agent.on_hub({"node": "w1", "ready": {}} if int(now[0]) % 2 else {"node": "w1", "ready": {p.uid: True for p in state.pods_on("w1")}})
        agent.settling(agent.view)
    now[0] += 1
    assert not agent.settling(agent.view)  # ... but settle_time bounds the wait


def test_an_agent_without_a_state_sleeps_in_its_kubelet_job(tmp_path):
    """Before its first state the kubelet has nothing to probe: the job's next run
    is a second away, not the 5 ms floor (50 agents of a lab being wired spun at
    200 wakes/s)."""
    import emu.node.agent.__main__ as main

    agent = main.Agent("cp", snapshot=str(tmp_path / "state.json"))
    waits = [agent.kubelet_step(requested=False) for _ in range(3)]
    assert min(waits) > 0.9, waits


def test_the_sync_and_load_jobs_outlive_an_error(tmp_path, monkeypatch, capsys):
    """A sync or a load that raises is logged and its job goes on (a thread that
    died would leave the node's rules at their last generation for good); the
    failed sync is tried again RESYNC_AFTER_FAILURE seconds later, as a sync."""
    import emu.node.agent.__main__ as main

    agent = main.Agent("cp", snapshot=str(tmp_path / "state.json"))
    state = plan_cluster(load_text(LAB), "emu-lab", "172.28.5.0/24")
    state.generation = 4
    agent.view = main.NodeView(state, "cp")
    calls: list[tuple[str, float]] = []
    now = [0.0]

    def sync(view, force=False):
        calls.append(("sync", now[0]))
        if len(calls) == 1:
            raise KeyError("a bug")

    def load():
        calls.append(("load", now[0]))
        if len(calls) == 3:
            raise TypeError("another")

    def waiter(timeout, fds):  # a fake clock: waiting is time passing
        now[0] += timeout
        return []

    agent.sync, agent.load = sync, load
    for runner in (agent.syncer, agent.loader):
        runner.clock, runner.waiter = (lambda: now[0]), waiter
        runner.last_start = runner.not_before = float("-inf")
    agent.syncer.request()
    agent.syncer.step()  # the sync asked for fails ...
    agent.syncer.step()  # ... and is a sync again, RESYNC_AFTER_FAILURE later
    agent.loader.step()
    agent.loader.step()
    assert calls == [("sync", 0.0), ("sync", main.RESYNC_AFTER_FAILURE), ("load", 0.5), ("load", 1.0)]
    log = capsys.readouterr().out
    assert "sync of generation 4 failed: KeyError: 'a bug'" in log and "loading the state failed: TypeError: another" in log


def test_a_labs_grace_period_sets_the_hubs_grace_and_the_heartbeat(tmp_path):
    """The topology's nodeMonitorGracePeriod reaches the agent with the state: the
    hub calls a silent node NotReady, and this node reports to it, in its ratios."""
    import emu.node.agent.__main__ as main
    from emu.node.records import NodeTiming

    agent = main.Agent("cp", snapshot=str(tmp_path / "state.json"))
    assert (agent.hub.grace, agent.reporter.runner.max_interval) == (25.0, 10.0)
    agent.set_timing(NodeTiming(16.0))
    assert (agent.hub.grace, agent.reporter.runner.max_interval) == (10.0, 4.0)
