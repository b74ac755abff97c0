"""Custom resources: what apiextensions-apiserver does with a CustomResourceDefinition.

The CRD kind itself (apiextensions.k8s.io/v1 customresourcedefinitions: defaults,
validation, status reset) is in resources.py like every built-in kind. This module:
- `Registry(store)`: the custom resources served, one `ResourceInfo` a served
  version of each CRD whose names are accepted (kept current from a watch on
  the CRDs, so any writer and a restart are seen);
- `Served`: one served version's strategy (customResourceStrategy: status reset
  on create and kept on update with a status subresource, generation counting
  every change but metadata's), validation against its openAPIV3Schema (types,
  required, enum, nullable, int-or-string), structural pruning of unknown fields
  (reported for fieldValidation) and defaults, the scale subresource, and the
  Table of its additionalPrinterColumns;
- `accept_names(store, name)`: the NamingConditionController's and the
  EstablishingController's writes (acceptedNames, NamesAccepted, Established);
- `mark_deleted(crd)` and `finalize(store, registry, name)`: the CRD REST's
  delete (customresourcecleanup finalizer, Terminating condition) and the
  CRDFinalizer (every custom resource deleted, then the finalizer removed).

Left out: conversion webhooks (versions differ in apiVersion only, strategy
None), CEL validation rules,
formats, maxLength, maxItems, uniqueItems, multipleOf, min/maxProperties, selectableFields,
OpenAPI v2 of custom resources."""

from __future__ import annotations

import copy
import json
import queue
import re
import threading
import time
from typing import Any

from emu.apiserver import errors, resources, storage, tables
from emu.apiserver.resources import ResourceInfo, Subresource

CRD_KEY = "customresourcedefinitions.apiextensions.k8s.io"
CRD_INFO = resources.lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
_ROOT_FIELDS = ("apiVersion", "kind", "metadata")


# ---------------------------------------------------------------- conditions

def condition(crd: dict, kind: str) -> dict | None:
    for c in ((crd.get("status") or {}).get("conditions") or []):
        if isinstance(c, dict) and c.get("type") == kind:
            return c
    return None


def condition_true(crd: dict, kind: str) -> bool:
    c = condition(crd, kind)
    return c is not None and c.get("status") == "True"


def set_condition(crd: dict, kind: str, status: str, reason: str, message: str) -> None:
    """SetCRDCondition: lastTransitionTime moves only when the status does."""
    conds = crd.setdefault("status", {}).setdefault("conditions", [])
    old = condition(crd, kind)
    new = {"type": kind, "status": status, "lastTransitionTime": storage.now_rfc3339(), "reason": reason,
           "message": message}
    if old is None:
        conds.append(new)
        return
    if old.get("status") == status:
        new["lastTransitionTime"] = old.get("lastTransitionTime")
    old.clear()
    old.update(new)


def terminating(crd: dict) -> bool:
    return bool((crd.get("metadata") or {}).get("deletionTimestamp")) or condition_true(crd, "Terminating")


# ---------------------------------------------------------------- one served version

