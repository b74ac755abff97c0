"""kube-proxy's IPVS mode as emu renders it (emu plan --rules), and its refusal to run here."""

from __future__ import annotations

import pytest

from emu.node.proxy import ipvs, proxier
from emu.node.proxy.base import KernelMissing
from tests.unit.test_proxy_nftables import endpoints, lab


def test_plan_matches_golden(golden):
    s = lab()
    proxy = proxier("ipvs")
    golden("ipvs_w1.plan", proxy.text(proxy.render(s, "w1", endpoints(s))))


def test_virtual_servers_follow_kube_proxy():
    s = lab()
    rules = ipvs.render(s, "w1", endpoints(s))
    by_address = {vs.address: vs for vs in rules.servers}
    web = by_address["10.96.0.50:80"]
    assert web.real_servers == ["10.244.1.2:8080", "10.244.2.2:8080"] and web.persistence is None
    assert by_address["10.96.0.51:80"].persistence == 60  # ClientIP affinity is IPVS persistence
    node_port = by_address[f"{s.node('w1').node_ip}:30081"]  # externalTrafficPolicy Local: this node's only
    assert node_port.real_servers == ["10.244.1.2:8080"]
    assert "10.96.0.50,tcp:80" in rules.sets["KUBE-CLUSTER-IP"]
    assert "10.244.1.2,tcp:8080,10.244.1.2" in rules.sets["KUBE-LOOP-BACK"]  # hairpin, local endpoints only
    assert "10.244.2.2,tcp:8080,10.244.2.2" not in rules.sets["KUBE-LOOP-BACK"]
    assert rules.sets["KUBE-NODE-PORT-TCP"] == ["30080", "30081", "30082"]
    assert rules.sets["KUBE-NODE-PORT-LOCAL-TCP"] == ["30081"]
    assert "10.96.0.50" in rules.addresses and "10.96.0.50" in rules.sets["KUBE-IPVS-IPS"]
    text = ipvs.ipvsadm_text(rules.servers)
    assert "-A -t 10.96.0.51:80 -s rr -p 60" in text
    assert "-a -t 10.96.0.50:80 -r 10.244.2.2:8080 -m -w 1" in text
    assert "-A -u 10.96.0.53:80 -s rr" in text  # a UDP service without endpoints: no real server


def test_kernel_without_ip_vs_is_named(monkeypatch):
    monkeypatch.setattr(ipvs.os.path, "exists", lambda path: False)
    with pytest.raises(KernelMissing, match=r"needs the kernel module ip_vs.*no /proc/net/ip_vs"):
        ipvs.require_ip_vs()


def test_programming_is_refused_even_with_ip_vs(monkeypatch):
    monkeypatch.setattr(ipvs.os.path, "exists", lambda path: True)
    with pytest.raises(KernelMissing, match="does not program IPVS"):
        proxier("ipvs").apply(lambda *a, **k: None, None)
