"""The pods' streaming subresources: log, exec, attach, portforward, as
kube-apiserver serves them (docs/apiserver.md, "Streaming").

- log: plain HTTP, the node agent's /containerLogs answer relayed chunked.
- exec (and attach): a WebSocket with the channel protocol kubectl >= 1.30 and
  the Python client speak (v5.channel.k8s.io, v4.channel.k8s.io): every binary
  message is one channel byte and data; 0 stdin, 1 stdout, 2 stderr, 3 error
  (a Status, the exit code in it), 4 resize, and in v5 255 "close" (the client
  ends stdin). The node agent runs the command in the pod and speaks a small
  framed stream back (NODE FRAMES below); this module translates.
- portforward: the Python client's WebSocket protocol (v4.channel.k8s.io,
  `?ports=`, two channels a port: data 2i and error 2i+1, each opened by the
  port as two little-endian bytes). The server connects to the pod's IP
  itself: pod IPs are routed from every node (host-gw routes), so no hop
  through the node agent is needed. Its limit: a server in the pod bound to
  127.0.0.1 only is not reached (the kubelet dials localhost inside the pod).

WebSocket framing is wsproto's (Debian's python3-wsproto in nodes); the
opening handshake is the few lines of RFC 6455 section 4.2.2 here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
from urllib.parse import quote, urlencode

from emu.apiserver import errors, resources, spdy
from emu.apiserver.errors import ApiError
from emu.apiserver.types import Attributes

SUBRESOURCES = ("log", "exec", "attach", "portforward")
AGENT_PORT = 10250  # the kubelet's port, where each node's agent answers
CHANNEL_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
CONNECT_TIMEOUT = 5.0
STREAM_IDLE_TIMEOUT = 4 * 3600  # the kubelet's --streaming-connection-idle-timeout default


# ---------------------------------------------------------------- NODE FRAMES
# Between this server and a node agent after `101 Switching Protocols`
# (`Upgrade: emu-frames`): frames of one channel byte (the numbers above), a
# 4-byte big-endian length and the data. To the agent: stdin (empty = end of
# stdin), resize (JSON {"Width","Height"}). From it: stdout, stderr, then one
# error frame (a Status JSON) and the end of the stream.

def write_frame(sock: socket.socket, channel: int, data: bytes) -> None:
    """Send one node frame."""
    sock.sendall(struct.pack(">BI", channel, len(data)) + data)


def read_frame(rfile) -> tuple[int, bytes] | None:
    """The next node frame, or None at the end of the stream."""
    head = rfile.read(5)
    if len(head) < 5:
        return None
    channel, length = struct.unpack(">BI", head)
    data = rfile.read(length) if length else b""
    if len(data) < length:
        return None
    return channel, data


# ---------------------------------------------------------------- WebSocket

def websocket_accept(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def choose_protocol(offered: str, supported: tuple[str, ...]) -> str | None:
    """The first of the client's Sec-WebSocket-Protocol values that we speak."""
    for name in (p.strip() for p in offered.split(",")):
        if name in supported:
            return name
    return None


def is_websocket(headers) -> bool:
    return "websocket" in (headers.get("Upgrade") or "").lower() and "upgrade" in (headers.get("Connection") or "").lower()


class WebSocket:
    """The server end of an upgraded connection: messages in and out over wsproto,
    safe to send from several threads."""

    def __init__(self, rfile, wfile):
        from wsproto.connection import Connection, ConnectionType

        self.rfile, self.wfile = rfile, wfile
        self.conn = Connection(ConnectionType.SERVER)
        self.lock = threading.Lock()
        self.closed = False

    def send(self, data: bytes) -> None:
        from wsproto.events import BytesMessage

        with self.lock:
            if self.closed:
                return
            self.wfile.write(self.conn.send(BytesMessage(data=data)))
            self.wfile.flush()

    def close(self, code: int = 1000, reason: str = "") -> None:
        from wsproto.connection import ConnectionState
        from wsproto.events import CloseConnection

        with self.lock:
            if self.closed:
                return
            self.closed = True
            if self.conn.state == ConnectionState.OPEN:
                try:
                    self.wfile.write(self.conn.send(CloseConnection(code=code, reason=reason)))
                    self.wfile.flush()
                except OSError:
                    pass

    def messages(self):
        """Yield each whole message's bytes (text messages encoded) until the client closes."""
        from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
        from wsproto.utilities import LocalProtocolError

        parts: list[bytes] = []
        while True:
            data = self.rfile.read1(65536)
            if not data:
                return
            with self.lock:
                self.conn.receive_data(data)
                events = list(self.conn.events())
            for event in events:
                if isinstance(event, (BytesMessage, TextMessage)):
                    parts.append(event.data if isinstance(event, BytesMessage) else event.data.encode())
                    if event.message_finished:
                        yield b"".join(parts)
                        parts = []
                elif isinstance(event, Ping):
                    with self.lock:
                        if not self.closed:
                            self.wfile.write(self.conn.send(event.response()))
                            self.wfile.flush()
                elif isinstance(event, CloseConnection):
                    with self.lock:
                        if not self.closed:
                            self.closed = True
                            try:
                                self.wfile.write(self.conn.send(event.response()))
                                self.wfile.flush()
                            except (OSError, LocalProtocolError):  # the peer is gone either way
                                pass
                    return