def _json_type(value: Any) -> str:
    """The type name go-openapi's validator reports for a decoded JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_type(value: Any, want: str) -> bool:
    got = _json_type(value)
    return got == want or (want == "number" and got == "integer")


def _type_invalid(path: str, value: Any, want: str) -> dict:
    got = _json_type(value)
    return {"reason": "FieldValueTypeInvalid", "field": path,
            "message": f"Invalid value: {json.dumps(got)}: {path} in body must be of type {want}: {json.dumps(got)}"}


def schema_causes(schema: dict, value: Any, path: str) -> list[dict]:
    """Field causes of `value` against a structural schema, as apiextensions reports
    kube-openapi's errors: TypeInvalid, Required, NotSupported (enum), Invalid (minimum,
    maximum, minLength, pattern, minItems)."""
    causes: list[dict] = []
    _check(schema, value, path, causes)
    return causes


def _check(schema: Any, value: Any, path: str, causes: list[dict]) -> None:
    if not isinstance(schema, dict):
        return
    if value is None:
        if not schema.get("nullable") and schema.get("type"):
            causes.append(_type_invalid(path, value, schema["type"]))
        return
    if schema.get("x-kubernetes-int-or-string"):
        if _json_type(value) not in ("integer", "string"):
            causes.append(_type_invalid(path, value, "integer,string"))
        return
    want = schema.get("type")
    if want and not _is_type(value, want):
        causes.append(_type_invalid(path, value, want))
        return
    if "enum" in schema and isinstance(schema["enum"], list) and value not in schema["enum"]:
        supported = [e if isinstance(e, str) else json.dumps(e) for e in schema["enum"]]
        causes.append(resources.not_supported(path, value, supported))
    _bounds(schema, value, path, causes)
    if isinstance(value, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        for name in schema.get("required") or []:
            if name not in value:
                causes.append(resources.required(f"{path}.{name}" if path else name))
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if not path and key in _ROOT_FIELDS:
                continue
            if key in props:
                _check(props[key], item, where, causes)
            elif isinstance(extra, dict):
                _check(extra, item, where, causes)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _check(schema["items"], item, f"{path}[{i}]", causes)


def _number(n: Any) -> str:
    """A number as Go's %v prints a float64 (1, 1.5)."""
    return str(int(n)) if isinstance(n, float) and n.is_integer() else str(n)


def _bounds(schema: dict, value: Any, path: str, causes: list[dict]) -> None:
    """kube-openapi's bounds, worded as its errors (field.Invalid with their text)."""
    def bad(why: str) -> None:
        causes.append(resources.invalid_value(path, value, f"{path} in body {why}"))

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and isinstance(schema.get("minimum"), (int, float)):
        low = schema["minimum"]
        if schema.get("exclusiveMinimum") and value <= low:
            bad(f"should be greater than {_number(low)}")
        elif value < low:
            bad(f"should be greater than or equal to {_number(low)}")
    if number and isinstance(schema.get("maximum"), (int, float)):
        high = schema["maximum"]
        if schema.get("exclusiveMaximum") and value >= high:
            bad(f"should be less than {_number(high)}")
        elif value > high:
            bad(f"should be less than or equal to {_number(high)}")
    if isinstance(value, str):
        if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
            bad(f"should be at least {schema['minLength']} chars long")
        if isinstance(schema.get("pattern"), str):
            try:
                matched = re.search(schema["pattern"], value) is not None
            except re.error:
                matched = True  # a pattern Python cannot read (RE2 syntax): not judged
            if not matched:
                bad(f"should match '{schema['pattern']}'")
    if isinstance(value, list) and isinstance(schema.get("minItems"), int) and len(value) < schema["minItems"]:
        bad(f"should have at least {schema['minItems']} items")


def prune(schema: Any, value: Any, path: str = "", root: bool = True) -> list[str]:
    """Structural pruning: drop (in place) the fields `schema` does not specify, unless
    x-kubernetes-preserve-unknown-fields; the paths dropped, in document order."""
    dropped: list[str] = []
    _prune(schema if isinstance(schema, dict) else {}, value, path, root, dropped)
    return dropped


