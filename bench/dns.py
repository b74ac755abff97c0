#!/usr/bin/env python3
"""emu's cluster DNS server against dnsmasq serving the same names, same run.

Both serve the A records of --services cluster services and of --headless
headless services with 4 ready endpoints each (4 A records a name) on
127.0.0.1 (emu's server with --workers UDP processes, from a snapshot file;
dnsmasq from a hosts file), and dnsperf sends the same query file to each for
--seconds. Printed: queries per second, loss, average latency, the ratio, and
how many different addresses came first in 8 answers for one headless name
(emu rotates multi-address answers as CoreDNS's loadbalance plugin does).

During emu's run a new service is added to the snapshot halfway through, and
a separate client measures how long until it resolves. After the runs, every
name is checked against its expected address on both servers.

Installs dnsperf and dnsmasq from Debian's packages when missing (as root).
usage: python bench/dns.py [--services 1000] [--headless 100] [--seconds 10] [--workers 2] [--runs 5] [--clients 1] [--json]
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness
from dnslib import DNSRecord
from harness import ROOT

EMU_PORT, DNSMASQ_PORT = 5353, 5354
PORTS = {"emu": EMU_PORT, "dnsmasq": DNSMASQ_PORT}
ZONE = "cluster.local"


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in (("dnsperf", "dnsperf"), ("dnsmasq", "dnsmasq-base")) if not shutil.which(tool)]
    if missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            sys.exit(f"install {' '.join(missing)} first")
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, stdout=subprocess.DEVNULL)


def service(i: int) -> tuple[str, str]:
    return f"svc-{i}.bench.svc.{ZONE}", str(ipaddress.IPv4Address("10.96.16.0") + i)


def headless(i: int) -> tuple[str, list[str]]:
    """A headless service's name and its 4 endpoint addresses."""
    return f"hl-{i}.bench.svc.{ZONE}", [str(ipaddress.IPv4Address("10.244.0.0") + 4 * i + k + 1) for k in range(4)]


