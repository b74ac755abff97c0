#!/usr/bin/env python3
"""emu's cluster PKI (emu.control.pki.make_pki) against openssl making the same certificates, same run.

Both make, for --nodes nodes: the CA (EC P-256, 10 years), the API server's
serving certificate with its SANs, the admin, kube-proxy and one client
certificate a node (EC P-256, 1 year) and the RSA 2048 service account key.
openssl runs as a kubeadm-like script would: one `openssl req -x509` for the
CA, then `openssl req -new` + `openssl x509 -req` a certificate, `openssl
genpkey` for the SA key. Printed: best and median of --rounds for each, and
the ratio. Needs /usr/bin/openssl.
usage: python bench/pki.py [--nodes 3] [--runs 5] [--json]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import harness

from emu.control.pki import make_pki

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def run(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def openssl_pki(names: list[str], node_ip: str, service_ip: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        run("req", "-x509", *EC, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-subj", "/CN=kubernetes",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
            cwd=d)
        sans = ",".join(
            ["DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
             "DNS:kubernetes.default.svc.cluster.local", "DNS:localhost", f"DNS:{names[0]}",
             "IP:127.0.0.1", f"IP:{node_ip}", f"IP:{service_ip}"]
        )
        certs = [("apiserver", "/CN=kube-apiserver", "serverAuth", sans),
                 ("admin", "/O=system:masters/CN=kubernetes-admin", "clientAuth", ""),
                 ("kube-proxy", "/CN=system:kube-proxy", "clientAuth", "")]
        certs += [(f"node-{n}", f"/O=system:nodes/CN=system:node:{n}", "clientAuth", "") for n in names]
        for stem, subj, usage, san in certs:
            run("req", "-new", *EC, "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", subj, cwd=d)
            ext = Path(d, f"{stem}.ext")
            ext.write_text(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else "")
            )
            run("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "365", "-out", f"{stem}.crt", "-extfile", f"{stem}.ext", cwd=d)
        run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=d)
        run("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def whole_pki(context: harness.Context) -> None:
    nodes = context.options.nodes
    names = ["control-plane"] + [f"worker{i}" for i in range(1, nodes)]
    emu_times, ssl_times = [], []
    for _ in range(context.runs):  # alternating, so both meet the same load
        emu_times.append(harness.timed(lambda: make_pki(["172.18.0.2"], "10.96.0.1", names)))
        ssl_times.append(harness.timed(lambda: openssl_pki(names, "172.18.0.2", "10.96.0.1")))
    context.report.compare(f"whole PKI, {nodes} nodes ({nodes + 3} certs + CA + SA key)", emu_times, ssl_times, "ms")


SCENARIOS = [
    harness.Scenario("pki", "emu.control.pki.make_pki: CA, API server, admin, kube-proxy, a cert a node, SA key",
                     "openssl CLI making the same files, as a kubeadm-like script", whole_pki),
]


def options(parser) -> None:
    parser.add_argument("--nodes", type=int, default=3)


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=5, options=options))
