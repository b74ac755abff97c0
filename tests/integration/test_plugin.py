"""emu's pytest plugin for real: pytester runs inner test files in a pytest of
their own (a subprocess, as a user's run would be) against real clusters, and
the example project under examples/ runs green.

What is proved: the cluster is made from --emu-topology and removed at the end
although a test failed; a cluster left by a killed run is swept; --emu-keep
leaves it after a failure, --emu-reuse tests against it and leaves it, and a
run without --emu-reuse refuses a cluster it did not make; the testinfra
backend runs in the pod (run with stdout/stderr/exit code apart, socket, addr,
file, interface); the pod, node and service fixtures name what runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emu.testing import sweep
from tests import labs

ROOT = Path(__file__).resolve().parents[2]

LAB = labs.load("tiny")

INNER = '''
def test_handles_name_what_runs(emu_pod, emu_node, emu_service):
    client = emu_pod("client")
    assert client.node == "w" and client.ip.startswith("10.244.")
    assert client.exec("hostname").output.strip() == "client"
    worker = emu_node("w")
    assert worker.exec(["ip", "-4", "-o", "addr", "show", "eth0"]).output.count(worker.ip) == 1
    web = emu_service("web")
    assert web.port("http") == 80 and web.endpoints() == [emu_pod("web").ip + ":8080"]


def test_run_keeps_stdout_stderr_and_exit_code_apart(emu_host):
    result = emu_host("client").run("echo out; echo err >&2; exit 3")
    assert (result.rc, result.stdout, result.stderr) == (3, "out\\n", "err\\n")


def test_socket_sees_the_pods_own_listeners(emu_host):
    assert emu_host("web").socket("tcp://0.0.0.0:8080").is_listening
    assert not emu_host("client").socket("tcp://0.0.0.0:8080").is_listening


def test_addr_reaches_the_service_by_name(emu_host, emu_pod):
    client = emu_host("client")
    assert client.addr("web").is_resolvable
    assert client.addr("web").port(80).is_reachable
    assert client.addr(emu_pod("web").ip).port(8080).is_reachable
    assert not client.addr(emu_pod("web").ip).port(81).is_reachable


def test_file_is_the_pods_resolv_conf(emu_host):
    resolv = emu_host("client").file("/etc/resolv.conf")
    assert resolv.exists and "search default.svc.cluster.local svc.cluster.local cluster.local" in resolv.content_string


def test_interface_is_the_pods_eth0(emu_host, emu_pod):
    eth0 = emu_host("client").interface("eth0")
    assert eth0.exists and emu_pod("client").ip in eth0.addresses


def test_a_failure(emu_cluster):
    assert emu_cluster.exec("client", ["false"]).ok, "this test fails on purpose"
'''


def run_inner(pytester, *args: str):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args, timeout=300)


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_failing_run_removes_its_cluster_and_sweeps_stale_ones(pytester, runtime, new_name):
    pytester.makefile(".yaml", lab=LAB)
    pytester.makepyfile(test_inner=INNER)
    name = new_name("plugin")
    # A cluster left by a run that was killed: registered to a pid that is gone.
    stale = new_name("plugin-stale")
    runtime.create_network(f"emu-{stale}", runtime.pick_subnet(None, []), stale)
    (sweep.OWNERS / stale).write_text(str(dead_pid()))

    result = run_inner(pytester, "--emu-topology", "lab.yaml", "--emu-name", name)

    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines([f"emu: removed clusters left by*{stale}*", "*this test fails on purpose*"])
    names = runtime.cluster_names()
    assert name not in names and stale not in names
    assert not sweep.registered(name) and not sweep.registered(stale)


def test_keep_then_reuse(pytester, runtime, new_name):
    pytester.makefile(".yaml", lab=LAB)
    pytester.makepyfile(test_inner="def test_fails(emu_cluster):\n    assert False, 'on purpose'\n")
    name = new_name("plugin-keep")
    try:
        kept = run_inner(pytester, "--emu-topology", "lab.yaml", "--emu-name", name, "--emu-keep")
        kept.assert_outcomes(failed=1)
        kept.stdout.fnmatch_lines([f"cluster '{name}' kept after 1 failed test(s) (--emu-keep)*emu down {name}*"])
        assert name in runtime.cluster_names() and not sweep.registered(name)

        pytester.makepyfile(
            test_inner="def test_lab(emu_pod):\n    assert emu_pod('client').exec('true').ok\n\n\n"
            "def test_testinfra_hosts_option(host):\n    assert host.check_output('hostname') == 'client'\n"
        )
        refused = run_inner(pytester, "--emu-topology", "lab.yaml", "--emu-name", name, "-k", "test_lab")
        refused.assert_outcomes(errors=1)
        refused.stdout.fnmatch_lines([f"*a cluster named '{name}' is already running*pass --emu-reuse*"])

        hosts = f"--hosts=emu://client?context={name}"  # testinfra's own option and `host` fixture
        reused = run_inner(pytester, "--emu-topology", "lab.yaml", "--emu-name", name, "--emu-reuse", hosts)
        reused.assert_outcomes(passed=2)
        reused.stdout.fnmatch_lines([f"emu: converging cluster '{name}'*", f"cluster '{name}' left running (--emu-reuse)*"])
        assert name in runtime.cluster_names()
    finally:
        runtime.remove_cluster(name)


def test_the_example_project_runs_green(runtime, new_name):
    name = new_name("example")
    example = ROOT / "examples" / "pytest-lab"
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--emu-name", name],
        cwd=example, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    # Every test of the example passed: none skipped, deselected or failed (pytest exits 0 with skips).
    tests = len(re.findall(r"^def test_", (example / "test_lab.py").read_text(), re.M))
    summary = [line for line in completed.stdout.splitlines() if re.match(r"\d+ \w+.* in [\d.]+s", line)][-1]
    assert re.fullmatch(rf"{tests} passed in [\d.]+s( \([\d:]+\))?", summary), completed.stdout
    assert name not in runtime.cluster_names()


def runner_files(tmp_path: Path, name: str) -> dict[str, str]:
    files = {variable: tmp_path / variable.lower() for variable in ("GITHUB_OUTPUT", "GITHUB_STATE", "GITHUB_PATH")}
    for path in files.values():
        path.write_text("")
    return {name: str(path) for name, path in files.items()}


def read_pairs(path: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in Path(path).read_text().splitlines() if line)


@pytest.mark.skipif(shutil.which("node") is None, reason="the GitHub Action is JavaScript: needs node on PATH")
def test_the_github_action_brings_a_cluster_up_and_its_post_step_removes_it(runtime, new_name, tmp_path):
    """The action's main and post steps run as the runner runs them: inputs as
    INPUT_*, outputs and state through the runner's files. (emu is already in
    this Python, so install: false; GitHub's own runs of the workflow install it.)"""
    name = new_name("action")
    files = runner_files(tmp_path, name)
    inputs = {"INPUT_TOPOLOGY": "examples/pytest-lab/lab.yaml", "INPUT_NAME": name, "INPUT_PYTHON": sys.executable,
              "INPUT_INSTALL": "false", "INPUT_PREPARE": "false"}  # fmt: skip
    environment = {**os.environ, **files, **inputs, "GITHUB_WORKSPACE": str(ROOT)}
    try:
        main = subprocess.run(["node", str(ROOT / "action" / "main.js")], env=environment, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert main.returncode == 0, main.stdout + main.stderr
        assert read_pairs(files["GITHUB_OUTPUT"]) == {"name": name, "python": sys.executable}
        assert name in runtime.cluster_names()
        assert re.search(r"default\W+client\W+1/1", main.stdout)  # emu status, in the step's log

        state = {f"STATE_{key}": value for key, value in read_pairs(files["GITHUB_STATE"]).items()}
        post = subprocess.run(["node", str(ROOT / "action" / "post.js")], env={**os.environ, **state},
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert post.returncode == 0, post.stdout + post.stderr
        assert name not in runtime.cluster_names()
    finally:
        runtime.remove_cluster(name)


def test_the_github_action_says_what_is_wrong(tmp_path):
    if shutil.which("node") is None:
        pytest.skip("the GitHub Action is JavaScript: needs node on PATH")
    files = runner_files(tmp_path, "x")
    environment = {**os.environ, **files, "GITHUB_WORKSPACE": str(tmp_path), "INPUT_TOPOLOGY": "missing.yaml"}
    main = subprocess.run(["node", str(ROOT / "action" / "main.js")], env=environment, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert main.returncode == 1
    assert f"::error::topology missing.yaml: no such file (looked at {tmp_path}/missing.yaml)" in main.stdout
    assert read_pairs(files["GITHUB_STATE"]) == {}  # nothing started: the post step removes nothing
