"""CoreDNS's own test tables, replayed against emu's DNS server.

The cases are CoreDNS's plugin/kubernetes handler_test.go (commonDnsTestCases,
dnsTestCases, nsTestCases, notSyncedTestCases), handler_case_test.go,
handler_pod_insecure_test.go, kubernetes_apex_test.go and reverse_test.go, as
of coredns/coredns 4b26cce (August 2026), with their fixtures
(APIConnServeTest, APIConnReverseTest) written as emu snapshots. Each query
goes through the server's answering path (Resolver.answer, and complete() for
what needs an upstream), and the reply's rcode, answer, authority and
additional sections are compared as CoreDNS's test.SortAndCheck compares them:
sorted, owner names in their letter case, TTLs, and every field but the SOA
serial.

Left out, and why:
- dual-stack services (svc-dual-stack: A, AAAA, SRV): a service has one
  cluster IP in emu's model.
- multicluster zones (TestMultiClusterServeDNS), `ignore empty_service`
  beyond the case test, zonal names, `pods verified`, `pods disabled`: not
  in kubeadm's Corefile, which emu follows.
- reverse_test.go's ip6.arpa PTRs: emu answers in-addr.arpa only (its
  networks are IPv4).
- reverse_test.go "svc1.testns.svc.0.10.in-addr.arpa A": that test serves the
  reverse zone itself; kubeadm's Corefile falls through to the upstreams for
  reverse names that are not addresses, and emu forwards them.
Adapted, and why (marked ADAPTED below):
- "CNAME External Truncated Lookup": CoreDNS passes the upstream's TC bit on;
  emu asks again over TCP when an upstream truncates, so the answer is whole.
- notSyncedTestCases: before its first snapshot emu does not know its zone,
  so the SERVFAIL carries the question but no SOA.
- the apex NS: CoreDNS names the service its own address belongs to (the test
  fakes 127.0.0.1); emu names kube-system/kube-dns, which the fixture lacks,
  so the NS is ns.dns.<zone> with no glue.
- hdls1's endpoints carry port http/80 while the fixture's service declares
  no ports; in emu endpoint ports come from the service, so the snapshot's
  hdls1 declares http/80.
"""

from __future__ import annotations

import json

import pytest
from dnslib import QTYPE, RCODE, RR, DNSRecord

from dnsupstream import FakeUpstream
from emu.node.dns.server import Pending, Resolver

SOA = "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1499347823 7200 1800 86400 5"


def ep(ip: str, hostname: str | None = None, ports: dict | None = None) -> dict:
    return {"ip": ip, "hostname": hostname, "ready": True, "ports": {"http": 80} if ports is None else ports}


def svc(namespace, name, cluster_ip, ports=(("http", 80, "TCP"),), endpoints=(), kind="ClusterIP", external=None):
    return {
        "namespace": namespace, "name": name, "type": kind, "clusterIP": cluster_ip, "externalName": external,
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports], "endpoints": list(endpoints),
    }  # fmt: skip


# APIConnServeTest's services and endpoints.
SERVE = {
    "zone": "cluster.local",
    "ttl": 5,
    "upstreams": [],
    "serviceSubnet": "10.0.0.0/24",
    "podSubnet": "172.0.0.0/24",
    "namespaces": ["testns", "podns"],
    "services": [
        svc("kube-system", "kubedns", "10.0.0.10", [("dns", 53, "UDP")], [ep("172.0.0.100", ports={"dns": 53})]),
        svc("testns", "svc1", "10.0.0.1", endpoints=[ep("172.0.0.1", "ep1a")]),
        svc("testns", "svcempty", "10.0.0.1"),
        svc("testns", "svc6", "1234:abcd::1"),
        svc("testns", "hdls1", "None", endpoints=[
            ep("172.0.0.2"), ep("172.0.0.3"), ep("172.0.0.4", "dup-name"), ep("172.0.0.5", "dup-name"),
            ep("5678:abcd::1"), ep("5678:abcd::2"),
        ]),  # fmt: skip
        svc("testns", "external", "", kind="ExternalName", external="ext.interwebs.test"),
        svc("testns", "external-to-service", "", kind="ExternalName", external="svc1.testns.svc.cluster.local."),
        svc("testns", "hdlsprtls", "None", ports=(), endpoints=[ep("172.0.0.20", ports={})]),
    ],
}

