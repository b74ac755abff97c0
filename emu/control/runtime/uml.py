"""Nodes with a kernel of their own: User-mode Linux guests (the foundation of a `uml` runtime).

Debian's `user-mode-linux` package is a Linux 6.1 kernel that runs as an
ordinary host process (no KVM, no Docker engine) and ships the modules a
node needs that the host kernel may lack: ip_vs and its schedulers, dummy,
sch_netem, br_netfilter. This module makes and runs such guests:

- `make_rootfs`: an ext4 image of emu's node image (exported with Docker),
  with the UML kernel's modules in /lib/modules, emu's init and the command
  server. Made once per node image tag and kernel, then cached.
- each guest boots that image read-only under its own copy-on-write file
  (`ubd0=COW,IMAGE`): tens of KB a guest, made in no time, and guests never
  write into each other or the image. (Measured against a hostfs root: the
  image needs a 500 MB copy a guest to be as separate, and Python starts 1.6x
  slower from hostfs, whose every stat is a host system call.)
- `ensure_bridge` / `make_tap`: a host bridge is the guests' network; each
  guest has a tap device on it, seen inside as `vec0`, which init renames eth0.
- `Guest.run` runs a command inside through a small command server the
  guest's init starts on its address (emu/control/runtime/umlguest.py), with the
  signature of subprocess.run, so anything that takes a command runner (the
  proxiers' apply) drives the guest's kernel unchanged.
- `Guest.shutdown` / `remove_guest` leave no process, tap or file behind,
  also for a guest whose boot failed or whose process was killed.
- a guest whose kernel was killed from outside is not `guest_running` (its
  helper processes live on, so the process group does not say), and
  `Guest.boot(keep_disk=True)` boots it again on its own disk (`stop_guest`
  clears what the killed one left first, its disk kept).

Everything here needs root on a Linux host; `require_uml` says what is
missing and how to get it (scripts/ensure-uml.sh).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from emu.errors import EmuError
from emu.control.runtime import umlguest

UML_BINARY = Path("/usr/bin/linux.uml")
UML_MODULES = Path("/usr/lib/uml/modules")
STATE_DIR = Path(os.environ.get("EMU_UML_DIR") or "/var/lib/emu/uml")
ENSURE_SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "ensure-uml.sh"
IMAGE_SIZE = "2G"  # sparse: the node image fills about 550 MB of it
INIT = "/sbin/emu-uml-init"
GUEST_SERVER = "/usr/local/lib/emu/umlguest.py"

# PID 1 of every guest. It reads its address from the kernel command line
# (emu.* parameters, which the kernel leaves to init), brings up vec0 as eth0, starts
# the command server and then only reaps: init exiting would panic the guest.
INIT_SCRIPT = r"""#!/bin/sh
# emu's init for User-mode Linux guests (made by emu/control/runtime/uml.py).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -o remount,rw /
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns /var/log/emu
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    emu.name=*) name=${arg#emu.name=} ;;
    emu.address=*) address=${arg#emu.address=} ;;
    emu.gateway=*) gateway=${arg#emu.gateway=} ;;
    emu.boot=*) boot=${arg#emu.boot=} ;;
  esac
done
[ -n "$name" ] && hostname "$name"
ip link set lo up
ip link set vec0 name eth0  # a node's interface is eth0, as in a container
ip link set eth0 up
ip addr add "$address" dev eth0
[ -n "$gateway" ] && ip route add default via "$gateway"
python3 __SERVER__ "${address%/*}" "$boot" >/var/log/emu/umlguest.log 2>&1 &
echo "emu-uml-init: $name up at $address"
while :; do wait; sleep 1; done
""".replace("__SERVER__", GUEST_SERVER)


class UmlError(EmuError):
    """User-mode Linux is missing here, or a guest failed."""


def run_host(argv: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """A command on the host; with check, a failure is a UmlError naming it."""
    result = subprocess.run(argv, check=False, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise UmlError(f"`{' '.join(argv)}` failed (exit {result.returncode}): {result.stderr.strip()[:1000]}")
    return result


def require_uml() -> str:
    """The UML kernel's version (its modules' directory); UmlError with the fix when it cannot run here."""
    if sys.platform != "linux":
        raise UmlError(f"User-mode Linux runs on Linux hosts only (this is {sys.platform})")
    if os.geteuid() != 0:
        raise UmlError("User-mode Linux guests need root here (tap devices, a host bridge); run emu as root")
    if not UML_BINARY.exists() or not UML_MODULES.is_dir():
        raise UmlError(f"{UML_BINARY} is not installed; run {ENSURE_SCRIPT} as root (Debian's user-mode-linux)")
    versions = sorted(p.name for p in UML_MODULES.iterdir() if p.is_dir())
    if not versions:
        raise UmlError(f"{UML_MODULES} holds no kernel modules; reinstall Debian's user-mode-linux")
    return versions[-1]


def ensure_uml() -> str:
    """Install User-mode Linux where it is missing (scripts/ensure-uml.sh), then require_uml()."""
    with contextlib.suppress(UmlError):
        return require_uml()
    if sys.platform == "linux" and os.geteuid() == 0 and not UML_BINARY.exists():
        result = subprocess.run(["bash", str(ENSURE_SCRIPT)], check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise UmlError(f"{ENSURE_SCRIPT} failed:\n{result.stderr.strip()[-2000:]}")
    return require_uml()


# --- the root filesystem -------------------------------------------------


def _guest_files_hash() -> str:
    digest = hashlib.sha256(INIT_SCRIPT.encode())
    digest.update(Path(umlguest.__file__).read_bytes())
    return digest.hexdigest()[:8]


def rootfs_path(image: str, cache_dir: Path | None = None) -> Path:
    """Where the image for a node image tag lives: named by the tag, the UML
    kernel and emu's guest files, so a change to any of them makes a new one."""
    kernel = require_uml()
    safe = image.replace("/", "_").replace(":", "_")
    return (cache_dir or STATE_DIR / "rootfs") / f"{safe}-uml{kernel}-{_guest_files_hash()}.img"


