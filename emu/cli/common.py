"""What every emu command shares: the cluster a command is about, the topology it reads, progress lines."""

from __future__ import annotations

import time
from pathlib import Path

from emu.errors import EmuError


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
    """The cluster a command is about: --name, the topology's name, the kubeconfig's
    current context (emu-NAME), or the only one running; driven over the topology's hosts, the hosts it was made on, or this
    machine's engine."""
    from emu.control import kubeconfig
    from emu.control.cluster import Cluster
    from emu.control.runtime.select import provider_for

    name = getattr(args, "name", None) or (topology.name if topology else None)
    if name is None:
        names = Cluster.names()
        current = kubeconfig.current_cluster()
        if current in names:
            name = current  # as kind: the kubeconfig's current context says which cluster
        elif len(names) == 1:
            name = names[0]
        elif not names:
            raise EmuError("no emu cluster is running; start one with `emu up`")
        else:
            raise EmuError(f"several emu clusters are running ({', '.join(names)}); choose one with --name "
                           "(or `kubectl config use-context emu-NAME`)")
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


def _print_change(cluster, change) -> None:
    for key in change.added:
        print(f"  + {key}")
    for key in change.removed:
        print(f"  - {key}")


# ---- Kubernetes manifests and objects (emu.api.manifests) -------------------------------
def _with_manifests(topology, args):
    """The topology with the objects of `-f` manifests added (emu up/apply FILE -f M)."""
    from emu.api.manifests import include

    return include(topology, args.filename or [], namespace=args.namespace) if args.filename else topology
