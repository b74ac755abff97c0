"""Docker hosts over SSH: what `emu hosts check` and `emu hosts prepare` do.

check_hosts  a pre-flight, in parallel over SSH (fabric): SSH, the Docker
             engine, kernel features (vxlan, br_netfilter), ip_forward, the
             swarm ports between every pair of hosts, MTU, clock, disk.
prepare_hosts  makes the hosts ready and is idempotent: Debian's docker.io
             where no engine answers, the sysctls emu needs, one Docker Swarm
             (the first host, or an existing manager, leads; the others join
             as workers), and the images emu needs, shipped from this
             machine's engine to every host that lacks them.
leave_swarm  every host leaves its swarm (test teardown).

The decisions (what a probe's output means, which host leads the swarm, who
joins, which host needs which image) are pure functions, tested without SSH.
Only fabric/paramiko and the standard library are used here.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from fabric import Connection

from emu.errors import EmuError
from emu.api.topology.model import Host

Progress = Callable[[str], None]

SSH_TIMEOUT = 5  # seconds to connect, see the banner and authenticate (fabric wants an int)
PROBE_TIMEOUT = 60.0
SWARM_TCP_PORTS = (2377, 7946)
PORT_TIMEOUT = 3  # per TCP port probe, on the host
CLOCK_SKEW_WARN = 1.0
DISK_WARN_BYTES = 5 * 10**9
VXLAN_OVERHEAD = 50
SYSCTLS = {
    "net.ipv4.ip_forward": 1,
    "net.ipv4.neigh.default.gc_thresh1": 4096,
    "net.ipv4.neigh.default.gc_thresh2": 8192,
    "net.ipv4.neigh.default.gc_thresh3": 16384,
}
HOST_LABEL = "io.emu.host"  # swarm node label: which inventory host a node is (node.labels.io.emu.host==h2)
OK, INFO, WARN, ERROR = "ok", "info", "warn", "error"
LEVELS = (OK, INFO, WARN, ERROR)
CHECKS = ("ssh", "docker", "identity", "vxlan", "br_netfilter", "ip_forward", "mtu", "clock", "disk", "ports")


# -- reports ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One check on one host: level ok/info/warn/error, a short value for the table, what is wrong, the fix."""

    check: str
    level: str
    value: str
    message: str = ""
    fix: str = ""


@dataclass
class HostReport:
    host: str
    address: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not self.errors

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == WARN]

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.level in (WARN, ERROR)]

    def finding(self, check: str) -> Finding | None:
        """The worst finding of a check."""
        found = [f for f in self.findings if f.check == check and (f.value or f.level != INFO)]
        return max(found, key=lambda f: LEVELS.index(f.level)) if found else None


def format_reports(reports: list[HostReport]) -> str:
    """A table (one row per host, one column per check), then every problem with its fix, then notes."""
    columns = [c for c in CHECKS if any(r.finding(c) for r in reports)]
    header = ["HOST", "ADDRESS", *(c.upper() for c in columns)]
    rows = [header]
    for report in reports:
        row = [report.host, report.address]
        for check in columns:
            found = report.finding(check)
            if found is None:
                row.append("-")
            elif found.level in (WARN, ERROR):
                row.append(f"{found.value} ({found.level.upper()})" if found.value else found.level.upper())
            else:
                row.append(found.value or found.level)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    problems = [(r, f) for r in reports for f in r.findings if f.level in (ERROR, WARN)]
    problems.sort(key=lambda rf: LEVELS.index(rf[1].level), reverse=True)
    notes = sorted({f.message for r in reports for f in r.findings if f.level == INFO and f.message})
    if problems:
        lines += ["", "Problems:"]
        for report, found in problems:
            lines.append(f"  {report.host}: {found.level}: {found.message}")
            if found.fix:
                lines.append(f"      fix: {found.fix}")
    if notes:
        lines += ["", "Notes:"]
        lines += [f"  {note}" for note in notes]
    errors = sum(len(r.errors) for r in reports)
    warnings = sum(len(r.warnings) for r in reports)
    ready = "ready" if not errors else "not ready"
    lines += ["", f"{len(reports)} host{'s' if len(reports) != 1 else ''} {ready}: "
                  f"{errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}"]
    return "\n".join(lines) + "\n"


# -- SSH -------------------------------------------------------------------------------------------------------

_KNOWN_HOSTS_LOCK = threading.Lock()


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """ssh's StrictHostKeyChecking=accept-new: unknown keys are accepted (and remembered in the host's
    knownHosts file when it has one); a key that differs from a known one is refused by paramiko."""

    def __init__(self, path: str | None):
        self.path = path

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        if self.path:
            with _KNOWN_HOSTS_LOCK, open(self.path, "a") as file:
                file.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class _Connection(Connection):
    """A fabric Connection that closes its gateway (the jump host's connection) with itself."""

    def close(self):
        super().close()
        if isinstance(self.gateway, Connection):
            self.gateway.close()


def _connection(host: Host, address: str, user: str, port: int, timeout: int, gateway=None) -> Connection:
    """A fabric Connection (not opened) with host's key and known hosts; new host keys accepted (and recorded)
    as ssh's StrictHostKeyChecking=accept-new does, a changed key refused."""
    connect_kwargs: dict = {"banner_timeout": timeout, "auth_timeout": timeout}
    if host.ssh_key:
        connect_kwargs["key_filename"] = [str(Path(host.ssh_key).expanduser())]
    conn = _Connection(address, user=user, port=port, connect_timeout=timeout, connect_kwargs=connect_kwargs,
                       gateway=gateway)
    known = str(Path(host.known_hosts).expanduser()) if host.known_hosts else None
    if known:
        Path(known).parent.mkdir(parents=True, exist_ok=True)
        Path(known).touch(exist_ok=True)
        conn.client.load_host_keys(known)
    else:
        conn.client.load_system_host_keys()
    conn.client.set_missing_host_key_policy(_AcceptNew(known))
    return conn


def connect(host: Host, timeout: int = SSH_TIMEOUT) -> Connection:
    """An open fabric Connection to host (key, port, user, known hosts, jump host from the inventory)."""
    gateway = None
    if host.jump_target:
        jump_user, jump_address, jump_port = host.jump_target
        gateway = _connection(host, jump_address, jump_user, jump_port, timeout)
    conn = _connection(host, host.address, host.user, host.port, timeout, gateway)
    try:
        conn.open()
    except paramiko.BadHostKeyException as error:
        conn.close()
        raise host_key_changed(host, error.hostname, error.expected_key.get_name()) from None
    except (paramiko.SSHException, OSError, EOFError) as error:
        conn.close()
        via = f" through the jump host {host.jump}" if host.jump else ""
        raise EmuError(f"{host.name}: cannot reach {host.user}@{host.address}:{host.port} over SSH{via}: "
                       f"{_describe(error)}") from None
    return conn


class HostKeyChanged(EmuError):
    """A host's SSH key is not the one its known_hosts file holds: refused, never accepted anew."""

    def __init__(self, message: str, fix: str):
        super().__init__(f"{message}; fix: {fix}")
        self.message, self.fix = message, fix


def known_hosts_file(host: Host) -> str:
    return str(Path(host.known_hosts or "~/.ssh/known_hosts").expanduser())


