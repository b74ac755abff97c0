"""Which clusters the sweep removes: those of runs that are gone, never those of
live runs or running ones made by hand. The engine is a small stand-in that
records removals (the sweep's decisions are what is tested here; the
integration tests sweep real clusters)."""

import subprocess
from dataclasses import dataclass, field

import pytest

from emu.testing import sweep


@dataclass
class Container:
    running: bool


@dataclass
class Engine:
    clusters: dict[str, bool]  # name -> a container running
    removed: list[str] = field(default_factory=list)

    def cluster_names(self):
        return sorted(self.clusters)

    def cluster_containers(self, name):
        return [Container(self.clusters[name])]

    def remove_cluster(self, name):
        self.removed.append(name)
        del self.clusters[name]
        return (1, 1)


@pytest.fixture(autouse=True)
def owners(monkeypatch, tmp_path):
    monkeypatch.setattr(sweep, "OWNERS", tmp_path / "owners")


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_the_sweep_removes_only_what_runs_that_are_gone_left():
    engine = Engine({
        "lab-mine": True, "lab-dead": True, "emutest-dead": False, "emutest-by-hand": True,
        "emutest-stopped": False, "someones-lab": True,
    })  # fmt: skip
    sweep.register("lab-mine")
    sweep.register("lab-dead")
    sweep.register("emutest-dead")
    for name in ("lab-dead", "emutest-dead"):
        (sweep.OWNERS / name).write_text(str(dead_pid()))

    assert sweep.sweep(engine) == ["emutest-dead", "lab-dead"]  # the plugin's sweep: registered ones only
    assert sweep.sweep(engine, prefix="emutest") == ["emutest-stopped"]  # the project's: unregistered, stopped
    assert sorted(engine.clusters) == ["emutest-by-hand", "lab-mine", "someones-lab"]
    assert not sweep.registered("lab-dead") and sweep.registered("lab-mine")


def test_a_run_forgets_its_own_clusters_at_its_end():
    sweep.register("a")
    (sweep.OWNERS / "b").write_text(str(dead_pid()))
    sweep.disown_all()
    assert not sweep.registered("a") and sweep.registered("b")
