"""The agent's ingress job, on the node that runs the ingress controller's pod.

Where it comes from, as ingress-nginx's controller: the API server. Once the
controller's pod has its service account token (ingress-nginx/ingress-nginx,
written by the agent's token manager, emu.node.agent.tokens), the job lists and
watches Ingresses, IngressClasses, Services and EndpointSlices with it
(emu.node.kube.ingressfeed), serves every Ingress of its class (emu's, which
emu's commands write into the API server, and those made with kubectl alike),
and writes status.loadBalancer.ingress of each (the address users reach:
emu.node.ingress.status_addresses). A change there wakes the job's own loop at
once. Until that watch has listed once (the pod's token comes after the pod is
in the API server), the agent's sync hands it the state file's Ingresses and
endpoints, so nginx starts with emu's own. The state file still says where the
controller's pod is and holds emu's TLS secrets.

On every sync it
renders nginx.conf (emu.node.ingress); when the text changed it is checked with
`nginx -t`, renamed into place and nginx's master is sent SIGHUP: nginx starts
new workers with the new configuration and lets the old ones finish the
requests they hold, so no connection in flight is dropped. Certificates come
from the Ingress's secret, or are made self-signed with openssl once. The
controller's hostPorts 80 and 443 are DNAT rules in the node's nat table.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from emu.node.agent import run as bounded_run
from emu.node.agent.runner import Runner as Job
from emu.node import ingress
from emu.node.kube.client import ApiError, Client, resource_path
from emu.node.kube.informer import InformerGroup
from emu.node.kube.ingressfeed import IngressFeed
from emu.node.plan import cni
from emu.node.records import ClusterState

Runner = Callable[..., subprocess.CompletedProcess]
USER_AGENT = "nginx-ingress-controller/emu"
RETRY_TOKEN = 0.5  # seconds between looks for the controller pod's token
RESYNC_AFTER_FAILURE = 0.5  # seconds (a configuration nginx -t refused, say: as the agent's own sync)


def controller_client(state: ClusterState, pod) -> Client | None:
    """A client of the API server as the controller's pod: its service account token
    (read again when the token manager renews it) and the cluster CA; None until the
    token is written."""
    token, ca = f"{cni.TOKEN_DIR}/{pod.netns}/token", f"{cni.PKI_DIR}/ca.crt"
    if not (os.path.exists(token) and os.path.exists(ca)):
        return None
    server = f"https://{cni.api_server_node(state).node_ip}:{cni.API_PORT}"
    return Client(server, ca_pem_path=ca, token_file=token, user_agent=USER_AGENT)


def _addresses(obj: dict) -> list[dict]:
    return ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []


class IngressSync(InformerGroup):  # (its watch of the API server: ready, revision, catch_up)
    def __init__(self, node: str, log: Callable[[str], None], run: Runner = bounded_run,
                 connect: Callable[[ClusterState, object], Client | None] = controller_client):  # fmt: skip
        self.node = node
        self.log = log
        self.run = run
        self.connect = connect
        self.config: str | None = None  # what nginx was last given
        self.hostports: str | None = None
        self.write_lock = threading.Lock()  # one writer of nginx.conf at a time (the agent's sync, the job)
        self.watch_lock = threading.Lock()
        self.state: ClusterState | None = None  # the last state the agent's sync handed over
        self.client: Client | None = None
        self.feed: IngressFeed | None = None
        self.informers: list = []
        self.watching = ""  # the netns of the pod whose identity the watch runs as
        self.job = Job("ingress", self._step, log, describe=lambda: "the ingress controller's sync")
        self.thread: threading.Thread | None = None
        self.rendered = threading.Condition()
        self.rendered_revision = 0  # the resourceVersion the served configuration reflects
        self.published: dict[str, list] = {}  # Ingress key -> the status addresses written

    # ---- fed by the agent's sync --------------------------------------------
    def sync(self, state: ClusterState, endpoints: dict) -> bool:
        """The agent's sync: the state (where the controller's pod runs, emu's TLS secrets)
        and its endpoints. Serves them itself only until the controller's own watch of
        the API server has listed once; afterwards it wakes the job, which renders from
        the watch. True when nginx was given a new configuration here."""
        pod = ingress.controller_pod(state, self.node)
        self.state = state
        if pod is None:
            self.stop_watch()
            return False
        if self.watch(state, pod) and self.ready():
            self.job.request()
            return False
        if self.thread is None:  # (the job starts the watch once the token is there)
            self.thread = threading.Thread(target=self.job.loop, name="ingress", daemon=True)
            self.thread.start()
        self.job.request()
        return self.apply(state, endpoints)

    def watch(self, state: ClusterState, pod) -> bool:
        """Start the controller's watch of the API server (once for a pod); whether it runs."""
        with self.watch_lock:
            if self.watching == pod.netns:
                return True
            self.stop_watch()
            client = self.connect(state, pod)
            if client is None:
                return False  # no token yet: the token manager writes it once the pod is in the API server
            self.client, self.feed = client, IngressFeed(self.node, self.job.request)
            self.informers = self.feed.informers(client, self.log)
            for informer in self.informers:
                informer.start()
            self.watching = pod.netns
        self.log(f"ingress: watching Ingresses, IngressClasses, Services and EndpointSlices as {pod.key}'s "
                 "service account")  # fmt: skip
        return True

    def stop_watch(self) -> None:
        for informer in self.informers:
            informer.stop(timeout=0.0)
        self.informers, self.feed, self.client, self.watching, self.published = [], None, None, "", {}

    def wait_revision(self, revision: int, timeout: float) -> bool:
        """Whether nginx serves what the API server held at `revision` (or later) within
        `timeout` (True where no watch runs: the state file's Ingresses are served then)."""
        if not self.ready():
            return True
        deadline = time.monotonic() + timeout
        if not self.catch_up(revision, timeout):
            return False
        self.job.request()
        with self.rendered:
            return self.rendered.wait_for(lambda: self.rendered_revision >= revision,
                                          max(0.0, deadline - time.monotonic()))  # fmt: skip

    # ---- the controller's own loop ---------------------------------------------
    def _step(self, requested: bool) -> float | None:
        state = self.state
        pod = ingress.controller_pod(state, self.node) if state is not None else None
        if pod is None:
            return None
        if not self.watch(state, pod):
            return RETRY_TOKEN  # the token is not there yet
        feed, client = self.feed, self.client
        if feed is None or client is None:
            return None
        if not self.ready():
            return 0.1  # (an informer's handlers run before it counts as listed: look again soon)
        revision = self.revision()  # before the snapshot: every change up to it is in it
        served, objects, keys, services, endpoints = feed.snapshot()
        view = dataclasses.replace(state, ingresses=served, services=services)
        failed = None
        try:
            self.apply(view, endpoints)
        except Exception as error:  # noqa: BLE001 - logged and tried again; the status and waiters go on
            failed = RESYNC_AFTER_FAILURE
            self.log(f"ingress sync failed: {error}")
        with self.rendered:
            self.rendered_revision = max(self.rendered_revision, revision)
            self.rendered.notify_all()
        node_ip = next((n.node_ip for n in state.nodes if pod is not None and n.name == pod.node), None)
        addresses = ingress.status_addresses(services.get(f"{ingress.NAMESPACE}/{ingress.NAME}"), node_ip)
        self.publish(client, objects, keys, addresses)
        return failed

    def publish(self, client: Client, objects: dict[str, dict], served: set[str], addresses: list[dict]) -> None:
        """status.loadBalancer.ingress of every served Ingress (ingress-nginx's status sync):
        written where it differs; an Ingress no longer served (another class now) loses the
        addresses it was given."""
        for key in [k for k in self.published if k not in served]:
            given = self.published.pop(key)
            if key in objects and _addresses(objects[key]) == given:
                self._write_status(client, key, objects[key], [])
        for key in sorted(served):
            if _addresses(objects[key]) != addresses:
                self._write_status(client, key, objects[key], addresses)
            self.published[key] = addresses

    def _write_status(self, client: Client, key: str, obj: dict, addresses: list[dict]) -> None:
        namespace, name = key.split("/", 1)
        path = resource_path("networking.k8s.io/v1", "ingresses", namespace, name, "status")
        try:
            client.update(path, {**obj, "status": {"loadBalancer": {"ingress": addresses} if addresses else {}}})
            shown = ",".join(a.get("ip") or a.get("hostname", "") for a in addresses) or "none"
            self.log(f"ingress: status of {key}: address {shown}")
        except ApiError as error:
            # Gone, or changed meanwhile (409): the watch brings the news, and the next sync writes again.
            if error.code not in (404, 409):
                self.log(f"ingress: writing the status of {key} failed: {error}")
        except OSError as error:
            self.log(f"ingress: writing the status of {key} failed: {error}")

    # ---- nginx ---------------------------------------------------------------
    def apply(self, state: ClusterState, endpoints: dict) -> bool:
        """Write and reload if anything changed; True when nginx was given a new configuration."""
        pod = ingress.controller_pod(state, self.node)
        if pod is None:
            return False
        with self.write_lock:
            return self._apply(state, endpoints, pod)

    def _apply(self, state: ClusterState, endpoints: dict, pod) -> bool:
        started = time.monotonic()
        renewed = self.write_certificates(state)
        rules = ingress.hostport_rules(pod)
        if rules != self.hostports:
            self.check(["iptables-restore", "--noflush", "--wait"], rules)
            hook = shlex.split(ingress.HOSTPORT_HOOK)
            if self.run(["iptables", "-w", "-t", "nat", "-C", *hook], capture_output=True).returncode != 0:
                self.check(["iptables", "-w", "-t", "nat", "-I", hook[0], "1", *hook[1:]])
            self.hostports = rules
        config = ingress.render(state, endpoints)
        if config == self.config and os.path.exists(ingress.CONFIG) and not renewed:
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

    def write_certificates(self, state: ClusterState) -> bool:
        """The certificates the Ingresses name; whether one that nginx already read changed (a
        secret that arrived after its Ingress: its name held a stand-in until then)."""
        renewed = False
        os.makedirs(ingress.CERT_DIR, mode=0o700, exist_ok=True)
        for name, (hosts, secret) in ingress.certificates(state).items():
            crt, key = f"{ingress.CERT_DIR}/{name}.crt", f"{ingress.CERT_DIR}/{name}.key"
            data = state.secrets.get(secret) if secret else None
            if data:
                for path, text in ((crt, data["tls.crt"]), (key, data["tls.key"])):
                    if not os.path.exists(path) or open(path).read() != text:
                        renewed = renewed or os.path.exists(path)
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
        return renewed

    def check(self, argv: list[str], text: str | None = None) -> None:
        result = self.run(argv, input=text, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv[:3])} failed: {(result.stderr or result.stdout).strip()[:500]}")