def known_hosts_line(path: str, hostname: str) -> int | None:
    """The number of the first line of a known_hosts file naming hostname (plainly or hashed), or None."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return None
    for number, line in enumerate(lines, 1):
        names = line.split()[0] if line.strip() and not line.startswith("#") else ""
        for name in names.split(","):
            if name == hostname or (name.startswith("|1|") and paramiko.HostKeys.hash_host(hostname, name) == name):
                return number
    return None


def host_key_changed(host: Host, hostname: str, key_type: str = "", path: str | None = None,
                     line: int | None = None) -> HostKeyChanged:
    """The refusal of a changed host key: which host (hostname is the name known_hosts uses: address, or
    [address]:port, or the jump host's), which file and line, and the ssh-keygen -R that removes the line."""
    path = path or known_hosts_file(host)
    line = line or known_hosts_line(path, hostname)
    if line:  # the type of the key known, as the file says it (ssh-ed25519)
        try:
            key_type = Path(path).read_text(errors="replace").splitlines()[line - 1].split()[1]
        except (OSError, IndexError):
            pass
    where = f"line {line} of {path}" if line else path
    which = f"the {key_type} key" if key_type else "the key"
    bare = hostname[1:].split("]:")[0] if hostname.startswith("[") else hostname
    via = f" (the jump host of {host.name})" if host.jump_target and bare == host.jump_target[1] else ""
    message = (f"{host.name}: the SSH host key of {hostname}{via} changed: it is not {which} on {where}, so emu "
               "refuses the connection (a reinstalled machine, or someone in between)")
    fix = (f"if {hostname} was reinstalled, remove its old key with ssh-keygen -R {shlex.quote(hostname)} -f "
           f"{shlex.quote(path)} and run emu hosts check again (it records the new key); otherwise find out who "
           f"answers at {hostname}")
    return HostKeyChanged(message, fix)


def openssh_host_key_changed(host: Host, stderr: str) -> HostKeyChanged | None:
    """The refusal of a changed host key from OpenSSH's complaint (its stderr), or None where it is another."""
    import re

    if "REMOTE HOST IDENTIFICATION HAS CHANGED" not in stderr and "Host key verification failed" not in stderr:
        return None
    offending = re.search(r"Offending (\S+) key in (.+):(\d+)", stderr)
    removed = re.search(r"-R ['\"]?([^'\"\s]+)", stderr)
    if not offending or not removed:
        return None  # not a changed key (an unknown one under StrictHostKeyChecking=yes): ssh's words stand
    return host_key_changed(host, removed.group(1), offending.group(1), offending.group(2), int(offending.group(3)))


def ssh_options(host: Host) -> list[str]:
    """OpenSSH client options for host from the inventory: batch mode, timeouts, host keys (accept new, refuse a
    changed one), key, and the jump host. The jump host is reached as ssh -J would, by a ProxyCommand of
    `ssh -W` with these same options, so that the inventory's key and known_hosts serve it as well (ssh -J
    would use ~/.ssh's)."""
    options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_TIMEOUT}", "-o", "StrictHostKeyChecking=accept-new"]
    if host.known_hosts:
        options += ["-o", f"UserKnownHostsFile={Path(host.known_hosts).expanduser()}"]
    if host.ssh_key:
        options += ["-i", str(Path(host.ssh_key).expanduser()), "-o", "IdentitiesOnly=yes"]
    if host.jump_target:
        user, address, port = host.jump_target
        proxy = ["ssh", *options, "-W", "[%h]:%p", "-p", str(port), "-l", user, address]
        options += ["-o", "ProxyCommand=" + shlex.join(proxy)]
    return options


def _describe(error: BaseException) -> str:
    if isinstance(error, paramiko.AuthenticationException):
        return f"authentication failed ({error})"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(error) or type(error).__name__


def _run(conn: Connection, command: str, timeout: float | None = None):
    """Run command; returns fabric's Result (never raises on a non-zero exit)."""
    return conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)


def _sudo(host: Host) -> str:
    return "" if host.user == "root" else "sudo -n "


def docker_command(host: Host, args: str) -> str:
    """A shell command running the docker CLI on the host against the inventory's engine socket."""
    return f"DOCKER_HOST={shlex.quote('unix://' + host.docker_socket)} docker {args}"


def _parallel(function, items: Iterable) -> list:
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(items))) as pool:
        return list(pool.map(function, items))


# -- identity: one engine or one machine named twice -----------------------------------------------------------

MACHINE_ID_COMMAND = "cat /etc/machine-id 2>/dev/null || cat /var/lib/dbus/machine-id 2>/dev/null"
IDENTITY_COMMAND = "info --format '{{.ID}} {{.Swarm.NodeID}}'"  # the docker CLI's arguments


@dataclass(frozen=True)
class Identity:
    """What tells Docker engines and machines apart: the engine's ID (docker info .ID), its swarm node ID
    (while in a swarm) and its machine's /etc/machine-id. "" where unknown (no engine answers, no SSH)."""

    engine_id: str = ""
    node_id: str = ""
    machine_id: str = ""


@dataclass(frozen=True)
class Clash:
    """Host `host` is the same engine or machine as the earlier host `first`: what is shared, and the fix."""

    host: str
    first: str
    shared: str  # engine / swarm node / machine
    field: str  # the inventory field to correct on `host`: address, dockerSocket or engine
    message: str
    fix: str


def parse_identity(engine: str, machine_id: str = "") -> Identity:
    """From `docker info --format '{{.ID}} {{.Swarm.NodeID}}'`'s output and the machine-id's."""
    parts = engine.split() + ["", ""]
    return Identity(parts[0], parts[1], machine_id.strip().split("\n")[0].strip())


def _short(value: str) -> str:
    return value if len(value) <= 14 else value[:14] + "..."


def identity_clashes(hosts: list[Host], identities: dict[str, Identity]) -> list[Clash]:
    """Every host that is an earlier host's engine, swarm node or machine again (each host once, against the
    first it repeats). Unknown parts ("") match nothing."""
    clashes: list[Clash] = []
    for index, host in enumerate(hosts):
        mine = identities.get(host.name, Identity())
        for first in hosts[:index]:
            theirs = identities.get(first.name, Identity())
            clash = _clash(first, theirs, host, mine)
            if clash:
                clashes.append(clash)
                break
    return clashes


def _clash(a: Host, ida: Identity, b: Host, idb: Identity) -> Clash | None:
    same_machine = bool(ida.machine_id) and ida.machine_id == idb.machine_id
    both = f"{b.name} and {a.name}"
    if ida.engine_id and ida.engine_id == idb.engine_id:
        shared = f"{both} are one Docker engine (engine ID {_short(ida.engine_id)})"
        if a.engine != "ssh" or b.engine != "ssh":
            return Clash(b.name, a.name, "engine", "engine", f"{shared}: {b.name}'s engine {b.engine} reaches "
                         f"{a.name}'s", f"set {b.name}'s engine to the address of {b.name}'s own Docker engine")
        if (a.address, a.port) == (b.address, b.port):
            return Clash(b.name, a.name, "engine", "address", f"{shared}: both have the address {b.address}",
                         f"set {b.name}'s address to the machine {b.name} is")
        if same_machine:
            return Clash(b.name, a.name, "engine", "address", f"{shared}: {a.address} and {b.address} are one "
                         f"machine (machine-id {_short(ida.machine_id)})",
                         f"set {b.name}'s address to the machine {b.name} is (a DNS name and an address of one "
                         "machine name it twice)")
        default = " (the default, as no dockerSocket is given)" if b.docker_socket == "/var/run/docker.sock" else ""
        return Clash(b.name, a.name, "engine", "dockerSocket", f"{shared}: on {b.address}, {b.name}'s "
                     f"dockerSocket {b.docker_socket}{default} reaches {a.name}'s engine",
                     f"set {b.name}'s dockerSocket to the socket of {b.name}'s own engine")
    if ida.node_id and ida.node_id == idb.node_id:
        return Clash(b.name, a.name, "swarm node", "dockerSocket", f"{both} are one swarm node ({_short(ida.node_id)})"
                     " of two engines: one engine's swarm state was copied from the other's", f"run docker swarm "
                     f"leave --force on {b.name} (or correct {b.name}'s dockerSocket if it names {a.name}'s engine)")
    if same_machine:
        return Clash(b.name, a.name, "machine", "address", f"{both} are one machine (machine-id "
                     f"{_short(ida.machine_id)}): {a.address} and {b.address} reach it",
                     f"set {b.name}'s address to the machine {b.name} is; if it is a machine of its own cloned "
                     "from the same image, give it a machine-id of its own (rm /etc/machine-id; "
                     "systemd-machine-id-setup)")
    return None


def refuse_clashes(hosts: list[Host], identities: dict[str, Identity], doing: str) -> None:
    """EmuError naming every host that repeats an earlier one, and the field to fix: before anything changes."""
    clashes = identity_clashes(hosts, identities)
    if clashes:
        lines = [f"{c.message}; fix: {c.fix}" for c in clashes]
        raise EmuError(f"the inventory names one {clashes[0].shared} twice, so emu does not {doing}:\n  "
                       + "\n  ".join(lines))


