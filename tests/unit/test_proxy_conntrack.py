"""kube-proxy's stale UDP conntrack cleanup, the same in every mode."""

from __future__ import annotations

import subprocess

from emu.node.agent.proxysync import ProxySync
from emu.node.proxy.conntrack import stale_udp_commands, udp_view
from tests.unit.test_proxy_nftables import endpoints, lab


def test_endpoint_leaving_a_udp_service_has_its_flows_deleted():
    s = lab()  # default/empty is UDP 10.96.0.53:80 without endpoints; kube-dns has UDP 53
    ready = {p.uid: True for p in s.pods.values()}
    before = udp_view(s, "w1", endpoints(s, ready))
    dns_pod = next(p for p in s.pods.values() if p.labels.get("k8s-app") == "kube-dns")
    after = udp_view(s, "w1", endpoints(s, ready | {dns_pod.uid: False}))
    assert stale_udp_commands(before, after) == [
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.10", "--orig-port-dst", "53", "--dst-nat", dns_pod.ip],
    ]
    # Back again: flows tracked while it had no endpoint were never NATed; they go.
    assert stale_udp_commands(after, before) == [
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.10", "--orig-port-dst", "53"],
    ]
    assert stale_udp_commands(before, before) == []


def test_tcp_changes_touch_no_conntrack_entry():
    s = lab()
    ready = {p.uid: True for p in s.pods.values()}
    before = udp_view(s, "w1", endpoints(s, ready))
    after = udp_view(s, "w1", endpoints(s, ready | {s.pods["default/web-b"].uid: False}))  # web: TCP only
    assert stale_udp_commands(before, after) == []


def test_the_agent_runs_them_after_a_sync_in_any_mode():
    s = lab()
    s.networking["proxyMode"] = "nftables"
    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 1 if argv[0] == "conntrack" else 0, "", "")

    proxy = ProxySync(log=lambda message: calls.append(["log", message]), run=run)
    ready = {p.uid: True for p in s.pods.values()}
    proxy.sync(s, "w1", endpoints(s, ready))
    assert not [c for c in calls if c[0] == "conntrack"]  # nothing to compare with on a first sync
    dns_pod = next(p for p in s.pods.values() if p.labels.get("k8s-app") == "kube-dns")
    proxy.sync(s, "w1", endpoints(s, ready | {dns_pod.uid: False}))
    assert [c for c in calls if c[0] == "conntrack"] == [
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.10", "--orig-port-dst", "53", "--dst-nat", dns_pod.ip],
    ]
    assert not [c for c in calls if c[0] == "log"]  # exit 1 (nothing matched) is no failure
