#!/usr/bin/env python3
"""How fast packets move to and between User-mode Linux nodes, with and without `gro=1` on the vector transport.

Two guests (the node image's root filesystem, as emu boots nodes) on one host
bridge, booted once with `vec0:transport=tap,...,gro=1` (what emu does, see
emu.control.runtime.uml.VECTOR_GRO) and once without it; for each:
  host -> guest   SIZE MB of random bytes sent to `wc -c` in a guest through its
                  command server (how emu hands a node its files)
  guest -> guest  iperf3 for SECONDS from one guest to the other (bulk TCP)
  requests        REQUESTS TCP connections from one guest to a server in the
                  other, each a small request and its answer (a request loop;
                  the median of 3 loops)
  ping            20 pings from one guest to the other, their average RTT
A transfer that does not finish within TIMEOUT seconds is shown as "-" (and noted).
--runs N boots both pairs N times, alternating. Needs root and Docker (the root
filesystem is made from the node image once).
Run it alone: `flock /tmp/emutest-integration.lock python bench/uml_net.py`.

usage: python bench/uml_net.py [--size MB] [--seconds S] [--requests N] [--timeout S] [--runs N] [--json]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

from emu.control.runtime import uml
from emu.control.runtime.images import node_image_tag

BRIDGE = "emubench-net"
GATEWAY = "192.168.215.1"
PORT = 7171  # not the command server's (umlguest.PORT)

# A server answering each connection's line with "ok", and a client timing N connections.
SERVER = f"""
import socketserver
class H(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline(); self.wfile.write(b"ok\\n")
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", {PORT}), H).serve_forever()
"""
CLIENT = f"""
import socket, sys, time
host, count = sys.argv[1], int(sys.argv[2])
started = time.perf_counter()
for _ in range(count):
    with socket.create_connection((host, {PORT}), timeout=10) as s:
        s.sendall(b"hello\\n"); assert s.makefile("rb").readline() == b"ok\\n"
print(time.perf_counter() - started)
"""


def measure(rootfs: Path, state: Path, gro: bool, args) -> dict:
    tag = "gro" if gro else "nogro"
    guests = [uml.Guest(f"emubench-{tag}-{i}", rootfs, BRIDGE, f"{GATEWAY[:-1]}{10 + i}/24", state_dir=state, gro=gro)
              for i in range(2)]  # fmt: skip
    result: dict = {}
    try:
        for guest in guests:
            guest.boot(120)
        server, client = guests
        data = os.urandom(args.size * 1_000_000)
        started = time.perf_counter()
        try:
            answer = server.run(["wc", "-c"], input=data, timeout=args.timeout, text=True)
            assert answer.stdout.strip() == str(len(data)), answer
            result["host_to_guest"] = time.perf_counter() - started
        except (subprocess.TimeoutExpired, OSError, uml.UmlError):
            result["host_to_guest"] = None
        server.sh("iperf3 -s -1 -D")
        time.sleep(0.5)
        try:
            report = client.run(["iperf3", "-J", "-c", server.ip, "-t", str(args.seconds)],
                                timeout=args.seconds + args.timeout, text=True)  # fmt: skip
            result["guest_to_guest"] = json.loads(report.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
        except (subprocess.TimeoutExpired, OSError, uml.UmlError, KeyError, ValueError):
            result["guest_to_guest"] = None
        server.sh(f"nohup python3 -c '{SERVER}' >/dev/null 2>&1 &")
        time.sleep(1)
        loops = [client.run(["python3", "-c", CLIENT, server.ip, str(args.requests)], timeout=args.timeout, text=True)
                 for _ in range(3)]  # fmt: skip
        ok = [float(loop.stdout) for loop in loops if loop.returncode == 0]
        result["requests"] = statistics.median(ok) if len(ok) == len(loops) else None
        ping = client.sh(f"ping -q -c 20 -i 0.05 {server.ip} | tail -1")  # rtt min/avg/max/mdev = a/b/c/d ms
        result["ping_ms"] = float(ping.split("=")[1].split("/")[1])
        result["gso_logged"] = any("GSO" in guest.console.read_text(errors="replace") for guest in guests)
    finally:
        for guest in guests:
            guest.shutdown()
    return result


def run(context: harness.Context) -> None:
    args, report = context.options, context.report
    uml.require_uml()
    rootfs = uml.make_rootfs(node_image_tag())
    uml.ensure_bridge(BRIDGE, f"{GATEWAY}/24")
    try:
        with tempfile.TemporaryDirectory() as state:
            with_gro, without = context.rounds(lambda: measure(rootfs, Path(state), True, args),
                                               lambda: measure(rootfs, Path(state), False, args))  # fmt: skip
    finally:
        uml.delete_bridge(BRIDGE)

    def samples(results: list[dict], field: str) -> list[float]:
        return [float("nan") if r[field] is None else r[field] for r in results]

    for field, figure, unit in (("host_to_guest", f"host -> guest, {args.size} MB (command server)", "s"),
                                ("guest_to_guest", f"guest -> guest, iperf3 {args.seconds} s", "Mbit/s"),
                                ("requests", f"guest -> guest, {args.requests} requests", "s"),
                                ("ping_ms", "guest -> guest, ping RTT (average of 20)", "ms")):  # fmt: skip
        timed_out = sum(r[field] is None for r in [*with_gro, *without])
        values = [samples(with_gro, field), samples(without, field)]
        if unit == "ms":  # the harness's times are seconds
            values = [[v / 1000 for v in side] for side in values]
        report.compare(figure, *values, unit,
                       note=f"{timed_out} of them did not finish within {args.timeout} s" if timed_out else "")
    report.note(f"'Incoming GSO frames' on a console: gro=1 {any(r['gso_logged'] for r in with_gro)}, "
                f"without {any(r['gso_logged'] for r in without)}")


def options(parser) -> None:
    parser.add_argument("--size", type=int, default=4, help="MB sent from the host to a guest (default 4)")
    parser.add_argument("--seconds", type=int, default=5, help="iperf3's duration between the guests (default 5)")
    parser.add_argument("--requests", type=int, default=200, help="connections in the request loop (default 200)")
    parser.add_argument("--timeout", type=int, default=120, help="give up on a transfer after this (default 120 s)")


if __name__ == "__main__":
    sys.exit(harness.main([harness.Scenario("uml_net", "two UML guests booted with gro=1 on the vector transport "
                                            "(what emu does)", "the same two guests without gro=1", run)],
                          __doc__, runs=1, options=options))  # fmt: skip
