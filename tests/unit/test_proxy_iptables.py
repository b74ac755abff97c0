"""kube-proxy's iptables mode where emu used to differ from it (pkg/proxy/iptables/proxier_test.go)."""

from __future__ import annotations

import re

from emu.node.proxy import iptables
from emu.node.records import ClusterState, NodeState
from emu.node.services import Endpoint
from tests.unit.test_proxy_packet_flow import service
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


# kube-proxy's TestSyncProxyRulesRepeated: the restore input of its partial syncs after adding
# a service, deleting one, adding one without endpoints, then its endpoints (its expected text;
# its fake iptables has no --random-fully, and it writes -d and -s without /32).
MASQ = "0x4000"
FIXED_FILTER = [
    "*filter", ":KUBE-NODEPORTS - [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-EXTERNAL-SERVICES - [0:0]",
    ":KUBE-FIREWALL - [0:0]", ":KUBE-FORWARD - [0:0]", ":KUBE-PROXY-FIREWALL - [0:0]",
    '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 '
    "! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
    "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
    f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {MASQ}/{MASQ} -j ACCEPT',
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
    "--ctstate RELATED,ESTABLISHED -j ACCEPT",
    "COMMIT",
]
FIXED_NAT = ["*nat", ":KUBE-NODEPORTS - [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]",
             ":KUBE-POSTROUTING - [0:0]"]  # fmt: skip
NAT_TAIL = [
    '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in '
    'this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
    f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ}",
    f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ}/{MASQ} -j RETURN",
    f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ}",
    '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE',
]
# (namespace/name, port, cluster IP, KUBE-SVC, KUBE-SEP, endpoint) of its services.
SERVICES = {
    "svc1": ("ns1/svc1", 80, "172.30.0.41", "KUBE-SVC-XPGD46QRK7WJZT7O", "KUBE-SEP-SNQ3ZNILQDEJNDQO", "10.0.1.1"),
    "svc2": ("ns2/svc2", 8080, "172.30.0.42", "KUBE-SVC-2VJB64SDSIJUP5T6", "KUBE-SEP-UHEGFW77JX3KXTOV", "10.0.2.1"),
    "svc3": ("ns3/svc3", 80, "172.30.0.43", "KUBE-SVC-X27LE4BHSL4DOUIK", "KUBE-SEP-BSWRHOQ77KEXZLNL", "10.0.3.1"),
    "svc4": ("ns4/svc4", 80, "172.30.0.44", "KUBE-SVC-4SW47YFZTEDKD3PK", "KUBE-SEP-AYCN5HPXMIRJNJXU", "10.0.4.1"),
}


def _jump(name: str) -> str:
    key, port, ip, svc, _, _ = SERVICES[name]
    return f'-A KUBE-SERVICES -m comment --comment "{key}:p{port} cluster IP" -m tcp -p tcp -d {ip} --dport {port} ' \
        f"-j {svc}"


def _chains(name: str) -> list[str]:
    key, port, ip, svc, sep, ep = SERVICES[name]
    return [f":{sep} - [0:0]", f":{svc} - [0:0]",
            f"-A {sep} -m comment --comment {key}:p{port} -s {ep} -j KUBE-MARK-MASQ",
            f"-A {sep} -m comment --comment {key}:p{port} -m tcp -p tcp -j DNAT --to-destination {ep}:{port}",
            f'-A {svc} -m comment --comment "{key}:p{port} cluster IP" -m tcp -p tcp -d {ip} --dport {port} '
            "! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
            f'-A {svc} -m comment --comment "{key}:p{port} -> {ep}:{port}" -j {sep}']  # fmt: skip


REJECT_SVC4 = ('-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 has no endpoints" -m tcp -p tcp '
               "-d 172.30.0.44 --dport 80 -j REJECT")  # fmt: skip
# (services, those with endpoints, kube-proxy's restore input for the sync that makes them so)
STEPS = [
    (["svc1", "svc2"], ["svc1", "svc2"], None),  # the first, full sync
    (["svc1", "svc2", "svc3"], ["svc1", "svc2", "svc3"],
     FIXED_FILTER + FIXED_NAT + _chains("svc3") + [_jump("svc1"), _jump("svc2"), _jump("svc3")] + NAT_TAIL
     + ["COMMIT"]),
    (["svc1", "svc3"], ["svc1", "svc3"],
     FIXED_FILTER + FIXED_NAT + [":KUBE-SEP-UHEGFW77JX3KXTOV - [0:0]", ":KUBE-SVC-2VJB64SDSIJUP5T6 - [0:0]",
                                 _jump("svc1"), _jump("svc3")] + NAT_TAIL
     + ["-X KUBE-SEP-UHEGFW77JX3KXTOV", "-X KUBE-SVC-2VJB64SDSIJUP5T6", "COMMIT"]),
    (["svc1", "svc3", "svc4"], ["svc1", "svc3"],
     FIXED_FILTER[:7] + [REJECT_SVC4] + FIXED_FILTER[7:] + FIXED_NAT + [_jump("svc1"), _jump("svc3")] + NAT_TAIL
     + ["COMMIT"]),
    (["svc1", "svc3", "svc4"], ["svc1", "svc3", "svc4"],
     FIXED_FILTER + FIXED_NAT + _chains("svc4") + [_jump("svc1"), _jump("svc3"), _jump("svc4")] + NAT_TAIL
     + ["COMMIT"]),
]  # fmt: skip


def _sync_state(names: list[str]) -> ClusterState:
    node = NodeState("test-node", "worker", {}, "10.0.1.0/24", "192.168.0.2", "c")
    state = ClusterState("t", "t", "192.168.0.0/24", {"podSubnet": "10.0.0.0/8", "serviceSubnet": "172.30.0.0/16"},
                         [node])  # fmt: skip
    for name in names:
        key, port, ip, *_ = SERVICES[name]
        made = service(*key.split("/"), {"clusterIP": ip, "port": {"name": f"p{port}", "port": port}})
        state.services[made.key] = made
    return state


def _kube_proxys_form(text: str) -> list[str]:
    text = re.sub(r"(-[ds] \d+\.\d+\.\d+\.\d+)/32", r"\1", text).replace(" --random-fully", "")
    return [line for line in text.splitlines() if line.strip()]


def test_partial_syncs_write_what_kube_proxy_writes():
    previous = None
    for names, ready, expected in STEPS:
        ready_endpoints = {}
        for name in ready:
            key, port, _, _, _, ep = SERVICES[name]
            ready_endpoints[key] = {f"p{port}": [Endpoint(ep, port, None, None)]}
        rules = iptables.render(_sync_state(names), "test-node", ready_endpoints)
        if expected is not None:
            assert sorted(_kube_proxys_form(iptables.restore_text(rules, previous))) == sorted(expected), names
        previous = rules
