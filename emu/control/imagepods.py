"""Pods whose containers name images: what the controller does around the node
plans (the Docker side is emu.control.runtime.sandbox, the node side emu.node.plan.cni).

For each new image pod, in the order the kubelet and a CNI plugin go:
1. `wire`: pull missing images, start its sandbox (network none, in the
   node's PID namespace) before the node plans, which name its namespace and
   wire it into cni0 with the pod's IP, as any pod's; make its containers in
   the sandbox's network while the plans run, start them once they have;
2. `record_command`: then each node records their processes (pid files) for
   its agent, as it puts the new state in place;
3. `remove`: a deleted pod's sandbox and containers go after its node plan
   took its veth and namespace name away.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from emu.node.plan import cni
from emu.node.records import ClusterState, PodState
from emu.node.services import pod_service_env
from emu.control.runtime.sandbox import AppContainer, ImagePod


def image_pods(pods: list[PodState]) -> list[PodState]:
    return [pod for pod in pods if cni.image_pod(pod)]


def _dns(state: ClusterState, pod: PodState) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, searches, options) of the pod's resolv.conf; empty for
    dnsPolicy Default (Docker's own, from the host, as the node's)."""
    text = cni.resolv_conf(state, pod) or ""
    nameservers, searches, options = [], [], []
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        if word == "nameserver":
            nameservers.append(rest)
        elif word == "search":
            searches = rest.split()
        elif word == "options":
            options = rest.split()
    return nameservers, searches, options


def _files(pod: PodState, container: dict) -> dict[str, str]:
    """The container's ConfigMap files at their mount paths (put in before it starts)."""
    files = {}
    for mount in container.get("volumeMounts", []):
        volume = pod.volumes.get(mount["name"], {})
        if mount.get("subPath"):
            if mount["subPath"] in volume:
                files[mount["mountPath"]] = volume[mount["subPath"]]
        else:
            files.update({f"{mount['mountPath'].rstrip('/')}/{path}": content for path, content in volume.items()})
    return files


def spec(state: ClusterState, pod: PodState) -> ImagePod:
    """The Docker side of one image pod."""
    node = state.node(pod.node)
    nameservers, searches, options = _dns(state, pod)
    domain = state.net.dns_domain
    names = cni.pod_host_entry(pod, domain).split("\t")
    service_env = pod_service_env(state.services, pod, pod.enable_service_links)  # as the kubelet, at start
    containers = [
        AppContainer(
            name=c["name"],
            image=c["image"],
            command=c.get("command") or None,
            args=c.get("args") or None,
            env={**service_env, **{v["name"]: v.get("value", "") for v in c.get("env", [])}},
            files=_files(pod, c),
        )
        for c in pod.containers
        if cni.runs_image(c)
    ]
    return ImagePod(
        cluster=state.name, node_container=node.container, node=node.name, pod=pod.key, uid=pod.uid,
        netns=pod.netns, hostname=pod.host_name, sandbox_image=state.node_image, containers=containers,
        restart_policy=pod.restart_policy, nameservers=nameservers, searches=searches, options=options,
        hosts=[f"{name}:{pod.ip}" for name in names],
    )  # fmt: skip


def wire(runtime, state: ClusterState, pods: list[PodState], run_plans) -> None:
    """Bring up the new image pods around `run_plans` (the node plans, which name
    each sandbox's namespace and wire it into cni0): images pulled where missing
    and sandboxes started before; the pods' containers made while the plans run,
    and started once they have. Whatever it made is removed if any step fails."""
    pods = image_pods(pods)
    if not pods:
        run_plans()
        return
    specs = {pod.key: spec(state, pod) for pod in pods}
    by_node: dict[str, set[str]] = {}
    for made in specs.values():
        by_node.setdefault(made.node_container, set()).update(c.image for c in made.containers)
    try:
        runtime.parallel(lambda item: runtime.ensure_images(sorted(item[1]), item[0]), list(by_node.items()))
        runtime.parallel(runtime.start_sandbox, list(specs.values()))
        with ThreadPoolExecutor(max_workers=1) as background:
            creating = background.submit(runtime.parallel, runtime.create_containers, list(specs.values()))
            try:
                run_plans()
            finally:
                creating.result()
        runtime.parallel(runtime.start_containers, list(specs.values()))
    except BaseException:
        remove(runtime, state, pods)
        raise


def record_command(pods: list[PodState], node: str) -> str:
    """Shell for a node, once the containers started: record their processes (pid
    files) for its agent. Empty when the node has no new image containers."""
    scripts = [
        cni.container_script(pod.netns, c["name"])
        for pod in image_pods(pods) if pod.node == node for c in pod.containers if cni.runs_image(c)
    ]  # fmt: skip
    return "".join(f"sh {script}; " for script in scripts)


def remove(runtime, state: ClusterState, pods: list[PodState]) -> None:
    """The sandboxes and containers of image pods that are gone."""
    pods = image_pods(pods)
    runtime.parallel(lambda pod: runtime.remove_pod_containers(state.name, spec(state, pod)), pods)


def container_name(state: ClusterState, pod: PodState, container: str) -> str:
    """The Docker container that runs one of the pod's image containers."""
    return spec(state, pod).container_name(container)
