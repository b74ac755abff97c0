"""Container to container: two containers of a pod share one network namespace."""

from labcheck import hops, traced


def test_the_sidecar_reaches_the_server_over_localhost(lab):
    assert lab.exec("web", ["curl", "-s", "http://localhost:8080/hostname"], container="sidecar").output == "web"


def test_both_containers_are_in_one_network_namespace(lab):
    script = "for c in server sidecar; do readlink /proc/$(cat /run/emu/pods/web/$c.pid)/ns/net; done"
    namespaces = lab.node_exec("node1", ["sh", "-c", script]).output.split()
    assert len(namespaces) == 2 and namespaces[0] == namespaces[1]


def test_the_packet_never_leaves_the_pod(lab):
    result = traced(lab, "web", "localhost:8080", container="sidecar")
    assert result["probe"]["reply"] == "web"
    assert {place for place, _ in hops(result)} == {"pod default/web"}
    assert [(hop["hook"], hop["in"] or hop["out"]) for _, hop in hops(result)] == [
        ("output", "lo"),
        ("postrouting", "lo"),
        ("prerouting", "lo"),
        ("input", "lo"),
    ]
