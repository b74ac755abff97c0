"""The commands that look at the network: dns, trace, capture, graph, external."""

from __future__ import annotations

import json
import sys

from emu.cli.common import _cluster


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


def cmd_netem(args) -> int:
    """emu netem set|show|reset: link impairment with the nodes' netem (emu/control/netem.py)."""
    from emu.control import netem

    if args.action == "set":
        impairment = netem.Impairment(args.delay, args.jitter, args.loss, args.rate, args.corrupt)
        impairment.validate()  # before the cluster is looked at
        link = netem.set_impairment(_cluster(args), args.target, impairment)
        print(f"{link.name}: netem {' '.join(impairment.tc_arguments())} ({link.description})")
        return 0
    if args.action == "show":
        found = netem.show(_cluster(args), args.target)
        for link, settings in found:
            print(f"{link.name}: netem {settings} ({link.description})")
        if not found:
            print(f"no impairment on {args.target}" if args.target else "no impairment on any node")
        return 0
    link, removed = netem.reset(_cluster(args), args.target)
    print(f"{link.name}: {'netem removed' if removed else 'had no impairment'} ({link.description})")
    return 0
