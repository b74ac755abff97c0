"""The streaming exec's parts that need no Docker: Docker's multiplexed frames
read from a real socket, and the shell wrapper and kill script run here with
a real process (they run the same way inside a node)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time

import pytest

from emu.control.runtime import stream


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(payload)) + payload


class Runtime:
    """Stands in for the provider only where DockerStream signals the process; unused here."""


def test_frames_are_split_into_stdout_and_stderr_across_any_boundaries():
    ours, theirs = socket.socketpair()
    handle = stream.DockerStream(Runtime(), "node", "exec", ours, "marker")
    assert theirs.recv(3) == stream.GO  # the command may start
    data = frame(2, b"listening on eth0\n") + frame(1, b"\xd4\xc3\xb2\xa1") + frame(1, b"rest") + frame(2, b"done\n")

    def send() -> None:
        for byte in range(0, len(data), 5):  # frames cut mid-header and mid-payload
            theirs.sendall(data[byte : byte + 5])
            time.sleep(0.001)
        theirs.close()

    sender = threading.Thread(target=send)
    sender.start()
    out = b""
    while chunk := handle.read():
        out += chunk
    sender.join()
    assert out == b"\xd4\xc3\xb2\xa1rest"
    assert handle.errors() == "listening on eth0\ndone\n"
    assert handle.read() == b""


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as name:
        return name.read().strip()


def running(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if f"{stream.MARKER_VARIABLE}={marker}".encode() in environ.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            continue
    return found


def wait_gone(marker: str, limit: float = 10.0) -> list[int]:
    deadline = time.monotonic() + limit
    while running(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running(marker)


@pytest.fixture
def wrapped():
    """sleep under the wrapper, as exec_stream starts tcpdump: (process, marker)."""
    marker = stream.new_marker()
    process = subprocess.Popen(
        stream.wrapped(["sleep", "300"]),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**os.environ, stream.MARKER_VARIABLE: marker},
    )
    yield process, marker
    process.kill()
    process.wait()


def test_the_command_waits_for_go_and_ends_when_its_stdin_does(wrapped):
    process, marker = wrapped
    time.sleep(0.2)
    assert process.poll() is None and comm(process.pid) == "sh"  # still waiting
    process.stdin.write(stream.GO)
    process.stdin.flush()
    deadline = time.monotonic() + 10
    while comm(process.pid) != "sleep" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert comm(process.pid) == "sleep"  # exec'd in place: the same pid
    assert process.pid in running(marker)
    process.stdin.close()  # what a dropped connection (emu killed) looks like to it
    assert process.wait(timeout=10) == -15  # SIGTERM from the watcher
    assert wait_gone(marker) == []  # the watcher too


def test_no_go_means_the_command_never_starts(wrapped):
    process, marker = wrapped
    process.stdin.close()
    assert process.wait(timeout=10) == 0
    assert wait_gone(marker) == []


def test_the_kill_script_finds_everything_by_the_marker(wrapped):
    process, marker = wrapped
    process.stdin.write(stream.GO)
    process.stdin.flush()
    deadline = time.monotonic() + 10
    while len(running(marker)) < 2 and time.monotonic() < deadline:  # the command and its watcher
        time.sleep(0.02)
    assert len(running(marker)) >= 2
    other = stream.new_marker()
    subprocess.run(stream.kill_argv(other, "TERM"), check=True)  # another marker: untouched
    assert process.poll() is None
    subprocess.run(stream.kill_argv(marker, "TERM"), check=True)
    assert process.wait(timeout=10) == -15
    assert wait_gone(marker) == []


class Engine:
    """A Docker engine's exec endpoints on a real unix socket, answering as dockerd
    does but with the worst timing: the `101 UPGRADED` headers and the command's
    whole output in one write, so the first frames arrive with the headers."""

    def __init__(self, path: str, output: bytes):
        self.output = output
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(8)
        self.stdins: list[bytes] = []  # what each exec's client wrote, to its end (one a connection)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(connection,), daemon=True).start()

    def answer(self, connection: socket.socket) -> None:
        with connection:
            reader = connection.makefile("rb")
            while request := reader.readline():
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                reader.read(length)
                path = request.split()[1].decode()
                if path.endswith("/start"):
                    head = b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.multiplexed-stream\r\n"
                    connection.sendall(head + b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n" + self.output)
                    connection.shutdown(socket.SHUT_WR)
                    self.stdins.append(reader.read())  # what the client wrote, to its end
                    return
                body = b'{"Id": "x", "ExitCode": 0, "ApiVersion": "1.43", "Running": false}'
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                )

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def engine(tmp_path):
    output = frame(1, b"10.96.0.10      echo.default.svc.cluster.local\n") + frame(2, b"warning\n") + frame(1, b"end\n")
    served = Engine(str(tmp_path / "docker.sock"), output)
    yield served
    served.close()


def test_output_that_comes_with_the_upgrade_headers_is_not_lost(engine, tmp_path):
    """The multi-host suite once saw `getent hosts echo` exit 0 with no output:
    the docker SDK reads an exec's frames past the buffer that holds them when
    they arrive with the headers (docker/docker-py#3332). emu's reads do not."""
    from emu.control.runtime.docker import DockerRuntime

    runtime = DockerRuntime(base_url=f"unix://{tmp_path / 'docker.sock'}")
    result = runtime.exec("node", ["getent", "hosts", "echo"])
    assert (result.exit_code, result.output) == (0, "10.96.0.10      echo.default.svc.cluster.local\nwarning\nend\n")
    code, out, err = runtime.exec_split("node", ["getent", "hosts", "echo"])
    assert (code, out, err) == (0, b"10.96.0.10      echo.default.svc.cluster.local\nend\n", b"warning\n")
    assert runtime.run_with_files("node", {"/etc/x": "y"}, ["true"]).output.startswith("10.96.0.10")
    deadline = time.monotonic() + 10  # (the engine's thread reads stdin after it answered)
    while not any(b"etc/x" in stdin for stdin in engine.stdins):
        assert time.monotonic() < deadline, engine.stdins  # the tar archive went in before stdin was closed
        time.sleep(0.01)


def test_the_stream_reads_what_came_with_the_headers(engine, tmp_path):
    from emu.control.runtime.docker import DockerRuntime

    runtime = DockerRuntime(base_url=f"unix://{tmp_path / 'docker.sock'}")
    handle = runtime.exec_stream("node", ["tcpdump"])
    out = b""
    while chunk := handle.read():
        out += chunk
    assert out == b"10.96.0.10      echo.default.svc.cluster.local\nend\n"
    assert handle.errors() == "warning\n"
    handle.close()
