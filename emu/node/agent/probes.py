"""The kubelet's part of the agent: is each of this node's pods ready?

A pod is ready when every container's process runs and every readiness probe
passes, with the thresholds and timing the kubelet keeps. Probes run from the
node's root namespace (httpGet, tcpSocket) or inside the pod (exec).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable

from emu.node.agent import container_file, container_script, wake, web, write_atomically
from emu.node.records import PodState

ALIVE_PERIOD = 1.0  # processes are checked once a second, as the kubelet's PLEG relists,
RELIST_PERIOD = 10.0  # or, while every one is running and held by a pidfd, only now and then


class ProbeState:
    """A container's readiness probe: thresholds and timing as the kubelet keeps them."""

    def __init__(self, spec: dict, now: float):
        self.spec = spec
        self.next_run = now + spec.get("initialDelaySeconds", 0)
        self.successes = 0
        self.failures = 0
        self.ready = False

    def due(self, now: float) -> bool:
        return now >= self.next_run

    def record(self, success: bool, now: float) -> None:
        self.next_run = now + self.spec.get("periodSeconds", 10)
        if success:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= self.spec.get("successThreshold", 1):
                self.ready = True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= self.spec.get("failureThreshold", 3):
                self.ready = False


def run_probe(pod: PodState, spec: dict) -> bool:
    timeout = spec.get("timeoutSeconds", 1)
    try:
        if spec.get("httpGet"):
            action = spec["httpGet"]
            port = pod.resolve_port(action["port"])
            return 200 <= web.get_status(pod.ip, port, action.get("path", "/"), timeout) < 400
        if spec.get("tcpSocket"):
            port = pod.resolve_port(spec["tcpSocket"]["port"])
            socket.create_connection((pod.ip, port), timeout).close()
            return True
        if spec.get("exec"):
            command = ["ip", "netns", "exec", pod.netns, *spec["exec"]["command"]]
            return subprocess.run(command, capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.SubprocessError, TypeError):
        return False
    return False


class ProcessWatch:
    """Whether each pod's container processes run. A pid is read from its file
    once and then held as a pidfd, which the kernel makes readable when the
    process ends: `reap` finds those in one system call, and the kubelet's loop
    sleeps on `fds` instead of looking every second. A pid that is gone is
    looked up again in its file (a container restarted under a new pid). Where
    pidfds are not to be had, pids are signalled (signal 0) each look."""

    def __init__(self):
        self.pids: dict[str, int] = {}  # pid file -> pid
        self.handles: dict[str, int] = {}  # pid file -> pidfd of its process
        self.files: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (netns, ip) -> [(container, pid file)]
        self.signalled = False  # some process is watched by signal, not pidfd

    def __call__(self, pod: PodState) -> list[str]:
        """The containers of the pod whose process does not run (started, or not yet)."""
        files = self.files.get((pod.netns, pod.ip))
        if files is None:
            files = self.files[(pod.netns, pod.ip)] = [
                (c["name"], container_file(pod.netns, c["name"], "pid")) for c in pod.containers
            ]
        return [name for name, path in files if not self._runs(path)]

    @property
    def watched(self) -> bool:
        """Whether every process found is held by a pidfd: no need to look for
        their end, `fds` says it."""
        return not self.signalled

    def fds(self) -> list[int]:
        return list(self.handles.values())

    def reap(self) -> bool:
        """Forget the processes that ended (their pidfd is readable); whether any did."""
        ended = set(wake.readable(list(self.handles.values())))
        if not ended:
            return False
        for path, fd in list(self.handles.items()):
            if fd in ended:
                os.close(fd)
                del self.handles[path]
                self.pids.pop(path, None)
        return True

    def _runs(self, path: str) -> bool:
        if path in self.handles:
            return True  # (reap drops those that ended)
        if self.signalled and self._signal(self.pids.get(path)):
            return True  # (with pidfds, a pid known but not held is one that ended: read the file again)
        pid = self._read(path)
        if pid is None:
            return False
        try:
            fd = wake.process_fd(pid)
        except ProcessLookupError:
            return False
        if fd is None:
            self.signalled = True
            return self._signal(pid)
        if wake.readable([fd]):  # it ended already (a zombie its parent has not reaped yet)
            os.close(fd)
            return False
        self.handles[path] = fd
        return True

    @staticmethod
    def exit_code(pod: PodState, container: str) -> int | None:
        """The exit code of the container's last process, once it ended (its parent writes it)."""
        try:
            with open(container_file(pod.netns, container, "exit")) as handle:
                return int(handle.read().strip())
        except (OSError, ValueError):
            return None

    def started(self, pod: PodState, container: str) -> bool:
        """Whether the container was started (its pid file is there): one that
        never was is the plan's to start, not the agent's to restart."""
        return os.path.exists(container_file(pod.netns, container, "pid"))

    def _read(self, path: str) -> int | None:
        try:
            with open(path) as handle:
                self.pids[path] = int(handle.read().strip())
        except (OSError, ValueError):
            self.pids.pop(path, None)
        return self.pids.get(path)

    @staticmethod
    def _signal(pid: int | None) -> bool:
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False

    def forget(self, pods: list[PodState]) -> None:
        """Drop the processes of pods no longer here."""
        keep = {container_file(p.netns, c["name"], "pid") for p in pods for c in p.containers}
        self.pids = {path: pid for path, pid in self.pids.items() if path in keep}
        for path in set(self.handles) - keep:
            os.close(self.handles.pop(path))
        self.files = {}


