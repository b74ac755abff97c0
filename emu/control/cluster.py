"""The Cluster facade: up, apply, down, exec and lookups, used by the CLI and tests.

Flow: topology -> plan_cluster (pure) -> node plans (pure) -> runtime (Docker).
The state of a running cluster lives in the cluster (a file on its first
node), so any emu process sees the same pods and allocations.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
from shlex import join as shlex_join
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from emu.control import apiserver, imagepods, netem

from emu.node import reconcile
from emu.node.agent import AGENT_URL, HOLD_FILE, LOCK_DIR, STATE_FILE
from emu.node.agent.gossip import hub_node
from emu.errors import EmuError
from emu.node.plan import NodePlan, cni
from emu.node.reconcile import Drift
from emu.node.records import MAX_STATE_BYTES, NodeState
from emu.control.runtime.provider import ExecResult, NodeSpec, PortMapping, Provider, run_parallel
from emu.control.state import ClusterState, PodState, ordered_stages, plan_cluster, stamp_created
from emu.api.load import load_file
from emu.api.topology.model import Topology

Progress = Callable[[str], None]
AGENT_LOG_LINES = 12  # of a node's agent log, in the error when it did not program a state in time


def _quiet(message: str) -> None:
    pass


@dataclass
class Change:
    """What an up or apply did."""

    created: bool
    added: list[str]
    removed: list[str]
    repaired: list[str] = field(default_factory=list)  # what had drifted from the state, and was mended
    started: list[str] = field(default_factory=list)  # stopped nodes started again (Cluster.start_stopped)

    @property
    def changed(self) -> bool:
        return self.created or bool(self.added or self.removed or self.repaired or self.started)


@dataclass(frozen=True)
class Problem:
    """Something of a running cluster that is down (`emu status`, `emu up`): what and where, and what to do."""

    what: str
    fix: str
    node: str = ""  # the node it stops ("" for a host's)
    host: str = ""

    def __str__(self) -> str:
        return f"{self.what}; {self.fix}"


def pod_changes(previous: ClusterState | None, desired: ClusterState) -> tuple[list[PodState], list[PodState]]:
    """(pods to start, pods to remove): a pod whose spec changed is replaced."""
    old = previous.pods if previous else {}

    def same(a: PodState, b: PodState) -> bool:
        return (a.spec_hash, a.ip, a.node) == (b.spec_hash, b.ip, b.node)

    added = [p for k, p in desired.pods.items() if k not in old or not same(old[k], p)]
    removed = [p for k, p in old.items() if k not in desired.pods or not same(desired.pods[k], p)]
    return added, removed


def node_plans(previous: ClusterState | None, desired: ClusterState) -> list[NodePlan]:
    """Every node's plan from `previous` (None: a new cluster) to `desired`."""
    added, removed = pod_changes(previous, desired)
    return [
        cni.node_plan(
            desired,
            node,
            [p for p in added if p.node == node.name],
            [p for p in removed if p.node == node.name],
            new_node=previous is None,
        )
        for node in desired.nodes
    ]


