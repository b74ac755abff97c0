#!/usr/bin/env python3
"""The cluster DNS server fed by the API server (--source api) beside the
snapshot file the node agent writes (--source snapshot), in one run (no Docker).

One API server (emu.apiserver, TLS with the cluster's PKI and RBAC, a process
of its own) holds --services Services with --endpoints ready endpoints each
(one EndpointSlice a service). Two DNS servers (python3 -m emu.node.dns, one
UDP process each) run beside it:
- api: in-cluster, with a token of kube-system/coredns (kubeadm's
  system:coredns role), watching Services, EndpointSlices and Namespaces;
- snapshot: reading a snapshot file with the same zone (the JSON emu's agent
  writes, made here from the same objects).
Figures, side by side:
- a new Service until its name answers: api, from sending the create to the
  API server; snapshot, from the start of writing the new snapshot (the
  whole zone, json.dumps + write + rename, as the agent's write_snapshot
  does) -- the agent's own work before that (its state arriving, the
  ClusterState, readiness gossip) is not counted, so the baseline is the
  snapshot path's lower bound;
- the DNS server's RSS (all its processes: one here) once it serves the
  --services zone.

usage: python bench/dns_api.py [--services 1000] [--endpoints 2] [--runs 10]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import apilab
import harness
from harness import ROOT

from dnslib import QTYPE, DNSRecord

from emu.node.dns.kube import namespace_of, service_of, slice_of, snapshot
from emu.node.kube.client import resource_path

SETTINGS = {"zone": "cluster.local", "ttl": 5, "upstreams": [], "serviceSubnet": "10.96.0.0/16",
            "podSubnet": "10.244.0.0/16"}  # fmt: skip


def service(i: int, prefix: str = "svc") -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"{prefix}-{i:04d}", "namespace": "default"},
            "spec": {"type": "ClusterIP", "clusterIP": f"10.96.{100 + i // 250}.{i % 250 + 1}",
                     "selector": {"app": f"app-{i:04d}"},
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}  # fmt: skip


def endpoint_slice(i: int, endpoints: int) -> dict:
    items = [{"addresses": [f"10.244.{(i * endpoints + j) // 250}.{(i * endpoints + j) % 250 + 2}"],
              "conditions": {"ready": True, "serving": True, "terminating": False}}
             for j in range(endpoints)]  # fmt: skip
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc-{i:04d}-0", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": f"svc-{i:04d}"}},
            "addressType": "IPv4", "endpoints": items,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}  # fmt: skip


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def answers(port: int, name: str) -> bool:
    packet = bytes(DNSRecord.question(name, "A").pack())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(packet, ("127.0.0.1", port))
        try:
            reply = DNSRecord.parse(s.recv(4096))
        except TimeoutError:
            return False
    return any(rr.rtype == QTYPE.A for rr in reply.rr)


def wait_answer(port: int, name: str, timeout: float = 30.0) -> float:
    """Seconds until `name` answers with an address (asked every ~1 ms)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if answers(port, name):
            return time.perf_counter() - start
        time.sleep(0.001)
    raise RuntimeError(f"{name} did not answer within {timeout}s")


def dns_server(tmp: Path, name: str, args: list[str], env: dict) -> tuple[subprocess.Popen, int]:
    port = apilab.free_port()
    argv = [sys.executable, "-m", "emu.node.dns", *args, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--health-port", "0", "--ready-port", "0", "--metrics-port", "0"]  # fmt: skip
    log = open(tmp / f"{name}.log", "ab")  # noqa: SIM115 - the process's
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}), port


def run(context: harness.Context) -> None:
    from emu.apiserver.auth import issue_token

    options, report = context.options, context.report
    tmp = Path(tempfile.mkdtemp(prefix="emubench-dns-api-"))
    objects = []
    for i in range(options.services):  # (the server makes the namespaces every cluster has)
        objects += [service(i), endpoint_slice(i, options.endpoints)]
    lab = apilab.start(tmp, objects, service_cidr="10.96.0.0/16")
    context.stack.callback(lab.kill)
    pki, port, admin = lab.pki, lab.port, lab.admin
    sa = tmp / "serviceaccount"
    sa.mkdir()
    (sa / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    (sa / "token").write_text(issue_token((pki / "sa.key").read_bytes(), "kube-system", "coredns", "u", [], 3600))
    # The same zone for the snapshot server, from the same objects.
    listed = [admin.list(p)["items"] for p in ("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices",
                                               "/api/v1/namespaces")]  # fmt: skip
    objects = ([service_of(o) for o in listed[0]], [slice_of(o) for o in listed[1]],
               [namespace_of(o) for o in listed[2]])  # fmt: skip
    path = tmp / "snapshot.json"
    path.write_text(json.dumps(snapshot(SETTINGS, *objects), sort_keys=True))
    env = {"PYTHONPATH": str(ROOT), "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
    api_args = ["--source", "api", "--service-account-dir", str(sa), "--service-cidr", "10.96.0.0/16",
                "--pod-cidr", "10.244.0.0/16"]  # fmt: skip
    from_api, api_port = dns_server(tmp, "api", api_args, env)
    from_file, file_port = dns_server(tmp, "snapshot", ["--snapshot", str(path)], env)
    for process in (from_api, from_file):
        context.stack.callback(process.kill)
    last = f"svc-{options.services - 1:04d}.default.svc.cluster.local"
    wait_answer(api_port, last, 120)
    wait_answer(file_port, last, 120)
    report.note(f"{options.services} services x {options.endpoints} endpoints; logs in {tmp}")
    time.sleep(1.0)  # settled
    report.compare("DNS server RSS", [rss_kb(from_api.pid) / 1024], [rss_kb(from_file.pid) / 1024], "MB",
                   note="api: informer caches (CoreDNS's trimmed objects) + zone; snapshot: zone")  # fmt: skip

    via_api, via_file = [], []
    for run_ in range(options.runs):
        i = options.services + run_
        name = f"new-{i:04d}.default.svc.cluster.local"
        start = time.perf_counter()
        admin.create(resource_path("v1", "services", "default"), service(i, "new"))
        via_api.append(time.perf_counter() - start + wait_answer(api_port, name))
        objects[0].append(service_of({**service(i, "new"), "metadata": {"name": f"new-{i:04d}",
                                                                        "namespace": "default"}}))  # fmt: skip
        start = time.perf_counter()
        text = json.dumps(snapshot(SETTINGS, *objects), sort_keys=True)
        with open(f"{path}.new", "w") as handle:
            handle.write(text)
        os.replace(f"{path}.new", path)
        via_file.append(time.perf_counter() - start + wait_answer(file_port, name))
    report.compare("new Service -> name answers", via_api, via_file, "s",
                   note="api: create sent -> answer; snapshot: whole snapshot written -> answer "
                        "(polled every 0.1 s)")  # fmt: skip
    report.compare("DNS server RSS after", [rss_kb(from_api.pid) / 1024], [rss_kb(from_file.pid) / 1024], "MB")


def options(parser) -> None:
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=2)


if __name__ == "__main__":
    sys.exit(harness.main([harness.Scenario("dns_api", "the DNS server from the API vs from the agent's snapshot",
                                            "the same zone read from the snapshot file", run)],
                          __doc__, runs=10, options=options))  # fmt: skip
