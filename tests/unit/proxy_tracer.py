"""A packet tracer over emu's rendered kube-proxy rules, as kube-proxy's own
tests trace packets (pkg/proxy/iptables/proxier_test.go's iptablesTracer,
pkg/proxy/nftables/helpers_test.go's tracePacket): it evaluates the rule
shapes emu writes (not iptables or nft in general) for the first packet of a
connection and says where each path ends: an endpoint "IP:PORT", DROP, REJECT,
or ACCEPT (no service took it), and whether it is masqueraded. Random picks
(statistic, numgen) are followed every way.

A packet from one of the node's own addresses takes the OUTPUT hooks, any other
the PREROUTING ones; after DNAT, a destination that is a node address goes to
INPUT, any other to FORWARD, as in kube-proxy's tracers."""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Packet:
    source: str
    destination: str
    port: int
    protocol: str = "tcp"
    dnat: bool = False  # conntrack's DNAT state: a rule rewrote the destination


@dataclass(frozen=True)
class Path:
    dnat: str | None = None  # "IP:PORT"
    verdict: str | None = None  # DROP | REJECT | ACCEPT
    masquerade: bool = False
    done: bool = False  # ended (a verdict or DNAT), not returned from its chain


def _in(address: str, spec: str) -> bool:
    return ipaddress.IPv4Address(address) in ipaddress.IPv4Network(spec, strict=False)


def outcome(paths: list[Path]) -> tuple[str, bool | None]:
    """("IP:PORT, IP:PORT" | "DROP" | "REJECT" | "ACCEPT", masquerade: None where paths
    differ or the packet is refused), as kube-proxy's packet flow tests state them."""
    ends = sorted({p.verdict or p.dnat or "ACCEPT" for p in paths})
    masq = {p.masquerade for p in paths if not p.verdict}
    return ", ".join(ends), (masq.pop() if len(masq) == 1 else None)


def _after(packet: Packet, dnat: str | None) -> Packet:
    if dnat is None:
        return packet
    ip, port = dnat.split(":")
    return Packet(packet.source, ip, int(port), packet.protocol, True)


# ---- iptables -----------------------------------------------------------------


