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

After each sync, UDP conntrack entries that still point at an endpoint that
left a service are deleted (`conntrack -D`), as kube-proxy does in every mode:
without it a DNS client keeps sending to a dead pod.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from emu.node.agent import run as bounded_run
from emu.node.proxy import mode_of, proxier
from emu.node.proxy.conntrack import stale_udp_commands, udp_view
from emu.node.proxy.iptables import differences, hook_jumps  # noqa: F401 - the iptables check, used by tests
from emu.node.records import ClusterState

Runner = Callable[..., subprocess.CompletedProcess]
MIN_CHECK_PERIOD = 1.0
MAX_CHECK_PERIOD = 600.0  # (at 50 nodes of 1,000 services the budget asks for 500 s)
CLUSTER_CHECK_SHARE = 0.01  # of one core, for every agent's checks together


class ProxySync:
    """Writes a node's service rules and keeps them there."""

    def __init__(self, log: Callable[[str], None], run: Runner = bounded_run):
        self.log = log
        self.run = run
        self.proxier = None  # picked by the first state's proxyMode
        self.previous = None  # what the kernel holds, as far as we know (None: ask it)
        self.cache: dict = {}
        self.check_period = MIN_CHECK_PERIOD
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
        self.clear_stale_udp(state, node, endpoints)
        return written

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
        if self.previous is None or self.proxier is None:
            return []
        started = time.monotonic()
        lost = self.proxier.lost(self.run, self.previous)
        took = time.monotonic() - started  # reading the kernel's rules: what a check costs
        share = CLUSTER_CHECK_SHARE / max(1, nodes)
        self.check_period = min(MAX_CHECK_PERIOD, max(MIN_CHECK_PERIOD, took / share))
        if lost:
            self.repairs += 1
            self.previous = self.proxier.forget()  # the next sync rewrites everything
        return lost
