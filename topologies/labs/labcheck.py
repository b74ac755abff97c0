"""What the labs' checks share: tracing a flow and reading its hops (stdlib and emu only)."""

from __future__ import annotations

from emu.control.cluster import Cluster
from emu.observe import trace


def traced(lab: Cluster, source: str, destination: str, proto: str = "tcp", container: str | None = None) -> dict:
    """`emu trace SOURCE DESTINATION --format json`, as data."""
    state = lab.state()
    plan = trace.plan_for(lab, state, source, destination, proto, container)
    return trace.assemble(state, plan, trace.run_trace(lab, state, plan))


def hops(result: dict, direction: str = "request") -> list[tuple[str, dict]]:
    """(place, hop) of the first packet that way, in the order it went."""
    return [(place["place"], hop) for place in result[direction] for hop in place["hops"]]


def internet(lab: Cluster) -> str:
    """The IP of the lab's container outside the cluster (`emu external internet`), made if missing."""
    name = f"{lab.name}-internet"
    for record in lab.runtime.cluster_containers(lab.name):
        if record.name == name and record.running:
            return lab.runtime.container_ip(name, lab.state().network)
    return lab.run_external("internet")
