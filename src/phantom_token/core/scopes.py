"""Scope checks (contract section 7): every required scope must be granted.

Granted scopes come from the JWT's ``scope`` claim (space-separated string, RFC 8693/9068) or ``scp`` (array).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from phantom_token.core.claims import claim
from phantom_token.memo import remember

# The sets of ``scope`` strings read before: most tokens carry one of a few scope strings, so a cache miss need not
# split one again; the same frozenset object comes back (its hash kept: the engine's shared scope sets find it at
# once). Bounded like every hot-path memo (``phantom_token.memo``); frozensets cannot be changed by a reader.
_SCOPE_TEXTS: dict[str, frozenset[str]] = {}
_MAX_SCOPE_TEXTS: Final = 4096
_MAX_SCOPE_TEXT: Final = 1024  # longer strings are split every time, not kept


def granted_scopes(claims: Mapping[str, object]) -> frozenset[str]:
    """Every scope a token's claims grant; an absent or malformed claim grants nothing."""
    scope = claim(claims, "scope")  # compiled, on a dict a direct lookup, not Mapping.get's call by name
    if isinstance(scope, str) and "scp" not in claims and len(scope) <= _MAX_SCOPE_TEXT:  # the usual claims
        known = _SCOPE_TEXTS.get(scope)
        if known is None:
            known = remember(_SCOPE_TEXTS, scope, frozenset(scope.split()), _MAX_SCOPE_TEXTS)
        return known
    granted: set[str] = set()
    if isinstance(scope, str):
        granted.update(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        granted.update(s for s in scp if isinstance(s, str))
    elif isinstance(scp, str):
        granted.update(scp.split())
    return frozenset(granted)
