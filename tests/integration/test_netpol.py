"""NetworkPolicy, checked the way Kubernetes' own e2e tests check it
(test/e2e/network/netpol/): a fixed model of namespaces x, y, z with pods a, b,
c each serving ports 80 and 81 over TCP and UDP; for each case, policies are
applied and every pod probes every pod, and the observed matrix must equal the
case's truth table (loopback ignored, as upstream does). On a mismatch the
expected, observed and compared matrices are printed as upstream prints them.

One cluster for every case; each case applies its policies with `emu apply`
(which returns once every node's agent has written that state) and probes
from all nine pods at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from emu.api.topology.load import load_text
from tests.integration.conftest import in_proxy_mode

NAMESPACES = ["x", "y", "z"]
PODS = ["a", "b", "c"]
ALL = [f"{ns}/{pod}" for ns in NAMESPACES for pod in PODS]


def _pod(namespace: str, name: str) -> str:
    def container(port: int) -> str:
        return (
            f"{{name: cont-{port}, workload: netexec, args: [--http-port={port}, --udp-port={port}], ports: ["
            f"{{name: serve-{port}-tcp, containerPort: {port}}}, "
            f"{{name: serve-{port}-udp, containerPort: {port}, protocol: UDP}}]}}"
        )

    return (
        f"  - {{name: {name}, namespace: {namespace}, labels: {{pod: {name}}}, enableServiceLinks: false, "
        f"containers: [{container(80)}, {container(81)}]}}\n"
    )


MODEL = (
    "name: netpol\n"
    "nodes: [{name: cp, role: control-plane}, {name: w1}, {name: w2}]\n"
    "namespaces: [{name: x, labels: {ns: x}}, {name: y, labels: {ns: y}}, {name: z, labels: {ns: z}}]\n"
    "pods:\n" + "".join(_pod(ns, pod) for ns in NAMESPACES for pod in PODS)
    + "services:\n  - {name: s-a, namespace: x, selector: {pod: a}, ports: [{port: 80}]}\n"
)

# One script a source pod runs: probe every target on one port and protocol at once.
PROBE = r"""
import json, socket, sys, threading
port, protocol, targets = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
result = {}
def probe(ip):
    try:
        if protocol == "TCP":
            with socket.create_connection((ip, port), timeout=3):
                pass
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(3)
                s.connect((ip, port))
                s.send(b"hostname")
                s.recv(512)
        result[ip] = True
    except OSError:
        result[ip] = False
threads = [threading.Thread(target=probe, args=(ip,)) for ip in targets]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(result))
"""


@dataclass
class Reachability:
    """upstream's Reachability: a truth table of from -> to, everything `default` at first."""

    default: bool = True
    table: dict[tuple[str, str], bool] = field(default_factory=dict)

    def __post_init__(self):
        self.table = {(a, b): self.default for a in ALL for b in ALL}

    def expect(self, source: str, target: str, allowed: bool) -> Reachability:
        self.table[(source, target)] = allowed
        return self

    def expect_peer(self, source: str = "", target: str = "", allowed: bool = False) -> Reachability:
        """Every pair whose source and target match: '' any pod, 'x' a namespace, 'x/a' a pod."""
        for a, b in self.table:
            if _matches(a, source) and _matches(b, target):
                self.table[(a, b)] = allowed
        return self

    def expect_all_ingress(self, pod: str, allowed: bool) -> Reachability:
        return self.expect_peer("", pod, allowed)

    def expect_all_egress(self, pod: str, allowed: bool) -> Reachability:
        return self.expect_peer(pod, "", allowed)


def _matches(pod: str, peer: str) -> bool:
    return not peer or pod == peer or pod.split("/")[0] == peer


def matrix(table: dict[tuple[str, str], bool], mark=lambda v: "." if v else "X") -> str:
    lines = ["-\t" + "\t".join(ALL)]
    for a in ALL:
        lines.append(a + "\t" + "\t".join(mark(table[(a, b)]) for b in ALL))
    return "\n".join(lines)


@pytest.fixture(scope="module")
def model(make_module_cluster, proxy_mode):
    text = in_proxy_mode(MODEL, proxy_mode)
    cluster = make_module_cluster(text, f"netpol-{proxy_mode[:3]}")
    cluster.base = text.replace("name: netpol", f"name: {cluster.name}")
    return cluster


def apply_policies(cluster, policies: str = "", base: str | None = None) -> None:
    text = (base or cluster.base) + (f"networkPolicies:\n{policies}" if policies else "")
    cluster.apply(load_text(text))


