"""Packets traced through the rules each kube-proxy mode renders (tests/unit/proxy_tracer.py),
as kube-proxy's runPacketFlowTests: the same table of cases, from kube-proxy's
TestLoadBalancer (two LoadBalancer ingress IPs behind loadBalancerSourceRanges), its
externalIPs cases and its no-endpoints cases, must end the same way in the iptables
and nftables renderers. IPVS, whose rules are virtual servers and ipset members, is
checked by what it programs."""

from __future__ import annotations

import pytest

from emu.node.kube.proxyfeed import service_state
from emu.node.proxy import iptables, ipvs, nftables
from emu.node.records import ClusterState, NodeState
from emu.node.services import Endpoint
from tests.unit.proxy_tracer import IptablesTracer, NftablesTracer, Packet, outcome

NODE_IP = "192.168.0.2"  # kube-proxy's testNodeIP
CLIENT, BLOCKED = "203.0.113.2", "203.0.113.130"  # its testExternalClient, testExternalClientBlocked
POD = "10.0.0.2"
LOCALHOST = "127.0.0.1"


def service(namespace: str, name: str, spec: dict, ingress: list[str] | None = None):
    port = {"name": "p80", "port": 80, "protocol": "TCP", **spec.pop("port", {})}
    obj = {"metadata": {"namespace": namespace, "name": name}, "spec": {"ports": [port], **spec}}
    if ingress:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in ingress]}}
    return service_state(obj)


def cluster():
    """The services as Service objects, through the node's proxy feed (emu.node.kube.proxyfeed)."""
    node = NodeState("test-node", "worker", {}, "10.0.1.0/24", NODE_IP, "c")
    state = ClusterState("t", "t", "192.168.0.0/24", {"podSubnet": "10.0.0.0/8", "serviceSubnet": "172.30.0.0/16"},
                         [node])  # fmt: skip
    services = [
        service("ns1", "lb", {"type": "LoadBalancer", "clusterIP": "172.30.0.41", "port": {"nodePort": 3001},
                              "loadBalancerSourceRanges": ["192.168.0.0/24", " 203.0.113.0/25"]},
                ["1.2.3.4", "5.6.7.8"]),
        service("ns2", "ext", {"clusterIP": "172.30.0.42", "externalIPs": ["192.168.99.11"]}),
        service("ns3", "none", {"clusterIP": "172.30.0.43", "externalIPs": ["192.168.99.33"]}),
        service("ns4", "local", {"clusterIP": "172.30.0.44", "externalIPs": ["192.168.99.44"],
                                 "externalTrafficPolicy": "Local"}),
    ]  # fmt: skip
    state.services = {s.key: s for s in services}
    endpoints = {
        "ns1/lb": {"p80": [Endpoint("10.180.0.1", 80, "other", None)]},
        "ns2/ext": {"p80": [Endpoint("10.180.0.2", 80, "other", None), Endpoint("10.180.0.3", 80, "test-node", None)]},
        "ns4/local": {"p80": [Endpoint("10.180.0.4", 80, "other", None)]},
    }
    return state, endpoints


EP1, EXT = "10.180.0.1:80", "10.180.0.2:80, 10.180.0.3:80"
CASES = [
    # kube-proxy's TestLoadBalancer
    ("pod to cluster IP", POD, "172.30.0.41", 80, EP1, False),
    ("external to nodePort", CLIENT, NODE_IP, 3001, EP1, True),
    ("nodePort bypasses LoadBalancerSourceRanges", BLOCKED, NODE_IP, 3001, EP1, True),
    ("accepted external to LB1", CLIENT, "1.2.3.4", 80, EP1, True),
    ("accepted external to LB2", CLIENT, "5.6.7.8", 80, EP1, True),
    ("blocked external to LB1", BLOCKED, "1.2.3.4", 80, "DROP", None),
    ("blocked external to LB2", BLOCKED, "5.6.7.8", 80, "DROP", None),
    ("pod to LB1 (blocked by LoadBalancerSourceRanges)", POD, "1.2.3.4", 80, "DROP", None),
    ("pod to LB2 (blocked by LoadBalancerSourceRanges)", POD, "5.6.7.8", 80, "DROP", None),
    ("node to LB1 (allowed by LoadBalancerSourceRanges)", NODE_IP, "1.2.3.4", 80, EP1, True),
    ("node to LB2 (allowed by LoadBalancerSourceRanges)", NODE_IP, "5.6.7.8", 80, EP1, True),
    ("same node to LB1, SNATted to LB1 (implicitly allowed)", "1.2.3.4", "1.2.3.4", 80, EP1, True),
    ("same node to LB2, SNATted to LB2 (implicitly allowed)", "5.6.7.8", "5.6.7.8", 80, EP1, True),
    # externalIPs
    ("external to external IP", CLIENT, "192.168.99.11", 80, EXT, True),
    ("pod to external IP", POD, "192.168.99.11", 80, EXT, True),
    ("node to external IP", NODE_IP, "192.168.99.11", 80, EXT, True),
    ("external to external IP, another port", CLIENT, "192.168.99.11", 81, "ACCEPT", False),
    ("external to external IP with no endpoints", CLIENT, "192.168.99.33", 80, "REJECT", None),
    ("pod to external IP with no endpoints", POD, "192.168.99.33", 80, "REJECT", None),
    ("external to Local external IP, no local endpoint", CLIENT, "192.168.99.44", 80, "DROP", None),
    ("pod to Local external IP, no local endpoint (short-circuited)", POD, "192.168.99.44", 80, "10.180.0.4:80", False),
    ("node to Local external IP, no local endpoint (short-circuited)", NODE_IP, "192.168.99.44", 80, "10.180.0.4:80",
     True),
]  # fmt: skip


