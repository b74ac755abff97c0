"""Discovery documents built from resources.RESOURCES: /version, /api, /apis,
/api/v1, /apis/G, /apis/G/V, and aggregated discovery (apidiscovery.k8s.io v2
and v2beta1) that kubectl >= 1.26 asks for in its Accept header.

`custom` (the custom resources crd.Registry serves, each group's versions in
Kubernetes' version order) come after the built-in groups, as kube-apiserver
lists CRD groups after its own."""

from __future__ import annotations

import base64
import hashlib
import platform

from emu.apiserver import resources
from emu.apiserver.resources import ResourceInfo

GIT_VERSION = "v1.32.0-emu"

# Aggregated discovery: the media types kubectl names in Accept, in our order of preference.
AGGREGATED = {
    "v2": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
    "v2beta1": "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
}


def version() -> dict:
    """/version: the version.Info kubectl version prints."""
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {"major": "1", "minor": "32", "emulationMajor": "1", "emulationMinor": "32",
            "minCompatibilityMajor": "1", "minCompatibilityMinor": "31", "gitVersion": GIT_VERSION,
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
            "platform": f"linux/{machine}"}


def storage_version_hash(r: ResourceInfo) -> str:
    """discovery.StorageVersionHash: the first 8 bytes of sha256("group/version/kind"), base64,
    of the version objects are stored in."""
    version = r.custom.storage_version if r.custom is not None else r.version
    return base64.b64encode(hashlib.sha256(f"{r.group}/{version}/{r.kind}".encode()).digest()[:8]).decode()


def _served(group: str, version: str, custom=()) -> list[ResourceInfo]:
    return [r for r in [*resources.RESOURCES, *custom] if r.group == group and r.version == version]


def group_versions(custom=()) -> list[tuple[str, str]]:
    """(group, version) pairs served: the built-in ones (resources.group_versions), then the custom ones."""
    seen = resources.group_versions()
    for r in custom:
        if (r.group, r.version) not in seen:
            seen.append((r.group, r.version))
    return seen


def api_versions(server_address: str = "") -> dict:
    """/api: APIVersions."""
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _group(group: str, custom=()) -> dict:
    versions = [{"groupVersion": f"{g}/{v}", "version": v} for g, v in group_versions(custom) if g == group]
    return {"name": group, "versions": versions, "preferredVersion": versions[0]}


def api_group_list(custom=()) -> dict:
    """/apis: APIGroupList of every named group."""
    groups = []
    for g, _ in group_versions(custom):
        if g and all(x["name"] != g for x in groups):
            groups.append(_group(g, custom))
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(group: str, custom=()) -> dict | None:
    """/apis/GROUP: APIGroup, None when not served."""
    if not group or not any(r.group == group for r in [*resources.RESOURCES, *custom]):
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(group, custom)}


def resource_list(group: str, version: str, custom=()) -> dict | None:
    """/api/v1 or /apis/G/V: APIResourceList, None when not served."""
    served = _served(group, version, custom)
    if not served:
        return None
    out = []
    for r in served:
        entry = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
                 "verbs": list(r.verbs)}
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        if r.stored:
            entry["storageVersionHash"] = storage_version_hash(r)
        out.append(entry)
        for s in r.subresources:
            sub = {"name": f"{r.plural}/{s.name}", "singularName": "", "namespaced": r.namespaced}
            if s.group or s.version:
                sub["group"], sub["version"] = s.group, s.version
            sub["kind"] = s.kind or r.kind
            sub["verbs"] = list(s.verbs)
            out.append(sub)
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}


def _discovery_resource(r: ResourceInfo) -> dict:
    entry = {"resource": r.plural, "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
             "scope": "Namespaced" if r.namespaced else "Cluster", "singularResource": r.singular,
             "verbs": list(r.verbs)}
    if r.short_names:
        entry["shortNames"] = list(r.short_names)
    if r.categories:
        entry["categories"] = list(r.categories)
    if r.subresources:
        entry["subresources"] = [
            {"subresource": s.name,
             "responseKind": {"group": s.group if s.version else r.group, "version": s.version or r.version,
                              "kind": s.kind or r.kind},
             "verbs": list(s.verbs)}
            for s in r.subresources]
    return entry


def aggregated(core: bool, version: str = "v2", custom=()) -> dict:
    """Aggregated discovery (APIGroupDiscoveryList) for /api (core=True) or /apis."""
    items = []
    for g, v in group_versions(custom):
        if (g == "") != core:
            continue
        item = next((i for i in items if i["metadata"].get("name", "") == g), None)
        if item is None:
            item = {"metadata": {"name": g, "creationTimestamp": None} if g else {"creationTimestamp": None},
                    "versions": []}
            items.append(item)
        item["versions"].append({"version": v, "resources": [_discovery_resource(r) for r in _served(g, v, custom)],
                                 "freshness": "Current"})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}",
            "metadata": {}, "items": items}


def negotiate_aggregated(accept: str) -> str | None:
    """The aggregated-discovery version ("v2"/"v2beta1") the Accept header prefers, or None for the legacy form."""
    for part in (accept or "").split(","):
        params = {}
        pieces = [p.strip() for p in part.split(";")]
        if pieces[0] not in ("application/json", "*/*"):
            continue
        for p in pieces[1:]:
            k, _, v = p.partition("=")
            params[k.strip()] = v.strip()
        if params.get("g") == "apidiscovery.k8s.io" and params.get("as") == "APIGroupDiscoveryList":
            if params.get("v") in AGGREGATED:
                return params["v"]
        elif pieces[0] == "application/json" and not params.get("as"):
            return None
    return None
