"""Image containers as pods: the Docker side (the only place it talks to Docker).

A pod whose containers name images runs the way the kubelet runs one with a
container runtime: a sandbox ("pause") container owns the pod's network
namespace, and the pod's containers join it (`--network container:SANDBOX`).
emu adds one thing: the sandbox and the containers share the node container's
PID namespace (`--pid container:NODE`). So the node sees their processes,
and the node itself (with the capabilities it already has, no host access)
names the sandbox's namespace (`ip netns attach`) and wires it into cni0 with
a veth pair, as a CNI plugin's ADD does; its agent probes and watches them,
and deleting the pod gives them SIGTERM and their grace period, like any pod.
Nothing here needs the host's PID namespace or root on the Docker host, so it
works on any engine the nodes run on (Docker Desktop and remote ones too).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from dataclasses import dataclass, field

from emu.node.agent import CONTAINER_ENV, SANDBOX_ENV
from emu.errors import EmuError
from emu.control.runtime.provider import LABEL_CLUSTER, LABEL_NODE, LABEL_ROLE, ROLE_POD

LABEL_POD = "io.emu.pod"  # namespace/name
LABEL_POD_UID = "io.emu.pod-uid"  # one incarnation of the pod
LABEL_CONTAINER = "io.emu.container"  # the pod's container ("POD" for the sandbox)
RESTART_POLICIES = {"Always": "always", "OnFailure": "on-failure", "Never": "no"}


@dataclass
class AppContainer:
    """One container of an image pod."""

    name: str
    image: str
    command: list[str] | None = None  # replaces the image's entrypoint (Kubernetes' command)
    args: list[str] | None = None  # replaces its cmd (Kubernetes' args)
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # path in the container -> content (ConfigMap volumes)


@dataclass
class ImagePod:
    """What the Docker side of an image pod needs to know."""

    cluster: str
    node_container: str
    node: str
    pod: str  # namespace/name
    uid: str  # PodState.uid
    netns: str
    hostname: str
    sandbox_image: str
    containers: list[AppContainer]
    restart_policy: str = "Always"
    nameservers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)  # extra /etc/hosts entries, "name:ip"

    @property
    def uid_label(self) -> str:
        return hashlib.sha256(f"{self.cluster}/{self.uid}".encode()).hexdigest()[:12]

    def container_name(self, container: str) -> str:
        """As dockershim named them: k8s_<container>_<pod>_<namespace>_<uid>, under the cluster's name."""
        namespace, _, name = self.pod.partition("/")
        return f"{self.cluster}_k8s_{container}_{name}_{namespace}_{self.uid_label}"

    @property
    def sandbox(self) -> str:
        return self.container_name("POD")


def _labels(pod: ImagePod, container: str) -> dict[str, str]:
    return {
        LABEL_CLUSTER: pod.cluster, LABEL_ROLE: ROLE_POD, LABEL_NODE: pod.node, LABEL_POD: pod.pod,
        LABEL_POD_UID: pod.uid_label, LABEL_CONTAINER: container,
    }  # fmt: skip


def _tar(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, content in sorted(files.items()):
            data = content.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), 0o644, time.time()
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class ImagePods:
    """The image-pod half of DockerRuntime (it needs `self.api`)."""

    def ensure_images(self, images: list[str], node_container: str = "") -> list[str]:
        """Pull the images the engine lacks, as `docker run` would. Returns those
        pulled; a pull that fails is an error naming the image and the reason."""
        import docker

        pulled = []
        for image in sorted(set(images)):
            try:
                self.api.inspect_image(image)
                continue
            except docker.errors.ImageNotFound:
                pass
            try:
                self.api.pull(image)
            except docker.errors.APIError as error:
                reason = getattr(error, "explanation", None) or str(error)
                raise EmuError(
                    f"image {image} is not on the Docker engine and pulling it failed: {reason}. "
                    "Check the name and tag and that a registry is reachable, or build it locally "
                    "(docker build -t NAME .) first"
                ) from None
            pulled.append(image)
        return pulled

    def start_sandbox(self, pod: ImagePod) -> None:
        """The pod's sandbox: no network yet (the node wires it), in the node's PID namespace."""
        api = self.api
        host_config = api.create_host_config(
            network_mode="none",
            pid_mode=f"container:{pod.node_container}",
            dns=pod.nameservers or None,
            dns_search=pod.searches or None,
            dns_opt=pod.options or None,
            extra_hosts=pod.hosts or None,
        )
        created = api.create_container(
            pod.sandbox_image, command=["sleep", "infinity"], name=pod.sandbox, hostname=pod.hostname,
            environment={SANDBOX_ENV: pod.uid}, labels=_labels(pod, "POD"), host_config=host_config,
        )  # fmt: skip
        api.start(created["Id"])

    def create_containers(self, pod: ImagePod) -> None:
        """The pod's containers, made but not started: in its sandbox's network (and
        so its hostname, /etc/hosts and resolv.conf), each with its files in."""
        api = self.api
        for container in pod.containers:
            host_config = api.create_host_config(
                network_mode=f"container:{pod.sandbox}",
                pid_mode=f"container:{pod.node_container}",
                restart_policy={"Name": RESTART_POLICIES[pod.restart_policy]},
            )
            created = api.create_container(
                container.image, name=pod.container_name(container.name),
                entrypoint=container.command, command=container.args,
                environment={**container.env, CONTAINER_ENV: f"{pod.uid}/{container.name}"},
                labels=_labels(pod, container.name), host_config=host_config,
            )  # fmt: skip
            if container.files:
                api.put_archive(created["Id"], "/", _tar(container.files))

    def start_containers(self, pod: ImagePod) -> None:
        """Start the pod's containers (made by create_containers), once the pod is wired."""
        for container in pod.containers:
            self.api.start(pod.container_name(container.name))

    def remove_pod_containers(self, cluster: str, pod: ImagePod) -> int:
        """Remove the pod's sandbox and containers (this incarnation of it)."""
        import docker

        found = self.api.containers(all=True, filters={"label": [f"{LABEL_CLUSTER}={cluster}",
                                                                 f"{LABEL_POD_UID}={pod.uid_label}"]})  # fmt: skip
        for container in found:
            try:
                self.api.remove_container(container["Id"], force=True, v=True)
            except docker.errors.NotFound:
                pass
        return len(found)

    def pod_container_states(self, cluster: str) -> dict[str, dict]:
        """{container name: {"running", "exitCode", "restartCount", "startedAt", "finishedAt", "error"}}
        of the cluster's image pods, as Docker knows them."""
        found = self.api.containers(all=True, filters={"label": [f"{LABEL_CLUSTER}={cluster}", f"{LABEL_ROLE}={ROLE_POD}"]})
        states = {}
        for container in found:
            details = self.api.inspect_container(container["Id"])
            state = details["State"]
            states[details["Name"].lstrip("/")] = {
                "running": bool(state.get("Running")) and not state.get("Restarting"),
                "exitCode": state.get("ExitCode", 0),
                "restartCount": details.get("RestartCount", 0),
                "startedAt": state.get("StartedAt"),
                "finishedAt": state.get("FinishedAt"),
                "error": state.get("Error") or "",
            }
        return states

    def container_logs(self, name: str, follow: bool = False) -> str:
        """A container's output (stdout and stderr), or with follow, streamed to stdout until it stops."""
        import sys

        if not follow:
            return self.api.logs(name, stdout=True, stderr=True).decode(errors="replace")
        for chunk in self.api.logs(name, stdout=True, stderr=True, stream=True, follow=True):
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        return ""