def make_rootfs(image: str, cache_dir: Path | None = None, api=None, progress=lambda message: None) -> Path:
    """An ext4 image of the node image `image` for UML guests (made once, then reused).

    The image's filesystem is exported with Docker (docker create + export), the
    UML kernel's modules are copied into /lib/modules, emu's init and command
    server are added, and `mkfs.ext4 -d` makes the image from that directory."""
    kernel = require_uml()
    target = rootfs_path(image, cache_dir)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which("mkfs.ext4") is None:
        raise UmlError("mkfs.ext4 is not installed; install e2fsprogs (apt-get install e2fsprogs)")
    if api is None:
        from emu.control.runtime.docker import DockerRuntime

        api = DockerRuntime().api
    progress(f"making a User-mode Linux root filesystem from {image} (once)")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".rootfs-") as work:
        root = Path(work) / "root"
        root.mkdir()
        _export(api, image, root)
        modules = root / "lib" / "modules"
        modules.mkdir(parents=True, exist_ok=True)
        shutil.copytree(UML_MODULES / kernel, modules / kernel, symlinks=True)
        init = root / INIT.lstrip("/")
        init.write_text(INIT_SCRIPT)
        init.chmod(0o755)
        server = root / GUEST_SERVER.lstrip("/")
        server.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(umlguest.__file__, server)
        partial = Path(work) / "rootfs.img"
        run_host(["mkfs.ext4", "-q", "-F", "-L", "emu-node", "-d", str(root), str(partial), IMAGE_SIZE])
        partial.rename(target)  # whole or not at all: a half-made image is never found
    # The same node image made for an older UML kernel or older guest files is never used again.
    tag = target.name.rsplit("-uml", 1)[0]
    for stale in target.parent.glob("*.img"):
        if stale != target and stale.name.rsplit("-uml", 1)[0] == tag:
            stale.unlink(missing_ok=True)
    return target


