"""Packets as test evidence: capture on pods, node interfaces or a service's
endpoints around a block of a test, and assert on what each interface saw.

    from emu.testing.capture import capture

    with capture(cluster, "client", "svc/echo", filter="tcp port 80 or tcp port 8080") as seen:
        cluster.exec("client", ["curl", "-s", "http://echo/hostname"])
    syn = seen.on("client/eth0").first(flags="S")
    assert syn.dst == echo_cluster_ip                              # the client sent to the service
    assert seen.on(pod="default/echo-0").first(flags="S").src == client_ip  # the endpoint saw the pod's IP

The block runs once every tcpdump listens; when it ends, emu waits until the
packets stop coming (at most 3 s), stops every tcpdump and decodes (dpkt).
"""

from __future__ import annotations

from contextlib import contextmanager

from emu.observe import capture as engine
from emu.observe.capture import Packet


class Packets(list):
    """Decoded packets (emu.observe.capture.Packet: target, time, proto, src, dst,
    sport, dport, flags, pod), in time order across every interface."""

    def on(self, target: str | None = None, pod: str | None = None) -> Packets:
        """Those seen on the interface named `target` (client/eth0, node/worker:eth0)
        or on the interfaces of `pod` (NAMESPACE/NAME: its eth0 or its host-side veth)."""
        return Packets(p for p in self if (target is None or p.target == target) and (pod is None or p.pod == pod))

    def where(self, **fields) -> Packets:
        """Those whose fields equal the given values, e.g. where(proto="tcp", dport=8080)."""
        return Packets(p for p in self if all(getattr(p, k) == v for k, v in fields.items()))

    def first(self, **fields) -> Packet:
        """The first packet with these fields; AssertionError listing what was seen if none."""
        __tracebackhide__ = True
        found = self.where(**fields)
        if not found:
            seen = "\n  ".join(str(p) for p in self[:40]) or "nothing"
            raise AssertionError(f"no packet with {fields} among {len(self)}:\n  {seen}")
        return found[0]

    @property
    def targets(self) -> list[str]:
        return sorted({p.target for p in self})


@contextmanager
def capture(cluster, *targets: str, filter: str = "", interface: str | None = None, count: int | None = None):
    """Capture on TARGETs (as `emu capture` takes them: a pod, node/NAME:IFACE,
    external/NAME, svc/NAME) while the block runs; yields a Packets list that is
    filled when the block ends. A bad TARGET or filter fails before the block."""
    prepared = engine.prepare(cluster, list(targets), filter, count, interface)
    seen = Packets()
    prepared.start()
    streams = prepared.streams

    def emit(index: int, timestamp: int, data: bytes, length: int | None) -> None:
        target = streams[index].target
        seen.append(engine.decode(target.name, timestamp / 1e6, streams[index].linktype or 1, data, target.pod))

    try:
        yield seen
        prepared.settle(emit)
    finally:
        prepared.stop(emit)
        seen.sort(key=lambda p: p.time)
