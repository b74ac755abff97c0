#!/usr/bin/env python3
"""Big labs: how long until every pod is ready and every rule programmed, and
what the agents cost once nothing changes.

  50x40    50 nodes x 40 pods (nc -lk 8080) and 50 services without endpoints
  1000svc  50 nodes, 1,000 deployments of 2 pods spread by the scheduler, a
           ClusterIP service each (2,000 endpoints); enableServiceLinks: false
  1000svc-links  the same with Kubernetes' default, enableServiceLinks: true
  100x50   100 nodes x 50 pods (5,000 pods)
  40k      50 nodes x 40 pods and 1,000 services, each selecting one node's
           40 pods (40,000 endpoints); only with --only

For each: `emu up` until it returns (it returns only when every node's agent
has programmed the state and counts every pod ready), pods per second, and
beside it the baseline script (bench/baseline_up.sh: the same nodes and pods
by hand, no services, no agents) in the same run; then, after --idle seconds
with nothing changing, the agents' CPU (their own and their children's, from
/proc) over a --window, and their memory (RSS).

One run each (--runs N repeats emu up and the baseline N times; the idle figures are of the last run).
usage: python bench/scale.py [--only 50x40,1000svc,1000svc-links,100x50,40k] [--idle 60] [--window 30] [--no-baseline] [--keep]
       [--runs 1] [--json]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import harness

from bench.up import time_baseline
from emu.api.topology.load import load_text
from emu.control.cluster import Cluster
from emu.control.runtime.docker import DockerRuntime

NC = "{name: nc, command: [nc, -lk, '8080'], ports: [{containerPort: 8080}]}"


def nodes_yaml(count: int) -> list[str]:
    return ["nodes:", "  - {name: n0, role: control-plane}", *(f"  - {{name: n{i}}}" for i in range(1, count))]


def pinned_lab(nodes: int, per_node: int, empty_services: int = 0, labelled: bool = False) -> str:
    lines = ["name: emubench-scale", "networking: {podSubnet: 10.240.0.0/12}", *nodes_yaml(nodes), "deployments:"]
    for i in range(nodes):
        lines += [f"  - name: pods-n{i}", f"    replicas: {per_node}", "    template:", f"      node: n{i}",
                  *([f"      labels: {{app: pods-n{i}}}"] if labelled else []),
                  "      enableServiceLinks: false", f"      containers: [{NC}]"]  # fmt: skip
    if empty_services:
        lines.append("services:")
        lines += [f"  - {{name: none{i}, selector: {{app: none{i}}}, ports: [{{port: 80}}]}}" for i in range(empty_services)]
    return "\n".join(lines) + "\n"


def services_lab(nodes: int, services: int, links: bool = False) -> str:
    lines = ["name: emubench-scale", "networking: {podSubnet: 10.240.0.0/12}", *nodes_yaml(nodes), "deployments:"]
    for i in range(services):
        lines += [f"  - name: d{i}", "    replicas: 2", "    template:", f"      labels: {{app: d{i}}}",
                  *([] if links else ["      enableServiceLinks: false"]), f"      containers: [{NC}]"]  # fmt: skip
    lines.append("services:")
    lines += [f"  - {{name: s{i}, selector: {{app: d{i}}}, ports: [{{port: 80, targetPort: 8080}}]}}" for i in range(services)]
    return "\n".join(lines) + "\n"


def wide_lab(nodes: int, per_node: int, services: int) -> str:
    """The pinned lab, and services each selecting every pod of one node: 1,000
    of them over 50 x 40 pods make 40,000 endpoints."""
    lines = [pinned_lab(nodes, per_node, labelled=True).rstrip("\n"), "services:"]
    lines += [f"  - {{name: s{i}, selector: {{app: pods-n{i % nodes}}}, ports: [{{port: 80, targetPort: 8080}}]}}" for i in range(services)]
    return "\n".join(lines) + "\n"


LABS = {
    # name: (topology text, nodes, pods per node for the baseline, pods in total)
    "50x40": (lambda: pinned_lab(50, 40, empty_services=50), 50, 40, 2000),
    "1000svc": (lambda: services_lab(50, 1000), 50, 40, 2000),
    # The same with Kubernetes' default enableServiceLinks: true (7,000 variables a container).
    "1000svc-links": (lambda: services_lab(50, 1000, links=True), 50, 40, 2000),
    "100x50": (lambda: pinned_lab(100, 50), 100, 50, 5000),
    "40k": (lambda: wide_lab(50, 40, 1000), 50, 40, 2000),  # not run unless asked for (--only 40k)
}


def agent_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "python3 -m emu.node.agent --node"], capture_output=True, text=True).stdout
    pids = []
    for pid in found.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"python3"):  # not the shell loop that restarts it
            pids.append(int(pid))
    return pids


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle_cost(window: float) -> tuple[int, float, float, float]:
    """(agents, % of one core for all, max RSS MB, total RSS MB)."""
    pids = agent_pids()
    before = {pid: cpu_seconds(pid) for pid in pids}
    time.sleep(window)
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    used = sum(cpu_seconds(pid) - before[pid] for pid in alive)
    sizes = [rss_mb(pid) for pid in alive]
    return len(alive), 100 * used / window, max(sizes), sum(sizes)


CPUACCT = Path("/sys/fs/cgroup/cpuacct")  # cgroup v1, as on this machine (v2: no breakdown is printed)


def cpu_now() -> tuple[float, float]:
    """CPU seconds used so far by every Docker container, and by the whole machine."""
    try:
        containers = int((CPUACCT / "docker" / "cpuacct.usage").read_text()) / 1e9
        everything = int((CPUACCT / "cpuacct.usage").read_text()) / 1e9
    except OSError:
        return 0.0, 0.0
    return containers, everything


def print_stages(phases: dict[str, tuple[float, float, float]], report: harness.Report) -> None:
    """Each stage of `emu up`: wall clock, CPU in the node containers and outside them (dockerd, emu)."""
    names = {"network": "make network", "starting": "start nodes", "wiring": "wire pods", "pods": "converge"}
    marks = [(names[key], *phases[key]) for key in names if key in phases] + [("", *phases["up"])] if "up" in phases else []
    for (name, wall, inside, total), (_, next_wall, next_inside, next_total) in zip(marks, marks[1:]):
        report.note(f"  {name:13} {next_wall - wall:6.1f} s wall, CPU {next_inside - inside:6.1f} s in nodes, "
                    f"{(next_total - total) - (next_inside - inside):6.1f} s outside")  # fmt: skip


def lab_scenario(name: str):
    def run(context: harness.Context) -> None:
        options, report = context.options, context.report
        runtime = DockerRuntime()
        image = runtime.node_image(print)
        make, nodes, per_node, pods = LABS[name]
        baselines, ups = [], []
        for _ in range(context.runs):
            if not options.no_baseline:
                baselines.append(time_baseline(runtime, f"emubench-base-{name}", nodes, per_node, image, "nc"))
            phases: dict[str, tuple[float, float, float]] = {}

            def note(message: str) -> None:  # when each stage began: wall clock, CPU of the containers and of all
                phases.setdefault(message.split()[0], (time.perf_counter() - started, *cpu_now()))

            cluster = Cluster(f"emubench-{name}", runtime=runtime, progress=note)
            cluster.down()
            started = time.perf_counter()
            try:
                cluster.up(load_text(make()).model_copy(update={"name": cluster.name}))
                took = time.perf_counter() - started
                ups.append(took)
                phases["up"] = (took, *cpu_now())
                time.sleep(options.idle)
                agents, cpu, rss_max, rss_total = idle_cost(options.window)
            finally:
                if not options.keep:
                    cluster.down()
            print_stages(phases, report)
        if baselines:
            report.compare(f"{name}: {pods} pods, emu up", ups, baselines)
        else:
            report.figure(f"{name}: {pods} pods, emu up", ups)
        report.figure(f"{name}: pods/s", [pods / t for t in ups], "pods/s")
        report.figure(f"{name}: idle CPU, {agents} agents", cpu, "% of a core")
        report.figure(f"{name}: agent RSS, max", rss_max, "MB", note=f"all {agents} agents: {rss_total:.0f} MB")

    return run


BASELINE = "bench/baseline_up.sh: the same nodes and pods by hand (no services, no agents), same run"
SCENARIOS = [
    harness.Scenario("50x40", "50 nodes x 40 pods, 50 services without endpoints", BASELINE, lab_scenario("50x40")),
    harness.Scenario("1000svc", "50 nodes, 1,000 deployments x 2 pods, a service each", BASELINE, lab_scenario("1000svc")),
    harness.Scenario("1000svc-links", "the same, enableServiceLinks: true (Kubernetes' default)", BASELINE,
                     lab_scenario("1000svc-links")),
    harness.Scenario("100x50", "100 nodes x 50 pods", BASELINE, lab_scenario("100x50")),
    harness.Scenario("40k", "50 nodes x 40 pods, 1,000 services of 40 endpoints each", BASELINE, lab_scenario("40k"),
                     default=False),
]


def options(parser) -> None:
    parser.add_argument("--idle", type=float, default=60)
    parser.add_argument("--window", type=float, default=30)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--keep", action="store_true", help="leave the (last) lab up to look at; `emu down emubench-LAB` removes it")


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=1, options=options))
