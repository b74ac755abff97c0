"""Patches as kube-apiserver applies them (docs/apiserver.md, issue 21).

- application/json-patch+json: RFC 6902, through the `jsonpatch` library
  (Debian's python3-jsonpatch in the node image);
- application/merge-patch+json: RFC 7386;
- application/strategic-merge-patch+json: Kubernetes' strategic merge patch,
  with the semantics of k8s.io/apimachinery/pkg/util/strategicpatch when it
  applies a patch (lists merged by their merge key, primitive lists with the
  merge strategy unioned, `$patch`, `$retainKeys`,
  `$deleteFromPrimitiveList/<field>`, `$setElementOrder/<field>`, null
  deletes a key);
- application/apply-patch+yaml: server-side apply (`server_side_apply`), with
  `metadata.managedFields` and conflicts between field managers.

Errors are `PatchError`s carrying the code, reason and message kube-apiserver
answers with, so the server turns them into the same `Status`.

Pure functions, standard library plus `jsonpatch`; nothing here touches the
store.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

import jsonpatch

from emu.apiserver.errors import ApiError

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# kube-apiserver's order in its 415 answers: built-in kinds, then custom
# resources (which have no strategic merge patch).
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)
PATCH_TYPES_WITHOUT_SCHEMA = (JSON_PATCH, MERGE_PATCH, APPLY_PATCH)

# kube-apiserver refuses JSON patches with more operations than this.
MAX_JSON_PATCH_OPERATIONS = 10000

_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList"
_SET_ELEMENT_ORDER = "$setElementOrder"

# The generic message NewGenericServerResponse gives a 422: kube-apiserver
# drops the JSON patch library's own text.
_INVALID_MESSAGE = "the server rejected our request due to an error in our request"


class PatchSchema(Protocol):
    """What a patch needs to know of a kind's fields (openapi.py provides it).

    field(name) -> (schema of the field's value or of its list items, None
    for a primitive or a free-form map; patch strategy "" | "merge" |
    "replace" | "retainKeys" | "merge,retainKeys"; merge key or "")."""

    def field(self, name: str) -> tuple[PatchSchema | None, str, str]: ...


class PatchError(ApiError):
    """A patch kube-apiserver would refuse: code, reason and message of its Status.

    code 400 BadRequest, 409 Conflict (server-side apply), 413, 415
    UnsupportedMediaType, 422 Invalid, or 500 where kube-apiserver itself
    answers 500 (some malformed strategic merge patches). An ApiError, so the
    server answers it as it answers its own errors."""

    _REASONS: ClassVar[dict[int, str]] = {400: "BadRequest", 409: "Conflict", 413: "RequestEntityTooLarge",
                415: "UnsupportedMediaType", 422: "Invalid", 500: ""}

    def __init__(self, message: str, code: int = 422, reason: str | None = None,
                 causes: list[dict] | None = None):
        reason = self._REASONS.get(code, "") if reason is None else reason
        super().__init__(code, reason, message, {"causes": causes} if causes else None)
        self.causes = causes or []

    def status(self) -> dict:
        """The v1 Status object kube-apiserver sends for this error (no reason when it has none)."""
        status = super().status()
        if not self.reason:
            status.pop("reason", None)
        return status


def _media_type(content_type: str) -> str:
    # kube-apiserver ignores parameters such as "; charset=utf-8".
    return content_type.split(";", 1)[0].strip()


def unsupported_media_type(accepted: tuple[str, ...]) -> PatchError:
    """The 415 kube-apiserver answers for a Content-Type it does not take for PATCH."""
    return PatchError(
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(accepted), 415)


def apply_patch(content_type: str, current: dict, patch_body: bytes,
                schema: PatchSchema | None, *, manager: str | None = None, force: bool = False,
                now: datetime | None = None) -> dict:
    """The object `current` becomes under a JSON, merge or strategic merge patch,
    or a server-side apply (application/apply-patch+yaml).

    `schema` is the kind's PatchSchema, None for a kind without one (then a
    strategic merge patch is refused with 415, as for custom resources).
    For an apply, `manager` (the request's fieldManager) and `force` go to
    `server_side_apply`; without a manager the applied object is only merged
    in (no ownership, no conflicts). `current` is not modified. Raises PatchError."""
    media = _media_type(content_type)
    accepted = PATCH_TYPES if schema is not None else PATCH_TYPES_WITHOUT_SCHEMA
    if media not in accepted:
        raise unsupported_media_type(accepted)
    if media == APPLY_PATCH:
        applied = decode_apply_body(patch_body)
        if manager:
            return server_side_apply(current, applied, manager, force, schema, now=now)
        _check_applied(applied)
        return _apply_merge(copy.deepcopy(current), applied, schema)
    try:
        patch = json.loads(patch_body)
    except (ValueError, UnicodeDecodeError):
        raise PatchError("invalid JSON patch", 400) from None
    if media == JSON_PATCH:
        return _json_patch(current, patch)
    if media == MERGE_PATCH:
        if not isinstance(patch, dict):
            raise PatchError("Invalid JSON Patch", 400)
        result = merge_patch(current, patch)
        if not isinstance(result, dict):
            raise PatchError(_INVALID_MESSAGE, 422)
        return result
    if not isinstance(patch, dict):
        raise PatchError(f"json: cannot unmarshal {_json_kind(patch)} into Go value of type "
                         "map[string]interface {}", 400)
    return strategic_merge_patch(current, patch, schema)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "object"


def _json_patch(current: dict, patch: Any) -> dict:
    if not isinstance(patch, list):
        raise PatchError(f"json: cannot unmarshal {_json_kind(patch)} into Go value of type "
                         "jsonpatch.Patch", 400)
    for op in patch:
        if not isinstance(op, dict):
            raise PatchError(f"json: cannot unmarshal {_json_kind(op)} into Go value of type "
                             "jsonpatch.Operation", 400)
    if len(patch) > MAX_JSON_PATCH_OPERATIONS:
        raise PatchError("Request entity too large: The allowed maximum operations in a JSON "
                         f"patch is {MAX_JSON_PATCH_OPERATIONS}, got {len(patch)}", 413)
    try:
        result = jsonpatch.JsonPatch(patch).apply(current, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError,
            IndexError, TypeError, ValueError):
        # A failed test, a missing path, an unknown op: kube-apiserver answers
        # 422 with its generic text whatever the library said.
        raise PatchError(_INVALID_MESSAGE, 422) from None
    if not isinstance(result, dict):
        raise PatchError(_INVALID_MESSAGE, 422)
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ---------------------------------------------------------------------------
# Strategic merge patch


def strategic_merge_patch(current: dict, patch: dict, schema: PatchSchema | None) -> dict:
    """`current` with the strategic merge patch `patch` applied (neither is modified).

    schema None means the kind has no patch metadata: refused with 415 as
    kube-apiserver refuses it for custom resources."""
    if schema is None:
        raise unsupported_media_type(PATCH_TYPES_WITHOUT_SCHEMA)
    result = _merge_map(copy.deepcopy(current), copy.deepcopy(patch), schema)
    # kube-apiserver decodes the result into the typed object, which drops
    # directives left inside new subtrees and null values; do the same.
    return _clean(result)


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if item is None or _is_directive_key(key):
                continue
            out[key] = _clean(item)
        return out
    if isinstance(value, list):
        return [_clean(item) for item in value]
    return value


def _is_directive_key(key: str) -> bool:
    return key in (_DIRECTIVE, _RETAIN_KEYS) or key.startswith(
        (_DELETE_FROM_PRIMITIVE_LIST + "/", _SET_ELEMENT_ORDER + "/"))


def _lookup(schema: PatchSchema | None, key: str) -> tuple[PatchSchema | None, str, str]:
    """(sub-schema, strategy without retainKeys, merge key) of a field."""
    if schema is None:
        return None, "", ""
    sub, strategy, merge_key = schema.field(key)
    strategies = [s for s in strategy.split(",") if s] if strategy else []
    others = [s for s in strategies if s != "retainKeys"]
    if len(strategies) > 2 or len(others) > 1:
        raise PatchError(f"unexpected patch strategy: [{' '.join(strategies)}]", 500)
    return sub, (others[0] if others else ""), merge_key or ""


def _go(value: Any) -> str:
    """A value as Go's %v prints decoded JSON (for error texts kube-apiserver writes)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_go(v) for v in value) + "]"
    return str(value)


def _go_type(value: Any) -> str:
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (int, float)):
        return "float64"
    return "<nil>"


