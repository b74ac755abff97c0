"""python3 -m emu.node.agent.wait --port HOST:PORT ...: wait inside a node until
every port accepts a TCP connection (a server is up), within --timeout.
Prints one JSON object: {"ports_left": [...]}.

`emu up` does not run it: it asks the node's agent (GET /wait, which uses
wait_ports below) and so waits for the pods' ports, the programmed rules and
the pods' readiness in one request. This program is for containers without an
agent (`emu external`'s server). It starts light: no argparse, no urllib.
"""

from __future__ import annotations

import json
import socket
import sys
import time

POLL = 0.05  # seconds between looks
USAGE = "usage: python3 -m emu.node.agent.wait [--timeout S] [--port HOST:PORT ...]"


def wait_ports(targets: list[str], deadline: float) -> list[str]:
    """The targets that still refuse a connection at the deadline (none: [])."""
    left = set(targets)
    while left and time.time() < deadline:
        for target in sorted(left):
            host, port = target.rsplit(":", 1)
            try:
                socket.create_connection((host, int(port)), 0.2).close()
                left.discard(target)
            except (OSError, ValueError):
                pass
        if left:
            time.sleep(POLL)
    return sorted(left)


def parse_options(argv: list[str]) -> dict:
    options: dict = {"timeout": 30.0, "port": []}
    if len(argv) % 2:
        raise SystemExit(USAGE)
    for flag, value in zip(argv[::2], argv[1::2]):
        if flag == "--port":
            options["port"].append(value)
        elif flag == "--timeout":
            try:
                options["timeout"] = float(value)
            except ValueError:
                raise SystemExit(f"{flag}: not a number: {value}\n{USAGE}") from None
        else:
            raise SystemExit(f"unknown option {flag}\n{USAGE}")
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse_options(sys.argv[1:] if argv is None else argv)
    print(json.dumps({"ports_left": wait_ports(options["port"], time.time() + options["timeout"])}))


if __name__ == "__main__":
    main()
