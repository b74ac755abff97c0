#!/usr/bin/env python3
"""kube-proxy's IPVS mode: emu's sync time inside a User-mode Linux node.

Boots one UML node (emu.control.runtime.uml), runs the IPVS bootstrap, copies the
agent's modules in, and there, as the node's agent would (subprocess.run):
  render   the node's IPVS rules for N ClusterIP services with 2 endpoints each
  full     render + a first sync from a node with none (reads the kernel, writes all)
  bare     the same tools' input alone (ip -batch, ipset restore, ipvsadm -R, iptables-restore)
  change   one endpoint of one service changes: render (with the agent's cache) + apply of the
           difference (median of 10); "of which render"; "spawn": one `true` started, for scale
Needs root, Docker (the node image, built) and User-mode Linux (scripts/ensure-uml.sh).

usage: python bench/ipvs_sync.py [--counts 100,1000] [--runs 3] [--json]
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import harness
from harness import ROOT

from emu.node.plan import cni
from emu.node.proxy import proxier
from emu.node.records import ClusterState, NodeState
from emu.control.runtime import uml
from emu.control.runtime.images import node_image_tag

BRIDGE = "emubench-ipvs"


def tar_of(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def run(context: harness.Context) -> None:
    options, report = context.options, context.report
    uml.require_uml()
    rootfs = uml.make_rootfs(node_image_tag())
    uml.ensure_bridge(BRIDGE, "192.168.215.1/24")
    with tempfile.TemporaryDirectory() as state_dir:
        guest = uml.Guest("emubench-ipvs", rootfs, BRIDGE, "192.168.215.2/24", memory="768M", state_dir=Path(state_dir))
        try:
            guest.boot()
            node = NodeState("n0", "control-plane", {}, "10.244.0.0/24", "172.28.0.2", "bench")
            boot = proxier("ipvs").bootstrap(ClusterState("bench", "bench", "", {}, [node]), node, "/etc/emu/plan")
            files = {**cni.agent_files(), **boot.files}
            for name in ("node_proxy_sync.py", "node_ipvs_sync.py", "harness.py"):
                files[f"/opt/emu/bench/{name}"] = (ROOT / "bench" / name).read_text()
            guest.run(["tar", "-x", "-C", "/"], input=tar_of(files), check=True)
            for step in boot.steps:
                guest.sh(step)
            for count in [int(c) for c in options.counts.split(",")]:
                result = guest.run(
                    ["env", f"PYTHONPATH={cni.AGENT_LIB}:/opt/emu/bench", "python3", "/opt/emu/bench/node_ipvs_sync.py",
                     str(count), str(context.runs)], text=True, timeout=1800,
                )  # fmt: skip
                if result.returncode != 0:
                    raise SystemExit(f"{result.stdout}\n{result.stderr}")
                r = json.loads(result.stdout.strip().splitlines()[-1])
                label = f"{r['services']:,} services, {r['servers']:,} servers"
                report.figure(f"{label}: render", r["render"])
                report.compare(f"{label}: full sync", r["full"], r["bare"])
                report.figure(f"{label}: one change", r["change"], note="median of 10 changes, render with the cache")
                report.figure(f"{label}: of which render", r["change_render"])
                report.figure(f"{label}: spawn one `true`", r["spawn"])
        finally:
            guest.shutdown()
            uml.delete_bridge(BRIDGE)


def options(parser) -> None:
    parser.add_argument("--counts", default="100,1000")


if __name__ == "__main__":
    sys.exit(harness.main([harness.Scenario("ipvs_sync", "IPVS mode's render + first sync in a UML node",
                                            "the same tools' input run bare (ip -batch, ipset restore, "
                                            "ipvsadm -R, iptables-restore)", run)],
                          __doc__, runs=3, options=options))  # fmt: skip
