"""The server end of kubectl's port-forward protocol: SPDY/3.1 streams
(portforward.k8s.io), carried either inside a WebSocket (subprotocol
`SPDY/3.1+portforward.k8s.io`, kubectl >= 1.31's PortForwardWebsockets: the
SPDY bytes are the payloads of binary messages, one after another) or on the
HTTP connection itself after `Upgrade: SPDY/3.1` (older kubectl, and the
fallback when the WebSocket upgrade fails).

No maintained Python SPDY library exists, so this is the part of SPDY/3
(draft-mbelshe-httpbis-spdy-00) that port-forward uses, written from the spec:
frames (control: 1 bit, version 3, type, flags, 24-bit length; data: stream
id, flags, length), SYN_STREAM answered by SYN_REPLY, DATA with FIN, PING
echoed, RST_STREAM and GOAWAY; header blocks zlib-compressed with the spec's
dictionary, one compression context per direction for the whole session.
Flow control (WINDOW_UPDATE) is not enforced: client-go's SPDY library
(moby/spdystream) neither sends nor honours windows.

The port-forward part (client-go's tools/portforward): for each local
connection the client opens an `error` stream, then a `data` stream, both with
headers `port` and `requestid`; the server dials the port and copies bytes,
writes any failure on the error stream, and ends both with FIN.
"""

from __future__ import annotations

import socket
import struct
import threading
import zlib
from collections.abc import Callable

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
MAX_CHUNK = 32 * 1024
CONNECT_TIMEOUT = 5.0
WEBSOCKET_PROTOCOL = "SPDY/3.1+portforward.k8s.io"
UPGRADE = "SPDY/3.1"
STREAM_PROTOCOL = "portforward.k8s.io"

# The header compression dictionary of SPDY/3 (section 2.6.10.1): these names,
# each after its length as 4 big-endian bytes, then the tail as it is.
_WORDS = (  # noqa: SIM905 - the spec's words, readable
    "options head post put delete trace accept accept-charset accept-encoding accept-language accept-ranges age "
    "allow authorization cache-control connection content-base content-encoding content-language content-length "
    "content-location content-md5 content-range content-type date etag expect expires from host if-match "
    "if-modified-since if-none-match if-range if-unmodified-since last-modified location max-forwards pragma "
    "proxy-authenticate proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
    "user-agent vary via warning www-authenticate method get status 200|OK version HTTP/1.1 url public set-cookie "
    "keep-alive origin"
).split()
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in (w.replace("|", " ") for w in _WORDS))
DICTIONARY += _TAIL.encode()


class ProtocolError(Exception):
    """A byte stream that is no SPDY/3 port-forward session."""


def encode_headers(headers: dict[str, str]) -> bytes:
    """An uncompressed SPDY/3 header block."""
    out = [struct.pack(">I", len(headers))]
    for name, value in headers.items():
        n, v = name.lower().encode(), value.encode()
        out += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
    return b"".join(out)


def decode_headers(block: bytes) -> dict[str, str]:
    """An uncompressed header block as {name: value} (several values joined by NUL, as sent)."""
    try:
        (count,) = struct.unpack_from(">I", block, 0)
        at, headers = 4, {}
        for _ in range(count):
            (n,) = struct.unpack_from(">I", block, at)
            name = block[at + 4:at + 4 + n].decode()
            at += 4 + n
            (v,) = struct.unpack_from(">I", block, at)
            headers[name] = block[at + 4:at + 4 + v].decode()
            at += 4 + v
        return headers
    except (struct.error, UnicodeDecodeError) as error:
        raise ProtocolError(f"bad header block: {error}") from None


def control_frame(kind: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, flags: int, data: bytes) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(data)) + data


def split_frames(buffer: bytearray):
    """Pop each whole frame off `buffer`: (is_control, type or stream id, flags, payload)."""
    while len(buffer) >= 8:
        first, second = struct.unpack_from(">II", buffer, 0)
        length = second & 0xFFFFFF
        if len(buffer) < 8 + length:
            return
        payload = bytes(buffer[8:8 + length])
        del buffer[:8 + length]
        if first & 0x80000000:
            version = (first >> 16) & 0x7FFF
            if version != VERSION:
                raise ProtocolError(f"SPDY version {version}, expected {VERSION}")
            yield True, first & 0xFFFF, second >> 24, payload
        else:
            yield False, first & 0x7FFFFFFF, second >> 24, payload


