"""A lab of N real Docker hosts on this one machine, for multi-host (Docker Swarm) tests.

Host i is a network namespace ``emuh<i>`` joined to the bridge ``emuhbr0``
(10.213.0.1/24) by a veth pair, at 10.213.0.(10+i), with its own dockerd
(socket /run/emu-hostlab/h<i>/docker.sock, label io.emu.testhost=1) and its
own sshd on port 22 that lets root (and the non-root users emu-docker, in the
group docker, and emu-plain, not in it) in with the lab's client key. The hosts
share this machine's file system and processes; only the network is theirs,
and the /etc/machine-id that SSH sessions see (each sshd runs in a mount
namespace of its own with the host's machine-id bound over it), so that emu
tells the hosts apart as it tells machines apart.

    python -m tests.hostlab up [N]     # default 3; re-running with hosts up is quick
    python -m tests.hostlab inventory  # an emu inventory (hosts:) for the hosts that are up
    python -m tests.hostlab down       # everything but the daemons' data roots (the image cache)

In pytest: ``from hostlab import hostlab`` in a conftest.py gives the
session fixture ``hostlab`` (a :class:`Lab` of 3 hosts, torn down at the end).

Every function that drives a lab daemon first checks that the daemon's labels
carry io.emu.testhost=1, so the main engine is never driven by mistake.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import uuid
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

LAB_DIR = Path("/var/lib/emu-hostlab")  # kept between runs: data roots (image cache), keys
RUN_DIR = Path("/run/emu-hostlab")  # removed by down
SSH_DIR = LAB_DIR / "ssh"
CLIENT_KEY = SSH_DIR / "id_ed25519"
AUTHORIZED_KEYS = LAB_DIR / "authorized_keys"  # readable by the lab's non-root users (sshd reads it as them)
KNOWN_HOSTS = RUN_DIR / "known_hosts"
BRIDGE = "emuhbr0"
PREFIX = "10.213.0"
GATEWAY = f"{PREFIX}.1"
NETNS_PREFIX = "emuh"
LABEL = "io.emu.testhost=1"
MACHINE_ID = Path("/etc/machine-id")
FORWARD_RULE = ["-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]
MAX_HOSTS = 99
# Non-root SSH users (this machine's, so every host's) -> their groups: one may use the engines (group docker,
# whose sockets are root:docker 660), one may not.
USERS = {"emu-docker": ["docker"], "emu-plain": []}
DOCKERD_TIMEOUT = 60.0
SSHD_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0

# command -> Debian package that provides it
PACKAGES = {
    "dockerd": "docker.io",
    "docker": "docker.io",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "iptables": "iptables",
    "ip": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "useradd": "passwd",
}


class LabError(RuntimeError):
    """The lab could not be brought up or torn down."""


@dataclass(frozen=True)
class LabHost:
    """Host i of the lab: names, addresses and paths (nothing here touches the system)."""

    index: int

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.index}"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def address(self) -> str:
        return f"{PREFIX}.{10 + self.index}"

    @property
    def veth(self) -> str:
        return f"{self.netns}v"  # root side; the namespace side is eth0

    @property
    def run_dir(self) -> Path:
        return RUN_DIR / self.name

    @property
    def data_root(self) -> Path:
        return LAB_DIR / self.name

    @property
    def socket(self) -> str:
        return str(self.run_dir / "docker.sock")

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def dockerd_pidfile(self) -> Path:
        return self.run_dir / "docker.pid"

    @property
    def sshd_pidfile(self) -> Path:
        return self.run_dir / "sshd.pid"

    @property
    def host_key(self) -> Path:
        return SSH_DIR / f"ssh_host_{self.name}_ed25519_key"

    @property
    def key_json(self) -> Path:
        return LAB_DIR / f"{self.name}-key.json"  # the engine's own identity (not /etc/docker/key.json)

    @property
    def machine_id(self) -> Path:
        return LAB_DIR / f"{self.name}-machine-id"  # bound over /etc/machine-id for the host's SSH sessions

    @property
    def log(self) -> Path:
        return Path(f"/var/log/emu-hostlab-{self.name}.log")

    @property
    def sshd_log(self) -> Path:
        return Path(f"/var/log/emu-hostlab-{self.name}-sshd.log")

    def dockerd_command(self) -> list[str]:
        return [
            "nsenter",
            f"--net={self.netns_path}",
            "dockerd",
            "--data-root", str(self.data_root),
            "--exec-root", str(self.run_dir / "exec"),
            "--pidfile", str(self.dockerd_pidfile),
            "-H", self.docker_host,
            "--bip", f"172.31.{self.index}.1/24",
            "--label", LABEL,
            # Not the main engine's /etc/docker/daemon.json, nor its key.json.
            "--config-file", str(self.run_dir / "daemon.json"),
            # Bridge networks (docker_gwbridge too) from a pool of this host's own.
            "--default-address-pool", f"base=10.{100 + self.index}.0.0/16,size=24",
        ]

    def sshd_command(self) -> list[str]:
        options = {
            "ListenAddress": f"{self.address}:22",
            "PidFile": str(self.sshd_pidfile),
            "HostKey": str(self.host_key),
            "AuthorizedKeysFile": str(AUTHORIZED_KEYS),
            "PermitRootLogin": "prohibit-password",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "UsePAM": "no",
            "MaxSessions": "64",
            "MaxStartups": "100:30:200",
            "Subsystem": "sftp internal-sftp",
            # The hosts share this machine's file system: /var/run/docker.sock is the main
            # engine. A plain `docker` over SSH must reach the host's own engine.
            "SetEnv": f"DOCKER_HOST={self.docker_host}",
        }
        sshd = [shutil.which("sshd") or "/usr/sbin/sshd", "-f", "/dev/null", "-E", str(self.sshd_log)]
        for key, value in options.items():
            sshd += ["-o", f"{key}={value}"]
        # A mount namespace of its own (mounts of this machine still reach it): the host's own machine-id.
        bind = f"mount --bind {shlex.quote(str(self.machine_id))} /etc/machine-id && " if MACHINE_ID.exists() else ""
        return ["nsenter", f"--net={self.netns_path}", "unshare", "--mount", "--propagation", "slave",
                "sh", "-c", f"{bind}exec {shlex.join(sshd)}"]


@dataclass(frozen=True)
class Lab:
    """The hosts that are up, and how to reach them."""

    hosts: list[LabHost]

    def inventory(self) -> dict:
        return {"hosts": [inventory_entry(host) for host in self.hosts]}

    def inventory_yaml(self) -> str:
        return inventory_yaml(self.hosts)

    def models(self) -> list:
        """The hosts as emu.api.topology.model.Host objects."""
        from emu.api.topology.model import Host

        return [Host.model_validate(entry) for entry in self.inventory()["hosts"]]

    def host(self, name: str) -> LabHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)


# -- inventory -------------------------------------------------------------------------------------------------


def inventory_entry(host: LabHost, user: str = "root") -> dict:
    return {
        "name": host.name,
        "address": host.address,
        "user": user,
        "sshKey": str(CLIENT_KEY),
        "knownHosts": str(KNOWN_HOSTS),
        "engine": "ssh",
        "dockerSocket": host.socket,
    }


def inventory_yaml(hosts: list[LabHost]) -> str:
    import yaml

    return yaml.safe_dump({"hosts": [inventory_entry(h) for h in hosts]}, sort_keys=False)


def inventory() -> str:
    """The inventory YAML of the hosts that are up now."""
    return inventory_yaml(running_hosts())


# -- small helpers ---------------------------------------------------------------------------------------------


def _run(command: list[str], check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return result


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is as good as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _read_pid(pidfile: Path, must_contain: str) -> int | None:
    """The pid in pidfile if that process lives and its command line mentions must_contain; a stale file is removed."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    if _pid_alive(pid) and any(must_contain in arg for arg in _cmdline(pid)):
        return pid
    pidfile.unlink(missing_ok=True)
    return None