def _export(api, image: str, root: Path) -> None:
    """The image's filesystem, unpacked into root (docker create + docker export)."""
    container = api.create_container(image, command=["true"])["Id"]
    try:
        tar = subprocess.Popen(["tar", "-x", "-C", str(root)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for chunk in api.export(container):
                tar.stdin.write(chunk)
        finally:
            tar.stdin.close()
            error = tar.stderr.read().decode(errors="replace")
            tar.wait()
        if tar.returncode != 0:
            raise UmlError(f"unpacking {image}'s filesystem failed: {error.strip()[:1000]}")
    finally:
        api.remove_container(container, force=True)


# --- the network ---------------------------------------------------------


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _forward_rule(bridge: str) -> list[str]:
    return ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]


def ensure_bridge(name: str, address: str) -> None:
    """A host bridge holding `address` (CIDR), up, forwarding between its ports.

    Docker sets the FORWARD policy to DROP and bridged frames pass iptables
    (br_netfilter), so without the accept rule guests on one bridge could not
    reach each other."""
    if not _link_exists(name):
        run_host(["ip", "link", "add", name, "type", "bridge"])
    run_host(["ip", "addr", "replace", address, "dev", name])
    run_host(["ip", "link", "set", name, "up"])
    if shutil.which("iptables") and run_host(["iptables", "-w", "-C", *_forward_rule(name)], check=False).returncode:
        run_host(["iptables", "-w", "-I", *_forward_rule(name)])


def delete_bridge(name: str) -> None:
    """Remove the bridge and its accept rule (nothing if they are gone already)."""
    if shutil.which("iptables"):
        while run_host(["iptables", "-w", "-D", *_forward_rule(name)], check=False).returncode == 0:
            pass
    if _link_exists(name):
        run_host(["ip", "link", "del", name])


def tap_name(guest: str) -> str:
    """A tap device's name for a guest: interface names have at most 15 characters."""
    return "emut" + hashlib.sha256(guest.encode()).hexdigest()[:10]


def make_tap(name: str, bridge: str) -> None:
    """A tap device on the bridge (made anew if one of that name is left over)."""
    delete_tap(name)
    run_host(["ip", "tuntap", "add", name, "mode", "tap"])
    run_host(["ip", "link", "set", name, "master", bridge, "up"])


def delete_tap(name: str) -> None:
    if _link_exists(name):
        run_host(["ip", "link", "del", name])


# --- guests --------------------------------------------------------------

# `gro=1` on the vector driver's tap transport: the host's TCP stack hands the
# tap segments larger than the MTU (GSO), which a guest without it does not
# take ("Incoming GSO frames and GRO disabled on the interface" on its console):
# they are lost and retransmitted, and a few MB from the host took minutes. With
# it they arrive whole (bench/uml_net.py, figures in docs/uml.md: 4 MB in about
# 1 s against none in 90 s). Off only to measure the difference.
VECTOR_GRO = True


@dataclass
class Guest:
    """One User-mode Linux guest: a node with a kernel of its own.

    `address` is its CIDR on `bridge` (e.g. 172.30.0.2/24); its files (the
    copy-on-write layer, the console log, UML's umid directory) are under
    `state_dir`/guests/NAME and go with it."""

    name: str
    rootfs: Path
    bridge: str
    address: str
    gateway: str | None = None
    memory: str = "384M"
    state_dir: Path = STATE_DIR
    gro: bool = VECTOR_GRO
    boot_id: str = field(default_factory=lambda: secrets.token_hex(8))
    process: subprocess.Popen | None = None

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    @property
    def tap(self) -> str:
        return tap_name(self.name)

    @property
    def mac(self) -> str:
        """eth0's MAC, made from its IP as Docker makes a container's (02:42 and the
        address): a guest booted again keeps it, so the other nodes' neighbour entries
        for its address stay right (UML picks a random one otherwise)."""
        return "02:42:" + ":".join(f"{int(part):02x}" for part in self.ip.split("."))

    @property
    def directory(self) -> Path:
        return guest_dir(self.state_dir, self.name)

    @property
    def console(self) -> Path:
        return self.directory / "console.log"

    def command_line(self) -> list[str]:
        directory = self.directory
        args = [
            str(UML_BINARY),
            f"mem={self.memory}",
            f"ubd0={directory / 'root.cow'},{self.rootfs}",
            "root=/dev/ubda",
            "rw",
            f"init={INIT}",
            "con=null",
            "con0=null,fd:1",  # the console's output is the log; nothing reads from it
            f"vec0:transport=tap,ifname={self.tap},mac={self.mac}" + (",gro=1" if self.gro else ""),
            f"umid={self.name}",
            f"uml_dir={directory}",
            f"emu.name={self.name}",
            f"emu.address={self.address}",
            f"emu.boot={self.boot_id}",
        ]
        if self.gateway:
            args.append(f"emu.gateway={self.gateway}")
        return args

    @property
    def disk(self) -> Path:
        return self.directory / "root.cow"

    def boot(self, timeout: float = 60.0, keep_disk: bool = False) -> Guest:
        """Start the guest and wait until its command server answers; on any
        failure everything started is removed and UmlError tells why (with the
        console's last lines).

        keep_disk: boot again on the copy-on-write layer an earlier boot of this
        guest left (its files, as a restarted container keeps its own); what is
        left of its processes, tap and UML's own files goes first, and a failed
        boot keeps the disk too."""
        require_uml()
        if not self.rootfs.exists():
            raise UmlError(f"no root filesystem at {self.rootfs}; make it with make_rootfs()")
        if keep_disk:
            if not self.disk.exists():
                raise UmlError(f"guest {self.name} has no disk at {self.disk} to boot again")
            stop_guest(self.name, self.state_dir)  # what the killed guest left, its disk kept
        else:
            remove_guest(self.name, self.state_dir)  # what an earlier run of the same name left
        try:
            self.directory.mkdir(parents=True, exist_ok=keep_disk)
            make_tap(self.tap, self.bridge)
            with open(self.console, "wb") as log:
                self.process = subprocess.Popen(
                    self.command_line(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: UML's helper processes go with it
                )
            (self.directory / "pid").write_text(str(self.process.pid))
            self._wait_ready(timeout)
        except BaseException as error:
            tail = self.console_tail()
            self.shutdown(keep_disk=keep_disk)
            if isinstance(error, (UmlError, KeyboardInterrupt)):
                raise
            raise UmlError(f"guest {self.name} failed to boot ({error}); console:\n{tail}") from error
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise UmlError(
                    f"guest {self.name} exited (code {self.process.returncode}) while booting; console:\n"
                    f"{self.console_tail()}"
                )
            try:
                if self.run(["true"], timeout=5, connect_timeout=0.5).returncode == 0:
                    return
            except (OSError, UmlError):
                pass
            if time.monotonic() > deadline:
                raise UmlError(
                    f"guest {self.name} did not answer on {self.ip}:{umlguest.PORT} within {timeout:.0f} s; "
                    f"console:\n{self.console_tail()}"
                )
            time.sleep(0.2)

    def console_tail(self, lines: int = 30) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        # The kernel's stack dumps say nothing to a user; the lines before them do.
        kept = [line for line in text.splitlines() if not line.startswith(" [<")]
        return "\n".join(kept[-lines:])

    def _request(self, request: dict, timeout: float, connect_timeout: float = 5.0) -> dict:
        request["boot"] = self.boot_id
        with socket.create_connection((self.ip, umlguest.PORT), timeout=connect_timeout) as connection:
            connection.settimeout(timeout)
            connection.sendall(json.dumps(request).encode() + b"\n")
            chunks = []
            while chunk := connection.recv(1 << 16):
                chunks.append(chunk)
        if not chunks:
            raise UmlError(f"guest {self.name} closed the command channel without an answer")
        answer = json.loads(b"".join(chunks))
        if answer.get("boot") != self.boot_id or "error" in answer:
            raise UmlError(f"{self.ip}:{umlguest.PORT} is not guest {self.name}'s: {answer.get('error')}")
        return answer

    def run(
        self,
        argv: list[str],
        input=None,
        capture_output: bool = True,
        text: bool = False,
        timeout: float = 60.0,
        check: bool = False,
        connect_timeout: float = 5.0,
        **_ignored,
    ) -> subprocess.CompletedProcess:
        """Run argv inside the guest, shaped like subprocess.run (output is always captured).

        The command is killed after `timeout` seconds (returncode -9, and
        TimeoutExpired raised as subprocess.run does)."""
        data = input.encode() if isinstance(input, str) else (input or b"")
        answer = self._request(
            {"argv": list(argv), "input": base64.b64encode(data).decode(), "timeout": timeout},
            timeout=timeout + 10,
            connect_timeout=connect_timeout,
        )
        out, err = base64.b64decode(answer["stdout"]), base64.b64decode(answer["stderr"])
        if text:
            out, err = out.decode(errors="replace"), err.decode(errors="replace")
        if answer.get("timed_out"):
            raise subprocess.TimeoutExpired(argv, timeout, output=out, stderr=err)
        result = subprocess.CompletedProcess(argv, answer["rc"], out, err)
        if check:
            result.check_returncode()
        return result

    def sh(self, script: str, timeout: float = 60.0, check: bool = True) -> str:
        """A shell script inside the guest; its stdout, or UmlError with its stderr."""
        result = self.run(["sh", "-c", script], text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise UmlError(f"in guest {self.name}: `{script[:200]}` failed (exit {result.returncode}): "
                           f"{result.stderr.strip()[:2000]}")  # fmt: skip
        return result.stdout

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def shutdown(self, timeout: float = 10.0, keep_disk: bool = False) -> None:
        """Power the guest off (killed if it does not go within `timeout`) and
        remove its tap and files (with keep_disk, all but its disk and console)."""
        if self.alive():
            with contextlib.suppress(OSError, UmlError, ValueError):
                self._request({"op": "poweroff"}, timeout=2, connect_timeout=1)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        (stop_guest if keep_disk else remove_guest)(self.name, self.state_dir)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)


def guest_dir(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / "guests" / name


def remove_guest(name: str, state_dir: Path = STATE_DIR) -> None:
    """Kill the guest's processes if any are left, delete its tap and its files.
    Safe to call for a guest that is gone or never fully started."""
    stop_guest(name, state_dir)
    shutil.rmtree(guest_dir(state_dir, name), ignore_errors=True)


def stop_guest(name: str, state_dir: Path = STATE_DIR) -> None:
    """Kill the guest's processes if any are left (a kernel killed from outside
    leaves its helpers running) and delete its tap, its pid file and UML's umid
    directory; its disk (root.cow) and console log stay, to boot it again."""
    directory = guest_dir(state_dir, name)
    pid_file = directory / "pid"
    if pid_file.exists():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            pgid = int(pid_file.read_text())
            if _uml_group(pgid):  # the pid may have been reused by something else since
                os.killpg(pgid, signal.SIGKILL)
                _wait_group_gone(pgid)
    delete_tap(tap_name(name))
    pid_file.unlink(missing_ok=True)
    shutil.rmtree(directory / name, ignore_errors=True)  # umid=NAME under uml_dir: the old kernel's pid, mconsole


def guest_running(name: str, state_dir: Path = STATE_DIR) -> bool:
    """Whether the guest's kernel runs: its main process (the pid file's, the
    head of its process group) is alive, is UML and is this guest's (umid=NAME).
    Its helpers alone do not count: they outlive a kernel killed from outside."""
    try:
        pid = int((guest_dir(state_dir, name) / "pid").read_text())
        # A zombie (killed, not yet reaped by the emu that booted it) has no exe to read.
        if not os.readlink(f"/proc/{pid}/exe").startswith(str(UML_BINARY)):
            return False
        return f"umid={name}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False


def _uml_group(pgid: int) -> bool:
    """Whether a UML process is left in the process group (its main process
    may be gone while helpers live on)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The fields after the command's closing parenthesis: state, ppid, pgrp.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and os.readlink(entry / "exe").startswith(str(UML_BINARY)):
                return True
        except (OSError, IndexError, ValueError):
            continue
    return False


def _wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def guests(state_dir: Path = STATE_DIR) -> list[str]:
    """Names of the guests that have files under state_dir (running or left over)."""
    root = Path(state_dir) / "guests"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []
