"""Impersonation (Impersonate-User, -Group, -Uid, -Extra-* headers), as
k8s.io/apiserver's filters/impersonation.go does it: every part asked for is
authorized as the verb `impersonate` on its resource (users, groups,
serviceaccounts in their namespace, uids and userextras/KEY in
authentication.k8s.io) for the user who asks, and the request then runs as the
impersonated user. `kubectl --as NAME [--as-group G] [--as-uid U]` and
`kubectl auth can-i --as` send them.

Groups: the given ones; a service account without given groups gets its fixed
ones (system:serviceaccounts, system:serviceaccounts:NS); and unless the user
is system:anonymous, system:authenticated is added when neither it nor
system:unauthenticated is among them."""

from __future__ import annotations

from collections.abc import Callable

from emu.apiserver import errors
from emu.apiserver.types import Attributes, Decision, User

USER, GROUP, UID, EXTRA = "Impersonate-User", "Impersonate-Group", "Impersonate-Uid", "Impersonate-Extra-"
AUTHENTICATION_GROUP = "authentication.k8s.io"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
ANONYMOUS, AUTHENTICATED, UNAUTHENTICATED = "system:anonymous", "system:authenticated", "system:unauthenticated"


def _all(headers, name: str) -> list[str]:
    if hasattr(headers, "get_all"):
        return list(headers.get_all(name) or [])
    value = headers.get(name)
    return [value] if value else []


def _extras(headers) -> dict[str, list[str]]:
    """{key: values} of the Impersonate-Extra-KEY headers (the key lower-cased and
    percent-decoded, as client-go escapes it)."""
    from urllib.parse import unquote

    found: dict[str, list[str]] = {}
    for name in dict.fromkeys(headers.keys()):
        if name.lower().startswith(EXTRA.lower()):
            found.setdefault(unquote(name[len(EXTRA):]).lower(), []).extend(_all(headers, name))
    return found


def requested(headers) -> bool:
    return any(name.lower().startswith("impersonate-") for name in headers.keys())


def impersonate(user: User, headers, authorize: Callable[[Attributes], Decision],
                forbidden: Callable[[Attributes, str], errors.ApiError]) -> User:
    """The user the request runs as: `user` itself without impersonation headers, else
    the impersonated one, once every part is authorized; raises the ApiError
    kube-apiserver answers (500 for parts without a user, 403 naming the part)."""
    if not requested(headers):
        return user
    name = (headers.get(USER) or "").strip()
    groups_asked = [g for g in _all(headers, GROUP)]
    uid = headers.get(UID) or ""
    extras = _extras(headers)
    if not name:
        asked = [f"{GROUP}: {g}" for g in groups_asked] + ([f"{UID}: {uid}"] if uid else []) + [
            f"{EXTRA}{k}: {v}" for k, values in extras.items() for v in values]  # fmt: skip
        raise errors.internal(f"requested {asked} without impersonating a user")
    checks: list[Attributes] = []

    def check(resource: str, name_: str, group: str = "", namespace: str = "", subresource: str = "") -> None:
        checks.append(Attributes(user=user, verb="impersonate", namespace=namespace, api_group=group,
                                 resource=resource, subresource=subresource, name=name_, is_resource_request=True))

    groups: list[str] = []
    namespace_name = name[len(SERVICE_ACCOUNT_PREFIX):].split(":") if name.startswith(SERVICE_ACCOUNT_PREFIX) else []
    if len(namespace_name) == 2 and all(namespace_name):
        namespace, account = namespace_name
        check("serviceaccounts", account, namespace=namespace)
        if not groups_asked:
            groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
    else:
        check("users", name)
    for group in groups_asked:
        check("groups", group)
        groups.append(group)
    if uid:
        check("uids", uid, group=AUTHENTICATION_GROUP)
    for key, values in extras.items():
        for value in values:
            check("userextras", value, group=AUTHENTICATION_GROUP, subresource=key)
    for attributes in checks:
        decision = authorize(attributes)
        if not decision.allowed:
            raise forbidden(attributes, decision.reason)
    if name != ANONYMOUS and AUTHENTICATED not in groups and UNAUTHENTICATED not in groups:
        groups.append(AUTHENTICATED)
    return User(name, tuple(groups), uid, {key: tuple(values) for key, values in extras.items()})
