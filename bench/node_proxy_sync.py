"""Runs inside an emu node (PYTHONPATH=/opt/emu/lib): times emu's iptables sync
against a bare iptables-restore of the same text, and its nftables sync against
a bare nft -f of the same transaction. Driven by bench/proxy_sync.py, which
copies this file and bench/harness.py into the node:
  python3 node_proxy_sync.py SERVICES nft|no RUNS     (iptables mode)
  python3 node_proxy_sync.py SERVICES nftables RUNS   (nftables mode)
print one JSON line; each time is harness.Timing.as_dict()."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time

import harness

from emu.node.proxy import iptables, nftables
from emu.node.records import ClusterState, NodeState, ServicePortState, ServiceState
from emu.node.services import Endpoint

SERVICE_BASE = ipaddress.IPv4Address("10.96.0.0")
POD_BASE = ipaddress.IPv4Address("10.244.0.0")


def make(count: int) -> tuple[ClusterState, dict]:
    node = NodeState("n0", "control-plane", {}, "10.244.0.0/24", "172.28.0.2", "bench")
    state = ClusterState("bench", "bench", "172.28.0.0/24", {"podSubnet": "10.244.0.0/14", "serviceSubnet": "10.96.0.0/12"}, [node])
    endpoints = {}
    for i in range(count):
        key = f"bench/svc-{i}"
        state.services[key] = ServiceState(
            namespace="bench", name=f"svc-{i}", type="ClusterIP", cluster_ip=str(SERVICE_BASE + 256 + i),
            ports=[ServicePortState("http", 80, "TCP", 8080)], selector={"app": f"a{i}"},
        )  # fmt: skip
        pods = [str(POD_BASE + 256 + 2 * i + k) for k in range(2)]
        endpoints[key] = {"http": [Endpoint(ip, 8080, "n1", None) for ip in pods]}
    return state, endpoints


def clean(restore: str) -> None:
    save = restore.replace("-restore", "-save")
    for table in ("nat", "filter"):
        text = subprocess.run([save, "-t", table], capture_output=True, text=True, check=True).stdout
        chains = [line[1:].split()[0] for line in text.splitlines() if line.startswith(":KUBE-")]
        if chains:
            removable = [c for c in chains if c not in iptables.BASE_CHAINS[table]]
            lines = [f"*{table}", *(f":{c} - [0:0]" for c in chains), *(f"-X {c}" for c in removable), "COMMIT", ""]
            flush = "\n".join(lines)
            subprocess.run([restore, "--noflush"], input=flush, text=True, check=True)


def restore(binary: str, text: str) -> float:
    return harness.timed(lambda: subprocess.run([binary, "--noflush"], input=text, text=True, check=True))


def measure(state, endpoints, count: int) -> dict:
    clean("iptables-legacy-restore")
    cache: dict = {}  # what the agent keeps between syncs
    started = time.perf_counter()
    ruleset = iptables.render(state, "n0", endpoints, cache=cache)
    text = iptables.restore_text(ruleset)
    rendered = time.perf_counter() - started
    emu_full = rendered + restore("iptables-legacy-restore", text)

    clean("iptables-legacy-restore")
    bare = restore("iptables-legacy-restore", text)

    # One service's endpoint changes: kube-proxy's partial sync.
    changed = dict(endpoints)
    key = f"bench/svc-{count // 2}"
    changed[key] = {"http": [endpoints[key]["http"][0], Endpoint("10.255.0.1", 8080, "n1", None)]}
    started = time.perf_counter()
    new_ruleset = iptables.render(state, "n0", changed, cache=cache)
    partial_text = iptables.restore_text(new_ruleset, ruleset)
    partial = time.perf_counter() - started + restore("iptables-legacy-restore", partial_text)
    clean("iptables-legacy-restore")
    return {"text": text, "render": rendered, "emu_full": emu_full, "bare": bare, "partial": partial,
            "partial_chains": partial_text.count("\n:")}  # fmt: skip


def nft(text: str) -> float:
    return harness.timed(lambda: subprocess.run(["nft", "-f", "-"], input=text, text=True, check=True))


def nft_clean() -> None:
    subprocess.run(["nft", "delete", "table", "ip", "kube-proxy"], capture_output=True)


def measure_nftables(state, endpoints, count: int) -> dict:
    """Full sync (render + one nft -f of the whole table) and a one-service change
    (render with the agent's cache + the transaction of what changed), each beside
    a bare nft -f of the same text."""
    nft_clean()
    nftables.hash_and_truncate.cache_clear()  # a first sync renders cold
    cache: dict = {}
    started = time.perf_counter()
    rules = nftables.render(state, "n0", endpoints, cache=cache)
    text = nftables.transaction(rules)
    rendered = time.perf_counter() - started
    emu_full = rendered + nft(text)
    nft_clean()
    bare = nft(text)  # the same text, nothing else (the table is there again afterwards)
    changed = dict(endpoints)
    key = f"bench/svc-{count // 2}"
    changed[key] = {"http": [endpoints[key]["http"][0], Endpoint("10.255.0.1", 8080, "n1", None)]}
    started = time.perf_counter()
    new_rules = nftables.render(state, "n0", changed, cache=cache)
    partial_text = nftables.transaction(new_rules, rules)
    partial = time.perf_counter() - started + nft(partial_text)
    partial_bare = nft(nftables.transaction(rules, new_rules))  # the change back, bare
    nft_clean()
    return {"services": count, "lines": text.count("\n"), "render": rendered, "emu_full": emu_full, "bare": bare,
            "partial": partial, "partial_bare": partial_bare, "partial_lines": partial_text.count("\n")}  # fmt: skip


def main() -> None:
    if sys.argv[2] == "nftables":
        count, rounds = int(sys.argv[1]), int(sys.argv[3])
        state, endpoints = make(count)
        runs = [measure_nftables(state, endpoints, count) for _ in range(rounds)]
        result = {k: harness.Timing([run[k] for run in runs]).as_dict() for k in runs[0]}
        for count_field in ("services", "lines", "partial_lines"):
            result[count_field] = runs[0][count_field]
        print(json.dumps(result))
        return
    count, with_nft, rounds = int(sys.argv[1]), sys.argv[2] == "nft", int(sys.argv[3])
    state, endpoints = make(count)
    runs = []
    for _ in range(rounds):
        iptables._chain.cache_clear()  # every round renders cold, as a first sync does (chain names made anew)
        runs.append(measure(state, endpoints, count))
    text = runs[0]["text"]
    result = {"services": count, "rules": text.count("\n-A ")}
    for field in ("render", "emu_full", "bare", "partial"):
        result[field] = harness.Timing([run[field] for run in runs]).as_dict()
    result["partial_chains"] = runs[0]["partial_chains"]
    result["nft_bare"] = None
    if with_nft:
        clean("iptables-nft-restore")
        result["nft_bare"] = harness.Timing([restore("iptables-nft-restore", text)]).as_dict()
        clean("iptables-nft-restore")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
