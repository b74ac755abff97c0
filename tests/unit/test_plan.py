"""Plan renderers: golden text for a fixed state, and the shape of each piece."""

import json

import pytest

from emu.control.cluster import node_plans
from emu.node.plan import cni
from emu.control.state import plan_cluster
from emu.api.topology.load import load_text

LAB = """\
name: lab
nodes:
  - {name: cp, role: control-plane}
  - {name: w1}
pods:
  - name: web
    labels: {app: web}
    containers:
      - name: server
        workload: netexec
        args: [--http-port=8080]
        env: [{name: GREETING, value: "hello world"}]
        ports: [{name: http, containerPort: 8080}]
      - name: sidecar
        command: "curl -s localhost:8080/hostname"
  - name: tools
    namespace: kube-system
    node: cp
    containers: [{name: shell, command: [sleep, infinity]}]
"""


def render(plans) -> str:
    return "".join(plan.render() for plan in plans)




def state():
    return plan_cluster(load_text(LAB), "emu-lab", "172.28.5.0/24")


def test_new_cluster_plan_matches_golden(golden):
    golden("new_cluster.plan", render(node_plans(None, state())))


def test_apply_plan_matches_golden(golden):
    first = state()
    second = plan_cluster(load_text(LAB.replace("node: cp", "node: w1")), "emu-lab", "172.28.5.0/24", first)
    plans = [p for p in node_plans(first, second) if not p.empty]
    golden("move_pod.plan", render(plans))


def test_plans_are_byte_identical_for_the_same_state(seeded_runs):
    code = "from tests.unit.test_plan import node_plans, render, state; print(render(node_plans(None, state())))"
    runs = seeded_runs(code)
    assert set(runs) == {render(node_plans(None, state())) + "\n"}


def test_no_change_gives_empty_plans():
    first = state()
    assert all(p.empty for p in node_plans(first, first))


def test_routes_point_at_every_other_node():
    s = state()
    batch = cni.node_setup_batch(s, s.node("cp"))
    assert "addr add 10.244.0.1/24 dev cni0" in batch
    assert "route add 10.244.1.0/24 via 172.28.5.3" in batch
    assert "10.244.0.0/24 via" not in batch


def test_masquerade_skips_pod_to_pod():
    s = state()
    rules = cni.masquerade_rules(s, s.node("w1"))
    lines = rules.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert any("-d 10.244.0.0/16" in line and line.endswith("-j RETURN") for line in lines)
    assert lines.index(next(x for x in lines if "RETURN" in x)) < lines.index(
        next(x for x in lines if x.endswith("MASQUERADE"))
    )


def test_pod_in_other_namespace_has_qualified_netns_and_resolv_conf():
    s = state()
    pod = s.pods["kube-system/tools"]
    assert pod.netns == "kube-system.tools"
    assert cni.resolv_conf(s, pod) == (
        "search kube-system.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\noptions ndots:5\n"
    )
    assert cni.hosts_file(pod).endswith(f"{pod.ip}\ttools\n")


def test_boot_files_rebuild_the_node_with_every_pod_it_has():
    s = state()
    node = s.node("w1")
    files = cni.boot_files(s, node)
    script = files[cni.BOOT_SCRIPT]
    lines = script.splitlines()
    assert lines[3] == "rm -rf /run/netns /run/emu"  # what the old container left, before anything else
    assert f"ip -batch {cni.BOOT_DIR}/node.batch" in lines
    assert any(line.startswith("setsid sh -c") and "-m emu.node.agent --node w1" in line for line in lines)
    pods = s.pods_on("w1")
    assert files[f"{cni.BOOT_DIR}/pods.batch"].count("netns add") == len(pods) > 0
    assert all(f"ip -n {p.netns} -batch {cni.BOOT_DIR}/pod-{p.netns}.batch" in lines for p in pods)
    assert all(name.startswith(cni.BOOT_DIR) for name in files)  # the apply's own plan files are left alone
    assert cni.BOOT_SCRIPT in " ".join(cni.NODE_COMMAND)


def test_a_pods_mac_follows_its_ip_so_a_pod_replaced_in_place_keeps_it():
    assert cni.pod_mac("10.244.1.3") == "0a:58:0a:f4:01:03"
    s = state()
    pod = s.pods["kube-system/tools"]
    assert f"peer name eth0 address {cni.pod_mac(pod.ip)} netns {pod.netns}" in cni.pod_root_batch(pod)


def test_agent_modules_travel_with_bytecode_the_nodes_python_uses_only_for_their_own_source(tmp_path, monkeypatch):
    """agent_bytecode: checked-hash pycs. Imported without compiling while the
    source is the one they were made from; a changed source is compiled anew."""
    import importlib
    import importlib._bootstrap_external as external
    import sys

    files = cni.agent_files()
    assert any("/emu/node/agent/__pycache__/__main__." in path for path in files), "the agent's own module has its pyc"
    source = {"/lib/pycpkg/__init__.py": "", "/lib/pycpkg/mod.py": "VALUE = 41 + 1\n"}
    for path, content in {**source, **cni.agent_bytecode(source)}.items():
        target = tmp_path / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode())

    def refuse(*_args, **_kwargs):
        raise AssertionError("compiled the source: the pyc was not used")

    monkeypatch.setattr(external.SourceLoader, "source_to_code", refuse)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    try:
        assert importlib.import_module("pycpkg.mod").VALUE == 42
        for name in ("pycpkg.mod", "pycpkg"):
            del sys.modules[name]
        (tmp_path / "lib/pycpkg/mod.py").write_text("VALUE = 41 + 2\n")  # another source: its pyc no longer fits
        with pytest.raises(AssertionError, match="pyc was not used"):
            importlib.import_module("pycpkg.mod")
    finally:
        for name in ("pycpkg.mod", "pycpkg"):
            sys.modules.pop(name, None)


def test_a_new_node_with_the_cluster_dns_gets_a_first_snapshot_its_server_can_load():
    """So that the coredns pods are ready when the hub's agent first looks: the
    snapshot of the state with no endpoint ready, and only on the new node that runs them."""
    from emu.node.dns.server import Zone

    first = state()
    with_dns = {p.node: p for p in node_plans(None, first) if cni.DNS_SNAPSHOT in p.files}
    coredns_nodes = {pod.node for pod in first.pods.values() if any(c.get("workload") == "coredns" for c in pod.containers)}
    assert set(with_dns) == coredns_nodes and coredns_nodes
    zone = Zone(json.loads(with_dns[next(iter(coredns_nodes))].files[cni.DNS_SNAPSHOT]), serial=1)
    assert "default" in zone.namespaces and zone.services, "the services' records are there"
    assert not any(cni.DNS_SNAPSHOT in p.files for p in node_plans(first, first)), "an existing node keeps its own"