def _prune(schema: dict, value: Any, path: str, root: bool, dropped: list[str]) -> None:
    if isinstance(value, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        extra = schema.get("additionalProperties")
        keep_all = schema.get("x-kubernetes-preserve-unknown-fields") is True
        embedded = root or schema.get("x-kubernetes-embedded-resource") is True
        for key in list(value):
            where = f"{path}.{key}" if path else key
            if embedded and key in _ROOT_FIELDS:
                continue  # apiVersion, kind and ObjectMeta are the API's, whatever the schema says of them
            if key in props:
                _prune(props[key] if isinstance(props[key], dict) else {}, value[key], where, False, dropped)
            elif isinstance(extra, dict):
                _prune(extra, value[key], where, False, dropped)
            elif extra is True or keep_all:
                continue
            else:
                dropped.append(where)
                del value[key]
    elif isinstance(value, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        if not items and schema.get("x-kubernetes-preserve-unknown-fields") is True:
            return
        for i, item in enumerate(value):
            _prune(items, item, f"{path}[{i}]", False, dropped)


def apply_defaults(schema: Any, value: Any, root: bool = True) -> None:
    """Structural defaulting (in place): a property missing from an object gets its schema's
    `default`, at every level, inside defaults too."""
    if not isinstance(schema, dict):
        return
    if isinstance(value, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        if root:
            props = {k: v for k, v in props.items() if k not in _ROOT_FIELDS}
        for key, sub in props.items():
            if key not in value and isinstance(sub, dict) and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            if key in props:
                apply_defaults(props[key], item, False)
            elif isinstance(schema.get("additionalProperties"), dict):
                apply_defaults(schema["additionalProperties"], item, False)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item, False)


def _has_defaults(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    if "default" in schema:
        return True
    subs = list((schema.get("properties") or {}).values()) if isinstance(schema.get("properties"), dict) else []
    subs += [schema.get("items"), schema.get("additionalProperties")]
    return any(_has_defaults(sub) for sub in subs)


def _jsonpath(obj: Any, path: str) -> tuple[bool, Any]:
    """The value at a simple JSONPath (`.spec.replicas`, `.status.conditions[0].type`,
    `.status.conditions[?(@.type=="Ready")].status`): (found, value)."""
    tokens = re.findall(r"\[\?\(@\.([^=!]+)==[\"']?([^\"'\]]*)[\"']?\)\]|\[(\d+)\]|\.?([^.\[]+)", path.strip())
    for key, want, index, name in tokens:
        if key:
            if not isinstance(obj, list):
                return False, None
            obj = next((x for x in obj if isinstance(x, dict) and str(x.get(key)) == want), None)
            if obj is None:
                return False, None
        elif index:
            if not isinstance(obj, list) or int(index) >= len(obj):
                return False, None
            obj = obj[int(index)]
        else:
            if not isinstance(obj, dict) or name not in obj:
                return False, None
            obj = obj[name]
    return True, obj


def _cell(kind: str, value: Any, now) -> Any:
    """tableconvertor's cell: strings as JSONPath prints them, typed values as such, dates as ages."""
    if value is None:
        return None
    if kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (dict, list)):
            return json.dumps(value, separators=(",", ":"))
        return str(value)
    if kind == "integer":
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == "number":
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if kind == "date":
        return tables._since(value, now) if isinstance(value, str) and tables.parse_time(value) else (
            "<invalid>" if isinstance(value, str) else None)
    return None


class Served:
    """One served version of a CRD: what resources.py's strategy hooks call for its objects."""

    def __init__(self, crd: dict, version: dict):
        spec = crd["spec"]
        names = accepted_names(crd)
        self.crd_name = crd["metadata"]["name"]
        self.group = spec["group"]
        self.version = version["name"]
        self.kind = names["kind"]
        self.list_kind = names.get("listKind") or self.kind + "List"
        storage_version = next((v["name"] for v in spec.get("versions") or [] if v.get("storage")), self.version)
        self.storage_api_version = f"{self.group}/{storage_version}"
        self.api_version = f"{self.group}/{self.version}"
        # objects stored while another version was the storage version keep its apiVersion: with more
        # than one version, every object served is given this one (never the stored text as is)
        self.storage_version = storage_version
        self.schema = (version.get("schema") or {}).get("openAPIV3Schema") or {}
        # defaults are applied when reading too (a default added to the CRD shows on older objects)
        self.defaults = _has_defaults(self.schema)
        self.converts = len(spec.get("versions") or []) > 1 or self.defaults
        subresources = version.get("subresources") or {}
        self.status = isinstance(subresources.get("status"), dict)
        self.scale = subresources.get("scale") if isinstance(subresources.get("scale"), dict) else None
        self.columns = [c for c in version.get("additionalPrinterColumns") or [] if isinstance(c, dict)] or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
             "description": tables._DOC["creationTimestamp"]}]
        self.terminating = terminating(crd)

    # the scale subresource (ScaleREST): replicas and selector at the CRD's paths
    @staticmethod
    def _at(obj: Any, path: str) -> tuple[bool, Any]:
        for part in path.lstrip(".").split("."):
            if not isinstance(obj, dict) or part not in obj:
                return False, None
            obj = obj[part]
        return True, obj

    def scale_of(self, obj: dict) -> dict:
        """autoscaling/v1 Scale of a custom resource (scaleFromCustomResource)."""
        scale = self.scale or {}
        found, spec_replicas = self._at(obj, scale.get("specReplicasPath", ""))
        if not found:
            raise errors.internal(f'the spec replicas field "{scale.get("specReplicasPath", "")}" does not exist')
        _, status_replicas = self._at(obj, scale.get("statusReplicasPath", ""))
        selector = self._at(obj, scale["labelSelectorPath"])[1] if scale.get("labelSelectorPath") else None
        meta = obj.get("metadata") or {}
        out = {"kind": "Scale", "apiVersion": "autoscaling/v1",
               "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                            if k in meta},
               "spec": {"replicas": spec_replicas if isinstance(spec_replicas, int) else 0},
               "status": {"replicas": status_replicas if isinstance(status_replicas, int) else 0}}
        if isinstance(selector, str) and selector:
            out["status"]["selector"] = selector
        return out

    def set_replicas(self, obj: dict, replicas: int) -> None:
        parts = (self.scale or {}).get("specReplicasPath", ".spec.replicas").lstrip(".").split(".")
        for part in parts[:-1]:
            obj = obj.setdefault(part, {})
        obj[parts[-1]] = replicas

    # strategy (customResourceStrategy)
    def prepare_create(self, info: ResourceInfo, obj: dict) -> None:
        if self.status:
            obj.pop("status", None)
        obj.setdefault("metadata", {})["generation"] = 1

    def prepare_update(self, info: ResourceInfo, new: dict, old: dict) -> None:
        if self.status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        gen = (old.get("metadata") or {}).get("generation", 1)
        same = {k: v for k, v in new.items() if k != "metadata"} == {k: v for k, v in old.items() if k != "metadata"}
        meta["generation"] = gen if same else gen + 1

    def validate(self, info: ResourceInfo, obj: dict, old: dict | None) -> list[dict]:
        causes = []
        if obj.get("kind") != self.kind:
            causes.append(resources.invalid_value("kind", obj.get("kind"), f"must be {self.kind}"))
        if obj.get("apiVersion") not in (self.api_version, self.storage_api_version):
            causes.append(resources.invalid_value("apiVersion", obj.get("apiVersion"),
                                                  f"must be {self.api_version}"))
        return causes + schema_causes(self.schema, obj, "")

    def unknown_fields(self, obj: dict) -> list[str]:
        """Prune `obj` in place, then default it (as decoding a request does); the paths pruned
        (fieldValidation's unknown fields)."""
        dropped = prune(self.schema, obj)
        apply_defaults(self.schema, obj)
        return dropped

    def to_storage(self, obj: dict) -> dict:
        if self.converts and obj.get("apiVersion") == self.api_version:
            obj["apiVersion"] = self.storage_api_version
        return obj

    def from_storage(self, obj: dict) -> dict:
        if self.defaults:
            obj = copy.deepcopy(obj)
            apply_defaults(self.schema, obj)
        if obj.get("apiVersion") != self.api_version:
            obj = dict(obj)
            obj["apiVersion"] = self.api_version
        return obj

    def table(self, objects: list[dict], include_object: str, resource_version: str = "",
              continue_token: str = "") -> dict:
        """The Table tableconvertor makes: Name, then the additionalPrinterColumns (or Age)."""
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        columns = [dict(tables._NAME)]
        for c in self.columns:
            columns.append({"name": c.get("name", ""), "type": c.get("type", "string"), "format": c.get("format", ""),
                            "description": c.get("description") or "Custom resource definition column (in JSONPath "
                                                                    f"format): {c.get('jsonPath', '')}",
                            "priority": c.get("priority", 0)})
        rows = []
        for obj in objects:
            cells: list[Any] = [(obj.get("metadata") or {}).get("name", "")]
            for c in self.columns:
                found, value = _jsonpath(obj, c.get("jsonPath") or "")
                cells.append(_cell(c.get("type", "string"), value, now) if found else None)
            rows.append(tables.table_row(cells, obj, include_object))
        return tables.table_of(rows, columns, resource_version, continue_token)


