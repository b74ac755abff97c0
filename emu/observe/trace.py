"""`emu trace`: send one real probe and show each hop the kernel took it through.

Flow: resolve SRC and DEST against the cluster's state (pure) -> start the
kernel's tracing in every node (emu/node/tracer.py: nft monitor trace, and
iptables-legacy's TRACE through nfnetlink_log) -> send the probe from the
source -> stop and collect -> assemble the hops (pure) -> render text or JSON.

Nothing here re-implements a rule: every hop, rule and address shown is one
the kernel reported for the probe's own packets.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import shlex
from dataclasses import asdict, dataclass, field
from importlib import resources

from emu.control.cluster import pick_container, pod_exec_argv
from emu.errors import EmuError
from emu.node.records import ClusterState, PodState, ServicePortState, ServiceState
from emu.node.tracer import PROBE_DSCP

TRACE_DIR = "/run/emu/trace"
TRACER = "/opt/emu/trace/tracer.py"
# Source ports for probes: below the kernel's ephemeral range (32768-60999) and the
# NodePort range (30000-32767), so no other socket on the way holds one.
PROBE_PORTS = range(20000, 29999)
MAX_WATCHED_PODS = 24


@dataclass
class Endpoint:
    """One end of a trace."""

    kind: str  # pod | external | node | service | address
    label: str  # what the user is shown: "pod default/client", "service default/echo"
    ip: str
    port: int | None = None
    node: str | None = None  # the node it lives on (pod, node)
    container: str | None = None  # the Docker container that sends (source)
    netns: str | None = None  # the pod's namespace (source)
    pod_container: str | None = None  # the pod's container the probe runs as (source)


@dataclass
class TracePlan:
    """What to send and where to watch."""

    source: Endpoint
    destination: Endpoint
    proto: str
    sport: int
    watch: dict[str, list[str]] = field(default_factory=dict)  # node -> pod namespaces to watch
    dns_name: str = "kubernetes.default.svc.cluster.local"


# ---- resolving SRC and DEST ------------------------------------------------------


def _find_pod(state: ClusterState, reference: str) -> PodState | None:
    if reference in state.pods:
        return state.pods[reference]
    for pod in state.pods.values():
        if reference in (pod.netns, pod.key) or (
            "/" not in reference and pod.namespace == "default" and pod.name == reference
        ):
            return pod
    return None


def _find_service(state: ClusterState, reference: str) -> ServiceState | None:
    """NAME (namespace default), NAMESPACE/NAME, or NAME.NAMESPACE[.svc[.ZONE]] as DNS names go."""
    if "/" in reference:
        return state.services.get(reference)
    parts = reference.rstrip(".").split(".")
    key = f"{parts[1]}/{parts[0]}" if len(parts) > 1 else f"default/{parts[0]}"
    return state.services.get(key)


def resolve_source(
    state: ClusterState, reference: str, externals: dict[str, str], container: str | None = None
) -> Endpoint:
    """A pod (NAME, NAMESPACE/NAME), `node/NAME` (the node's root namespace) or
    `external/NAME` (a container made by `emu external NAME`)."""
    kind, _, name = reference.partition("/")
    if kind == "node" and name:
        node = next((n for n in state.nodes if n.name == name), None)
        if node is None:
            raise EmuError(
                f"no node '{name}' in cluster '{state.name}' (nodes: {', '.join(n.name for n in state.nodes)})"
            )
        return Endpoint("node", f"node {node.name}", node.node_ip, node=node.name, container=node.container)
    if kind == "external":
        if not externals:
            raise EmuError(f"cluster '{state.name}' has no external container; start one with `emu external internet`")
        if not name and len(externals) == 1:
            name = next(iter(externals))
        if name not in externals:
            raise EmuError(
                f"no external container '{name}' (known: {', '.join(sorted(externals))}); "
                f"start one with `emu external {name or 'NAME'}`"
            )
        return Endpoint("external", f"external {name}", externals[name], container=f"{state.name}-{name}")
    pod = _find_pod(state, reference)
    if pod is None:
        known = ", ".join(sorted(state.pods)) or "none"
        raise EmuError(
            f"no pod '{reference}' in cluster '{state.name}' (pods: {known}); "
            "SRC is a pod (NAME or NAMESPACE/NAME), node/NAME or external/NAME"
        )
    chosen = pick_container(pod, container)["name"]
    label = f"container {chosen} of pod {pod.key}" if container else f"pod {pod.key}"
    return Endpoint(
        "pod",
        label,
        pod.ip,
        node=pod.node,
        container=state.node(pod.node).container,
        netns=pod.netns,
        pod_container=chosen,
    )


def _split_port(text: str) -> tuple[str, int | None]:
    host, colon, port = text.rpartition(":")
    if not colon:
        return text, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise EmuError(f"'{text}': the port after ':' must be a number from 1 to 65535")
    return host, int(port)


def _service_port(service: ServiceState, port: int | None, proto: str, node_port: bool = False) -> ServicePortState:
    ports = [p for p in service.ports if p.protocol.lower() == proto]
    if port is not None:
        ports = [p for p in ports if (p.node_port if node_port else p.port) == port]
    if not ports:
        offered = ", ".join(f"{p.node_port if node_port else p.port}/{p.protocol}" for p in service.ports) or "none"
        raise EmuError(
            f"service {service.key} has no {proto.upper()} port {port or ''} "
            f"({'node ports' if node_port else 'ports'}: {offered}); pick one of those"
        )
    return ports[0]


def resolve_destination(state: ClusterState, text: str, proto: str, source: Endpoint) -> Endpoint:
    """DEST[:PORT]: a pod, a service (NAME, NAMESPACE/NAME, NAME.NAMESPACE[.svc...]),
    localhost (the source pod itself), a node (node/NAME) or any IPv4 address: a
    pod IP, a cluster IP, a node IP with a NodePort, a LoadBalancer address, or
    an address outside the cluster."""
    host, port = _split_port(text)
    if host in ("localhost", "127.0.0.1"):
        if source.kind != "pod":
            raise EmuError("localhost is the source pod's own: trace it from a pod (container to container)")
        return Endpoint("pod", f"localhost in {source.label}", "127.0.0.1", port or 8080, node=source.node)
    if host.startswith("node/"):
        node = next((n for n in state.nodes if n.name == host[5:]), None)
        if node is None:
            raise EmuError(f"no node '{host[5:]}' in cluster '{state.name}'")
        host = node.node_ip
    try:
        address = str(ipaddress.IPv4Address(host))
    except ValueError:
        address = None
    if address is None:
        pod = _find_pod(state, host)
        if pod is not None:
            return Endpoint("pod", f"pod {pod.key}", pod.ip, port or _pod_port(pod, proto), node=pod.node)
        service = _find_service(state, host)
        if service is None:
            raise EmuError(
                f"'{host}' is neither a pod, a service nor an IPv4 address in cluster '{state.name}' "
                f"(services: {', '.join(sorted(state.services))})"
            )
        if not service.proxied:
            raise EmuError(
                f"service {service.key} has no cluster IP ({'headless' if service.headless else service.type}); "
                "trace one of its pods instead"
            )
        chosen = _service_port(service, port, proto)
        return Endpoint(
            "service", f"service {service.key} port {chosen.name or chosen.port}", service.cluster_ip, chosen.port
        )
    return _destination_by_address(state, address, port, proto)


def _pod_port(pod: PodState, proto: str) -> int:
    for declared in pod.container_ports():
        if declared.get("protocol", "TCP").lower() == proto:
            return int(declared["containerPort"])
    raise EmuError(f"pod {pod.key} declares no {proto.upper()} port; give one as DEST:PORT")


def _destination_by_address(state: ClusterState, address: str, port: int | None, proto: str) -> Endpoint:
    for pod in state.pods.values():
        if pod.ip == address:
            return Endpoint("pod", f"pod {pod.key}", address, port or _pod_port(pod, proto), node=pod.node)
    for service in state.services.values():
        if service.cluster_ip == address:
            chosen = _service_port(service, port, proto)
            return Endpoint("service", f"service {service.key} port {chosen.name or chosen.port}", address, chosen.port)
        if service.load_balancer_ip == address:
            chosen = _service_port(service, port, proto)
            return Endpoint("service", f"LoadBalancer {address} of service {service.key}", address, chosen.port)
    for node in state.nodes:
        if node.node_ip == address:
            for service in state.services.values():
                if port is not None and any(p.node_port == port and p.protocol.lower() == proto for p in service.ports):
                    return Endpoint(
                        "service",
                        f"NodePort {port} of service {service.key} on node {node.name}",
                        address,
                        port,
                        node=node.name,
                    )
            if port is None:
                raise EmuError(f"{address} is node {node.name}; give a port (a NodePort, e.g. {address}:30080)")
            return Endpoint("node", f"node {node.name}", address, port, node=node.name)
    if port is None:
        raise EmuError(f"give a port for {address}, e.g. {address}:8080")
    return Endpoint("address", f"{address} (outside the cluster)", address, port)


def plan_trace(state: ClusterState, source: Endpoint, destination: Endpoint, proto: str, sport: int) -> TracePlan:
    """Which pod namespaces to watch on each node: the source pod's, and every
    pod the destination may be (a pod, or the pods its service selects)."""
    watch: dict[str, set[str]] = {node.name: set() for node in state.nodes}
    if source.kind == "pod":
        watch[source.node].add(source.netns)
    candidates = [p for p in state.pods.values() if p.ip == destination.ip]
    for service in state.services.values():
        if destination.ip in (service.cluster_ip, service.load_balancer_ip) or (
            destination.kind == "service"
            and destination.node
            and any(p.node_port == destination.port for p in service.ports)
        ):
            candidates += [p for p in state.pods.values() if service.selects(p)]
    for pod in sorted(candidates, key=lambda p: p.key)[:MAX_WATCHED_PODS]:
        watch[pod.node].add(pod.netns)
    zone = state.net.dns_domain
    return TracePlan(
        source, destination, proto, sport, {n: sorted(v) for n, v in watch.items()}, f"kubernetes.default.svc.{zone}"
    )


def probe_port() -> int:
    return random.SystemRandom().choice(PROBE_PORTS)


# ---- running it -------------------------------------------------------------------


def tracer_source() -> str:
    return resources.files("emu.node").joinpath("tracer.py").read_text()


def _last_json(output: str, where: str) -> dict:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    raise EmuError(f"{where}: the tracer gave no answer: {output.strip()[-400:] or 'nothing'}")


def run_trace(cluster, state: ClusterState, plan: TracePlan) -> dict:
    """Start tracing in every node, send the probe, stop and collect. Returns
    {"probe": report, "nodes": {node: tracer result}}."""
    runtime = cluster.runtime
    tracer = {TRACER: tracer_source()}

    def start(node):
        runtime.put_files(node.container, tracer)
        argv = [
            "python3",
            TRACER,
            "start",
            TRACE_DIR,
            "--port",
            str(plan.sport),
            "--proto",
            plan.proto,
            "--netns",
            *plan.watch.get(node.name, []),
        ]
        return _last_json(runtime.exec(node.container, argv).output, f"node {node.name}")

    def stop(node):
        result = runtime.exec(node.container, ["python3", TRACER, "stop", TRACE_DIR])
        return _last_json(result.output, f"node {node.name}")

    started = runtime.parallel(start, state.nodes)
    failed = [f"node {n.name}: {r['error']}" for n, r in zip(state.nodes, started) if "error" in r]
    try:
        if failed:
            raise EmuError("could not start tracing: " + "; ".join(failed))
        report = send_probe(cluster, state, plan)
    finally:
        stopped = runtime.parallel(stop, state.nodes)
    warnings = [f"node {n.name}: {r['warning']}" for n, r in zip(state.nodes, started) if r.get("warning")]
    return {"probe": report, "nodes": {n.name: r for n, r in zip(state.nodes, stopped)}, "warnings": warnings}


def send_probe(cluster, state: ClusterState, plan: TracePlan) -> dict:
    source = plan.source
    argv = [
        "python3",
        TRACER,
        "probe",
        "--proto",
        plan.proto,
        "--dest",
        plan.destination.ip,
        "--port",
        str(plan.destination.port),
        "--sport",
        str(plan.sport),
        "--dns-name",
        plan.dns_name,
    ]
    if source.kind == "pod":
        pod = next(p for p in state.pods.values() if p.node == source.node and p.netns == source.netns)
        argv = pod_exec_argv(pod, argv, source.pod_container)
    else:
        cluster.runtime.put_files(source.container, {TRACER: tracer_source()})
    route = ["ip", "route", "get", plan.destination.ip]
    if source.kind == "pod":
        route = ["ip", "-n", source.netns, "route", "get", plan.destination.ip]
    script = f"{shlex.join(route)} 2>&1 | head -1; {shlex.join(argv)}"
    output = cluster.runtime.exec(source.container, ["sh", "-c", script]).output
    report = _last_json(output, source.label)
    first = output.strip().splitlines()[0] if output.strip() else ""
    report["route"] = _clean_route(first) if not first.startswith("{") else None
    return report


def _clean_route(text: str) -> str:
    return re.sub(r"\s+uid \d+.*$", "", " ".join(text.split()))


# ---- assembling the hops (pure) -----------------------------------------------------


def _addr(packet: dict, side: str) -> str:
    ip = packet.get(f"{side}addr", "?")
    port = packet.get(f"{side}port")
    return f"{ip}:{port}" if port is not None else ip


def _tuple(packet: dict) -> str:
    icmp = f" (icmp {packet['icmp']})" if packet.get("icmp") else ""
    return f"{_addr(packet, 's')} -> {_addr(packet, 'd')}{icmp}"


def _direction(packet: dict) -> str:
    """The probe's packets carry its DSCP; everything else traced is a reply."""
    return "request" if packet.get("dscp") == PROBE_DSCP else "reply"


def legacy_rule_text(iptables: dict, rule: dict) -> tuple[str, str]:
    """(rule text, verdict) of a TRACE line from the node's own iptables-save."""
    chain = iptables.get(rule["table"], {}).get(rule["chain"], {"policy": "-", "rules": []})
    if rule["type"] == "policy":
        return f"policy {chain['policy']}", chain["policy"].lower()
    if rule["type"] == "return":
        return "end of chain: return", "return"
    rules = chain["rules"]
    text = rules[rule["num"] - 1] if 0 < rule["num"] <= len(rules) else "(rule changed since)"
    target = re.search(r"-j (\S+)(.*)$", text)
    verdict = target.group(1) if target else "continue"
    if verdict in ("DNAT", "SNAT"):
        to = re.search(r"--to-(?:destination|source) (\S+)", text)
        verdict += f" to {to.group(1)}" if to else ""
    return text, verdict


def _pod_by_netns(state: ClusterState, node: str, netns: str) -> PodState | None:
    return next((p for p in state.pods.values() if p.node == node and p.netns == netns), None)


def _port_owner(state: ClusterState, node: str, interface: str | None) -> str | None:
    if not interface:
        return None
    for pod in state.pods.values():
        if pod.node == node and pod.host_veth == interface:
            return pod.key
    return None


def assemble(state: ClusterState, plan: TracePlan, collected: dict) -> dict:
    """The trace as data: source, destination, what the probe got, the hops of
    the first packet each way, and the connection tracking entries."""
    places = []
    for node_name, result in collected["nodes"].items():
        iptables = result.get("iptables", {})
        for netns, blocks in result.get("namespaces", {}).items():
            pod = _pod_by_netns(state, node_name, netns) if netns else None
            place = {
                "place": f"pod {pod.key}" if pod else f"node {node_name}",
                "node": node_name,
                "kind": "pod" if netns else "node",
            }
            for direction in ("request", "reply"):
                chosen = [b for b in blocks if _direction(b["packet"]) == direction]
                if not chosen:
                    continue
                first_id = chosen[0]["packet"].get("id")
                chosen = [b for b in chosen if b["packet"].get("id") == first_id]
                hops = _hops(state, node_name, chosen, iptables, direction)
                places.append({**place, "direction": direction, "hops": hops})
    result = {
        "source": asdict(plan.source),
        "destination": asdict(plan.destination),
        "proto": plan.proto,
        "sport": plan.sport,
        "probe": collected["probe"],
        "warnings": collected.get("warnings", []),
    }
    for direction in ("request", "reply"):
        chosen = [p for p in places if p["direction"] == direction]
        chosen.sort(key=lambda p: (-p["hops"][0]["ttl"], _origin_rank(p, plan, direction)))
        result[direction] = [{k: v for k, v in p.items() if k != "direction"} for p in chosen]
    result["conntrack"] = [
        entry
        for node_name, data in collected["nodes"].items()
        for entry in parse_conntrack(node_name, data.get("conntrack", ""))
    ]
    result["outcome"] = outcome(result)
    return result


def _origin_rank(place: dict, plan: TracePlan, direction: str) -> int:
    if place["hops"][0]["hook"] == "output":
        return 0
    if place["kind"] == "node":
        return 1
    return 2


def _hops(state: ClusterState, node: str, blocks: list[dict], iptables: dict, direction: str) -> list[dict]:
    hops: list[dict] = []
    for block in blocks:
        hook = block.get("hook") or "?"
        if not hops or hops[-1]["hook"] != hook:
            hops.append(
                {
                    "hook": hook,
                    "in": None,
                    "out": None,
                    "in_port": None,
                    "out_port": None,
                    "ttl": block["packet"].get("ttl", 0),
                    "before": _tuple(block["packet"]),
                    "after": None,
                    "route": None,
                    "rules": [],
                    "verdict": "accept",
                    "bridged": False,
                }
            )
        hop = hops[-1]
        packet = block["packet"]
        hop["after"] = _tuple(packet)
        if block["family"] == "bridge":
            hop["in_port"] = hop["in_port"] or packet.get("iif")
            hop["out_port"] = hop["out_port"] or packet.get("oif")
            hop["bridged"] = hop["bridged"] or hook == "forward"  # from one port of cni0 to another, not routed
        else:
            hop["in"] = hop["in"] or packet.get("iif")
            hop["out"] = packet.get("oif") or hop["out"]  # the last: DNAT in output may route it anew
            hop["in_port"] = hop["in_port"] or packet.get("physin")
            hop["out_port"] = hop["out_port"] or packet.get("physout")
        if block.get("route") and hop["route"] is None:
            hop["route"] = _clean_route(block["route"])
        if block.get("backend") == "iptables-legacy":
            for rule in block["rules"]:
                text, verdict = legacy_rule_text(iptables, rule)
                hop["rules"].append(
                    {
                        "backend": "iptables-legacy",
                        "table": rule["table"],
                        "chain": rule["chain"],
                        "rule": rule["num"] if rule["type"] == "rule" else rule["type"],
                        "text": text,
                        "verdict": verdict,
                    }
                )
                if rule["type"] == "rule" and verdict in ("DROP", "REJECT"):
                    hop["verdict"] = verdict.lower()
        else:
            for rule in block["rules"]:
                hop["rules"].append(
                    {
                        "backend": "nftables",
                        "table": f"{block['family']} {rule['table']}",
                        "chain": rule["chain"],
                        "rule": None,
                        "text": rule["text"],
                        "verdict": nft_verdict(rule["text"], rule["verdict"]),
                    }
                )
            if any(r["verdict"] == "REJECT" for r in hop["rules"]):
                hop["verdict"] = "reject"
            elif block.get("verdict") == "drop":
                hop["verdict"] = "drop"
    for hop in hops:
        if hop["bridged"]:
            hop["route"] = None  # the bridge forwarded it; the kernel made no routing decision
        hop["in_pod"] = _port_owner(state, node, hop["in_port"])
        hop["out_pod"] = _port_owner(state, node, hop["out_port"])
        hop["nat"] = _nat(hop["before"], hop["after"], direction)
    return hops


NFT_ACTIONS = (
    (re.compile(r"\bdnat (?:ip )?to (\S+)"), "DNAT to {}"),
    (re.compile(r"\bsnat (?:ip )?to (\S+)"), "SNAT to {}"),
    (re.compile(r"\bmasquerade\b"), "MASQUERADE"),
    (re.compile(r"\breject\b"), "REJECT"),
)


def nft_verdict(text: str, verdict: str) -> str:
    """An nf_tables rule's verdict, named by what it did where the trace says only
    accept or drop (NAT statements accept, reject drops), as iptables' targets are."""
    for pattern, label in NFT_ACTIONS:
        found = pattern.search(text)
        if found:
            return label.format(*found.groups())
    return verdict


def _nat(before: str, after: str | None, direction: str) -> str | None:
    if not after:
        return None
    before, after = (re.sub(r" \(icmp [^)]*\)$", "", text) for text in (before, after))  # addresses only
    if before == after:
        return None
    (src_a, dst_a), (src_b, dst_b) = before.split(" -> "), after.split(" -> ")
    changes = []
    if dst_a != dst_b:
        changes.append(f"{'DNAT' if direction == 'request' else 'reply destination restored'} {dst_a} -> {dst_b}")
    if src_a != src_b:
        changes.append(f"{'SNAT' if direction == 'request' else 'reply source restored'} {src_a} -> {src_b}")
    return "; ".join(changes)


CONNTRACK = re.compile(
    r"^(?P<proto>tcp|udp)\s+\d+\s+\d+\s+(?:(?P<state>[A-Z_]+)\s+)?src=(?P<src>\S+) dst=(?P<dst>\S+) sport=(?P<sport>\d+) "
    r"dport=(?P<dport>\d+) .*?src=(?P<rsrc>\S+) dst=(?P<rdst>\S+) sport=(?P<rsport>\d+) dport=(?P<rdport>\d+)"
)


def parse_conntrack(node: str, text: str) -> list[dict]:
    """`conntrack -L` lines: the original tuple, the reply tuple, and what NAT they say was done."""
    entries = []
    for line in text.splitlines():
        found = CONNTRACK.match(line.strip())
        if not found:
            continue
        entry = {
            "node": node,
            "proto": found["proto"],
            "state": found["state"] or "",
            "original": f"{found['src']}:{found['sport']} -> {found['dst']}:{found['dport']}",
            "reply": f"{found['rsrc']}:{found['rsport']} -> {found['rdst']}:{found['rdport']}",
            "dnat": None,
            "snat": None,
        }
        if (found["rsrc"], found["rsport"]) != (found["dst"], found["dport"]):
            entry["dnat"] = f"{found['rsrc']}:{found['rsport']}"
        if (found["rdst"], found["rdport"]) != (found["src"], found["sport"]):
            entry["snat"] = f"{found['rdst']}:{found['rdport']}"
        entries.append(entry)
    return entries


def outcome(trace: dict) -> dict:
    """Where the first packet ended, as the kernel reported it, and what the client got."""
    probe = trace["probe"]
    stopped = None
    for place in trace["request"]:
        for hop in place["hops"]:
            if hop["verdict"] in ("drop", "reject"):
                rule = next((r for r in reversed(hop["rules"]) if r["verdict"].lower() in ("drop", "reject")), None)
                stopped = {"place": place["place"], "hook": hop["hook"], "verdict": hop["verdict"], "rule": rule}
                break
        if stopped:
            break
    delivered = [
        p["place"] for p in trace["request"] if p["kind"] == "pod" and any(h["hook"] == "input" for h in p["hops"])
    ]
    endpoint = next((e["dnat"] for e in trace["conntrack"] if e["dnat"]), None)
    snat = next((e["snat"] for e in trace["conntrack"] if e["snat"]), None)
    return {
        "result": probe.get("result"),
        "reply": probe.get("reply"),
        "stopped": stopped,
        "delivered_to": delivered[-1] if delivered else None,
        "dnat_to": endpoint,
        "snat_to": snat,
    }


# ---- rendering (pure) --------------------------------------------------------------


# Lines that only pass the packet on: left out of the text, kept in the JSON.
PASSING = ("end of chain: return", "policy ACCEPT")


def render_text(trace: dict) -> str:
    """The trace for a person: where the probe went, what NAT did, and each hop
    of the first packet each way with the rules that matched there."""
    source, destination, probe = trace["source"], trace["destination"], trace["probe"]
    sent_from = f"{source['ip']}:{trace['sport']}"  # a connection refused has no local address to report
    lines = [
        f"trace {trace['proto']} from {source['label']} ({probe.get('local') or sent_from}) "
        f"to {destination['label']} ({destination['ip']}:{destination['port']})"
    ]
    if probe.get("route"):
        lines.append(f"  source route: {probe['route']}")
    result = trace["outcome"]
    got = probe.get("result", "?")
    if probe.get("reply"):
        got += f", reply {probe['reply']!r}"
    if probe.get("error"):
        got += f" ({probe['error']})"
    lines.append(f"  result: {got}")
    if result["dnat_to"]:
        lines.append(f"  conntrack: DNAT to {result['dnat_to']}")
    if result["snat_to"]:
        lines.append(f"  conntrack: SNAT, the reply comes back to {result['snat_to']}")
    for warning in trace.get("warnings", []):
        lines.append(f"  warning: {warning}")
    if result["stopped"]:
        stop = result["stopped"]
        rule = stop["rule"]
        why = f" by {rule['table']} {rule['chain']} rule {rule['rule']}: {rule['text']}" if rule else ""
        lines.append(f"  stopped: {stop['verdict']} in {stop['place']} ({stop['hook']}){why}")
    for direction, title in (("request", "first packet"), ("reply", "first reply")):
        lines.append("")
        lines.append(f"{title} ({direction}):")
        if not trace[direction]:
            lines.append("  (not seen in any node or traced pod)")
        step = 0
        width = max([len(p["place"]) for p in trace["request"] + trace["reply"]] or [0])
        for place in trace[direction]:
            for hop in place["hops"]:
                step += 1
                lines.append(f"  {step:>2}. {place['place']:<{width}}  {hop['hook']:<11} {_interfaces(hop)}")
                lines.append(f"      {hop['before']}" + (f"  =>  {hop['after']}" if hop["nat"] else ""))
                if hop["nat"]:
                    lines.append(f"      {hop['nat']}")
                if hop["route"]:
                    lines.append(f"      route: {hop['route']}")
                for rule in hop["rules"]:
                    if rule["text"] in PASSING:  # shown by --format json
                        continue
                    if rule["backend"] == "iptables-legacy":
                        where = f"iptables {rule['table']} {rule['chain']}" + (
                            f" #{rule['rule']}" if isinstance(rule["rule"], int) else ""
                        )
                    else:
                        where = f"nft {rule['table']} {rule['chain']}"
                    lines.append(f"      {where}: {rule['text'] or rule['verdict']}")
                if hop["verdict"] != "accept":
                    lines.append(f"      verdict: {hop['verdict'].upper()}")
    return "\n".join(lines) + "\n"


def _interfaces(hop: dict) -> str:
    def side(interface, port, pod):
        if not interface and not port:
            return None
        text = interface or port
        if port and port != interface:
            text += f" (port {port}" + (f" of {pod}" if pod else "") + ")"
        elif pod:
            text += f" (of {pod})"
        return text

    incoming = side(hop["in"], hop["in_port"], hop["in_pod"])
    outgoing = side(hop["out"], hop["out_port"], hop["out_pod"])
    if incoming and outgoing:
        return f"in {incoming} -> out {outgoing}"
    return f"in {incoming}" if incoming else f"out {outgoing}" if outgoing else ""


def plan_for(
    cluster, state: ClusterState, source_text: str, destination_text: str, proto: str, container: str | None = None
) -> TracePlan:
    """Resolve SRC and DEST on a running cluster and choose the probe's source port."""
    externals = {}
    for record in cluster.runtime.cluster_containers(cluster.name):
        if not record.is_node and record.running:
            name = record.name.removeprefix(f"{cluster.name}-")
            externals[name] = cluster.runtime.container_ip(record.name, state.network)
    source = resolve_source(state, source_text, externals, container)
    destination = resolve_destination(state, destination_text, proto, source)
    return plan_trace(state, source, destination, proto, probe_port())
