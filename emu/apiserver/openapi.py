"""OpenAPI for emu's API server: the documents kubectl and client libraries read
(/openapi/v2, /openapi/v3, /openapi/v3/<group-version>) and the lookups the server
makes in them (strategic-merge-patch metadata, unknown fields for
fieldValidation).

The documents are generated from the official Python client's models by
scripts/kubernetes_openapi.py into emu/apiserver/data/ (gzip'd JSON); this
module only reads them. Standard library only: it runs in the node.

What clients ask for (read from client-go and kubectl 1.27-1.33):
- /openapi/v2 with ``Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf``
  only, parsed with proto.Unmarshal (no JSON fallback). kubectl 1.27 and 1.28
  need it for every ``apply``/``create`` with validation on and for ``explain``;
  later versions for ``explain --output plaintext-openapiv2`` and as the
  fallback of apply's patch computation. So v2 is served as protobuf (the
  gnostic ``openapi.v2.Document`` message, encoded here) as well as JSON.
- /openapi/v3 (JSON) and the per group-version documents (JSON) it points to:
  ``explain``, kubectl's check whether the server validates fields itself (a
  PATCH operation with the kind's x-kubernetes-group-version-kind and a
  ``fieldValidation`` query parameter: then kubectl skips client-side
  validation and sends ``fieldValidation=Strict``), and apply's patch
  computation (1.29+).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import struct
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"

JSON = "application/json"
# client-go asks for the first spelling; kube-apiserver accepts both and answers with
# the second (Go's mime parser rejects the "@" in a response's Content-Type).
PROTOBUF_V2_ASKED = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
PROTOBUF_V2 = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"

__all__ = [
    "OpenAPIPatchSchema",
    "definition_for",
    "handle",
    "patch_schema",
    "unknown_fields",
    "v2",
    "v2_protobuf",
    "v3",
    "v3_index",
]  # fmt: skip


# ---------------------------------------------------------------------------
# Documents


@functools.cache
def v2() -> bytes:
    """The Swagger 2.0 document (JSON), as GET /openapi/v2 serves it."""
    return gzip.decompress((DATA / "openapi-v2.json.gz").read_bytes())


@functools.cache
def _v2_doc() -> dict:
    return json.loads(v2())


@functools.cache
def v2_protobuf() -> bytes:
    """The Swagger 2.0 document as a gnostic ``openapi.v2.Document`` protobuf message
    (what client-go's ``OpenAPISchema()`` asks for and unmarshals)."""
    return _encode_document(_v2_doc())


@functools.cache
def _v3_files() -> dict[str, Path]:
    return {p.name[: -len(".json.gz")].replace("__", "/"): p for p in sorted((DATA / "openapi-v3").glob("*.json.gz"))}


def v3(path: str) -> bytes | None:
    """The OpenAPI 3.0 document of one group-version (``api/v1``, ``apis/apps/v1``) or of a
    discovery document (``api``, ``apis``, ``apis/apps``, ``version``), or None."""
    path = path.strip("/")
    return _v3_bytes(path) if path in _v3_files() else None  # only known paths are cached


@functools.cache
def _v3_bytes(path: str) -> bytes:
    return gzip.decompress(_v3_files()[path].read_bytes())


@functools.cache
def _v3_hash(path: str) -> str:
    return hashlib.sha512(v3(path) or b"").hexdigest().upper()


def v3_index() -> dict:
    """The /openapi/v3 discovery document: every group-version's URL with the hash of its document."""
    return {"paths": {p: {"serverRelativeURL": f"/openapi/v3/{p}?hash={_v3_hash(p)}"} for p in _v3_files()}}


def _accepts(accept: str, offered: list[str]) -> str | None:
    """The first of ``offered`` the Accept header allows (in the header's order), or None."""
    if not accept.strip():
        return offered[0]
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        params = [p.strip() for p in part.split(";")[1:]]
        if "q=0" in params:
            continue
        for candidate in offered:
            if media == candidate or media == "*/*" or (media.endswith("/*") and candidate.startswith(media[:-1])):
                return candidate
    return None


@functools.cache
def _v2_protobuf_gzip() -> bytes:
    return gzip.compress(v2_protobuf(), compresslevel=6, mtime=0)


def _gzip_ok(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        coding, *params = [p.strip() for p in part.split(";")]
        if coding.lower() == "gzip" and "q=0" not in params:
            return True
    return False


def handle(
    path: str, query: str = "", accept: str = "", accept_encoding: str = ""
) -> tuple[int, dict[str, str], bytes] | None:
    """Serve an OpenAPI request: ``(status, headers, body)`` for /openapi/v2, /openapi/v3 and
    /openapi/v3/<group-version>, or None when ``path`` is none of them (the caller's 404).

    ``query`` is the raw query string (``hash=...``), ``accept`` the Accept header,
    ``accept_encoding`` the Accept-Encoding header: with gzip in it the documents go out
    compressed (``Content-Encoding: gzip``, straight from the data files; kube-apiserver
    compresses large responses too and Go clients undo it transparently).
    A 406 body is a plain message; the caller may wrap it in a Status object.
    """
    result = _route(path, query, accept)
    if result is None:
        return None
    status, headers, body = result
    if isinstance(body, bytes):
        return status, headers, body
    # body names a document: "v2", "v2-protobuf" or "v3:<group-version>"
    if _gzip_ok(accept_encoding):
        headers = headers | {"Content-Encoding": "gzip"}
        if body == "v2":
            return status, headers, (DATA / "openapi-v2.json.gz").read_bytes()
        if body == "v2-protobuf":
            return status, headers, _v2_protobuf_gzip()
        return status, headers, _v3_files()[body[3:]].read_bytes()
    if body == "v2":
        return status, headers, v2()
    if body == "v2-protobuf":
        return status, headers, v2_protobuf()
    return status, headers, v3(body[3:]) or b""


def _route(path: str, query: str, accept: str) -> tuple[int, dict[str, str], bytes | str] | None:
    path = path.rstrip("/") or "/"
    if path == "/openapi/v2":
        chosen = _accepts(accept, [JSON, PROTOBUF_V2, PROTOBUF_V2_ASKED])
        if chosen is None:
            return 406, {"Content-Type": "text/plain"}, _not_acceptable(accept, [JSON, PROTOBUF_V2])
        if chosen == JSON:
            return 200, {"Content-Type": JSON, "Vary": "Accept"}, "v2"
        return 200, {"Content-Type": PROTOBUF_V2, "Vary": "Accept"}, "v2-protobuf"
    if path == "/openapi/v3":
        if _accepts(accept, [JSON]) is None:
            return 406, {"Content-Type": "text/plain"}, _not_acceptable(accept, [JSON])
        return 200, {"Content-Type": JSON}, json.dumps(v3_index()).encode()
    if path.startswith("/openapi/v3/"):
        gv = path[len("/openapi/v3/") :].strip("/")
        if v3(gv) is None:
            return None
        if _accepts(accept, [JSON]) is None:
            return 406, {"Content-Type": "text/plain"}, _not_acceptable(accept, [JSON])
        want = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("hash")
        current = _v3_hash(gv)
        if want and want != current:
            # kube-apiserver redirects a stale hash to the current document.
            return 301, {"Location": f"/openapi/v3/{gv}?hash={current}", "Content-Type": "text/plain"}, b""
        headers = {"Content-Type": JSON, "Etag": f'"{current}"'}
        if want:  # the URL names this exact document: clients may keep it for good
            headers |= {"Vary": "Accept", "Cache-Control": "public, immutable"}
        return 200, headers, "v3:" + gv
    return None


def _not_acceptable(accept: str, offered: list[str]) -> bytes:
    return (f"the server cannot serve {accept!r} for this document; it serves {', '.join(offered)}").encode()


# ---------------------------------------------------------------------------
# Lookups


def _split(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


@functools.cache
def _by_gvk() -> dict[tuple[str, str, str], str]:
    found: dict[tuple[str, str, str], str] = {}
    for name, schema in _v2_doc()["definitions"].items():
        for entry in schema.get("x-kubernetes-group-version-kind", []):
            found.setdefault((entry["group"], entry["version"], entry["kind"]), name)
    return found


def definition_for(api_version: str, kind: str) -> str | None:
    """The definition name of a kind (``v1``, ``Pod`` -> ``io.k8s.api.core.v1.Pod``), or None."""
    group, version = _split(api_version)
    return _by_gvk().get((group, version, kind))


def _resolve(schema: dict) -> dict:
    defs = _v2_doc()["definitions"]
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def unknown_fields(api_version: str, kind: str, obj: dict) -> list[str]:
    """Paths of the fields in ``obj`` its kind's schema does not have, in document order,
    written as kube-apiserver's strict decoding reports them (``unknown field "<path>"``):
    ``spec.template.spec.containers[0].imagePullPolicyy`` (no leading dot; server-side
    apply's errors put one in front). An unknown kind gives []."""
    name = definition_for(api_version, kind)
    if name is None:
        return []
    found: list[str] = []
    _walk(_v2_doc()["definitions"][name], obj, "", found)
    return found


def _walk(schema: dict, value, path: str, found: list[str]) -> None:
    schema = _resolve(schema)
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is not None:
            for key, item in value.items():
                where = f"{path}.{key}" if path else key
                if key not in props:
                    found.append(where)
                else:
                    _walk(props[key], item, where, found)
        elif isinstance(schema.get("additionalProperties"), dict):
            for key, item in value.items():
                _walk(schema["additionalProperties"], item, f"{path}.{key}" if path else key, found)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _walk(schema["items"], item, f"{path}[{i}]", found)


class OpenAPIPatchSchema:
    """Strategic-merge-patch metadata of one object type (the PatchSchema protocol of
    docs/apiserver.md): ``field(name) -> (schema of the value or of its list items,
    or None for a primitive or a free-form map; patch strategy; merge key)``."""

    __slots__ = ("_schema", "_values", "name")

    def __init__(self, name: str, schema: dict, values: dict | None = None) -> None:
        self.name = name
        self._schema = schema
        self._values = values  # a map whose values are objects: every key has this schema

    def __repr__(self) -> str:
        return f"OpenAPIPatchSchema({self.name})"

    @property
    def atomic(self) -> bool:
        """True for a struct server-side apply owns as a whole (x-kubernetes-map-type: atomic,
        e.g. LabelSelector, ObjectReference). Not part of the PatchSchema protocol."""
        return self._values is None and self._schema.get("x-kubernetes-map-type") == "atomic"

    def field(self, name: str) -> tuple[OpenAPIPatchSchema | None, str, str]:
        if self._values is not None:
            return _schema_of(self._values), "", ""
        prop = self._schema.get("properties", {}).get(name)
        if prop is None:
            return None, "", ""
        strategy = prop.get("x-kubernetes-patch-strategy", "")
        merge_key = prop.get("x-kubernetes-patch-merge-key", "")
        target = prop.get("items", prop) if prop.get("type") == "array" else prop
        return _schema_of(target), strategy, merge_key

    def list_type(self, name: str) -> tuple[str, tuple[str, ...]]:
        """How server-side apply merges a list field: ``("map", keys)``, ``("set", ())``,
        ``("atomic", ())`` (x-kubernetes-list-type / -list-map-keys), or ``("", ())`` for a
        field that is not a list. Not part of the PatchSchema protocol: strategic merge
        patch follows the patch strategy, server-side apply follows this."""
        prop = self._schema.get("properties", {}).get(name) if self._values is None else None
        if not prop or prop.get("type") != "array":
            return "", ()
        return prop.get("x-kubernetes-list-type", "atomic"), tuple(prop.get("x-kubernetes-list-map-keys", ()))


def _schema_of(schema: dict) -> OpenAPIPatchSchema | None:
    name = schema["$ref"].rsplit("/", 1)[1] if "$ref" in schema else ""
    resolved = _resolve(schema)
    if resolved.get("properties"):
        return _named_schema(name) if name else OpenAPIPatchSchema("(inline)", resolved)
    values = resolved.get("additionalProperties")
    if isinstance(values, dict) and _resolve(values).get("properties"):
        return OpenAPIPatchSchema(f"map of {values.get('$ref', 'object')}", resolved, values)
    return None


@functools.cache
def _named_schema(name: str) -> OpenAPIPatchSchema:
    return OpenAPIPatchSchema(name, _v2_doc()["definitions"][name])


def patch_schema(api_version: str, kind: str) -> OpenAPIPatchSchema | None:
    """The strategic-merge-patch metadata of a kind served, or None for a kind without a schema
    (then the server answers a strategic merge patch with 415, as for custom resources)."""
    name = definition_for(api_version, kind)
    return _named_schema(name) if name else None


# ---------------------------------------------------------------------------
# The gnostic openapi.v2 protobuf encoding (github.com/google/gnostic-models
# openapiv2/OpenAPIv2.proto; field numbers from there). Vendor extensions,
# defaults and examples are ``Any`` messages carrying YAML text: JSON is YAML.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _ld(field: int, data: bytes) -> bytes:
    """A length-delimited field (string or embedded message), present even when empty."""
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _s(field: int, text: str | None) -> bytes:
    return _ld(field, text.encode()) if text else b""


def _ss(field: int, texts) -> bytes:
    return b"".join(_ld(field, t.encode()) for t in texts or ())


def _b(field: int, flag) -> bytes:
    return _varint(field << 3) + b"\x01" if flag else b""


def _i(field: int, number) -> bytes:
    return _varint(field << 3) + _varint(int(number) & 0xFFFFFFFFFFFFFFFF) if number else b""


def _d(field: int, number) -> bytes:
    return _varint(field << 3 | 1) + struct.pack("<d", float(number)) if number is not None else b""


def _any(field: int, value) -> bytes:
    return _ld(field, _s(2, json.dumps(value, separators=(",", ":"))))


def _extensions(field: int, obj: dict) -> bytes:
    return b"".join(_ld(field, _s(1, k) + _any(2, v)) for k, v in obj.items() if k.startswith("x-"))


def _schema(s: dict) -> bytes:
    out = [_s(1, s.get("$ref")), _s(2, s.get("format")), _s(3, s.get("title")), _s(4, s.get("description"))]
    if "default" in s:
        out.append(_any(5, s["default"]))
    out += [_d(7, s.get("maximum")), _d(9, s.get("minimum")), _i(11, s.get("maxLength")),
            _i(12, s.get("minLength")), _s(13, s.get("pattern")), _ss(19, s.get("required"))]  # fmt: skip
    out += [_any(20, e) for e in s.get("enum", ())]
    extra = s.get("additionalProperties")
    if isinstance(extra, dict):
        out.append(_ld(21, _ld(1, _schema(extra))))
    elif isinstance(extra, bool):
        out.append(_ld(21, _varint(2 << 3) + (b"\x01" if extra else b"\x00")))
    if "type" in s:
        out.append(_ld(22, _ss(1, [s["type"]] if isinstance(s["type"], str) else s["type"])))
    if "items" in s:
        items = s["items"] if isinstance(s["items"], list) else [s["items"]]
        out.append(_ld(23, b"".join(_ld(1, _schema(i)) for i in items)))
    out += [_ld(24, _schema(a)) for a in s.get("allOf", ())]
    if "properties" in s:
        out.append(_ld(25, b"".join(_ld(1, _s(1, k) + _ld(2, _schema(v))) for k, v in s["properties"].items())))
    out += [_b(27, s.get("readOnly")), _extensions(31, s)]
    return b"".join(out)


def _parameter(p: dict) -> bytes:
    if "$ref" in p:  # ParametersItem.json_reference
        return _ld(2, _s(1, p["$ref"]) + _s(2, p.get("description")))
    if p["in"] == "body":
        body = _s(1, p.get("description")) + _s(2, p["name"]) + _s(3, "body") + _b(4, p.get("required"))
        body += _ld(5, _schema(p.get("schema", {}))) + _extensions(6, p)
        return _ld(1, _ld(1, body))
    common = _b(1, p.get("required")) + _s(2, p["in"]) + _s(3, p.get("description")) + _s(4, p["name"])
    if p["in"] == "query":
        sub = common + _b(5, p.get("allowEmptyValue")) + _s(6, p.get("type")) + _s(7, p.get("format"))
        sub += _b(20, p.get("uniqueItems")) + _extensions(23, p)
        which = 3
    elif p["in"] == "path":
        sub = common + _s(5, p.get("type")) + _s(6, p.get("format")) + _b(19, p.get("uniqueItems"))
        sub += _extensions(22, p)
        which = 4
    elif p["in"] == "header":
        sub = common + _s(5, p.get("type")) + _s(6, p.get("format")) + _b(19, p.get("uniqueItems"))
        sub += _extensions(22, p)
        which = 1
    else:  # formData
        sub = common + _b(5, p.get("allowEmptyValue")) + _s(6, p.get("type")) + _s(7, p.get("format"))
        sub += _b(20, p.get("uniqueItems")) + _extensions(23, p)
        which = 2
    return _ld(1, _ld(2, _ld(which, sub)))


def _operation(op: dict) -> bytes:
    out = [_ss(1, op.get("tags")), _s(2, op.get("summary")), _s(3, op.get("description")),
           _s(5, op.get("operationId")), _ss(6, op.get("produces")), _ss(7, op.get("consumes"))]  # fmt: skip
    out += [_ld(8, _parameter(p)) for p in op.get("parameters", ())]
    responses = b""
    for code, r in op.get("responses", {}).items():
        if "$ref" in r:
            value = _ld(2, _s(1, r["$ref"]))
        else:
            body = _s(1, r.get("description"))
            if "schema" in r:
                body += _ld(2, _ld(1, _schema(r["schema"])))
            value = _ld(1, body + _extensions(5, r))
        responses += _ld(1, _s(1, code) + _ld(2, value))
    out += [_ld(9, responses), _ss(10, op.get("schemes")), _b(11, op.get("deprecated")), _extensions(13, op)]
    return b"".join(out)


_METHODS = {"get": 2, "put": 3, "post": 4, "delete": 5, "options": 6, "head": 7, "patch": 8}


def _path_item(item: dict) -> bytes:
    out = [_s(1, item.get("$ref"))]
    out += [_ld(n, _operation(item[m])) for m, n in _METHODS.items() if m in item]
    out += [_ld(9, _parameter(p)) for p in item.get("parameters", ())]
    out.append(_extensions(10, item))
    return b"".join(out)


def _encode_document(doc: dict) -> bytes:
    info = doc.get("info", {})
    out = [_s(1, doc.get("swagger")), _ld(2, _s(1, info.get("title")) + _s(2, info.get("version"))),
           _s(3, doc.get("host")), _s(4, doc.get("basePath")), _ss(5, doc.get("schemes")),
           _ss(6, doc.get("consumes")), _ss(7, doc.get("produces"))]  # fmt: skip
    paths = b"".join(_ld(2, _s(1, k) + _ld(2, _path_item(v))) for k, v in doc.get("paths", {}).items())
    out.append(_ld(8, paths))
    out.append(_ld(9, b"".join(_ld(1, _s(1, k) + _ld(2, _schema(v))) for k, v in doc["definitions"].items())))
    for requirement in doc.get("security", ()):
        out.append(_ld(12, b"".join(_ld(1, _s(1, k) + _ld(2, _ss(1, v))) for k, v in requirement.items())))
    definitions = b""
    for name, sd in doc.get("securityDefinitions", {}).items():
        if sd.get("type") == "apiKey":  # SecurityDefinitionsItem.api_key_security
            item = _ld(2, _s(1, "apiKey") + _s(2, sd.get("name")) + _s(3, sd.get("in")) + _s(4, sd.get("description")))
            definitions += _ld(1, _s(1, name) + _ld(2, item))
    if definitions:
        out.append(_ld(13, definitions))
    out.append(_extensions(16, doc))
    return b"".join(out)