class Cluster:
    """A named emu cluster, running or not."""

    def __init__(self, name: str, runtime: Provider | None = None, progress: Progress = _quiet):
        from emu.control.runtime.select import provider_for

        self.name = name
        self.runtime = runtime or provider_for(name)
        self.progress = progress

    # ---- discovery -------------------------------------------------------
    @staticmethod
    def names(runtime: Provider | None = None) -> list[str]:
        """Names of every emu cluster: on `runtime`, or on this machine's engine and
        every set of hosts emu has a cluster on."""
        from emu.control.runtime.select import cluster_names

        return runtime.cluster_names() if runtime else cluster_names()

    @property
    def exists(self) -> bool:
        return bool(self.runtime.cluster_containers(self.name) or self.runtime.cluster_networks(self.name))

    def state(self) -> ClusterState:
        """The running cluster's state, read from its first node."""
        containers = self.runtime.cluster_containers(self.name)
        if not containers:
            unreachable = self._unreachable_hosts()
            if unreachable:  # its nodes may be on the hosts that do not answer
                raise EmuError(f"cluster '{self.name}': no node of it answers; " + "; ".join(unreachable.values()))
            raise EmuError(f"no emu cluster named '{self.name}' is running; start one with `emu up FILE`")
        # Running nodes first: a stopped uml node's files are on a disk no kernel reads until it boots again.
        names = [c.name for c in sorted(containers, key=lambda c: not c.running) if c.is_node]
        for container in names:
            text = self.runtime.read_file(container, STATE_FILE, limit=MAX_STATE_BYTES)
            if text:
                return ClusterState.from_json(text)
        raise EmuError(
            f"cluster '{self.name}' has containers ({', '.join(names)}) but no state file {STATE_FILE}; "
            f"it is broken: remove it with `emu down {self.name}`"
        )

    def pod(self, reference: str) -> PodState:
        """Find a pod by 'name' (namespace default), 'namespace/name' or netns name."""
        return find_pod(self.state(), reference)

    # ---- lifecycle -------------------------------------------------------
    def up(self, topology: Topology | str | Path, wait: bool = True) -> Change:
        """Create the cluster, or converge a running one to the topology."""
        if not isinstance(topology, Topology):
            topology = load_file(topology)
        if topology.name != self.name:
            raise EmuError(f"the topology names cluster '{topology.name}' but this is cluster '{self.name}'")
        hosts_changed = [h.name for h in topology.hosts] != [h.name for h in getattr(self.runtime, "hosts", [])]
        runtime_changed = topology.runtime is not None and topology.runtime != getattr(self.runtime, "name", "docker")
        if hosts_changed or runtime_changed:
            from emu.control.runtime.select import provider_for

            self.runtime = provider_for(self.name, list(topology.hosts), topology.runtime)
        if any(c.is_node for c in self.runtime.cluster_containers(self.name)):
            return self._up_running(topology, wait)
        with self._creating():
            if not any(c.is_node for c in self.runtime.cluster_containers(self.name)):  # none made meanwhile
                # A network left without containers (a down the engine did not finish):
                # removed first, or the engine's reason is the error.
                self.runtime.remove_cluster(self.name)
                return self._create(topology, wait)
        return self._up_running(topology, wait)

    def _up_running(self, topology: Topology, wait: bool) -> Change:
        """`emu up` of a cluster that exists: its stopped nodes started first (an engine or host that
        restarted without them, a `docker stop`), then converged to the topology."""
        started = self.start_stopped(wait=wait)
        change = self.apply(topology, wait=wait)
        change.started = started
        return change

    # ---- nodes that are down -------------------------------------------------
    def _unreachable_hosts(self) -> dict[str, str]:
        """{host: why its engine does not answer} (a provider over several hosts), connecting the others."""
        survey = getattr(self.runtime, "unreachable_hosts", None)
        return survey() if survey else {}

    def health(self) -> tuple[ClusterState, list[Problem]]:
        """The cluster's state and what of it is down: hosts whose engine does not answer, swarm nodes down,
        node containers stopped or gone, each with what to do. Looks only: changes nothing."""
        unreachable = self._unreachable_hosts()  # first: the hosts that answer are connected, the others named
        state = self.state()
        records = {c.name: c for c in self.runtime.cluster_containers(self.name)}
        swarm_down = getattr(self.runtime, "swarm_nodes_down", None)
        down = swarm_down() if swarm_down else {}
        problems: list[Problem] = []
        uml = getattr(self.runtime, "name", "docker") == "uml"  # a guest, not a container docker could start
        for host, reason in unreachable.items():
            nodes = [n.name for n in state.nodes if n.host == host]
            what = f"{reason.rstrip('.')}" + (f" (nodes {', '.join(nodes)} are on it)" if nodes else "")
            problems.append(Problem(what, f"once {host}'s engine is back its nodes start by themselves; if they do "
                                          "not, `emu up FILE` starts them", host=host))  # fmt: skip
        for host, swarm in down.items():
            if host not in unreachable:
                problems.append(Problem(f"host {host}: its swarm node is {swarm}",
                                        f"start Docker on {host}: it rejoins the swarm by itself", host=host))
        for node in state.nodes:
            if node.host in unreachable:
                continue
            where = f" on host {node.host}" if node.host else ""
            record = records.get(node.container)
            if record is None:
                problems.append(Problem(
                    f"node {node.name}: its container {node.container}{where} is gone (removed outside emu)",
                    f"emu cannot make it again in place: `emu down {self.name}` then `emu up FILE`",
                    node.name, node.host))  # fmt: skip
            elif not record.running:
                problems.append(Problem(
                    f"node {node.name}: its container {node.container}{where} is not running "
                    f"({record.status or 'stopped'})",
                    "`emu up FILE` starts it again and its pods are rebuilt"
                    + ("" if uml else f" (so does `docker start {node.container}`)"),
                    node.name, node.host))  # fmt: skip
        return state, problems

    def start_stopped(self, state: ClusterState | None = None, wait: bool = True) -> list[str]:
        """Start the node containers that are stopped (their command rebuilds their pods: cni.NODE_COMMAND)
        and, with `wait`, wait for their agents to program the state and their pods to answer. Returns a line
        for each node started. A node whose container is gone, or that does not start, is an error that says
        what was started and what is left."""
        state = state or self.state()
        records = {c.name: c for c in self.runtime.cluster_containers(self.name)}
        gone = [n for n in state.nodes if n.container not in records]
        if gone:
            unreachable = self._unreachable_hosts()
            raise EmuError(
                f"cluster '{self.name}': node(s) {', '.join(n.name for n in gone)} have no container "
                f"({', '.join(n.container for n in gone)}); "
                + ("; ".join(unreachable.values()) + "; " if unreachable else "")
                + f"if they were removed, emu cannot make them again in place: `emu down {self.name}`, then "
                "`emu up FILE`"
            )
        stopped = [n for n in state.nodes if not records[n.container].running]
        if not stopped:
            return []
        if not hasattr(self.runtime, "start_node"):  # a runtime whose nodes cannot be started again in place
            raise EmuError(
                f"cluster '{self.name}': node(s) {', '.join(n.name for n in stopped)} are not running and its "
                f"runtime cannot start a node again; nothing was changed: `emu down {self.name}`, then `emu up FILE`"
            )
        lines = []
        for node in stopped:
            where = f" on host {node.host}" if node.host else ""
            line = f"node {node.name} ({node.container}{where}) was {records[node.container].status or 'stopped'}"
            self.progress(f"{line}: starting it")
            lines.append(f"{line}: started")

        def start(node) -> str | None:
            try:
                self.runtime.start_node(node.container)
            except Exception as error:  # noqa: BLE001 - reported with the others below
                return f"node {node.name}: {error}"
            return None

        failed = [found for found in self.runtime.parallel(start, stopped) if found]
        if failed:
            started = [n.name for n in stopped if not any(f.startswith(f"node {n.name}:") for f in failed)]
            raise EmuError(
                f"cluster '{self.name}': could not start every stopped node:\n  " + "\n  ".join(failed)
                + (f"\nstarted: {', '.join(started)} (they stay up and rebuild their pods by themselves)"
                   if started else "")
                + f"\nnothing else was changed; fix the cause and run `emu up` again, or remove the cluster with "
                f"`emu down {self.name}`"
            )
        if wait:
            self.progress(f"waiting for {', '.join(n.name for n in stopped)} to rebuild their pods")
            names = {n.name for n in stopped}
            self.wait(state, only={p.key for p in state.pods.values() if p.node in names})
        return lines

    @contextlib.contextmanager
    def _creating(self):
        """One `emu up` on this machine creates the cluster at a time: another's sweep
        of a network without nodes, or its clean-up after it failed, would remove
        what this one makes. A file lock (EMU_HOME/locks/NAME.up; the kernel lets it
        go when the process ends); none when EMU_HOME cannot be written."""
        import fcntl

        path = self._creating_lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
        except OSError:
            handle = None
        if handle is None:
            yield
            return
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                held = handle.read().strip() or "another emu command"
                raise EmuError(
                    f"cluster '{self.name}' is being created by {held}; wait for it to finish, then run `emu up` again"
                ) from None
            handle.truncate(0)
            handle.write(_holder())
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)

    def _creating_lock(self) -> Path:
        from emu.control.runtime.remembered import records_dir

        return records_dir().parent / "locks" / f"{self.name}.up"

    def _create(self, topology: Topology, wait: bool) -> Change:
        started = time.monotonic()
        if topology.networking.proxy_mode == "ipvs" and not getattr(self.runtime, "kernel_has_ip_vs", False):
            from emu.node.proxy.ipvs import refuse_up

            refuse_up()  # before anything is created
        netem.check_declared(topology, self.runtime)
        image = topology.node_image or self.runtime.node_image(self.progress)
        networking = topology.networking
        subnet = self.runtime.pick_subnet(networking.cluster_network, [networking.pod_subnet, networking.service_subnet])
        network = f"emu-{self.name}"
        desired = plan_cluster(topology, network, subnet, node_image=image, mtu=self.runtime.mtu)
        api = apiserver.ApiServerSetup.plan(desired, self.runtime)
        (first, waits), *later = ordered_stages(None, desired)
        plans = node_plans(None, first)
        api.add_files(plans)
        warning = neighbour_table_warning(len(desired.nodes), len(desired.pods))
        if warning:
            self.progress(warning)
        mappings = {n.name: [PortMapping(m.listen_address, m.host_port, m.container_port, m.protocol)
                             for m in n.extra_port_mappings] for n in topology.nodes}  # fmt: skip
        mappings[api.node].append(api.mapping)
        specs = [
            NodeSpec(n.container, n.name, n.role, self.name, image, network, n.node_ip, n.host, cni.NODE_COMMAND,
                     mappings[n.name])  # fmt: skip
            for n in desired.nodes
        ]
        self.runtime.check_ports(specs)
        try:
            self.progress(f"network {network} {subnet}")
            self.runtime.create_network(network, subnet, self.name)
            self.progress(f"starting {len(desired.nodes)} nodes")
            self.runtime.parallel(self.runtime.create_node, specs)
            # Held from the nodes' start: an `emu apply` meanwhile is refused, not run between our steps.
            with self.lock(hub_node(desired).container):
                self.progress(f"wiring {len(first.pods)} pods")
                client = api.client(self.runtime, first)

                def objects_first() -> None:
                    # The cluster's objects are in the API server while the pods come up, as on a
                    # real cluster (pods not ready yet): the DNS server, a client of the API, needs
                    # its pod and ServiceAccount there for its token before it can be ready.
                    client.wait_ready()
                    self.progress(f"API server at {api.endpoint}")
                    apiserver.mirror(client, first, list(first.pods_uids()))

                unready = self._apply_plans(plans, first, None, wait=wait or bool(later), meanwhile=objects_first)
                apiserver.mirror(client, first, unready if unready is not None else list(first.pods_uids()))
                if wait or later:
                    self.wait_rules_from_api(first)
                if later:
                    self._ordered_steps(first, later, waits, unready or [])
                for line in netem.converge(self, {}, netem.declared(topology)):
                    self.progress(line)
                api.merge_kubeconfig(self.name)
        except BaseException:
            # Nothing is half-created: remove whatever this call made.
            self.progress("failed; removing what was created")
            self.runtime.remove_cluster(self.name)
            raise
        self.progress(f"cluster '{self.name}' is up in {time.monotonic() - started:.1f}s")
        return Change(True, sorted(desired.pods), [])

    def apply(self, topology: Topology | str | Path, wait: bool = True) -> Change:
        """Converge a running cluster to the topology: pods added and removed, the others untouched."""
        if not isinstance(topology, Topology):
            topology = load_file(topology)
        with self.lock():
            previous = self.state()
            desired = self.replan(topology, previous)
            return self._converge(previous, desired, wait)

    def update(self, change: Callable[[Topology], Topology], wait: bool = True) -> Change:
        """Converge to change(the running topology), under the cluster's lock: how
        `emu apply -f` and `emu delete -f` change a cluster. `change` raises to
        leave it as it is."""
        with self.lock():
            previous = self.state()
            topology = change(Topology.model_validate(previous.topology))
            desired = self.replan(topology, previous)
            return self._converge(previous, desired, wait)

    def _converge(self, previous: ClusterState, desired: ClusterState, wait: bool = True) -> Change:
        links_before, links_after = netem.declared_in(previous.topology), netem.declared_in(desired.topology)
        if links_after != links_before:
            netem.check_declared(Topology.model_validate(desired.topology), self.runtime)  # before anything changes
        change = self._converge_pods(previous, desired, wait)
        for line in netem.converge(self, links_before, links_after):
            self.progress(line)
        return change

    def _converge_pods(self, previous: ClusterState, desired: ClusterState, wait: bool = True) -> Change:
        added, removed = pod_changes(previous, desired)
        if not added and not removed and desired.topology == previous.topology:
            return self.repair(previous, wait)
        self.progress(f"adding {len(added)} pods, removing {len(removed)}")
        (first, waits), *later = ordered_stages(previous, desired)
        first_added = {p.key for p in pod_changes(previous, first)[0]}
        unready = self._apply_plans(node_plans(previous, first), first, previous, wait=wait or bool(later), only=first_added)
        self._mirror(first, unready, wait=wait or bool(later))
        if later:
            self._ordered_steps(first, later, waits, unready or [])
        return Change(False, sorted(p.key for p in added), sorted(p.key for p in removed))

    def _mirror(self, state: ClusterState, unready: list[str] | None, wait: bool = False) -> None:
        """The cluster's objects into its API server (docs/apiserver.md stage 2); pods
        count as ready once the agents said so (not waited for: not ready). With
        `wait`, until every node's service rules reflect them (wait_rules_from_api)."""
        if not state.api_endpoint:
            return  # made by an emu without an API server
        client = apiserver.controller_client(state, self.runtime)
        apiserver.mirror(client, state, unready if unready is not None else list(state.pods_uids()))
        if wait:
            self.wait_rules_from_api(state)

    def _ordered_steps(self, state: ClusterState, later: list, waits: list[str], unready: list[str]) -> None:
        """Start StatefulSet pods in order (podManagementPolicy OrderedReady): each
        step once the pods of the one before are ready. A pod that does not become
        ready stops the ones after it, as in Kubernetes; the next `emu up` or
        `emu apply` goes on from there."""
        for next_state, next_waits in later:
            stuck = sorted(set(waits) & set(unready))
            if stuck:
                self.progress(
                    f"{', '.join(uid.split('@')[0] for uid in stuck)} not ready, so the StatefulSet pods after "
                    "them were not started (podManagementPolicy OrderedReady); `emu apply` again starts them once it is"
                )
                return
            added = {p.key for p in pod_changes(state, next_state)[0]}
            self.progress(f"starting {', '.join(sorted(added))} (StatefulSet, in order)")
            unready = self._apply_plans(node_plans(state, next_state), next_state, state, wait=True, only=added)
            self._mirror(next_state, unready, wait=True)
            state, waits = next_state, next_waits

    def scale(self, deployment: str, replicas: int, wait: bool = True) -> Change:
        """Set a deployment's replicas (`NAME` or `NAMESPACE/NAME`)."""
        with self.lock():
            previous = self.state()
            topology = Topology.model_validate(previous.topology)
            namespace, _, name = deployment.rpartition("/")
            namespace = namespace or "default"
            found = [d for d in topology.deployments if (d.namespace, d.name) == (namespace, name)]
            if not found:
                known = ", ".join(f"{d.namespace}/{d.name}" for d in topology.deployments) or "none"
                raise EmuError(f"no deployment '{namespace}/{name}' in cluster '{self.name}' (deployments: {known})")
            if replicas < 0:
                raise EmuError("replicas must be 0 or more")
            deployments = [
                d.model_copy(update={"replicas": replicas}) if d is found[0] else d for d in topology.deployments
            ]
            scaled = _revalidate(topology.model_copy(update={"deployments": deployments}))
            desired = self.replan(scaled, previous)
            return self._converge(previous, desired, wait)

    def delete_pod(self, reference: str, wait: bool = True) -> Change:
        """Delete a pod. A deployment's pod comes back at once with a new IP, as
        its ReplicaSet would recreate it; a bare pod is gone."""
        with self.lock():
            previous = self.state()
            pod = find_pod(previous, reference)
            topology = Topology.model_validate(previous.topology)
            if pod.owner is None:
                pods = [p for p in topology.pods if (p.namespace, p.name) != (pod.namespace, pod.name)]
                topology = _revalidate(topology.model_copy(update={"pods": pods}))
            forgotten = ClusterState.from_json(previous.to_json())
            del forgotten.pods[pod.key]  # planned afresh: a new IP from host-local IPAM
            desired = self.replan(topology, previous, forgotten)
            return self._converge(previous, desired, wait)

    def down(self) -> tuple[int, int]:
        """Remove every container and network of the cluster, and its kubeconfig
        context. Returns (containers, networks)."""
        removed = self.runtime.remove_cluster(self.name)
        apiserver.remove_kubeconfig(self.name)
        self._creating_lock().unlink(missing_ok=True)
        return removed

    def kubeconfig(self) -> str:
        """The kubeconfig of the cluster's admin (`emu kubeconfig`), as `emu up` merges it."""
        return apiserver.admin_kubeconfig(self.name, self.state(), self.runtime)

    def replan(self, topology: Topology, previous: ClusterState, base: ClusterState | None = None) -> ClusterState:
        """The desired state of the running cluster for `topology`, from `base` (default
        `previous`), around the cluster IPs, node ports and LoadBalancer addresses of the
        Services made through its API server (kubectl's), which emu's own Services may not take."""
        reserved: tuple[set[str], set[int], dict[str, str]] = (set(), set(), {})
        if previous.api_endpoint:
            reserved = apiserver.foreign_service_addresses(apiserver.controller_client(previous, self.runtime))
        return plan_cluster(topology, previous.network, previous.network_subnet, base or previous, reserved=reserved)

    def plan(self, topology: Topology) -> tuple[ClusterState, list[NodePlan]]:
        """What up/apply would run on each node, without running it: the desired
        state and each node's plan."""
        if self.exists:
            previous = self.state()
            desired = self.replan(topology, previous)
            return desired, node_plans(previous, desired)
        desired = plan_cluster(topology, f"emu-{self.name}", "172.28.0.0/24", mtu=self.runtime.mtu)
        return desired, node_plans(None, desired)

    # ---- one change at a time ----------------------------------------------
    @contextlib.contextmanager
    def lock(self, hub: str | None = None):
        """Hold the cluster's lock (a directory on its first node, made atomically)
        while changing it, so two `emu` commands cannot interleave their changes.
        `hub`: the container to hold it in (`emu up` names it: no state to find it by yet)."""
        hub = hub or self._lock_node()
        holder = _holder()
        # (Its parent made first: `emu up` takes the lock before the node's plan has made
        # /etc/emu, and on a node image without it, mkdir's failure read as "held".)
        take = f'mkdir -p {os.path.dirname(LOCK_DIR)} && mkdir {LOCK_DIR} 2>/dev/null && printf %s "$1" >{LOCK_DIR}/holder'
        if not self.runtime.exec(hub, ["sh", "-c", take, "sh", holder]).ok:
            held = self.runtime.read_file(hub, f"{LOCK_DIR}/holder", limit=4096) or "another emu command"
            raise EmuError(
                f"cluster '{self.name}' is being changed by {held.strip()}; wait for it to finish, or if that "
                f"command is gone, run `emu unlock {self.name}`"
            )
        try:
            yield
        finally:
            self.unlock(hub)

    def _lock_node(self) -> str:
        """The container holding the lock: the hub's node, whose agent takes the
        same lock to move a lost node's pods (emu.node.agent.evict)."""
        nodes = [c for c in self.runtime.cluster_containers(self.name) if c.is_node]
        if not nodes:
            raise EmuError(f"no emu cluster named '{self.name}' is running; start one with `emu up FILE`")
        try:
            return hub_node(self.state()).container
        except EmuError:
            # No state yet (an `emu up` still wiring the nodes holds it there, as hub_node
            # picks: a control-plane node); no agent evicts yet.
            return min(nodes, key=lambda c: (c.role != "control-plane", c.name)).name

    def unlock(self, container: str | None = None) -> None:
        """Release the cluster's lock (held by this process, or left by one that died)."""
        if container is None:
            try:
                container = self._lock_node()
            except EmuError:
                return
        self.runtime.exec(container, ["rm", "-rf", LOCK_DIR])

    # ---- reconciling with what is running ----------------------------------
    def check(self, state: ClusterState | None = None) -> list[Drift]:
        """What the nodes hold that differs from the state (one exec a node)."""
        state = state or self.state()

        def observe(node) -> Drift:
            output = self.runtime.exec(node.container, ["sh", "-c", reconcile.OBSERVE]).output
            return reconcile.drift(state, node, reconcile.Observed.parse(output))

        return [found for found in self.runtime.parallel(observe, state.nodes) if not found.empty]

    def repair(self, state: ClusterState | None = None, wait: bool = True) -> Change:
        """Mend what drifted: broken pods replaced in place, a node that lost its
        network rebuilt, a stopped agent started. 'Up to date' only when nothing had."""
        state = state or self.state()
        drifts = self.check(state)
        if not drifts:
            self.progress(f"cluster '{self.name}' is up to date")
            return Change(False, [], [])
        lines = [line for found in drifts for line in found.describe()]
        for line in lines:
            self.progress(f"repairing: {line}")

        def mend(found: Drift) -> None:
            node = state.node(found.node)
            self._run_plan(reconcile.repair_plan(state, node, found), {})

        self.runtime.parallel(mend, drifts)
        if wait:
            self.wait(state, only={key for found in drifts for key in found.pods})
        return Change(False, [], [], repaired=lines)

    # ---- internals -------------------------------------------------------
    def _run_plan(
        self, plan: NodePlan, extra: dict[str, str], tail: tuple[str, ...] = (), release: bool = True
    ) -> None:
        """One exec: the plan's files, `extra` and its script on its stdin, then the script.
        The node's agent keeps its hands off the pods while the plan runs (and,
        with release=False, until the new state is in place: see publish)."""
        # The hold lands before the files: the agent must not take a new pod's
        # files for those of a pod gone (and delete it) before the script runs.
        # First in the archive (its order is kept): once a pod's files are
        # there, so is the hold. (When paths were sorted it came last, and an agent
        # that looked in between took new pods for orphans.)
        hold = {HOLD_FILE: f"{plan.node}: an emu command is changing this node\n"}
        files = {**hold, **plan.files, **extra}
        release_hold = [f"rm -f {HOLD_FILE}"] if release else []
        files[f"{cni.PLAN_DIR}/run.sh"] = "\n".join([plan.script.rstrip("\n"), *tail, *release_hold, ""])
        result = self.runtime.run_with_files(plan.container, files, ["sh", f"{cni.PLAN_DIR}/run.sh"])
        if not result.ok:
            raise EmuError(
                f"node {plan.node}: the plan failed (exit {result.exit_code}):\n{result.output.strip()}\n"
                f"see it with `emu plan`; the script is {cni.PLAN_DIR}/run.sh in container {plan.container}"
            )

    def _apply_plans(
        self, plans: list[NodePlan], state: ClusterState, previous: ClusterState | None,
        wait: bool = False, only: set[str] | None = None, meanwhile: Callable[[], None] | None = None,
    ) -> list[str] | None:  # fmt: skip
        """Run every node's plan and give every node the new state: one exec
        per node (its files on its stdin), nodes in parallel, then one exec per
        node that renames the state into place, tells the agent and, with
        `wait`, waits there (Cluster.wait; returns the pods left unready). The
        agents see the new state together, once every node's pods are wired:
        in a 50-node lab they each synced 8 times while others were still being
        wired, most of the work of coming up; now once or twice."""
        state.generation = (previous.generation if previous else 0) + 1
        stamp_created(state, previous, time.time())
        state_text = state.to_json()

        def apply(plan: NodePlan) -> None:
            # With it, what the node runs to rebuild itself if its container starts again.
            self._run_plan(
                plan, {**cni.boot_files(state, state.node(plan.node)), STATE_FILE + ".new": state_text}, release=False
            )

        added, removed = pod_changes(previous, state)

        def publish(node) -> str:
            record = imagepods.record_command(added, node.name)  # the new image containers' processes, first
            return f"{record}mv {STATE_FILE}.new {STATE_FILE} && rm -f {HOLD_FILE} && {{ {cni.NOTIFY_AGENT}; }}"

        try:
            # Image pods: their sandboxes and containers around the plans (emu.control.imagepods).
            imagepods.wire(self.runtime, state, added, lambda: self.runtime.parallel(apply, plans))
        except EmuError:
            # The agents may mend pods again, as the state they hold says.
            self.runtime.parallel(lambda plan: self.runtime.exec(plan.container, ["rm", "-f", HOLD_FILE]), plans)
            raise
        imagepods.remove(self.runtime, state, removed)
        # `meanwhile` (the objects into the API server) runs while the nodes take the state and wait.
        beside = _Beside(meanwhile)
        if wait:
            self.progress("pods wired; waiting for them to answer and for service rules to be programmed")
            unready = self.wait(state, only=only, publish=publish)
            beside.join()
            return unready

        def put_in_place(node) -> None:
            result = self.runtime.exec(node.container, ["sh", "-c", publish(node)])
            if not result.ok:
                raise EmuError(f"node {node.name}: could not put the new state in place: {result.output.strip()}")

        self.runtime.parallel(put_in_place, state.nodes)
        beside.join()
        return None

    def wait(
        self, state: ClusterState, only: set[str] | None = None, timeout: float | None = None,
        publish: Callable[[NodeState], str] | None = None,
    ) -> list[str]:  # fmt: skip
        """Wait until, on every node, the pods' declared TCP ports answer (only the
        pods in `only`, if given), the agent has programmed this state, and every
        pod counts as ready. Pods that stay unready are reported, not an error:
        they may be meant to. Returns them. The default timeout grows with the
        cluster (`default_wait`: big labs share the machine's cores).

        With `publish` (node -> shell that puts the new state in place), each
        node's exec runs that first and then waits: one exec per node instead of
        two (50 fewer in a 50-node lab), all nodes at once, so that every agent
        gets the state at about the same time."""
        timeout = timeout or default_wait(state)
        done: list[str] = []
        done_lock = threading.Lock()
        last_report = [time.monotonic()]
        ports: dict[str, list[str]] = {}
        for pod in state.pods.values():
            if only is not None and pod.key not in only:
                continue
            for container in pod.containers:
                for port in container.get("ports", []):
                    if port.get("protocol", "TCP") == "TCP":
                        ports.setdefault(pod.node, []).append(f"{pod.ip}:{port['containerPort']}")

        def check(node) -> dict:
            # The agent answers once it is so (Agent.wait). Asked again every 50 ms while it
            # does not listen yet (it starts with the node) or went away while answering
            # (restarted: curl exits 7, 52 or 56), 600 times at most (curl's own --retry
            # waits whole seconds: a second more for every small lab).
            query = "&".join([f"generation={state.generation}", f"timeout={timeout:g}",
                              *(f"port={target}" for target in ports.get(node.name, []))])  # fmt: skip
            ask = (f'n=0; until curl -s --max-time {timeout + 30:g} "{AGENT_URL}/wait?{query}"; do c=$?; '
                   f'case $c in 7|52|56) [ $n -lt 600 ] ;; *) false ;; esac || '
                   f'{{ echo "curl: exit $c asking the agent {AGENT_URL}/wait"; exit 1; }}; '
                   'n=$((n+1)); sleep 0.05; done')  # fmt: skip
            argv = ["sh", "-c", f"{publish(node)} && {{ {ask}; }}" if publish is not None else ask]
            result = self.runtime.exec(node.container, argv)
            output = result.output.strip()
            try:
                outcome = json.loads(output.splitlines()[-1])
                outcome["ports_left"]  # noqa: B018 - an agent's error answer has none
            except (ValueError, IndexError, KeyError, TypeError):
                if publish is not None and "curl:" not in output:
                    raise EmuError(f"node {node.name}: could not put the new state in place: {output}") from None
                raise EmuError(f"node {node.name}: waiting for its agent failed: {output}") from None
            if outcome["ports_left"]:
                raise EmuError(
                    f"node {node.name}: pods did not answer within {timeout:.0f}s on "
                    f"{' '.join(outcome['ports_left'])}; see their logs with `emu logs POD`"
                )
            if not outcome["programmed"]:
                try:
                    tail = self.runtime.exec(node.container, ["tail", "-n", str(AGENT_LOG_LINES), cni.AGENT_LOG]).output
                except Exception as error:  # noqa: BLE001 - the node may be gone by now: say so, not this
                    tail = f"(could not read it: {error})"
                raise EmuError(
                    f"node {node.name}: its agent did not program generation {state.generation} within "
                    f"{timeout:.0f}s; its log ends:\n{tail.rstrip()}\n"
                    f"(more with `emu exec --node {node.name} -- tail -n 100 {cni.AGENT_LOG}`)"
                )
            with done_lock:  # a line every 2 s at most while a big lab settles
                done.append(node.name)
                if len(state.nodes) > 3 and (time.monotonic() - last_report[0] > 2 or len(done) == len(state.nodes)):
                    last_report[0] = time.monotonic()
                    self.progress(f"{len(done)} of {len(state.nodes)} nodes programmed, their pods answering")
            return outcome

        # Every node at once: a node whose exec waited its turn would get its state late (and the
        # others' agents wait a while for its report before they sync).
        outcomes = run_parallel(check, state.nodes, workers=len(state.nodes))
        unready = sorted({pod for outcome in outcomes for pod in outcome["unready"] or []})
        if unready:
            shown = ", ".join(unready[:10]) + (f" and {len(unready) - 10} more" if len(unready) > 10 else "")
            self.progress(f"{len(unready)} pods not ready yet (see `emu status`): {shown}")
        return unready

    def wait_rules_from_api(self, state: ClusterState, timeout: float | None = None) -> int:
        """Where the agents' rules come from the API server (cni.PROXY_FROM_API), wait until
        every node's rules reflect the API's Services and EndpointSlices for the ready pods.
        Two steps, race-free: (1) the API server's EndpointSlice controller has caught up
        with the pods' readiness: lists of Pods, Nodes, Services and EndpointSlices, taken
        in that order, agree (each selector service's slices hold exactly the endpoints the
        controller would make of those pods, with their ready condition); the revision R is
        the newest of the lists' resourceVersions, so the slices at R reflect the ready pods.
        (2) every agent has made its rules from a view at R or later (GET /wait?revision=R:
        its informers have seen R, a quiet one lists again, then it syncs). Returns R
        (0: nothing to wait for)."""
        if not (cni.PROXY_FROM_API and state.api_endpoint):
            return 0
        timeout = timeout or default_wait(state)
        deadline = time.monotonic() + timeout
        client = apiserver.controller_client(state, self.runtime)
        while True:
            revision, behind = self._slices_behind(client)
            if not behind:
                break
            if time.monotonic() > deadline:
                shown = "; ".join(behind[:5]) + (f" and {len(behind) - 5} more" if len(behind) > 5 else "")
                raise EmuError(
                    f"the API server's EndpointSlices did not reflect its pods' readiness within {timeout:.0f}s "
                    f"(resourceVersion {revision}): {shown}; see its log with "
                    f"`emu exec --node {cni.api_server_node(state).name} -- tail {cni.API_LOG}`"
                )
            time.sleep(0.1)
        self._agents_synced_at(state, client, revision, max(1.0, deadline - time.monotonic()))
        return revision

    def _slices_behind(self, client: apiserver.NodeApi) -> tuple[int, list[str]]:
        """(the lists' newest resourceVersion, each selector service whose EndpointSlices differ
        from what the EndpointSlice controller makes of the pods listed, said how)."""
        from emu.apiserver.controllers.endpointslice import desired_endpoints, has_selector

        paths = ["/api/v1/pods", "/api/v1/nodes", "/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices"]
        separator = "--- emu list ---"
        script = "; ".join(f"{shlex_join([*client.curl, client.local + path])}; echo; echo '{separator}'"
                           for path in paths)  # fmt: skip
        result = self.runtime.exec(client.container, ["sh", "-c", script])
        try:
            pods, nodes, services, slices = [json.loads(part) for part in result.output.split(separator)[:4]]
            revision = max(int(lst["metadata"]["resourceVersion"]) for lst in (pods, nodes, services, slices))
        except (ValueError, KeyError, TypeError):
            raise EmuError(f"listing the API server's objects failed: {result.output.strip()[-500:]}") from None
        have: dict[str, set] = {}
        for item in slices["items"]:
            meta = item.get("metadata") or {}
            service = (meta.get("labels") or {}).get("kubernetes.io/service-name")
            if service and item.get("addressType") == "IPv4":
                found = have.setdefault(f"{meta.get('namespace')}/{service}", set())
                for endpoint in item.get("endpoints") or []:
                    ready = (endpoint.get("conditions") or {}).get("ready") is not False
                    found.add((tuple(endpoint.get("addresses") or []), ready))
        behind = []
        for service in services["items"]:
            if not has_selector(service):
                continue
            key = f"{service['metadata'].get('namespace')}/{service['metadata']['name']}"
            want = {(tuple(ep["addresses"]), ep["conditions"].get("ready") is not False)
                    for _, endpoints in desired_endpoints(service, pods["items"], nodes["items"], "IPv4").values()
                    for ep in endpoints.values()}  # fmt: skip
            got = have.get(key, set())
            if want != got:
                missing = sorted(f"{','.join(a)} ready={r}" for a, r in want - got)
                extra = sorted(f"{','.join(a)} ready={r}" for a, r in got - want)
                behind.append(f"service {key} lacks [{' '.join(missing)}], has besides [{' '.join(extra)}]")
        return revision, behind

    def _agents_synced_at(self, state: ClusterState, client: apiserver.NodeApi, revision: int, timeout: float) -> None:
        """GET /wait?revision=R on every agent at once, from the API server's node (one exec)."""
        from emu.node.agent import AGENT_PORT

        deadline = time.monotonic() + timeout
        outcomes: dict[str, dict] = {}
        pending = list(state.nodes)
        while pending:
            left = max(1.0, deadline - time.monotonic())
            query = f"revision={revision}&timeout={left:g}"
            ask = []
            for node in pending:
                out = f"/tmp/emu-wait-{node.name}"
                ask.append(
                    f'( n=0; until curl -s --max-time {left + 30:g} "http://{node.node_ip}:{AGENT_PORT}/wait?{query}" '
                    f'>{out}; do c=$?; case $c in 7|52|56) [ $n -lt 600 ] ;; *) false ;; esac || '
                    f'{{ echo "curl: exit $c asking the agent" >{out}; break; }}; n=$((n+1)); sleep 0.05; done ) &'
                )  # fmt: skip
            report = " ".join(f'echo "{node.name} $(cat /tmp/emu-wait-{node.name}; rm -f /tmp/emu-wait-{node.name})";'
                              for node in pending)  # fmt: skip
            result = self.runtime.exec(client.container, ["sh", "-c", " ".join(ask) + " wait; " + report])
            answers = dict(line.split(" ", 1) for line in result.output.strip().splitlines() if " " in line)
            unanswered = []
            for node in pending:
                try:
                    outcomes[node.name] = json.loads(answers.get(node.name, ""))
                except ValueError:
                    # No answer (seen once on a loaded machine with the engine over SSH: an empty
                    # reply): ask that agent again while there is time.
                    if time.monotonic() > deadline:
                        raise EmuError(f"node {node.name}: asking its agent whether its rules reflect the API "
                                       f"server's resourceVersion {revision} failed: "
                                       f"{answers.get(node.name) or result.output.strip() or 'no answer'}") from None
                    unanswered.append(node)
            pending = unanswered
            if pending:
                time.sleep(0.2)
        for node in state.nodes:
            outcome = outcomes[node.name]
            if outcome.get("programmed"):
                continue
            why = outcome.get("error") or (
                f"its watch had seen resourceVersion {outcome.get('seenRevision')}, its rules were made from "
                f"{outcome.get('syncedRevision')}"
            )  # fmt: skip
            try:
                tail = self.runtime.exec(node.container, ["tail", "-n", str(AGENT_LOG_LINES), cni.AGENT_LOG]).output
            except Exception as error:  # noqa: BLE001
                tail = f"(could not read it: {error})"
            raise EmuError(
                f"node {node.name}: its service rules did not reflect the API server's Services and EndpointSlices "
                f"at resourceVersion {revision} (where the EndpointSlices hold the ready pods) within "
                f"{timeout:.0f}s: {why}; its log ends:\n{tail.rstrip()}"
            )

    def endpoints(self, state: ClusterState | None = None, node: str | None = None) -> dict[str, dict[str, list[str]]]:
        """{service key: {port name: ["ip:port", ...]}}: the ready endpoints the agents program, as the
        agent of `node` (the first node by default) sees them. Pass the state if you already read it."""
        state = state or self.state()
        asked = find_node(state, node) if node else state.nodes[0]
        result = self.runtime.exec(asked.container, ["curl", "-sS", "--max-time", "5", f"{AGENT_URL}/endpoints"])
        if not result.ok:
            raise EmuError(f"the agent on {asked.name} did not answer: {result.output.strip()}")
        return json.loads(result.output)

    def run_external(self, name: str) -> str:
        """Start a container outside the cluster, on the cluster's Docker network,
        serving netexec (HTTP :8080, UDP :8081), its /etc/hosts naming the
        Ingresses' hosts at the ingress's address. Returns its IP. `down` removes it."""
        state = self.state()
        container = f"{self.name}-{name}"
        self.runtime.run_external(self.name, container, state.network, state.node_image)
        self.runtime.put_files(container, {**cni.workload_files(), **cni.agent_files()})
        netexec = f"exec python3 {cni.WORKLOAD_DIR}/netexec.py >/tmp/netexec.log 2>&1"
        self.runtime.exec_detached(container, ["sh", "-c", netexec])
        ip = self.runtime.container_ip(container, state.network)
        probe = ["env", f"PYTHONPATH={cni.AGENT_LIB}", "python3", "-m", "emu.node.agent.wait", "--port", "127.0.0.1:8080"]
        if json.loads(self.runtime.exec(container, probe).output)["ports_left"]:
            raise EmuError(f"the external container {container} did not start serving on :8080")
        from emu.node import ingress

        names = ingress.hosts_entries(state)  # the Ingress hosts, at the ingress's LoadBalancer address
        if names:
            self.runtime.exec(container, ["sh", "-c", 'printf %s "$1" >>/etc/hosts', "sh", names])
        return ip

    # ---- using pods --------------------------------------------------------
    def exec(self, pod: str, argv: list[str], container: str | None = None) -> ExecResult:
        """Run a command in a pod (its network namespace, hostname and the container's env;
        in an image container, in that container)."""
        return self.runtime.exec(*self.pod_command(pod, argv, container))

    def pod_command(
        self, pod: str, argv: list[str], container: str | None = None, state: ClusterState | None = None
    ) -> tuple[str, list[str]]:
        """(Docker container, argv) that runs argv as one of the pod's containers:
        what `exec` runs, for callers that run it their own way (emu.testing's testinfra backend)."""
        state = state or self.state()
        return exec_target(state, find_pod(state, pod), argv, container)

    def node_exec(self, node: str, argv: list[str]) -> ExecResult:
        """Run a command in a node's root namespace."""
        state = self.state()
        return self.runtime.exec(find_node(state, node).container, argv)

    def logs(self, pod: str, container: str | None = None) -> str:
        state = self.state()
        found = find_pod(state, pod)
        name = pick_container(found, container)["name"]
        if cni.runs_image(pick_container(found, container)):
            return self.runtime.container_logs(imagepods.container_name(state, found, name))
        text = self.runtime.read_file(state.node(found.node).container, f"{cni.LOG_DIR}/{found.netns}/{name}.log")
        return text or ""

    def pod_status(self, state: ClusterState, started: bool = False) -> dict[str, dict[str, dict]]:
        """{pod key: {container: {"state": Running|Exited, "exitCode": int|None,
        "ready": bool, "restarts": int}}}: processes as `check` sees them (one exec
        a node, reconcile.OBSERVE), readiness and restarts from the node's agent;
        with `started`, also "started": when its process was started (its pid file
        written; `emu get`). Pods of a node that cannot be asked are left out."""
        started_lines = ""
        if started:
            started_lines = f'for f in {cni.RUN_DIR}/*/*.pid; do [ -e "$f" ] && echo "started $f $(stat -c %Y "$f")"; done\n'
        script = f"{reconcile.OBSERVE}{started_lines}echo READINESS $(curl -s --max-time 2 {AGENT_URL}/readiness)\n"

        def check(node) -> str:
            try:
                return self.runtime.exec(node.container, ["sh", "-c", script]).output
            except Exception:  # noqa: BLE001 - a stopped or gone node: its pods' state is unknown
                return ""

        status: dict[str, dict[str, dict]] = {}
        for node, output in zip(state.nodes, self.runtime.parallel(check, state.nodes)):
            seen = reconcile.Observed.parse(output)
            report: dict = {}
            for line in output.splitlines():
                if line.startswith("READINESS "):
                    try:
                        report = json.loads(line.removeprefix("READINESS ")) or {}
                    except ValueError:
                        report = {}
            start_times = {}  # "<netns>/<container>" -> when its pid file was written
            for line in output.splitlines():
                word, _, rest = line.partition(" ")
                path, _, when = rest.partition(" ")
                if word == "started" and when.isdigit():
                    start_times[path.removeprefix(cni.RUN_DIR + "/").removesuffix(".pid")] = int(when)
            readiness = report.get("containers", {}) if isinstance(report, dict) else {}
            restarts = report.get("restarts", {}) if isinstance(report, dict) else {}
            for pod in state.pods_on(node.name):
                for container in pod.containers:
                    name, where = container["name"], f"{pod.netns}/{container['name']}"
                    if where in seen.alive:
                        entry = {"state": "Running", "exitCode": None}
                    elif where in seen.ended:
                        entry = {"state": "Exited", "exitCode": seen.ended[where]}
                    else:
                        continue
                    entry["ready"] = bool(readiness.get(pod.key, {}).get(name, False))
                    entry["restarts"] = int(restarts.get(pod.key, {}).get(name, 0))
                    if started:
                        entry["started"] = start_times.get(where)
                    status.setdefault(pod.key, {})[name] = entry
        return status


