"""A command in a container whose output is read while it runs (the Docker
provider's `exec_stream`), and that can always be stopped.

A Docker exec has no kill call, and a client that dies leaves its exec
running. So the command runs with a unique marker in its environment
(EMU_STREAM=...), which it and everything it execs keep: `terminate` and
`close` find it by that marker in /proc and signal it. And a watcher beside it
reads the exec's stdin, which ends when emu's connection does (a killed emu
included), and then ends the command: no process outlives its reader.
"""

from __future__ import annotations

import socket
import struct
import threading
import uuid

MARKER_VARIABLE = "EMU_STREAM"

# The command starts once emu says "go" on stdin, so nothing it writes can come
# before emu's connection is attached (a tcpdump's pcap header and "listening"
# line were once lost about one start in twenty; ExecChannel's reads through the
# response's buffer address the likelier cause, and the "go" stays as cheap insurance).
# $$ becomes the command itself (exec), so the watcher signals it by pid, after
# checking that the pid still carries the marker (it may have ended and been reused).
# A non-interactive shell gives a background job /dev/null as stdin, hence fd 3.
# The watcher holds none of the exec's output, so the stream ends with the command.
GO = b"go\n"
WRAPPER = (
    "exec 3<&0; read -r go <&3 || exit 0; "
    '(cat <&3 >/dev/null; grep -qzx "EMU_STREAM=$EMU_STREAM" /proc/$$/environ && kill -TERM $$) >/dev/null 2>&1 & '
    'exec 3<&-; exec "$@"'
)
# Signal every process whose environment holds the marker ($1 the signal, $2 the
# marker): one grep over every /proc/PID/environ (NUL-separated: -z) rather than
# a process or two for each of the node's processes.
KILL = (
    'for f in $(grep -lzx "EMU_STREAM=$2" /proc/[0-9]*/environ 2>/dev/null); do '
    'p=${f#/proc/}; kill "-$1" "${p%/environ}" 2>/dev/null; done; true'
)
# The pids that carry any emu stream marker (tests: nothing may be left behind).
LIST = 'for f in $(grep -lz "^EMU_STREAM=" /proc/[0-9]*/environ 2>/dev/null); do p=${f#/proc/}; echo "${p%/environ}"; done; true'


def new_marker() -> str:
    return uuid.uuid4().hex


def wrapped(argv: list[str]) -> list[str]:
    """argv under the watcher shell (the marker comes through the environment)."""
    return ["sh", "-c", WRAPPER, "sh", *argv]


def kill_argv(marker: str, signal: str) -> list[str]:
    return ["sh", "-c", KILL, "sh", signal, marker]


class ExecChannel:
    """An attached exec's connection (after Docker's `101 UPGRADED`), read through
    the HTTP response's buffer. The docker SDK reads an exec's frames from the
    socket under the response, past the buffer that read the response's headers:
    when the first frames arrive in the same packet as the headers, they are in
    that buffer and lost (docker/docker-py#425, #3332). Over an SSH-forwarded
    socket that happens often enough to matter: `getent hosts echo` exiting 0
    with no output, seen in the multi-host suite. Reads here drain the buffer first."""

    def __init__(self, response):
        self.response = response
        self.reader = response.raw._fp.fp  # http.client's BufferedReader over the socket
        io = self.reader.raw  # socket.SocketIO
        self.sock = io._sock

    def recv(self, size: int) -> bytes:
        """Up to size bytes (what the buffer holds, else one read of the socket); b"" at the end."""
        try:
            return self.reader.read1(size)
        except (OSError, ValueError):  # closed under us (close() from another thread)
            return b""

    def read_exactly(self, size: int) -> bytes:
        """size bytes, or fewer at the end."""
        try:
            return self.reader.read(size) or b""
        except (OSError, ValueError):
            return b""

    def frames(self):
        """(stream, payload) for each of Docker's multiplexed frames (8-byte header:
        stream 1 stdout, 2 stderr, then the payload's length), until the end."""
        while len(header := self.read_exactly(8)) == 8:
            kind, size = struct.unpack(">BxxxL", header)
            payload = self.read_exactly(size)
            yield kind, payload
            if len(payload) < size:
                return

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        for close in (self.sock.close, self.response.close):
            try:
                close()
            except OSError:
                pass


