"""Load what a user declares: a topology file with the objects of the Kubernetes
manifests it names. The one entry point for callers; emu.api.topology.load
reads the topology itself and emu.api.manifests the manifests, neither
knowing the other's caller."""

from __future__ import annotations

from pathlib import Path

from emu.api.manifests import include
from emu.api.topology.load import (  # noqa: F401 - re-exported: callers load from here
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    load_inventory,
    load_text,
    read_topology_file,
    with_hosts,
)
from emu.api.topology.model import Topology


def load_file(path: str | Path) -> Topology:
    """Read and validate a topology file, with the objects of the Kubernetes
    manifests its `manifests:` names (relative to the file)."""
    path = Path(path)
    topology = read_topology_file(path)
    if topology.manifests:
        topology = include(topology, list(topology.manifests), path.parent)
    return topology
