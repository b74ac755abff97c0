"""kube-proxy's options that change its rules (networking.masqueradeAll, clusterCIDR,
nodePortAddresses), each against the rule text kube-proxy's own tests expect
(pkg/proxy/iptables/proxier_test.go, pkg/proxy/nftables/proxier_test.go), and traced."""

from __future__ import annotations

import pytest

from emu.errors import TopologyError
from emu.node.proxy import iptables, ipvs, nftables
from tests.unit.proxy_tracer import IptablesTracer, NftablesTracer, Packet, outcome
from tests.unit.test_proxy_packet_flow import EP1, LOCALHOST, NODE_IP, POD, cluster
from tests.unit.test_services import state as lab_state

NODEPORTS = '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
GUARD = iptables.LOCALNET_GUARD
BRIDGE = "10.0.1.1"  # test-node's pod bridge (its pod CIDR's first address)


def configured(**options):
    state, endpoints = cluster()
    state.networking = {**state.networking, **options}
    return state, endpoints


def test_defaults_are_kube_proxys_with_cluster_cidr_from_the_pod_subnet():
    state, _ = cluster()
    net = state.net
    assert (net.masquerade_all, net.cluster_cidr, net.node_port_addresses) == (False, "10.0.0.0/8", None)


def test_masquerade_all_marks_every_cluster_ip_packet():
    """kube-proxy's TestMasqueradeAll (iptables) and its nftables counterpart: no source test."""
    state, endpoints = configured(masqueradeAll=True)
    svc = iptables.service_chain("ns2/ext:p80", "tcp")
    assert iptables.render(state, "test-node", endpoints)["nat"][svc][0] == (
        '-m comment --comment "ns2/ext:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42/32 --dport 80 -j KUBE-MARK-MASQ')
    chains = nftables.render(state, "test-node", endpoints).chains()
    [chain] = [name for name in chains if name.startswith("service-") and name.endswith("ns2/ext/tcp/p80")]
    assert chains[chain][0] == "ip daddr 172.30.0.42 jump mark-for-masquerade"
    nat = ipvs.render(state, "test-node", endpoints).iptables["nat"]["KUBE-SERVICES"]
    assert ('-m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" '
            "-m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ") in nat  # fmt: skip
    for mode, tracer in (("iptables", IptablesTracer(iptables.render(state, "test-node", endpoints), [NODE_IP])),
                         ("nftables", NftablesTracer(nftables.render(state, "test-node", endpoints), [NODE_IP]))):
        assert outcome(tracer.trace(Packet(POD, "172.30.0.41", 80))) == (EP1, True), mode  # fmt: skip


def test_masquerade_bit_moves_the_snat_mark_in_every_mode():
    """kube-proxy's masqueradeBit (14: 0x4000), for a node whose other software uses that bit."""
    state, endpoints = configured(masqueradeBit=15)
    assert state.net.masquerade_bit == 15
    ipt = iptables.render(state, "test-node", endpoints)
    assert ipt["nat"]["KUBE-MARK-MASQ"] == ["-j MARK --or-mark 0x8000"]
    assert ipt["nat"]["KUBE-POSTROUTING"][:2] == ["-m mark ! --mark 0x8000/0x8000 -j RETURN", "-j MARK --xor-mark 0x8000"]
    assert '-m comment --comment "kubernetes forwarding rules" -m mark --mark 0x8000/0x8000 -j ACCEPT' in \
        ipt["filter"]["KUBE-FORWARD"]  # fmt: skip
    nft = nftables.render(state, "test-node", endpoints).chains()
    assert nft["mark-for-masquerade"] == ["mark set mark or 0x8000"]
    assert nft["masquerading"][:2] == ["mark and 0x8000 == 0 return", "mark set mark xor 0x8000"]
    ipv = ipvs.render(state, "test-node", endpoints).iptables
    assert ipv["nat"]["KUBE-MARK-MASQ"] == ["-j MARK --or-mark 0x8000"]
    every = "\n".join(str(rules) for rules in (ipt, nft, ipv))
    assert "0x4000" not in every
    default, _ = cluster()
    assert iptables.render(default, "test-node", endpoints)["nat"]["KUBE-MARK-MASQ"] == ["-j MARK --or-mark 0x4000"]


