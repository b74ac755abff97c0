"""A connectivity matrix: from each of these pods to each of those targets, on
these ports and protocols, reachable or not, and why not.

Printed as Kubernetes' NetworkPolicy e2e tests print their reachability
(test/e2e/network/netpol: a truth table a row per source, a column per
target, "." reachable, "X" not, "?" not probed), with the expected, observed
and comparison tables and a line per wrong cell giving what the probe saw
("connection refused", "timed out after 2 s", "name not resolved", ...).

Every source probes all its targets at once, in one exec: a small standard
library script (PROBE) that connects over TCP, or sends a datagram over UDP and
waits for an answer (netexec's UDP port answers any datagram), from inside the
pod, so names resolve with the pod's resolv.conf and packets leave from its
eth0 through its node's rules.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from emu.control.cluster import Cluster, find_node, find_pod
from emu.errors import EmuError
from emu.node.records import ClusterState

# Runs inside a pod (python3 of the node, standard library only).
# argv: JSON [[host, port, protocol], ...] and the timeout in seconds.
# Prints JSON [[reachable, reason], ...] in the same order.
PROBE = r"""
import errno, json, socket, sys, threading
targets, timeout = json.loads(sys.argv[1]), float(sys.argv[2])
results = [None] * len(targets)
def probe(i, host, port, protocol):
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    try:
        address = socket.getaddrinfo(host, port, socket.AF_INET, kind)[0][4]
    except socket.gaierror as error:
        results[i] = [False, "name not resolved (%s)" % error.strerror]
        return
    sock = socket.socket(socket.AF_INET, kind)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
        if protocol == "UDP":
            sock.send(b"hostname")
            reply = sock.recv(512).decode(errors="replace")
            results[i] = [True, "%s:%d answered %r" % (address[0], address[1], reply[:40])]
        else:
            results[i] = [True, "connected to %s:%d" % address]
    except socket.timeout:
        if protocol == "UDP":
            results[i] = [False, "no UDP answer from %s:%d within %g s" % (address[0], address[1], timeout)]
        else:
            results[i] = [False, "timed out after %g s connecting to %s:%d" % (timeout, address[0], address[1])]
    except ConnectionRefusedError:
        what = "port unreachable (ICMP)" if protocol == "UDP" else "connection refused"
        results[i] = [False, "%s from %s:%d" % (what, address[0], address[1])]
    except OSError as error:
        name = errno.errorcode.get(error.errno, "?")
        results[i] = [False, "%s (%s) to %s:%d" % (error.strerror, name, address[0], address[1])]
    finally:
        sock.close()
