"""A small Kubernetes REST client for the node agent (standard library only).

`Client(server, ca, cert, key)` (or `token=`) speaks Kubernetes' JSON REST API
as client-go's rest client does: get, list (selectors, limit/continue), create,
update, patch (merge, strategic merge, JSON patch), delete, and `watch`, which
streams the chunked JSON lines of a watch (`allowWatchBookmarks`). An answer
that is a Kubernetes `Status` error is raised as `ApiError` with its code and
reason (NotFound, Conflict, Expired, ...); a server that cannot be reached
raises `OSError` (ConnectionError, TimeoutError), so a caller tells "the API
said no" from "the API is not there". `in_cluster()` is the client of a pod's
service account (client-go's rest.InClusterConfig).

Each thread keeps one connection alive (HTTP/1.1 keep-alive; the agent's jobs
each run in their own thread); a watch has a connection of its own for as long
as it streams. Every socket operation has a timeout: a server that stops
answering is noticed, never waited on forever.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterator

DEFAULT_TIMEOUT = 10.0  # seconds for a connect and for each read of a plain request
WATCH_SLACK = 15.0  # a watch's read timeout: its timeoutSeconds plus this (the server ends it at timeoutSeconds)
MAX_LINE = 16 << 20  # one watch event (an object); kube-apiserver refuses bodies over 3 MiB

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
# What a request on a kept-alive connection meets when the server closed it meanwhile.
STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ssl.SSLEOFError,
         ssl.SSLZeroReturnError)
IDEMPOTENT = {"GET", "HEAD", "PUT", "DELETE"}  # (a PUT carries its resourceVersion: a second one is a 409)
PATCH_TYPES = {"merge": MERGE_PATCH, "strategic": STRATEGIC_MERGE_PATCH, "json": JSON_PATCH}
# Where a pod finds its service account's credentials (the kube-api-access volume).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class ApiError(Exception):
    """A Kubernetes Status error: `code` (HTTP), `reason` (NotFound, AlreadyExists,
    Conflict, Invalid, Forbidden, Unauthorized, Expired, Gone, ...), `message`,
    and the whole `status` object."""

    def __init__(self, code: int, reason: str, message: str, status: dict | None = None):
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.status = status or {}

    @classmethod
    def from_status(cls, code: int, status: dict) -> ApiError:
        return cls(int(status.get("code") or code), str(status.get("reason") or "Unknown"),
                   str(status.get("message") or ""), status)  # fmt: skip

    @property
    def gone(self) -> bool:
        """410: the resourceVersion (or continue token) is older than the server keeps."""
        return self.code == 410


def resource_path(api_version: str, plural: str, namespace: str = "", name: str = "", subresource: str = "") -> str:
    """'/api/v1/namespaces/NS/pods/NAME' and the like: core group under /api, the others under /apis."""
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = root + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
    return path


def _query(params: dict) -> str:
    pairs = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in params.items() if v not in (None, "")]
    return "?" + urllib.parse.urlencode(pairs) if pairs else ""


class Client:
    """A client of one API server.

    server: 'https://host:port' (or 'http://' for a plain test server).
    ca_pem_path: the cluster CA that signed the server's certificate.
    cert_path, key_path: this client's certificate (the node's, kube-proxy's).
    token: a bearer token instead of (or besides) a certificate.
    token_file: a file holding the bearer token, read again whenever it changes
    (the kubelet rotates a pod's token; client-go's in-cluster config re-reads it)."""

    def __init__(
        self,
        server: str,
        ca_pem_path: str | None = None,
        cert_path: str | None = None,
        key_path: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        user_agent: str = "emu-node/v1",
        token_file: str | None = None,
    ):
        url = urllib.parse.urlsplit(server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"API server address {server!r} is not http(s)://HOST:PORT")
        self.server = server.rstrip("/")
        self.scheme = url.scheme
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.timeout = timeout
        self.token = token
        self.token_file = token_file
        self.token_read: tuple | None = None  # (mtime_ns, size, inode) of token_file when last read
        self.user_agent = user_agent
        self.context: ssl.SSLContext | None = None
        if self.scheme == "https":
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_pem_path)
            context.set_alpn_protocols(["http/1.1"])
            if cert_path:
                context.load_cert_chain(cert_path, key_path)
            self.context = context
        self.local = threading.local()  # .connection: this thread's kept-alive connection

    # ---- connections ---------------------------------------------------------
    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.context is not None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        conn.connect()
        # Small requests and events: without NODELAY, Nagle and delayed ACKs hold them ~40 ms.
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _headers(self, content_type: str | None = None) -> dict:
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if self.token_file:
            self._read_token()
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _read_token(self) -> None:
        """The token from token_file, read again when the file changed (an OSError when it is not there)."""
        info = os.stat(self.token_file)
        signature = (info.st_mtime_ns, info.st_size, info.st_ino)
        if signature != self.token_read:
            with open(self.token_file) as handle:
                self.token = handle.read().strip()
            self.token_read = signature

    def close(self) -> None:
        """Close this thread's kept-alive connection."""
        conn = getattr(self.local, "connection", None)
        if conn is not None:
            conn.close()
            self.local.connection = None

    # ---- requests ------------------------------------------------------------
    def request(self, method: str, path: str, body: dict | list | None = None, content_type: str = "application/json",
                query: dict | None = None, timeout: float | None = None) -> dict:  # fmt: skip
        """One request; the decoded JSON answer. Raises ApiError for an error Status, OSError when unreachable."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        target = path + _query(query or {})
        headers = self._headers(content_type if data is not None else None)
        timeout = timeout or self.timeout
        for attempt in (0, 1):
            conn = getattr(self.local, "connection", None)
            if conn is not None and _dropped(conn):
                conn.close()  # the server closed it while it was idle (or went away): a new one
                conn = None
            reused = conn is not None
            if conn is None:
                conn = self._connect(timeout)
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            sent = False
            try:
                conn.request(method, target, body=data, headers=headers)
                sent = True
                response = conn.getresponse()
                raw = response.read()
            except STALE as error:
                conn.close()
                self.local.connection = None
                # A kept-alive connection that the server closed just now (it restarted): once
                # more on a new connection if the request cannot have been acted on twice.
                if reused and attempt == 0 and (not sent or method in IDEMPOTENT):
                    continue
                raise ConnectionError(f"{method} {self.server}{path}: {error}") from error
            except (OSError, http.client.HTTPException) as error:
                conn.close()
                self.local.connection = None
                if isinstance(error, OSError):
                    raise
                raise ConnectionError(f"{method} {self.server}{path}: {type(error).__name__}: {error}") from error
            if response.will_close:
                conn.close()
                self.local.connection = None
            else:
                self.local.connection = conn
            return _decode(response.status, raw, f"{method} {path}")
        raise AssertionError("unreachable")

    def get(self, path: str, **query) -> dict:
        """GET an object (or anything else the server serves as JSON: /version, /api)."""
        return self.request("GET", path, query=query)

    def list(self, path: str, label_selector: str = "", field_selector: str = "", limit: int = 0,
             continue_: str = "", resource_version: str = "") -> dict:  # fmt: skip
        """One page of a list: {items, metadata: {resourceVersion, continue}}."""
        return self.request("GET", path, query={
            "labelSelector": label_selector, "fieldSelector": field_selector, "limit": limit or None,
            "continue": continue_, "resourceVersion": resource_version})  # fmt: skip

    def create(self, path: str, obj: dict, dry_run: bool = False) -> dict:
        """POST to a collection path; the object as created."""
        return self.request("POST", path, obj, query={"dryRun": "All" if dry_run else None})

    def update(self, path: str, obj: dict) -> dict:
        """PUT an object (409 Conflict when its resourceVersion is not the stored one)."""
        return self.request("PUT", path, obj)

    def patch(self, path: str, patch: dict | list, patch_type: str = "merge", field_manager: str = "") -> dict:
        """PATCH: patch_type 'merge' (RFC 7386), 'strategic' (strategic merge patch) or 'json' (RFC 6902)."""
        if patch_type not in PATCH_TYPES:
            raise ValueError(f"patch type {patch_type!r}: use one of {', '.join(PATCH_TYPES)}")
        return self.request("PATCH", path, patch, PATCH_TYPES[patch_type], query={"fieldManager": field_manager})

    def delete(self, path: str, grace_period_seconds: int | None = None, propagation_policy: str = "",
               preconditions: dict | None = None) -> dict:  # fmt: skip
        """DELETE an object; the object (being deleted) or a Success Status."""
        options: dict = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if propagation_policy:
            options["propagationPolicy"] = propagation_policy
        if preconditions:
            options["preconditions"] = preconditions
        return self.request("DELETE", path, options)

    def watch(self, path: str, resource_version: str = "", timeout: float = 300.0, label_selector: str = "",
              field_selector: str = "", bookmarks: bool = True, idle_timeout: float | None = None) -> Watch:  # fmt: skip
        """A watch of a collection from `resource_version`, ended by the server after
        `timeout` seconds (timeoutSeconds). Iterate it for (type, object) events;
        close() ends it from any thread. An ERROR event is raised as ApiError
        (410 Expired: the revision is too old, list again). `idle_timeout`: raise
        TimeoutError when the server sends nothing (not even a BOOKMARK) for that
        long (default: `timeout` plus WATCH_SLACK)."""
        query = {"watch": "true", "resourceVersion": resource_version, "timeoutSeconds": int(timeout),
                 "allowWatchBookmarks": bookmarks, "labelSelector": label_selector,
                 "fieldSelector": field_selector}  # fmt: skip
        read_timeout = idle_timeout or timeout + WATCH_SLACK
        conn = self._connect(min(read_timeout, self.timeout))  # (connecting is bounded as any request)
        conn.sock.settimeout(read_timeout)
        try:
            conn.request("GET", path + _query(query), headers=self._headers())
            response = conn.getresponse()
        except (http.client.HTTPException, OSError) as error:
            conn.close()
            if isinstance(error, OSError):
                raise
            raise ConnectionError(f"watch {self.server}{path}: {type(error).__name__}: {error}") from error
        if response.status != 200:
            raw = response.read()
            conn.close()
            _decode(response.status, raw, f"watch {path}")
            raise ApiError(response.status, "Unknown", f"watch {path}: HTTP {response.status}")
        return Watch(conn, response, path)


def from_pki(server: str, pki: str, name: str, user_agent: str) -> Client | None:
    """A client of `server` with the certificate NAME.crt / NAME.key of the cluster's PKI
    folder and its ca.crt (a node's identities: its kubelet's, kube-proxy's, emu's
    controller on the API server's node), None where the node has no such certificate
    (a cluster made without an API server)."""
    cert, key, ca = f"{pki}/{name}.crt", f"{pki}/{name}.key", f"{pki}/ca.crt"
    if not all(os.path.exists(path) for path in (cert, key, ca)):
        return None
    return Client(server, ca_pem_path=ca, cert_path=cert, key_path=key, user_agent=user_agent)


def in_cluster(directory: str = SERVICE_ACCOUNT_DIR, environ: dict | None = None, **kwargs) -> Client:
    """A client of the cluster's API server from inside a pod, as client-go's
    rest.InClusterConfig: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT,
    the server checked against the service account's ca.crt, and its token file
    as the bearer token (read again when the kubelet rotates it)."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ValueError("unable to load in-cluster configuration: KUBERNETES_SERVICE_HOST and "
                         "KUBERNETES_SERVICE_PORT must be defined (they are in every pod's environment)")  # fmt: skip
    for name in ("token", "ca.crt"):
        if not os.path.exists(f"{directory}/{name}"):
            raise FileNotFoundError(f"unable to load in-cluster configuration: no {directory}/{name} (the pod's "
                                    "service account token is mounted there)")  # fmt: skip
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return Client(server, f"{directory}/ca.crt", token_file=f"{directory}/token", **kwargs)


