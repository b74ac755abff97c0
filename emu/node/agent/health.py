"""kube-proxy's health servers, run by the node agent (its kube-proxy part).

As pkg/proxy/healthcheck does:
- `ProxierHealth`: kube-proxy's own /healthz and /livez on :10256. Healthy
  while no change waits for a sync longer than HEALTH_TIMEOUT (a change
  queued, `queued()`, and not yet written, `updated()`): 200 with
  {"lastUpdated", "currentTime"} (and "nodeEligible" on /healthz), else 503.
- `ServiceHealth`: for every LoadBalancer service with externalTrafficPolicy
  Local, an HTTP server on its healthCheckNodePort answering any GET with the
  service's name, its ready endpoints on this node and whether the proxy is
  healthy: 200 when there is a local endpoint (and the proxy is healthy),
  503 when not, so that a load balancer sends traffic only to nodes that
  have one.
- `KubeProxyHealth`: both, as the agent's sync drives them.

Standard library only: it runs in the node agent.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

from emu.node.agent import web
from emu.node.records import ClusterState
from emu.node.services import health_check_node_ports, local_ready_endpoints

HEALTHZ_PORT = 10256  # kube-proxy's --healthz-bind-address port
HEALTH_TIMEOUT = 60.0  # seconds: kube-proxy's, twice its default --iptables-sync-period (30 s)
REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


def go_time(seconds: float | None) -> str:
    """A time as Go's time.Time String() writes it in UTC (what kube-proxy's %q prints),
    e.g. '2026-12-07 15:03:07.123456 +0000 UTC'; None is Go's zero time."""
    if seconds is None:
        return "0001-01-01 00:00:00 +0000 UTC"
    whole = int(seconds)
    nanos = f"{round((seconds - whole) * 1e9):09d}".rstrip("0")
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(whole)) + (f".{nanos}" if nanos else "") + " +0000 UTC"


def reply(status: int, body: str, content_type: str = "application/json") -> bytes:
    """An HTTP/1.1 response with the headers kube-proxy's health handlers set."""
    data = body.encode()
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}", f"Content-Type: {content_type}",
            "X-Content-Type-Options: nosniff", f"Content-Length: {len(data)}"]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def not_found() -> bytes:
    return reply(404, "404 page not found\n", "text/plain; charset=utf-8")


class ProxierHealth:
    """kube-proxy's proxierHealthServer: the sync loop's health, and its HTTP answers.
    `clock` gives wall-clock seconds (the times it reports), `monotonic` the age of a
    waiting change."""

    def __init__(self, timeout: float = HEALTH_TIMEOUT, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):  # fmt: skip
        self.timeout = timeout
        self.clock, self.monotonic = clock, monotonic
        self.lock = threading.Lock()
        self.oldest_queued: float | None = None  # monotonic time of the oldest change not yet synced
        self.last_updated: float | None = None  # wall-clock time of the last sync

    def queued(self) -> None:
        """A change arrived that the rules must follow (only the oldest waiting one counts)."""
        with self.lock:
            if self.oldest_queued is None:
                self.oldest_queued = self.monotonic()

    def updated(self) -> None:
        """The rules follow every change so far."""
        with self.lock:
            self.oldest_queued = None
            self.last_updated = self.clock()

    def healthy(self) -> bool:
        """Healthy while starting, when synced, or while the waiting change is younger than the timeout."""
        with self.lock:
            return self.oldest_queued is None or self.monotonic() - self.oldest_queued < self.timeout

    def answer(self, path: str) -> bytes:
        """The response to a GET of `path`: /healthz, /livez, else 404."""
        if path.split("?", 1)[0] not in ("/healthz", "/livez"):
            return not_found()
        healthy, now = self.healthy(), self.clock()
        # As kube-proxy: a healthy server reports lastUpdated as now (older releases synced
        # on a timer; clients read a recent lastUpdated as healthy).
        last = now if healthy else self.last_updated
        body = f'{{"lastUpdated": {json.dumps(go_time(last))},"currentTime": {json.dumps(go_time(now))}'
        if path.startswith("/healthz"):
            body += ', "nodeEligible": true'  # emu has no node marked for deletion
        return reply(200 if healthy else 503, body + "}")

    def handle(self, request: web.Request, wfile) -> bool:
        wfile.write(self.answer(request.path))  # any method, as Go's ServeMux routes them
        return True


