"""python3 -m emu.apiserver --data DIR --listen HOST:PORT [--tls-cert F --tls-key F --client-ca F | --insecure]

Serves the Kubernetes API from DIR/state.db; logs one line a request to stderr;
exits cleanly on SIGTERM and SIGINT."""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import sys
import threading

from emu.apiserver.server import ApiServer
from emu.apiserver.storage import Store


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT (e.g. 127.0.0.1:6443), got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _tls(args) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    if args.client_ca:
        ctx.load_verify_locations(args.client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # bearer tokens need no certificate; authentication decides
    return ctx


def _security(args, store: Store):
    """(authenticator, authorizer): None, None in --insecure mode (everyone is the admin, all allowed);
    in TLS mode auth.py's Authenticator and rbac.py's Authorizer, which this stage does not ship yet."""
    if args.insecure:
        return None, None
    try:
        from emu.apiserver import auth, rbac  # type: ignore[attr-defined]
    except ImportError as e:
        sys.exit(f"emu.apiserver: TLS mode needs emu/apiserver/auth.py and rbac.py ({e}); "
                 "run with --insecure for an unauthenticated test server")
    return auth.Authenticator.from_pki(args.pki), rbac.Authorizer(store)


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
    args = p.parse_args(argv)
    if not args.insecure and not (args.tls_cert and args.tls_key):
        p.error("give --tls-cert and --tls-key (and --client-ca), or --insecure")
    os.makedirs(args.data, exist_ok=True)
    store = Store(os.path.join(args.data, "state.db"))
    authn, authz = _security(args, store)
    server = ApiServer(store, authenticator=authn, authorizer=authz, ssl_context=None if args.insecure else _tls(args),
                       service_cidr=args.service_cidr)
    server.make_httpd(args.listen)

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheme = "http" if args.insecure else "https"
    host, port = server._httpd.server_address[:2]
    print(f"emu apiserver: serving on {scheme}://{host}:{port}, store {args.data}/state.db", file=sys.stderr, flush=True)
    server.serve(args.listen)
    store.close()
    print("emu apiserver: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
