"""The commands about a cluster's objects: status, get, describe, scale, delete, exec, logs, and manifests' apply and delete."""

from __future__ import annotations

import json
import sys
import time

from emu.errors import EmuError
from emu.cli.common import Reporter, _cluster, _print_change


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
    state, problems = cluster.health()  # what is down, named at the end (and the exit code 1)
    pod_status = cluster.pod_status(state)
    hosts_down = {p.host for p in problems if not p.node}
    down = {p.node for p in problems if p.node} | {n.name for n in state.nodes if n.host in hosts_down}
    endpoints = _endpoints_or_none(cluster, state, down)
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
                    "status": "NotReady" if n.name in down else "Ready",
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
            "services": _service_rows(state, endpoints or {}),
            "problems": [{"what": p.what, "fix": p.fix, "node": p.node or None, "host": p.host or None}
                         for p in problems],
        }
        print(json.dumps(data, indent=2))
        _print_problems(cluster.name, problems)
        return 1 if problems else 0
    from rich.console import Console
    from rich.table import Table

    # Piped output keeps whole addresses rather than fitting 80 columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    nodes = Table(title=f"cluster {state.name} (network {state.network} {state.network_subnet})", title_justify="left")
    spread = any(node.host for node in state.nodes)  # a HOST column only for a cluster over several hosts
    mapped = {n.name: _mapping_text(port_mappings(state, n.name)) for n in state.nodes}
    ports = any(mapped.values())  # a HOST PORTS column only when a node has extraPortMappings
    for column in ("NODE", "STATUS", "ROLE", *(["HOST"] if spread else []), "NODE IP", "POD CIDR", "PODS",
                   *(["HOST PORTS"] if ports else [])):  # fmt: skip
        nodes.add_column(column)
    for node in state.nodes:
        host = [node.host] if spread else []
        extra = [mapped[node.name] or "<none>"] if ports else []
        pods = str(len(state.pods_on(node.name)))
        ready = "NotReady" if node.name in down else "Ready"
        nodes.add_row(node.name, ready, node.role, *host, node.node_ip, node.pod_cidr, pods, *extra)
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
    for row in _service_rows(state, endpoints or {}):
        services.add_row(
            row["namespace"], row["name"], row["type"], row["clusterIP"] or "<none>", row["externalIP"] or "<none>",
            ",".join(row["ports"]) or "<none>",
            (",".join(row["endpoints"]) or "<none>") if endpoints is not None else "<unknown>",
        )  # fmt: skip
    console.print(services)
    _print_problems(cluster.name, problems)
    return 1 if problems else 0


def _endpoints_or_none(cluster, state, down: set[str]):
    """The agents' endpoints, asked of a node that is up; None when none answers (status says why)."""
    for node in [n for n in state.nodes if n.name not in down] or state.nodes:
        try:
            return cluster.endpoints(state, node=node.name)
        except Exception:  # noqa: BLE001 - a node that went down meanwhile: ask the next
            continue
    return None


def _print_problems(name: str, problems) -> None:
    """What is down, on stderr: what, where and what to do (`emu status` then exits 1)."""
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        print(f"cluster '{name}' is not all up ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n{lines}",
              file=sys.stderr)


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
