#!/usr/bin/env python3
"""`emu up` of the default lab with its API server, beside `emu up` of an emu without one.

Issue 21's figure: the default lab up, API server included, within 1.2x of
`emu up` before the API server, measured in the same run. The baseline is
another checkout of emu (a git worktree of --baseline, by default the commit
before the API server came into `emu up`); both are timed in fresh Python
processes, rounds alternating, images built beforehand and not timed.

usage: python bench/apiserver_up.py [--rounds N] [--baseline REV]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "c43b121"  # the last commit whose emu up starts no API server
ONE_UP = """
import sys, time
from emu.api.load import load_file
from emu.control.cluster import Cluster
topology = load_file(sys.argv[1]).model_copy(update={"name": sys.argv[2]})
cluster = Cluster(sys.argv[2])
started = time.perf_counter()
try:
    cluster.up(topology)
    print(time.perf_counter() - started)
finally:
    cluster.down()
"""


def time_up(tree: Path, name: str) -> float:
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run(
        [sys.executable, "-c", ONE_UP, str(ROOT / "topologies" / "default.yaml"), name],
        env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if result.returncode:
        raise SystemExit(f"emu up failed in {tree}:\n{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE, help="git revision of emu without the API server")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="emu-bench-baseline-") as folder:
        baseline = Path(folder) / "emu"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(baseline), options.baseline],
                       check=True, timeout=120)  # fmt: skip
        try:
            # The KUBECONFIG emu up merges into: a throwaway one, not the user's.
            os.environ["KUBECONFIG"] = str(Path(folder) / "kubeconfig")
            time_up(ROOT, "bench-warm")  # builds the node image of this tree once (not timed)
            time_up(baseline, "bench-warm")
            now, before = [], []
            for round_ in range(options.rounds):
                now.append(time_up(ROOT, f"bench-api-{round_}"))
                before.append(time_up(baseline, f"bench-base-{round_}"))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], timeout=120)
    with_api, without = statistics.median(now), statistics.median(before)
    print(f"{'default lab, emu up':<34}{'median':>9}{'min':>9}{'max':>9}")
    print(f"{'  with the API server (this tree)':<34}{with_api:>8.2f}s{min(now):>8.2f}s{max(now):>8.2f}s")
    print(f"{'  without (' + options.baseline + ')':<34}{without:>8.2f}s{min(before):>8.2f}s{max(before):>8.2f}s")
    print(f"ratio {with_api / without:.2f}x (issue 21 asks for at most 1.2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