def service_answer(key: str, local_endpoints: int, proxy_healthy: bool) -> bytes:
    """A service health check's response, as kube-proxy's hcHandler writes it."""
    namespace, _, name = key.partition("/")
    body = "\n".join([
        "{", '\t"service": {', f'\t\t"namespace": {json.dumps(namespace)},', f'\t\t"name": {json.dumps(name)}',
        "\t},", f'\t"localEndpoints": {local_endpoints},', f'\t"serviceProxyHealthy": {json.dumps(proxy_healthy)}', "}",
    ])  # fmt: skip
    return reply(200 if local_endpoints and proxy_healthy else 503, body)


def serve(server: web.Server) -> None:
    """Serve until stopped (accept() fails once `stop` shut the socket down)."""
    try:
        server.serve_forever()
    except OSError:
        pass


def stop(server: web.Server) -> None:
    """Stop listening now: shutdown wakes the thread blocked in accept(), which a bare
    close leaves holding the socket, still taking one more connection."""
    try:
        server.socket.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected, or closed already
    server.close()


class ServiceHealth:
    """kube-proxy's ServiceHealthServer: one listener per service's healthCheckNodePort."""

    def __init__(self, proxier: ProxierHealth, host: str = "0.0.0.0", log: Callable[[str], None] = print):
        self.proxier = proxier
        self.host = host
        self.log = log
        self.lock = threading.Lock()
        self.servers: dict[str, tuple[int, web.Server]] = {}  # service key -> (port, its server)
        self.endpoints: dict[str, int] = {}  # service key -> ready endpoints on this node

    def sync_services(self, ports: dict[str, int]) -> None:
        """Listen on exactly these {service key: port}: close the rest, open the new (a port
        that cannot be opened now is tried again at the next sync, as kube-proxy does)."""
        with self.lock:
            for key, (port, server) in list(self.servers.items()):
                if ports.get(key) != port:
                    stop(server)
                    del self.servers[key]
            for key, port in sorted(ports.items()):
                if key in self.servers:
                    continue
                try:
                    server = web.Server((self.host, port), self._handler(key))
                except OSError as error:
                    self.log(f"cannot start the health check of service {key} on port {port}: {error}")
                    continue
                threading.Thread(target=serve, args=(server,), daemon=True, name=f"health {key}").start()
                self.servers[key] = (port, server)

    def sync_endpoints(self, counts: dict[str, int]) -> None:
        """{service key: ready endpoints on this node}; a service not named has none."""
        with self.lock:
            self.endpoints = dict(counts)

    def _handler(self, key: str) -> web.Handler:
        def handle(request: web.Request, wfile) -> bool:
            with self.lock:
                count = self.endpoints.get(key, 0)
            wfile.write(service_answer(key, count, self.proxier.healthy()))
            return True

        return handle

    def close(self) -> None:
        self.sync_services({})


class KubeProxyHealth:
    """Both servers, driven by the agent: `queued()` when a change asks for a sync,
    `synced(...)` after a sync wrote the rules, `updated()` after one found nothing to write."""

    def __init__(self, log: Callable[[str], None] = print, port: int = HEALTHZ_PORT, host: str = "0.0.0.0"):
        self.log = log
        self.proxier = ProxierHealth()
        self.services = ServiceHealth(self.proxier, host, log)
        self.address = (host, port)
        self.server: web.Server | None = None

    def start(self) -> None:
        """Serve /healthz and /livez (a port in use is logged, not fatal: the rules matter more)."""
        try:
            self.server = web.Server(self.address, self.proxier.handle)
        except OSError as error:
            self.log(f"cannot serve kube-proxy's /healthz on port {self.address[1]}: {error}")
            return
        threading.Thread(target=serve, args=(self.server,), daemon=True, name="healthz").start()

    def queued(self) -> None:
        self.proxier.queued()

    def updated(self) -> None:
        self.proxier.updated()

    def synced(self, state: ClusterState, node: str, endpoints: dict) -> None:
        self.services.sync_services(health_check_node_ports(state))
        self.services.sync_endpoints(local_ready_endpoints(state, node, endpoints))
        self.proxier.updated()
