"""Reading the access token from the Authorization header: ``Bearer`` (RFC 6750 section 2.1, contract section 4)
and ``DPoP`` (RFC 9449 section 7.1: the same ``token68`` syntax; the proof is checked by ``core.dpop``).

Invariants: the returned token matches RFC 6750 ``b64token`` and is at most ``max_length`` bytes; nothing in
this module logs, and a token only ever leaves it as itself or as its ``fingerprint``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

# Scheme in any case, one or more spaces/tabs, then the credentials; surrounding whitespace is ignored.
_HEADER: Final = re.compile(r"[ \t]*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(?:[ \t]+(.*?))?[ \t]*", re.DOTALL)
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class Problem(Enum):
    """Why no usable token was found."""

    MISSING = "missing"  # no Authorization header, or another scheme: answer with a bare challenge
    DUPLICATE = "duplicate"  # more than one Authorization header: 400 invalid_request
    INVALID = "invalid"  # Bearer with credentials that are not a b64token, or too long: 401 invalid_token
    INVALID_DPOP = "invalid_dpop"  # the same with the DPoP scheme: 401 with a DPoP invalid_token challenge


@dataclass(frozen=True, slots=True)
class BearerToken:
    value: str


@dataclass(frozen=True, slots=True)
class DPoPToken:
    """A token sent with the ``DPoP`` scheme: valid only with a proof of possession of the key it is bound to."""

    value: str


def extract(values: Sequence[str] | None, max_length: int) -> BearerToken | DPoPToken | Problem:
    """The token carried by the ``Authorization`` header values of one request, by its scheme."""
    if not values:
        return Problem.MISSING
    if len(values) > 1:
        return Problem.DUPLICATE
    value = values[0]
    if value[:7] == "Bearer ":  # the usual form: one regex on the token instead of the general header grammar
        usual = value[7:]
        if len(usual) <= max_length and _B64TOKEN.fullmatch(usual):
            return BearerToken(usual)
    match = _HEADER.fullmatch(value)
    if match is None:
        return Problem.INVALID if values[0].lstrip(" \t")[:6].lower() == "bearer" else Problem.MISSING
    scheme: str = match.group(1).lower()
    credentials: str | None = match.group(2)  # None when there is no space after the scheme (typeshed says str)
    if scheme != "bearer" and scheme != "dpop":
        return Problem.MISSING
    if not credentials or len(credentials) > max_length or not _B64TOKEN.fullmatch(credentials):
        return Problem.INVALID if scheme == "bearer" else Problem.INVALID_DPOP
    return BearerToken(credentials) if scheme == "bearer" else DPoPToken(credentials)


def fingerprint(token: str) -> str:
    """A short, non-reversible name for a token, safe to log: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:8]