def accepted_names(crd: dict) -> dict:
    """The names a CRD is served by: its accepted names (spec.names may ask for others, in conflict)."""
    accepted = (crd.get("status") or {}).get("acceptedNames") or {}
    return accepted if accepted.get("plural") and accepted.get("kind") else (crd.get("spec") or {}).get("names") or {}


def served_infos(crd: dict) -> list[ResourceInfo]:
    """The resources a CRD serves: one a served version, once its names are accepted."""
    if not (condition_true(crd, "NamesAccepted") or condition_true(crd, "Established")):
        return []
    spec = crd.get("spec") or {}
    names = accepted_names(crd)
    out = []
    for v in spec.get("versions") or []:
        if not isinstance(v, dict) or not v.get("served"):
            continue
        served = Served(crd, v)
        subs = (Subresource("status", names["kind"], ("get", "patch", "update")),) if served.status else ()
        if served.scale is not None:
            subs += (Subresource("scale", "Scale", ("get", "patch", "update"), "autoscaling", "v1"),)
        out.append(ResourceInfo(spec["group"], v["name"], names["kind"], names["plural"], names.get("singular", ""),
                                spec.get("scope") == "Namespaced", tuple(names.get("shortNames") or ()),
                                categories=tuple(names.get("categories") or ()), subresources=subs, generation=True,
                                custom=served))
    return out


