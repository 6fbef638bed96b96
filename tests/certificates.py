"""Test certificates made on the spot with ``cryptography``: a CA, servers for localhost/127.0.0.1, TLS clients.

Shared by the tests that run TLS for real (the gRPC listener's mutual TLS, ``serve`` over TLS with client
certificates, the benchmark's TLS rows): one generator, EC P-256 keys, valid from five minutes ago for an hour.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def pem_pair(name: str, issuer: tuple[Any, Any] | None, *, ca: bool = False, server: bool = False
             ) -> tuple[Any, Any, bytes, bytes]:
    """A certificate for ``name`` signed by ``issuer`` (``(cert, key)``; None: self-signed), its key, and both as
    PEM. ``ca``: a CA; ``server``: for ``localhost`` and ``127.0.0.1``; otherwise a TLS client certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_cert, signer_key = issuer if issuer is not None else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(signer_cert.subject if signer_cert is not None else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert, key, cert.public_bytes(serialization.Encoding.PEM), key_pem


class Pki:
    """A CA with a server certificate and client certificates, written as PEM files into ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca_cert, self.ca_key, ca_pem, _ = pem_pair("test CA", None, ca=True)
        self.ca_file = self._write("ca.pem", ca_pem)
        _, _, server_pem, server_key = pem_pair("localhost", (self.ca_cert, self.ca_key), server=True)
        self.server_cert, self.server_key = self._write("server.pem", server_pem), self._write("server.key", server_key)

    def client(self, name: str, *, foreign: bool = False) -> tuple[Path, Path, bytes]:
        """A client certificate (``foreign``: from another CA): its PEM file, its key file, its DER."""
        issuer = (self.ca_cert, self.ca_key)
        if foreign:
            other, other_key, _, _ = pem_pair("another CA", None, ca=True)
            issuer = (other, other_key)
        cert, _, cert_pem, key_pem = pem_pair(name, issuer)
        return (self._write(f"{name}.pem", cert_pem), self._write(f"{name}.key", key_pem),
                cert.public_bytes(serialization.Encoding.DER))

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path