def _kind(value: Any) -> str:
    """JSON kind of a value: the types strategicpatch compares with reflect."""
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list):
        return "slice"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "nil"


def _same(a: Any, b: Any) -> bool:
    """Go's == on decoded JSON scalars (a bool never equals a number)."""
    return _kind(a) == _kind(b) and a == b


def _no_merge_key(item: Any, merge_key: str) -> PatchError:
    return PatchError(f"map: {_go(item)} does not contain declared merge key: {merge_key}", 500)


def _bad_arg(expected: str, value: Any) -> PatchError:
    return PatchError(f"expected a {expected}, but received a {_go_type(value)}", 500)


def _extract_key(key: str, prefix: str) -> str:
    head, sep, tail = key.partition("/")
    if not sep or head != prefix:
        if prefix == _DELETE_FROM_PRIMITIVE_LIST:
            raise PatchError("invalid patch format of primitive list", 400)
        raise PatchError("invalid patch format of setElementOrder list", 400)
    return tail


def _remove_directives(value: Any) -> tuple[Any, bool]:
    """value without `$patch` maps; False when value itself is one (drop it)."""
    if isinstance(value, dict):
        if _DIRECTIVE in value:
            return None, False
        out = {}
        for key, item in value.items():
            item, keep = _remove_directives(item)
            if keep:
                out[key] = item
        return out, True
    if isinstance(value, list):
        out_list = []
        for item in value:
            item, keep = _remove_directives(item)
            if keep:
                out_list.append(item)
        return out_list, True
    return value, True


def _discard_nulls(value: Any) -> None:
    if isinstance(value, dict):
        for key in [k for k, v in value.items() if v is None]:
            del value[key]
        for item in value.values():
            _discard_nulls(item)
    elif isinstance(value, list):
        for item in value:
            _discard_nulls(item)


