"""python3 -m emu.agent --node NAME: run the node agent (see emu.agent)."""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from emu.dns.snapshot import dns_snapshot, write_snapshot
from emu.proxy import iptables
from emu.records import ClusterState, PodState
from emu.services import load_balancer_owner, service_endpoints

AGENT_PORT = 10250
STATUS_FILE = "/run/emu/agent/status.json"
DNS_SNAPSHOT = "/etc/emu/dns/snapshot.json"  # read by the coredns pods on this node
RUN_DIR = "/run/emu/pods"


def log(message: str) -> None:
    print(f"{time.time():.3f} {message}", flush=True)


class ProbeState:
    """A container's readiness probe: thresholds and timing as the kubelet keeps them."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.started = time.monotonic()
        self.next_run = self.started + spec.get("initialDelaySeconds", 0)
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
            connection = http.client.HTTPConnection(pod.ip, port, timeout=timeout)
            try:
                connection.request("GET", action.get("path", "/"), headers={"User-Agent": "kube-probe/emu"})
                return 200 <= connection.getresponse().status < 400
            finally:
                connection.close()
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


def processes_alive(pod: PodState) -> bool:
    for container in pod.containers:
        try:
            with open(f"{RUN_DIR}/{pod.netns}/{container['name']}.pid") as handle:
                os.kill(int(handle.read().strip()), 0)
        except (OSError, ValueError):
            return False
    return True


class Agent:
    def __init__(self, node: str, snapshot: str, port: int = AGENT_PORT):
        self.node = node
        self.snapshot = snapshot
        self.port = port
        self.state: ClusterState | None = None
        self.snapshot_mtime = 0.0
        self.local_ready: dict[str, bool] = {}  # pod uid -> ready (this node's pods)
        self.peer_ready: dict[str, dict[str, bool]] = {}
        self.probes: dict[tuple[str, str], ProbeState] = {}
        self.previous: iptables.Ruleset | None = None
        self.owned_addresses: set[str] = set()
        self.routed: dict[str, str] = {}  # LoadBalancer address -> its owner's node IP (several hosts)
        self.lock = threading.Lock()
        self.dirty = threading.Event()
        self.readiness_changed = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.alive: dict[str, bool] = {}  # pod uid -> its containers' processes run
        self.alive_checked = 0.0
        self.endpoints: dict = {}
        self.render_cache: dict = {}
        self.synced_ready: dict[str, bool] = {}  # the readiness the current rules were made from

    # ---- snapshot ----------------------------------------------------------
    def watch_snapshot(self) -> None:
        while True:
            try:
                mtime = os.stat(self.snapshot).st_mtime
            except FileNotFoundError:
                mtime = 0.0
            if mtime and mtime != self.snapshot_mtime:
                try:
                    with open(self.snapshot) as handle:
                        state = ClusterState.from_json(handle.read())
                except (OSError, ValueError) as error:
                    log(f"cannot read {self.snapshot}: {error}")
                else:
                    with self.lock:
                        self.state = state
                        self.snapshot_mtime = mtime
                    log(f"snapshot generation {state.generation}: {len(state.pods)} pods, {len(state.services)} services")
                    self.readiness_changed.set()
                    self.dirty.set()
            time.sleep(0.05)

    # ---- readiness (the kubelet's part) -----------------------------------
    def probe_loop(self) -> None:
        while True:
            state = self.state
            if state is not None:
                self.update_readiness(state)
            time.sleep(0.1)

    def update_readiness(self, state: ClusterState) -> None:
        now = time.monotonic()
        local = [p for p in state.pods.values() if p.node == self.node]
        keys = {(p.uid, c["name"]) for p in local for c in p.containers if c.get("readinessProbe")}
        for stale in set(self.probes) - keys:
            del self.probes[stale]
        jobs = []
        for pod in local:
            for container in pod.containers:
                spec = container.get("readinessProbe")
                if not spec:
                    continue
                probe = self.probes.setdefault((pod.uid, container["name"]), ProbeState(spec))
                if probe.due(now):
                    jobs.append((probe, self.pool.submit(run_probe, pod, spec)))
        for probe, future in jobs:
            probe.record(future.result(), time.monotonic())
        # Processes are checked once a second, as the kubelet's PLEG relists;
        # new pods at once.
        if now - self.alive_checked >= 1.0 or any(p.uid not in self.alive for p in local):
            self.alive = {pod.uid: processes_alive(pod) for pod in local}
            self.alive_checked = now
        ready = {}
        for pod in local:
            probes_ok = all(
                self.probes[(pod.uid, c["name"])].ready for c in pod.containers if c.get("readinessProbe")
            )
            ready[pod.uid] = probes_ok and self.alive.get(pod.uid, False)
        if ready != self.local_ready:
            changed = sorted(k for k in ready.keys() | self.local_ready.keys() if ready.get(k) != self.local_ready.get(k))
            log(f"readiness changed: {', '.join(f'{k}={ready.get(k, False)}' for k in changed)}")
            self.local_ready = ready
            self.readiness_changed.set()
            self.dirty.set()

    def container_readiness(self) -> dict[str, dict[str, bool]]:
        """{pod key: {container: ready}}: running, and its readiness probe (if any) passing."""
        state = self.state
        result: dict[str, dict[str, bool]] = {}
        for pod in state.pods.values() if state else []:
            if pod.node != self.node:
                continue
            alive = self.alive.get(pod.uid, False)
            containers = {}
            for container in pod.containers:
                probe = self.probes.get((pod.uid, container["name"]))
                probed_ready = probe.ready if probe is not None else not container.get("readinessProbe")
                containers[container["name"]] = alive and probed_ready
            result[pod.key] = containers
        return result

    def share_loop(self) -> None:
        """Send this node's readiness to every other agent on change, and every second."""
        while True:
            self.readiness_changed.wait(timeout=1.0)
            self.readiness_changed.clear()
            state = self.state
            if state is None:
                continue
            body = json.dumps({"node": self.node, "ready": self.local_ready}).encode()
            peers = [n for n in state.nodes if n.name != self.node]
            list(self.pool.map(lambda peer: self._send(peer.node_ip, body), peers))

    def _send(self, address: str, body: bytes) -> None:
        try:
            connection = http.client.HTTPConnection(address, self.port, timeout=0.5)
            connection.request("POST", "/readiness", body, {"Content-Type": "application/json"})
            connection.getresponse().read()
            connection.close()
        except OSError:
            pass

    def receive(self, node: str, ready: dict[str, bool]) -> None:
        if self.peer_ready.get(node) != ready:
            self.peer_ready[node] = ready
            self.dirty.set()

    # ---- rules (kube-proxy's part) ----------------------------------------
    def sync_loop(self) -> None:
        while True:
            self.dirty.wait()
            self.dirty.clear()
            state = self.state
            if state is not None:
                try:
                    self.sync(state)
                except Exception as error:  # keep the agent alive; retry soon
                    log(f"sync failed: {error}")
                    time.sleep(0.5)
                    self.dirty.set()

    def ready_map(self, state: ClusterState) -> dict[str, bool]:
        ready: dict[str, bool] = {}
        for node, pods in self.peer_ready.items():
            ready.update(pods)
        ready.update(self.local_ready)
        return {pod.uid: ready.get(pod.uid, False) for pod in state.pods.values()}

    def sync(self, state: ClusterState) -> None:
        started = time.monotonic()
        ready = self.ready_map(state)
        endpoints = {key: service_endpoints(state, service, ready) for key, service in state.services.items()}
        ruleset = iptables.render(state, self.node, endpoints, cache=self.render_cache)
        if self.previous is None:
            self.previous = existing_kube_chains()
        text = iptables.restore_text(ruleset, self.previous)
        result = subprocess.CompletedProcess([], 0)
        if text.strip():
            result = subprocess.run(
                ["iptables-restore", "--noflush", "--wait"], input=text, capture_output=True, text=True
            )
        if result.returncode != 0:
            self.previous = None  # the next sync writes everything
            raise RuntimeError(f"iptables-restore failed: {result.stderr.strip()}")
        changed = sum(1 for line in text.splitlines() if line.startswith(":"))
        self.previous = ruleset
        self.synced_ready = ready
        self.endpoints = {
            key: {port: [e.address for e in eps] for port, eps in by_port.items()} for key, by_port in endpoints.items()
        }
        self.announce_load_balancers(state, endpoints)
        if any(
            c.get("workload") == "coredns" for p in state.pods.values() if p.node == self.node for c in p.containers
        ):
            if write_snapshot(DNS_SNAPSHOT, dns_snapshot(state, ready)):
                log(f"wrote the DNS snapshot for generation {state.generation}")
        took = (time.monotonic() - started) * 1000
        log(f"synced generation {state.generation}: {changed} chains written in {took:.1f} ms")
        write_status({"generation": state.generation, "syncedAt": time.time(), "tookMs": round(took, 2)})

    def announce_load_balancers(self, state: ClusterState, endpoints: dict) -> None:
        """Hold the LoadBalancer addresses this node owns on eth0 (MetalLB layer-2
        style). On several hosts the overlay does not carry a gratuitous ARP for
        an address Docker did not hand out, so every other node routes each
        address to its owner's node IP instead."""
        owners = {
            s.load_balancer_ip: load_balancer_owner(state, s, endpoints[key])
            for key, s in state.services.items()
            if s.load_balancer_ip
        }
        wanted = {address for address, owner in owners.items() if owner == self.node}
        for address in sorted(wanted - self.owned_addresses):
            subprocess.run(["ip", "route", "del", f"{address}/32"], capture_output=True)
            subprocess.run(["ip", "addr", "replace", f"{address}/32", "dev", "eth0"], capture_output=True)
            gratuitous_arp(address)
            log(f"announcing LoadBalancer address {address}")
        for address in sorted(self.owned_addresses - wanted):
            subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "eth0"], capture_output=True)
            log(f"released LoadBalancer address {address}")
        self.owned_addresses = wanted
        routes: dict[str, str] = {}
        if any(node.host for node in state.nodes):
            node_ips = {node.name: node.node_ip for node in state.nodes}
            routes = {address: node_ips[owner] for address, owner in owners.items() if owner != self.node}
        for address, via in sorted(routes.items()):
            if self.routed.get(address) != via:
                subprocess.run(["ip", "route", "replace", f"{address}/32", "via", via, "dev", "eth0"], capture_output=True)
                log(f"LoadBalancer address {address} routed to its owner {via}")
        for address in sorted(set(self.routed) - set(routes) - wanted):
            subprocess.run(["ip", "route", "del", f"{address}/32"], capture_output=True)
        self.routed = routes


