"""Authentication: who is asking (docs/apiserver.md).

As kube-apiserver's authenticators, tried in its order:
- a client certificate the TLS layer verified against the cluster CA:
  CN is the user, each O a group;
- `Authorization: Bearer <token>`: a service account JWT signed RS256 with
  the cluster's service account key (Kubernetes' bound tokens: issuer,
  audience, expiry, the `kubernetes.io` private claims), or a static token;
- nothing else: no credentials is no user (the server answers 401; anonymous
  requests are refused, as the cluster is configured with --anonymous-auth=false).
Every authenticated user gets the group system:authenticated, as the
authenticator chain of kube-apiserver adds it.

Runs in the node: standard library and `cryptography` as Debian 12 ships it
(38.0.4): only APIs that exist there.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import os
import ssl
import tempfile
import time
import uuid
from typing import Any, Callable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography import x509

from emu.apiserver.types import User

ISSUER = "https://kubernetes.default.svc.cluster.local"  # kubeadm's --service-account-issuer
AUTHENTICATED = "system:authenticated"
SA_PREFIX = "system:serviceaccount:"
SA_GROUP = "system:serviceaccounts"
# go-jose's default leeway, which Kubernetes' token validation uses for exp/nbf/iat.
LEEWAY = 60
# Extra keys kube-apiserver puts on a service account user (authentication.kubernetes.io/...).
EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
EXTRA_NODE_UID = "authentication.kubernetes.io/node-uid"
EXTRA_CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(public_key) -> str:
    """The `kid` Kubernetes puts in token headers: base64url(SHA-256(DER SubjectPublicKeyInfo))."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _b64url(hashlib.sha256(der).digest())


@functools.lru_cache(maxsize=4)
def _signing_key(pem: bytes):
    """The loaded RSA key, once per process: loading checks the key (about 90 ms of
    CPU), and the API server signs a token for every pod of the cluster."""
    key = serialization.load_pem_private_key(pem, None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the service account signing key must be an RSA private key (RS256)")
    return key


def issue_token(
    sa_private_pem: bytes,
    namespace: str,
    name: str,
    uid: str,
    audiences: list[str] | tuple[str, ...],
    expiration_seconds: int,
    pod: Mapping[str, str] | None = None,
    *,
    node: Mapping[str, str] | None = None,
    issuer: str = ISSUER,
    now: float | None = None,
) -> str:
    """A service account token as the TokenRequest API returns it (RS256 JWT).

    pod / node: {"name", "uid"} of the object the token is bound to.
    audiences: empty means the API server's own audience (the issuer), as
    kube-apiserver defaults a TokenRequest without audiences."""
    key = _signing_key(sa_private_pem)
    issued = int(now if now is not None else time.time())
    private: dict[str, Any] = {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}}
    if pod is not None:
        private["pod"] = {"name": pod["name"], "uid": pod["uid"]}
    if node is not None:
        private["node"] = {"name": node["name"], "uid": node["uid"]}
    claims = {
        "aud": list(audiences) or [issuer],
        "exp": issued + int(expiration_seconds),
        "iat": issued,
        "iss": issuer,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": private,
        "nbf": issued,
        "sub": f"{SA_PREFIX}{namespace}:{name}",
    }
    header = {"alg": "RS256", "kid": key_id(key.public_key())}
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + _b64url(signature)


def _header(headers: Any, name: str) -> str | None:
    """A request header from http.client.HTTPMessage / email.Message (case-insensitive) or a plain dict."""
    if headers is None:
        return None
    value = headers.get(name)
    if value is None and isinstance(headers, Mapping):
        lowered = name.lower()
        for key, val in headers.items():
            if key.lower() == lowered:
                return val
    return value


def _with_authenticated(groups) -> tuple[str, ...]:
    groups = tuple(groups)
    return groups if AUTHENTICATED in groups else groups + (AUTHENTICATED,)


