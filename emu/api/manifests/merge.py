"""Manifest objects into a topology (apply) and out of it (delete), validated
as a whole; a problem is reported at the manifest field that caused it."""

from __future__ import annotations

from emu.errors import EmuError, Problem
from emu.api.manifests.convert import KINDS, ManifestObject
from emu.api.manifests.read import ManifestError, Manifests
from emu.api.topology.load import format_path
from emu.api.topology.model import Topology
from emu.api.topology.validate import check_topology

# Namespaces every cluster has.
BUILTIN_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
# Topology key (as written) -> Topology attribute.
ATTRIBUTES = {
    "pods": "pods", "deployments": "deployments", "services": "services", "namespaces": "namespaces",
    "configMaps": "config_maps", "statefulSets": "stateful_sets", "daemonSets": "daemon_sets",
    "secrets": "secrets", "networkPolicies": "network_policies", "ingresses": "ingresses",
}  # fmt: skip
KIND_OF = {key: kind for (_, kind), key in KINDS.items()}


def namespaces_of(topology: Topology) -> set[str]:
    """Namespaces that exist in a topology: the built-in ones, those declared, and
    those its objects use (a topology file needs no Namespace objects)."""
    names = set(BUILTIN_NAMESPACES) | {namespace.name for namespace in topology.namespaces}
    for key, attribute in ATTRIBUTES.items():
        if key != "namespaces":
            names |= {item.namespace for item in getattr(topology, attribute)}
    return names


def _identity(key: str, item) -> tuple[str, str | None, str]:
    return (KIND_OF[key], None if key == "namespaces" else item.namespace, item.name)


def merge(base: Topology, manifests: Manifests, where: str) -> tuple[Topology, list[str]]:
    """base with the manifests' objects added, or replacing the object of the same
    kind, namespace and name, validated. Returns it and a kubectl-style line per
    object ('deployment.apps/web created'). `where` names the base in messages."""
    problems: list[tuple[str, Problem]] = []
    known = namespaces_of(base) | {o.name for o in manifests.objects if o.kind == "Namespace"}
    for obj in manifests.objects:
        if obj.namespace is not None and obj.namespace not in known:
            problems.append((obj.source, obj.problem(
                ("metadata", "namespace"),
                f'namespace "{obj.namespace}" not found; add a Namespace object named {obj.namespace} to the '
                "manifests (before or after this one), or create it first",
            )))  # fmt: skip
    lists = {key: list(getattr(base, attribute)) for key, attribute in ATTRIBUTES.items()}
    origins: dict[tuple[str, int], ManifestObject] = {}
    lines = []
    for obj in manifests.objects:
        items = lists[obj.key]
        index = next((i for i, item in enumerate(items) if _identity(obj.key, item) == obj.identity), None)
        if index is None:
            items.append(obj.model)
            index, status = len(items) - 1, "created"
        else:
            status = "unchanged" if items[index] == obj.model else "configured"
            items[index] = obj.model
        origins[(obj.key, index)] = obj
        lines.append(f"{obj.resource} {status}")
    merged = base.model_copy(update={ATTRIBUTES[key]: items for key, items in lists.items()})
    problems += _located(check_topology(merged), origins, where)
    if problems:
        raise ManifestError(problems)
    return merged, lines


def remove(base: Topology, manifests: Manifests, where: str) -> tuple[Topology, list[str], list[str]]:
    """base without the manifests' objects (a Namespace with everything in it, as
    Kubernetes deletes it). Returns it, a line per object deleted and one per
    object that was not there."""
    original = {key: list(getattr(base, attribute)) for key, attribute in ATTRIBUTES.items()}
    lists = {key: list(items) for key, items in original.items()}
    deleted, missing = [], []
    for obj in manifests.objects:
        if obj.kind == "Namespace" and obj.name in BUILTIN_NAMESPACES:
            raise EmuError(f"{obj.source}: namespace {obj.name} cannot be deleted: every cluster has it")
        # Found in the cluster as it was: an object of a namespace deleted by the same
        # manifests is deleted with it, and reported so, as kubectl does.
        found = any(_identity(obj.key, item) == obj.identity for item in original[obj.key])
        lists[obj.key] = [item for item in lists[obj.key] if _identity(obj.key, item) != obj.identity]
        if obj.kind == "Namespace":
            for key, entries in original.items():
                if key != "namespaces":
                    found = found or any(item.namespace == obj.name for item in entries)
                    lists[key] = [item for item in lists[key] if item.namespace != obj.name]
        kind = obj.resource.split("/")[0]
        group = kind.partition(".")
        if found:
            deleted.append(f'{kind} "{obj.name}" deleted')
        else:
            namespace = f" in namespace {obj.namespace}" if obj.namespace else ""
            missing.append(f'{group[0]}s{group[1]}{group[2]} "{obj.name}" not found{namespace}')
    result = base.model_copy(update={ATTRIBUTES[key]: items for key, items in lists.items()})
    problems = _located(check_topology(result), {}, where)
    if problems:
        raise ManifestError(problems)
    return result, deleted, missing


def _located(findings, origins: dict[tuple[str, int], ManifestObject], where: str) -> list[tuple[str, Problem]]:
    """Validation findings of a topology, each at the manifest object it is about
    when it came from one, else at the topology (`where`)."""
    problems = []
    for path, message in findings:
        origin = origins.get(tuple(path[:2]))
        if origin is not None:
            problems.append((origin.source, origin.topology_problem(tuple(path[2:]), message)))
        else:
            problems.append((where, Problem(format_path(path), message)))
    return problems
