"""kube-proxy's sync loop for the iptables mode, in the agent.

A sync renders the node's whole ruleset and writes only the chains that
changed (iptables-restore --noflush). Between syncs the agent checks that the
kernel still holds what it wrote: every KUBE-* chain with its number of rules,
and the jumps into them from the built-in chains. When something is missing
(a flushed chain, a deleted rule, a table reset) or a restore failed, the next
sync is a full one, as kube-proxy does when its canary chain disappears. The
check reads the tables with one iptables-save, so its period grows with its
cost and with the number of nodes doing the same (`check_period`): all the
agents of a cluster together spend at most CLUSTER_CHECK_SHARE of one core on
it, and a small cluster checks every second.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from emu.proxy import iptables
from emu.records import ClusterState

Runner = Callable[..., subprocess.CompletedProcess]
MIN_CHECK_PERIOD = 1.0
MAX_CHECK_PERIOD = 300.0
CLUSTER_CHECK_SHARE = 0.01  # of one core, for every agent's checks together


def hook_jumps() -> set[tuple[str, str, str]]:
    """(table, built-in chain, KUBE-* target) of every hook rule."""
    jumps = set()
    table = ""
    for line in iptables.hook_rules().splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-I "):
            words = line.split()
            jumps.add((table, words[1], words[words.index("-j") + 1]))
    return jumps


def kernel_view(save_output: str) -> tuple[dict[tuple[str, str], int], set[tuple[str, str, str]]]:
    """From iptables-save: ({(table, KUBE-* chain): rule count}, {(table, chain, KUBE-* target) jumps})."""
    counts: dict[tuple[str, str], int] = {}
    jumps: set[tuple[str, str, str]] = set()
    table = ""
    for line in save_output.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":KUBE-"):
            counts[(table, line[1:].split()[0])] = 0
        elif line.startswith("-A "):
            words = line.split()
            chain = words[1]
            if chain.startswith("KUBE-"):
                counts[(table, chain)] = counts.get((table, chain), 0) + 1
            elif "-j" in words:
                target = words[words.index("-j") + 1]
                if target.startswith("KUBE-"):
                    jumps.add((table, chain, target))
    return counts, jumps


def differences(ruleset: iptables.Ruleset, save_output: str) -> list[str]:
    """What the kernel lacks of `ruleset` and of the hooks, as short phrases."""
    counts, jumps = kernel_view(save_output)
    found = []
    for table, chains in ruleset.items():
        for chain, rules in chains.items():
            have = counts.get((table, chain))
            if have is None:
                found.append(f"{table}/{chain} missing")
            elif have != len(rules):
                found.append(f"{table}/{chain} has {have} rules, not {len(rules)}")
    found += [f"{table}/{chain} no longer jumps to {target}" for table, chain, target in sorted(hook_jumps() - jumps)]
    return found


class ProxySync:
    """Writes a node's service rules and keeps them there."""

    def __init__(self, log: Callable[[str], None], run: Runner = subprocess.run):
        self.log = log
        self.run = run
        self.previous: iptables.Ruleset | None = None  # what the kernel holds, as far as we know
        self.cache: dict = {}
        self.check_period = MIN_CHECK_PERIOD
        self.repairs = 0

    def sync(self, state: ClusterState, node: str, endpoints: dict) -> int:
        """Render and write what changed; returns the number of chains written."""
        ruleset = iptables.render(state, node, endpoints, cache=self.cache)
        if self.previous is None:
            self.previous = self.existing_chains()
        text = iptables.restore_text(ruleset, self.previous)
        if text.strip():
            result = self.run(["iptables-restore", "--noflush", "--wait"], input=text, capture_output=True, text=True)
            if result.returncode != 0:
                self.previous = None  # the next sync writes everything
                raise RuntimeError(f"iptables-restore failed: {result.stderr.strip()}")
        self.previous = ruleset
        return sum(1 for line in text.splitlines() if line.startswith(":"))

    def check(self, nodes: int = 1) -> list[str]:
        """What the kernel lost of the rules last written (nothing: []). Repairs
        missing hooks at once; a caller then syncs in full (`self.previous` is
        dropped so the next sync rewrites every chain). `nodes`: how many agents
        share the cluster's budget for checking."""
        if self.previous is None:
            return []
        started = time.monotonic()
        save = self.run(["iptables-save"], capture_output=True, text=True)
        if save.returncode != 0:
            return [f"iptables-save failed: {save.stderr.strip()}"]
        lost = differences(self.previous, save.stdout)
        took = time.monotonic() - started  # iptables-save and reading it: what a check costs
        share = CLUSTER_CHECK_SHARE / max(1, nodes)
        self.check_period = min(MAX_CHECK_PERIOD, max(MIN_CHECK_PERIOD, took / share))
        if lost:
            self.repairs += 1
            missing_hooks = hook_jumps() - kernel_view(save.stdout)[1]
            if missing_hooks:
                self.restore_hooks(missing_hooks)
            self.previous = {}  # every chain counts as unwritten: the next sync is a full one
        return lost

    def restore_hooks(self, missing: set[tuple[str, str, str]]) -> None:
        """Put back the hook rules that are gone (and only those: -I twice would duplicate)."""
        table = ""
        lines: dict[str, list[str]] = {}
        for line in iptables.hook_rules().splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-I "):
                words = line.split()
                if (table, words[1], words[words.index("-j") + 1]) in missing:
                    lines.setdefault(table, []).append(line)
        text = "".join(
            f"*{table}\n" + "".join(f":{chain} - [0:0]\n" for chain in iptables.BASE_CHAINS[table] if chain)
            + "\n".join(rules) + "\nCOMMIT\n"
            for table, rules in lines.items()
        )
        self.run(["iptables-restore", "--noflush", "--wait"], input=text, capture_output=True, text=True)

    def existing_chains(self) -> iptables.Ruleset:
        """KUBE-* chains already in the kernel (an earlier agent's), so the first
        sync rewrites or deletes each of them."""
        found: iptables.Ruleset = {}
        for table in ("filter", "nat"):
            result = self.run(["iptables-save", "-t", table], capture_output=True, text=True)
            chains = [line[1:].split()[0] for line in result.stdout.splitlines() if line.startswith(":KUBE-")]
            found[table] = {chain: ["(unknown)"] for chain in chains if chain not in iptables.BASE_CHAINS[table]}
        return found
