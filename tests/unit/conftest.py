import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture()
def golden():
    """golden(name, text): text must equal tests/unit/golden/NAME; EMU_UPDATE_GOLDEN=1 rewrites it."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if os.environ.get("EMU_UPDATE_GOLDEN"):
            path.write_text(text)
        assert text == path.read_text(), f"differs from {path}; if intended, rerun with EMU_UPDATE_GOLDEN=1"

    return check


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """emu's files (kubeconfig, the records of multi-host clusters) in the test's
    directory, not the user's: KUBECONFIG and EMU_HOME set below tmp_path, which
    is returned. A module whose every test makes a cluster uses it for all of them
    with `pytestmark = pytest.mark.usefixtures("home")`."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.setenv("EMU_HOME", str(tmp_path / "emu"))
    return tmp_path


@pytest.fixture()
def seeded_runs():
    """seeded_runs(code) -> what `code` prints, run in one fresh Python per hash seed
    (PYTHONHASHSEED 0 to 7, at once): a set or hash order that leaks into the output
    differs between them, where two calls in this one process would agree. Eight
    seeds: two items in a hash-dependent order agree in all eight 1 time in 128."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]

    def run(code: str) -> list[str]:
        running = [
            subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(root)})
            for seed in range(8)
        ]  # fmt: skip
        outputs = []
        for process in running:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            outputs.append(out)
        return outputs

    return run


@pytest.fixture()
def state_file_agents(monkeypatch):
    """The nodes' agents program their rules from the state file (cni.PROXY_FROM_API off):
    the fake engine's nodes answer as those agents do (emu.testing.fakeprovider). The API
    path's wait (Cluster.wait_rules_from_api) has its own tests in test_wait_rules_from_api.py."""
    from emu.node.plan import cni

    monkeypatch.setattr(cni, "PROXY_FROM_API", False)
