"""The DNS snapshot: what the cluster DNS server needs to know, and nothing more.

The node agent writes it (write + rename) beside every coredns pod; the server
reads it and reloads when it changes. Standard library only.
"""

from __future__ import annotations

import json
import os

from emu.node.records import ClusterState, sha256
from emu.node.services import LabelIndex


def dns_snapshot(state: ClusterState, ready: dict[str, bool]) -> dict:
    # `ready` is keyed by pod uid (PodState.uid).
    """Services with their ports and endpoints (ready or not, with the hostname a
    pod gets when its subdomain names the service), the namespaces that exist
    (those with pods or services), the zone and its settings."""
    return {**_head(state), "services": list(_services(state, ready))}


def snapshot_text(state: ClusterState, ready: dict[str, bool]) -> str:
    """json.dumps(dns_snapshot(...), sort_keys=True), one service at a time: the
    whole snapshot never exists as objects (at 1,000 services the tree and the
    encoder's pieces left the hub's agent 2 MB larger for good)."""
    head = json.dumps({**_head(state), "services": None}, sort_keys=True)
    before, after = head.split('"services": null', 1)
    parts = [before, '"services": [']
    for i, service in enumerate(_services(state, ready)):
        parts.append((", " if i else "") + json.dumps(service, sort_keys=True))
    parts += ["]", after]
    return "".join(parts)


def _head(state: ClusterState) -> dict:
    dns = state.topology.get("dns", {})
    namespaces = {pod.namespace for pod in state.pods.values()} | {s.namespace for s in state.services.values()}
    return {
        "namespaces": sorted(namespaces),
        "zone": state.net.dns_domain,
        "ttl": dns.get("ttl", 5),
        "upstreams": dns.get("upstreams", []),
        "serviceSubnet": state.net.service_subnet,
        "podSubnet": state.net.pod_subnet,
    }


def _services(state: ClusterState, ready: dict[str, bool]):
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
        yield {
            "namespace": service.namespace,
            "name": service.name,
            "type": service.type,
            "clusterIP": service.cluster_ip,
            "externalName": service.external_name,
            "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol} for p in service.ports],
            "endpoints": endpoints,
        }


_written: dict[str, str] = {}  # path -> digest of the text last written there by this process


def write_snapshot(path: str, text: str) -> bool:
    """Write atomically when the content changed (snapshot_text's). Returns
    whether it wrote. What this process last wrote is known by its digest; a
    file changed or removed by someone else is written again."""
    digest = sha256(text.encode()).hexdigest()
    try:
        unchanged = _written.get(path) == digest and os.stat(path).st_size == len(text.encode())
    except OSError:
        unchanged = False
    if unchanged:
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".new", "w") as handle:
        handle.write(text)
    os.replace(path + ".new", path)
    _written[path] = digest
    return True