def upgrade(req, protocols: tuple[str, ...]) -> tuple[WebSocket, str]:
    """Answer a WebSocket opening handshake with 101 and one of `protocols`; an
    ApiError (a Status) when the request is no WebSocket upgrade or offers none."""
    headers = req.headers
    if not is_websocket(headers):
        upgrade_to = headers.get("Upgrade") or ""
        why = (f"this server speaks WebSocket ({', '.join(protocols)}) here, not {upgrade_to}" if upgrade_to
               else "expected a WebSocket upgrade request")  # fmt: skip
        raise errors.bad_request(f"Upgrade request required: {why}")
    key = headers.get("Sec-WebSocket-Key")
    if not key:
        raise errors.bad_request("Upgrade request required: no Sec-WebSocket-Key")
    offered = headers.get("Sec-WebSocket-Protocol") or ""
    chosen = choose_protocol(offered, protocols)
    if chosen is None:
        raise errors.bad_request(f"unable to upgrade: requested protocol(s) {offered!r} are not supported; "
                                 f"supported: {', '.join(protocols)}")  # fmt: skip
    h = req.h
    req.code = 101
    h.close_connection = True
    h.connection.settimeout(STREAM_IDLE_TIMEOUT)
    h.send_response_only(101)
    h.send_header("Upgrade", "websocket")
    h.send_header("Connection", "Upgrade")
    h.send_header("Sec-WebSocket-Accept", websocket_accept(key))
    h.send_header("Sec-WebSocket-Protocol", chosen)
    h.end_headers()
    h.wfile.flush()
    return WebSocket(h.rfile, h.wfile), chosen


# ---------------------------------------------------------------- entry

def serve(api, req, info, attrs: Attributes) -> None:
    """Serve pods/{log,exec,attach,portforward} for `req` (already authorized for its verb)."""
    sub = info.subresource
    if sub == "log":
        if req.method not in ("GET", "HEAD"):
            raise api._not_allowed()
    elif req.method not in ("GET", "POST"):
        raise api._not_allowed()
    else:
        # kube-apiserver >= 1.30 also asks for `create` when exec/attach/portforward come as a
        # WebSocket GET (AuthorizePodWebsocketUpgradeCreatePermission): reading is not running.
        if attrs.verb != "create":
            create = Attributes(user=attrs.user, verb="create", namespace=attrs.namespace, api_group="",
                                api_version=attrs.api_version, resource="pods", subresource=sub, name=attrs.name,
                                is_resource_request=True, path=attrs.path)  # fmt: skip
            decision = api.authorizer.authorize(create)
            if not decision.allowed:
                raise api._forbidden(create, decision.reason)
    pod = api.store.get("pods", info.namespace, info.name)
    if pod is None:
        raise errors.not_found("pods", info.name)
    if sub == "portforward":
        return _portforward(req, pod)
    container = _container(req, pod, sub)
    node_ip = _node_ip(api, pod)
    if sub == "log":
        return _log(req, pod, container, node_ip)
    return _exec(req, pod, container, node_ip, sub)


