"""The kubelet's reports to the API server (docs/apiserver.md, stage 4, its first part).

Each node's agent writes, with the node's own certificate (user
system:node:NAME in group system:nodes, whose RBAC role and the
NodeRestriction admission plugin let it change only its own Lease and the
pods bound to it), what a kubelet writes:
- its node's Lease in kube-node-lease (holderIdentity the node, 40 s long),
  created when missing and renewed every quarter of its duration, as the
  kubelet's node lease controller does (10 s; both follow the topology's
  controllerManager.nodeMonitorGracePeriod: records.NodeTiming);
- a service account token for each of its pods (emu.node.agent.tokens);
- each of its pods' status (conditions, containerStatuses with readiness,
  restartCount and state, podIP, phase) with a PATCH of pods/NAME/status
  (field manager "kubelet"), whenever what the node sees of the pod differs
  from what it last wrote: a readiness probe failing shows in `kubectl get
  pods -w` and ends a `kubectl wait` without any emu command. Once a node has
  written a pod's status, emu's own commands no longer overwrite it
  (emu.apiserver.mirror.reported_by_kubelet).
Pods with containers of their own image get only their readiness written
(the Ready and ContainersReady conditions, a strategic merge patch as field
manager READINESS_MANAGER, what the node's probes see, so their EndpointSlices
follow): Docker restarts those containers and knows why they stopped, so emu's
commands still report the rest of their status.

While the API server cannot be reached (it starts after the agents, or is
restarting), writes wait and are tried again; the node goes on forwarding with
what it has, as a kubelet does. Standard library only: it runs in the node agent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from emu.node.agent.tokens import Tokens
from emu.node.kube import podstatus
from emu.node.kube.client import ApiError, Client, from_pki, resource_path
from emu.node.plan import cni
from emu.node.records import ClusterState, NodeTiming, PodState

LEASE_NAMESPACE = "kube-node-lease"
RETRY = 1.0  # seconds before a write the API server did not take is tried again
FIELD_MANAGER = "kubelet"
READINESS_MANAGER = "kubelet-readiness"  # image pods' readiness: emu's commands keep writing the rest


def micro_time(epoch: float) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1e6):06d}Z"


def node_client(state: ClusterState, node: str, pki: str = cni.PKI_DIR) -> Client | None:
    """A client of the cluster's API server as this node, None where the node has
    no certificate (a cluster made without an API server)."""
    server = f"https://{cni.api_server_node(state).node_ip}:{cni.API_PORT}"
    return from_pki(server, pki, f"nodes/{node}", f"kubelet/emu ({node})")


def controller_client(state: ClusterState, pki: str = cni.PKI_DIR) -> Client | None:
    """A client of the API server as emu's controller (the identity emu's commands
    use, whose certificate the API server's node holds, as a control-plane node
    holds kube-controller-manager's), None without that certificate: for the
    hub, which runs on that node, to tell the API server of the pods it moves."""
    return from_pki(f"https://127.0.0.1:{cni.API_PORT}", pki, "emu-controller", "emu-hub")


class ApiStatus:
    """What this node last wrote, and the writes still due."""

    def __init__(self, node: str, log: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, connect: Callable = node_client,
                 tokens: Tokens | None = None):  # fmt: skip
        self.node = node
        self.log = log
        self.clock = clock
        self.wall = wall
        self.connect = connect
        self.client: Client | None = None
        self.server_of: str = ""  # the API server's node IP the client was made for
        self.renewed_at = float("-inf")
        self.lease_version = ""  # the resourceVersion of our Lease as last written
        self.acquired: str | None = None  # its acquireTime
        self.written: dict[str, tuple[str, str]] = {}  # pod key -> (emu uid, the status JSON written)
        self.readiness_written: dict[str, tuple[str, bool]] = {}  # image pod key -> (emu uid, ready written)
        self.transitions: dict[str, dict[str, str]] = {}  # emu uid -> {condition: lastTransitionTime}
        self.last_ready: dict[str, bool] = {}  # emu uid -> the Ready condition last seen
        self.failing = False  # the last attempt failed (logged once per streak)
        self.tokens = tokens  # the pods' service account tokens (emu.node.agent.tokens), None: not kept
        self.timing = NodeTiming()  # the Lease's duration and renewal, as the state's topology sets them

    # ---- the step --------------------------------------------------------------
    def step(self, state: ClusterState | None, entries: dict[str, dict[str, dict]],
             readiness: dict[str, bool] | None = None) -> float:  # fmt: skip
        """Renew the Lease when due and write the statuses that changed. `entries`:
        {pod uid: the kubelet's container entries} of this node's pods; `readiness`:
        {pod uid: ready} as its probes see them (image pods' readiness). Returns the
        seconds until the next renewal (or a retry)."""
        if state is None or not any(node.name == self.node for node in state.nodes):
            return self.timing.renew_interval
        self.timing = state.node_timing
        renew_interval = self.timing.renew_interval
        client = self._client(state)
        if client is None:
            return renew_interval * 6  # no certificate: nothing to report to
        if self.failing:
            # Away for a while: others may have written meanwhile (the node lifecycle
            # controller marks an unreachable node's pods not ready): write them all again.
            self.written.clear()
            self.readiness_written.clear()
        try:
            if self.clock() - self.renewed_at >= renew_interval:
                self.renew(client)
            pending = self.write_statuses(client, state, entries)
            pending = self.write_readiness(client, state, readiness or {}) or pending
            token_wait = self.tokens.sync(client, state) if self.tokens else renew_interval
        except (OSError, ApiError) as error:
            if not self.failing:
                self.log(f"reporting to the API server failed: {error}; trying again every {RETRY:.0f} s")
            self.failing = True
            client.close()
            return RETRY
        if self.failing:
            self.log("reporting to the API server again")
        self.failing = False
        return RETRY if pending else max(0.05, min(token_wait, renew_interval - (self.clock() - self.renewed_at)))

    def _client(self, state: ClusterState) -> Client | None:
        server = cni.api_server_node(state).node_ip
        if self.client is None or server != self.server_of:
            if self.client is not None:
                self.client.close()
            self.client, self.server_of = self.connect(state, self.node), server
        return self.client

    # ---- the Lease -----------------------------------------------------------------
    def renew(self, client: Client) -> None:
        path = resource_path("coordination.k8s.io/v1", "leases", LEASE_NAMESPACE, self.node)
        now = micro_time(self.wall())
        lease = None
        if self.lease_version:
            try:
                lease = client.update(path, self._lease(now, self.lease_version, self.acquired))
            except ApiError as error:
                if error.code not in (404, 409):
                    raise
        if lease is None:
            try:
                current = client.get(path)
            except ApiError as error:
                if error.code != 404:
                    raise
                body = self._lease(now, "")
                body["spec"]["acquireTime"] = now
                lease = client.create(resource_path("coordination.k8s.io/v1", "leases", LEASE_NAMESPACE), body)
            else:
                lease = client.update(path, self._lease(now, current["metadata"]["resourceVersion"],
                                                        current.get("spec", {}).get("acquireTime")))  # fmt: skip
        self.lease_version = (lease.get("metadata") or {}).get("resourceVersion", "")
        self.acquired = (lease.get("spec") or {}).get("acquireTime")
        self.renewed_at = self.clock()

    def _lease(self, now: str, version: str, acquired: str | None = None) -> dict:
        meta = {"name": self.node, "namespace": LEASE_NAMESPACE}
        if version:
            meta["resourceVersion"] = version
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": self.timing.lease_duration, "renewTime": now}
        if acquired:
            spec["acquireTime"] = acquired
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    # ---- pods' status ----------------------------------------------------------------
    def reported(self, state: ClusterState) -> list[PodState]:
        """This node's pods whose status the node reports (none of their containers runs an image of its own)."""
        return [pod for pod in state.pods_on(self.node) if not any(cni.runs_image(c) for c in pod.containers)]

    def image_pods(self, state: ClusterState) -> list[PodState]:
        return [pod for pod in state.pods_on(self.node) if any(cni.runs_image(c) for c in pod.containers)]

    def write_readiness(self, client: Client, state: ClusterState, readiness: dict[str, bool]) -> bool:
        """PATCH the Ready and ContainersReady conditions of each image pod whose
        readiness changed (strategic merge: the conditions merge by type, the rest of
        the status stays emu's commands'); whether some are still due."""
        pending = False
        pods = self.image_pods(state)
        keys = {pod.key for pod in pods}
        for key in [k for k in self.readiness_written if k not in keys]:
            del self.readiness_written[key]
        for pod in pods:
            if pod.uid not in readiness:
                continue  # not probed yet
            ready = readiness[pod.uid]
            if self.readiness_written.get(pod.key) == (pod.uid, ready):
                continue
            stamp = podstatus.iso(self.wall())
            conditions = [{"type": kind, "status": "True" if ready else "False", "lastProbeTime": None,
                           "lastTransitionTime": stamp, **({} if ready else {"reason": "ContainersNotReady"})}
                          for kind in ("ContainersReady", "Ready")]  # fmt: skip
            path = resource_path("v1", "pods", pod.namespace, pod.name, "status")
            try:
                client.patch(path, {"status": {"conditions": conditions}}, "strategic", field_manager=READINESS_MANAGER)
            except ApiError as error:
                if error.code == 404:  # not written into the API server yet
                    pending = True
                    continue
                raise
            self.readiness_written[pod.key] = (pod.uid, ready)
        return pending

    def desired(self, state: ClusterState, pod: PodState, entries: dict[str, dict]) -> dict:
        ready = bool(entries) and all(
            entries.get(c["name"], {}).get("ready") and entries.get(c["name"], {}).get("state") == "Running"
            for c in pod.containers
        )
        times = self.transitions.setdefault(pod.uid, {})
        if self.last_ready.get(pod.uid) is not None and self.last_ready[pod.uid] != ready:
            stamp = podstatus.iso(self.wall())
            times["Ready"] = times["ContainersReady"] = stamp
        self.last_ready[pod.uid] = ready
        return podstatus.from_entries(state, pod, entries, times)

    def write_statuses(self, client: Client, state: ClusterState, entries: dict[str, dict[str, dict]]) -> bool:
        """PATCH the status of each pod whose status changed; whether some are still
        due (their pod is not in the API server yet: emu writes it after the plan)."""
        pods = self.reported(state)
        keys = {pod.key for pod in pods}
        for key in [k for k in self.written if k not in keys]:
            del self.written[key]
        uids = {pod.uid for pod in pods}
        for table in (self.transitions, self.last_ready):
            for uid in [u for u in table if u not in uids]:
                del table[uid]
        pending = False
        for pod in pods:
            found = entries.get(pod.uid)
            if not found:
                continue  # the kubelet has not looked at it yet
            status = self.desired(state, pod, found)
            text = json.dumps(status, sort_keys=True)
            if self.written.get(pod.key) == (pod.uid, text):
                continue
            path = resource_path("v1", "pods", pod.namespace, pod.name, "status")
            try:
                client.patch(path, {"status": status}, "merge", field_manager=FIELD_MANAGER)
            except ApiError as error:
                if error.code == 404:  # not written into the API server yet
                    pending = True
                    continue
                raise
            self.written[pod.key] = (pod.uid, text)
        return pending
