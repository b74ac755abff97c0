#!/usr/bin/env python3
"""An Ingress change reaching the ingress controller's routing: made with kubectl
(the controller watches the API server) beside `emu apply -f` of the same Ingress
(emu's state file, then emu's mirror into the API server), both in one run.

answers  a lab (cp with the ingress controller, its port 80 mapped to a free host
         port; w1 with two echo pods): each run applies one Ingress with a host of
         its own, then asks http://127.0.0.1:PORT/hostname with that Host header
         every 20 ms from this machine until nginx answers 200 (not 404): from the
         start of `kubectl apply -f` (emu: of `emu apply -f`, in this process) to
         that answer. Then the Ingress is deleted the same way and waited out (not
         timed). The two sides alternate, so the machine's load falls on both alike.
render   no Docker: the controller's own part, on an API server of its own
         (bench/apilab.py): from POST of an Ingress to the nginx.conf the
         controller renders from its watch (emu.node.agent.ingress, nginx's
         commands not run); baseline: the agent reading a state file that holds the
         same Ingress and rendering nginx.conf from it (the state file path's part).

usage: python bench/ingress_api.py [--runs 5] [--only answers,render] [--json]
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import harness

NAME = "emubench-ingapi"
LAB = """\
name: NAME
nodes:
  - name: cp
    role: control-plane
    labels: {ingress-ready: "true"}
    extraPortMappings: [{containerPort: 80, hostPort: PORT}]
  - {name: w1}
deployments:
  - name: echo
    replicas: 2
    template:
      labels: {app: echo}
      containers: [{name: c, workload: netexec, ports: [{name: http, containerPort: 8080}]}]
services:
  - {name: echo, selector: {app: echo}, ports: [{name: http, port: 80, targetPort: http}]}
