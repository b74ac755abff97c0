"""`emu capture`: real packets from pods, node interfaces and external
containers, merged into one pcapng (live into Wireshark, into a file, or into
a test as decoded packets).

Flow: resolve the TARGETs against the cluster's state (pure) -> check every
one in its node (the interface exists, the BPF filter compiles: `tcpdump -d`)
-> one `tcpdump --immediate-mode -U -w - -s 0 -i IFACE` per target through the provider's
streaming exec, from the node's root filesystem (`ip netns exec POD` for a
pod's eth0, so nothing is needed inside the pod) -> read each pcap stream ->
merge the packets in time order -> pcapng, one Interface Description Block
per target, flushed as it is written.

dpkt supplies the pcapng header blocks (Section Header, Interface Description
with if_name/if_description) and decodes packets for tests. tcpdump's pcap
records and the Enhanced Packet Blocks are packed here with struct: going
through dpkt's objects for every packet cost more than everything else on a
packet's way and lost packets at 50,000 a second (bench/capture.py); and
dpkt's Writer writes every packet to interface 0.
"""

from __future__ import annotations

import heapq
import os
import queue
import struct
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

from emu.errors import EmuError
from emu.node.records import ClusterState, PodState, ServiceState

TARGET_KINDS = ("pod", "node", "external", "svc", "service")
DEFAULT_INTERFACE = "eth0"
HOLD = 0.25  # seconds a packet waits for an earlier one from a slower stream
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class Target:
    """One interface to capture on."""

    name: str  # the interface description's name: client/eth0, node/worker:cni0
    container: str  # the Docker container tcpdump runs in (a node, or an external container)
    interface: str
    netns: str | None = None  # the pod's network namespace, or None for the container's own
    description: str = ""
    pod: str | None = None  # the pod (NAMESPACE/NAME) this interface belongs to, if any


# ---- resolving TARGETs (pure) ----------------------------------------------------------


def split_target(text: str) -> tuple[str, str, str | None]:
    """(kind, name, interface or None) of a TARGET: NAME[:IFACE] (a pod, else a
    service), NAMESPACE/NAME, pod/NAME, node/NAME[:IFACE], external/NAME[:IFACE],
    svc/NAME or service/NAME (NAME may be NAMESPACE/NAME)."""
    text = text.strip()
    if not text:
        raise EmuError("an empty TARGET; give a pod, node/NAME:IFACE, external/NAME or svc/NAME")
    kind, slash, rest = text.partition("/")
    if slash and kind in TARGET_KINDS:
        kind = "svc" if kind == "service" else kind
    else:
        kind, rest = "", text
    name, colon, interface = rest.partition(":")
    if not name or (colon and not interface):
        raise EmuError(f"TARGET '{text}': expected {kind + '/' if kind else ''}NAME[:INTERFACE]")
    if kind == "svc" and colon:
        raise EmuError(f"TARGET '{text}': a service is captured on every endpoint's veth; give no interface")
    return kind, name, interface or None


def _find_pod(state: ClusterState, reference: str) -> PodState | None:
    if reference in state.pods:
        return state.pods[reference]
    if "/" not in reference:
        return state.pods.get(f"default/{reference}")
    return None


def _find_service(state: ClusterState, reference: str) -> ServiceState | None:
    return state.services.get(reference if "/" in reference else f"default/{reference}")


def _pod_label(pod: PodState) -> str:
    return pod.name if pod.namespace == "default" else pod.key


def resolve_targets(
    state: ClusterState, texts: list[str], externals: dict[str, str], interface: str | None = None
) -> list[Target]:
    """The interfaces the TARGETs name, in order, each once. `externals` maps an
    external container's short name to its container name; `interface` is -i,
    the interface of node/ and external/ targets that name none (default eth0)."""
    targets: list[Target] = []
    for text in texts:
        kind, name, iface = split_target(text)
        targets += _resolve_one(state, text, kind, name, iface, externals, interface)
    unique: dict[tuple, Target] = {}
    for target in targets:
        unique.setdefault((target.container, target.netns, target.interface), target)
    return list(unique.values())


