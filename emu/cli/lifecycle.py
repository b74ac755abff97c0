"""The commands that make, change and remove clusters: up, apply, down, kubeconfig, unlock, plan, hosts, images, schema, validate."""

from __future__ import annotations

import json
from pathlib import Path

from emu.errors import EmuError
from emu.cli.common import Reporter, _cluster, _load, _print_change, _with_manifests
from emu.cli.objects import _apply_manifests


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
    for line in change.started:  # stopped nodes (a restarted engine or host, a `docker stop`) started again
        print(f"cluster '{cluster.name}': {line}")
    if change.created:
        print(f"cluster '{cluster.name}' is up: {len(change.added)} pods. Try `emu status`.")
    elif change.repaired:
        print(f"cluster '{cluster.name}' repaired: " + "; ".join(change.repaired))
    elif change.added or change.removed:
        print(f"cluster '{cluster.name}' converged: {len(change.added)} pods added, {len(change.removed)} removed")
    elif change.started:
        print(f"cluster '{cluster.name}' is up again: its nodes serve their pods")
    else:
        print(f"cluster '{cluster.name}' is already up to date; nothing changed")
    return 0


def _check(cluster, topology) -> int:
    """`emu up --check`: what up would change or repair, changing nothing. Exit 1 if anything."""
    from emu.control.cluster import pod_changes

    if not cluster.exists:
        print(f"cluster '{cluster.name}' is not running; `emu up` would create it")
        return 1
    state = cluster.state()
    desired = cluster.replan(topology.model_copy(update={"name": cluster.name}), state)
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


def cmd_schema(args) -> int:
    from emu.api.topology.model import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0


def cmd_validate(args) -> int:
    topology = _load(args.file)
    print(f"{args.file}: valid ({len(topology.nodes)} nodes, {len(topology.pods)} pods, "
          f"{len(topology.deployments)} deployments)")
    return 0
