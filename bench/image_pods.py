#!/usr/bin/env python3
"""Image pods per second: `emu apply` of N pods that run a container image
(sandbox + app container + wiring into cni0, until every pod answers on its
port), beside plain Docker starting the same containers (a `--network none`
sandbox and the app with `--network container:`) in the same run, through the
same client and the same parallelism, with no wiring.

usage: python bench/image_pods.py [--pods 10] [--runs 3] [--json]
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import harness

from emu.api.topology.load import load_text
from emu.control.cluster import Cluster
from emu.control.runtime.docker import DockerRuntime
from tests.integration.test_image_pods import build_web_image

LAB = """\
name: emubench-img
nodes: [{name: cp, role: control-plane}, {name: w1}, {name: w2}]
dns: {enabled: false}
pods: []
"""


def with_pods(count: int, image: str) -> str:
    pods = "".join(
        f"  - {{name: img-{i}, containers: [{{name: web, image: {image}, ports: [{{containerPort: 8080}}]}}]}}\n"
        for i in range(count)
    )
    return LAB.replace("pods: []\n", "pods:\n" + pods)


def plain_docker(runtime: DockerRuntime, image: str, sandbox_image: str, count: int) -> float:
    """Start count sandbox + app pairs as `docker run` would, in parallel; remove them after."""
    api = runtime.api
    names = [f"emubench-plain-{uuid.uuid4().hex[:8]}" for _ in range(count)]

    def run(name: str) -> None:
        sandbox = api.create_container(sandbox_image, command=["sleep", "infinity"], name=f"{name}-pod",
                                       host_config=api.create_host_config(network_mode="none"))  # fmt: skip
        api.start(sandbox["Id"])
        app = api.create_container(image, name=name, host_config=api.create_host_config(
            network_mode=f"container:{name}-pod", restart_policy={"Name": "always"}))  # fmt: skip
        api.start(app["Id"])

    started = time.monotonic()
    runtime.parallel(run, names)
    elapsed = time.monotonic() - started
    runtime.parallel(lambda n: [api.remove_container(c, force=True) for c in (n, f"{n}-pod")], names)
    return elapsed


def image_pods(context: harness.Context) -> None:
    options = context.options
    runtime = DockerRuntime()
    image = build_web_image(runtime, Path(tempfile.mkdtemp()))
    cluster = Cluster("emubench-img", runtime=runtime)
    cluster.down()
    try:
        cluster.up(load_text(LAB))
        sandbox_image = cluster.state().node_image
        emu_times, plain_times = [], []
        for round_ in range(context.runs):
            plain_times.append(plain_docker(runtime, image, sandbox_image, options.pods))
            started = time.monotonic()
            cluster.apply(load_text(with_pods(options.pods, image)))
            emu_times.append(time.monotonic() - started)
            cluster.apply(load_text(LAB))
            context.report.note(f"round {round_ + 1}: plain docker {plain_times[-1]:.2f} s, emu apply {emu_times[-1]:.2f} s")
        context.report.compare(f"{options.pods} image pods, emu apply", emu_times, plain_times)
        context.report.compare(f"{options.pods} image pods, pods/s", [options.pods / t for t in emu_times],
                               [options.pods / t for t in plain_times], "pods/s")  # fmt: skip
    finally:
        cluster.down()


SCENARIOS = [
    harness.Scenario("image_pods", "emu apply of N image pods (sandbox + app + wiring) until every pod answers",
                     "plain Docker starting the same sandbox + app pairs, same client and parallelism, no wiring",
                     image_pods),
]


def options(parser) -> None:
    parser.add_argument("--pods", type=int, default=10)


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=3, options=options))
