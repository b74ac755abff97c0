#!/usr/bin/env python3
"""`emu up` of the default lab with its API server, beside `emu up` of an emu without one.

Issue 21's figure: the default lab up, API server included, within 1.2x of
`emu up` before the API server, measured in the same run. The baseline is
another checkout of emu (a git worktree of --baseline, by default the commit
before the API server came into `emu up`); both are timed in fresh Python
processes, rounds alternating, images built beforehand and not timed.

usage: python bench/apiserver_up.py [--runs N] [--baseline REV] [--json]
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import harness
from harness import ROOT

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


def run(context: harness.Context) -> None:
    revision = context.options.baseline
    with tempfile.TemporaryDirectory(prefix="emu-bench-baseline-") as folder:
        baseline = Path(folder) / "emu"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(baseline), revision],
                       check=True, timeout=120)  # fmt: skip
        try:
            # The KUBECONFIG emu up merges into: a throwaway one, not the user's.
            os.environ["KUBECONFIG"] = str(Path(folder) / "kubeconfig")
            time_up(ROOT, "bench-warm")  # builds the node image of this tree once (not timed)
            time_up(baseline, "bench-warm")
            ours, theirs = itertools.count(), itertools.count()
            now, before = context.alternate(lambda: time_up(ROOT, f"bench-api-{next(ours)}"),
                                            lambda: time_up(baseline, f"bench-base-{next(theirs)}"))  # fmt: skip
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], timeout=120)
    context.report.compare("default lab, emu up", now, before, "s",
                           note=f"emu: with the API server (this tree); baseline: without ({revision}); "
                                "issue 21 asks for at most 1.2x")  # fmt: skip


def options(parser) -> None:
    parser.add_argument("--baseline", default=BASELINE, help="git revision of emu without the API server")


if __name__ == "__main__":
    sys.exit(harness.main([harness.Scenario("up", "emu up of the default lab with its API server (this tree)",
                                            "emu up of the same lab by an emu without one (--baseline)", run)],
                          __doc__, runs=3, options=options))  # fmt: skip
