"""Testing with emu: a pytest plugin, testinfra hosts for pods, and helpers.

    from emu.testing import connectivity, wait_ready, resolve, client_ip, pod, node, service

See docs/testing.md. Names are imported on first use, so loading the pytest
plugin (emu.testing.plugin, through the `pytest11` entry point) costs nothing
in test runs that do not ask for a cluster.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "connectivity": "emu.testing.matrix",
    "parse_targets": "emu.testing.matrix",
    "Reachability": "emu.testing.matrix",
    "Target": "emu.testing.matrix",
    "wait_ready": "emu.testing.helpers",
    "resolve": "emu.testing.helpers",
    "client_ip": "emu.testing.helpers",
    "Answer": "emu.testing.helpers",
    "pod": "emu.testing.lab",
    "node": "emu.testing.lab",
    "service": "emu.testing.lab",
    "Pod": "emu.testing.lab",
    "Node": "emu.testing.lab",
    "Service": "emu.testing.lab",
    "pod_host": "emu.testing.backend",
    "Packets": "emu.testing.capture",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'emu.testing' has no attribute {name!r}")
