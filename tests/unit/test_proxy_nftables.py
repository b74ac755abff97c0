"""kube-proxy's nftables mode: emu's table against kube-proxy's own expected
output (pkg/proxy/nftables/proxier_test.go), golden files, partial syncs and
the proxier seam against a fake nft."""

from __future__ import annotations

import subprocess

from emu.node.proxy import nftables, proxier
from emu.node.records import ClusterState, NodeState, ServicePortState, ServiceState
from emu.node.services import Endpoint, service_endpoints
from emu.control.state import plan_cluster
from emu.api.topology.load import load_text
from tests.unit.test_services import LAB


def kube_proxy_cluster():
    """The services of kube-proxy's TestOverallNFTablesRules, on its test node
    (but svc2's health check node port, which emu does not have yet)."""
    node = NodeState("test-node", "worker", {}, "10.0.1.0/24", "192.168.0.2", "c")
    state = ClusterState("t", "t", "192.168.0.0/24", {"podSubnet": "10.0.0.0/8", "serviceSubnet": "172.30.0.0/16"},
                         [node])  # fmt: skip

    def service(ns, name, ip, kind="ClusterIP", node_port=None, **extra):
        port = ServicePortState("p80", 80, "TCP", 80, node_port)
        state.services[f"{ns}/{name}"] = ServiceState(ns, name, kind, ip, [port], {"app": name}, **extra)

    service("ns1", "svc1", "172.30.0.41")
    service("ns2", "svc2", "172.30.0.42", "LoadBalancer", 3001, external_traffic_policy="Local",
            load_balancer_ip="1.2.3.4", external_ips=["192.168.99.22"])  # fmt: skip
    service("ns3", "svc3", "172.30.0.43", "NodePort", 3003)
    service("ns4", "svc4", "172.30.0.44", external_ips=["192.168.99.33"])
    service("ns5", "svc5", "172.30.0.45", "LoadBalancer", 3002, load_balancer_ip="5.6.7.8", affinity_timeout=10800,
            load_balancer_source_ranges=["203.0.113.0/25"])  # fmt: skip
    service("ns6", "svc6", "172.30.0.46")

    def eps(*pairs):
        return {"p80": [Endpoint(ip, 80, node, None) for ip, node in pairs]}

    endpoints = {
        "ns1/svc1": eps(("10.180.0.1", "other")),
        "ns2/svc2": eps(("10.180.0.2", "other")),  # not local: Local policy finds none here
        "ns3/svc3": eps(("10.180.0.3", "other")),
        "ns4/svc4": eps(("10.180.0.4", "other"), ("10.180.0.5", "test-node")),
        "ns5/svc5": eps(("10.180.0.3", "other")),
    }
    return state, endpoints


