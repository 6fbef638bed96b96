"""The engine's two ports, and the values that cross them.

The engine asks a ``TokenCache``, an ``Introspector``, an ``IntrospectionCoordinator``, (for the JWTs it mints) a
``TokenMinter`` and (for ``token_exchange``) a ``TokenExchanger``; adapters (in-memory, Redis, HTTP) implement them
and translate their own exceptions into ``core.errors`` before anything reaches the engine. A cache adapter whose
store is down degrades to a miss (or to this process's memory); it never raises. """

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from phantom_token.core.ttl import CacheDirectives

if TYPE_CHECKING:
    from phantom_token.config.settings import JwtIssuer, PluginConfig
    from phantom_token.jose import VerificationKey


@dataclass(frozen=True, slots=True)
class EntryExtras:
    """The rare parts of a ``CacheEntry``, kept behind one member so an entry without them costs no slot for each.

    ``headers``: the ``claims_to_headers`` (name, wire value) pairs to send upstream, computed once per answer
    (core.claim_headers); None when the plugin sets no claims_to_headers (a tuple, maybe empty, whenever it does).
    ``jkt``: the token's DPoP binding (``cnf.jkt``, RFC 9449); None: not DPoP-bound. ``x5t_s256``: the certificate
    the token is bound to (RFC 8705 ``cnf["x5t#S256"]``; None: not bound; ``""``: a malformed binding, which no
    certificate matches).
    """

    headers: tuple[tuple[str, str], ...] | None = None
    jkt: str | None = None
    x5t_s256: str | None = None


class CacheEntry:
    """What a cache hit needs, and nothing more: no JWT parsing happens on a hit. Never changed once built.

    ``authorization`` is the full header value to send upstream (``Bearer <jwt>``); ``expires_at`` is absolute
    (seconds since the epoch), so an entry copied between caches keeps its deadline. ``headers``, ``jkt`` and
    ``x5t_s256`` (see ``EntryExtras``) live in ``extra``, None for the common entry that has none of them: one
    member instead of three, since every member is 8 bytes in each of up to ``max_entries`` entries (the hot path
    reads ``extra`` once; docs/performance.md, "Memory per cached entry"). The binding is checked on every request,
    hit or miss (``core.dpop``, ``core.rfc8705``).

    A plain class, not a dataclass: compiled (phantom_token/compiled.py) it is a native class with the float
    unboxed, 80 bytes with its GC header (a dataclass with six members took 96, plus a 32-byte float as Python).
    """

    __slots__ = ("authorization", "expires_at", "extra", "scopes")

    def __init__(self, authorization: str, scopes: frozenset[str], expires_at: float,
                 headers: tuple[tuple[str, str], ...] | None = None, jkt: str | None = None,
                 x5t_s256: str | None = None) -> None:
        self.authorization = authorization
        self.scopes = scopes
        self.expires_at = expires_at
        self.extra: EntryExtras | None = (
            None if headers is None and jkt is None and x5t_s256 is None else EntryExtras(headers, jkt, x5t_s256)
        )

    @property
    def headers(self) -> tuple[tuple[str, str], ...] | None:
        extra = self.extra
        return extra.headers if extra is not None else None

    @property
    def jkt(self) -> str | None:
        extra = self.extra
        return extra.jkt if extra is not None else None

    @property
    def x5t_s256(self) -> str | None:
        extra = self.extra
        return extra.x5t_s256 if extra is not None else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CacheEntry):
            return NotImplemented
        return (self.authorization == other.authorization and self.scopes == other.scopes
                and self.expires_at == other.expires_at and self.extra == other.extra)

    def __hash__(self) -> int:
        return hash((self.authorization, self.expires_at))

    def __repr__(self) -> str:  # never the JWT: an entry may end up in a log or an assertion message
        return (f"CacheEntry(authorization=<{len(self.authorization)} chars>, scopes={sorted(self.scopes)!r}, "
                f"expires_at={self.expires_at!r}, extra={self.extra!r})")


@dataclass(frozen=True, slots=True)
class NegativeEntry:
    """The token was inactive when last asked; remembered until ``expires_at`` (``negative_cache_seconds``)."""

    expires_at: float


Cached = CacheEntry | NegativeEntry
"""What a cache holds for a key: an active token's entry, or the memory of an inactive one."""


@dataclass(frozen=True, slots=True)
class Purged:
    """What ``TokenCache.purge`` removed. ``notified``: processes told to drop their copy (None: no shared store)."""

    local: bool
    shared: bool = False
    notified: int | None = None
    complete: bool = True  # False when a shared store is configured but could not be reached


