"""Cluster DNS records, per the Kubernetes DNS-Based Service Discovery
specification, schema 1.1.0 (kubernetes/dns, docs/specification.md), as
CoreDNS's kubernetes plugin serves them (with `pods insecure`).

`Zone.lookup(name, qtype)` answers one question from a snapshot
(emu.dns.snapshot). dnslib does the wire format; nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from dnslib import A, CNAME, NS, PTR, QTYPE, RCODE, RR, SOA, SRV, TXT

SCHEMA_VERSION = "1.1.0"


@dataclass
class Answer:
    rcode: int = RCODE.NOERROR
    answers: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    forward: bool = False  # outside the cluster's zones: ask the upstream servers


def reverse_name(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


def dashed(ip: str) -> str:
    return ip.replace(".", "-")


class Zone:
    """Every record of the cluster domain, indexed by (lower-case name, type)."""

    def __init__(self, snapshot: dict):
        self.zone = snapshot.get("zone", "cluster.local").lower().rstrip(".")
        self.ttl = int(snapshot.get("ttl", 5))
        self.upstreams = list(snapshot.get("upstreams", []))
        self.reverse_networks = [
            ipaddress.IPv4Network(n) for n in (snapshot.get("serviceSubnet"), snapshot.get("podSubnet")) if n
        ]
        self.records: dict[tuple[str, int], list[RR]] = {}
        self.extra: dict[tuple[str, int], list[RR]] = {}  # additional section per question
        self.names: set[str] = set()  # every name that exists (empty non-terminals too)
        self.soa = RR(
            self.zone,
            QTYPE.SOA,
            ttl=self.ttl,
            rdata=SOA(f"ns.dns.{self.zone}", f"hostmaster.{self.zone}", (1, 7200, 1800, 86400, self.ttl)),
        )
        self._add(self.zone, QTYPE.SOA, self.soa.rdata)
        self._add(self.zone, QTYPE.NS, NS(f"ns.dns.{self.zone}"))
        self._add(f"dns-version.{self.zone}", QTYPE.TXT, TXT(SCHEMA_VERSION))
        for name in (f"svc.{self.zone}", f"pod.{self.zone}"):
            self._exists(name)
        for service in snapshot.get("services", []):
            self._add_service(service)

    # ---- building -----------------------------------------------------------
    def _exists(self, name: str) -> None:
        labels = name.split(".")
        for index in range(len(labels)):
            self.names.add(".".join(labels[index:]))

    def _add(self, name: str, qtype: int, rdata, extra: list[RR] | None = None) -> None:
        name = name.lower()
        self._exists(name)
        self.records.setdefault((name, qtype), []).append(RR(name, qtype, ttl=self.ttl, rdata=rdata))
        if extra:
            self.extra.setdefault((name, qtype), []).extend(extra)

    def _add_service(self, service: dict) -> None:
        name = f"{service['name']}.{service['namespace']}.svc.{self.zone}".lower()
        self._exists(name)
        if service["type"] == "ExternalName":
            self._add(name, QTYPE.CNAME, CNAME(service["externalName"]))
            return
        named_ports = [p for p in service["ports"] if p["name"]]
        if service["clusterIP"] != "None":
            address = A(service["clusterIP"])
            self._add(name, QTYPE.A, address)
            self._add(reverse_name(service["clusterIP"]), QTYPE.PTR, PTR(name))
            glue = [RR(name, QTYPE.A, ttl=self.ttl, rdata=address)]
            for port in named_ports:
                srv = f"_{port['name']}._{port['protocol'].lower()}.{name}"
                self._add(srv, QTYPE.SRV, SRV(0, 100, port["port"], name), glue)
            return
        # Headless: the ready endpoints themselves. None ready: the name does not exist.
        ready = [e for e in service["endpoints"] if e["ready"]]
        if not ready:
            self.names.discard(name)
            return
        weight = max(1, 100 // len(ready))
        for endpoint in ready:
            host = f"{endpoint['hostname'] or dashed(endpoint['ip'])}.{name}"
            address = A(endpoint["ip"])
            self._add(name, QTYPE.A, address)
            self._add(host, QTYPE.A, address)
            self._add(reverse_name(endpoint["ip"]), QTYPE.PTR, PTR(host))
            glue = [RR(host, QTYPE.A, ttl=self.ttl, rdata=address)]
            for port in named_ports:
                target_port = endpoint["ports"].get(port["name"])
                if target_port is None:
                    continue
                srv = f"_{port['name']}._{port['protocol'].lower()}.{name}"
                self._add(srv, QTYPE.SRV, SRV(0, weight, target_port, host), glue)

    # ---- answering ----------------------------------------------------------
    def in_zone(self, name: str) -> bool:
        return name == self.zone or name.endswith("." + self.zone)

    def lookup(self, qname: str, qtype: int) -> Answer:
        name = qname.lower().rstrip(".")
        if not self.in_zone(name):
            if name.endswith(".in-addr.arpa"):
                return self._reverse(name, qtype)
            return Answer(forward=True)
        found = self.records.get((name, qtype))
        if found:
            return Answer(answers=list(found), additional=list(self.extra.get((name, qtype), [])))
        cname = self.records.get((name, QTYPE.CNAME))
        if cname:  # an ExternalName service answers every type with its CNAME
            return Answer(answers=list(cname))
        pod = self._pod(name)
        if pod is not None:
            if qtype in (QTYPE.A, QTYPE.ANY):
                return Answer(answers=[RR(name, QTYPE.A, ttl=self.ttl, rdata=A(pod))])
            return Answer(authority=[self.soa])
        if name in self.names:
            return Answer(authority=[self.soa])  # the name exists, not with this type
        return Answer(rcode=RCODE.NXDOMAIN, authority=[self.soa])

    def _pod(self, name: str) -> str | None:
        """a-b-c-d.<namespace>.pod.<zone> -> a.b.c.d (CoreDNS's `pods insecure`)."""
        labels = name[: -len(self.zone) - 1].split(".") if name.endswith("." + self.zone) else []
        if len(labels) != 3 or labels[2] != "pod":
            return None
        parts = labels[0].split("-")
        if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 and str(int(p)) == p for p in parts):
            return None
        return ".".join(parts)

    def _reverse(self, name: str, qtype: int) -> Answer:
        found = self.records.get((name, qtype))
        if found:
            return Answer(answers=list(found))
        labels = name[: -len(".in-addr.arpa")].split(".")
        if len(labels) == 4 and all(x.isdigit() for x in labels):
            try:
                address = ipaddress.IPv4Address(".".join(reversed(labels)))
            except ValueError:
                return Answer(forward=True)
            if any(address in network for network in self.reverse_networks):
                if self.records.get((name, QTYPE.PTR)):
                    return Answer(authority=[self.soa])
                return Answer(rcode=RCODE.NXDOMAIN, authority=[self.soa])
        return Answer(forward=True)
