"""JOSE for the gateway: compact JWS signing, verification and unverified reading, JWKs and JWK Sets, on joserfc.

joserfc (RFC 7515/7517/7518/7638/8037) does the cryptography: its key classes generate, import and export keys
(PEM, JWK) and compute RFC 7638 thumbprints; its algorithm objects sign and verify (ECDSA as the raw ``r || s``
of RFC 7518 section 3.4, never DER; PSS with a digest-long salt). This adapter keeps what the project's contract
needs and the library does not do, in one place:

- The ONE reader of a compact JWS (``decode_unverified``, also the first step of ``verify``), stricter than joserfc's:
  exactly three parts of canonical base64url without padding (``b64url_decode``, the one decoder: joserfc's strict
  rules), a JSON object header with a string ``alg``, a JSON object payload, both with unique member names and no
  ``NaN``/``Infinity``. joserfc keeps the last of duplicate members, so a header could name one ``alg`` to a
  reader and another to the verifier. Anything else is ``MalformedToken``, the one malformed-token error.
- The algorithm allowlist: ``SUPPORTED_ALGORITHMS`` (asymmetric only: no HMAC, so no key confusion with a public
  key as a secret; never ``none``) intersected with the caller's list. The token never chooses: the key must fit
  the algorithm (key type, EC curve, Ed25519 for EdDSA, RSA >= 2048 bits), a JWK's ``alg`` (when present) must
  equal it, and a JWK whose ``use`` is not ``sig`` (or whose ``key_ops`` lack ``verify``) is never a candidate.
- A header with ``crit`` is refused: no extension is understood (RFC 7515 section 4.1.11); joserfc would accept
  ``b64`` (RFC 7797).
- Key choice: with a ``kid`` in the header only keys with that ``kid`` are candidates; without one, every key that
  fits (joserfc's KeySet would name kid-less keys by thumbprint and pick one). JWKs of a type or size this module
  does not support are ignored in a set (RFC 7517 section 5).

Exception tree::

    JoseError (ValueError)
    ├── MalformedToken         not a well-formed compact JWS
    ├── AlgorithmNotAllowed    ``none``, an unknown algorithm, or one the caller did not allow
    ├── UnknownKey             no key in the set has the token's ``kid`` (or fits its ``alg``)
    └── BadSignature           the signature does not verify with any candidate key
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

import joserfc.errors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.util import json_b64encode, urlsafe_b64encode

from phantom_token.memo import remember

Key: TypeAlias = ECKey | RSAKey | OKPKey
"""A joserfc asymmetric key (private or public)."""
PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | Ed25519PrivateKey
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


def b64url_encode(data: bytes) -> str:
    """base64url without padding."""
    encoded: bytes = urlsafe_b64encode(data)  # typed: joserfc may be absent where mypyc compiles this module
    return encoded.decode("ascii")


# The URL-safe alphabet onto the standard one, and the standard alphabet's own "+" and "/" (and "=") onto "!", which
# a2b_base64's strict mode refuses like any character outside the alphabet: one translate does what three find()
# calls did, and the padding is ours only (added after the translation).
_FROM_URLSAFE: Final = bytes.maketrans(b"-_+/=", b"+/!!!")
_CANONICAL_LAST: Final = (b"AEIMQUYcgkosw048", b"AQgw")  # the last character when 1 or 2 "=" would pad: no stray bits


# The same check without the decoding, for a part whose bytes nobody reads (the signature, when the signature is not
# verified): the URL-safe alphabet onto itself and every other byte onto "!", so one translate and one search for
# "!" refuse what ``b64url_decode`` refuses (tests/unit/test_jose.py compares the two on its random and edge inputs).
# The search is for the int: ``bytes in bytes`` first tries the operand as an int and clears the TypeError.
_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_OUTSIDE: Final = 0x21  # "!"
_ONLY_ALPHABET: Final = bytes(c if c in _ALPHABET else _OUTSIDE for c in range(256))


def _ascii_and_padding(text: str) -> tuple[bytes, int]:
    """``text``'s ASCII bytes and the "=" count that would pad them, when its length and last character can end
    canonical base64url (a length not 1 mod 4, no stray bits in the last character); else ``MalformedToken``."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise MalformedToken("not canonical base64url without padding") from exc
    pad = -len(raw) % 4
    if pad == 3 or (pad and raw[-1] not in _CANONICAL_LAST[pad - 1]):
        raise MalformedToken("not canonical base64url without padding")
    return raw, pad


