"""Runs inside a User-mode Linux node (PYTHONPATH=/opt/emu/lib): times emu's IPVS
sync the way the node's agent would run it (subprocess.run, no channel), against
the same tools' input run bare. Driven by bench/ipvs_sync.py.

usage: python3 node_ipvs_sync.py COUNT ROUNDS   (prints one JSON line)
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import time

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


def bare(texts: dict[str, str]) -> float:
    """The tools alone, given the same input emu's apply gave them."""
    started = time.perf_counter()
    for tool, text in texts.items():
        if text.strip():
            subprocess.run(ipvs.TOOLS[tool][0], input=text, text=True, check=True, capture_output=True)
    return time.perf_counter() - started


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
        plain.append(bare(ipvs.changes(rules, dataclasses.replace(ipvs.empty(), iptables=rules.iptables))))
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
    started = time.perf_counter()
    subprocess.run(["true"], check=True)
    spawn = time.perf_counter() - started
    servers = subprocess.run(["ipvsadm", "-S", "-n"], check=True, capture_output=True, text=True).stdout.count("-A ")
    print(json.dumps({
        "services": count, "servers": servers, "render": statistics.median(render), "full": statistics.median(full),
        "bare": statistics.median(plain), "change": statistics.median(change),
        "change_render": statistics.median(change_render), "spawn": spawn,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