BACKOFF = 10.0  # the kubelet's CrashLoopBackOff: 10 s, doubling ...
MAX_BACKOFF = 300.0  # ... up to 5 minutes,
BACKOFF_RESET = 600.0  # and forgotten after a container has run 10 minutes


class Restart:
    """A container's restarts: the count kubectl shows, and its back-off."""

    def __init__(self):
        self.count = 0
        self.streak = 0  # restarts since it last ran for BACKOFF_RESET
        self.not_before = float("-inf")
        self.last = float("-inf")

    def delay(self) -> float:
        """The wait before the next restart: none for the first of a streak."""
        return 0.0 if self.streak == 0 else min(MAX_BACKOFF, BACKOFF * 2 ** (self.streak - 1))


def load_counts(path: str | None) -> dict[str, int]:
    """Restart counts an earlier agent saved: {"<pod uid>/<container>": count}."""
    try:
        with open(path or "") as handle:
            data = json.load(handle)
        return {str(k): int(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def run_start_script(pod: PodState, container: str) -> None:
    subprocess.run(["sh", container_script(pod.netns, container)], capture_output=True, timeout=10)


class _Done:
    def __init__(self, thread: threading.Thread, box: list):
        self.thread, self.box = thread, box

    def result(self):
        self.thread.join()
        return self.box[0] if self.box else False


class ProbeThreads:
    """Runs each probe on a thread of its own (submit/result, as an Executor):
    concurrent.futures costs an agent 3 MB of memory for the same."""

    def submit(self, function, *args) -> _Done:
        box: list = []
        thread = threading.Thread(target=lambda: box.append(function(*args)), daemon=True)
        thread.start()
        return _Done(thread, box)


class Kubelet:
    """Readiness of this node's pods, and their containers kept running
    (restartPolicy Always, with the kubelet's back-off). `step` runs what is
    due and says whether any pod's readiness changed; `next_wake` says when
    something is due next, so an idle node sleeps instead of polling."""

    def __init__(
        self,
        pool: "ProbeThreads",  # or any Executor
        probe: Callable[[PodState, dict], bool] = run_probe,
        dead: ProcessWatch | None = None,
        restart: Callable[[PodState, str], None] = run_start_script,
        clock: Callable[[], float] = time.monotonic,
        counts_file: str | None = None,
    ):
        self.pool = pool
        self.probe = probe
        self.watch = dead or ProcessWatch()
        self.restart = restart
        self.restarts: dict[tuple[str, str], Restart] = {}
        # Restart counts outlive the agent (the API server keeps them in Kubernetes).
        self.counts_file = counts_file
        self.saved_counts = load_counts(counts_file)
        self.clock = clock
        self.pods: list[PodState] = []
        self.uids: list[tuple[str, PodState]] = []
        self.probes: dict[tuple[str, str], ProbeState] = {}
        self.alive: dict[str, bool] = {}  # pod uid -> its containers' processes run
        self.alive_checked = float("-inf")
        self.ready: dict[str, bool] = {}  # pod uid -> ready
        self.dead: dict[str, list[str]] = {}  # pod uid -> its containers whose process does not run
        self.stopping: set[str] = set()  # pod uids being deleted: their containers are not started again
        self.generation = 0  # counts the steps that changed what container_entries would say

    def set_pods(self, pods: list[PodState]) -> None:
        """This node's pods, from a new state: probes of pods gone are dropped."""
        self.pods = pods
        self.uids = [(pod.uid, pod) for pod in pods]  # (a uid is worked out each time it is asked for)
        self.watch.forget(pods)
        self.stopping &= {p.uid for p in pods}
        containers = {(p.uid, c["name"]) for p in pods for c in p.containers}
        self.restarts = {key: value for key, value in self.restarts.items() if key in containers}
        keys = {(p.uid, c["name"]) for p in pods for c in p.containers if c.get("readinessProbe")}
        for stale in set(self.probes) - keys:
            del self.probes[stale]
        now = self.clock()
        for pod in pods:
            for container in pod.containers:
                spec = container.get("readinessProbe")
                if spec and (pod.uid, container["name"]) not in self.probes:
                    self.probes[(pod.uid, container["name"])] = ProbeState(spec, now)

    def alive_period(self) -> float:
        """Seconds between looks at the processes: ALIVE_PERIOD, or RELIST_PERIOD
        while every one runs and the watch's pidfds say when one ends."""
        settled = self.watch.watched and all(self.alive.get(uid) for uid, _ in self.uids)
        return RELIST_PERIOD if settled else ALIVE_PERIOD

    def next_wake(self) -> float:
        """When something is due: a look at the processes or a probe (a process
        that ends wakes the loop sooner, through `watch.fds`)."""
        # With no pods nothing is due before a period from now (never checked, the
        # last check's time would say "now": the agents of a 50-node lab, before
        # their first state, woke 200 times a second).
        checked = self.alive_checked if self.uids else self.clock()
        due = [probe.next_run for probe in self.probes.values()]
        return min([checked + self.alive_period(), *due])

    def keep_running(self, pod: PodState, dead: list[str], now: float) -> None:
        """Start again the pod's containers whose process ended, as the pod's
        restartPolicy says (Always; OnFailure: after a non-zero exit; Never: not),
        each after its back-off; never those of a pod being deleted."""
        if pod.uid in self.stopping:
            return
        for name in dead:
            if not self.watch.started(pod, name):
                continue
            container = next((c for c in pod.containers if c["name"] == name), {})
            if container.get("image") and not container.get("workload"):
                # An image container: Docker restarts it by the policy (its exit code is Docker's);
                # the script only finds its new process. Never: Docker does not, nothing to find.
                if pod.restart_policy == "Never":
                    continue
            elif not pod.restarts_after(self.watch.exit_code(pod, name) if pod.restart_policy != "Always" else None):
                continue  # finished (or its exit code is not written yet: next look)
            restart = self.restarts.get((pod.uid, name))
            if restart is None:
                restart = self.restarts[(pod.uid, name)] = Restart()
                restart.count = self.saved_counts.get(f"{pod.uid}/{name}", 0)
            if now - restart.last > BACKOFF_RESET:
                restart.streak = 0
            if restart.not_before == float("-inf"):
                restart.not_before = now + restart.delay()
            if now < restart.not_before:
                continue
            self.restart(pod, name)
            self.generation += 1
            restart.count += 1
            restart.streak += 1
            restart.last = now
            restart.not_before = float("-inf")
            self.save_counts()

    def step(self) -> bool:
        now = self.clock()
        due = [(uid, probe) for (uid, _), probe in self.probes.items() if probe.due(now)]
        by_uid = {pod.uid: pod for pod in self.pods} if due else {}
        jobs = [(probe, self.pool.submit(self.probe, by_uid[uid], probe.spec)) for uid, probe in due if uid in by_uid]
        for probe, future in jobs:
            probe.record(future.result(), self.clock())
        ended = self.watch.reap()
        if ended or now - self.alive_checked >= self.alive_period() or any(uid not in self.alive for uid, _ in self.uids):
            alive, dead_by_uid = {}, {}
            for uid, pod in self.uids:
                dead = self.watch(pod)
                alive[uid] = not dead
                if dead:
                    dead_by_uid[uid] = dead
                    self.keep_running(pod, dead, now)
            if alive != self.alive or dead_by_uid != self.dead:
                self.generation += 1
            self.alive = alive
            self.dead = dead_by_uid
            self.alive_checked = now
        ready = {}
        for uid, pod in self.uids:
            probes_ok = not self.probes or all(
                self.probes[(uid, c["name"])].ready for c in pod.containers if c.get("readinessProbe")
            )
            ready[uid] = probes_ok and self.alive.get(uid, False)
        changed = ready != self.ready
        if changed:
            self.generation += 1
        self.ready = ready
        return changed

    def save_counts(self) -> None:
        if not self.counts_file:
            return
        counts = {f"{uid}/{name}": r.count for (uid, name), r in self.restarts.items() if r.count}
        try:
            write_atomically(self.counts_file, json.dumps(counts))
        except OSError:
            pass

    def restart_counts(self) -> dict[str, dict[str, int]]:
        """{pod key: {container: restarts}} for containers started again at least once."""
        counts: dict[str, dict[str, int]] = {}
        for pod in self.pods:
            for container in pod.containers:
                restart = self.restarts.get((pod.uid, container["name"]))
                count = restart.count if restart else self.saved_counts.get(f"{pod.uid}/{container['name']}", 0)
                if count:
                    counts.setdefault(pod.key, {})[container["name"]] = count
        return counts

    def container_readiness(self) -> dict[str, dict[str, bool]]:
        """{pod key: {container: ready}}: running, and its readiness probe (if any) passing."""
        return {pod.key: self.container_readiness_of(pod) for pod in self.pods}

    def container_entries(self, pod: PodState) -> dict[str, dict]:
        """{container: {"state", "exitCode", "ready", "restarts", "started"}} as
        emu.node.kube.podstatus takes them: what this kubelet knows of the pod."""
        if pod.uid not in self.alive:
            return {}  # not looked at yet
        dead = self.dead.get(pod.uid, [])
        readiness = self.container_readiness_of(pod)
        entries = {}
        for container in pod.containers:
            name = container["name"]
            if name in dead and not self.watch.started(pod, name):
                continue  # not started yet
            restart = self.restarts.get((pod.uid, name))
            count = restart.count if restart else self.saved_counts.get(f"{pod.uid}/{name}", 0)
            try:
                started = os.stat(container_file(pod.netns, name, "pid")).st_mtime
            except OSError:
                started = None
            entries[name] = {
                "state": "Exited" if name in dead else "Running",
                "exitCode": self.watch.exit_code(pod, name) if name in dead else None,
                "ready": readiness.get(name, False), "restarts": count, "started": started,
            }  # fmt: skip
        return entries

    def container_readiness_of(self, pod: PodState) -> dict[str, bool]:
        alive = self.alive.get(pod.uid, False)
        result = {}
        for container in pod.containers:
            probe = self.probes.get((pod.uid, container["name"]))
            probed_ready = probe.ready if probe is not None else not container.get("readinessProbe")
            result[container["name"]] = alive and probed_ready
        return result

