#!/usr/bin/env python3
"""NetworkPolicy from the API server (every node's policy agent watches NetworkPolicies,
Pods and Namespaces: emu.node.kube.policyfeed), side by side in one run.

enforce  a real lab (a server pod and a client pod on two nodes): a policy that
         isolates the server, from the command's start until a connection from the
         client is refused (the policy's REJECT), --runs times each, alternating:
         emu: `kubectl apply -f` of the policy (API server -> every agent's watch ->
              its ipsets and chains);
         baseline: `emu apply -f` of the same policy (emu plans it into the state
              file, writes it to every node and into the API server, and waits for
              every agent's rules).
         The policy is deleted (the same way) between runs, until the client is
         answered again. A probe loop in the client's network namespace notes when
         the first connection is refused (node clocks are the host's).
feed     no Docker: an API server (bench/apilab.py) holding --pods pods and --policies
         policies, and one agent's feed watching it with the network policy agent's
         certificate. One pod's label changed (as `kubectl label pod`): the time from
         the write until the feed has it and the rules (sets and chains, and the
         ipset/iptables input that writes what changed) are made; beside it, what a
         full resync costs: listing the three collections again and making every
         set and chain from scratch.

usage: python bench/netpol_api.py [--runs 5] [--only enforce,feed] [--pods 2000] [--policies 100] [--json]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import apilab
import harness
from harness import ROOT

AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.52"
LAB = """\
name: emubench-netpol
nodes: [{name: cp, role: control-plane}, {name: w1}, {name: w2}]
pods:
  - {name: server, node: w2, labels: {app: server}, containers: [{name: netexec, workload: netexec}]}
  - {name: client, node: w1, containers: [{name: shell, command: [sleep, infinity]}]}
"""
POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: NAME, namespace: default}
spec: {podSelector: {matchLabels: {app: server}}, policyTypes: [Ingress]}
"""
# Prints "open" once a connection is made, then the time.time() of the first refused one.
WATCH = r"""
import socket, sys, time
ip, want = sys.argv[1], sys.argv[2]
said = False
deadline = time.time() + 60
while time.time() < deadline:
    try:
        socket.create_connection((ip, 8080), timeout=1).close()
        state = "open"
    except ConnectionRefusedError:
        state = "refused"
    except OSError:
        state = "other"
    if state != want and not said:
        print("ready", flush=True)
        said = True
    if state == want and said:
        print(time.time(), flush=True)
        break
    time.sleep(0.002)
"""


class Lab:
    """The lab, its server's address and the client's node container."""

    def __init__(self):
        from emu.api.load import load_text
        from emu.control.cluster import Cluster

        self.cluster = Cluster("emubench-netpol")
        self.cluster.down()
        self.cluster.up(load_text(LAB))
        state = self.cluster.state()
        self.server_ip = state.pods["default/server"].ip
        self.client_node = state.node(state.pods["default/client"].node).container
        self.context = f"emu-{self.cluster.name}"
        self.folder = Path(tempfile.mkdtemp(prefix="emubench-netpol-"))
        self.runs = 0

    def until(self, want: str, change) -> float:
        """Seconds from change() starting until the client's connections are `want`."""
        watcher = subprocess.Popen(["docker", "exec", self.client_node, "ip", "netns", "exec", "client", "python3",
                                    "-c", WATCH, self.server_ip, want], stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            if watcher.stdout.readline().strip() != "ready":
                raise SystemExit(f"the client's probe did not start (the server is not {want!r} yet?)")
            started = time.time()
            change()
            line = watcher.stdout.readline().strip()
            if not line:
                raise SystemExit(f"the client's connections did not become {want!r} within 60 s")
            return float(line) - started
        finally:
            watcher.kill()
            watcher.wait()

    def manifest(self) -> Path:
        self.runs += 1
        path = self.folder / f"policy-{self.runs}.yaml"
        path.write_text(POLICY.replace("NAME", f"isolate-{self.runs}"))
        return path

    def kubectl(self) -> float:
        path = self.manifest()
        took = self.until("refused", lambda: command(["kubectl", "--context", self.context, "apply", "-f", str(path)]))
        self.until("open", lambda: command(["kubectl", "--context", self.context, "delete", "-f", str(path)]))
        return took

    def emu(self) -> float:
        path = self.manifest()
        emu = [str(ROOT / ".venv" / "bin" / "emu")] if (ROOT / ".venv" / "bin" / "emu").exists() else \
            [sys.executable, "-m", "emu.cli"]  # fmt: skip
        took = self.until("refused", lambda: command([*emu, "apply", "-f", str(path), "--name", self.cluster.name]))
        self.until("open", lambda: command([*emu, "delete", "-f", str(path), "--name", self.cluster.name]))
        return took


def command(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def enforce(context: harness.Context) -> None:
    lab = Lab()
    try:
        kubectl, emu = context.alternate(lab.kubectl, lab.emu)
        context.report.compare("NetworkPolicy applied until a connection is refused", kubectl, emu, "ms",
                               note="emu: kubectl apply -f (the agents' watch); baseline: emu apply -f")  # fmt: skip
    finally:
        lab.cluster.down()


# ---- feed: one agent's view of an API server, no Docker -------------------------------------


def objects(pods: int, policies: int) -> list[dict]:
    """Namespaces ns-0..9, `pods` pods over them on 10 nodes, `policies` policies (each app's
    pods let in from the same app's pods in namespaces labelled team=blue)."""
    out = [{"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": f"ns-{n}", "labels": {"team": "blue" if n % 2 else "red"}}} for n in range(10)]
    for i in range(pods):
        ip = f"10.244.{i // 250}.{i % 250 + 2}"
        out.append({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"pod-{i:05d}", "namespace": f"ns-{i % 10}",
                                 "labels": {"app": f"app-{i % policies}", "tier": "web"}},
                    "spec": {"nodeName": f"node-{i % 10}", "containers": [{"name": "c", "image": "agnhost"}]},
                    "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})  # fmt: skip
    for p in range(policies):
        out.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": f"policy-{p}", "namespace": f"ns-{p % 10}"},
                    "spec": {"podSelector": {"matchLabels": {"app": f"app-{p}"}}, "policyTypes": ["Ingress"],
                             "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}},
                                                    "podSelector": {"matchLabels": {"app": f"app-{p}"}}}],
                                          "ports": [{"protocol": "TCP", "port": 8080}]}]}})  # fmt: skip
    from emu.apiserver import resources

    for obj in out:  # as the API server would store them (its defaults), so that a label patch is valid
        if obj["kind"] == "Pod":
            status = obj["status"]
            resources.prepare_create(resources.by_kind("v1", "Pod"), obj)
            obj["status"] = status
    return out