def _processes_mentioning(text: str, name: str) -> list[int]:
    """Pids of live processes called name whose command line mentions text (for pid files lost with /run)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = _cmdline(int(entry.name))
        if args and os.path.basename(args[0]) == name and any(text in arg for arg in args):
            found.append(int(entry.name))
    return found


def _stop(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while _pid_alive(pid):
        time.sleep(0.1)


def _netns_list() -> list[str]:
    result = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _link_exists(name: str, netns: str | None = None) -> bool:
    command = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", name]
    return _run(command, check=False).returncode == 0


# -- packages --------------------------------------------------------------------------------------------------


def ensure_packages(progress=print) -> None:
    """Install (Debian/Ubuntu, as root) what the lab needs, as scripts/ensure-docker.sh does for the engine."""
    missing = sorted({pkg for cmd, pkg in PACKAGES.items() if not _which(cmd)})
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise LabError(f"the host lab needs {', '.join(missing)}; install them (Debian/Ubuntu packages) and retry")
    progress(f"hostlab: installing {' '.join(missing)} from Debian's packages")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "update", "-qq"], env=env, timeout=600)
    # No service starts at install (no systemd here, and the lab starts its own daemons).
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env, timeout=600)
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)


def _which(command: str) -> str | None:
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin:/usr/bin:/bin")


# -- keys ------------------------------------------------------------------------------------------------------


def ensure_keys(hosts: list[LabHost]) -> None:
    SSH_DIR.mkdir(parents=True, exist_ok=True)
    SSH_DIR.chmod(0o700)
    if not CLIENT_KEY.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "emu-hostlab", "-f", str(CLIENT_KEY)])
    public = Path(f"{CLIENT_KEY}.pub").read_text().strip()
    if not AUTHORIZED_KEYS.exists() or AUTHORIZED_KEYS.read_text().strip() != public:
        AUTHORIZED_KEYS.write_text(public + "\n")
    AUTHORIZED_KEYS.chmod(0o644)
    lines = []
    for host in hosts:
        if not host.host_key.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"emu-hostlab-{host.name}",
                  "-f", str(host.host_key)])
        key_type, key = Path(f"{host.host_key}.pub").read_text().split()[:2]
        lines.append(f"{host.address} {key_type} {key}\n")
        if not host.machine_id.exists():
            host.machine_id.write_text(uuid.uuid4().hex + "\n")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    KNOWN_HOSTS.write_text("".join(lines))


# -- users -----------------------------------------------------------------------------------------------------


def ensure_users() -> None:
    """The non-root users of USERS, with no home and no password (their account is not locked: sshd refuses a
    key for a locked one), in their groups."""
    for user, groups in USERS.items():
        if _run(["getent", "passwd", user], check=False).returncode != 0:
            for group in groups:
                _run(["groupadd", "-f", group])
            _run(["useradd", "-M", "-d", "/", "-s", "/bin/sh", *(["-G", ",".join(groups)] if groups else []), user])
            _run(["usermod", "-p", "*", user])


def remove_users() -> None:
    for user in USERS:
        if _run(["getent", "passwd", user], check=False).returncode == 0:
            _run(["userdel", user], check=False)


# -- network ---------------------------------------------------------------------------------------------------


def ensure_bridge() -> None:
    if not _link_exists(BRIDGE):
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    _run(["ip", "addr", "replace", f"{GATEWAY}/24", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    ensure_forward_rules()


def _chains() -> list[str]:
    result = _run(["iptables", "-S"], check=False)
    return [line.split()[1] for line in result.stdout.splitlines() if line.startswith(("-N ", "-P "))]


def ensure_forward_rules() -> None:
    """Docker's FORWARD policy is DROP and bridged frames pass iptables (br_netfilter): let emuhbr0 forward."""
    chains = _chains()
    for chain in ("FORWARD", "DOCKER-USER"):
        if chain in chains and _run(["iptables", "-C", chain, *FORWARD_RULE], check=False).returncode != 0:
            _run(["iptables", "-I", chain, "1", *FORWARD_RULE])


