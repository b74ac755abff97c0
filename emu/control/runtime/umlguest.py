"""The command server inside a User-mode Linux guest: how emu runs commands in it.

The guest's init starts it on the guest's address (the tap network, a host
bridge that only the host and its guests reach). One request per connection:
a JSON line {"boot": BOOT_ID, "argv": [...], "input": base64, "timeout": s}
(or {"boot": ..., "op": "poweroff"}), answered by one JSON line
{"boot": ..., "rc": N, "stdout": base64, "stderr": base64, "timed_out": bool}.
A request {"boot": ..., "op": "stream", "argv": [...], "env": {...}} is
answered as it runs, in Docker's attach framing (a byte 1 stdout or 2 stderr,
three zero bytes, the payload's length as 4 bytes big-endian, the payload),
and a last frame of kind 3 holding the exit code as JSON; the client closing
the connection kills the command's process group (no process outlives its
reader).
The boot id, a random value given on the guest's kernel command line, makes
sure a client talks to the guest it booted and not to an older one at the
same address. Every command has a timeout (its process group is killed at
it), and requests and outputs are bounded, so one stuck command cannot wedge
the channel. Standard library only: it runs in the guest's Python.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socketserver
import struct
import subprocess
import sys
import threading

PORT = 7070
MAX_REQUEST = 64 << 20  # input is bounded: rules for 10,000 services are a few MB
MAX_OUTPUT = 64 << 20
MAX_TIMEOUT = 3600


def _b64(data: bytes) -> str:
    return base64.b64encode(data[:MAX_OUTPUT]).decode()


def run_request(request: dict) -> dict:
    """Run one command; never raises for the command's own failure."""
    argv = request["argv"]
    timeout = min(float(request.get("timeout") or 60), MAX_TIMEOUT)
    data = base64.b64decode(request.get("input") or "")
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own group, so a timeout kills what it started too
        )
    except OSError as error:
        return {"rc": 127, "stdout": "", "stderr": _b64(f"{argv[0]}: {error}\n".encode()), "timed_out": False}
    try:
        out, err = process.communicate(data, timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        timed_out = True
    return {"rc": process.returncode, "stdout": _b64(out), "stderr": _b64(err), "timed_out": timed_out}


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline(MAX_REQUEST + 1)
        try:
            request = json.loads(line)
        except ValueError:
            return
        if request.get("boot") != self.server.boot_id:
            self.reply({"error": "wrong boot id: this is another guest"})
            return
        if request.get("op") == "poweroff":
            self.reply({"rc": 0})
            self.wfile.flush()
            threading.Timer(0.2, poweroff).start()
            return
        if request.get("op") == "stream":
            self.stream(request)
            return
        self.reply(run_request(request))

    def stream(self, request: dict) -> None:
        """Run the command, sending its output frame by frame as it comes."""
        lock = threading.Lock()

        def send(kind: int, data: bytes) -> None:
            with lock:
                self.wfile.write(struct.pack(">BxxxL", kind, len(data)) + data)

        environment = dict(os.environ, **{str(k): str(v) for k, v in (request.get("env") or {}).items()})
        try:
            process = subprocess.Popen(
                request["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=environment, start_new_session=True,
            )  # fmt: skip
        except OSError as error:
            send(2, f"{request['argv'][0]}: {error}\n".encode())
            send(3, b"127")
            return

        def kill() -> None:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except OSError:
                    pass

        def watch() -> None:  # the client went away: the command goes too
            # On the socket itself: a read of rfile would hold its lock, and the
            # handler's end (which closes rfile) would wait for it, and the client for that.
            try:
                while self.connection.recv(4096):
                    pass
            except OSError:
                pass
            kill()

        def errors() -> None:
            try:
                for chunk in iter(lambda: process.stderr.read1(1 << 16), b""):
                    send(2, chunk)
            except OSError:
                kill()

        threading.Thread(target=watch, daemon=True).start()
        reader = threading.Thread(target=errors, daemon=True)
        reader.start()
        try:
            for chunk in iter(lambda: process.stdout.read1(1 << 16), b""):
                send(1, chunk)
            reader.join()
            send(3, str(process.wait()).encode())
        except OSError:
            kill()
            process.wait()

    def reply(self, answer: dict) -> None:
        answer["boot"] = self.server.boot_id
        self.wfile.write(json.dumps(answer).encode() + b"\n")


def poweroff() -> None:
    """Power the guest off at once (its disk is a throwaway copy-on-write layer)."""
    with open("/proc/sysrq-trigger", "w") as trigger:
        trigger.write("o")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main(argv: list[str]) -> None:
    address, boot_id = argv[1], argv[2]
    server = Server((address, PORT), Handler)
    server.boot_id = boot_id
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
