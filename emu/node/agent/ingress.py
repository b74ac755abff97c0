"""The agent's ingress job, on the node that runs the ingress controller's pod.

On every sync (a new state, or a readiness change that moves endpoints) it
renders nginx.conf (emu.node.ingress); when the text changed it is checked with
`nginx -t`, renamed into place and nginx's master is sent SIGHUP: nginx starts
new workers with the new configuration and lets the old ones finish the
requests they hold, so no connection in flight is dropped. Certificates come
from the Ingress's secret, or are made self-signed with openssl once. The
controller's hostPorts 80 and 443 are DNAT rules in the node's nat table.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable

from emu.node.agent import run as bounded_run
from emu.node import ingress
from emu.node.records import ClusterState

Runner = Callable[..., subprocess.CompletedProcess]


class IngressSync:
    def __init__(self, node: str, log: Callable[[str], None], run: Runner = bounded_run):
        self.node = node
        self.log = log
        self.run = run
        self.config: str | None = None  # what nginx was last given
        self.hostports: str | None = None

    def sync(self, state: ClusterState, endpoints: dict) -> bool:
        """Write and reload if anything changed; True when nginx was given a new configuration."""
        pod = ingress.controller_pod(state, self.node)
        if pod is None:
            return False
        started = time.monotonic()
        self.write_certificates(state)
        rules = ingress.hostport_rules(pod)
        if rules != self.hostports:
            self.check(["iptables-restore", "--noflush", "--wait"], rules)
            hook = shlex.split(ingress.HOSTPORT_HOOK)
            if self.run(["iptables", "-w", "-t", "nat", "-C", *hook], capture_output=True).returncode != 0:
                self.check(["iptables", "-w", "-t", "nat", "-I", hook[0], "1", *hook[1:]])
            self.hostports = rules
        config = ingress.render(state, endpoints)
        if config == self.config and os.path.exists(ingress.CONFIG):
            return False
        os.makedirs(ingress.CONFIG_DIR, exist_ok=True)
        candidate = ingress.CONFIG + ".new"
        with open(candidate, "w") as handle:
            handle.write(config)
        self.check(["nginx", "-e", "stderr", "-t", "-q", "-c", candidate])
        os.replace(candidate, ingress.CONFIG)
        self.config = config
        reloaded = self.reload()
        took = (time.monotonic() - started) * 1000
        done = "written and reloaded" if reloaded else "written"
        self.log(f"ingress: nginx.conf of generation {state.generation} {done} in {took:.1f} ms")
        return True

    def reload(self) -> bool:
        """SIGHUP to nginx's master (none yet: the container starts it with this file)."""
        try:
            with open(ingress.PID_FILE) as handle:
                os.kill(int(handle.read().strip()), signal.SIGHUP)
            return True
        except (OSError, ValueError):
            return False

    def write_certificates(self, state: ClusterState) -> None:
        os.makedirs(ingress.CERT_DIR, mode=0o700, exist_ok=True)
        for name, (hosts, secret) in ingress.certificates(state).items():
            crt, key = f"{ingress.CERT_DIR}/{name}.crt", f"{ingress.CERT_DIR}/{name}.key"
            data = state.secrets.get(secret) if secret else None
            if data:
                for path, text in ((crt, data["tls.crt"]), (key, data["tls.key"])):
                    if not os.path.exists(path) or open(path).read() != text:
                        with open(path + ".new", "w") as handle:
                            handle.write(text)
                        os.replace(path + ".new", path)
            elif not (os.path.exists(crt) and os.path.exists(key)):
                subject = "Kubernetes Ingress Controller Fake Certificate" if name == ingress.DEFAULT_CERT else hosts[0]
                self.check([
                    "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "3650", "-subj", f"/O=Acme Co/CN={subject}",
                    "-addext", "subjectAltName=" + ",".join(f"DNS:{host}" for host in hosts),
                    "-keyout", key, "-out", crt,
                ])  # fmt: skip

    def check(self, argv: list[str], text: str | None = None) -> None:
        result = self.run(argv, input=text, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv[:3])} failed: {(result.stderr or result.stdout).strip()[:500]}")
