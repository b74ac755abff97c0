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

usage: python bench/proxy_sync.py [--counts 100,1000,10000] [--nft-up-to 10000] [--nftables-counts 1000,10000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emu.control.cluster import Cluster  # noqa: E402
from emu.node.plan import cni  # noqa: E402
from emu.api.topology.load import load_text  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="100,1000,10000")
    parser.add_argument("--nft-up-to", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3, help="median of this many rounds")
    parser.add_argument("--nftables-counts", default="1000,10000", help="'' for none")
    parser.add_argument("--nftables-rounds", type=int, default=1)
    options = parser.parse_args()
    cluster = Cluster("emubench-proxy")
    cluster.down()
    cluster.up(load_text("name: emubench-proxy\nnodes: [{name: n0, role: control-plane}]\n"))
    try:
        node = cluster.state().nodes[0].container
        cluster.runtime.exec(node, ["pkill", "-f", "emu.node.agent"])
        cluster.runtime.put_files(node, {"/opt/emu/bench/node_proxy_sync.py": (ROOT / "bench" / "node_proxy_sync.py").read_text()})
        print(f"{'services':>8} {'rules':>7} {'render s':>9} {'emu full s':>10} {'bare s':>8} {'emu/bare':>9} "
              f"{'partial s':>10} {'nft bare s':>11}")
        for count in [int(c) for c in options.counts.split(",")]:
            nft = "nft" if count <= options.nft_up_to else "no"
            result = cluster.runtime.exec(
                node, ["env", f"PYTHONPATH={cni.AGENT_LIB}", "python3", "/opt/emu/bench/node_proxy_sync.py", str(count), nft,
                 str(options.rounds)]
            )
            if not result.ok:
                print(result.output)
                return 1
            r = json.loads(result.output.strip().splitlines()[-1])
            nft_text = f"{r['nft_bare']:.3f}" if r["nft_bare"] is not None else "-"
            print(f"{r['services']:>8} {r['rules']:>7} {r['render']:>9.3f} {r['emu_full']:>10.3f} {r['bare']:>8.3f} "
                  f"{r['emu_full'] / r['bare']:>8.2f}x {r['partial']:>10.3f} {nft_text:>11}")
        if options.nftables_counts:
            print(f"\nnftables {'services':>8} {'lines':>7} {'render s':>9} {'emu full s':>10} {'bare s':>8} "
                  f"{'emu/bare':>9} {'change s':>9} {'bare change s':>14}")
        for count in [int(c) for c in options.nftables_counts.split(",") if c]:
            result = cluster.runtime.exec(
                node, ["env", f"PYTHONPATH={cni.AGENT_LIB}", "python3", "/opt/emu/bench/node_proxy_sync.py", str(count),
                       "nftables", str(options.nftables_rounds)]  # fmt: skip
            )
            if not result.ok:
                print(result.output)
                return 1
            r = json.loads(result.output.strip().splitlines()[-1])
            print(f"nftables {r['services']:>8.0f} {r['lines']:>7.0f} {r['render']:>9.3f} {r['emu_full']:>10.3f} "
                  f"{r['bare']:>8.3f} {r['emu_full'] / r['bare']:>8.2f}x {r['partial']:>9.3f} {r['partial_bare']:>14.3f}")
    finally:
        cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
