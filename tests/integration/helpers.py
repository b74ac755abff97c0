"""What the integration modules ask of a running lab in the same way: the real
kubectl against the lab's context, curl from a pod, and User-mode Linux where
a module's nodes need it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


def skip_without_kubectl() -> None:
    if not Path(KUBECTL).exists():
        pytest.skip("kubectl is not installed (Debian's kubectl package)")


def kubectl(*argv: str, context: str, check: bool = True, stdin: str | bytes | None = None, timeout: float = 60,
            text: bool = True) -> subprocess.CompletedProcess:  # fmt: skip
    """The real kubectl with --context CONTEXT; with check, a failed command fails the
    test with kubectl's stderr. text=False gives its output as bytes (a str stdin is
    encoded); without stdin, kubectl reads none."""
    if not text and isinstance(stdin, str):
        stdin = stdin.encode()
    feed = {"stdin": subprocess.DEVNULL} if stdin is None else {"input": stdin}
    result = subprocess.run([KUBECTL, "--context", context, *argv], capture_output=True, text=text, timeout=timeout,
                            check=False, **feed)  # fmt: skip
    if check:
        stderr = result.stderr if text else result.stderr.decode(errors="replace")
        assert result.returncode == 0, f"kubectl {' '.join(argv)}: {stderr}"
    return result


def curl(cluster, pod: str, url: str, container: str | None = None) -> str:
    """What `curl URL` in the pod printed (stripped); a failed request fails the test."""
    result = cluster.exec(pod, ["curl", "-sS", "--max-time", "5", url], container=container)
    assert result.ok, f"curl {url} from {pod} failed: {result.output}"
    return result.output.strip()


def uml_or_skip() -> None:
    """Skip, saying why, where User-mode Linux nodes cannot run here; installs it
    (scripts/ensure-uml.sh) where it is only missing."""
    from emu.control.runtime import uml

    if sys.platform != "linux":
        pytest.skip("User-mode Linux runs on Linux hosts only")
    if os.geteuid() != 0:
        pytest.skip("User-mode Linux guests need root (tap devices, a host bridge)")
    try:
        uml.ensure_uml()  # runs scripts/ensure-uml.sh where it is missing
    except uml.UmlError as error:
        pytest.skip(f"User-mode Linux cannot run here: {error}")
