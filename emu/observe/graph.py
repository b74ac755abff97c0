"""`emu graph`: the live cluster drawn as the article draws it.

Nodes with their eth0 address and pod CIDR, the cni0 bridge, each pod with
its veth pair and IP and the containers inside it, the routes between nodes,
services with their cluster IPs pointing at their endpoints, the DNS pod,
LoadBalancer addresses and the outside (the cluster's Docker network and the
containers on it).

The picture is made of the state and of what the nodes actually hold: one
exec a node lists its links, addresses and routes and those of each pod
namespace (OBSERVE); anything the state expects but the node lacks is drawn
as missing. `build` is pure, and so are the renderers: the same cluster gives
the same bytes (golden files in tests/unit/golden/graph/).

Formats: mermaid and dot (text a tool lays out: GitHub, mermaid-cli,
Graphviz's `dot -Tsvg`), svg and drawio (laid out here, in the article's
arrangement: nodes side by side, pods above their bridge, eth0 on the network
below, services above), so neither needs anything installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from emu.node import reconcile
from emu.errors import EmuError
from emu.node.records import ClusterState

FORMATS = ("mermaid", "dot", "svg", "drawio")

# One exec a node: reconcile's look (bridge, namespaces, processes), then
# links, addresses and routes of the node and of every pod namespace.
OBSERVE = (
    reconcile.OBSERVE
    + """\
echo "@@addr"; ip -j addr show
echo "@@route"; ip -j route show
for ns in $(ls /run/netns 2>/dev/null); do
  echo "@@ns-addr $ns"; ip -n "$ns" -j addr show
  echo "@@ns-route $ns"; ip -n "$ns" -j route show
done
true
"""
)


@dataclass
class NodeFacts:
    """What one node holds, from OBSERVE's output."""

    seen: reconcile.Observed
    links: dict[str, dict] = field(default_factory=dict)  # name -> {"up", "master", "addresses"}
    routes: list[dict] = field(default_factory=list)
    pod_links: dict[str, dict[str, dict]] = field(default_factory=dict)  # netns -> links
    pod_routes: dict[str, list[dict]] = field(default_factory=dict)

    @classmethod
    def parse(cls, output: str) -> NodeFacts:
        sections: list[tuple[str, list[str]]] = [("", [])]
        for line in output.splitlines():
            if line.startswith("@@"):
                sections.append((line[2:].strip(), []))
            else:
                sections[-1][1].append(line)
        facts = cls(reconcile.Observed.parse("\n".join(sections[0][1])))
        for title, body in sections[1:]:
            kind, _, netns = title.partition(" ")
            try:
                data = json.loads("\n".join(body).strip() or "[]")
            except ValueError:
                data = []
            if kind == "addr":
                facts.links = _links(data)
            elif kind == "route":
                facts.routes = data if isinstance(data, list) else []
            elif kind == "ns-addr":
                facts.pod_links[netns] = _links(data)
            elif kind == "ns-route":
                facts.pod_routes[netns] = data if isinstance(data, list) else []
        return facts


def _links(data: list) -> dict[str, dict]:
    links = {}
    for link in data if isinstance(data, list) else []:
        links[link.get("ifname", "?")] = {
            "up": "UP" in link.get("flags", []),
            "master": link.get("master"),
            "addresses": [
                f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("family") == "inet"
            ],
        }
    return links


# ---- the graph (pure) ------------------------------------------------------------


@dataclass
class Part:
    """An interface or route as drawn: its label and whether the node has it."""

    label: str
    status: str = "ok"  # ok | missing | down

    @property
    def text(self) -> str:
        return self.label if self.status == "ok" else f"{self.label} ({self.status})"


@dataclass
class PodView:
    key: str
    ip: str
    veth: Part
    eth0: Part
    containers: list[Part]
    dns: bool = False
    missing: bool = False  # its namespace is gone


@dataclass
class NodeView:
    name: str
    role: str
    node_ip: str
    pod_cidr: str
    eth0: Part
    bridge: Part
    pods: list[PodView]
    routes: list[Part]
    load_balancers: list[str]  # LoadBalancer addresses this node's eth0 holds


@dataclass
class ServiceView:
    key: str
    type: str
    cluster_ip: str
    ports: list[str]
    load_balancer_ip: str | None
    owner: str | None  # the node answering for the LoadBalancer address
    endpoints: list[tuple[str, str]]  # (pod key, or the node IP outside the pod network; ip:port)
    dns: bool = False