_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(name: str) -> tuple:
    """Kubernetes' version order (v2 > v1 > v1beta2 > v1beta1 > v1alpha1 > others by name): a sort key."""
    m = _VERSION.match(name)
    if not m:
        return (3, 0, 0, name)
    major, stage, minor = int(m.group(1)), m.group(2), int(m.group(3) or 0)
    return ({None: 0, "beta": 1, "alpha": 2}[stage], -major, -minor, name)


class Registry:
    """The custom resources served by one store, kept current from a watch on the CRDs."""

    def __init__(self, store: storage.Store):
        self.store = store
        self._lock = threading.Lock()
        self._crds: dict[str, dict] = {}
        self._infos: list[ResourceInfo] = []
        self._by_path: dict[tuple[str, str, str], ResourceInfo] = {}
        self._watcher = store.watch(CRD_KEY)  # first an ADDED for every stored CRD
        self._refresh()

    def _refresh(self) -> None:
        with self._lock:
            changed = False
            while True:
                try:
                    etype, body, _ = self._watcher.events.get_nowait()
                except queue.Empty:
                    break
                obj = json.loads(body)
                name = obj["metadata"]["name"]
                if etype == "DELETED":
                    self._crds.pop(name, None)
                else:
                    self._crds[name] = obj
                changed = True
            if changed:
                infos: list[ResourceInfo] = []
                for name in sorted(self._crds):
                    try:
                        infos += served_infos(self._crds[name])
                    except (KeyError, TypeError, AttributeError):
                        continue  # a CRD the validation let through that cannot be served
                infos.sort(key=lambda r: (r.group, version_priority(r.version), r.plural))
                self._infos = infos
                self._by_path = {(r.group, r.version, r.plural): r for r in infos}

    def resources(self) -> list[ResourceInfo]:
        self._refresh()
        return self._infos

    def lookup(self, group: str, version: str, plural: str) -> ResourceInfo | None:
        self._refresh()
        return self._by_path.get((group, version, plural))

    def crds(self) -> list[dict]:
        self._refresh()
        with self._lock:
            return list(self._crds.values())


# ---------------------------------------------------------------- the CRD controllers

