"""SshTunnel.open returns only once the tunnel's local socket accepts connections."""

from __future__ import annotations

import socket
import sys

from emu.control.runtime.swarm import SshTunnel, listening
from emu.api.topology.model import Host

# What ssh -L does with a local unix socket, slowed down: bind (the file appears),
# then listen a while later. A connection in that gap is refused.
SLOW_LISTENER = """
import socket, sys, time
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
time.sleep(0.5)
server.listen(8)
while True:
    connection, _ = server.accept()
    connection.close()
"""


def test_open_waits_until_the_socket_listens(monkeypatch):
    tunnel = SshTunnel(Host(name="h1", address="10.0.0.1"))
    monkeypatch.setattr(SshTunnel, "command", lambda self: [sys.executable, "-c", SLOW_LISTENER, self.local])
    try:
        assert tunnel.open(timeout=10) == f"unix://{tunnel.local}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(tunnel.local)  # refused if open returned at bind
    finally:
        tunnel.close()
    assert not listening(tunnel.local)


def test_listening_is_false_for_a_bound_socket_that_does_not_listen(tmp_path):
    path = str(tmp_path / "s.sock")
    assert not listening(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        assert not listening(path)
        server.listen(1)
        assert listening(path)
