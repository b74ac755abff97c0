"""Test clusters that clean up after themselves, shared by the pytest plugin and
emu's own test suite.

Each cluster a test run makes is registered with that run's pid (a file
OWNERS/NAME holding it). A run that was killed leaves its clusters behind; the
next run's `sweep` removes clusters whose registered run is gone, and spares
those of runs still alive, so two test runs (two git worktrees, two CI jobs on
one machine) can share one Docker engine. `run_lock` lets runs that would
overload a small machine take turns.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

OWNERS = Path(os.environ.get("TMPDIR", "/tmp")) / "emutest-owners"


def register(name: str) -> str:
    """Record that this process owns cluster NAME (the sweep spares it while we live)."""
    OWNERS.mkdir(parents=True, exist_ok=True)
    (OWNERS / name).write_text(str(os.getpid()))
    return name


def registered(name: str) -> bool:
    return (OWNERS / name).exists()


def owner_alive(name: str) -> bool:
    """True when the test run that registered cluster NAME is still running."""
    try:
        pid = int((OWNERS / name).read_text())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def disown(name: str) -> None:
    (OWNERS / name).unlink(missing_ok=True)


def disown_all() -> None:
    """Forget every cluster this process registered (at the end of a run)."""
    for owner in OWNERS.glob("*") if OWNERS.is_dir() else []:
        try:
            if owner.read_text() == str(os.getpid()):
                owner.unlink(missing_ok=True)
        except OSError:
            pass


def sweep(runtime, prefix: str | None = None) -> list[str]:
    """Remove the clusters on `runtime`'s engine that runs which are gone left:
    those registered to a dead run and, with `prefix`, unregistered PREFIX-*
    clusters with nothing running (a running one no test run made was made by
    hand for a look, and is spared). Returns their names."""
    removed = []
    for name in runtime.cluster_names():
        if registered(name):
            if owner_alive(name):
                continue
        elif prefix is None or not name.startswith(f"{prefix}-"):
            continue
        elif any(c.running for c in runtime.cluster_containers(name)):
            continue
        runtime.remove_cluster(name)
        disown(name)
        removed.append(name)
    return removed


def run_lock(path: Path):
    """Hold a lock file for the life of the returned handle (close it to release):
    runs on one machine take turns, the later one saying that it waits."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        print(f"\nwaiting for another test run (pid {holder}) to finish...", file=sys.__stderr__, flush=True)
        started = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        print(f"waited {time.monotonic() - started:.0f} s", file=sys.__stderr__, flush=True)
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
