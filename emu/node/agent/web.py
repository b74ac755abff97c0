"""HTTP/1.1 as the node agents speak it, on bare sockets.

http.client and http.server import email, ssl and more: about 7 MB of every
agent's memory, 350 MB in a 50-node lab, for the few requests agents make
(readiness reports, the hub's watch stream, probes,
and `emu`'s questions through curl). This is the small part of HTTP/1.1 they
use: a request line, headers, a body of Content-Length bytes, keep-alive.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_HEADERS = 64
MAX_LINE = 8192
MAX_BODY = 4 << 20
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 413: "Payload Too Large",
           500: "Internal Server Error"}


class HTTPError(OSError):
    """A malformed or unexpected HTTP message (an OSError: callers treat it as a broken connection)."""


@dataclass
class Request:
    method: str
    path: str
    client: str  # the peer's address
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case
    body: bytes = b""
    # The connection and its reader, for a handler that takes the connection over (a stream
    # after 101 Switching Protocols, emu.node.agent.streams).
    connection: socket.socket | None = None
    rfile: object = None


def _read_line(rfile) -> bytes:
    line = rfile.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise HTTPError("line too long")
    return line


def _read_headers(rfile) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = _read_line(rfile)
        if line in (b"\r\n", b"\n", b""):
            return headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raise HTTPError("too many headers")


def _read_body(rfile, headers: dict[str, str]) -> bytes:
    try:
        length = int(headers.get("content-length", "0") or 0)
    except ValueError:
        raise HTTPError("bad Content-Length") from None
    if length < 0 or length > MAX_BODY:
        raise HTTPError("body too large")
    body = rfile.read(length) if length else b""
    if len(body) != length:
        raise HTTPError("body cut short")
    return body


def read_request(rfile, client: str) -> Request | None:
    """The next request on a connection, or None when the client closed it."""
    line = _read_line(rfile)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HTTPError(f"bad request line {line[:80]!r}")
    headers = _read_headers(rfile)
    return Request(parts[0], parts[1], client, headers, _read_body(rfile, headers))


def response(status: int, body: bytes, content_type: str = "application/json", close: bool = False) -> bytes:
    head = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        *(["Connection: close"] if close else []),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def stream_head(content_type: str = "application/x-ndjson") -> bytes:
    """The head of a response whose body runs until the connection closes (a watch)."""
    return f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n".encode()


# handle(request, wfile) -> True to keep the connection for another request
Handler = Callable[[Request, object], bool]


class Server:
    """A thread per connection; each connection's requests answered in turn."""

    def __init__(self, address: tuple[str, int], handle: Handler):
        self.handle = handle
        self.socket = socket.create_server(address, reuse_port=False, backlog=128)

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    def serve_forever(self) -> None:
        while True:
            try:
                connection, peer = self.socket.accept()
            except OSError:
                if self.socket.fileno() == -1:
                    return  # closed (Server.close): done
                raise
            threading.Thread(target=self._serve, args=(connection, peer[0]), daemon=True).start()

    def _serve(self, connection: socket.socket, client: str) -> None:
        rfile = wfile = None
        try:
            connection.settimeout(120)  # an idle kept-alive connection is dropped after 2 minutes
            # Small buffers: the hub holds a connection per node's reports and one per
            # watch, and two 8 KB buffers each were 1.6 MB of it at 50 nodes. (Writes larger
            # than the buffer go straight through, whole.)
            rfile, wfile = connection.makefile("rb", buffering=1024), connection.makefile("wb", buffering=1024)
            while True:
                request = read_request(rfile, client)
                if request is not None:
                    request.connection, request.rfile = connection, rfile
                if request is None or not self.handle(request, wfile):
                    break
                wfile.flush()
        except OSError:
            pass  # a client that went away (a closed watch, a timed-out probe) is not news
        finally:
            # The files first: a request that keeps them (Request.rfile) would keep the socket open.
            for f in (wfile, rfile):
                try:
                    if f is not None:
                        f.close()
                except OSError:
                    pass
            connection.close()

    def close(self) -> None:
        self.socket.close()


class Connection:
    """A client connection kept open across requests (reconnecting when the
    server closed it)."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self.rfile = None

    def open(self) -> None:
        self.close()
        self.sock = socket.create_connection((self.host, self.port), self.timeout)
        self.rfile = self.sock.makefile("rb")

    def request(self, method: str, path: str, body: bytes = b"", content_type: str = "application/json") -> tuple[int, bytes]:
        """Send a request and read the whole response: (status, body)."""
        for attempt in (1, 2):  # a kept-alive connection the server closed is opened again once
            fresh = self.sock is None
            if fresh:
                self.open()
            try:
                self._send(method, path, body, content_type)
                status, headers = self._read_head()
                data = _read_body(self.rfile, headers)
                if headers.get("connection", "").lower() == "close":
                    self.close()
                return status, data
            except OSError:
                self.close()
                if fresh or attempt == 2:
                    raise
        raise HTTPError("unreachable")

    def stream(self, path: str):
        """GET `path` and return the response body as a file to read lines from
        (the connection belongs to the stream until closed)."""
        self.open()
        self._send("GET", path, b"", "")
        status, _ = self._read_head()
        if status != 200:
            raise HTTPError(f"status {status}")
        return self.rfile

    def _send(self, method: str, path: str, body: bytes, content_type: str) -> None:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "User-Agent: emu-agent"]
        if body or method == "POST":
            head += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    def _read_head(self) -> tuple[int, dict[str, str]]:
        line = _read_line(self.rfile)
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HTTPError(f"bad status line {line[:80]!r}")
        return int(parts[1]), _read_headers(self.rfile)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock, self.rfile = None, None


def get_status(host: str, port: int, path: str, timeout: float, user_agent: str = "kube-probe/emu") -> int:
    """One GET on a fresh connection; the response's status (an httpGet probe)."""
    with socket.create_connection((host, port), timeout) as sock:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: {user_agent}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        line = sock.makefile("rb").readline(MAX_LINE)
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HTTPError(f"bad status line {line[:80]!r}")
    return int(parts[1])
