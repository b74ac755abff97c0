"""A host port forwarded to a User-mode Linux node (the uml provider's extraPortMappings).

A guest's ports are on the host bridge, not on the host's own addresses, so a
host port (the API server's on 127.0.0.1, a node's hostPort) is this small
relay, as Docker's userland proxy (docker-proxy) is for a container: it
listens on ADDRESS:PORT and copies each connection to TARGET:TARGET_PORT.
TCP only. It prints "ready" once it listens, then runs until killed (the
provider records its pid and kills it with the cluster). Standard library only:
run by path with any python3, isolated (-I: emu/control/runtime/select.py would hide the standard select).

usage: python3 umlforward.py ADDRESS PORT TARGET TARGET_PORT
"""

from __future__ import annotations

import os
import socket
import sys
import threading


def pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy one direction until its end, then pass the end on."""
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def relay(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    back.start()
    pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def main(argv: list[str]) -> None:
    address, port, target, target_port = argv[1], int(argv[2]), argv[3], int(argv[4])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(128)
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the provider reads only the first line, then closes both pipes
    os.dup2(devnull, 2)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=relay, args=(client, (target, target_port)), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv)
