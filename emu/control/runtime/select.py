"""Which provider drives a cluster.

A cluster on this machine's engine is found by its labels. A cluster spread
over several hosts is found through the record emu keeps of it on the machine
that made it (emu.control.runtime.remembered): without it no engine would
know where to look. A cluster of User-mode Linux nodes is found by the
records the uml provider keeps (emu.control.runtime.umlprovider).
"""

from __future__ import annotations

from emu.api.topology.model import Host
from emu.control.runtime.provider import Provider
from emu.control.runtime.remembered import remembered_clusters, remembered_hosts
from emu.errors import EmuError


def provider_for(cluster: str, hosts: list[Host] | None = None, runtime: str | None = None) -> Provider:
    """The provider for `cluster`: the `runtime` named (a topology's `runtime:`),
    else User-mode Linux if it was made so, else over `hosts` if given, else over
    the hosts it was made on, else this machine's Docker engine."""
    from emu.control.runtime.umlprovider import known_clusters

    if runtime == "uml" or (runtime is None and cluster in known_clusters()):
        from emu.control.runtime.umlprovider import UmlRuntime

        return UmlRuntime()
    hosts = hosts or remembered_hosts(cluster)
    if hosts:
        from emu.control.runtime.swarm import SwarmRuntime

        return SwarmRuntime(hosts)
    from emu.control.runtime.docker import DockerRuntime

    return DockerRuntime()


def cluster_names() -> list[str]:
    """Every emu cluster: those on this machine's engine, those emu made on other
    hosts and those of User-mode Linux nodes."""
    from emu.control.runtime.docker import DockerRuntime
    from emu.control.runtime.umlprovider import known_clusters

    remembered = remembered_clusters() + known_clusters()
    try:
        local = DockerRuntime().cluster_names()
    except EmuError:
        if not remembered:
            raise
        local = []  # no engine here; the clusters on hosts are still there
    return sorted(set(local) | set(remembered))
