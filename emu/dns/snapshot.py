"""The DNS snapshot: what the cluster DNS server needs to know, and nothing more.

The node agent writes it (write + rename) beside every coredns pod; the server
reads it and reloads when it changes. Standard library only.
"""

from __future__ import annotations

import json
import os

from emu.records import ClusterState
from emu.services import LabelIndex


def dns_snapshot(state: ClusterState, ready: dict[str, bool]) -> dict:
    # `ready` is keyed by pod uid (PodState.uid).
    """Services with their ports and endpoints (ready or not, with the hostname a
    pod gets when its subdomain names the service), the namespaces that exist
    (those with pods or services), the zone and its settings."""
    dns = state.topology.get("dns", {})
    services = []
    index = LabelIndex(state.pods.values())  # not every pod for every service: 1,000 x 2,000 took 4.7 s
    for key in sorted(state.services):
        service = state.services[key]
        endpoints = []
        if service.selector:
            for pod in sorted(index.selected(service), key=lambda p: p.ip):
                ports = {}
                for port in service.ports:
                    target = pod.resolve_port(port.target_port)
                    if target is not None:
                        ports[port.name] = target
                hostname = pod.host_name if pod.subdomain == service.name and pod.hostname else None
                endpoints.append({"ip": pod.ip, "hostname": hostname, "ready": ready.get(pod.uid, False), "ports": ports})
        services.append(
            {
                "namespace": service.namespace,
                "name": service.name,
                "type": service.type,
                "clusterIP": service.cluster_ip,
                "externalName": service.external_name,
                "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol} for p in service.ports],
                "endpoints": endpoints,
            }
        )
    namespaces = {pod.namespace for pod in state.pods.values()} | {s.namespace for s in state.services.values()}
    return {
        "namespaces": sorted(namespaces),
        "zone": state.networking.get("dnsDomain", "cluster.local"),
        "ttl": dns.get("ttl", 5),
        "upstreams": dns.get("upstreams", []),
        "serviceSubnet": state.networking.get("serviceSubnet"),
        "podSubnet": state.networking.get("podSubnet"),
        "services": services,
    }


def write_snapshot(path: str, snapshot: dict) -> bool:
    """Write atomically when the content changed. Returns whether it wrote."""
    text = json.dumps(snapshot, sort_keys=True)
    try:
        with open(path) as handle:
            if handle.read() == text:
                return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".new", "w") as handle:
        handle.write(text)
    os.replace(path + ".new", path)
    return True
