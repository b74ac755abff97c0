"""nftables partial syncs against kube-proxy's TestSyncProxyRulesRepeated
(pkg/proxy/nftables/proxier_test.go): after each sync the table holds what
kube-proxy's does (its expected dump) and the sync's transaction has as many
operations as kube-proxy's; a service that goes has its chains flushed, and
deleted only once they have been stale for over a second, by a transaction of
their own. The kernel is a small model of nft's table (FakeTable), as
kube-proxy's tests use knftables.Fake."""

from __future__ import annotations

import re
import subprocess

from emu.node.proxy import nftables
from emu.node.records import ClusterState, NodeState
from emu.node.services import Endpoint
from tests.unit.test_proxy_nftables import KUBE_PROXY_LINES
from tests.unit.test_proxy_packet_flow import service

T = "ip kube-proxy"
_ITEM = re.compile(r"(add|delete|flush) (table|chain|rule|set|map|element) ip kube-proxy ?(\S*)(.*)$")


class FakeTable:
    """`table ip kube-proxy` as nft keeps it: what `nft -f` does to it (failing where
    nft fails: a rule in a chain that does not exist, deleting what is not there),
    and its dump in kube-proxy's form. As a runner it takes the proxier's calls."""

    def __init__(self):
        self.chains: dict[str, list[str]] = {}
        self.specs: dict[str, str] = {}
        self.sets: dict[str, str] = {}
        self.elements: dict[str, dict[str, str]] = {}
        self.table = ""
        self.transactions: list[list[str]] = []

    def run(self, text: str) -> None:
        ops = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        self.transactions_before = self.transactions
        for line in ops:
            verb, kind, name, rest = _ITEM.match(line).groups()
            if kind == "table" and verb == "delete":
                self.__init__()
                self.transactions = self.transactions_before  # (kept)
            elif kind == "table":
                self.table = line
            elif kind == "chain":
                if verb == "add":
                    self.chains.setdefault(name, [])
                    if rest.strip():
                        self.specs[name] = rest.strip()
                elif verb == "flush":
                    self.chains[name].clear()
                else:
                    del self.chains[name]
                    self.specs.pop(name, None)
            elif kind == "rule":
                self.chains[name].append(rest.strip())
            elif kind in ("set", "map"):
                if verb == "add":
                    self.sets.setdefault(name, f"{kind} {T} {name}{rest}")
                    self.elements.setdefault(name, {})
                elif verb == "flush":
                    self.elements[name].clear()
                else:
                    del self.sets[name], self.elements[name]
            else:
                body = rest.strip()[2:-2]
                key = re.split(r" comment | : ", body)[0]
                if verb == "add":
                    self.elements[name].setdefault(key, body)
                else:
                    del self.elements[name][key]
        self.transactions.append(ops)

    def dump(self) -> list[str]:
        out = [self.table] if self.table else []
        out += [f"add {declaration}" for declaration in self.sets.values()]
        for chain, rules in self.chains.items():
            out.append(f"add chain {T} {chain}" + (f" {self.specs[chain]}" if chain in self.specs else ""))
            out += [f"add rule {T} {chain} {rule}" for rule in rules]
        for name, elements in self.elements.items():
            out += [f"add element {T} {name} {{ {body} }}" for body in elements.values()]
        return sorted(out)

    def __call__(self, argv, **kwargs):
        if argv[:2] == ["nft", "-f"]:
            self.run(kwargs["input"])
            return subprocess.CompletedProcess(argv, 0, "", "")
        if argv == ["nft", "list", "chains", "ip"]:
            listing = "".join(f"\tchain {chain} {{\n\t}}\n" for chain in self.chains)
        else:
            listing = "".join(f"\t{d.split()[0]} {d.split()[3]} {{\n\t}}\n" for d in self.sets.values())
        return subprocess.CompletedProcess(argv, 0, f"table ip kube-proxy {{\n{listing}}}\n" if self.table else "", "")


# kube-proxy's baseRules, and its services' chains as its expected dumps name them.
BASE = KUBE_PROXY_LINES[: KUBE_PROXY_LINES.index("add chain ip kube-proxy service-ULMVA6XW")].splitlines()
SERVICES = {  # name: (cluster IP, port, service chain hash, {endpoint IP: endpoint chain hash})
    "svc1": ("172.30.0.41", 80, "ULMVA6XW", {"10.0.1.1": "5TPGNJF2"}),
    "svc2": ("172.30.0.42", 8080, "MHHHYRWA", {"10.0.2.1": "7RVP4LUQ"}),
    "svc3": ("172.30.0.43", 80, "4AT6LBPK", {"10.0.3.1": "2OCDJSZQ", "10.0.3.2": "SWWHDC7X", "10.0.3.3": "TQ2QKHCZ"}),
    "svc4": ("172.30.0.44", 80, "LAUZTJTB", {"10.0.4.1": "WAHRBT2B"}),
}


def _path(name: str) -> str:
    n = name[-1]
    return f"ns{n}/{name}/tcp/p{SERVICES[name][1]}"


