"""Cluster DNS records per the Kubernetes DNS specification 1.1.0, without Docker."""

from __future__ import annotations

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from emu.dns.records import Zone
from emu.dns.server import Resolver
from emu.dns.snapshot import dns_snapshot
from emu.state import plan_cluster
from emu.topology.load import load_text

LAB = """\
name: lab
nodes: [{name: cp, role: control-plane}, {name: w1}]
pods:
  - name: web-0
    hostname: web-0
    subdomain: web-h
    labels: {app: web}
    containers: [{name: c, workload: netexec, ports: [{name: http, containerPort: 8080}]}]
  - name: web-1
    labels: {app: web}
    containers: [{name: c, workload: netexec, ports: [{name: http, containerPort: 8080}]}]
services:
  - name: web
    selector: {app: web}
    clusterIP: 10.96.0.50
    ports: [{name: http, port: 80, targetPort: http}]
  - name: web-h
    clusterIP: None
    selector: {app: web}
    ports: [{name: http, port: 80, targetPort: http}]
  - name: empty-h
    clusterIP: None
    selector: {app: nothing}
    ports: [{port: 80}]
  - name: ext
    type: ExternalName
    externalName: www.example.com
"""


def zone(ready=True, text=LAB) -> tuple[Zone, object]:
    state = plan_cluster(load_text(text), "emu-lab", "172.28.5.0/24")
    readiness = {pod.uid: ready for pod in state.pods.values()}
    return Zone(dns_snapshot(state, readiness)), state


def rdatas(answer) -> list[str]:
    return sorted(str(rr.rdata) for rr in answer.answers)


def test_schema_version():
    z, _ = zone()
    assert rdatas(z.lookup("dns-version.cluster.local", QTYPE.TXT)) == ['"1.1.0"']


def test_cluster_ip_service_a_record_and_case_insensitivity():
    z, _ = zone()
    assert rdatas(z.lookup("web.default.svc.cluster.local", QTYPE.A)) == ["10.96.0.50"]
    assert rdatas(z.lookup("WEB.Default.SVC.cluster.local.", QTYPE.A)) == ["10.96.0.50"]


def test_kubernetes_and_kube_dns_services_exist():
    z, _ = zone()
    assert rdatas(z.lookup("kubernetes.default.svc.cluster.local", QTYPE.A)) == ["10.96.0.1"]
    assert rdatas(z.lookup("kube-dns.kube-system.svc.cluster.local", QTYPE.A)) == ["10.96.0.10"]


def test_srv_for_named_port_with_glue():
    z, _ = zone()
    answer = z.lookup("_http._tcp.web.default.svc.cluster.local", QTYPE.SRV)
    assert rdatas(answer) == ["0 100 80 web.default.svc.cluster.local."]
    assert [str(rr.rdata) for rr in answer.additional] == ["10.96.0.50"]


def test_ptr_for_service_ip():
    z, _ = zone()
    assert rdatas(z.lookup("50.0.96.10.in-addr.arpa", QTYPE.PTR)) == ["web.default.svc.cluster.local."]
    unknown = z.lookup("99.0.96.10.in-addr.arpa", QTYPE.PTR)
    assert unknown.rcode == RCODE.NXDOMAIN


def test_headless_service_returns_ready_endpoints():
    z, state = zone()
    ips = sorted(p.ip for p in state.pods.values() if p.labels.get("app") == "web")
    assert rdatas(z.lookup("web-h.default.svc.cluster.local", QTYPE.A)) == ips
    web0 = state.pods["default/web-0"].ip
    assert rdatas(z.lookup("web-0.web-h.default.svc.cluster.local", QTYPE.A)) == [web0]
    web1 = state.pods["default/web-1"].ip
    dashed = web1.replace(".", "-")
    assert rdatas(z.lookup(f"{dashed}.web-h.default.svc.cluster.local", QTYPE.A)) == [web1]
    srv = rdatas(z.lookup("_http._tcp.web-h.default.svc.cluster.local", QTYPE.SRV))
    assert srv == sorted(["0 50 8080 web-0.web-h.default.svc.cluster.local.", f"0 50 8080 {dashed}.web-h.default.svc.cluster.local."])
    ptr = z.lookup(".".join(reversed(web0.split("."))) + ".in-addr.arpa", QTYPE.PTR)
    assert rdatas(ptr) == ["web-0.web-h.default.svc.cluster.local."]