def remove_forward_rules() -> None:
    chains = _chains()
    for chain in ("FORWARD", "DOCKER-USER"):
        while chain in chains and _run(["iptables", "-D", chain, *FORWARD_RULE], check=False).returncode == 0:
            pass


def ensure_netns(host: LabHost) -> None:
    if host.netns not in _netns_list():
        _run(["ip", "netns", "add", host.netns])
    if not _link_exists("eth0", host.netns):
        if _link_exists(host.veth):  # half of an interrupted run
            _run(["ip", "link", "del", host.veth])
        _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
    _run(["ip", "link", "set", host.veth, "master", BRIDGE, "up"])
    batch = (
        "link set lo up\n"
        f"addr replace {host.address}/24 dev eth0\n"
        "link set eth0 up\n"
        f"route replace default via {GATEWAY}\n"
    )
    _run(["ip", "-n", host.netns, "-batch", "-"], input=batch)


@contextlib.contextmanager
def unreachable_from_controller(host: LabHost):
    """This machine's connections to host's sshd refused (in host's namespace): only the other hosts reach it, as a
    host behind a bastion. Refused with a TCP reset, not dropped: a direct SSH fails at once instead of after emu's
    SSH connect timeout (5 s a try). The rule goes with the namespace (lab down) if the block is cut short."""
    rule = ["INPUT", "-s", GATEWAY, "-p", "tcp", "--dport", "22", "-j", "REJECT", "--reject-with", "tcp-reset"]
    _run(["ip", "netns", "exec", host.netns, "iptables", "-I", *rule])
    try:
        yield
    finally:
        _run(["ip", "netns", "exec", host.netns, "iptables", "-D", *rule], check=False)