def snapshot(count: int, extra: list[tuple[str, str]] = (), headless_count: int = 0) -> dict:
    services = []
    for i in range(headless_count):
        endpoints = [{"ip": ip, "hostname": None, "ready": True, "ports": {"http": 8080}} for ip in headless(i)[1]]
        services.append(
            {"namespace": "bench", "name": f"hl-{i}", "type": "ClusterIP", "clusterIP": "None",
             "externalName": None, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "endpoints": endpoints}
        )  # fmt: skip
    for i in range(count):
        services.append(
            {"namespace": "bench", "name": f"svc-{i}", "type": "ClusterIP", "clusterIP": service(i)[1],
             "externalName": None, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "endpoints": []}
        )  # fmt: skip
    for name, ip in extra:
        services.append(
            {"namespace": "bench", "name": name, "type": "ClusterIP", "clusterIP": ip, "externalName": None,
             "ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "endpoints": []}
        )  # fmt: skip
    return {"zone": ZONE, "ttl": 5, "upstreams": [], "serviceSubnet": "10.96.0.0/16", "podSubnet": "10.244.0.0/16",
            "services": services}  # fmt: skip


def write_atomically(path: Path, data: dict) -> None:
    path.with_suffix(".new").write_text(json.dumps(data))
    os.replace(path.with_suffix(".new"), path)


def resolve_all(port: int, name: str) -> list[str]:
    """The addresses of one answer, in the order they came."""
    query = DNSRecord.question(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.sendto(bytes(query.pack()), ("127.0.0.1", port))
            reply = DNSRecord.parse(sock.recvfrom(4096)[0])
        except (OSError, Exception):
            return []
    return [str(rr.rdata) for rr in reply.rr]


def resolve(port: int, name: str) -> str | None:
    found = resolve_all(port, name)
    return found[0] if found else None


def wait_answering(port: int, name: str) -> None:
    for _ in range(100):
        if resolve(port, name):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and all its descendants, from /proc."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue  # gone meanwhile
    return total / os.sysconf("SC_CLK_TCK")


def dnsperf(port: int, queries: Path, seconds: int, clients: int, outstanding: int, server_pid: int) -> dict:
    cpu_before = cpu_seconds(server_pid)
    output = subprocess.run(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds),
         "-c", str(clients), "-q", str(outstanding), "-t", "2"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cpu = cpu_seconds(server_pid) - cpu_before

    def number(pattern: str) -> float:
        match = re.search(pattern, output)
        return float(match.group(1)) if match else float("nan")

    return {
        "qps": number(r"Queries per second:\s+([\d.]+)"),
        "sent": number(r"Queries sent:\s+(\d+)"),
        "lost": number(r"Queries lost:\s+(\d+)"),
        "latency_ms": number(r"Average Latency \(s\):\s+([\d.]+)") * 1000,
        "cpu_us": cpu * 1e6 / max(1.0, number(r"Queries completed:\s+(\d+)")),  # server CPU per answered query
    }


def check_all(port: int, count: int, headless_count: int) -> int:
    wrong = sum(1 for i in range(count) if resolve(port, service(i)[0]) != service(i)[1])
    return wrong + sum(1 for i in range(headless_count) if sorted(resolve_all(port, headless(i)[0])) != sorted(headless(i)[1]))


def first_addresses(port: int, name: str, times: int = 8) -> int:
    """How many different addresses came first in `times` answers for one name."""
    return len({tuple(resolve_all(port, name))[:1] for _ in range(times)})


def dns(context: harness.Context) -> None:
    options, report = context.options, context.report
    ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="emu-dns-bench-"))
    snapshot_path = work / "snapshot.json"
    write_atomically(snapshot_path, snapshot(options.services, headless_count=options.headless))
    hosts = [f"{service(i)[1]} {service(i)[0]}\n" for i in range(options.services)]
    hosts += [f"{ip} {headless(i)[0]}\n" for i in range(options.headless) for ip in headless(i)[1]]
    (work / "hosts").write_text("".join(hosts))
    queries = [f"{service(i)[0]} A\n" for i in range(options.services)]
    queries += [f"{headless(i)[0]} A\n" for i in range(options.headless)]
    (work / "queries").write_text("".join(queries))

    emu = subprocess.Popen(
        [sys.executable, "-m", "emu.node.dns", "--snapshot", str(snapshot_path), "--host", "127.0.0.1",
         "--port", str(EMU_PORT), "--workers", str(options.workers), "--health-port", "0", "--ready-port", "0",
         "--metrics-port", "0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0,
    )  # fmt: skip
    dnsmasq = subprocess.Popen(
        ["dnsmasq", "--no-daemon", "--keep-in-foreground", "--listen-address=127.0.0.1", "--bind-interfaces",
         f"--port={DNSMASQ_PORT}", "--no-resolv", "--no-hosts", f"--addn-hosts={work / 'hosts'}",
         "--local-ttl=5", "--user=root", "--pid-file=", "--log-facility=/dev/null"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_answering(EMU_PORT, service(0)[0])
        wait_answering(DNSMASQ_PORT, service(0)[0])
        runs: dict[str, list[dict]] = {"dnsmasq": [], "emu": []}
        visible: list[float] = []
        for round_number in range(context.runs):
            runs["dnsmasq"].append(
                dnsperf(DNSMASQ_PORT, work / "queries", options.seconds, options.clients, options.outstanding, dnsmasq.pid)
            )

            # emu, with a service added halfway through the run.
            added = f"added-{round_number}"

            def change(added=added) -> None:
                time.sleep(options.seconds / 2)
                extra = [(f"added-{r}", f"10.96.200.{r + 1}") for r in range(round_number + 1)]
                write_atomically(snapshot_path, snapshot(options.services, extra, options.headless))
                changed = time.monotonic()
                while time.monotonic() - changed < 5:
                    if resolve(EMU_PORT, f"{added}.bench.svc.{ZONE}") == f"10.96.200.{round_number + 1}":
                        visible.append(time.monotonic() - changed)
                        return
                    time.sleep(0.01)
                visible.append(float("inf"))

            changer = threading.Thread(target=change)
            changer.start()
            runs["emu"].append(
                dnsperf(EMU_PORT, work / "queries", options.seconds, options.clients, options.outstanding, emu.pid)
            )
            changer.join()
        wrong = {name: check_all(port, options.services, options.headless) for name, port in PORTS.items()}
        firsts = {name: first_addresses(port, headless(0)[0]) if options.headless else 0 for name, port in PORTS.items()}
    finally:
        os.killpg(emu.pid, signal.SIGTERM)
        dnsmasq.terminate()
        emu.wait(5)
        dnsmasq.wait(5)
        shutil.rmtree(work, ignore_errors=True)

    report.note(f"{options.services} service names and {options.headless} headless ones (4 addresses each), "
                f"dnsperf {options.clients} clients x {options.seconds} s on 127.0.0.1; "
                f"emu with {options.workers} UDP processes")  # fmt: skip
    emu_runs, dnsmasq_runs = runs["emu"], runs["dnsmasq"]

    def field(rs: list[dict], name: str) -> list[float]:
        return [r[name] for r in rs]

    report.compare("queries/s", field(emu_runs, "qps"), field(dnsmasq_runs, "qps"), "q/s")
    report.compare("queries lost", field(emu_runs, "lost"), field(dnsmasq_runs, "lost"), "queries")
    report.compare("loss", [100 * r["lost"] / r["sent"] if r["sent"] else float("nan") for r in emu_runs],
                   [100 * r["lost"] / r["sent"] if r["sent"] else float("nan") for r in dnsmasq_runs], "%")  # fmt: skip
    report.compare("average latency", [r["latency_ms"] / 1000 for r in emu_runs],
                   [r["latency_ms"] / 1000 for r in dnsmasq_runs], "ms")  # fmt: skip
    report.compare("server CPU per query", [r["cpu_us"] / 1e6 for r in emu_runs],
                   [r["cpu_us"] / 1e6 for r in dnsmasq_runs], "us")  # fmt: skip
    report.compare("wrong answers", wrong["emu"], wrong["dnsmasq"], "names")
    report.compare("first of 8 (rotation)", firsts["emu"], firsts["dnsmasq"], "addresses")
    # Each emu run follows its dnsmasq run at once: the median of the pairs'
    # ratios is the figure least moved by other load on the machine.
    pairs = list(zip(dnsmasq_runs, emu_runs))
    report.figure("queries/s, each round's emu/dnsmasq", [e["qps"] / d["qps"] for d, e in pairs], "x")
    report.figure("CPU per query, each round's emu/dnsmasq", [e["cpu_us"] / d["cpu_us"] for d, e in pairs], "x")
    report.figure("a service added during each emu run resolved after", visible, "ms")


SCENARIOS = [
    harness.Scenario("dns", "emu's cluster DNS server (snapshot file, --workers UDP processes) under dnsperf",
                     "dnsmasq serving the same names from a hosts file, alternating rounds", dns),
]


def options(parser) -> None:
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--headless", type=int, default=100, help="headless services with 4 endpoints each")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=1, help="dnsperf -c")
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=5, options=options))