# kube-proxy's expected lines for those services, from TestOverallNFTablesRules.
KUBE_PROXY_LINES = """\
add table ip kube-proxy { comment "rules for kube-proxy" ; }
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }
add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
add chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }
add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }
add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }
add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }
add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }
add chain ip kube-proxy firewall-check
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nodeport-endpoints-check
add chain ip kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
add chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy cluster-ips-check ip daddr { 172.30.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"
add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add element ip kube-proxy nodeport-ips { 192.168.0.2 }
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }
add chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
add chain ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80
add rule ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80 ip daddr 172.30.0.42 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 }
add chain ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 ip saddr 10.0.0.0/8 goto service-42NFTM6N-ns2/svc2/tcp/p80 comment "short-circuit pod traffic"
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 fib saddr type local goto service-42NFTM6N-ns2/svc2/tcp/p80 comment "short-circuit local traffic"
add chain ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80
add rule ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 ip saddr 10.180.0.2 jump mark-for-masquerade
add rule ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 meta l4proto tcp dnat to 10.180.0.2:80
add element ip kube-proxy cluster-ips { 172.30.0.42 }
add element ip kube-proxy service-ips { 172.30.0.42 . tcp . 80 : goto service-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy service-ips { 1.2.3.4 . tcp . 80 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy service-ips { 192.168.99.22 . tcp . 80 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy no-endpoint-services { 192.168.99.22 . tcp . 80 comment "ns2/svc2:p80" : drop }
add element ip kube-proxy service-nodeports { tcp . 3001 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy no-endpoint-nodeports { tcp . 3001 comment "ns2/svc2:p80" : drop }
add element ip kube-proxy no-endpoint-services { 1.2.3.4 . tcp . 80 comment "ns2/svc2:p80" : drop }
add chain ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 ip daddr 172.30.0.43 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 }
add chain ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80
add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 goto service-4AT6LBPK-ns3/svc3/tcp/p80
add chain ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80
add rule ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 ip saddr 10.180.0.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80
add element ip kube-proxy cluster-ips { 172.30.0.43 }
add element ip kube-proxy service-ips { 172.30.0.43 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 3003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80 }
add chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 ip daddr 172.30.0.44 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 , 1 : goto endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 }
add chain ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80
add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 ip saddr 10.180.0.5 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 meta l4proto tcp dnat to 10.180.0.5:80
add chain ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80
add rule ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 ip saddr 10.180.0.4 jump mark-for-masquerade
add rule ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 meta l4proto tcp dnat to 10.180.0.4:80
add element ip kube-proxy cluster-ips { 172.30.0.44 }
add element ip kube-proxy service-ips { 172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }
add chain ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 goto service-LAUZTJTB-ns4/svc4/tcp/p80
add element ip kube-proxy service-ips { 192.168.99.33 . tcp . 80 : goto external-LAUZTJTB-ns4/svc4/tcp/p80 }
add set ip kube-proxy affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }
add chain ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip daddr 172.30.0.45 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 }
add chain ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80 goto service-HVFWP5L3-ns5/svc5/tcp/p80
add chain ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 ip saddr 10.180.0.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 update @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { ip saddr }
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80
add element ip kube-proxy cluster-ips { 172.30.0.45 }
add element ip kube-proxy service-ips { 172.30.0.45 . tcp . 80 : goto service-HVFWP5L3-ns5/svc5/tcp/p80 }
add element ip kube-proxy service-ips { 5.6.7.8 . tcp . 80 : goto external-HVFWP5L3-ns5/svc5/tcp/p80 }
add chain ip kube-proxy firewall-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy firewall-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr != { 203.0.113.0/25 } drop
add element ip kube-proxy firewall-ips { 5.6.7.8 . tcp . 80 : goto firewall-HVFWP5L3-ns5/svc5/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 3002 : goto external-HVFWP5L3-ns5/svc5/tcp/p80 }
add element ip kube-proxy cluster-ips { 172.30.0.46 }
add element ip kube-proxy no-endpoint-services { 172.30.0.46 . tcp . 80 comment "ns6/svc6:p80" : goto reject-chain }
"""


def test_table_has_every_line_kube_proxy_writes_for_the_same_services():
    state, endpoints = kube_proxy_cluster()
    text = nftables.full_text(nftables.render(state, "test-node", endpoints))
    ours = {line for line in text.splitlines() if not line.startswith(("#", "delete table"))}
    theirs = set(KUBE_PROXY_LINES.splitlines())
    assert sorted(theirs - ours) == []  # every line kube-proxy writes, emu writes
    assert sorted(ours - theirs) == []  # and nothing more


def lab():
    state = plan_cluster(load_text(LAB), "emu-lab", "172.28.5.0/24")
    return state


def endpoints(state, ready=None):
    ready = {p.uid: True for p in state.pods.values()} if ready is None else ready
    return {key: service_endpoints(state, s, ready) for key, s in state.services.items()}


def test_table_matches_golden(golden):
    s = lab()
    golden("nftables_w1.nft", nftables.full_text(nftables.render(s, "w1", endpoints(s))))


