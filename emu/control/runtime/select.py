"""Which provider drives a cluster, and where emu remembers multi-host clusters.

A cluster on this machine's engine is found by its labels. A cluster spread
over several hosts is found through a small record kept on the machine that
made it (EMU_HOME, default ~/.emu: clusters/NAME.json with its hosts), as
kind keeps a kubeconfig: without it no engine would know where to look.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from emu.errors import EmuError
from emu.control.runtime.provider import Provider
from emu.api.topology.model import Host


def records_dir() -> Path:
    return Path(os.environ.get("EMU_HOME") or Path.home() / ".emu") / "clusters"


def remember(cluster: str, hosts: list[Host]) -> None:
    """Record that `cluster` runs on `hosts` (written beside and renamed into place)."""
    directory = records_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{cluster}.json"
    temporary = path.with_suffix(".json.new")
    temporary.write_text(json.dumps({"hosts": [h.model_dump(mode="json", by_alias=True) for h in hosts]}, indent=1))
    temporary.replace(path)


def forget(cluster: str) -> None:
    (records_dir() / f"{cluster}.json").unlink(missing_ok=True)


def remembered_hosts(cluster: str) -> list[Host] | None:
    path = records_dir() / f"{cluster}.json"
    try:
        data = json.loads(path.read_text())
        return [Host.model_validate(host) for host in data["hosts"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EmuError(f"{path}: cannot read emu's record of cluster '{cluster}' ({error}); remove the file") from None


def remembered_clusters() -> list[str]:
    directory = records_dir()
    return sorted(path.stem for path in directory.glob("*.json")) if directory.is_dir() else []


def provider_for(cluster: str, hosts: list[Host] | None = None) -> Provider:
    """The provider for `cluster`: over `hosts` if given, else over the hosts it
    was made on, else this machine's Docker engine."""
    hosts = hosts or remembered_hosts(cluster)
    if hosts:
        from emu.control.runtime.swarm import SwarmRuntime

        return SwarmRuntime(hosts)
    from emu.control.runtime.docker import DockerRuntime

    return DockerRuntime()


def cluster_names() -> list[str]:
    """Every emu cluster: those on this machine's engine and those emu made on other hosts."""
    from emu.control.runtime.docker import DockerRuntime

    remembered = remembered_clusters()
    try:
        local = DockerRuntime().cluster_names()
    except EmuError:
        if not remembered:
            raise
        local = []  # no engine here; the clusters on hosts are still there
    return sorted(set(local) | set(remembered))
