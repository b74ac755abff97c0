"""Churn under load (issue 26): NetworkPolicies and endpoints changed round after
round on a 3-node lab while two busy loops take the machine's cores, for
EMU_STRESS_MINUTES minutes. Every change's wait must be answered (each apply and
pod deletion returns once every node's agent programmed its generation, or fails
naming the node and its agent's log: "did not program generation N"), and at the
end every node holds the last generation.

Opt-in, as it takes minutes: skipped unless EMU_STRESS_MINUTES is set, e.g.
    EMU_STRESS_MINUTES=10 python -m pytest -x -s tests/integration/test_stress.py
(-s prints how many rounds ran and the slowest wait; figures, not asserted)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest

from emu.api.topology.load import load_text
from tests import labs

MINUTES = float(os.environ.get("EMU_STRESS_MINUTES") or 0)
pytestmark = pytest.mark.skipif(
    MINUTES <= 0, reason="opt-in: EMU_STRESS_MINUTES=10 runs the churn stress test (docs/testing.md)"
)
BASE = labs.load("churn")
NETEXEC = "{name: netexec, workload: netexec, ports: [{name: http, containerPort: 8080}]}"
# The shapes a round's policy for app aN takes (None: no policy for it).
POLICIES = [
    None,
    "{{name: deny-a{n}, podSelector: {{matchLabels: {{app: a{n}}}}}, policyTypes: [Ingress]}}",
    "{{name: pods-a{n}, podSelector: {{matchLabels: {{app: a{n}}}}}, ingress: [{{from: [{{podSelector: {{}}}}]}}]}}",
    "{{name: port-a{n}, podSelector: {{matchLabels: {{app: a{n}}}}}, ingress: [{{ports: [{{port: 8080}}]}}]}}",
    "{{name: cidr-a{n}, podSelector: {{matchLabels: {{app: a{n}}}}}, "
    "ingress: [{{from: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [10.244.{n}.0/24]}}}}]}}]}}",
]


def topology(rng: random.Random, round_: int, name: str) -> str:
    """The churn lab plus a random handful of pods (endpoints of three services) and a
    random policy, or none, for each of the three apps."""
    lines = [BASE.replace("name: churn", f"name: {name}", 1).rstrip("\n")]
    lines += [f"  - {{name: p{round_}-{i}, labels: {{app: a{i % 3}}}, containers: [{NETEXEC}]}}"
              for i in range(rng.randint(0, 6))]  # fmt: skip
    lines.append("deployments:")
    lines.append(f"  - {{name: d{rng.randint(0, 1)}, replicas: {rng.randint(0, 4)}, "
                 f"template: {{labels: {{app: a{rng.randint(0, 2)}}}, containers: [{NETEXEC}]}}}}")  # fmt: skip
    lines.append("services:")
    lines += [f"  - {{name: s-a{n}, selector: {{app: a{n}}}, ports: [{{port: 80, targetPort: 8080}}]}}"
              for n in range(3)]  # fmt: skip
    policies = [shape.format(n=n) for n in range(3) if (shape := rng.choice(POLICIES))]
    if policies:
        lines.append("networkPolicies:")
        lines += [f"  - {policy}" for policy in policies]
    return "\n".join(lines) + "\n"


@pytest.fixture
def busy_loops():
    """Two processes spinning on the machine's cores while the test runs."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for loop in loops:
        loop.kill()
        loop.wait(timeout=30)


def test_policy_and_endpoint_churn_under_load_leaves_no_generation_unprogrammed(make_module_cluster, busy_loops):
    cluster = make_module_cluster(BASE, "stress")
    rng = random.Random(20261207)
    deadline = time.monotonic() + MINUTES * 60
    rounds, waits, slowest = 0, 0, 0.0
    while time.monotonic() < deadline or rounds < 3:
        started = time.monotonic()
        cluster.apply(load_text(topology(rng, rounds, cluster.name)))  # raises if a node did not program it
        waits += 1
        slowest = max(slowest, time.monotonic() - started)
        state = cluster.state()
        for key in [p.key for p in state.pods.values() if p.name.startswith(("p", "d")) and rng.random() < 0.2]:
            started = time.monotonic()
            cluster.delete_pod(key)  # a deployment's pod comes back with a new IP: endpoints change
            waits += 1
            slowest = max(slowest, time.monotonic() - started)
        rounds += 1
    cluster.apply(load_text(BASE.replace("name: churn", f"name: {cluster.name}", 1)))
    state = cluster.state()
    assert sorted(state.pods) == ["default/client"] and not state.topology.get("networkPolicies")
    cluster.wait(state, timeout=60)  # every node's agent holds the last generation, or it names the node
    print(f"\nstress: {rounds} rounds, {waits + 1} waits answered in {MINUTES:g} min beside 2 busy loops; "
          f"slowest {slowest:.1f} s; last generation {state.generation}")
