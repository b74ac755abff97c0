"""Faults a real cluster survives, survived here: lost rules, a killed agent, a
restarted node, a stopped node, and a pod trying to speak for a node. Each
check waits (generously) for the repair and proves it with real requests;
how fast repairs are is measured in bench/faults.py, not asserted here."""

from __future__ import annotations

import json
import re

import pytest

from emu.errors import EmuError
from tests.waiting import wait_for
from tests.integration.helpers import kubectl
from tests import labs

WITNESS = (
    "n=$(cat /tmp/witness-runs 2>/dev/null || echo 0); echo $((n + 1)) >/tmp/witness-runs; "
    "case $n in 0) exit 0;; 1) sleep 2; exit 0;; esac; exec sleep infinity"
)
LAB = labs.load("faults")


@pytest.fixture(scope="module")
def faults(make_module_cluster):
    return make_module_cluster(LAB, "faults")



def hostnames(cluster, count: int = 12, service: str = "echo") -> set[str]:
    """The pods that answered `count` requests to the service; "(failed)" stands for
    any request that failed, so compare with the names expected, never a count."""
    ip = cluster.state().services[f"default/{service}"].cluster_ip
    seen = set()
    for _ in range(count):
        result = cluster.exec("client", ["curl", "-sS", "--max-time", "1", f"http://{ip}/hostname"])
        seen.add(result.output.strip() if result.ok else "(failed)")
    return seen


def movers(cluster) -> set[str]:
    """The names of the mover deployment's pods, as the state has them (netexec answers its pod's name)."""
    names = {p.name for p in cluster.state().pods.values() if p.owner == "Deployment/mover"}
    assert len(names) == 2, names
    return names


def test_flushed_service_chain_is_repaired(faults):
    # `emu up` waits 15 s at most for other nodes' pods to count as ready in a node's
    # rules; on a loaded machine far (on w2) can reach w1's rules later than that.
    wait_for(lambda: hostnames(faults) == {"far", "near"}, 30, "the service did not reach both endpoints")
    assert faults.node_exec("w1", ["iptables", "-t", "nat", "-F", "KUBE-SERVICES"]).ok
    wait_for(lambda: hostnames(faults, 4) <= {"far", "near"}, 10, "the service did not work again")
    log = faults.node_exec("w1", ["cat", "/var/log/emu/agent.log"]).output
    assert "service rules lost (nat/KUBE-SERVICES has 0 rules" in log and "full resync" in log


def test_a_node_that_does_not_program_a_state_is_named_with_its_agent_log(faults):
    state = faults.state()
    state.generation += 1  # one no agent was given: none programs it
    with pytest.raises(EmuError) as error:
        faults.wait(state, timeout=2)
    message = str(error.value)
    assert f"its agent did not program generation {state.generation} within 2s; its log ends:\n" in message
    assert re.search(r"its log ends:\n\d+\.\d{3} ", message), message  # the agent's own lines
    assert "(more with `emu exec --node " in message


def test_ended_containers_follow_the_restart_policy(faults):
    from emu.cli import pod_phase

    def settled():
        status = faults.pod_status(faults.state())
        ended = [status.get(f"default/{name}", {}).get("job", {}) for name in ("once", "never")]
        witness = status.get("default/witness", {}).get("job", {})
        # Not before the witness's second restart, which the back-off holds back
        # longer than any wrong restart of once or never would be.
        clock_ran = witness.get("restarts", 0) >= 2 and witness.get("state") == "Running"
        return status if clock_ran and all(entry.get("state") == "Exited" for entry in ended) else None

    status = wait_for(settled, 60, "the run-to-completion pods did not end, or the witness did not restart twice")
    # OnFailure: exit 1, started again once, then exit 0: done. Never: exit 3, left as it is.
    assert status["default/once"]["job"] == {"state": "Exited", "exitCode": 0, "ready": False, "restarts": 1}
    assert status["default/never"]["job"] == {"state": "Exited", "exitCode": 3, "ready": False, "restarts": 0}
    state = faults.state()
    assert pod_phase(state.pods["default/once"], status["default/once"]) == "Completed"
    assert pod_phase(state.pods["default/never"], status["default/never"]) == "Error"
    assert faults.check() == []  # a finished pod is not drift


def test_a_killed_dns_pod_answers_again(faults):
    dns = next(p for p in faults.state().pods.values() if p.namespace == "kube-system" and p.name.startswith("coredns"))
    pid = faults.node_exec(dns.node, ["cat", f"/run/emu/pods/{dns.netns}/coredns.pid"]).output.strip()
    assert faults.node_exec(dns.node, ["kill", "-9", pid]).ok

    def resolves():
        result = faults.exec("client", ["getent", "hosts", "echo.default.svc.cluster.local"])
        return result.ok and result.output.split()[0] == faults.state().services["default/echo"].cluster_ip

    wait_for(resolves, 30, "the cluster DNS did not answer again after its pod's process was killed")
    status = faults.pod_status(faults.state())[dns.key]["coredns"]
    assert status["state"] == "Running" and status["restarts"] == 1