# -- access: may the SSH user use the engine's socket ----------------------------------------------------------

# A shell snippet printing key=value lines: who the SSH user is, the socket's owner, group and mode, and whether
# the user may read and write it (ok), may not (denied), or there is no socket (missing).
ACCESS_COMMAND = r"""s=__SOCKET__
printf 'user=%s\nuid=%s\ngroups=%s\nsock=%s\n' "$(id -un)" "$(id -u)" "$(id -Gn | tr ' ' ,)" \
  "$(stat -L -c '%U %G %a' "$s" 2>/dev/null)"
if [ -S "$s" ]; then if [ -r "$s" ] && [ -w "$s" ]; then echo access=ok; else echo access=denied; fi
else echo access=missing; fi"""


def access_command(host: Host) -> str:
    return ACCESS_COMMAND.replace("__SOCKET__", shlex.quote(host.docker_socket))


def parse_values(output: str) -> dict[str, str]:
    values = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def access_denied(host: Host, values: dict[str, str]) -> tuple[str, str] | None:
    """(what is wrong, the fix) where the SSH user may not use the engine's socket (the access command's or the
    probe's values), else None."""
    if values.get("access") != "denied":
        return None
    user = values.get("user") or host.user
    owner, group, mode = (values.get("sock", "").split() + ["?", "?", "?"])[:3]
    groups = [g for g in values.get("groups", "").split(",") if g]
    why = (f"{user} is not in the group {group}" if group not in groups
           else f"the socket's mode {mode} does not let the group {group} read and write it")
    uid = values.get("uid") or "UID"
    message = (f"{user} may not use the Docker engine at {host.docker_socket} on {host.name} (permission denied: "
               f"the socket is {owner}:{group}, mode {mode}, and {why})")
    fix = (f"add {user} to the group {group} on {host.name} (as root: usermod -aG {group} {user}; it counts from "
           f"{user}'s next login), or set {host.name}'s dockerSocket to the socket of a rootless engine {user} runs "
           f"(/run/user/{uid}/docker.sock)")
    return message, fix


# -- check: the probe ------------------------------------------------------------------------------------------

PROBE_SCRIPT = r"""
export LC_ALL=C PATH="$PATH:/usr/sbin:/sbin"
export DOCKER_HOST=__DOCKER_HOST__
say() { printf '%s=%s\n' "$1" "$(printf '%s' "$2" | tr '\n' ' ' | cut -c1-300)"; }
say kernel "$(uname -r)"
say uid "$(id -u)"
if command -v docker >/dev/null 2>&1; then
  out=$(timeout 10 docker version --format '{{.Server.Version}}' 2>&1); say docker_rc $?; say docker_out "$out"
  set -- $(timeout 10 docker info --format '{{.Swarm.LocalNodeState}} {{.ID}} {{.Swarm.NodeID}}' 2>/dev/null)
  say swarm "$1"; say engine_id "$2"; say node_id "$3"
  root=$(timeout 10 docker info --format '{{.DockerRootDir}}' 2>/dev/null)
else
  say docker_rc 127; say docker_out "docker: command not found"
fi
command -v dockerd >/dev/null 2>&1 && say dockerd yes || say dockerd no
say machine_id "$(__MACHINE_ID__)"
__ACCESS__
for m in vxlan:VXLAN br_netfilter:BRIDGE_NETFILTER; do
  name=${m%%:*} cfg=CONFIG_${m##*:}
  if [ -d /sys/module/$name ] || grep -q "^$name " /proc/modules 2>/dev/null; then s=loaded
  elif [ $name = br_netfilter ] && [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then s=loaded
  elif grep -qs "/$name.ko" /lib/modules/$(uname -r)/modules.builtin; then s=builtin
  elif modinfo $name >/dev/null 2>&1; then s=module
  elif { zcat /proc/config.gz 2>/dev/null || cat /boot/config-$(uname -r) 2>/dev/null; } | grep -q "^$cfg=[ym]"; then s=config
  else s=missing; fi
  say mod_$name $s
done
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null 2>&1 && command -v ip >/dev/null 2>&1; then
  out=$(unshare --net sh -c 'ip link add emuvxprobe type vxlan id 4242 dstport 4789 && ip link del emuvxprobe' 2>&1)
  if [ $? = 0 ]; then say vxlan_probe ok; else say vxlan_probe "failed: $out"; fi
else
  say vxlan_probe skipped
fi
say ip_forward "$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null)"
say gc_thresh3 "$(cat /proc/sys/net/ipv4/neigh/default/gc_thresh3 2>/dev/null)"
addr=$(getent ahostsv4 __ADDRESS__ 2>/dev/null | awk '{print $1; exit}')
dev=$(ip -o addr show to "${addr:-__ADDRESS__}" 2>/dev/null | awk '{print $2; exit}')
[ -n "$dev" ] || dev=$(ip -o route get __ROUTE_TO__ 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p')
[ -n "$dev" ] && say mtu "$dev $(ip -o link show dev "$dev" 2>/dev/null | sed -n 's/.* mtu \([0-9]*\).*/\1/p')"
for d in "$root" /var/lib/docker /var/lib /; do [ -n "$d" ] && [ -d "$d" ] && break; done
say disk "$d $(df -Pk "$d" 2>/dev/null | awk 'NR==2 {print $4}')"
for target in __PEERS__; do
  for port in __PORTS__; do
    (
      out=$(timeout __PORT_TIMEOUT__ bash -c "exec 3<>/dev/tcp/$target/$port" 2>&1); rc=$?
      if [ $rc = 0 ]; then r=open
      elif [ $rc = 124 ]; then r=timeout
      else case "$out" in *refused*) r=refused ;; *) r="error $(printf '%s' "$out" | tr '\n' ' ' | sed 's/.*: //')" ;; esac
      fi
      printf 'port %s %s %s\n' "$target" "$port" "$r"
    ) &
  done
done
wait
"""


@dataclass
class Probe:
    """What the probe found on one host (or why it could not run)."""

    ssh_error: str | None = None
    ssh_fix: str | None = None  # where the error has a fix of its own (a changed host key)
    values: dict[str, str] = field(default_factory=dict)
    ports: dict[tuple[str, int], str] = field(default_factory=dict)  # (peer address, port) -> open|refused|...
    clock_skew: float | None = None  # seconds the host's clock is ahead of this machine's
    clock_uncertainty: float = 0.0


def probe_script(host: Host, peers: list[str]) -> str:
    values = {
        "__DOCKER_HOST__": shlex.quote("unix://" + host.docker_socket),
        "__ADDRESS__": shlex.quote(host.swarm_address),
        "__ROUTE_TO__": shlex.quote(peers[0] if peers else "1.1.1.1"),
        "__PEERS__": " ".join(shlex.quote(p) for p in peers),
        "__PORTS__": " ".join(str(p) for p in SWARM_TCP_PORTS),
        "__PORT_TIMEOUT__": str(PORT_TIMEOUT),
        "__MACHINE_ID__": MACHINE_ID_COMMAND,
        "__ACCESS__": access_command(host),
    }
    script = PROBE_SCRIPT
    for key, value in values.items():
        script = script.replace(key, value)
    return script


def parse_probe(output: str) -> Probe:
    probe = Probe()
    for line in output.splitlines():
        if line.startswith("port "):
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[2].isdigit():
                probe.ports[(parts[1], int(parts[2]))] = parts[3].strip()
        elif "=" in line:
            key, value = line.split("=", 1)
            probe.values[key.strip()] = value.strip()
    return probe


def _probe_host(host: Host, peers: list[str], timeout: int) -> Probe:
    try:
        conn = connect(host, timeout)
    except HostKeyChanged as error:
        return Probe(ssh_error=error.message.split(": ", 1)[-1], ssh_fix=error.fix)
    except EmuError as error:
        return Probe(ssh_error=str(error).split(": ", 1)[-1])
    try:
        remote_time, before, after = _remote_clock(conn, timeout)
        script = probe_script(host, peers)
        probe_result = _run(conn, f"bash -c {shlex.quote(script)}", timeout=PROBE_TIMEOUT)
        probe = parse_probe(probe_result.stdout)
        if probe_result.exited != 0 and not probe.values:
            probe.ssh_error = f"the probe failed ({probe_result.exited}): {probe_result.stderr.strip()[:200]}"
        if remote_time is not None:
            probe.clock_skew = remote_time - (before + after) / 2
            probe.clock_uncertainty = (after - before) / 2
        return probe
    except Exception as error:  # a timeout or a dropped connection: report it, never hang the others
        return Probe(ssh_error=_describe(error))
    finally:
        conn.close()


