"""The emu command: parse, call the library, print."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from emu.errors import EmuError, TopologyError

DEFAULT_TOPOLOGY = "topologies/default.yaml"


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


class Reporter:
    """Progress lines on stderr, each with the time since the command started."""

    def __init__(self, quiet: bool = False):
        self.started = time.monotonic()
        self.quiet = quiet
        self.console = _console()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]{time.monotonic() - self.started:6.2f}s[/dim] {message}")


def _cluster(args, reporter=None, topology=None):
    """The cluster a command is about: --name, the topology's name, or the only one
    running; driven over the topology's hosts, the hosts it was made on, or this
    machine's engine."""
    from emu.control.cluster import Cluster
    from emu.control.runtime.select import provider_for

    name = getattr(args, "name", None) or (topology.name if topology else None)
    if name is None:
        names = Cluster.names()
        if len(names) == 1:
            name = names[0]
        elif not names:
            raise EmuError("no emu cluster is running; start one with `emu up`")
        else:
            raise EmuError(f"several emu clusters are running ({', '.join(names)}); choose one with --name")
    runtime = provider_for(name, list(topology.hosts) if topology else None, topology.runtime if topology else None)
    return Cluster(name, runtime=runtime, progress=reporter or (lambda message: None))


def _load(path: str, hosts: str | None = None):
    """The topology at `path`, spread over the inventory at `hosts` if given."""
    from emu.api.load import load_file, load_inventory, with_hosts

    if not Path(path).exists():
        raise EmuError(f"topology file '{path}' does not exist; pass the path of a YAML topology (see topologies/)")
    topology = load_file(path)
    if hosts:
        if not Path(hosts).exists():
            raise EmuError(f"hosts file '{hosts}' does not exist; pass the path of a YAML inventory with a hosts: list")
        topology = with_hosts(topology, load_inventory(hosts), hosts)
    return topology


def cmd_up(args) -> int:
    topology = _with_manifests(_load(args.file, args.hosts), args)
    if args.runtime:
        from emu.api.topology.load import with_runtime

        topology = with_runtime(topology, args.runtime, args.file)
    reporter = Reporter(args.quiet)
    cluster = _cluster(args, reporter, topology)
    if args.check:
        return _check(cluster, topology)
    if args.name and args.name != topology.name:
        topology = topology.model_copy(update={"name": args.name})
    change = cluster.up(topology, wait=not args.no_wait)
    if change.created:
        print(f"cluster '{cluster.name}' is up: {len(change.added)} pods. Try `emu status`.")
    elif change.repaired:
        print(f"cluster '{cluster.name}' repaired: " + "; ".join(change.repaired))
    elif change.changed:
        print(f"cluster '{cluster.name}' converged: {len(change.added)} pods added, {len(change.removed)} removed")
    else:
        print(f"cluster '{cluster.name}' is already up to date; nothing changed")
    return 0


def _check(cluster, topology) -> int:
    """`emu up --check`: what up would change or repair, changing nothing. Exit 1 if anything."""
    from emu.control.cluster import pod_changes
    from emu.control.state import plan_cluster

    if not cluster.exists:
        print(f"cluster '{cluster.name}' is not running; `emu up` would create it")
        return 1
    state = cluster.state()
    desired = plan_cluster(topology.model_copy(update={"name": cluster.name}), state.network, state.network_subnet, state)
    added, removed = pod_changes(state, desired)
    lines = [f"pod {p.key} would be started" for p in added] + [f"pod {p.key} would be removed" for p in removed]
    lines += [line for found in cluster.check(state) for line in found.describe()]
    for line in lines:
        print(line)
    if not lines:
        print(f"cluster '{cluster.name}' matches the topology, and its nodes hold what its state says")
    return 1 if lines else 0


def cmd_apply(args) -> int:
    if args.filename and not args.file:
        return _apply_manifests(args)
    if not args.file:
        raise EmuError("give a topology file (emu apply FILE) or manifests (emu apply -f FILE|DIR|-)")
    topology = _with_manifests(_load(args.file, args.hosts), args)
    reporter = Reporter(args.quiet)
    cluster = _cluster(args, reporter, topology)
    if args.name:
        topology = topology.model_copy(update={"name": args.name})
    change = cluster.apply(topology)
    if change.repaired:
        print(f"cluster '{cluster.name}' repaired: " + "; ".join(change.repaired))
    elif change.changed:
        print(f"cluster '{cluster.name}': {len(change.added)} pods added, {len(change.removed)} removed")
        _print_change(cluster, change)
    else:
        print(f"cluster '{cluster.name}' is already up to date; nothing changed")
    return 0


def cmd_down(args) -> int:
    from emu.control.cluster import Cluster

    if args.all:
        names = Cluster.names()
    else:
        names = [args.cluster or _cluster(args).name]
    if not names:
        print("no emu clusters to remove")
    for name in names:
        containers, networks = Cluster(name).down()
        if containers or networks:
            print(f"cluster '{name}' removed: {containers} containers, {networks} networks")
        else:
            print(f"no emu cluster named '{name}'; nothing to remove")
    return 0