def _rdns(name: x509.Name) -> tuple:
    """A cryptography Name in the shape ssl.getpeercert() gives ((('commonName', 'x'),), ...)."""
    return tuple(tuple((attr.oid._name, attr.value) for attr in rdn) for rdn in name.rdns)


class Authenticator:
    """Authenticates a request from its TLS peer certificate and headers.

    ca_pem: the cluster CA; a peer certificate must name it as issuer (the
    TLS layer, see server_ssl_context, has verified the signature).
    sa_public_pem: the service account verification key (sa.pub), or a list of them.
    static_tokens: {token: User} (groups get system:authenticated added).
    audiences: the API audiences a token must carry one of (kube-apiserver
    defaults them to the issuer).
    token_check: optional callable(claims) -> bool the server may give to
    refuse tokens whose service account or pod is gone, as kube-apiserver
    checks bound tokens against its store."""

    def __init__(
        self,
        ca_pem: bytes,
        sa_public_pem: bytes | list[bytes] | None,
        static_tokens: Mapping[str, User] | None = None,
        *,
        issuer: str = ISSUER,
        audiences: list[str] | tuple[str, ...] | None = None,
        token_check: Callable[[dict], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._ca_subject = _rdns(x509.load_pem_x509_certificate(ca_pem).subject) if ca_pem else None
        if sa_public_pem is None:
            pems: list[bytes] = []
        elif isinstance(sa_public_pem, (bytes, str)):
            pems = [sa_public_pem]
        else:
            pems = list(sa_public_pem)
        self._sa_keys = []
        for pem in pems:
            key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
            if not isinstance(key, rsa.RSAPublicKey):
                raise ValueError("service account verification keys must be RSA public keys (RS256)")
            self._sa_keys.append(key)
        self._static = dict(static_tokens or {})
        self.issuer = issuer
        self.audiences = tuple(audiences) if audiences else (issuer,)
        self._token_check = token_check
        self._clock = clock

    @classmethod
    def from_directory(cls, directory: str, **kwargs: Any) -> "Authenticator":
        """An Authenticator over the PKI files in `directory` (ca.crt, sa.pub: emu.control.pki's layout)."""
        with open(os.path.join(directory, "ca.crt"), "rb") as f:
            ca = f.read()
        with open(os.path.join(directory, "sa.pub"), "rb") as f:
            sa_pub = f.read()
        return cls(ca, sa_pub, **kwargs)

    def authenticate(self, peer_cert: dict | None, headers: Any) -> User | None:
        """The request's User, or None when it carries no valid credentials (answer 401).

        peer_cert: what ssl.SSLSocket.getpeercert() returned (None when the
        client sent no certificate). headers: the request headers."""
        user = self.authenticate_certificate(peer_cert)
        if user is not None:
            return user
        auth = _header(headers, "Authorization")
        if not auth:
            return None
        # kube-apiserver's bearer token parsing: the scheme case-insensitive, the token the second
        # space-separated field (anything after a further space ignored; "Bearer  x" is an empty token).
        parts = auth.strip().split(" ", 2)
        if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
            return None
        return self.authenticate_token(parts[1])

    def authenticate_certificate(self, peer_cert: dict | None) -> User | None:
        """The User of a verified client certificate: CN the name, each O a group."""
        if not peer_cert:
            # None: no certificate; {}: a certificate the TLS layer did not verify.
            return None
        if self._ca_subject is not None and tuple(peer_cert.get("issuer", ())) != self._ca_subject:
            return None
        cn = ""
        orgs: list[str] = []
        for rdn in peer_cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    cn = value
                elif key == "organizationName":
                    orgs.append(value)
        if not cn:
            return None  # kube-apiserver refuses a certificate with an empty common name
        return User(cn, _with_authenticated(orgs))

    def authenticate_token(self, token: str) -> User | None:
        """The User of a bearer token (static, then service account JWT), or None."""
        for known, user in self._static.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return User(user.name, _with_authenticated(user.groups), user.uid, dict(user.extra))
        claims = self.verify_service_account_token(token)
        if claims is None:
            return None
        private = claims["kubernetes.io"]
        ns = private["namespace"]
        sa = private["serviceaccount"]
        extra: dict[str, tuple[str, ...]] = {}
        if isinstance(private.get("pod"), dict):
            extra[EXTRA_POD_NAME] = (private["pod"].get("name", ""),)
            extra[EXTRA_POD_UID] = (private["pod"].get("uid", ""),)
        if isinstance(private.get("node"), dict):
            extra[EXTRA_NODE_NAME] = (private["node"].get("name", ""),)
            extra[EXTRA_NODE_UID] = (private["node"].get("uid", ""),)
        if claims.get("jti"):
            extra[EXTRA_CREDENTIAL_ID] = (f"JTI={claims['jti']}",)
        return User(
            f"{SA_PREFIX}{ns}:{sa['name']}",
            (SA_GROUP, f"{SA_GROUP}:{ns}", AUTHENTICATED),
            sa.get("uid", ""),
            extra,
        )

    def verify_service_account_token(self, token: str) -> dict | None:
        """The claims of a valid service account JWT (signature, issuer, audience, time), else None."""
        if not self._sa_keys or token.count(".") != 2:
            return None
        head_b64, body_b64, sig_b64 = token.split(".")
        try:
            header = json.loads(_unb64url(head_b64))
            claims = json.loads(_unb64url(body_b64))
            signature = _unb64url(sig_b64)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
            return None
        signing_input = f"{head_b64}.{body_b64}".encode("ascii")
        for key in self._sa_keys:
            try:
                key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
                break
            except InvalidSignature:
                continue
        else:
            return None
        if claims.get("iss") != self.issuer:
            return None
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not set(auds) & set(self.audiences):
            return None
        now = self._clock()
        try:
            if "exp" not in claims or now > float(claims["exp"]) + LEEWAY:
                return None
            if "nbf" in claims and now < float(claims["nbf"]) - LEEWAY:
                return None
            if "iat" in claims and now < float(claims["iat"]) - LEEWAY:
                return None
        except (TypeError, ValueError):
            return None
        private = claims.get("kubernetes.io")
        if not isinstance(private, dict):
            return None
        ns, sa = private.get("namespace"), private.get("serviceaccount")
        if not isinstance(ns, str) or not ns or not isinstance(sa, dict) or not sa.get("name"):
            return None
        if claims.get("sub") != f"{SA_PREFIX}{ns}:{sa['name']}":
            return None
        if self._token_check is not None and not self._token_check(claims):
            return None
        return claims


def server_ssl_context(cert_pem: bytes, key_pem: bytes, client_ca_pem: bytes) -> ssl.SSLContext:
    """The API server's TLS context: its serving certificate, TLS 1.2 or newer,
    client certificates verified against the cluster CA when sent (CERT_OPTIONAL,
    so that clients with only a bearer token connect too)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # load_cert_chain reads files only: a private temporary file, removed at once.
    fd, path = tempfile.mkstemp(prefix="emu-apiserver-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(cert_pem if cert_pem.endswith(b"\n") else cert_pem + b"\n")
            f.write(key_pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
    ctx.load_verify_locations(cadata=client_ca_pem.decode("ascii"))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    # HTTP/1.1 only: Go clients offer h2 first and must not pick it.
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def server_ssl_context_from_directory(directory: str) -> ssl.SSLContext:
    """server_ssl_context over apiserver.crt, apiserver.key and ca.crt in `directory` (emu.control.pki's layout)."""
    def read(name: str) -> bytes:
        with open(os.path.join(directory, name), "rb") as f:
            return f.read()

    return server_ssl_context(read("apiserver.crt"), read("apiserver.key"), read("ca.crt"))