def _container(req, pod: dict, sub: str) -> str:
    """The container asked for, or the pod's only (or default) one, as the API server picks it."""
    names = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
    name = req.q("container")
    pod_name = pod["metadata"]["name"]
    if name:
        if name not in names:
            if sub == "log":
                raise errors.bad_request(f"container {name} is not valid for pod {pod_name}")
            raise errors.bad_request(f"pod {pod_name} does not have a container named {name}")
        return name
    if len(names) == 1:
        return names[0]
    default = ((pod["metadata"].get("annotations") or {}).get("kubectl.kubernetes.io/default-container"))
    if default in names:
        return default
    if not names:
        raise errors.bad_request(f"pod {pod_name} has no containers")
    raise errors.bad_request(f"a container name must be specified for pod {pod_name}, choose one of: "
                             f"[{' '.join(names)}]")  # fmt: skip


def _node_ip(api, pod: dict) -> str:
    """The InternalIP of the pod's node, from its Node object (as the API server finds the kubelet)."""
    pod_name = pod["metadata"]["name"]
    node_name = (pod.get("spec") or {}).get("nodeName")
    if not node_name:
        raise errors.bad_request(f"pod {pod_name} does not have a host assigned")
    node = api.store.get("nodes", "", node_name)
    if node is None:
        raise errors.not_found("nodes", node_name)
    address = resources.internal_ip(node)
    if not address:
        raise errors.internal(f"node {node_name} has no InternalIP address in its status")
    return address


def _agent_path(kind: str, pod: dict, container: str, query: list[tuple[str, str]]) -> str:
    meta = pod["metadata"]
    path = f"/{kind}/{quote(meta['namespace'], safe='')}/{quote(meta['name'], safe='')}/{quote(container, safe='')}"
    return path + (f"?{urlencode(query)}" if query else "")


def _agent_request(node_ip: str, path: str, upgrade: bool = False):
    """GET `path` from the node's agent: (socket, rfile, status, headers). A node that
    cannot be reached is a 500 as kube-apiserver words an unreachable kubelet."""
    try:
        sock = socket.create_connection((node_ip, AGENT_PORT), CONNECT_TIMEOUT)
    except OSError as error:
        raise errors.internal(f"error dialing backend: dial tcp {node_ip}:{AGENT_PORT}: {error}") from None
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = f"GET {path} HTTP/1.1\r\nHost: {node_ip}:{AGENT_PORT}\r\nUser-Agent: emu-apiserver\r\n"
    if upgrade:
        head += "Connection: Upgrade\r\nUpgrade: emu-frames\r\n"
    sock.sendall((head + "\r\n").encode())
    rfile = sock.makefile("rb")
    line = rfile.readline(8192).decode("latin-1")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[1].isdigit():
        sock.close()
        raise errors.internal(f"the node agent at {node_ip}:{AGENT_PORT} answered {line.strip()!r}")
    headers: dict[str, str] = {}
    while True:
        h = rfile.readline(8192)
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return sock, rfile, int(parts[1]), headers


def _agent_error(rfile, headers: dict, status: int) -> ApiError:
    """The agent's refusal ({"error": ...}) as a Status with its code."""
    try:
        length = int(headers.get("content-length", "0"))
        body = json.loads(rfile.read(length) or b"{}")
        message = body.get("error") or f"HTTP {status}"
    except (ValueError, OSError):
        message = f"HTTP {status}"
    reason = {400: "BadRequest", 403: "Forbidden", 404: "NotFound"}.get(status, "InternalError")
    return ApiError(status if status in (400, 403, 404) else 500, reason, message)


def _log(req, pod: dict, container: str, node_ip: str) -> None:
    query = []
    for name in ("follow", "previous", "tailLines", "limitBytes", "timestamps", "sinceSeconds", "sinceTime"):
        value = req.q(name)
        if value:
            query.append((name, value))
    sock, rfile, status, headers = _agent_request(node_ip, _agent_path("containerLogs", pod, container, query))
    try:
        if status != 200:
            raise _agent_error(rfile, headers, status)
        h = req.h
        req.code = 200
        h.close_connection = True
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Cache-Control", "no-cache, private")
        h.end_headers()
        h.wfile.flush()
        if req.method == "HEAD":
            return
        while True:
            data = rfile.read1(65536)
            if not data:
                break
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()
    finally:
        sock.close()


