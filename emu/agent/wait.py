"""python3 -m emu.agent.wait: wait inside a node until a change has landed there.

In order, each within what is left of --timeout:
  1. every --port HOST:PORT accepts a TCP connection (the pods' servers are up);
  2. the node agent reports --generation or later programmed (status file);
  3. the agent counts no pod as unready (probes passed and shared) - this one
     may run out without failing: a pod may be meant to stay unready.
Prints one JSON object: {"ports_left": [...], "programmed": bool, "unready": [...] or null}.
One docker exec per node does all of it, which is why it is one program.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
import urllib.request

from emu.agent import AGENT_URL, STATUS_FILE


def wait_ports(targets: list[str], deadline: float) -> list[str]:
    left = set(targets)
    while left and time.time() < deadline:
        for target in sorted(left):
            host, port = target.rsplit(":", 1)
            try:
                socket.create_connection((host, int(port)), 0.2).close()
                left.discard(target)
            except OSError:
                pass
        if left:
            time.sleep(0.02)
    return sorted(left)


def wait_generation(generation: int, deadline: float) -> bool:
    while time.time() < deadline:
        try:
            with open(STATUS_FILE) as handle:
                if json.load(handle)["generation"] >= generation:
                    return True
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    return False


def wait_unready(deadline: float) -> list[str] | None:
    unready = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{AGENT_URL}/unready", timeout=1) as response:
                unready = json.load(response)
        except (OSError, ValueError):
            unready = None
        if unready == []:
            break
        time.sleep(0.05)
    return unready


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="emu-wait")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--port", action="append", default=[], help="HOST:PORT that must accept connections")
    parser.add_argument("--generation", type=int, help="state generation the agent must have programmed")
    parser.add_argument("--ready-timeout", type=float, default=15.0, help="how long to wait for unready pods")
    options = parser.parse_args(argv)
    deadline = time.time() + options.timeout
    result: dict = {"ports_left": wait_ports(options.port, deadline), "programmed": None, "unready": None}
    if options.generation is not None:
        result["programmed"] = wait_generation(options.generation, deadline)
        if result["programmed"]:
            result["unready"] = wait_unready(min(deadline, time.time() + options.ready_timeout))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
