"""A throwaway PKI for the TLS tests, made at test time with `cryptography`: a CA, a server
certificate for 127.0.0.1 and localhost (also good for client auth: cluster processes are each
other's clients under mTLS), a client certificate, and a client certificate from another CA.
A test module gets it as the fixture `pki` (`from tls_certs import pki`)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cluster.config import TlsConfig


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # signed by a CA nobody trusts
    stranger_key: Path

    def server_tls(self, mutual: bool) -> TlsConfig:
        """What the gateway and replicas serve with (`mutual`: mTLS)."""
        return TlsConfig(cert_file=self.server_cert, key_file=self.server_key, ca_file=self.ca,
                         require_client_cert=mutual)

    def client_tls(self, cert: str | None = None) -> TlsConfig:
        """A client that trusts the CA; `cert`: "client" (CA-signed) or "stranger" (another CA's)."""
        if cert is None:
            return TlsConfig(ca_file=self.ca)
        return TlsConfig(ca_file=self.ca, cert_file=getattr(self, f"{cert}_cert"), key_file=getattr(self, f"{cert}_key"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca("microturn test CA")
    other_key, other = _ca("someone else's CA")
    server_names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    files = {"ca": _write(folder / "ca.pem", ca)}
    for name, signer, signer_key, sans, eku in (
            ("server", ca, ca_key, server_names, usages),
            ("client", ca, ca_key, [x509.DNSName("client")], [ExtendedKeyUsageOID.CLIENT_AUTH]),
            ("stranger", other, other_key, [x509.DNSName("stranger")], [ExtendedKeyUsageOID.CLIENT_AUTH])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (_builder(name, signer.subject, key)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(signer_key, hashes.SHA256()))
        files[f"{name}_cert"] = _write(folder / f"{name}.pem", cert)
        files[f"{name}_key"] = folder / f"{name}.key"
        files[f"{name}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return Pki(**files)


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (_builder(name, subject, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _builder(name: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))


def _write(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path