def observe(cluster, port: int, protocol: str, via: dict[str, str] | None = None) -> dict[tuple[str, str], bool]:
    """Every pod probes every pod (or the address in `via` standing for it) on port/protocol."""
    state = cluster.state()
    ip = {key: state.pods[key].ip for key in ALL}
    targets = [via.get(key, ip[key]) if via else ip[key] for key in ALL]

    def probe(source: str) -> dict:
        pod = state.pods[source]
        argv = ["ip", "netns", "exec", pod.netns, "python3", "-c", PROBE, str(port), protocol, *sorted(set(targets))]
        result = cluster.runtime.exec(state.node(pod.node).container, argv)
        return json.loads(result.output.strip().splitlines()[-1])

    answers = dict(zip(ALL, cluster.runtime.parallel(probe, ALL)))
    return {(a, b): answers[a][targets[i]] for a in ALL for i, b in enumerate(ALL)}


def validate(cluster, expected: Reachability, port: int = 80, protocol: str = "TCP", via=None) -> None:
    observed = observe(cluster, port, protocol, via)
    wrong = [pair for pair in expected.table if pair[0] != pair[1] and expected.table[pair] != observed[pair]]
    if wrong:
        comparison = {pair: pair[0] == pair[1] or expected.table[pair] == observed[pair] for pair in expected.table}
        logs = "\n".join(
            f"{node.name}: " + cluster.node_exec(node.name, ["sh", "-c", "grep -i polic /var/log/emu/agent.log | tail -3"]).output
            for node in cluster.state().nodes
        )
        pytest.fail(
            f"{len(wrong)} of {len(ALL) * (len(ALL) - 1)} probes on {protocol}/{port} differ from the truth table\n\n"
            f"expected:\n\n{matrix(expected.table)}\n\nobserved:\n\n{matrix(observed)}\n\n"
            f"comparison:\n\n{matrix(comparison)}\n\nthe agents' last policy syncs:\n{logs}",
            pytrace=False,
        )


def policy(name: str, namespace: str, body: str) -> str:
    """A list item of networkPolicies: name, namespace and the spec's YAML (flow style)."""
    return f"  - {{name: {name}, namespace: {namespace}, {body}}}\n"


