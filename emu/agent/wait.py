"""python3 -m emu.agent.wait: wait inside a node until a change has landed there.

In order, each within what is left of --timeout:
  1. every --port HOST:PORT accepts a TCP connection (the pods' servers are up);
  2. the node agent reports --generation or later programmed (status file);
  3. the agent counts no pod as unready (probes passed and shared) - this one
     may run out without failing: a pod may be meant to stay unready.
Prints one JSON object: {"ports_left": [...], "programmed": bool, "unready": [...] or null}.
One docker exec per node does all of it, which is why it is one program; it
runs on every node at once while the agents read a new state, so it starts
light (no argparse, no urllib: a third of the start-up) and polls gently.
"""

from __future__ import annotations

import json
import socket
import sys
import time

from emu.agent import AGENT_PORT, STATUS_FILE, web

POLL = 0.05  # seconds between looks
USAGE = "usage: python3 -m emu.agent.wait [--timeout S] [--generation N] [--ready-timeout S] [--port HOST:PORT ...]"


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
            time.sleep(POLL)
    return sorted(left)


def wait_generation(generation: int, deadline: float) -> bool:
    while time.time() < deadline:
        try:
            with open(STATUS_FILE) as handle:
                if json.load(handle)["generation"] >= generation:
                    return True
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(POLL)
    return False


def wait_unready(deadline: float, port: int = AGENT_PORT) -> list[str] | None:
    """The agent's unready pods once there are none, else the last answer (None: no answer)."""
    unready = None
    agent = web.Connection("127.0.0.1", port, timeout=1)
    try:
        while time.time() < deadline:
            try:
                status, body = agent.request("GET", "/unready")
                unready = json.loads(body) if status == 200 else None
            except (OSError, ValueError):
                unready = None
            if unready == []:
                break
            time.sleep(POLL)
    finally:
        agent.close()
    return unready


def parse_options(argv: list[str]) -> dict:
    options: dict = {"timeout": 30.0, "generation": None, "ready_timeout": 15.0, "port": []}
    if len(argv) % 2:
        raise SystemExit(USAGE)
    for flag, value in zip(argv[::2], argv[1::2]):
        try:
            if flag == "--port":
                options["port"].append(value)
            elif flag in ("--timeout", "--ready-timeout"):
                options[flag[2:].replace("-", "_")] = float(value)
            elif flag == "--generation":
                options["generation"] = int(value)
            else:
                raise SystemExit(f"unknown option {flag}\n{USAGE}")
        except ValueError:
            raise SystemExit(f"{flag}: not a number: {value}\n{USAGE}") from None
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse_options(sys.argv[1:] if argv is None else argv)
    deadline = time.time() + options["timeout"]
    result: dict = {"ports_left": wait_ports(options["port"], deadline), "programmed": None, "unready": None}
    if options["generation"] is not None:
        result["programmed"] = wait_generation(options["generation"], deadline)
        if result["programmed"]:
            result["unready"] = wait_unready(min(deadline, time.time() + options["ready_timeout"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
