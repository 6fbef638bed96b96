"""Strict, unverified reading of a compact JWS (RFC 7515 section 7.1).

The gateway does not verify the JWT that the introspection endpoint returns in Curity's mode: that response
comes over an authenticated channel from the authorization server, and the API verifies the JWT itself. It does
check the shape, so that a 200 whose body is not a JWT is an authorization-server fault (502), not a credential.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

_PART = re.compile(r"[A-Za-z0-9_-]*")


class MalformedJwt(ValueError):
    """The text is not a compact JWS with a JSON header (string ``alg``) and a JSON object payload."""


def b64url_decode(part: str) -> bytes:
    if not _PART.fullmatch(part):
        raise MalformedJwt("not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedJwt("not base64url") from exc


def _json_object(part: str, what: str) -> dict[str, object]:
    try:
        value = json.loads(b64url_decode(part))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedJwt(f"{what} is not JSON") from exc
    if not isinstance(value, dict):
        raise MalformedJwt(f"{what} is not a JSON object")
    return value


def read_claims(token: str) -> tuple[dict[str, object], dict[str, object]]:
    """The (header, claims) of a compact JWS, checked for shape only; raises ``MalformedJwt``."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise MalformedJwt("not three dot-separated parts")
    header = _json_object(parts[0], "header")
    if not isinstance(header.get("alg"), str):
        raise MalformedJwt("header has no string 'alg'")
    claims = _json_object(parts[1], "payload")
    b64url_decode(parts[2])
    return header, claims


def numeric_claim(claims: dict[str, object], name: str) -> float | None:
    """A NumericDate claim (``exp``, ``nbf``, ``iat``) as a number, or None when absent or not a number."""
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
