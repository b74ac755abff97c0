"""python3 -m emu.apiserver --data DIR --listen HOST:PORT
       [--pki DIR | --tls-cert F --tls-key F --client-ca F | --insecure]

Serves the Kubernetes API from DIR/state.db; logs one line a request to stderr;
exits cleanly on SIGTERM and SIGINT."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from emu.apiserver.server import ApiServer, cluster_security
from emu.apiserver.storage import Store


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT (e.g. 127.0.0.1:6443), got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _duration(text: str) -> float:
    from emu.node.records import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m emu.apiserver", description="emu's Kubernetes API server")
    p.add_argument("--data", required=True, help="directory of the store (state.db)")
    p.add_argument("--listen", type=_address, default=("127.0.0.1", 6443), help="HOST:PORT to serve on")
    p.add_argument("--tls-cert", help="server certificate (PEM)")
    p.add_argument("--tls-key", help="server key (PEM)")
    p.add_argument("--client-ca", help="CA that signs client certificates (PEM)")
    p.add_argument("--pki", help="directory of the cluster's PKI (for auth.py)")
    p.add_argument("--insecure", action="store_true", help="plain HTTP, every request is the cluster admin")
    p.add_argument("--service-cidr", default="10.96.0.0/12", help="range of Service cluster IPs")
    p.add_argument("--load-balancer-pool", default="",
                   help="FIRST-LAST: the addresses the servicelb controller gives LoadBalancer Services made "
                        "through the API")
    p.add_argument("--emu-driven", action="store_true",
                   help="emu's commands write the kinds they drive (POST /emu/mirror); refuse others' writes to them")
    p.add_argument("--controllers", default="",
                   help="control loops to run in this process, comma-separated (emu.apiserver.controllers: "
                        "endpointslice, endpoints, serviceaccount, rootca, servicelb, scheduler, ...)")
    p.add_argument("--node-monitor-grace-period", type=_duration, default=40.0,
                   help="how long a node's Lease may go unrenewed before the node lifecycle controller marks it "
                        "NotReady (a Go duration, as kube-controller-manager's flag; default 40s)")
    args = p.parse_args(argv)
    if not args.insecure and not args.pki and not (args.tls_cert and args.tls_key):
        p.error("give --pki DIR, or --tls-cert and --tls-key (and --client-ca), or --insecure")
    if args.load_balancer_pool:
        from emu.apiserver.controllers.servicelb import Pool

        try:
            Pool(args.load_balancer_pool)
        except ValueError as e:
            p.error(f"--load-balancer-pool: {e}")
    os.makedirs(args.data, exist_ok=True)
    store = Store(os.path.join(args.data, "state.db"))
    if args.insecure:
        try:
            from emu.apiserver import rbac
            parts = {"bootstrap_objects": rbac.bootstrap_objects()}
        except ImportError:
            parts = {}
    else:
        try:
            parts = cluster_security(store, args.pki, args.tls_cert, args.tls_key, args.client_ca)
        except ImportError as e:
            sys.exit(f"emu.apiserver: TLS mode needs auth.py, rbac.py and admission.py ({e}); "
                     "run with --insecure for an unauthenticated test server")
        except (OSError, ValueError) as e:
            sys.exit(f"emu.apiserver: cannot load the TLS certificates or keys: {e}")
    server = ApiServer(store, service_cidr=args.service_cidr, emu_driven=args.emu_driven, **parts)
    try:
        server.make_httpd(args.listen)
    except OSError as e:
        sys.exit(f"emu.apiserver: cannot listen on {args.listen[0]}:{args.listen[1]}: {e.strerror or e}")

    if args.controllers:
        from emu.apiserver.controllers import start_named

        ca_pem = ""
        if args.pki and os.path.exists(os.path.join(args.pki, "ca.crt")):
            with open(os.path.join(args.pki, "ca.crt")) as handle:
                ca_pem = handle.read()
        try:
            start_named(store, args.controllers.split(","), {
                "service_cidr": args.service_cidr, "ca_pem": ca_pem, "load_balancer_pool": args.load_balancer_pool,
                "node_monitor_grace_period": args.node_monitor_grace_period})
        except ValueError as e:
            sys.exit(f"emu.apiserver: --controllers: {e}")

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheme = "http" if args.insecure else "https"
    host, port = server._httpd.server_address[:2]
    print(f"emu apiserver: serving on {scheme}://{host}:{port}, store {args.data}/state.db", file=sys.stderr,
          flush=True)
    server.serve(args.listen)
    store.close()
    print("emu apiserver: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
