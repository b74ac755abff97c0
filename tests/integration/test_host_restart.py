"""A host whose Docker engine restarts, or whose node containers stop, in the middle of a cluster spread over
three hosts (tests/hostlab.py: a dockerd each, in its own network namespace, reached over SSH): the nodes come
back by themselves with the engine (their restart policy; their command rebuilds their pods), or `emu up`
starts the ones that stay stopped; meanwhile `emu status` names the host or node that is down and exits 1.
Each recovery is proved with packets: pod to pod across hosts and through a service.

Only the lab's engines are stopped (hostlab checks each is one, label io.emu.testhost=1), never this machine's
main engine, where other tests' clusters live."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emu.api.topology.load import load_text
from emu.control.cluster import Cluster
from emu.control.runtime.swarm import SwarmRuntime
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
NETEXEC = "{name: netexec, workload: netexec, ports: [{name: http, containerPort: 8080}]}"
LAB = f"""\
name: NAME
nodes:
  - {{name: cp, role: control-plane}}
  - {{name: w1}}
  - {{name: w2}}
pods:
  - name: client
    node: w1
    containers: [{{name: shell, command: [sleep, infinity]}}]
  - name: web
    node: w2
    labels: {{app: web}}
    containers: [{NETEXEC}]
  - name: near
    node: cp
    labels: {{app: web}}
    containers: [{NETEXEC}]
services:
  - name: web
    selector: {{app: web}}
    ports: [{{name: http, port: 80, targetPort: http}}]
"""
# A fail-safe, not a pass condition: how long a restarted node may take to serve again on a busy machine.
RECOVERY = 90


@pytest.fixture(scope="module")
def lab(swarm_lab):
    return swarm_lab  # (conftest.py: three hosts in a swarm with emu's node image)


@pytest.fixture(scope="module")
def files(lab, new_name, runtime, tmp_path_factory) -> tuple[str, Path, Path]:
    """(cluster name, topology file, inventory file), the cluster up over the lab's hosts (cp on h1, w1 on h2,
    w2 on h3) by `emu up`, removed at the end."""
    directory = tmp_path_factory.mktemp("restart")
    name = new_name("restart")
    topology, inventory = directory / "lab.yaml", directory / "hosts.yaml"
    topology.write_text(LAB.replace("NAME", name))
    inventory.write_text(lab.inventory_yaml())
    try:
        result = emu("up", str(topology), "--hosts", str(inventory))
        assert result.returncode == 0, result.stderr
        yield name, topology, inventory
    finally:
        if not os.environ.get("EMU_KEEP_CLUSTERS"):
            emu("down", name)


def emu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "emu.cli", *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ},
    )  # fmt: skip


def cluster_of(name: str, inventory: Path) -> Cluster:
    from emu.api.topology.load import load_inventory

    return Cluster(name, runtime=SwarmRuntime(load_inventory(str(inventory))))


def serves(name: str, inventory: Path) -> bool:
    """Pod client (w1, host h2) reaches pod web (w2, host h3) by its IP, keeping its own source address (no NAT),
    and service web's cluster IP answers from both its endpoints (web on h3, near on h1)."""
    cluster = cluster_of(name, inventory)
    try:
        state = cluster.state()
        client, web = state.pods["default/client"].ip, state.pods["default/web"].ip
        direct = cluster.exec("client", ["curl", "-sS", "--max-time", "3", f"http://{web}:8080/clientip"])
        if not direct.ok or direct.output.strip().rsplit(":", 1)[0] != client:
            return False
        service = state.services["default/web"].cluster_ip
        seen = set()
        for _ in range(20):
            answer = cluster.exec("client", ["curl", "-sS", "--max-time", "3", f"http://{service}/hostname"])
            if not answer.ok:
                return False
            seen.add(answer.output.strip())
        return seen == {"web", "near"}
    except Exception:  # noqa: BLE001 - a node still coming back: not yet
        return False
    finally:
        cluster.runtime.close()


def node_statuses(table: str) -> dict[str, str]:
    """{node: STATUS} from `emu status`'s nodes table (its first two columns)."""
    found = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]
        if len(cells) > 1 and cells[0] in ("cp", "w1", "w2") and cells[1] in ("Ready", "NotReady"):
            found[cells[0]] = cells[1]
    return found


def node_container(name: str, node: str) -> str:
    return f"{name}-{node}"


def test_the_cluster_serves_across_hosts(files):
    name, _, inventory = files
    assert serves(name, inventory)


