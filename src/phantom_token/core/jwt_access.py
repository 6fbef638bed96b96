"""JWT access tokens verified here, not introspected (plugin option ``jwt_issuers``). No I/O but through the port.

A token is handled here when it is a compact JWS whose (unverified) ``iss`` is one of the plugin's ``jwt_issuers``
(``listed_issuer``); any other token, a JWT of an unlisted issuer included, is an opaque token for the
authorization servers. Reading ``iss`` before the signature is checked only chooses the keys: nothing is trusted
until ``verify`` succeeds.

``verify``'s checks, in order (a failure is a reason for one log line and a 401; the JWKS unreachable is
``IntrospectionUnavailable``, a 502):
- the signature, with the issuer's JWKS (``IssuerKeys`` port), through ``phantom_token.jose``: its algorithm
  allowlist intersected with the issuer's ``algorithms`` (never ``none`` nor HMAC, whatever the list says); a
  ``kid`` not in the JWKS makes the port fetch it again, at most once per 30 seconds (key rotation followed,
  forged ``kid`` values cannot make the gateway hammer the JWKS);
- ``exp`` present (RFC 9068 section 2.2), then the route's claim rules (``core.claims.refusal``: ``exp``, ``nbf``
  with the clock skew, ``issuer_allowed``) with the issuer's ``audience`` (its own, else the plugin's: always set,
  ``config.servers`` sees to it) in place of the plugin's.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from phantom_token import jose
from phantom_token.core import claims as token_claims

if TYPE_CHECKING:
    from phantom_token.config.settings import JwtIssuer, PluginConfig
    from phantom_token.core.ports import IssuerKeys

__all__ = ["listed_issuer", "verify"]


def listed_issuer(token: str, issuers: tuple[JwtIssuer, ...]) -> JwtIssuer | None:
    """The ``jwt_issuers`` item whose issuer the token's unverified ``iss`` names; None when the token is not a
    well-formed JWS or names no listed issuer (it is then an opaque token)."""
    if token.count(".") != 2:
        return None
    try:
        _, claims = jose.decode_unverified(token)
    except jose.JoseError:
        return None
    iss = claims.get("iss")
    for issuer in issuers:
        if issuer.issuer == iss:
            return issuer
    return None


async def verify(token: str, issuer: JwtIssuer, plugin: PluginConfig, keys: IssuerKeys,
                 now: float) -> dict[str, object] | str:
    """The token's verified claims, or why it is refused (never containing the token)."""
    try:
        _, claims = jose.verify(token, await keys.keys(issuer, plugin), algorithms=issuer.algorithms)
    except jose.UnknownKey:
        fresh = await keys.refresh(issuer, plugin)
        if fresh is None:
            return "no key of the JWKS has the token's kid (and the JWKS was fetched less than 30 s ago)"
        try:
            _, claims = jose.verify(token, fresh, algorithms=issuer.algorithms)
        except jose.JoseError as exc:
            return f"{type(exc).__name__}: {exc}"
    except jose.JoseError as exc:
        return f"{type(exc).__name__}: {exc}"
    if "exp" not in claims:
        return "the token has no exp"
    if plugin.audience != issuer.audience:
        plugin = dataclasses.replace(plugin, audience=issuer.audience)
    refused = token_claims.refusal(claims, plugin, now)
    return claims if refused is None else refused