def _exec(req, pod: dict, container: str, node_ip: str, sub: str) -> None:
    query = [("command", c) for c in req.query.get("command", [])]
    if sub == "exec" and not query:
        raise errors.bad_request("you must specify at least 1 command")
    for name in ("stdin", "stdout", "stderr", "tty"):
        value = req.q(name)
        if value:
            query.append((name, value))
    spdy_upgrade = (req.headers.get("Upgrade") or "").lower() == spdy.UPGRADE.lower()
    if spdy_upgrade:
        offered = _stream_protocols(req)
        if "v4.channel.k8s.io" not in offered:
            raise errors.bad_request(f"unable to upgrade: none of the stream protocols {offered} is supported; "
                                     "supported: v4.channel.k8s.io")  # fmt: skip
    elif not is_websocket(req.headers):
        upgrade(req, CHANNEL_PROTOCOLS)  # raises the Status that says what to use
    sock, rfile, status, headers = _agent_request(node_ip, _agent_path(sub, pod, container, query), upgrade=True)
    try:
        if status != 101:
            raise _agent_error(rfile, headers, status)
        if spdy_upgrade:
            return _spdy_exec(req, sub, sock, rfile)
        ws, protocol = upgrade(req, CHANNEL_PROTOCOLS)
        relay_channels(ws, protocol, sock, rfile)
    finally:
        sock.close()


def _stream_protocols(req) -> list[str]:
    return [p.strip() for v in req.headers.get_all("X-Stream-Protocol-Version") or [] for p in v.split(",")]


def _spdy_upgrade_response(req, protocol: str) -> None:
    h = req.h
    req.code = 101
    h.close_connection = True
    h.connection.settimeout(STREAM_IDLE_TIMEOUT)
    h.send_response_only(101)
    h.send_header("Connection", "Upgrade")
    h.send_header("Upgrade", spdy.UPGRADE)
    h.send_header("X-Stream-Protocol-Version", protocol)
    h.end_headers()
    h.wfile.flush()


def _spdy_exec(req, sub: str, sock: socket.socket, rfile) -> None:
    """exec/attach over SPDY/3.1 streams (remotecommand v4.channel.k8s.io: kubectl before 1.30)."""
    expected = {"error"} | {k for k in ("stdin", "stdout", "stderr") if req.q(k).lower() in ("1", "true")}
    if req.q("tty").lower() in ("1", "true"):
        expected.add("resize")
        expected.discard("stderr")  # a terminal has one output
    _spdy_upgrade_response(req, "v4.channel.k8s.io")
    h = req.h

    def send(data: bytes) -> None:
        h.wfile.write(data)
        h.wfile.flush()

    def on_input(kind: str, data: bytes, fin: bool) -> None:
        try:
            if data:
                write_frame(sock, STDIN if kind == "stdin" else RESIZE, data)
            if fin and kind == "stdin":
                write_frame(sock, STDIN, b"")
        except OSError:
            pass

    session = spdy.ExecSession(lambda: h.rfile.read1(65536), send, expected, on_input)

    def run() -> None:
        session.run()
        try:
            sock.shutdown(socket.SHUT_WR)  # the client left: the command's stdin ends
        except OSError:
            pass

    threading.Thread(target=run, daemon=True, name="spdy-exec").start()
    if not session.ready(CONNECT_TIMEOUT * 6):
        return
    names = {STDOUT: "stdout", STDERR: "stderr"}
    try:
        while True:
            frame = read_frame(rfile)
            if frame is None:
                break
            channel, data = frame
            if channel in names:
                session.write(names[channel], data)
            elif channel == ERROR:
                for name in ("stdout", "stderr"):
                    session.finish(name)
                if json.loads(data).get("status") != "Success":
                    session.write("error", data)
                session.finish("error")
                break
    except OSError:
        pass


def relay_channels(ws: WebSocket, protocol: str, sock: socket.socket, rfile) -> None:
    """Carry a channel WebSocket to and from a node frame stream until the command ends."""

    def from_client() -> None:
        try:
            for message in ws.messages():
                if not message:
                    continue
                channel, data = message[0], message[1:]
                if channel == CLOSE and protocol.startswith("v5") and data[:1] == bytes([STDIN]):
                    write_frame(sock, STDIN, b"")  # the client closed stdin
                elif channel == STDIN and data:
                    write_frame(sock, STDIN, data)
                elif channel == RESIZE:
                    write_frame(sock, RESIZE, data)
        except OSError:
            pass
        finally:
            # The client left: end the command's stdin; the agent ends the command when we hang up.
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    threading.Thread(target=from_client, daemon=True, name="exec-stdin").start()
    try:
        while True:
            frame = read_frame(rfile)
            if frame is None:
                break
            channel, data = frame
            ws.send(bytes([channel]) + data)
            if channel == ERROR:
                break
    except OSError:
        pass
    finally:
        ws.close()