def test_a_restarted_engine_brings_its_nodes_back_and_status_names_it_meanwhile(files, lab):
    from tests import hostlab

    name, topology, inventory = files
    h3 = lab.host("h3")
    hostlab.stop_engine(h3)
    try:
        status = emu("status", "--name", name)
        assert status.returncode == 1, status.stdout + status.stderr
        assert "host h3" in status.stderr and "no Docker engine listens" in status.stderr, status.stderr
        assert "w2" in status.stderr  # the node on it
        assert "Traceback" not in status.stderr
        assert node_statuses(status.stdout) == {"cp": "Ready", "w1": "Ready", "w2": "NotReady"}, status.stdout
        # What cannot work while h3 is down is refused before anything changes, naming the host.
        up = emu("up", str(topology), "--hosts", str(inventory))
        assert up.returncode == 1 and "host h3" in up.stderr and "Traceback" not in up.stderr, up.stderr
    finally:
        hostlab.start_engine(h3)
    started = time.monotonic()
    # No emu command: the engine starts the node (restart policy), the node rebuilds its pods.
    wait_for(lambda: serves(name, inventory), RECOVERY, "pod web on w2 (host h3) did not serve again after h3's "
             "engine restarted")  # fmt: skip
    print(f"\nh3's engine restarted: pods served again {time.monotonic() - started:.1f} s after it answered")
    status = emu("status", "--name", name, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["problems"] == []


def test_the_swarm_managers_host_restarting_brings_the_control_plane_back(files, lab):
    """h1 leads the swarm (its only manager) and runs cp, the API server's node."""
    from tests import hostlab

    name, _, inventory = files
    h1 = lab.host("h1")
    hostlab.stop_engine(h1)
    try:
        status = emu("status", "--name", name)
        assert status.returncode == 1, status.stdout + status.stderr
        assert "host h1" in status.stderr and "cp" in status.stderr and "Traceback" not in status.stderr
        assert node_statuses(status.stdout) == {"cp": "NotReady", "w1": "Ready", "w2": "Ready"}, status.stdout
    finally:
        hostlab.start_engine(h1)
    started = time.monotonic()
    wait_for(lambda: serves(name, inventory), RECOVERY, "the cluster did not serve again after h1's engine (the "
             "swarm's manager) restarted")  # fmt: skip
    print(f"\nh1's engine (the manager) restarted: pods served again {time.monotonic() - started:.1f} s after it "
          "answered")
    status = emu("status", "--name", name, "--json")
    assert status.returncode == 0, status.stderr


def test_up_starts_nodes_stopped_on_a_host_and_they_serve_again(files, lab):
    from tests import hostlab

    name, topology, inventory = files
    h2, h3 = lab.host("h2"), lab.host("h3")
    # Stopped on purpose (`docker stop`): the restart policy leaves them down, as it should.
    hostlab.docker(h2, "stop", "-t", "1", node_container(name, "w1"))
    hostlab.docker(h3, "stop", "-t", "1", node_container(name, "w2"))
    status = emu("status", "--name", name, "--json")
    assert status.returncode == 1, status.stderr
    problems = {p["node"]: p for p in json.loads(status.stdout)["problems"]}
    assert set(problems) == {"w1", "w2"}
    assert problems["w2"]["host"] == "h3"
    assert f"its container {node_container(name, 'w2')} on host h3 is not running (Exited" in problems["w2"]["what"]
    assert "emu up FILE" in problems["w2"]["fix"]
    assert "node w1" in status.stderr and "node w2" in status.stderr

    up = emu("up", str(topology), "--hosts", str(inventory))
    assert up.returncode == 0, up.stderr
    assert f"node w1 ({node_container(name, 'w1')} on host h2) was Exited" in up.stdout, up.stdout
    assert f"node w2 ({node_container(name, 'w2')} on host h3) was Exited" in up.stdout, up.stdout
    assert "is up again" in up.stdout or "repaired" in up.stdout, up.stdout
    # `emu up` waited for the started nodes' agents and pods: they serve now, without waiting more.
    assert serves(name, inventory)
    status = emu("status", "--name", name)
    assert status.returncode == 0, status.stderr


ONE_ENGINE = """\
name: NAME
nodes:
  - {name: cp, role: control-plane}
  - {name: w1}
pods:
  - name: client
    node: cp
    containers: [{name: shell, command: [sleep, infinity]}]
  - name: web
    node: w1
    labels: {app: web}
    containers: [NETEXEC]
services:
  - name: web
    selector: {app: web}
    ports: [{name: http, port: 80, targetPort: http}]
""".replace("NETEXEC", NETEXEC)


def one_engine_serves(cluster: Cluster) -> bool:
    """Pod client (cp) reaches pod web (w1) by its IP with its own source address, and through service web."""
    try:
        state = cluster.state()
        client, web = state.pods["default/client"].ip, state.pods["default/web"].ip
        direct = cluster.exec("client", ["curl", "-sS", "--max-time", "3", f"http://{web}:8080/clientip"])
        service = state.services["default/web"].cluster_ip
        named = cluster.exec("client", ["curl", "-sS", "--max-time", "3", f"http://{service}/hostname"])
        return direct.ok and direct.output.strip().rsplit(":", 1)[0] == client and named.output.strip() == "web"
    except Exception:  # noqa: BLE001 - a node still coming back: not yet
        return False


def test_a_cluster_on_one_engine_comes_back_when_the_engine_restarts(lab, new_name, runtime):
    """One Docker host (no swarm: a bridge network), as on a laptop whose Docker restarts: here the lab's h2
    engine, driven directly, so that this machine's main engine is never restarted."""
    from emu.control.runtime.docker import DockerRuntime
    from tests import hostlab

    h2 = lab.host("h2")
    name = new_name("oneengine")
    topology = load_text(ONE_ENGINE.replace("NAME", name))
    try:
        Cluster(name, runtime=DockerRuntime(base_url=h2.docker_host)).up(topology)
        assert one_engine_serves(Cluster(name, runtime=DockerRuntime(base_url=h2.docker_host)))
        hostlab.stop_engine(h2)
        stopped = time.monotonic()
        hostlab.start_engine(h2)
        started = time.monotonic()
        wait_for(lambda: one_engine_serves(Cluster(name, runtime=DockerRuntime(base_url=h2.docker_host))), RECOVERY,
                 "the one-engine cluster did not serve again after its engine restarted")  # fmt: skip
        print(f"\none engine: stopped for {started - stopped:.1f} s; pods served {time.monotonic() - started:.1f} s "
              "after the engine answered again")
        state, problems = Cluster(name, runtime=DockerRuntime(base_url=h2.docker_host)).health()
        assert problems == []
    finally:
        Cluster(name, runtime=DockerRuntime(base_url=h2.docker_host)).down()
