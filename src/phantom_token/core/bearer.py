"""Reading the access token from the Authorization header: ``Bearer`` (RFC 6750 section 2.1, contract section 4)
and ``DPoP`` (RFC 9449 section 7.1: the same ``token68`` syntax; the proof is checked by ``core.dpop``).

Invariants: the returned token matches RFC 6750 ``b64token`` and is at most ``max_length`` bytes; nothing in
this module logs, and a token only ever leaves it as itself or as its ``fingerprint`` (the token classes' ``repr``
shows the fingerprint, never the token).

Hot path (compiled with the engine, ``phantom_token/compiled.py``; every request whose token the connection's memo
does not know comes here): the usual ``Bearer <token>`` is checked by ``is_b64token``, a table look-up per byte in
C, not by a regex (a regex ``fullmatch`` cost about 3 900 instructions on a 36-byte token, this about 400), and
the ASCII bytes it checked go on to the engine's SHA-256 (``BearerToken.data``: one encode per request); the
result is a plain ``__slots__`` class (a frozen dataclass's ``__init__`` runs interpreted even when compiled: about
2 100 instructions). Any other form (another case, tabs, several spaces, surrounding blanks, ``DPoP``) goes through
the general header grammar, ``_HEADER``, and then the same ``is_b64token``: one definition of the syntax.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from enum import Enum
from typing import Final

# Scheme in any case, one or more spaces/tabs, then the credentials; surrounding whitespace is ignored.
_HEADER: Final = re.compile(r"[ \t]*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(?:[ \t]+(.*?))?[ \t]*", re.DOTALL)

# RFC 6750 ``b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="``.
_B64_CHARS: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
# A byte translation table that leaves the b64token characters (before the padding) as they are and changes every
# other byte (0x80-0xff and "=" included): a byte string is made of those characters only when ``translate``
# leaves it equal to itself.
_B64_TABLE: Final = bytes(c if c in _B64_CHARS else c ^ 0x80 for c in range(256))


def is_b64token(value: str) -> bool:
    """Whether ``value`` is one RFC 6750 ``b64token``: the regex ``[A-Za-z0-9\\-._~+/]+=*``, exactly (the unit
    tests compare the two over many inputs), without a regex."""
    return b64token_bytes(value) is not None


def b64token_bytes(value: str) -> bytes | None:
    """``value``'s ASCII bytes when it is one RFC 6750 ``b64token`` (``is_b64token``), else None. The engine hashes
    these bytes (``keys.ascii_digest``): the token is encoded once per request, here, not again for its SHA-256."""
    body = value.rstrip("=")  # the padding may only end the token: what is left must be non-empty, without "="
    if not body:
        return None
    try:
        data = body.encode("ascii")
    except UnicodeEncodeError:
        return None
    if data.translate(_B64_TABLE) != data:
        return None
    return data if body is value else value.encode("ascii")  # rstrip gives the same str when there is no padding


class Problem(Enum):
    """Why no usable token was found."""

    MISSING = "missing"  # no Authorization header, or another scheme: answer with a bare challenge
    DUPLICATE = "duplicate"  # more than one Authorization header: 400 invalid_request
    INVALID = "invalid"  # Bearer with credentials that are not a b64token, or too long: 401 invalid_token
    INVALID_DPOP = "invalid_dpop"  # the same with the DPoP scheme: 401 with a DPoP invalid_token challenge


class BearerToken:
    """A token sent with the ``Bearer`` scheme. (A plain class, not a dataclass: one is made per request whose
    token the connection's memo does not know. Compared by value; shown by fingerprint.) ``data``: the token's
    ASCII bytes (``extract`` has them from the syntax check; made here when not given), which the engine hashes."""

    __slots__ = ("data", "value")

    def __init__(self, value: str, data: bytes | None = None) -> None:
        self.value = value
        self.data = value.encode("ascii") if data is None else data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BearerToken) and other.value == self.value

    def __hash__(self) -> int:
        return hash(("Bearer", self.value))

    def __repr__(self) -> str:
        return f"BearerToken(fingerprint={fingerprint(self.value)!r})"


class DPoPToken:
    """A token sent with the ``DPoP`` scheme: valid only with a proof of possession of the key it is bound to."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DPoPToken) and other.value == self.value

    def __hash__(self) -> int:
        return hash(("DPoP", self.value))

    def __repr__(self) -> str:
        return f"DPoPToken(fingerprint={fingerprint(self.value)!r})"


def extract(values: Sequence[str] | None, max_length: int) -> BearerToken | DPoPToken | Problem:
    """The token carried by the ``Authorization`` header values of one request, by its scheme."""
    if not values:
        return Problem.MISSING
    if len(values) > 1:
        return Problem.DUPLICATE
    value = values[0]
    if value.startswith("Bearer "):  # the usual form: the token checked as it is, no header grammar
        usual = value[7:]
        if len(usual) <= max_length:
            data = b64token_bytes(usual)
            if data is not None:
                return BearerToken(usual, data)
    match = _HEADER.fullmatch(value)
    if match is None:
        return Problem.INVALID if values[0].lstrip(" \t")[:6].lower() == "bearer" else Problem.MISSING
    scheme: str = match.group(1).lower()
    credentials: str | None = match.group(2)  # None when there is no space after the scheme (typeshed says str)
    if scheme != "bearer" and scheme != "dpop":
        return Problem.MISSING
    if not credentials or len(credentials) > max_length or not is_b64token(credentials):
        return Problem.INVALID if scheme == "bearer" else Problem.INVALID_DPOP
    return BearerToken(credentials) if scheme == "bearer" else DPoPToken(credentials)


def fingerprint(token: str) -> str:
    """A short, non-reversible name for a token, safe to log: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:8]
