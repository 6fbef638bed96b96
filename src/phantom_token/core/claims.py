"""Every claim rule of the gateway, in one place: the token's claims, a signed answer's envelope, and the access
token the gateway mints. Pure: no I/O; the JWTs themselves are read (and verified) by ``phantom_token.jose``.

A NumericDate (``exp``, ``nbf``, ``iat``) is a JSON number, never a boolean (``numeric_claim``); ``aud`` is a string
or an array of strings (``audiences``).

Token checks (every mode, applied once when an answer arrives; a refusal is a 401 ``invalid_token``):
- ``exp`` must be a number later than now. No clock skew here: the JWT sent upstream never outlives ``exp``,
  so a token past its ``exp`` by our clock would reach the API already expired.
- ``nbf``, when present, must be a number no later than now + ``clock_skew_seconds``.
- ``audience`` (plugin option): the token's ``aud`` (string or array) must contain it.
- ``issuer_allowed`` (plugin option): the token's ``iss`` must be one of them.

Signed-answer envelope checks (RFC 9701, ``signed`` mode; a refusal is the server's fault, a 502): ``iss`` equals the
configured issuer exactly; ``aud`` is (or contains) our client_id; ``iat`` is present, not in the future and not
older than ``MAX_RESPONSE_AGE_SECONDS`` (both with the clock skew); an ``exp``, when present, has not passed.

Minting (``json`` and ``signed`` modes; RFC 9068): the introspection claims, minus the members that describe the
introspection rather than the token (``active``, ``token_type``) and those the gateway re-issues (``iss``,
``iat``, ``nbf``, ``exp``, ``jti``); plus ``iss`` (the gateway), ``iat`` (now), a fresh ``jti``, ``exp`` never later
than the token's own (nor than ``max_lifetime_seconds`` from now), ``sub`` (the client for client-credentials
tokens, RFC 9068 section 2.2) and ``aud`` (the token's, else the plugin's ``audience``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from phantom_token.config.settings import PluginConfig

REISSUED = frozenset({"active", "token_type", "iss", "iat", "nbf", "exp", "jti"})
"""Introspection members never copied into a minted token."""
MAX_RESPONSE_AGE_SECONDS = 300
"""How old a signed introspection answer (its ``iat``) may be."""


def claim(claims: Mapping[str, object], name: str) -> object:
    """``claims.get(name)``. A claim set read from JSON is a dict: compiled, its ``get`` is then a direct lookup,
    where ``Mapping.get`` is a method call by name (about 900 instructions; several per cache miss)."""
    if isinstance(claims, dict):
        return claims.get(name)
    return claims.get(name)


def numeric_claim(claims: Mapping[str, object], name: str) -> float | None:
    """A NumericDate claim (``exp``, ``nbf``, ``iat``) as a number, or None when absent or not a number."""
    value = claim(claims, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def audiences(claims: Mapping[str, object]) -> list[str]:
    """The ``aud`` claim as a list of strings (RFC 7519 section 4.1.3: a string or an array of strings)."""
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [item for item in aud if isinstance(item, str)]
    return []


def cnf_member(claims: Mapping[str, object], member: str) -> str | None:
    """A member of the ``cnf`` (confirmation, RFC 7800) claim: ``x5t#S256`` (RFC 8705), ``jkt`` (RFC 9449).

    None when the token carries no such binding (no ``cnf``, or no ``member`` in it). A binding that is there but
    unusable (``cnf`` not an object, the member not a non-empty string) is ``""``, which no certificate or key
    thumbprint equals: the caller then refuses the token rather than treat it as unbound (fail closed).
    """
    cnf = claim(claims, "cnf")
    if cnf is None:
        return None
    if not isinstance(cnf, Mapping):
        return ""
    value = cnf.get(member)
    if value is None and member not in cnf:
        return None
    return value if isinstance(value, str) and value else ""


def refusal(claims: Mapping[str, object], plugin: PluginConfig, now: float) -> str | None:
    """Why the token must be refused (a reason fit for one log line, never containing the token), or None."""
    if "exp" in claims:
        expires = numeric_claim(claims, "exp")
        if expires is None:
            return "exp is not a number"
        if expires <= now:
            return "the token has expired (exp)"
    if "nbf" in claims:
        not_before = numeric_claim(claims, "nbf")
        if not_before is None:
            return "nbf is not a number"
        if not_before > now + plugin.clock_skew_seconds:
            return "the token is not valid yet (nbf)"
    if plugin.audience is not None and plugin.audience not in audiences(claims):
        return "aud does not contain the configured audience"
    if plugin.issuer_allowed and claims.get("iss") not in plugin.issuer_allowed:
        return "iss is not one of issuer_allowed"
    return None


def envelope_refusal(
    claims: Mapping[str, object], *, issuer: str, client_id: str, now: float, clock_skew_seconds: float
) -> str | None:
    """Why a signed answer's envelope must be refused (a reason for one log line), or None."""
    if claims.get("iss") != issuer:
        return "iss is not the configured issuer"
    if client_id not in audiences(claims):
        return "aud is not our client_id"
    issued = numeric_claim(claims, "iat")
    if issued is None:
        return "no numeric iat"
    if issued > now + clock_skew_seconds:
        return "iat is in the future"
    if issued < now - MAX_RESPONSE_AGE_SECONDS - clock_skew_seconds:
        return f"older than {MAX_RESPONSE_AGE_SECONDS}s (iat)"
    expires = numeric_claim(claims, "exp")
    if "exp" in claims and (expires is None or expires <= now - clock_skew_seconds):
        return "expired (exp)"
    return None


def access_token_claims(
    introspected: Mapping[str, object],
    *,
    issuer: str,
    audience: str | None,
    now: float,
    max_lifetime_seconds: int,
    jti: str,
) -> dict[str, object]:
    """The RFC 9068 claim set of the JWT the gateway mints for an active token (see the module docstring)."""
    claims = {name: value for name, value in introspected.items() if name not in REISSUED}
    client_id = introspected.get("client_id")
    if "sub" not in claims and isinstance(client_id, str):
        claims["sub"] = client_id
    if "aud" not in claims and audience is not None:
        claims["aud"] = audience
    issued_at = int(now)
    expires = issued_at + max_lifetime_seconds
    token_expires = numeric_claim(introspected, "exp")
    if token_expires is not None:
        expires = min(expires, int(token_expires))
    claims.update(iss=issuer, iat=issued_at, exp=expires, jti=jti)
    return claims
