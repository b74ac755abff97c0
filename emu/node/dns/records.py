"""Cluster DNS records, per the Kubernetes DNS-Based Service Discovery
specification, schema 1.1.0 (kubernetes/dns, docs/specification.md), as
CoreDNS's kubernetes plugin serves them with kubeadm's Corefile (`pods
insecure`).

`Zone.lookup(name, qtype)` answers one question from a snapshot
(emu.node.dns.snapshot). It follows CoreDNS's own steps (plugin/kubernetes:
parseRequest, Records, findServices, findPods; plugin/backend_lookup.go: A,
SRV, CNAME, TXT) so the corner cases come out the same: which names are
NXDOMAIN and which NODATA, SRV weights and duplicates, ExternalName chasing,
the letter case of the question kept in owner names. dnslib does the wire
format; nothing here does I/O.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from dataclasses import dataclass, field

from dnslib import AAAA, CNAME, NS, PTR, QTYPE, RCODE, RR, SOA, SRV, TXT, A

from emu.node.records import DEFAULT_DNS_DOMAIN

class TYPE:
    """dnslib's QTYPE numbers as plain attributes (QTYPE.X goes through a slow __getattr__)."""

    A, NS, CNAME, SOA, PTR, MX = QTYPE.A, QTYPE.NS, QTYPE.CNAME, QTYPE.SOA, QTYPE.PTR, QTYPE.MX
    TXT, AAAA, SRV, OPT, IXFR, AXFR = QTYPE.TXT, QTYPE.AAAA, QTYPE.SRV, QTYPE.OPT, QTYPE.IXFR, QTYPE.AXFR


class RC:
    """dnslib's RCODE numbers, likewise."""

    NOERROR, FORMERR, SERVFAIL, NXDOMAIN = RCODE.NOERROR, RCODE.FORMERR, RCODE.SERVFAIL, RCODE.NXDOMAIN
    NOTIMP, REFUSED = RCODE.NOTIMP, RCODE.REFUSED


SCHEMA_VERSION = "1.1.0"
SCHEMA_TTL = 28800  # CoreDNS's dns-version TXT record
MAX_CNAME_CHAIN = 10  # plugin/backend_lookup.go maxCnameChainLength
# Namespaces every Kubernetes cluster has, whatever runs in them.
STANDARD_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")


@dataclass
class Answer:
    rcode: int = RC.NOERROR
    answers: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    forward: bool = False  # outside the cluster's zones: ask the upstream servers
    # An ExternalName whose target is outside the zone: the reply is `answers`
    # (the CNAME chain) followed by what the upstream servers answer for
    # (chase, qtype), as CoreDNS's Upstream.Lookup does.
    chase: str | None = None


@dataclass(frozen=True)
class Item:
    """What CoreDNS calls a msg.Service: one address (or a name) and port of a
    service or endpoint, published under `key`."""

    host: str  # an IP address, or a name (an ExternalName's target)
    port: int  # -1: no port (a headless service without ports)
    key: str  # the name it is published under: the SRV target and glue owner


class NoSuchName(Exception):
    """The name does not exist (NXDOMAIN)."""


