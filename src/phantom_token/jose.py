"""A small JOSE toolkit on ``cryptography``: compact JWS signing and verification, JWKs and JWK Sets.

Supported algorithms (RFC 7518 section 3, RFC 8037): ES256/ES384/ES512, RS256/RS384/RS512, PS256/PS384/PS512
and EdDSA (Ed25519).

Invariants:
- Only the compact serialization (RFC 7515 section 7.1) exists here: exactly three base64url parts without
  padding, a JSON object header with a string ``alg``, a JSON object payload. Anything else is ``MalformedToken``.
- ``verify`` never trusts the token to choose the algorithm: the caller lists the acceptable ones, ``none`` is
  never acceptable, and the key's type (and its JWK ``alg``, when present) must agree with the header's
  ``alg``.
- ECDSA signatures are the raw ``r || s`` octets of RFC 7518 section 3.4, never DER.
- A header with ``crit`` is refused: no extension is understood (RFC 7515 section 4.1.11).

Exception tree::

    JoseError (ValueError)
    ├── MalformedToken         not a well-formed compact JWS
    ├── AlgorithmNotAllowed    ``none``, an unknown algorithm, or one the caller did not allow
    ├── UnknownKey             no key in the set has the token's ``kid`` (or fits its ``alg``)
    └── BadSignature           the signature does not verify with any candidate key
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | Ed25519PrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | Ed25519PublicKey
JsonObject: TypeAlias = dict[str, Any]


class JoseError(ValueError):
    """Base of every error raised by this module."""


class MalformedToken(JoseError):
    """The text is not a compact JWS with a JSON object header (string ``alg``) and a JSON object payload."""


class AlgorithmNotAllowed(JoseError):
    """``alg`` is ``none``, unknown, or not in the caller's list."""


class UnknownKey(JoseError):
    """No key of the set matches the token's ``kid`` and ``alg``."""


class BadSignature(JoseError):
    """The signature did not verify."""


# --- base64url (RFC 7515 section 2: no padding) -------------------------------------------------------------

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of ``b64url_encode``: only the URL-safe alphabet, no padding, no whitespace."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise MalformedToken("not base64url without padding")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedToken("not base64url without padding") from exc
    if b64url_encode(data) != text:  # non-canonical trailing bits
        raise MalformedToken("non-canonical base64url")
    return data


def _int_to_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(size, "big"))


def _b64_to_int(text: object) -> int:
    if not isinstance(text, str):
        raise JoseError("JWK member is not a string")
    return int.from_bytes(b64url_decode(text), "big")


# --- algorithms ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Alg:
    kty: str  # 'EC', 'RSA' or 'OKP'
    hash: type[hashes.HashAlgorithm] | None
    curve: str | None = None  # JWK crv for EC and OKP
    pss: bool = False


_ALGORITHMS: dict[str, _Alg] = {
    "ES256": _Alg("EC", hashes.SHA256, "P-256"),
    "ES384": _Alg("EC", hashes.SHA384, "P-384"),
    "ES512": _Alg("EC", hashes.SHA512, "P-521"),
    "RS256": _Alg("RSA", hashes.SHA256),
    "RS384": _Alg("RSA", hashes.SHA384),
    "RS512": _Alg("RSA", hashes.SHA512),
    "PS256": _Alg("RSA", hashes.SHA256, pss=True),
    "PS384": _Alg("RSA", hashes.SHA384, pss=True),
    "PS512": _Alg("RSA", hashes.SHA512, pss=True),
    "EdDSA": _Alg("OKP", None, "Ed25519"),
}
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(_ALGORITHMS)

_CURVES: dict[str, tuple[type[ec.EllipticCurve], int]] = {
    "P-256": (ec.SECP256R1, 32),
    "P-384": (ec.SECP384R1, 48),
    "P-521": (ec.SECP521R1, 66),
}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}  # cryptography name -> crv
MIN_RSA_BITS = 2048


def _key_kty(key: PublicKey | PrivateKey) -> tuple[str, str | None]:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "EC", _CURVE_NAMES.get(key.curve.name)
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RSA", None
    return "OKP", "Ed25519"