class IptablesTracer:
    """Over iptables.render's {table: {chain: [rules]}}, entered as the hooks of iptables.hook_rules."""

    def __init__(self, ruleset: dict, local: list[str]):
        self.tables = {t: {c: [shlex.split(r) for r in rules] for c, rules in chains.items()}
                       for t, chains in ruleset.items()}  # fmt: skip
        self.local = set(local)

    def trace(self, packet: Packet) -> list[Path]:
        out = []
        for path in self._walk("nat", "KUBE-SERVICES", 0, packet, Path()):
            if path.verdict:
                out.append(path)
                continue
            after = _after(packet, path.dnat)
            if packet.source in self.local:
                chains = ["KUBE-PROXY-FIREWALL", "KUBE-SERVICES", "KUBE-FIREWALL"]
            elif after.destination in self.local:
                chains = ["KUBE-PROXY-FIREWALL", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL"]
            else:
                chains = ["KUBE-PROXY-FIREWALL", "KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"]
            refused = next((p.verdict for chain in chains for p in self._walk("filter", chain, 0, after, Path())
                            if p.verdict in ("DROP", "REJECT")), None)  # fmt: skip
            out.append(Path(path.dnat, refused, path.masquerade and not refused, True))
        return out

    def _walk(self, table: str, chain: str, start: int, packet: Packet, path: Path) -> list[Path]:
        rules = self.tables[table].get(chain, [])
        for index in range(start, len(rules)):
            words = rules[index]
            matched, random = self._matches(words, packet)
            if not matched:
                continue
            target = words[words.index("-j") + 1] if "-j" in words else None
            if target is None:
                continue  # a comment only
            if target == "KUBE-MARK-MASQ":
                path = replace(path, masquerade=True)
                continue
            if target == "DNAT":
                ends = [replace(path, dnat=words[words.index("--to-destination") + 1], done=True)]
            elif target in ("DROP", "REJECT", "ACCEPT"):
                ends = [replace(path, verdict=target, done=True)]
            elif target == "RETURN":
                return [path]
            else:
                ends = []
                for sub in self._walk(table, target, 0, packet, path):
                    ends += [sub] if sub.done else self._walk(table, chain, index + 1, packet, sub)
            if random:  # -m statistic: the packet may also go on past this rule
                ends += self._walk(table, chain, index + 1, packet, path)
            return ends
        return [path]

    def _matches(self, words: list[str], packet: Packet) -> tuple[bool, bool]:
        i, negate, random = 0, False, False
        while i < len(words) and words[i] != "-j":
            word, value = words[i], words[i + 1] if i + 1 < len(words) else ""
            if word == "!":
                negate, i = True, i + 1
                continue
            if word == "--comment" or word == "-m":
                i += 2
                continue
            if word == "--mode":  # -m statistic --mode random --probability P
                random, i = True, i + 4
                continue
            if word in ("--rcheck", "--mark"):
                return False, False  # affinity seen, marks: not a first packet's
            checks = {
                # A first packet is NEW, and DNAT once a rule rewrote its destination.
                "--ctstate": lambda: bool(set(value.split(",")) & ({"NEW", "DNAT"} if packet.dnat else {"NEW"})),
                "-p": lambda: value == packet.protocol,
                "-d": lambda: _in(packet.destination, value),
                "-s": lambda: _in(packet.source, value),
                "--dport": lambda: int(value) == packet.port,
                "--dst-type": lambda: (packet.destination in self.local) == (value == "LOCAL"),
                "--src-type": lambda: (packet.source in self.local) == (value == "LOCAL"),
            }
            if word in checks:
                if checks[word]() == negate:
                    return False, False
                i += 2
            else:
                i += 1
            negate = False
        return True, random


# ---- nftables -----------------------------------------------------------------


class NftablesTracer:
    """Over nftables.render's Ruleset: its chains, sets and verdict maps."""

    def __init__(self, rules, local: list[str]):
        self.chains = {name: [r.split(' comment "')[0] for r in chain] for name, chain in rules.chains().items()}
        self.maps: dict[str, dict[str, str]] = {}
        for (name, key), value in rules.elements().items():
            self.maps.setdefault(name, {})[key] = value.rsplit(": ", 1)[-1].strip() if ": " in value else ""
        for line in rules.setup:  # the node's own address in nodeport-ips
            found = re.match(r"add element \S+ \S+ (\S+) \{ (.*) \}$", line)
            if found:
                self.maps.setdefault(found.group(1), {})[found.group(2)] = ""
        self.local = set(local)

    def trace(self, packet: Packet) -> list[Path]:
        first = self._walk("firewall-check", 0, packet, Path())
        if any(p.verdict for p in first):
            return [p for p in first if p.verdict]
        out = []
        for path in self._walk("services", 0, packet, Path()):
            if path.verdict:
                out.append(path)
                continue
            after = _after(packet, path.dnat)
            if packet.source not in self.local and after.destination in self.local:
                chains = ["nodeport-endpoints-check", "service-endpoints-check"]
            else:
                chains = ["service-endpoints-check", "cluster-ips-check"]
            refused = next((p.verdict for chain in chains for p in self._walk(chain, 0, after, Path()) if p.verdict),
                           None)  # fmt: skip
            out.append(Path(path.dnat, refused, path.masquerade and not refused, True))
        return out

    def _walk(self, chain: str, start: int, packet: Packet, path: Path) -> list[Path]:
        rules = self.chains.get(chain, [])
        for index in range(start, len(rules)):
            rule = rules[index]
            verdicts = self._verdicts(rule, packet)
            if verdicts is None:
                continue
            if len(verdicts) > 1:  # numgen: one of them, every one followed
                return [e for v in verdicts for e in self._walk(v.partition(" ")[2], 0, packet, path)]
            ends: list[Path] = []
            for verdict in verdicts:
                kind, _, target = verdict.partition(" ")
                if verdict == "jump mark-for-masquerade":
                    ends.append(replace(path, masquerade=True))
                elif kind == "jump":
                    for sub in self._walk(target, 0, packet, path):
                        ends.append(sub)
                elif kind == "goto":
                    if target == "reject-chain":
                        return [replace(path, verdict="REJECT", done=True)]
                    return self._walk(target, 0, packet, path)  # ends where the chain ends
                elif kind == "dnat":
                    ends.append(replace(path, dnat=target, done=True))
                elif kind in ("drop", "reject"):
                    ends.append(replace(path, verdict=kind.upper(), done=True))
            out = []
            for end in ends:  # a jump that returned goes on after this rule
                out += [end] if end.done else self._walk(chain, index + 1, packet, end)
            return out
        return [path]

    def _verdicts(self, rule: str, packet: Packet) -> list[str] | None:
        """What the rule does to the packet (None: it does not match; [] : nothing, go on)."""
        condition, _, action = rule.partition(" vmap ")
        if action.startswith("@"):  # a verdict map lookup
            if condition.startswith("ip daddr @") and not self._member(packet.destination, condition.split()[2][1:]):
                return None
            if condition.startswith("fib daddr type local"):  # ... ip daddr != 127.0.0.0/8 (no localhost)
                if packet.destination not in self.local or _in(packet.destination, "127.0.0.0/8"):
                    return None
            key = f"{packet.protocol} . {packet.port}"
            key = key if condition.endswith("meta l4proto . th dport") and "daddr ." not in condition \
                else f"{packet.destination} . {key}"  # fmt: skip
            verdict = self.maps.get(action[1:], {}).get(key)
            return None if verdict is None else [verdict]
        if rule.startswith("numgen random"):
            return re.findall(r"\d+ : (goto \S+)", rule)
        if rule.startswith("update @"):
            return []
        words = rule.split()
        i = 0
        while i < len(words):
            if words[i] == "ip" and words[i + 1] in ("saddr", "daddr"):
                address = packet.source if words[i + 1] == "saddr" else packet.destination
                j = i + 2
                negate = words[j] == "!="
                j += negate
                if words[j].startswith("@"):
                    ok = self._member(address, words[j][1:])
                    j += 1
                elif words[j] == "{":
                    end = words.index("}", j)
                    ok = any(_in(address, w) for w in words[j + 1:end] if w != ",")
                    j = end + 1
                else:
                    ok, j = _in(address, words[j]), j + 1
                if ok == negate:
                    return None
                i = j
            elif words[i] == "fib":  # fib saddr|daddr type local
                if (packet.source if words[i + 1] == "saddr" else packet.destination) not in self.local:
                    return None
                i += 4
            elif words[i] in ("tcp", "udp", "sctp") and words[i + 1] == "dport":
                if words[i] != packet.protocol or int(words[i + 2]) != packet.port:
                    return None
                i += 3
            elif words[i:i + 2] == ["meta", "l4proto"]:
                if words[i + 2] != packet.protocol:
                    return None
                i += 3
            else:
                break
        rest = " ".join(words[i:])
        if rest.startswith("dnat to "):
            return [f"dnat {rest.split()[2]}"]
        return [rest]

    def _member(self, address: str, name: str) -> bool:
        if name.startswith("affinity-"):
            return False  # no client seen yet
        return address in self.maps.get(name, {})