def test_cluster_cidr_is_the_local_traffic_detector():
    state, endpoints = configured(clusterCIDR="10.128.0.0/9")
    svc = iptables.service_chain("ns2/ext:p80", "tcp")
    assert iptables.render(state, "test-node", endpoints)["nat"][svc][0].endswith(
        "-d 172.30.0.42/32 --dport 80 ! -s 10.128.0.0/9 -j KUBE-MARK-MASQ")
    ext = iptables.external_chain("ns4/local:p80", "tcp")
    assert iptables.render(state, "test-node", endpoints)["nat"][ext][0] == (
        '-m comment --comment "pod traffic for ns4/local:p80 external destinations" -s 10.128.0.0/9 -j '
        + iptables.service_chain("ns4/local:p80", "tcp"))
    text = nftables.full_text(nftables.render(state, "test-node", endpoints))
    assert "ip daddr 172.30.0.42 ip saddr != 10.128.0.0/9 jump mark-for-masquerade" in text
    assert 'ip saddr 10.128.0.0/9 goto service-' in text
    nat = ipvs.render(state, "test-node", endpoints).iptables["nat"]["KUBE-SERVICES"]
    assert any(r.endswith("KUBE-CLUSTER-IP dst,dst ! -s 10.128.0.0/9 -j KUBE-MARK-MASQ") for r in nat)
    # A pod (10.0.0.2) is now outside the cluster CIDR: masqueraded.
    tracer = IptablesTracer(iptables.render(state, "test-node", endpoints), [NODE_IP])
    assert outcome(tracer.trace(Packet(POD, "172.30.0.41", 80))) == (EP1, True)


def test_no_detector_writes_neither_the_masquerade_nor_the_pod_short_circuit():
    """clusterCIDR "": kube-proxy without a local-traffic detector."""
    state, endpoints = configured(clusterCIDR="")
    rules = iptables.render(state, "test-node", endpoints)["nat"]
    svc = rules[iptables.service_chain("ns2/ext:p80", "tcp")]
    assert not any("cluster IP" in r and "KUBE-MARK-MASQ" in r for r in svc)
    assert not any("pod traffic" in r for r in rules[iptables.external_chain("ns4/local:p80", "tcp")])
    text = nftables.full_text(nftables.render(state, "test-node", endpoints))
    assert "ip daddr 172.30.0.42 jump" not in text and "short-circuit pod traffic" not in text
    nat = ipvs.render(state, "test-node", endpoints).iptables["nat"]["KUBE-SERVICES"]
    assert any(r.endswith("-m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ") for r in nat)


def test_iptables_node_port_addresses_jump_per_address():
    """kube-proxy's TestNodePortsWithAddresses shape: one jump per node address in the CIDRs,
    last in KUBE-SERVICES; 127.0.0.1 among them keeps localhost NodePorts and their guard."""
    state, endpoints = configured(nodePortAddresses=["192.168.0.0/24", "127.0.0.0/8"])
    rules = iptables.render(state, "test-node", endpoints)
    assert rules["nat"]["KUBE-SERVICES"][-2:] == [f"{NODEPORTS} -d 127.0.0.1/32 -j KUBE-NODEPORTS",
                                                  f"{NODEPORTS} -d {NODE_IP}/32 -j KUBE-NODEPORTS"]  # fmt: skip
    assert rules["filter"]["KUBE-FIREWALL"] == [GUARD]
    tracer = IptablesTracer(rules, [NODE_IP, LOCALHOST, BRIDGE])
    assert outcome(tracer.trace(Packet(LOCALHOST, LOCALHOST, 3001))) == (EP1, True)
    assert outcome(tracer.trace(Packet(POD, BRIDGE, 3001))) == ("ACCEPT", False)  # not a NodePort address

    state, endpoints = configured(nodePortAddresses=["primary"])
    rules = iptables.render(state, "test-node", endpoints)
    assert rules["nat"]["KUBE-SERVICES"][-1] == f"{NODEPORTS} -d {NODE_IP}/32 -j KUBE-NODEPORTS"
    assert rules["filter"]["KUBE-FIREWALL"] == []  # no localhost NodePorts: no route_localnet, no guard
    assert not any("route_localnet" in s for s in iptables.PROXIER.bootstrap(state, state.nodes[0], "/p").steps)
    tracer = IptablesTracer(rules, [NODE_IP, LOCALHOST])
    assert outcome(tracer.trace(Packet(LOCALHOST, LOCALHOST, 3001))) == ("ACCEPT", False)
    assert outcome(tracer.trace(Packet("203.0.113.2", NODE_IP, 3001))) == (EP1, True)