threads = [threading.Thread(target=probe, args=(i, *t)) for i, t in enumerate(targets)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(results))
"""

TARGET = re.compile(r"^(?P<host>.+?)(?::(?P<port>\d+))?(?:/(?P<protocol>tcp|udp))?$", re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    """Where a probe goes: `host` (a pod, a service, a node, a name or an address; see address_of) on
    `port` over `protocol`; labelled HOST:PORT/PROTOCOL in tables."""

    host: str
    port: int
    protocol: str = "TCP"

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}/{self.protocol}"

    def __str__(self) -> str:
        return self.label


def parse_targets(targets, ports=(), protocols=("TCP",)) -> list[Target]:
    """Targets from strings "HOST", "HOST:PORT" or "HOST:PORT/udp" (or Target).
    One without a port gets each of `ports`, one without a protocol each of
    `protocols`, in that order."""
    parsed: list[Target] = []
    for target in targets:
        if isinstance(target, Target):
            parsed.append(target)
            continue
        match = TARGET.match(str(target).strip())
        if not match:
            raise EmuError(f"target {target!r}: write HOST, HOST:PORT or HOST:PORT/udp")
        host = match["host"]
        target_ports = [int(match["port"])] if match["port"] else list(ports)
        if not target_ports:
            raise EmuError(f"target {target!r} has no port: write HOST:PORT, or pass ports=[...]")
        target_protocols = [match["protocol"].upper()] if match["protocol"] else [p.upper() for p in protocols]
        for port in target_ports:
            if not 0 < port < 65536:
                raise EmuError(f"target {target!r}: port {port} is not 1-65535")
            for protocol in target_protocols:
                if protocol not in ("TCP", "UDP"):
                    raise EmuError(f"target {target!r}: protocol {protocol} is not TCP or UDP")
                parsed.append(Target(host, port, protocol))
    return parsed


def address_of(state: ClusterState, host: str) -> str:
    """What a probe connects to for `host`, written as kubectl names things:
    `pod/NAME` (or pod/NAMESPACE/NAME) is the pod's IP, `svc/NAME` the service's
    DNS name NAME.NAMESPACE, `node/NAME` the node's IP. A bare NAME or
    NAMESPACE/NAME is the service of that name if there is one (what the name
    means to a pod's resolver), else the pod; anything else (an address, a DNS
    name) is used as written."""
    kind, _, rest = host.partition("/")
    if kind == "pod" and rest:
        return find_pod(state, rest).ip
    if kind in ("svc", "service") and rest:
        key = rest if "/" in rest else f"default/{rest}"
        if key not in state.services:
            raise EmuError(f"target {host}: no service {key} (services: {', '.join(sorted(state.services))})")
        return f"{state.services[key].name}.{state.services[key].namespace}"
    if kind == "node" and rest:
        return find_node(state, rest).node_ip
    key = host if "/" in host else f"default/{host}"
    if key in state.services:
        return f"{state.services[key].name}.{state.services[key].namespace}"
    try:
        return find_pod(state, host).ip
    except EmuError:
        return host


@dataclass
class Reachability:
    """Observed (and expected) reachability from sources to targets."""

    sources: list[str]
    targets: list[str]
    observed: dict[tuple[str, str], tuple[bool, str]] = field(default_factory=dict)
    expected: dict[tuple[str, str], bool] = field(default_factory=dict)

    def reachable(self, source: str, target: str) -> bool:
        return self.observed[self._key(source, target)][0]

    def reason(self, source: str, target: str) -> str:
        """What the probe saw: the answer, or why there was none."""
        return self.observed[self._key(source, target)][1]

    def _key(self, source, target) -> tuple[str, str]:
        """The cell of `source` (its label, or a pod's bare name) and `target` (its
        label, or HOST or HOST:PORT when only one column matches)."""
        source, target = getattr(source, "key", str(source)), str(target)
        sources = [s for s in self.sources if s == source] or [s for s in self.sources if s.endswith(f"/{source}")]
        targets = [t for t in self.targets if t == target] or [
            t for t in self.targets if t.startswith(f"{target}:") or t.startswith(f"{target}/")
        ]
        if len(sources) != 1 or len(targets) != 1:
            raise KeyError(f"no one cell {source} -> {target} (sources: {self.sources}; targets: {self.targets})")
        return sources[0], targets[0]

    def expect(self, reachable: bool, source: str | None = None, target: str | None = None) -> "Reachability":
        """Expect `reachable` from `source` (every source if None) to `target`
        (every target if None); later calls override earlier ones."""
        sources = [self._key(source, self.targets[0])[0]] if source is not None else self.sources
        targets = [self._key(self.sources[0], target)[1]] if target is not None else self.targets
        for s in sources:
            for t in targets:
                self.expected[(s, t)] = reachable
        return self

    def table(self, which: str = "observed") -> str:
        """The truth table `which` ("observed", "expected" or "comparison"; in the
        comparison "." means as expected)."""
        def mark(s: str, t: str) -> str:
            if which == "observed":
                value = self.observed.get((s, t), (None, ""))[0]
            elif which == "expected":
                value = self.expected.get((s, t))
            elif which == "comparison":
                if (s, t) not in self.observed or (s, t) not in self.expected:
                    return "?"
                value = self.observed[(s, t)][0] == self.expected[(s, t)]
            else:
                raise ValueError(f"which is observed, expected or comparison, not {which!r}")
            return "?" if value is None else "." if value else "X"

        rows = [["-", *self.targets]] + [[s, *(mark(s, t) for t in self.targets)] for s in self.sources]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)

    def wrong(self) -> list[tuple[str, str]]:
        """Cells whose observation differs from the expectation."""
        return [
            (s, t)
            for s in self.sources
            for t in self.targets
            if (s, t) in self.expected and self.observed.get((s, t), (None,))[0] != self.expected[(s, t)]
        ]

    def report(self) -> str:
        """The summary line, the tables, and why each wrong cell went as it did."""
        if not self.expected:
            return "observed:\n\n" + self.table("observed")
        wrong = self.wrong()
        checked = sum(1 for key in self.expected if key in self.observed)
        lines = [
            f"reachability: correct:{checked - len(wrong)}, incorrect:{len(wrong)}, result={str(not wrong).lower()}",
            "",
        ]
        for which in ("expected", "observed", "comparison"):
            lines += [f"{which}:", "", self.table(which), ""]
        for s, t in wrong:
            want = "reachable" if self.expected[(s, t)] else "unreachable"
            got = "reachable" if self.observed[(s, t)][0] else "unreachable"
            lines.append(f"{s} -> {t}: expected {want}, observed {got}: {self.observed[(s, t)][1]}")
        return "\n".join(lines).rstrip()

    def assert_expected(self) -> None:
        """Raise AssertionError with the report unless every cell is as expected."""
        __tracebackhide__ = True
        if not self.expected:
            raise AssertionError("nothing expected yet: call expect(...) first")
        if self.wrong():
            raise AssertionError("\n" + self.report())

    def __str__(self) -> str:
        return self.report()


def connectivity(
    cluster: Cluster,
    sources,
    targets,
    ports=(),
    protocols=("TCP",),
    timeout: float = 2.0,
    expect: bool | None = None,
) -> Reachability:
    """Probe from every source (a pod's name, NAMESPACE/NAME, node/NAME, or a Pod
    or Node handle) to every target (see parse_targets), all sources at once. Returns a
    Reachability; `expect=True` (or False) sets every cell's expectation."""
    from emu.testing.lab import Node

    state = cluster.state()
    parsed = parse_targets(targets, ports, protocols)
    if not parsed:
        raise EmuError("no targets to probe")
    wire = json.dumps([[address_of(state, t.host), t.port, t.protocol] for t in parsed])
    argv = ["python3", "-c", PROBE, wire, str(timeout)]

    runners = []
    for source in sources:
        if isinstance(source, str) and source.startswith("node/"):
            source = Node(cluster, find_node(state, source.removeprefix("node/")))
        if isinstance(source, Node):
            runners.append((source.key, lambda a, n=source.name: cluster.node_exec(n, a)))
        else:
            found = find_pod(state, getattr(source, "key", str(source)))
            runners.append((found.key, lambda a, k=found.key: cluster.runtime.exec(*cluster.pod_command(k, a, state=state))))

    def run(runner) -> list:
        label, execute = runner
        result = execute(argv)
        try:
            return json.loads(result.output.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise EmuError(f"probing from {label} failed (exit {result.exit_code}): {result.output.strip()}") from None

    outcomes = cluster.runtime.parallel(run, runners)
    matrix = Reachability([label for label, _ in runners], [t.label for t in parsed])
    for (label, _), outcome in zip(runners, outcomes):
        for target, (ok, reason) in zip(parsed, outcome):
            matrix.observed[(label, target.label)] = (bool(ok), reason)
    if expect is not None:
        matrix.expect(expect)
    return matrix
