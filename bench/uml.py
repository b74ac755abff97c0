#!/usr/bin/env python3
"""How fast a User-mode Linux node starts, beside a docker node container, in one run.

For each round:
  uml     Guest.boot() of the node image's root filesystem (emu.control.runtime.uml)
          until its command server answers (`true` ran inside), then its idle
          memory (resident set of the guest's host processes) and its shutdown
  docker  `docker run -d` of the same node image until `docker exec NODE true`
          answers, then its memory (docker stats) and `docker rm -f`
and, with --rootfs, the one-off making of the root filesystem (export + mkfs).
Needs root and Docker; the node image must be built (`emu images build`).

usage: python bench/uml.py [--runs N] [--rootfs] [--json]
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import harness

from emu.control.runtime import uml
from emu.control.runtime.images import node_image_tag

BRIDGE = "emubench-uml"
SUBNET_GATEWAY = "192.168.214.1"
# As emu.control.runtime.docker makes node containers (its capabilities, an init, no AppArmor profile).
NODE_FLAGS = ["--cap-add", "NET_ADMIN", "--cap-add", "SYS_ADMIN", "--cap-add", "NET_RAW", "--init",
              "--security-opt", "apparmor=unconfined"]  # fmt: skip


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in a process group, in MB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += int(fields[21]) * 4096  # rss in pages
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e6


def docker_mb(usage: str) -> float:
    """docker stats' MemUsage ("12.5MiB / 23.4GiB") in MB; NaN when it gave none."""
    match = re.match(r"([0-9.]+)\s*([KMG]i?B|B)", usage)
    if not match:
        return float("nan")
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "KB": 1e3, "MB": 1e6, "GB": 1e9}[match.group(2)]
    return float(match.group(1)) * scale / 1e6


def time_uml(rootfs: Path, state: Path, index: int) -> dict:
    guest = uml.Guest(f"emubench-uml-{index}", rootfs, BRIDGE, f"192.168.214.{10 + index}/24", state_dir=state)
    started = time.monotonic()
    guest.boot()
    boot = time.monotonic() - started
    try:
        time.sleep(2)  # idle, after the boot's own work
        memory = group_rss_mb(guest.process.pid)
    finally:
        started = time.monotonic()
        guest.shutdown()
        down = time.monotonic() - started
    return {"up": boot, "memory_mb": memory, "down": down}


def time_docker(image: str) -> dict:
    name = f"emubench-node-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    try:
        subprocess.run(["docker", "run", "-d", *NODE_FLAGS, "--name", name, image, "sleep", "infinity"],
                       check=True, capture_output=True)  # fmt: skip
        while subprocess.run(["docker", "exec", name, "true"], check=False, capture_output=True).returncode != 0:
            time.sleep(0.05)
        boot = time.monotonic() - started
        time.sleep(2)
        usage = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", name],
                               check=False, capture_output=True, text=True).stdout.split("/")[0].strip()  # fmt: skip
    finally:
        started = time.monotonic()
        subprocess.run(["docker", "rm", "-f", name], check=False, capture_output=True)
        down = time.monotonic() - started
    return {"up": boot, "memory_mb": docker_mb(usage), "down": down}


def run(context: harness.Context) -> None:
    report = context.report
    uml.require_uml()
    image = node_image_tag()
    if context.options.rootfs:
        with tempfile.TemporaryDirectory() as cache:
            made = harness.timed(lambda: uml.make_rootfs(image, cache_dir=Path(cache)))
        report.figure(f"root filesystem from {image}", made, note="export + modules + mkfs.ext4 -d, once")
    rootfs = uml.make_rootfs(image)
    uml.ensure_bridge(BRIDGE, f"{SUBNET_GATEWAY}/24")
    try:
        with tempfile.TemporaryDirectory() as state:
            index = itertools.count()
            umls, dockers = context.rounds(lambda: time_uml(rootfs, Path(state), next(index)),
                                           lambda: time_docker(image))
    finally:
        uml.delete_bridge(BRIDGE)
    report.compare("up: command server answers (uml/docker)", [u["up"] for u in umls], [d["up"] for d in dockers])
    report.compare("idle memory (uml/docker)", [u["memory_mb"] for u in umls], [d["memory_mb"] for d in dockers],
                   "MB", note="uml: resident set of the guest's host processes; docker: docker stats' MemUsage")
    report.compare("down (uml/docker)", [u["down"] for u in umls], [d["down"] for d in dockers])


def options(parser) -> None:
    parser.add_argument("--rootfs", action="store_true", help="also time making the root filesystem (once)")


if __name__ == "__main__":
    sys.exit(harness.main([harness.Scenario("uml", "a UML node booted from the node image's root filesystem",
                                            "docker run of the same node image", run)],
                          __doc__, runs=3, options=options))  # fmt: skip