def feed(context: harness.Context) -> None:
    from emu.node import policy
    from emu.node.kube.client import Client, resource_path
    from emu.node.kube.policyfeed import PolicyFeed

    pods, policies = context.options.pods, context.options.policies
    with tempfile.TemporaryDirectory(prefix="emubench-netpol-") as folder:
        lab = apilab.start(Path(folder), objects(pods, policies))
        try:
            pki = lab.pki
            client = Client(lab.url, str(pki / "ca.crt"), str(pki / "network-policy.crt"),
                            str(pki / "network-policy.key"))  # fmt: skip
            changed = threading.Event()
            view = PolicyFeed(changed.set)
            informers = view.informers(client)
            for informer in informers:
                informer.start()
            for informer in informers:
                informer.wait_synced(60)
            node = "node-0"
            state, _ = view.snapshot()
            written = policy.render(state, node)
            path = resource_path("v1", "pods", "ns-0", "pod-00000")
            flips = iter(range(1, 10**6))  # (pod-00000 starts as app-0: each flip changes its label)

            def incremental() -> float:
                nonlocal written
                label = {"metadata": {"labels": {"app": f"app-{next(flips) % policies}"}}}
                changed.clear()
                started = time.perf_counter()
                lab.admin.patch(path, label, "merge")  # as `kubectl label pod` does
                if not changed.wait(10):
                    raise SystemExit("the label change did not reach the feed within 10 s")
                state, _ = view.snapshot()
                rules = policy.render(state, node)
                policy.ipset_restore_text(rules.sets, written.sets)
                policy.iptables_restore_text(rules.chains, written.chains)
                written = rules
                return time.perf_counter() - started

            def full() -> float:
                started = time.perf_counter()
                fresh = PolicyFeed()
                for informer in fresh.informers(client):
                    informer._list()  # one list of the collection, as a relist does
                state, _ = fresh.snapshot()
                rules = policy.render(state, node)
                policy.ipset_restore_text(rules.sets, None)
                policy.iptables_restore_text(rules.chains, None)
                return time.perf_counter() - started

            quick, slow = context.alternate(incremental, full)
            context.report.compare(f"label change to rules, {pods} pods, {policies} policies", quick, slow, "ms",
                                   note="emu: the watch event; baseline: a full resync (list all, render all)")
            for informer in informers:
                informer.stop()
        finally:
            lab.kill()


SCENARIOS = [
    harness.Scenario("enforce", "kubectl apply -f of a NetworkPolicy until a connection is refused",
                     "emu apply -f of the same policy", enforce),
    harness.Scenario("feed", "a pod label change through the feed to rendered rules",
                     "a full resync: list and render everything", feed),
]


def options(parser) -> None:
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--policies", type=int, default=100)


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=5, options=options))