# -- dockerd ---------------------------------------------------------------------------------------------------


def docker(host: LabHost, *args: str, check: bool = True, timeout: float = 60, guard: bool = True,
           **kwargs) -> subprocess.CompletedProcess:
    """Run the docker CLI against host's own engine (after checking it is a lab engine)."""
    if guard:
        check_guard(host)
    return _run(["docker", "-H", host.docker_host, *args], check=check, timeout=timeout, **kwargs)


def engine_info(host: LabHost, timeout: float = 5) -> dict | None:
    """The engine's `docker info` as a dict, or None where it does not answer."""
    if not host.socket.startswith(str(RUN_DIR) + "/"):
        raise LabError(f"{host.socket} is not a lab socket")
    try:
        result = _run(["docker", "-H", host.docker_host, "info", "--format", "{{json .}}"], check=False,
                      timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        return None
    try:
        info = json.loads(result.stdout)
    except json.JSONDecodeError:
        return None
    return info if info.get("ServerVersion") else None


def check_guard(host: LabHost) -> dict:
    """The engine's info, after making sure it is a lab engine (label io.emu.testhost=1), never the main one."""
    info = engine_info(host)
    if info is None:
        raise LabError(f"{host.name}: no Docker engine answers at {host.socket}")
    if LABEL not in (info.get("Labels") or []):
        raise LabError(f"{host.name}: the engine at {host.socket} is not a lab engine (no label {LABEL}); refusing")
    return info


def dockerd_pid(host: LabHost) -> int | None:
    pid = _read_pid(host.dockerd_pidfile, str(host.data_root))
    if pid is None:
        found = _processes_mentioning(f"--data-root={host.data_root}", "dockerd") or [
            p for p in _processes_mentioning(str(host.data_root), "dockerd")
            if str(host.data_root) in _cmdline(p)
        ]
        pid = found[0] if found else None
    return pid


def start_dockerd(host: LabHost, keep_swarm: bool = False) -> bool:
    """Start host's dockerd unless it runs; True if started. keep_swarm: as an engine that restarts (a reboot)
    does, with its swarm membership and containers (see restart_engine)."""
    if dockerd_pid(host) is not None:
        return False
    host.run_dir.mkdir(parents=True, exist_ok=True)
    _clean_exec_root(host)
    host.data_root.mkdir(parents=True, exist_ok=True)
    # The data root is kept for its images; a swarm of an earlier run is not (its peers are gone).
    if not keep_swarm:
        shutil.rmtree(host.data_root / "swarm", ignore_errors=True)
    # Its own identity (the engine ID): the main engine's /etc/docker/key.json is not shared.
    (host.run_dir / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(host.key_json)}))
    with open(host.log, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} emu hostlab starts dockerd\n".encode())
        log.flush()
        subprocess.Popen(host.dockerd_command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)
    return True


def _clean_exec_root(host: LabHost) -> None:
    """What a killed dockerd leaves in its exec root: mounts (network namespaces) and a containerd."""
    exec_root = host.run_dir / "exec"
    for pid in _processes_mentioning(str(exec_root), "containerd"):
        _stop(pid, timeout=10)
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(exec_root) + "/")), key=len, reverse=True):
        _run(["umount", "-l", mount], check=False)
    shutil.rmtree(exec_root, ignore_errors=True)