def check_b64url(text: str) -> None:
    """Raise ``MalformedToken`` exactly when ``b64url_decode(text)`` would, without decoding: only the URL-safe
    alphabet (ASCII), a length that is not 1 mod 4, no stray bits in the last character."""
    raw, _ = _ascii_and_padding(text)
    if _OUTSIDE in raw.translate(_ONLY_ALPHABET):
        raise MalformedToken("not canonical base64url without padding")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of ``b64url_encode``: only the URL-safe alphabet, no padding, no whitespace, canonical.

    joserfc's ``urlsafe_b64decode`` rules, done with ``binascii.a2b_base64(strict_mode=True)`` instead of
    ``base64.b64decode(validate=True)`` (a regular expression per call): every introspected JWT's three parts come
    through here on a cache miss (tests/unit/test_jose.py checks both accept and refuse the same inputs)."""
    raw, pad = _ascii_and_padding(text)
    try:
        return binascii.a2b_base64(raw.translate(_FROM_URLSAFE) + b"=" * pad, strict_mode=True)
    except binascii.Error as exc:
        raise MalformedToken("not canonical base64url without padding") from exc


# --- algorithms: the allowlist ------------------------------------------------------------------------------

_ALGORITHMS: dict[str, tuple[str, str | None]] = {  # alg -> (JWK kty, crv or None)
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "EdDSA": ("OKP", "Ed25519"),
}
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(_ALGORITHMS)
"""Every algorithm this module signs or verifies with: asymmetric only, never ``none`` nor HMAC."""
_MODELS: dict[str, JWSAlgModel] = {alg: JWSRegistry.algorithms[alg] for alg in _ALGORITHMS}
"""joserfc's algorithm objects, taken directly (its registry's lookup warns on every EdDSA use: RFC 9864)."""
MIN_RSA_BITS = 2048


def _fits(alg: str, key: Key) -> bool:
    kty, crv = _ALGORITHMS[alg]
    if key.key_type != kty:
        return False
    if isinstance(key, RSAKey):
        bits: int = key.public_key.key_size
        return bits >= MIN_RSA_BITS
    curve: str = key.curve_name
    return crv == curve


def _default_alg(key: Key) -> str:
    if isinstance(key, RSAKey):
        return "RS256"
    if isinstance(key, OKPKey):
        return "EdDSA"
    return {"P-384": "ES384", "P-521": "ES512"}.get(key.curve_name, "ES256")


# --- keys ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key as found in a JWK Set: the key plus its optional ``kid``, ``alg`` and ``use``."""

    key: Key
    kid: str | None = None
    alg: str | None = None
    use: str | None = None

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> VerificationKey:
        """The key of a JWK (EC P-256/384/521, RSA >= 2048 bits, OKP Ed25519); ``JoseError`` if unsupported."""
        kty, crv = jwk.get("kty"), jwk.get("crv")
        if not any(kty == k and (c is None or crv == c) for k, c in _ALGORITHMS.values()):
            raise JoseError(f"unsupported JWK kty/crv {kty!r}/{crv!r}")
        modulus = jwk.get("n")
        if kty == "RSA" and (  # checked before joserfc, which would only warn
            not isinstance(modulus, str) or int.from_bytes(b64url_decode(modulus), "big").bit_length() < MIN_RSA_BITS
        ):
            raise JoseError(f"RSA key shorter than {MIN_RSA_BITS} bits")
        try:
            key = JWKRegistry.import_key(dict(jwk))
        except (joserfc.errors.JoseError, ValueError, TypeError, KeyError) as exc:
            raise JoseError(f"invalid JWK: {exc}") from exc
        if not isinstance(key, ECKey | RSAKey | OKPKey):  # an oct key: excluded by kty above
            raise JoseError("a symmetric JWK is never a verification key")
        if "key_ops" in jwk and "verify" not in jwk["key_ops"]:  # joserfc would raise at verification time
            raise JoseError("the JWK's key_ops do not include verify")
        kid, alg, use = jwk.get("kid"), jwk.get("alg"), jwk.get("use")
        return cls(key, *(v if isinstance(v, str) else None for v in (kid, alg, use)))


def verification_keys(source: KeySource) -> list[VerificationKey]:
    """The keys of a JWK Set or of an iterable of keys (a ``SigningKey`` stands for its public half).

    A JWK Set's members of an unsupported type or size are left out (RFC 7517 section 5). Parse a set once and
    pass the list when verifying many tokens with it.
    """
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
                continue
        return keys
    return [k.verification_key() if isinstance(k, SigningKey) else k for k in source]