# APIConnReverseTest's: svc1 at 192.168.1.100; 10.0.0.100 in two slices of svc1
# (EndpointSlice skew); 10.0.0.99 in svc1 and svc2.
REVERSE = {
    "zone": "cluster.local",
    "ttl": 5,
    "upstreams": [],
    "serviceSubnet": "192.168.0.0/16",
    "podSubnet": "10.0.0.0/16",
    "namespaces": ["testns"],
    "services": [
        svc("testns", "svc1", "192.168.1.100", endpoints=[
            ep("10.0.0.100", "ep1a"), ep("10.0.0.99", "double-ep"), ep("10.0.0.100", "ep1a"),
        ]),  # fmt: skip
        svc("testns", "svc2", "192.168.1.101", endpoints=[ep("10.0.0.99", "double-ep")]),
    ],
}

# (qname, qtype, rcode, answer, authority, additional)
COMMON = [
    ("svc1.testns.svc.cluster.local.", "A", RCODE.NOERROR, ["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"], [], []),
    ("svcempty.testns.svc.cluster.local.", "A", RCODE.NOERROR, ["svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.1"], [], []),
    ("svc1.testns.svc.cluster.local.", "SRV", RCODE.NOERROR,
     ["svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local."], [],
     ["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
    ("svcempty.testns.svc.cluster.local.", "SRV", RCODE.NOERROR,
     ["svcempty.testns.svc.cluster.local. 5 IN SRV 0 100 80 svcempty.testns.svc.cluster.local."], [],
     ["svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
    ("svc6.testns.svc.cluster.local.", "SRV", RCODE.NOERROR,
     ["svc6.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc6.testns.svc.cluster.local."], [],
     ["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"]),
    ("_http._tcp.svc1.testns.svc.cluster.local.", "SRV", RCODE.NOERROR,
     ["_http._tcp.svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local."], [],
     ["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
    ("_http._tcp.svcempty.testns.svc.cluster.local.", "SRV", RCODE.NOERROR,
     ["_http._tcp.svcempty.testns.svc.cluster.local. 5 IN SRV 0 100 80 svcempty.testns.svc.cluster.local."], [],
     ["svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
    ("hdls1.testns.svc.cluster.local.", "A", RCODE.NOERROR,
     [f"hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.{i}" for i in (2, 3, 4, 5)], [], []),
    ("hdlsprtls.testns.svc.cluster.local.", "A", RCODE.NOERROR, ["hdlsprtls.testns.svc.cluster.local. 5 IN A 172.0.0.20"], [], []),
    ("svc1.testns.svc.cluster.local.", "AAAA", RCODE.NOERROR, [], [SOA], []),
    ("svc0.testns.svc.cluster.local.", "AAAA", RCODE.NXDOMAIN, [], [SOA], []),
    ("svc0.testns.svc.cluster.local.", "A", RCODE.NXDOMAIN, [], [SOA], []),
    ("svc0.svc-nons.svc.cluster.local.", "A", RCODE.NXDOMAIN, [], [SOA], []),
    ("dns-version.cluster.local.", "TXT", RCODE.NOERROR, ['dns-version.cluster.local 28800 IN TXT "1.1.0"'], [], []),
    ("svc1.testns.svc.cluster.local.", "TXT", RCODE.NOERROR, [], [SOA], []),
    ("svc0.svc-nons.svc.cluster.local.", "TXT", RCODE.NXDOMAIN, [], [SOA], []),
    ("bogusendpoint.hdls1.testns.svc.cluster.local.", "A", RCODE.NXDOMAIN, [], [SOA], []),
    ("bogusendpoint.svc0.testns.svc.cluster.local.", "A", RCODE.NXDOMAIN, [], [SOA], []),
    ("svc6.testns.svc.cluster.local.", "AAAA", RCODE.NOERROR, ["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"], [], []),
    ("_http._tcp.svc6.testns.svc.cluster.local.", "SRV", RCODE.NOERROR,
     ["_http._tcp.svc6.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc6.testns.svc.cluster.local."], [],
     ["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"]),
    ("hdls1.testns.svc.cluster.local.", "AAAA", RCODE.NOERROR,
     ["hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1", "hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2"], [], []),
    ("svc.cluster.local.", "A", RCODE.NOERROR, [], [SOA], []),
    ("pod.cluster.local.", "A", RCODE.NOERROR, [], [SOA], []),
    ("testns.svc.cluster.local.", "A", RCODE.NOERROR, [], [SOA], []),
    ("svc.cluster.local.", "NS", RCODE.NOERROR, [], [SOA], []),
    ("testns.svc.cluster.local.", "NS", RCODE.NOERROR, [], [SOA], []),
    ("foo.cluster.local.", "NS", RCODE.NXDOMAIN, [], [SOA], []),
    ("foo.svc.cluster.local.", "NS", RCODE.NXDOMAIN, [], [SOA], []),
    ("svc1.testns.svc.cluster.local.", "SOA", RCODE.NOERROR, [], [SOA], []),
    ("endpoint.external.testns.svc.cluster.local.", "CNAME", RCODE.NXDOMAIN, [], [SOA], []),
    ("subdomain.subdomain.external.testns.svc.cluster.local.", "CNAME", RCODE.NXDOMAIN, [], [SOA], []),
]

DNS = [
    ("_http._tcp.hdls1.testns.svc.cluster.local.", "SRV", RCODE.NOERROR,
     [f"_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 {h}.hdls1.testns.svc.cluster.local."
      for h in ("172-0-0-2", "172-0-0-3", "5678-abcd--1", "5678-abcd--2", "dup-name")], [],
     ["172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2",
      "172-0-0-3.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3",
      "5678-abcd--1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1",
      "5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2",
      "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
      "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5"]),
    ("hdls1.testns.svc.cluster.local.", "A", RCODE.NOERROR,
     [f"hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.{i}" for i in (2, 3, 4, 5)], [], []),
    ("5678-abcd--2.hdls1.testns.svc.cluster.local", "AAAA", RCODE.NOERROR,
     ["5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2"], [], []),
    ("5678-abcd--1.hdls1.testns.svc.cluster.local.", "AAAA", RCODE.NOERROR,
     ["5678-abcd--1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1"], [], []),
    ("172-0-0-20.hdlsprtls.testns.svc.cluster.local.", "A", RCODE.NOERROR,
     ["172-0-0-20.hdlsprtls.testns.svc.cluster.local. 5 IN A 172.0.0.20"], [], []),
    ("172-0-0-2.hdls1.testns.svc.cluster.local.", "A", RCODE.NOERROR, ["172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2"], [], []),
    ("172-0-0-3.hdls1.testns.svc.cluster.local.", "A", RCODE.NOERROR, ["172-0-0-3.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3"], [], []),
    ("dup-name.hdls1.testns.svc.cluster.local.", "A", RCODE.NOERROR,
     ["dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4", "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5"], [], []),
    ("external.testns.svc.cluster.local.", "CNAME", RCODE.NOERROR,
     ["external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test."], [], []),
    ("external-to-service.testns.svc.cluster.local", "A", RCODE.NOERROR,
     ["external-to-service.testns.svc.cluster.local. 5 IN CNAME svc1.testns.svc.cluster.local.",
      "svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"], [], []),
]

NAMESPACES = [
    ("svc1.testns.svc.cluster.local.", "A", RCODE.NOERROR, ["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"], [], []),
    ("svc1.nsnoexist.svc.cluster.local.", "A", RCODE.NXDOMAIN, [], [SOA], []),
]

CASE = [
    ("not-a-service.testns.svc.ClUsTeR.lOcAl.", "A", RCODE.NXDOMAIN, [],
     ["ClUsTeR.lOcAl. 5 IN SOA ns.dns.ClUsTeR.lOcAl. hostmaster.ClUsTeR.lOcAl. 1499347823 7200 1800 86400 5"], []),
    ("SvC1.TeStNs.SvC.cLuStEr.LoCaL.", "A", RCODE.NOERROR, ["SvC1.TeStNs.SvC.cLuStEr.LoCaL. 5 IN A 10.0.0.1"], [], []),
    ("_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL.", "SRV", RCODE.NOERROR,
     ["_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL. 5 IN SRV 0 100 80 svc1.testns.svc.cLuStEr.LoCaL."], [],
     ["svc1.testns.svc.cLuStEr.LoCaL. 5 IN A 10.0.0.1"]),
    ("Cluster.local.", "SOA", RCODE.NOERROR,
     ["Cluster.local. 5 IN SOA ns.dns.Cluster.local. hostmaster.Cluster.local. 1499347823 7200 1800 86400 5"], [], []),
]

PODS_INSECURE = [
    ("10-240-0-1.podns.pod.cluster.local.", "A", RCODE.NOERROR, ["10-240-0-1.podns.pod.cluster.local. 5 IN A 10.240.0.1"], [], []),
    ("172-0-0-2.podns.pod.cluster.local.", "A", RCODE.NOERROR, ["172-0-0-2.podns.pod.cluster.local. 5 IN A 172.0.0.2"], [], []),
    ("blah.podns.pod.cluster.local.", "A", RCODE.NXDOMAIN, [], [SOA], []),
    ("blah.podns.pod.cluster.local.", "AAAA", RCODE.NXDOMAIN, [], [SOA], []),
    ("blah.podns.pod.cluster.local.", "HINFO", RCODE.NXDOMAIN, [], [SOA], []),
    ("blah.pod-nons.pod.cluster.local.", "A", RCODE.NXDOMAIN, [], [SOA], []),
    ("podns.pod.cluster.local.", "A", RCODE.NOERROR, [], [SOA], []),
]

APEX = [
    ("cluster.local.", "SOA", RCODE.NOERROR, [SOA], [], []),
    ("cluster.local.", "HINFO", RCODE.NOERROR, [], [SOA], []),
    # ADAPTED: no service of the fixture is kube-system/kube-dns (see above).
    ("cluster.local.", "NS", RCODE.NOERROR, ["cluster.local. 5 IN NS ns.dns.cluster.local."], [], []),
    ("cluster.local.", "A", RCODE.NOERROR, [], [SOA], []),
    ("cluster.local.", "AAAA", RCODE.NOERROR, [], [SOA], []),
    ("cluster.local.", "SRV", RCODE.NOERROR, [], [SOA], []),
]

REVERSE_SOA = "0.10.in-addr.arpa. 5 IN SOA ns.dns.0.10.in-addr.arpa. hostmaster.0.10.in-addr.arpa. 1502782828 7200 1800 86400 5"
REVERSES = [
    ("100.0.0.10.in-addr.arpa.", "PTR", RCODE.NOERROR,
     ["100.0.0.10.in-addr.arpa. 5 IN PTR ep1a.svc1.testns.svc.cluster.local."], [], []),
    ("100.1.168.192.in-addr.arpa.", "PTR", RCODE.NOERROR,
     ["100.1.168.192.in-addr.arpa. 5 IN PTR svc1.testns.svc.cluster.local."], [], []),
    ("101.0.0.10.in-addr.arpa.", "PTR", RCODE.NXDOMAIN, [], [REVERSE_SOA], []),
    ("example.org.cluster.local.", "PTR", RCODE.NXDOMAIN, [], [SOA], []),
    ("svc1.testns.svc.cluster.local.", "PTR", RCODE.NOERROR, [], [SOA], []),
    ("100.0.0.10.cluster.local.", "PTR", RCODE.NXDOMAIN, [], [SOA], []),
    ("99.0.0.10.in-addr.arpa.", "PTR", RCODE.NOERROR,
     ["99.0.0.10.in-addr.arpa. 5 IN PTR double-ep.svc1.testns.svc.cluster.local.",
      "99.0.0.10.in-addr.arpa. 5 IN PTR double-ep.svc2.testns.svc.cluster.local."], [], []),
]  # fmt: skip


def comparable(records) -> list[tuple]:
    """What SortAndCheck compares: owner (with its case), TTL, type and the
    data, here all of it but the SOA serial."""
    out = []
    for rr in records:
        if rr.rtype == QTYPE.OPT:
            continue
        data = str(rr.rdata)
        if rr.rtype == QTYPE.SOA:
            data = (str(rr.rdata.mname), str(rr.rdata.rname), rr.rdata.times[1:])
        out.append((str(rr.rname), rr.ttl, QTYPE[rr.rtype], data))
    return sorted(out, key=repr)


def expected(lines: list[str]) -> list[tuple]:
    return comparable([RR.fromZone(line)[0] for line in lines])


def resolver_for(tmp_path, snapshot: dict | None) -> Resolver:
    path = tmp_path / "snapshot.json"
    if snapshot is not None:
        path.write_text(json.dumps(snapshot))
    resolver = Resolver(str(path))
    resolver.reload_if_changed()
    return resolver


def ask(resolver: Resolver, qname: str, qtype: str) -> DNSRecord:
    query = DNSRecord.question(qname, qtype)
    reply = resolver.answer(bytes(query.pack()), udp=False)
    if isinstance(reply, Pending):
        reply = resolver.complete(reply)
    return DNSRecord.parse(reply)


def check(reply: DNSRecord, rcode: int, answer: list[str], authority: list[str], additional: list[str]) -> None:
    assert RCODE[reply.header.rcode] == RCODE[rcode]
    assert comparable(reply.rr) == expected(answer)
    assert comparable(reply.auth) == expected(authority)
    assert comparable(reply.ar) == expected(additional)
    # test.CNAMEOrder: no CNAME after the records of its target.
    for index, rr in enumerate(reply.rr):
        if rr.rtype == QTYPE.CNAME:
            assert all(other.rname != rr.rdata.label for other in reply.rr[:index])


def ids(cases) -> list[str]:
    return [f"{qname} {qtype}" for qname, qtype, *_ in cases]


@pytest.fixture(scope="module")
def serve(tmp_path_factory) -> Resolver:
    return resolver_for(tmp_path_factory.mktemp("serve"), SERVE)


@pytest.mark.parametrize("case", COMMON + DNS + NAMESPACES + CASE + PODS_INSECURE + APEX,
                         ids=ids(COMMON + DNS + NAMESPACES + CASE + PODS_INSECURE + APEX))  # fmt: skip
def test_handler_cases(serve, case):
    qname, qtype, rcode, answer, authority, additional = case
    check(ask(serve, qname, qtype), rcode, answer, authority, additional)


@pytest.mark.parametrize("case", REVERSES, ids=ids(REVERSES))
def test_reverse_cases(tmp_path, case):
    qname, qtype, rcode, answer, authority, additional = case
    check(ask(resolver_for(tmp_path, REVERSE), qname, qtype), rcode, answer, authority, additional)


def test_external_name_through_a_truncating_upstream(tmp_path):
    """"CNAME External Truncated Lookup", ADAPTED: the upstream truncates over
    UDP; emu asks it again over TCP, so the answer is whole and TC is clear."""
    upstream = FakeUpstream({("ext.interwebs.test", "A"): ["ext.interwebs.test. 5 IN A 1.2.3.4"]}, truncate_udp=True)
    try:
        resolver = resolver_for(tmp_path, {**SERVE, "upstreams": [upstream.address]})
        query = DNSRecord.question("external.testns.svc.cluster.local.", "A")
        pending = resolver.answer(bytes(query.pack()), udp=True)
        assert isinstance(pending, Pending)
        reply = DNSRecord.parse(resolver.complete(pending))
        assert reply.header.tc == 0
        check(reply, RCODE.NOERROR, ["ext.interwebs.test. 5 IN A 1.2.3.4",
                                     "external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test."], [], [])  # fmt: skip
        assert (upstream.count("udp"), upstream.count("tcp")) == (1, 1)
    finally:
        upstream.close()


def test_not_synced_is_servfail(tmp_path):
    """notSyncedTestCases, ADAPTED: SERVFAIL with the question, no SOA."""
    reply = ask(resolver_for(tmp_path, None), "svc0.testns.svc.cluster.local.", "A")
    assert reply.header.rcode == RCODE.SERVFAIL and str(reply.q.qname) == "svc0.testns.svc.cluster.local."
    assert reply.rr == [] and reply.auth == []
