"""emu's Kubernetes API server: HTTP/1.1 (TLS in production, plain HTTP in
tests), request info as Kubernetes' RequestInfoFactory builds it, authentication,
authorization, admission, the verbs, watch streams, Table and metadata-only
responses, and `Status` errors (docs/apiserver.md).

Pieces other modules own are imported lazily and are optional until merged:
patch.py (patches), tables.py (kubectl's columns), openapi.py (/openapi/*,
fieldValidation). Without them the server answers with what it can."""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import random
import select
import socket
import ssl
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from emu.apiserver import (crd, discovery, errors, gojson, impersonation, mirror, protobuf, resources, storage,
                           streaming)
from emu.apiserver.controllers import gc
from emu.apiserver.errors import ApiError
from emu.apiserver.resources import ResourceInfo
from emu.apiserver.selectors import FieldSelector, LabelSelector, SelectorError
from emu.apiserver.storage import Store
from emu.apiserver.types import Attributes, Decision, User
from emu.apiserver.tables import human_duration

MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's default --max-request-body-bytes
# emu's own POST /emu/mirror carries a whole lab's objects at once (4.3 MiB for 50 nodes,
# 1,000 Services and 2,000 pods): its limit is its own, each object still within MAX_BODY.
MIRROR_MAX_BODY = 64 * 1024 * 1024
ADMIN = User("kubernetes-admin", ("system:masters", "system:authenticated"))
BOOTSTRAP_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
IMMORTAL_NAMESPACES = ("default", "kube-system", "kube-public")  # NamespaceLifecycle refuses to delete them
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json", "application/apply-patch+yaml")
NAMESPACE_SUBRESOURCES = ("status", "finalize")
WATCH_DEFAULT_TIMEOUT = 1800  # kube-apiserver's --min-request-timeout


def _optional(name: str):
    """emu.apiserver.<name>, or None until that module is merged."""
    try:
        return __import__(f"emu.apiserver.{name}", fromlist=[name])
    except ImportError:
        return None


class AllowAll:
    """The authorizer of --insecure mode: everything is allowed."""

    def authorize(self, attributes: Attributes) -> Decision:
        return Decision(True, "")


class InsecureAuthenticator:
    """--insecure mode: every request is the cluster admin."""

    def authenticate(self, peer_cert: dict | None, headers) -> User | None:
        return ADMIN


# TokenRequest, as kube-apiserver takes it: at least 10 minutes, at most 2^32 s; an hour if not asked.
TOKEN_REQUEST = resources.ResourceInfo("authentication.k8s.io", "v1", "TokenRequest", "tokenrequests",
                                       "tokenrequest", True, verbs=("create",), stored=False)
MIN_TOKEN_SECONDS = 600
MAX_TOKEN_SECONDS = 1 << 32
DEFAULT_TOKEN_SECONDS = 3600


def cluster_security(store: Store, pki_dir: str | None = None, tls_cert: str | None = None,
                     tls_key: str | None = None, client_ca: str | None = None) -> dict:
    """ApiServer's keyword arguments for a secured server: TLS, authentication (auth.py),
    RBAC (rbac.py), admission (NodeRestriction and NamespaceLifecycle, admission.py), and
    RBAC's bootstrap policy. From a PKI directory as emu.control.pki writes it (ca.crt,
    apiserver.crt/.key, sa.pub), or from separate certificate files."""
    from emu.apiserver import admission, auth, rbac

    def bound_object_exists(claims: dict) -> bool:
        """A token bound to a pod is good while that pod is (kube-apiserver's check)."""
        private = claims.get("kubernetes.io") or {}
        pod = private.get("pod")
        if not pod:
            return True
        found = store.get("pods", private.get("namespace", ""), pod.get("name", ""))
        return found is not None and found["metadata"].get("uid") == pod.get("uid")

    if pki_dir:
        ctx = auth.server_ssl_context_from_directory(pki_dir)
        authn = auth.Authenticator.from_directory(pki_dir, token_check=bound_object_exists)
    else:
        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()
        ca = read(client_ca) if client_ca else b""
        ctx = auth.server_ssl_context(read(tls_cert), read(tls_key), ca)
        authn = auth.Authenticator(ca, None)

    def key_of(plural: str) -> str:
        for r in resources.RESOURCES:
            if r.plural == plural and r.stored and not r.storage_plural:
                return r.key
        return plural

    def lister(plural: str, namespace: str | None) -> list[dict]:
        return store.list_objects(key_of(plural), namespace or "")

    chain = admission.Chain([
        admission.NodeRestriction(lambda plural, ns, name: store.get(key_of(plural), ns, name)),
        admission.NamespaceLifecycle(lambda name: store.get("namespaces", "", name)),
    ])
    signer = None
    if pki_dir and os.path.exists(os.path.join(pki_dir, "sa.key")):
        with open(os.path.join(pki_dir, "sa.key"), "rb") as f:
            signer = f.read()
    return {"ssl_context": ctx, "authenticator": authn, "authorizer": rbac.Authorizer(lister),
            "admission": chain, "bootstrap_objects": rbac.bootstrap_objects(), "token_signer": signer}


# ---------------------------------------------------------------- request info

@dataclass
class RequestInfo:
    """What a request asks, as k8s.io/apiserver's RequestInfoFactory reads the path."""

    is_resource: bool
    verb: str
    path: str
    api_prefix: str = ""
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    parts: tuple[str, ...] = ()


_METHOD_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def request_info(method: str, path: str, query: dict[str, list[str]]) -> RequestInfo:
    """Parse a request as RequestInfoFactory does (verb from the method, a name and ?watch)."""
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    non = RequestInfo(False, method.lower(), path)
    if not parts or parts[0] not in ("api", "apis"):
        return non
    if parts[0] == "api":
        if len(parts) < 3:
            return non
        group, version, rest = "", parts[1], parts[2:]
    else:
        if len(parts) < 4:
            return non
        group, version, rest = parts[1], parts[2], parts[3:]
    info = RequestInfo(True, _METHOD_VERBS.get(method, method.lower()), path, parts[0], group, version)
    if rest[0] == "watch":
        info.verb = "watch"
        rest = rest[1:]
        if not rest:
            return non
    if rest[0] == "namespaces" and len(rest) > 1:
        info.namespace = rest[1]
        if len(rest) > 2 and rest[2] not in NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    info.parts = tuple(rest)
    info.resource = rest[0]
    if len(rest) >= 2:
        info.name = rest[1]
    if len(rest) >= 3:
        info.subresource = rest[2]
    if not info.name and info.verb == "get":
        info.verb = "list"
    if info.verb == "list" and _truthy(query.get("watch", [""])[0]):
        info.verb = "watch"
    if not info.name and info.verb == "delete":
        info.verb = "deletecollection"
    if info.verb in ("list", "watch") and not info.name:
        try:
            name = FieldSelector.parse(query.get("fieldSelector", [""])[0]).value_of("metadata.name")
        except SelectorError:
            name = None
        if name:
            info.name = name
            info.parts = tuple(rest[:1])  # the name came from the selector, not the path
    return info


def _truthy(v: str) -> bool:
    return v.lower() in ("1", "true", "yes")


# ---------------------------------------------------------------- media types

def _media_types(accept: str) -> list[tuple[str, dict]]:
    out = []
    for part in (accept or "").split(","):
        pieces = [p.strip() for p in part.split(";")]
        if not pieces[0]:
            continue
        params = {}
        for p in pieces[1:]:
            k, _, v = p.partition("=")
            params[k.strip()] = v.strip()
        out.append((pieces[0].lower(), params))
    return out


def negotiate(accept: str) -> tuple[str, str]:
    """(form, version) the client accepts: ("json"|"table"|"meta"|"metalist", meta version) or raise 406."""
    types = _media_types(accept)
    if not types:
        return "json", ""
    for mt, params in types:
        if mt not in ("application/json", "*/*", "application/*"):
            continue
        as_ = params.get("as", "")
        if not as_:
            return "json", ""
        if params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            if as_ == "Table":
                return "table", params["v"]
            if as_ in ("PartialObjectMetadata", "PartialObjectMetadataList"):
                return "meta", params["v"]
    raise errors.not_acceptable("application/json, application/json;as=Table;v=v1;g=meta.k8s.io, "
                                "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io")


# ---------------------------------------------------------------- tables (fallback)

