"""The kubelet's view of its pods: the API server's Pods bound to this node, as
the kubelet's pod config source watches them (list, then watch from the list's
resourceVersion with fieldSelector spec.nodeName=<node>; relist on 410 Gone:
emu.node.kube.informer), and each turned into the record emu's pod plans are
built from (emu.node.records.PodState).

What a plain Pod manifest may run in a node (docs/manifests.md, "Images"): the
e2e test image agnhost with `args: [netexec, ...]` (emu's built-in netexec,
flags --http-port, --udp-port and --delay-shutdown) or `args: [pause]`. Other images are Docker
containers, which only emu's own commands start today: such a pod is refused
by `unsupported` with a reason the kubelet writes into the pod's status.
Pods that emu's own commands drive (emu.apiserver.mirror's annotation
MANAGED_BY) are not the kubelet's: the node's plans wire them.
Standard library only: it runs in the node agent.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from emu.node.kube.client import Client, resource_path
from emu.node.kube.informer import Informer
from emu.node.records import PodState

# emu.apiserver.mirror.MANAGED_BY / MANAGER (the node may not import the API server's modules)
MANAGED_BY = "emu.io/managed-by"
EMU_MANAGER = "emu"
AGNHOST = re.compile(r"(^|/)agnhost([:@]|$)")
WORKLOAD_FLAGS = {"netexec": ("--http-port", "--udp-port", "--delay-shutdown"), "pause": ()}
PROBE_KEYS = ("httpGet", "tcpSocket", "exec", "initialDelaySeconds", "periodSeconds", "timeoutSeconds",
              "successThreshold", "failureThreshold")  # fmt: skip


def pod_informer(client: Client, node: str, on_change: Callable[[], None], log: Callable[[str], None]) -> Informer:
    """The Pods bound to `node` (all namespaces), kept by list and watch; `on_change()` on every change."""
    return Informer(client, resource_path("v1", "pods"), on_add=lambda pod: on_change(),
                    on_update=lambda old, new: on_change(), on_delete=lambda pod: on_change(),
                    field_selector=f"spec.nodeName={node}", log=log, name=f"pods of node {node}")  # fmt: skip


def meta(pod: dict) -> dict:
    return pod.get("metadata") or {}


def key(pod: dict) -> str:
    return f"{meta(pod).get('namespace', '')}/{meta(pod).get('name', '')}"


def emu_driven(pod: dict) -> bool:
    """Whether emu's own commands drive this pod (the mirror wrote it): then it is not the kubelet's."""
    return (meta(pod).get("annotations") or {}).get(MANAGED_BY) == EMU_MANAGER


def terminal(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def workload_of(container: dict) -> tuple[str, list[str]] | None:
    """(workload, its flags) for an agnhost netexec|pause container, else None."""
    args = [str(a) for a in container.get("args") or []]
    if not AGNHOST.search(str(container.get("image") or "")) or container.get("command") or args[:1] not in (
            ["netexec"], ["pause"]):  # fmt: skip
        return None
    return args[0], args[1:]


def unsupported(pod: dict) -> tuple[str, str] | None:
    """(container, why) for the first container the node cannot run, None when it runs them all."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        name = container.get("name", "?")
        found = workload_of(container)
        if found is None:
            return name, (f"image {container.get('image')!r}: emu's kubelet runs "
                          "registry.k8s.io/e2e-test-images/agnhost with args [netexec, ...] or [pause] "
                          "(emu's built-in programs); other images run only in pods of emu's own commands "
                          "(docs/image-pods.md)")  # fmt: skip
        workload, flags = found
        unknown = [f for f in flags if f.split("=", 1)[0] not in WORKLOAD_FLAGS[workload]]
        if unknown or any(not f.startswith("--") for f in flags):
            allowed = ", ".join(WORKLOAD_FLAGS[workload]) or "no flags"
            return name, f"emu's agnhost {workload} takes {allowed}, not {', '.join(unknown or flags)}"
    if (pod.get("spec") or {}).get("initContainers"):
        return "", "init containers are not run by emu's kubelet yet"
    return None


def _container(container: dict) -> dict:
    workload, flags = workload_of(container) or ("", [])
    out: dict = {"name": container["name"], "image": container.get("image", ""), "workload": workload, "args": flags}
    ports = [{k: p[k] for k in ("name", "containerPort", "protocol") if k in p}
             for p in container.get("ports") or [] if isinstance(p, dict)]  # fmt: skip
    if ports:
        out["ports"] = ports
    env = [{"name": e["name"], "value": str(e.get("value", ""))}
           for e in container.get("env") or [] if isinstance(e, dict) and "valueFrom" not in e]  # fmt: skip
    if env:
        out["env"] = env
    probe = container.get("readinessProbe")
    if isinstance(probe, dict):
        out["readinessProbe"] = {k: v for k, v in probe.items() if k in PROBE_KEYS}
    return out


def pod_state(pod: dict, node: str, ip: str) -> PodState:
    """The pod as emu's plans take it, with the address the node's IPAM gave it."""
    spec = pod.get("spec") or {}
    grace = spec.get("terminationGracePeriodSeconds")
    return PodState(
        namespace=meta(pod).get("namespace", "default"), name=meta(pod)["name"], node=node, ip=ip,
        labels=dict(meta(pod).get("labels") or {}), containers=[_container(c) for c in spec.get("containers") or []],
        spec_hash=meta(pod).get("uid", ""), hostname=spec.get("hostname"), subdomain=spec.get("subdomain"),
        dns_policy={"ClusterFirstWithHostNet": "ClusterFirst"}.get(spec.get("dnsPolicy"), spec.get("dnsPolicy"))
        or "ClusterFirst",
        dns_config=spec.get("dnsConfig"), restart_policy=spec.get("restartPolicy") or "Always",
        termination_grace_seconds=grace if isinstance(grace, int) else 30,
    )  # fmt: skip