def wait_dockerd(host: LabHost, timeout: float = DOCKERD_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = engine_info(host, timeout=5)
        if info is not None:
            return check_guard(host)
        if dockerd_pid(host) is None and time.monotonic() > deadline - timeout + 2:
            break
        time.sleep(0.2)
    tail = host.log.read_text(errors="replace").splitlines()[-15:] if host.log.exists() else []
    raise LabError(f"{host.name}: dockerd did not answer within {timeout:.0f} s; {host.log}:\n" + "\n".join(tail))


def stop_dockerd(host: LabHost, clean: bool = False) -> None:
    """Stop host's dockerd (and wait for it). clean: first leave the swarm and remove every container."""
    pid = dockerd_pid(host)
    if pid is None:
        _clean_exec_root(host)
        return
    if clean and engine_info(host) is not None:
        check_guard(host)
        clean_engine(host)
    _stop(pid)
    host.dockerd_pidfile.unlink(missing_ok=True)
    _clean_exec_root(host)


def stop_engine(host: LabHost) -> None:
    """Stop host's dockerd as a machine that shuts down does: the engine stops its containers and ends, its
    swarm membership, containers and networks stay, /run's part (the exec root) goes. start_engine brings it
    back. Only a lab engine (check_guard), never this machine's."""
    check_guard(host)
    stop_dockerd(host)


def start_engine(host: LabHost, timeout: float = DOCKERD_TIMEOUT) -> dict:
    """Start host's dockerd again after stop_engine, as a machine that boots does: its containers with a restart
    policy come back, it rejoins its swarm. Returns its `docker info` once it answers."""
    start_dockerd(host, keep_swarm=True)
    return wait_dockerd(host, timeout)


def clean_engine(host: LabHost) -> None:
    """Leave the swarm, remove containers, networks and volumes: all but the images."""
    docker(host, "swarm", "leave", "--force", check=False)
    ids = docker(host, "ps", "-aq", check=False).stdout.split()
    if ids:
        docker(host, "rm", "-f", "-v", *ids, check=False, timeout=120)
    docker(host, "network", "prune", "-f", check=False)
    docker(host, "volume", "prune", "-f", check=False)


# -- sshd ------------------------------------------------------------------------------------------------------


def sshd_pid(host: LabHost) -> int | None:
    return _read_pid(host.sshd_pidfile, "sshd") or next(
        iter(_processes_mentioning(f"PidFile={host.sshd_pidfile}", "sshd")), None
    )


def start_sshd(host: LabHost) -> bool:
    if sshd_pid(host) is not None:
        return False
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    host.run_dir.mkdir(parents=True, exist_ok=True)
    _run(host.sshd_command())  # sshd detaches and writes its pid file
    return True


def wait_sshd(host: LabHost, timeout: float = SSHD_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host.address, 22), timeout=1) as conn:
                if conn.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise LabError(f"{host.name}: sshd does not answer on {host.address}:22; see {host.sshd_log}")


def stop_sshd(host: LabHost) -> None:
    pid = sshd_pid(host)
    if pid is not None:
        _stop(pid)
    host.sshd_pidfile.unlink(missing_ok=True)


# -- locks -----------------------------------------------------------------------------------------------------

OP_LOCK = LAB_DIR / ".lock"  # held while one process brings hosts up or down
SESSION_LOCK = LAB_DIR / ".session-lock"  # held by a test session using the lab (see session())


@contextlib.contextmanager
def _flock(path: Path, timeout: float, what: str, progress=print):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as file:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"the host lab is busy ({what}, {path} held) for {timeout:.0f} s") from None
                if not told:
                    progress(f"hostlab: waiting for another process using the lab ({what})")
                    told = True
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


# -- up / down -------------------------------------------------------------------------------------------------


def running_hosts() -> list[LabHost]:
    """The hosts whose namespace exists, in order."""
    indexes = sorted(int(m.group(1)) for name in _netns_list() if (m := re.fullmatch(rf"{NETNS_PREFIX}(\d+)", name)))
    return [LabHost(i) for i in indexes]


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the host lab needs root (network namespaces, dockerd, sshd)")


def up(n: int = 3, progress=print) -> Lab:
    """Bring up hosts h1..hn (and take down any beyond n). Quick when they are up already."""
    _require_root()
    with _flock(OP_LOCK, 600, "up/down", progress):
        return _up(n, progress)


def _up(n: int, progress) -> Lab:
    if not 1 <= n <= MAX_HOSTS:
        raise LabError(f"the lab has 1 to {MAX_HOSTS} hosts, not {n}")
    ensure_packages(progress)
    hosts = [LabHost(i) for i in range(1, n + 1)]
    for extra in running_hosts():
        if extra.index > n:
            _down_host(extra)
    ensure_keys(hosts)
    ensure_users()
    ensure_bridge()
    for host in hosts:
        ensure_netns(host)
    started = [host for host in hosts if start_dockerd(host)]
    for host in hosts:
        start_sshd(host)
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        list(pool.map(wait_dockerd, hosts))
        list(pool.map(wait_sshd, hosts))
    if started:
        # Leftovers of an interrupted run (containers, networks); the images stay.
        with ThreadPoolExecutor(max_workers=len(started)) as pool:
            list(pool.map(clean_engine, started))
        progress(f"hostlab: started dockerd on {', '.join(h.name for h in started)}")
    return Lab(hosts)