def _merge_map(original: dict | None, patch: dict, schema: PatchSchema | None) -> dict:
    if _DIRECTIVE in patch:
        directive = patch[_DIRECTIVE]
        if directive == "replace":
            del patch[_DIRECTIVE]
            return patch
        if directive == "delete":
            return {}
        raise PatchError(f"unknown patch type: {_go(directive)} in map: {_go(patch)}", 500)
    if original is None:
        original = {}
    _apply_retain_keys(original, patch)
    _merge_element_order(original, patch, schema)

    for key, patch_value in list(patch.items()):
        is_delete_list = False
        if key.startswith(_DELETE_FROM_PRIMITIVE_LIST):
            key = _extract_key(key, _DELETE_FROM_PRIMITIVE_LIST)
            is_delete_list = True
        if patch_value is None:
            original.pop(key, None)
            continue
        if key not in original or _kind(original[key]) != _kind(patch_value):
            if not is_delete_list:
                _discard_nulls(patch_value)
                value, keep = _remove_directives(patch_value)
                if keep:
                    original[key] = value
                else:
                    original.pop(key, None)
            continue
        kind = _kind(patch_value)
        if kind == "map":
            sub, strategy, _ = _lookup(schema, key)
            if strategy == "replace":
                original[key] = patch_value
            else:
                original[key] = _merge_map(original[key], patch_value, sub)
        elif kind == "slice":
            sub, strategy, merge_key = _lookup(schema, key)
            original[key] = _merge_list_field(original[key], patch_value, sub, strategy,
                                              merge_key, is_delete_list)
        else:
            value, keep = _remove_directives(patch_value)
            if keep:
                original[key] = value
            else:
                original.pop(key, None)
    return original


def _merge_list_field(original: Any, patch: Any, schema: PatchSchema | None, strategy: str,
                      merge_key: str, is_delete_list: bool) -> list:
    if not isinstance(original, list):
        raise _bad_arg("[]interface {}", original)
    if not isinstance(patch, list):
        raise _bad_arg("[]interface {}", patch)
    # Deletion lists act the same whatever the field's strategy.
    if strategy == "merge" or is_delete_list:
        return _merge_list(original, patch, schema, merge_key, is_delete_list)
    return patch


def _apply_retain_keys(original: dict, patch: dict) -> None:
    if _RETAIN_KEYS not in patch:
        return
    retain = patch.pop(_RETAIN_KEYS)
    if not isinstance(retain, list):
        raise PatchError("invalid patch format of retainKeys", 400)
    keep = {k for k in retain if isinstance(k, str)}
    for key, value in patch.items():
        if value is None or key.startswith((_DELETE_FROM_PRIMITIVE_LIST, _SET_ELEMENT_ORDER)):
            continue
        if key not in keep:
            raise PatchError("invalid patch format of retainKeys", 400)
    for key in [k for k in original if k not in keep]:
        del original[key]


def _elements_kind(*lists: list) -> str:
    kind = ""
    for items in lists:
        for item in items:
            item_kind = _kind(item)
            if not kind:
                if item_kind == "slice":
                    # ErrNoListOfLists: kube-apiserver answers 422 with its generic text.
                    raise PatchError(_INVALID_MESSAGE, 422)
                kind = item_kind
            elif item_kind != kind:
                raise PatchError("list element types are not identical: "
                                 + _go(list(lists)), 500)
    if not kind:
        raise PatchError("no elements in any of the given slices", 500)
    return kind


def _merge_list(original: list, patch: list, schema: PatchSchema | None, merge_key: str,
                is_delete_list: bool) -> list:
    if not original and not patch:
        return original
    kind = _elements_kind(original, patch)
    if kind != "map":
        if is_delete_list:
            return [item for item in original if not any(_same(item, d) for d in patch)]
        merged: list = []
        for item in original + patch:
            if not any(_same(item, m) for m in merged):
                merged.append(item)
        patch_items = [m for m in merged if any(_same(m, p) for p in patch)]
        server_only = [m for m in merged if not any(_same(m, p) for p in patch)]
        return _normalize_order(patch_items, server_only, patch, original, "", kind)

    if not merge_key:
        name = getattr(schema, "name", "") if schema is not None else ""
        raise PatchError(f"cannot merge lists without merge key for {name}", 500)
    slice_ = _GoSlice(original)
    patch = _merge_special_elements(slice_, patch, merge_key)
    live_order = slice_.items()
    _merge_keyed(slice_, patch, merge_key, schema)
    merged = slice_.items()
    patch_items, server_only = _partition_maps(merged, patch, merge_key)
    return _normalize_order(patch_items, server_only, patch, live_order, merge_key, kind)


class _GoSlice:
    """A Go slice over the caller's list, to order items as strategicpatch does.

    strategicpatch deletes items by shifting them down inside the live list's
    array and appends new ones into the slots that frees; the caller then
    orders by what that array holds. The list object passed in plays the
    array (its length never changes until an append outgrows it, when the
    slice moves to a new list, as Go's append reallocates)."""

    def __init__(self, array: list):
        self.array = array
        self.length = len(array)

    def items(self) -> list:
        return self.array[:self.length]

    def delete(self, index: int) -> None:
        self.array[index:self.length - 1] = self.array[index + 1:self.length]
        self.length -= 1

    def append(self, item: Any) -> None:
        if self.length < len(self.array):
            self.array[self.length] = item
        else:
            self.array = self.array[:self.length] + [item]
        self.length += 1

    def replace_with(self, items: list) -> None:
        self.array = list(items)
        self.length = len(items)