@dataclass
class Graph:
    cluster: str
    network: str
    subnet: str
    nodes: list[NodeView]
    services: list[ServiceView]
    externals: list[tuple[str, str]]  # (name, ip) on the cluster network


def _part(label: str, link: dict | None, address: str | None = None) -> Part:
    if link is None:
        return Part(label, "missing")
    if address and address not in link["addresses"]:
        return Part(label, "missing address")
    return Part(label, "ok" if link["up"] else "down")


def _process(seen: reconcile.Observed, container: str) -> str:
    if container in seen.alive:
        return "ok"
    code = seen.ended.get(container)
    return f"exited {code}" if code is not None else "not running"


def build(state: ClusterState, endpoints: dict, facts: dict[str, NodeFacts], externals: list[tuple[str, str]]) -> Graph:
    """The graph of a cluster from its state, its services' ready endpoints
    ({service key: {port name: ["ip:port", ...]}}, as the agents report them) and
    what each node holds (facts by node name; a node with no facts is drawn
    from the state alone, everything marked missing)."""
    dns_pods = {
        p.key for p in state.pods.values() if p.namespace == "kube-system" and p.labels.get("k8s-app") == "kube-dns"
    }
    pool = set()
    for service in state.services.values():
        if service.load_balancer_ip:
            pool.add(service.load_balancer_ip)
    nodes = []
    for node in state.nodes:
        fact = facts.get(node.name) or NodeFacts(reconcile.Observed())
        prefix = node.pod_cidr.split("/")[1]
        eth0 = _part(f"eth0 {node.node_ip}", fact.links.get("eth0"), None)
        if fact.links.get("eth0") and not any(
            a.startswith(node.node_ip + "/") for a in fact.links["eth0"]["addresses"]
        ):
            eth0 = Part(eth0.label, "missing address")
        bridge = _part(f"cni0 {node.gateway}/{prefix}", fact.links.get("cni0"), f"{node.gateway}/{prefix}")
        routes = []
        for other in state.nodes:
            if other.name == node.name:
                continue
            found = any(r.get("dst") == other.pod_cidr and r.get("gateway") == other.node_ip for r in fact.routes)
            routes.append(Part(f"{other.pod_cidr} via {other.node_ip}", "ok" if found else "missing"))
        pods = []
        for pod in sorted(state.pods_on(node.name), key=lambda p: p.key):
            inside = fact.pod_links.get(pod.netns)
            veth_link = fact.links.get(pod.host_veth)
            veth = _part(pod.host_veth, veth_link)
            if veth_link is not None and veth_link.get("master") != "cni0":
                veth = Part(pod.host_veth, "not on cni0")
            eth0_pod = _part(f"eth0 {pod.ip}", inside.get("eth0") if inside else None, f"{pod.ip}/{prefix}")
            containers = [Part(c["name"], _process(fact.seen, f"{pod.netns}/{c['name']}")) for c in pod.containers]
            pods.append(PodView(pod.key, pod.ip, veth, eth0_pod, containers, pod.key in dns_pods, inside is None))
        held = sorted(
            a.split("/")[0] for a in (fact.links.get("eth0") or {}).get("addresses", []) if a.split("/")[0] in pool
        )
        nodes.append(NodeView(node.name, node.role, node.node_ip, node.pod_cidr, eth0, bridge, pods, routes, held))
    pod_by_ip = {p.ip: p.key for p in state.pods.values()}
    holders = {address: node.name for node in nodes for address in node.load_balancers}
    # On several hosts an overlay carries no gratuitous ARP, so the agents route
    # each address to the node holding it instead: the route names the holder.
    by_ip = {node.node_ip: node.name for node in state.nodes}
    for fact in facts.values():
        for route in fact.routes:
            address = str(route.get("dst", "")).removesuffix("/32")
            if address in pool and route.get("gateway") in by_ip:
                holders.setdefault(address, by_ip[route["gateway"]])
    services = []
    for key in sorted(state.services):
        service = state.services[key]
        ports = [
            f"{p.port}:{p.node_port}/{p.protocol}" if p.node_port else f"{p.port}/{p.protocol}" for p in service.ports
        ]
        addresses = sorted({a for port in service.ports for a in endpoints.get(key, {}).get(port.name, [])})
        found = [(pod_by_ip.get(a.rpartition(":")[0], a.rpartition(":")[0]), a) for a in addresses]
        lb = service.load_balancer_ip
        if lb and lb not in holders:
            lb = f"{lb} (held by no node)"
        cluster_ip = service.cluster_ip or (f"ExternalName {service.external_name}" if service.external_name else "")
        services.append(
            ServiceView(
                key,
                service.type,
                cluster_ip,
                ports,
                lb,
                holders.get(service.load_balancer_ip or ""),
                found,
                key == "kube-system/kube-dns",
            )
        )
    return Graph(state.name, state.network, state.network_subnet, nodes, services, sorted(externals))