def test_pods_cannot_reach_any_node_agent(faults):
    state = faults.state()
    forged = json.dumps({"node": "w2", "ready": {}})
    for node in state.nodes:
        url = f"http://{node.node_ip}:10250"
        post = faults.exec("client", ["curl", "-sS", "--max-time", "2", "-XPOST", "-d", forged, f"{url}/report"])
        get = faults.exec("client", ["curl", "-sS", "--max-time", "2", f"{url}/readiness"])
        assert not post.ok and not get.ok, (node.name, post.output, get.output)
    assert hostnames(faults) == {"far", "near"}
    # A node speaks only for itself: w1 reporting for w2 is refused by the hub.
    hub = f"http://{state.node('cp').node_ip}:10250/report"
    refused = faults.node_exec("w1", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-XPOST", "-d", forged, hub])
    assert refused.output == "403"


def test_a_killed_container_is_started_again_and_counted(faults):
    far = faults.pod("far")
    pid_file = f"/run/emu/pods/{far.netns}/netexec.pid"
    old = faults.node_exec("w2", ["cat", pid_file]).output.strip()
    assert faults.node_exec("w2", ["kill", "-9", old]).ok

    def started_again():
        pid = faults.node_exec("w2", ["cat", pid_file]).output.strip()
        answer = faults.exec("client", ["curl", "-sS", "--max-time", "1", f"http://{far.ip}:8080/hostname"])
        return pid != old and answer.ok and answer.output.strip() == "far"

    wait_for(started_again, 15, "the killed container was not started again")
    assert faults.pod_status(faults.state())["default/far"]["netexec"]["restarts"] == 1
    assert faults.pod("far").ip == far.ip  # the same pod: only its container started again


def test_the_agent_rewires_a_pod_whose_veth_or_namespace_vanished(faults):
    near, far = faults.pod("near"), faults.pod("far")
    assert faults.node_exec("w1", ["ip", "link", "del", near.host_veth]).ok
    assert faults.node_exec("w2", ["ip", "netns", "del", far.netns]).ok
    # No emu command: each node's agent notices and rebuilds the pod in place.
    wait_for(lambda: hostnames(faults) == {"far", "near"}, 30, "the agents did not rebuild the broken pods")
    assert faults.check() == []
    assert (faults.pod("near").ip, faults.pod("far").ip) == (near.ip, far.ip)  # same pod, new sandbox
    log = faults.node_exec("w2", ["cat", "/var/log/emu/agent.log"]).output
    assert "pod default/far: its network namespace is gone: wiring it again" in log


# The loop that restarts the agent, then the agent; fails unless both were found
# and no agent is left within 5 s.
STOP_AGENT = (
    "pkill -f '[e]mu agent exited' && pkill -f '[e]mu.node.agent --node' && "
    "for i in $(seq 50); do pgrep -f '[e]mu.node.agent --node' >/dev/null || exit 0; sleep 0.1; done; exit 1"
)


def test_up_repairs_what_drifted_where_no_agent_runs(faults):
    from emu.api.topology.load import load_text

    near, far = faults.pod("near"), faults.pod("far")
    for node in ("w1", "w2"):
        stopped = faults.node_exec(node, ["sh", "-c", STOP_AGENT])
        assert stopped.ok, f"the agent of {node} was not stopped: {stopped.exit_code} {stopped.output}"
    assert faults.node_exec("w1", ["ip", "link", "del", near.host_veth]).ok
    assert faults.node_exec("w2", ["ip", "netns", "del", far.netns]).ok
    drifted = sorted(line for found in faults.check() for line in found.describe())
    assert drifted == sorted([
        f"node w1: pod default/near: its veth {near.host_veth} is gone from cni0",
        "node w1: its agent is not running",
        "node w2: pod default/far: its network namespace is gone",
        "node w2: its agent is not running",
    ])
    change = faults.up(load_text(LAB).model_copy(update={"name": faults.name}))
    assert sorted(change.repaired) == drifted
    assert faults.check() == []
    assert faults.pod("near").ip == near.ip  # replaced in place, as a pod sandbox is
    wait_for(lambda: hostnames(faults) == {"far", "near"}, 20, "the repaired pods did not serve again")
    again = faults.up(load_text(LAB).model_copy(update={"name": faults.name}))
    assert not again.changed


def test_one_command_changes_a_cluster_at_a_time(faults):
    from emu.control.cluster import Cluster
    other = Cluster(faults.name, runtime=faults.runtime)
    with faults.lock():
        with pytest.raises(EmuError) as caught:
            other.delete_pod("near")
    assert f"cluster '{faults.name}' is being changed by" in str(caught.value) and "emu unlock" in str(caught.value)
    assert faults.pod("near").ip  # untouched
    with other.lock():  # released: the next command goes ahead
        pass


def test_killed_agent_is_started_again(faults):
    old = faults.node_exec("w2", ["cat", "/run/emu/agent/agent.pid"]).output.strip()
    assert faults.node_exec("w2", ["kill", "-9", old]).ok

    def new_agent():
        pid = faults.node_exec("w2", ["cat", "/run/emu/agent/agent.pid"]).output.strip()
        healthy = faults.node_exec("w2", ["curl", "-sf", "--max-time", "1", "http://127.0.0.1:10250/healthz"]).ok
        return pid != old and healthy

    wait_for(new_agent, 15, "no new agent answered on w2")
    assert hostnames(faults) == {"far", "near"}


def test_restarted_node_rebuilds_its_pods(faults, runtime):
    far_ip = faults.pod("far").ip
    runtime.api.restart(faults.state().node("w2").container, timeout=1)

    def far_answers():
        result = faults.exec("client", ["curl", "-sS", "--max-time", "1", f"http://{far_ip}:8080/hostname"])
        return result.ok and result.output.strip() == "far"

    wait_for(far_answers, 30, "pod far on the restarted node w2 did not answer")
    wait_for(lambda: hostnames(faults) == {"far", "near"}, 20, "the service did not reach both pods again")
    status = faults.pod_status(faults.state())
    assert status["default/far"]["netexec"] == {"state": "Running", "exitCode": None, "ready": True, "restarts": 0}


def test_stopped_node_leaves_every_service_its_pods_move_and_it_rejoins(faults, runtime):
    import ipaddress

    state = faults.state()
    container = state.node("w2").container
    leaving = [p for p in state.pods_on("w2") if p.owner == "Deployment/mover"]
    assert leaving, "the lab should place a mover pod on w2"
    runtime.api.stop(container, timeout=1)
    try:
        def far_gone():
            endpoints = faults.endpoints()["default/echo"]["http"]
            return endpoints == [f"{faults.pod('near').ip}:8080"]

        # kube-proxy's part follows the API server's EndpointSlices: the pods of a node
        # leave them when the node lifecycle controller marks them not ready, once the
        # node's Lease is older than the grace period (the lab sets 20 s; 40 s by default), as on a real cluster.
        wait_for(far_gone, 90, "pod far on the stopped node w2 stayed an endpoint")
        assert hostnames(faults) == {"near"}

        # The hub moves the deployment's pod to the node still up (new IP), and
        # the service has both replicas again; the bare pod far is lost with w2.
        w1 = ipaddress.IPv4Network(faults.state().node("w1").pod_cidr)

        def moved():
            endpoints = faults.endpoints()["default/mover"]["http"]
            return len(endpoints) == 2 and all(ipaddress.IPv4Address(e.split(":")[0]) in w1 for e in endpoints)

        wait_for(moved, 60, "the mover pod of the stopped node w2 was not placed on w1")
        after = faults.state()
        assert all(after.pods[p.key].node == "w1" and after.pods[p.key].ip != p.ip for p in leaving)
        assert after.pods["default/far"].node == "w2"
        assert hostnames(faults, service="mover") == movers(faults)
        hub_log = faults.node_exec("cp", ["cat", "/var/log/emu/agent.log"]).output
        assert "pod default/far is lost with node w2" in hub_log
        # The API server was told where the hub placed them (their EndpointSlices follow).
        context = f"emu-{faults.name}"
        for pod in leaving:
            where = kubectl("get", "pod", pod.name, "-o", "jsonpath={.spec.nodeName} {.status.podIP}",
                            context=context, timeout=60).stdout  # fmt: skip
            assert where.split() == ["w1", after.pods[pod.key].ip], where
        # The API server sees it as a real cluster would: the node's Lease is not renewed,
        # so after the grace period (20 s here) it is NotReady (Ready Unknown), its pods not ready.
        kubectl("wait", "--for=condition=Ready=Unknown", "node/w2", "--timeout=90s", context=f"emu-{faults.name}", timeout=120)
        kubectl("wait", "--for=condition=Ready=false", "pod/far", "--timeout=30s", context=f"emu-{faults.name}", timeout=120)
    finally:
        runtime.api.start(container)
    wait_for(lambda: hostnames(faults) == {"far", "near"}, 40, "w2 did not rejoin the service")
    kubectl("wait", "--for=condition=Ready", "node/w2", "--timeout=60s", context=f"emu-{faults.name}", timeout=120)

    # Back, w2 learns the newer state from the hub and deletes the pods now on w1.
    def cleaned():
        netns = faults.node_exec("w2", ["ip", "netns", "list"]).output
        return not any(p.netns in netns.split() for p in leaving)

    wait_for(cleaned, 30, "w2 kept the pods that moved to w1")
    assert hostnames(faults, service="mover") == movers(faults)
