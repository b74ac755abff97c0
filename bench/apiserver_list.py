#!/usr/bin/env python3
"""How fast `kubectl get pods -A -o json` lists 2,000 pods from emu's API server,
beside reading the same rows from the SQLite file and printing them.

The server runs in-process on 127.0.0.1 (plain HTTP) with a temporary store;
the pods are written through the server's own create path (defaults and all).
Prints the median of each over the rounds, and their ratio (issue 21 aims:
under 0.5 s, and within 2x of the SQLite read).

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
import time
import urllib.request
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
        kubectl = [args.kubectl, "--server", base, "get", "pods", "-A", "-o", "json"]

        def run_kubectl():
            out = subprocess.run(kubectl, capture_output=True, env=env, timeout=60, check=True).stdout
            assert len(json.loads(out)["items"]) == args.pods

        def read_sqlite():
            con = sqlite3.connect(str(db))
            rows = con.execute("SELECT body FROM objects WHERE resource='pods' ORDER BY namespace, name").fetchall()
            sys.stdout.flush()
            with open(os.devnull, "w") as devnull:
                devnull.write("\n".join(r[0] for r in rows))
            con.close()
            assert len(rows) == args.pods

        def http_pages():
            # what kubectl asks: pages of 500 with continue tokens; the bytes only, not parsed
            token, total = "", 0
            while True:
                url = base + "/api/v1/pods?limit=500" + (f"&continue={token}" if token else "")
                with urllib.request.urlopen(url, timeout=30) as r:
                    body = r.read()
                total += body.count(b'"kind":"Pod"')
                m = re.search(rb'"continue":"([^"]+)"', body[:300])
                if not m:
                    break
                token = m.group(1).decode()
            assert total == args.pods

        # the warm-up (default 1) fills kubectl's discovery cache, as a user's second command
        k = harness.measure(run_kubectl, args.runs, args.warmup)
        s = harness.measure(read_sqlite, args.runs)
        h = harness.measure(http_pages, args.runs)
        report.compare(f"kubectl get pods -A -o json ({args.pods} pods)", k, s, note="aims: under 0.5 s, within 2x")
        report.compare("the server alone (pages of 500, as kubectl)", h, s)
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
