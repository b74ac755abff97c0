"""The labs' checks, run against a lab you brought up yourself:

    cd topologies/labs/pod-to-service && docker compose up     # or: emu up lab.yaml
    pytest topologies/labs/pod-to-service

(`make test` runs every lab's checks on a fresh copy of it: tests/integration/test_labs.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emu.control.cluster import Cluster


@pytest.fixture(scope="module")
def lab(request) -> Cluster:
    """The running cluster of the lab in this test file's folder."""
    folder = Path(str(request.fspath)).parent
    name = yaml.safe_load((folder / "lab.yaml").read_text())["name"]
    cluster = Cluster(name)
    if not cluster.exists:
        pytest.skip(f"lab '{name}' is not up: run `docker compose up` (or `emu up lab.yaml`) in {folder}")
    return cluster
