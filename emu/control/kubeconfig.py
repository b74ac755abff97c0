"""Kubeconfig entries for a cluster, kept as kind keeps its own (docs/apiserver.md).

`emu up` merges a cluster, a user and a context all named `emu-<name>` (the
certificates embedded as base64 data) into the kubeconfig file kubectl would
write to, and makes it the current context; `emu down` removes them. Every
other entry in the file is left as it was.

Which file: as kubectl (and kind) choose: $KUBECONFIG's first file that
exists, or its last when none does; ~/.kube/config without $KUBECONFIG.
Writes hold kubectl's own lock (`<file>.lock`, created exclusively, as
client-go's clientcmd does) so that two `emu up`s, or `emu up` and a
`kubectl config use-context`, do not lose each other's changes, and replace
the file atomically (a reader never sees half a file).
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from emu.errors import EmuError

LOCK_TIMEOUT = 10.0  # seconds; another writer holds the lock for milliseconds


def context_name(name: str) -> str:
    """The cluster, user and context name of emu cluster `name`: emu-<name>."""
    return f"emu-{name}"


def _paths() -> list[Path]:
    env = os.environ.get("KUBECONFIG", "")
    paths = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    if paths:
        return paths
    return [Path.home() / ".kube" / "config"]


def default_path() -> Path:
    """The file kubectl would write a new entry to (kubectl's and kind's rule)."""
    paths = _paths()
    if len(paths) == 1:
        return paths[0]
    for p in paths:
        if p.exists():
            return p
    return paths[-1]


def _b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode("ascii")


def _entries(name: str, server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> tuple[dict, dict, dict]:
    ctx = context_name(name)
    cluster = {"cluster": {"certificate-authority-data": _b64(ca_pem), "server": server}, "name": ctx}
    user = {"name": ctx, "user": {"client-certificate-data": _b64(cert_pem), "client-key-data": _b64(key_pem)}}
    context = {"context": {"cluster": ctx, "user": ctx}, "name": ctx}
    return cluster, user, context


def _empty() -> dict:
    # kubectl's own key order for a new file.
    return {
        "apiVersion": "v1",
        "clusters": [],
        "contexts": [],
        "current-context": "",
        "kind": "Config",
        "preferences": {},
        "users": [],
    }


def render(name: str, server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> str:
    """A whole kubeconfig with only cluster `name`'s entries, its context current (`emu kubeconfig`)."""
    cluster, user, context = _entries(name, server, ca_pem, cert_pem, key_pem)
    config = _empty()
    config.update(clusters=[cluster], contexts=[context], users=[user], **{"current-context": context["name"]})
    return _dump(config)


def _dump(config: dict) -> str:
    return yaml.safe_dump(config, default_flow_style=False, sort_keys=False)


def _read(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return _empty()
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise EmuError(f"{where}: not a valid kubeconfig ({problem}); fix or move it, then run again") from None
    if config is None:
        return _empty()
    if not isinstance(config, dict):
        raise EmuError(f"{path}: not a valid kubeconfig (a {type(config).__name__} at the top, not a mapping); "
                       "fix or move it, then run again")
    for key in ("clusters", "contexts", "users"):
        if config.get(key) is None:
            config[key] = []
        elif not isinstance(config[key], list):
            raise EmuError(f"{path}: not a valid kubeconfig ({key} is not a list); fix or move it, then run again")
    config.setdefault("apiVersion", "v1")
    config.setdefault("kind", "Config")
    return config


def _write(path: Path, config: dict) -> None:
    if path.is_symlink():
        # Replace the file the link points at, not the link (dotfile managers link ~/.kube/config).
        path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_dump(config))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold `<path>.lock` as client-go does: the file created exclusively, removed after."""
    timeout = LOCK_TIMEOUT
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    lock = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            break
        except FileExistsError:
            if time.monotonic() >= deadline:
                raise EmuError(
                    f"{lock}: held for more than {timeout:.0f} s; another emu or kubectl is writing {path}, "
                    "or one was killed while writing: if none runs, remove the lock file and run again"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
    os.close(fd)
    try:
        yield
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass


def _replace(entries: list, new: dict) -> list:
    """Replace the entry of the same name in place (keeping its position), or append it."""
    out, done = [], False
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == new["name"]:
            if not done:
                out.append(new)
                done = True
            continue
        out.append(entry)
    if not done:
        out.append(new)
    return out


def merge(
    name: str,
    server: str,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    path: str | Path | None = None,
) -> Path:
    """Add (or replace) cluster/user/context emu-<name> in the kubeconfig and make it current.

    path: the file to write; default as kubectl chooses (default_path()).
    Returns the file written."""
    target = Path(path) if path is not None else default_path()
    cluster, user, context = _entries(name, server, ca_pem, cert_pem, key_pem)
    with _locked(target):
        config = _read(target)
        config["clusters"] = _replace(config["clusters"], cluster)
        config["users"] = _replace(config["users"], user)
        config["contexts"] = _replace(config["contexts"], context)
        config["current-context"] = context["name"]
        _write(target, config)
    return target


def remove(name: str, path: str | Path | None = None) -> list[Path]:
    """Remove cluster/user/context emu-<name>; clear current-context where it was ours.

    path: the one file to edit; default every file of $KUBECONFIG (or
    ~/.kube/config), as kind removes its entries. Files without the entries
    are left untouched. Returns the files changed."""
    targets = [Path(path)] if path is not None else _paths()
    ctx = context_name(name)
    changed = []
    for target in targets:
        if not target.exists():
            continue
        with _locked(target):
            config = _read(target)
            before = (len(config["clusters"]), len(config["users"]), len(config["contexts"]), config.get("current-context"))
            for key in ("clusters", "users", "contexts"):
                config[key] = [e for e in config[key] if not (isinstance(e, dict) and e.get("name") == ctx)]
            if config.get("current-context") == ctx:
                config["current-context"] = ""
            after = (len(config["clusters"]), len(config["users"]), len(config["contexts"]), config.get("current-context"))
            if before != after:
                _write(target, config)
                changed.append(target)
    return changed


def current_cluster() -> str | None:
    """The emu cluster the kubeconfig's current context names (emu-<name>), as
    kubectl chooses: the first current-context set in $KUBECONFIG's files. None
    when there is none, it is not emu's, or a file cannot be read."""
    for path in _paths():
        try:
            context = _read(path).get("current-context") or ""
        except EmuError:
            return None
        if context:
            return context.removeprefix("emu-") if context.startswith("emu-") else None
    return None
