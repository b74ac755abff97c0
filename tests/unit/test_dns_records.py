"""Cluster DNS records per the Kubernetes DNS specification 1.1.0, without Docker."""

from __future__ import annotations

import json

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from emu.node.dns.records import Zone
from emu.node.dns.server import Resolver
from emu.node.dns.snapshot import dns_snapshot
from emu.control.state import plan_cluster
from emu.api.topology.load import load_text

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
    # Every service the endpoint belongs to names it, the ClusterIP one too (by its address).
    assert rdatas(ptr) == [f"{web0.replace('.', '-')}.web.default.svc.cluster.local.", "web-0.web-h.default.svc.cluster.local."]


def test_headless_without_ready_endpoints_is_nxdomain():
    z, _ = zone(ready=False)
    assert z.lookup("web-h.default.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN
    assert z.lookup("empty-h.default.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN


def test_external_name_is_a_cname():
    z, _ = zone()
    answer = z.lookup("ext.default.svc.cluster.local", QTYPE.CNAME)
    assert [(QTYPE[rr.rtype], str(rr.rdata)) for rr in answer.answers] == [("CNAME", "www.example.com.")]
    # An address query: the CNAME, and the target is left to the upstream servers.
    answer = z.lookup("ext.default.svc.cluster.local", QTYPE.A)
    assert [(QTYPE[rr.rtype], str(rr.rdata)) for rr in answer.answers] == [("CNAME", "www.example.com.")]
    assert answer.chase == "www.example.com"
    # SRV and other types are not followed (CoreDNS: "SRV for external services is not yet implemented").
    srv = z.lookup("ext.default.svc.cluster.local", QTYPE.SRV)
    assert srv.rcode == RCODE.NOERROR and srv.answers == [] and srv.chase is None


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


# ---- what issue 14 added -------------------------------------------------------

MORE = """\
name: lab
nodes: [{name: cp, role: control-plane}, {name: w1}]
pods:
  - name: db-0
    hostname: db
    subdomain: db
    labels: {app: db}
    containers: [{name: c, workload: netexec, ports: [{name: sql, containerPort: 5432}]}]
  - name: db-1
    hostname: db
    subdomain: db
    labels: {app: db}
    containers: [{name: c, workload: netexec, ports: [{name: sql, containerPort: 5432}]}]
  - name: lonely
    namespace: quiet
    containers: [{name: c, command: [sleep, infinity]}]
services:
  - name: db
    clusterIP: None
    selector: {app: db}
    ports: [{name: sql, port: 5432, targetPort: sql}]
  - name: db-vip
    selector: {app: db}
    ports: [{name: sql, port: 5432, targetPort: sql}, {name: admin, port: 9000, targetPort: 9000}]
  - name: alias
    type: ExternalName
    externalName: db-vip.default.svc.cluster.local
  - name: alias2
    type: ExternalName
    externalName: alias.default.svc.cluster.local
  - name: dangling
    type: ExternalName
    externalName: gone.default.svc.cluster.local
  - name: loop-a
    type: ExternalName
    externalName: loop-b.default.svc.cluster.local
  - name: loop-b
    type: ExternalName
    externalName: loop-a.default.svc.cluster.local
"""


def records(answer) -> list[tuple[str, str, str]]:
    return [(str(rr.rname), QTYPE[rr.rtype], str(rr.rdata)) for rr in answer]


def test_endpoint_names_of_a_cluster_ip_service():
    z, state = zone(text=MORE)
    ips = sorted(p.ip for p in state.pods.values() if p.labels.get("app") == "db")
    # In their own subdomain's service both pods are named db: the name has both
    # addresses (CoreDNS's dup-name case); elsewhere they are named by address.
    assert rdatas(z.lookup("db.db.default.svc.cluster.local", QTYPE.A)) == ips
    for ip in ips:
        assert rdatas(z.lookup(f"{ip.replace('.', '-')}.db-vip.default.svc.cluster.local", QTYPE.A)) == [ip]
    assert z.lookup("db.db-vip.default.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN


def test_endpoint_names_of_a_cluster_ip_service_without_hostnames():
    z, state = zone()
    web1 = state.pods["default/web-1"].ip
    assert rdatas(z.lookup(f"{web1.replace('.', '-')}.web.default.svc.cluster.local", QTYPE.A)) == [web1]
    ptr = z.lookup(".".join(reversed(web1.split("."))) + ".in-addr.arpa", QTYPE.PTR)
    assert rdatas(ptr) == sorted([f"{web1.replace('.', '-')}.web.default.svc.cluster.local.",
                                  f"{web1.replace('.', '-')}.web-h.default.svc.cluster.local."])  # fmt: skip


def test_not_ready_endpoints_have_no_names():
    z, state = zone(ready=False)
    web1 = state.pods["default/web-1"].ip
    assert z.lookup(f"{web1.replace('.', '-')}.web.default.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN
    assert z.lookup(".".join(reversed(web1.split("."))) + ".in-addr.arpa", QTYPE.PTR).rcode == RCODE.NXDOMAIN


def test_srv_at_the_service_name_lists_every_port():
    z, state = zone(text=MORE)
    answer = z.lookup("db-vip.default.svc.cluster.local", QTYPE.SRV)
    assert rdatas(answer) == ["0 50 5432 db-vip.default.svc.cluster.local.", "0 50 9000 db-vip.default.svc.cluster.local."]
    assert records(answer.additional) == [("db-vip.default.svc.cluster.local.", "A", state.services["default/db-vip"].cluster_ip)]


def test_kube_dns_srv_collapses_udp_and_tcp_on_one_port():
    z, _ = zone()
    answer = z.lookup("kube-dns.kube-system.svc.cluster.local", QTYPE.SRV)
    assert rdatas(answer) == ["0 50 53 kube-dns.kube-system.svc.cluster.local."]
    assert rdatas(z.lookup("_dns._udp.kube-dns.kube-system.svc.cluster.local", QTYPE.SRV)) == [
        "0 100 53 kube-dns.kube-system.svc.cluster.local."
    ]


def test_srv_for_endpoints_sharing_a_hostname_collapses():
    z, state = zone(text=MORE)
    ips = sorted(p.ip for p in state.pods.values() if p.labels.get("app") == "db")
    answer = z.lookup("_sql._tcp.db.default.svc.cluster.local", QTYPE.SRV)
    assert rdatas(answer) == ["0 50 5432 db.db.default.svc.cluster.local."]  # weight counts both endpoints
    assert sorted(records(answer.additional)) == [("db.db.default.svc.cluster.local.", "A", ip) for ip in ips]


def test_namespace_with_pods_but_no_services():
    z, _ = zone(text=MORE)
    quiet = z.lookup("quiet.svc.cluster.local", QTYPE.A)
    assert quiet.rcode == RCODE.NOERROR and quiet.answers == [] and len(quiet.authority) == 1
    assert z.lookup("nothing.quiet.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN
    assert z.lookup("nowhere.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN
    assert rdatas(z.lookup("10-244-1-9.quiet.pod.cluster.local", QTYPE.A)) == ["10.244.1.9"]
    assert z.lookup("10-244-1-9.nowhere.pod.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN


def test_external_name_to_an_in_cluster_name_carries_its_address():
    z, state = zone(text=MORE)
    vip = state.services["default/db-vip"].cluster_ip
    answer = z.lookup("alias.default.svc.cluster.local", QTYPE.A)
    assert records(answer.answers) == [
        ("alias.default.svc.cluster.local.", "CNAME", "db-vip.default.svc.cluster.local."),
        ("db-vip.default.svc.cluster.local.", "A", vip),
    ]
    assert answer.chase is None
    chained = z.lookup("alias2.default.svc.cluster.local", QTYPE.A)
    assert [r[1] for r in records(chained.answers)] == ["CNAME", "CNAME", "A"]
    # AAAA: the target has none, so CoreDNS answers NODATA without the CNAME.
    assert z.lookup("alias.default.svc.cluster.local", QTYPE.AAAA).answers == []


def test_external_name_to_a_missing_or_looping_name_is_nodata():
    z, _ = zone(text=MORE)
    for name in ("dangling", "loop-a"):
        answer = z.lookup(f"{name}.default.svc.cluster.local", QTYPE.A)
        assert (answer.rcode, answer.answers, answer.chase) == (RCODE.NOERROR, [], None), name
        assert [QTYPE[rr.rtype] for rr in answer.authority] == ["SOA"]


def test_question_case_is_kept_in_answers_and_soa():
    z, _ = zone()
    answer = z.lookup("WEB.Default.svc.Cluster.Local", QTYPE.A)
    assert records(answer.answers) == [("WEB.Default.svc.Cluster.Local.", "A", "10.96.0.50")]
    missing = z.lookup("nope.default.svc.CLUSTER.local", QTYPE.A)
    assert str(missing.authority[0].rname) == "CLUSTER.local."
    assert str(missing.authority[0].rdata.mname) == "ns.dns.CLUSTER.local."
    srv = z.lookup("_HTTP._tcp.web.default.svc.Cluster.local", QTYPE.SRV)
    assert records(srv.answers) == [("_HTTP._tcp.web.default.svc.Cluster.local.", "SRV", "0 100 80 web.default.svc.Cluster.local.")]


def test_dns_version_ttl_and_zone_apex():
    z, _ = zone()
    answer = z.lookup("dns-version.cluster.local", QTYPE.TXT)
    assert [rr.ttl for rr in answer.answers] == [28800]
    assert records(z.lookup("cluster.local", QTYPE.SOA).answers)[0][:2] == ("cluster.local.", "SOA")
    ns = z.lookup("cluster.local", QTYPE.NS)
    assert rdatas(ns) == ["kube-dns.kube-system.svc.cluster.local."]
    assert records(ns.additional) == [("kube-dns.kube-system.svc.cluster.local.", "A", "10.96.0.10")]
    assert rdatas(z.lookup("ns.dns.cluster.local", QTYPE.A)) == ["10.96.0.10"]


def test_the_agent_writes_the_snapshot_as_json_would_and_only_when_it_changed(tmp_path):
    from emu.node.dns.snapshot import snapshot_text, write_snapshot

    state = plan_cluster(load_text(LAB), "emu-lab", "172.28.5.0/24")
    ready = {p.uid: True for p in state.pods.values()}
    text = snapshot_text(state, ready)
    assert text == json.dumps(dns_snapshot(state, ready), sort_keys=True)
    path = str(tmp_path / "dns" / "snapshot.json")
    assert write_snapshot(path, text) and not write_snapshot(path, text)
    (tmp_path / "dns" / "snapshot.json").write_text("{}")  # changed by someone else: written again
    assert write_snapshot(path, text) and json.loads((tmp_path / "dns" / "snapshot.json").read_text())["services"]
    assert write_snapshot(path, snapshot_text(state, {}))  # readiness changed