def _down_host(host: LabHost) -> None:
    stop_sshd(host)
    stop_dockerd(host, clean=True)
    if host.netns in _netns_list():
        # What lives on in the namespace: SSH sessions (and their commands), containerd shims.
        for _ in range(2):
            pids = [int(p) for p in _run(["ip", "netns", "pids", host.netns], check=False).stdout.split()]
            for pid in pids:
                _stop(pid, timeout=5)
        _run(["ip", "netns", "del", host.netns], check=False)
    if _link_exists(host.veth):
        _run(["ip", "link", "del", host.veth], check=False)
    shutil.rmtree(host.run_dir, ignore_errors=True)


def down(progress=print) -> None:
    """Stop every lab host's sshd and dockerd, remove namespaces, bridge, rules and /run/emu-hostlab."""
    _require_root()
    with _flock(OP_LOCK, 600, "up/down", progress):
        _down(progress)


def _down(progress) -> None:
    hosts = {h.index: h for h in running_hosts()}
    if RUN_DIR.exists():
        for entry in RUN_DIR.iterdir():
            if m := re.fullmatch(r"h(\d+)", entry.name):
                hosts.setdefault(int(m.group(1)), LabHost(int(m.group(1))))
    for pid in _processes_mentioning("--data-root", "dockerd"):
        args = _cmdline(pid)
        for arg in args:
            if m := re.fullmatch(rf"{re.escape(str(LAB_DIR))}/h(\d+)", arg):
                hosts.setdefault(int(m.group(1)), LabHost(int(m.group(1))))
    ordered = [hosts[i] for i in sorted(hosts)]
    if ordered:
        with ThreadPoolExecutor(max_workers=len(ordered)) as pool:
            list(pool.map(_down_host, ordered))
    if _link_exists(BRIDGE):
        _run(["ip", "link", "del", BRIDGE], check=False)
    remove_forward_rules()
    remove_users()
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    if ordered:
        progress(f"hostlab: {', '.join(h.name for h in ordered)} down")


_session_depth = 0


@contextlib.contextmanager
def session(n: int = 3, progress=print, wait: float = 1800):
    """The lab for one user at a time: waits for other sessions (another pytest run), brings n hosts up,
    and takes them down at the end, even on failure (EMU_KEEP_HOSTLAB=1 leaves them up)."""
    global _session_depth
    _require_root()
    if _session_depth:  # nested in this process (a module fixture inside the session one): share it
        yield up(n, progress)
        return
    with _flock(SESSION_LOCK, wait, "a test session", progress):
        _session_depth += 1
        try:
            try:
                lab = up(n, progress)
            except BaseException:
                down(progress)
                raise
            try:
                yield lab
            finally:
                if not os.environ.get("EMU_KEEP_HOSTLAB"):
                    down(progress)
        finally:
            _session_depth -= 1


def hostlab_fixture(n: int = 3):
    """Generator for a pytest fixture: the lab up for the session, down at its end (even on failure)."""
    with session(n, progress=lambda message: None) as lab:
        yield lab


try:
    import pytest
except ImportError:  # the CLI needs no pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def hostlab():
        """A lab of 3 Docker hosts (Lab): up for the session, down at its end. Skipped where not root."""
        if os.geteuid() != 0:
            pytest.skip("the host lab needs root")
        yield from hostlab_fixture(3)


# -- CLI -------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hostlab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="bring up N hosts (default 3)")
    up_parser.add_argument("n", nargs="?", type=int, default=3)
    sub.add_parser("down", help="take every lab host down (data roots stay)")
    sub.add_parser("inventory", help="print an emu inventory of the hosts that are up")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            started = time.monotonic()
            lab = up(args.n, progress=lambda m: print(m, file=sys.stderr))
            print(f"hostlab: {len(lab.hosts)} hosts up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        elif args.command == "down":
            down(progress=lambda m: print(m, file=sys.stderr))
        else:
            hosts = running_hosts()
            if not hosts:
                print("hostlab: no hosts are up (python -m tests.hostlab up)", file=sys.stderr)
                return 1
            sys.stdout.write(inventory_yaml(hosts))
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
