"""python3 -m emu.node.agent --node NAME: run the node agent (see emu.node.agent).

One thread per job, each waiting on an event rather than polling: reading a
new state (SIGHUP from the plan that wrote it, or the pods loop's look at the
file), the kubelet's probes (woken when one is due) and processes (woken when
one ends: emu.node.agent.wake), the pods' sandboxes (woken when a link or
namespace changes), reporting to the hub and watching it, and the sync that
writes service rules, LoadBalancer addresses and the DNS snapshot (each of
the three on its own, so one failing does not hold up the others). An idle
agent wakes a few times in ten seconds: its heartbeat to the hub, a look at
its processes and pods, its share of the rule checks.

With `--proxy-from api` the service rules (every proxy mode, LoadBalancer
addresses, health check node ports, conntrack clearing) come, as
kube-proxy's, from the API server's Services, EndpointSlices and Nodes
(emu.node.agent.proxysync.ApiSource), never from the state file's services
or the hub's readiness; the ingress controller watches the API server in a
job of its own (emu.node.agent.ingress); the DNS snapshot reads the state and
the hub's readiness (stage 4 of docs/apiserver.md moves it later). With
`--policy-from api` (by default where `--proxy-from api`), NetworkPolicy is enforced, as a CNI's policy agent
does, from the API server's NetworkPolicies, Pods and Namespaces
(emu.node.agent.policy.PolicySource), in a job of its own: a policy, pod label
or namespace label change wakes it alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import signal
import sys
import threading
import time

from emu.node.agent import (
    AGENT_PORT, DNS_SNAPSHOT, LOCK_DIR, PID_FILE, RESTARTS_FILE, STATE_FILE, STATUS_FILE, pods, web, write_atomically,
)  # fmt: skip
from emu.node.agent import streams
from emu.node.agent.apistatus import ApiStatus, controller_client
from emu.node.kube import release_memory
from emu.node.kube.client import ApiError
from emu.node.agent.tokens import Tokens
from emu.node.agent.edge import LoadBalancers
from emu.node.agent.evict import evict, evictable
from emu.node.agent.health import KubeProxyHealth
from emu.node.agent.gossip import Hub, Readiness, Reporter, Watcher, hub_node, stream
from emu.node.agent.probes import Kubelet, ProbeThreads, run_start_script
from emu.node.agent.ingress import IngressSync
from emu.node.agent.kubelet import ApiPods
from emu.node.agent.policy import PolicySource, PolicySync
from emu.node.agent.proxysync import ApiSource, ProxySync
from emu.node.agent.runner import Runner, Watchdog
from emu.node.agent.wait import wait_ports
from emu.node.agent.wake import NodeChanges
from emu.node.dns.snapshot import snapshot_text, write_snapshot
from emu.node.plan.cni import api_server_node
from emu.node.records import ClusterState, read_state_text
from emu.node.services import EndpointTracker

RESYNC_AFTER_FAILURE = 0.5


def settle_quiet(nodes: int) -> float:
    """How long a sync waits for other nodes' new pods (Agent.settling) once no
    node has reported for a while: all the agents of a big lab read a new state
    at once, on a machine's few cores, and the first reports come seconds later."""
    return 2.0 + 0.1 * nodes


def settle_time(nodes: int) -> float:
    """How long after a new state a sync waits for other nodes' new pods, at most."""
    return 10.0 + 0.5 * nodes


def log(message: str) -> None:
    print(f"{time.time():.3f} {message}", flush=True)


class NodeView:
    """What one agent needs of a state, worked out once when the state arrives."""

    def __init__(self, state: ClusterState, node: str):
        self.state = state
        self.node = node
        self.local = state.pods_on(node)
        self.hub = hub_node(state)
        self.is_hub = self.hub.name == node
        self.timing = state.node_timing  # how soon a silent node is lost (read once a state, not every second)
        self.node_by_ip = {n.node_ip: n.name for n in state.nodes}
        self.runs_dns = any(c.get("workload") == "coredns" for p in self.local for c in p.containers)
        self.uids_by_node: dict[str, set[str]] = {}  # other nodes' pods (Agent.unknown)
        for pod in state.pods.values():
            if pod.node != node:
                self.uids_by_node.setdefault(pod.node, set()).add(pod.uid)