def reverse_name(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


def dashed(ip: str) -> str:
    """An endpoint's name when it has no hostname: its address with dashes (CoreDNS endpointHostname)."""
    if ":" in ip:
        name = ip.replace(":", "-")
        return name + "0" if name.endswith("-") else name
    return ip.replace(".", "-")


@functools.lru_cache(maxsize=65536)
def host_type(host: str) -> int:
    """TYPE.A or AAAA for an address, CNAME for a name (msg.Service.HostType)."""
    try:
        return TYPE.A if ipaddress.ip_address(host).version == 4 else TYPE.AAAA
    except ValueError:
        return TYPE.CNAME


def address_rr(owner: str, host: str, ttl: int) -> RR:
    if host_type(host) == TYPE.A:
        return RR(owner, TYPE.A, ttl=ttl, rdata=A(host))
    return RR(owner, TYPE.AAAA, ttl=ttl, rdata=AAAA(host))


def reverse_zone(network: ipaddress.IPv4Network) -> str:
    """The in-addr.arpa zone on whole octets that holds the network."""
    octets = str(network.network_address).split(".")[: max(1, network.prefixlen // 8)]
    return ".".join(reversed(octets)) + ".in-addr.arpa"


@dataclass
class _Endpoint:
    ip: str
    host: str  # hostname, or the dashed address
    ports: list[tuple[str, int, str]]  # (name, port, protocol); [("", -1, "")] when none


@dataclass
class _Service:
    namespace: str
    name: str
    type: str
    cluster_ip: str
    external_name: str | None
    ports: list[tuple[str, int, str]]
    endpoints: list[_Endpoint]  # ready ones only, as in an Endpoints object's addresses

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"


def _port_matches(port: str, protocol: str, name: str, proto: str) -> bool:
    return (not port or port == name.lower()) and (not protocol or protocol == proto.lower())


class Zone:
    """Every service, endpoint and namespace of the cluster domain, indexed for lookups."""

    def __init__(self, snapshot: dict, serial: int = 1):
        self.zone = snapshot.get("zone", DEFAULT_DNS_DOMAIN).lower().rstrip(".")
        self.ttl = int(snapshot.get("ttl", 5))
        self.serial = serial & 0xFFFFFFFF
        self.upstreams = list(snapshot.get("upstreams", []))
        self.reverse_networks = [
            ipaddress.IPv4Network(n) for n in (snapshot.get("serviceSubnet"), snapshot.get("podSubnet")) if n
        ]
        self.services: dict[tuple[str, str], _Service] = {}
        self.namespaces: set[str] = set(STANDARD_NAMESPACES) | set(snapshot.get("namespaces", []))
        self.pointers: dict[str, list[str]] = {}  # address -> PTR targets
        endpoint_pointers: dict[str, list[str]] = {}
        for raw in snapshot.get("services", []):
            service = self._service(raw)
            self.services[(service.namespace, service.name)] = service
            self.namespaces.add(service.namespace)
            base = f"{service.name}.{service.namespace}.svc.{self.zone}."
            if service.type != "ExternalName" and not service.headless and service.cluster_ip:
                self.pointers.setdefault(service.cluster_ip, [base])  # the first service wins, as in CoreDNS
            for endpoint in service.endpoints:
                targets = endpoint_pointers.setdefault(endpoint.ip, [])
                if f"{endpoint.host}.{base}" not in targets:
                    targets.append(f"{endpoint.host}.{base}")
        for ip, targets in endpoint_pointers.items():
            self.pointers.setdefault(ip, targets)
        dns_service = self.services.get(("kube-system", "kube-dns"))
        self.nameserver = dns_service if dns_service and not dns_service.headless and dns_service.cluster_ip else None

    def _service(self, raw: dict) -> _Service:
        ports = [(p.get("name") or "", int(p["port"]), p.get("protocol", "TCP")) for p in raw.get("ports", [])]
        endpoints = []
        for endpoint in raw.get("endpoints", []):
            if not endpoint.get("ready"):
                continue
            by_name = endpoint.get("ports", {})
            endpoint_ports = [(name, int(by_name[name]), proto) for name, _, proto in ports if name in by_name]
            endpoints.append(
                _Endpoint(
                    ip=endpoint["ip"],
                    host=(endpoint.get("hostname") or dashed(endpoint["ip"])).lower(),
                    ports=endpoint_ports or [("", -1, "")],
                )
            )
        return _Service(
            namespace=raw["namespace"].lower(),
            name=raw["name"].lower(),
            type=raw.get("type", "ClusterIP"),
            cluster_ip=raw.get("clusterIP") or "",
            external_name=raw.get("externalName"),
            ports=ports,
            endpoints=endpoints,
        )

    # ---- answering ----------------------------------------------------------
    def soa(self, zone: str) -> RR:
        """The zone's SOA, named in the letter case of the question (`zone`)."""
        return RR(
            zone,
            TYPE.SOA,
            ttl=min(self.ttl, 300),
            rdata=SOA(f"ns.dns.{zone}", f"hostmaster.{zone}", (self.serial, 7200, 1800, 86400, self.ttl)),
        )

    def in_zone(self, name: str) -> bool:
        return name == self.zone or name.endswith("." + self.zone)

    def lookup(self, qname: str, qtype: int) -> Answer:
        """Answer one question; qname in the letter case it was asked in."""
        asked = qname.rstrip(".")
        name = asked.lower()
        if not self.in_zone(name):
            if name.endswith(".in-addr.arpa"):
                return self._reverse(asked, name, qtype)
            return Answer(forward=True)
        zone = asked[len(asked) - len(self.zone) :]  # the zone as the question spells it
        try:
            answer = self._serve(asked, name, zone, qtype)
        except NoSuchName:
            return Answer(rcode=RC.NXDOMAIN, authority=[self.soa(zone)])
        if not answer.answers:
            return Answer(authority=[self.soa(zone)])  # NODATA
        return answer

    def _serve(self, asked: str, name: str, zone: str, qtype: int) -> Answer:
        """plugin/kubernetes/handler.go ServeDNS: one branch per query type."""
        if qtype in (TYPE.A, TYPE.AAAA):
            records, chase = self._addresses(asked, name, zone, qtype, [])
            return Answer(answers=records, chase=chase)
        if qtype == TYPE.TXT:
            return Answer(answers=self._txt(asked, name, zone))
        if qtype == TYPE.CNAME:
            return Answer(answers=self._cname(asked, name, zone))
        if qtype == TYPE.PTR:
            self._records(name, zone)  # only to tell NODATA from NXDOMAIN
            return Answer()
        if qtype == TYPE.SRV:
            records, extra = self._srv(asked, name, zone)
            return Answer(answers=records, additional=extra)
        if qtype == TYPE.SOA:
            return Answer(answers=[self.soa(zone)] if name == self.zone else [])
        if qtype == TYPE.NS and name == self.zone:
            records, extra = self._ns(asked, zone)
            return Answer(answers=records, additional=extra)
        self._items(name, zone, TYPE.A)  # any other type: NODATA when an A lookup finds the name
        return Answer()

    # ---- CoreDNS's Services / Records ------------------------------------------
    def _items(self, name: str, zone: str, qtype: int) -> list[Item]:
        """kubernetes.Services: the name server's own name, else Records."""
        if name == self.zone:
            return []  # the apex has no addresses (checkForApex)
        if name == f"ns.dns.{self.zone}":
            if self.nameserver is None or host_type(self.nameserver.cluster_ip) != qtype:
                return []
            return [Item(self.nameserver.cluster_ip, 0, name)]
        return self._records(name, zone)

    def _records(self, name: str, zone: str) -> list[Item]:
        """kubernetes.Records: parse <endpoint|_port._proto>.<service>.<namespace>.<svc|pod>.<zone>."""
        base = name[: -len(self.zone) - 1] if name != self.zone else ""
        if base in ("", "svc", "pod"):
            return []
        labels = base.split(".")
        kind = labels.pop()
        if kind not in ("svc", "pod"):
            raise NoSuchName
        namespace = labels.pop() if labels else ""
        service = labels.pop() if labels else ""
        endpoint = port = protocol = ""
        if len(labels) == 1:
            endpoint = labels[0]
        elif len(labels) == 2:
            port, protocol = labels[0].removeprefix("_"), labels[1].removeprefix("_")
        elif len(labels) > 2:
            raise NoSuchName  # too long to be anything
        if not namespace:
            return []
        if namespace not in self.namespaces:
            raise NoSuchName
        if not service:
            return []  # a namespace: NODATA
        if kind == "pod":
            return self._pod(service, name)
        return self._find_services(namespace, service, endpoint, port, protocol, zone)

    def _pod(self, label: str, name: str) -> list[Item]:
        """findPods with `pods insecure`: a-b-c-d is the address a.b.c.d, unchecked."""
        if label.count("-") == 3 and "--" not in label:
            ip = label.replace("-", ".")
        else:
            ip = label.replace("-", ":")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise NoSuchName from None
        return [Item(ip, 0, name)]

    def _find_services(self, namespace: str, name: str, endpoint: str, port: str, protocol: str, zone: str) -> list[Item]:
        service = self.services.get((namespace, name))
        if service is None:
            raise NoSuchName
        base = f"{service.name}.{service.namespace}.svc.{zone}"
        if service.type == "ExternalName":
            if endpoint or port or protocol or not service.external_name:
                raise NoSuchName
            if host_type(service.external_name) != TYPE.CNAME:
                raise NoSuchName  # an address is not a valid externalName
            return [Item(service.external_name, 0, base)]
        items = []
        if service.headless or endpoint:
            # Endpoint names exist for every service with endpoints, not only headless ones.
            found = False
            for ep in service.endpoints:
                if endpoint and endpoint != ep.host:
                    continue
                for port_name, number, proto in ep.ports:
                    if not _port_matches(port, protocol, port_name, proto):
                        continue
                    found = True
                    items.append(Item(ep.ip, number, f"{ep.host}.{base}"))
            if not found:
                raise NoSuchName
            return items
        for port_name, number, proto in service.ports:
            if _port_matches(port, protocol, port_name, proto):
                items.append(Item(service.cluster_ip, number, base))
        if not items:
            raise NoSuchName
        return items

    # ---- per type (plugin/backend_lookup.go) -------------------------------------
    def _addresses(self, owner: str, name: str, zone: str, qtype: int, chain: list[tuple[str, str]]):
        """A or AAAA records for `name`, following ExternalName CNAMEs inside the
        zone. Returns (records, target outside the zone still to be looked up)."""
        records: list[RR] = []
        chase = None
        seen: set[str] = set()
        for item in self._items(name, zone, qtype):
            kind = host_type(item.host)
            if kind == TYPE.CNAME:
                target = item.host.rstrip(".")
                lowered = target.lower()
                if lowered == name or len(chain) > MAX_CNAME_CHAIN or (name, lowered) in chain:
                    continue  # a loop
                cname = RR(owner, TYPE.CNAME, ttl=self.ttl, rdata=CNAME(target + "."))
                if self.in_zone(lowered):
                    try:
                        found, later = self._addresses(target, lowered, zone, qtype, [*chain, (name, lowered)])
                    except NoSuchName:
                        continue
                    if found:
                        records += [cname, *found]
                        chase = chase or later
                    continue
                records.append(cname)
                chase = target
            elif kind == qtype and item.host not in seen:
                seen.add(item.host)
                records.append(address_rr(owner, item.host, self.ttl))
        return records, chase

    def _txt(self, owner: str, name: str, zone: str) -> list[RR]:
        if name == f"dns-version.{self.zone}":
            return [RR(owner, TYPE.TXT, ttl=SCHEMA_TTL, rdata=TXT(SCHEMA_VERSION))]
        if self._records(name, zone):
            return []  # the name exists with other types
        raise NoSuchName

    def _cname(self, owner: str, name: str, zone: str) -> list[RR]:
        items = self._items(name, zone, TYPE.CNAME)
        if items and host_type(items[0].host) == TYPE.CNAME:
            return [RR(owner, TYPE.CNAME, ttl=self.ttl, rdata=CNAME(items[0].host.rstrip(".") + "."))]
        return []

    def _srv(self, owner: str, name: str, zone: str) -> tuple[list[RR], list[RR]]:
        """SRV records with their addresses as glue. Weights share 100 among
        every record before duplicates (same target and port) collapse."""
        items = [i for i in self._items(name, zone, TYPE.SRV) if host_type(i.host) != TYPE.CNAME]
        records: list[RR] = []
        extra: list[RR] = []
        seen: set[tuple] = set()
        total = 100 * len(items)
        for item in items:
            if item.port == -1:
                continue
            weight = max(1, math.floor(100.0 / total * 100))
            if (item.key, item.port) not in seen:
                seen.add((item.key, item.port))
                records.append(RR(owner, TYPE.SRV, ttl=self.ttl, rdata=SRV(0, weight, item.port, item.key + ".")))
            if (item.key, item.host) not in seen:
                seen.add((item.key, item.host))
                extra.append(address_rr(item.key, item.host, self.ttl))
        return records, extra

    def _ns(self, owner: str, zone: str) -> tuple[list[RR], list[RR]]:
        """The zone's NS: the cluster DNS service, with its address as glue."""
        if self.nameserver is None:
            return [RR(owner, TYPE.NS, ttl=self.ttl, rdata=NS(f"ns.dns.{zone}."))], []
        server = f"{self.nameserver.name}.{self.nameserver.namespace}.svc.{zone}"
        glue = [address_rr(server, self.nameserver.cluster_ip, self.ttl)]
        return [RR(owner, TYPE.NS, ttl=self.ttl, rdata=NS(server + "."))], glue

    def _reverse(self, asked: str, name: str, qtype: int) -> Answer:
        """PTR for service and pod addresses; other addresses go upstream."""
        labels = name[: -len(".in-addr.arpa")].split(".")
        if len(labels) != 4 or not all(x.isdigit() for x in labels):
            return Answer(forward=True)
        try:
            address = ipaddress.IPv4Address(".".join(reversed(labels)))
        except ValueError:
            return Answer(forward=True)
        network = next((n for n in self.reverse_networks if address in n), None)
        if network is None:
            return Answer(forward=True)
        targets = self.pointers.get(str(address)) if qtype == TYPE.PTR else None
        if targets and reverse_name(str(address)) == name:
            return Answer(answers=[RR(asked, TYPE.PTR, ttl=self.ttl, rdata=PTR(t)) for t in targets])
        origin = reverse_zone(network)
        return Answer(rcode=RC.NXDOMAIN, authority=[self.soa(asked[len(asked) - len(origin) :])])
