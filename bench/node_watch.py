#!/usr/bin/env python3
"""How fast one EndpointSlice change reaches the kube-proxy view of N watching
nodes, and what one such watcher costs in memory (issue 21, stage 4).

One API server (emu.apiserver, TLS with the cluster's PKI and RBAC, in a
process of its own) holds --services Services with --endpoints endpoints each
(one EndpointSlice a service), written into its SQLite store before it
starts. --watchers node processes each run what an agent will: a Client with
kube-proxy's certificate, informers on Services and EndpointSlices, and a
ProxyFeed (emu.node.kube); each prints when its view has the change. The
driver then flips one endpoint's `ready` in one slice, --rounds times, and
prints, side by side:
- the time from sending the update until all N views have it (median, max
  over rounds; issue 21 aims under 100 ms; the hub did it in 76.5 ms),
  and until the first and the median watcher have it;
- the round trip of a bare GET /version on a kept-alive connection to the
  same server, and of the update itself;
- each watcher's RSS after its informers synced (issue 21: an idle agent
  under 25 MB), beside the same process's RSS before its informers started.
With --render, each watcher also renders its iptables rules after the change
(emu.node.proxy.iptables, with the renderer's cache; no kernel write), and the
time until all N have rendered is printed too.

usage: python bench/node_watch.py [--watchers 50] [--services 1000] [--endpoints 2] [--runs 10] [--render]
                                  [--python /usr/bin/python3] [--json]
"""

from __future__ import annotations

import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import apilab
import harness
from harness import ROOT

NETWORKING = {"podSubnet": "10.244.0.0/16", "serviceSubnet": "10.96.0.0/16", "proxyMode": "iptables"}
TARGET = ("default", "svc-0000")