def _merge_special_elements(slice_: _GoSlice, patch: list, merge_key: str) -> list:
    """Apply `$patch: delete|replace` elements; returns the patch without them."""
    plain = []
    replace = False
    for item in patch:
        if _DIRECTIVE not in item:
            plain.append(item)
            continue
        directive = item[_DIRECTIVE]
        if directive == "delete":
            if merge_key not in item:
                raise _no_merge_key(item, merge_key)
            while (index := _find(slice_.items(), merge_key, item[merge_key])) >= 0:
                slice_.delete(index)
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise PatchError("merging lists cannot yet be specified in the patch", 500)
        else:
            raise PatchError(f"unknown patch type: {_go(directive)} in map: {_go(item)}", 500)
    if replace:
        slice_.replace_with(plain)
        return []
    return plain


def _matches(item: Any, merge_key: str, value: Any) -> bool:
    if not isinstance(item, dict):
        raise PatchError("value for key is not a map", 500)
    return merge_key in item and _same(item[merge_key], value)


def _find(items: list, merge_key: str, value: Any) -> int:
    for index, item in enumerate(items):
        if _matches(item, merge_key, value):
            return index
    return -1


def _merge_keyed(slice_: _GoSlice, patch: list, merge_key: str,
                 schema: PatchSchema | None) -> None:
    for item in patch:
        if merge_key not in item:
            raise _no_merge_key(item, merge_key)
        index = _find(slice_.items(), merge_key, item[merge_key])
        if index >= 0:
            slice_.array[index] = _merge_map(slice_.array[index], item, schema)
        else:
            slice_.append(item)


def _partition_maps(items: list, by: list, merge_key: str) -> tuple[list, list]:
    inside, outside = [], []
    for item in items:
        if not isinstance(item, dict):
            raise _bad_arg("map[string]interface {}", item)
        if merge_key not in item:
            raise _no_merge_key(item, merge_key)
        (inside if _find(by, merge_key, item[merge_key]) >= 0 else outside).append(item)
    return inside, outside


def _index(items: list, value: Any, merge_key: str, kind: str) -> int:
    def key_of(item: Any) -> Any:
        if kind == "map":
            return item.get(merge_key) if isinstance(item, dict) else None
        return item
    wanted = key_of(value)
    for index, item in enumerate(items):
        if _same(key_of(item), wanted):
            return index
    return -1


def _sort_by_order(items: list, order: list, merge_key: str, kind: str) -> list:
    deleted = []
    if kind == "map":
        for item in items + order:
            if not isinstance(item, dict) or merge_key not in item:
                raise _no_merge_key(item, merge_key)
        deleted = [i for i in items if i.get(_DIRECTIVE) == "delete"]
        items = [i for i in items if i.get(_DIRECTIVE) != "delete"]

    def position(item: Any) -> int:
        found = _index(order, item, merge_key, kind)
        return found if found >= 0 else len(order)
    return sorted(items, key=position) + deleted


def _normalize_order(patch_items: list, server_only: list, patch_order: list,
                     server_order: list, merge_key: str, kind: str) -> list:
    """Patch items in the patch's order, server-only items in the live order,
    interleaved where the live order relates them (strategicpatch's rule:
    an item the live list does not know goes before the remaining live ones)."""
    right = _sort_by_order(patch_items, patch_order, merge_key, kind)
    left = _sort_by_order(server_only, server_order, merge_key, kind)
    out = []
    i = j = 0
    while i < len(left) or j < len(right):
        if j >= len(right):
            out.append(left[i])
            i += 1
        elif i >= len(left):
            out.append(right[j])
            j += 1
        else:
            li = _index(server_order, left[i], merge_key, kind)
            ri = _index(server_order, right[j], merge_key, kind)
            if li >= 0 and ri >= 0 and li < ri:
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                j += 1
    return out


def _merge_element_order(original: dict, patch: dict, schema: PatchSchema | None) -> None:
    """Process `$setElementOrder/<field>` and the list it orders (then drop both from patch)."""
    for key in [k for k in patch if k.startswith(_SET_ELEMENT_ORDER)]:
        order = patch.pop(key)
        if not isinstance(order, list):
            raise _bad_arg("[]interface {}", order)
        field = _extract_key(key, _SET_ELEMENT_ORDER)
        found_original = field in original
        found_patch = field in patch
        original_list = original.get(field)
        patch_list = patch.get(field)
        if found_original and not isinstance(original_list, list):
            raise _bad_arg("[]interface {}", original_list)
        if found_patch and not isinstance(patch_list, list):
            raise _bad_arg("[]interface {}", patch_list)
        sub, strategy, merge_key = _lookup(schema, field)
        _check_order(patch_list or [], order, merge_key)
        if found_original and not found_patch:
            merged = original_list
        elif found_patch and not found_original:
            merged, _ = _remove_directives(patch_list)
        elif found_original and found_patch:
            merged = _merge_list_field(original_list, patch_list, sub, strategy, merge_key, False)
        else:
            continue
        if merge_key:
            patch_items, server_only = _partition_maps(merged, order, merge_key)
        else:
            patch_items = [m for m in merged if any(_same(m, o) for o in order)]
            server_only = [m for m in merged if not any(_same(m, o) for o in order)]
        kind = _elements_kind(original_list or [], patch_list or [])
        original[field] = _normalize_order(patch_items, server_only, order,
                                           original_list or [], merge_key, kind)
        patch.pop(field, None)


