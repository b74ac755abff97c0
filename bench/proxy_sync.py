#!/usr/bin/env python3
"""Rule sync time of emu's iptables proxier on one node, beside a bare
iptables-restore of the same text in the same run.

For 100, 1,000 and 10,000 services with 2 endpoints each, inside a real emu
node (its agent stopped so nothing else writes rules):
  emu full     render the ruleset in Python + iptables-legacy-restore --noflush
  bare         iptables-legacy-restore --noflush of the same text, nothing else
  partial      one service's endpoint changes: render + restore of the changed chains only
Each figure is the median of --rounds rounds; each round renders cold.
  nft bare     the same text through iptables-nft-restore (why emu uses the legacy backend)

nftables mode (--nftables-counts, default 1,000 and 10,000; --nftables-rounds):
  emu full     render the table + one nft -f of the whole transaction
  bare         nft -f of the same text, nothing else
  change       one service's endpoint changes: render (with the agent's cache) + nft -f of what changed
  bare change  nft -f of the same kind of change (the change back), nothing else

Each figure is the median of --runs (--rounds) runs, nftables mode of --nftables-rounds.
usage: python bench/proxy_sync.py [--counts 100,1000,10000] [--nft-up-to 10000] [--nftables-counts 1000,10000]
       [--only iptables,nftables] [--runs 3] [--json]
"""

from __future__ import annotations

import json
import sys

import harness
from harness import ROOT

from emu.api.topology.load import load_text
from emu.control.cluster import Cluster
from emu.node.plan import cni

SCRIPT = "/opt/emu/bench/node_proxy_sync.py"


def node(context: harness.Context) -> tuple[Cluster, str]:
    """The one-node lab both scenarios share (its agent stopped), made on first use."""
    if "node" not in context.shared:
        cluster = Cluster("emubench-proxy")
        cluster.down()
        context.stack.callback(cluster.down)
        cluster.up(load_text("name: emubench-proxy\nnodes: [{name: n0, role: control-plane}]\n"))
        container = cluster.state().nodes[0].container
        cluster.runtime.exec(container, ["pkill", "-f", "emu.node.agent"])
        cluster.runtime.put_files(container, {
            SCRIPT: (ROOT / "bench" / "node_proxy_sync.py").read_text(),
            "/opt/emu/bench/harness.py": (ROOT / "bench" / "harness.py").read_text(),
        })  # fmt: skip
        context.shared["node"] = (cluster, container)
    return context.shared["node"]


def in_node(context: harness.Context, *args: str) -> dict:
    cluster, container = node(context)
    result = cluster.runtime.exec(container, ["env", f"PYTHONPATH={cni.AGENT_LIB}", "python3", SCRIPT, *args])
    if not result.ok:
        raise SystemExit(result.output)
    return json.loads(result.output.strip().splitlines()[-1])


def iptables_mode(context: harness.Context) -> None:
    report, options = context.report, context.options
    for count in [int(c) for c in options.counts.split(",")]:
        nft = "nft" if count <= options.nft_up_to else "no"
        r = in_node(context, str(count), nft, str(options.runs))
        label = f"{r['services']:,} services, {r['rules']:,} rules"
        report.figure(f"{label}: render", r["render"])
        report.compare(f"{label}: emu full sync", r["emu_full"], r["bare"])
        report.figure(f"{label}: one service changed", r["partial"])
        if r["nft_bare"] is not None:
            report.figure(f"{label}: bare, iptables-nft-restore", r["nft_bare"])


def nftables_mode(context: harness.Context) -> None:
    report, options = context.report, context.options
    for count in [int(c) for c in options.nftables_counts.split(",") if c]:
        r = in_node(context, str(count), "nftables", str(options.nftables_rounds))
        label = f"{r['services']:,} services, {r['lines']:,} nft lines"
        report.figure(f"{label}: render", r["render"])
        report.compare(f"{label}: emu full sync", r["emu_full"], r["bare"])
        report.compare(f"{label}: one change", r["partial"], r["partial_bare"])


SCENARIOS = [
    harness.Scenario("iptables", "iptables mode: render + iptables-legacy-restore --noflush (full, one change)",
                     "iptables-legacy-restore --noflush of the same text, nothing else", iptables_mode),
    harness.Scenario("nftables", "nftables mode: render + one nft -f (full, one change)",
                     "nft -f of the same text (the change back, for one change), nothing else", nftables_mode),
]


def options(parser) -> None:
    parser.add_argument("--counts", default="100,1000,10000")
    parser.add_argument("--nft-up-to", type=int, default=10000)
    parser.add_argument("--nftables-counts", default="1000,10000", help="'' for none")
    parser.add_argument("--nftables-rounds", type=int, default=1)


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=3, options=options))