def _chain(name: str) -> str:
    return f"service-{SERVICES[name][2]}-{_path(name)}"


def _ep_chain(name: str, ip: str) -> str:
    return f"endpoint-{SERVICES[name][3][ip]}-{_path(name)}__{ip}/{SERVICES[name][1]}"


def expected(ready: dict[str, list[str]], without_endpoints=(), empty_chains=()) -> list[str]:
    """kube-proxy's dump: its base rules, each service with endpoints as it writes it,
    the services without any as no-endpoint-services elements, and the chains
    flushed but not yet deleted."""
    out = list(BASE)
    for name, ips in ready.items():
        ip, port, _, _ = SERVICES[name]
        svc = _chain(name)
        out += [f"add element {T} cluster-ips {{ {ip} }}",
                f"add element {T} service-ips {{ {ip} . tcp . {port} : goto {svc} }}",
                f"add chain {T} {svc}",
                f"add rule {T} {svc} ip daddr {ip} ip saddr != 10.0.0.0/8 jump mark-for-masquerade"]  # fmt: skip
        picks = " , ".join(f"{i} : goto {_ep_chain(name, ep)}" for i, ep in enumerate(ips))
        out.append(f"add rule {T} {svc} numgen random mod {len(ips)} vmap {{ {picks} }}")
        for ep in ips:
            chain = _ep_chain(name, ep)
            out += [f"add chain {T} {chain}", f"add rule {T} {chain} ip saddr {ep} jump mark-for-masquerade",
                    f"add rule {T} {chain} meta l4proto tcp dnat to {ep}:{port}"]  # fmt: skip
    for name in without_endpoints:
        ip, port, _, _ = SERVICES[name]
        out += [f"add element {T} cluster-ips {{ {ip} }}",
                f'add element {T} no-endpoint-services {{ {ip} . tcp . {port} comment "ns{name[-1]}/{name}:p{port}" '
                ": goto reject-chain }"]  # fmt: skip
    out += [f"add chain {T} {chain}" for chain in empty_chains]
    return sorted(out)


class Syncer:
    """kube-proxy's test proxier: services and endpoints as the test sets them, a sync
    through the proxier seam as the agent makes it (render with a cache, apply)."""

    def __init__(self):
        self.table = FakeTable()
        self.run = self.table  # the runner the proxier is given
        self.proxy = nftables.NftablesProxier()
        self.previous = None
        self.cache: dict = {}
        self.services: dict[str, list[str] | None] = {}  # name -> endpoint IPs (None: no slice)

    def sync(self) -> int:
        """One sync; returns how many operations its (last) transaction had."""
        node = NodeState("test-node", "worker", {}, "10.0.1.0/24", "192.168.0.2", "c")
        state = ClusterState("t", "t", "192.168.0.0/24", {"podSubnet": "10.0.0.0/8",
                             "serviceSubnet": "172.30.0.0/16"}, [node])  # fmt: skip
        endpoints = {}
        for name, ips in self.services.items():
            ip, port, _, _ = SERVICES[name]
            made = service(f"ns{name[-1]}", name, {"clusterIP": ip, "port": {"name": f"p{port}", "port": port}})
            state.services[made.key] = made
            endpoints[made.key] = {f"p{port}": [Endpoint(ep, port, None, None) for ep in ips or ()]}
        rules = self.proxy.render(state, "test-node", endpoints, cache=self.cache)
        before = len(self.table.transactions)
        self.proxy.apply(self.run, rules, self.previous)
        self.previous = rules
        # The main transaction (emu sends none when it would be empty), not the deletion of stale chains.
        made = [ops for ops in self.table.transactions[before:] if not all(op.startswith("delete chain") for op in ops)]
        return len(made[-1]) if made else 0

    def age_stale_chains(self) -> None:
        self.previous.stale = {chain: since - 2 for chain, since in self.previous.stale.items()}


