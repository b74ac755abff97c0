"""The labs the integration tests run on, one topology file each: tests/labs/NAME.yaml.

A test that needs a lab takes one from here (`labs.load("faults")`) before writing its
own, so that no two modules spell out the same lab; tests/unit/test_test_labs.py
checks that no two files here are the same lab under another name. The text comes
back as it is in the file: make_cluster takes it as it takes any topology text
(and gives the cluster its own emutest-* name), and a module may still edit it
(in_proxy_mode, a placeholder replaced) before it does."""

from __future__ import annotations

from pathlib import Path

LABS = Path(__file__).resolve().parent


def names() -> list[str]:
    """The labs there are, by name."""
    return sorted(path.stem for path in LABS.glob("*.yaml"))


def path(name: str) -> Path:
    """tests/labs/NAME.yaml; a name with no file is an error that lists the labs there are."""
    found = LABS / f"{name}.yaml"
    if not found.is_file():
        raise FileNotFoundError(f"no lab {name!r} in {LABS}: the labs are {', '.join(names())}")
    return found


def load(name: str) -> str:
    """The topology text of tests/labs/NAME.yaml."""
    return path(name).read_text()
