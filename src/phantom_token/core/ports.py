"""The engine's two ports, and the values that cross them.

The engine asks a ``TokenCache`` and an ``Introspector``; adapters (in-memory, Redis, HTTP) implement them and
translate their own exceptions into ``core.errors`` before anything reaches the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from phantom_token.core.ttl import CacheDirectives

if TYPE_CHECKING:
    from phantom_token.config.settings import PluginConfig


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """What a cache hit needs, and nothing more: no JWT parsing happens on a hit.

    ``authorization`` is the full header value to send upstream (``Bearer <jwt>``); ``expires_at`` is absolute
    (seconds since the epoch), so an entry copied between caches keeps its deadline.
    """

    authorization: str
    scopes: frozenset[str]
    expires_at: float


@dataclass(frozen=True, slots=True)
class Active:
    """The token is active. ``jwt`` goes upstream; ``claims`` are its (unverified or verified) claims."""

    jwt: str
    claims: dict[str, object]
    directives: CacheDirectives = field(default_factory=CacheDirectives)


@dataclass(frozen=True, slots=True)
class Inactive:
    """The authorization server says the token is not active (unknown, expired, revoked)."""


IntrospectionResult = Active | Inactive


class Introspector(Protocol):
    async def introspect(self, token: str, plugin: PluginConfig) -> IntrospectionResult:
        """Ask the authorization server; raise ``IntrospectionUnavailable`` when it gives no usable answer."""
        ...


class TokenCache(Protocol):
    """Cache of introspection answers keyed by ``cache_key`` (a SHA-256 digest, never the token)."""

    def get_local(self, key: bytes, now: float) -> CacheEntry | None:
        """A live entry from this process's memory, without I/O (the hot path)."""
        ...

    async def get(self, key: bytes, now: float) -> CacheEntry | None:
        """A live entry from any tier (memory, then a shared store)."""
        ...

    async def put(self, key: bytes, entry: CacheEntry) -> None: ...

    async def purge(self, key: bytes) -> bool:
        """Remove an entry everywhere; True when something was removed."""
        ...