class Active:
    """The token is active. ``jwt`` goes upstream; ``claims`` are its (unverified or verified) claims.

    ``jwt`` is None when the server answered claims, not a JWT (RFC 7662 JSON, RFC 9701): the engine then checks
    those claims and has a ``TokenMinter`` sign the JWT that goes upstream.

    A value, never changed once made (equal by its fields). A plain class, not a frozen dataclass: one is made per
    cache miss, and a dataclass's generated ``__init__`` runs interpreted even in the compiled build.
    """

    __slots__ = ("claims", "directives", "jwt")

    def __init__(self, jwt: str | None, claims: dict[str, object], directives: CacheDirectives | None = None) -> None:
        self.jwt = jwt
        self.claims = claims
        self.directives = directives if directives is not None else CacheDirectives()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Active):
            return NotImplemented
        return self.jwt == other.jwt and self.claims == other.claims and self.directives == other.directives

    def __repr__(self) -> str:
        return f"Active(jwt={self.jwt!r}, claims={self.claims!r}, directives={self.directives!r})"


@dataclass(frozen=True, slots=True)
class Inactive:
    """The authorization server says the token is not active (unknown, expired, revoked)."""


IntrospectionResult = Active | Inactive


class Introspector(Protocol):
    async def introspect(self, token: str, plugin: PluginConfig) -> IntrospectionResult:
        """Ask the authorization server; raise ``IntrospectionUnavailable`` when it gives no usable answer."""
        ...


@dataclass(frozen=True, slots=True)
class Exchanged:
    """A token the authorization server issued in exchange for the client's (RFC 8693 section 2.2.1).

    ``expires_in`` is None when the answer gave none (the introspection's lifetime then bounds the cache alone).
    """

    access_token: str
    issued_token_type: str
    expires_in: float | None = None


class TokenExchanger(Protocol):
    """Exchanges the client's token for one meant for the route's upstream (plugin option ``token_exchange``)."""

    async def exchange(self, token: str, plugin: PluginConfig) -> Exchanged:
        """Ask the token endpoint; raise ``TokenExchangeFailed`` (naming why, never the token) on any other
        answer."""
        ...


class TokenMinter(Protocol):
    """Signs the JWTs the gateway mints (RFC 9068 access tokens); the claim set itself is the engine's rule."""

    @property
    def issuer(self) -> str: ...

    @property
    def max_lifetime_seconds(self) -> int: ...

    def sign(self, claims: dict[str, object]) -> str:
        """A compact JWS of ``claims`` with header ``typ: at+jwt`` and the signing key's ``kid``."""
        ...


class TokenCache(Protocol):
    """Cache of introspection answers keyed by ``cache_key`` (a SHA-256 digest, never the token)."""

    def get_local(self, key: bytes, now: float) -> Cached | None:
        """A live entry from this process's memory, without I/O (the hot path)."""
        ...

    async def get(self, key: bytes, now: float) -> Cached | None:
        """A live entry from any tier (memory, then a shared store)."""
        ...

    async def put(self, key: bytes, entry: Cached) -> None:
        """Keep ``entry`` until its absolute ``expires_at``; negative entries live in their own, smaller bound."""
        ...

    async def purge(self, key: bytes) -> Purged:
        """Remove an entry everywhere (this process, the shared store, every other process's memory)."""
        ...


class ProofReplayGuard(Protocol):
    """Remembers the DPoP proofs (RFC 9449 section 11.1) already used, each until it would be refused anyway.

    ``replay_key`` names one proof (a digest of its key's thumbprint and its ``jti``); ``until`` is absolute. An
    adapter whose shared store is down degrades to this process's memory; it never raises.
    """

    @property
    def local(self) -> bool:
        """True when ``first_use_local`` is the whole answer (no shared store): a cache hit then stays I/O-free."""
        ...

    def first_use_local(self, replay_key: bytes, until: float, now: float) -> bool:
        """True the first time this process sees the proof (and remembers it); False for a replay."""
        ...

    async def first_use(self, replay_key: bytes, until: float, now: float) -> bool:
        """True the first time any process sharing the store sees the proof (one atomic set-if-absent)."""
        ...


Flight = Callable[[], Awaitable[CacheEntry | None]]
"""One resolution of a cache miss: look again, else introspect; the live entry, or None when inactive."""


class IntrospectionCoordinator(Protocol):
    """Makes concurrent misses for one key share one ``Flight``: within a process, or across a cluster.

    Every caller gets the flight's result or runs it itself (e.g. when a cluster peer holding the lock died);
    the flight looks in the cache again first, so a caller that waited finds what the holder stored.
    """

    async def do(self, key: bytes, call: Flight) -> CacheEntry | None: ...


class IssuerKeys(Protocol):
    """The JWKS of a ``jwt_issuers`` item (its ``jwks_uri``, or the one its metadata names), fetched and cached by
    the adapter; raises ``IntrospectionUnavailable`` when there are no keys to verify with. ``plugin`` says how to
    reach it (trust store, timeout)."""

    async def keys(self, issuer: JwtIssuer, plugin: PluginConfig) -> tuple[VerificationKey, ...]: ...

    async def refresh(self, issuer: JwtIssuer, plugin: PluginConfig) -> tuple[VerificationKey, ...] | None:
        """The keys fetched again (a token named an unknown ``kid``); None when the last refetch was under 30 s ago."""
        ...