def _fits(alg: str, key: PublicKey | PrivateKey) -> bool:
    spec = _ALGORITHMS[alg]
    kty, crv = _key_kty(key)
    return spec.kty == kty and (spec.curve is None or spec.curve == crv)


def _pss(spec: _Alg) -> padding.PSS:
    assert spec.hash is not None
    return padding.PSS(mgf=padding.MGF1(spec.hash()), salt_length=padding.PSS.DIGEST_LENGTH)  # RFC 7518 3.5


def _sign_bytes(alg: str, key: PrivateKey, data: bytes) -> bytes:
    spec = _ALGORITHMS[alg]
    if isinstance(key, Ed25519PrivateKey):
        return key.sign(data)
    assert spec.hash is not None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(spec.hash())))
        size = _CURVES[spec.curve or ""][1]
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    pad: padding.AsymmetricPadding = _pss(spec) if spec.pss else padding.PKCS1v15()
    return key.sign(data, pad, spec.hash())


def _verify_bytes(alg: str, key: PublicKey, signature: bytes, data: bytes) -> bool:
    spec = _ALGORITHMS[alg]
    try:
        if isinstance(key, Ed25519PublicKey):
            key.verify(signature, data)
            return True
        assert spec.hash is not None
        if isinstance(key, ec.EllipticCurvePublicKey):
            size = _CURVES[spec.curve or ""][1]
            if len(signature) != 2 * size:
                return False
            r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(spec.hash()))
            return True
        pad: padding.AsymmetricPadding = _pss(spec) if spec.pss else padding.PKCS1v15()
        key.verify(signature, data, pad, spec.hash())
        return True
    except InvalidSignature:
        return False


# --- JWK ----------------------------------------------------------------------------------------------------


def _public_jwk_members(key: PublicKey) -> JsonObject:
    """The required members of a public JWK, in RFC 7638 order (lexicographic), used for thumbprints."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = _CURVE_NAMES.get(key.curve.name)
        if crv is None:
            raise JoseError(f"unsupported curve {key.curve.name}")
        numbers, size = key.public_numbers(), _CURVES[crv][1]
        return {"crv": crv, "kty": "EC", "x": _int_to_b64(numbers.x, size), "y": _int_to_b64(numbers.y, size)}
    if isinstance(key, rsa.RSAPublicKey):
        rsa_numbers = key.public_numbers()
        return {"e": _int_to_b64(rsa_numbers.e), "kty": "RSA", "n": _int_to_b64(rsa_numbers.n)}
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(raw)}


def thumbprint(key: PublicKey) -> str:
    """RFC 7638 JWK SHA-256 thumbprint, base64url."""
    canonical = json.dumps(_public_jwk_members(key), separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


def public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    """The public key of a JWK (EC P-256/384/521, RSA, OKP Ed25519); private members are ignored."""
    kty = jwk.get("kty")
    try:
        if kty == "EC":
            crv = jwk.get("crv")
            if crv not in _CURVES:
                raise JoseError(f"unsupported EC curve {crv!r}")
            curve = _CURVES[str(crv)][0]()
            nums = ec.EllipticCurvePublicNumbers(_b64_to_int(jwk.get("x")), _b64_to_int(jwk.get("y")), curve)
            return nums.public_key()
        if kty == "RSA":
            rsa_key = rsa.RSAPublicNumbers(_b64_to_int(jwk.get("e")), _b64_to_int(jwk.get("n"))).public_key()
            if rsa_key.key_size < MIN_RSA_BITS:
                raise JoseError(f"RSA key shorter than {MIN_RSA_BITS} bits")
            return rsa_key
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            x = jwk.get("x")
            if not isinstance(x, str):
                raise JoseError("JWK member is not a string")
            return Ed25519PublicKey.from_public_bytes(b64url_decode(x))
    except ValueError as exc:  # invalid point, bad length; JoseError is a ValueError too
        if isinstance(exc, JoseError):
            raise
        raise JoseError(f"invalid JWK: {exc}") from exc
    raise JoseError(f"unsupported JWK kty/crv {kty!r}/{jwk.get('crv')!r}")


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key as found in a JWK Set: the key plus its optional ``kid`` and ``alg``."""

    key: PublicKey
    kid: str | None = None
    alg: str | None = None

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> VerificationKey:
        kid, alg = jwk.get("kid"), jwk.get("alg")
        return cls(
            public_key_from_jwk(jwk),
            kid if isinstance(kid, str) else None,
            alg if isinstance(alg, str) else None,
        )


