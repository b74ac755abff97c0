"""kube-proxy's health servers in the agent (emu.node.agent.health), asked over real sockets
as a load balancer's health check and a liveness probe ask them."""

from __future__ import annotations

import http.client
import json

import pytest

from emu.node.agent.health import KubeProxyHealth, ProxierHealth, ServiceHealth, go_time, stop
from emu.node.records import ClusterState, NodeState, ServicePortState, ServiceState
from emu.node.services import Endpoint, health_check_node_ports, local_ready_endpoints


class Clock:
    def __init__(self, now: float = 1_796_655_787.25):
        self.now = now

    def __call__(self) -> float:
        return self.now


def get(port: int, path: str = "/") -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


@pytest.fixture
def services():
    proxier = ProxierHealth(clock=Clock(), monotonic=Clock(0.0))
    health = ServiceHealth(proxier, "127.0.0.1", log=lambda message: None)
    yield health
    health.close()


def port_of(health: ServiceHealth, key: str) -> int:
    return health.servers[key][1].port


def test_a_service_health_check_answers_its_local_endpoints_as_kube_proxy(services):
    services.sync_services({"ns/web": 0, "ns/none": 0})  # (0: any free port, for the test)
    services.sync_endpoints({"ns/web": 2})
    status, headers, body = get(port_of(services, "ns/web"))
    assert status == 200
    assert headers["Content-Type"] == "application/json" and headers["X-Content-Type-Options"] == "nosniff"
    assert body == ('{\n\t"service": {\n\t\t"namespace": "ns",\n\t\t"name": "web"\n\t},\n'
                    '\t"localEndpoints": 2,\n\t"serviceProxyHealthy": true\n}')  # fmt: skip
    status, _, body = get(port_of(services, "ns/none"), "/any/path")
    assert status == 503
    assert json.loads(body) == {"service": {"namespace": "ns", "name": "none"}, "localEndpoints": 0,
                                "serviceProxyHealthy": True}  # fmt: skip
    # The count follows the endpoints; a service no longer named closes its port.
    services.sync_endpoints({"ns/none": 1})
    assert get(port_of(services, "ns/none"))[0] == 200
    assert get(port_of(services, "ns/web"))[0] == 503
    gone = port_of(services, "ns/web")
    services.sync_services({"ns/none": 0})
    assert list(services.servers) == ["ns/none"]
    with pytest.raises(ConnectionRefusedError):
        get(gone)


def test_a_service_health_check_fails_while_the_proxy_is_unhealthy(services):
    services.sync_services({"ns/web": 0})
    services.sync_endpoints({"ns/web": 1})
    services.proxier.queued()
    services.proxier.monotonic.now += 61  # a change waiting longer than kube-proxy's 60 s
    status, _, body = get(port_of(services, "ns/web"))
    assert status == 503 and json.loads(body)["serviceProxyHealthy"] is False


def test_a_port_in_use_is_reported_and_tried_again(services):
    logged = []
    services.log = logged.append
    services.sync_services({"ns/a": 0})
    taken = port_of(services, "ns/a")
    services.sync_services({"ns/a": 0, "ns/b": taken})
    assert list(services.servers) == ["ns/a"] and f"service ns/b on port {taken}" in logged[0]
    services.sync_services({"ns/b": taken})  # the port is free now: the next sync opens it
    assert list(services.servers) == ["ns/b"] and get(taken)[0] == 503


def test_kube_proxys_healthz_and_livez():
    wall, monotonic = Clock(), Clock(100.0)
    health = KubeProxyHealth(lambda message: None, port=0, host="127.0.0.1")
    health.proxier = ProxierHealth(clock=wall, monotonic=monotonic)
    health.start()
    port = health.server.port
    try:
        now = go_time(wall.now)
        assert now == "2026-12-07 15:03:07.25 +0000 UTC"
        status, headers, body = get(port, "/healthz")
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert body == f'{{"lastUpdated": "{now}","currentTime": "{now}", "nodeEligible": true}}'
        status, _, body = get(port, "/livez")
        assert (status, body) == (200, f'{{"lastUpdated": "{now}","currentTime": "{now}"}}')
        assert get(port, "/metrics")[0] == 404
        # A change queued and not synced: healthy for 60 s, then 503 with the last sync's time.
        health.updated()
        health.queued()
        monotonic.now += 59
        assert get(port, "/healthz")[0] == 200
        monotonic.now += 2
        wall.now += 61
        status, _, body = get(port, "/livez")
        assert status == 503
        assert json.loads(body) == {"lastUpdated": now, "currentTime": go_time(wall.now)}
        health.updated()
        assert get(port, "/healthz")[0] == 200
    finally:
        stop(health.server)


def test_go_time_matches_go():
    assert go_time(None) == "0001-01-01 00:00:00 +0000 UTC"
    assert go_time(0) == "1970-01-01 00:00:00 +0000 UTC"
    assert go_time(1.000000123) == "1970-01-01 00:00:01.000000123 +0000 UTC"


def test_local_ready_endpoints_count_ips_on_the_node_as_kube_proxy():
    node = NodeState("n1", "worker", {}, "10.244.1.0/24", "172.28.0.3", "c")
    ports = [ServicePortState("a", 80, "TCP", 8080), ServicePortState("b", 81, "TCP", 8081)]
    checked = ServiceState("ns", "lb", "LoadBalancer", "10.96.0.9", ports, external_traffic_policy="Local",
                           health_check_node_port=31000)  # fmt: skip
    plain = ServiceState("ns", "plain", "LoadBalancer", "10.96.0.8", ports[:1])
    state = ClusterState("t", "t", "172.28.0.0/24", {}, [node], services={s.key: s for s in (checked, plain)})
    here, there = Endpoint("10.244.1.5", 8080, "n1", "ns/p"), Endpoint("10.244.2.5", 8080, "n2", "ns/q")
    endpoints = {"ns/lb": {"a": [here, there], "b": [Endpoint("10.244.1.5", 8081, "n1", "ns/p")]},
                 "ns/plain": {"": [here]}}  # fmt: skip
    assert health_check_node_ports(state) == {"ns/lb": 31000}
    assert local_ready_endpoints(state, "n1", endpoints) == {"ns/lb": 1}  # one pod behind two ports
    assert local_ready_endpoints(state, "n2", endpoints) == {"ns/lb": 1}
    assert local_ready_endpoints(state, "n3", endpoints) == {}
