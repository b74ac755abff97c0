"""Waking a loop when something happens instead of looking every second.

An idle agent's every wake-up counts: 50 agents share a machine's few cores,
and a thread woken after seconds of sleep finds cold caches (a look at a
node's 40 pods cost 0.25 ms in a tight loop and 0.7 ms once every 2 s). So
the loops sleep on file descriptors the kernel makes readable when something
changed: a pidfd when a container's process ends (Linux 5.3), a netlink
socket when a link of the node changes (a veth deleted, cni0 lost), an
inotify descriptor when a pod's namespace file goes; and on a `Wake`, set by
the agent's other threads. A slow look still runs now and then, in case the
kernel's queue overflowed or a descriptor could not be had.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket


class Wake:
    """threading.Event's set/clear/wait on a pipe, so that `wait` can watch
    file descriptors beside it: it returns the given ones that are readable."""

    def __init__(self):
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def set(self) -> None:
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: it is set

    @property
    def read_fd(self) -> int:
        """Readable while set."""
        return self._read

    def clear(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float | None = None, fds: list[int] = ()) -> list[int]:
        ready = _poll([self._read, *fds], None if timeout is None else max(0, int(timeout * 1000)))
        return [fd for fd in ready if fd != self._read]


def readable(fds: list[int]) -> list[int]:
    """Those of `fds` the kernel has made readable (or closed), now, without waiting."""
    return _poll(fds, 0) if fds else []


def _poll(fds: list[int], milliseconds: int | None) -> list[int]:
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(milliseconds)]


def process_fd(pid: int) -> int | None:
    """A pidfd of the process (readable once it ended), or None where pidfds are
    not to be had (not Linux 5.3+). ProcessLookupError: no such process."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except (AttributeError, OSError):
        return None


RTMGRP_LINK = 1
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_MOVED_FROM, IN_MOVED_TO = 0x40, 0x80
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


class NodeChanges:
    """Readable when the node's links change (netlink) or a file is made or
    removed in a watched folder (inotify). `fds` is empty where neither is to
    be had; `drain` reads what came and adds watches for folders made since."""

    def __init__(self, folders: list[str]):
        self.folders = folders
        self.watched: set[str] = set()
        self.links: socket.socket | None = None
        self.inotify: int | None = None
        try:
            self.links = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            self.links.bind((0, RTMGRP_LINK))
            self.links.setblocking(False)
        except (AttributeError, OSError):
            self.links = None
        try:
            self._libc = ctypes.CDLL(None, use_errno=True)
            fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            self.inotify = fd if fd >= 0 else None
        except (AttributeError, OSError):
            self.inotify = None
        self._watch()

    @property
    def complete(self) -> bool:
        """Whether every change is seen: links, and each folder (one not there yet is not)."""
        return self.links is not None and self.inotify is not None and self.watched == set(self.folders)

    def fds(self) -> list[int]:
        return [fd for fd in (self.links.fileno() if self.links else None, self.inotify) if fd is not None]

    def drain(self) -> None:
        if self.links is not None:
            _drain(self.links.recv)
        if self.inotify is not None:
            if _drain(lambda size: os.read(self.inotify, size)):
                # A folder removed drops its watch: add them all again (for one still
                # watched, inotify_add_watch changes nothing).
                self.watched.clear()
            self._watch()

    def _watch(self) -> None:
        if self.inotify is None:
            return
        mask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
        for folder in self.folders:
            if folder not in self.watched and self._libc.inotify_add_watch(self.inotify, folder.encode(), mask) >= 0:
                self.watched.add(folder)


def _drain(read) -> bool:
    """Read until nothing is left; whether anything came."""
    came = False
    while True:
        try:
            data = read(65536)
        except BlockingIOError:
            return came
        except OSError:  # ENOBUFS: the kernel dropped messages; all that counts is that something changed
            came = True
            continue
        if not data:
            return came
        came = True
