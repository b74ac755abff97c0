"""kube-proxy's sync loop, in the agent, for whichever mode the cluster runs.

A sync renders the node's whole ruleset with the cluster's proxier
(emu.node.proxy.proxier(networking.proxyMode)) and writes only what changed
(iptables-restore --noflush of the changed chains, or one nft -f transaction).
Between syncs the agent checks that the kernel still holds what it wrote
(`Proxier.lost`: every chain with its number of rules, and the hooks into
them). When something is missing (a flushed chain, a deleted rule, a table
reset) or a write failed, the next sync is a full one, as kube-proxy does when
its canary chain disappears. The check reads the kernel's whole ruleset once,
so its period grows with its cost and with the number of nodes doing the same
(`check_period`): all the agents of a cluster together spend at most
CLUSTER_CHECK_SHARE of one core on it, and a small cluster checks every second.
In IPVS mode the agent also looks every second (`due`) at the kernel's IPVS
table in /proc/net/ip_vs, which takes no process to read, and checks at once
when it is not what the last sync or check left: a check's tool runs (6 in
IPVS mode) cost 0.39 s of CPU in a User-mode Linux guest, where starting a
process is slow, so there a check comes every 2 minutes in a 3-node cluster,
while a flushed IPVS table is noticed within a second or two.

After each sync, UDP conntrack entries that still point at an endpoint that
left a service are deleted (`conntrack -D`), as kube-proxy does in every mode:
without it a DNS client keeps sending to a dead pod.

Where the rules come from: with the agent's `--proxy-from api` (set by
emu.node.plan.cni), as kube-proxy's, from the API server's Services,
EndpointSlices and Nodes (`ApiSource`, with kube-proxy's own certificate);
otherwise from the state file and the readiness the hub gathers.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from emu.node.agent import run as bounded_run
from emu.node.kube.client import Client, from_pki
from emu.node.kube.informer import Informer, InformerGroup
from emu.node.kube.proxyfeed import ProxyFeed
from emu.node.plan import cni
from emu.node.proxy import mode_of, proxier
from emu.node.proxy.conntrack import stale_udp_commands, udp_view
from emu.node.proxy.iptables import differences, hook_jumps  # noqa: F401 - the iptables check, used by tests
from emu.node.records import ClusterState

Runner = Callable[..., subprocess.CompletedProcess]
MIN_CHECK_PERIOD = 1.0
MAX_CHECK_PERIOD = 600.0  # (at 50 nodes of 1,000 services the budget asks for 500 s)
CLUSTER_CHECK_SHARE = 0.01  # of one core, for every agent's checks together
LOOK_PERIOD = 1.0  # between checks, a look at the IPVS table (IPVS mode)
IPVS_TABLE = Path("/proc/net/ip_vs")


def ipvs_table(path: Path = IPVS_TABLE) -> str | None:
    """The kernel's IPVS virtual and real servers as /proc/net/ip_vs lists them,
    without the real servers' connection counts (which traffic changes); None
    where the kernel has no IPVS."""
    try:
        text = path.read_text()
    except OSError:
        return None
    # A real server's line: -> RemoteAddress:Port Forward Weight ActiveConn InActConn
    return "\n".join(" ".join(line.split()[:4] if line.split()[:1] == ["->"] else line.split())
                     for line in text.splitlines())  # fmt: skip


class ProxySync:
    """Writes a node's service rules and keeps them there."""

    def __init__(self, log: Callable[[str], None], run: Runner = bounded_run,
                 clock: Callable[[], float] = time.monotonic,
                 table: Callable[[], str | None] = ipvs_table):  # fmt: skip
        self.log = log
        self.run = run
        self.clock = clock
        self.table = table  # the IPVS table, read without a process (IPVS mode)
        self.proxier = None  # picked by the first state's proxyMode
        self.previous = None  # what the kernel holds, as far as we know (None: ask it)
        self.cache: dict = {}
        self.check_period = MIN_CHECK_PERIOD
        self.checked = (clock(), clock())  # when the last check began and ended
        self.table_seen: str | None = None  # the IPVS table the last sync or check left (IPVS mode)
        self.look_period = LOOK_PERIOD
        self.repairs = 0
        self.udp: dict | None = None  # UDP service addresses -> endpoints at the last sync

    def sync(self, state: ClusterState, node: str, endpoints: dict) -> int:
        """Render and write what changed; returns the number of objects written."""
        if self.proxier is None or self.proxier.mode != mode_of(state):
            self.proxier = proxier(mode_of(state))
            self.previous, self.cache = None, {}
        rules = self.proxier.render(state, node, endpoints, cache=self.cache)
        if self.previous is None:
            self.previous = self.proxier.adopt(self.run)
        try:
            written = self.proxier.apply(self.run, rules, self.previous)
        except RuntimeError:
            self.previous = None  # the next sync writes everything
            raise
        self.previous = rules
        self.table_seen = self._table()
        self.clear_stale_udp(state, node, endpoints)
        return written

    def _table(self) -> str | None:
        return self.table() if self.proxier is not None and self.proxier.mode == "ipvs" else None

    def due(self, nodes: int = 1) -> bool:
        """Whether to check now: check_period has passed, or (IPVS mode) the IPVS
        table is not what the last sync or check left. Reading it costs no process
        start, so it is looked at every LOOK_PERIOD (less often should a look cost
        more than the share of a check)."""
        if self.next_check_in() == 0.0:
            return True
        if self.table_seen is None or self.previous is None:
            return False
        started = time.thread_time()
        moved = self._table() != self.table_seen
        share = CLUSTER_CHECK_SHARE / max(1, nodes)
        self.look_period = min(MAX_CHECK_PERIOD, max(LOOK_PERIOD, (time.thread_time() - started) / share))
        return moved

    def next_check_in(self) -> float:
        """Seconds until the next check: check_period after the last one began (and at
        least MIN_CHECK_PERIOD after it ended), whatever syncs ran meanwhile. (A sync
        asked for, after any change, must not put the check off by a whole period each
        time: with a long period, changes coming more often would starve it.)"""
        began, ended = self.checked
        return max(0.0, max(began + self.check_period, ended + MIN_CHECK_PERIOD) - self.clock())

    def next_look_in(self) -> float:
        """Seconds until `due` should be asked again: the next check, or the next look at the IPVS table."""
        wait = self.next_check_in()
        return wait if self.table_seen is None else min(wait, self.look_period)

    def clear_stale_udp(self, state: ClusterState, node: str, endpoints: dict) -> None:
        """conntrack -D for UDP flows to endpoints that left their service."""
        view = udp_view(state, node, endpoints)
        before, self.udp = self.udp, view
        if before is None:
            return
        for argv in stale_udp_commands(before, view):
            result = self.run(argv, capture_output=True, text=True)
            # conntrack exits 1 when nothing matched: not a failure.
            if result.returncode not in (0, 1):
                self.log(f"{' '.join(argv)} failed: {result.stderr.strip()}")

    def check(self, nodes: int = 1) -> list[str]:
        """What the kernel lost of the rules last written (nothing: []). Repairs
        missing hooks at once; a caller then syncs in full (`self.previous` is
        dropped so the next sync rewrites everything). `nodes`: how many agents
        share the cluster's budget for checking."""
        started = self.clock()
        if self.previous is None or self.proxier is None:
            self.checked = (started, started)
            return []
        lost = self.proxier.lost(self.run, self.previous)
        self.checked = (started, self.clock())
        self.table_seen = self._table()
        took = self.checked[1] - started  # reading the kernel's rules: what a check costs
        share = CLUSTER_CHECK_SHARE / max(1, nodes)
        self.check_period = min(MAX_CHECK_PERIOD, max(MIN_CHECK_PERIOD, took / share))
        if lost:
            self.repairs += 1
            self.previous = self.proxier.forget()  # the next sync rewrites everything
        return lost