def cmd_kubeconfig(args) -> int:
    """The cluster's admin kubeconfig, as `emu up` merged it (kind's `get kubeconfig`)."""
    print(_cluster(args).kubeconfig(), end="")
    return 0


def cmd_unlock(args) -> int:
    from emu.control.cluster import Cluster

    cluster = Cluster(args.cluster) if args.cluster else _cluster(args)
    cluster.unlock()
    print(f"cluster '{cluster.name}' unlocked")
    return 0


def pod_phase(pod, containers: dict[str, dict]) -> str:
    """The STATUS column, as kubectl prints it: Running, Completed (every
    container ended with 0 and will not start again), Error, or Unknown (its
    node could not be asked)."""
    states = [containers.get(c["name"]) for c in pod.containers]
    if any(s is None for s in states):
        return "Unknown"
    if all(s["state"] == "Running" for s in states):
        return "Running"
    if all(s["state"] == "Exited" and s.get("exitCode") == 0 for s in states) and pod.restart_policy != "Always":
        return "Completed"
    return "Error"


def cmd_status(args) -> int:
    from emu.control.state import port_mappings

    cluster = _cluster(args)
    state = cluster.state()
    pod_status = cluster.pod_status(state)
    if args.json:
        data = {
            "name": state.name,
            "network": {"name": state.network, "subnet": state.network_subnet},
            "networking": state.networking,
            "nodes": [
                {
                    "name": n.name, "role": n.role, "container": n.container, "nodeIP": n.node_ip,
                    "podCIDR": n.pod_cidr, "host": n.host or None,
                    "extraPortMappings": port_mappings(state, n.name),
                }  # fmt: skip
                for n in state.nodes
            ],
            "pods": [
                {
                    "namespace": p.namespace,
                    "name": p.name,
                    "node": p.node,
                    "podIP": p.ip,
                    "labels": p.labels,
                    "containers": [
                        {
                            "name": c["name"],
                            "state": pod_status.get(p.key, {}).get(c["name"], {}).get("state", "Unknown"),
                            "ready": pod_status.get(p.key, {}).get(c["name"], {}).get("ready", False),
                            "restartCount": pod_status.get(p.key, {}).get(c["name"], {}).get("restarts", 0),
                            "exitCode": pod_status.get(p.key, {}).get(c["name"], {}).get("exitCode"),
                        }
                        for c in p.containers
                    ],
                }
                for p in sorted(state.pods.values(), key=lambda p: (p.namespace, p.name))
            ],
            "services": _service_rows(state, cluster.endpoints(state)),
        }
        print(json.dumps(data, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    # Piped output keeps whole addresses rather than fitting 80 columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    nodes = Table(title=f"cluster {state.name} (network {state.network} {state.network_subnet})", title_justify="left")
    spread = any(node.host for node in state.nodes)  # a HOST column only for a cluster over several hosts
    mapped = {n.name: _mapping_text(port_mappings(state, n.name)) for n in state.nodes}
    ports = any(mapped.values())  # a HOST PORTS column only when a node has extraPortMappings
    for column in ("NODE", "ROLE", *(["HOST"] if spread else []), "NODE IP", "POD CIDR", "PODS",
                   *(["HOST PORTS"] if ports else [])):  # fmt: skip
        nodes.add_column(column)
    for node in state.nodes:
        host = [node.host] if spread else []
        extra = [mapped[node.name] or "<none>"] if ports else []
        pods = str(len(state.pods_on(node.name)))
        nodes.add_row(node.name, node.role, *host, node.node_ip, node.pod_cidr, pods, *extra)
    console.print(nodes)
    pods = Table(title="pods", title_justify="left")
    for column in ("NAMESPACE", "POD", "READY", "STATUS", "RESTARTS", "IP", "NODE"):
        pods.add_column(column)
    for pod in sorted(state.pods.values(), key=lambda p: (p.namespace, p.name)):
        containers = pod_status.get(pod.key, {})
        ready = sum(1 for c in pod.containers if containers.get(c["name"], {}).get("ready"))
        status = pod_phase(pod, containers)
        restarts = str(sum(containers.get(c["name"], {}).get("restarts", 0) for c in pod.containers))
        pods.add_row(pod.namespace, pod.name, f"{ready}/{len(pod.containers)}", status, restarts, pod.ip, pod.node)
    console.print(pods)
    services = Table(title="services", title_justify="left")
    for column in ("NAMESPACE", "SERVICE", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS"):
        services.add_column(column)
    for row in _service_rows(state, cluster.endpoints(state)):
        services.add_row(
            row["namespace"], row["name"], row["type"], row["clusterIP"] or "<none>", row["externalIP"] or "<none>",
            ",".join(row["ports"]) or "<none>", ",".join(row["endpoints"]) or "<none>",
        )  # fmt: skip
    console.print(services)
    return 0


def _mapping_text(mappings: list[dict]) -> str:
    """kind's extraPortMappings as docker ps shows ports: 0.0.0.0:8080->80/tcp."""
    return ",".join(
        f"{m.get('listenAddress', '0.0.0.0')}:{m['hostPort']}->{m['containerPort']}/{m.get('protocol', 'TCP').lower()}"
        for m in mappings
    )


def cmd_describe(args) -> int:
    cluster = _cluster(args)
    state = cluster.state()
    if args.kind in ("netpol", "networkpolicy", "ingress", "ing"):
        return _describe_edge(cluster, state, args.kind, args.service)
    reference = args.service if "/" in args.service else f"default/{args.service}"
    service = state.services.get(reference)
    if service is None:
        raise EmuError(f"no service '{reference}' in cluster '{cluster.name}' (services: {', '.join(sorted(state.services))})")
    endpoints = cluster.endpoints(state).get(reference, {})
    print(f"Name:              {service.name}")
    print(f"Namespace:         {service.namespace}")
    print(f"Selector:          {','.join(f'{k}={v}' for k, v in (service.selector or {}).items()) or '<none>'}")
    print(f"Type:              {service.type}")
    print(f"IP:                {service.cluster_ip or '<none>'}")
    if service.load_balancer_ip:
        print(f"LoadBalancer IP:   {service.load_balancer_ip}")
    if service.external_name:
        print(f"External Name:     {service.external_name}")
    for port in service.ports:
        label = port.name or "<unset>"
        print(f"Port:              {label}  {port.port}/{port.protocol}")
        print(f"TargetPort:        {port.target_port}/{port.protocol}")
        if port.node_port:
            print(f"NodePort:          {label}  {port.node_port}/{port.protocol}")
        print(f"Endpoints:         {','.join(endpoints.get(port.name, [])) or '<none>'}")
    print(f"Session Affinity:  {'ClientIP' if service.affinity_timeout else 'None'}")
    if service.type in ("NodePort", "LoadBalancer"):
        print(f"External Traffic Policy:  {service.external_traffic_policy}")
    print(f"Internal Traffic Policy:  {service.internal_traffic_policy}")
    return 0


def _describe_edge(cluster, state, kind: str, name: str) -> int:
    """`emu describe netpol|ingress NAME`: what a policy selects and allows, where an Ingress's rules go."""
    key = name if "/" in name else f"default/{name}"
    if kind in ("netpol", "networkpolicy"):
        from emu.node import policy

        found = [p for p in state.network_policies if policy.policy_key(p) == key]
        if not found:
            known = ", ".join(sorted(policy.policy_key(p) for p in state.network_policies)) or "none"
            raise EmuError(f"no NetworkPolicy '{key}' in cluster '{cluster.name}' (NetworkPolicies: {known})")
        spec = found[0]
        print(f"Name:         {spec['name']}\nNamespace:    {spec['namespace']}")
        print(f"PodSelector:  {_selector_text(spec['podSelector'])}")
        print(f"PolicyTypes:  {', '.join(spec['policyTypes'])}")
        pods = policy.selected_by(state, key)
        print(f"Selects:      {len(pods)} pods")
        for pod in pods:
            print(f"  {pod.key:40} {pod.ip:15} {pod.node}")
        for direction, peers_key in (("ingress", "from"), ("egress", "to")):
            if direction.capitalize() not in spec["policyTypes"]:
                continue
            rules = spec.get(direction) or []
            print(f"Allowing {direction} traffic:" + ("" if rules else "\n  <none> (isolated: nothing is allowed)"))
            for rule in rules:
                ports = ", ".join(
                    f"{p.get('port') or '<any>'}{'-' + str(p['endPort']) if p.get('endPort') else ''}/"
                    f"{p.get('protocol') or 'TCP'}" for p in rule.get("ports") or []
                ) or "<any> (all ports)"
                print(f"  To port(s): {ports}")
                peers = rule.get(peers_key) or []
                print(f"  {'From' if direction == 'ingress' else 'To'}:" + ("" if peers else " <any> (every peer)"))
                for peer in peers:
                    print(f"    {_peer_text(peer)}")
                print("  ----------")
        return 0
    from emu.node import ingress

    found = [i for i in state.ingresses if f"{i['namespace']}/{i['name']}" == key]
    if not found:
        known = ", ".join(sorted(f"{i['namespace']}/{i['name']}" for i in state.ingresses)) or "none"
        raise EmuError(f"no Ingress '{key}' in cluster '{cluster.name}' (Ingresses: {known})")
    spec = found[0]
    controller = state.services.get(f"{ingress.NAMESPACE}/{ingress.NAME}")
    endpoints = {
        service: {port: [_endpoint(a) for a in addresses] for port, addresses in by_port.items()}
        for service, by_port in cluster.endpoints(state).items()
    }
    print(f"Name:             {spec['name']}\nNamespace:        {spec['namespace']}")
    print(f"Ingress Class:    {spec.get('ingressClassName') or '<none>'}")
    if controller:
        print(f"Address:          {controller.load_balancer_ip or controller.cluster_ip}")
    tls = ", ".join(f"{t.get('secretName') or 'self-signed'} terminates {','.join(t.get('hosts') or [])}"
                    for t in spec.get("tls") or [])  # fmt: skip
    print(f"TLS:              {tls or '<none>'}")
    print("Rules:\n  Host              Path  Backends")
    print("  ----              ----  --------")
    for host, path, target, addresses in ingress.describe(state, key, endpoints):
        print(f"  {host:17} {path}  {target} ({addresses})")
    return 0


def _endpoint(address: str):
    from emu.node.services import Endpoint

    ip, _, port = address.rpartition(":")
    return Endpoint(ip, int(port), None, None)


def _selector_text(selector: dict | None) -> str:
    if not selector:
        return "<none> (all pods)" if selector is not None else "<none>"
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        values = ",".join(expression.get("values") or [])
        parts.append(f"{expression['key']} {expression['operator']} ({values})" if values else
                     f"{expression['key']} {expression['operator']}")  # fmt: skip
    return ",".join(parts) or "<none> (all pods)"


def _peer_text(peer: dict) -> str:
    if peer.get("ipBlock"):
        block = peer["ipBlock"]
        return f"IPBlock: {block['cidr']}" + (f" except {', '.join(block['except'])}" if block.get("except") else "")
    parts = []
    if peer.get("namespaceSelector") is not None:
        parts.append(f"NamespaceSelector: {_selector_text(peer['namespaceSelector'])}")
    if peer.get("podSelector") is not None:
        parts.append(f"PodSelector: {_selector_text(peer['podSelector'])}")
    return " and ".join(parts)


def _print_change(cluster, change) -> None:
    for key in change.added:
        print(f"  + {key}")
    for key in change.removed:
        print(f"  - {key}")


def cmd_scale(args) -> int:
    cluster = _cluster(args, Reporter(quiet=True))
    change = cluster.scale(args.deployment, args.replicas)
    print(f"deployment {args.deployment} scaled to {args.replicas}")
    _print_change(cluster, change)
    return 0


def cmd_delete(args) -> int:
    if args.filename:
        return _delete_manifests(args)
    if args.kind != "pod" or not args.pod:
        raise EmuError("give a pod (emu delete pod NAME) or manifests (emu delete -f FILE|DIR|-)")
    cluster = _cluster(args, Reporter(quiet=True))
    change = cluster.delete_pod(args.pod)
    print(f'pod "{args.pod}" deleted')
    _print_change(cluster, change)
    return 0


# ---- Kubernetes manifests and objects (emu.api.manifests) -------------------------------
def _with_manifests(topology, args):
    """The topology with the objects of `-f` manifests added (emu up/apply FILE -f M)."""
    from emu.api.manifests import include

    return include(topology, args.filename or [], namespace=args.namespace) if args.filename else topology


def _apply_manifests(args) -> int:
    from emu.api import manifests

    read = manifests.read_manifests(args.filename, args.namespace)
    cluster = _cluster(args, Reporter(args.quiet))
    _, lines = manifests.apply(cluster, read)
    print("\n".join(lines))
    return 0


def _delete_manifests(args) -> int:
    from emu.api import manifests

    read = manifests.read_manifests(args.filename, args.namespace)
    cluster = _cluster(args, Reporter(quiet=True))
    _, deleted, missing = manifests.delete(cluster, read)
    for line in deleted:
        print(line)
    for line in missing:
        print(f"Error from server (NotFound): {line}", file=sys.stderr)
    return 1 if missing and not args.ignore_not_found else 0


def cmd_get(args) -> int:
    import yaml

    from emu.api.manifests.render import RESOURCE_NAMES, View, format_table, kind_of, table
    from emu.node.plan import cni

    kinds = [kind_of(resource) for resource in args.resource.split(",")]
    if None in kinds:
        bad = args.resource.split(",")[kinds.index(None)]
        names = ", ".join(names[0] for names in RESOURCE_NAMES.values())
        raise EmuError(f'the server doesn\'t have a resource type "{bad}"; emu has: {names}')
    cluster = _cluster(args)
    state = cluster.state()
    images = any(cni.image_pod(pod) for pod in state.pods.values())
    docker = cluster.runtime.pod_container_states(state.name) if images else {}
    view = View(state, cluster.pod_status(state, started=True), time.time(), docker)
    selector = _label_selector(args.selector)
    found: list[tuple[str, dict]] = []
    missing = []
    for kind in kinds:
        objects = view.objects(kind)
        if not args.all_namespaces and kind not in ("Node", "Namespace"):
            objects = [o for o in objects if o["metadata"].get("namespace") == args.namespace]
        objects = [o for o in objects if selector(o["metadata"].get("labels") or {})]
        if args.names:
            by_name = {o["metadata"]["name"]: o for o in objects}
            missing += [f'{RESOURCE_NAMES[kind][0]} "{n}" not found' for n in args.names if n not in by_name]
            objects = [by_name[n] for n in args.names if n in by_name]
        found += [(kind, o) for o in objects]
    for line in missing:
        print(f"Error from server (NotFound): {line}", file=sys.stderr)
    if args.output in ("json", "yaml"):
        items = [o for _, o in found]
        if len(items) == 1 and args.names and len(kinds) == 1:
            document = items[0]
        elif not items and missing:
            return 1
        else:
            document = {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}
        if args.output == "json":
            print(json.dumps(document, indent=4))
        else:
            sys.stdout.write(yaml.safe_dump(document, sort_keys=True, default_flow_style=False))
        return 1 if missing else 0
    if args.output == "name":
        for kind, obj in found:
            group = "" if kind not in ("Deployment", "StatefulSet", "DaemonSet") else ".apps"
            print(f"{kind.lower()}{group}/{obj['metadata']['name']}")
        return 1 if missing else 0
    if not found and not missing:
        where = "" if args.all_namespaces or set(kinds) <= {"Node", "Namespace"} else f" in {args.namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
    printed = False
    for kind in kinds:
        objects = [o for k, o in found if k == kind]
        if not objects:
            continue
        rows = table(view, kind, objects, args.output == "wide", args.all_namespaces and kind not in ("Node", "Namespace"))
        if len(kinds) > 1:  # kubectl prefixes names with their resource when it prints several kinds
            column = 1 if rows[0][0] == "NAMESPACE" else 0
            group = ".apps" if kind in ("Deployment", "StatefulSet", "DaemonSet") else ""
            for row in rows[1:]:
                row[column] = f"{kind.lower()}{group}/{row[column]}"
        sys.stdout.write(("\n" if printed else "") + format_table(rows))
        printed = True
    return 1 if missing else 0


def _label_selector(text: str | None):
    """A -l selector (key=value, key!=value, key, !key, comma-separated) as a predicate on labels."""
    if not text:
        return lambda labels: True
    tests = []
    for term in text.split(","):
        term = term.strip()
        if " " in term or "(" in term:
            raise EmuError(f"label selector '{text}': set-based terms (in, notin) are not supported; use key=value, "
                           "key!=value, key or !key")  # fmt: skip
        if "!=" in term:
            key, value = term.split("!=", 1)
            tests.append(lambda labels, k=key.strip(), v=value.strip(): labels.get(k) != v)
        elif "=" in term:
            key, value = term.split("=", 1)
            key, value = key.strip().rstrip("="), value.strip().lstrip("=")
            tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif term.startswith("!"):
            tests.append(lambda labels, k=term[1:].strip(): k not in labels)
        elif term:
            tests.append(lambda labels, k=term: k in labels)
    return lambda labels: all(test(labels) for test in tests)


def _service_rows(state, endpoints: dict) -> list[dict]:
    rows = []
    for key in sorted(state.services):
        service = state.services[key]
        ports = []
        for port in service.ports:
            text = f"{port.port}/{port.protocol}"
            if port.node_port:
                text = f"{port.port}:{port.node_port}/{port.protocol}"
            ports.append(text)
        eps = sorted({a for addresses in endpoints.get(key, {}).values() for a in addresses})
        rows.append(
            {
                "namespace": service.namespace,
                "name": service.name,
                "type": service.type,
                "clusterIP": service.cluster_ip or None,
                "externalIP": service.load_balancer_ip or service.external_name,
                "ports": ports,
                "endpoints": eps,
            }
        )
    return rows


def cmd_exec(args) -> int:
    from emu.control.cluster import exec_target, find_node, find_pod

    cluster = _cluster(args)
    argv = args.argv
    if not argv:
        raise EmuError("give a command after the pod, e.g. `emu exec client -- curl -s http://10.244.1.2:8080/hostname`")
    state = cluster.state()
    if args.node:
        container = find_node(state, args.pod).container
        full = argv
    else:
        container, full = exec_target(state, find_pod(state, args.pod), argv, args.container)
    if sys.stdin.isatty() and sys.stdout.isatty():
        return cluster.runtime.interactive(container, full, tty=True)
    result = cluster.runtime.exec(container, full)
    sys.stdout.write(result.output)
    return result.exit_code


def cmd_logs(args) -> int:
    from emu.control.cluster import find_pod, pick_container
    from emu.node.plan import cni

    cluster = _cluster(args)
    if args.follow:
        state = cluster.state()
        pod = find_pod(state, args.pod)
        name = pick_container(pod, args.container)["name"]
        if cni.runs_image(pick_container(pod, args.container)):
            from emu.control.imagepods import container_name

            cluster.runtime.container_logs(container_name(state, pod, name), follow=True)
            return 0
        log = f"{cni.LOG_DIR}/{pod.netns}/{name}.log"
        return cluster.runtime.interactive(state.node(pod.node).container, ["tail", "-n", "+1", "-f", log], tty=False)
    sys.stdout.write(cluster.logs(args.pod, args.container))
    return 0


def cmd_plan(args) -> int:
    topology = _load(args.file, args.hosts)
    name = args.name or topology.name
    if args.name:
        topology = topology.model_copy(update={"name": args.name})
    desired, plans = _cluster(args, None, topology).plan(topology)
    changed = [plan for plan in plans if not plan.empty]
    if not changed:
        print(f"# cluster '{name}' already matches {args.file}: nothing to do")
    for plan in changed:
        print(plan.render(show_files=not args.script_only))
    if args.rules:
        from emu.node.proxy import mode_of, proxier
        from emu.node.services import all_endpoints

        ready = {pod.uid: True for pod in desired.pods.values()}
        endpoints = all_endpoints(desired, ready)
        proxy = proxier(mode_of(desired))
        for node in desired.nodes:
            print(f"### node {node.name}: {proxy.mode} service rules its agent writes once every pod is ready")
            print(proxy.text(proxy.render(desired, node.name, endpoints)))
            if desired.network_policies:
                from emu.node import policy

                rules = policy.render(desired, node.name)
                print(f"### node {node.name}: NetworkPolicy sets (ipset restore) and rules (iptables-restore)")
                print(policy.ipset_restore_text(rules.sets, None, []), end="")
                print(policy.iptables_restore_text(rules.chains, None))
    return 0


def _hosts_of(path: str):
    """The hosts of an inventory file, or of a topology file with a hosts: list."""
    import yaml

    from emu.api.topology.load import load_inventory

    if not Path(path).exists():
        raise EmuError(f"file '{path}' does not exist; pass an inventory (a hosts: list) or a topology with hosts:")
    try:
        top = yaml.safe_load(Path(path).read_text(errors="replace"))
    except yaml.YAMLError:
        top = None  # the loader below reports it with its line
    if isinstance(top, dict) and "nodes" in top:
        hosts = list(_load(path).hosts)
        if not hosts:
            raise EmuError(f"{path}: the topology has no hosts: list; add one, or pass an inventory file")
        return hosts
    return load_inventory(path)


def cmd_hosts(args) -> int:
    from emu.control.hosts import check_hosts, format_reports, prepare_hosts

    hosts = _hosts_of(args.file)
    reporter = Reporter(args.quiet)
    if args.action == "check":
        reports = check_hosts(hosts, progress=reporter)
        print(format_reports(reports))
        return 0 if all(report.ok for report in reports) else 1
    from emu.control.runtime.docker import DockerRuntime

    images = [DockerRuntime().node_image(reporter)]
    prepare_hosts(hosts, images, progress=reporter)
    print(f"{len(hosts)} hosts ready: one swarm, emu's images on each. Next: emu up TOPOLOGY --hosts {args.file}")
    return 0


def cmd_images(args) -> int:
    from emu.control.runtime.docker import DockerRuntime
    from emu.control.runtime.images import ImageBuilder

    reporter = Reporter()
    for tag in ImageBuilder(DockerRuntime(), reporter).build_all():
        print(tag)
    return 0


def cmd_external(args) -> int:
    cluster = _cluster(args)
    ip = cluster.run_external(args.container_name)
    print(f"{cluster.name}-{args.container_name} {ip}")
    print(f"netexec outside the cluster: http://{ip}:8080/clientip shows who called; `emu down` removes it")
    if cluster.state().ingresses:
        print("its /etc/hosts names the Ingress hosts at the ingress controller's LoadBalancer address")
    return 0


def cmd_dns(args) -> int:
    from emu.control.cluster import find_pod, pod_exec_argv
    from emu.node.plan import cni
    from emu.node.records import KUBE_DNS_INDEX

    cluster = _cluster(args)
    state = cluster.state()
    server = cni.service_ip(state, KUBE_DNS_INDEX)
    zone = state.net.dns_domain
    qtype = args.type.upper()
    if args.pod:
        pod = find_pod(state, args.pod)
        container = state.node(pod.node).container
        argv = pod_exec_argv(pod, ["dig", "+search", "+noall", "+comments", "+answer", "+authority",
                                   "+additional", args.query, qtype])  # fmt: skip
        result = cluster.runtime.exec(container, argv)
        print(_dig_summary(result.output))
        return result.exit_code
    # From a node: the resolver's search list of a pod in --namespace, tried in order (ndots:5).
    namespace = args.namespace
    if args.query.endswith(".") or args.query.count(".") >= 5:
        candidates = [args.query]
    else:
        candidates = [f"{args.query}.{d}" for d in (f"{namespace}.svc.{zone}", f"svc.{zone}", zone)] + [args.query]
    script = (
        'for n in "$@"; do out=$(dig @' + server + ' +noall +comments +answer +authority +additional "$n" ' + qtype
        + '); if ! echo "$out" | grep -q "status: NXDOMAIN"; then echo "$out"; exit 0; fi; done; echo "$out"'
    )
    node = next((n for n in state.nodes if n.role == "worker"), state.nodes[0])
    result = cluster.runtime.exec(node.container, ["sh", "-c", script, "sh", *candidates])
    print(_dig_summary(result.output))
    return result.exit_code


def _dig_summary(output: str) -> str:
    """dig's status line and records, without its chatter."""
    keep = []
    for line in output.splitlines():
        if line.startswith(";; ->>HEADER<<-"):
            keep.append(line.split(",")[1].strip())  # "status: NOERROR"
        elif line.startswith(";; ") and line.endswith("SECTION:") and "PSEUDO" not in line:
            keep.append(line[3:])
        elif line and not line.startswith(";"):
            keep.append(line)
    return "\n".join(keep)


def cmd_trace(args) -> int:
    """emu trace: one real probe, each hop as the kernel reported it (emu/observe/trace.py)."""
    from emu.observe import trace

    cluster = _cluster(args)
    state = cluster.state()
    plan = trace.plan_for(cluster, state, args.source, args.destination, args.proto, args.container)
    if args.pcap:  # the probe's packets at each place the trace names (emu/observe/capture.py)
        from emu.observe import capture

        with capture.record(cluster.runtime, capture.trace_targets(state, plan), capture.trace_filter(plan), args.pcap):
            collected = trace.run_trace(cluster, state, plan)
    else:
        collected = trace.run_trace(cluster, state, plan)
    result = trace.assemble(state, plan, collected)
    sys.stdout.write(json.dumps(result, indent=2) + "\n" if args.format == "json" else trace.render_text(result))
    return 0 if result["probe"].get("result") in ("connected", "answered") else 1


def cmd_capture(args) -> int:
    """emu capture: packets of pods, node interfaces and externals as one pcapng (emu/observe/capture.py)."""
    from emu.observe import capture

    return capture.command(_cluster(args), args.targets, args.filter or "", args.count, args.duration, args.write,
                           args.interface)  # fmt: skip


def cmd_graph(args) -> int:
    """emu graph: the live cluster as the article draws it (emu/observe/graph.py)."""
    from emu.observe import graph

    cluster = _cluster(args)
    print(graph.render(graph.observe(cluster), args.format), end="")
    return 0


def cmd_schema(args) -> int:
    from emu.api.topology.model import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0


def cmd_validate(args) -> int:
    topology = _load(args.file)
    print(f"{args.file}: valid ({len(topology.nodes)} nodes, {len(topology.pods)} pods, "
          f"{len(topology.deployments)} deployments)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emu", description="A Kubernetes networking emulator: Docker containers as nodes, namespaces as pods."
    )
    commands = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    def command(name: str, handler, help_text: str, cluster_option: bool = True):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        if cluster_option:
            sub.add_argument("-n", "--name", help="cluster name (default: the topology's, or the only one running)")
        return sub

    up = command("up", cmd_up, "create a cluster from a topology file, or converge a running one")
    up.add_argument("file", nargs="?", default=DEFAULT_TOPOLOGY, help=f"topology YAML (default {DEFAULT_TOPOLOGY})")
    up.add_argument("--no-wait", action="store_true", help="do not wait for pods' ports to answer")
    up.add_argument("--hosts", metavar="FILE", help="spread the nodes over the Docker hosts of this inventory")
    up.add_argument("--runtime", choices=["docker", "uml"],
                    help="what runs the nodes (default: the topology's runtime:, else docker)")  # fmt: skip
    up.add_argument("--check", action="store_true", help="only report what up would change or repair (exit 1 if anything)")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    apply = command("apply", cmd_apply, "converge a running cluster to a topology file, or apply Kubernetes manifests")
    apply.add_argument("file", nargs="?", help="topology YAML")
    apply.add_argument("--hosts", metavar="FILE", help="the inventory the cluster was made with")
    apply.add_argument("-q", "--quiet", action="store_true")
    for sub in (up, apply):
        sub.add_argument("-f", "--filename", action="append", metavar="MANIFEST",
                         help="Kubernetes manifests: a file, a directory of them, or - for stdin (repeatable)")  # fmt: skip
        sub.add_argument("--namespace", default="default", help="namespace of manifest objects that name none")

    down = command("down", cmd_down, "remove a cluster: every container, network and namespace it made")
    down.add_argument("cluster", nargs="?", help="cluster name")
    down.add_argument("--all", action="store_true", help="remove every emu cluster")

    command("kubeconfig", cmd_kubeconfig, "print the cluster's kubeconfig (emu up merges it as context emu-NAME)")

    unlock = command("unlock", cmd_unlock, "release a cluster's lock left by an emu command that died")
    unlock.add_argument("cluster", nargs="?", help="cluster name")

    status = command("status", cmd_status, "nodes with pod CIDRs, pods with IPs and nodes")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    exec_ = command("exec", cmd_exec, "run a command in a pod (or with --node, in a node's root namespace)")
    exec_.add_argument("pod", help="pod name, NAMESPACE/NAME, or a node with --node")
    exec_.add_argument("-c", "--container", help="the container whose environment to use")
    exec_.add_argument("--node", action="store_true", help="POD names a node: run in its root namespace")
    exec_.add_argument("argv", nargs="*", metavar="COMMAND", help="-- COMMAND [ARGS...]")

    describe = command(
        "describe", cmd_describe, "a service, NetworkPolicy or Ingress: what it selects and where it goes"
    )
    describe.add_argument("kind", choices=["svc", "service", "netpol", "networkpolicy", "ingress", "ing"])
    describe.add_argument("service", metavar="NAME", help="NAME or NAMESPACE/NAME")

    scale = command("scale", cmd_scale, "set a deployment's replicas")
    scale.add_argument("kind", choices=["deployment", "deploy"])
    scale.add_argument("deployment", help="NAME or NAMESPACE/NAME")
    scale.add_argument("replicas", type=int)

    delete = command("delete", cmd_delete, "delete a pod (a deployment's pod is recreated with a new IP), or what manifests made")
    delete.add_argument("kind", nargs="?", choices=["pod"])
    delete.add_argument("pod", nargs="?", help="NAME or NAMESPACE/NAME")
    delete.add_argument("-f", "--filename", action="append", metavar="MANIFEST", help="delete the objects of these manifests")
    delete.add_argument("--namespace", default="default", help="namespace of manifest objects that name none")
    delete.add_argument("--ignore-not-found", action="store_true", help="objects already gone are not an error")

    get = command("get", cmd_get, "objects as kubectl prints them: pods, svc, endpoints, deploy, sts, ds, cm, ns, nodes",
                  cluster_option=False)  # fmt: skip
    get.add_argument("resource", help="pods|svc|endpoints|deploy|sts|ds|cm|ns|nodes, or several joined by commas")
    get.add_argument("names", nargs="*", metavar="NAME")
    get.add_argument("-n", "--namespace", default="default", help="the namespace (as kubectl's -n; default: default)")
    get.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    get.add_argument("-o", "--output", choices=["wide", "yaml", "json", "name"], help="as kubectl's -o")
    get.add_argument("-l", "--selector", help="label selector: key=value, key!=value, key, !key (comma-separated)")
    get.add_argument("--name", help="cluster name (default: the only one running)")

    logs = command("logs", cmd_logs, "a pod container's output")
    logs.add_argument("pod")
    logs.add_argument("-c", "--container", help="container name (default: the first)")
    logs.add_argument("-f", "--follow", action="store_true")

    plan = command("plan", cmd_plan, "print each node's plan (ip -batch, iptables-restore, files) without applying")
    plan.add_argument("file", nargs="?", default=DEFAULT_TOPOLOGY)
    plan.add_argument("--hosts", metavar="FILE", help="spread the nodes over the Docker hosts of this inventory")
    plan.add_argument("--script-only", action="store_true", help="only the scripts, not the files they use")
    plan.add_argument("--rules", action="store_true",
                      help="also the kube-proxy and NetworkPolicy rules each node's agent writes")

    hosts = command("hosts", cmd_hosts, "check or prepare the Docker hosts of a multi-host lab", cluster_option=False)
    hosts.add_argument("action", choices=["check", "prepare"], help="check: report what is wrong; prepare: fix it")
    hosts.add_argument("file", metavar="FILE", help="an inventory (hosts:) or a topology with hosts:")
    hosts.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    images = command("images", cmd_images, "build emu's images", cluster_option=False)
    images.add_argument("action", choices=["build"])

    external = command("external", cmd_external, "start a netexec server outside the cluster, on its Docker network")
    external.add_argument("container_name", metavar="NAME", help="container is named <cluster>-NAME")

    dns = command("dns", cmd_dns, "resolve a name with the cluster DNS (as a pod would, with its search list)")
    dns.add_argument("query", metavar="NAME", help="e.g. web, web.default, _http._tcp.web.default.svc.cluster.local")
    dns.add_argument("type", nargs="?", default="A", help="A (default), SRV, PTR, TXT, CNAME, ...")
    dns.add_argument("--pod", help="ask from this pod (its resolv.conf); default: from a node")
    dns.add_argument("--namespace", default="default", help="search list of a pod in this namespace (default: default)")

    trace = command("trace", cmd_trace, "send one real packet and show each hop the kernel took it through")
    trace.add_argument("source", metavar="SRC", help="a pod (NAME, NAMESPACE/NAME), node/NAME or external/NAME")
    trace.add_argument("destination", metavar="DEST[:PORT]",
                       help="a pod, service, localhost, node/NAME or IP: pod IP, cluster IP, node IP:NodePort, LoadBalancer")
    trace.add_argument("-c", "--container", help="the source pod's container the probe runs as (default: the first)")
    trace.add_argument("--proto", choices=["tcp", "udp"], default="tcp")
    trace.add_argument("--format", choices=["text", "json"], default="text")
    trace.add_argument("--pcap", metavar="FILE", help="also save the probe's packets at each pod and node eth0 as pcapng")
    capture = command("capture", cmd_capture, "capture packets on pods, node interfaces and externals into one pcapng")
    capture.add_argument("targets", nargs="+", metavar="TARGET",
                         help="a pod (its eth0; POD:IFACE), node/NAME[:IFACE], external/NAME[:IFACE], or svc/NAME "
                              "(every endpoint's veth)")  # fmt: skip
    capture.add_argument("-f", "--filter", metavar="BPF", help="a capture filter, as tcpdump's (e.g. 'tcp port 8080')")
    capture.add_argument("-c", "--count", type=int, metavar="COUNT", help="stop after COUNT packets in all")
    capture.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    capture.add_argument("-w", "--write", metavar="FILE", help="pcapng to FILE, or - for stdout "
                         "(`emu capture client -w - | wireshark -k -i -`); default: stdout if a pipe, else one line a packet")  # fmt: skip
    capture.add_argument("-i", "--interface", metavar="IFACE", help="interface of node/ and external/ targets that name none (default eth0)")
    graph = command("graph", cmd_graph, "draw the live cluster: nodes, bridges, veths, pods, routes, services")
    graph.add_argument("--format", choices=["mermaid", "dot", "svg", "drawio"], default="mermaid")

    command("schema", cmd_schema, "print the topology file's JSON Schema", cluster_option=False)
    validate = command("validate", cmd_validate, "check a topology file without changing anything", False)
    validate.add_argument("file")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    # Everything after "--" is the command for `emu exec`, options included.
    trailing: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, trailing = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    if trailing:
        if args.verb != "exec":
            parser.error("'--' is only for `emu exec POD -- COMMAND`")
        args.argv = [*args.argv, *trailing]
    return args


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.showwarning = _show_warning  # manifest fields emu does not model: one line each
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return args.handler(args)
    except TopologyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except EmuError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