class _Pair:
    """One forwarded connection: its error and data streams and the pod connection."""

    def __init__(self, port: int):
        self.port = port
        self.error_id = 0
        self.data_id = 0
        self.conn: socket.socket | None = None


class Session:
    """One SPDY/3 session, server side: `recv()` gives the next bytes (b"" at the end),
    `send(bytes)` writes. Every SYN_STREAM is answered with SYN_REPLY and handed to
    open_stream; DATA to data; PINGs are echoed. Subclasses say what streams mean."""

    def __init__(self, recv: Callable[[], bytes], send: Callable[[bytes], None]):
        self.recv, self._send = recv, send
        self.lock = threading.Lock()
        self.inflate = zlib.decompressobj(zdict=DICTIONARY)
        self.deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 9, zdict=DICTIONARY)
        self.closed = False

    def send(self, frame: bytes) -> None:
        with self.lock:
            if not self.closed:
                self._send(frame)

    def headers_block(self, headers: dict[str, str]) -> bytes:
        with self.lock:  # one compression context: blocks must go out in the order they were compressed
            return self.deflate.compress(encode_headers(headers)) + self.deflate.flush(zlib.Z_SYNC_FLUSH)

    def run(self) -> None:
        buffer = bytearray()
        try:
            while True:
                data = self.recv()
                if not data:
                    break
                buffer += data
                for control, kind, flags, payload in split_frames(buffer):
                    if control:
                        if not self.control(kind, flags, payload):
                            return
                    else:
                        self.data(kind, flags, payload)
        except (ProtocolError, zlib.error, OSError, ValueError):  # ValueError: the connection was closed under us
            pass
        finally:
            with self.lock:
                self.closed = True
            self.ended()

    def control(self, kind: int, flags: int, payload: bytes) -> bool:
        if kind == SYN_STREAM:
            stream_id = struct.unpack_from(">I", payload, 0)[0] & 0x7FFFFFFF
            headers = decode_headers(self.inflate.decompress(payload[10:]))
            block = self.headers_block({})
            self.send(control_frame(SYN_REPLY, 0, struct.pack(">I", stream_id) + block))
            self.open_stream(stream_id, headers)
            if flags & FLAG_FIN:
                self.data(stream_id, FLAG_FIN, b"")
        elif kind == PING:
            self.send(control_frame(PING, 0, payload[:4]))
        elif kind == RST_STREAM:
            self.reset(struct.unpack_from(">I", payload, 0)[0] & 0x7FFFFFFF)
        elif kind == GOAWAY:
            return False
        elif kind == HEADERS:
            self.inflate.decompress(payload[4:])  # keep the shared context in step
        return True  # SETTINGS, WINDOW_UPDATE: nothing to do

    def open_stream(self, stream_id: int, headers: dict[str, str]) -> None:
        raise NotImplementedError

    def data(self, stream_id: int, flags: int, payload: bytes) -> None:
        raise NotImplementedError

    def reset(self, stream_id: int) -> None:
        pass

    def ended(self) -> None:
        pass


