"""Runs inside a User-mode Linux node (PYTHONPATH=/opt/emu/lib): times emu's IPVS
sync the way the node's agent would run it (subprocess.run, no channel), against
the same tools' input run bare. Driven by bench/ipvs_sync.py, which copies this
file, node_proxy_sync.py and harness.py into the node.

usage: python3 node_ipvs_sync.py COUNT ROUNDS   (prints one JSON line; each time is harness.Timing.as_dict())
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import harness
from node_proxy_sync import make

from emu.node.proxy import ipvs, proxier
from emu.node.services import Endpoint


def clean() -> None:
    """An IPVS node as the bootstrap left it: no servers, addresses or set members, empty chains."""
    subprocess.run(["ipvsadm", "-C"], check=True)
    subprocess.run(["ip", "addr", "flush", "dev", ipvs.DUMMY], check=True)
    sets = ipvs.parse_ipset_save(subprocess.run(["ipset", "save"], check=True, capture_output=True, text=True).stdout)
    for name in sets:
        subprocess.run(["ipset", "flush", name], check=True)


def bare(texts: dict[str, str]) -> None:
    """The tools alone, given the same input emu's apply gave them."""
    for tool, text in texts.items():
        if text.strip():
            subprocess.run(ipvs.TOOLS[tool][0], input=text, text=True, check=True, capture_output=True)


def main() -> None:
    count, rounds = int(sys.argv[1]), int(sys.argv[2])
    state, endpoints = make(count)
    state.networking["proxyMode"] = "ipvs"
    proxy = proxier("ipvs")
    full, render, plain = [], [], []
    for _ in range(rounds):
        clean()
        started = time.perf_counter()
        rules = proxy.render(state, "n0", endpoints)
        rendered = time.perf_counter()
        proxy.apply(subprocess.run, rules, None)  # a first sync: reads the kernel, writes the difference
        full.append(time.perf_counter() - started)
        render.append(rendered - started)
        texts = ipvs.changes(rules, proxy.adopt(subprocess.run))
        assert not any(t.strip() for k, t in texts.items() if k != "iptables"), "the kernel lacks what was written"
        clean()
        texts = ipvs.changes(rules, dataclasses.replace(ipvs.empty(), iptables=rules.iptables))
        plain.append(harness.timed(lambda: bare(texts)))
    clean()
    proxy.apply(subprocess.run, rules, None)
    # One endpoint of one service moves, and back: what the agent's next sync does.
    key = next(iter(endpoints))
    moved = dict(endpoints)
    moved[key] = {"http": [endpoints[key]["http"][0], Endpoint("10.247.255.254", 8080, "n1", None)]}
    change, change_render, cache = [], [], {}
    previous = proxy.render(state, "n0", endpoints, cache)  # the agent keeps its render cache between syncs
    for view in [moved, endpoints] * 5:
        started = time.perf_counter()
        now = proxy.render(state, "n0", view, cache)
        rendered = time.perf_counter()
        proxy.apply(subprocess.run, now, previous)
        change.append(time.perf_counter() - started)
        change_render.append(rendered - started)
        previous = now
    spawn = harness.timed(lambda: subprocess.run(["true"], check=True))
    servers = subprocess.run(["ipvsadm", "-S", "-n"], check=True, capture_output=True, text=True).stdout.count("-A ")
    times = {"render": render, "full": full, "bare": plain, "change": change, "change_render": change_render,
             "spawn": [spawn]}  # fmt: skip
    print(json.dumps({"services": count, "servers": servers,
                      **{name: harness.Timing(samples).as_dict() for name, samples in times.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
