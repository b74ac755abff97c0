"""The cluster's PKI, made on the user's machine at `emu up` (docs/apiserver.md).

What kubeadm makes under /etc/kubernetes/pki, in the same shapes: a CA
(CN "kubernetes", 10 years), the API server's serving certificate, the admin
client certificate (CN kubernetes-admin, O system:masters), one client
certificate per node (CN system:node:<name>, O system:nodes), kube-proxy's
(CN system:kube-proxy, bound to system:node-proxier), the nodes' network
policy agent's (CN emu-network-policy, bound to the ClusterRole of that name,
emu.apiserver.rbac) and the service account signing key pair (RSA 2048, RS256
as Kubernetes signs tokens).

Certificate keys are EC P-256: generating one takes microseconds where an RSA
key takes tens of milliseconds, and Go's TLS (kubectl) and Python's ssl take
them alike.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from emu.errors import EmuError

CA_VALIDITY = datetime.timedelta(days=3650)  # kubeadm's CACertificateValidityPeriod
CERT_VALIDITY = datetime.timedelta(days=365)  # kubeadm's CertificateValidityPeriod
# kubeadm backdates NotBefore so that a node whose clock is a little behind accepts them.
BACKDATE = datetime.timedelta(minutes=5)

ADMIN_USER = "kubernetes-admin"
MASTERS_GROUP = "system:masters"
NODES_GROUP = "system:nodes"
NODE_USER_PREFIX = "system:node:"
KUBE_PROXY_USER = "system:kube-proxy"
NETWORK_POLICY_USER = "emu-network-policy"  # emu.apiserver.rbac.NETWORK_POLICY_USER


@dataclass
class Pki:
    """A cluster's certificates and keys, every one PEM bytes.

    nodes maps a node name to its client (certificate, key)."""

    ca_cert: bytes
    ca_key: bytes
    apiserver_cert: bytes
    apiserver_key: bytes
    admin_cert: bytes
    admin_key: bytes
    kube_proxy_cert: bytes
    kube_proxy_key: bytes
    sa_key: bytes
    sa_pub: bytes
    nodes: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    # The nodes' network policy agent's (None in a PKI written by an older emu: its
    # agents then enforce no policy from the API server until the cluster is made again).
    network_policy_cert: bytes | None = None
    network_policy_key: bytes | None = None

    # Relative file names, as kubeadm names them under /etc/kubernetes/pki where it has a name.
    _FILES = {
        "ca.crt": "ca_cert",
        "ca.key": "ca_key",
        "apiserver.crt": "apiserver_cert",
        "apiserver.key": "apiserver_key",
        "admin.crt": "admin_cert",
        "admin.key": "admin_key",
        "kube-proxy.crt": "kube_proxy_cert",
        "kube-proxy.key": "kube_proxy_key",
        "sa.key": "sa_key",
        "sa.pub": "sa_pub",
    }
    _OPTIONAL_FILES = {"network-policy.crt": "network_policy_cert", "network-policy.key": "network_policy_key"}

    def files(self, node: str | None = None) -> dict[str, bytes]:
        """{relative path: bytes} to write under /etc/emu/pki in a node.

        Without `node`: everything (the control-plane node's set, the API
        server needs the CA and SA keys). With `node`: only what that node's
        agents need: ca.crt, its own nodes/<name>.crt/.key, kube-proxy's and
        the network policy agent's certificates; no private key of the CA or the
        service accounts."""
        if node is not None:
            if node not in self.nodes:
                raise EmuError(f"the PKI has no certificate for node {node!r}; nodes: {', '.join(sorted(self.nodes))}")
            cert, key = self.nodes[node]
            return {
                "ca.crt": self.ca_cert,
                f"nodes/{node}.crt": cert,
                f"nodes/{node}.key": key,
                "kube-proxy.crt": self.kube_proxy_cert,
                "kube-proxy.key": self.kube_proxy_key,
                **self._optional(),
            }
        out = {name: getattr(self, attr) for name, attr in self._FILES.items()}
        out.update(self._optional())
        for name, (cert, key) in sorted(self.nodes.items()):
            out[f"nodes/{name}.crt"] = cert
            out[f"nodes/{name}.key"] = key
        return out

    def _optional(self) -> dict[str, bytes]:
        return {name: getattr(self, attr) for name, attr in self._OPTIONAL_FILES.items() if getattr(self, attr)}

    def write(self, directory: str | Path) -> None:
        """Write files() under `directory` (keys mode 0600)."""
        root = Path(directory)
        for rel, data in self.files().items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o600 if rel.endswith(".key") else 0o644)

    @classmethod
    def load(cls, directory: str | Path) -> "Pki":
        """Read back a PKI written by write() (the layout of files())."""
        root = Path(directory)
        values = {}
        for rel, attr in cls._FILES.items():
            path = root / rel
            try:
                values[attr] = path.read_bytes()
            except FileNotFoundError:
                raise EmuError(f"{path}: missing; the PKI in {root} is incomplete (recreate the cluster)") from None
        for rel, attr in cls._OPTIONAL_FILES.items():
            if (root / rel).exists():
                values[attr] = (root / rel).read_bytes()
        nodes = {}
        node_dir = root / "nodes"
        if node_dir.is_dir():
            for cert in sorted(node_dir.glob("*.crt")):
                key = cert.with_suffix(".key")
                if not key.exists():
                    raise EmuError(f"{key}: missing beside {cert}; the PKI in {root} is incomplete")
                nodes[cert.stem] = (cert.read_bytes(), key.read_bytes())
        return cls(nodes=nodes, **values)

    def add_node(self, name: str) -> None:
        """Issue the client certificate of a node added after `emu up`."""
        self.nodes[name] = client_cert(self.ca_cert, self.ca_key, NODE_USER_PREFIX + name, [NODES_GROUP])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    # PKCS#8 ("BEGIN PRIVATE KEY"): what Go, OpenSSL and Python's ssl all read for both EC and RSA.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, orgs: list[str] | tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _ec_key()
    now = _now()
    name = _name("kubernetes")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca_cert: x509.Certificate,
    ca_key,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[bytes, bytes]:
    key = _ec_key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + CERT_VALIDITY, _not_after(ca_cert)))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _cert_pem(cert), _key_pem(key)


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    # not_valid_after_utc arrived in cryptography 42; the naive one is deprecated there.
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_after_utc
    return cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _load_ca(ca_cert_pem: bytes, ca_key_pem: bytes):
    return x509.load_pem_x509_certificate(ca_cert_pem), serialization.load_pem_private_key(ca_key_pem, None)


def client_cert(ca_cert_pem: bytes, ca_key_pem: bytes, cn: str, orgs: list[str] | tuple[str, ...] = ()) -> tuple[bytes, bytes]:
    """A client certificate (clientAuth) for user `cn` in groups `orgs`: (cert PEM, key PEM)."""
    ca_cert, ca_key = _load_ca(ca_cert_pem, ca_key_pem)
    return _issue(ca_cert, ca_key, _name(cn, orgs), ExtendedKeyUsageOID.CLIENT_AUTH)


def _san(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def make_pki(
    node_ips: list[str],
    service_ip: str,
    node_names: list[str],
    dns_domain: str = "cluster.local",
    extra_sans: list[str] | tuple[str, ...] = (),
) -> Pki:
    """Make a whole cluster PKI.

    node_ips: the address(es) of the control-plane node(s) the API server is
    reached at inside the cluster (serving certificate SANs).
    service_ip: the first service address (the `kubernetes` Service's ClusterIP).
    node_names: every node; the first is the control-plane node whose name
    the serving certificate carries (as kubeadm puts the hostname there).
    extra_sans: more names or addresses the server is reached at (a published
    host address on a multi-host lab)."""
    if not node_names:
        raise EmuError("make_pki needs at least one node name (the control-plane node's)")
    ca_cert, ca_key = _make_ca()

    dns = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{dns_domain}",
        "localhost",
        node_names[0],
    ]
    ips = ["127.0.0.1", *node_ips, service_ip]
    sans: list[x509.GeneralName] = []
    seen: set[str] = set()
    for value in [*dns, *ips, *extra_sans]:
        general = _san(value)
        key = repr(general)
        if key not in seen:
            seen.add(key)
            sans.append(general)
    apiserver_cert, apiserver_key = _issue(
        ca_cert, ca_key, _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, sans
    )
    admin_cert, admin_key = _issue(ca_cert, ca_key, _name(ADMIN_USER, [MASTERS_GROUP]), ExtendedKeyUsageOID.CLIENT_AUTH)
    proxy_cert, proxy_key = _issue(ca_cert, ca_key, _name(KUBE_PROXY_USER), ExtendedKeyUsageOID.CLIENT_AUTH)
    policy_cert, policy_key = _issue(ca_cert, ca_key, _name(NETWORK_POLICY_USER), ExtendedKeyUsageOID.CLIENT_AUTH)
    nodes = {
        name: _issue(ca_cert, ca_key, _name(NODE_USER_PREFIX + name, [NODES_GROUP]), ExtendedKeyUsageOID.CLIENT_AUTH)
        for name in node_names
    }

    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_pub = sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return Pki(
        ca_cert=_cert_pem(ca_cert),
        ca_key=_key_pem(ca_key),
        apiserver_cert=apiserver_cert,
        apiserver_key=apiserver_key,
        admin_cert=admin_cert,
        admin_key=admin_key,
        kube_proxy_cert=proxy_cert,
        kube_proxy_key=proxy_key,
        network_policy_cert=policy_cert,
        network_policy_key=policy_key,
        sa_key=_key_pem(sa),
        sa_pub=sa_pub,
        nodes=nodes,
    )
