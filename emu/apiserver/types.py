"""Records shared by the API server's pieces: who asks (User), what they ask
(Attributes, as Kubernetes' authorizer.Attributes), and the answer (Decision)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class User:
    """An authenticated identity: a certificate's CN and O's, or a token's subject."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Attributes:
    """One request, as the authorizer and admission see it.

    verb: get list watch create update patch delete deletecollection for
    resource requests; the HTTP method in lower case for other paths.
    api_group is "" for the core group."""

    user: User
    verb: str
    namespace: str = ""
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    is_resource_request: bool = True
    path: str = ""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
