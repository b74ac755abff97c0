"""emu.control.pki: the cluster PKI, checked with openssl and cryptography's parser."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from emu.control.pki import Pki, make_pki
from emu.errors import EmuError


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki(["172.18.0.2"], "10.96.0.1", ["cp", "w1", "w2"])


def subject(pem: bytes) -> tuple[str, list[str]]:
    cert = x509.load_pem_x509_certificate(pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return cn, orgs


def days(pem: bytes) -> int:
    cert = x509.load_pem_x509_certificate(pem)
    after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return (after - datetime.datetime.now(datetime.timezone.utc)).days


def usage(pem: bytes) -> list:
    return list(x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_identities_as_kubeadm(pki):
    assert subject(pki.ca_cert) == ("kubernetes", [])
    assert subject(pki.admin_cert) == ("kubernetes-admin", ["system:masters"])
    assert subject(pki.kube_proxy_cert) == ("system:kube-proxy", [])
    assert subject(pki.network_policy_cert) == ("emu-network-policy", [])
    assert sorted(pki.nodes) == ["cp", "w1", "w2"]
    assert subject(pki.nodes["w1"][0]) == ("system:node:w1", ["system:nodes"])
    assert usage(pki.apiserver_cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert usage(pki.admin_cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert usage(pki.nodes["cp"][0]) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_validity_ca_ten_years_certs_one(pki):
    assert 3640 <= days(pki.ca_cert) <= 3650
    for pem in (pki.apiserver_cert, pki.admin_cert, pki.nodes["w2"][0]):
        assert 360 <= days(pem) <= 365


def test_serving_certificate_sans(pki):
    cert = x509.load_pem_x509_certificate(pki.apiserver_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local", "localhost", "cp",
    ]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(a) for a in ("127.0.0.1", "172.18.0.2", "10.96.0.1")
    ]


def test_dns_domain_and_extra_sans():
    p = make_pki(["10.0.0.5", "10.0.0.6"], "fd00::1", ["a"], dns_domain="lab.example", extra_sans=["192.0.2.7", "emu.test"])
    sans = x509.load_pem_x509_certificate(p.apiserver_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc.lab.example" in sans.get_values_for_type(x509.DNSName)
    assert "emu.test" in sans.get_values_for_type(x509.DNSName)
    assert {str(a) for a in sans.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1", "10.0.0.5", "10.0.0.6", "fd00::1", "192.0.2.7"}


def test_service_account_key_pair_is_rsa_2048_and_matches(pki):
    key = serialization.load_pem_private_key(pki.sa_key, None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    pub = serialization.load_pem_public_key(pki.sa_pub)
    assert pub.public_numbers() == key.public_key().public_numbers()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_verifies_every_certificate_for_its_purpose(pki, tmp_path):
    pki.write(tmp_path)
    checks = [("sslserver", "apiserver.crt"), ("sslclient", "admin.crt"), ("sslclient", "kube-proxy.crt"),
              ("sslclient", "network-policy.crt")]
    checks += [("sslclient", f"nodes/{n}.crt") for n in pki.nodes]
    for purpose, rel in checks:
        out = subprocess.run(
            ["openssl", "verify", "-CAfile", "ca.crt", "-purpose", purpose, rel],
            cwd=tmp_path, capture_output=True, text=True,
        )
        assert out.returncode == 0 and out.stdout.strip() == f"{rel}: OK", out.stdout + out.stderr
    # A client certificate is not a serving one.
    out = subprocess.run(["openssl", "verify", "-CAfile", "ca.crt", "-purpose", "sslserver", "admin.crt"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0


def test_files_write_load_round_trip(pki, tmp_path):
    files = pki.files()
    assert {"ca.crt", "ca.key", "apiserver.crt", "apiserver.key", "sa.key", "sa.pub",
            "admin.crt", "admin.key", "nodes/w1.crt", "nodes/w1.key"} <= set(files)
    pki.write(tmp_path)
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca.crt").stat().st_mode & 0o777 == 0o644
    assert Pki.load(tmp_path) == pki


def test_node_files_hold_no_cluster_secret(pki):
    files = pki.files("w1")
    assert set(files) == {"ca.crt", "nodes/w1.crt", "nodes/w1.key", "kube-proxy.crt", "kube-proxy.key",
                          "network-policy.crt", "network-policy.key"}  # fmt: skip
    with pytest.raises(EmuError, match="no certificate for node 'nope'"):
        pki.files("nope")


def test_load_names_the_missing_file(pki, tmp_path):
    pki.write(tmp_path)
    (tmp_path / "sa.pub").unlink()
    with pytest.raises(EmuError, match="sa.pub: missing"):
        Pki.load(tmp_path)


def test_add_node_issues_from_the_same_ca(pki, tmp_path):
    copy = Pki(**{**pki.__dict__, "nodes": dict(pki.nodes)})  # leave the module's fixture as it is
    copy.add_node("w3")
    assert subject(copy.nodes["w3"][0]) == ("system:node:w3", ["system:nodes"])
    assert "w3" not in pki.nodes
    if shutil.which("openssl"):
        copy.write(tmp_path)
        out = subprocess.run(["openssl", "verify", "-CAfile", "ca.crt", "-purpose", "sslclient", "nodes/w3.crt"],
                             cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
