#!/usr/bin/env python3
"""What tracing a packet costs: `emu trace` of a pod-to-service flow against the
same probe sent without tracing, side by side in the same run, on the default lab.

Baseline: one `docker exec` into the client's node that sends the very probe
emu trace sends (tracer.py probe: a TCP connection, GET /hostname), with no
tracing anywhere. emu trace: resolving SRC and DEST from the state, starting
the kernel's tracing in every node, the probe, stopping and collecting, and
assembling the hops. Also `emu graph` (the state, one exec a node, rendering).

usage: python bench/trace.py [--runs 5] [--keep] [--json]
"""

from __future__ import annotations

import sys
import time

import harness
from harness import ROOT

from emu.api.load import load_file
from emu.control.cluster import Cluster, pod_exec_argv
from emu.observe import graph, trace

NAME = "emubench-trace"


def trace_and_graph(context: harness.Context) -> None:
    options = context.options
    cluster = Cluster(NAME)
    topology = load_file(ROOT / "topologies" / "default.yaml").model_copy(update={"name": NAME})
    cluster.up(topology)
    try:
        state = cluster.state()
        client = state.pods["default/client"]
        plan = trace.plan_for(cluster, state, "client", "echo", "tcp")
        cluster.runtime.put_files(state.node(client.node).container, {trace.TRACER: trace.tracer_source()})
        baseline, traced, drawn = [], [], []
        for _ in range(context.runs):
            probe = [
                "python3",
                trace.TRACER,
                "probe",
                "--dest",
                plan.destination.ip,
                "--port",
                "80",
                "--sport",
                str(trace.probe_port()),
            ]
            started = time.perf_counter()
            result = cluster.runtime.exec(state.node(client.node).container, pod_exec_argv(client, probe))
            baseline.append(time.perf_counter() - started)
            assert '"connected"' in result.output, result.output
            started = time.perf_counter()
            fresh = cluster.state()
            plan = trace.plan_for(cluster, fresh, "client", "echo", "tcp")
            found = trace.assemble(fresh, plan, trace.run_trace(cluster, fresh, plan))
            traced.append(time.perf_counter() - started)
            assert found["outcome"]["dnat_to"], found["outcome"]
            started = time.perf_counter()
            graph.render(graph.observe(cluster), "svg")
            drawn.append(time.perf_counter() - started)
        context.report.compare("emu trace client echo (3 nodes, 6 pods)", traced, baseline)
        context.report.figure("emu graph --format svg", drawn)
    finally:
        if not options.keep:
            cluster.down()


SCENARIOS = [
    harness.Scenario("trace", "emu trace of a pod-to-service flow (resolve, kernel tracing in every node, probe, hops)",
                     "the very probe emu trace sends, by one docker exec, with no tracing", trace_and_graph),
]


def options(parser) -> None:
    parser.add_argument("--keep", action="store_true", help="leave the cluster up")


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=5, options=options))
