"""A testinfra backend for emu pods: `emu://POD?context=CLUSTER&namespace=NS&container=C`.

testinfra finds a backend by the scheme of a host spec in its table
`testinfra.backend.BACKENDS` (scheme -> "module.Class", imported when first
used); `register()` adds emu's row, and nothing else of testinfra is touched.
The spec follows testinfra's kubectl backend: the pod is the host part,
`namespace` and `container` choose as they do there, and `context` (kubectl's
word for which cluster) names the emu cluster. testinfra keeps only the host
part of a spec's address, so `emu://CLUSTER/POD` could not carry the pod.

Every command runs as `emu exec POD -- /bin/sh -c COMMAND` does: in the pod's
network namespace, with its hostname, resolv.conf and the container's
environment, on the pod's node, through emu's runtime (Docker's API: no
`docker` binary needed, and on a multi-host cluster the right engine). So
`host.run`, `host.socket`, `host.addr(...)`, `host.file(...)`,
`host.interface("eth0")` and testinfra's other modules see what the pod sees.
Nodes keep testinfra's own `docker://` backend.
"""

from __future__ import annotations

from typing import Any

from emu.errors import EmuError

SCHEME = "emu"
CLASS_PATH = "emu.testing.backend.PodBackend"


def register() -> None:
    """Make `emu://` known to testinfra (idempotent; needs pytest-testinfra)."""
    try:
        import testinfra.backend
    except ImportError:
        raise EmuError("testinfra hosts for pods need pytest-testinfra: pip install 'emu[test]'") from None
    testinfra.backend.BACKENDS.setdefault(SCHEME, CLASS_PATH)


def hostspec(pod: str, cluster: str, namespace: str | None = None, container: str | None = None) -> str:
    """The testinfra host spec of a pod (and one of its containers)."""
    from urllib.parse import quote, urlencode

    query = {"context": cluster}
    if namespace:
        query["namespace"] = namespace
    if container:
        query["container"] = container
    return f"{SCHEME}://{quote(pod, safe='')}?{urlencode(query)}"


def pod_host(cluster, pod: str, container: str | None = None, namespace: str | None = None):
    """A testinfra Host for a pod of `cluster` (a Cluster or a cluster's name).
    A Cluster passed in lends its runtime, so no new engine connection is made."""
    import testinfra

    register()
    name = cluster if isinstance(cluster, str) else cluster.name
    spec = hostspec(pod, name, namespace, container)
    if isinstance(cluster, str):
        return testinfra.get_host(spec)
    return testinfra.get_host(spec, cluster=cluster)


def _base():
    register()
    from testinfra.backend.base import BaseBackend

    return BaseBackend


class PodBackend(_base()):  # type: ignore[misc]
    """testinfra's view of one pod of an emu cluster."""

    NAME = SCHEME

    def __init__(
        self,
        name: str,
        *args: Any,
        context: str | None = None,
        namespace: str | None = None,
        container: str | None = None,
        cluster=None,
        **kwargs: Any,
    ):
        from urllib.parse import unquote

        name = unquote(name)
        if not name:
            raise EmuError("an emu:// host needs a pod: emu://POD?context=CLUSTER")
        self.pod = f"{namespace}/{name}" if namespace and "/" not in name else name
        self.container = container
        self._cluster = cluster
        self._cluster_name = context or (cluster.name if cluster is not None else None)
        self._state = None
        super().__init__(name, *args, **kwargs)

    @property
    def cluster(self):
        """The emu Cluster (found by name on first use: the only running one if no context)."""
        if self._cluster is None:
            from emu.control.cluster import Cluster

            name = self._cluster_name
            if name is None:
                names = Cluster.names()
                if len(names) != 1:
                    running = ", ".join(names) or "none"
                    raise EmuError(
                        f"emu://{self.pod}: say which cluster with ?context=NAME (running clusters: {running})"
                    )
                name = names[0]
            self._cluster = Cluster(name)
        return self._cluster

    def get_pytest_id(self) -> str:
        return f"{SCHEME}://{self.cluster.name}/{self.pod}"

    def _target(self, argv: list[str], fresh: bool) -> tuple[str, list[str]]:
        if self._state is None or fresh:
            self._state = self.cluster.state()
        return self.cluster.pod_command(self.pod, argv, self.container, state=self._state)

    def run(self, command: str, *args: str, **kwargs: Any):
        command = self.get_command(command, *args)
        argv = ["/bin/sh", "-c", command]
        container, full = self._target(argv, fresh=False)
        exit_code, stdout, stderr = self.cluster.runtime.exec_split(container, full)
        if exit_code != 0 and b"Cannot open network namespace" in stderr:
            # The pod was replaced (deleted and made again) since the state was read.
            container, full = self._target(argv, fresh=True)
            exit_code, stdout, stderr = self.cluster.runtime.exec_split(container, full)
        return self.result(exit_code, self.encode(command), stdout, stderr)
