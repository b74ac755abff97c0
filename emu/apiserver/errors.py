"""Kubernetes `Status` errors, worded as k8s.io/apimachinery's errors package words them.

kubectl prints `Error from server (<reason>): <message>`, so the message text is
what a user sees: keep it identical to kube-apiserver's."""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    """An API error answered as a `Status` object with this HTTP code."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict:
        """The `Status` object (apiVersion v1) this error is answered with."""
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            out["details"] = self.details
        out["code"] = self.code
        return out

    def body(self) -> bytes:
        return json.dumps(self.status(), separators=(",", ":")).encode()


def _qualified(resource: str, group: str) -> str:
    """GroupResource.String(): `pods`, `deployments.apps`."""
    return f"{resource}.{group}" if group else resource


def _details(name: str, group: str, kind: str, **extra: Any) -> dict:
    d: dict[str, Any] = {}
    if name:
        d["name"] = name
    if group:
        d["group"] = group
    d["kind"] = kind
    d.update(extra)
    return d


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    """`pods "x" not found` (404)."""
    return ApiError(404, "NotFound", f'{_qualified(resource, group)} "{name}" not found',
                    _details(name, group, resource))


def resource_not_found() -> ApiError:
    """An unknown resource path: the body kube-apiserver answers for it."""
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(409, "AlreadyExists", f'{_qualified(resource, group)} "{name}" already exists',
                    _details(name, group, resource))


def conflict(resource: str, name: str, group: str = "", why: str = "") -> ApiError:
    """409 Conflict; without `why`, the optimistic-concurrency wording."""
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": {why}',
                    _details(name, group, resource))


def invalid(kind: str, name: str, causes: list[dict], group: str = "") -> ApiError:
    """422 Invalid; causes are {"reason", "message", "field"} as field.Error renders them."""
    qkind = f"{kind}.{group}" if group else kind
    texts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    agg = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiError(422, "Invalid", f'{qkind} "{name}" is invalid: {agg}',
                    _details(name, group, kind, causes=causes))


def forbidden(resource: str, name: str, why: str, group: str = "") -> ApiError:
    """`pods "x" is forbidden: why` (`pods is forbidden: why` without a name)."""
    q = _qualified(resource, group)
    subject = f'{q} "{name}"' if name else q
    if not resource:
        return ApiError(403, "Forbidden", f"forbidden: {why}", _details(name, group, resource))
    return ApiError(403, "Forbidden", f"{subject} is forbidden: {why}", _details(name, group, resource))


def unauthorized(message: str = "Unauthorized") -> ApiError:
    return ApiError(401, "Unauthorized", message, {})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def gone(message: str) -> ApiError:
    """410 Gone, reason Expired (`too old resource version: N (M)`)."""
    return ApiError(410, "Expired", message)


def method_not_supported(resource: str, verb: str, group: str = "") -> ApiError:
    return ApiError(405, "MethodNotAllowed",
                    f"{verb} is not supported on resources of kind \"{_qualified(resource, group)}\"",
                    _details("", group, resource))


def too_large(limit: int) -> ApiError:
    return ApiError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {limit}")


def unsupported_media_type(accepted: str) -> ApiError:
    """415: the body's Content-Type is not one this verb takes (`accepted` lists those)."""
    return ApiError(415, "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types include: {accepted}")


def not_acceptable(accepted: str) -> ApiError:
    return ApiError(406, "NotAcceptable", f"only the following media types are accepted: {accepted}")


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}", {"causes": [{"message": message}]})


def timeout(message: str) -> ApiError:
    return ApiError(504, "Timeout", message)
