"""python3 -m emu.node.dns --snapshot FILE: run the cluster DNS server."""

from __future__ import annotations

import argparse
import os

from emu.node.dns.server import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="emu-dns", description="emu's CoreDNS-compatible cluster DNS server")
    parser.add_argument("--snapshot", required=True, help="the JSON snapshot the node agent writes")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="UDP processes")
    parser.add_argument("--health-port", type=int, default=8080, help="/health; 0 turns it off")
    parser.add_argument("--ready-port", type=int, default=8181, help="/ready; 0 turns it off")
    parser.add_argument("--metrics-port", type=int, default=9153, help="Prometheus /metrics; 0 turns it off")
    options = parser.parse_args(argv)
    run(options.snapshot, options.host, options.port, options.workers, options.health_port, options.ready_port,
        options.metrics_port)


if __name__ == "__main__":
    main()
