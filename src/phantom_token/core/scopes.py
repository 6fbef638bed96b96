"""Scope checks (contract section 7): every required scope must be granted.

Granted scopes come from the JWT's ``scope`` claim (space-separated string, RFC 8693/9068) or ``scp`` (array).
"""

from __future__ import annotations

from collections.abc import Mapping


def granted_scopes(claims: Mapping[str, object]) -> frozenset[str]:
    """Every scope a token's claims grant; an absent or malformed claim grants nothing."""
    granted: set[str] = set()
    scope = claims.get("scope")
    if isinstance(scope, str):
        granted.update(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        granted.update(s for s in scp if isinstance(s, str))
    elif isinstance(scp, str):
        granted.update(scp.split())
    return frozenset(granted)
