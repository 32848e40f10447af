"""TLS material for the local broker's secured listener, made for the run.

A certificate authority and a broker certificate it signs (for ``localhost`` and the
listener's address), as PEM files: the CA certificate is what clients trust
(``MODEL_TRAINER_KAFKA_SSL_CAFILE``), the broker's chain and PKCS#8 key go into Kafka's PEM
key store. EC P-256 keys: generated in milliseconds, and Kafka's PEM store reads them.

Needs the ``cryptography`` package (a development dependency: ``make install``);
:mod:`local_kafka` imports this module only when it starts a secured broker.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of one secured broker."""

    ca_cert: Path
    broker_chain: Path
    broker_key: Path

    @classmethod
    def under(cls, folder: Path) -> TlsFiles:
        return cls(folder / "ca.pem", folder / "broker-chain.pem", folder / "broker-key.pem")

    def exist(self) -> bool:
        return all(path.is_file() for path in (self.ca_cert, self.broker_chain, self.broker_key))


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "model-trainer local broker"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate_authority(
    common_name: str,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    name = _name(common_name)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def write_ca(path: Path, common_name: str = "model-trainer local CA") -> Path:
    """A CA certificate alone (its key is discarded): one that signed nothing of ours, for
    checking that a client refuses a broker it was not told to trust."""
    _, cert = _certificate_authority(common_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_pem(cert))
    return path


def issue(folder: Path, hosts: list[str]) -> TlsFiles:
    """A new CA and a broker certificate it signs for ``hosts`` (names or IP addresses),
    written under ``folder``; the key files are readable by their owner only."""
    ca_key, ca_cert = _certificate_authority("model-trainer local CA")
    key = _key()
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(["localhost", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("model-trainer local broker"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles.under(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files.ca_cert.write_bytes(_pem(ca_cert))
    files.broker_chain.write_bytes(_pem(cert) + _pem(ca_cert))
    files.broker_key.touch(mode=0o600)
    files.broker_key.write_bytes(_pkcs8(key))
    return files
