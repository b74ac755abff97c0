"""What connectivity tests write by hand: wait until pods and services are
ready, resolve a name as a pod does, and ask a server which client address it
saw (is this flow NATed?)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from emu.control.cluster import Cluster, find_pod
from emu.errors import EmuError
from emu.testing.lab import find_service
from emu.testing.matrix import address_of


def wait_ready(cluster: Cluster, *pods: str, services=(), timeout: float = 60.0, interval: float = 0.25) -> None:
    """Wait until the pods (every pod if none are named) run with every container
    ready, as the agents report it, and each service in `services` has ready
    endpoints: at least one, or for a {service: N} mapping exactly N. Raises
    AssertionError naming what is still not ready after `timeout` seconds."""
    __tracebackhide__ = True
    wanted = dict(services) if isinstance(services, dict) else {name: None for name in services}
    deadline = time.monotonic() + timeout
    while True:
        state = cluster.state()
        keys = [find_pod(state, p).key for p in pods] if pods else sorted(state.pods)
        status = cluster.pod_status(state)
        waiting = []
        for key in keys:
            containers = status.get(key, {})
            names = [c["name"] for c in state.pods[key].containers]
            bad = [n for n in names if containers.get(n, {}).get("state") != "Running" or not containers[n]["ready"]]
            if bad:
                waiting.append(f"pod {key} (containers not ready: {', '.join(bad)})")
        if wanted:
            endpoints = cluster.endpoints(state)
            for name, count in wanted.items():
                service = find_service(state.services, name)
                ips = {e.rsplit(":", 1)[0] for port in endpoints.get(service.key, {}).values() for e in port}
                if (count is None and not ips) or (count is not None and len(ips) != count):
                    want = "some" if count is None else str(count)
                    waiting.append(f"service {service.key} ({len(ips)} ready endpoints, want {want})")
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready after {timeout:g} s: " + "; ".join(waiting))
        time.sleep(interval)


@dataclass
class Record:
    name: str
    ttl: int
    type: str
    data: str


@dataclass
class Answer:
    """A DNS answer as `dig +search` in a pod got it: `status` (NOERROR,
    NXDOMAIN, SERVFAIL, ... or NO-REPLY) and the answer `records`."""

    query: str
    type: str
    status: str
    records: list[Record] = field(default_factory=list)
    output: str = ""

    @property
    def data(self) -> list[str]:
        """Every answer record's data (addresses, targets, ...), in order."""
        return [r.data for r in self.records]

    @property
    def addresses(self) -> list[str]:
        return sorted(r.data for r in self.records if r.type in ("A", "AAAA"))


def parse_dig(query: str, qtype: str, output: str) -> Answer:
    """dig's `+noall +comments +answer` output: the last reply's status and records."""
    status = "NO-REPLY"
    records: list[Record] = []
    for line in output.splitlines():
        if line.startswith(";; ->>HEADER<<-"):
            status = line.split("status:", 1)[1].split(",", 1)[0].strip()
            records = []  # +search prints each try; keep the last reply's
        elif line and not line.startswith(";"):
            parts = line.split(None, 4)
            if len(parts) == 5 and parts[1].isdigit():
                records.append(Record(parts[0], int(parts[1]), parts[3], parts[4].strip()))
    return Answer(query, qtype, status, records, output)


def resolve(cluster: Cluster, pod, name: str, qtype: str = "A", timeout: float = 2.0) -> Answer:
    """Look `name` up as the pod does: its resolv.conf (nameserver, search list,
    ndots), with dig +search."""
    key = getattr(pod, "key", str(pod))
    argv = ["dig", "+search", "+noall", "+comments", "+answer", f"+time={max(1, int(timeout))}", "+tries=1",
            name, qtype.upper()]  # fmt: skip
    result = cluster.exec(key, argv)
    return parse_dig(name, qtype.upper(), result.output)


CLIENT_IP_UDP = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(float(sys.argv[3]))
sock.sendto(b"clientip", (sys.argv[1], int(sys.argv[2])))
print(sock.recvfrom(512)[0].decode())
"""


def client_ip(cluster: Cluster, source, target: str, port: int = 8080, protocol: str = "TCP", timeout: float = 5.0) -> str:
    """The source address a netexec server at `target` saw when `source` (a pod's
    name, or a Pod or Node handle) called it: HTTP /clientip, or "clientip" over
    UDP. A pod's own IP means no NAT on the way; its node's IP, masquerade."""
    __tracebackhide__ = True
    from emu.testing.lab import Node

    state = cluster.state()
    address = address_of(state, target)
    if protocol.upper() == "UDP":
        argv = ["python3", "-c", CLIENT_IP_UDP, address, str(port), str(timeout)]
    else:
        argv = ["curl", "-sS", "--max-time", str(timeout), f"http://{address}:{port}/clientip"]
    if isinstance(source, Node):
        result = cluster.node_exec(source.name, argv)
    else:
        result = cluster.exec(getattr(source, "key", str(source)), argv)
    seen = result.output.strip()
    if not result.ok or ":" not in seen:
        raise AssertionError(f"{source} could not ask {target}:{port}/{protocol} for the client IP: {seen}")
    return seen.rsplit(":", 1)[0]
