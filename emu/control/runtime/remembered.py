"""Where emu remembers multi-host clusters: a small record on the machine that
made each (EMU_HOME, default ~/.emu: clusters/NAME.json with its hosts), as
kind keeps a kubeconfig. Written by the swarm provider as it creates a
cluster's network, read by the selector (emu.control.runtime.select)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from emu.api.topology.model import Host
from emu.errors import EmuError


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