def _remote_clock(conn: Connection, timeout: float) -> tuple[float | None, float, float]:
    """The host's time and this machine's just before and after it was read: a shell on the host answers each
    line sent with its time; the quickest of three round trips is kept."""
    channel = conn.client.get_transport().open_session()
    best: tuple[float | None, float, float] = (None, 0.0, float("inf"))
    try:
        channel.settimeout(timeout)
        channel.exec_command("while read line; do date +%s.%N; done")
        for _ in range(3):
            before = time.time()
            channel.sendall(b"\n")
            output = b""
            while not output.endswith(b"\n"):
                chunk = channel.recv(256)
                if not chunk:
                    break
                output += chunk
            after = time.time()
            try:
                remote = float(output.strip())
            except ValueError:
                break
            if after - before < best[2] - best[1]:
                best = (remote, before, after)
    finally:
        channel.close()
    return best if best[0] is not None else (None, 0.0, 0.0)


def check_hosts(hosts: list[Host], progress: Progress = print, timeout: int = SSH_TIMEOUT) -> list[HostReport]:
    """The pre-flight: every host probed over SSH in parallel; one report per host, in inventory order."""
    progress(f"checking {len(hosts)} host{'s' if len(hosts) != 1 else ''} over SSH")
    peers = {h.name: [p.swarm_address for p in hosts if p.name != h.name] for h in hosts}
    probes = _parallel(lambda h: _probe_host(h, peers[h.name], timeout), hosts)
    return evaluate(hosts, dict(zip((h.name for h in hosts), probes)))


# -- check: what the probe means (pure) ------------------------------------------------------------------------


def _gb(value: int) -> str:
    return f"{value / 10**9:.1f} GB"


def evaluate(hosts: list[Host], probes: dict[str, Probe]) -> list[HostReport]:
    """Reports from the probes of every host (the ports of one host are judged by the other host's state)."""
    by_address = {h.swarm_address: h for h in hosts}
    reports = [_evaluate_host(h, probes[h.name], probes, by_address) for h in hosts]
    identities = {name: probe_identity(probe) for name, probe in probes.items() if not probe.ssh_error}
    clashes = {c.host: c for c in identity_clashes(hosts, identities)}
    for host, report in zip(hosts, reports):
        if host.name not in identities:
            continue
        clash = clashes.get(host.name)
        if clash:
            report.findings.insert(2, Finding("identity", ERROR, f"={clash.first}", clash.message, clash.fix))
        elif identities[host.name].engine_id or identities[host.name].machine_id:
            report.findings.insert(2, Finding("identity", OK, "unique"))
    return reports


def probe_identity(probe: Probe) -> Identity:
    values = probe.values
    return Identity(values.get("engine_id", ""), values.get("node_id", ""), values.get("machine_id", ""))


def _evaluate_host(host: Host, probe: Probe, probes: dict[str, Probe], by_address: dict[str, Host]) -> HostReport:
    report = HostReport(host.name, host.address)
    add = report.findings.append
    name = host.name
    if probe.ssh_error and probe.ssh_fix:
        add(Finding("ssh", ERROR, "host key changed", probe.ssh_error, probe.ssh_fix))
        return report
    if probe.ssh_error:
        add(Finding("ssh", ERROR, "unreachable", f"SSH to {host.user}@{host.address}:{host.port} failed: "
                    f"{probe.ssh_error}", f"check that {name} is up, that sshd listens on port {host.port} and that "
                    f"{host.user} accepts the key {host.ssh_key or '(ssh default)'}"))
        return report
    values = probe.values
    add(Finding("ssh", OK, "ok"))

    # Docker
    version = values.get("docker_out", "")
    denied = access_denied(host, values)
    if denied:
        add(Finding("docker", ERROR, "denied", *denied))
    elif values.get("docker_rc") == "0" and version:
        add(Finding("docker", OK, version))
    elif values.get("docker_rc") == "127":
        add(Finding("docker", ERROR, "missing", f"no docker CLI on {name}",
                    f"run emu hosts prepare (installs Debian's docker.io), or install Docker on {name}"))
    else:
        fix = (f"start the engine on {name} (systemctl start docker) or correct dockerSocket "
               f"({host.docker_socket})" if values.get("dockerd") == "yes"
               else f"run emu hosts prepare (installs Debian's docker.io), or install Docker on {name}")
        add(Finding("docker", ERROR, "down", f"no Docker engine answers at {host.docker_socket} on {name}: "
                    f"{version or 'no answer'}", fix))

    # Kernel features
    for module, why in (("vxlan", "swarm overlay networks"), ("br_netfilter", "iptables on bridged traffic")):
        state = values.get(f"mod_{module}", "")
        level = WARN if module == "br_netfilter" else ERROR
        if state in ("loaded", "builtin"):
            add(Finding(module, OK, state))
        elif state in ("module", "config"):
            add(Finding(module, OK, "module"))
        else:
            add(Finding(module, level, "missing", f"{name}'s kernel ({values.get('kernel', '?')}) has no {module}, "
                        f"which {why} need", f"install {name}'s kernel modules (e.g. linux-modules-extra-"
                        f"{values.get('kernel', '$(uname -r)')} on Ubuntu) and run modprobe {module}"))
    vxlan_probe = values.get("vxlan_probe", "")
    if vxlan_probe.startswith("failed"):
        add(Finding("vxlan", ERROR, "no", f"a vxlan link cannot be made on {name}: {vxlan_probe[7:].strip()}",
                    f"load the vxlan module on {name} (modprobe vxlan)"))

    # Sysctls
    forward = values.get("ip_forward", "")
    if forward == "1":
        add(Finding("ip_forward", OK, "1"))
    else:
        add(Finding("ip_forward", WARN, forward or "?", f"net.ipv4.ip_forward is {forward or 'unknown'} on {name}",
                    "emu hosts prepare sets it (sysctl -w net.ipv4.ip_forward=1)"))
    thresh = values.get("gc_thresh3", "")
    if thresh.isdigit() and int(thresh) < SYSCTLS["net.ipv4.neigh.default.gc_thresh3"]:
        add(Finding("ip_forward", INFO, "", "big labs need a larger ARP table (gc_thresh1-3); "
                    "emu hosts prepare raises it"))

    # MTU of the interface carrying the host's address
    mtu_value = values.get("mtu", "").split()
    if len(mtu_value) == 2 and mtu_value[1].isdigit():
        device, mtu = mtu_value[0], int(mtu_value[1])
        if mtu < 1500:
            add(Finding("mtu", WARN, str(mtu), f"{device} on {name} has MTU {mtu}: VXLAN needs {VXLAN_OVERHEAD} "
                        f"bytes, so overlay networks must use an MTU of at most {mtu - VXLAN_OVERHEAD}",
                        f"raise the MTU of {device} to 1550 or more, or give overlay networks "
                        f"com.docker.network.driver.mtu={mtu - VXLAN_OVERHEAD}"))
        else:
            add(Finding("mtu", OK, str(mtu)))
    else:
        add(Finding("mtu", WARN, "?", f"cannot tell which interface on {name} carries {host.swarm_address}",
                    f"check that {host.swarm_address} (the address or advertiseAddress) belongs to {name}"))

    # Clock
    if probe.clock_skew is not None:
        skew = probe.clock_skew
        if abs(skew) > CLOCK_SKEW_WARN + probe.clock_uncertainty:
            direction = "ahead of" if skew > 0 else "behind"
            add(Finding("clock", WARN, f"{skew:+.1f}s", f"{name}'s clock is {abs(skew):.1f} s {direction} this "
                        "machine's (swarm certificates and logs need agreeing clocks)",
                        f"run NTP on {name} (chrony or systemd-timesyncd)"))
        else:
            add(Finding("clock", OK, f"{skew:+.1f}s"))

    # Disk
    disk = values.get("disk", "").split()
    if len(disk) == 2 and disk[1].isdigit():
        path, free = disk[0], int(disk[1]) * 1024
        if free < DISK_WARN_BYTES:
            add(Finding("disk", WARN, _gb(free), f"only {_gb(free)} free under {path} on {name}",
                        f"free space under {path} on {name} (at least {_gb(DISK_WARN_BYTES)}; images need it)"))
        else:
            add(Finding("disk", OK, _gb(free)))

    # Swarm ports, from this host to every other
    add_ports = _port_findings(host, probe, probes, by_address)
    report.findings.extend(add_ports)
    return report