def service(i: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{i:04d}", "namespace": "default"},
            "spec": {"type": "ClusterIP", "clusterIP": f"10.96.{100 + i // 250}.{i % 250 + 1}",
                     "clusterIPs": [f"10.96.{100 + i // 250}.{i % 250 + 1}"], "ipFamilies": ["IPv4"],
                     "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                     "selector": {"app": f"app-{i:04d}"},
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
            "status": {"loadBalancer": {}}}  # fmt: skip


def endpoint_slice(i: int, endpoints: int, watchers: int) -> dict:
    items = []
    for j in range(endpoints):
        n = i * endpoints + j
        items.append({"addresses": [f"10.244.{n // 250}.{n % 250 + 2}"],
                      "conditions": {"ready": True, "serving": True, "terminating": False},
                      "nodeName": f"node-{n % max(1, watchers)}",
                      "targetRef": {"kind": "Pod", "namespace": "default", "name": f"app-{i:04d}-{j}",
                                    "uid": f"00000000-0000-0000-0000-{n:012d}"}})  # fmt: skip
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc-{i:04d}-0", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": f"svc-{i:04d}",
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4", "endpoints": items,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}  # fmt: skip


# ---- a watcher (one node's kube-proxy part), a lean process of its own ---------------
# Run with `python -c` so that it imports only what an agent would (the bench's own
# modules, statistics and subprocess among them, would count in its RSS).
CHILD = f"""
import ctypes, gc, sys, threading, time
def rss_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
root, url, pki, node, render, target = sys.argv[1:7]
before = rss_kb()
sys.path.insert(0, root)
from emu.node.kube.client import Client
from emu.node.kube.informer import start_all
from emu.node.kube.proxyfeed import ProxyFeed
client = Client(url, pki + "/ca.crt", pki + "/kube-proxy.crt", pki + "/kube-proxy.key")
changed = threading.Event()
feed = ProxyFeed(node, {NETWORKING!r}, on_change=changed.set)
informers = feed.informers(client, nodes=False)
imported = rss_kb()
if not start_all(informers, 300):
    print("failed to sync", flush=True)
    sys.exit(1)
state, endpoints = feed.snapshot()
proxy = cache = rules = None
if render == "1":
    from emu.node.proxy import proxier
    proxy, cache = proxier("iptables"), {{}}
    rules = proxy.render(state, node, endpoints, cache=cache)
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)  # as the agent does after it loads a state (release_memory)
changed.clear()
print(f"synced {{before}} {{imported}} {{rss_kb()}} {{len(state.services)}}", flush=True)
while True:
    changed.wait()
    changed.clear()
    state, endpoints = feed.snapshot()
    if target not in feed.touched:
        continue
    line = f"seen {{time.time():.6f}}"
    if proxy is not None:
        new = proxy.render(state, node, endpoints, cache=cache)
        proxy.text(new, rules)  # what a sync would write: only the changed chains
        rules = new
        line += f" rendered {{time.time():.6f}}"
    print(line, flush=True)
"""


# ---- the driver ---------------------------------------------------------------------
def run(context: harness.Context) -> None:
    from emu.node.kube.client import resource_path

    options, report = context.options, context.report
    tmp = Path(tempfile.mkdtemp(prefix="emu-bench-watch-"))
    started = time.perf_counter()
    objects = []
    for i in range(options.services):
        objects += [service(i), endpoint_slice(i, options.endpoints, options.watchers)]
    lab = apilab.start(tmp, objects, node="node-0")
    context.stack.callback(lab.kill)
    admin = lab.admin
    report.note(f"preloaded {options.services} services and slices of {options.endpoints} endpoints, server "
                f"answering, in {time.perf_counter() - started:.1f}s")  # fmt: skip
    children: list[subprocess.Popen] = []

    def stop_children() -> None:
        for process in children:
            process.kill()
        for process in children:
            process.wait(10)

    context.stack.callback(stop_children)
    lines: queue.Queue = queue.Queue()

    def reader(index: int, process: subprocess.Popen) -> None:
        for raw in process.stdout:
            lines.put((index, raw.decode().split()))

    started = time.perf_counter()
    for index in range(options.watchers):
        argv = [options.python, "-c", CHILD, str(ROOT), lab.url, str(lab.pki), f"node-{index}",
                "1" if options.render else "0", "/".join(TARGET)]  # fmt: skip
        process = subprocess.Popen(argv, stdout=subprocess.PIPE)
        children.append(process)
        threading.Thread(target=reader, args=(index, process), daemon=True).start()
    sizes = []
    for _ in range(options.watchers):
        index, words = lines.get(timeout=600)
        if words[0] != "synced":
            raise SystemExit(f"watcher {index}: {' '.join(words)}")
        sizes.append([int(w) for w in words[1:4]])
        if int(words[4]) != options.services:
            raise SystemExit(f"watcher {index} sees {words[4]} services, not {options.services}")
    report.note(f"{options.watchers} watchers synced in {time.perf_counter() - started:.1f}s "
                f"(each: {options.services} services, {options.services} slices)")  # fmt: skip

    # A bare round trip to the same server, on a kept-alive connection.
    admin.get("/version")
    trips = harness.measure(lambda: admin.get("/version"), runs=100)

    path = resource_path("discovery.k8s.io/v1", "endpointslices", TARGET[0], f"{TARGET[1]}-0")
    all_seen, first_seen, median_seen, all_rendered, updates = [], [], [], [], []
    for round_ in range(context.runs):
        time.sleep(0.3)  # idle between rounds, as a real change comes to idle watchers
        obj = admin.get(path)
        endpoint = obj["endpoints"][-1]
        endpoint["conditions"]["ready"] = endpoint["conditions"]["serving"] = round_ % 2 == 1
        sent = time.time()
        updates.append(harness.timed(lambda: admin.update(path, obj)))
        seen, rendered = [], []
        for _ in range(options.watchers):
            index, words = lines.get(timeout=60)
            seen.append(float(words[1]) - sent)
            if len(words) > 3:
                rendered.append(float(words[3]) - sent)
        seen.sort()
        all_seen.append(seen[-1])
        first_seen.append(seen[0])
        median_seen.append(statistics.median(seen))
        if rendered:
            all_rendered.append(max(rendered))

    n = options.watchers
    report.note(f"one EndpointSlice update -> the views of {n} watchers ({context.runs} rounds); "
                "baseline: the update's own round trip (PUT)")  # fmt: skip
    report.compare(f"all {n} have it", all_seen, updates, "ms",
                   note="issue 21: under 100 ms; the hub: 76.5 ms")
    report.compare("the first has it", first_seen, updates, "ms")
    report.compare("the median watcher has it", median_seen, updates, "ms")
    if all_rendered:
        report.compare("all have rendered rules", all_rendered, updates, "ms",
                       note="iptables, from the renderer's cache")
    report.compare("the update's round trip (PUT)", updates, trips, "ms",
                   note="baseline: a bare GET /version round trip on a kept-alive connection")
    before, imported, synced = ([s[k] / 1024 for s in sizes] for k in range(3))
    report.compare("watcher RSS, synced", synced, before, "MB",
                   note=f"with {options.services} services x {options.endpoints} endpoints; baseline: the same "
                        "process at start; issue 21: an idle agent under 25 MB")  # fmt: skip
    report.figure("watcher RSS, client and feed imported", imported, "MB")


def options(parser) -> None:
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=2)
    parser.add_argument("--render", action="store_true", help="watchers also render their iptables rules")
    parser.add_argument("--python", default=sys.executable,
                        help="the watchers' interpreter (/usr/bin/python3: Debian's, as in a node)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(harness.main([harness.Scenario("node_watch", "one EndpointSlice update -> N watching nodes' views",
                                            "the update's own round trip to the same server", run)],
                          __doc__, runs=10, options=options))  # fmt: skip