class PortForwardSession(Session):
    """port-forward (module docstring): connections go to `host`."""

    def __init__(self, recv: Callable[[], bytes], send: Callable[[bytes], None], host: str):
        super().__init__(recv, send)
        self.host = host
        self.pairs: dict[str, _Pair] = {}  # by requestid
        self.by_stream: dict[int, _Pair] = {}  # data stream id -> pair

    def reset(self, stream_id: int) -> None:
        pair = self.by_stream.pop(stream_id, None)
        if pair is not None and pair.conn is not None:
            _shut(pair.conn, socket.SHUT_RDWR)

    def ended(self) -> None:
        for pair in self.pairs.values():
            if pair.conn is not None:
                _shut(pair.conn, socket.SHUT_RDWR)
                pair.conn.close()

    def open_stream(self, stream_id: int, headers: dict[str, str]) -> None:
        kind, request_id, port_text = headers.get("streamtype", ""), headers.get("requestid", ""), headers.get("port", "")
        if kind not in ("error", "data"):
            self.send(control_frame(RST_STREAM, 0, struct.pack(">II", stream_id, 1)))  # PROTOCOL_ERROR
            return
        pair = self.pairs.get(request_id)
        if pair is None:
            pair = self.pairs[request_id] = _Pair(int(port_text) if port_text.isdigit() else 0)
        if kind == "error":
            pair.error_id = stream_id
            return
        pair.data_id = stream_id
        self.by_stream[stream_id] = pair
        if not 0 < pair.port < 65536:
            return self.fail(pair, f"invalid port {port_text!r}")
        try:
            pair.conn = socket.create_connection((self.host, pair.port), CONNECT_TIMEOUT)
            pair.conn.settimeout(None)
        except OSError as error:
            return self.fail(pair, f"error forwarding port {pair.port} to pod {self.host}: {error}")
        threading.Thread(target=self.from_pod, args=(pair,), daemon=True, name="spdy-portforward").start()

    def fail(self, pair: _Pair, message: str) -> None:
        if pair.error_id:
            self.send(data_frame(pair.error_id, 0, message.encode()))
            self.send(data_frame(pair.error_id, FLAG_FIN, b""))
        self.send(data_frame(pair.data_id, FLAG_FIN, b""))

    def from_pod(self, pair: _Pair) -> None:
        try:
            while True:
                data = pair.conn.recv(MAX_CHUNK)
                if not data:
                    break
                self.send(data_frame(pair.data_id, 0, data))
        except OSError:
            pass
        try:
            self.send(data_frame(pair.data_id, FLAG_FIN, b""))
            if pair.error_id:
                self.send(data_frame(pair.error_id, FLAG_FIN, b""))
        except OSError:
            pass

    def data(self, stream_id: int, flags: int, payload: bytes) -> None:
        pair = self.by_stream.get(stream_id)
        if pair is None or pair.conn is None:
            return  # the error stream's FIN, or a stream already gone
        try:
            if payload:
                pair.conn.sendall(payload)
            if flags & FLAG_FIN:
                _shut(pair.conn, socket.SHUT_WR)
        except OSError:
            pass


def _shut(conn: socket.socket, how: int) -> None:
    try:
        conn.shutdown(how)
    except OSError:
        pass


class ExecSession(Session):
    """exec/attach over SPDY (remotecommand v4.channel.k8s.io, kubectl before 1.30): the client
    opens one stream per `streamtype` (error, stdin, stdout, stderr, resize). `on_input(kind,
    data, fin)` gets stdin and resize bytes; ready() waits until every stream in `expected` is
    open; write(kind, data) and finish(kind) answer on the client's streams."""

    def __init__(self, recv: Callable[[], bytes], send: Callable[[bytes], None], expected: set[str],
                 on_input: Callable[[str, bytes, bool], None]):
        super().__init__(recv, send)
        self.expected = set(expected)
        self.on_input = on_input
        self.ids: dict[str, int] = {}
        self.kinds: dict[int, str] = {}
        self.all_open = threading.Event()

    def open_stream(self, stream_id: int, headers: dict[str, str]) -> None:
        kind = headers.get("streamtype", "")
        self.ids[kind] = stream_id
        self.kinds[stream_id] = kind
        if self.expected <= set(self.ids):
            self.all_open.set()

    def data(self, stream_id: int, flags: int, payload: bytes) -> None:
        kind = self.kinds.get(stream_id)
        if kind in ("stdin", "resize"):
            self.on_input(kind, payload, bool(flags & FLAG_FIN))

    def ended(self) -> None:
        self.all_open.set()  # nobody waits for streams of a session that is gone

    def ready(self, timeout: float) -> bool:
        return self.all_open.wait(timeout) and self.expected <= set(self.ids)

    def write(self, kind: str, data: bytes) -> None:
        stream_id = self.ids.get(kind)
        for at in range(0, len(data), MAX_CHUNK):
            if stream_id:
                self.send(data_frame(stream_id, 0, data[at:at + MAX_CHUNK]))

    def finish(self, kind: str) -> None:
        stream_id = self.ids.get(kind)
        if stream_id:
            self.send(data_frame(stream_id, FLAG_FIN, b""))