class SigningKey:
    """A private key with the algorithm it signs with and its ``kid`` (default: its RFC 7638 thumbprint).

    Invariant: ``alg`` fits the key (EC curve for ES*, RSA >= 2048 bits for RS*/PS*, Ed25519 for EdDSA).
    """

    __slots__ = ("_key", "alg", "kid")

    def __init__(self, key: PrivateKey, alg: str | None = None, kid: str | None = None) -> None:
        chosen = alg or _default_alg(key)
        if chosen not in _ALGORITHMS:
            raise AlgorithmNotAllowed(f"unsupported algorithm {chosen!r}")
        if not _fits(chosen, key):
            raise JoseError(f"algorithm {chosen} does not fit a {_key_kty(key)[0]} key")
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
            raise JoseError(f"RSA key shorter than {MIN_RSA_BITS} bits")
        self._key = key
        self.alg: str = chosen
        self.kid: str = kid if kid is not None else thumbprint(key.public_key())

    @classmethod
    def generate(cls, alg: str = "ES256", kid: str | None = None) -> SigningKey:
        """A fresh key for ``alg``."""
        spec = _ALGORITHMS.get(alg)
        if spec is None:
            raise AlgorithmNotAllowed(f"unsupported algorithm {alg!r}")
        key: PrivateKey
        if spec.kty == "EC":
            key = ec.generate_private_key(_CURVES[spec.curve or ""][0]())
        elif spec.kty == "RSA":
            key = rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS)
        else:
            key = Ed25519PrivateKey.generate()
        return cls(key, alg, kid)

    @classmethod
    def from_pem(
        cls, pem: bytes, alg: str | None = None, kid: str | None = None, password: bytes | None = None
    ) -> SigningKey:
        """Load a PEM private key (PKCS#8, SEC1 or PKCS#1)."""
        try:
            key = serialization.load_pem_private_key(pem, password=password)
        except (ValueError, TypeError) as exc:
            raise JoseError(f"cannot load the PEM private key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | Ed25519PrivateKey):
            raise JoseError(f"unsupported key type {type(key).__name__}")
        return cls(key, alg, kid)

    @classmethod
    def from_pem_file(
        cls, path: str | Path, alg: str | None = None, kid: str | None = None, password: bytes | None = None
    ) -> SigningKey:
        return cls.from_pem(Path(path).read_bytes(), alg, kid, password)

    def private_pem(self) -> bytes:
        """PKCS#8 PEM, unencrypted (for demos and tests)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def public_jwk(self) -> JsonObject:
        """The public JWK, with ``kid``, ``alg`` and ``use: sig``."""
        return {**_public_jwk_members(self._key.public_key()), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def verification_key(self) -> VerificationKey:
        return VerificationKey(self._key.public_key(), self.kid, self.alg)

    def sign(
        self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None, *, with_kid: bool = True
    ) -> str:
        """A compact JWS of ``claims``; ``headers`` adds to ``{alg, typ: JWT, kid}`` (and may replace ``typ``).

        ``alg`` and ``kid`` always come from the key, whatever ``headers`` says; ``with_kid=False`` sends no ``kid``.
        """
        header: JsonObject = {"alg": self.alg, "typ": "JWT", "kid": self.kid}
        header.update(headers or {})
        header["alg"], header["kid"] = self.alg, self.kid
        if not with_kid:
            del header["kid"]
        signing_input = f"{_json_b64(header)}.{_json_b64(dict(claims))}"
        signature = _sign_bytes(self.alg, self._key, signing_input.encode("ascii"))
        return f"{signing_input}.{b64url_encode(signature)}"

    def __repr__(self) -> str:
        return f"SigningKey(alg={self.alg!r}, kid={self.kid!r})"


def _default_alg(key: PrivateKey) -> str:
    kty, crv = _key_kty(key)
    if kty == "RSA":
        return "RS256"
    if kty == "OKP":
        return "EdDSA"
    return {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}.get(crv or "", "ES256")


def jwks(keys: Iterable[SigningKey]) -> JsonObject:
    """A JWK Set (RFC 7517 section 5) of the public halves of ``keys``."""
    return {"keys": [key.public_jwk() for key in keys]}


# --- compact JWS --------------------------------------------------------------------------------------------


def _json_b64(value: JsonObject) -> str:
    return b64url_encode(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> JsonObject:
    result: JsonObject = {}
    for name, value in pairs:
        if name in result:
            raise MalformedToken(f"duplicate member {name!r}")
        result[name] = value
    return result


def _reject_constant(name: str) -> Any:
    raise MalformedToken(f"{name} is not JSON")


def _json_object(part: str, what: str) -> JsonObject:
    raw = b64url_decode(part)
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedToken(f"{what} is not JSON") from exc
    if not isinstance(value, dict):
        raise MalformedToken(f"{what} is not a JSON object")
    return value


def _split(token: str) -> tuple[JsonObject, JsonObject, str, bytes]:
    if not isinstance(token, str):
        raise MalformedToken("a token is text")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken("a compact JWS has exactly three parts")
    header = _json_object(parts[0], "header")
    if not isinstance(header.get("alg"), str):
        raise MalformedToken("header has no string 'alg'")
    claims = _json_object(parts[1], "payload")
    signature = b64url_decode(parts[2])
    return header, claims, f"{parts[0]}.{parts[1]}", signature


def decode_unverified(token: str) -> tuple[JsonObject, JsonObject]:
    """(header, claims) of a compact JWS, checking its shape but NOT its signature."""
    header, claims, _, _ = _split(token)
    return header, claims


KeySource: TypeAlias = Mapping[str, Any] | Iterable[SigningKey | VerificationKey]
"""A JWK Set (``{"keys": [...]}``) or keys: SigningKey (its public half is used) or VerificationKey."""


def _verification_keys(source: KeySource) -> list[VerificationKey]:
    if isinstance(source, Mapping):
        members = source.get("keys")
        if not isinstance(members, list):
            raise JoseError("a JWK Set has a 'keys' array")
        keys: list[VerificationKey] = []
        for jwk in members:
            if not isinstance(jwk, Mapping):
                raise JoseError("a JWK is a JSON object")
            try:
                keys.append(VerificationKey.from_jwk(jwk))
            except JoseError:
                continue  # RFC 7517 section 5: ignore JWKs of unsupported types
        return keys
    return [k.verification_key() if isinstance(k, SigningKey) else k for k in source]


def verify(token: str, keys: KeySource, *, algorithms: Collection[str]) -> tuple[JsonObject, JsonObject]:
    """(header, claims) of a compact JWS whose signature verifies with one of ``keys``.

    ``algorithms`` lists what the caller accepts; ``none`` is refused even if listed. With a ``kid`` in the
    header only keys with that ``kid`` are candidates; without one, every key that fits the algorithm is tried.
    Claims (``exp``, ``aud``...) are not checked here: that is the caller's policy.
    """
    header, claims, signing_input, signature = _split(token)
    alg = header["alg"]
    if alg.lower() == "none" or alg not in _ALGORITHMS:
        raise AlgorithmNotAllowed(f"algorithm {alg!r} is not supported")
    if alg not in algorithms:
        raise AlgorithmNotAllowed(f"algorithm {alg!r} is not allowed")
    if "crit" in header:
        raise MalformedToken("critical header extensions are not supported")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise MalformedToken("'kid' is not a string")
    candidates = [
        k
        for k in _verification_keys(keys)
        if (kid is None or k.kid == kid) and (k.alg is None or k.alg == alg) and _fits(alg, k.key)
    ]
    if not candidates:
        raise UnknownKey(f"no key for kid={kid!r} alg={alg}")
    data = signing_input.encode("ascii")
    if any(_verify_bytes(alg, k.key, signature, data) for k in candidates):
        return header, claims
    raise BadSignature("signature verification failed")
