"""python3 -m emu.node.dns --snapshot FILE | --source api ...: run the cluster DNS server."""

from __future__ import annotations

import argparse
import ipaddress
import os

from emu.node.dns.server import run
from emu.node.kube.client import SERVICE_ACCOUNT_DIR
from emu.node.records import DEFAULT_DNS_DOMAIN


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="emu-dns", description="emu's CoreDNS-compatible cluster DNS server")
    parser.add_argument("--source", choices=("snapshot", "api"), default="snapshot",
                        help="where the zone comes from: the node agent's snapshot file, or the Kubernetes API "
                             "watched as CoreDNS's kubernetes plugin does (in-cluster, the pod's service account)")
    parser.add_argument("--snapshot", help="the JSON snapshot the node agent writes (--source snapshot)")
    parser.add_argument("--zone", default=DEFAULT_DNS_DOMAIN, help="the cluster domain (--source api)")
    parser.add_argument("--ttl", type=int, default=5, help="TTL of the cluster's records (--source api)")
    parser.add_argument("--upstream", action="append", default=[], metavar="HOST[:PORT]",
                        help="a server for names outside the cluster, in turn (--source api; repeat it)")
    parser.add_argument("--service-cidr", default="", help="reverse lookups answered here (--source api)")
    parser.add_argument("--pod-cidr", default="", help="reverse lookups answered here (--source api)")
    parser.add_argument("--service-account-dir", default=SERVICE_ACCOUNT_DIR,
                        help="token, ca.crt and namespace of the pod's service account (--source api)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="UDP processes")
    parser.add_argument("--health-port", type=int, default=8080, help="/health; 0 turns it off")
    parser.add_argument("--ready-port", type=int, default=8181, help="/ready; 0 turns it off")
    parser.add_argument("--metrics-port", type=int, default=9153, help="Prometheus /metrics; 0 turns it off")
    options = parser.parse_args(argv)
    api = None
    if options.source == "api":
        if not 0 <= options.ttl <= 3600:
            parser.error(f"--ttl {options.ttl}: expected seconds, 0 to 3600")
        for flag, value in (("--service-cidr", options.service_cidr), ("--pod-cidr", options.pod_cidr)):
            try:
                if value:
                    ipaddress.IPv4Network(value)
            except ValueError as error:
                parser.error(f"{flag} {value}: {error} (expected an IPv4 network such as 10.96.0.0/12)")
        settings = {"zone": options.zone, "ttl": options.ttl, "upstreams": options.upstream,
                    "serviceSubnet": options.service_cidr, "podSubnet": options.pod_cidr}  # fmt: skip
        api = {"settings": settings, "service_account_dir": options.service_account_dir}
    elif not options.snapshot:
        parser.error("--snapshot FILE is needed with --source snapshot (the default)")
    run(options.snapshot or "", options.host, options.port, options.workers, options.health_port, options.ready_port,
        options.metrics_port, api)


if __name__ == "__main__":
    main()
