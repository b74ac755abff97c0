"""The kubelet's pod sync for pods made through the API server (docs/apiserver.md, stage 4).

A pod created with kubectl (not one of emu's own, which the node's plans wire:
emu.node.kube.podwatch.emu_driven) is bound to a node by the API server's
scheduler. That node's agent watches the pods bound to it
(emu.node.kube.podwatch: list + watch with fieldSelector spec.nodeName, relist
on 410) and, as the kubelet does:
- gives a new pod an address from the node's pod CIDR (NodeIPAM: host-local's
  way, its allocations in files on the node's disk, in the kubelet's range of
  the CIDR, emu.node.records.kubelet_pod_range, which emu's planner never uses);
- wires it exactly as emu's plans wire a pod (emu.node.plan.cni.node_plan: its
  namespace, veth on cni0, eth0, routes, hosts and resolv.conf) and starts its
  containers (cni's start scripts, kept under SCRIPT_DIR rather than the plans'
  folder, which the agent's sandbox sync owns: emu.node.agent.pods);
- probes them and restarts them by the pod's restartPolicy (its own
  emu.node.agent.probes.Kubelet), and writes the pod's status (podIP, phase,
  conditions, containerStatuses) with a PATCH of pods/NAME/status as the field
  manager "kubelet";
- when the pod is deleted (graceful deletion: deletionTimestamp and
  deletionGracePeriodSeconds set), sends its containers SIGTERM and stops
  starting them again, but keeps the pod as it is meanwhile: its network, its
  readiness probes and its status (a pod that serves on while it terminates,
  agnhost netexec --delay-shutdown, stays Ready, so that the EndpointSlice
  controller publishes it serving and terminating, and kube-proxy falls back
  to it while no endpoint is ready). Once its containers have all exited, or
  its grace period is over (from the SIGTERM, as the kubelet counts it), it
  kills what is left (SIGKILL), removes its namespace and veth, releases its
  address, and then deletes the pod with a grace period of 0, which removes
  the API object. The loop never waits for a pod to stop: other pods are
  synced and probed meanwhile;
- when the agent starts again (a node restart, an agent crash) it lists its
  pods again: a pod whose namespace is still there is adopted as it is, one
  whose namespace is gone (a node restart) is wired again with the address
  recorded for it; addresses of pods no longer bound here are released.
Standard library only: it runs in the node agent.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable

from emu.node.agent import container_file
from emu.node.agent import pods as sandboxes
from emu.node.agent.apistatus import FIELD_MANAGER, node_client
from emu.node.agent.probes import Kubelet, ProbeThreads
from emu.node.agent.runner import Runner
from emu.node.kube import podstatus, podwatch
from emu.node.kube.client import ApiError, Client, resource_path
from emu.node.plan import NodePlan, cni
from emu.node.reconcile import sandbox_problem
from emu.node.records import ClusterState, PodState, kubelet_pod_range

KUBELET_DIR = "/var/lib/emu/kubelet"
IPAM_DIR = f"{KUBELET_DIR}/ipam"  # <ip>: "<pod uid>\n<namespace/name>\n" (host-local's /var/lib/cni/networks/NET)
SCRIPT_DIR = "/etc/emu/kubelet/containers"  # <netns>/<container>.sh
PLAN_DIR = "/etc/emu/kubelet/plan"  # <netns>/: a pod's plan files
RUN_DIR = "/run/emu/kubelet"  # <netns>.sh: the last script run for a pod
RESYNC = 10.0  # seconds between looks at the pods' sandboxes when nothing happens
RETRY = 1.0  # seconds before a failed wiring or API write is tried again
LAST_RESERVED = "last_reserved_ip.0"


def script_path(netns: str, container: str) -> str:
    """Where an API pod's container start script lives (cni.start_container_script)."""
    return f"{SCRIPT_DIR}/{netns}/{container}.sh"


def netns_of(key: str) -> str:
    namespace, _, name = key.partition("/")
    return name if namespace == "default" else f"{namespace}.{name}"


def _bare(key: str, node: str, ip: str) -> PodState:
    namespace, _, name = key.partition("/")
    return PodState(namespace=namespace, name=name, node=node, ip=ip, labels={}, containers=[], spec_hash="")