def _check_order(patch_list: list, order: list, merge_key: str) -> None:
    """The patch list's items must appear in `$setElementOrder` in the same relative order."""
    if not order or not patch_list:
        return
    items = patch_list
    if merge_key:
        for item in patch_list:
            if not isinstance(item, dict):
                raise _bad_arg("map[string]interface {}", item)
        items = [i for i in patch_list if i.get(_DIRECTIVE) != "delete"]
    p = o = 0
    while p < len(items) and o < len(order):
        if isinstance(items[p], dict) and _DIRECTIVE in items[p]:
            p += 1
            continue
        if merge_key:
            for side in (items[p], order[o]):
                if not isinstance(side, dict):
                    raise _bad_arg("map[string]interface {}", side)
                if merge_key not in side:
                    raise _no_merge_key(side, merge_key)
            equal = _same(items[p][merge_key], order[o][merge_key])
        else:
            equal = _same(items[p], order[o])
        if equal:
            p += 1
        o += 1
    if p < len(items) and o >= len(order):
        raise PatchError(f"The order in patch list:\n{_go(patch_list)}\n doesn't match "
                         f"{_SET_ELEMENT_ORDER} list:\n{_go(order)}\n", 500)


# ---------------------------------------------------------------------------
# Server-side apply and managed fields
#
# A field set is a set of paths; a path is a tuple of fieldsV1 path elements:
# "f:<field>", "k:<compact JSON of the merge key>" (an item of a list merged
# by key), "v:<compact JSON of the value>" (an item of a primitive set).
# A path is in the set when its manager owns that node: a leaf value, an
# atomic list, a free-form map, a keyed list item, a set member.

Path = tuple[str, ...]

# Fields nobody owns (apimachinery's stripMeta manager).
_STRIPPED: set[Path] = {
    ("f:apiVersion",), ("f:kind",), ("f:metadata",),
    *(("f:metadata", "f:" + name) for name in (
        "name", "namespace", "creationTimestamp", "selfLink", "uid", "clusterName",
        "generation", "managedFields", "resourceVersion")),
}

BEFORE_FIRST_APPLY = "before-first-apply"
_MISSING = object()


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# Key fields of keyed lists that Kubernetes defaults (ports' protocol): an
# applied item without them is keyed with the default, as the apiserver
# defaults the applied object before it compares keys.
_KEY_DEFAULTS = {"protocol": "TCP"}


def _list_semantics(schema: PatchSchema | None, key: str, strategy: str, merge_key: str,
                    value: list) -> tuple[str, tuple[str, ...]]:
    """How server-side apply treats a list field: ("keyed", keys), ("set", ()) or ("atomic", ()).

    The schema's list_type (x-kubernetes-list-type and -list-map-keys, from
    openapi.py) when it has one, else the patch strategy and merge key."""
    kind, keys = "", ()
    list_type = getattr(schema, "list_type", None) if schema is not None else None
    if list_type is not None:
        kind, keys = list_type(key)
    if not kind:
        if "merge" in strategy.split(","):
            kind, keys = ("map", (merge_key,)) if merge_key else ("set", ())
        else:
            kind = "atomic"
    if kind == "map" and keys and all(isinstance(i, dict) for i in value):
        return "keyed", tuple(keys)
    if kind == "set" and all(not isinstance(i, (dict, list)) for i in value):
        return "set", ()
    return "atomic", ()


def _item_key(item: dict, keys: tuple[str, ...]) -> dict:
    out = {}
    for key in keys:
        if key in item:
            out[key] = item[key]
        elif key in _KEY_DEFAULTS:
            out[key] = _KEY_DEFAULTS[key]
    return out


def _key_matches(item: Any, wanted: dict) -> bool:
    if not isinstance(item, dict):
        return False
    return all(_same(item.get(k, _KEY_DEFAULTS.get(k, _MISSING)), v) for k, v in wanted.items())


def field_set(obj: dict, schema: PatchSchema | None) -> set[Path]:
    """The paths an object's fields make (what its applier owns), without the
    metadata nobody owns."""
    paths: set[Path] = set()
    metadata = obj.get("metadata")
    if isinstance(metadata, dict) and "managedFields" in metadata:
        obj = dict(obj, metadata={k: v for k, v in metadata.items() if k != "managedFields"})
    _walk_struct(obj, schema, (), paths)
    return paths - _STRIPPED


