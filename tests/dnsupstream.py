"""A small upstream DNS server for tests: UDP and TCP on one port of 127.0.0.1,
answering from a table of zone-file lines and counting what reaches it over
each transport. Shared by the unit tests of the cluster DNS server."""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

from dnslib import QTYPE, RCODE, RR, DNSRecord

SOA = "example. 60 IN SOA ns.example. hostmaster.example. 1 7200 1800 86400 30"


def udp_and_tcp(make_tcp, make_udp=None):
    """A UDP socket on a free port of 127.0.0.1 and make_tcp(port) on the same
    number; tried again with another port when that number is taken for TCP."""
    for _ in range(50):
        if make_udp is not None:
            udp = make_udp()
        else:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
        try:
            return udp, make_tcp(udp.getsockname()[1])
        except OSError:
            udp.close()
    raise RuntimeError("no port free for both UDP and TCP")


class FakeUpstream:
    """records: {(name, type): [zone-file lines]}; names not in it are NXDOMAIN.
    truncate_udp: answer every UDP query with TC set and no records (as a
    server does when the answer is too big), so only TCP gets the records.
    decoy: before each UDP answer send one with another ID and address 203.0.113.66,
    as a spoofer racing the real server would."""

    def __init__(self, records: dict[tuple[str, str], list[str]], truncate_udp: bool = False, decoy: bool = False):
        self.records = {(name.lower().rstrip("."), qtype): lines for (name, qtype), lines in records.items()}
        self.truncate_udp = truncate_udp
        self.decoy = decoy
        self.received: list[tuple[str, bytes]] = []  # (transport, query)
        upstream = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                header = self.request.recv(2)
                if len(header) < 2:
                    return
                data = b""
                while len(data) < struct.unpack("!H", header)[0]:
                    chunk = self.request.recv(65535)
                    if not chunk:
                        return
                    data += chunk
                reply = upstream.reply("tcp", data)
                if reply is not None:
                    self.request.sendall(struct.pack("!H", len(reply)) + reply)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.udp, self.tcp = udp_and_tcp(lambda port: Server(("127.0.0.1", port), Handler))
        self.port = self.udp.getsockname()[1]
        threading.Thread(target=self.tcp.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        threading.Thread(target=self._serve_udp, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count(self, transport: str) -> int:
        return sum(1 for t, _ in self.received if t == transport)

    def reply(self, transport: str, data: bytes) -> bytes | None:
        self.received.append((transport, data))
        query = DNSRecord.parse(data)
        if query.header.qr:
            return None
        reply = query.reply(ra=1, aa=0)
        if transport == "udp" and self.truncate_udp:
            reply.header.tc = 1
            return bytes(reply.pack())
        lines = self.records.get((str(query.q.qname).lower().rstrip("."), QTYPE[query.q.qtype]))
        if lines is None:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(*RR.fromZone(SOA))
        else:
            for line in lines:
                reply.add_answer(*RR.fromZone(line))
        return bytes(reply.pack())

    def _serve_udp(self) -> None:
        while True:
            try:
                data, client = self.udp.recvfrom(4096)
            except OSError:
                return
            reply = self.reply("udp", data)
            if reply is not None and self.decoy:
                fake = DNSRecord.parse(reply)
                fake.header.id ^= 0x5A5A
                fake.rr = [RR.fromZone(f"{fake.q.qname} 60 A 203.0.113.66")[0]]
                self.udp.sendto(bytes(fake.pack()), client)
            if reply is not None:
                self.udp.sendto(reply, client)

    def close(self) -> None:
        self.udp.close()
        self.tcp.shutdown()
        self.tcp.server_close()
