"""How long an introspection answer may be cached (contract section 6).

lifetime = min(token_cache_seconds, Cache-Control max-age, JWT exp - now); ``no-store``, ``no-cache`` or
``max-age=0`` mean "do not cache". The result never lets a cache entry outlive the token.
"""

from __future__ import annotations


class CacheDirectives:
    """What an answer's ``Cache-Control`` says; a value, never changed once made (equal by its fields).

    A plain class, not a frozen dataclass: one is made per cache miss, and a dataclass's generated ``__init__`` runs
    interpreted even in the compiled build (docs/performance.md, "Cache misses")."""

    __slots__ = ("max_age", "no_store")

    def __init__(self, max_age: float | None = None, no_store: bool = False) -> None:
        self.max_age = max_age  # None: the response set no max-age
        self.no_store = no_store  # no-store or no-cache: the response must not be reused

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CacheDirectives):
            return NotImplemented
        return self.max_age == other.max_age and self.no_store == other.no_store

    def __hash__(self) -> int:
        return hash((self.max_age, self.no_store))

    def __repr__(self) -> str:
        return f"CacheDirectives(max_age={self.max_age!r}, no_store={self.no_store!r})"


def parse_cache_control(values: list[str]) -> CacheDirectives:
    """The directives that matter to us from every ``Cache-Control`` header value (RFC 9111 section 5.2).

    A malformed ``max-age`` is treated as 0 (RFC 9111 section 4.2.1: treat as stale), so it disables caching.
    ``delta-seconds`` are ASCII digits (RFC 9111 section 1.2.2): ``str.isdigit`` alone would let ``"²"`` through to
    ``float``, which refuses it.
    """
    if len(values) == 1:  # what an authorization server sends with a token, read without splitting (per miss)
        value = values[0]
        if value.startswith("max-age="):
            digits = value[8:]
            if digits.isascii() and digits.isdigit():
                return CacheDirectives(float(digits), False)
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
                seconds = float(argument) if argument.isascii() and argument.isdigit() else 0.0
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