def tracers():
    state, endpoints = cluster()
    return {
        "iptables": IptablesTracer(iptables.render(state, "test-node", endpoints), [NODE_IP, LOCALHOST]),
        "nftables": NftablesTracer(nftables.render(state, "test-node", endpoints), [NODE_IP, LOCALHOST]),
    }


TRACERS = tracers()


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@pytest.mark.parametrize("name,source,destination,port,expected,masquerade", CASES, ids=[c[0] for c in CASES])
def test_packet_flow(mode, name, source, destination, port, expected, masquerade):
    paths = TRACERS[mode].trace(Packet(source, destination, port))
    assert outcome(paths) == (expected, masquerade)


# Localhost NodePorts: kube-proxy's iptables mode takes 127.0.0.1:NODEPORT (and masquerades it:
# a pod cannot answer 127.0.0.1); its nftables mode does not (its TestNodePorts). In iptables mode
# the KUBE-FIREWALL guard drops what reaches 127.0.0.0/8 from elsewhere unless a service DNATed it.
LOCALHOST_CASES = [
    ("localhost to nodePort", LOCALHOST, LOCALHOST, 3001, {"iptables": (EP1, True), "nftables": ("ACCEPT", False)}),
    ("external to localhost nodePort", CLIENT, LOCALHOST, 3001,
     {"iptables": (EP1, True), "nftables": ("ACCEPT", False)}),
    ("external to a localhost port no service has", CLIENT, LOCALHOST, 8080,
     {"iptables": ("DROP", None), "nftables": ("ACCEPT", False)}),
    ("localhost to a localhost port no service has", LOCALHOST, LOCALHOST, 8080,
     {"iptables": ("ACCEPT", False), "nftables": ("ACCEPT", False)}),
]  # fmt: skip


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@pytest.mark.parametrize("name,source,destination,port,expected", LOCALHOST_CASES, ids=[c[0] for c in LOCALHOST_CASES])
def test_localhost_node_ports(mode, name, source, destination, port, expected):
    assert outcome(TRACERS[mode].trace(Packet(source, destination, port))) == expected[mode]


def test_iptables_sets_route_localnet_and_guards_localnet_as_kube_proxy():
    """kube-proxy's iptables mode with localhost NodePorts (its default): route_localnet=1 at
    start, and in KUBE-FIREWALL the rule its TestOverallIPTablesRules expects."""
    state, endpoints = cluster()
    assert iptables.render(state, "test-node", endpoints)["filter"]["KUBE-FIREWALL"] == [
        '-m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 '
        "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
    ]
    steps = iptables.PROXIER.bootstrap(state, state.nodes[0], "/p").steps
    assert steps[0].startswith("sysctl -q -w net.ipv4.conf.all.route_localnet=1 ")
    # nftables mode neither routes localnet nor guards it: it never takes 127.0.0.1.
    assert not any("route_localnet" in step for step in nftables.PROXIER.bootstrap(state, state.nodes[0], "/p").steps)


