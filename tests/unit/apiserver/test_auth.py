"""emu.apiserver.auth: certificates, service account tokens, static tokens, and TLS with the real kubectl."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request

import pytest

from emu.apiserver.auth import (
    EXTRA_CREDENTIAL_ID,
    EXTRA_POD_NAME,
    EXTRA_POD_UID,
    ISSUER,
    Authenticator,
    issue_token,
    key_id,
    server_ssl_context,
    server_ssl_context_from_directory,
)
from emu.apiserver.types import User
from emu.control import kubeconfig
from emu.control.pki import make_pki

KUBECTL = "/usr/bin/kubectl"
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def pki():
    return make_pki(["172.18.0.2"], "10.96.0.1", ["cp", "w1"])


@pytest.fixture(scope="module")
def other_pki():
    return make_pki(["172.18.0.2"], "10.96.0.1", ["cp"])


def authn(pki, **kw) -> Authenticator:
    kw.setdefault("clock", lambda: NOW)
    return Authenticator(pki.ca_cert, pki.sa_pub, **kw)


def token(pki, **kw) -> str:
    args = dict(namespace="team", name="robot", uid="sa-uid-1", audiences=[], expiration_seconds=3600, now=NOW)
    args.update(kw)
    return issue_token(pki.sa_key, **args)


def peer(cn: str, orgs=(), issuer_cn="kubernetes") -> dict:
    """What ssl.getpeercert() returns for a verified certificate."""
    subject = tuple(((("organizationName", o),) for o in orgs)) + ((("commonName", cn),),)
    return {"subject": subject, "issuer": ((("commonName", issuer_cn),),), "version": 3}


def bearer(t: str) -> dict:
    return {"Authorization": f"Bearer {t}"}


# --- client certificates -------------------------------------------------------------------------


def test_certificate_cn_is_the_user_and_each_o_a_group(pki):
    a = authn(pki)
    assert a.authenticate(peer("kubernetes-admin", ["system:masters"]), {}) == User(
        "kubernetes-admin", ("system:masters", "system:authenticated"))
    assert a.authenticate(peer("system:node:w1", ["system:nodes", "x"]), {}) == User(
        "system:node:w1", ("system:nodes", "x", "system:authenticated"))


def test_certificate_without_cn_or_unverified_or_from_another_issuer_is_nobody(pki):
    a = authn(pki)
    assert a.authenticate({"subject": ((("organizationName", "system:masters"),),),
                           "issuer": ((("commonName", "kubernetes"),),)}, {}) is None
    assert a.authenticate({}, {}) is None  # getpeercert() of an unverified certificate
    assert a.authenticate(None, {}) is None
    assert a.authenticate(peer("kubernetes-admin", ["system:masters"], issuer_cn="evil"), {}) is None


# --- service account tokens ----------------------------------------------------------------------


def claims_of(t: str) -> tuple[dict, dict]:
    head, body, _ = t.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return json.loads(base64.urlsafe_b64decode(pad(head))), json.loads(base64.urlsafe_b64decode(pad(body)))


def test_issued_token_has_kubernetes_bound_token_claims(pki):
    from cryptography.hazmat.primitives import serialization

    t = token(pki, pod={"name": "web-1", "uid": "pod-uid"}, audiences=["api", "vault"])
    header, claims = claims_of(t)
    assert header == {"alg": "RS256", "kid": key_id(serialization.load_pem_public_key(pki.sa_pub))}
    assert claims["iss"] == ISSUER == "https://kubernetes.default.svc.cluster.local"
    assert claims["sub"] == "system:serviceaccount:team:robot"
    assert claims["aud"] == ["api", "vault"]
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (int(NOW), int(NOW), int(NOW) + 3600)
    assert claims["kubernetes.io"] == {
        "namespace": "team",
        "serviceaccount": {"name": "robot", "uid": "sa-uid-1"},
        "pod": {"name": "web-1", "uid": "pod-uid"},
    }
    assert claims["jti"]


def test_service_account_token_is_the_service_account_user(pki):
    t = token(pki, pod={"name": "web-1", "uid": "pod-uid"})
    user = authn(pki).authenticate(None, bearer(t))
    assert user == User(
        "system:serviceaccount:team:robot",
        ("system:serviceaccounts", "system:serviceaccounts:team", "system:authenticated"),
        "sa-uid-1",
    )
    assert user.extra[EXTRA_POD_NAME] == ("web-1",)
    assert user.extra[EXTRA_POD_UID] == ("pod-uid",)
    assert user.extra[EXTRA_CREDENTIAL_ID] == (f"JTI={claims_of(t)[1]['jti']}",)


def test_header_lookup_is_case_insensitive_and_scheme_too(pki):
    t = token(pki)
    a = authn(pki)
    assert a.authenticate(None, {"authorization": f"bearer {t}"}).name == "system:serviceaccount:team:robot"
    msg = http.client.HTTPMessage()
    msg["AUTHORIZATION"] = f"Bearer {t}"
    assert a.authenticate(None, msg) is not None


@pytest.mark.parametrize(
    "case",
    ["expired", "not-yet", "other-key", "tampered", "alg-none", "wrong-audience", "wrong-issuer",
     "garbage", "basic", "empty-bearer", "space-before-token", "no-header"],
)
def test_bad_tokens_are_nobody(pki, other_pki, case):
    a = authn(pki)
    good = token(pki)
    headers = {
        "expired": bearer(token(pki, now=NOW - 3600 - 61)),
        "not-yet": bearer(token(pki, now=NOW + 120)),
        "other-key": bearer(token(other_pki)),
        "tampered": bearer(good.split(".")[0] + "." + base64.urlsafe_b64encode(
            json.dumps({**claims_of(good)[1], "sub": "system:serviceaccount:kube-system:admin"}).encode()
        ).decode().rstrip("=") + "." + good.split(".")[2]),
        "alg-none": bearer(base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("=") + "."
                           + good.split(".")[1] + "."),
        "wrong-audience": bearer(token(pki, audiences=["vault"])),
        "wrong-issuer": bearer(issue_token(pki.sa_key, "team", "robot", "u", [], 3600, issuer="https://evil", now=NOW)),
        "garbage": bearer("a.b.c"),
        "basic": {"Authorization": "Basic dXNlcjpwdw=="},
        "empty-bearer": {"Authorization": "Bearer "},
        "space-before-token": {"Authorization": f"Bearer  {good}"},
        "no-header": {},
    }[case]
    assert a.authenticate(None, headers) is None


def test_fields_after_the_token_are_ignored_as_kube_apiserver_does(pki):
    assert authn(pki).authenticate(None, {"Authorization": f"Bearer {token(pki)} trailing"}) is not None


def test_expiry_has_kubernetes_one_minute_leeway(pki):
    t = token(pki, now=NOW - 3600 - 30)  # expired 30 s ago
    assert authn(pki).authenticate(None, bearer(t)) is not None


def test_a_token_for_an_extra_audience_is_accepted_when_configured(pki):
    assert authn(pki, audiences=["vault"]).authenticate(None, bearer(token(pki, audiences=["vault"]))) is not None


def test_token_check_can_revoke(pki):
    a = authn(pki, token_check=lambda claims: claims["kubernetes.io"]["serviceaccount"]["uid"] != "sa-uid-1")
    assert a.authenticate(None, bearer(token(pki))) is None
    assert a.authenticate(None, bearer(token(pki, uid="sa-uid-2"))) is not None


def test_static_tokens(pki):
    a = authn(pki, static_tokens={"s3cret": User("system:node:w1", ("system:nodes",))})
    assert a.authenticate(None, bearer("s3cret")) == User("system:node:w1", ("system:nodes", "system:authenticated"))
    assert a.authenticate(None, bearer("s3cre")) is None


def test_certificate_wins_over_a_token(pki):
    a = authn(pki)
    user = a.authenticate(peer("kubernetes-admin", ["system:masters"]), bearer(token(pki)))
    assert user.name == "kubernetes-admin"


# --- TLS end to end with the real kubectl -----------------------------------------------------------


class WhoAmI(http.server.BaseHTTPRequestHandler):
    """Answers /whoami with the User the Authenticator saw, or 401 as kube-apiserver."""

    authenticator: Authenticator
    seen: list

    def do_GET(self):  # noqa: N802 (http.server's naming)
        user = self.authenticator.authenticate(self.connection.getpeercert(), self.headers)
        self.seen.append((self.path, user))
        if user is None:
            body = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
            code = 401
        else:
            body = json.dumps({"name": user.name, "groups": list(user.groups)})
            code = 200
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(pki):
    handler = type("Handler", (WhoAmI,), {"authenticator": Authenticator(pki.ca_cert, pki.sa_pub), "seen": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.socket = server_ssl_context(pki.apiserver_cert, pki.apiserver_key, pki.ca_cert).wrap_socket(
        httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd, handler.seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def run_kubectl(tmp_path, config_text: str, *args: str) -> subprocess.CompletedProcess:
    config = tmp_path / "kubeconfig"
    config.write_text(config_text)
    env = {**os.environ, "KUBECONFIG": str(config), "HOME": str(tmp_path)}
    return subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


needs_kubectl = pytest.mark.skipif(not os.path.exists(KUBECTL), reason="needs the real kubectl at /usr/bin/kubectl")


@needs_kubectl
def test_kubectl_with_the_admin_certificate_from_a_rendered_kubeconfig(pki, server, tmp_path):
    httpd, seen = server
    url = f"https://127.0.0.1:{httpd.server_address[1]}"
    out = run_kubectl(tmp_path, kubeconfig.render("lab", url, pki.ca_cert, pki.admin_cert, pki.admin_key),
                      "get", "--raw", "/whoami")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"name": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]}
    # kubectl asks /version first; every request was the admin's.
    assert ("/whoami", User("kubernetes-admin", ("system:masters", "system:authenticated"))) in seen
    assert {user for _, user in seen} == {User("kubernetes-admin", ("system:masters", "system:authenticated"))}


@needs_kubectl
def test_kubectl_with_a_node_certificate(pki, server, tmp_path):
    httpd, seen = server
    url = f"https://127.0.0.1:{httpd.server_address[1]}"
    cert, key = pki.nodes["w1"]
    out = run_kubectl(tmp_path, kubeconfig.render("lab", url, pki.ca_cert, cert, key), "get", "--raw", "/whoami")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["name"] == "system:node:w1"


def token_only_config(url: str, ca_pem: bytes) -> str:
    config = kubeconfig.render("lab", url, ca_pem, b"", b"")
    # The same file without the user's credentials: kubectl then sends only what flags give.
    import yaml

    doc = yaml.safe_load(config)
    doc["users"] = [{"name": "emu-lab", "user": {}}]
    return yaml.safe_dump(doc)


@needs_kubectl
def test_kubectl_with_a_service_account_token(pki, server, tmp_path):
    httpd, seen = server
    url = f"https://127.0.0.1:{httpd.server_address[1]}"
    t = issue_token(pki.sa_key, "default", "builder", "uid-7", [], 600)
    out = run_kubectl(tmp_path, token_only_config(url, pki.ca_cert), "--token", t, "get", "--raw", "/whoami")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "name": "system:serviceaccount:default:builder",
        "groups": ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"],
    }


@needs_kubectl
def test_kubectl_without_credentials_is_unauthorized(pki, server, tmp_path):
    httpd, seen = server
    url = f"https://127.0.0.1:{httpd.server_address[1]}"
    out = run_kubectl(tmp_path, token_only_config(url, pki.ca_cert), "get", "--raw", "/whoami")
    # After a 401 a kubeconfig user without credentials makes kubectl prompt for a password
    # (it reads EOF here), as against kube-apiserver.
    assert out.returncode != 0
    assert "Please enter Username" in out.stdout, out.stdout + out.stderr
    assert seen and all(user is None for _, user in seen)
    # A plain HTTPS client without credentials gets the 401 Status.
    client = ssl.create_default_context(cadata=pki.ca_cert.decode())
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url + "/whoami", context=client, timeout=10)
    assert err.value.code == 401 and json.load(err.value)["reason"] == "Unauthorized"


@needs_kubectl
def test_kubectl_with_a_certificate_of_another_ca_fails_the_handshake(pki, other_pki, server, tmp_path):
    httpd, seen = server
    url = f"https://127.0.0.1:{httpd.server_address[1]}"
    out = run_kubectl(tmp_path, kubeconfig.render("lab", url, pki.ca_cert, other_pki.admin_cert, other_pki.admin_key),
                      "get", "--raw", "/whoami")
    assert out.returncode != 0
    # TLS 1.3: the server's alert for a client certificate it does not trust arrives after
    # the client's side of the handshake is done, so kubectl may already be writing its
    # request and see the connection reset instead (once in a loaded full run).
    said = out.stderr.lower()
    assert any(words in said for words in ("tls", "connection reset by peer", "broken pipe", "eof")), out.stderr
    assert seen == []


def test_tls_is_1_2_or_newer_and_http_1_1(pki, server):
    httpd, _ = server
    client = ssl.create_default_context(cadata=pki.ca_cert.decode())
    with pytest.warns(DeprecationWarning):  # Python deprecates the old versions; the test offers them on purpose
        client.maximum_version = ssl.TLSVersion.TLSv1_1
        client.minimum_version = ssl.TLSVersion.TLSv1
    with socket.create_connection(httpd.server_address) as raw:
        with pytest.raises(ssl.SSLError):
            client.wrap_socket(raw, server_hostname="kubernetes.default.svc")
    client = ssl.create_default_context(cadata=pki.ca_cert.decode())
    client.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(httpd.server_address) as raw:
        with client.wrap_socket(raw, server_hostname="kubernetes.default.svc") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def _client_with(pki, cert_pem: bytes, key_pem: bytes, tmp_path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=pki.ca_cert.decode())
    path = tmp_path / "client.pem"
    path.write_bytes(cert_pem + key_pem)
    ctx.load_cert_chain(path)
    return ctx


def test_a_serving_certificate_is_no_client_certificate(pki, server, tmp_path):
    """The API server's own certificate (serverAuth only) cannot log in as a client."""
    httpd, seen = server
    url = f"https://127.0.0.1:{httpd.server_address[1]}/whoami"
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
        urllib.request.urlopen(url, context=_client_with(pki, pki.apiserver_cert, pki.apiserver_key, tmp_path),
                               timeout=10).read()
    assert seen == []
    # The same client with a client certificate of the cluster gets in.
    ok = urllib.request.urlopen(url, context=_client_with(pki, pki.kube_proxy_cert, pki.kube_proxy_key, tmp_path),
                                timeout=10)
    assert json.load(ok) == {"name": "system:kube-proxy", "groups": ["system:authenticated"]}