def _age(obj: dict) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    try:
        t = time.mktime(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except ValueError:
        return "<unknown>"
    return human_duration(time.time() - t)


def partial_metadata(obj: dict, version: str = "v1") -> dict:
    return {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{version}",
            "metadata": obj.get("metadata") or {}}


def fallback_table(info: ResourceInfo, objects: list[dict], include_object: str) -> dict:
    """A Table with NAME and AGE, for when tables.py is not there."""
    rows = []
    for o in objects:
        row: dict[str, Any] = {"cells": [(o.get("metadata") or {}).get("name", ""), _age(o)]}
        if include_object == "Object":
            row["object"] = o
        elif include_object != "None":
            row["object"] = partial_metadata(o)
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
            "columnDefinitions": [
                {"name": "Name", "type": "string", "format": "name", "priority": 0,
                 "description": "Name must be unique within a namespace. Is required when creating resources, although "
                                "some resources may allow a client to request the generation of an appropriate name "
                                "automatically. Name is primarily intended for creation idempotence and configuration "
                                "definition. Cannot be updated. More info: "
                                "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"},
                {"name": "Age", "type": "string", "format": "", "priority": 0,
                 "description": "CreationTimestamp is a timestamp representing the server time when this object was "
                                "created. More info: "
                                "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}],
            "rows": rows}


# ---------------------------------------------------------------- merge patch (until patch.py lands)

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


# ---------------------------------------------------------------- the server

class Request:
    """One request as the handlers see it."""

    def __init__(self, handler: "_Handler", method: str):
        self.h = handler
        self.method = method
        url = urlsplit(handler.path)
        self.path = url.path or "/"
        self.query = parse_qs(url.query, keep_blank_values=True)
        self.user: User | None = None
        self.info: RequestInfo | None = None
        self.code = 0
        self.warnings: list[str] = []
        self.body_read = False
        self.note = ""  # extra words for the request's log line

    def discard_body(self) -> None:
        """Read a body nobody read (a request refused early), so the next request on this
        keep-alive connection starts where it should; a large or chunked one closes it."""
        if self.body_read:
            return
        self.body_read = True
        h = self.h
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            h.close_connection = True
            return
        try:
            length = int(h.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > 4 * MAX_BODY:
            h.close_connection = True
            return
        while length > 0:
            got = h.rfile.read(min(length, 1 << 16))
            if not got:
                break
            length -= len(got)

    def q(self, name: str, default: str = "") -> str:
        return self.query.get(name, [default])[0]

    @property
    def headers(self):
        return self.h.headers

    def body(self, limit: int = MAX_BODY) -> bytes:
        h = self.h
        if self.body_read:
            raise errors.internal("the request body was read twice")
        self.body_read = True
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            chunks, total = [], 0
            while True:
                line = h.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > limit:
                    h.close_connection = True
                    raise errors.too_large(limit)
                chunks.append(h.rfile.read(size))
                h.rfile.readline(1024)
            return b"".join(chunks)
        try:
            length = int(h.headers.get("Content-Length") or 0)
        except ValueError:
            h.close_connection = True
            raise errors.bad_request(f"invalid Content-Length: {h.headers.get('Content-Length')!r}") from None
        if length > limit:
            if length <= 4 * limit:  # read it, so the client sees the 413 and not a reset connection
                left = length
                while left > 0:
                    got = h.rfile.read(min(left, 1 << 16))
                    if not got:
                        break
                    left -= len(got)
            else:
                h.close_connection = True  # the unread body makes the connection unusable
            raise errors.too_large(limit)
        return h.rfile.read(length) if length else b""


class ApiServer:
    """The API server: `ApiServer(store, ...)`, then `serve((host, port))` or `start((host, port))`."""

    def __init__(self, store: Store, authenticator=None, authorizer=None, admission=None,
                 ssl_context: ssl.SSLContext | None = None, service_cidr: str = "10.96.0.0/12",
                 node_port_range: tuple[int, int] = (30000, 32767), bookmark_interval: float = 5.0,
                 log=None, bootstrap_objects: list[dict] | None = None, emu_driven: bool = False,
                 token_signer: bytes | None = None):
        self.store = store
        # In an emu cluster (stage 2 of docs/apiserver.md) emu's commands drive the kinds of
        # emu.apiserver.mirror: they write them (POST /emu/mirror); others' writes are refused.
        self.emu_driven = emu_driven
        self.token_signer = token_signer  # the service account key (PEM): TokenRequest signs with it
        self.authenticator = authenticator or InsecureAuthenticator()
        self.authorizer = authorizer or AllowAll()
        self.admission = admission
        self.ssl_context = ssl_context
        self.service_net = ipaddress.ip_network(service_cidr)
        self.node_ports = node_port_range
        self.bookmark_interval = bookmark_interval
        self.log = log if log is not None else sys.stderr
        self._alloc_lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._stopping = threading.Event()
        self._finalizing: set[str] = set()
        self.patch = _optional("patch")
        self.tables = _optional("tables")
        self.openapi = _optional("openapi")
        self._bootstrap(bootstrap_objects or [])
        # the custom resources of the stored CRDs (crd.py); names accepted and deletions resumed as after a restart
        self.crds = crd.Registry(store)
        crd.accept_all(store)
        for c in store.list_objects(crd.CRD_KEY):
            if c["metadata"].get("deletionTimestamp"):
                self._finalize_crd_later(c["metadata"]["name"])

    # ------------------------------------------------------------ lifecycle

    def _bootstrap(self, objects: list[dict]) -> None:
        """The namespaces every cluster has, and `objects` (RBAC's bootstrap policy) where missing."""
        for obj in objects:
            r = resources.by_kind(obj.get("apiVersion", ""), obj.get("kind", ""))
            meta = obj.get("metadata") or {}
            if r is None or self.store.get(r.key, meta.get("namespace", ""), meta.get("name", "")) is not None:
                continue
            obj = copy.deepcopy(obj)
            resources.prepare_create(r, obj)
            self.store.create(r.key, obj, r.field_values)
        info = resources.lookup("", "v1", "namespaces")
        for ns in BOOTSTRAP_NAMESPACES:
            if self.store.get(info.key, "", ns) is None:
                obj = {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": ns}}
                resources.prepare_create(info, obj)
                self.store.create(info.key, obj, info.field_values)
        for ns in self.store.list_objects(info.key):
            if ns["metadata"].get("deletionTimestamp"):
                self._finalize_namespace_later(ns["metadata"]["name"])

    def make_httpd(self, address: tuple[str, int]) -> ThreadingHTTPServer:
        api = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def get_request(self):
                sock, addr = self.socket.accept()
                # headers and body go out in separate writes: without NODELAY, Nagle and delayed ACKs stall each
                # response ~40 ms
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if api.ssl_context is not None:
                    sock = api.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                return sock, addr

            def handle_error(self, request, client_address):
                exc = sys.exc_info()[1]
                if isinstance(exc, (ConnectionError, ssl.SSLError, socket.timeout, TimeoutError)):
                    return
                super().handle_error(request, client_address)

        httpd = Server(address, _Handler)
        httpd.api = api  # type: ignore[attr-defined]
        self._httpd = httpd
        return httpd

    def serve(self, address: tuple[str, int]) -> None:
        """Serve until shutdown() is called (from another thread or a signal handler's thread)."""
        httpd = self._httpd or self.make_httpd(address)
        try:
            httpd.serve_forever(poll_interval=0.2)
        finally:
            httpd.server_close()

    def start(self, address: tuple[str, int]) -> tuple[str, int]:
        """Serve in a background thread; returns the bound (host, port)."""
        httpd = self.make_httpd(address)
        threading.Thread(target=self.serve, args=(address,), name="apiserver", daemon=True).start()
        return httpd.server_address[:2]

    def shutdown(self) -> None:
        """Stop serving: open watches end, the listening socket closes."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()

    # ------------------------------------------------------------ request entry

    def handle(self, handler: "_Handler", method: str) -> None:
        req = Request(handler, method)
        t0 = time.monotonic()
        try:
            try:
                try:
                    self._serve(req)
                finally:
                    req.discard_body()
            except ApiError as e:
                self._send_json(req, e.code, e.body())
            except (BrokenPipeError, ConnectionResetError):
                req.code = req.code or 499
                handler.close_connection = True
            except Exception as e:  # never a traceback to the client: a Status, and the traceback in the log
                traceback.print_exc(file=self.log)
                err = errors.internal(f"{type(e).__name__}: {e}")
                try:
                    self._send_json(req, err.code, err.body())
                except OSError:
                    handler.close_connection = True
        finally:
            ms = (time.monotonic() - t0) * 1000
            who = req.user.name if req.user else "-"
            try:
                note = f" {req.note}" if req.note else ""
                self.log.write(f"{method} {handler.path} {req.code} {ms:.1f}ms {who}{note}\n")
                self.log.flush()
            except (OSError, ValueError):
                pass

    def _serve(self, req: Request) -> None:
        peer = None
        conn = req.h.connection
        if isinstance(conn, ssl.SSLSocket):
            try:
                peer = conn.getpeercert() or None
            except ValueError:
                peer = None
        req.user = self.authenticator.authenticate(peer, req.headers)
        if req.user is None:
            raise errors.unauthorized()
        req.user = impersonation.impersonate(req.user, req.headers, self.authorizer.authorize, self._forbidden)
        info = request_info(req.method, req.path, req.query)
        req.info = info
        attrs = self.attributes(req.user, info)
        decision = self.authorizer.authorize(attrs)
        if not decision.allowed:
            raise self._forbidden(attrs, decision.reason)
        if self.emu_driven:
            if not info.is_resource and info.path == mirror.PATH:
                return self._mirror(req)
            if info.is_resource and info.subresource in ("", "status", "scale"):
                refused = mirror.refuse(req.user.name, info.verb, info.group, info.resource, info.namespace,
                                         info.subresource, name=info.name,
                                         current=lambda: self.store.get(f"{info.resource}.{info.group}" if info.group
                                                                        else info.resource, info.namespace, info.name))
                if refused is not None:
                    raise refused
        if not info.is_resource:
            return self._non_resource(req)
        return self._resource(req, info, attrs)

    def _mirror(self, req: Request) -> None:
        """POST /emu/mirror from emu's own commands: the objects emu drives (emu.apiserver.mirror)."""
        if req.method != "POST":
            raise self._not_allowed()
        if req.user.name != mirror.CONTROLLER_USER:
            raise errors.forbidden("", "", f'User "{req.user.name}" cannot post path "{mirror.PATH}": only emu writes '
                                   "the objects it drives", "")  # fmt: skip
        body = req.body(MIRROR_MAX_BODY)
        try:
            payload = json.loads(body or b"{}")
        except ValueError as error:
            raise errors.bad_request(f"the mirrored objects are not JSON: {error}") from None
        if len(body) > MAX_BODY and isinstance(payload, dict) and isinstance(payload.get("objects"), list):
            for obj in payload["objects"]:
                if len(json.dumps(obj)) > MAX_BODY:  # as the API server would refuse it written alone
                    raise errors.too_large(MAX_BODY)
        if isinstance(payload, dict) and isinstance(payload.get("moves"), list):
            return self._send_json(req, 200, mirror.move(self.store, payload["moves"]))
        objects = payload.get("objects") if isinstance(payload, dict) else None
        if not isinstance(objects, list):
            raise errors.bad_request('expected {"objects": [...]} or {"moves": [...]}')
        return self._send_json(req, 200, mirror.sync(self.store, objects))

    @staticmethod
    def attributes(user: User, info: RequestInfo) -> Attributes:
        if not info.is_resource:
            return Attributes(user=user, verb=info.verb, is_resource_request=False, path=info.path)
        return Attributes(user=user, verb=info.verb, namespace=info.namespace, api_group=info.group,
                          api_version=info.version, resource=info.resource, subresource=info.subresource,
                          name=info.name, is_resource_request=True, path=info.path)

    @staticmethod
    def _forbidden(a: Attributes, reason: str) -> ApiError:
        """403 worded as the authorization filter words it."""
        user = f'User "{a.user.name}"'
        if not a.is_resource_request:
            msg = f'{user} cannot {a.verb} path "{a.path}"'
            resource = ""
        else:
            res = a.resource + (f"/{a.subresource}" if a.subresource else "")
            msg = f'{user} cannot {a.verb} resource "{res}" in API group "{a.api_group}"'
            msg += f' in the namespace "{a.namespace}"' if a.namespace else " at the cluster scope"
            resource = a.resource
        if reason:
            msg += f": {reason}"
        return errors.forbidden(resource, a.name, msg, a.api_group)

    # ------------------------------------------------------------ responses

    def _send(self, req: Request, code: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        h = req.h
        req.code = code
        h.send_response(code)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Cache-Control", "no-cache, private")
        for w in req.warnings:
            h.send_header("Warning", f'299 - {json.dumps(w)}')
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if req.method != "HEAD":
            h.wfile.write(body)

    def _send_json(self, req: Request, code: int, body: bytes | dict | str,
                   content_type: str = "application/json") -> None:
        if isinstance(body, dict):
            body = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        elif isinstance(body, str):
            body = body.encode()
        self._send(req, code, body, content_type)

    # ------------------------------------------------------------ non-resource paths

    def _non_resource(self, req: Request) -> None:
        path = req.path.rstrip("/") or "/"
        if req.method not in ("GET", "HEAD"):
            if path in ("/api", "/apis", "/version") or path.startswith(("/api/", "/apis/")):
                raise self._not_allowed()
            return self._send(req, 404, b"404 page not found\n", "text/plain; charset=utf-8")
        if path in ("/healthz", "/livez", "/readyz") or path.startswith(("/healthz/", "/livez/", "/readyz/")):
            if "verbose" in req.query:
                name = path.split("/")[1]
                text = f"[+]ping ok\n[+]log ok\n[+]etcd ok\n{name} check passed\n"
                return self._send(req, 200, text.encode(), "text/plain; charset=utf-8")
            return self._send(req, 200, b"ok", "text/plain; charset=utf-8")
        if path == "/version":
            return self._send_json(req, 200, discovery.version())
        custom = self.crds.resources()
        if path in ("/api", "/apis"):
            v = discovery.negotiate_aggregated(req.headers.get("Accept", ""))
            if v:
                body = discovery.aggregated(path == "/api", v, custom)
                return self._send_json(req, 200, body, discovery.AGGREGATED[v])
            if path == "/api":
                host = req.headers.get("Host", "")
                return self._send_json(req, 200, discovery.api_versions(host))
            return self._send_json(req, 200, discovery.api_group_list(custom))
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) == 2:
            doc = discovery.resource_list("", parts[1])
            if doc:
                return self._send_json(req, 200, doc)
        if parts[0] == "apis" and len(parts) == 2:
            doc = discovery.api_group(parts[1], custom)
            if doc:
                return self._send_json(req, 200, doc)
        if parts[0] == "apis" and len(parts) == 3:
            doc = discovery.resource_list(parts[1], parts[2], custom)
            if doc:
                return self._send_json(req, 200, doc)
        if parts[0] == "openapi":
            return self._openapi(req, parts[1:])
        return self._send(req, 404, b"404 page not found\n", "text/plain; charset=utf-8")

    def _openapi(self, req: Request, parts: list[str]) -> None:
        """/openapi/v2 (JSON or protobuf, as the client asks) and /openapi/v3/...: openapi.py's documents."""
        oa = self.openapi
        if oa is None or not hasattr(oa, "handle"):
            return self._send(req, 404, b"404 page not found\n", "text/plain; charset=utf-8")
        query = urlsplit(req.h.path).query
        if parts[:1] == ["v3"]:
            custom = self._custom_openapi()
            path = req.path.rstrip("/")
            if path == "/openapi/v3" and custom and hasattr(oa, "v3_index"):
                index = oa.v3_index()
                for gv, (body, digest) in custom.items():
                    index["paths"][gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
                return self._send_json(req, 200, index)
            if path.startswith("/openapi/v3/") and path[len("/openapi/v3/"):] in custom:
                body, digest = custom[path[len("/openapi/v3/"):]]
                return self._send(req, 200, body, "application/json", {"Etag": f'"{digest}"'})
        result = oa.handle(req.path, query, req.headers.get("Accept", ""), req.headers.get("Accept-Encoding", ""))
        if result is None:
            return self._send(req, 404, b"404 page not found\n", "text/plain; charset=utf-8")
        code, headers, body = result
        if code == 406:
            err = errors.not_acceptable(body.decode(errors="replace") if isinstance(body, bytes) else str(body))
            err.message = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
            return self._send_json(req, 406, err.body())
        headers = dict(headers)
        ctype = headers.pop("Content-Type", "application/json")
        return self._send(req, code, body, ctype, headers)

    def _custom_openapi(self) -> dict[str, tuple[bytes, str]]:
        """The OpenAPI v3 documents of the custom resources' group-versions ("apis/G/V": (JSON, hash)),
        made again when the served custom resources change."""
        infos = self.crds.resources()
        cached = getattr(self, "_custom_openapi_cache", None)
        if cached is not None and cached[0] is infos:
            return cached[1]
        docs: dict[str, tuple[bytes, str]] = {}
        if infos and hasattr(self.openapi, "v3"):
            import hashlib

            template = json.loads(self.openapi.v3("apis/apps/v1") or b"{}")
            builtin = set(resources.group_versions())
            for g, v in dict.fromkeys((r.group, r.version) for r in infos):
                if (g, v) in builtin:
                    continue
                body = json.dumps(crd.openapi_v3([r for r in infos if (r.group, r.version) == (g, v)], template),
                                  separators=(",", ":")).encode()
                docs[f"apis/{g}/{v}"] = (body, hashlib.sha512(body).hexdigest().upper())
        self._custom_openapi_cache = (infos, docs)
        return docs

    # ------------------------------------------------------------ resource requests

    def _resource(self, req: Request, info: RequestInfo, attrs: Attributes) -> None:
        custom = self.crds.resources()
        if not any(g == info.group and v == info.version for g, v in discovery.group_versions(custom)):
            return self._send(req, 404, b"404 page not found\n", "text/plain; charset=utf-8")
        r = resources.lookup(info.group, info.version, info.resource) or self.crds.lookup(
            info.group, info.version, info.resource)
        if r is None:
            raise errors.resource_not_found()
        if len(info.parts) > 3:
            raise errors.resource_not_found()
        verb = info.verb
        if r.key == "pods" and info.subresource in streaming.SUBRESOURCES and info.namespace:
            return streaming.serve(self, req, info, attrs)  # log, exec, attach, portforward: streams, not objects
        if info.subresource:
            sub = r.subresource(info.subresource)
            if sub is None:
                raise errors.resource_not_found()
            allowed = sub.verbs
        else:
            allowed = r.verbs
        named = bool(info.name) and len(info.parts) > 1  # a name in the path, not from a field selector
        if r.namespaced and not info.namespace and (named or verb in ("create", "deletecollection")):
            raise errors.resource_not_found() if info.name else self._not_allowed()
        if not r.namespaced and info.namespace and r.plural != "namespaces":
            raise errors.resource_not_found()
        if verb not in allowed:
            raise self._not_allowed()
        dry = req.q("dryRun")
        if dry and dry != "All":
            raise errors.bad_request(f'Invalid dry run value: "{dry}"; only "All" is supported')
        ns = info.namespace if r.namespaced else ""
        if not r.stored:
            return self._review(req, r, info, attrs)
        if verb == "get":
            return self._get(req, r, ns, info)
        if verb in ("list", "watch"):
            return self._list(req, r, ns, info)
        if verb == "create":
            if info.subresource == "binding":
                return self._bind(req, r, ns, info.name)
            if info.subresource == "token":
                return self._token_request(req, ns, info.name, attrs)
            return self._create(req, r, ns, attrs)
        if verb == "update":
            return self._update(req, r, ns, info, attrs)
        if verb == "patch":
            return self._patch(req, r, ns, info, attrs)
        if verb == "delete":
            return self._delete(req, r, ns, info, attrs)
        if verb == "deletecollection":
            return self._delete_collection(req, r, ns, info, attrs)
        raise self._not_allowed()

    @staticmethod
    def _not_allowed() -> ApiError:
        return ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {})

    # ------------------------------------------------------------ reads

    def _get(self, req: Request, r: ResourceInfo, ns: str, info: RequestInfo) -> None:
        form, mv = negotiate(req.headers.get("Accept", ""))
        text = self.store.get_text(r.key, ns, info.name)
        if text is None:
            raise errors.not_found(r.plural, info.name, r.group)
        if info.subresource == "scale":
            return self._send_json(req, 200, self._scale_of(json.loads(text), r))
        if form == "json" and not r.converts:
            return self._send_json(req, 200, text)
        obj = resources.from_storage(r, json.loads(text))
        if form == "table":
            return self._send_json(req, 200, self._table(req, r, [obj], mv, obj["metadata"].get("resourceVersion", "")),
                                   f"application/json;as=Table;v={mv};g=meta.k8s.io")
        if form == "meta":
            return self._send_json(req, 200, partial_metadata(obj, mv))
        return self._send_json(req, 200, obj)

    def _selectors(self, req: Request, r: ResourceInfo) -> tuple[LabelSelector, FieldSelector]:
        try:
            labels = LabelSelector.parse(req.q("labelSelector"))
        except SelectorError as e:
            raise errors.bad_request(f'unable to parse requested label selector "{req.q("labelSelector")}": {e}')
        try:
            fields = FieldSelector.parse(req.q("fieldSelector"))
        except SelectorError as e:
            raise errors.bad_request(str(e))
        for f in fields.fields():
            if f not in r.field_labels():
                raise errors.bad_request(f'field label not supported: {f}')
        return labels, fields

    def _table(self, req: Request, r: ResourceInfo, objects: list[dict], mv: str, rv: str, token: str = "") -> dict:
        include = req.q("includeObject", "Metadata") or "Metadata"
        if include not in ("None", "Metadata", "Object"):
            raise errors.bad_request(f'includeObject: Unsupported value: "{include}"')
        table = None
        if r.custom is not None:
            table = r.custom.table(objects, include, resource_version=rv, continue_token=token)
        elif self.tables is not None:
            table = self.tables.table(r, objects, include, resource_version=rv, continue_token=token)
        if table is None:
            table = fallback_table(r, objects, include)
        table["apiVersion"] = f"meta.k8s.io/{mv}"
        meta = table.setdefault("metadata", {})
        meta["resourceVersion"] = rv
        if token:
            meta["continue"] = token
        if mv != "v1":
            for row in table.get("rows") or []:
                o = row.get("object")
                if isinstance(o, dict) and o.get("kind") == "PartialObjectMetadata":
                    o["apiVersion"] = f"meta.k8s.io/{mv}"
        return table

    def _list(self, req: Request, r: ResourceInfo, ns: str, info: RequestInfo) -> None:
        form, mv = negotiate(req.headers.get("Accept", ""))
        labels, fields = self._selectors(req, r)
        if len(info.parts) > 1 and info.name:  # /watch/.../NAME or a named watch: that object only
            fields = FieldSelector(fields.terms + FieldSelector.parse(f"metadata.name={info.name}").terms)
        if info.verb == "watch":
            return self._watch(req, r, ns, labels, fields, form, mv)
        try:
            limit = int(req.q("limit") or 0)
        except ValueError:
            raise errors.bad_request(f'limit: Invalid value: "{req.q("limit")}"')
        if form == "table":
            return self._list_table(req, r, ns, labels, fields, max(limit, 0), mv)
        texts, rv, token = self.store.list(r.key, ns, labels, fields, max(limit, 0), req.q("continue"))
        if form == "json" and not r.converts:
            meta = {"resourceVersion": str(rv)}
            if token:
                meta["continue"] = token
            head = json.dumps({"kind": r.list_kind, "apiVersion": r.api_version, "metadata": meta},
                              separators=(",", ":"))[:-1]
            body = head + ',"items":[' + ",".join(texts) + "]}"
            return self._send_json(req, 200, body)
        objs = [resources.from_storage(r, json.loads(t)) for t in texts]
        if form == "table":
            return self._send_json(req, 200, self._table(req, r, objs, mv, str(rv), token),
                                   f"application/json;as=Table;v={mv};g=meta.k8s.io")
        meta = {"resourceVersion": str(rv)}
        if token:
            meta["continue"] = token
        if form == "meta":
            return self._send_json(req, 200, {"kind": "PartialObjectMetadataList", "apiVersion": f"meta.k8s.io/{mv}",
                                              "metadata": meta, "items": [partial_metadata(o, mv) for o in objs]})
        return self._send_json(req, 200, {"kind": r.list_kind, "apiVersion": r.api_version, "metadata": meta,
                                          "items": objs})

    def _list_table(self, req: Request, r: ResourceInfo, ns: str, labels: LabelSelector, fields: FieldSelector,
                    limit: int, mv: str) -> None:
        """A list as a Table. The rows' objects carry each object's managedFields as stored, spliced
        into the answer's text: neither parsed nor encoded again (most of a pod's metadata)."""
        split, rv, token = self.store.list_split(r.key, ns, labels, fields, limit, req.q("continue"))
        objs = [resources.from_storage(r, obj) for obj, _ in split]
        table = self._table(req, r, objs, mv, str(rv), token)
        marker = f"\x00{random.getrandbits(64):016x}:"  # a text no stored string holds
        managed = {}
        for i, (obj, text) in enumerate(split):
            if text is not None:  # a placeholder where the rows' objects show them
                obj.setdefault("metadata", {})["managedFields"] = f"{marker}{i}"
                managed[str(i)] = text
        body = json.dumps(table, separators=(",", ":"), ensure_ascii=False)
        if managed:  # each "<marker>i" (a JSON string) becomes the i-th object's managedFields
            parts = body.split(json.dumps(marker)[:-1])
            for n in range(1, len(parts)):
                index, _, rest = parts[n].partition('"')
                parts[n] = managed[index] + rest
            body = "".join(parts)
        self._send_json(req, 200, body, f"application/json;as=Table;v={mv};g=meta.k8s.io")

    # ------------------------------------------------------------ watch

    def _watch(self, req: Request, r: ResourceInfo, ns: str, labels: LabelSelector, fields: FieldSelector,
               form: str, mv: str) -> None:
        try:
            timeout = float(req.q("timeoutSeconds") or WATCH_DEFAULT_TIMEOUT)
        except ValueError:
            raise errors.bad_request(f'timeoutSeconds: Invalid value: "{req.q("timeoutSeconds")}"')
        bookmarks = _truthy(req.q("allowWatchBookmarks"))
        if _truthy(req.q("sendInitialEvents")):
            # streaming lists are not served: kube-apiserver's answer without the WatchList feature,
            # on which client-go falls back to list + watch
            raise errors.invalid("ListOptions", "", [resources.forbidden_field(
                "sendInitialEvents", "sendInitialEvents is forbidden for watch unless the WatchList feature gate is "
                                     "enabled")], "meta.k8s.io")
        h = req.h
        try:
            watcher = self.store.watch(r.key, ns, labels, fields, req.q("resourceVersion"))
            first_error = None
        except ApiError as e:
            if e.code != 410:
                raise
            watcher, first_error = None, e
        req.code = 200
        h.send_response(200)
        h.send_header("Content-Type", "application/json" if form == "json" else
                      f"application/json;as=Table;v={mv};g=meta.k8s.io" if form == "table" else "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Cache-Control", "no-cache, private")
        h.end_headers()

        def chunk(data: bytes) -> None:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        def event(etype: str, obj_text: str) -> bytes:
            if form == "json" and not r.converts:
                return b'{"type":"%s","object":%s}\n' % (etype.encode(), obj_text.encode())
            obj = resources.from_storage(r, json.loads(obj_text))
            if form == "table":
                obj = self._table(req, r, [obj], mv, obj["metadata"].get("resourceVersion", ""))
            elif form == "meta":
                obj = partial_metadata(obj, mv)
            return (json.dumps({"type": etype, "object": obj}, separators=(",", ":"), ensure_ascii=False)
                    + "\n").encode()

        try:
            if first_error is not None:
                chunk(json.dumps({"type": "ERROR", "object": first_error.status()}, separators=(",", ":")).encode()
                      + b"\n")
                return
            deadline = time.monotonic() + timeout
            last_bookmark = time.monotonic()
            while not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ev = watcher.next(min(left, 0.5))
                if ev is not None:
                    chunk(event(ev[0], ev[1]))
                    continue
                if self._client_gone(h):
                    break
                if r.custom is not None and self.crds.lookup(r.group, r.version, r.plural) is None:
                    break  # its CRD is gone: kube-apiserver ends the watches of a removed storage
                if bookmarks and time.monotonic() - last_bookmark >= self.bookmark_interval:
                    rv = watcher.bookmark_rv()
                    if rv is not None:
                        kind = r.kind if form != "table" else r.kind
                        obj = {"kind": kind, "apiVersion": r.api_version, "metadata": {"resourceVersion": str(rv)}}
                        chunk(json.dumps({"type": "BOOKMARK", "object": obj}, separators=(",", ":")).encode() + b"\n")
                        last_bookmark = time.monotonic()
        finally:
            if watcher is not None:
                watcher.stop()
            try:
                h.wfile.write(b"0\r\n\r\n")
            except OSError:
                h.close_connection = True

    @staticmethod
    def _client_gone(h: BaseHTTPRequestHandler) -> bool:
        """True when the client closed a watch connection (it sends nothing else while watching)."""
        sock = h.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            old = sock.gettimeout()
            sock.settimeout(0.01)
            try:
                data = sock.recv(1)
            except (socket.timeout, ssl.SSLWantReadError, BlockingIOError):
                return False
            finally:
                sock.settimeout(old)
            return data == b""
        except (OSError, ValueError):
            return True

    # ------------------------------------------------------------ writes: shared steps

    def _read_object(self, req: Request, r: ResourceInfo, expect_kind: str | None = None,
                     api_version: str | None = None) -> dict:
        """The request body as an object of the expected kind: JSON, or protobuf as kubectl >= 1.32 sends."""
        ctype = (req.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()
        raw = req.body()
        if ctype == protobuf.CONTENT_TYPE:
            try:
                obj = protobuf.decode(raw)
            except (protobuf.ProtobufError, ValueError) as e:
                raise errors.bad_request(f"the body of the request could not be decoded as protobuf: {e}")
            return self._check_object(obj, r, expect_kind, api_version)
        if ctype not in ("application/json", "*/*", ""):
            raise errors.unsupported_media_type(f"application/json, {protobuf.CONTENT_TYPE}")
        return self._decode(raw, r, expect_kind, api_version)

    @classmethod
    def _decode(cls, raw: bytes, r: ResourceInfo, expect_kind: str | None = None,
                api_version: str | None = None) -> dict:
        try:
            obj = json.loads(raw, parse_constant=gojson.refuse_constant)
        except (ValueError, UnicodeDecodeError) as e:  # in Go's words, as kube-apiserver's decoder says it
            raise errors.bad_request(f"couldn't get version/kind; json parse error: {gojson.syntax_error(raw) or e}")
        if obj is None:  # Go decodes null into an empty object
            obj = {}
        if not isinstance(obj, dict):
            raise errors.bad_request("couldn't get version/kind; json parse error: json: cannot unmarshal "
                                     f"{gojson.kind_of(obj)} into Go value of type struct {{ APIVersion string "
                                     "\"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }")
        return cls._check_object(obj, r, expect_kind, api_version)

    @staticmethod
    def _check_object(obj: dict, r: ResourceInfo, expect_kind: str | None = None,
                      api_version: str | None = None) -> dict:
        """400 when the body's apiVersion or kind is not the URL's (missing ones are taken from the URL)."""
        kind = expect_kind or r.kind
        want_av = api_version or r.api_version
        av = obj.get("apiVersion") or want_av
        if av != want_av:
            raise errors.bad_request(f"the API version in the data ({av}) does not match the expected API version "
                                     f"({want_av})")
        got_kind = obj.get("kind") or kind
        if got_kind != kind:
            internal = (r.group.split(".")[0] if r.group else "core")
            raise errors.bad_request(f"the object provided is unrecognized (must be of type {kind}): converting "
                                     f"({av.split('/')[-1]}.{got_kind}) to ({internal}.{kind}): unknown conversion")
        obj["apiVersion"], obj["kind"] = av, got_kind
        meta = obj.get("metadata")
        if meta is None:
            obj["metadata"] = {}
        elif not isinstance(meta, dict):
            raise errors.bad_request("metadata: must be an object")
        return obj

    def _check_fields(self, req: Request, r: ResourceInfo, obj: dict) -> None:
        """fieldValidation=Strict|Warn|Ignore against the OpenAPI schema (when openapi.py is there)."""
        mode = req.q("fieldValidation") or "Warn"
        if mode not in ("Strict", "Warn", "Ignore"):
            raise errors.bad_request(f'fieldValidation: Unsupported value: "{mode}": supported values: '
                                     '"Ignore", "Strict", "Warn"')
        if r.custom is not None:
            unknown = r.custom.unknown_fields(obj)  # pruned, as structural schemas prune
            if mode == "Ignore":
                return
        elif mode == "Ignore" or self.openapi is None or not hasattr(self.openapi, "unknown_fields"):
            return
        else:
            unknown = self.openapi.unknown_fields(r.api_version, r.kind, obj) or []
        if not unknown:
            return
        if mode == "Strict":
            text = ", ".join(f'unknown field "{f}"' for f in unknown)
            raise errors.bad_request(f'{r.kind} in version "{r.version}" cannot be handled as a {r.kind}: '
                                     f"strict decoding error: {text}")
        for f in unknown:
            req.warnings.append(f'unknown field "{f}"')

    def _namespace_lifecycle(self, r: ResourceInfo, ns: str, name: str) -> None:
        """NamespaceLifecycle admission: no new objects in a missing or terminating namespace."""
        if not r.namespaced:
            return
        nsobj = self.store.get("namespaces", "", ns)
        if nsobj is None:
            raise errors.not_found("namespaces", ns)
        if nsobj["metadata"].get("deletionTimestamp") or (nsobj.get("status") or {}).get("phase") == "Terminating":
            err = errors.forbidden(r.plural, name, f"unable to create new content in namespace {ns} because it is "
                                                   "being terminated", r.group)
            err.details["causes"] = [{"reason": "NamespaceTerminating", "message": f"namespace {ns} is being "
                                                                                     "terminated",
                                      "field": "metadata.namespace"}]
            raise err

    def _admit(self, attrs: Attributes, old: dict | None, new: dict | None) -> None:
        """The admission chain; its refusals (admission.AdmissionError) become Status errors."""
        if self.admission is None:
            return
        try:
            self.admission.admit(attrs, old, new)
        except ApiError:
            raise
        except Exception as e:
            if type(e).__name__ == "AdmissionError" and hasattr(e, "code"):
                raise ApiError(e.code, e.reason, e.message, e.details or None) from None
            raise

    @staticmethod
    def _manager(req: Request) -> str:
        """The field manager: ?fieldManager=, else the User-Agent's first word (as kube-apiserver)."""
        return (req.q("fieldManager") or (req.headers.get("User-Agent") or "unknown").split("/")[0])[:128]

    def _schema(self, api_version: str, kind: str):
        """openapi.py's PatchSchema for a kind, None without openapi.py."""
        if self.openapi is None or not hasattr(self.openapi, "patch_schema"):
            return None
        return self.openapi.patch_schema(api_version, kind)

    def _managed(self, req: Request, obj: dict, old: dict | None, r: ResourceInfo, subresource: str = "") -> dict:
        """`obj` with metadata.managedFields recording this write (patch.py's update_managed_fields)."""
        if self.patch is not None and hasattr(self.patch, "update_managed_fields"):
            return self.patch.update_managed_fields(old, obj, self._manager(req), self._schema(r.api_version, r.kind),
                                                    subresource=subresource)
        entries = [e for e in (obj["metadata"].get("managedFields") or []) if isinstance(e, dict)]
        manager = self._manager(req)
        entry = {"manager": manager, "operation": "Update", "apiVersion": r.api_version,
                 "time": storage.now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": {}}
        if subresource:
            entry["subresource"] = subresource
        entries = [e for e in entries if not (e.get("manager") == manager and e.get("operation") == "Update"
                                              and e.get("subresource", "") == subresource)]
        obj["metadata"]["managedFields"] = entries + [entry]
        return obj

    def _set_namespace(self, r: ResourceInfo, obj: dict, ns: str) -> None:
        meta = obj["metadata"]
        if r.namespaced:
            body_ns = meta.get("namespace") or ""
            if body_ns and body_ns != ns:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent on "
                                         "the request")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)

    def _invalid(self, r: ResourceInfo, obj: dict, causes: list[dict]) -> ApiError:
        meta = obj.get("metadata") or {}
        return errors.invalid(r.kind, meta.get("name") or meta.get("generateName") or "", causes, r.group)

    # ------------------------------------------------------------ create

    def _create(self, req: Request, r: ResourceInfo, ns: str, attrs: Attributes, obj: dict | None = None,
                code: int = 201, applied: bool = False) -> None:
        """POST (and the create of a PUT or an apply of a missing object); `applied`: managedFields are set."""
        if obj is None:
            obj = self._read_object(req, r)
        self._check_fields(req, r, obj)
        self._set_namespace(r, obj, ns)
        meta = obj["metadata"]
        owned = (r.group, r.plural) in mirror.OWNED_RESOURCES
        if self.emu_driven and owned and req.user.name != mirror.CONTROLLER_USER:
            refused = mirror.refuse(req.user.name, "create", r.group, r.plural, ns, body=lambda: obj)
            if refused is not None:
                raise refused
        if meta.get("resourceVersion"):
            raise errors.internal("resourceVersion should not be set on objects to be created")
        for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(k, None)
        if not applied:
            meta.pop("managedFields", None)
        name = meta.get("name") or ""
        generate = "" if name else (meta.get("generateName") or "")
        if r.custom is not None and r.custom.terminating:  # apiextensions' forbidCreateAdmission
            raise errors.forbidden(r.plural, name, "create not allowed while custom resource definition is "
                                                   "terminating", r.group)
        self._namespace_lifecycle(r, ns, name)
        stored = resources.to_storage(r, obj)
        resources.prepare_create(r, stored)
        dry = req.q("dryRun") == "All"
        fields_of = self._fields_of(r)
        for attempt in range(8):
            if generate:
                stored["metadata"]["name"] = generate[:storage.MAX_GENERATE_NAME] + "".join(
                    random.choice(storage.NAME_CHARS) for _ in range(storage.NAME_SUFFIX))
            causes = resources.validate(r, stored)
            if generate:
                causes = [dict(c, field="metadata.generateName", message=c["message"].replace(
                    json.dumps(stored["metadata"]["name"]), json.dumps(generate)))
                          if c["field"] == "metadata.name" else c for c in causes]
            if causes:
                raise self._invalid(r, stored if generate else obj, causes)
            self._admit(attrs, None, stored)
            if not applied:
                # status is a reset field of a kind with a status subresource: a create's manager does not own it
                status = stored.pop("status", None) if r.has_status() else None
                stored = self._managed(req, stored, None, r)
                if status is not None:
                    stored["status"] = status
            try:
                if r.key == "services":
                    with self._alloc_lock:
                        self._allocate_service(r, stored, None)
                        out = self.store.create(r.key, stored, fields_of, dry)
                else:
                    out = self.store.create(r.key, stored, fields_of, dry)
                break
            except ApiError as e:
                if not generate or e.reason != "AlreadyExists" or attempt == 7:
                    raise
        if r.key == crd.CRD_KEY and not dry:
            crd.accept_names(self.store, out["metadata"]["name"])
        self._send_json(req, code, resources.from_storage(r, out))

    @staticmethod
    def _fields_of(r: ResourceInfo) -> Callable[[dict], dict]:
        if r.storage_plural:
            return resources.lookup("", "v1", r.storage_plural).field_values
        return r.field_values

    # ------------------------------------------------------------ service addresses

    def _allocate_service(self, r: ResourceInfo, svc: dict, old: dict | None) -> None:
        spec = svc.setdefault("spec", {})
        if spec.get("type") == "ExternalName":
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
            return
        used_ips, used_ports = set(), set()
        for o in self.store.list_objects(r.key):
            if old is not None and o["metadata"].get("uid") == old["metadata"].get("uid"):
                continue
            ips, ports = resources.service_addresses(o)
            used_ips |= ips
            used_ports |= ports
        if old is not None and (old.get("spec") or {}).get("clusterIP") and not spec.get("clusterIP"):
            spec["clusterIP"] = old["spec"]["clusterIP"]
            spec["clusterIPs"] = old["spec"].get("clusterIPs") or [old["spec"]["clusterIP"]]
        ip = spec.get("clusterIP") or ""
        if ip and ip != "None" and (old is None or ip != (old.get("spec") or {}).get("clusterIP")):
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                raise self._invalid(r, svc, [resources.invalid_value(
                    "spec.clusterIPs[0]", ip, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")])
            if addr not in self.service_net:
                raise self._invalid(r, svc, [resources.invalid_value(
                    "spec.clusterIPs", [ip], f"failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid "
                                              f"range. The range of valid IPs is {self.service_net}")])
            if ip in used_ips:
                raise self._invalid(r, svc, [resources.invalid_value(
                    "spec.clusterIPs", [ip], f"failed to allocate IP {ip}: provided IP is already allocated")])
        elif not ip:
            size = self.service_net.num_addresses
            for _ in range(1000):
                cand = str(self.service_net[random.randrange(2, max(size - 1, 3))])
                if cand not in used_ips:
                    ip = cand
                    break
            else:
                raise errors.internal("failed to allocate a serviceIP: range is full")
            spec["clusterIP"] = ip
        if ip:
            spec["clusterIPs"] = [ip]
            if ip != "None":
                spec.setdefault("ipFamilies", ["IPv6" if ":" in ip else "IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
        if spec.get("type") in ("NodePort", "LoadBalancer"):
            lo, hi = self.node_ports
            old_ports = {(p.get("name"), p.get("port")): p.get("nodePort")
                         for p in ((old or {}).get("spec") or {}).get("ports") or []}
            for i, p in enumerate(spec.get("ports") or []):
                if not p.get("nodePort"):
                    prev = old_ports.get((p.get("name"), p.get("port")))
                    if prev:
                        p["nodePort"] = prev
                        continue
                    free = [n for n in range(lo, hi + 1) if n not in used_ports]
                    if not free:
                        raise errors.internal("failed to allocate a nodePort: range is full")
                    p["nodePort"] = random.choice(free)
                elif p["nodePort"] in used_ports:
                    raise self._invalid(r, svc, [resources.invalid_value(
                        f"spec.ports[{i}].nodePort", p["nodePort"], "provided port is already allocated")])
                used_ports.add(p["nodePort"])

    # ------------------------------------------------------------ update / patch

    def _update(self, req: Request, r: ResourceInfo, ns: str, info: RequestInfo, attrs: Attributes) -> None:
        if info.subresource == "scale":
            scale = self._read_object(req, r, "Scale", "autoscaling/v1")
            return self._write_scale(req, r, ns, info, attrs, lambda current: scale)
        obj = self._read_object(req, r)
        self._check_fields(req, r, obj)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != info.name:
            raise errors.bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL "
                                     f"({info.name})")
        meta["name"] = info.name
        self._set_namespace(r, obj, ns)
        self._write(req, r, ns, info, attrs, lambda current: obj, create_ok=r.create_on_update)

    def _patch(self, req: Request, r: ResourceInfo, ns: str, info: RequestInfo, attrs: Attributes) -> None:
        ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in PATCH_TYPES:
            raise errors.unsupported_media_type(", ".join(PATCH_TYPES))
        body = req.body()
        if ctype == "application/apply-patch+yaml" and not req.q("fieldManager"):
            raise errors.bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is "
                                     "required for apply patch")
        force = req.q("force")
        if force and ctype != "application/apply-patch+yaml":
            raise errors.bad_request("PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be "
                                     "specified for non-apply patch")

        apply = ctype == "application/apply-patch+yaml"
        manager, forced = self._manager(req), force == "true"

        # an apply to the main resource leaves status alone (kube-apiserver's strategies reset it)
        reset = ("status",) if r.has_status() and not info.subresource else ()

        def patched(current: dict | None, api_version: str, kind: str) -> dict:
            out = self._apply_patch(ctype, current, body, self._schema(api_version, kind),
                                    manager if apply else None, forced, reset)
            if not isinstance(out, dict):
                raise errors.bad_request("the patch did not produce an object")
            return out

        if info.subresource == "scale":
            return self._write_scale(req, r, ns, info, attrs, lambda cur: patched(cur, "autoscaling/v1", "Scale"))

        def make(current: dict | None) -> dict:
            if current is None:
                # server-side apply creates what is missing
                new = patched(None, r.api_version, r.kind)
            else:
                new = patched(resources.from_storage(r, current), r.api_version, r.kind)
            if not isinstance(new.get("metadata"), dict):
                new["metadata"] = {}
            if new.get("apiVersion") != r.api_version or new.get("kind") != r.kind:
                new = self._check_object(new, r)
            new["metadata"]["name"] = info.name
            self._set_namespace(r, new, ns)
            self._check_fields(req, r, new)
            return new

        self._write(req, r, ns, info, attrs, make, create_ok=apply, applied=apply)

    def _apply_patch(self, ctype: str, current: dict | None, body: bytes, schema, manager: str | None,
                     force: bool, reset_fields: tuple[str, ...] = ()) -> dict:
        """The patched object: patch.py when present (every patch type, server-side apply with
        managedFields), else merge and JSON patches only."""
        if self.patch is not None:
            try:
                if ctype == "application/apply-patch+yaml" and manager:
                    return self.patch.server_side_apply(current, self.patch.decode_apply_body(body), manager, force,
                                                        schema, reset_fields=reset_fields)
                if current is None:
                    raise errors.unsupported_media_type("application/apply-patch+yaml")
                return self.patch.apply_patch(ctype, current, body, schema, manager=manager, force=force)
            except ApiError:
                raise
            except ValueError as e:
                raise errors.bad_request(str(e))
        if current is None:
            raise errors.unsupported_media_type("application/json-patch+json, application/merge-patch+json")
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise errors.bad_request(f"error decoding patch: {e}")
        if ctype == "application/merge-patch+json":
            return merge_patch(current, doc)
        if ctype == "application/json-patch+json":
            try:
                import jsonpatch
            except ImportError:
                raise errors.unsupported_media_type("application/merge-patch+json")
            try:
                return jsonpatch.apply_patch(current, doc)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {e}",
                               {})
        raise errors.unsupported_media_type("application/json-patch+json, application/merge-patch+json")

    def _write(self, req: Request, r: ResourceInfo, ns: str, info: RequestInfo, attrs: Attributes,
               make: Callable[[dict | None], dict], create_ok: bool, applied: bool = False) -> None:
        """PUT and PATCH: build the new object from the stored one and store it, in one transaction."""
        dry = req.q("dryRun") == "All"
        sub = info.subresource
        state: dict[str, Any] = {}

        def fn(current: dict | None):
            if current is None:
                if not create_ok:
                    raise errors.not_found(r.plural, info.name, r.group)
                new = make(None)
                state["created"] = True
                return None  # created below through the create path
            new = make(copy.deepcopy(current))
            new = resources.to_storage(r, new)
            storage.check_version(r.key, current, new)
            storage.keep_identity(current, new)
            if sub == "status":
                new = resources.prepare_status_update(r, new, current)
                causes = r.custom.validate(r, new, current) if r.custom is not None else []
                if causes:  # a custom resource's status is checked against its schema too
                    raise self._invalid(r, new, causes)
            elif sub == "finalize":
                fin = (new.get("spec") or {}).get("finalizers") or []
                new = copy.deepcopy(current)
                new.setdefault("spec", {})["finalizers"] = fin
            else:
                resources.prepare_update(resources.lookup("", "v1", "events") if r.storage_plural else r, new, current)
                causes = resources.validate(r, new, current)
                if causes:
                    raise self._invalid(r, new, causes)
                if r.key == "services":
                    self._allocate_service(r, new, current)
            if r.key == "namespaces":
                labels = new["metadata"].setdefault("labels", {})
                labels["kubernetes.io/metadata.name"] = info.name
            self._admit(attrs, current, new)
            if not applied:
                new = self._managed(req, new, current, r, sub)
            if _same(new, current):
                state["unchanged"] = current
                return None
            return new

        if r.key == "services":
            self._alloc_lock.acquire()
        try:
            etype, out = self.store.write(r.key, ns, info.name, fn, self._fields_of(r), dry)
        finally:
            if r.key == "services":
                self._alloc_lock.release()
        if r.key == crd.CRD_KEY and not dry and etype:
            crd.accept_names(self.store, info.name)
        if state.get("created"):
            obj = make(None)
            obj["metadata"].pop("resourceVersion", None)
            return self._create(req, r, ns, attrs, obj=obj, applied=applied)
        if "unchanged" in state:
            out = state["unchanged"]
        if out is None:  # removed: a write that dropped the last finalizer of an object being deleted
            raise errors.not_found(r.plural, info.name, r.group)
        self._send_json(req, 200, resources.from_storage(r, out))

    def _scale_of(self, obj: dict, r: ResourceInfo | None = None) -> dict:
        if r is not None and r.custom is not None:
            return r.custom.scale_of(obj)
        meta = obj.get("metadata") or {}
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                             if k in meta},
                "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
                "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                           "selector": resources.selector_text(obj)}}

    def _write_scale(self, req: Request, r: ResourceInfo, ns: str, info: RequestInfo, attrs: Attributes,
                     make: Callable[[dict], dict]) -> None:
        dry = req.q("dryRun") == "All"

        def fn(current: dict | None):
            if current is None:
                raise errors.not_found(r.plural, info.name, r.group)
            scale = make(self._scale_of(current, r))
            replicas = (scale.get("spec") or {}).get("replicas", 0)
            if not isinstance(replicas, int) or replicas < 0:
                raise errors.invalid("Scale", info.name, [resources.invalid_value(
                    "spec.replicas", replicas, "must be greater than or equal to 0")], "autoscaling")
            want_rv = (scale.get("metadata") or {}).get("resourceVersion")
            if want_rv and want_rv != current["metadata"].get("resourceVersion"):
                raise errors.conflict(r.plural, info.name, r.group)
            new = copy.deepcopy(current)
            if r.custom is not None:
                r.custom.set_replicas(new, replicas)
            else:
                new.setdefault("spec", {})["replicas"] = replicas
            if new == current:
                return None
            resources.prepare_update(r, new, current)
            self._admit(attrs, current, new)
            return self._managed(req, new, current, r, "scale")

        _, out = self.store.write(r.key, ns, info.name, fn, r.field_values, dry)
        self._send_json(req, 200, self._scale_of(out, r))

    # ------------------------------------------------------------ binding

    def _bind(self, req: Request, r: ResourceInfo, ns: str, name: str) -> None:
        pods = resources.lookup("", "v1", "pods")
        binding = self._read_object(req, r, "Binding", "v1")
        target = binding.get("target") or {}
        if r.plural == "pods":
            binding_name = binding["metadata"].get("name") or name
            if binding_name != name:
                raise errors.bad_request(f"the name of the object ({binding_name}) does not match the name on the URL "
                                         f"({name})")
        else:
            name = binding["metadata"].get("name") or ""
        if not target.get("name"):
            raise errors.invalid("Binding", name, [resources.required("target.name")])
        if target.get("kind", "Node") not in ("Node", ""):
            raise errors.invalid("Binding", name, [resources.not_supported("target.kind", target["kind"], ["Node"])])
        dry = req.q("dryRun") == "All"

        def fn(current):
            if current is None:
                raise errors.not_found("pods", name)
            if (current.get("spec") or {}).get("nodeName"):
                raise errors.conflict("pods/binding", name, why=f'pod {name} is already assigned to node '
                                                                f'"{current["spec"]["nodeName"]}"')
            if current["metadata"].get("deletionTimestamp"):
                raise errors.conflict("pods/binding", name,
                                      why=f"pod {name} is being deleted, cannot be assigned to a host")
            current.setdefault("spec", {})["nodeName"] = target["name"]
            conds = current.setdefault("status", {}).setdefault("conditions", [])
            conds[:] = [c for c in conds if c.get("type") != "PodScheduled"]
            conds.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                          "lastTransitionTime": storage.now_rfc3339()})
            return current

        self.store.write(pods.key, ns, name, fn, pods.field_values, dry)
        self._send_json(req, 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "code": 201})

    def _token_request(self, req: Request, ns: str, name: str, attrs: Attributes) -> None:
        """POST serviceaccounts/NAME/token (TokenRequest, authentication.k8s.io/v1): a
        token for the service account, bound to a pod when asked, signed with the
        cluster's service account key; what the kubelet mounts into pods."""
        if self.token_signer is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        request = self._read_object(req, TOKEN_REQUEST, "TokenRequest", "authentication.k8s.io/v1")
        spec = request.setdefault("spec", {})
        seconds = spec.get("expirationSeconds", DEFAULT_TOKEN_SECONDS)
        if not isinstance(seconds, int) or seconds < MIN_TOKEN_SECONDS:
            raise errors.invalid("TokenRequest", name, [resources.invalid_value(
                "spec.expirationSeconds", seconds, "may not specify a duration less than 10 minutes")],
                "authentication.k8s.io")  # fmt: skip
        if seconds > MAX_TOKEN_SECONDS:
            raise errors.invalid("TokenRequest", name, [resources.invalid_value(
                "spec.expirationSeconds", seconds, "may not specify a duration larger than 2^32 seconds")],
                "authentication.k8s.io")  # fmt: skip
        account = self.store.get("serviceaccounts", ns, name)
        if account is None:
            raise errors.not_found("serviceaccounts", name)
        self._admit(attrs, None, request)  # NodeRestriction: a node asks only for its own pods
        pod = None
        ref = spec.get("boundObjectRef") or {}
        if ref:
            if ref.get("kind") != "Pod" or ref.get("apiVersion", "v1") != "v1":
                raise errors.invalid("TokenRequest", name, [resources.not_supported(
                    "spec.boundObjectRef.kind", ref.get("kind", ""), ["Pod"])], "authentication.k8s.io")  # fmt: skip
            found = self.store.get("pods", ns, ref.get("name", ""))
            if found is None:
                raise errors.not_found("pods", ref.get("name", ""))
            uid = found["metadata"].get("uid", "")
            if ref.get("uid") and ref["uid"] != uid:
                raise errors.conflict("pods", ref["name"], why=f"the UID in the bound object reference "
                                      f"({ref['uid']}) does not match the UID in record. The object might have "
                                      "been deleted and then recreated")  # fmt: skip
            pod = {"name": ref["name"], "uid": uid}
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": ref["name"], "uid": uid}
        now = time.time()
        from emu.apiserver import auth

        token = auth.issue_token(self.token_signer, ns, name, account["metadata"].get("uid", ""),
                                 spec.get("audiences") or [], seconds, pod, now=now)  # fmt: skip
        spec["audiences"] = spec.get("audiences") or [auth.ISSUER]
        spec["expirationSeconds"] = seconds
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(now) + seconds))
        answer = {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                  "metadata": {"name": name, "namespace": ns, "creationTimestamp": None}, "spec": spec,
                  "status": {"token": token, "expirationTimestamp": expires}}  # fmt: skip
        self._send_json(req, 201, answer)

    # ------------------------------------------------------------ delete

    def _delete_options(self, req: Request) -> dict:
        raw = req.body()
        opts: dict = {}
        if (req.headers.get("Content-Type") or "").startswith(protobuf.CONTENT_TYPE) and raw:
            try:
                opts = protobuf.decode(raw)
            except (protobuf.ProtobufError, ValueError) as e:
                raise errors.bad_request(f"the body of the request could not be decoded as protobuf: {e}")
        elif raw.strip():
            try:
                opts = json.loads(raw)
            except ValueError as e:
                raise errors.bad_request(
                    f"couldn't get version/kind; json parse error: {gojson.syntax_error(raw) or e}")
            if not isinstance(opts, dict):
                raise errors.bad_request("DeleteOptions must be an object")
        for k in ("gracePeriodSeconds", "propagationPolicy", "orphanDependents"):
            if req.q(k) and k not in opts:
                opts[k] = int(req.q(k)) if k == "gracePeriodSeconds" else req.q(k)
        policy = opts.get("propagationPolicy")
        if policy:
            req.note = f"propagationPolicy={policy}"
        if policy is not None and policy not in ("Orphan", "Background", "Foreground"):
            raise errors.invalid("DeleteOptions", "", [resources.not_supported(
                "propagationPolicy", policy, ["Foreground", "Background", "Orphan", "nil"])])
        if "dryRun" in opts and opts["dryRun"] not in ([], ["All"]):
            raise errors.bad_request(f"Invalid dry run value: {opts['dryRun']}")
        return opts

    def _delete(self, req: Request, r: ResourceInfo, ns: str, info: RequestInfo, attrs: Attributes) -> None:
        opts = self._delete_options(req)
        dry = req.q("dryRun") == "All" or opts.get("dryRun") == ["All"]
        removed, obj = self._delete_one(r, ns, info.name, attrs, opts, dry)
        # kube-apiserver's delete handler: 200, also for an object that stays (a graceful pod, finalizers),
        # but 202 when it stays and orphanDependents=false was asked (kept for old clients)
        orphan = opts.get("orphanDependents")
        code = 202 if not removed and (orphan is False or str(orphan).lower() == "false") else 200
        if r.returns_deleted or not removed:
            return self._send_json(req, code, resources.from_storage(r, obj))
        details = {"name": info.name}
        if r.group:
            details["group"] = r.group
        details["kind"] = r.plural
        details["uid"] = obj["metadata"].get("uid", "")
        self._send_json(req, 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "details": details})

    def _delete_one(self, r: ResourceInfo, ns: str, name: str, attrs: Attributes, opts: dict,
                    dry: bool) -> tuple[bool, dict]:
        pre = opts.get("preconditions") or {}
        grace = opts.get("gracePeriodSeconds")

        def fn(current):
            if current is None:
                raise errors.not_found(r.plural, name, r.group)
            meta = current["metadata"]
            if pre.get("uid") and pre["uid"] != meta.get("uid"):
                raise errors.conflict(r.plural, name, r.group, f"Precondition failed: UID in precondition: "
                                                               f"{pre['uid']}, UID in object meta: {meta.get('uid')}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
                raise errors.conflict(r.plural, name, r.group, "Precondition failed: ResourceVersion in precondition: "
                                                               f"{pre['resourceVersion']}, ResourceVersion in object "
                                                               f"meta: {meta.get('resourceVersion')}")
            self._admit(attrs, current, None)
            if r.key == crd.CRD_KEY:
                return crd.mark_deleted(current)
            if r.key == "namespaces":
                if name in IMMORTAL_NAMESPACES:
                    raise errors.forbidden("namespaces", name, "this namespace may not be deleted")
                if meta.get("deletionTimestamp"):
                    return None
                meta["deletionTimestamp"] = storage.now_rfc3339()
                meta["deletionGracePeriodSeconds"] = 0
                current.setdefault("status", {})["phase"] = "Terminating"
                return current
            if r.key == "pods" and (current.get("spec") or {}).get("nodeName") and not mirror.emu_owned(current):
                return _graceful_pod_delete(current, grace)
            # The propagation policy's finalizer (Foreground, Orphan): the garbage collector finishes the job.
            gc.add_deletion_finalizers(current, opts)
            return storage.mark_deleted(current, grace if isinstance(grace, int) else 0)

        etype, obj = self.store.write(r.key, ns, name, fn, self._fields_of(r), dry)
        if obj is None:
            raise errors.not_found(r.plural, name, r.group)
        if r.key == "namespaces" and not dry:
            self._finalize_namespace_later(name)
        if r.key == crd.CRD_KEY and not dry and etype != "DELETED":
            self._finalize_crd_later(name)
        removed = etype == "DELETED" or (dry and not obj["metadata"].get("finalizers") and r.key not in (
            "namespaces", crd.CRD_KEY))
        return removed, obj

    def _delete_collection(self, req: Request, r: ResourceInfo, ns: str, info: RequestInfo, attrs: Attributes) -> None:
        opts = self._delete_options(req)
        dry = req.q("dryRun") == "All" or opts.get("dryRun") == ["All"]
        labels, fields = self._selectors(req, r)
        texts, rv, _ = self.store.list(r.key, ns, labels, fields)
        items = []
        for t in texts:
            o = json.loads(t)
            try:
                _, out = self._delete_one(r, o["metadata"].get("namespace", ""), o["metadata"]["name"], attrs,
                                          {k: v for k, v in opts.items() if k != "preconditions"}, dry)
                items.append(resources.from_storage(r, out))
            except ApiError as e:
                if e.code != 404:
                    raise
        self._send_json(req, 200, {"kind": r.list_kind, "apiVersion": r.api_version,
                                   "metadata": {"resourceVersion": str(self.store.revision)}, "items": items})

    # ------------------------------------------------------------ namespace finalization

    def _finalize_namespace_later(self, name: str) -> None:
        """Delete a terminating namespace's contents, then the namespace (the namespace controller's job)."""
        if name in self._finalizing:
            return
        self._finalizing.add(name)
        threading.Thread(target=self._finalize_namespace, args=(name,), name=f"ns-finalize-{name}",
                         daemon=True).start()

    def _finalize_namespace(self, name: str) -> None:
        by_key = {r.key: r for r in [*resources.RESOURCES, *self.crds.resources()]
                  if r.stored and not r.storage_plural and r.namespaced}
        try:
            while not self._stopping.is_set():
                left = [(k, n) for k, n in self.store.namespaces_in_use(name) if k in by_key]
                for key, obj_name in left:
                    r = by_key[key]
                    try:
                        self.store.delete(key, name, obj_name, r.field_values)
                    except ApiError:
                        pass
                if left and self.store.namespaces_in_use(name):
                    time.sleep(0.5)
                    continue

                def fn(current):
                    if current is None or not current["metadata"].get("deletionTimestamp"):
                        return None
                    spec = current.setdefault("spec", {})
                    spec["finalizers"] = [f for f in spec.get("finalizers") or [] if f != "kubernetes"]
                    return storage.DELETE if not spec["finalizers"] and not current["metadata"].get("finalizers") \
                        else current

                ns_info = resources.lookup("", "v1", "namespaces")
                self.store.write(ns_info.key, "", name, fn, ns_info.field_values)
                return
        except Exception:
            traceback.print_exc(file=self.log)
        finally:
            self._finalizing.discard(name)

    # ------------------------------------------------------------ CRD finalization

    def _finalize_crd_later(self, name: str) -> None:
        """Delete a terminating CRD's custom resources, then the CRD (the CRDFinalizer's job)."""
        key = f"crd/{name}"
        if key in self._finalizing:
            return
        self._finalizing.add(key)

        def run() -> None:
            try:
                crd.finalize(self.store, name, self._stopping)
                crd.accept_all(self.store)  # names the CRD held are free for the others of its group
            except Exception:
                traceback.print_exc(file=self.log)
            finally:
                self._finalizing.discard(key)

        threading.Thread(target=run, name=f"crd-finalize-{name}", daemon=True).start()

    # ------------------------------------------------------------ reviews

    def _review(self, req: Request, r: ResourceInfo, info: RequestInfo, attrs: Attributes) -> None:
        if r.plural == "bindings":
            return self._bind(req, r, info.namespace, "")
        obj = self._read_object(req, r)
        spec = obj.get("spec") or {}
        user = req.user
        if r.kind == "SelfSubjectReview":
            ui = {"username": user.name, "groups": list(user.groups)}
            if user.uid:
                ui["uid"] = user.uid
            if user.extra:
                ui["extra"] = {k: list(v) for k, v in user.extra.items()}
            obj["metadata"] = {"creationTimestamp": storage.now_rfc3339()}
            obj["status"] = {"userInfo": ui}
            return self._send_json(req, 201, obj)
        if r.kind in ("SubjectAccessReview", "LocalSubjectAccessReview"):
            if not spec.get("user") and not spec.get("groups"):
                raise errors.invalid(r.kind, "", [resources.required("spec.user", "at least one of user or group must "
                                                                                  "be specified")], r.group)
            user = User(spec.get("user", ""), tuple(spec.get("groups") or ()), spec.get("uid", ""),
                        {k: tuple(v) for k, v in (spec.get("extra") or {}).items()})
        ra, nra = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
        if r.kind == "LocalSubjectAccessReview":
            if not ra or ra.get("namespace", info.namespace) != info.namespace:
                raise errors.invalid(r.kind, "", [resources.invalid_value(
                    "spec.resourceAttributes.namespace", (ra or {}).get("namespace", ""),
                    "must match metadata.namespace")], r.group)
        if bool(ra) == bool(nra):
            raise errors.invalid(r.kind, "", [resources.invalid_value(
                "spec.resourceAttributes", ra, "exactly one of nonResourceAttributes or resourceAttributes must be "
                                               "specified")], r.group)
        if ra:
            a = Attributes(user=user, verb=ra.get("verb", ""), namespace=ra.get("namespace", ""),
                           api_group=ra.get("group", ""), api_version=ra.get("version", ""),
                           resource=ra.get("resource", ""), subresource=ra.get("subresource", ""),
                           name=ra.get("name", ""), is_resource_request=True)
        else:
            a = Attributes(user=user, verb=nra.get("verb", ""), is_resource_request=False, path=nra.get("path", ""))
        d = self.authorizer.authorize(a)
        obj["metadata"] = {"creationTimestamp": None} if not obj["metadata"] else obj["metadata"]
        status = {"allowed": bool(d.allowed)}
        if d.reason:
            status["reason"] = d.reason
        obj["status"] = status
        self._send_json(req, 201, obj)


def _same(new: dict, old: dict) -> bool:
    """An update that changes nothing (ignoring resourceVersion and managedFields) is not written."""
    def strip(o: dict) -> dict:
        o = dict(o)
        m = dict(o.get("metadata") or {})
        for k in ("resourceVersion", "managedFields"):
            m.pop(k, None)
        o["metadata"] = m
        return o
    return strip(new) == strip(old)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # an idle keep-alive connection (or a watch nobody reads) is closed after this many seconds,
    # so that clients that vanish do not hold a thread each
    timeout = 600
    server_version = "emu-apiserver"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        conn = self.connection
        if isinstance(conn, ssl.SSLSocket):
            conn.settimeout(30)
            conn.do_handshake()
            conn.settimeout(self.timeout)

    def _go(self) -> None:
        self.server.api.handle(self, self.command)  # type: ignore[attr-defined]

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _go

    def log_message(self, format: str, *args) -> None:  # one line per request is written by ApiServer.handle
        pass


def _graceful_pod_delete(current: dict, grace: int | None) -> object:
    """DELETE of a pod bound to a node that its kubelet runs (not one of emu's own):
    graceful, as kube-apiserver does it. The pod gets deletionTimestamp (now plus the
    grace period: the request's gracePeriodSeconds, else its terminationGracePeriodSeconds)
    and stays until its node's kubelet has stopped its containers and deletes it with a
    grace period of 0; a second DELETE may only shorten the period. A grace period of 0
    removes it at once (`kubectl delete --force --grace-period=0`)."""
    meta = current["metadata"]
    if not isinstance(grace, int):
        grace = (current.get("spec") or {}).get("terminationGracePeriodSeconds")
        grace = grace if isinstance(grace, int) else 30
    grace = max(0, grace)
    if grace == 0:
        if storage.finalizers(current) and meta.get("deletionTimestamp"):
            meta["deletionGracePeriodSeconds"] = 0  # gone once its finalizers are
            return current
        return storage.mark_deleted(current, 0)  # with finalizers, marked; else gone
    if meta.get("deletionTimestamp") and grace >= (meta.get("deletionGracePeriodSeconds") or 0):
        return None  # already being deleted within that time
    meta["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + grace))
    meta["deletionGracePeriodSeconds"] = grace
    return current
