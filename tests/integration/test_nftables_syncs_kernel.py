"""kube-proxy's nftables sync shape against this host's kernel: the steps of
kube-proxy's TestSyncProxyRulesRepeated (tests/unit/test_proxy_nftables_sync.py,
whose table model they use) written by the real proxier with the real nft into
a network namespace of its own. Every transaction is taken (a full sync over an
existing table, chains added and flushed, stale chains flushed and deleted a
second later by their own transaction), and after each step the kernel holds
the chains, with as many rules, and the sets the model holds. Needs root; no
Docker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest

from emu.node.proxy import nftables
from tests.unit.test_proxy_nftables_sync import FakeTable, Syncer


@pytest.fixture()
def netns():
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("needs Linux, root, ip and nft (a network namespace)")
    name = f"emunft-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_each_sync_is_taken_by_the_kernel_and_leaves_what_the_model_holds(netns):
    s = Syncer()
    model: FakeTable = s.table

    def kernel_and_model(argv, **kwargs):
        result = subprocess.run(["ip", "netns", "exec", netns, *argv], **kwargs)
        if argv[:2] == ["nft", "-f"] and result.returncode == 0:
            model.run(kwargs["input"])  # the model takes what the kernel took
        return result

    s.run = kernel_and_model

    def check(step: str) -> None:
        listing = subprocess.run(["ip", "netns", "exec", netns, "nft", "-t", "list", "table", "ip", "kube-proxy"],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
        counts, sets = nftables.table_view(listing)
        assert counts == {chain: len(rules) for chain, rules in model.chains.items()}, step
        assert sets == set(model.sets), step

    s.services = {"svc1": ["10.0.1.1"], "svc2": ["10.0.2.1"]}
    steps = [
        ("add svc3", lambda: s.services.__setitem__("svc3", ["10.0.3.1"])),
        ("delete svc2", lambda: s.services.pop("svc2")),
        ("stale chains aged", s.age_stale_chains),
        ("svc4 without endpoints", lambda: s.services.__setitem__("svc4", None)),
        ("svc4's endpoints", lambda: s.services.__setitem__("svc4", ["10.0.4.1"])),
        ("svc3's endpoint replaced", lambda: s.services.__setitem__("svc3", ["10.0.3.2"])),
        ("svc3 emptied", lambda: s.services.__setitem__("svc3", [])),
        ("svc3 back", lambda: s.services.__setitem__("svc3", ["10.0.3.2", "10.0.3.3"])),
    ]
    s.sync()
    check("first sync")
    for step, change in steps:
        change()
        s.sync()
        check(step)
    assert any(ops and all(op.startswith("delete chain") for op in ops) for ops in model.transactions)
    s.previous = None  # the agent lost track: a full sync over the table it finds
    s.sync()
    check("full sync over an existing table")