def test_headless_without_ready_endpoints_is_nxdomain():
    z, _ = zone(ready=False)
    assert z.lookup("web-h.default.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN
    assert z.lookup("empty-h.default.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN


def test_external_name_is_a_cname():
    z, _ = zone()
    answer = z.lookup("ext.default.svc.cluster.local", QTYPE.A)
    assert [(QTYPE[rr.rtype], str(rr.rdata)) for rr in answer.answers] == [("CNAME", "www.example.com.")]


def test_pod_records():
    z, _ = zone()
    assert rdatas(z.lookup("10-244-1-7.default.pod.cluster.local", QTYPE.A)) == ["10.244.1.7"]
    assert z.lookup("10-244-1-999.default.pod.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN


def test_unknown_name_is_nxdomain_with_soa():
    z, _ = zone()
    answer = z.lookup("nope.default.svc.cluster.local", QTYPE.A)
    assert answer.rcode == RCODE.NXDOMAIN
    assert [QTYPE[rr.rtype] for rr in answer.authority] == ["SOA"]


def test_known_name_other_type_is_nodata():
    z, _ = zone()
    answer = z.lookup("web.default.svc.cluster.local", QTYPE.AAAA)
    assert answer.rcode == RCODE.NOERROR and answer.answers == [] and len(answer.authority) == 1
    assert z.lookup("default.svc.cluster.local", QTYPE.A).rcode == RCODE.NOERROR


def test_outside_the_zone_is_forwarded():
    z, _ = zone()
    assert z.lookup("example.com", QTYPE.A).forward


# ---- the server's answering path (bytes in, bytes out) ----------------------------

@pytest.fixture()
def resolver(tmp_path):
    import json

    state = plan_cluster(load_text(LAB), "emu-lab", "172.28.5.0/24")
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(dns_snapshot(state, {p.uid: True for p in state.pods.values()})))
    resolver = Resolver(str(path))
    assert resolver.reload_if_changed()
    return resolver


def ask(resolver, name, qtype="A", udp=True, edns=None, ident=1234):
    query = DNSRecord.question(name, qtype)
    query.header.id = ident
    if edns:
        query.add_ar(EDNS0(udp_len=edns))
    return DNSRecord.parse(resolver.answer(bytes(query.pack()), udp))


def test_reply_keeps_id_and_question_case_from_cache(resolver):
    first = ask(resolver, "Web.Default.svc.cluster.local", ident=1)
    second = ask(resolver, "Web.Default.svc.cluster.local", ident=2)  # served from the cache
    assert second.header.id == 2 and str(second.q.qname) == "Web.Default.svc.cluster.local."
    assert [str(r.rdata) for r in first.rr] == [str(r.rdata) for r in second.rr] == ["10.96.0.50"]
    assert second.header.aa == 1


def test_edns_reply_advertises_our_size(resolver):
    reply = ask(resolver, "web.default.svc.cluster.local", edns=4096)
    assert any(r.rtype == QTYPE.OPT for r in reply.ar)
    plain = ask(resolver, "web.default.svc.cluster.local")
    assert not any(r.rtype == QTYPE.OPT for r in plain.ar)


def test_big_answer_is_truncated_over_udp_and_whole_over_tcp(tmp_path):
    import json

    pods = "".join(
        f"  - name: p{i}\n    labels: {{app: many}}\n    containers: [{{name: c, command: [sleep, infinity]}}]\n"
        for i in range(60)
    )
    text = "name: lab\nnodes: [{name: cp, role: control-plane}, {name: w1}]\npods:\n" + pods + \
        "services:\n  - name: many\n    clusterIP: None\n    selector: {app: many}\n    ports: [{port: 80}]\n"
    state = plan_cluster(load_text(text), "emu-lab", "172.28.5.0/24")
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(dns_snapshot(state, {p.uid: True for p in state.pods.values()})))
    resolver = Resolver(str(path))
    resolver.reload_if_changed()
    udp = ask(resolver, "many.default.svc.cluster.local")
    assert udp.header.tc == 1 and udp.rr == []
    bigger = ask(resolver, "many.default.svc.cluster.local", edns=4096)
    assert bigger.header.tc == 0 and len(bigger.rr) == 60
    tcp = ask(resolver, "many.default.svc.cluster.local", udp=False)
    assert tcp.header.tc == 0 and len(tcp.rr) == 60


def test_snapshot_change_drops_the_cache(resolver, tmp_path):
    import json
    import os
    import time

    assert ask(resolver, "web.default.svc.cluster.local").header.rcode == RCODE.NOERROR
    snapshot = json.loads(open(resolver.snapshot_path).read())
    snapshot["services"] = [s for s in snapshot["services"] if s["name"] != "web"]
    time.sleep(0.01)
    with open(resolver.snapshot_path + ".new", "w") as handle:
        json.dump(snapshot, handle)
    os.replace(resolver.snapshot_path + ".new", resolver.snapshot_path)
    assert resolver.reload_if_changed()
    assert ask(resolver, "web.default.svc.cluster.local").header.rcode == RCODE.NXDOMAIN


def test_no_upstream_gives_servfail_at_once(resolver):
    assert ask(resolver, "example.com").header.rcode == RCODE.SERVFAIL


def test_garbage_never_raises(resolver):
    from dnsfuzz import bad_queries

    for index, data in enumerate(bad_queries(seed=7, count=3000)):
        reply = resolver.answer(data, udp=index % 2 == 0)
        assert reply is None or isinstance(reply, bytes)
    assert ask(resolver, "web.default.svc.cluster.local").header.rcode == RCODE.NOERROR


def test_names_outside_the_zone_go_to_the_upstream(tmp_path):
    import json
    import socket
    import threading

    from dnslib import RR

    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))

    def answer_once() -> None:
        data, client = upstream.recvfrom(4096)
        query = DNSRecord.parse(data)
        reply = query.reply()
        reply.add_answer(*RR.fromZone("www.example.com. 60 A 192.0.2.7"))
        upstream.sendto(bytes(reply.pack()), client)

    threading.Thread(target=answer_once, daemon=True).start()
    snapshot = {"zone": "cluster.local", "upstreams": [f"127.0.0.1:{upstream.getsockname()[1]}"], "services": []}
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(snapshot))
    resolver = Resolver(str(path))
    resolver.reload_if_changed()
    query = bytes(DNSRecord.question("www.example.com").pack())
    assert resolver.answer(query, True) is None  # not ours: forwarded
    got = threading.Event()
    replies = []
    resolver.forward(query, lambda reply: (replies.append(reply), got.set()))
    assert got.wait(3)
    assert [str(rr.rdata) for rr in DNSRecord.parse(replies[0]).rr] == ["192.0.2.7"]
    upstream.close()