class _Beside:
    """A job run in a thread of its own beside the caller's; join() re-raises what it raised."""

    def __init__(self, job: Callable[[], None] | None):
        self.error: BaseException | None = None
        self.thread = None
        if job is not None:
            def run() -> None:
                try:
                    job()
                except BaseException as error:  # noqa: BLE001 - raised again in join()
                    self.error = error

            self.thread = threading.Thread(target=run, name="beside", daemon=True)
            self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            raise self.error


def _holder() -> str:
    """Who holds a lock, as its error names them: user@host, pid, since when, which command."""
    return (
        f"{getpass.getuser()}@{socket.gethostname()} (pid {os.getpid()}, since "
        f"{time.strftime('%H:%M:%S')}: emu {' '.join(sys.argv[1:]) or '(library)'})"
    )


NEIGHBOUR_LIMIT = Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3")


def default_wait(state: ClusterState) -> float:
    """How long `emu up` waits for the nodes by default: 30 s, 20 ms a pod, and
    0.15 ms for every endpoint on every node. Each node writes the chains of
    every service's endpoints: the 50 agents of a lab with 1,000 services and
    40,000 endpoints keep two cores busy for three minutes (iptables-restore of
    41,000 chains, 5 s of CPU a node)."""
    from emu.node.services import LabelIndex

    index = LabelIndex(state.pods.values())
    endpoints = sum(len(index.selected(service)) * len(service.ports) for service in state.services.values())
    return 30.0 + 0.02 * len(state.pods) + 0.00015 * endpoints * len(state.nodes)