class Agent:
    def __init__(self, node: str, snapshot: str = STATE_FILE, port: int = AGENT_PORT, proxy_from: str = "state",
                 policy_from: str | None = None):  # fmt: skip
        self.node = node
        self.snapshot = snapshot
        self.port = port
        self.view: NodeView | None = None
        self.snapshot_mtime = 0.0
        self.load_lock = threading.Lock()
        self.stranded: set[str] = set()  # pods already reported lost
        self.node_changes: NodeChanges | None = None  # made in the pods job's thread (emu.node.agent.wake)
        self.kubelet_lock = threading.Lock()
        self.peers_lock = threading.Lock()
        self.kubelet = Kubelet(ProbeThreads(), restart=restart_container, counts_file=RESTARTS_FILE)
        self.peer_ready: dict[str, Readiness] = {}
        self.hub = Hub()
        self.reporter = Reporter(node, port, log)
        self.watcher = Watcher(port, log)
        self.proxy = ProxySync(log)
        self.health = KubeProxyHealth(log)  # kube-proxy's /healthz (:10256) and healthCheckNodePort servers
        self.load_balancers = LoadBalancers(node, log)
        self.policies = PolicySync(log)
        self.ingress = IngressSync(node, log)
        self.lost_nodes: set[str] = set()  # NotReady, as the hub says
        self.evicted_at = float("-inf")  # when the hub last moved a lost node's pods
        self.api_moves: dict[str, dict] = {}  # pod key -> its move, not yet taken by the API server
        self.api_moves_failing = False  # the last attempt to tell them failed (logged once)
        self.disrupted = False  # too many nodes NotReady at once to move their pods (evict.evictable)
        self.loaded_at = 0.0  # when the state in view arrived (monotonic)
        self.settle_timer: threading.Timer | None = None
        self.waiting_for: list[str] = []  # the nodes settling last waited for,
        self.progress_at = 0.0  # and when that changed
        self.synced_key: tuple | None = None
        self.dns_key: tuple | None = None  # what the DNS snapshot was last written from
        self.synced_ready: dict[str, bool] = {}
        self.tracker = EndpointTracker()
        self.endpoints: dict = {}  # as last synced: {service key: {port name: [Endpoint]}}
        self.synced = threading.Condition()  # notified after each sync (GET /wait)
        self.synced_generation = 0
        # kube-proxy's part from the API server (--proxy-from api), None: from the state file and the hub.
        self.api = ApiSource(node, log, lambda: self.syncer.request()) if proxy_from == "api" else None
        self.api_key: tuple | None = None  # (feed changes, nodes not Ready) the rules were last made from
        self.synced_revision = 0  # the resourceVersion the last sync's rules reflect (GET /wait?revision=)
        # NetworkPolicy from the API server (--policy-from api; by default where --proxy-from api), None: from
        # the state file (in the sync job).
        policy_from = policy_from or proxy_from
        self.netpol = PolicySource(node, log, lambda: self.policy_job.request()) if policy_from == "api" else None
        self.policy_revision = 0  # the resourceVersion the policy rules last written reflect
        self.policies_unreadable: set[str] = set()  # (logged once each)
        self.policy_job = Runner("netpol", self.policy_step, log, retry_interval=RESYNC_AFTER_FAILURE,
                                 describe=lambda: "network policy sync")  # fmt: skip
        # Every job of the agent, one Runner each (emu.node.agent.runner): request() wakes one.
        self.loader = Runner("load", lambda requested: self.load(), log, max_interval=30.0,
                             describe=lambda: "loading the state")  # fmt: skip
        self.pods_job = Runner("pods", self.pods_step, log, gather=pods.POD_GATHER,
                               fds=lambda: self.node_changes.fds() if self.node_changes else [],
                               describe=lambda: "tending pods")  # fmt: skip
        self.kubelet_job = Runner("kubelet", self.kubelet_step, log, fds=self.kubelet_fds)
        self.syncer = Runner("sync", self.sync_step, log, retry_interval=RESYNC_AFTER_FAILURE,
                             describe=lambda: f"sync of generation {self.generation()}")  # fmt: skip
        self.hub_job = Runner("hub", self.hub_step, log, max_interval=1.0)
        self.api_status = ApiStatus(node, log, tokens=Tokens(node))
        self.reported_generation = -1  # the kubelet's generation the API server last heard of
        # (Where the rules come from the API, a pod's readiness reaches every node's rules through
        # this write and the EndpointSlice controller: written at once, not 50 ms later. One
        # kubelet step reports every change it saw in one run anyway.)
        self.status_job = Runner("apistatus", self.status_step, log, gather=0.0 if self.api else 0.05,
                                 describe=lambda: "reporting to the API server")  # fmt: skip
        self.report_job = self.reporter.job(self.hub_address, self.local_readiness)
        self.watch_job = self.watcher.job(self.hub_address, self.on_hub, self.generation)
        # The kubelet's pods made through the API server (emu.node.agent.kubelet).
        self.api_pods = ApiPods(node, log, lambda: self.view.state if self.view else None,
                                services=self.services_for_pods)  # fmt: skip

    def services_for_pods(self) -> dict | None:
        """Every Service, for the environment of a pod the kubelet starts: kube-proxy's view
        of the API server's (None until it has listed them), else the state's."""
        if self.api is None:
            return dict(self.view.state.services) if self.view and self.view.state else None
        if self.api.feed is None or not self.api.ready():
            return None
        with self.api.feed.lock:
            return dict(self.api.feed.services)

    def runners(self) -> list[Runner]:
        return [self.loader, self.pods_job, self.kubelet_job, self.syncer, self.hub_job, self.report_job,
                self.watch_job, self.status_job, self.api_pods.job, *([self.policy_job] if self.netpol else [])]

    # ---- state ----------------------------------------------------------------
    # (The load job: a new state arrives with a SIGHUP, or the hub's watch; the pods
    # job looks at the file each time it looks at the pods too, so this one need not
    # poll often: an idle agent's every wake-up counts, 50 agents to a machine.)
    def load(self) -> None:
        with self.load_lock:
            self._load()

    def _load(self) -> None:
        try:
            mtime = os.stat(self.snapshot).st_mtime
        except FileNotFoundError:
            return
        if mtime == self.snapshot_mtime:
            return
        cpu = time.thread_time()
        try:
            # As this node needs it (other nodes' pods slimmed): the agent's size is that of its rules.
            state = ClusterState.from_json(read_state_text(self.snapshot), node=self.node)
        except (OSError, ValueError) as error:
            log(f"cannot read {self.snapshot}: {error}")
            return
        view = NodeView(state, self.node)
        if self.view is not None:
            gone = {p.ip for p in self.view.state.pods.values()} - {p.ip for p in state.pods.values()}
            if gone:
                threading.Thread(target=pods.forget_flows, args=(sorted(gone),), daemon=True).start()
        release_memory()
        # Before the view: a sync that sees the new view must see when it came (with the
        # last state's time the hub once synced at once, settle_time long past).
        self.loaded_at = time.monotonic()
        self.settle_timer = None  # (one that is still set only wakes the sync loop once more)
        with self.kubelet_lock:
            self.kubelet.set_pods(view.local)
            self.view = view
            self.kubelet.step()  # this node's pods' readiness is known before the first sync with them
        self.set_timing(view.timing)
        self.snapshot_mtime = mtime
        log(f"state generation {state.generation}: {len(state.pods)} pods, {len(state.services)} services "
            f"(read in {(time.thread_time() - cpu) * 1000:.0f} ms of CPU)")
        self.reporter.changed()
        self.kubelet_job.request()
        self.syncer.request()
        self.pods_job.request()
        self.status_job.request()
        if self.netpol is not None:
            self.policy_job.request()  # (the first state says where the API server is)

    def adopt(self, text: str) -> None:
        """A newer state from the hub (it moved a lost node's pods): keep it as the
        controller would have written it."""
        state = ClusterState.from_json(text, node=self.node)  # only its generation is needed
        if self.view and state.generation <= self.view.state.generation:
            return
        log(f"the hub sent state generation {state.generation}")
        write_atomically(self.snapshot, text, suffix=".agent")
        self.loader.request()

    # ---- pod sandboxes: the kubelet's sync of this node's pods ----------------
    def pods_step(self, requested: bool) -> float:
        """Tends the pods when the node's links or namespaces change (or a new
        state came; the runner gathers POD_GATHER seconds of changes first: a pod
        wired or deleted changes its links a dozen times), and every POD_RELIST
        seconds in case a change went unseen; every POD_CHECK seconds where the
        kernel cannot say."""
        if self.node_changes is None:
            self.node_changes = NodeChanges(["/run/netns"])
        self.node_changes.drain()
        self.tend_pods()
        return pods.POD_RELIST if self.node_changes.complete else pods.POD_CHECK

    def tend_pods(self) -> None:
        if pods.held():
            return  # an `emu` command is changing this node
        self.load()  # the newest state: the hold is lifted only once it is in place
        view = self.view
        if view is None:
            return
        todo = pods.work(view.state, self.node, pods.look(), view.local)
        if todo.empty or pods.held():
            # Held again: a plan's files (the hold with them) landed while we looked; its
            # new pods would pass for orphans of the older state.
            return
        for key, why in sorted(todo.rebuild.items()):
            log(f"pod {key}: {why}: wiring it again")
        for netns in todo.orphans:
            log(f"pod namespace {netns}: no longer placed on this node: deleting it")
        with self.kubelet_lock:  # the kubelet must not restart containers meanwhile
            result = pods.run(pods.plan(view.state, self.node, todo))
        if result.returncode:
            log(f"tending pods failed (exit {result.returncode}): {(result.stdout + result.stderr)[-2000:]}")
        self.kubelet_job.request()

    # ---- readiness: the kubelet's part, and the hub ----------------------------
    def kubelet_step(self, requested: bool) -> float:
        """Probes and processes: the next run when a probe is due, sooner when a
        container's process ends (its pidfd, kubelet_fds) or a new state came."""
        with self.kubelet_lock:
            changed = self.kubelet.step() if self.view else False
            wake = self.kubelet.next_wake()
            if self.kubelet.generation != self.reported_generation:
                self.status_job.request()
        if changed:
            log(f"readiness: {sum(self.kubelet.ready.values())} of {len(self.kubelet.ready)} pods ready")
            self.reporter.changed()
            self.syncer.request()
        return max(0.005, wake - time.monotonic())

    def status_step(self, requested: bool) -> float:
        """The kubelet's reports to the API server (emu.node.agent.apistatus): the
        node's Lease, and its pods' status when what the kubelet sees changed."""
        view = self.view
        if view is None:
            return 1.0
        with self.kubelet_lock:
            generation = self.kubelet.generation
            entries = {pod.uid: self.kubelet.container_entries(pod) for pod in self.api_status.reported(view.state)}
            readiness = dict(self.kubelet.ready)
        wake = self.api_status.step(view.state, entries, readiness)
        if not self.api_status.failing:
            self.reported_generation = generation
        return wake

    def kubelet_fds(self) -> list[int]:
        with self.kubelet_lock:
            return self.kubelet.watch.fds()

    def generation(self) -> int:
        return self.view.state.generation if self.view else 0

    def hub_address(self) -> str | None:
        return self.view.hub.node_ip if self.view else None

    def local_readiness(self) -> Readiness | None:
        return dict(self.kubelet.ready) if self.view else None

    def on_hub(self, message: dict) -> None:
        """A message from the hub's watch: a newer state, the whole picture, or one node's."""
        if "state" in message:
            self.adopt(message["state"])
            return
        with self.peers_lock:
            before, lost_before = self.peer_ready, set(self.lost_nodes)
            if "all" in message:
                self.peer_ready = message["all"]
                self.lost_nodes = set(message.get("lost", []))
            else:
                self.peer_ready = {**before, message["node"]: message["ready"]}
                (self.lost_nodes.add if message.get("lost") else self.lost_nodes.discard)(message["node"])
            changed = self.peer_ready != before or self.lost_nodes != lost_before
        if changed:
            self.syncer.request()

    def set_timing(self, timing: NodeTiming) -> None:
        """How soon a silent node is lost (the topology's nodeMonitorGracePeriod): the
        hub's grace, this node's heartbeat to it (the Lease follows in ApiStatus)."""
        self.hub.grace = timing.hub_grace
        if self.reporter.runner is not None:
            self.reporter.runner.max_interval = timing.heartbeat

    def hub_step(self, requested: bool) -> float:
        """On the hub, every second: nodes that stopped reporting become NotReady,
        and their pods move after NodeTiming.evict_after seconds more. Elsewhere every 5 s,
        only to notice becoming the hub."""
        view = self.view
        if view and view.is_hub:
            self.hub_check(view)
        return 1.0 if view and view.is_hub else 5.0

    def hub_check(self, view: NodeView) -> None:
        if self.api_moves:
            self.tell_api(view.state)
        for node in self.hub.expire([n.name for n in view.state.nodes]):
            log(f"node {node} stopped reporting: NotReady, its endpoints leave every service")
        due = self.hub.lost_for(view.timing.evict_after)
        if due and any(pod.node in due and pod.key not in self.stranded for pod in view.state.pods.values()):
            not_ready, nodes = len(self.hub.lost_for(0.0)), len(view.state.nodes)
            due, disrupted = evictable(due, not_ready, nodes, time.monotonic() - self.evicted_at)
            if disrupted != self.disrupted:
                self.disrupted = disrupted
                log(f"{not_ready} of {nodes} nodes NotReady: a disruption (PartialDisruption), "
                    "so pods move slowly or not at all" if disrupted else "the disruption is over")
            if due:
                self.evicted_at = time.monotonic()
                try:
                    self.evict(due)
                except Exception as error:  # noqa: BLE001
                    log(f"moving the pods of {', '.join(sorted(due))} failed: {error}")

    def evict(self, lost: set[str]) -> None:
        """Move the lost nodes' pods (emu.node.agent.evict) under the cluster's lock,
        and send every node the new state."""
        try:
            os.mkdir(LOCK_DIR)
        except FileExistsError:
            return  # an `emu` command is changing the cluster: next time
        try:
            with open(os.path.join(LOCK_DIR, "holder"), "w") as handle:
                handle.write(f"the node agent on {self.node} (moving the pods of node {', '.join(sorted(lost))})")
            state = ClusterState.from_json(read_state_text(self.snapshot))
            result = evict(state, lost)
            for pod in result.stranded:
                if pod.key not in self.stranded:
                    self.stranded.add(pod.key)
                    log(f"pod {pod.key} is lost with node {pod.node}: no controller to place it again")
            if not result.changed:
                return
            for before, after in result.moved:
                log(f"pod {before.key} moves from lost node {before.node} to {after.node} ({before.ip} -> {after.ip})")
            text = state.to_json()
            write_atomically(self.snapshot, text, suffix=".agent")
            self.hub.tell({"state": text})
            self.loader.request()
            if state.api_endpoint:
                for _, after in result.moved:
                    self.api_moves[after.key] = {"namespace": after.namespace, "name": after.name,
                                                 "node": after.node, "ip": after.ip}  # fmt: skip
        finally:
            shutil.rmtree(LOCK_DIR, ignore_errors=True)
        if self.api_moves:
            self.tell_api(state)

    def tell_api(self, state: ClusterState) -> None:
        """Tell the API server where the hub moved pods (POST /emu/mirror {"moves"}),
        so its EndpointSlices, and every node's rules made from them, follow; until
        it takes them, again at each hub step (it may be restarting)."""
        client = controller_client(state)
        if client is None:
            self.api_moves.clear()  # a cluster without the certificate: nothing to tell
            return
        try:
            client.request("POST", "/emu/mirror", {"moves": list(self.api_moves.values())})
        except (OSError, ApiError) as error:
            if isinstance(error, ApiError) and error.code == 400:  # refused: asking again changes nothing
                log(f"the API server refused the moved pods: {error}")
                self.api_moves.clear()
            elif not self.api_moves_failing:
                log(f"telling the API server of the moved pods failed: {error}; trying again every second")
            self.api_moves_failing = bool(self.api_moves)
            return
        finally:
            client.close()
        log(f"the API server knows where {len(self.api_moves)} moved pod(s) are now")
        self.api_moves.clear()
        self.api_moves_failing = False

    # ---- sync: kube-proxy's part, LoadBalancers, DNS ----------------------------
    def sync_step(self, requested: bool) -> float:
        """A sync at once after a change (the runner gathers changes that arrive
        during a sync into the next one: a slow sync is never chased change by
        change); between changes, a look at the kernel's rules every
        check_period (sooner in IPVS mode when the IPVS table moved: ProxySync.due),
        and a full resync when some went missing. A failed sync
        is tried again RESYNC_AFTER_FAILURE seconds later (the runner)."""
        if requested:
            self.health.queued()  # a change waits for a sync (kube-proxy's QueuedUpdate)
        view = self.view
        if view is None:
            return self.proxy.check_period
        force = False
        if not requested:
            if not self.proxy.due(nodes=len(view.state.nodes)):  # (IPVS mode: a look at the IPVS table)
                return self.proxy.next_look_in()
            lost = self.proxy.check(nodes=len(view.state.nodes))
            if not lost:
                return self.proxy.next_look_in()
            log(f"service rules lost ({'; '.join(lost[:3])}{' ...' if len(lost) > 3 else ''}): full resync")
            force = True
        self.sync(view, force)
        return self.proxy.next_look_in()  # a sync does not put the next check off

    def ready_map(self, view: NodeView) -> dict[str, bool]:
        with self.peers_lock:
            ready: dict[str, bool] = {}
            for node, pods in self.peer_ready.items():
                if node != self.node:
                    ready.update(pods)
        ready.update(self.kubelet.ready)  # this node's own view is the one that counts
        return {pod.uid: ready.get(pod.uid, False) for pod in view.state.pods.values()}

    def unknown(self, view: NodeView) -> list[str]:
        """Nodes with pods whose readiness this agent has not heard yet (nodes the
        hub calls NotReady are known: none of their pods is ready)."""
        with self.peers_lock:  # (each message from the hub asks this: set operations, not a loop over pods)
            return sorted(node for node, uids in view.uids_by_node.items()
                          if node not in self.lost_nodes and not uids <= self.peer_ready.get(node, {}).keys())  # fmt: skip

    def settling(self, view: NodeView) -> bool:
        """Whether to hold a sync back: the state is new and some nodes have not
        yet reported its pods. Syncing at each node's report made every agent of a
        50-node lab write its rules 4 or 5 times while coming up (each 5-14 s of a
        saturated machine); this way, once, when the picture is whole. It waits
        while reports keep coming (one at least every settle_quiet seconds) and
        never longer than settle_time: a node that stays silent holds nothing up
        for long."""
        waiting = self.unknown(view)
        now = time.monotonic()
        if waiting != self.waiting_for:
            self.waiting_for, self.progress_at = waiting, now
        nodes = len(view.state.nodes)
        deadline = min(max(self.loaded_at, self.progress_at) + settle_quiet(nodes), self.loaded_at + settle_time(nodes))
        if not waiting or now >= deadline:
            return False
        if self.settle_timer is None or not self.settle_timer.is_alive():
            if self.settle_timer is None:
                log(f"waiting for {len(waiting)} nodes to report the readiness of their new pods: "
                    f"{', '.join(waiting[:5])}{' ...' if len(waiting) > 5 else ''}")  # fmt: skip
            self.settle_timer = threading.Timer(deadline - now, self.syncer.request)
            self.settle_timer.daemon = True
            self.settle_timer.start()
        return True

    def sync(self, view: NodeView, force: bool = False) -> None:
        started, cpu = time.monotonic(), time.thread_time()
        state = view.state
        settling = not force and self.settling(view)  # each report that arrives wakes the loop again
        if settling and not view.runs_dns and self.api is None:
            return
        ready = self.ready_map(view)
        key = (state.generation, tuple(sorted(ready.items())))
        if view.runs_dns and key != self.dns_key:
            # Not held back by settling: the cluster DNS pods are not ready before their
            # first snapshot, and every node's rules wait on theirs.
            try:
                if write_snapshot(DNS_SNAPSHOT, snapshot_text(state, ready)):
                    log(f"wrote the DNS snapshot for generation {state.generation}")
                self.dns_key = key
            except Exception as error:  # noqa: BLE001 - one job failing must not stop the others
                log(f"DNS snapshot failed: {error}")
        if self.api is not None:
            self.sync_from_api(view, force, settling, ready, key)
            return
        if settling:
            return
        with self.peers_lock:
            lost = tuple(sorted(self.lost_nodes))  # (they own no LoadBalancer address)
        if (key, lost) == self.synced_key and not force:
            self.health.updated()
            return  # nothing this node's rules depend on changed
        endpoints = self.tracker.update(state, ready)
        self.endpoints = endpoints
        self.synced_ready = ready
        try:
            self.load_balancers.update(state, endpoints, lost)
        except Exception as error:  # noqa: BLE001 - one job failing must not stop the others
            log(f"LoadBalancer update failed: {error}")
        if self.netpol is None:
            try:
                self.policies.sync(state, self.node)
            except Exception as error:  # noqa: BLE001
                log(f"network policy sync failed: {error}")
        try:
            self.ingress.sync(state, endpoints)
        except Exception as error:  # noqa: BLE001
            log(f"ingress sync failed: {error}")
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        chains = self.proxy.sync(state, self.node, endpoints)  # failing: the sync runner logs it and tries again soon
        self.health.synced(state, self.node, endpoints)
        self.synced_key = (key, lost)
        if chains > 100:
            release_memory()  # a big render's temporaries
        took = (time.monotonic() - started) * 1000
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        touched = self.tracker.touched  # (a sync with the same endpoints: a forced one, or rules lost)
        why = "" if touched is None else f"; readiness changed in {len(touched)} services: {', '.join(sorted(touched)[:3])}"
        log(f"synced generation {state.generation}: {chains} chains written in {took:.1f} ms "
            f"({(time.thread_time() - cpu) * 1000:.0f} ms of CPU, {spent * 1000:.0f} ms in child processes{why})")
        write_status({"generation": state.generation, "syncedAt": time.time(), "tookMs": round(took, 2)})
        with self.synced:
            self.synced_generation = state.generation
            self.synced.notify_all()

    def sync_from_api(self, view: NodeView, force: bool, settling: bool, ready: dict[str, bool], key: tuple) -> None:
        """kube-proxy's sync from the API server's view (self.api): the rules, LoadBalancer
        addresses, health check servers and the ingress from the feed's snapshot;
        NetworkPolicy, and the readiness `emu up` waits for, from the state and the hub
        as before (settling holds back only those)."""
        started, cpu = time.monotonic(), time.thread_time()
        state = view.state
        api = self.api
        state_part = not settling and (key != self.synced_key or force)
        if state_part:
            if self.netpol is None:
                try:
                    self.policies.sync(state, self.node)
                except Exception as error:  # noqa: BLE001
                    log(f"network policy sync failed: {error}")
            self.synced_ready = ready
        if api.start(state) and api.ready():
            revision = api.revision()  # before the snapshot: every change up to it is in it
            feed = api.feed
            lost = tuple(sorted(feed.lost_nodes()))  # NotReady in the API: they own no LoadBalancer address
            # (a new state generation too: the ingress and the nodes' hosts come from it; the
            # hub's readiness reports never: the rules do not depend on them)
            api_key = (feed.changes, lost, state.generation)
            if api_key != self.api_key or force:
                services, endpoints = feed.snapshot()
                self.endpoints = endpoints
                try:
                    # (with the state's nodes: on several hosts they say where each one runs)
                    self.load_balancers.update(dataclasses.replace(services, nodes=state.nodes), endpoints, lost)
                except Exception as error:  # noqa: BLE001 - one job failing must not stop the others
                    log(f"LoadBalancer update failed: {error}")
                try:
                    self.ingress.sync(state, endpoints)
                except Exception as error:  # noqa: BLE001
                    log(f"ingress sync failed: {error}")
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                chains = self.proxy.sync(services, self.node, endpoints)  # failing: the runner tries again soon
                self.health.synced(services, self.node, endpoints)
                self.api_key = api_key
                if chains > 100:
                    release_memory()
                took = (time.monotonic() - started) * 1000
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                spent = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
                touched = sorted(feed.touched)
                why = f"; endpoints changed in {len(touched)} services: {', '.join(touched[:3])}" if touched else ""
                log(f"synced resourceVersion {revision}: {chains} chains written in {took:.1f} ms "
                    f"({(time.thread_time() - cpu) * 1000:.0f} ms of CPU, "
                    f"{spent * 1000:.0f} ms in child processes{why})")
                write_status({"generation": state.generation, "resourceVersion": revision, "syncedAt": time.time(),
                              "tookMs": round(took, 2)})  # fmt: skip
            else:
                self.health.updated()
            self.synced_revision = max(self.synced_revision, revision)
        if state_part:
            self.synced_key = key
        with self.synced:
            if state_part:
                self.synced_generation = state.generation
            self.synced.notify_all()

    # ---- NetworkPolicy from the API server: a CNI's policy agent -------------------
    def policy_step(self, requested: bool) -> float | None:
        """Writes the policy rules from the API server's view (self.netpol) after each
        change the feed records: only the sets and chains that differ from what was
        written (a pod's label: its address added to or deleted from the sets that
        name it). A failed write is tried again with the newest view (the runner)."""
        view = self.view
        if view is None:
            return 1.0  # (the state says where the API server is)
        source = self.netpol
        if not source.start(view.state):
            return 5.0  # no certificate yet: look again
        if not source.ready():
            return 0.05  # the first lists are not all in: rules made now would drop policies
        revision = source.revision()  # before the snapshot: every change up to it is in it
        state, version = source.feed.snapshot()
        unreadable = source.feed.unreadable_policies()
        if unreadable != self.policies_unreadable:
            for key in sorted(unreadable - self.policies_unreadable):
                log(f"NetworkPolicy {key}: its podSelector is not a label selector emu can read; it selects no pod")
            self.policies_unreadable = unreadable
        self.policies.sync(state, self.node, retry=False, source=f"resourceVersion {revision} (change {version})")
        # An informer hands a change on before it takes the change's resourceVersion: read now, with no
        # change recorded since the snapshot, its revision is one the rules reflect (read in that order).
        later = source.revision()
        if source.feed.changes == version:
            revision = max(revision, later)
        with self.synced:
            self.policy_revision = max(self.policy_revision, revision)
            self.synced.notify_all()
        return None

    def unready(self) -> list[str]:
        """Pods not ready in the view this node's rules were made from; pods that
        run to completion (restartPolicy OnFailure or Never) are not waited for."""
        view = self.view
        finite = {p.uid for p in view.state.pods.values() if p.restart_policy != "Always"} if view else set()
        return sorted(k for k, ready in self.synced_ready.items() if not ready and k not in finite)

    def wait_revision(self, revision: int, timeout: float) -> dict:
        """GET /wait?revision=N: until this node's rules reflect the API server's Services,
        EndpointSlices and Nodes at resourceVersion N or later (its informers have seen N,
        a quiet one lists again, and a sync made from that view is in place)."""
        deadline = time.monotonic() + timeout
        result: dict = {"revision": revision, "caughtUp": False, "programmed": False}
        if self.api is None:
            result["error"] = "this agent's rules come from the state file (--proxy-from state), not the API server"
            return result
        netpol = self.netpol
        while netpol is not None and netpol.feed is None and time.monotonic() < deadline:
            if netpol.unavailable:
                netpol = None  # no certificate: no policy rules to wait for (logged)
                break
            self.policy_job.request()  # (its first run starts the feed)
            time.sleep(0.05)
        result["caughtUp"] = self.api.catch_up(revision, timeout) and (
            netpol is None or netpol.catch_up(revision, max(0.0, deadline - time.monotonic())))  # fmt: skip
        if result["caughtUp"]:
            self.syncer.request()  # (a quiet list changed nothing: no handler woke the sync)
            if netpol is not None:
                self.policy_job.request()
            with self.synced:
                result["programmed"] = self.synced.wait_for(
                    lambda: self.synced_revision >= revision and (netpol is None or self.policy_revision >= revision),
                    max(0.0, deadline - time.monotonic()))  # fmt: skip
            # (and the ingress controller's nginx.conf, where it runs here: it watches the API too)
            result["programmed"] = result["programmed"] and self.ingress.wait_revision(
                revision, max(0.0, deadline - time.monotonic()))
        result["syncedRevision"] = self.synced_revision
        result["seenRevision"] = self.api.revision()
        if netpol is not None:
            result["policyRevision"] = self.policy_revision
            result["policySeenRevision"] = netpol.revision()
        return result

    def wait(self, generation: int, ports: list[str], timeout: float, ready_timeout: float) -> dict:
        """What `emu up` waits for on this node (GET /wait), in order, each within
        what is left of the timeout: the pods' ports answer; this agent has synced
        `generation` or later; no pod counts as unready (this one may run out
        without failing: a pod may be meant to stay unready). Answered when it is
        so, not polled: 50 wait programs polling twenty times a second were a
        tenth of a big lab's coming up."""
        deadline = time.time() + timeout
        result: dict = {"ports_left": wait_ports(ports, deadline), "programmed": False, "unready": None}
        with self.synced:
            result["programmed"] = self.synced.wait_for(lambda: self.synced_generation >= generation,
                                                        max(0.0, deadline - time.time()))  # fmt: skip
            if result["programmed"]:
                ready_by = min(deadline, time.time() + ready_timeout)
                self.synced.wait_for(lambda: not self.unready(), max(0.0, ready_by - time.time()))
                result["unready"] = self.unready()
        return result


