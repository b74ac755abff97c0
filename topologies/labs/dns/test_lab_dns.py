"""DNS: services, headless services and pods found by name, through the cluster DNS."""

from labcheck import traced


def test_a_service_name_resolves_to_its_cluster_ip(lab):
    echo = lab.state().services["default/echo"].cluster_ip
    for name in ("echo", "echo.default", "echo.default.svc.cluster.local"):
        assert lab.exec("client", ["getent", "hosts", name]).output.split()[0] == echo, name


def test_a_headless_service_resolves_to_its_pods(lab):
    db = lab.pod("db-0").ip
    assert lab.exec("client", ["dig", "+short", "db.default.svc.cluster.local"]).output.split() == [db]
    assert lab.exec("client", ["dig", "+short", "db-0.db.default.svc.cluster.local"]).output.split() == [db]


def test_pods_ask_the_kube_dns_service(lab):
    resolv = lab.exec("client", ["cat", "/etc/resolv.conf"]).output
    assert (
        "nameserver 10.96.0.10" in resolv
        and "search default.svc.cluster.local svc.cluster.local cluster.local" in resolv
    )
    result = traced(lab, "client", "kube-system/kube-dns:53", proto="udp")
    assert result["probe"]["reply"] == "NOERROR 10.96.0.1"
    coredns = next(pod for pod in lab.state().pods.values() if pod.namespace == "kube-system")
    assert result["outcome"]["dnat_to"] == f"{coredns.ip}:53"
