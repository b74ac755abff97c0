"""Kubernetes manifests in (`emu apply -f`, `emu delete -f`, `manifests:` in a
topology) and Kubernetes objects out (`emu get`).

Reading: read.py (files, directories, stdin) -> convert.py (one object ->
one emu topology object: modelled fields honoured, others warned about,
unknown ones refused) -> merge.py (into a topology, validated as a whole).
Writing: render.py (the cluster's state -> objects in their Kubernetes form,
and kubectl's tables). Nothing here talks to Docker: the cluster does.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from emu.api.manifests.merge import merge, remove
from emu.api.manifests.read import ManifestError, Manifests, read_manifests
from emu.api.topology.model import Topology

__all__ = ["ManifestError", "ManifestWarning", "Manifests", "apply", "delete", "include", "read_manifests"]


class ManifestWarning(UserWarning):
    """A manifest field emu does not model (ignored), or an image it does not run."""


def emit(found: list[str]) -> None:
    """Hand the warnings of a read to Python's warnings (the CLI prints them once each)."""
    for message in found:
        warnings.warn(message, ManifestWarning, stacklevel=3)


def include(topology: Topology, paths: list[str], base: Path | None = None, namespace: str = "default") -> Topology:
    """A topology with the objects of manifests added (`manifests:` in a topology,
    resolved against `base`, or `emu up -f`), validated as a whole."""
    if not paths:
        return topology
    resolved = [p if p == "-" or base is None or Path(p).is_absolute() else str(base / p) for p in paths]
    manifests = read_manifests(resolved, namespace)
    emit(manifests.warnings)
    merged, _ = merge(topology.model_copy(update={"manifests": []}), manifests, "the topology")
    return merged


def apply(cluster, manifests: Manifests, wait: bool = True):
    """`kubectl apply -f` for a running cluster: its objects created or replaced,
    the cluster converged. Returns (Change, kubectl-style lines)."""
    lines: list[str] = []

    def change(topology: Topology) -> Topology:
        merged, found = merge(topology, manifests, f"cluster '{cluster.name}'")
        lines[:] = found
        return merged

    emit(manifests.warnings)
    return cluster.update(change, wait=wait), lines


def delete(cluster, manifests: Manifests, wait: bool = True):
    """`kubectl delete -f`: what the manifests made is removed from a running
    cluster. Returns (Change, lines deleted, lines not found)."""
    deleted: list[str] = []
    missing: list[str] = []

    def change(topology: Topology) -> Topology:
        result, gone, absent = remove(topology, manifests, f"cluster '{cluster.name}'")
        deleted[:], missing[:] = gone, absent
        return result

    return cluster.update(change, wait=wait), deleted, missing
