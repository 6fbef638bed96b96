"""How long an introspection answer may be cached (contract section 6).

lifetime = min(token_cache_seconds, Cache-Control max-age, JWT exp - now); ``no-store``, ``no-cache`` or
``max-age=0`` mean "do not cache". The result never lets a cache entry outlive the token.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CacheDirectives:
    max_age: float | None = None  # None: the response set no max-age
    no_store: bool = False  # no-store or no-cache: the response must not be reused


def parse_cache_control(values: list[str]) -> CacheDirectives:
    """The directives that matter to us from every ``Cache-Control`` header value (RFC 9111 section 5.2).

    A malformed ``max-age`` is treated as 0 (RFC 9111 section 4.2.1: treat as stale), so it disables caching.
    """
    max_age: float | None = None
    no_store = False
    for value in values:
        for directive in value.split(","):
            name, _, argument = directive.strip().partition("=")
            name = name.strip().lower()
            if name in ("no-store", "no-cache"):
                no_store = True
            elif name == "max-age":
                argument = argument.strip().strip('"')
                seconds = float(argument) if argument.isdigit() else 0.0
                max_age = seconds if max_age is None else min(max_age, seconds)
    return CacheDirectives(max_age, no_store)


def cache_lifetime(configured: float, directives: CacheDirectives, expires_at: float | None, now: float) -> float:
    """Seconds an answer may be served from cache; 0 means it must not be cached."""
    if directives.no_store:
        return 0.0
    lifetime = configured
    if directives.max_age is not None:
        lifetime = min(lifetime, directives.max_age)
    if expires_at is not None:
        lifetime = min(lifetime, expires_at - now)
    return max(lifetime, 0.0)