def _walk_struct(obj: dict, schema: PatchSchema | None, prefix: Path, paths: set[Path]) -> None:
    for key, value in obj.items():
        if value is None:
            continue
        sub, strategy, merge_key = _lookup(schema, key) if schema is not None else (None, "", "")
        path = prefix + ("f:" + key,)
        if isinstance(value, list):
            _walk_list(value, sub, _list_semantics(schema, key, strategy, merge_key, value), path, paths)
        elif isinstance(value, dict) and sub is not None:
            # A struct: its fields are owned, not the struct itself (unless empty).
            if not value:
                paths.add(path)
            _walk_struct(value, sub, path, paths)
        elif isinstance(value, dict):
            _walk_map(value, path, paths)
        else:
            paths.add(path)


def _walk_map(value: dict, path: Path, paths: set[Path]) -> None:
    # A free-form map (labels, annotations, data): the map and each key.
    paths.add(path)
    for key, item in value.items():
        if item is None:
            continue
        if isinstance(item, dict):
            _walk_map(item, path + ("f:" + key,), paths)
        else:
            paths.add(path + ("f:" + key,))


def _walk_list(value: list, sub: PatchSchema | None, semantics: tuple[str, tuple[str, ...]],
               path: Path, paths: set[Path]) -> None:
    kind, keys = semantics
    if kind == "keyed":
        if not value:
            paths.add(path)
        for item in value:
            item_path = path + ("k:" + _compact(_item_key(item, keys)),)
            paths.add(item_path)
            _walk_struct(item, sub, item_path, paths)
    elif kind == "set":
        paths.add(path)
        for item in value:
            paths.add(path + ("v:" + _compact(item),))
    else:
        paths.add(path)


def _step(value: Any, element: str) -> Any:
    """The child of a value at one path element, or _MISSING."""
    kind, _, text = element.partition(":")
    if kind == "f":
        return value.get(text, _MISSING) if isinstance(value, dict) else _MISSING
    if not isinstance(value, list):
        return _MISSING
    wanted = json.loads(text)
    if kind == "k":
        for item in value:
            if _key_matches(item, wanted):
                return item
        return _MISSING
    if kind == "v":
        for item in value:
            if _same(item, wanted):
                return item
        return _MISSING
    if kind == "i" and isinstance(wanted, int) and 0 <= wanted < len(value):
        return value[wanted]
    return _MISSING


def _get(obj: Any, path: Path) -> Any:
    for element in path:
        obj = _step(obj, element)
        if obj is _MISSING:
            return _MISSING
    return obj


def _remove(obj: Any, path: Path) -> None:
    parent = _get(obj, path[:-1])
    element = path[-1]
    kind, _, text = element.partition(":")
    if kind == "f" and isinstance(parent, dict):
        parent.pop(text, None)
    elif kind in ("k", "v") and isinstance(parent, list):
        target = _step(parent, element)
        if target is not _MISSING:
            for index, item in enumerate(parent):
                if item is target:
                    del parent[index]
                    break


def fields_v1(paths: set[Path]) -> dict:
    """A field set as the fieldsV1 tree of a managedFields entry."""
    tree: dict = {}
    for path in paths:
        node = tree
        for element in path:
            node = node.setdefault(element, {})
    for path in paths:
        node = tree
        for element in path:
            node = node[element]
        if node:
            node["."] = {}
    return _sorted_tree(tree)


def _sorted_tree(node: dict) -> dict:
    rank = {".": 0, "f": 1, "k": 2, "v": 3, "i": 4}
    keys = sorted(node, key=lambda k: (rank.get(k.partition(":")[0] if k != "." else ".", 5), k))
    return {k: _sorted_tree(node[k]) for k in keys}


def parse_fields_v1(tree: dict, prefix: Path = ()) -> set[Path]:
    """The field set a fieldsV1 tree describes."""
    paths: set[Path] = set()
    for element, child in (tree or {}).items():
        if element == ".":
            paths.add(prefix)
            continue
        path = prefix + (element,)
        if not child:
            paths.add(path)
        else:
            paths |= parse_fields_v1(child, path)
    return paths


def path_string(path: Path) -> str:
    """A path as structured-merge-diff prints it in conflicts: .spec.containers[name="x"].image"""
    out = []
    for element in path:
        kind, _, text = element.partition(":")
        if kind == "f":
            out.append("." + text)
        elif kind == "k":
            keys = json.loads(text)
            out.append("[" + ",".join(f"{k}={json.dumps(keys[k])}" for k in sorted(keys)) + "]")
        elif kind == "v":
            out.append(f"[={text}]")
        else:
            out.append(f"[{text}]")
    return "".join(out)


def _now(now: datetime | None) -> str:
    moment = now or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Entry:
    """One managedFields entry with its field set decoded."""

    def __init__(self, raw: dict):
        self.raw = dict(raw)
        self.paths = parse_fields_v1(raw.get("fieldsV1") or {})

    @property
    def key(self) -> tuple:
        # Apply entries are one per manager whatever the version (as upstream's
        # manager identifier); Update entries are per manager and version.
        op = self.raw.get("operation", "")
        version = "" if op == "Apply" else self.raw.get("apiVersion", "")
        return (self.raw.get("manager", ""), op, version, self.raw.get("subresource", ""))

    def describe(self) -> str:
        text = json.dumps(self.raw.get("manager", ""))
        if self.raw.get("subresource"):
            text += f" with subresource {json.dumps(self.raw['subresource'])}"
        if self.raw.get("operation") == "Update":
            text += f" using {self.raw.get('apiVersion', '')}"
        return text

    def dump(self) -> dict:
        # The field order of metav1.ManagedFieldsEntry.
        raw = dict(self.raw, fieldsType="FieldsV1", fieldsV1=fields_v1(self.paths))
        order = ("manager", "operation", "apiVersion", "time", "fieldsType", "fieldsV1", "subresource")
        out = {k: raw[k] for k in order if k in raw}
        out.update((k, v) for k, v in raw.items() if k not in out)
        return out