def _port_findings(host: Host, probe: Probe, probes: dict[str, Probe], by_address: dict[str, Host]) -> list[Finding]:
    findings: list[Finding] = []
    reached: list[str] = []
    idle: list[str] = []
    for (address, port), result in sorted(probe.ports.items()):
        target = by_address.get(address)
        target_name = target.name if target else address
        target_swarm = probes[target.name].values.get("swarm", "") if target and target.name in probes else ""
        what = f"TCP {port} from {host.name} to {target_name} ({address})"
        if result == "open":
            reached.append(f"{target_name}:{port}")
        elif result == "refused":
            if target_swarm != "active":
                idle.append(f"{target_name}:{port}")
            elif port == 2377:
                reached.append(f"{target_name}:{port}")  # a worker: only managers listen on 2377
            else:
                findings.append(Finding("ports", WARN, "refused", f"{what}: refused although {target_name} is in a "
                                        "swarm", f"check {target_name}'s swarm state (docker info) and firewall"))
        elif result == "timeout":
            findings.append(Finding("ports", ERROR, "blocked", f"{what}: timed out (a firewall drops it)",
                                    f"allow TCP 2377, 7946 and UDP 4789, 7946 between the hosts "
                                    f"(on {target_name} and on the way from {host.name})"))
        else:
            findings.append(Finding("ports", ERROR, "unreachable", f"{what}: {result.removeprefix('error ')}",
                                    f"check the route from {host.name} to {address}"))
    if not findings and probe.ports:
        if idle and not reached:
            value, level = "not listening", INFO
        else:
            value, level = "ok", OK
        findings.append(Finding("ports", level, value))
    if idle:
        findings.append(Finding("ports", INFO, "", "TCP 2377/7946 refused where no swarm runs yet: reported as "
                                "not listening (swarm not initialised); a timeout would mean blocked"))
    if probe.ports:
        findings.append(Finding("ports", INFO, "", "UDP 4789 (VXLAN) and 7946 (gossip) cannot be proven without a "
                                "listener and are not tested: allow them between the hosts"))
    return findings


# -- prepare (pure decisions) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SwarmState:
    """A host's `docker info` .Swarm: state (inactive/pending/active/error/locked), manager or not, ids."""

    state: str = "inactive"
    manager: bool = False
    node_id: str = ""
    cluster_id: str = ""


@dataclass(frozen=True)
class SwarmPlan:
    manager: str  # host name
    init: bool  # the manager must run swarm init
    join: list[str]  # hosts that join as workers
    leave_first: list[str]  # hosts stuck in a half-joined state: leave --force, then join
    members: list[str]  # hosts already in the manager's swarm (besides the manager)


def plan_swarm(hosts: list[Host], states: dict[str, SwarmState]) -> SwarmPlan:
    """Which host leads the swarm (an existing manager, else the first host) and what the others must do.

    Raises EmuError where hosts belong to swarms this inventory does not manage."""
    names = [h.name for h in hosts]
    managers = [n for n in names if states[n].state == "active" and states[n].manager]
    clusters = {states[n].cluster_id for n in managers}
    if len(clusters) > 1:
        raise EmuError(f"{', '.join(managers)} manage different swarms; run docker swarm leave --force on all but "
                       "one swarm's hosts and prepare again")
    if managers:
        manager, init = managers[0], False
    else:
        manager, init = names[0], True
        foreign = [n for n in names if states[n].state == "active"]
        if foreign:
            raise EmuError(f"{', '.join(foreign)} {'is a worker' if len(foreign) == 1 else 'are workers'} in a swarm "
                           "that none of these hosts manages: run docker swarm leave on "
                           f"{'it' if len(foreign) == 1 else 'them'}, or add its manager to the hosts")
    join, leave_first, members = [], [], []
    for name in names:
        if name == manager:
            continue
        state = states[name]
        if state.state == "active":
            members.append(name)  # checked against the manager's node list by check_members
        elif state.state == "inactive":
            join.append(name)
        else:
            leave_first.append(name)
            join.append(name)
    if init and states[manager].state not in ("inactive", "active"):
        leave_first.insert(0, manager)
    return SwarmPlan(manager, init, join, leave_first, members)


def check_members(plan: SwarmPlan, states: dict[str, SwarmState], manager_node_ids: set[str]) -> None:
    """Hosts already in a swarm must be in the manager's."""
    strangers = [n for n in plan.members if states[n].node_id not in manager_node_ids]
    if strangers:
        raise EmuError(f"{', '.join(strangers)} {'is' if len(strangers) == 1 else 'are'} in another swarm than "
                       f"{plan.manager}'s: run docker swarm leave --force there and prepare again")


@dataclass(frozen=True)
class SwarmNode:
    """One entry of the manager's `docker node inspect`."""

    id: str
    state: str  # ready / down / unknown
    labels: dict[str, str] = field(default_factory=dict)
    address: str = ""


def node_label_updates(nodes: list[SwarmNode], node_ids: dict[str, str]) -> dict[str, str]:
    """node id -> host name, for nodes of our hosts that lack the io.emu.host label (or carry a wrong one)."""
    by_id = {n.id: n for n in nodes}
    return {
        node_id: name
        for name, node_id in node_ids.items()
        if node_id in by_id and by_id[node_id].labels.get(HOST_LABEL) != name
    }


def stale_nodes(nodes: list[SwarmNode], node_ids: dict[str, str], hosts: list[Host]) -> list[str]:
    """Ids of nodes that were earlier incarnations of our hosts (same label or address, another id): a host that
    left and joined again. Whether the manager has noticed yet (down) or not (ready a few seconds more)."""
    current = set(node_ids.values())
    names = {h.name for h in hosts}
    addresses = {h.swarm_address for h in hosts}
    return [
        n.id for n in nodes
        if n.id not in current and (n.labels.get(HOST_LABEL) in names or n.address in addresses)
    ]


def sysctl_changes(current: dict[str, int | None]) -> dict[str, int]:
    """The sysctls to write: ip_forward must be 1; the ARP limits are only ever raised.
    A key missing on the host (None: e.g. gc_thresh in a network namespace) is left alone."""
    changes = {}
    for key, want in SYSCTLS.items():
        have = current.get(key)
        if have is None:
            continue
        if (key == "net.ipv4.ip_forward" and have != want) or have < want:
            changes[key] = want
    return changes


def images_to_ship(local_ids: dict[str, str], remote_ids: dict[str, dict[str, str | None]]) -> dict[str, list[str]]:
    """host -> the images (in the order asked) it lacks: no such tag there, or the tag names another image."""
    plan = {}
    for host, present in remote_ids.items():
        missing = [tag for tag, image_id in local_ids.items() if present.get(tag) != image_id]
        if missing:
            plan[host] = missing
    return plan


def is_debian_like(os_release: str) -> bool:
    """From /etc/os-release's text: Debian, Ubuntu or a derivative (ID or ID_LIKE)."""
    words: set[str] = set()
    for line in os_release.splitlines():
        key, _, value = line.partition("=")
        if key in ("ID", "ID_LIKE"):
            words.update(value.strip().strip('"').split())
    return bool(words & {"debian", "ubuntu"})


# -- prepare ---------------------------------------------------------------------------------------------------


def _engine_answers(conn: Connection, host: Host) -> str | None:
    result = _run(conn, docker_command(host, "version --format '{{.Server.Version}}'"), timeout=20)
    return result.stdout.strip() if result.exited == 0 and result.stdout.strip() else None


