"""The client certificate a trusted proxy forwards in a header, as an RFC 8705 thumbprint. Pure: no I/O.

Two headers (the plugin's ``client_cert_header``):

- ``Client-Cert`` (RFC 9440 section 2.2): a Structured Field Byte Sequence (RFC 8941 section 3.3.5),
  ``:<base64 of the DER certificate>:``, optionally with parameters (ignored). Missing ``=`` padding is accepted
  (RFC 8941 section 4.2.7); any other character outside the base64 alphabet, an empty sequence, or anything around
  the item is invalid. Two field lines (or a list) are invalid: RFC 9440 carries exactly one certificate.
- ``X-Forwarded-Client-Cert`` (Envoy's XFCC): elements separated by ``,``, each ``key=value`` pairs separated by
  ``;``, values optionally double-quoted (with ``\\"`` escapes) when they hold ``,;=``. The certificate comes from
  ``Cert`` (the URL-encoded PEM) or ``Hash`` (hex SHA-256 of the DER); when both are there they must agree. More
  than one element (several proxies appended theirs, ``APPEND_FORWARD``) is invalid: which one is the client's
  depends on the proxies, so the edge proxy must replace the header (``SANITIZE_SET``), and the gateway does not
  guess.

``thumbprint`` answers the thumbprint, None when the header is absent, and raises ``InvalidCertificateHeader``
(whose message names what is wrong, never the header's value) when it is there but unusable: the engine then
refuses a bound token and logs the reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from urllib.parse import unquote

__all__ = ["InvalidCertificateHeader", "der_thumbprint", "pem_thumbprint", "sha256_thumbprint", "thumbprint"]

_SF_BINARY = re.compile(r"[ \t]*:([A-Za-z0-9+/]*=*):((?:;[ \t]*[a-z*][a-z0-9_.*-]*(?:=[^;]*)?)*)[ \t]*")
_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----")
_HEX_SHA256 = re.compile(r"[0-9A-Fa-f]{64}")


class InvalidCertificateHeader(ValueError):
    """The header is present but carries no usable certificate (the message says why, without its value)."""


def der_thumbprint(der: bytes) -> str:
    """The RFC 8705 ``x5t#S256`` of a DER certificate: base64url (no padding) of its SHA-256."""
    return sha256_thumbprint(hashlib.sha256(der).digest())


def sha256_thumbprint(digest: bytes) -> str:
    """base64url (no padding) of a SHA-256 digest."""
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def thumbprint(header: str, values: list[str] | None) -> str | None:
    """The thumbprint of the certificate in ``values`` (every field line of ``header``), None when absent."""
    if not values:
        return None
    if header.lower() == "client-cert":
        return _client_cert(values)
    return _xfcc(values)


def _client_cert(values: list[str]) -> str:
    if len(values) != 1:
        raise InvalidCertificateHeader("more than one Client-Cert field line")
    found = _SF_BINARY.fullmatch(values[0])
    if found is None:
        raise InvalidCertificateHeader("not a single structured-field byte sequence (:base64:)")
    encoded = found[1].rstrip("=")
    padding = len(found[1]) - len(encoded)
    if not encoded or len(encoded) % 4 == 1 or (padding and (padding > 2 or len(found[1]) % 4)):
        raise InvalidCertificateHeader("bad base64")
    try:
        der = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as exc:
        raise InvalidCertificateHeader("bad base64") from exc
    return der_thumbprint(_certificate(der))


def _certificate(der: bytes) -> bytes:
    """``der`` when it can be a DER certificate (an ASN.1 SEQUENCE); it is hashed, not parsed."""
    if len(der) < 2 or der[0] != 0x30:
        raise InvalidCertificateHeader("not a DER certificate")
    return der


def _xfcc(values: list[str]) -> str:
    elements = _split(",".join(values), ",")
    if len(elements) != 1:
        raise InvalidCertificateHeader(f"{len(elements)} elements; the edge proxy must replace it (SANITIZE_SET)")
    pairs: dict[str, str] = {}
    for pair in _split(elements[0], ";"):
        key, sep, value = pair.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise InvalidCertificateHeader("an element part is not key=value")
        if key in pairs:
            raise InvalidCertificateHeader(f"{key} appears twice")
        pairs[key] = _unquote(value.strip())
    from_cert = _xfcc_cert(pairs["cert"]) if "cert" in pairs else None
    from_hash = _xfcc_hash(pairs["hash"]) if "hash" in pairs else None
    if from_cert is None and from_hash is None:
        raise InvalidCertificateHeader("no Hash or Cert")
    if from_cert is not None and from_hash is not None and from_cert != from_hash:
        raise InvalidCertificateHeader("Hash is not the SHA-256 of Cert")
    found = from_cert if from_cert is not None else from_hash
    assert found is not None
    return found


def pem_thumbprint(url_encoded_pem: str) -> str:
    """The thumbprint of a URL-encoded PEM certificate (XFCC's ``Cert``, Envoy's ``source.certificate``, nginx's
    ``$ssl_client_escaped_cert``); raises ``InvalidCertificateHeader``."""
    return _xfcc_cert(url_encoded_pem)


def _xfcc_cert(value: str) -> str:
    pem = _PEM_CERTIFICATE.search(unquote(value))
    if pem is None:
        raise InvalidCertificateHeader("Cert is not a URL-encoded PEM certificate")
    try:
        der = base64.b64decode("".join(pem[1].split()), validate=True)
    except binascii.Error as exc:
        raise InvalidCertificateHeader("Cert is not a URL-encoded PEM certificate") from exc
    return der_thumbprint(_certificate(der))


def _xfcc_hash(value: str) -> str:
    if not _HEX_SHA256.fullmatch(value):
        raise InvalidCertificateHeader("Hash is not 64 hex digits (SHA-256)")
    return sha256_thumbprint(bytes.fromhex(value))


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside double quotes (a backslash escapes the next character)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted:
        raise InvalidCertificateHeader("an unterminated quoted value")
    parts.append("".join(current))
    return [part for part in parts if part.strip()] if separator == ";" else parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value