def _resolve_one(state, text, kind, name, iface, externals, interface) -> list[Target]:
    if kind == "node":
        node = next((n for n in state.nodes if name in (n.name, n.container)), None)
        if node is None:
            raise EmuError(
                f"TARGET '{text}': no node '{name}' in cluster '{state.name}' "
                f"(nodes: {', '.join(n.name for n in state.nodes)})"
            )
        chosen = iface or interface or DEFAULT_INTERFACE
        owner = next((p for p in state.pods.values() if p.node == node.name and p.host_veth == chosen), None)
        description = f"node {node.name}, {chosen}" + (f" (host side of pod {owner.key})" if owner else "")
        return [Target(f"node/{node.name}:{chosen}", node.container, chosen, None, description, owner and owner.key)]
    if kind == "external":
        if name not in externals:
            known = ", ".join(sorted(externals)) or "none; start one with `emu external NAME`"
            raise EmuError(
                f"TARGET '{text}': no external container '{name}' in cluster '{state.name}' (externals: {known})"
            )
        chosen = iface or interface or DEFAULT_INTERFACE
        return [
            Target(f"external/{name}:{chosen}", externals[name], chosen, None, f"external container {name}, {chosen}")
        ]
    pod = _find_pod(state, name) if kind in ("pod", "") else None
    if pod is not None:
        chosen = iface or DEFAULT_INTERFACE
        return [
            Target(
                f"{_pod_label(pod)}/{chosen}",
                state.node(pod.node).container,
                chosen,
                pod.netns,
                f"pod {pod.key} on node {pod.node}, {chosen}",
                pod.key,
            )
        ]
    service = _find_service(state, name) if kind in ("svc", "") else None
    if service is not None and not iface:
        pods = sorted((p for p in state.pods.values() if service.selects(p)), key=lambda p: p.key)
        if not pods:
            raise EmuError(
                f"TARGET '{text}': service {service.key} selects no pod, so there is no endpoint to capture on"
            )
        return [
            Target(
                f"node/{p.node}:{p.host_veth}",
                state.node(p.node).container,
                p.host_veth,
                None,
                f"node {p.node}, {p.host_veth}: host side of pod {p.key} (endpoint of service {service.key})",
                p.key,
            )
            for p in pods
        ]
    if kind == "pod":
        raise EmuError(
            f"TARGET '{text}': no pod '{name}' in cluster '{state.name}' (pods: {', '.join(sorted(state.pods)) or 'none'})"
        )
    if kind == "svc":
        raise EmuError(
            f"TARGET '{text}': no service '{name}' in cluster '{state.name}' "
            f"(services: {', '.join(sorted(state.services)) or 'none'})"
        )
    raise EmuError(
        f"TARGET '{text}': no pod or service '{name}' in cluster '{state.name}' "
        f"(pods: {', '.join(sorted(state.pods)) or 'none'}; services: {', '.join(sorted(state.services)) or 'none'}); "
        "a TARGET is a pod, svc/NAME, node/NAME:IFACE or external/NAME"
    )


# ---- the commands in the nodes ---------------------------------------------------------

# Exit 3: no such interface (listed); anything else from tcpdump -d: the filter.
CHECK = (
    'ip link show dev "$1" >/dev/null 2>&1 || '
    "{ echo \"interfaces: $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | tr '\\n' ' ')\"; exit 3; }; "
    'tcpdump -d -i "$1" "$2" >/dev/null'
)


