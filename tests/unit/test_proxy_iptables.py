"""kube-proxy's iptables mode where emu used to differ from it (pkg/proxy/iptables/proxier_test.go)."""

from __future__ import annotations

from emu.node.proxy import iptables
from tests.unit.test_proxy_nftables import endpoints, lab
from tests.unit.test_services import LAB, state


def test_local_policy_without_local_endpoint_still_short_circuits_pods_and_the_node():
    s = lab()  # default/local: NodePort 30081, externalTrafficPolicy Local; cp has no endpoint of it
    rules = iptables.render(s, "cp", endpoints(s))
    ext, svc = iptables.external_chain("default/local", "tcp"), iptables.service_chain("default/local", "tcp")
    assert rules["nat"][ext] == [
        '-m comment --comment "pod traffic for default/local external destinations" -s 10.244.0.0/16 -j ' + svc,
        ('-m comment --comment "masquerade LOCAL traffic for default/local external destinations" '
         "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"),
        ('-m comment --comment "route LOCAL traffic for default/local external destinations" '
         "-m addrtype --src-type LOCAL -j " + svc),
    ]  # and no jump to KUBE-SVL: there is nothing local to balance over
    assert f"-m comment --comment default/local -m tcp -p tcp --dport 30081 -j {ext}" in rules["nat"]["KUBE-NODEPORTS"]
    # Traffic from outside, which KUBE-EXT does not take, is dropped.
    assert ('-m comment --comment "default/local has no local endpoints" -m addrtype --dst-type LOCAL '
            "-m tcp -p tcp --dport 30081 -j DROP") in rules["filter"]["KUBE-EXTERNAL-SERVICES"]  # fmt: skip


def test_internal_local_policy_masquerades_off_cluster_traffic_in_svl():
    s = state(LAB.replace("  - name: sticky\n", "  - name: sticky\n    internalTrafficPolicy: Local\n"))
    rules = iptables.render(s, "w1", endpoints(s))["nat"]
    svl = iptables.local_chain("default/sticky", "tcp")
    assert rules[svl][0] == (
        '-m comment --comment "default/sticky cluster IP" -m tcp -p tcp -d 10.96.0.51/32 --dport 80 '
        "! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"
    )
    assert iptables.service_chain("default/sticky", "tcp") not in rules  # ClusterIP only: no KUBE-SVC at all