CASES = {
    # name: (policies, port, protocol, expected)
    "no policy: everything reaches everything": ("", 80, "TCP", lambda: Reachability()),
    "default-deny-ingress": (
        policy("deny-ingress", "x", "podSelector: {}, policyTypes: [Ingress]"), 80, "TCP",
        lambda: Reachability().expect_peer("", "x", False),
    ),
    "default-deny-all (ingress and egress)": (
        policy("deny-all", "x", "podSelector: {}, policyTypes: [Ingress, Egress]"), 80, "TCP",
        lambda: Reachability().expect_peer("", "x", False).expect_peer("x", "", False),
    ),
    "default-deny-ingress holds on UDP": (
        policy("deny-ingress", "x", "podSelector: {}, policyTypes: [Ingress]"), 81, "UDP",
        lambda: Reachability().expect_peer("", "x", False),
    ),
    "allow from x/b to x/a by podSelector": (
        policy("x-a-allows-x-b", "x", "podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"),
        80, "TCP", lambda: Reachability().expect_all_ingress("x/a", False).expect("x/b", "x/a", True),
    ),
    "allow from namespace y by namespaceSelector": (
        policy("allow-ns-y", "x", "podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]"),
        80, "TCP", lambda: Reachability().expect_peer("x", "x/a", False).expect_peer("z", "x/a", False),
    ),
    "podSelector or namespaceSelector (matchExpressions)": (
        policy("ns-not-x-or-pod-b", "x", "podSelector: {matchLabels: {pod: a}}, ingress: [{from: ["
               "{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}}, "
               "{podSelector: {matchLabels: {pod: b}}}]}]"),
        80, "TCP", lambda: Reachability().expect("x/c", "x/a", False),
    ),
    "podSelector and namespaceSelector together": (
        policy("ns-not-x-and-pod-b", "x", "podSelector: {matchLabels: {pod: a}}, ingress: [{from: ["
               "{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}, "
               "podSelector: {matchLabels: {pod: b}}}]}]"),
        80, "TCP", lambda: Reachability().expect_all_ingress("x/a", False).expect("y/b", "x/a", True).expect("z/b", "x/a", True),
    ),
    "deny egress from x/a": (
        policy("deny-egress-a", "x", "podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]"), 80, "TCP",
        lambda: Reachability().expect_all_egress("x/a", False),
    ),
    "ingress and egress together, egress on port 80 only (probed on 81)": (
        policy("both", "x", "podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress, Egress], "
               "ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}], egress: [{ports: [{port: 80}]}]"),
        81, "TCP",
        lambda: Reachability().expect_all_ingress("x/a", False).expect_all_egress("x/a", False).expect("x/b", "x/a", True),
    ),
    "egress ipBlock with except": (
        policy("egress-cidr-except", "x", "podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], "
               "egress: [{to: [{ipBlock: {cidr: 10.244.0.0/16, except: [IP_OF_Y_B/32]}}]}]"),
        80, "TCP", lambda: Reachability().expect("x/a", "y/b", False),
    ),
    "ingress on a named port only (serve-81-tcp), probed on 80": (
        policy("allow-named-81", "x", "podSelector: {}, ingress: [{ports: [{port: serve-81-tcp}]}]"), 80, "TCP",
        lambda: Reachability().expect_peer("", "x", False),
    ),
    "ingress on a named port only (serve-81-tcp), probed on 81": (
        policy("allow-named-81", "x", "podSelector: {}, ingress: [{ports: [{port: serve-81-tcp}]}]"), 81, "TCP",
        lambda: Reachability(),
    ),
    "port range with endPort 81-82, probed on 80": (
        policy("allow-81-82", "x", "podSelector: {}, ingress: [{ports: [{port: 81, endPort: 82}]}]"), 80, "TCP",
        lambda: Reachability().expect_peer("", "x", False),
    ),
    "port range with endPort 81-82, probed on 81": (
        policy("allow-81-82", "x", "podSelector: {}, ingress: [{ports: [{port: 81, endPort: 82}]}]"), 81, "TCP",
        lambda: Reachability(),
    ),
    "ingress by protocol TCP only, probed on UDP": (
        policy("allow-tcp", "x", "podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: TCP}]}]"), 80, "UDP",
        lambda: Reachability().expect_all_ingress("x/a", False),
    ),
    "an allow-all policy beside a narrower one: policies add up": (
        policy("allow-80", "x", "podSelector: {}, ingress: [{ports: [{port: 80}]}]")
        + policy("allow-all", "x", "podSelector: {}, ingress: [{}]"), 81, "TCP",
        lambda: Reachability(),
    ),
    "client-side egress denies what the server side allows": (
        policy("to-y-a", "x", "podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}]}]")
        + policy("from-x-a", "y", "podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]")
        + policy("from-x-a-b", "y", "podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]"),
        80, "TCP",
        lambda: Reachability().expect_peer("x/a", "", False).expect_peer("", "y/a", False).expect("x/a", "y/a", True)
        .expect_peer("", "y/b", False),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_truth_table(model, case):
    policies, port, protocol, expected = CASES[case]
    if "IP_OF_Y_B" in policies:
        policies = policies.replace("IP_OF_Y_B", model.state().pods["y/b"].ip)
    apply_policies(model, policies)
    validate(model, expected(), port, protocol)


def test_policy_applies_after_service_dnat(model):
    """Policy sees the pod behind a service's cluster IP: x/a admits only x/b, through s-a too."""
    apply_policies(model, policy("x-a-allows-x-b", "x", "podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"))
    state = model.state()
    via = {"x/a": state.services["x/s-a"].cluster_ip}
    validate(model, Reachability().expect_all_ingress("x/a", False).expect("x/b", "x/a", True), 80, "TCP", via)


def test_egress_to_dns_only(model):
    """x/a may send only to port 53: names still resolve (through kube-dns's
    service address, to the coredns pod), every pod is out of reach."""
    apply_policies(model, policy("dns-only", "x", "podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], "
                                 "egress: [{ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]}]"))
    validate(model, Reachability().expect_all_egress("x/a", False))
    answer = model.exec("x/a", ["getent", "hosts", "s-a.x.svc.cluster.local"])
    assert answer.ok and model.state().services["x/s-a"].cluster_ip in answer.output, answer.output


def test_describe_lists_the_selected_pods(model, capsys):
    from emu.cli import main

    apply_policies(model, policy("allow-b", "x", "podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, c]}]}, "
                                 "ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80, endPort: 81}]}]"))
    assert main(["describe", "netpol", "x/allow-b", "--name", model.name]) == 0
    out = capsys.readouterr().out
    state = model.state()
    assert "Selects:      2 pods" in out and state.pods["x/a"].ip in out and state.pods["x/c"].ip in out
    assert "PodSelector: pod=b" in out and "80-81/TCP" in out and state.pods["x/b"].ip not in out


def test_policies_added_and_removed(model):
    """A policy takes effect when applied and is gone when removed; a pod
    labelled into a policy's selector becomes isolated."""
    deny = policy("deny-isolated", "x", "podSelector: {matchLabels: {target: isolated}}, policyTypes: [Ingress]")
    apply_policies(model, deny)
    validate(model, Reachability())  # no pod carries the label yet
    labelled = model.base.replace("{name: a, namespace: x, labels: {pod: a}", "{name: a, namespace: x, labels: {pod: a, target: isolated}")
    assert labelled != model.base
    apply_policies(model, deny, base=labelled)
    validate(model, Reachability().expect_all_ingress("x/a", False))
    apply_policies(model, policy("deny-all", "x", "podSelector: {}, policyTypes: [Ingress, Egress]"))
    validate(model, Reachability().expect_peer("", "x", False).expect_peer("x", "", False))
    apply_policies(model, "")
    validate(model, Reachability())
    rules = model.node_exec("w1", ["sh", "-c", "iptables-save -t filter; ipset list -n"]).output
    assert "EMU-NETPOL" not in rules and "EMU-NP" not in rules, rules  # no policy: no hook, chain or set
