#!/usr/bin/env python3
"""Time to recover from faults on the default lab, median of --rounds each.

  flushed chain   `iptables -t nat -F KUBE-SERVICES` on a worker, until a pod
                  there reaches the echo service again
  killed agent    kill -9 of a worker's agent, until a new one answers
  killed container  kill -9 of a pod's process, until it answers again
  deleted veth    `ip link del` of a pod's host veth, until the pod (rebuilt by
                  the agent, no emu command) reaches its bridge again
  deleted netns   `ip netns del` of a pod's namespace, likewise
  restarted node  `docker restart` of a worker, until a pod on it answers again
  stopped node    `docker stop` of a worker, until its pods leave the service's
                  endpoints
  moved pods      from the same `docker stop`, until the service has all its
                  deployment's replicas ready again, on the node still up (then
                  the node is started again and the deployment spread again, untimed)

Beside them, what a real cluster does by default: kube-proxy's iptables
resync period (30 s, when it would rewrite a flushed chain), the node
monitor grace period (40 s) and pod eviction after it. Polls every 50 ms.

usage: python bench/faults.py [--runs 5] [--json]
"""

from __future__ import annotations

import sys
import time

import harness
from harness import ROOT

from emu.api.load import load_file
from emu.control.cluster import Cluster
from emu.control.runtime.docker import DockerRuntime


def until(check, timeout: float = 120) -> float:
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            raise RuntimeError("no recovery within the timeout")
        time.sleep(0.05)
    return time.perf_counter() - started


def recoveries(context: harness.Context) -> None:
    rounds = context.runs
    runtime = DockerRuntime()
    cluster = Cluster("emubench-faults", runtime=runtime)
    cluster.down()
    cluster.up(load_file(ROOT / "topologies" / "default.yaml").model_copy(update={"name": cluster.name}))
    try:
        state = cluster.state()
        echo = state.services["default/echo"].cluster_ip
        worker = state.node("worker")
        client_ip = cluster.pod("client").ip

        def client_reaches_echo() -> bool:
            return cluster.exec("client", ["curl", "-s", "--max-time", "0.5", f"http://{echo}/hostname"]).ok

        def agent_answers(old: str) -> bool:
            pid = cluster.node_exec("worker", ["cat", "/run/emu/agent/agent.pid"]).output.strip()
            healthy = cluster.node_exec("worker", ["curl", "-sf", "--max-time", "0.5", "http://127.0.0.1:10250/healthz"])
            return pid != old and healthy.ok

        def client_answers() -> bool:
            # The client pod (on worker) pings its own node's bridge: its namespace and veth are back.
            return cluster.exec("client", ["ping", "-c", "1", "-W", "1", worker.gateway]).ok

        results: dict[str, list[float]] = {
            "flushed chain": [], "killed agent": [], "killed container": [], "deleted veth": [], "deleted netns": [],
            "restarted node": [], "stopped node": [], "moved pods": [],
        }  # fmt: skip
        client = cluster.pod("client")
        web = cluster.pod("web")
        web_pid = f"/run/emu/pods/{web.netns}/server.pid"

        def web_answers(old: str) -> bool:
            pid = cluster.node_exec("worker2", ["cat", web_pid]).output.strip()
            answer = cluster.exec("client", ["curl", "-s", "--max-time", "0.5", f"http://{web.ip}:8080/hostname"])
            return pid != old and answer.ok
        for _ in range(rounds):
            cluster.node_exec("worker", ["iptables", "-t", "nat", "-F", "KUBE-SERVICES"])
            results["flushed chain"].append(until(client_reaches_echo))
            old = cluster.node_exec("worker", ["cat", "/run/emu/agent/agent.pid"]).output.strip()
            cluster.node_exec("worker", ["kill", "-9", old])
            results["killed agent"].append(until(lambda: agent_answers(old)))
            old_web = cluster.node_exec("worker2", ["cat", web_pid]).output.strip()
            cluster.node_exec("worker2", ["kill", "-9", old_web])
            results["killed container"].append(until(lambda: web_answers(old_web)))
            cluster.node_exec("worker", ["ip", "link", "del", client.host_veth])
            results["deleted veth"].append(until(client_answers))
            cluster.node_exec("worker", ["ip", "netns", "del", client.netns])
            results["deleted netns"].append(until(client_answers))
            runtime.api.restart(worker.container, timeout=1)
            results["restarted node"].append(until(client_answers))
            until(lambda: client_ip and client_reaches_echo())
        worker2 = state.node("worker2")
        replicas = len([p for p in state.pods.values() if p.owner == "Deployment/echo"])
        for _ in range(max(1, rounds // 2)):
            state = cluster.state()
            on_worker2 = {f"{p.ip}:8080" for p in state.pods_on("worker2") if p.owner == "Deployment/echo"}
            started = time.perf_counter()
            runtime.api.stop(worker2.container, timeout=1)
            results["stopped node"].append(
                until(lambda: not on_worker2 & set(cluster.endpoints(state)["default/echo"]["http"]))
            )

            def all_replicas_back() -> bool:
                return len(set(cluster.endpoints(state)["default/echo"]["http"]) - on_worker2) == replicas

            until(all_replicas_back)
            results["moved pods"].append(time.perf_counter() - started)
            runtime.api.start(worker2.container)
            until(lambda: cluster.node_exec("worker2", ["curl", "-sf", "http://127.0.0.1:10250/healthz"]).ok)
            cluster.scale("echo", 0)
            cluster.scale("echo", replicas)  # spread over both workers again
        reference = {
            "flushed chain": "kube-proxy rewrites at its next resync: up to 30 s",
            "killed agent": "systemd restarts a kubelet after RestartSec (10 s in kubeadm's unit)",
            "killed container": "kubelet: at once, then 10 s doubling (CrashLoopBackOff)",
            "restarted node": "kubelet recreates pod sandboxes after it starts: tens of seconds",
            "deleted veth": "kubelet recreates the pod sandbox at its next pod sync",
            "deleted netns": "kubelet recreates the pod sandbox at its next pod sync",
            "stopped node": "node-monitor-grace-period 40 s, then endpoints removed",
            "moved pods": "40 s grace + 300 s toleration, then the ReplicaSet makes new pods",
        }
        for fault, times in results.items():
            context.report.figure(fault, times, note=f"a real cluster, by default: {reference[fault]}")
        # The same container crashing round after round meets the back-off, as on a real node.
        context.report.note(f"killed container, round by round: {', '.join(f'{t:.2f}s' for t in results['killed container'])}")
    finally:
        cluster.down()


SCENARIOS = [
    harness.Scenario("faults", "time to recover from each fault on the default lab (polls every 50 ms)",
                     "a real cluster's defaults for the same fault (kube-proxy resync, node grace period, ...), "
                     "printed beside each", recoveries),
]


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=5))