def _dump(entries: list[_Entry]) -> list[dict]:
    """Entries that still own something, in kube-apiserver's order (operation,
    time, manager, apiVersion, subresource)."""
    kept = [e for e in entries if e.paths]
    kept.sort(key=lambda e: (e.raw.get("operation", ""), e.raw.get("time") or "", e.raw.get("manager", ""),
                             e.raw.get("apiVersion", ""), e.raw.get("subresource", "")))
    return [e.dump() for e in kept]


def _entries(obj: dict | None) -> list[_Entry]:
    raw = ((obj or {}).get("metadata") or {}).get("managedFields") or []
    return [_Entry(e) for e in raw if isinstance(e, dict)]


def _owned_below(paths: set[Path], path: Path) -> bool:
    n = len(path)
    return any(p[:n] == path for p in paths)


def _is_container(value: Any, kind_path: Path) -> bool:
    # A map node ("." membership), a keyed item or a set member: its value is
    # compared through its children, not as a whole.
    last = kind_path[-1] if kind_path else ""
    return isinstance(value, dict) and bool(value) or last.startswith(("k:", "v:"))


def _apply_merge(live: Any, applied: dict, schema: PatchSchema | None) -> dict:
    """`applied` merged into `live` the way server-side apply merges: structs
    and maps field by field, keyed lists by key, sets by union, the rest replaced."""
    out = dict(live) if isinstance(live, dict) else {}
    for key, value in applied.items():
        if value is None:
            continue
        sub, strategy, merge_key = _lookup(schema, key) if schema is not None else (None, "", "")
        current = out.get(key)
        if isinstance(value, dict):
            out[key] = _apply_merge(current, value, sub)
        elif isinstance(value, list):
            kind, keys = _list_semantics(schema, key, strategy, merge_key, value)
            if kind == "keyed" and isinstance(current, list):
                merged = [copy.deepcopy(i) for i in current]
                for item in value:
                    wanted = _item_key(item, keys)
                    index = next((n for n, i in enumerate(merged) if _key_matches(i, wanted)), -1)
                    if index >= 0:
                        merged[index] = _apply_merge(merged[index], item, sub)
                    else:
                        merged.append(_apply_merge(None, item, sub))
                out[key] = merged
            elif kind == "set" and isinstance(current, list):
                merged = list(current)
                merged.extend(i for i in value if not any(_same(i, m) for m in merged))
                out[key] = merged
            else:
                out[key] = _clean(copy.deepcopy(value))
        else:
            out[key] = value
    return out