def neighbour_table_warning(nodes: int, pods: int, limit_file: Path = NEIGHBOUR_LIMIT) -> str | None:
    """The kernel's ARP table is shared by every network namespace; past its limit
    (1,024 by default) new neighbours are refused and pods become unreachable.
    Each pod needs about two entries (its gateway, and its node's entry for it)
    and each node one per other node."""
    try:
        limit = int(limit_file.read_text())
    except (OSError, ValueError):
        return None  # not a Linux host we can see (Docker Desktop's VM, say)
    needed = 2 * pods + nodes * nodes + 64
    if needed <= limit:
        return None
    return (
        f"warning: about {needed} ARP entries are needed but the kernel allows {limit} "
        f"(net.ipv4.neigh.default.gc_thresh3); pods may become unreachable. Raise it as root: "
        "sysctl -w net.ipv4.neigh.default.gc_thresh1=4096 net.ipv4.neigh.default.gc_thresh2=8192 "
        "net.ipv4.neigh.default.gc_thresh3=16384 (scripts/ensure-docker.sh does)"
    )


def _revalidate(topology: Topology) -> Topology:
    """Run a changed topology through the same validation a file gets."""
    import yaml

    from emu.api.topology.load import load_text

    text = yaml.safe_dump(topology.model_dump(mode="json", by_alias=True, exclude_defaults=True))
    return load_text(text, f"cluster '{topology.name}'")