def _in_target(target: Target, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", target.netns, *argv] if target.netns else argv


def check_argv(target: Target, bpf: str) -> list[str]:
    return _in_target(target, ["sh", "-c", CHECK, "sh", target.interface, bpf])


def tcpdump_argv(target: Target, bpf: str, count: int | None = None, immediate: bool = True) -> list[str]:
    """tcpdump writing pcap to stdout, each packet written as it is read (-U),
    whole packets (-s 0), with an 8 MiB kernel buffer (-B; the default is 2).

    immediate: each packet handed over as it comes (--immediate-mode), for a
    live view and tests; otherwise TPACKET_V3 hands them over in blocks, up to
    a second late, which keeps up with 50,000 packets a second where immediate
    mode's wake-up a packet made the kernel drop a third (bench/capture.py).
    """
    argv = ["tcpdump", *(["--immediate-mode"] if immediate else []), "-U", "-B", "8192", "-w", "-", "-s", "0"]
    argv += ["-i", target.interface]
    if count:
        argv += ["-c", str(count)]
    return _in_target(target, argv + ([bpf] if bpf else []))


BLOCK_TIMEOUT = 1.0  # tcpdump's packet buffer timeout: the kernel hands over a block at least this often


def check_writable(path: str) -> None:
    """Refuse a -w path that cannot be written, before any capture starts."""
    if path == "-":
        return
    if os.path.isdir(path):
        raise EmuError(f"-w {path}: is a directory; give a file name, e.g. {os.path.join(path, 'capture.pcapng')}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise EmuError(f"-w {path}: directory {directory} does not exist; create it or write elsewhere")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise EmuError(f"-w {path}: the file is not writable; change its permissions or write elsewhere")
    elif not os.access(directory, os.W_OK | os.X_OK):
        raise EmuError(f"-w {path}: cannot create a file in {directory}; write elsewhere")


# ---- pcapng (pure) ----------------------------------------------------------------------


EPB_HEADER = struct.Struct("<IIIIIII")  # type, length, interface, time high, low, captured, original length


class PcapngWriter:
    """pcapng to a binary file object: a Section Header Block and one Interface
    Description Block per interface first, then Enhanced Packet Blocks, flushed
    after each batch (flush()), so a reader (Wireshark on a pipe) sees them at once."""

    def __init__(self, out, interfaces: list[tuple[str, int, str]]):
        """interfaces: (name, linktype, description), their order the interface ids."""
        from dpkt import pcapng

        self._pcapng = pcapng
        self.out = out
        option = pcapng.PcapngOptionLE
        shb = pcapng.SectionHeaderBlockLE(
            opts=[option(code=pcapng.PCAPNG_OPT_SHB_USERAPPL, data=b"emu capture"), option(code=0)]
        )
        blocks = [bytes(shb)]
        for name, linktype, description in interfaces:
            options = [option(code=pcapng.PCAPNG_OPT_IF_NAME, data=name.encode())]
            if description:
                options.append(option(code=pcapng.PCAPNG_OPT_IF_DESCRIPTION, data=description.encode()))
            options.append(option(code=0))
            blocks.append(bytes(pcapng.InterfaceDescriptionBlockLE(linktype=linktype, snaplen=0, opts=options)))
        self._write(b"".join(blocks))

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()

    def write(self, interface: int, timestamp_us: int, data: bytes, original_length: int | None = None) -> None:
        """One Enhanced Packet Block (not flushed: flush() after a batch). Packed
        here rather than through dpkt's EnhancedPacketBlock: building that object
        cost more than the rest of a packet's way at 50,000 packets a second."""
        padding = -len(data) % 4
        total = 32 + len(data) + padding
        length = original_length if original_length is not None else len(data)
        self.out.write(
            EPB_HEADER.pack(6, total, interface, timestamp_us >> 32, timestamp_us & 0xFFFFFFFF, len(data), length)
            + data
            + b"\0" * padding
            + total.to_bytes(4, "little")
        )

    def flush(self) -> None:
        self.out.flush()


def read_pcapng(data: bytes) -> tuple[list[dict], list[tuple[int, int, bytes]]]:
    """(interfaces [{name, description, linktype}], packets [(interface id, timestamp in
    microseconds, data)]) of a little-endian pcapng as PcapngWriter writes it."""
    from dpkt import pcapng

    interfaces, packets = [], []
    offset = 0
    while offset + 8 <= len(data):
        kind, length = struct.unpack_from("<II", data, offset)
        if length < 12 or offset + length > len(data):
            break  # a block still being written
        block = data[offset : offset + length]
        if kind == pcapng.PCAPNG_BT_IDB:
            idb = pcapng.InterfaceDescriptionBlockLE(block)
            options = {o.code: o.data.decode(errors="replace") for o in idb.opts if o.code}
            interfaces.append(
                {
                    "name": options.get(pcapng.PCAPNG_OPT_IF_NAME, ""),
                    "description": options.get(pcapng.PCAPNG_OPT_IF_DESCRIPTION, ""),
                    "linktype": idb.linktype,
                }
            )
        elif kind == pcapng.PCAPNG_BT_EPB:
            epb = pcapng.EnhancedPacketBlockLE(block)
            packets.append((epb.iface_id, (epb.ts_high << 32) | epb.ts_low, bytes(epb.pkt_data)))
        elif kind != pcapng.PCAPNG_BT_SHB:
            pass  # other blocks are not emu's
        offset += length
    return interfaces, packets


class Merger:
    """Several streams of packets, each in time order, merged into one time
    order as they arrive. The earliest pending packet goes out once no stream
    can still deliver an earlier one: every other stream has ended or has a
    packet pending, or it has waited `hold` seconds since it arrived (a
    stream may simply be quiet)."""

    def __init__(self, streams: int, hold: float = HOLD):
        self.hold = hold
        self.pending = [0] * streams
        self.ended = [False] * streams
        self.heap: list = []
        self.sequence = 0

    def add(self, stream: int, timestamp_us: int, data: bytes, received: float, length: int | None = None) -> None:
        heapq.heappush(self.heap, (timestamp_us, self.sequence, stream, data, received, length))
        self.sequence += 1
        self.pending[stream] += 1

    def end(self, stream: int) -> None:
        self.ended[stream] = True

    def ready(self, now: float) -> list[tuple[int, int, bytes, int | None]]:
        """Packets that can go out now: (stream, timestamp, data, original length), in time order."""
        out = []
        while self.heap:
            timestamp, _, stream, data, received, length = self.heap[0]
            waiting_for = any(
                not self.ended[other] and not self.pending[other]
                for other in range(len(self.pending))
                if other != stream
            )
            if waiting_for and now - received < self.hold:
                break
            heapq.heappop(self.heap)
            self.pending[stream] -= 1
            out.append((stream, timestamp, data, length))
        return out

    def drain(self) -> list[tuple[int, int, bytes, int | None]]:
        """Every packet left, in time order (the streams have all ended)."""
        out = [heapq.heappop(self.heap) for _ in range(len(self.heap))]
        self.pending = [0] * len(self.pending)
        return [(stream, timestamp, data, length) for timestamp, _, stream, data, _, length in out]


# ---- decoding (pure) --------------------------------------------------------------------

TCP_FLAGS = ((0x02, "S"), (0x01, "F"), (0x04, "R"), (0x08, "P"), (0x10, "A"))


@dataclass(frozen=True)
class Packet:
    """One captured packet, decoded: where it was seen and its addresses."""

    target: str  # the interface's name: client/eth0, node/worker:cni0
    time: float  # seconds since the epoch
    proto: str  # tcp | udp | icmp | arp | ip:N | ether:0xNNNN
    src: str | None
    dst: str | None
    sport: int | None = None
    dport: int | None = None
    length: int = 0
    flags: str = ""  # TCP flags: S, SA, A, PA, FA, R ...
    pod: str | None = None  # the pod whose interface it is (NAMESPACE/NAME), if any
    data: bytes = field(default=b"", repr=False)

    def __str__(self) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(self.time)) + f".{int(self.time * 1e6) % 1000000:06d}"
        src = f"{self.src}:{self.sport}" if self.sport is not None else str(self.src)
        dst = f"{self.dst}:{self.dport}" if self.dport is not None else str(self.dst)
        flags = f" [{self.flags}]" if self.flags else ""
        return f"{clock} {self.target} {self.proto} {src} > {dst}{flags} length {self.length}"


def decode(target: str, timestamp: float, linktype: int, data: bytes, pod: str | None = None) -> Packet:
    """A packet of an Ethernet (1) or Linux cooked (113) capture, decoded with dpkt."""
    import socket as sockets

    import dpkt

    try:
        frame = dpkt.sll.SLL(data) if linktype == 113 else dpkt.ethernet.Ethernet(data)
    except (dpkt.UnpackError, struct.error):
        return Packet(target, timestamp, "?", None, None, length=len(data), pod=pod, data=data)
    payload = frame.data
    if isinstance(payload, dpkt.ip.IP):
        src, dst = sockets.inet_ntoa(payload.src), sockets.inet_ntoa(payload.dst)
        inner = payload.data
        if isinstance(inner, dpkt.tcp.TCP):
            flags = "".join(letter for bit, letter in TCP_FLAGS if inner.flags & bit)
            return Packet(target, timestamp, "tcp", src, dst, inner.sport, inner.dport, len(data), flags, pod, data)
        if isinstance(inner, dpkt.udp.UDP):
            return Packet(target, timestamp, "udp", src, dst, inner.sport, inner.dport, len(data), "", pod, data)
        if isinstance(inner, dpkt.icmp.ICMP):
            return Packet(target, timestamp, "icmp", src, dst, length=len(data), pod=pod, data=data)
        return Packet(target, timestamp, f"ip:{payload.p}", src, dst, length=len(data), pod=pod, data=data)
    if isinstance(payload, dpkt.arp.ARP):
        src, dst = sockets.inet_ntoa(payload.spa), sockets.inet_ntoa(payload.tpa)
        return Packet(target, timestamp, "arp", src, dst, length=len(data), pod=pod, data=data)
    kind = getattr(frame, "type", getattr(frame, "ethtype", 0))
    return Packet(target, timestamp, f"ether:{kind:#06x}", None, None, length=len(data), pod=pod, data=data)


# ---- running it --------------------------------------------------------------------------


@dataclass
class Stream:
    target: Target
    handle: object = None
    linktype: int | None = None
    header: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    thread: threading.Thread | None = None

    def dropped(self) -> int | None:
        """What tcpdump reported the kernel dropped, once it ended."""
        for line in (self.handle.errors() if self.handle else "").splitlines():
            if line.endswith("packets dropped by kernel"):
                return int(line.split()[0])
        return None


def pcap_header(header: bytes) -> tuple[struct.Struct, bool, int]:
    """(record header format, nanosecond timestamps, link type) of a pcap file header."""
    magic = header[:4]
    formats = {
        b"\xd4\xc3\xb2\xa1": ("<", False),
        b"\xa1\xb2\xc3\xd4": (">", False),
        b"\x4d\x3c\xb2\xa1": ("<", True),
        b"\xa1\xb2\x3c\x4d": (">", True),
    }
    if magic not in formats:
        raise EmuError(f"not a pcap stream (magic {magic.hex()})")
    order, nano = formats[magic]
    linktype = struct.unpack_from(order + "I", header, 20)[0] & 0x0FFFFFFF
    return struct.Struct(order + "IIII"), nano, linktype


class Capture:
    """tcpdump on every target through the provider, the packets merged in time
    order. check() before start(); stop() (also on error) ends every tcpdump."""

    def __init__(self, runtime, targets: list[Target], bpf: str = "", count: int | None = None, immediate: bool = True):
        if not targets:
            raise EmuError("nothing to capture: give at least one TARGET")
        if count is not None and count < 1:
            raise EmuError(f"-c {count}: the packet count must be 1 or more")
        self.runtime = runtime
        self.targets = targets
        self.bpf = bpf
        self.count = count
        self.immediate = immediate
        self.streams = [Stream(t) for t in targets]
        self.queue: queue.Queue = queue.Queue()
        self.merger = Merger(len(targets))
        self.written = 0
        self.last_arrival = time.monotonic()

    def check(self) -> None:
        """Every target's interface exists and the filter compiles there (tcpdump -d), before anything starts."""

        def check(target: Target):
            return self.runtime.exec(target.container, check_argv(target, self.bpf))

        problems = []
        for target, result in zip(self.targets, self.runtime.parallel(check, self.targets)):
            if result.ok:
                continue
            output = result.output.strip()
            where = f"pod {target.pod}" if target.netns else target.name.split(":")[0]
            if result.exit_code == 3:
                problems.append(f"{target.name}: no interface '{target.interface}' in {where} ({output})")
            elif "Cannot open network namespace" in output:
                problems.append(f"{target.name}: the network namespace of pod {target.pod} is gone ({output})")
            else:
                detail = output.splitlines()[0] if output else f"exit {result.exit_code}"
                problems.append(
                    f"{target.name}: the capture filter {self.bpf!r} does not compile ({detail}); "
                    "see `man pcap-filter` for its syntax"
                )
        if problems:
            raise EmuError("cannot capture: " + "; ".join(problems))

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """One tcpdump per target; returns once every one listens (its pcap header has come)."""
        try:
            handles = self.runtime.parallel(
                lambda t: self.runtime.exec_stream(t.container, tcpdump_argv(t, self.bpf, self.count, self.immediate)),
                self.targets,
            )
            for index, (stream, handle) in enumerate(zip(self.streams, handles)):
                stream.handle = handle
                stream.thread = threading.Thread(target=self._read, args=(index, stream), daemon=True)
                stream.thread.start()
            deadline = time.monotonic() + timeout
            for stream in self.streams:
                while not stream.header.wait(0.05):
                    if stream.ended.is_set() or time.monotonic() > deadline:
                        why = stream.error or stream.handle.errors().strip() or "no output"
                        raise EmuError(f"tcpdump on {stream.target.name} did not start: {why}")
                # "listening on" comes right after the header; wait for it so the first packet is not lost
                while "listening on" not in stream.handle.errors() and not stream.ended.is_set():
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
        except BaseException:
            self.stop()
            raise

    def _read(self, index: int, stream: Stream) -> None:
        """tcpdump's pcap stream: the file header (link type, time resolution), then
        records, put on the queue a chunk at a time as (timestamp us, data, length)."""
        buffer = bytearray()
        record = None
        nano = False
        try:
            while True:
                chunk = stream.handle.read()
                if not chunk:
                    break
                buffer += chunk
                offset = 0
                if record is None:
                    if len(buffer) < 24:
                        continue
                    record, nano, stream.linktype = pcap_header(bytes(buffer[:24]))
                    offset = 24
                    stream.header.set()
                packets = []
                while len(buffer) - offset >= 16:
                    seconds, fraction, captured, length = record.unpack_from(buffer, offset)
                    if len(buffer) - offset - 16 < captured:
                        break
                    data = bytes(buffer[offset + 16 : offset + 16 + captured])
                    offset += 16 + captured
                    packets.append((seconds * 1_000_000 + (fraction // 1000 if nano else fraction), data, length))
                del buffer[:offset]
                if packets:
                    self.queue.put((index, packets, time.monotonic()))
        except Exception as error:  # a stream that is not pcap: say so where start() reports
            stream.error = f"{type(error).__name__}: {error}"
        finally:
            if record is None and not stream.error and buffer:
                stream.error = f"not a pcap stream: {bytes(buffer[:24])!r}"
            stream.ended.set()
            self.queue.put((index, None, time.monotonic()))

    @property
    def interfaces(self) -> list[tuple[str, int, str]]:
        return [
            (s.target.name, s.linktype if s.linktype is not None else 1, s.target.description) for s in self.streams
        ]

    def pump(
        self,
        emit: Callable[[int, int, bytes, int | None], None],
        until: float | None = None,
        flush: Callable | None = None,
    ) -> bool:
        """Move arrived packets through the merger to emit(stream, timestamp, data, length),
        then flush() after each batch, until `until` (monotonic) or the count is
        reached or every stream ended. Returns False once nothing more will come."""
        while True:
            now = time.monotonic()
            wait = 0.05 if until is None else max(0.0, min(0.05, until - now))
            # Everything that has arrived goes into the merger before it decides: its
            # hold rule counts from arrival, so a packet still queued would be overtaken.
            try:
                item = self.queue.get(timeout=wait)
                while True:
                    index, packets, received = item
                    if packets is None:
                        self.merger.end(index)
                    else:
                        for timestamp, data, length in packets:
                            self.merger.add(index, timestamp, data, received, length)
                        self.last_arrival = received
                    item = self.queue.get_nowait()
            except queue.Empty:
                pass
            all_ended = all(self.merger.ended)
            out = self.merger.drain() if all_ended else self.merger.ready(time.monotonic())
            for item in out:
                if self.count is not None and self.written >= self.count:
                    break
                emit(*item)
                self.written += 1
            if out and flush is not None:
                flush()
            if (self.count is not None and self.written >= self.count) or (all_ended and self.queue.empty()):
                return False
            if until is not None and time.monotonic() >= until:
                return True

    def settle(self, emit: Callable, idle: float = 0.3, limit: float = 3.0, flush: Callable | None = None) -> None:
        """Take packets until none has come for `idle` seconds (at most `limit`),
        so what the kernel captured before a stop has reached us."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            more = self.pump(emit, until=min(time.monotonic() + 0.1, deadline), flush=flush)
            if not more or time.monotonic() - self.last_arrival >= idle:
                return

    def stop(self, emit: Callable | None = None, grace: float = 5.0, flush: Callable | None = None) -> None:
        """End every tcpdump (SIGTERM: each writes what it holds and exits), take
        what is left, then kill anything still there and drop the connections."""
        handles = [s.handle for s in self.streams if s.handle is not None]
        if emit is not None and not self.immediate and not all(s.ended.is_set() for s in self.streams):
            time.sleep(BLOCK_TIMEOUT + 0.2)  # the kernel hands over its last blocks; SIGTERM would lose them
        try:
            if handles:
                self.runtime.parallel(lambda h: h.terminate(), handles)
            deadline = time.monotonic() + grace
            for stream in self.streams:
                if stream.thread is not None:
                    stream.thread.join(max(0.0, deadline - time.monotonic()))
        finally:
            if handles:
                self.runtime.parallel(lambda h: h.close(), handles)
        if emit is not None:
            for stream in self.streams:
                stream.ended.wait(1.0)
            self.pump(emit, until=time.monotonic() + 0.5)
            for item in self.merger.drain():
                if self.count is not None and self.written >= self.count:
                    break
                emit(*item)
                self.written += 1
            if flush is not None:
                flush()


def find_externals(cluster) -> dict[str, str]:
    """Short name -> container name of the cluster's external containers."""
    from emu.control.runtime.provider import ROLE_EXTERNAL

    return {
        record.name.removeprefix(f"{cluster.name}-"): record.name
        for record in cluster.runtime.cluster_containers(cluster.name)
        if record.role == ROLE_EXTERNAL and record.running
    }


def prepare(
    cluster,
    texts: list[str],
    bpf: str = "",
    count: int | None = None,
    interface: str | None = None,
    immediate: bool = True,
) -> Capture:
    """Resolve and check the TARGETs on a running cluster: a Capture ready to start."""
    state = cluster.state()
    externals = find_externals(cluster) if any(t.startswith("external/") for t in texts) else {}
    capture = Capture(cluster.runtime, resolve_targets(state, texts, externals, interface), bpf, count, immediate)
    capture.check()
    return capture


def run(
    cluster,
    texts: list[str],
    out=None,
    bpf: str = "",
    count: int | None = None,
    duration: float | None = None,
    interface: str | None = None,
    path: str | None = None,
    on_start: Callable[[Capture], None] | None = None,
    on_packet: Callable[[Packet], None] | None = None,
    immediate: bool = True,
) -> Capture:
    """`emu capture`: check, start, and write pcapng to `out` (a binary file, or
    `path` opened once every check passed) and/or decoded packets to on_packet,
    until the count, the duration, or an interrupt (KeyboardInterrupt; the file
    is complete either way)."""
    if path is not None:
        check_writable(path)
    if duration is not None and duration <= 0:
        raise EmuError(f"--duration {duration:g}: give a number of seconds above 0")
    capture = prepare(cluster, texts, bpf, count, interface, immediate)
    opened = None
    emit = flush = None
    capture.start()
    try:
        if path is not None and path != "-":
            try:
                opened = out = open(path, "wb")
            except OSError as error:
                raise EmuError(f"-w {path}: {error.strerror}") from None
        writer = PcapngWriter(out, capture.interfaces) if out is not None else None
        names = [s.target for s in capture.streams]
        linktypes = [s.linktype or 1 for s in capture.streams]

        def emit(index: int, timestamp: int, data: bytes, length: int | None) -> None:
            if writer is not None:
                writer.write(index, timestamp, data, length)
            if on_packet is not None:
                target = names[index]
                on_packet(decode(target.name, timestamp / 1e6, linktypes[index], data, target.pod))

        if on_start is not None:
            on_start(capture)
        flush = writer.flush if writer is not None else None
        capture.pump(emit, time.monotonic() + duration if duration else None, flush)
    except BrokenPipeError:
        emit = None  # the reader (Wireshark) went away: nothing more to write
        try:  # and Python's flush at exit must not complain about it either
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        except (AttributeError, OSError, ValueError):
            pass
    finally:
        try:
            # Also on Ctrl-C: every tcpdump ends and what it held is written, so the file is whole.
            capture.stop(emit, flush=flush)
        except BrokenPipeError:
            pass
        finally:
            if opened is not None:
                opened.close()
    return capture


@contextmanager
def record(runtime, targets: list[Target], bpf: str, path: str):
    """Capture on `targets` into the pcapng at `path` around a block (checked
    and listening before it runs, complete after it)."""
    check_writable(path)
    capture = Capture(runtime, targets, bpf)
    capture.check()
    capture.start()
    emit = None
    try:
        with open(path, "wb") as out:
            writer = PcapngWriter(out, capture.interfaces)

            def emit(index: int, timestamp: int, data: bytes, length: int | None) -> None:
                writer.write(index, timestamp, data, length)

            try:
                yield capture
                capture.settle(emit, flush=writer.flush)
            finally:
                capture.stop(emit, flush=writer.flush)
    except OSError as error:
        raise EmuError(f"--pcap {path}: {error.strerror}") from None
    finally:
        if emit is None:
            capture.stop()


def trace_targets(state: ClusterState, plan) -> list[Target]:
    """Where `emu trace --pcap` captures: the source (a pod's eth0, an external
    container's, a node's), every node's eth0 (the hops between nodes), and the
    eth0 of every pod the trace watches (the source, the destination's candidates)."""
    source = plan.source
    targets = []
    if source.kind == "external":
        name = source.container.removeprefix(f"{state.name}-")
        targets.append(
            Target(f"external/{name}:eth0", source.container, "eth0", None, f"external container {name}, eth0")
        )
    for node in state.nodes:
        targets.append(Target(f"node/{node.name}:eth0", node.container, "eth0", None, f"node {node.name}, eth0"))
        for netns in plan.watch.get(node.name, []):
            pod = next((p for p in state.pods.values() if p.node == node.name and p.netns == netns), None)
            if pod is not None:
                targets.append(
                    Target(
                        f"{_pod_label(pod)}/eth0",
                        node.container,
                        "eth0",
                        pod.netns,
                        f"pod {pod.key} on node {node.name}, eth0",
                        pod.key,
                    )
                )
    return targets


def trace_filter(plan) -> str:
    """The probe's packets and their replies (DNAT changes the destination port,
    not the probe's source port), and ICMP errors about them."""
    return f"port {plan.sport} or icmp"


def command(
    cluster,
    texts: list[str],
    bpf: str = "",
    count: int | None = None,
    duration: float | None = None,
    write: str | None = None,
    interface: str | None = None,
) -> int:
    """The `emu capture` command: pcapng to -w FILE, to stdout with -w - (or
    when stdout is a pipe), else one line a packet on the terminal; what it
    did on stderr. SIGTERM ends it as Ctrl-C does, with a complete file."""
    import signal
    import sys

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)
    # Ctrl-C always ends it cleanly, also where it was started with SIGINT ignored
    # (a background job of a shell without job control).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    to_terminal = write is None and sys.stdout.isatty()
    out = sys.stdout.buffer if write == "-" or (write is None and not to_terminal) else None

    made: list[Capture] = []

    def started(capture: Capture) -> None:
        made.append(capture)
        names = ", ".join(s.target.name for s in capture.streams)
        where = f" to {write}" if write not in (None, "-") else ""
        print(f"capturing on {names}{where} (Ctrl-C to stop)", file=sys.stderr, flush=True)

    def show(packet: Packet) -> None:
        print(packet, flush=True)

    try:
        run(
            cluster, texts, out=out, bpf=bpf, count=count, duration=duration, interface=interface,
            path=write if write not in (None, "-") else None, on_start=started,
            on_packet=show if to_terminal else None,
            immediate=write in (None, "-"),  # a file: no loss at high rates; live: each packet at once
        )  # fmt: skip
    except KeyboardInterrupt:
        pass  # run() has stopped every tcpdump and completed the file
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    for capture in made:
        drops = [f"{s.target.name} {s.dropped()}" for s in capture.streams if s.dropped()]
        print(
            f"{capture.written} packets captured" + (f"; dropped by the kernel: {', '.join(drops)}" if drops else ""),
            file=sys.stderr,
        )
    return 0
