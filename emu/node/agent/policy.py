"""The agent's NetworkPolicy job: writes emu.node.policy's sets and chains into the node.

A sync renders the node's rules and writes only what changed: ipset restore
(entries added and deleted in sets that changed, new sets created), then
iptables-restore --noflush of the chains that changed, then the sets no rule
names any more are destroyed. The FORWARD hook is put in place by the first
sync with policies and by any sync after a failed one; with no policy left,
hook, chains and sets are all removed. Policies depend on the state only (pods, labels,
namespaces, policies), not on readiness, so a state generation already
written costs nothing.

Where the policies, pods and namespaces come from: with the agent's
`--policy-from api` (the default where its service rules come from the API
server too, emu.node.plan.cni), as a CNI's policy agent (Calico's, Cilium's,
kube-router's), from the API server's NetworkPolicies, Pods and Namespaces
(`PolicySource`, emu.node.kube.policyfeed, with the network policy agent's own
certificate): kubectl's policies and pods are enforced like emu's, and a policy,
pod label or namespace label change reaches the rules as one watch event, the
sets and chains it touches rewritten and nothing else. Otherwise from the
state file.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from collections.abc import Callable

from emu.node.agent import run as bounded_run
from emu.node import policy
from emu.node.kube.client import Client, from_pki
from emu.node.kube.informer import Informer, InformerGroup
from emu.node.kube.policyfeed import PolicyFeed
from emu.node.plan import cni
from emu.node.records import ClusterState

Runner = Callable[..., subprocess.CompletedProcess]
RETRY_AFTER = 0.5


class PolicySync:
    def __init__(self, log: Callable[[str], None], run: Runner = bounded_run):
        self.log = log
        self.run = run
        self.sets: policy.Sets | None = None  # what the kernel holds, as far as we know
        self.chains: policy.Chains | None = None
        self.generation: int | None = None
        self.lock = threading.Lock()
        self.retry: threading.Timer | None = None

    def _run(self, argv: list[str], text: str | None = None) -> None:
        result = self.run(argv, input=text, capture_output=True, text=True)
        if result.returncode != 0:
            self.sets = self.chains = None  # the next sync writes everything
            raise RuntimeError(f"{shlex.join(argv)} failed: {result.stderr.strip()[:500]}")

    def sync(self, state: ClusterState, node: str, retry: bool = True, source: str = "") -> int:
        """Write this generation's rules if not written yet; returns how many sets and chains were written.
        With `retry`, a failure is retried in full RETRY_AFTER seconds later (the agent syncs the state
        file's only on changes); without, the caller's job tries again (with its newest view).
        `source`: what the log line says the rules were made from (default: the state's generation)."""
        with self.lock:
            if self.retry is not None:
                self.retry.cancel()
                self.retry = None
            try:
                return self._sync(state, node, source or f"generation {state.generation}")
            except Exception:
                if retry:
                    self.retry = threading.Timer(RETRY_AFTER, self._retry, (state, node))
                    self.retry.daemon = True
                    self.retry.start()
                raise

    def _retry(self, state: ClusterState, node: str) -> None:
        try:
            self.sync(state, node)
        except Exception as error:  # noqa: BLE001 - logged; sync scheduled the next try
            self.log(f"network policy sync failed again: {error}")

    def _sync(self, state: ClusterState, node: str, source: str) -> int:
        if state.generation == self.generation:
            return 0
        started = time.monotonic()
        unknown = self.sets is None or self.chains is None
        if unknown:  # the first sync, or after a failure: read what the kernel holds
            before, existing_sets = self.existing_chains(), self.existing_sets()
        else:
            before, existing_sets = self.chains, list(self.sets)
        # No policy at all: no chain, no set and no hook, so a cluster without
        # policies forwards exactly as before they came.
        rules = policy.render(state, node) if state.network_policies else policy.PolicyRules()
        if not rules.chains and policy.MAIN_CHAIN in before:
            self.remove_hook()  # before its chain goes
        set_text = policy.ipset_restore_text(rules.sets, None if unknown else self.sets, existing_sets)
        chain_text = policy.iptables_restore_text(rules.chains, before)
        if set_text:
            self._run(["ipset", "restore"], set_text)
        if chain_text:
            self._run(["iptables-restore", "--noflush", "--wait"], chain_text)
        if rules.chains and (unknown or policy.MAIN_CHAIN not in before):
            self.ensure_hook()
        destroy = policy.ipset_destroy_text(rules.sets, existing_sets)
        if destroy:
            self._run(["ipset", "restore"], destroy)
        self.sets, self.chains, self.generation = rules.sets, rules.chains, state.generation
        written = sum(1 for line in set_text.splitlines() if line.startswith("create"))
        written += sum(1 for line in chain_text.splitlines() if line.startswith(":"))
        if set_text or chain_text or destroy:
            took = (time.monotonic() - started) * 1000
            self.log(f"network policies of {source}: {written} sets and chains in {took:.1f} ms")
        return written

    def remove_hook(self) -> None:
        hook = shlex.split(policy.HOOK)
        for _ in range(10):  # one normally; more if something put it there twice
            if self.run(["iptables", "-w", "-D", *hook], capture_output=True).returncode != 0:
                break

    def ensure_hook(self) -> None:
        hook = shlex.split(policy.HOOK)
        check = self.run(["iptables", "-w", "-C", *hook], capture_output=True, text=True)
        if check.returncode != 0:
            self._run(["iptables", "-w", "-I", hook[0], "1", *hook[1:]])

    def existing_chains(self) -> policy.Chains:
        """Chains an earlier agent left, so that the first sync rewrites or removes each."""
        result = self.run(["iptables-save", "-t", "filter"], capture_output=True, text=True)
        names = [line[1:].split()[0] for line in result.stdout.splitlines() if line.startswith(":")]
        return {name: ["(unknown)"] for name in names if policy.is_ours(name)}

    def existing_sets(self) -> list[str]:
        result = self.run(["ipset", "list", "-n"], capture_output=True, text=True)
        return [name for name in result.stdout.split() if name.startswith(policy.SET_PREFIX)]


NETWORK_POLICY_CERT = "network-policy"  # network-policy.crt/.key in the node's PKI folder (emu.control.pki)


def network_policy_client(state: ClusterState, node: str, pki: str = cni.PKI_DIR) -> Client | None:
    """A client of the cluster's API server as the network policy agent (user
    emu-network-policy, which RBAC's ClusterRole emu-network-policy lets list and watch
    NetworkPolicies, Pods and Namespaces, and nothing else), None where the node has no
    such certificate (a cluster made without an API server, or by an older emu)."""
    server = f"https://{cni.api_server_node(state).node_ip}:{cni.API_PORT}"
    return from_pki(server, pki, NETWORK_POLICY_CERT, f"emu-network-policy/emu ({node})")


class PolicySource(InformerGroup):
    """The network policy agent's watch of the API server (emu.node.kube.policyfeed):
    NetworkPolicies, Pods and Namespaces, listed and watched by informers that reconnect
    by themselves (the rules stay as they are while the server is away). `on_change`
    wakes the policy job; `revision()` is the resourceVersion up to which every change
    of the three has reached the feed."""

    def __init__(self, node: str, log: Callable[[str], None], on_change: Callable[[], None],
                 connect: Callable[[ClusterState, str], Client | None] = network_policy_client):  # fmt: skip
        self.node = node
        self.log = log
        self.on_change = on_change
        self.connect = connect
        self.feed: PolicyFeed | None = None
        self.informers: list[Informer] = []
        self.unavailable = False  # no certificate when last asked (a cluster made by an older emu)

    def start(self, state: ClusterState) -> bool:
        """Start watching (once). Whether the feed runs."""
        if self.feed is not None:
            return True
        client = self.connect(state, self.node)
        if client is None:
            if not self.unavailable:
                self.log("no network policy agent certificate: no network policies until there is one")
                self.unavailable = True
            return False
        self.unavailable = False
        self.feed = PolicyFeed(self.on_change)
        self.informers = self.feed.informers(client, self.log)
        for informer in self.informers:
            informer.start()
        return True

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()