def decode_apply_body(body: bytes) -> dict:
    """The object of an application/apply-patch+yaml body.

    kubectl --server-side and the client libraries send JSON (which is YAML);
    the node has no YAML parser, so other YAML is refused with a 400 that says so."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise PatchError(
            f"error decoding patch: {error}: emu's API server reads apply bodies as JSON "
            "(YAML in its JSON form); send the object as JSON, as kubectl --server-side does",
            400) from None
    if not isinstance(obj, dict):
        raise PatchError("error decoding patch: json: cannot unmarshal "
                         f"{_json_kind(obj)} into Go value of type map[string]interface {{}}", 400)
    return obj


def _check_applied(applied: dict) -> None:
    metadata = applied.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise PatchError("error decoding patch: metadata must be an object", 400)
    if (metadata or {}).get("managedFields") is not None:
        raise PatchError("metadata.managedFields must be nil", 400)
    if not applied.get("apiVersion") or not applied.get("kind"):
        raise PatchError("error decoding patch: apiVersion and kind must be set in an apply "
                         "configuration", 400)


def server_side_apply(current: dict | None, applied: dict, manager: str, force: bool,
                      schema: PatchSchema | None, *, now: datetime | None = None,
                      reset_fields: tuple[str, ...] = ()) -> dict:
    """The object after `manager` applies `applied` (server-side apply).

    current None creates. Fields `manager` applied before and no longer
    applies are removed unless another manager owns them. A field another
    manager owns with a different value is a conflict: 409 listing them as
    kube-apiserver does, unless force (then the manager takes them over).
    reset_fields are top-level fields the apply does not set, as kube-apiserver's
    strategies reset them: ("status",) for the main resource of a kind with a
    status subresource. Returns the new object with metadata.managedFields
    updated; `current` and `applied` are not modified. Raises PatchError."""
    if not manager:
        raise PatchError("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: "
                         "is required for apply patch", 422)
    _check_applied(applied)
    if reset_fields:
        applied = {k: v for k, v in applied.items() if k not in reset_fields}

    entries = _entries(current)
    if current is not None and not entries:
        # An object nobody tracked yet: its fields belong to one pseudo
        # manager, as kube-apiserver does before the first apply.
        before = _Entry({"manager": BEFORE_FIRST_APPLY, "operation": "Update",
                         "apiVersion": current.get("apiVersion", applied["apiVersion"])})
        before.paths = field_set(current, schema)
        entries = [before] if before.paths else []

    mine_key = (manager, "Apply", "", "")
    mine = next((e for e in entries if e.key == mine_key), None)
    previous = mine.paths if mine else set()
    others = [e for e in entries if e is not mine]
    applied_paths = field_set(applied, schema)

    live = copy.deepcopy(current) if current is not None else {}
    conflicts: list[tuple[_Entry, Path]] = []
    for path in sorted(applied_paths):
        new_value = _get(applied, path)
        old_value = _get(live, path)
        if old_value is _MISSING or _is_container(new_value, path) or old_value == new_value:
            continue
        for entry in others:
            if path in entry.paths:
                conflicts.append((entry, path))
    if conflicts and not force:
        raise _conflict_error(conflicts)
    for entry, path in conflicts:
        entry.paths.discard(path)

    merged = _apply_merge(live, applied, schema)
    owned_by_others: set[Path] = set().union(*(e.paths for e in others)) if others else set()
    dropped = {p for p in previous - applied_paths
               if not _owned_below(owned_by_others, p) and not _owned_below(applied_paths, p)}
    for path in sorted(dropped, key=len):
        # A dropped list item or map goes with its fields: remove the top one only.
        if not any(path[:n] in dropped for n in range(1, len(path))):
            _remove(merged, path)

    # An apply that changes nothing keeps its time (kube-apiserver's
    # managedFieldsUpdater stamps only applies that changed the object).
    unchanged = current is not None and mine is not None and _without_managed(merged) == _without_managed(current)
    if mine is None:
        mine = _Entry({"manager": manager, "operation": "Apply"})
        entries.append(mine)
    mine.raw["apiVersion"] = applied["apiVersion"]
    if not unchanged or not mine.raw.get("time"):
        mine.raw["time"] = _now(now)
    mine.paths = applied_paths
    merged.setdefault("metadata", {})["managedFields"] = _dump(entries)
    return merged


def _without_managed(obj: dict) -> dict:
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return dict(obj, metadata=metadata)


def _conflict_error(conflicts: list[tuple[_Entry, Path]]) -> PatchError:
    conflicts = sorted(conflicts, key=lambda c: (c[0].describe(), path_string(c[1])))
    causes = [{"type": "FieldManagerConflict", "message": f"conflict with {e.describe()}",
               "field": path_string(p)} for e, p in conflicts]
    if len(conflicts) == 1:
        entry, path = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {entry.describe()}: {path_string(path)}"
    else:
        lines = []
        by_manager: dict[str, list[Path]] = {}
        for entry, path in conflicts:
            by_manager.setdefault(entry.describe(), []).append(path)
        for name in sorted(by_manager):
            lines.append(f"conflicts with {name}:")
            lines.extend(f"- {path_string(p)}" for p in by_manager[name])
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return PatchError(message, 409, "Conflict", causes)


def update_managed_fields(old: dict | None, new: dict, manager: str,
                          schema: PatchSchema | None, *, subresource: str = "",
                          now: datetime | None = None) -> dict:
    """`new` with managedFields recording that `manager` wrote it (a create,
    update or non-apply patch: operation Update).

    The fields the write set or changed move to the manager's Update entry
    for new's apiVersion; fields the write removed leave every entry. A client
    that sends managedFields different from old's sets them (as upstream); an
    empty list there clears them. `new` is not modified."""
    result = copy.deepcopy(new)
    meta = result.setdefault("metadata", {})
    sent = meta.get("managedFields")
    old_raw = ((old or {}).get("metadata") or {}).get("managedFields")
    if sent is not None and sent != old_raw:
        if sent == []:
            meta.pop("managedFields", None)
            return result
        entries = [_Entry(e) for e in sent if isinstance(e, dict)]
    else:
        entries = _entries(old)
    new_paths = field_set(result, schema)
    if old is None:
        changed = new_paths
        removed: set[Path] = set()
    else:
        old_paths = field_set(old, schema)
        removed = old_paths - new_paths
        changed = {p for p in new_paths if not _is_container(_get(result, p), p)
                   and _get(old, p) != _get(result, p)}
        changed |= {p for p in new_paths - old_paths}
    key = (manager, "Update", result.get("apiVersion", ""), subresource)
    mine = next((e for e in entries if e.key == key), None)
    for entry in entries:
        entry.paths -= removed
        if entry is not mine:
            entry.paths -= changed
    if changed:
        if mine is None:
            raw = {"manager": manager, "operation": "Update",
                   "apiVersion": result.get("apiVersion", "")}
            if subresource:
                raw["subresource"] = subresource
            mine = _Entry(raw)
            entries.append(mine)
        mine.paths |= changed
        mine.raw["time"] = _now(now)
    kept = _dump(entries)
    if kept:
        meta["managedFields"] = kept
    else:
        meta.pop("managedFields", None)
    return result