def test_ipvs_programs_every_ingress_ip_external_ip_and_source_range():
    state, endpoints = cluster()
    rules = ipvs.render(state, "test-node", endpoints)
    servers = {s.address: s.real_servers for s in rules.servers}
    assert servers["1.2.3.4:80"] == servers["5.6.7.8:80"] == ["10.180.0.1:80"]
    assert servers["192.168.99.11:80"] == ["10.180.0.2:80", "10.180.0.3:80"]
    assert servers["192.168.99.44:80"] == ["10.180.0.4:80"]  # no local endpoint: every endpoint, as kube-proxy
    assert {"1.2.3.4", "5.6.7.8", "192.168.99.11", "192.168.99.33", "192.168.99.44"} <= set(rules.addresses)
    sets = rules.sets
    assert sets["KUBE-LOAD-BALANCER-FW"] == ["1.2.3.4,tcp:80", "5.6.7.8,tcp:80"]
    assert sets["KUBE-LOAD-BALANCER-SOURCE-CIDR"] == [
        "1.2.3.4,tcp:80,192.168.0.0/24", "1.2.3.4,tcp:80,203.0.113.0/25",
        "5.6.7.8,tcp:80,192.168.0.0/24", "5.6.7.8,tcp:80,203.0.113.0/25",
    ]  # fmt: skip
    assert sets["KUBE-LOAD-BALANCER-SOURCE-IP"] == ["1.2.3.4,tcp:80,1.2.3.4", "5.6.7.8,tcp:80,5.6.7.8"]
    assert sets["KUBE-EXTERNAL-IP"] == ["192.168.99.11,tcp:80", "192.168.99.33,tcp:80"]
    assert sets["KUBE-EXTERNAL-IP-LOCAL"] == ["192.168.99.44,tcp:80"]
    nat = rules.iptables["nat"]["KUBE-SERVICES"]
    assert nat.index(
        '-m comment --comment "Kubernetes service external ip + port for masquerade and filter purpose" '
        "-m set --match-set KUBE-EXTERNAL-IP dst,dst -j KUBE-MARK-MASQ"
    ) < nat.index("-m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
    assert ('-m comment --comment "Kubernetes service load balancer ip + port for load balancer with sourceRange" '
            "-m set --match-set KUBE-LOAD-BALANCER-FW dst,dst -j KUBE-SOURCE-RANGES-FIREWALL"
            ) in rules.iptables["filter"]["KUBE-PROXY-FIREWALL"]  # fmt: skip


def test_iptables_firewall_chain_as_kube_proxy_writes_it():
    """kube-proxy's TestLoadBalancer: KUBE-FW-* passes each range and, as one holds
    the node's IP, each LoadBalancer IP; KUBE-PROXY-FIREWALL drops what is left."""
    state, endpoints = cluster()
    rules = iptables.render(state, "test-node", endpoints)
    fw, ext = iptables.firewall_chain("ns1/lb:p80", "tcp"), iptables.external_chain("ns1/lb:p80", "tcp")
    note = '-m comment --comment "ns1/lb:p80 loadbalancer IP"'
    assert rules["nat"][fw] == [
        f"{note} -s 192.168.0.0/24 -j {ext}", f"{note} -s 203.0.113.0/25 -j {ext}",
        f"{note} -s 1.2.3.4/32 -j {ext}", f"{note} -s 5.6.7.8/32 -j {ext}",
        '-m comment --comment "other traffic to ns1/lb:p80 will be dropped by KUBE-PROXY-FIREWALL"',
    ]  # fmt: skip
    assert rules["filter"]["KUBE-PROXY-FIREWALL"] == [
        f'-m comment --comment "ns1/lb:p80 traffic not accepted by {fw}" -m tcp -p tcp -d {ip}/32 --dport 80 -j DROP'
        for ip in ("1.2.3.4", "5.6.7.8")
    ]
    assert ('-m comment --comment "ns2/ext:p80 external IP" -m tcp -p tcp -d 192.168.99.11/32 --dport 80 -j '
            + iptables.external_chain("ns2/ext:p80", "tcp")) in rules["nat"]["KUBE-SERVICES"]  # fmt: skip


def test_health_check_node_port_is_accepted_in_iptables_and_ipvs_modes():
    """kube-proxy's rule for a healthCheckNodePort, whether or not the node has an endpoint
    (its TestOverallIPTablesRules: 'ns2/svc2:p80 health check node port'); its nftables
    mode writes nothing for it (its table drops only what its own sets name)."""
    state, endpoints = cluster()
    checked = service("ns5", "checked", {"type": "LoadBalancer", "clusterIP": "172.30.0.45", "port": {"nodePort": 3005},
                                         "externalTrafficPolicy": "Local", "healthCheckNodePort": 30000}, ["1.2.3.45"])
    assert checked.health_check_node_port == 30000
    state.services[checked.key] = checked  # no endpoint anywhere
    rules = iptables.render(state, "test-node", endpoints)
    assert rules["filter"]["KUBE-NODEPORTS"] == [
        '-m comment --comment "ns5/checked:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT']
    assert ipvs.render(state, "test-node", endpoints).sets["KUBE-HEALTH-CHECK-NODE-PORT"] == ["30000"]
    assert "30000" not in nftables.full_text(nftables.render(state, "test-node", endpoints))
    # Only a LoadBalancer with externalTrafficPolicy Local has one (kube-proxy's NeedsHealthCheck).
    cluster_policy = service("ns5", "c", {"type": "LoadBalancer", "healthCheckNodePort": 30000, "clusterIP": "1.1.1.1"})
    assert cluster_policy.health_check_node_port is None
