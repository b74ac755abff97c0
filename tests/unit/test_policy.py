"""NetworkPolicy rendering: golden rules, selectors, set deltas, and packets
traced through the rendered chains and sets of both nodes (a small evaluator of
the rule shapes emu.node.policy writes), as kube-proxy's tests trace packets."""

from __future__ import annotations

import ipaddress
import re

import pytest

from emu.node import policy
from emu.control.state import plan_cluster
from emu.api.topology.load import load_text

BASE = """\
name: np
nodes: [{name: cp, role: control-plane}, {name: w1}, {name: w2}]
namespaces: [{name: x, labels: {team: blue}}]
pods:
  - {name: a, namespace: x, node: w1, labels: {pod: a}, containers: [{name: c, workload: netexec, ports: [{name: web, containerPort: 8080}]}]}
  - {name: b, namespace: x, node: w2, labels: {pod: b}, containers: [{name: c, workload: netexec, ports: [{name: web, containerPort: 9090}]}]}
  - {name: a, namespace: y, node: w1, labels: {pod: a}, containers: [{name: c, workload: netexec}]}
  - {name: b, namespace: y, node: w2, labels: {pod: b}, containers: [{name: c, workload: netexec}]}
"""

GOLDEN_POLICIES = """\
networkPolicies:
  - name: allow-b
    namespace: x
    podSelector: {matchLabels: {pod: a}}
    ingress:
      - from: [{podSelector: {matchLabels: {pod: b}}}, {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
        ports: [{port: web}, {port: 81, endPort: 82, protocol: UDP}]
  - name: egress-dns
    namespace: x
    policyTypes: [Egress]
    egress: [{ports: [{port: 53, protocol: UDP}]}, {to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.244.0.0/16]}}]}]
"""


def state_of(policies: str = "", base: str = BASE):
    return plan_cluster(load_text(base + policies), "emu-np", "172.28.9.0/24")


def test_rules_match_golden(golden):
    state = state_of(GOLDEN_POLICIES)
    rules = policy.render(state, "w1")
    text = policy.ipset_restore_text(rules.sets, None) + policy.iptables_restore_text(rules.chains, None)
    golden("netpol_w1.rules", text)


@pytest.mark.parametrize(
    "selector,labels,expected",
    [
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
        (None, {}, False),
    ],
)
def test_selectors(selector, labels, expected):
    assert policy.selector_matches(selector, labels) is expected


def test_a_changed_set_is_written_as_its_difference():
    before = {"EMU-NPS-A": ("hash:ip", ("10.0.0.1", "10.0.0.2"))}
    after = {"EMU-NPS-A": ("hash:ip", ("10.0.0.2", "10.0.0.3")), "EMU-NPS-B": ("hash:ip", ())}
    assert policy.ipset_restore_text(after, before) == (
        "del EMU-NPS-A 10.0.0.1 -exist\nadd EMU-NPS-A 10.0.0.3 -exist\n"
        "create EMU-NPS-B hash:ip family inet -exist\nflush EMU-NPS-B\n"
    )
    assert policy.ipset_restore_text(after, after) == ""
    assert policy.ipset_destroy_text(after, ["EMU-NPS-A", "EMU-NPS-OLD"]) == "destroy EMU-NPS-OLD\n"


def test_unchanged_chains_are_not_written_and_gone_ones_deleted():
    chains = {"EMU-NETPOL": ["-j RETURN"], "EMU-NP-ING-X": ["-j MARK"]}
    assert policy.iptables_restore_text(chains, chains) == ""
    text = policy.iptables_restore_text({"EMU-NETPOL": ["-j RETURN"]}, chains)
    assert text == "*filter\n:EMU-NP-ING-X - [0:0]\n-X EMU-NP-ING-X\nCOMMIT\n"


def test_no_policy_isolates_nothing_and_rules_do_not_grow_with_pod_pairs():
    assert all(not entries for _, entries in (policy.render(state_of(), "w1").sets[policy.INGRESS_ISOLATED],))
    pods = "".join(
        f"  - {{name: p{i}, namespace: x, node: w1, labels: {{pod: p{i}, app: many}}, containers: [{{name: c, workload: netexec}}]}}\n"
        for i in range(60)
    )
    many = policy.render(state_of(GOLDEN_POLICIES, BASE + pods.replace("pod: p", "role: p")), "w1")
    few = policy.render(state_of(GOLDEN_POLICIES), "w1")
    count = lambda rules: sum(len(r) for r in rules.chains.values())  # noqa: E731
    assert count(many) == count(few)  # 60 more pods: more set entries, not more rules


