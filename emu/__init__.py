"""emu: a Kubernetes networking emulator.

Docker containers are the nodes, network namespaces inside them are the pods.
The public entry point is :class:`emu.Cluster`.
"""

from emu.errors import EmuError, TopologyError

__all__ = ["Cluster", "EmuError", "TopologyError"]
__version__ = "0.1.0"


def __getattr__(name):
    # Imported lazily so that `import emu` (and the DNS server, which lives in
    # this package) does not pull in the Docker SDK.
    if name == "Cluster":
        from emu.control.cluster import Cluster

        return Cluster
    raise AttributeError(name)