def test_python_kubernetes_client_with_the_merged_kubeconfig(pki, server, tmp_path):
    """The official Python client loads the kubeconfig emu merges and authenticates with its certificate."""
    kubernetes = pytest.importorskip("kubernetes")
    httpd, seen = server
    url = f"https://127.0.0.1:{httpd.server_address[1]}"
    path = kubeconfig.merge("lab", url, pki.ca_cert, pki.admin_cert, pki.admin_key, path=tmp_path / "config")
    client = kubernetes.config.new_client_from_config(config_file=str(path))
    # The REST layer every generated API call goes through; (method, url) in every client version.
    response = client.rest_client.request("GET", url + "/whoami")
    if hasattr(response, "read"):
        response.read()  # kubernetes >= 31 leaves the body unread
    assert response.status == 200
    assert json.loads(response.data) == {"name": "kubernetes-admin",
                                         "groups": ["system:masters", "system:authenticated"]}


def test_from_the_files_the_pki_writes(pki, tmp_path):
    """The server reads what emu.control.pki writes into the node: same results as from the bytes."""
    pki.write(tmp_path)
    a = Authenticator.from_directory(str(tmp_path), clock=lambda: NOW)
    assert a.authenticate(None, bearer(token(pki))).name == "system:serviceaccount:team:robot"
    ctx = server_ssl_context_from_directory(str(tmp_path))
    assert ctx.verify_mode == ssl.CERT_OPTIONAL and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