# ---- packets through the rules --------------------------------------------------
class Kernel:
    """One node's FORWARD as emu.node.policy writes it: sets and chains, evaluated for a NEW connection."""

    def __init__(self, rules: policy.PolicyRules):
        self.sets = rules.sets
        self.chains = rules.chains

    def in_set(self, name: str, flags: str, packet: dict) -> bool:
        set_type, entries = self.sets[name]
        address = packet["src"] if flags.split(",")[0] == "src" else packet["dst"]
        if set_type == "hash:ip":
            return address in entries
        if set_type == "hash:ip,port":
            return f"{address},{packet['proto']}:{packet['port']}" in entries
        best = None  # hash:net: the most specific entry decides, nomatch entries refuse
        for entry in entries:
            cidr, _, nomatch = entry.partition(" ")
            network = ipaddress.IPv4Network(cidr)
            if ipaddress.IPv4Address(address) in network and (best is None or network.prefixlen > best[0]):
                best = (network.prefixlen, not nomatch)
        return bool(best and best[1])

    def matches(self, rule: str, packet: dict) -> bool:
        for name, flags in re.findall(r"--match-set (\S+) (\S+)", rule):
            if not self.in_set(name, flags, packet):
                return False
        proto = re.search(r"-p (\w+)", rule)
        if proto and proto.group(1) != packet["proto"]:
            return False
        ports = re.search(r"--dport (\d+)(?::(\d+))?", rule)
        if ports and not int(ports.group(1)) <= packet["port"] <= int(ports.group(2) or ports.group(1)):
            return False
        mark = re.search(r"-m mark --mark (\w+)/", rule)
        if mark and not packet["mark"] & int(mark.group(1), 16):
            return False
        return True

    def run(self, chain: str, packet: dict) -> str | None:
        for rule in self.chains.get(chain, []):
            if "--ctstate" in rule or not self.matches(rule, packet):
                continue
            target = rule.split(" -j ")[-1].split()[0]
            if target == "MARK":
                value, mask = rule.split("--set-xmark ")[1].split("/")
                packet["mark"] = (packet["mark"] & ~int(mask, 16)) | int(value, 16)
            elif target in ("RETURN", "REJECT"):
                return target
            else:
                verdict = self.run(target, packet)
                if verdict == "REJECT":
                    return verdict
        return None


def allowed(state, source: str, target: str, port: int, proto: str = "tcp") -> bool:
    src, dst = state.pods[source], state.pods[target]
    for node in dict.fromkeys([src.node, dst.node]):
        packet = {"src": src.ip, "dst": dst.ip, "port": port, "proto": proto, "mark": 0}
        if Kernel(policy.render(state, node)).run(policy.MAIN_CHAIN, packet) == "REJECT":
            return False
    return True


def test_traced_packets_follow_kubernetes_semantics():
    state = state_of(GOLDEN_POLICIES)
    # x/a admits x/b (pod selector) and namespace y, on its port named web (8080) and UDP 81-82.
    assert allowed(state, "y/a", "x/a", 8080)  # same node
    assert allowed(state, "y/b", "x/a", 8080)  # across nodes
    assert not allowed(state, "y/b", "x/a", 9090)  # web is 8080 on x/a
    assert allowed(state, "y/b", "x/a", 82, "udp") and not allowed(state, "y/b", "x/a", 83, "udp")
    # Every x pod may only send to UDP 53 and outside the pod subnet (egress-dns): x/b cannot reach x/a.
    assert not allowed(state, "x/b", "x/a", 8080)
    assert not allowed(state, "x/a", "y/b", 8080)
    assert allowed(state, "y/a", "y/b", 8080)  # y is not isolated at all
    assert allowed(state, "x/b", "y/a", 53, "udp")