def _accepted(crd: dict, others: list[dict]) -> tuple[dict, tuple[str, str, str]]:
    """NamingConditionController.calculateNamesAndConditions: the accepted names and NamesAccepted."""
    spec = crd.get("spec") or {}
    group = spec.get("group")
    used_resources, used_kinds = set(), set()
    for other in others:
        if (other.get("spec") or {}).get("group") != group:
            continue
        a = (other.get("status") or {}).get("acceptedNames") or {}
        used_resources.update([a.get("plural"), a.get("singular"), *(a.get("shortNames") or [])])
        used_kinds.update([a.get("kind"), a.get("listKind")])
    used_resources.discard(None)
    used_kinds.discard(None)
    requested = spec.get("names") or {}
    accepted = dict((crd.get("status") or {}).get("acceptedNames") or {})
    new = dict(accepted)
    verdict = ("True", "NoConflicts", "no conflicts found")

    def fresh(want: Any, have: Any, used: set) -> str:
        return "" if want == have or want not in used else f"{json.dumps(want)} is already in use"

    for field, used, reason in (("plural", used_resources, "PluralConflict"),
                                ("singular", used_resources, "SingularConflict")):
        problem = fresh(requested.get(field), accepted.get(field), used)
        if problem:
            verdict = ("False", reason, problem)
        elif requested.get(field) is not None:
            new[field] = requested.get(field)
    if (requested.get("shortNames") or []) != (accepted.get("shortNames") or []):
        mine = set(accepted.get("shortNames") or [])
        problems = [fresh(s, "", used_resources) for s in requested.get("shortNames") or [] if s not in mine]
        problems = [p for p in problems if p]
        if problems:
            verdict = ("False", "ShortNamesConflict", problems[0] if len(problems) == 1
                       else "[" + ", ".join(problems) + "]")
        elif requested.get("shortNames"):
            new["shortNames"] = list(requested["shortNames"])
        else:
            new.pop("shortNames", None)
    for field, reason in (("kind", "KindConflict"), ("listKind", "ListKindConflict")):
        problem = fresh(requested.get(field), accepted.get(field), used_kinds)
        if problem:
            verdict = ("False", reason, problem)
        elif requested.get(field) is not None:
            new[field] = requested.get(field)
    if requested.get("categories"):
        new["categories"] = list(requested["categories"])
    else:
        new.pop("categories", None)
    order = ("plural", "singular", "shortNames", "kind", "listKind", "categories")
    return {k: new[k] for k in order if k in new}, verdict


def _status_write(old: dict, new: dict) -> dict:
    """`new` with managedFields recording kube-apiserver's write to /status (its controllers' writes)."""
    try:
        from emu.apiserver import patch
    except ImportError:  # patch.py needs python3-jsonpatch: without it, no managedFields
        return new
    return patch.update_managed_fields(old, new, "kube-apiserver", None, subresource="status")


def accept_names(store: storage.Store, name: str) -> None:
    """The naming controller's status write (acceptedNames, NamesAccepted, Established
    False "Installing"), then the establishing controller's (Established True)."""
    def naming(current: dict | None):
        if current is None:
            return None
        spec_names = (current.get("spec") or {}).get("names") or {}
        if spec_names == (current.get("status") or {}).get("acceptedNames"):
            return None
        others = [c for c in store.list_objects(CRD_KEY) if c["metadata"]["name"] != name]
        names, (status, reason, message) = _accepted(current, others)
        old = copy.deepcopy(current)
        before = copy.deepcopy(current.get("status"))
        current.setdefault("status", {})["acceptedNames"] = names
        set_condition(current, "NamesAccepted", status, reason, message)
        established = condition(current, "Established")
        if established is None:
            set_condition(current, "Established", "False", "NotAccepted", "not all names are accepted")
        if not condition_true(current, "Established") and status == "True":
            set_condition(current, "Established", "False", "Installing", "the initial names have been accepted")
        return None if current.get("status") == before else _status_write(old, current)

    def establishing(current: dict | None):
        if current is None or not condition_true(current, "NamesAccepted") or condition_true(current, "Established"):
            return None
        old = copy.deepcopy(current)
        set_condition(current, "Established", "True", "InitialNamesAccepted", "the initial names have been accepted")
        return _status_write(old, current)

    for step in (naming, establishing):
        store.write(CRD_KEY, "", name, step, CRD_INFO.field_values)


def accept_all(store: storage.Store) -> None:
    """Names for every CRD not yet accepted (at start, and when a CRD goes and frees names)."""
    for crd in store.list_objects(CRD_KEY):
        if not crd["metadata"].get("deletionTimestamp"):
            accept_names(store, crd["metadata"]["name"])


