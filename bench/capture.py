#!/usr/bin/env python3
"""What `emu capture` costs and whether it keeps up, same run, same lab.

- Overhead: pod -> pod iperf3 TCP throughput (client on worker -> web on
  worker2) without a capture and with one running on both pods' eth0 (whole
  packets, pcapng written to /dev/null), rounds alternating; the ratio of the
  medians (issue 25 asks for at least 0.95).
- Loss: --pps small UDP packets a second (iperf3 -u -l 64; as many as it
  manages) for --seconds while capturing on the server's eth0, in tcpdump's
  immediate mode (live and tests) and block mode (-w FILE): packets iperf3
  sent, packets written, and what tcpdump says the kernel dropped.
- Time to first packet: from starting `emu capture client -w -` (a new process)
  until the first Enhanced Packet Block reaches its stdout, while the client
  pings every 10 ms (issue 25 asks for under 1 s).

usage: python bench/capture.py [--runs 3] [--seconds 5] [--pps 50000] [--name RUNNING_CLUSTER] [--keep]
                               [--only overhead,loss,first] [--json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import harness
from harness import ROOT

from emu.api.topology.load import load_text
from emu.control.cluster import Cluster
from emu.observe import capture

NAME = "emubench-capture"
LAB = """\
name: emubench-capture
nodes:
  - {name: control-plane, role: control-plane}
  - {name: worker}
  - {name: worker2}
pods:
  - name: client
    node: worker
    containers: [{name: shell, command: [sleep, infinity]}]
  - name: web
    node: worker2
    containers: [{name: iperf, command: [iperf3, -s]}]
"""


def iperf(cluster: Cluster, server_ip: str, seconds: int, extra: list[str]) -> dict:
    result = cluster.exec("client", ["iperf3", "-J", "-c", server_ip, "-t", str(seconds), *extra])
    return json.loads(result.output)


def capturing(
    cluster: Cluster, targets: list[str], seconds: float, bpf: str = "", immediate: bool = True
) -> tuple[threading.Thread, list]:
    """A capture to /dev/null for `seconds` in a thread; [Capture] once it is listening."""
    made: list = []
    ready = threading.Event()

    def run() -> None:
        with open(os.devnull, "wb") as sink:
            capture.run(
                cluster, targets, out=sink, bpf=bpf, duration=seconds, immediate=immediate,
                on_start=lambda c: (made.append(c), ready.set()),
            )  # fmt: skip

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(30)
    return thread, made


def has_packet(data: bytes) -> bool:
    """Whether the pcapng so far holds a whole Enhanced Packet Block."""
    offset = 0
    while offset + 8 <= len(data):
        kind, length = (
            int.from_bytes(data[offset : offset + 4], "little"),
            int.from_bytes(data[offset + 4 : offset + 8], "little"),
        )
        if kind == 6 and offset + length <= len(data):
            return True
        offset += length
    return False


def lab(context: harness.Context) -> tuple[Cluster, object]:
    """The lab the scenarios share (or --name's running cluster) and its web pod, made on first use."""
    if "lab" not in context.shared:
        options = context.options
        cluster = Cluster(options.name or NAME)
        if not options.name:
            if not options.keep:
                context.stack.callback(cluster.down)
            cluster.up(load_text(LAB))
        state = cluster.state()
        web = state.pods["default/web"]
        if options.name:
            cluster.runtime.exec_detached(
                state.node(web.node).container, ["ip", "netns", "exec", web.netns, "iperf3", "-s", "-D"]
            )
            time.sleep(0.5)
        context.shared["lab"] = (cluster, web)
    return context.shared["lab"]


def overhead(context: harness.Context) -> None:
    cluster, web = lab(context)
    seconds = context.options.seconds

    def gbits() -> float:
        return iperf(cluster, web.ip, seconds, [])["end"]["sum_received"]["bits_per_second"] / 1e9

    def captured(immediate: bool):
        def run() -> float:
            thread, _ = capturing(cluster, ["client", "web"], seconds + 3, immediate=immediate)
            result = gbits()
            thread.join()
            return result

        return run

    plain, immediate, blocks = context.alternate(gbits, captured(True), captured(False))
    report = context.report
    report.note(f"iperf3 client -> web, {context.runs} rounds of {seconds} s, rounds alternating")
    report.compare("capturing both eth0s, immediate mode", immediate, plain, "Gbit/s",
                   note="baseline: the same iperf3 without a capture; issue 25 asks for at least 0.95x")  # fmt: skip
    report.compare("capturing both eth0s, block mode", blocks, plain, "Gbit/s")


def loss(context: harness.Context) -> None:
    cluster, web = lab(context)
    options = context.options
    bandwidth = str(options.pps * 64 * 8)
    context.report.note(f"UDP, 64-byte payloads at up to {options.pps} packets/s for {options.seconds} s, "
                        "captured on web/eth0")  # fmt: skip
    for immediate in (True, False):
        thread, made = capturing(cluster, ["web"], options.seconds + 3, bpf="udp", immediate=immediate)
        sent = iperf(cluster, web.ip, options.seconds, ["-u", "-l", "64", "-b", bandwidth])
        thread.join()
        packets = sent["end"]["sum"].get("packets", 0)
        mode, used = ("immediate mode", "live, tests") if immediate else ("block mode", "-w FILE")
        context.report.compare(f"{mode}: written", made[0].written, packets, "packets",
                               note=f"({used}) baseline: sent by iperf3 ({packets / options.seconds:,.0f}/s)")
        context.report.figure(f"{mode}: dropped by the kernel", made[0].streams[0].dropped(), "packets")


def first_packet(context: harness.Context) -> None:
    cluster, web = lab(context)
    state = cluster.state()
    cluster.runtime.exec_detached(
        state.node(state.pods["default/client"].node).container,
        ["ip", "netns", "exec", "client", "timeout", "20", "ping", "-i", "0.01", "-q", web.ip],
    )

    def once() -> float:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "emu.cli", "capture", "-n", cluster.name, "client", "-w", "-"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        data = b""
        while not has_packet(data):
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            data += chunk
        elapsed = time.perf_counter() - started
        process.terminate()
        process.communicate(timeout=30)
        return elapsed

    (firsts,) = context.alternate(once)
    context.report.figure("first packet on emu capture's stdout", firsts, "s",
                          note="from starting the process to the first packet on its stdout; "
                               "issue 25 asks for under 1 s")  # fmt: skip


SCENARIOS = [
    harness.Scenario("overhead", "iperf3 pod -> pod while capturing on both pods' eth0 (to /dev/null)",
                     "the same iperf3 without a capture, rounds alternating", overhead),
    harness.Scenario("loss", "small UDP packets captured on the server's eth0: written, dropped",
                     "the packets iperf3 sent", loss),
    harness.Scenario("first", "from starting `emu capture client -w -` to its first packet (pings every 10 ms)",
                     "none (issue 25's bound: 1 s)", first_packet),
]


def options(parser) -> None:
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--pps", type=int, default=50000)
    parser.add_argument("--name", help="use this running cluster (pods client and web, iperf3 -s in web)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=3, options=options))