def restart_container(pod, container: str) -> None:
    log(f"container {container} of pod {pod.key} is not running: starting it again")
    run_start_script(pod, container)


def wait_options(query: str) -> dict:
    """GET /wait's query: generation=N&timeout=S&ready_timeout=S&port=IP:PORT&port=..."""
    options: dict = {"generation": 0, "ports": [], "timeout": 30.0, "ready_timeout": 15.0}
    for pair in filter(None, query.split("&")):
        name, _, value = pair.partition("=")
        if name == "port":
            options["ports"].append(value)
        elif name in ("generation", "revision"):
            options[name] = int(value)
        elif name in ("timeout", "ready_timeout"):
            seconds = float(value)
            if not 0 <= seconds <= 3600:  # (nan too)
                raise ValueError(f"{name}={value}: expected seconds, 0 to 3600")
            options[name] = seconds
        else:
            raise ValueError(f"unknown parameter {name!r}: expected generation, revision, timeout, ready_timeout, port")
    return options


def write_status(status: dict) -> None:
    write_atomically(STATUS_FILE, json.dumps(status))


def make_handler(agent: Agent) -> web.Handler:
    """The agent's HTTP API (emu.node.agent.web): readiness, endpoints and health for
    nodes and `emu`, and on the hub the reports and the watch stream."""

    def reply(wfile, data, status: int = 200) -> bool:
        wfile.write(web.response(status, json.dumps(data).encode()))
        return True

    def sender(request: web.Request) -> str | None:
        """The node this request comes from: loopback is this node; pods and
        anything else are refused (pods are also kept off the port by the
        node's EMU-AGENT-GUARD rules)."""
        if request.client == "127.0.0.1":
            return agent.node
        view = agent.view
        return view.node_by_ip.get(request.client) if view else None

    def newer_state(path: str) -> dict | None:
        """The hub's state, when the watching node holds an older one."""
        try:
            held = int(path.partition("generation=")[2] or 0)
        except ValueError:
            held = 0
        view = agent.view
        if view is None or held <= 0 or view.state.generation <= held:
            return None
        return {"state": read_state_text(agent.snapshot)}

    def watch(request: web.Request, wfile) -> bool:
        wfile.write(web.stream_head())
        watcher = agent.hub.subscribe(first=newer_state(request.path))

        def write(data: bytes) -> None:
            wfile.write(data)
            wfile.flush()

        try:
            stream(watcher, write)
        except OSError:
            pass
        finally:
            agent.hub.unsubscribe(watcher)
        return False

    def get(request: web.Request, wfile) -> bool:
        path = request.path
        if path == "/healthz":
            return reply(wfile, {"ok": True})
        if path == "/readiness":
            with agent.kubelet_lock:
                containers = agent.kubelet.container_readiness()
                restarts = agent.kubelet.restart_counts()
            return reply(wfile, {"node": agent.node, "ready": agent.kubelet.ready, "containers": containers, "restarts": restarts})
        if path == "/endpoints":
            return reply(wfile, {name: {port: [e.address for e in eps] for port, eps in by_port.items()}
                                 for name, by_port in agent.endpoints.items()})  # fmt: skip
        if path == "/unready":
            return reply(wfile, agent.unready())
        if path.startswith("/wait?"):
            try:
                options = wait_options(path.partition("?")[2])
            except ValueError as error:
                return reply(wfile, {"error": str(error)}, 400)
            if "revision" in options:  # (the API server's resourceVersion: the rules from the API, only)
                return reply(wfile, agent.wait_revision(options["revision"], options["timeout"]))
            return reply(wfile, agent.wait(**options))
        if path.startswith("/watch") and agent.view and agent.view.is_hub:
            return watch(request, wfile)
        return reply(wfile, {"error": "not found"}, 404)

    def post(request: web.Request, wfile) -> bool:
        if request.path != "/report" or not (agent.view and agent.view.is_hub):
            return reply(wfile, {"error": "not found"}, 404)
        try:
            data = json.loads(request.body or b"{}")
            node, ready = data["node"], data["ready"]
            valid = isinstance(ready, dict) and all(isinstance(v, bool) for v in ready.values())
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            return reply(wfile, {"error": "expected {node, ready: {uid: bool}}"}, 400)
        if sender(request) != node or request.client == "127.0.0.1":
            # A node speaks for itself only, from its own address.
            return reply(wfile, {"error": f"{request.client} may not report for node {node}"}, 403)
        agent.hub.report(node, ready)
        return reply(wfile, {"ok": True})

    def pod_streams(request: web.Request, wfile) -> bool:
        """The kubelet's streaming API (logs, exec, attach): for the API server's node only."""
        view = agent.view
        api_node = api_server_node(view.state).name if view else None
        if sender(request) != api_node or request.client == "127.0.0.1":
            return reply(wfile, {"error": f"{request.client} may not ask for pods' streams: only the API server's "
                                          f"node ({api_node}) may"}, 403)  # fmt: skip
        return streams.serve(request, wfile, agent.api_pods.pods_view(view.state if view else None))

    def handle(request: web.Request, wfile) -> bool:
        if sender(request) is None:
            return reply(wfile, {"error": "only nodes may ask"}, 403)
        if request.method == "GET" and request.path.startswith(streams.PATHS):
            return pod_streams(request, wfile)
        if request.method == "GET":
            return get(request, wfile)
        if request.method == "POST":
            return post(request, wfile)
        return reply(wfile, {"error": "not found"}, 404)

    return handle


