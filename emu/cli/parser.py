"""The emu command's arguments: one subcommand for each command, flags as kubectl means them."""

from __future__ import annotations

import argparse

from emu.cli.common import DEFAULT_TOPOLOGY
from emu.cli.lifecycle import cmd_apply, cmd_down, cmd_hosts, cmd_images, cmd_kubeconfig, cmd_plan, cmd_schema, cmd_unlock, cmd_up, cmd_validate
from emu.cli.objects import cmd_delete, cmd_describe, cmd_exec, cmd_get, cmd_logs, cmd_scale, cmd_status
from emu.cli.observe import cmd_capture, cmd_dns, cmd_external, cmd_graph, cmd_netem, cmd_trace


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emu", description="A Kubernetes networking emulator: Docker containers as nodes, namespaces as pods."
    )
    commands = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    def command(name: str, handler, help_text: str, cluster_option: bool = True):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        if cluster_option:
            sub.add_argument("--name", help="cluster name (default: the topology's, the kubeconfig's current "
                                            "context emu-NAME, or the only one running)")  # fmt: skip
        return sub

    def namespace_option(sub, help_text: str = "the namespace of a NAME without one (as kubectl's -n)") -> None:
        sub.add_argument("-n", "--namespace", help=help_text)

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
        sub.add_argument("-n", "--namespace", default="default", help="namespace of manifest objects that name none")

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
    namespace_option(exec_)

    describe = command(
        "describe", cmd_describe, "a service, NetworkPolicy or Ingress: what it selects and where it goes"
    )
    describe.add_argument("kind", choices=["svc", "service", "netpol", "networkpolicy", "ingress", "ing"])
    describe.add_argument("service", metavar="NAME", help="NAME or NAMESPACE/NAME")
    namespace_option(describe)

    scale = command("scale", cmd_scale, "set a deployment's replicas")
    scale.add_argument("kind", choices=["deployment", "deploy"])
    scale.add_argument("deployment", help="NAME or NAMESPACE/NAME")
    scale.add_argument("replicas", type=int)
    namespace_option(scale)

    delete = command("delete", cmd_delete, "delete a pod (a deployment's pod is recreated with a new IP), or what manifests made")
    delete.add_argument("kind", nargs="?", choices=["pod"])
    delete.add_argument("pod", nargs="?", help="NAME or NAMESPACE/NAME")
    delete.add_argument("-f", "--filename", action="append", metavar="MANIFEST", help="delete the objects of these manifests")
    delete.add_argument("-n", "--namespace", help="namespace of manifest objects that name none, and of POD (as kubectl's -n)")
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
    namespace_option(logs)

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
    hosts.epilog = (
        "check reports, per host, over SSH (through its jump: host if it has one): SSH (a changed host key is "
        "refused, naming the known_hosts line), the Docker engine and whether the SSH user may use its socket, "
        "that no two hosts are one engine or machine, vxlan, br_netfilter, ip_forward, the MTU, the clock, free "
        "disk and the swarm ports between every pair of hosts; each problem with its fix. prepare refuses what "
        "check calls an error about identity or access before it changes anything."
    )

    images = command("images", cmd_images, "build emu's images", cluster_option=False)
    images.add_argument("action", choices=["build"])

    external = command("external", cmd_external, "start a netexec server outside the cluster, on its Docker network")
    external.add_argument("container_name", metavar="NAME", help="container is named <cluster>-NAME")

    dns = command("dns", cmd_dns, "resolve a name with the cluster DNS (as a pod would, with its search list)")
    dns.add_argument("query", metavar="NAME", help="e.g. web, web.default, _http._tcp.web.default.svc.cluster.local")
    dns.add_argument("type", nargs="?", default="A", help="A (default), SRV, PTR, TXT, CNAME, ...")
    dns.add_argument("--pod", help="ask from this pod (its resolv.conf); default: from a node")
    dns.add_argument("-n", "--namespace", default="default", help="search list of a pod in this namespace (default: default)")

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

    netem = command("netem", cmd_netem, "impair a link (delay, jitter, loss, rate, corruption) with the nodes' netem")
    netem.add_argument("action", choices=["set", "show", "reset"])
    netem.add_argument("target", nargs="?", metavar="TARGET",
                       help="a node (its eth0), node/NAME:IFACE, or a pod (the host side of its veth)")  # fmt: skip
    netem.add_argument("--delay", type=float, metavar="MS", help="hold each packet MS milliseconds")
    netem.add_argument("--jitter", type=float, metavar="MS", help="vary the delay by up to MS milliseconds")
    netem.add_argument("--loss", type=float, metavar="PCT", help="drop PCT%% of packets")
    netem.add_argument("--rate", type=float, metavar="KBIT", help="send at most KBIT kbit/s")
    netem.add_argument("--corrupt", type=float, metavar="PCT", help="flip a bit in PCT%% of packets")

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
    if args.verb == "netem":
        if args.action != "show" and not args.target:
            parser.error(f"emu netem {args.action} needs a TARGET: a node, node/NAME:IFACE or a pod")
        given = [flag for flag in ("delay", "jitter", "loss", "rate", "corrupt") if getattr(args, flag) is not None]
        if args.action != "set" and given:
            parser.error(f"emu netem {args.action} takes no --{given[0]} (only `emu netem set` does)")
    _qualify(args)
    return args


# The argument naming a namespaced object, of the commands that take `-n NAMESPACE` for it.
NAMESPACED_ARGUMENT = {"exec": "pod", "logs": "pod", "delete": "pod", "describe": "service", "scale": "deployment"}


def _qualify(args: argparse.Namespace) -> None:
    """NAME becomes NAMESPACE/NAME with -n NAMESPACE, as kubectl reads -n; a name
    given as NAMESPACE/NAME keeps its own (a node for `exec --node` has none)."""
    field = NAMESPACED_ARGUMENT.get(args.verb)
    namespace = getattr(args, "namespace", None)
    if field is None or not namespace or getattr(args, "node", False):
        return
    value = getattr(args, field, None)
    if value and "/" not in value:
        setattr(args, field, f"{namespace}/{value}")
