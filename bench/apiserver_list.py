#!/usr/bin/env python3
"""How fast `kubectl get pods -A -o json` lists 2,000 pods from emu's API server,
beside reading the same rows from the SQLite file and printing them.

The server runs in-process on 127.0.0.1 (plain HTTP) with a temporary store;
the pods are written through the server's own create path (defaults and all).
Prints the median of each over the rounds, and their ratio (issue 21 aims:
under 0.5 s, and within 2x of the SQLite read).

kubectl's own share: the same kubectl against a replay server, which answered
each request once through emu's server and then sends the very same bytes
again, doing no work; kubectl's time there is what it takes with any server.
The same for `kubectl get pods -A` (the Table form, which the server builds).

usage: python bench/apiserver_list.py [--pods N] [--runs N] [--kubectl PATH] [--json]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import harness

from emu.apiserver.server import ApiServer
from emu.apiserver.storage import Store


def pod(i: int) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"web-{i:05d}", "namespace": f"ns-{i % 20:02d}",
                         "labels": {"app": "web", "pod-template-hash": "6d4cf56db6"}},
            "spec": {"nodeName": f"w{i % 50}", "containers": [
                {"name": "web", "image": "registry.k8s.io/e2e-test-images/agnhost:2.47",
                 "args": ["netexec", "--http-port=8080"], "ports": [{"containerPort": 8080}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 2}}]}}


def post(base: str, path: str, obj: dict) -> None:
    req = urllib.request.Request(base + path, data=json.dumps(obj).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


TABLE = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
         "application/json")  # kubectl get's Accept


def replay_server(upstream: str) -> ThreadingHTTPServer:
    """A server that asks `upstream` each (path, Accept) once and then answers it with
    the same status, type and bytes (kubectl's continue tokens repeat: same revision)."""
    answers: dict[tuple[str, str], tuple[int, str, bytes]] = {}

    class Replay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            key = (self.path, self.headers.get("Accept", ""))
            if key not in answers:
                req = urllib.request.Request(upstream + self.path, headers={"Accept": key[1]})
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        answers[key] = (r.status, r.headers.get("Content-Type", ""), r.read())
                except urllib.error.HTTPError as e:
                    answers[key] = (e.code, e.headers.get("Content-Type", ""), e.read())
            code, ctype, body = answers[key]
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def list_pods(context: harness.Context) -> None:
    args, report = context.options, context.report
    tmp = Path(tempfile.mkdtemp(prefix="emu-bench-apiserver-"))
    try:
        db = tmp / "state.db"
        store = Store(str(db))
        server = ApiServer(store, log=open(os.devnull, "w"))
        host, port = server.start(("127.0.0.1", 0))
        base = f"http://{host}:{port}"
        t0 = time.perf_counter()
        for n in range(20):
            post(base, "/api/v1/namespaces", {"metadata": {"name": f"ns-{n:02d}"}})
        for i in range(args.pods):
            post(base, f"/api/v1/namespaces/ns-{i % 20:02d}/pods", pod(i))
        report.note(f"created {args.pods} pods through the API in {time.perf_counter() - t0:.2f} s")

        env = {**os.environ, "HOME": str(tmp)}
        replay = replay_server(base)
        replay_base = f"http://127.0.0.1:{replay.server_address[1]}"

        def kubectl_json(server: str):
            def run():
                out = subprocess.run([args.kubectl, "--server", server, "get", "pods", "-A", "-o", "json"],
                                     capture_output=True, env=env, timeout=60, check=True).stdout
                assert len(json.loads(out)["items"]) == args.pods
            return run

        def kubectl_table(server: str):
            def run():
                out = subprocess.run([args.kubectl, "--server", server, "get", "pods", "-A"],
                                     capture_output=True, env=env, timeout=60, check=True).stdout
                assert out.count(b"\n") == args.pods + 1
            return run

        run_kubectl = kubectl_json(base)

        def read_sqlite():
            con = sqlite3.connect(str(db))
            rows = con.execute("SELECT body FROM objects WHERE resource='pods' ORDER BY namespace, name").fetchall()
            sys.stdout.flush()
            with open(os.devnull, "w") as devnull:
                devnull.write("\n".join(r[0] for r in rows))
            con.close()
            assert len(rows) == args.pods

        def http_pages(accept: str = "application/json", kind: bytes = b'"kind":"Pod"'):
            # what kubectl asks: pages of 500 with continue tokens; the bytes only, not parsed
            def run():
                token, total = "", 0
                while True:
                    url = base + "/api/v1/pods?limit=500" + (f"&continue={token}" if token else "")
                    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}),
                                                timeout=30) as r:
                        body = r.read()
                    total += body.count(kind)
                    m = re.search(rb'"continue":"([^"]+)"', body)
                    if not m:
                        break
                    token = m.group(1).decode()
                assert total == args.pods
            return run

        # the warm-up (default 1) fills kubectl's discovery cache, as a user's second command,
        # and the replay server's answers
        warm = max(args.warmup, 1)
        k = harness.measure(run_kubectl, args.runs, args.warmup)
        kr = harness.measure(kubectl_json(replay_base), args.runs, warm)
        s = harness.measure(read_sqlite, args.runs)
        h = harness.measure(http_pages(), args.runs)
        report.compare(f"kubectl get pods -A -o json ({args.pods} pods)", k, s, note="aims: under 0.5 s, within 2x")
        report.compare("the same, kubectl alone (replay server)", kr, s)
        report.compare("  emu / kubectl alone", k, kr)
        report.compare("the server alone (pages of 500, as kubectl)", h, s)
        t = harness.measure(kubectl_table(base), args.runs, args.warmup)
        tr = harness.measure(kubectl_table(replay_base), args.runs, warm)
        th = harness.measure(http_pages(TABLE, b'"kind":"PartialObjectMetadata"'), args.runs)
        report.compare(f"kubectl get pods -A (Table, {args.pods} pods)", t, s)
        report.compare("the same, kubectl alone (replay server)", tr, s)
        report.compare("  emu / kubectl alone", t, tr)
        report.compare("the server alone, Table pages of 500", th, s)
        replay.shutdown()
        server.shutdown()
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SCENARIOS = [
    harness.Scenario("list", "kubectl get pods -A -o json from emu's API server (in-process, plain HTTP)",
                     "the same rows read from the SQLite file and printed", list_pods),
]


def options(parser) -> None:
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--kubectl", default=shutil.which("kubectl") or "kubectl")


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=5, warmup=1, options=options))
