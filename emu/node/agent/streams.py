"""The kubelet's streaming API on the node agent's port, for the API server
(emu.apiserver.streaming) only:

- GET /containerLogs/NS/POD/CONTAINER?follow=&tailLines=&limitBytes=: the
  container's log file (LOG_DIR/<netns>/<container>.log), followed while the
  caller stays;
- GET /exec/NS/POD/CONTAINER?command=..&stdin=&stdout=&stderr=&tty=: the
  command run as the pod's container (cni.in_pod_argv: its network and UTS
  namespaces, volumes and environment), a pty when tty=true; then, after
  `101 Switching Protocols`, frames of one channel byte, a 4-byte big-endian
  length and data (0 stdin, empty = its end; 1 stdout; 2 stderr; 3 the exit
  Status as JSON, last; 4 resize as {"Width","Height"});
- GET /attach/NS/POD/CONTAINER: the container's output from now on, as frames
  (its stdin is /dev/null: nothing to attach to).

Trust: only the node that runs the API server may ask (by its node address;
make_handler checks the sender). Pods cannot be that sender: the node's
EMU-AGENT-GUARD rules reset pods' connections to the agent port before they
are masqueraded to a node address. A shared secret would not do better here:
pods are network namespaces and see the node's files. The limit: anything
running in a node's root network namespace (the node itself, `docker exec`)
is trusted, as the kubelet trusts its host.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import threading
from urllib.parse import parse_qs, unquote, urlsplit

from emu.node.agent import web
from emu.node.plan import cni

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
PATHS = ("/containerLogs/", "/exec/", "/attach/")
FOLLOW_POLL = 0.25  # seconds between looks at a followed log file
TAIL_WINDOW = 8 << 20  # tailLines reads at most this much of the file's end
INITIAL_SIZE_WAIT = 1.0  # seconds a tty exec waits for the caller's terminal size before it starts


class StreamError(Exception):
    """A request the agent refuses: (HTTP status, message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def frame(channel: int, data: bytes) -> bytes:
    return struct.pack(">BI", channel, len(data)) + data


def read_frame(rfile) -> tuple[int, bytes] | None:
    head = rfile.read(5)
    if len(head) < 5:
        return None
    channel, length = struct.unpack(">BI", head)
    data = rfile.read(length) if length else b""
    return (channel, data) if len(data) == length else None


def exit_status(code: int, command: list[str]) -> dict:
    """The Status the kubelet writes on the error channel when a command ends."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
        "message": f"command terminated with non-zero exit code: error executing command "
                   f"[{' '.join(command)}], exit code {code}",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }  # fmt: skip


def parse(path: str, state) -> tuple[str, object, dict, dict]:
    """(kind, pod, container, query) of a streaming path; StreamError when it names nothing here."""
    url = urlsplit(path)
    parts = [unquote(p) for p in url.path.strip("/").split("/")]
    if len(parts) != 4:
        raise StreamError(404, f"expected /{parts[0]}/NAMESPACE/POD/CONTAINER")
    kind, namespace, name, container_name = parts
    pod = state.pods.get(f"{namespace}/{name}") if state else None
    if pod is None:
        raise StreamError(404, f'pod "{name}" not found in namespace "{namespace}" on this node')
    container = next((c for c in pod.containers if c["name"] == container_name), None)
    if container is None:
        raise StreamError(400, f"container {container_name} is not valid for pod {name}")
    if cni.runs_image(container):
        raise StreamError(400, f"container {container_name} of pod {name} runs from an image in a Docker container: "
                               "emu does not serve its logs, exec or attach yet; use `docker logs` / `docker exec` "
                               "on the node's Docker host")  # fmt: skip
    return kind, pod, container, parse_qs(url.query, keep_blank_values=True)


def _true(query: dict, name: str) -> bool:
    return (query.get(name) or [""])[0].lower() in ("1", "true")


def _number(query: dict, name: str) -> int | None:
    text = (query.get(name) or [""])[0]
    if not text:
        return None
    if not text.lstrip("-").isdigit():
        raise StreamError(400, f"{name} must be a number, not {text!r}")
    return int(text)


def log_path(pod, container: dict) -> str:
    return f"{cni.LOG_DIR}/{pod.netns}/{container['name']}.log"


# ---------------------------------------------------------------- logs

def tail(data: bytes, lines: int) -> bytes:
    """The last `lines` lines of `data` (a last line without its newline counts)."""
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def serve_logs(pod, container: dict, query: dict, connection, wfile) -> None:
    """Write the container's log as an HTTP response; with follow, keep writing what is
    appended until the caller hangs up or the pod's log is removed."""
    if _true(query, "previous"):
        raise StreamError(400, f'previous terminated container "{container["name"]}" in pod "{pod.name}" not found '
                               "(emu keeps one log a container, across its restarts)")  # fmt: skip
    for name in ("timestamps", "sinceSeconds", "sinceTime"):
        if query.get(name) and (name != "timestamps" or _true(query, name)):
            raise StreamError(400, f"{name} is not supported: emu's container logs carry no per-line times")
    tail_lines, limit = _number(query, "tailLines"), _number(query, "limitBytes")
    path = log_path(pod, container)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below, once the 404 case is past
    except FileNotFoundError:
        raise StreamError(400, f'container "{container["name"]}" in pod "{pod.name}" is waiting to start') from None
    with handle:
        if tail_lines is not None and tail_lines >= 0:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - TAIL_WINDOW))
            first = tail(handle.read(), tail_lines)
        else:
            first = handle.read()
        sent = 0

        def write(data: bytes) -> bool:
            nonlocal sent
            if limit is not None:
                data = data[: max(0, limit - sent)]
            if data:
                wfile.write(data)
                wfile.flush()
                sent += len(data)
            return limit is None or sent < limit

        wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        if not write(first) or not _true(query, "follow"):
            wfile.flush()
            return
        while True:
            # Waiting on the connection: a caller that hangs up ends the follow at once.
            readable, _, _ = select.select([connection], [], [], FOLLOW_POLL)
            if readable and not connection.recv(1, 0):
                return
            data = handle.read()
            if data:
                if not write(data):
                    return
            elif not os.path.exists(path):
                return  # the pod is gone


