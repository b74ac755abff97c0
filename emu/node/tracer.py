"""The node side of `emu trace`: the kernel's own packet tracing, run inside a node.

Standard library only: it is copied into each node (and the external
container) for one trace and run with the node's python3.

  tracer.py start DIR --port P --proto tcp [--netns POD ...]
      Binds the kernel's iptables TRACE log (nf_log) to nfnetlink_log and
      listens on NFLOG group 0 (iptables-legacy has no other per-packet trace
      inside a container: its syslog logger is off outside the host's
      namespace); starts `nft monitor` in the node and in each named pod
      namespace; loads the table `emu_trace`, whose chains set `meta nftrace`
      for the probe's packets (so nf_tables and iptables-legacy both trace
      them) and observe them at each hook before and after NAT. Returns once
      every monitor has seen the table appear, so nothing is missed.
  tracer.py stop DIR
      Removes the table, stops the listeners, restores nf_log, and prints one
      JSON document: the trace events of every namespace, the iptables rules
      they name, the routing decisions (`ip route get`) for every packet that
      was forwarded or sent, and the connection tracking entries of the probe.
  tracer.py probe --proto tcp --dest IP --port N --sport P
      Sends the probe: a TCP connection (an HTTP GET /hostname on it) or a
      UDP datagram ("hostname", or a DNS query to port 53) from source port
      P, and prints what came back as JSON.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

TABLE = "emu_trace"
STALE_AFTER = 60.0  # seconds: a trace takes a few; one older was left by an emu that died
PROBE_DSCP = 45  # an unassigned code point: the probe's packets carry it (IP_TOS 180)
NF_LOG = "/proc/sys/net/netfilter/nf_log/2"
LEGACY_TABLES = ("raw", "mangle", "nat", "filter")
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
# Where iptables' tables sit on each hook (the kernel's NF_IP_PRI_*), so that
# their trace lines fall between emu_trace's chains in the order they ran.
LEGACY_PRIORITY = {"raw": -300, "mangle": -150, "nat": -100, "filter": 0, "security": 50}
LEGACY_SNAT_PRIORITY = 100  # nat in postrouting and input


def trace_ruleset(proto: str) -> str:
    """`nft -f` text for the trace table of one namespace.

    The probe's packets carry DSCP 45 (PROBE_DSCP, set by the sender), which
    survives NAT and every node on the way, so each namespace can pick them
    out by that alone; their replies do not carry it, so each request packet
    leaves the tuple its reply will have here in the set `replies` (after this
    namespace's NAT, or where it is delivered or rejected). Chains at both ends
    of each hook's priorities record the packets before and after NAT (dstnat
    -100, srcnat 100). TCP: only SYN, SYN-ACK and RST (NAT decides on the first
    packet; the rest follow its path). ICMP errors (a REJECT's) are traced too."""
    flags = " tcp flags & (syn | rst) != 0" if proto == "tcp" else ""
    probe = f"meta l4proto {proto} ip dscp {PROBE_DSCP}"
    remember = f"{probe} add @replies {{ ip daddr . th dport . ip saddr . th sport }}"
    mark = (
        f"    {probe}{flags} meta nftrace set 1\n"
        f"    meta l4proto {proto} ip saddr . th sport . ip daddr . th dport @replies{flags} meta nftrace set 1\n"
        "    icmp type { destination-unreachable, time-exceeded } meta nftrace set 1\n"
    )
    chains = [
        ("prerouting", "prerouting", -350, mark),
        ("prerouting_after_dnat", "prerouting", -50, ""),
        ("input", "input", -350, f"    {remember}\n"),
        ("forward", "forward", -350, f"    {remember}\n"),
        ("output", "output", -350, mark),
        ("output_after_dnat", "output", -50, ""),
        ("postrouting", "postrouting", -350, ""),
        ("postrouting_after_snat", "postrouting", 300, f"    {remember}\n"),
    ]
    lines = [
        f"table ip {TABLE} {{",
        "  set replies {\n    type ipv4_addr . inet_service . ipv4_addr . inet_service\n"
        "    flags dynamic, timeout\n    timeout 5m\n  }",
    ]
    for name, hook, priority, body in chains:
        lines.append(f"  chain {name} {{\n    type filter hook {hook} priority {priority};\n{body}  }}")
    lines.append("}")
    bridge = (
        f"    {probe}{flags} meta nftrace set 1\n"
        "    icmp type { destination-unreachable, time-exceeded } meta nftrace set 1\n"
    )
    lines.append(f"table bridge {TABLE} {{")
    lines.append(f"  chain prerouting {{\n    type filter hook prerouting priority -350;\n{bridge}  }}")
    lines.append("  chain forward {\n    type filter hook forward priority -350;\n  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---- nft monitor's trace lines ------------------------------------------------

TRACE_LINE = re.compile(r"^trace id (?P<id>\S+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) (?P<rest>.*)$")
VERDICT = re.compile(r"\(verdict (?P<verdict>[^)]*)\)\s*$")


def parse_packet(text: str) -> dict:
    """The header fields of an nft trace 'packet:' line."""
    packet: dict = {}
    for key, pattern in (
        ("iif", r'\biif "([^"]+)"'),
        ("oif", r'\boif "([^"]+)"'),
        ("saddr", r"\bip saddr (\S+)"),
        ("daddr", r"\bip daddr (\S+)"),
        ("ttl", r"\bip ttl (\d+)"),
        ("id", r"\bip id (\d+)"),
        ("dscp", r"\bip dscp (\S+)"),
        ("sport", r"\b(?:tcp|udp) sport (\d+)"),
        ("dport", r"\b(?:tcp|udp) dport (\d+)"),
        ("flags", r"\btcp flags == (\S+)"),
        ("icmp", r"\bicmp type (\S+)"),
    ):
        found = re.search(pattern, text)
        if found:
            value = found.group(1)
            packet[key] = int(value) if key in ("ttl", "id", "sport", "dport") else value
    if "dscp" in packet:
        packet["dscp"] = int(packet["dscp"], 16) if packet["dscp"].startswith("0x") else packet["dscp"]
    proto = re.search(r"\b(tcp|udp|icmp) ", text)
    if proto:
        packet["proto"] = proto.group(1)
    return packet


def parse_monitor(text: str) -> list[dict]:
    """Chain evaluations from `nft monitor` output, in the order the kernel ran
    them: {family, table, chain, packet, rules: [{text, verdict}], verdict}.
    Every base chain a traced packet enters starts with a 'packet:' line; rule,
    policy and verdict lines with its trace id follow (jumps included)."""
    blocks: list[dict] = []
    current: dict[str, dict] = {}
    for line in text.splitlines():
        found = TRACE_LINE.match(line.strip())
        if not found:
            continue
        trace_id, rest = found["id"], found["rest"]
        where = {"family": found["family"], "table": found["table"], "chain": found["chain"]}
        if rest.startswith("packet:"):
            block = {**where, "packet": parse_packet(rest), "rules": [], "verdict": None}
            blocks.append(block)
            current[trace_id] = block
            continue
        block = current.get(trace_id)
        if block is None:
            continue
        if rest.startswith("policy "):
            block["verdict"] = rest.split()[1]
        elif rest.startswith("verdict "):
            verdict = rest[len("verdict ") :].strip()
            if verdict in ("accept", "drop"):
                block["verdict"] = verdict
        elif rest.startswith("rule ") or rest.startswith("unknown rule"):
            verdict = VERDICT.search(rest)
            text = VERDICT.sub("", rest).strip()
            text = text[len("rule ") :] if text.startswith("rule ") else text
            rule = {**where, "text": text, "verdict": verdict["verdict"] if verdict else ""}
            if where["table"] != TABLE:  # emu_trace's own rules only set the trace flag
                block["rules"].append(rule)
            if rule["verdict"] in ("accept", "drop", "queue") or rule["verdict"].startswith("goto"):
                block["verdict"] = rule["verdict"]
    return blocks


# ---- NFLOG: iptables-legacy's TRACE lines -----------------------------------------

NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFNL_SUBSYS_ULOG = 4
ATTR_PACKET_HDR, ATTR_INDEV, ATTR_OUTDEV, ATTR_PHYSIN, ATTR_PHYSOUT, ATTR_PAYLOAD, ATTR_PREFIX = 1, 4, 5, 6, 7, 9, 10
PREFIX = re.compile(r"^TRACE: (?P<table>[^:]+):(?P<chain>[^:]+):(?P<type>[^:]+):(?P<num>\d+)")


def _netlink_attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _nflog_config(sock: socket.socket, attrs: bytes, family: int, group: int, seq: int) -> None:
    body = struct.pack("=BBH", family, 0, socket.htons(group)) + attrs
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG, 1 | 4, seq, 0)
    sock.send(header + body)


def parse_ip(payload: bytes) -> dict:
    """The fields of an IPv4 packet's header (and its TCP/UDP ports) that a hop shows."""
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return {}
    header = (payload[0] & 0x0F) * 4
    proto = payload[9]
    packet = {
        "saddr": socket.inet_ntoa(payload[12:16]),
        "daddr": socket.inet_ntoa(payload[16:20]),
        "ttl": payload[8],
        "id": struct.unpack(">H", payload[4:6])[0],
        "dscp": payload[1] >> 2,
        "proto": {6: "tcp", 17: "udp", 1: "icmp"}.get(proto, str(proto)),
    }
    if proto in (6, 17) and len(payload) >= header + 4:
        packet["sport"], packet["dport"] = struct.unpack(">HH", payload[header : header + 4])
    return packet


def nflog_listen(out_path: str, ready_path: str) -> None:
    """Write every TRACE message of NFLOG group 0 as a JSON line until SIGTERM."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
    sock.bind((0, 0))
    _nflog_config(sock, _netlink_attr(1, struct.pack("=B", 4)), socket.AF_INET, 0, 1)  # PF_UNBIND (old kernels)
    _nflog_config(sock, _netlink_attr(1, struct.pack("=B", 3)), socket.AF_INET, 0, 2)  # PF_BIND
    _nflog_config(sock, _netlink_attr(1, struct.pack("=B", 1)), 0, 0, 3)  # BIND group 0
    _nflog_config(sock, _netlink_attr(2, struct.pack(">IBB", 160, 2, 0)), 0, 0, 4)  # copy 160 bytes
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    sock.settimeout(0.1)
    errors: list[str] = []
    acks = [0]
    with open(out_path, "a") as out:
        ready = True
        # Messages wait in the socket's buffer from the moment a packet is
        # traced, so after SIGTERM the buffer is drained before exiting.
        draining = False
        while True:
            if not running[0] and not draining:
                sock.settimeout(0)
                draining = True
            if ready and acks[0] >= 4:  # every configuration request answered
                with open(ready_path, "w") as done:
                    done.write(json.dumps({"errors": errors}))
                ready = False
            try:
                data = sock.recv(1 << 16)
            except (socket.timeout, BlockingIOError):
                if draining:
                    break
                continue
            except OSError:
                break
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == 2:  # NLMSG_ERROR: the answer to a config request
                    code, seq = (
                        struct.unpack_from("=i", data, offset + 16)[0],
                        struct.unpack_from("=I", data, offset + 8)[0],
                    )
                    acks[0] += 1
                    if code and seq >= 3:  # binding group 0 or its copy mode failed
                        errors.append(os.strerror(-code))
                elif kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                    out.write(json.dumps(_nflog_event(data[offset + 20 : offset + length])) + "\n")
                    out.flush()
                offset += (length + 3) & ~3


def _nflog_event(attrs: bytes) -> dict:
    found: dict[int, bytes] = {}
    position = 0
    while position + 4 <= len(attrs):
        length, kind = struct.unpack_from("=HH", attrs, position)
        if length < 4:
            break
        found[kind & 0x7FFF] = attrs[position + 4 : position + length]
        position += (length + 3) & ~3
    event = {"prefix": found.get(ATTR_PREFIX, b"").rstrip(b"\0").decode(errors="replace")}
    if ATTR_PACKET_HDR in found:
        event["hook"] = found[ATTR_PACKET_HDR][2]
    for name, kind in (("in", ATTR_INDEV), ("out", ATTR_OUTDEV), ("physin", ATTR_PHYSIN), ("physout", ATTR_PHYSOUT)):
        if kind in found:
            event[name] = struct.unpack(">I", found[kind])[0]
    event["packet"] = parse_ip(found.get(ATTR_PAYLOAD, b""))
    return event


def parse_legacy(events: list[dict], names: dict[int, str]) -> list[dict]:
    """NFLOG TRACE events grouped into chain evaluations like parse_monitor's:
    one per (hook, table) run of consecutive lines."""
    blocks: list[dict] = []
    for event in events:
        prefix = PREFIX.match(event.get("prefix", ""))
        if not prefix:
            continue
        hook = HOOKS[event["hook"]] if event.get("hook", 9) < len(HOOKS) else "?"
        table = prefix["table"]
        packet = dict(event.get("packet", {}))
        for key in ("in", "out", "physin", "physout"):
            if event.get(key):
                packet[{"in": "iif", "out": "oif"}.get(key, key)] = names.get(event[key], str(event[key]))
        last = blocks[-1] if blocks else None
        if not last or last["hook"] != hook or last["table"] != table or last["packet"].get("id") != packet.get("id"):
            priority = LEGACY_PRIORITY.get(table, 0)
            if table == "nat" and hook in ("postrouting", "input"):
                priority = LEGACY_SNAT_PRIORITY
            last = {
                "family": "ip",
                "table": table,
                "chain": hook.upper(),
                "hook": hook,
                "priority": priority,
                "backend": "iptables-legacy",
                "packet": packet,
                "rules": [],
                "verdict": None,
            }
            blocks.append(last)
        last["rules"].append(
            {"table": table, "chain": prefix["chain"], "type": prefix["type"], "num": int(prefix["num"])}
        )
    return blocks


def legacy_rules(save_text: str) -> dict[str, dict]:
    """{table: {chain: {"policy": P, "rules": [rule text, ...]}}} from iptables-save."""
    tables: dict[str, dict] = {}
    table = None
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = tables.setdefault(line[1:].strip(), {})
        elif table is None:
            continue
        elif line.startswith(":"):
            name, policy = (line[1:].split() + ["-"])[:2]
            table.setdefault(name, {"policy": policy, "rules": []})["policy"] = policy
        elif line.startswith("-A "):
            name, _, rule = line[3:].partition(" ")
            table.setdefault(name, {"policy": "-", "rules": []})["rules"].append(rule)
    return tables


def merge(nft_blocks: list[dict], legacy_blocks: list[dict]) -> list[dict]:
    """The blocks of one namespace in the order the kernel ran them: iptables'
    tables between nf_tables' chains of the same packet by hook and priority
    (the two arrive on separate sockets)."""
    order = {"prerouting": 1, "input": 3, "forward": 3, "output": 0, "postrouting": 4}
    merged = list(nft_blocks)
    start = 0
    for block in legacy_blocks:
        key = (order.get(block["hook"], 9), block["priority"])
        position = len(merged)
        for index in range(start, len(merged)):
            other = merged[index]
            if other.get("family") != "ip" or other.get("hook") is None:
                continue
            if other["packet"].get("id") != block["packet"].get("id"):
                continue
            if (order.get(other["hook"], 9), other.get("priority", 0)) > key:
                position = index
                break
        else:
            same = [i for i, o in enumerate(merged) if o["packet"].get("id") == block["packet"].get("id")]
            position = same[-1] + 1 if same else len(merged)
        merged.insert(position, block)
        start = position + 1
    return merged


# ---- running it --------------------------------------------------------------------


def _run(argv: list[str], netns: str = "", check: bool = False, stdin: str | None = None) -> str:
    full = (["ip", "netns", "exec", netns] if netns else []) + argv
    result = subprocess.run(full, input=stdin, capture_output=True, text=True)
    if check and result.returncode:
        raise SystemExit(f"{' '.join(full)}: {result.stderr.strip()}")
    return result.stdout


def _legacy_in_use() -> bool:
    try:
        with open("/proc/net/ip_tables_names") as names:
            return bool(names.read().strip())
    except OSError:
        return False


def _write_nf_log(value: str) -> None:
    # /proc/sys is read-only in a container; a private mount namespace may remount it.
    subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -o remount,rw /proc/sys && echo {value} >{NF_LOG}"],
        check=True,
        capture_output=True,
    )


def _spawn(argv: list[str], log: str) -> int:
    with open(log, "w") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return process.pid


def start(directory: str, port: int, proto: str, namespaces: list[str]) -> dict:
    try:
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        os.mkdir(directory)
    except FileExistsError:
        # Another trace holds this node (its monitors and NFLOG's one listener),
        # unless it was left by an emu that died: then it is stopped and undone.
        try:
            age = time.time() - os.stat(directory).st_mtime
        except OSError:
            age = STALE_AFTER
        if age < STALE_AFTER:
            return {"error": "another emu trace is running on this node; wait a few seconds and try again"}
        stop(directory)
        os.mkdir(directory)
    namespaces = [ns for ns in namespaces if os.path.exists(f"/run/netns/{ns}")]
    state = {"netns": namespaces, "pids": [], "legacy": _legacy_in_use(), "nf_log": None}
    try:
        if state["legacy"]:
            state["nf_log"] = _read(NF_LOG).strip() or "NONE"
            try:
                _write_nf_log("nfnetlink_log")
            except (subprocess.CalledProcessError, OSError) as error:
                # Traced by nf_tables alone: the hops, NAT and routes, not iptables' rules.
                reason = getattr(error, "stderr", b"") or str(error)
                state["warning"] = (
                    "iptables-legacy rules are not traced here: nf_log cannot be bound to "
                    f"nfnetlink_log ({reason.decode() if isinstance(reason, bytes) else reason})".strip()
                )
                state["legacy"], state["nf_log"] = False, None
        if state["legacy"]:
            pid = _spawn(
                [sys.executable, __file__, "nflog", f"{directory}/nflog.jsonl", f"{directory}/nflog.ready"],
                f"{directory}/nflog.err",
            )
            state["pids"].append(pid)
        for ns in ["", *namespaces]:
            argv = (["ip", "netns", "exec", ns] if ns else []) + ["nft", "monitor"]
            state["pids"].append(_spawn(argv, f"{directory}/monitor-{ns or 'node'}.log"))
        _save_state(directory, state)
        ruleset = trace_ruleset(proto)
        deadline = time.monotonic() + 5
        # A monitor prints only what happens after it has subscribed, which it
        # does some time after it starts: the table is loaded again until each
        # monitor has printed it, so none misses a trace event.
        for ns in ["", *namespaces]:
            log = f"{directory}/monitor-{ns or 'node'}.log"
            while f"add table ip {TABLE}" not in _read(log):
                if time.monotonic() > deadline:
                    raise SystemExit(f"nft monitor in {ns or 'the node'} did not start: {_read(log)[-300:]}")
                _run(["sh", "-c", f"nft delete table ip {TABLE}; nft delete table bridge {TABLE}"], ns)
                _run(["nft", "-f", "-"], ns, check=True, stdin=ruleset)
                waited = time.monotonic() + 0.2
                while f"add table ip {TABLE}" not in _read(log) and time.monotonic() < waited:
                    time.sleep(0.01)
        while state["legacy"] and not os.path.exists(f"{directory}/nflog.ready"):
            if time.monotonic() > deadline:
                raise SystemExit("the NFLOG listener did not start: " + _read(f"{directory}/nflog.err")[-300:])
            time.sleep(0.02)
        if state["legacy"] and json.loads(_read(f"{directory}/nflog.ready") or "{}").get("errors"):
            raise SystemExit("NFLOG group 0 is taken in this node: " + _read(f"{directory}/nflog.ready"))
    except (SystemExit, OSError, subprocess.CalledProcessError) as error:
        _save_state(directory, state)
        stop(directory)
        return {"error": str(error)}
    return {"ok": True, "legacy": state["legacy"], **({"warning": state["warning"]} if "warning" in state else {})}


def stop(directory: str) -> dict:
    state = json.loads(_read(f"{directory}/state.json") or "{}")
    namespaces = state.get("netns", [])
    # The chains' hooks and priorities, emu_trace's included, before it goes.
    priorities = {ns: chain_priorities(ns) for ns in ["", *namespaces]}
    for ns in ["", *namespaces]:
        _run(["sh", "-c", f"nft delete table ip {TABLE}; nft delete table bridge {TABLE}"], ns)
    # A monitor writes events in the kernel's order: once it has written the
    # table's removal, every trace event before it is in its log.
    deadline = time.monotonic() + 3
    for ns in ["", *namespaces]:
        log = f"{directory}/monitor-{ns or 'node'}.log"
        while f"delete table bridge {TABLE}" not in _read(log) and time.monotonic() < deadline:
            time.sleep(0.02)
    for pid in state.get("pids", []):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in state.get("pids", []):
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.01)
    if state.get("nf_log"):
        try:
            _write_nf_log(state["nf_log"])
        except subprocess.CalledProcessError:
            pass
    names = interface_names()
    result: dict = {"namespaces": {}, "legacy": bool(state.get("legacy"))}
    legacy_events = [json.loads(line) for line in _read(f"{directory}/nflog.jsonl").splitlines() if line.strip()]
    for ns in ["", *namespaces]:
        blocks = parse_monitor(_read(f"{directory}/monitor-{ns or 'node'}.log"))
        for block in blocks:
            hook, priority = priorities[ns].get((block["family"], block["table"], block["chain"]), (None, 0))
            block["hook"], block["priority"], block["backend"] = hook, priority, "nftables"
        if not ns:
            blocks = merge(blocks, parse_legacy(legacy_events, names))
        for block in blocks:
            block["route"] = route_of(block, ns)
        result["namespaces"][ns] = blocks
    if state.get("legacy"):
        result["iptables"] = legacy_rules(_run(["iptables-legacy-save"]))
    result["conntrack"] = conntrack_of(result["namespaces"].get("", []), state.get("proto", "tcp"))
    cleanup(directory)
    return result


def conntrack_of(blocks: list[dict], proto: str) -> str:
    """The node's connection tracking entry of the probe: the original tuple of
    the first request packet it saw, and the reply tuple NAT made of it."""
    first = next(
        (b["packet"] for b in blocks if b["packet"].get("dscp") == PROBE_DSCP and "sport" in b["packet"]), None
    )
    if first is None:
        return ""
    return _run(
        [
            "conntrack",
            "-L",
            "-p",
            proto,
            "--orig-src",
            first["saddr"],
            "--orig-dst",
            first["daddr"],
            "--orig-port-src",
            str(first["sport"]),
            "--orig-port-dst",
            str(first["dport"]),
        ]
    )


def route_of(block: dict, netns: str) -> str | None:
    """The kernel's routing decision for a packet that was forwarded or sent:
    `ip route get` with its addresses (and the interface it came in on)."""
    packet = block["packet"]
    if block.get("family") != "ip" or block.get("hook") not in ("forward", "output") or "daddr" not in packet:
        return None
    if block.get("chain") not in ("forward", "output_after_dnat"):  # once a hook, after DNAT re-routed it
        return None
    argv = ["ip", "route", "get", packet["daddr"]]
    if block["hook"] == "forward" and packet.get("iif") and packet.get("saddr"):
        argv += ["from", packet["saddr"], "iif", packet["iif"]]
    text = _run(argv, netns).strip().splitlines()
    return " ".join(text[0].split()) if text else None


def chain_priorities(netns: str) -> dict[tuple[str, str, str], tuple[str, int]]:
    """{(family, table, chain): (hook, priority)} of the namespace's base chains."""
    try:
        listing = json.loads(_run(["nft", "-j", "list", "chains"], netns) or "{}")
    except ValueError:
        return {}
    found = {}
    for item in listing.get("nftables", []):
        chain = item.get("chain")
        if chain and chain.get("hook"):
            found[(chain["family"], chain["table"], chain["name"])] = (chain["hook"], int(chain.get("prio", 0)))
    return found


def interface_names() -> dict[int, str]:
    names = {}
    for name in os.listdir("/sys/class/net"):
        try:
            names[int(_read(f"/sys/class/net/{name}/ifindex"))] = name
        except ValueError:
            pass
    return names


def cleanup(directory: str) -> None:
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        os.unlink(f"{directory}/{name}")
    if os.path.isdir(directory):
        os.rmdir(directory)


def _save_state(directory: str, state: dict) -> None:
    with open(f"{directory}/state.json", "w") as out:
        json.dump(state, out)


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of nobody's is not alive
        return _read(f"/proc/{pid}/stat").split(") ")[-1][:1] != "Z"
    except IndexError:
        return False


# ---- the probe ------------------------------------------------------------------------


def dns_query(name: str) -> bytes:
    question = b"".join(bytes([len(part)]) + part.encode() for part in name.strip(".").split(".")) + b"\0"
    return struct.pack(">HHHHHH", 0x4E55, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)


def dns_answer(reply: bytes) -> str:
    """'NOERROR 10.96.0.1' from a DNS reply (the first A record), for the probe's report."""
    if len(reply) < 12:
        return "short reply"
    rcode = reply[3] & 0x0F
    status = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN"}.get(rcode, f"rcode {rcode}")
    answers = struct.unpack(">H", reply[6:8])[0]
    position = 12
    while position < len(reply) and reply[position]:
        position += reply[position] + 1
    position += 5
    for _ in range(answers):
        if position + 12 > len(reply):
            break
        if reply[position] & 0xC0 == 0xC0:
            position += 2
        else:
            while position < len(reply) and reply[position]:
                position += reply[position] + 1
            position += 1
        kind, _, _, length = struct.unpack(">HHIH", reply[position : position + 10])
        data = reply[position + 10 : position + 10 + length]
        if kind == 1 and length == 4:
            return f"{status} {socket.inet_ntoa(data)}"
        position += 10 + length
    return status


def probe(proto: str, dest: str, port: int, sport: int, timeout: float, dns_name: str) -> dict:
    """Send the probe and report what came back (what a user's client would see)."""
    family_type = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, family_type)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, PROBE_DSCP << 2)  # what the nodes trace it by
    sock.settimeout(timeout)
    report: dict = {"proto": proto, "dest": f"{dest}:{port}"}
    try:
        sock.bind(("0.0.0.0", sport))
        if proto == "tcp":
            sock.connect((dest, port))
            report["local"] = "%s:%d" % sock.getsockname()
            report["result"] = "connected"
            request = f"GET /hostname HTTP/1.0\r\nHost: {dest}\r\nUser-Agent: emu-trace\r\n\r\n"
            if port == 53:
                request = ""
            if request:
                sock.sendall(request.encode())
                data = b""
                while len(data) < 4096:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                report["reply"] = (body or head).decode(errors="replace").strip()[:200]
                if head.startswith(b"HTTP/"):
                    report["status"] = head.split(b"\r\n")[0].decode(errors="replace")
        else:
            payload = dns_query(dns_name) if port == 53 else b"hostname"
            sock.connect((dest, port))
            report["local"] = "%s:%d" % sock.getsockname()
            sock.send(payload)
            data = sock.recv(4096)
            report["result"] = "answered"
            report["reply"] = dns_answer(data) if port == 53 else data.decode(errors="replace").strip()[:200]
    except ConnectionRefusedError:
        report["result"] = "refused"
    except socket.timeout:
        report["result"] = report.get("result", "timeout") if report.get("result") == "connected" else "timeout"
    except OSError as error:
        report["result"] = "error"
        report["error"] = error.strerror or str(error)
    finally:
        sock.close()
    return report


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="tracer")
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start")
    begin.add_argument("directory")
    begin.add_argument("--port", type=int, required=True)
    begin.add_argument("--proto", choices=["tcp", "udp"], default="tcp")
    begin.add_argument("--netns", nargs="*", default=[])
    end = commands.add_parser("stop")
    end.add_argument("directory")
    listen = commands.add_parser("nflog")
    listen.add_argument("out")
    listen.add_argument("ready")
    send = commands.add_parser("probe")
    send.add_argument("--proto", choices=["tcp", "udp"], default="tcp")
    send.add_argument("--dest", required=True)
    send.add_argument("--port", type=int, required=True)
    send.add_argument("--sport", type=int, required=True)
    send.add_argument("--timeout", type=float, default=3.0)
    send.add_argument("--dns-name", default="kubernetes.default.svc.cluster.local")
    options = parser.parse_args(argv)
    if options.command == "start":
        result = start(options.directory, options.port, options.proto, options.netns)
        if result.get("ok"):
            state = json.loads(_read(f"{options.directory}/state.json"))
            _save_state(options.directory, {**state, "port": options.port, "proto": options.proto})
    elif options.command == "stop":
        result = stop(options.directory)
    elif options.command == "nflog":
        nflog_listen(options.out, options.ready)
        return 0
    else:
        result = probe(options.proto, options.dest, options.port, options.sport, options.timeout, options.dns_name)
    print(json.dumps(result))
    return 1 if "error" in result and options.command != "probe" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