def kube_proxy_client(state: ClusterState, node: str, pki: str = cni.PKI_DIR) -> Client | None:
    """A client of the cluster's API server as kube-proxy (user system:kube-proxy, which
    RBAC's bootstrap binding system:node-proxier lets list and watch Services,
    EndpointSlices and Nodes, and nothing else), None where the node has no such
    certificate (a cluster made without an API server)."""
    server = f"https://{cni.api_server_node(state).node_ip}:{cni.API_PORT}"
    return from_pki(server, pki, "kube-proxy", f"kube-proxy/emu ({node})")


class ApiSource(InformerGroup):
    """kube-proxy's watch of the API server (emu.node.kube.proxyfeed): Services,
    EndpointSlices and Nodes, listed and watched by informers that reconnect by
    themselves (the rules stay as they are while the server is away).
    `on_change` wakes the sync job; `revision()` is the resourceVersion up to which
    every change of the three has reached the feed."""

    def __init__(self, node: str, log: Callable[[str], None], on_change: Callable[[], None],
                 connect: Callable[[ClusterState, str], Client | None] = kube_proxy_client):  # fmt: skip
        self.node = node
        self.log = log
        self.on_change = on_change
        self.connect = connect
        self.feed: ProxyFeed | None = None
        self.informers: list[Informer] = []
        self.missing_logged = False

    def start(self, state: ClusterState) -> bool:
        """Start watching (once; later calls pass on a new kube-proxy configuration).
        Whether the feed runs."""
        if self.feed is not None:
            self.feed.set_networking(state.networking)
            return True
        client = self.connect(state, self.node)
        if client is None:
            if not self.missing_logged:
                self.log("no kube-proxy certificate: no service rules until there is one")
                self.missing_logged = True
            return False
        self.feed = ProxyFeed(self.node, state.networking, self.on_change)
        self.informers = self.feed.informers(client, self.log)
        for informer in self.informers:
            informer.start()
        return True