ingressController: {enabled: true}
"""
INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: bench}
spec:
  ingressClassName: nginx
  rules:
    - host: HOST
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}]}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def status(port: int, host: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/hostname", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def until_status(port: int, host: str, wanted: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while status(port, host) != wanted:
        if time.monotonic() > deadline:
            raise SystemExit(f"{host} did not answer {wanted} within {timeout:.0f}s")
        time.sleep(0.02)


def answers(context: harness.Context) -> None:
    from emu.api.load import load_text
    from emu.cli import main as emu_main
    from emu.control.cluster import Cluster

    port = free_port()
    cluster = Cluster(NAME)
    cluster.down()
    cluster.up(load_text(LAB.replace("NAME", NAME).replace("PORT", str(port))))
    context.stack.callback(cluster.down)
    folder = Path(tempfile.mkdtemp(prefix="emubench-ingapi-"))
    counter = iter(range(10**6))

    def kubectl(*argv: str) -> None:
        subprocess.run(["kubectl", "--context", f"emu-{NAME}", *argv], check=True, capture_output=True, timeout=60)

    def emu(*argv: str) -> None:
        said = io.StringIO()
        with contextlib.redirect_stdout(said):  # (what it made: not for the table)
            # (-n default: `emu delete -f` of a manifest naming no namespace finds nothing without it)
            status = emu_main([*argv, "--name", NAME, "-n", "default", *(["-q"] if argv[0] == "apply" else [])])
        if status != 0:
            raise SystemExit(f"emu {' '.join(argv)} failed: {said.getvalue()}")

    def one(kind: str) -> float:
        host = f"{kind}-{next(counter)}.example.com"
        manifest = folder / f"{host}.yaml"
        manifest.write_text(INGRESS.replace("HOST", host))
        started = time.perf_counter()
        if kind == "kubectl":
            kubectl("apply", "-f", str(manifest))
        else:
            emu("apply", "-f", str(manifest))
        until_status(port, host, 200)
        took = time.perf_counter() - started
        if kind == "kubectl":
            kubectl("delete", "-f", str(manifest))
        else:
            emu("delete", "-f", str(manifest))
        until_status(port, host, 404)
        return took

    api, state = context.alternate(lambda: one("kubectl"), lambda: one("emu"))
    context.report.compare("Ingress applied -> its host answers through nginx", api, state, "s",
                           note="emu: kubectl apply, the controller's watch; baseline: emu apply -f "
                                "(state file, then the mirror into the API server)")  # fmt: skip


def render(context: harness.Context) -> None:
    import apilab

    from emu.api.load import load_text
    from emu.control.apiserver import mirror_objects
    from emu.control.state import plan_cluster
    from emu.apiserver.auth import issue_token
    from emu.node import ingress
    from emu.node.agent.ingress import IngressSync
    from emu.node.kube.client import Client, resource_path
    from emu.node.records import ClusterState, read_state_text

    lab = LAB.replace("NAME", "lab").replace("    extraPortMappings: [{containerPort: 80, hostPort: PORT}]\n", "")
    state = plan_cluster(load_text(lab), "emu-lab", "172.28.0.0/24")
    objects = [o for o in mirror_objects(state, [], time.time())
               if o["kind"] in ("Service", "ServiceAccount", "IngressClass", "Namespace")]  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="emubench-ingapi-render-"))
    lab_api = apilab.start(folder, objects)
    context.stack.callback(lab_api.kill)
    token = folder / "token"
    token.write_text(issue_token((lab_api.pki / "sa.key").read_bytes(), ingress.NAMESPACE, ingress.SERVICE_ACCOUNT,
                                 "uid-bench", [], 3600))  # fmt: skip
    config_dir = folder / "nginx"
    (config_dir / "certs").mkdir(parents=True)
    for name in ("default.crt", "default.key"):
        (config_dir / "certs" / name).write_text("")
    ingress.CONFIG_DIR, ingress.CONFIG = str(config_dir), str(config_dir / "nginx.conf")
    ingress.CERT_DIR, ingress.PID_FILE = str(config_dir / "certs"), str(config_dir / "nginx.pid")

    def ok(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 0, "", "")

    pod = ingress.controller_pod(state)
    sync = IngressSync(pod.node, lambda message: None, run=ok,
                       connect=lambda s, p: Client(lab_api.url, str(lab_api.pki / "ca.crt"), token_file=str(token)))
    sync.sync(state, {})
    deadline = time.monotonic() + 30
    while not sync.ready():
        if time.monotonic() > deadline:
            raise SystemExit("the controller's informers did not list")
        time.sleep(0.01)
    sync.sync(state, {})
    context.stack.callback(sync.stop_watch)
    path = resource_path("networking.k8s.io/v1", "ingresses", "default")
    counter = iter(range(10**6))

    def through_api() -> float:
        host = f"api-{next(counter)}.example.com"
        body = json.loads(json.dumps(_manifest(host)))
        started = time.perf_counter()
        lab_api.admin.create(path, body)
        while f"server_name {host};" not in Path(ingress.CONFIG).read_text():
            time.sleep(0.0005)
        took = time.perf_counter() - started
        lab_api.admin.delete(f"{path}/bench-{host.split('.')[0]}")
        return took

    state_file = folder / "state.json"

    def through_state() -> float:
        host = f"state-{next(counter)}.example.com"
        state_file.write_text(dataclasses.replace(state, ingresses=[ingress.flat(_manifest(host))]).to_json())
        started = time.perf_counter()
        loaded = ClusterState.from_json(read_state_text(str(state_file)), node=pod.node)
        text = ingress.render(loaded, {})
        took = time.perf_counter() - started
        assert f"server_name {host};" in text
        return took

    api, baseline = context.alternate(through_api, through_state)
    context.report.compare("an Ingress -> the controller's nginx.conf", api, baseline, "ms",
                           note="emu: POST to the API server, the controller's watch and render; baseline: "
                                "the agent reading a state file with it and rendering")  # fmt: skip


def _manifest(host: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": f"bench-{host.split('.')[0]}", "namespace": "default"},
            "spec": {"ingressClassName": "nginx", "rules": [{"host": host, "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "echo", "port": {"number": 80}}}}
            ]}}]}}  # fmt: skip


SCENARIOS = [
    harness.Scenario("answers", "kubectl apply of an Ingress -> its host answers through nginx (Docker)",
                     "emu apply -f of the same Ingress (the state file)", answers),
    harness.Scenario("render", "an Ingress POSTed -> the controller's nginx.conf (no Docker)",
                     "a state file with it read and rendered", render),
]


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=5))