def attach(api, exec_id: str, tty: bool = False) -> ExecChannel:
    """Start a created exec attached (the SDK's exec_start(socket=True), read safely)."""
    response = api._post_json(
        api._url("/exec/{0}/start", exec_id),
        headers={"Connection": "Upgrade", "Upgrade": "tcp"},
        data={"Tty": tty, "Detach": False},
        stream=True,
    )
    api._raise_for_status(response)
    return ExecChannel(response)


def run_attached(api, exec_id: str) -> tuple[bytes, bytes, bytes]:
    """Start an exec attached and read it to the end: (stdout and stderr as they
    came, stdout, stderr)."""
    channel = attach(api, exec_id)
    both, out, err = [], [], []
    try:
        for kind, payload in channel.frames():
            both.append(payload)
            (err if kind == 2 else out).append(payload)
    finally:
        channel.close()
    return b"".join(both), b"".join(out), b"".join(err)


def take_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """The whole frames at the start of `buffer` (Docker's stream format: a byte of
    kind, three zero bytes, a big-endian length, the payload), removed from it; a
    frame not whole yet stays. Cut at an offset and trimmed once per call: at
    50,000 small packets a second, trimming per frame was quadratic and slowed
    tcpdump until the kernel dropped packets."""
    offset, frames = 0, []
    while len(buffer) - offset >= 8:
        kind, size = struct.unpack_from(">BxxxL", buffer, offset)
        if len(buffer) - offset - 8 < size:
            break
        frames.append((kind, bytes(buffer[offset + 8 : offset + 8 + size])))
        offset += 8 + size
    del buffer[:offset]
    return frames


class DockerStream:
    """One exec's multiplexed stdout/stderr, read frame by frame from its socket
    (Docker's stream format: 8-byte header, stream 1 stdout, 2 stderr)."""

    def __init__(self, runtime, container: str, exec_id: str, channel, marker: str):
        self.runtime = runtime
        self.container = container
        self.exec_id = exec_id
        self.marker = marker
        self._sock = channel  # an ExecChannel (or a socket: what it reads is the same)
        self._buffer = bytearray()
        self._stderr = bytearray()
        self._ended = False
        self._lock = threading.Lock()
        self._closed = False
        self._sock.sendall(GO)

    def _recv(self) -> bytes:
        try:
            return self._sock.recv(1 << 18)
        except OSError:
            return b""  # closed under us (close() from another thread)

    def read(self) -> bytes:
        """The stdout of every whole frame received so far (at least one), joined;
        b"" at the end (take_frames cuts them)."""
        while not self._ended:
            chunk = self._recv()
            if not chunk:
                self._ended = True
                break
            self._buffer += chunk
            out = []
            for kind, payload in take_frames(self._buffer):
                if kind == 2:
                    with self._lock:
                        self._stderr += payload
                else:
                    out.append(payload)
            if out:
                return b"".join(out)
        return b""

    def errors(self) -> str:
        with self._lock:
            return self._stderr.decode(errors="replace")

    def terminate(self) -> None:
        self.runtime.exec(self.container, kill_argv(self.marker, "TERM"))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.runtime.exec(self.container, kill_argv(self.marker, "KILL"))
        finally:
            for close in (lambda: self._sock.shutdown(socket.SHUT_RDWR), self._sock.close):
                try:
                    close()
                except (OSError, AttributeError):
                    pass

    def exit_code(self) -> int | None:
        if not self._ended:
            return None
        return self.runtime.api.exec_inspect(self.exec_id).get("ExitCode")