def test_nftables_node_port_addresses():
    """Every address ([]): kube-proxy's nftables mode drops the nodeport-ips set and looks the
    destination up with fib, never 127.0.0.0/8 (its TestOverallNFTablesRules' baseRules);
    CIDRs: the node's addresses in them, loopback left out."""
    state, endpoints = configured(nodePortAddresses=[])
    rules = nftables.render(state, "test-node", endpoints)
    text = nftables.full_text(rules)
    assert ("add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 "
            "meta l4proto . th dport vmap @service-nodeports") in text  # fmt: skip
    assert ("add rule ip kube-proxy nodeport-endpoints-check fib daddr type local ip daddr != 127.0.0.0/8 "
            "meta l4proto . th dport vmap @no-endpoint-nodeports") in text  # fmt: skip
    assert "nodeport-ips" not in text
    tracer = NftablesTracer(rules, [NODE_IP, LOCALHOST, BRIDGE])
    assert outcome(tracer.trace(Packet(POD, BRIDGE, 3001))) == (EP1, True)
    assert outcome(tracer.trace(Packet(LOCALHOST, LOCALHOST, 3001))) == ("ACCEPT", False)

    state, endpoints = configured(nodePortAddresses=["127.0.0.0/8", "10.0.0.0/8"])
    lines = [line for line in nftables.render(state, "test-node", endpoints).setup if "add element" in line]
    assert lines == [f"add element ip kube-proxy nodeport-ips {{ {BRIDGE} }}"]


def test_ipvs_node_port_addresses():
    """kube-proxy's IPVS proxier: a NodePort's virtual servers on every local address but
    loopback (and kube-ipvs0's) by default, on the node's addresses nodePortAddresses
    selects otherwise (loopback left out), on the node IP for [primary]."""

    def node_port_servers(**options):
        state, endpoints = configured(**options)
        servers = ipvs.render(state, "test-node", endpoints).servers
        return sorted(vs.address for vs in servers if vs.address.endswith(":3001"))

    assert node_port_servers() == [f"{BRIDGE}:3001", f"{NODE_IP}:3001"]
    assert node_port_servers(nodePortAddresses=[]) == [f"{BRIDGE}:3001", f"{NODE_IP}:3001"]
    assert node_port_servers(nodePortAddresses=["primary"]) == [f"{NODE_IP}:3001"]
    assert node_port_servers(nodePortAddresses=["127.0.0.0/8", "10.0.0.0/8"]) == [f"{BRIDGE}:3001"]
    assert node_port_servers(nodePortAddresses=["198.51.100.0/24"]) == []  # no address of the node: none
    state, endpoints = configured(nodePortAddresses=["primary"])
    rules = ipvs.render(state, "test-node", endpoints)
    assert "3001" in rules.sets["KUBE-NODE-PORT-TCP"]  # the port still marked for masquerade, as kube-proxy
    assert f"-A -t {NODE_IP}:3001 -s rr" in ipvs.ipvsadm_text(rules.servers)
    assert f"{BRIDGE}:3001" not in ipvs.ipvsadm_text(rules.servers)


def test_topology_takes_the_options_by_kube_proxys_names():
    s = lab_state("networking: {masqueradeAll: true, clusterCIDR: 10.244.0.0/15, nodePortAddresses: [primary], "
                  "masqueradeBit: 12}\n" + _lab_without_networking())
    assert s.net.masquerade_bit == 12
    assert (s.net.masquerade_all, s.net.cluster_cidr, s.net.node_port_addresses) == (True, "10.244.0.0/15",
                                                                                      ("primary",))
    plain = lab_state()
    assert not {"masqueradeAll", "clusterCIDR", "nodePortAddresses", "masqueradeBit"} & set(plain.networking)
    assert plain.net.cluster_cidr == plain.net.pod_subnet


@pytest.mark.parametrize("networking,message", [
    ("{clusterCIDR: 10.244.0.1/16}", "networking.clusterCIDR: '10.244.0.1/16' is not an IPv4 CIDR"),
    ("{nodePortAddresses: [primary, 10.0.0.0/8]}", "'primary' stands alone in nodePortAddresses"),
    ("{nodePortAddresses: [eth0]}", "networking.nodePortAddresses: 'eth0' is not an IPv4 CIDR"),
    ("{masqueradeBit: 32}", "networking.masqueradeBit: Input should be less than or equal to 31"),
])  # fmt: skip
def test_bad_options_are_refused_with_where_and_what_to_do(networking, message):
    with pytest.raises(TopologyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        lab_state(f"networking: {networking}\n" + _lab_without_networking())


def _lab_without_networking() -> str:
    from tests.unit.test_services import LAB

    return "".join(line + "\n" for line in LAB.splitlines() if not line.startswith("networking"))