def mark_deleted(current: dict) -> dict | None:
    """The first DELETE of a CRD: deletionTimestamp, the cleanup finalizer, Terminating."""
    meta = current.setdefault("metadata", {})
    if meta.get("deletionTimestamp"):
        return storage.mark_deleted(current)  # type: ignore[return-value]
    meta["deletionTimestamp"] = storage.now_rfc3339()
    meta["deletionGracePeriodSeconds"] = 0
    fins = meta.setdefault("finalizers", [])
    if FINALIZER not in fins:
        fins.append(FINALIZER)
    if meta.get("generation"):
        meta["generation"] += 1
    set_condition(current, "Terminating", "True", "InstanceDeletionPending",
                  "CustomResourceDefinition marked for deletion; CustomResource deletion will begin soon")
    return current


def finalize(store: storage.Store, name: str, stopping: threading.Event | None = None, pause: float = 0.2) -> None:
    """The CRDFinalizer: delete every custom resource of a terminating CRD, then drop the finalizer."""
    crd = store.get(CRD_KEY, "", name)
    if crd is None or not crd["metadata"].get("deletionTimestamp") or FINALIZER not in (
            crd["metadata"].get("finalizers") or []):
        return
    group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
    key = f"{plural}.{group}"

    def status(kind_status: str, reason: str, message: str):
        def fn(current):
            if current is None:
                return None
            old = copy.deepcopy(current)
            set_condition(current, "Terminating", kind_status, reason, message)
            return _status_write(old, current)
        return fn

    progress = status("True", "InstanceDeletionInProgress", "CustomResource deletion is in progress")
    store.write(CRD_KEY, "", name, progress, CRD_INFO.field_values)
    if condition_true(crd, "Established"):
        while True:
            left = store.list_objects(key)
            if not left:
                break
            for obj in left:
                try:
                    store.delete(key, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
                except errors.ApiError:
                    pass
            if stopping is not None and stopping.is_set():
                return
            if store.list_objects(key):
                time.sleep(pause)  # custom resources with finalizers of their own: wait for them
        done = status("False", "InstanceDeletionCompleted", "removed all instances")
    else:
        done = status("False", "NeverEstablished", "resource was never established")

    def release(current):
        current = done(current)
        if current is None:
            return None
        meta = current["metadata"]
        meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
        return current

    store.write(CRD_KEY, "", name, release, CRD_INFO.field_values)


# ---------------------------------------------------------------- OpenAPI v3 of custom resources

_META = "io.k8s.apimachinery.pkg.apis.meta.v1."
_REF = "#/components/schemas/"
_API_VERSION_DOC = ("APIVersion defines the versioned schema of this representation of an object. Servers should "
                    "convert recognized schemas to the latest internal value, and may reject unrecognized values. "
                    "More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"
                    "#resources")
_KIND_DOC = ("Kind is a string value representing the REST resource this object represents. Servers may infer this "
             "from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: "
             "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds")
_METADATA_DOC = ("Standard object's metadata. More info: "
                 "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata")
_LIST_METADATA_DOC = ("Standard list metadata. More info: "
                      "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds")


def schema_name(group: str, version: str, kind: str) -> str:
    """The definition name the OpenAPI builder gives a custom kind: the group reversed (`com.example.v1.Widget`)."""
    return ".".join([*reversed(group.split(".")), version, kind])


def _refs(value: Any, found: set[str]) -> None:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF):
            found.add(ref[len(_REF):])
        for v in value.values():
            _refs(v, found)
    elif isinstance(value, list):
        for v in value:
            _refs(v, found)