USAGE = ("usage: python3 -m emu.node.agent --node NAME [--snapshot FILE] [--port N] [--proxy-from state|api] "
         "[--policy-from state|api]")  # fmt: skip
PROXY_SOURCES = ("state", "api")  # where the service rules come from: the state file and the hub, or the API server


def parse_options(argv: list[str]) -> dict[str, str]:
    """--node NAME [--snapshot FILE] [--port N] [--proxy-from state|api] [--policy-from state|api]
    (argparse would cost every agent 1 MB). --policy-from defaults to --proxy-from's value."""
    options = {"--snapshot": STATE_FILE, "--port": str(AGENT_PORT), "--proxy-from": "state"}
    if len(argv) % 2:
        raise SystemExit(USAGE)
    for flag, value in zip(argv[::2], argv[1::2]):
        if flag not in ("--node", "--snapshot", "--port", "--proxy-from", "--policy-from"):
            raise SystemExit(f"unknown option {flag}\n{USAGE}")
        options[flag] = value
    if "--node" not in options or not options["--port"].isdigit():
        raise SystemExit(USAGE)
    options.setdefault("--policy-from", options["--proxy-from"])
    for flag in ("--proxy-from", "--policy-from"):
        if options[flag] not in PROXY_SOURCES:
            raise SystemExit(f"{flag} {options[flag]}: expected one of {', '.join(PROXY_SOURCES)}\n{USAGE}")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_options(sys.argv[1:] if argv is None else argv)
    node, port = options["--node"], int(options["--port"])
    agent = Agent(node, options["--snapshot"], port, proxy_from=options["--proxy-from"],
                  policy_from=options["--policy-from"])  # fmt: skip
    os.makedirs(os.path.dirname(PID_FILE), exist_ok=True)
    with open(PID_FILE, "w") as handle:
        handle.write(str(os.getpid()))
    signal.signal(signal.SIGHUP, lambda *_: agent.loader.request())
    server = web.Server(("0.0.0.0", port), make_handler(agent))
    agent.health.start()
    for runner in agent.runners():
        runner.start()
    for job in [
        server.serve_forever,
        Watchdog(agent.runners(), log).loop,  # a job stuck in one run says where
    ]:
        threading.Thread(target=job, daemon=True).start()
    log(f"emu agent for node {node} listening on :{port}")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