def test_traced_ip_block_except_and_named_ports_per_pod():
    state = state_of()
    ip_b = state.pods["y/b"].ip
    state = state_of(
        "networkPolicies:\n"
        f"  - {{name: e, namespace: x, podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{ip_b}/32]}}}}]}}]}}\n"
        "  - {name: i, namespace: x, podSelector: {}, ingress: [{ports: [{port: web}]}]}\n"
    )
    assert allowed(state, "x/a", "y/a", 8080) and not allowed(state, "x/a", "y/b", 8080)
    # The port named web is 8080 on x/a and 9090 on x/b: each pod admits its own.
    assert allowed(state, "y/a", "x/a", 8080) and not allowed(state, "y/a", "x/a", 9090)
    assert allowed(state, "y/a", "x/b", 9090) and not allowed(state, "y/a", "x/b", 8080)


def test_policy_types_default_to_ingress_plus_egress_when_egress_rules_are_given():
    state = state_of("networkPolicies:\n  - {name: e, namespace: x, podSelector: {matchLabels: {pod: a}}, egress: [{}]}\n")
    assert state.network_policies[0]["policyTypes"] == ["Ingress", "Egress"]
    assert not allowed(state, "y/a", "x/a", 8080) and allowed(state, "x/a", "y/a", 8080)


# ---- the agent's job -------------------------------------------------------------
class FakeKernel:
    """Records what PolicySync runs; iptables -D finds the hook once."""

    def __init__(self, fail: str = ""):
        self.calls: list[list[str]] = []
        self.fail = fail
        self.hooked = False

    def __call__(self, argv, input=None, **kwargs):
        import subprocess

        self.calls.append(list(argv))
        code = 1 if self.fail and self.fail in " ".join(argv) else 0
        if argv[:3] == ["iptables", "-w", "-C"]:
            code = 0 if self.hooked else 1
        elif argv[:3] == ["iptables", "-w", "-I"]:
            self.hooked = True
        elif argv[:3] == ["iptables", "-w", "-D"]:
            code, self.hooked = (0 if self.hooked else 1), False
        return subprocess.CompletedProcess(argv, code, "", "boom" if code else "")

    def ran(self, *prefix: str) -> bool:
        return any(call[: len(prefix)] == list(prefix) for call in self.calls)


def test_agent_job_writes_once_per_generation_and_removes_everything_with_the_last_policy():
    from emu.node.agent.policy import PolicySync

    kernel = FakeKernel()
    sync = PolicySync(lambda message: None, kernel)
    state = state_of(GOLDEN_POLICIES)
    state.generation = 1
    assert sync.sync(state, "w1") > 0
    assert kernel.ran("ipset", "restore") and kernel.ran("iptables-restore") and kernel.hooked
    kernel.calls.clear()
    assert sync.sync(state, "w1") == 0 and not kernel.calls  # nothing new: nothing run
    empty = state_of()
    empty.generation = 2
    sync.sync(empty, "w1")
    assert not kernel.hooked  # the hook went first, then the chains and sets
    assert sync.chains == {} and sync.sets == {}


def test_agent_job_leaves_a_node_without_policies_untouched():
    from emu.node.agent.policy import PolicySync

    kernel = FakeKernel()
    state = state_of()
    state.generation = 1
    PolicySync(lambda message: None, kernel).sync(state, "w1")
    assert not kernel.ran("ipset", "restore") and not kernel.ran("iptables-restore") and not kernel.hooked


def test_agent_job_retries_a_failed_sync():
    import time

    from emu.node.agent import policy as job

    kernel = FakeKernel(fail="iptables-restore")
    sync = job.PolicySync(lambda message: None, kernel)
    state = state_of(GOLDEN_POLICIES)
    state.generation = 1
    with pytest.raises(RuntimeError, match="iptables-restore"):
        sync.sync(state, "w1")
    kernel.fail = ""
    deadline = time.monotonic() + 5
    while sync.generation != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sync.generation == 1 and kernel.hooked


@pytest.mark.parametrize(
    "peer_or_port,message",
    [
        ("from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]", "is not inside cidr"),
        ("ports: [{port: http, endPort: 90}]", "endPort needs a numeric port"),
        ("ports: [{port: 90, endPort: 80}]", "endPort 80 is below port 90"),
        ("from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]", "either ipBlock or podSelector"),
        ("ports: [{port: 80, protocol: SCTP}]", "TCP"),
    ],
)
def test_bad_policies_are_refused_with_their_place(peer_or_port, message):
    from emu.errors import TopologyError

    with pytest.raises(TopologyError, match=message):
        state_of(f"networkPolicies:\n  - {{name: p, ingress: [{{{peer_or_port}}}]}}\n")