def test_partial_syncs_are_kube_proxys():
    s = Syncer()
    s.services = {"svc1": ["10.0.1.1"], "svc2": ["10.0.2.1"]}
    s.sync()
    assert s.table.dump() == expected({"svc1": ["10.0.1.1"], "svc2": ["10.0.2.1"]})

    s.services["svc3"] = ["10.0.3.1"]  # a new service and its endpoints
    assert s.sync() == 10  # 2 elements; 2 chains added and flushed, 2 rules each
    assert s.table.dump() == expected({"svc1": ["10.0.1.1"], "svc2": ["10.0.2.1"], "svc3": ["10.0.3.1"]})

    del s.services["svc2"]  # its chains are flushed, not deleted yet
    assert s.sync() == 4  # 2 elements deleted, 2 chains flushed
    gone = [_chain("svc2"), _ep_chain("svc2", "10.0.2.1")]
    assert s.table.dump() == expected({"svc1": ["10.0.1.1"], "svc3": ["10.0.3.1"]}, empty_chains=gone)
    assert s.sync() == 2  # (within the second, a sync flushes them again, as kube-proxy's does)

    s.age_stale_chains()  # over a second later: deleted, in a transaction of their own
    assert s.sync() == 0
    assert s.table.transactions[-1] == [f"delete chain {T} {chain}" for chain in sorted(gone)]
    assert s.table.dump() == expected({"svc1": ["10.0.1.1"], "svc3": ["10.0.3.1"]})

    s.services["svc4"] = None  # a service without endpoints, then its endpoints
    assert s.sync() == 2
    assert s.table.dump() == expected({"svc1": ["10.0.1.1"], "svc3": ["10.0.3.1"]}, without_endpoints=["svc4"])
    s.services["svc4"] = ["10.0.4.1"]
    assert s.sync() == 10
    three = {"svc1": ["10.0.1.1"], "svc3": ["10.0.3.1"], "svc4": ["10.0.4.1"]}
    assert s.table.dump() == expected(three)

    s.services["svc3"] = ["10.0.3.2"]  # an endpoint changes: the old endpoint chain stays, flushed
    assert s.sync() == 9
    three["svc3"] = ["10.0.3.2"]
    assert s.table.dump() == expected(three, empty_chains=[_ep_chain("svc3", "10.0.3.1")])

    s.age_stale_chains()
    s.services["svc3"] = ["10.0.3.2", "10.0.3.3"]  # an endpoint added
    assert s.sync() == 12
    three["svc3"] = ["10.0.3.2", "10.0.3.3"]
    assert s.table.dump() == expected(three)

    s.services["svc3"] = []  # no endpoints left: its chains flushed
    assert s.sync() == 5
    svc3_chains = {_chain("svc3"), _ep_chain("svc3", "10.0.3.2"), _ep_chain("svc3", "10.0.3.3")}
    assert set(s.previous.stale) == svc3_chains
    assert s.table.dump() == expected({"svc1": ["10.0.1.1"], "svc4": ["10.0.4.1"]}, without_endpoints=["svc3"],
                                      empty_chains=sorted(svc3_chains))  # fmt: skip
    s.services["svc3"] = ["10.0.3.2", "10.0.3.3"]  # back at once: its chains are filled again, not stale
    assert s.sync() == 14
    assert s.previous.stale == {}
    assert s.table.dump() == expected(three)

    s.services["svc3"] = []  # emptied, and back after its chains were deleted
    s.sync()
    s.age_stale_chains()
    s.services["svc3"] = ["10.0.3.2", "10.0.3.3"]
    s.sync()
    assert s.table.dump() == expected(three)
    assert s.sync() == 0  # nothing changed: nothing written
    assert s.table.dump() == expected(three)


def test_a_full_sync_keeps_the_table_and_flushes_what_no_service_uses():
    """kube-proxy's full sync does not replace the table (affinity entries and
    counters stay): it sets its fixed chains and maps up again, rewrites every
    service, and flushes the service chains it finds that nothing uses."""
    s = Syncer()
    s.services = {"svc1": ["10.0.1.1"], "svc2": ["10.0.2.1"]}
    s.sync()
    first = s.table.transactions[-1]
    assert first.count(f"add chain {T} filter-input") == 1 and f"delete chain {T} filter-input" in first
    s.services = {"svc1": ["10.0.1.1"]}
    s.previous = None  # the agent lost track (a failed write, a check that found rules missing)
    s.sync()
    full = s.table.transactions[-1]
    assert "delete table" not in "\n".join(full) and f"delete chain {T} filter-input" not in full  # once a proxier
    assert f"flush map {T} service-ips" in full and f"flush chain {T} {_chain('svc2')}" in full
    gone = [_chain("svc2"), _ep_chain("svc2", "10.0.2.1")]
    assert s.table.dump() == expected({"svc1": ["10.0.1.1"]}, empty_chains=gone)
    s.age_stale_chains()
    s.sync()
    assert s.table.dump() == expected({"svc1": ["10.0.1.1"]})


def test_stale_chains_go_between_syncs_too():
    """The agent's check between syncs deletes chains stale long enough (kube-proxy's
    periodic sync would), so an idle node does not keep them."""
    s = Syncer()
    s.services = {"svc1": ["10.0.1.1"], "svc2": ["10.0.2.1"]}
    s.sync()
    del s.services["svc2"]
    s.sync()
    s.age_stale_chains()
    s.proxy.lost(s.table, s.previous)
    assert s.previous.stale == {} and s.table.dump() == expected({"svc1": ["10.0.1.1"]})


def test_a_full_sync_the_kernel_refuses_replaces_the_table_whole():
    """The last resort: when nft refuses a full sync in kube-proxy's shape, the table
    is replaced whole (add, delete, everything) in one transaction."""
    s = Syncer()
    s.services = {"svc1": ["10.0.1.1"]}
    table = s.table

    def refusing(argv, **kwargs):
        if argv[:2] == ["nft", "-f"] and "flush map" in kwargs["input"]:
            return subprocess.CompletedProcess(argv, 1, "", "Error: Could not process rule: File exists")
        return table(argv, **kwargs)

    s.run = refusing
    s.sync()
    assert f"delete table {T}" in table.transactions[-1]
    assert table.dump() == expected({"svc1": ["10.0.1.1"]})
