"""Fixtures for the API server's tests: a real server in-process on 127.0.0.1 with
a temporary SQLite store (plain HTTP, everyone the admin), and a kubeconfig
that the real kubectl and the Python client use."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from emu.apiserver.server import ApiServer
from emu.apiserver.storage import Store

KUBECTL_DIR = Path("/usr/lib/google-cloud-sdk/bin")


class RunningServer:
    """A started ApiServer: base_url, kubeconfig, store, and restart() on the same file."""

    def __init__(self, tmp: Path, window: int = 10_000):
        self.tmp = tmp
        self.db = tmp / "state.db"
        self.window = window
        self.log_path = tmp / "apiserver.log"
        self.log = open(self.log_path, "a", buffering=1)
        self.home = tmp / "home"
        self.home.mkdir(exist_ok=True)
        self.kubeconfig = tmp / "kubeconfig"
        self.server: ApiServer | None = None
        self.store: Store | None = None
        self.start()

    def start(self) -> None:
        self.store = Store(str(self.db), window=self.window)
        self.server = ApiServer(self.store, log=self.log, bookmark_interval=0.5)
        host, port = self.server.start(("127.0.0.1", 0))
        self.base_url = f"http://{host}:{port}"
        self.kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: emu-test
  cluster:
    server: {self.base_url}
contexts:
- name: emu-test
  context:
    cluster: emu-test
    user: emu-test
current-context: emu-test
users:
- name: emu-test
  user: {{}}
""")

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.store.close()
            self.server = None

    def restart(self) -> None:
        """Stop the server and start a new one on the same SQLite file (a new port)."""
        self.stop()
        self.start()

    def log_tail(self, n: int = 30) -> str:
        return "".join(self.log_path.read_text().splitlines(keepends=True)[-n:])

    def env(self) -> dict:
        """Environment for kubectl: this kubeconfig, a private HOME (its discovery cache)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.home)}

    def client(self):
        """An ApiClient of the official Python `kubernetes` package pointed at this server."""
        kubernetes = pytest.importorskip("kubernetes")
        cfg = kubernetes.client.Configuration()
        cfg.host = self.base_url
        return kubernetes.client.ApiClient(cfg)


@pytest.fixture()
def apiserver(tmp_path):
    """A running API server; yields RunningServer (base_url, kubeconfig, store, restart())."""
    s = RunningServer(tmp_path)
    try:
        yield s
    finally:
        s.stop()
        s.log.close()


@pytest.fixture()
def small_window_apiserver(tmp_path):
    """An API server whose watch cache keeps only 5 events (to reach 410 Gone quickly)."""
    s = RunningServer(tmp_path, window=5)
    try:
        yield s
    finally:
        s.stop()
        s.log.close()


def kubectl_binaries() -> list[tuple[str, str | None]]:
    """(label, path or None) for /usr/bin/kubectl and the 1.27 and 1.33 builds."""
    out = [("kubectl", shutil.which("kubectl"))]
    for v in ("1.27", "1.33"):
        p = KUBECTL_DIR / f"kubectl.{v}"
        out.append((f"kubectl.{v}", str(p) if p.exists() else None))
    return out


class Kubectl:
    """Runs a real kubectl against the test server, each call bounded by a timeout."""

    def __init__(self, path: str, server: RunningServer):
        self.path = path
        self.server = server

    def run(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 30):
        p = subprocess.run([self.path, *args], input=input, capture_output=True, text=True, timeout=timeout,
                           env=self.server.env())
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({p.returncode}):\n{p.stderr}\n"
                                 f"server log:\n{self.server.log_tail()}")
        return p

    def __call__(self, *args: str, **kw) -> str:
        return self.run(*args, **kw).stdout

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([self.path, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.server.env())


@pytest.fixture(params=[label for label, _ in kubectl_binaries()])
def kubectl(request, apiserver):
    """Kubectl for each real kubectl binary (skipped where absent)."""
    path = dict(kubectl_binaries())[request.param]
    if not path:
        pytest.skip(f"{request.param} is not installed on this machine")
    return Kubectl(path, apiserver)


@pytest.fixture()
def kubectl_default(apiserver):
    """Kubectl for /usr/bin/kubectl only (tests that need one version)."""
    path = shutil.which("kubectl")
    if not path:
        pytest.skip("kubectl is not installed on this machine")
    return Kubectl(path, apiserver)