def existing_kube_chains() -> iptables.Ruleset:
    """KUBE-* chains already in the kernel (an earlier agent's), so the first sync
    rewrites or deletes each of them."""
    found: iptables.Ruleset = {}
    for table in ("filter", "nat"):
        result = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True)
        chains = [line[1:].split()[0] for line in result.stdout.splitlines() if line.startswith(":KUBE-")]
        found[table] = {chain: ["(unknown)"] for chain in chains if chain not in iptables.BASE_CHAINS[table]}
    return found


def gratuitous_arp(address: str, interface: str = "eth0") -> None:
    """Tell the network this node now has `address` (as MetalLB does on failover)."""
    try:
        with open(f"/sys/class/net/{interface}/address") as handle:
            mac = bytes.fromhex(handle.read().strip().replace(":", ""))
        ip = socket.inet_aton(address)
        frame = b"\xff" * 6 + mac + b"\x08\x06"
        frame += b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac + ip + b"\x00" * 6 + ip
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
            raw.bind((interface, 0))
            raw.send(frame)
    except OSError as error:
        log(f"gratuitous ARP for {address} failed: {error}")


def write_status(status: dict) -> None:
    os.makedirs(os.path.dirname(STATUS_FILE), exist_ok=True)
    with open(STATUS_FILE + ".new", "w") as handle:
        json.dump(status, handle)
    os.replace(STATUS_FILE + ".new", STATUS_FILE)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def make_handler(agent: Agent):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/healthz":
                self._reply({"ok": True})
            elif self.path == "/readiness":
                self._reply({"node": agent.node, "ready": agent.local_ready, "containers": agent.container_readiness()})
            elif self.path == "/endpoints":
                self._reply(agent.endpoints)
            elif self.path == "/unready":
                # Pods not ready in the view this node's rules were made from.
                self._reply(sorted(k for k, ready in agent.synced_ready.items() if not ready))
            else:
                self.send_error(404)

        def do_POST(self):  # noqa: N802
            if self.path != "/readiness":
                self.send_error(404)
                return
            data = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            agent.receive(data.get("node", "?"), data.get("ready", {}))
            self._reply({"ok": True})

        def _reply(self, data) -> None:
            body = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # noqa: A002
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emu-agent")
    parser.add_argument("--node", required=True)
    parser.add_argument("--snapshot", default="/etc/emu/state.json")
    parser.add_argument("--port", type=int, default=AGENT_PORT)
    options = parser.parse_args(argv)
    agent = Agent(options.node, options.snapshot, options.port)
    server = Server(("0.0.0.0", options.port), make_handler(agent))
    for target in (agent.watch_snapshot, agent.probe_loop, agent.share_loop, agent.sync_loop, server.serve_forever):
        threading.Thread(target=target, daemon=True).start()
    log(f"emu agent for node {options.node} listening on :{options.port}")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
