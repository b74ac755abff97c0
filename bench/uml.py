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

usage: python bench/uml.py [--rounds N] [--rootfs]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
    return {"up": boot, "memory": usage, "down": down}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rootfs", action="store_true", help="also time making the root filesystem (once)")
    args = parser.parse_args()
    uml.require_uml()
    image = node_image_tag()
    if args.rootfs:
        with tempfile.TemporaryDirectory() as cache:
            started = time.monotonic()
            uml.make_rootfs(image, cache_dir=Path(cache))
            print(f"root filesystem from {image}: {time.monotonic() - started:.1f} s (export + modules + mkfs.ext4 -d)")
    rootfs = uml.make_rootfs(image)
    uml.ensure_bridge(BRIDGE, f"{SUBNET_GATEWAY}/24")
    rows = []
    try:
        with tempfile.TemporaryDirectory() as state:
            for index in range(args.rounds):
                rows.append((time_uml(rootfs, Path(state), index), time_docker(image)))
    finally:
        uml.delete_bridge(BRIDGE)
    print(f"{'round':>5}  {'uml up':>7}  {'docker up':>9}  {'uml idle RSS':>12}  {'docker mem':>10}  "
          f"{'uml down':>8}  {'docker down':>11}")  # fmt: skip
    for index, (u, d) in enumerate(rows, 1):
        print(f"{index:>5}  {u['up']:>6.2f}s  {d['up']:>8.2f}s  {u['memory_mb']:>9.0f} MB  {d['memory']:>10}  "
              f"{u['down']:>7.2f}s  {d['down']:>10.2f}s")  # fmt: skip
    print(
        f"median up: uml {statistics.median(u['up'] for u, _ in rows):.2f} s, "
        f"docker {statistics.median(d['up'] for _, d in rows):.2f} s"
    )


if __name__ == "__main__":
    main()