# ---------------------------------------------------------------- exec

def serve_exec(pod, container: dict, query: dict, connection, rfile, wfile) -> None:
    """Run `command` in the pod and carry its streams as frames (module docstring)."""
    command = query.get("command") or []
    if not command:
        raise StreamError(400, "you must specify at least 1 command")
    tty, stdin = _true(query, "tty"), _true(query, "stdin")
    argv = cni.in_pod_argv(pod, container, command)
    lock = threading.Lock()

    def send(channel: int, data: bytes) -> None:
        with lock:
            connection.sendall(frame(channel, data))

    master = None
    upgraded = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: emu-frames\r\n\r\n"
    if tty:
        master, slave = pty.openpty()
        wfile.write(upgraded)
        wfile.flush()
        # kubectl sends the terminal's size first: give it to the pty before the command starts, so
        # that the command sees it (`stty size`, a shell's first prompt). Input before it waits in the pty.
        while select.select([connection], [], [], INITIAL_SIZE_WAIT)[0]:
            got = read_frame(rfile)
            if got is None or got[0] == RESIZE:
                if got is not None:
                    _resize(master, got[1])
                break
            if got[0] == STDIN:
                os.write(master, got[1] or b"\x04")
        # setsid -c: a session of its own with the pty as its controlling terminal (a shell's job control,
        # ^C); -w: wait for it, so the exit code is the command's.
        proc = subprocess.Popen(["setsid", "-w", "-c", *argv], stdin=slave, stdout=slave, stderr=slave,
                                close_fds=True)  # fmt: skip
        os.close(slave)
        outputs = [(master, STDOUT)]
    else:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        outputs = [(proc.stdout.fileno(), STDOUT), (proc.stderr.fileno(), STDERR)]
        wfile.write(upgraded)
        wfile.flush()

    def pump(fd: int, channel: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the pty's last user is gone
                break
            if not data:
                break
            try:
                send(channel, data)
            except OSError:
                break

    def feed() -> None:
        while True:
            try:
                got = read_frame(rfile)
            except (OSError, ValueError):  # ValueError: the server closed the connection's reader, the command done
                got = None
            if got is None:  # the API server hung up: the caller left
                if tty:
                    _signal(proc, signal.SIGHUP)
                elif proc.stdin:
                    _close(proc.stdin)
                return
            channel, data = got
            if channel == STDIN:
                if tty:
                    try:
                        os.write(master, data or b"\x04")  # end of input on a terminal is ^D
                    except OSError:  # the command ended and its terminal is closed
                        return
                elif proc.stdin is None:
                    continue
                elif data:
                    try:
                        proc.stdin.write(data)
                        proc.stdin.flush()
                    except (BrokenPipeError, ValueError):
                        pass
                else:
                    _close(proc.stdin)
            elif channel == RESIZE and master is not None:
                _resize(master, data)

    threading.Thread(target=feed, daemon=True, name="exec-stdin").start()
    pumps = [threading.Thread(target=pump, args=(fd, ch), daemon=True) for fd, ch in outputs]
    for t in pumps:
        t.start()
    code = proc.wait()
    for t in pumps:
        t.join(timeout=5 if tty else None)  # a pty's output may be held open by the command's own children
    if master is not None:
        os.close(master)
    try:
        send(ERROR, json.dumps(exit_status(code, command)).encode())
    except OSError:
        pass


def _resize(master: int, data: bytes) -> None:
    """Set the pty's size from a resize message ({"Width", "Height"})."""
    try:
        size = json.loads(data)
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", int(size["Height"]), int(size["Width"]), 0, 0))
    except (ValueError, KeyError, TypeError, OSError):
        pass


def _signal(proc, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except OSError:
        pass


def _close(f) -> None:
    try:
        f.close()
    except OSError:
        pass


def serve_attach(pod, container: dict, query: dict, connection, rfile, wfile) -> None:
    """Attach: the container's output from now on on stdout, until the caller hangs up."""
    path = log_path(pod, container)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below, once the 404 case is past
    except FileNotFoundError:
        raise StreamError(400, f'container "{container["name"]}" in pod "{pod.name}" is waiting to start') from None
    with handle:
        handle.seek(0, os.SEEK_END)
        wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: emu-frames\r\n\r\n")
        wfile.flush()
        while True:
            readable, _, _ = select.select([connection], [], [], FOLLOW_POLL)
            if readable and read_frame(rfile) is None:
                return  # the caller left (frames it sends, stdin, have nowhere to go)
            data = handle.read()
            if data:
                connection.sendall(frame(STDOUT, data))


def serve(request, wfile, state) -> bool:
    """Serve one streaming request of an allowed caller; a refusal is a JSON
    {"error"} with its status. False: the connection is done after it."""
    request.connection.settimeout(None)  # an exec session may sit idle as long as its user likes
    try:
        _serve(request, wfile, state)
    except StreamError as error:
        wfile.write(web.response(error.status, json.dumps({"error": str(error)}).encode(), close=True))
        wfile.flush()
    return False


def _serve(request, wfile, state) -> None:
    kind, pod, container, query = parse(request.path, state)
    if kind == "containerLogs":
        return serve_logs(pod, container, query, request.connection, wfile)
    if kind == "exec":
        return serve_exec(pod, container, query, request.connection, request.rfile, wfile)
    return serve_attach(pod, container, query, request.connection, request.rfile, wfile)