def _install_engine(conn: Connection, host: Host, progress: Progress) -> None:
    """Debian's docker.io where no engine answers; then start it where that is clear (systemd or the default socket)."""
    deadline: float | None = None
    if _run(conn, "command -v dockerd", timeout=20).exited != 0:
        os_release = _run(conn, "cat /etc/os-release", timeout=20).stdout
        if not is_debian_like(os_release):
            raise EmuError(f"{host.name}: no Docker engine answers at {host.docker_socket}, and emu installs one only "
                           "on Debian or Ubuntu: install Docker there and run prepare again")
        progress(f"{host.name}: installing Debian's docker.io")
        sudo = _sudo(host)
        result = _run(conn, f"{sudo}env DEBIAN_FRONTEND=noninteractive sh -c 'apt-get update -qq && "
                            "apt-get install -y -qq docker.io'", timeout=900)
        if result.exited != 0:
            raise EmuError(f"{host.name}: installing docker.io failed ({result.exited}): "
                           f"{(result.stderr or result.stdout).strip()[-500:]}")
    sudo = _sudo(host)
    if _run(conn, "test -d /run/systemd/system", timeout=20).exited == 0:
        _run(conn, f"{sudo}systemctl enable --now docker", timeout=120)
    elif host.docker_socket in ("/var/run/docker.sock", "/run/docker.sock"):
        _run(conn, f"{sudo}sh -c 'nohup dockerd >/var/log/emu-dockerd.log 2>&1 &'", timeout=20)
    else:
        deadline = 0.0  # an engine on a socket of its own: emu cannot know how to start it
    deadline = time.monotonic() + 60 if deadline is None else deadline
    while time.monotonic() < deadline:
        if _engine_answers(conn, host):
            progress(f"{host.name}: Docker engine started")
            return
        time.sleep(1)
    raise EmuError(f"{host.name}: Docker is installed but no engine answers at {host.docker_socket}: start it "
                   "(systemctl start docker, or the dockerd that owns that socket) and run prepare again")


def _ensure_sysctls(conn: Connection, host: Host, progress: Progress, changes: Changes | None = None) -> None:
    keys = list(SYSCTLS)
    paths = " ".join("/proc/sys/" + k.replace(".", "/") for k in keys)
    result = _run(conn, f"for f in {paths}; do cat $f 2>/dev/null || echo -; done", timeout=20)
    lines = result.stdout.split()
    current = {k: (int(v) if v.isdigit() else None) for k, v in zip(keys, lines)}
    wanted = sysctl_changes(current)
    if not wanted:
        return
    settings = " ".join(f"{k}={v}" for k, v in wanted.items())
    if changes is not None:
        changes.sysctls[host.name] = {k: current[k] for k in wanted}  # before: whatever happens next
    result = _run(conn, f"{_sudo(host)}sysctl -q -w {settings}", timeout=20)
    if result.exited != 0 and host.user != "root":
        raise EmuError(f"{host.name}: could not set {settings} as {host.user} (sudo -n sysctl: "
                       f"{result.stderr.strip() or result.exited}): prepare needs root there for these sysctls; give "
                       f"{host.user} passwordless sudo, or set them there once as root (sysctl -w {settings})")
    if result.exited != 0:
        raise EmuError(f"{host.name}: could not set {settings}: {result.stderr.strip()}")
    progress(f"{host.name}: set {settings}")


def _swarm_state(conn: Connection, host: Host) -> SwarmState:
    fmt = "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.NodeID}} {{if .Swarm.Cluster}}{{.Swarm.Cluster.ID}}{{end}}"
    result = _run(conn, docker_command(host, f"info --format {shlex.quote(fmt)}"), timeout=30)
    if result.exited != 0:
        raise EmuError(f"{host.name}: docker info failed: {result.stderr.strip()}")
    parts = result.stdout.split() + ["", "", "", ""]
    return SwarmState(parts[0], parts[1] == "true", parts[2], parts[3])


def _swarm_nodes(conn: Connection, host: Host) -> list[SwarmNode]:
    fmt = "{{.ID}}\t{{.Status.State}}\t{{.Status.Addr}}\t{{json .Spec.Labels}}"
    result = _run(conn, docker_command(host, f"node inspect --format {shlex.quote(fmt)} $({docker_command(host, 'node ls -q')})"),
                  timeout=30)
    if result.exited != 0:
        raise EmuError(f"{host.name}: docker node inspect failed: {result.stderr.strip()}")
    import json

    nodes = []
    for line in result.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            labels = json.loads(parts[3]) if parts[3] not in ("", "null") else {}
            nodes.append(SwarmNode(parts[0], parts[1], labels or {}, parts[2]))
    return nodes


def _check(result, host: Host, what: str):
    if result.exited != 0:
        raise EmuError(f"{host.name}: {what} failed: {(result.stderr or result.stdout).strip()}")
    return result


def _ensure_swarm(conns: dict[str, Connection], hosts: list[Host], progress: Progress,
                  changes: Changes | None = None) -> None:
    changes = changes if changes is not None else Changes()
    by_name = {h.name: h for h in hosts}
    states = dict(zip(by_name, _parallel(lambda h: _swarm_state(conns[h.name], h), hosts)))
    plan = plan_swarm(hosts, states)
    manager = by_name[plan.manager]
    mconn = conns[manager.name]
    changes.swarm_existed, changes.manager = not plan.init, plan.manager
    for name in plan.leave_first:
        changes.left.append(f"{name} was half-joined to a swarm ({states[name].state}) and left it")
        _run(conns[name], docker_command(by_name[name], "swarm leave --force"), timeout=60)
        progress(f"{name}: left a half-joined swarm ({states[name].state})")
    if plan.init:
        changes.swarm_init = manager.name  # first: an init cut short may still have made the swarm
        _check(_run(mconn, docker_command(manager, f"swarm init --advertise-addr {shlex.quote(manager.swarm_address)}"),
                    timeout=60), manager, "docker swarm init")
        progress(f"{manager.name}: swarm initialised ({manager.name} manages it)")
        states[manager.name] = _swarm_state(mconn, manager)
    if plan.members:
        check_members(plan, states, {n.id for n in _swarm_nodes(mconn, manager)})
    if plan.join:
        token = _check(_run(mconn, docker_command(manager, "swarm join-token -q worker"), timeout=30), manager,
                       "docker swarm join-token").stdout.strip()

        def join(name: str) -> None:
            host = by_name[name]
            changes.joined.append(name)  # first: a join that fails or is cut short can leave it pending
            command = (f"swarm join --token {shlex.quote(token)} --advertise-addr {shlex.quote(host.swarm_address)} "
                       f"{shlex.quote(manager.swarm_address)}:2377")
            _check(_run(conns[name], docker_command(host, command), timeout=120), host,
                   f"docker swarm join (to {manager.name} at {manager.swarm_address}:2377)")
            progress(f"{name}: joined the swarm as a worker")

        _parallel(join, plan.join)
        for name in plan.join:
            states[name] = _swarm_state(conns[name], by_name[name])
    node_ids = {name: states[name].node_id for name in by_name}
    # Every host's node ready on the manager; labels say which host a node is (its hostname may not).
    deadline = time.monotonic() + 60
    while True:
        nodes = _swarm_nodes(mconn, manager)
        ready = {n.id for n in nodes if n.state == "ready"}
        missing = [name for name, node_id in node_ids.items() if node_id not in ready]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise EmuError(f"{', '.join(missing)}: not ready in {manager.name}'s swarm after 60 s (docker node ls on "
                           f"{manager.name}); check UDP 4789/7946 and TCP 2377/7946 between the hosts")
        time.sleep(0.5)
    for node_id in stale_nodes(nodes, node_ids, hosts):
        changes.left.append(f"the stale swarm node {node_id[:12]} (an earlier incarnation of a host) was removed "
                            f"from {manager.name}'s swarm")
        _run(mconn, docker_command(manager, f"node rm --force {shlex.quote(node_id)}"), timeout=30)
        progress(f"{manager.name}: removed the stale swarm node {node_id[:12]}")
    labels = {n.id: n.labels.get(HOST_LABEL) for n in nodes}
    for node_id, name in node_label_updates(nodes, node_ids).items():
        changes.labels[node_id] = labels.get(node_id)
        _check(_run(mconn, docker_command(manager, f"node update --label-add {HOST_LABEL}={name} {node_id}"),
                    timeout=30), manager, "docker node update")


