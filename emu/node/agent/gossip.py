"""Readiness between nodes, shaped like Kubernetes': a star, not a mesh.

Every agent reports its own pods' readiness to the hub (the agent on the
first control-plane node) when it changes, and as a heartbeat; the hub keeps
every node's, as the API server keeps pod status, and streams each change to
every agent watching it, as kube-proxy watches EndpointSlices. One change
costs one report and one line per node, and a quiet cluster sends only
heartbeats. A node that stops reporting is NotReady after a grace period: the
hub empties its readiness, so its endpoints leave every service (the node
lifecycle controller's job), until it reports again.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable

from emu.node.agent import web
from emu.node.agent.runner import Runner
from emu.node.records import MAX_STATE_BYTES, ClusterState, NodeState, NodeTiming

# A lab's topology may shorten these (records.NodeTiming, from its nodeMonitorGracePeriod):
HEARTBEAT = NodeTiming().heartbeat  # 10 s between an agent's reports when nothing changes (nodeStatusUpdateFrequency)
NODE_GRACE = NodeTiming().hub_grace  # 25 s: a node silent this long is NotReady (Kubernetes' grace period: 40 s)
RETRY = 0.5
REPORT_TIMEOUT = 10.0

Readiness = dict[str, bool]  # pod uid -> ready


def hub_node(state: ClusterState) -> NodeState:
    """The node whose agent is the hub: the first control-plane node, else the first node."""
    return next((node for node in state.nodes if node.role == "control-plane"), state.nodes[0])


class Hub:
    """Every node's readiness, and the watchers to tell of each change."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, grace: float = NODE_GRACE):
        self.clock = clock
        self.grace = grace
        self.lock = threading.Lock()
        self.ready: dict[str, Readiness] = {}
        self.seen: dict[str, float] = {}
        self.lost: dict[str, float] = {}  # node -> when it became NotReady
        self.watchers: set[queue.SimpleQueue] = set()

    def report(self, node: str, ready: Readiness) -> None:
        with self.lock:
            self.seen[node] = self.clock()
            if node in self.lost:
                del self.lost[node]
            elif self.ready.get(node) == ready:
                return
            self.ready[node] = ready
            self._tell({"node": node, "ready": ready})

    def expire(self, nodes: list[str]) -> list[str]:
        """Mark nodes NotReady that have not reported within the grace period
        (counted from the hub's first sight of them). Returns those newly lost."""
        now = self.clock()
        newly = []
        with self.lock:
            for node in nodes:
                first = self.seen.setdefault(node, now)
                if node not in self.lost and now - first > self.grace:
                    self.lost[node] = now
                    newly.append(node)
                    self.ready[node] = {}
                    # "lost": its pods' readiness is known (none ready), not awaited (Agent.unknown)
                    self._tell({"node": node, "ready": {}, "lost": True})
        return newly

    def lost_for(self, seconds: float) -> set[str]:
        """Nodes NotReady for longer than `seconds`."""
        now = self.clock()
        with self.lock:
            return {node for node, since in self.lost.items() if now - since > seconds}

    def subscribe(self, first: dict | None = None) -> queue.SimpleQueue:
        """A queue that gets `first` (if any) and the whole picture, then every change."""
        watcher: queue.SimpleQueue = queue.SimpleQueue()
        with self.lock:
            if first:
                watcher.put(first)
            watcher.put({"all": {node: dict(ready) for node, ready in self.ready.items()}, "lost": sorted(self.lost)})
            self.watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: queue.SimpleQueue) -> None:
        with self.lock:
            self.watchers.discard(watcher)

    def tell(self, message: dict) -> None:
        """Send every watcher a message (a new state)."""
        with self.lock:
            self._tell(message)

    def _tell(self, message: dict) -> None:
        for watcher in self.watchers:
            watcher.put(message)


class Reporter:
    """Sends this node's readiness to the hub: at once when it changes, else
    every HEARTBEAT seconds. Each report on a connection of its own: kept
    alive, the hub held a thread and its buffers for every node between
    reports (1 MB at 50 nodes), to save 5 connections a second."""

    def __init__(self, node: str, port: int, log: Callable[[str], None]):
        self.node = node
        self.port = port
        self.log = log
        self.runner: Runner | None = None

    def changed(self) -> None:
        """This node's readiness changed: report it now."""
        if self.runner is not None:
            self.runner.request()

    def job(self, hub_address: Callable[[], str | None], readiness: Callable[[], Readiness | None]) -> Runner:
        """The reporting job: at once on a change, else every HEARTBEAT seconds; a
        report the hub did not take is sent again RETRY seconds later."""

        def report(requested: bool) -> float | None:
            address, ready = hub_address(), readiness()
            if address is None or ready is None:
                return None
            return None if self.send(address, ready) else RETRY

        self.runner = Runner("report", report, self.log, max_interval=HEARTBEAT, describe=lambda: "reporting to the hub")
        return self.runner

    def send(self, address: str, ready: Readiness) -> bool:
        body = json.dumps({"node": self.node, "ready": ready}).encode()
        # A hub slow to answer is a busy hub (a 40,000-endpoint lab's 50 agents
        # writing their rules at once on two cores): a report it takes late still
        # counts; one given up after 2 s left nodes NotReady that were not.
        connection = web.Connection(address, self.port, timeout=REPORT_TIMEOUT)
        try:
            status, _ = connection.request("POST", "/report", body)
        except OSError:
            return False
        finally:
            connection.close()
        if status != 200:
            self.log(f"the hub at {address} refused the report: {status}")
            return False
        return True


class Watcher:
    """Follows the hub's stream of readiness changes and hands each to `apply`.
    On a broken stream it reconnects and gets the whole picture again."""

    def __init__(self, port: int, log: Callable[[str], None]):
        self.port = port
        self.log = log

    def job(
        self, hub_address: Callable[[], str | None], apply: Callable[[dict], None], generation: Callable[[], int]
    ) -> Runner:
        """The watching job: one run follows the stream until it breaks (so it is
        never reported as stalled), and the next connects again RETRY seconds later."""
        address: list[str | None] = [None]

        def watch(requested: bool) -> float:
            address[0] = hub_address()
            if address[0] is not None:
                self.follow(address[0], apply, generation())
            return RETRY

        return Runner("watch", watch, self.log, retry_interval=RETRY, stall_after=float("inf"),
                      describe=lambda: f"watching the hub at {address[0]}")  # fmt: skip

    def follow(self, address: str, apply: Callable[[dict], None], generation: int = 0) -> None:
        """Follow the stream. `generation` is the state this node holds: a hub
        holding a newer one (it moved a lost node's pods) sends it first."""
        # The hub writes a line at least every HEARTBEAT seconds; silence beyond
        # that means the hub (or its node) is gone.
        connection = web.Connection(address, self.port, timeout=HEARTBEAT * 3)
        try:
            lines = connection.stream(f"/watch?generation={generation}")
            while True:
                line = lines.readline(2 * MAX_STATE_BYTES)  # a newer state travels as one line
                if not line:
                    raise ValueError("the stream ended")
                message = json.loads(line)
                if message:
                    apply(message)
        finally:
            connection.close()


def stream(watcher: queue.SimpleQueue, write: Callable[[bytes], None]) -> None:
    """The hub's side of a watch: each message as a JSON line, and an empty
    object when nothing happened for HEARTBEAT seconds. Returns when writing fails."""
    while True:
        try:
            message = watcher.get(timeout=HEARTBEAT)
        except queue.Empty:
            message = {}
        write(json.dumps(message).encode() + b"\n")
