"""Runs inside an emu node (PYTHONPATH=/opt/emu/lib): times emu's NetworkPolicy
sync against a bare `ipset restore` + `iptables-restore` of the same text.
Driven by bench/edge.py (its "sync" scenario), which copies this file and
bench/harness.py into the node: python3 node_policy_sync.py POLICIES RUNS
prints one JSON line, each time as harness.Timing.as_dict().

The state: 1,000 pods on this node in 10 namespaces (labels app=a0..a99,
role=r0..r49) and N policies, each selecting one app, admitting one role from
namespaces labelled team=blue on TCP 8080 and the port named http, and letting
every tenth policy's pods send only inside 10.0.0.0/8 except 10.96.0.0/12.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import harness

from emu.node import policy
from emu.node.agent.policy import PolicySync
from emu.node.records import ClusterState, NodeState, PodState

POD_BASE = ipaddress.IPv4Address("10.244.0.0")


def make(policies: int, pods: int = 1000) -> ClusterState:
    node = NodeState("n0", "control-plane", {}, "10.244.0.0/16", "172.28.0.2", "bench")
    state = ClusterState("bench", "bench", "172.28.0.0/24", {"podSubnet": "10.244.0.0/16"}, [node])
    state.namespaces = {f"ns{i}": {"kubernetes.io/metadata.name": f"ns{i}", "team": "blue" if i % 2 else "red"}
                        for i in range(10)}  # fmt: skip
    ports = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    for i in range(pods):
        state.pods[f"ns{i % 10}/p{i}"] = PodState(
            f"ns{i % 10}", f"p{i}", "n0", str(POD_BASE + 2 + i), {"app": f"a{i % 100}", "role": f"r{i % 50}"},
            [{"name": "c", "ports": ports}], "x",
        )  # fmt: skip
    for k in range(policies):
        spec = {
            "name": f"np{k}", "namespace": f"ns{k % 10}",
            "podSelector": {"matchLabels": {"app": f"a{k % 100}"}},
            "policyTypes": ["Ingress", "Egress"] if k % 10 == 0 else ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": f"r{k % 50}"}},
                                   "namespaceSelector": {"matchLabels": {"team": "blue"}}}],
                         "ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": "http"}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}}]}] if k % 10 == 0 else [],
        }  # fmt: skip
        state.network_policies.append(spec)
    return state


def clean() -> None:
    text = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True, check=True).stdout
    chains = [line[1:].split()[0] for line in text.splitlines() if line.startswith(":") and policy.is_ours(line[1:])]
    hook = ["FORWARD", "-m", "comment", "--comment", "emu network policies", "-j", policy.MAIN_CHAIN]
    while subprocess.run(["iptables", "-w", "-D", *hook], capture_output=True).returncode == 0:
        pass
    if chains:
        lines = ["*filter", *(f":{c} - [0:0]" for c in chains), *(f"-X {c}" for c in chains), "COMMIT", ""]
        subprocess.run(["iptables-restore", "--noflush"], input="\n".join(lines), text=True, check=True)
    names = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout.split()
    destroy = "".join(f"destroy {n}\n" for n in names if n.startswith(policy.SET_PREFIX))
    if destroy:
        subprocess.run(["ipset", "restore"], input=destroy, text=True, check=True)


def measure(count: int) -> dict:
    state = make(count)
    state.generation = 1
    clean()
    sync = PolicySync(lambda message: None)
    emu_full = harness.timed(lambda: sync.sync(state, "n0"))
    rules = policy.render(state, "n0")
    set_text = policy.ipset_restore_text(rules.sets, None, [])  # what the first sync on a clean node writes
    chain_text = policy.iptables_restore_text(rules.chains, None)

    # One policy changes its selector: the agent's next sync writes the difference.
    changed = make(count)
    changed.generation = 2
    changed.network_policies[count // 2]["podSelector"] = {"matchLabels": {"app": "a1"}}
    partial = harness.timed(lambda: sync.sync(changed, "n0"))

    clean()

    def bare() -> None:
        subprocess.run(["ipset", "restore"], input=set_text, text=True, check=True)
        subprocess.run(["iptables-restore", "--noflush"], input=chain_text, text=True, check=True)

    bare_time = harness.timed(bare)
    clean()
    return {"policies": count, "pods": len(state.pods), "sets": len(rules.sets),
            "rules": sum(len(r) for r in rules.chains.values()), "emu_full": emu_full, "bare": bare_time,
            "partial": partial}  # fmt: skip


def main() -> None:
    count, rounds = int(sys.argv[1]), int(sys.argv[2])
    results = [measure(count) for _ in range(rounds)]
    summary = dict(results[0])
    for key in ("emu_full", "bare", "partial"):
        summary[key] = harness.Timing([r[key] for r in results]).as_dict()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