def _local_image_ids(images: list[str]) -> dict[str, str]:
    ids = {}
    for tag in images:
        result = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise EmuError(f"the image {tag} is not in this machine's Docker engine, so it cannot be shipped to the "
                           f"hosts: {result.stderr.strip()}")
        ids[tag] = result.stdout.strip()
    return ids


def _remote_image_ids(conn: Connection, host: Host, images: list[str]) -> dict[str, str | None]:
    tags = " ".join(shlex.quote(t) for t in images)
    inspect = docker_command(host, "image inspect --format '{{.Id}}' \"$t\"")
    result = _run(conn, f"for t in {tags}; do printf '%s %s\\n' \"$t\" \"$({inspect} 2>/dev/null)\"; done", timeout=60)
    ids: dict[str, str | None] = {}
    for line in result.stdout.splitlines():
        tag, _, image_id = line.partition(" ")
        ids[tag] = image_id.strip() or None
    return ids


@dataclass(frozen=True)
class Shipment:
    host: str
    images: list[str]
    bytes: int
    seconds: float


def group_shipments(plan: dict[str, list[str]]) -> dict[tuple[str, ...], list[str]]:
    """Hosts that need the same images share one `docker save` (saving is the slow part here: 4 s for the node
    image, where loading takes under 1 s)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for host, images in plan.items():
        groups.setdefault(tuple(images), []).append(host)
    return groups


CHUNK = 1 << 20
USE_OPENSSH = True  # False: always paramiko (tests)


class _Sink:
    """`docker load` on one host, fed over SSH: OpenSSH's client where there is one (three times paramiko's
    throughput here), else a paramiko channel of the host's fabric Connection."""

    def __init__(self, host: Host, conn: Connection, use_openssh: bool):
        self.host = host
        self.sent = 0
        self.error: str | None = None
        self.started = time.monotonic()
        self.seconds = 0.0
        command = docker_command(host, "load -q")
        self.process: subprocess.Popen | None = None
        self.channel = None
        if use_openssh:
            self.process = subprocess.Popen([*openssh_command(host), command], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        else:
            self.channel = conn.client.get_transport().open_session(window_size=16 << 20)
            self.channel.exec_command(command)

    def write(self, chunk: bytes) -> None:
        if self.error:
            return
        try:
            if self.process:
                self.process.stdin.write(chunk)
            else:
                self.channel.sendall(chunk)
            self.sent += len(chunk)
        except (OSError, paramiko.SSHException) as error:
            self.error = _describe(error)

    def close_input(self) -> None:
        """End of the images: docker load goes on to finish (every host's input is closed before any wait)."""
        try:
            if self.process:
                self.process.stdin.close()
            else:
                self.channel.shutdown_write()
        except (OSError, paramiko.SSHException):
            pass

    def finish(self) -> None:
        """Wait for docker load; sets error where it failed."""
        if self.process:
            errors = self.process.stderr.read().decode(errors="replace")
            self.process.stdout.read()
            status = self.process.wait()
        else:
            try:
                errors = self.channel.makefile_stderr("rb").read().decode(errors="replace")
                status = self.channel.recv_exit_status()
            except (OSError, paramiko.SSHException) as error:
                status, errors = -1, _describe(error)
            finally:
                self.channel.close()
        self.seconds = time.monotonic() - self.started
        changed = openssh_host_key_changed(self.host, errors) if status != 0 else None
        if changed and not self.error:
            self.error = str(changed)
        elif status != 0 and not self.error:
            self.error = f"docker load failed ({status}): {errors.strip()[-500:]}"


def openssh_command(host: Host) -> list[str]:
    """OpenSSH's client with the inventory's settings (host keys: accept new, as the fabric connections do)."""
    return ["ssh", *ssh_options(host), "-p", str(host.port), "-l", host.user, host.address]


def ship_images(conns: dict[str, Connection], hosts: list[Host], images: list[str]) -> list[Shipment]:
    """Stream one `docker save IMAGES` from this machine's engine into `docker load` on every host, over SSH."""
    use_openssh = USE_OPENSSH and shutil.which("ssh") is not None
    save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sinks: list[_Sink] = []
    try:
        for host in hosts:
            sinks.append(_Sink(host, conns[host.name], use_openssh))
        assert save.stdout is not None
        while chunk := save.stdout.read(CHUNK):
            for sink in sinks:
                sink.write(chunk)
            if all(sink.error for sink in sinks):
                break
    except BaseException:
        save.kill()
        for sink in sinks:
            if sink.process:
                sink.process.kill()
        raise
    finally:
        save.stdout.close()
    saved = save.wait()
    for sink in sinks:
        sink.close_input()
    for sink in sinks:
        sink.finish()
    if saved != 0:
        raise EmuError(f"docker save {' '.join(images)} failed on this machine: "
                       f"{save.stderr.read().decode(errors='replace').strip()}")
    failures = [f"{sink.host.name}: shipping {', '.join(images)} failed after {sink.sent} bytes: {sink.error}"
                for sink in sinks if sink.error]
    if failures:
        raise EmuError("\n".join(failures))
    return [Shipment(sink.host.name, list(images), sink.sent, sink.seconds) for sink in sinks]


def _ensure_images(conns: dict[str, Connection], hosts: list[Host], images: list[str],
                   progress: Progress, changes: Changes | None = None) -> list[Shipment]:
    if not images:
        return []
    local = _local_image_ids(images)
    remote = dict(zip((h.name for h in hosts), _parallel(lambda h: _remote_image_ids(conns[h.name], h, images), hosts)))
    plan = images_to_ship(local, remote)
    if not plan:
        progress(f"every host has {', '.join(images)}")
        return []
    by_name = {h.name: h for h in hosts}
    started = time.monotonic()
    groups = group_shipments(plan)
    if changes is not None:
        changes.images += list(plan)
    shipments = [s for group in _parallel(lambda item: ship_images(conns, [by_name[n] for n in item[1]],
                                                                    list(item[0])), groups.items()) for s in group]
    for s in shipments:
        progress(f"{s.host}: loaded {', '.join(s.images)} ({s.bytes / 1e6:.0f} MB in {s.seconds:.1f} s)")
    total = sum(s.bytes for s in shipments)
    progress(f"shipped {total / 1e6:.0f} MB to {len(shipments)} host{'s' if len(shipments) != 1 else ''} "
             f"in {time.monotonic() - started:.1f} s")
    return shipments


def _connect_all(hosts: list[Host], timeout: int = SSH_TIMEOUT) -> dict[str, Connection]:
    results = _parallel(lambda h: _try_connect(h, timeout), hosts)
    conns = {h.name: r for h, r in zip(hosts, results) if isinstance(r, Connection)}
    failures = [str(r) for r in results if isinstance(r, EmuError)]
    if failures:
        for conn in conns.values():
            conn.close()
        raise EmuError("\n".join(failures))
    return conns


def _try_connect(host: Host, timeout: int) -> Connection | EmuError:
    try:
        return connect(host, timeout)
    except EmuError as error:
        return error


def prepare_hosts(hosts: list[Host], images: list[str], progress: Progress = print) -> list[Shipment]:
    """Make the hosts ready for a cluster: engines, sysctls, one swarm, images. Idempotent.

    Returns what was shipped (nothing when every host had every image)."""
    if not hosts:
        raise EmuError("no hosts to prepare")
    conns = _connect_all(hosts)
    changes = Changes()
    try:
        by_name = {h.name: h for h in hosts}
        refuse_clashes(hosts, identify_hosts(conns, hosts), "prepare them")
        refuse_denied(conns, hosts)

        def engine(host: Host) -> None:
            if _engine_answers(conns[host.name], host) is None:
                changes.installed.append(host.name)
                _install_engine(conns[host.name], host, progress)
            _ensure_sysctls(conns[host.name], host, progress, changes)

        _gather(_parallel(lambda h: _capture(engine, h), hosts), by_name)
        if changes.installed:  # engines that did not answer before have IDs now
            refuse_clashes(hosts, identify_hosts(conns, hosts), "prepare them")
        _ensure_swarm(conns, hosts, progress, changes)
        return _ensure_images(conns, hosts, images, progress, changes)
    except BaseException as error:
        kept = undo(conns, hosts, changes, progress)
        if isinstance(error, EmuError):
            note = "prepare changed nothing" if changes.empty else "prepare undid its changes"
            if kept:
                note += "; what it could not undo:\n  " + "\n  ".join(kept)
            raise EmuError(f"{error}\n{note}") from None
        for line in kept:
            progress(f"left as is: {line}")
        raise
    finally:
        for conn in conns.values():
            conn.close()


@dataclass
class Changes:
    """What one prepare changed on the hosts, recorded before each change, so that a failed or interrupted
    prepare can put the hosts back as it found them (undo)."""

    installed: list[str] = field(default_factory=list)  # hosts where no engine answered: docker.io installed/started
    sysctls: dict[str, dict[str, int]] = field(default_factory=dict)  # host -> the values before
    swarm_init: str | None = None  # the host that made a new swarm
    swarm_existed: bool = False  # the swarm was there before (its manager was not made by this prepare)
    manager: str | None = None  # the host that manages the swarm
    joined: list[str] = field(default_factory=list)  # hosts that were in no swarm and joined (or tried to)
    labels: dict[str, str | None] = field(default_factory=dict)  # swarm node id -> its io.emu.host label before
    left: list[str] = field(default_factory=list)  # changes that cannot be undone, said as they are
    images: list[str] = field(default_factory=list)  # hosts that were shipped images

    @property
    def empty(self) -> bool:
        return not (self.installed or self.sysctls or self.swarm_init or self.joined or self.labels or self.left
                    or self.images)


def undo(conns: dict[str, Connection], hosts: list[Host], changes: Changes, progress: Progress) -> list[str]:
    """Put back what a prepare changed: hosts it joined leave (and leave no node behind in a swarm that was
    there before), the swarm it made is dissolved, sysctls get their values back. Returns what it could not undo
    (each with how to undo it by hand)."""
    by_name = {h.name: h for h in hosts}
    kept = list(changes.left)
    manager = by_name.get(changes.manager or "")

    def leave(name: str) -> str | None:
        host, conn = by_name[name], conns[name]
        try:
            node_id = _swarm_state(conn, host).node_id
            result = _run(conn, docker_command(host, "swarm leave --force"), timeout=60)
            if result.exited != 0 and "not part of a swarm" not in result.stderr:
                return f"{name} is still in the swarm ({result.stderr.strip()}): docker swarm leave --force there"
            if result.exited == 0:
                progress(f"{name}: left the swarm this prepare had put it in")
            if changes.swarm_existed and manager is not None and node_id:
                remove = f"node rm --force {shlex.quote(node_id)}"
                _run(conns[manager.name], docker_command(manager, remove), timeout=30)
        except Exception as error:  # noqa: BLE001 - said, not raised: the other undos go on
            return f"{name} may still be in the swarm ({_describe(error)}): docker swarm leave --force there"
        return None

    kept += [r for r in _parallel(leave, [n for n in changes.joined if n in conns]) if r]
    if changes.swarm_existed and manager is not None:
        for node_id, before in changes.labels.items():
            label = f"--label-add {HOST_LABEL}={shlex.quote(before)}" if before else f"--label-rm {HOST_LABEL}"
            update = f"node update {label} {shlex.quote(node_id)}"
            try:
                result = _run(conns[manager.name], docker_command(manager, update), timeout=30)
                ok = result.exited == 0 or "not found" in result.stderr  # a host that joined, left and is gone
            except Exception:  # noqa: BLE001
                ok = False
            if not ok:
                kept.append(f"the swarm node {node_id[:12]} keeps the label {HOST_LABEL} prepare gave it: "
                            f"docker {update} on {manager.name} puts it back")
    if changes.swarm_init and changes.swarm_init in conns:
        result = leave(changes.swarm_init)
        if result:
            kept.append(result.replace("may still be in the swarm", "may still manage the swarm prepare made"))
    for name, before in changes.sysctls.items():
        settings = " ".join(f"{k}={v}" for k, v in before.items())
        try:
            result = _run(conns[name], f"{_sudo(by_name[name])}sysctl -q -w {settings}", timeout=20)
            ok = result.exited == 0
        except Exception:  # noqa: BLE001
            ok = False
        if ok:
            progress(f"{name}: set {settings} again")
        else:
            kept.append(f"{name}: sysctls prepare changed: sysctl -w {settings} there puts them back")
    for name in changes.installed:
        kept.append(f"{name}: prepare installed or started Docker there (Debian's docker.io); it stays "
                    "(apt-get remove docker.io undoes it)")
    if changes.images:
        kept.append(f"{', '.join(changes.images)}: images prepare loaded stay (docker image rm removes them)")
    return kept


def refuse_denied(conns: dict[str, Connection], hosts: list[Host]) -> None:
    """EmuError naming every host whose SSH user may not use the engine's socket (before anything changes)."""

    def check(host: Host) -> str | None:
        result = _run(conns[host.name], access_command(host), timeout=20)
        denied = access_denied(host, parse_values(result.stdout))
        return f"{host.name}: {denied[0]}; fix: {denied[1]}" if denied else None

    problems = [p for p in _parallel(check, hosts) if p]
    if problems:
        raise EmuError("\n".join(problems))


IDENTITY_TIMEOUT = 60  # s: `docker info` waits while a restarted engine rejoins its swarm (20 s was too short)


def identify_hosts(conns: dict[str, Connection], hosts: list[Host]) -> dict[str, Identity]:
    """Every host's engine ID, swarm node ID and machine-id, over SSH (parts that do not answer stay "")."""

    def identify(host: Host) -> Identity:
        from invoke.exceptions import CommandTimedOut

        conn = conns[host.name]
        command = docker_command(host, IDENTITY_COMMAND)
        try:
            engine = _run(conn, command, timeout=IDENTITY_TIMEOUT)
            machine = _run(conn, MACHINE_ID_COMMAND, timeout=IDENTITY_TIMEOUT)
        except CommandTimedOut:
            raise EmuError(
                f"host {host.name}: `{command}` did not answer within {IDENTITY_TIMEOUT} s (an engine that has "
                "just started answers once it has rejoined its swarm); nothing was changed: try again"
            ) from None
        return parse_identity(engine.stdout if engine.exited == 0 else "",
                              machine.stdout if machine.exited == 0 else "")

    return dict(zip((h.name for h in hosts), _parallel(identify, hosts)))


def _capture(function, host: Host):
    try:
        function(host)
    except EmuError as error:
        return error
    except Exception as error:  # SSH dropped, a command timed out
        return EmuError(f"{host.name}: {_describe(error)}")
    return None


def _gather(results: list, by_name: dict) -> None:
    errors = [str(r) for r in results if r is not None]
    if errors:
        raise EmuError("\n".join(errors))


def leave_swarm(hosts: list[Host], progress: Progress = print) -> None:
    """Every host leaves its swarm (workers first, then managers). Hosts in no swarm are fine."""
    conns = _connect_all(hosts)
    try:
        states = dict(zip((h.name for h in hosts), _parallel(lambda h: _capture_state(conns[h.name], h), hosts)))

        def leave(host: Host) -> None:
            result = _run(conns[host.name], docker_command(host, "swarm leave --force"), timeout=60)
            if result.exited != 0 and "not part of a swarm" not in result.stderr:
                raise EmuError(f"{host.name}: docker swarm leave failed: {result.stderr.strip()}")
            if result.exited == 0:
                progress(f"{host.name}: left the swarm")

        workers = [h for h in hosts if not (isinstance(states[h.name], SwarmState) and states[h.name].manager)]
        managers = [h for h in hosts if h not in workers]
        errors = [str(s) for s in states.values() if isinstance(s, EmuError)]
        for group in (workers, managers):
            errors += [str(r) for r in _parallel(lambda h: _capture(leave, h), group) if r is not None]
        if errors:
            raise EmuError("\n".join(errors))
    finally:
        for conn in conns.values():
            conn.close()


def _capture_state(conn: Connection, host: Host) -> SwarmState | EmuError:
    try:
        return _swarm_state(conn, host)
    except EmuError as error:
        return error