# ---------------------------------------------------------------- port-forward

def _portforward(req, pod: dict) -> None:
    pod_ip = (pod.get("status") or {}).get("podIP")
    if not pod_ip:
        raise errors.bad_request(f"pod {pod['metadata']['name']} has no IP address yet")
    if is_websocket(req.headers) and choose_protocol(req.headers.get("Sec-WebSocket-Protocol") or "",
                                                     (spdy.WEBSOCKET_PROTOCOL,)):
        # kubectl >= 1.31: SPDY inside the WebSocket, the ports in its streams' headers
        ws, _ = upgrade(req, (spdy.WEBSOCKET_PROTOCOL,))
        messages = ws.messages()

        def recv() -> bytes:
            for message in messages:
                if message:
                    return message
            return b""

        spdy.PortForwardSession(recv, ws.send, pod_ip).run()
        return ws.close()
    if (req.headers.get("Upgrade") or "").lower() == spdy.UPGRADE.lower():
        return _spdy_upgrade(req, pod_ip)  # kubectl before 1.31, or after its WebSocket upgrade failed
    ports = []
    for value in req.query.get("ports", []):
        for text in value.split(","):
            if not text.strip().isdigit() or not 0 < int(text) < 65536:
                raise errors.bad_request(f"invalid port {text!r}: ports must be numbers between 1 and 65535")
            ports.append(int(text))
    if not ports:
        raise errors.bad_request("query parameter \"port\" is required")
    ws, _ = upgrade(req, CHANNEL_PROTOCOLS + ("portforward.k8s.io",))
    relay_ports(ws, pod_ip, ports)


def _spdy_upgrade(req, pod_ip: str) -> None:
    """Port-forward over SPDY/3.1 on the HTTP connection itself (`Upgrade: SPDY/3.1`)."""
    offered = _stream_protocols(req)
    if offered and spdy.STREAM_PROTOCOL not in offered:
        raise errors.bad_request(f"unable to upgrade: none of the stream protocols {offered} is supported; "
                                 f"supported: {spdy.STREAM_PROTOCOL}")  # fmt: skip
    _spdy_upgrade_response(req, spdy.STREAM_PROTOCOL)
    h = req.h

    def send(data: bytes) -> None:
        h.wfile.write(data)
        h.wfile.flush()

    spdy.PortForwardSession(lambda: h.rfile.read1(65536), send, pod_ip).run()


def relay_ports(ws: WebSocket, pod_ip: str, ports: list[int]) -> None:
    """The WebSocket port-forward protocol: one connection to pod_ip per port, data on
    channel 2i, errors on 2i+1, each channel opened by its port (2 bytes, little-endian)."""
    conns: dict[int, socket.socket | None] = {}
    for i, port in enumerate(ports):
        ws.send(bytes([2 * i]) + struct.pack("<H", port))
        ws.send(bytes([2 * i + 1]) + struct.pack("<H", port))
        try:
            conns[i] = socket.create_connection((pod_ip, port), CONNECT_TIMEOUT)
            conns[i].settimeout(None)
        except OSError as error:
            conns[i] = None
            ws.send(bytes([2 * i + 1]) + f"error forwarding port {port} to pod {pod_ip}: {error}".encode())
    open_count = [sum(1 for c in conns.values() if c is not None)]
    count_lock = threading.Lock()

    def from_pod(i: int, conn: socket.socket) -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                ws.send(bytes([2 * i]) + data)
        except OSError:
            pass
        with count_lock:
            open_count[0] -= 1
            last = open_count[0] == 0
        if last:
            ws.close()  # every port's connection ended: so does the stream (as the kubelet's)

    for i, conn in conns.items():
        if conn is not None:
            threading.Thread(target=from_pod, args=(i, conn), daemon=True, name="portforward").start()
    if not open_count[0]:
        ws.close()
        return
    try:
        for message in ws.messages():
            if not message or message[0] % 2 or message[0] // 2 not in conns:
                continue
            conn = conns[message[0] // 2]
            if conn is not None and len(message) > 1:
                conn.sendall(message[1:])
    except OSError:
        pass
    finally:
        for conn in conns.values():  # the client left: so do the pod connections (and their readers)
            if conn is not None:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
