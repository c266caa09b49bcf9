"""Certificates for TLS tests and benchmarks: a throwaway CA and the certificates it issues.

Made with the `cryptography` package (ECDSA P-256: fast to make and cheap to verify), written
as PEM files into a folder the caller owns. Nothing here is meant for production.

    ca = TestCA.create(folder)
    cert, key = ca.issue(folder, ["127.0.0.1", "localhost"])   # IP SANs for IP literals
    cert, key = self_signed(folder, ["127.0.0.1"])             # trusted by nobody
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_serial = itertools.count(1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def _validity(days: int, *, expired: bool = False) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    if expired:
        return now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
    return now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)


def _leaf(
    subject_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signing_key: ec.EllipticCurvePrivateKey,
    hosts: list[str],
    *,
    expired: bool = False,
) -> x509.Certificate:
    not_before, not_after = _validity(30, expired=expired)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(issuer)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(signing_key, hashes.SHA256())
    )


@dataclass(frozen=True)
class TestCA:
    """A certificate authority that lives for one test run."""

    __test__ = False  # not a pytest test class, whatever its name

    cert_path: str
    key: ec.EllipticCurvePrivateKey
    name: x509.Name

    @classmethod
    def create(cls, folder: Path, common_name: str = "AgentCom test CA") -> TestCA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(common_name)
        not_before, not_after = _validity(365)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        cert_path, _ = _write(Path(folder), f"ca-{next(_serial)}", cert, key)
        return cls(cert_path, key, name)

    def issue(self, folder: Path, hosts: list[str], *, expired: bool = False) -> tuple[str, str]:
        """A server certificate for `hosts` (names and IP addresses); returns (cert path, key path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _leaf(key, self.name, self.key, hosts, expired=expired)
        return _write(Path(folder), f"server-{next(_serial)}", cert, key)


def self_signed(folder: Path, hosts: list[str]) -> tuple[str, str]:
    """A server certificate for `hosts` that signs itself (trusted by no store)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(key, _name(hosts[0]), key, hosts)
    return _write(Path(folder), f"self-signed-{next(_serial)}", cert, key)