def test_partial_sync_touches_only_what_changed(golden):
    s = lab()
    before = nftables.render(s, "w1", endpoints(s))
    after = nftables.render(s, "w1", endpoints(s, {p.uid: p.name != "web-b" for p in s.pods.values()}))
    text = nftables.transaction(after, before)
    golden("nftables_w1_web_b_unready.nft", text)
    assert "delete chain" not in text  # a chain no service uses is flushed now, deleted a second later
    gone = [line.split()[-1] for line in text.splitlines() if line.startswith("flush chain") and
            f"add chain ip kube-proxy {line.split()[-1]}" not in text]  # fmt: skip
    assert gone and all("10.244.2.2" in chain for chain in gone)  # web-b's endpoint chains, nothing else
    assert set(nftables.sync_ops(after, before, now=5.0)[1]) == set(gone)  # stale from then on
    assert "add table" not in text and "kube-dns" not in text
    assert nftables.transaction(after, after) == ""  # nothing changed: nothing sent


def test_no_endpoints_then_endpoints_swaps_the_map_elements():
    s = lab()
    none = nftables.render(s, "w1", endpoints(s, {}))
    some = nftables.render(s, "w1", endpoints(s))
    text = nftables.transaction(some, none)
    assert 'delete element ip kube-proxy no-endpoint-services { 10.96.0.50 . tcp . 80 }' in text
    assert "add element ip kube-proxy service-ips { 10.96.0.50 . tcp . 80 : goto service-" in text
    assert text.index("add element") < text.index("delete element")  # leftovers go last, as kube-proxy's


class FakeNft:
    """nft -f and nft list against a text the test sets, as the proxier calls them."""

    def __init__(self):
        self.written: list[str] = []
        self.listing = ""

    def __call__(self, argv, **kwargs):
        if argv[:2] == ["nft", "-f"]:
            self.written.append(kwargs["input"])
            return subprocess.CompletedProcess(argv, 0, "", "")
        return subprocess.CompletedProcess(argv, 0, self.listing, "")


def listing(rules: nftables.Ruleset, skip: str = "") -> str:
    """What `nft -t list table ip kube-proxy` prints for a kernel holding `rules`."""
    out = ["table ip kube-proxy {", '\tcomment "rules for kube-proxy"']
    for kind, name, _ in nftables.SETS:
        out += [f"\t{kind} {name} {{", "\t\ttype ipv4_addr", "\t}"]
    for name in rules.sets():
        out += [f"\tset {name} {{", "\t\ttype ipv4_addr", "\t}"]
    for chain, chain_rules in rules.chains().items():
        out += [f"\tchain {chain} {{", "\t\ttype filter hook input priority filter; policy accept;"]
        out += [] if chain == skip else [f"\t\t{rule}" for rule in chain_rules]
        out.append("\t}")
    return "\n".join(out + ["}"]) + "\n"


def test_proxier_writes_once_and_finds_a_flushed_chain():
    s = lab()
    proxy = nftables.NftablesProxier()
    nft = FakeNft()
    rules = proxy.render(s, "w1", endpoints(s))
    assert proxy.apply(nft, rules, proxy.adopt(nft)) > 0 and "flush map ip kube-proxy service-ips" in nft.written[0]
    assert proxy.apply(nft, proxy.render(s, "w1", endpoints(s)), rules) == 0 and len(nft.written) == 1
    nft.listing = listing(rules)
    assert proxy.lost(nft, rules) == []
    nft.listing = listing(rules, skip="services")
    assert proxy.lost(nft, rules) == ["chain services has 0 rules, not 2"]


def test_bootstrap_writes_the_empty_table():
    s = lab()
    setup = proxier("nftables").bootstrap(s, s.node("w1"), "/etc/emu/plan")
    [(path, text)] = setup.files.items()
    assert setup.steps == [f"nft -f {path}"]
    assert "add rule ip kube-proxy nat-prerouting jump services" in text
    assert f"add element ip kube-proxy nodeport-ips {{ {s.node('w1').node_ip} }}" in text
