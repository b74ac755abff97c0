"""The integration tests' labs (tests/labs/*.yaml): each one a valid topology,
used by some test, and none the same lab as another one (or as a lab the
repository ships in topologies/ or examples/) under another name or proxy mode:
a test that needs a lab there is takes it from there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from emu.api.topology.load import load_text
from tests import labs

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(path for pattern in ("topologies/*.yaml", "topologies/labs/*/lab.yaml", "examples/*/lab.yaml")
                 for path in ROOT.glob(pattern))  # fmt: skip


def shape(text: str) -> str:
    """The lab without what a test sets on its own: its name and its proxy mode."""
    data = yaml.safe_load(text)
    data.pop("name", None)
    networking = data.get("networking") or {}
    networking.pop("proxyMode", None)
    if not networking:
        data.pop("networking", None)
    return json.dumps(data, sort_keys=True)


def test_there_are_labs():
    assert len(labs.names()) >= 10, labs.names()


@pytest.mark.parametrize("name", labs.names())
def test_each_lab_is_a_valid_topology(name):
    load_text(labs.load(name))


def test_no_two_labs_are_the_same_lab():
    seen: dict[str, str] = {}
    for path in [*(labs.path(name) for name in labs.names()), *SHIPPED]:
        where = str(path.relative_to(ROOT))
        other = seen.setdefault(shape(path.read_text()), where)
        assert other == where, f"{where} is the lab {other} under another name: use that one"


def test_every_lab_is_used_by_a_test():
    sources = "\n".join(path.read_text() for path in (ROOT / "tests").rglob("*.py"))
    used = set(re.findall(r"""labs\.(?:load|path)\(["']([\w-]+)["']\)""", sources))
    assert set(labs.names()) <= used, f"no test loads {sorted(set(labs.names()) - used)}"


def test_an_unknown_lab_names_the_labs_there_are():
    with pytest.raises(FileNotFoundError, match="the labs are .*faults"):
        labs.load("no-such-lab")