def openapi_v3(infos: list[ResourceInfo], template: dict) -> dict:
    """/openapi/v3/apis/GROUP/VERSION for custom resources, as the CRD OpenAPI builder makes it:
    each kind's schema (its openAPIV3Schema with apiVersion, kind and metadata), its list, and the
    paths with their operations (PATCH with fieldValidation and no strategic merge patch), so that
    `kubectl explain` reads them and kubectl leaves field validation to the server. The meta.k8s.io
    schemas they refer to are taken from `template` (a built-in group-version document)."""
    schemas: dict[str, dict] = {}
    paths: dict[str, dict] = {}
    for r in infos:
        gvk = {"group": r.group, "kind": r.kind, "version": r.version}
        name = schema_name(r.group, r.version, r.kind)
        schema = copy.deepcopy(r.custom.schema) if isinstance(r.custom.schema, dict) else {}
        props = schema.setdefault("properties", {})
        props["apiVersion"] = {"description": _API_VERSION_DOC, "type": "string"}
        props["kind"] = {"description": _KIND_DOC, "type": "string"}
        props["metadata"] = {"allOf": [{"$ref": _REF + _META + "ObjectMeta"}], "description": _METADATA_DOC}
        schema["properties"] = dict(sorted(props.items()))
        schema.setdefault("type", "object")
        schema["x-kubernetes-group-version-kind"] = [gvk]
        schemas[name] = schema
        list_kind = r.custom.list_kind
        schemas[schema_name(r.group, r.version, list_kind)] = {
            "description": f"{list_kind} is a list of {r.kind}", "type": "object", "required": ["items"],
            "properties": {"apiVersion": {"description": _API_VERSION_DOC, "type": "string"},
                           "items": {"description": f"List of {r.plural}. More info: https://git.k8s.io/community/"
                                                    "contributors/devel/sig-architecture/api-conventions.md",
                                     "type": "array", "items": {"$ref": _REF + name}},
                           "kind": {"description": _KIND_DOC, "type": "string"},
                           "metadata": {"allOf": [{"$ref": _REF + _META + "ListMeta"}],
                                        "description": _LIST_METADATA_DOC}},
            "x-kubernetes-group-version-kind": [dict(gvk, kind=list_kind)]}
        base = f"/apis/{r.group}/{r.version}" + ("/namespaces/{namespace}" if r.namespaced else "")
        one = {"application/json": {"schema": {"$ref": _REF + name}},
               "application/yaml": {"schema": {"$ref": _REF + name}}}
        tag = f"{r.group.replace('.', '')}_{r.version}"

        def op(action: str, description: str, body: dict | None = None, params: tuple = (),
               content: dict = one) -> dict:
            out = {"description": description, "operationId": f"{action}{r.kind}", "tags": [tag],
                   "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk,
                   "parameters": [{"in": "query", "name": p, "schema": {"type": "string", "uniqueItems": True}}
                                  for p in params],
                   "responses": {"200": {"description": "OK", "content": content},
                                 "401": {"description": "Unauthorized"}}}
            if body is not None:
                out["requestBody"] = {"content": body, "required": True}
            return out

        patch_body = {t: {"schema": {"$ref": _REF + _META + "Patch"}} for t in (
            "application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")}
        writes = ("dryRun", "fieldManager", "fieldValidation")
        paths[f"{base}/{r.plural}"] = {
            "get": op("list", f"list objects of kind {r.kind}", params=("labelSelector", "fieldSelector", "limit"),
                      content={"application/json": {"schema": {"$ref": _REF + schema_name(r.group, r.version,
                                                                                            list_kind)}}}),
            "post": op("post", f"create a {r.kind}", one, writes)}
        paths[f"{base}/{r.plural}/{{name}}"] = {
            "get": op("get", f"read the specified {r.kind}"),
            "put": op("put", f"replace the specified {r.kind}", one, writes),
            "patch": op("patch", f"partially update the specified {r.kind}", patch_body, (*writes, "force")),
            "delete": op("delete", f"delete a {r.kind}", params=("dryRun", "gracePeriodSeconds",
                                                                 "propagationPolicy"))}
        if r.subresource("status") is not None:
            paths[f"{base}/{r.plural}/{{name}}/status"] = {
                "get": op("get", f"read status of the specified {r.kind}"),
                "put": op("put", f"replace status of the specified {r.kind}", one, writes),
                "patch": op("patch", f"partially update status of the specified {r.kind}", patch_body,
                            (*writes, "force"))}
    known = template.get("components", {}).get("schemas", {})
    wanted: set[str] = set()
    _refs(schemas, wanted)
    _refs(paths, wanted)
    while True:
        new = [n for n in sorted(wanted) if n in known and n not in schemas]
        if not new:
            break
        for name in new:
            schemas[name] = known[name]
            _refs(known[name], wanted)
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
            "paths": paths, "components": {"schemas": dict(sorted(schemas.items()))}}
