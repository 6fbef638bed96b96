"""How a cache entry is written to a shared store, optionally encrypted at rest (a JWT is a credential).

Format: one version byte, then either ``0x00`` + JSON (plain) or ``0x01`` + 12-byte nonce + AES-256-GCM
ciphertext and tag (encrypted). JSON is ``[expires_at, [scopes...], authorization, headers, {binding}]`` for an
active entry and ``[expires_at]`` for a negative one. ``headers`` is ``[[name, value], ...]`` when the plugin sets
``claims_to_headers``, else null; ``{binding}`` holds the token's sender constraints as the answer's ``cnf`` names
them (``"jkt"``: the DPoP key thumbprint, RFC 9449; ``"x5t#S256"``: the client certificate's, RFC 8705), ``{}``
when it has none.

Bindings and older values: an active entry in the older three- or four-member forms (written before the binding was
kept) is a miss: it cannot say whether the token is bound, and trusting it as unbound would let a bound token pass
as a bearer token. So is a binding with a member this version does not know, or a member that is not a string: a
binding is never dropped on the way through the shared store, so mixed versions during a rolling upgrade
re-introspect rather than accept a bound token without its check (an older version reads the five-member form as a
miss too).

Invariants: the AES key is derived with HKDF-SHA256 from the configured secret (never used raw); every value
gets a fresh random nonce; the store key is the associated data, so a value copied under another key does not
decrypt; with a key configured, a plain or undecryptable value is a miss, never trusted; ``decode`` never
raises on bad data, it answers None.
"""

from __future__ import annotations

import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from phantom_token.config.settings import MIN_ENCRYPTION_KEY_CHARS
from phantom_token.core.ports import Cached, CacheEntry, NegativeEntry
from phantom_token.core.rfc8705 import MEMBER as X5T_S256

_PLAIN, _AES_GCM = b"\x00", b"\x01"
_NONCE = 12
_HKDF_INFO = b"phantom-token cache encryption v1"
JKT = "jkt"  # RFC 9449 cnf member
_KNOWN_BINDINGS = frozenset({JKT, X5T_S256})
"""The ``cnf`` members this version checks; an entry bound by any other is a miss (never accepted unchecked)."""


def derive_key(secret: str) -> bytes:
    """A 256-bit AES key from the configured secret (which should itself be random, e.g. 32 bytes base64)."""
    if len(secret) < MIN_ENCRYPTION_KEY_CHARS:
        raise ValueError(f"encryption_key must be at least {MIN_ENCRYPTION_KEY_CHARS} characters")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return hkdf.derive(secret.encode("utf-8"))


class EntryCodec:
    def __init__(self, secret: str | None = None) -> None:
        self._aead = AESGCM(derive_key(secret)) if secret is not None else None

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    def encode(self, entry: Cached, store_key: bytes) -> bytes:
        document: list[object] = [entry.expires_at]
        if isinstance(entry, CacheEntry):
            binding: dict[str, str] = {}
            if entry.jkt is not None:
                binding[JKT] = entry.jkt
            if entry.x5t_s256 is not None:
                binding[X5T_S256] = entry.x5t_s256
            headers = [[name, value] for name, value in entry.headers] if entry.headers is not None else None
            document += [sorted(entry.scopes), entry.authorization, headers, binding]
        plain = json.dumps(document, separators=(",", ":")).encode()
        if self._aead is None:
            return _PLAIN + plain
        nonce = os.urandom(_NONCE)
        return _AES_GCM + nonce + self._aead.encrypt(nonce, plain, store_key)

    def decode(self, data: bytes, store_key: bytes) -> Cached | None:
        plain = self._open(data, store_key)
        if plain is None:
            return None
        try:
            document = json.loads(plain)
        except ValueError:
            return None
        return _entry(document)

    def _open(self, data: bytes, store_key: bytes) -> bytes | None:
        version, body = data[:1], data[1:]
        if self._aead is None:
            return body if version == _PLAIN else None
        if version != _AES_GCM or len(body) < _NONCE + 16:
            return None
        try:
            return self._aead.decrypt(body[:_NONCE], body[_NONCE:], store_key)
        except InvalidTag:
            return None


def _entry(document: object) -> Cached | None:
    if not isinstance(document, list) or not document or not isinstance(document[0], int | float):
        return None
    expires_at = float(document[0])
    if len(document) == 1:
        return NegativeEntry(expires_at)
    if len(document) != 5:  # three or four: written without the binding, which may have been there (see above)
        return None
    scopes, authorization, binding = document[1], document[2], document[4]
    if not isinstance(authorization, str) or not isinstance(scopes, list) or not isinstance(binding, dict):
        return None
    if not all(isinstance(scope, str) for scope in scopes):
        return None
    if set(binding) - _KNOWN_BINDINGS or not all(isinstance(value, str) for value in binding.values()):
        return None
    headers = _headers(document[3]) if document[3] is not None else None
    if document[3] is not None and headers is None:
        return None
    return CacheEntry(authorization, frozenset(scopes), expires_at, headers,
                      x5t_s256=binding.get(X5T_S256), jkt=binding.get(JKT))


def _headers(raw: object) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(raw, list):
        return None
    pairs = []
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], str)):
            return None
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)
