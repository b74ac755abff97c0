"""A uml node whose kernel was killed from outside, the parts that run anywhere:
how it is told from a running one (its helper processes outlive it), what is
cleared before it boots again and what is kept (its disk), and start_node's
refusals before anything changes. Processes stand in for a guest's kernel and
helpers (a copy of sh named linux.uml). Booting a killed node again for real:
tests/integration/test_uml_runtime.py and test_proxy_modes.py (ipvs)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from emu.control.runtime import uml
from emu.control.runtime.umlprovider import KILLED, UmlRuntime
from emu.errors import EmuError


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """start(name) -> a stand-in for a guest's kernel (its main process, named umid=NAME on its command line,
    and a helper in its process group), with its pid file, disk and UML's umid directory."""
    binary = tmp_path / "bin" / "linux.uml"
    binary.parent.mkdir()
    shutil.copy("/bin/sh", binary)
    monkeypatch.setattr(uml, "UML_BINARY", binary)
    state = tmp_path / "state"
    started: list[subprocess.Popen] = []

    def start(name: str) -> subprocess.Popen:
        directory = uml.guest_dir(state, name)
        (directory / name).mkdir(parents=True)
        (directory / name / "pid").write_text("1")
        (directory / "root.cow").write_text("disk")
        (directory / "console.log").write_text("console")
        helper = f"{binary} -c 'sleep 60' helper"
        process = subprocess.Popen([str(binary), "-c", f"{helper} & sleep 60", f"umid={name}"],
                                   start_new_session=True)  # fmt: skip
        (directory / "pid").write_text(str(process.pid))
        started.append(process)
        deadline = time.monotonic() + 10
        while len(_group(process.pid)) < 2 and time.monotonic() < deadline:  # the helper has started
            time.sleep(0.01)
        return process

    start.state = state
    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def test_a_kernel_killed_from_outside_is_not_running_though_its_helpers_are(kernel):
    process = kernel("n1")
    assert uml.guest_running("n1", kernel.state)
    os.kill(process.pid, signal.SIGKILL)  # as `kill -9` of the linux process
    deadline = time.monotonic() + 10
    while uml.guest_running("n1", kernel.state) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not uml.guest_running("n1", kernel.state)  # a zombie of this process until reaped: not running
    assert uml._uml_group(process.pid)  # ... while its helper lives on in its group
    process.wait()
    assert not uml.guest_running("n1", kernel.state)


def test_another_guests_kernel_at_the_recorded_pid_is_not_this_guests(kernel):
    process = kernel("n1")
    directory = uml.guest_dir(kernel.state, "n2")
    directory.mkdir(parents=True)
    (directory / "pid").write_text(str(process.pid))  # n1's kernel, not n2's
    assert uml.guest_running("n1", kernel.state) and not uml.guest_running("n2", kernel.state)


def test_stopping_a_killed_guest_ends_its_helpers_and_keeps_its_disk(kernel):
    process = kernel("n1")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    uml.stop_guest("n1", kernel.state)
    assert not uml._uml_group(process.pid) and _group(process.pid) == []
    directory = uml.guest_dir(kernel.state, "n1")
    assert sorted(p.name for p in directory.iterdir()) == ["console.log", "root.cow"]  # no pid file, no umid dir
    uml.remove_guest("n1", kernel.state)
    assert not directory.exists()


def write_cluster(state: Path, node: dict) -> Path:
    cluster = state / "clusters" / "lab"
    (cluster / "nodes").mkdir(parents=True)
    (cluster / "cluster.json").write_text(json.dumps({"name": "lab", "network": "emu-lab", "subnet": "172.30.9.0/24",
                                                      "bridge": "emubtest", "gateway": "172.30.9.1"}))  # fmt: skip
    record = {"container": "lab-w1", "hostname": "w1", "role": "worker", "ip": "172.30.9.3",
              "address": "172.30.9.3/24", "gateway": "172.30.9.1", "bridge": "emubtest", "boot": "b1",
              "rootfs": str(state / "root.img"), "command": ["sleep", "infinity"], "ports": [], **node}  # fmt: skip
    path = cluster / "nodes" / "lab-w1.json"
    path.write_text(json.dumps({k: v for k, v in record.items() if v is not None}))
    return path


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("broken, why", [
    ({"command": None}, "its record was written by an older emu, without the node's command"),
    ({}, r"the root filesystem it was made from, .*root.img, is gone \(a newer node image or emu replaced it\)"),
    ("no disk", "its disk .*root.cow is gone, and with it its pods' files"),
])  # fmt: skip
def test_a_killed_node_that_cannot_boot_again_is_refused_before_anything_changes(tmp_path, broken, why):
    state = tmp_path / "state"
    write_cluster(state, broken if isinstance(broken, dict) else {})
    if broken == "no disk":
        (state / "root.img").write_text("image")
    runtime = UmlRuntime(state)
    [record] = runtime.cluster_containers("lab")
    assert not record.running and record.status == KILLED
    before = files_under(state)
    with pytest.raises(EmuError, match=f"uml node lab-w1 cannot boot again in place: {why}; nothing was changed; "
                                       "`emu down lab`, then `emu up FILE`"):  # fmt: skip
        runtime.start_node("lab-w1")
    assert files_under(state) == before