def find_pod(state: ClusterState, reference: str) -> PodState:
    if reference in state.pods:
        return state.pods[reference]
    for pod in state.pods.values():
        if reference in (pod.netns, f"{pod.namespace}/{pod.name}") or (
            "/" not in reference and pod.namespace == "default" and pod.name == reference
        ):
            return pod
    known = ", ".join(sorted(state.pods)) or "none"
    raise EmuError(f"no pod '{reference}' in cluster '{state.name}' (pods: {known}); use NAME or NAMESPACE/NAME")


def find_node(state: ClusterState, name: str):
    for node in state.nodes:
        if name in (node.name, node.container):
            return node
    raise EmuError(f"no node '{name}' in cluster '{state.name}' (nodes: {', '.join(n.name for n in state.nodes)})")


def pick_container(pod: PodState, name: str | None) -> dict:
    if name is None:
        return pod.containers[0]
    for container in pod.containers:
        if container["name"] == name:
            return container
    names = ", ".join(c["name"] for c in pod.containers)
    raise EmuError(f"pod '{pod.key}' has no container '{name}' (containers: {names})")


def exec_target(state: ClusterState, pod: PodState, argv: list[str], container: str | None = None) -> tuple[str, list[str]]:
    """(Docker container, argv) that run argv as the pod's container: in its node,
    entering the pod, or for an image container, in that container."""
    chosen = pick_container(pod, container)
    if cni.runs_image(chosen):
        return imagepods.container_name(state, pod, chosen["name"]), argv
    return state.node(pod.node).container, pod_exec_argv(pod, argv, container)


def pod_exec_argv(pod: PodState, argv: list[str], container: str | None = None) -> list[str]:
    """argv for `docker exec NODE ...` that runs argv as if inside the pod's container."""
    return cni.in_pod_argv(pod, pick_container(pod, container), argv)
