"""A connectivity suite for lab.yaml, written with emu's pytest plugin.

    pip install -e '../..[test]'   # emu (this checkout), pytest, pytest-testinfra
    pytest                    # brings the lab up once, runs these, removes it
"""

from emu.testing import client_ip, connectivity, resolve, wait_ready


def test_every_pod_is_ready(emu_cluster):
    wait_ready(emu_cluster, services={"echo": 2, "web": 1})


def test_reachability(emu_cluster):
    # From each pod to each target: services by name (resolved by the pod's own
    # resolver), a pod by its IP (pod/NAME); port 9 has no listener.
    matrix = connectivity(
        emu_cluster,
        sources=["client", "web"],
        targets=["echo:80", "web:80", "web:8081/udp", "pod/web:8080", "pod/web:9"],
        expect=True,
    )
    matrix.expect(False, target="pod/web:9/TCP")
    print(matrix.report())  # the tables, shown with -s or on failure
    matrix.assert_expected()
    assert "refused" in matrix.reason("client", "pod/web:9/TCP")


def test_the_pod_as_a_testinfra_host(emu_host, emu_pod):
    client = emu_host("client")
    assert client.check_output("hostname") == "client"
    assert emu_pod("client").ip in client.interface("eth0").addresses
    assert "nameserver 10.96.0.10" in client.file("/etc/resolv.conf").content_string
    assert client.addr("web").port(80).is_reachable
    web = emu_host("web")
    assert web.socket("tcp://0.0.0.0:8080").is_listening


def test_service_names_resolve_as_in_kubernetes(emu_cluster, emu_service):
    answer = resolve(emu_cluster, "client", "echo")
    assert answer.status == "NOERROR"
    assert answer.addresses == [emu_service("echo").cluster_ip]
    # A name that is not in the cluster's zone: NXDOMAIN from the cluster DNS.
    assert resolve(emu_cluster, "client", "no-such-service.default.svc.cluster.local.").status == "NXDOMAIN"


def test_pod_to_pod_keeps_the_client_ip(emu_cluster, emu_pod):
    client = emu_pod("client")
    assert client_ip(emu_cluster, client, "pod/web") == client.ip


def test_a_node_port_from_another_node_is_masqueraded(emu_cluster, emu_node, emu_service):
    # Through the NodePort of the worker, from the control-plane node: kube-proxy
    # masquerades it, so web sees the worker's address, not the caller's.
    worker, caller = emu_node("worker"), emu_node("control-plane")
    port = emu_service("web").node_port("http")
    assert client_ip(emu_cluster, caller, worker.ip, port=port) == worker.ip