def observe(cluster) -> Graph:
    """The graph of a running cluster: its state, endpoints and one exec a node."""
    state = cluster.state()
    outputs = cluster.runtime.parallel(
        lambda node: cluster.runtime.exec(node.container, ["sh", "-c", OBSERVE]).output, state.nodes
    )
    facts = {node.name: NodeFacts.parse(output) for node, output in zip(state.nodes, outputs)}
    externals = []
    for record in cluster.runtime.cluster_containers(cluster.name):
        if not record.is_node and record.running:
            externals.append((record.name, cluster.runtime.container_ip(record.name, state.network)))
    return build(state, cluster.endpoints(state), facts, externals)


def render(graph: Graph, fmt: str) -> str:
    if fmt not in FORMATS:
        raise EmuError(f"unknown graph format '{fmt}'; use one of {', '.join(FORMATS)}")
    return {"mermaid": mermaid, "dot": dot, "svg": svg, "drawio": drawio}[fmt](graph)


def _id(*parts: str) -> str:
    return "_".join("".join(c if c.isalnum() else "_" for c in part) for part in parts)


# ---- mermaid -------------------------------------------------------------------------


_EDGE = " --- "


def _m(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def mermaid(graph: Graph) -> str:
    lines = ["flowchart TB"]
    missing: list[str] = []
    missing_links: list[int] = []  # mermaid styles links by their index

    def note(node_id: str, part: Part) -> None:
        if part.status != "ok":
            missing.append(node_id)

    for service in graph.services:
        sid = _id("svc", service.key)
        label = f"service {service.key}<br/>{service.type} {service.cluster_ip}<br/>{' '.join(service.ports)}"
        if service.load_balancer_ip:
            label += f"<br/>LoadBalancer {service.load_balancer_ip}"
        lines.append(f"  {sid}{{{{{_m(label)}}}}}")
    for node in graph.nodes:
        nid = _id("node", node.name)
        lines.append(f"  subgraph {nid}[{_m(f'node {node.name} ({node.role}) pod CIDR {node.pod_cidr}')}]")
        lines.append("    direction TB")
        for pod in node.pods:
            pid = _id("pod", pod.key)
            title = f"{'DNS ' if pod.dns else ''}pod {pod.key} {pod.ip}" + (
                " (namespace missing)" if pod.missing else ""
            )
            lines.append(f"    subgraph {pid}[{_m(title)}]")
            for container in pod.containers:
                cid = _id("ctr", pod.key, container.label)
                lines.append(f"      {cid}[{_m('container ' + container.text)}]")
                note(cid, container)
            lines.append(f"      {_id('eth', pod.key)}[{_m(pod.eth0.text)}]")
            note(_id("eth", pod.key), pod.eth0)
            lines.append("    end")
            lines.append(f"    {_id('veth', pod.key)}[{_m('veth ' + pod.veth.text)}]")
            note(_id("veth", pod.key), pod.veth)
        lines.append(f"    {_id('cni0', node.name)}[{_m('bridge ' + node.bridge.text)}]")
        note(_id("cni0", node.name), node.bridge)
        eth0 = node.eth0.text + "".join(f" + LB {a}" for a in node.load_balancers)
        lines.append(f"    {_id('eth0', node.name)}[{_m(eth0)}]")
        note(_id("eth0", node.name), node.eth0)
        lines.append("  end")
    lines.append(f"  {_id('net', graph.network)}[({_m(f'network {graph.network} {graph.subnet}')})]")
    for name, ip in graph.externals:
        lines.append(f"  {_id('ext', name)}>{_m(f'external {name} {ip}')}]")
        lines.append(f"  {_id('ext', name)} --- {_id('net', graph.network)}")
    for node in graph.nodes:
        for pod in node.pods:
            lines.append(f"  {_id('eth', pod.key)} --- {_id('veth', pod.key)}")
            lines.append(f"  {_id('veth', pod.key)} --- {_id('cni0', node.name)}")
        lines.append(f"  {_id('cni0', node.name)} --- {_id('eth0', node.name)}")
        lines.append(f"  {_id('eth0', node.name)} --- {_id('net', graph.network)}")
    by_ip = {n.node_ip: n.name for n in graph.nodes}
    for node in graph.nodes:
        for route in node.routes:
            via = route.label.split(" via ")[1]
            target = _id("eth0", by_ip.get(via, via))
            if route.status != "ok":
                missing_links.append(sum(1 for line in lines if _EDGE in line or "-.-" in line))
            lines.append(f"  {_id('eth0', node.name)} -.->|{_m('route ' + route.text)}| {target}")
    for service in graph.services:
        sid = _id("svc", service.key)
        for pod_key, address in service.endpoints:
            target = _id("eth", pod_key) if "/" in pod_key else _id("eth0", by_ip.get(pod_key, pod_key))
            lines.append(f"  {sid} -.->|{_m(address)}| {target}")
        if service.owner:
            lines.append(f"  {_id('eth0', service.owner)} -.-|{_m('answers for ' + service.load_balancer_ip)}| {sid}")
    lines.append("  classDef missing stroke:#d00,stroke-width:2px,stroke-dasharray:4 3,color:#d00")
    lines.append("  classDef dns fill:#e8f0ff")
    if missing:
        lines.append(f"  class {','.join(missing)} missing")
    for index in missing_links:
        lines.append(f"  linkStyle {index} stroke:#d00,stroke-width:2px,color:#d00")
    dns = [_id("pod", p.key) for n in graph.nodes for p in n.pods if p.dns]
    if dns:
        lines.append(f"  class {','.join(dns)} dns")
    return "\n".join(lines) + "\n"


# ---- dot ---------------------------------------------------------------------------------


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_style(part: Part) -> str:
    return ', color="#d00000", fontcolor="#d00000", style="dashed"' if part.status != "ok" else ""


def dot(graph: Graph) -> str:
    lines = [
        f"digraph {_q(graph.cluster)} {{",
        '  graph [rankdir=TB, fontname="Helvetica", compound=true, newrank=true];',
        '  node [shape=box, style="rounded", fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9, arrowhead=none];',
    ]
    for service in graph.services:
        label = f"service {service.key}\\n{service.type} {service.cluster_ip}\\n{' '.join(service.ports)}"
        if service.load_balancer_ip:
            label += f"\\nLoadBalancer {service.load_balancer_ip}"
        lines.append(
            f'  {_id("svc", service.key)} [label="{label}", shape=hexagon, style=filled, fillcolor="#fff4d6"];'
        )
    for node in graph.nodes:
        lines.append(f"  subgraph cluster_{_id(node.name)} {{")
        lines.append(f"    label={_q(f'node {node.name} ({node.role})  pod CIDR {node.pod_cidr}')}; style=rounded;")
        for pod in node.pods:
            lines.append(f"    subgraph cluster_{_id('pod', pod.key)} {{")
            title = f"{'DNS ' if pod.dns else ''}pod {pod.key}" + (" (namespace missing)" if pod.missing else "")
            fill = ' style="rounded,filled"; fillcolor="#e8f0ff";' if pod.dns else ""
            lines.append(f"      label={_q(title)};{fill}")
            for container in pod.containers:
                lines.append(
                    f"      {_id('ctr', pod.key, container.label)} [label={_q('container ' + container.text)}{_dot_style(container)}];"
                )
            lines.append(f"      {_id('eth', pod.key)} [label={_q(pod.eth0.text)}{_dot_style(pod.eth0)}];")
            lines.append("    }")
            lines.append(
                f"    {_id('veth', pod.key)} [label={_q('veth ' + pod.veth.text)}, shape=cds{_dot_style(pod.veth)}];"
            )
        lines.append(
            f"    {_id('cni0', node.name)} [label={_q('bridge ' + node.bridge.text)}, shape=box3d{_dot_style(node.bridge)}];"
        )
        eth0 = node.eth0.text + "".join(f"\nLoadBalancer {a}" for a in node.load_balancers)
        lines.append(f"    {_id('eth0', node.name)} [label={_q(eth0)}{_dot_style(node.eth0)}];")
        lines.append("  }")
    lines.append(
        f"  {_id('net', graph.network)} [label={_q(f'network {graph.network} {graph.subnet}')}, shape=cylinder];"
    )
    for name, ip in graph.externals:
        lines.append(f"  {_id('ext', name)} [label={_q(f'external {name} {ip}')}, shape=component];")
        lines.append(f"  {_id('ext', name)} -> {_id('net', graph.network)};")
    by_ip = {n.node_ip: n.name for n in graph.nodes}
    for node in graph.nodes:
        for pod in node.pods:
            lines.append(f'  {_id("eth", pod.key)} -> {_id("veth", pod.key)} [label="veth pair"];')
            lines.append(f"  {_id('veth', pod.key)} -> {_id('cni0', node.name)};")
        lines.append(f"  {_id('cni0', node.name)} -> {_id('eth0', node.name)};")
        lines.append(f"  {_id('eth0', node.name)} -> {_id('net', graph.network)};")
    for node in graph.nodes:
        for route in node.routes:
            via = route.label.split(" via ")[1]
            lines.append(
                f"  {_id('eth0', node.name)} -> {_id('eth0', by_ip.get(via, via))} "
                f"[label={_q('route ' + route.text)}, style=dashed, arrowhead=normal, constraint=false{_dot_style(route)}];"
            )
    for service in graph.services:
        for pod_key, address in service.endpoints:
            target = _id("eth", pod_key) if "/" in pod_key else _id("eth0", by_ip.get(pod_key, pod_key))
            lines.append(
                f"  {_id('svc', service.key)} -> {target} [label={_q(address)}, style=dotted, arrowhead=normal];"
            )
        if service.owner:
            lines.append(
                f"  {_id('eth0', service.owner)} -> {_id('svc', service.key)} "
                f"[label={_q('answers for ' + service.load_balancer_ip)}, style=dotted, constraint=false];"
            )
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---- laid out: svg and drawio --------------------------------------------------------------

GAP, LINE = 20, 16
CHAR = 6.6  # the width of a character of the 11-pixel font, near enough
MAX_LISTED = 4  # endpoints listed in a service's box


def _width(texts: list[str], least: int = 190) -> int:
    return max([least] + [int(len(text) * CHAR) + 16 for text in texts])


@dataclass
class Box:
    id: str
    x: int
    y: int
    w: int
    h: int
    lines: list[str]
    kind: str  # node | pod | container | veth | bridge | eth0 | service | network | external | dns-pod
    status: str = "ok"
    parent: str | None = None
    capture: str = ""  # the `emu capture` command for this interface (an svg tooltip)


@dataclass
class Line:
    source: str
    target: str
    label: str = ""
    kind: str = "wire"  # wire | route | endpoint | lb
    status: str = "ok"


def layout(graph: Graph) -> tuple[list[Box], list[Line], int, int]:
    """Boxes and lines at fixed places: services on top, nodes side by side with
    pods over their bridge and eth0 at the bottom, the network below them."""
    boxes: list[Box] = []
    lines: list[Line] = []
    texts = {}
    for service in graph.services:
        text = [f"service {service.key}", f"{service.type} {service.cluster_ip}", " ".join(service.ports)]
        if service.load_balancer_ip:
            text.append(f"LoadBalancer {service.load_balancer_ip}")
        listed = [f"-> {address}" for _, address in service.endpoints]
        if len(listed) > MAX_LISTED:
            listed = listed[: MAX_LISTED - 1] + [f"... {len(listed) - MAX_LISTED + 1} more endpoints"]
        texts[service.key] = text + (listed or ["no ready endpoints"])
    service_h = max([len(t) for t in texts.values()] or [0]) * LINE + 10
    top = GAP
    x = GAP
    for service in graph.services:
        text = texts[service.key]
        width = _width(text, 170)
        boxes.append(
            Box(_id("svc", service.key), x, top, width, service_h, text, "dns-service" if service.dns else "service")
        )
        x += width + GAP
    width = x
    node_top = top + service_h + 3 * GAP
    x = GAP
    node_bottoms = []
    for node in graph.nodes:
        pods_h = max([2 * LINE + 12 + len(p.containers) * (LINE + 8) + LINE + 16 for p in node.pods] or [0])
        pod_w = {
            p.key: _width(
                [f"DNS pod {p.key}", f"IP {p.ip} (namespace missing)" if p.missing else ""]
                + [f"  container {c.text}" for c in p.containers]
            )
            for p in node.pods
        }
        route_text = [f"route {r.text}" for r in node.routes]
        node_w = max(
            sum(pod_w.values()) + GAP * (len(node.pods) + 1), _width(route_text + [node.bridge.text], 230) + 2 * GAP
        )
        y = node_top + 2 * LINE + 10
        node_id = _id("node", node.name)
        px = x + GAP
        for pod in node.pods:
            pod_width = pod_w[pod.key]
            pid = _id("pod", pod.key)
            title = [
                f"{'DNS ' if pod.dns else ''}pod {pod.key}",
                f"IP {pod.ip}" + (" (namespace missing)" if pod.missing else ""),
            ]
            boxes.append(
                Box(
                    pid,
                    px,
                    y,
                    pod_width,
                    pods_h,
                    title,
                    "dns-pod" if pod.dns else "pod",
                    "missing" if pod.missing else "ok",
                    node_id,
                )
            )
            cy = y + 2 * LINE + 10
            for container in pod.containers:
                boxes.append(
                    Box(
                        _id("ctr", pod.key, container.label),
                        px + 10,
                        cy,
                        pod_width - 20,
                        LINE + 4,
                        ["container " + container.text],
                        "container",
                        container.status,
                        pid,
                    )
                )
                cy += LINE + 8
            boxes.append(
                Box(
                    _id("eth", pod.key),
                    px + 30,
                    y + pods_h - LINE - 10,
                    pod_width - 60,
                    LINE + 4,
                    [pod.eth0.text],
                    "eth0",
                    pod.eth0.status,
                    pid,
                    f"emu capture --name {graph.cluster} {pod.key}",
                )
            )
            boxes.append(
                Box(
                    _id("veth", pod.key),
                    px + 30,
                    y + pods_h + GAP,
                    pod_width - 60,
                    LINE + 4,
                    ["veth " + pod.veth.text],
                    "veth",
                    pod.veth.status,
                    node_id,
                    f"emu capture --name {graph.cluster} node/{node.name}:{pod.veth.label}",
                )
            )
            lines.append(Line(_id("eth", pod.key), _id("veth", pod.key), "veth pair", "wire", pod.veth.status))
            lines.append(Line(_id("veth", pod.key), _id("cni0", node.name), "", "wire", pod.veth.status))
            px += pod_width + GAP
        bridge_y = y + pods_h + 2 * GAP + LINE + 4 + GAP
        boxes.append(
            Box(
                _id("cni0", node.name),
                x + GAP,
                bridge_y,
                node_w - 2 * GAP,
                LINE + 8,
                ["bridge " + node.bridge.text],
                "bridge",
                node.bridge.status,
                node_id,
                f"emu capture --name {graph.cluster} node/{node.name}:cni0",
            )
        )
        routes_y = bridge_y + LINE + 8 + GAP
        route_lines = route_text
        eth0_text = [node.eth0.text] + [f"LoadBalancer {a}" for a in node.load_balancers]
        eth0_y = routes_y + len(route_lines) * LINE + GAP
        boxes.append(
            Box(
                _id("routes", node.name),
                x + GAP,
                routes_y,
                node_w - 2 * GAP,
                max(len(route_lines), 1) * LINE,
                route_lines or ["(no other nodes)"],
                "routes",
                "missing" if any(r.status != "ok" for r in node.routes) else "ok",
                node_id,
            )
        )
        boxes.append(
            Box(
                _id("eth0", node.name),
                x + node_w // 2 - 80,
                eth0_y,
                160,
                len(eth0_text) * LINE + 8,
                eth0_text,
                "eth0",
                node.eth0.status,
                node_id,
                f"emu capture --name {graph.cluster} node/{node.name}:eth0",
            )
        )
        lines.append(Line(_id("cni0", node.name), _id("eth0", node.name)))
        node_h = eth0_y + len(eth0_text) * LINE + 8 + GAP - node_top
        boxes.insert(
            0,
            Box(
                node_id,
                x,
                node_top,
                node_w,
                node_h,
                [f"node {node.name} ({node.role})", f"pod CIDR {node.pod_cidr}"],
                "node",
            ),
        )
        node_bottoms.append(node_top + node_h)
        x += node_w + GAP
    width = max(width, x)
    network_y = max(node_bottoms or [node_top]) + 2 * GAP
    ex = GAP
    for name, ip in graph.externals:
        text = [f"external {name}", ip]
        boxes.append(
            Box(_id("ext", name), ex, network_y + LINE + 8 + 2 * GAP, _width(text), 2 * LINE + 8, text, "external")
        )
        lines.append(Line(_id("ext", name), _id("net", graph.network)))
        ex += _width(text) + GAP
    width = max(width, ex)
    boxes.append(
        Box(
            _id("net", graph.network),
            GAP,
            network_y,
            width - 2 * GAP,
            LINE + 8,
            [f"network {graph.network} {graph.subnet} (the nodes' eth0; outside the cluster)"],
            "network",
        )
    )
    for node in graph.nodes:
        lines.append(Line(_id("eth0", node.name), _id("net", graph.network)))
    by_ip = {n.node_ip: n.name for n in graph.nodes}
    for node in graph.nodes:
        for route in node.routes:
            via = route.label.split(" via ")[1]
            lines.append(
                Line(_id("eth0", node.name), _id("eth0", by_ip.get(via, via)), route.label, "route", route.status)
            )
    for service in graph.services:
        for pod_key, address in service.endpoints:
            target = _id("pod", pod_key) if "/" in pod_key else _id("eth0", by_ip.get(pod_key, pod_key))
            lines.append(Line(_id("svc", service.key), target, address, "endpoint"))
        if service.owner:
            lines.append(
                Line(
                    _id("eth0", service.owner), _id("svc", service.key), f"answers for {service.load_balancer_ip}", "lb"
                )
            )
    height = network_y + LINE + 8 + (3 * GAP + 2 * LINE + 8 if graph.externals else GAP)
    return boxes, lines, width, height


FILL = {
    "node": "#f7f7f7",
    "pod": "#ffffff",
    "dns-pod": "#e8f0ff",
    "container": "#eef7ee",
    "veth": "#fdf0e6",
    "bridge": "#fde2c8",
    "eth0": "#e6f2fd",
    "service": "#fff4d6",
    "dns-service": "#e8f0ff",
    "network": "#dfe8f0",
    "external": "#f0f0f0",
    "routes": "#f7f7f7",
}
STROKE = {"wire": "#555555", "route": "#1f6fb2", "endpoint": "#b8860b", "lb": "#7a4eb2"}


def _centre(box: Box, towards: Box) -> tuple[int, int]:
    """Where a line leaves a box: its top or bottom middle, towards the other box."""
    if towards.y + towards.h <= box.y:
        return box.x + box.w // 2, box.y
    if towards.y >= box.y + box.h:
        return box.x + box.w // 2, box.y + box.h
    return (box.x + box.w, box.y + box.h // 2) if towards.x > box.x else (box.x, box.y + box.h // 2)


def svg(graph: Graph) -> str:
    boxes, lines, width, height = layout(graph)
    by_id = {box.id: box for box in boxes}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="11">',
        f"<title>emu cluster {escape(graph.cluster)}</title>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
    ]
    for box in boxes:
        stroke = "#d00000" if box.status != "ok" else "#444444"
        dash = ' stroke-dasharray="5 3"' if box.status != "ok" else ""
        radius = 0 if box.kind in ("routes",) else 6
        out.append(
            f'<g id="{box.id}"><rect x="{box.x}" y="{box.y}" width="{box.w}" height="{box.h}" rx="{radius}" '
            f'fill="{FILL.get(box.kind, "#ffffff")}" stroke="{stroke if box.kind != "routes" else "none"}"{dash}/>'
        )
        if box.capture:  # hovering an interface shows how to capture on it
            out.append(f"<title>{escape(box.capture)}</title>")
        for index, text in enumerate(box.lines):
            weight = (
                ' font-weight="bold"'
                if index == 0 and box.kind in ("node", "pod", "dns-pod", "service", "dns-service")
                else ""
            )
            colour = ' fill="#d00000"' if box.status != "ok" and "(" in text else ""
            out.append(f'<text x="{box.x + 6}" y="{box.y + 13 + index * LINE}"{weight}{colour}>{escape(text)}</text>')
        out.append("</g>")
    drawn_routes: set[frozenset] = set()
    for line in lines:
        source, target = by_id[line.source], by_id.get(line.target)
        if target is None:
            continue
        if line.kind == "route":  # one arc a pair of nodes; red if either way lacks its route
            pair = frozenset((line.source, line.target))
            if pair in drawn_routes:
                continue
            drawn_routes.add(pair)
            back = [o for o in lines if o.kind == "route" and (o.source, o.target) == (line.target, line.source)]
            if any(o.status != "ok" for o in back):
                line = Line(line.source, line.target, line.label, "route", "missing")
        x1, y1 = _centre(source, target)
        x2, y2 = _centre(target, source)
        if target.kind == "network":  # straight down onto the network
            x2 = x1
        colour = "#d00000" if line.status != "ok" else STROKE[line.kind]
        dash = {
            "wire": "",
            "route": ' stroke-dasharray="6 3"',
            "endpoint": ' stroke-dasharray="2 3"',
            "lb": ' stroke-dasharray="2 3"',
        }[line.kind]
        if line.kind == "route":  # between two nodes' eth0: an arc below the node boxes
            x1, x2 = source.x + source.w // 3, target.x + 2 * target.w // 3
            y1, y2 = source.y + source.h, target.y + target.h
            mid = max(y1, y2) + GAP + 10
            out.append(
                f'<path d="M{x1},{y1} C{x1},{mid} {x2},{mid} {x2},{y2}" fill="none" stroke="{colour}"{dash}>'
                f"<title>{escape(line.label)}</title></path>"
            )
            continue
        out.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}"{dash}/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def drawio(graph: Graph) -> str:
    """draw.io (diagrams.net) XML, uncompressed: the same layout as svg, editable."""
    boxes, lines, width, height = layout(graph)
    cells = ['<mxCell id="0"/>', '<mxCell id="1" parent="0"/>']
    parents = {box.id: box for box in boxes}
    for box in boxes:
        stroke = "#d00000" if box.status != "ok" else "#444444"
        style = (
            f"rounded=1;whiteSpace=wrap;html=1;align=left;verticalAlign=top;spacingLeft=4;"
            f"fillColor={FILL.get(box.kind, '#ffffff')};strokeColor={stroke};"
            + ("dashed=1;" if box.status != "ok" else "")
            + ("fontStyle=1;" if box.kind in ("node",) else "")
        )
        parent = parents.get(box.parent) if box.parent else None
        x, y = (box.x - parent.x, box.y - parent.y) if parent else (box.x, box.y)
        value = escape("<br>".join(escape(text) for text in box.lines), {'"': "&quot;"})
        cells.append(
            f'<mxCell id="{box.id}" value="{value}" style="{style}" vertex="1" parent="{box.parent or 1}">'
            f'<mxGeometry x="{x}" y="{y}" width="{box.w}" height="{box.h}" as="geometry"/></mxCell>'
        )
    for index, line in enumerate(lines):
        colour = "#d00000" if line.status != "ok" else STROKE[line.kind]
        style = f"endArrow={'none' if line.kind == 'wire' else 'classic'};html=1;strokeColor={colour};" + (
            "dashed=1;" if line.kind != "wire" else ""
        )
        cells.append(
            f'<mxCell id="e{index}" value="{escape(line.label, {chr(34): "&quot;"})}" style="{style}" edge="1" '
            f'parent="1" source="{line.source}" target="{line.target}"><mxGeometry relative="1" as="geometry"/></mxCell>'
        )
    return (
        '<mxfile host="emu">\n'
        f'<diagram id="{_id(graph.cluster)}" name="emu cluster {escape(graph.cluster)}">\n'
        f'<mxGraphModel dx="{width}" dy="{height}" grid="1" gridSize="10" page="1" pageWidth="{width}" pageHeight="{height}">\n'
        "<root>\n" + "\n".join(cells) + "\n</root>\n</mxGraphModel>\n</diagram>\n</mxfile>\n"
    )