class NodeIPAM:
    """Pod addresses from the kubelet's range of the node's pod CIDR, as CNI's
    host-local plugin hands them out: the next free address after the last one
    handed out (wrapping around), one file per address, made with O_EXCL so
    that two allocations never get the same one, on the node's disk so that
    they outlive the agent and a node restart."""

    def __init__(self, pod_cidr: str, directory: str = IPAM_DIR):
        self.range = kubelet_pod_range(pod_cidr)
        self.directory = directory

    def allocations(self) -> dict[str, tuple[str, str]]:
        """{pod uid: (ip, "namespace/name")} of every address handed out."""
        out = {}
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return out
        for ip in names:
            if ip not in self.range:
                continue
            try:
                with open(f"{self.directory}/{ip}") as handle:
                    uid, key = (handle.read().split("\n") + ["", ""])[:2]
            except OSError:
                continue
            if uid:
                out[uid] = (ip, key)
        return out

    def allocate(self, uid: str, key: str) -> str:
        """The pod's address: the one it holds, else a new one."""
        held = self.allocations().get(uid)
        if held:
            return held[0]
        os.makedirs(self.directory, exist_ok=True)
        try:
            with open(f"{self.directory}/{LAST_RESERVED}") as handle:
                last = handle.read().strip()
        except OSError:
            last = ""
        start = self.range.index(last) + 1 if last in self.range else 0
        for offset in range(len(self.range)):
            ip = self.range[(start + offset) % len(self.range)]
            try:
                fd = os.open(f"{self.directory}/{ip}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as error:
                if error.errno == errno.EEXIST:
                    continue
                raise
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{uid}\n{key}\n")
            with open(f"{self.directory}/{LAST_RESERVED}", "w") as handle:
                handle.write(ip)
            return ip
        raise OSError(f"no free address in the kubelet's range {self.range[0]}-{self.range[-1]} of this node's "
                      f"pod CIDR: {len(self.range)} pods made through the API run here already")  # fmt: skip

    def release(self, uid: str) -> None:
        for found, (ip, _) in self.allocations().items():
            if found == uid:
                try:
                    os.unlink(f"{self.directory}/{ip}")
                except FileNotFoundError:
                    pass


def run_plan(plan: NodePlan, script: str) -> subprocess.CompletedProcess:
    return sandboxes.run(plan, script)


class PodsView:
    """A state whose pods include the kubelet's API pods (for the streaming API: logs, exec)."""

    def __init__(self, state: ClusterState | None, extra: dict[str, PodState]):
        self._state = state
        self.pods = collections.ChainMap(state.pods if state else {}, extra)

    def __getattr__(self, name):
        return getattr(self._state, name)


class ApiPods:
    """The kubelet of the pods made through the API on one node. `job` is its Runner."""

    def __init__(self, node: str, log: Callable[[str], None], state_of: Callable[[], ClusterState | None],
                 connect: Callable = node_client, ipam_dir: str = IPAM_DIR, run: Callable = run_plan,
                 look: Callable = sandboxes.look, kubelet: Kubelet | None = None,
                 wall: Callable[[], float] = time.time, clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.node = node
        self.log = log
        self.state_of = state_of
        self.connect = connect
        self.ipam_dir = ipam_dir
        self.ipam: NodeIPAM | None = None
        self.run = run
        self.look = look
        self.wall = wall
        self.clock = clock
        self.kubelet = kubelet or Kubelet(ProbeThreads(), restart=self._restart)
        self.client: Client | None = None
        self.informer = None
        self.lock = threading.Lock()  # guards wired (read by the streaming API's thread)
        self.wired: dict[str, PodState] = {}  # API uid -> the pod as wired
        self.refused: dict[str, tuple[str, str]] = {}  # API uid -> (container, why): not run here
        self.written: dict[str, str] = {}  # API uid -> the status JSON last written
        self.transitions: dict[str, dict[str, str]] = {}  # API uid -> {condition: lastTransitionTime}
        self.last_ready: dict[str, bool] = {}
        self.confirmed: set[str] = set()  # API uids whose deletion this kubelet confirmed
        self.stopping: dict[str, tuple[float, PodState]] = {}  # API uid -> (when SIGTERM went, the pod): deleted
        self.job = Runner("apipods", self.step, log, gather=0.05, retry_interval=RETRY, fds=self._fds,
                          describe=lambda: "the kubelet's sync of pods made through the API")  # fmt: skip

    # ---- the loop --------------------------------------------------------------
    def step(self, requested: bool) -> float:
        state = self.state_of()
        if state is None or not any(n.name == self.node for n in state.nodes):
            return 1.0
        if self.client is None:
            self.client = self.connect(state, self.node)
            if self.client is None:
                return RESYNC * 6  # no certificate: a cluster without an API server
        if self.ipam is None:
            self.ipam = NodeIPAM(state.node(self.node).pod_cidr, self.ipam_dir)
        if self.informer is None:
            self.informer = podwatch.pod_informer(self.client, self.node, self.job.request, self.log).start()
        if not self.informer.synced.is_set():
            return 1.0  # its first list wakes the job
        pending = self.sync(state)
        with self.lock:
            pods = list(self.wired.values())
        if [p.uid for p in pods] != [p.uid for p in self.kubelet.pods]:
            self.kubelet.set_pods(pods)
        self.kubelet.step()
        stopping_pending, stop_due = self.finish_stopping()
        pending = stopping_pending or pending
        try:
            pending = self.write_statuses(state) or pending
        except (OSError, ApiError) as error:
            self.log(f"writing pod status failed: {error}")
            pending = True
        wake = min(self.kubelet.next_wake() - self.clock(), RESYNC, stop_due)
        return RETRY if pending else max(0.01, wake)

    def _fds(self) -> list[int]:
        return self.kubelet.watch.fds()

    def pods_view(self, state: ClusterState | None) -> PodsView:
        with self.lock:
            extra = {pod.key: pod for pod in self.wired.values()}
        return PodsView(state, extra)

    # ---- wiring ----------------------------------------------------------------
    def sync(self, state: ClusterState) -> bool:
        """Make the node hold the pods bound to it; whether something is left to retry."""
        objects = {podwatch.meta(p).get("uid", ""): p for p in self.informer.list() if not podwatch.emu_driven(p)}
        allocated = self.ipam.allocations()
        pending = False
        for uid, (ip, key) in allocated.items():
            if uid not in objects:
                pending |= not self.unwire(uid, key, ip, 0)
        seen = self.look()
        emu_netns = {pod.netns for pod in state.pods_on(self.node)}
        for uid in [u for u in self.refused if u not in objects]:
            del self.refused[uid]
        for uid, obj in objects.items():
            key = podwatch.key(obj)
            if podwatch.meta(obj).get("deletionTimestamp"):
                if uid in allocated:
                    pending |= not self.stop(uid, obj, allocated[uid][0], seen.netns)
                else:
                    pending |= not self.confirm_deletion(obj)
                continue
            if podwatch.terminal(obj):
                continue
            problem = podwatch.unsupported(obj)
            if problem is None and netns_of(key) in emu_netns:
                problem = ("", f"a pod of emu's own commands on this node has the namespace {netns_of(key)}")
            if problem is None:
                try:
                    ip = self.ipam.allocate(uid, key)
                except OSError as error:  # the kubelet's range is full: this pod waits, the others go on
                    problem = ("", f"no address for the pod: {error}")
            if problem is not None:
                if uid not in self.refused:
                    self.log(f"pod {key}: not run: {problem[1]}")
                self.refused[uid] = problem
                continue
            self.refused.pop(uid, None)
            pod = podwatch.pod_state(obj, self.node, ip)
            why = sandbox_problem(pod, seen.netns, seen.ports)
            with self.lock:
                known = uid in self.wired
            if known and why is None:
                continue
            if why is None:
                self.log(f"pod {key}: adopted as it runs ({ip})")
            elif not self.wire(state, pod, rebuild=uid in allocated or pod.netns in seen.netns, why=why):
                pending = True
                continue
            with self.lock:
                self.wired[uid] = pod
        return pending

    def wire(self, state: ClusterState, pod: PodState, rebuild: bool, why: str) -> bool:
        node = state.node(self.node)
        plan = cni.node_plan(state, node, [pod], [pod] if rebuild else [], new_node=False,
                             plan_dir=f"{PLAN_DIR}/{pod.netns}", script_of=script_path)  # fmt: skip
        result = self.run(plan, f"{RUN_DIR}/{pod.netns}.sh")
        if result.returncode:
            self.log(f"pod {pod.key}: wiring failed (exit {result.returncode}): "
                     f"{(result.stdout + result.stderr)[-2000:]}")  # fmt: skip
            return False
        self.log(f"pod {pod.key}: {'wired again' if rebuild else 'wired'} with {pod.ip} ({why})")
        return True

    # ---- graceful deletion -----------------------------------------------------
    def stop(self, uid: str, obj: dict, ip: str, netns: set[str]) -> bool:
        """Graceful deletion's first step, once a pod: SIGTERM to its containers, which are not
        started again from now on. The pod keeps its network and its probes until `finish_stopping`."""
        if uid in self.stopping:
            return True
        key = podwatch.key(obj)
        with self.lock:
            pod = self.wired.get(uid)
        if pod is None and netns_of(key) in netns:  # the agent started again while the pod was stopping
            pod = podwatch.pod_state(obj, self.node, ip)
            with self.lock:
                self.wired[uid] = pod
        if pod is None or deletion_grace(obj) <= 0:
            return self.unwire(uid, key, ip, 0) and self.confirm_deletion(obj)
        result = self.run(sigterm_plan(self.node, pod), f"{RUN_DIR}/{pod.netns}.sh")
        if result.returncode:
            self.log(f"pod {key}: sending its containers SIGTERM failed (exit {result.returncode}): "
                     f"{(result.stdout + result.stderr)[-2000:]}")  # fmt: skip
            return False
        self.stopping[uid] = (self.clock(), pod)
        self.kubelet.stopping.add(pod.uid)
        self.log(f"pod {key}: deleted: SIGTERM sent to its containers, {deletion_grace(obj)} s to exit")
        return True

    def finish_stopping(self) -> tuple[bool, float]:
        """Graceful deletion's end: each stopping pod whose containers have all exited, or whose grace
        period is over, is removed (SIGKILL to what is left) and its deletion confirmed.
        (Whether some are left to retry, seconds until the next grace period ends.)"""
        pending, due = False, RESYNC
        if not self.stopping:
            return pending, due
        objects = {podwatch.meta(p).get("uid", ""): p for p in self.informer.list()}
        now = self.clock()
        for uid, (since, pod) in list(self.stopping.items()):
            obj = objects.get(uid)
            if obj is None:  # deleted outright meanwhile (grace 0): sync removes it
                continue
            grace = deletion_grace(obj)
            dead = set(self.kubelet.dead.get(pod.uid, []))
            exited = pod.uid in self.kubelet.alive and dead >= {c["name"] for c in pod.containers}
            if not exited and now < since + grace:
                due = min(due, since + grace - now)
                continue
            self.log(f"pod {pod.key}: " + ("its containers exited" if exited else
                                           f"its grace period of {grace} s is over: SIGKILL"))  # fmt: skip
            if not self.unwire(uid, pod.key, pod.ip, 0):
                pending = True
                continue
            pending |= not self.confirm_deletion(obj)
        return pending, due

    def unwire(self, uid: str, key: str, ip: str, grace: int) -> bool:
        """Stop the pod's containers (SIGTERM, SIGKILL after `grace` seconds), remove
        its namespace, veth and files, and release its address."""
        bare = _bare(key, self.node, ip)
        plan = NodePlan(node=self.node, container="")
        plan.steps += [
            cni.DELETE_POD_FUNCTION,
            f"emu_delete_pod {shlex.quote(bare.netns)} {bare.host_veth} {ip} - {int(grace)}",
            f"rm -rf {shlex.quote(f'{SCRIPT_DIR}/{bare.netns}')} {shlex.quote(f'{PLAN_DIR}/{bare.netns}')}",
        ]
        result = self.run(plan, f"{RUN_DIR}/{bare.netns}.sh")
        if result.returncode:
            self.log(f"pod {key}: removing it failed (exit {result.returncode}): "
                     f"{(result.stdout + result.stderr)[-2000:]}")  # fmt: skip
            return False
        self.ipam.release(uid)
        with self.lock:
            gone = self.wired.pop(uid, None)
        if self.stopping.pop(uid, None) and gone is not None:
            self.kubelet.stopping.discard(gone.uid)
        for table in (self.written, self.transitions, self.last_ready):
            table.pop(uid, None)
        self.log(f"pod {key}: removed, {ip} released")
        return True

    def confirm_deletion(self, obj: dict) -> bool:
        """The kubelet's last word on a pod being deleted: its containers have stopped, delete it now."""
        meta = podwatch.meta(obj)
        uid = meta.get("uid", "")
        if uid in self.confirmed:
            return True
        path = resource_path("v1", "pods", meta.get("namespace", ""), meta.get("name", ""))
        try:
            self.client.delete(path, grace_period_seconds=0, preconditions={"uid": uid})
        except ApiError as error:
            if error.code not in (404, 409):  # gone already, or another pod of that name now
                self.log(f"pod {podwatch.key(obj)}: confirming its deletion failed: {error}")
                return False
        except OSError as error:
            self.log(f"pod {podwatch.key(obj)}: confirming its deletion failed: {error}")
            return False
        self.confirmed.add(uid)
        return True

    def _restart(self, pod: PodState, container: str) -> None:
        self.log(f"container {container} of pod {pod.key} is not running: starting it again")
        subprocess.run(["sh", script_path(pod.netns, container)], capture_output=True, timeout=10)

    # ---- status ----------------------------------------------------------------
    def write_statuses(self, state: ClusterState) -> bool:
        """PATCH the status of each pod whose status changed; whether some are due again."""
        pending = False
        objects = {podwatch.meta(p).get("uid", ""): p for p in self.informer.list()}
        with self.lock:
            wired = dict(self.wired)
        for uid, obj in objects.items():
            if podwatch.emu_driven(obj):
                continue
            # (A pod being deleted is reported on while it stops: its readiness keeps the endpoint serving.)
            if uid in wired:
                pod = wired[uid]
                entries = self.kubelet.container_entries(pod)
                if not entries and pod.uid not in self.kubelet.alive:
                    continue  # not looked at yet
                status = self.desired(state, uid, obj, pod, entries)
            elif uid in self.refused and not podwatch.meta(obj).get("deletionTimestamp"):
                status = self.refused_status(obj, *self.refused[uid])
            else:
                continue
            text = json.dumps(status, sort_keys=True)
            if self.written.get(uid) == text:
                continue
            meta = podwatch.meta(obj)
            path = resource_path("v1", "pods", meta.get("namespace", ""), meta.get("name", ""), "status")
            try:
                self.client.patch(path, {"status": status}, "merge", field_manager=FIELD_MANAGER)
            except ApiError as error:
                if error.code == 404:
                    continue
                raise
            self.written[uid] = text
        return pending

    def desired(self, state: ClusterState, uid: str, obj: dict, pod: PodState, entries: dict) -> dict:
        ready = bool(entries) and all(entries.get(c["name"], {}).get("ready")
                                      and entries.get(c["name"], {}).get("state") == "Running"
                                      for c in pod.containers)  # fmt: skip
        created = podwatch.meta(obj).get("creationTimestamp")
        times = self.transitions.setdefault(uid, {kind: created for kind in podstatus.CONDITIONS})
        if self.last_ready.get(uid) is not None and self.last_ready[uid] != ready:
            times["Ready"] = times["ContainersReady"] = podstatus.iso(self.wall())
        self.last_ready[uid] = ready
        scheduled = _condition(obj, "PodScheduled")
        if scheduled:
            times["PodScheduled"] = scheduled
        return podstatus.from_entries(state, pod, entries, times)

    def refused_status(self, obj: dict, container: str, why: str) -> dict:
        created = podwatch.meta(obj).get("creationTimestamp")
        spec = obj.get("spec") or {}
        statuses = [{"name": c.get("name", ""), "image": c.get("image", ""), "imageID": "", "ready": False,
                     "restartCount": 0, "started": False,
                     "state": {"waiting": {"reason": "CreateContainerError", "message": why}}}
                    for c in spec.get("containers") or []]  # fmt: skip
        conditions = [{"type": kind, "status": "True" if kind in ("PodScheduled", "Initialized") else "False",
                       "lastProbeTime": None, "lastTransitionTime": created}
                      for kind in podstatus.CONDITIONS]  # fmt: skip
        return {"phase": "Pending", "conditions": conditions, "containerStatuses": statuses,
                "message": f"container {container}: {why}" if container else why, "reason": "CreateContainerError"}


def deletion_grace(obj: dict) -> int:
    """The seconds a deleted pod has to stop: its deletionGracePeriodSeconds (0: none)."""
    grace = podwatch.meta(obj).get("deletionGracePeriodSeconds")
    return grace if isinstance(grace, int) and grace > 0 else 0


def sigterm_plan(node: str, pod: PodState) -> NodePlan:
    """SIGTERM to each container's process (its pid file: a number while it runs), as a container
    runtime stops a container. Its parent (cni.CONTAINER_PARENT) stays, to record the exit code."""
    files = " ".join(shlex.quote(container_file(pod.netns, c["name"], "pid")) for c in pod.containers)
    plan = NodePlan(node=node, container="")
    plan.steps.append(f'for f in {files}; do for p in $(cat "$f" 2>/dev/null); do '
                      'case $p in *[!0-9]*) ;; *) kill -TERM "$p" 2>/dev/null || true ;; esac; done; done')  # fmt: skip
    return plan


def _condition(obj: dict, kind: str) -> str | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition.get("lastTransitionTime")
    return None
