"""The Kubernetes network model on the default lab, proven with real packets."""

from __future__ import annotations

import testinfra

from tests.integration.helpers import curl


def node_host(cluster, node_name: str):
    return testinfra.get_host(f"docker://{cluster.state().node(node_name).container}")


def test_containers_of_a_pod_share_localhost(lab):
    # The sidecar is another container of pod 'web': it reaches the server on localhost.
    assert curl(lab, "web", "http://localhost:8080/hostname", container="sidecar") == "web"
    assert curl(lab, "web", "http://127.0.0.1:8080/echo?msg=shared", container="sidecar") == "shared"


def test_pod_to_pod_on_the_same_node(lab):
    state = lab.state()
    client = state.pods["default/client"]
    neighbours = [p for p in state.pods.values() if p.node == client.node and p.name.startswith("echo-")]
    assert neighbours, "the default lab puts an echo pod beside the client"
    for pod in neighbours:
        assert curl(lab, "client", f"http://{pod.ip}:8080/hostname") == pod.name
        # Through the bridge, the server sees the client pod's own address.
        assert curl(lab, "client", f"http://{pod.ip}:8080/clientip").split(":")[0] == client.ip


def test_pod_to_pod_across_nodes_without_nat(lab):
    state = lab.state()
    client = state.pods["default/client"]
    web = state.pods["default/web"]
    assert web.node != client.node
    assert curl(lab, "client", f"http://{web.ip}:8080/hostname") == "web"
    assert curl(lab, "client", f"http://{web.ip}:8080/clientip").split(":")[0] == client.ip


def test_udp_echo_across_nodes(lab):
    web = lab.state().pods["default/web"]
    result = lab.exec("client", ["sh", "-c", f"echo hostname | nc -u -w1 {web.ip} 8081"])
    assert result.output.strip() == "web", result.output


def test_every_node_reaches_every_pod_on_it(lab):
    state = lab.state()
    for node in state.nodes:
        host = node_host(lab, node.name)
        for pod in state.pods_on(node.name):
            assert host.run(f"ping -c1 -W2 {pod.ip}").rc == 0, f"{node.name} cannot ping {pod.key}"
            if any(c.get("workload") == "netexec" for c in pod.containers):
                answer = host.check_output(f"curl -sS --max-time 5 http://{pod.ip}:8080/hostname")
                assert answer == pod.name


def test_egress_is_masqueraded_to_the_node_ip(lab):
    # A server outside the cluster, on the cluster's Docker network.
    server_ip = lab.run_external("internet")
    state = lab.state()
    client = state.pods["default/client"]
    seen = curl(lab, "client", f"http://{server_ip}:8080/clientip").split(":")[0]
    assert seen == state.node(client.node).node_ip
    assert seen != client.ip


def test_nodes_have_bridge_routes_and_namespaces(lab):
    state = lab.state()
    for node in state.nodes:
        host = node_host(lab, node.name)
        cni0 = host.interface("cni0")
        assert cni0.exists
        assert f"{node.gateway}" in cni0.addresses
        routes = host.check_output("ip route")
        for other in state.nodes:
            if other.name != node.name:
                assert f"{other.pod_cidr} via {other.node_ip} dev eth0" in routes
        namespaces = {line.split()[0] for line in host.check_output("ip netns list").splitlines() if line}
        assert namespaces == {pod.netns for pod in state.pods_on(node.name)}


def test_pod_has_its_own_hostname_hosts_and_resolv_conf(lab):
    client = lab.state().pods["default/client"]
    assert lab.exec("client", ["hostname"]).output.strip() == "client"
    hosts = lab.exec("client", ["cat", "/etc/hosts"]).output
    assert f"{client.ip}\tclient" in hosts
    resolv = lab.exec("client", ["cat", "/etc/resolv.conf"]).output
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in resolv
    assert "nameserver 10.96.0.10" in resolv


def test_logs_are_kept_per_container(lab):
    curl(lab, "client", f"http://{lab.state().pods['default/web'].ip}:8080/echo?msg=logged")
    assert "/echo?msg=logged" in lab.logs("web", "server")
    assert "serving HTTP" in lab.logs("web")


def test_node_containers_are_least_privileged(lab, runtime):
    for node in lab.state().nodes:
        detail = runtime.api.inspect_container(node.container)
        host_config = detail["HostConfig"]
        assert host_config["Privileged"] is False
        assert sorted(host_config["CapAdd"]) == ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]
        assert detail["Config"]["Labels"]["io.emu.cluster"] == lab.name
        assert detail["Config"]["Hostname"] == node.name