class Watch:
    """An open watch stream: iterate for (type, object); close() from any thread ends it."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, path: str):
        self.conn = conn
        self.response = response
        self.path = path
        self.closed = False

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        try:
            while not self.closed:
                try:
                    line = self.response.readline(MAX_LINE)
                except (http.client.HTTPException, ValueError, AttributeError) as error:  # (closed meanwhile)
                    if self.closed:
                        return
                    raise ConnectionError(f"watch {self.path}: {type(error).__name__}: {error}") from error
                except OSError:
                    if self.closed:
                        return
                    raise
                if not line:
                    return  # the server ended the watch (its timeout; or it stopped)
                if not line.endswith(b"\n"):
                    if self.closed:
                        return
                    raise ConnectionError(f"watch {self.path}: the stream broke off inside an event")
                try:
                    event = json.loads(line)
                    kind, obj = event["type"], event["object"]
                except (ValueError, KeyError, TypeError) as error:
                    raise ConnectionError(f"watch {self.path}: not a watch event: {line[:200]!r} ({error})") from None
                if kind == "ERROR":
                    raise ApiError.from_status(500, obj if isinstance(obj, dict) else {})
                yield kind, obj
        finally:
            self.close()

    def close(self) -> None:
        """End the watch (its connection is closed; a reader blocked in it returns)."""
        self.closed = True
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conn.close()


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection was closed by the server: it has nothing
    to say between requests, so anything readable is its goodbye (urllib3 asks the same)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _decode(code: int, raw: bytes, what: str) -> dict:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = None
    if 200 <= code < 300 and isinstance(data, dict):
        return data
    if isinstance(data, dict) and data.get("kind") == "Status":
        raise ApiError.from_status(code, data)
    if 200 <= code < 300:
        raise ApiError(code, "InternalError", f"{what}: the answer is not a JSON object: {raw[:200]!r}")
    raise ApiError(code, http.client.responses.get(code, "Unknown").replace(" ", ""),
                   f"{what}: HTTP {code}: {raw[:200].decode(errors='replace')}")  # fmt: skip
