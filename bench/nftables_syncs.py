#!/usr/bin/env python3
"""nftables mode's sync, kube-proxy's way (this tree) beside an earlier emu's
(the proxier at --baseline, a git revision: main by default), side by side.

For N ClusterIP services with 2 endpoints each (bench/node_proxy_sync.py's
cluster), on this machine's kernel in a network namespace of its own (run as
root: `unshare -n python3 bench/nftables_syncs.py`; no Docker):
  full        render (cold) + the full sync's transaction + nft -f into an empty table
  one change  one endpoint of one service changes: render (with the agent's cache)
              + the partial sync's transaction + nft -f (the median of --changes, the
              change made and undone in turn)
  stale gone  (this tree only) the transaction that deletes the chains the changes
              left, a second later
Each figure is one run (--runs for more, the two proxiers' runs alternating; the
median is printed) and the number of lines of each transaction in a note.
usage: unshare -n python3 bench/nftables_syncs.py [--counts 1000,10000] [--runs 1] [--changes 7]
                                                  [--baseline main] [--json]
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import ROOT
from node_proxy_sync import make

from emu.node.proxy import nftables
from emu.node.services import Endpoint


def baseline_module(revision: str):
    """The nftables proxier as it was at `revision`, beside this tree's base and records."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:emu/node/proxy/nftables.py"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "nftables_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("nftables_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def nft(text: str) -> float:
    return harness.timed(lambda: subprocess.run(["nft", "-f", "-"], input=text, text=True, check=True))


def clean() -> None:
    subprocess.run(["nft", "delete", "table", "ip", "kube-proxy"], capture_output=True)


def changed(endpoints: dict, count: int) -> dict:
    out = dict(endpoints)
    key = f"bench/svc-{count // 2}"
    out[key] = {"http": [endpoints[key]["http"][0], Endpoint("10.255.0.1", 8080, "n1", None)]}
    return out


def one_run(module, state, endpoints, count: int, kube_proxys: bool, changes_count: int) -> dict:
    clean()
    module.hash_and_truncate.cache_clear()
    cache: dict = {}
    started = time.perf_counter()
    rules = module.render(state, "n0", endpoints, cache=cache)
    if kube_proxys:
        ops, _ = module.sync_ops(rules, None, (set(), set()), first=True, now=time.monotonic())
        text = "\n".join(ops) + "\n"
    else:
        text = module.transaction(rules)
    full = time.perf_counter() - started + nft(text)
    # One change, then back, and so on (--changes times): each a render with the cache + nft -f.
    changes, previous, stale, change_text = [], rules, {}, ""
    for i in range(changes_count):
        started = time.perf_counter()
        new_rules = module.render(state, "n0", changed(endpoints, count) if i % 2 == 0 else endpoints, cache=cache)
        if kube_proxys:
            ops, stale = module.sync_ops(new_rules, previous, stale=stale, now=time.monotonic())
            text_now = "\n".join(ops) + "\n"
        else:
            text_now = module.transaction(new_rules, previous)
        changes.append(time.perf_counter() - started + nft(text_now))
        change_text = change_text or text_now
        previous = new_rules
    result = {"full": full, "full_lines": text.count("\n"), "change": statistics.median(changes),
              "change_lines": change_text.count("\n")}  # fmt: skip
    if kube_proxys:
        started = time.perf_counter()
        gone, _ = module.stale_deletion(stale, time.monotonic() + 2 * module.STALE_AFTER)
        result["stale_gone"] = time.perf_counter() - started + nft(gone)
        result["stale_lines"] = gone.count("\n")
    clean()
    return result


def run(context: harness.Context) -> None:
    options, report = context.options, context.report
    old = baseline_module(options.baseline)
    for count in [int(c) for c in options.counts.split(",") if c]:
        state, endpoints = make(count)
        ours, theirs = context.rounds(lambda: one_run(nftables, state, endpoints, count, True, options.changes),
                                      lambda: one_run(old, state, endpoints, count, False, options.changes))
        figures = {field: harness.Timing([r[field] for r in ours]) for field in ("full", "change", "stale_gone")}
        base = {field: harness.Timing([r[field] for r in theirs]) for field in ("full", "change")}
        lines, old_lines = ours[0], theirs[0]  # the same in every run
        report.compare(f"{count:,} services: full sync", figures["full"], base["full"],
                       note=f"lines: {lines['full_lines']:,} (this tree), {old_lines['full_lines']:,} "
                            f"({options.baseline})")  # fmt: skip
        report.compare(f"{count:,} services: one change", figures["change"], base["change"],
                       note=f"lines: {lines['change_lines']:,} (this tree), {old_lines['change_lines']:,} "
                            f"({options.baseline}); each run's figure: the median of {options.changes} changes")
        report.figure(f"{count:,} services: stale gone", figures["stale_gone"],
                      note=f"lines: {lines['stale_lines']:,} (this tree only)")

def options(parser) -> None:
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--changes", type=int, default=7, help="changes (one way, then back) after each full load")
    parser.add_argument("--baseline", default="main", help="git revision of the proxier to compare with")


if __name__ == "__main__":
    sys.exit(harness.main([harness.Scenario("syncs", "nftables syncs kube-proxy's way (this tree): full, one change",
                                            "the proxier at --baseline, same services, same kernel", run)],
                          __doc__, runs=1, options=options))  # fmt: skip