class SigningKey:
    """A private key with the algorithm it signs with and its ``kid`` (default: its RFC 7638 thumbprint).

    Invariant: ``alg`` fits the key (EC curve for ES*, RSA >= 2048 bits for RS*/PS*, Ed25519 for EdDSA).
    """

    __slots__ = ("_key", "_model", "alg", "kid")

    def __init__(self, key: PrivateKey | Key, alg: str | None = None, kid: str | None = None) -> None:
        wrapped = _wrap(key)
        if not wrapped.is_private:
            raise JoseError("a signing key is a private key")
        chosen = alg or _default_alg(wrapped)
        if chosen not in _ALGORITHMS:
            raise AlgorithmNotAllowed(f"unsupported algorithm {chosen!r}")
        if not _fits(chosen, wrapped):
            raise JoseError(f"algorithm {chosen} does not fit this {wrapped.key_type} key (or the key is too short)")
        self._key = wrapped
        self._model = _MODELS[chosen]
        self.alg: str = chosen
        self.kid: str = kid if kid is not None else wrapped.thumbprint()

    @classmethod
    def generate(cls, alg: str = "ES256", kid: str | None = None) -> SigningKey:
        """A fresh key for ``alg``."""
        if alg not in _ALGORITHMS:
            raise AlgorithmNotAllowed(f"unsupported algorithm {alg!r}")
        kty, crv = _ALGORITHMS[alg]
        key: Key
        if kty == "EC":
            key = ECKey.generate_key(crv)
        elif kty == "RSA":
            key = RSAKey.generate_key(MIN_RSA_BITS)
        else:
            key = OKPKey.generate_key("Ed25519")
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
        pem: bytes = self._key.as_pem(private=True)
        return pem

    def public_jwk(self) -> JsonObject:
        """The public JWK, with ``kid``, ``alg`` and ``use: sig``."""
        return {**self._key.as_dict(private=False), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def verification_key(self) -> VerificationKey:
        return VerificationKey(self._key, self.kid, self.alg, "sig")

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
        signing_input: bytes = json_b64encode(header) + b"." + json_b64encode(dict(claims))
        signature: bytes = urlsafe_b64encode(self._model.sign(signing_input, self._key))
        return (signing_input + b"." + signature).decode("ascii")

    def __repr__(self) -> str:
        return f"SigningKey(alg={self.alg!r}, kid={self.kid!r})"


def _wrap(key: PrivateKey | Key) -> Key:
    if isinstance(key, ECKey | RSAKey | OKPKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            raise JoseError(f"unsupported curve {key.curve.name}")
        return ECKey.import_key(key)
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:  # checked before joserfc, which would only warn
            raise JoseError(f"RSA key shorter than {MIN_RSA_BITS} bits")
        return RSAKey.import_key(key)
    return OKPKey.import_key(key)


def jwks(keys: Iterable[SigningKey]) -> JsonObject:
    """A JWK Set (RFC 7517 section 5) of the public halves of ``keys``."""
    return {"keys": [key.public_jwk() for key in keys]}


KeySource: TypeAlias = Mapping[str, Any] | Iterable[SigningKey | VerificationKey]
"""A JWK Set (``{"keys": [...]}``) or keys: SigningKey (its public half is used) or VerificationKey."""


# --- compact JWS: the one reader ----------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> JsonObject:
    result: JsonObject = dict(pairs)
    if len(result) != len(pairs):  # the rare case: find the name for the message
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise MalformedToken(f"duplicate member {name!r}")
            seen.add(name)
    return result


def _reject_constant(name: str) -> Any:
    raise MalformedToken(f"{name} is not JSON")


# One decoder for every JWS part: ``json.loads`` with hooks would build a new JSONDecoder (and its scanner) per call.
_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
_JSON_SPACE = " \t\n\r"  # what json's decoder skips around a document (its WHITESPACE)


def scan_json(scan: Callable[[str, int], tuple[Any, int]], text: str) -> Any:
    """``JSONDecoder.decode(text)`` for a decoder whose ``scan_once`` is ``scan``: the same document accepted, the
    same ``json.JSONDecodeError`` otherwise, without ``decode``'s and ``raw_decode``'s Python frames and their two
    regular-expression calls (interpreted even in the compiled build: a fifth of reading a JWT, per cache miss).
    The scanner (C, ``_json``) does the work either way, its hooks included."""
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    try:
        value, end = scan(text, start)
    except StopIteration as exc:
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None
    if len(text.rstrip(_JSON_SPACE)) > end:  # the document ends in a non-space character: anything past it is extra
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def scanner_of(decoder: json.JSONDecoder) -> Callable[[str, int], tuple[Any, int]]:
    """The decoder's own scanner (``_json``'s, in C), which ``decode`` calls with its hooks: for ``scan_json``."""
    scan: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]  # not in typeshed
    return scan


_SCAN_STRICT = scanner_of(_STRICT_JSON)


def _json_object(part: str, what: str) -> JsonObject:
    raw = b64url_decode(part)
    try:
        value = scan_json(_SCAN_STRICT, raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedToken(f"{what} is not JSON") from exc
    if not isinstance(value, dict):
        raise MalformedToken(f"{what} is not a JSON object")
    return value


# Headers read before, by their base64url text: the tokens of one issuer share one header (``alg``, ``kid``,
# ``typ``), so a cache miss need not decode and parse it again. Only small headers whose every member is a string
# are kept (a copy is handed out: no caller can change another's), at most ``_MAX_HEADERS`` (a full memo starts over).
_headers: dict[str, JsonObject] = {}
_MAX_HEADERS = 256
_MAX_HEADER_TEXT = 512


def _header(part: str) -> JsonObject:
    known = _headers.get(part)
    if known is not None:
        return dict(known)
    header = _json_object(part, "header")
    if not isinstance(header.get("alg"), str):
        raise MalformedToken("header has no string 'alg'")
    if len(part) <= _MAX_HEADER_TEXT and all(isinstance(value, str) for value in header.values()):
        remember(_headers, part, dict(header), _MAX_HEADERS)
    return header


def _parts(token: str) -> list[str]:
    if not isinstance(token, str):
        raise MalformedToken("a token is text")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken("a compact JWS has exactly three parts")
    return parts


def _split(token: str) -> tuple[JsonObject, JsonObject, bytes, bytes]:
    """Header, claims, signing input and signature: what ``verify`` needs."""
    parts = _parts(token)
    header = _header(parts[0])
    claims = _json_object(parts[1], "payload")
    signature = b64url_decode(parts[2])
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def decode_unverified(token: str) -> tuple[JsonObject, JsonObject]:
    """(header, claims) of a compact JWS, checking its shape but NOT its signature; raises ``MalformedToken``.

    The same checks as ``verify``'s reading (``_split``), but the signature part is only checked (``check_b64url``),
    not decoded, and no signing input is built: nothing here would read them (an introspected JWT, per cache miss)."""
    parts = _parts(token)
    header = _header(parts[0])
    claims = _json_object(parts[1], "payload")
    check_b64url(parts[2])
    return header, claims


def verify(token: str, keys: KeySource, *, algorithms: Collection[str]) -> tuple[JsonObject, JsonObject]:
    """(header, claims) of a compact JWS whose signature verifies with one of ``keys``.

    ``algorithms`` lists what the caller accepts, within ``SUPPORTED_ALGORITHMS`` (``none`` and HMAC are refused even
    if listed). With a ``kid`` in the header only keys with that ``kid`` are candidates; without one, every key that
    fits the algorithm is tried. Claims (``exp``, ``aud``...) are not checked here: that is ``core.claims``.
    """
    header, claims, signing_input, signature = _split(token)
    alg = header["alg"]
    if alg not in _ALGORITHMS:
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
        for k in verification_keys(keys)
        if (kid is None or k.kid == kid) and k.alg in (None, alg) and k.use in (None, "sig") and _fits(alg, k.key)
    ]
    if not candidates:
        raise UnknownKey(f"no key for kid={kid!r} alg={alg}")
    model = _MODELS[alg]
    if any(model.verify(signing_input, signature, k.key) for k in candidates):
        return header, claims
    raise BadSignature("signature verification failed")


def verify_with_key(token: str, key: Key, *, algorithms: Collection[str]) -> tuple[JsonObject, JsonObject]:
    """(header, claims) of a compact JWS whose signature verifies with ``key``: a key the caller already chose for
    this token (a DPoP proof's own ``jwk``), so no ``kid`` is looked at. The algorithm rules are ``verify``'s: within
    ``SUPPORTED_ALGORITHMS`` and ``algorithms``, fitting the key, no ``crit``."""
    header, claims, signing_input, signature = _split(token)
    alg = header["alg"]
    if alg not in _ALGORITHMS or alg not in algorithms:
        raise AlgorithmNotAllowed(f"algorithm {alg!r} is not allowed")
    if "crit" in header:
        raise MalformedToken("critical header extensions are not supported")
    if not _fits(alg, key):
        raise UnknownKey(f"the key does not fit alg={alg}")
    if not _MODELS[alg].verify(signing_input, signature, key):
        raise BadSignature("signature verification failed")
    return header, claims
