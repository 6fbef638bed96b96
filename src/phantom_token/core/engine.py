"""The engine: one request's facts in, one ``Verdict`` out. Every rule of the pattern lives here, once.

Order of checks: route -> plugin present? -> preflight -> token syntax -> cache (L1, then shared; a negative
entry is a 401) -> introspection (single-flight per token, through the coordinator; the flight looks in the cache
again first) -> claim checks (``exp``, ``nbf``, ``audience``, ``issuer_allowed``: ``core.claims``, once per answer)
-> minting (``json``/``signed`` modes: the JWT that goes upstream is signed here, once per answer, and cached) ->
``claims_to_headers`` (the header values rendered once per answer, ``core.claim_headers``, kept in the entry; on a
route that sets it every ``Allow`` carries a tuple, maybe empty, and on any other None) ->
``token_exchange`` (RFC 8693, through the ``TokenExchanger`` port: the issued token replaces what goes upstream,
inside the same flight, so concurrent misses share one exchange; the entry lives for the shorter of the two
lifetimes; a failed exchange is a 502 and nothing is cached) ->
certificate binding (RFC 8705, only for a token whose answer had ``cnf["x5t#S256"]``: ``core.rfc8705``, on every
request, hit or miss) -> scopes (on every request, hit or miss).

Invariants: no I/O but through the ports; the raw token never leaves this module except to the introspector;
the authorization server's faults are 502, never 401 and never 200; errors are never cached; an inactive
answer is remembered for ``negative_cache_seconds`` only (0: not at all).

Cache keys: ``core.keys`` (``sha256(namespace + sha256(token))``), shared with the cache's purge.

Several authorization servers or JWT issuers on a route (``_resolve_several``, only on a miss): the hit path is the
same lookup under the route's own namespace; a miss verifies a listed issuer's JWT (``core.jwt_access``) or walks the
servers (``core.servers``), each with its own namespace and single flight.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import Final

from phantom_token.config.settings import JwtIssuer, PluginConfig, Route
from phantom_token.core import claim_headers, jwt_access, rfc8705
from phantom_token.core import claims as token_claims
from phantom_token.core import verdict as v
from phantom_token.core.bearer import BearerToken, Problem, extract, fingerprint
from phantom_token.core.claims import numeric_claim
from phantom_token.core.errors import IntrospectionUnavailable, TokenExchangeFailed
from phantom_token.core.keys import namespaced_key, token_digest
from phantom_token.core.ports import (
    Active,
    Cached,
    CacheEntry,
    IntrospectionCoordinator,
    Introspector,
    IssuerKeys,
    NegativeEntry,
    TokenCache,
    TokenExchanger,
    TokenMinter,
)
from phantom_token.core.request import RequestInfo
from phantom_token.core.routes import Router
from phantom_token.core.scopes import granted_scopes
from phantom_token.core.servers import candidates
from phantom_token.core.single_flight import SingleFlight
from phantom_token.core.ttl import CacheDirectives, cache_lifetime
from phantom_token.memo import remember
from phantom_token.metrics import Metrics

log: Final = logging.getLogger("phantom_token.engine")

Clock = Callable[[], float]


class _Pending:
    """A request that passed every cheap check and needs an introspection answer. (A plain class: one is made
    per request, and a dataclass's generated ``__init__`` runs interpreted even in the compiled build.)"""

    __slots__ = ("key", "plugin", "route", "token")

    def __init__(self, route: Route, plugin: PluginConfig, token: str, key: bytes) -> None:
        self.route = route
        self.plugin = plugin
        self.token = token
        self.key = key


_MAX_SCOPE_SETS: Final = 4096


class Engine:
    def __init__(
        self,
        router: Router,
        cache: TokenCache,
        introspector: Introspector,
        *,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
        coordinator: IntrospectionCoordinator | None = None,
        minter: TokenMinter | None = None,
        issuer_keys: IssuerKeys | None = None,
        exchanger: TokenExchanger | None = None,
    ) -> None:
        self._router = router
        self._issuer_keys = issuer_keys  # the JWKS of `jwt_issuers`
        self._minter = minter
        self._exchanger = exchanger
        self._cache = cache
        # Bound once: the port is a protocol, so compiled code would otherwise look the method up by name per hit.
        self._get_local: Callable[[bytes, float], Cached | None] = cache.get_local
        self._introspector = introspector
        self._clock = clock
        self._metrics = metrics if metrics is not None else Metrics()
        self._flights: IntrospectionCoordinator = (
            coordinator if coordinator is not None else SingleFlight[CacheEntry | None]()
        )
        self._pass: dict[str, v.Allow] = {}  # one reusable Allow per unauthenticated route
        # Cache namespaces by plugin identity (plugins are built once; the property re-encodes on every call).
        self._namespaces: dict[int, tuple[PluginConfig, bytes]] = {}
        # One shared frozenset per distinct set of granted scopes: most tokens carry one of a few scope sets, and
        # a private frozenset (plus its strings) per cache entry would cost about 300 bytes each.
        self._scope_sets: dict[frozenset[str], frozenset[str]] = {}

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    def try_authorize(self, request: RequestInfo) -> v.Verdict | None:
        """The verdict when it needs no I/O (a cache hit or a cheap denial); None when introspection is due."""
        step = self._prepare(request)
        if not isinstance(step, _Pending):
            return step
        now = self._clock()
        entry = self._get_local(step.key, now)
        if entry is None:
            return None
        self._metrics.cache_hits += 1
        return self._decide(step, entry, now, request)

    async def authorize(self, request: RequestInfo) -> v.Verdict:
        """The verdict for a request, introspecting the token when no cache has an answer."""
        step = self._prepare(request)
        if not isinstance(step, _Pending):
            return step
        now = self._clock()
        cached = await self._cache.get(step.key, now)
        if cached is not None:
            self._metrics.cache_hits += 1
            return self._decide(step, cached, now, request)
        self._metrics.cache_misses += 1
        try:
            if step.plugin.authorization_servers:  # several servers, or JWT issuers: _resolve_several
                entry = await self._resolve_several(step)
            else:
                entry = await self._flights.do(step.key, lambda: self._resolve(step))
        except IntrospectionUnavailable:
            return v.server_error(step.route)
        if entry is None:
            return v.unauthorized(step.plugin.realm, token_sent=True, route=step.route)
        return self._decide(step, entry, self._clock(), request)

    def _prepare(self, request: RequestInfo) -> v.Verdict | _Pending:
        route = self._router.match(request.method, request.host, request.path, request.headers)
        if route is None:
            return v.not_found()
        plugin = route.plugin
        if plugin is None or (request.method == "OPTIONS" and not plugin.run_on_preflight):
            allow = self._pass.get(route.name)
            if allow is None:  # a preflight on a route with claims_to_headers still has the client's copies removed
                shaped = () if plugin is not None and plugin.claims_to_headers else None
                allow = self._pass[route.name] = v.Allow(route, None, 0.0, None, shaped)
            return allow
        values = request.headers.get("authorization")
        memo = request.memo
        if memo is not None and memo.plugin is plugin and values is not None and len(values) == 1 \
                and values[0] == memo.value:
            return _Pending(route, plugin, memo.token, memo.key)  # the connection's token again: checked, hashed
        token = extract(values, plugin.max_token_length)
        if isinstance(token, BearerToken):
            known = self._namespaces.get(id(plugin))
            if known is None or known[0] is not plugin:
                known = self._namespaces[id(plugin)] = (plugin, plugin.cache_namespace)
            key = namespaced_key(known[1], token_digest(token.value))
            if memo is not None and values is not None:
                memo.plugin, memo.value, memo.token, memo.key = plugin, values[0], token.value, key
            return _Pending(route, plugin, token.value, key)
        if token is Problem.DUPLICATE:
            return v.malformed_request(plugin.realm, route)
        return v.unauthorized(plugin.realm, token_sent=token is Problem.INVALID, route=route)

    def _decide(self, step: _Pending, entry: Cached, now: float, request: RequestInfo) -> v.Verdict:
        route, plugin = step.route, step.plugin
        if isinstance(entry, NegativeEntry):
            return v.unauthorized(plugin.realm, token_sent=True, route=route)
        if entry.x5t_s256 is not None:
            refused = rfc8705.refusal(entry.x5t_s256, request, plugin)
            if refused is not None:
                log.info("token refused: endpoint=%s token=%s reason=%s",
                         plugin.endpoint_label, fingerprint(step.token), refused)
                return v.unauthorized(plugin.realm, token_sent=True, route=route)
        if plugin.scope and not entry.scopes.issuperset(plugin.scope):
            return v.forbidden(plugin.scope, plugin.realm, route)
        expires_in = entry.expires_at - now  # not max(): a builtin call costs more than the test, at every hit
        return v.Allow(route, entry.authorization, expires_in if expires_in > 0.0 else 0.0, None, entry.headers)

    async def _resolve(self, step: _Pending) -> CacheEntry | None:
        """A miss, once per key: look again (a peer may have answered while we waited), else introspect."""
        cached = await self._cache.get(step.key, self._clock())
        if isinstance(cached, CacheEntry):
            return cached
        if isinstance(cached, NegativeEntry):
            return None
        return await self._introspect(step)

    async def _introspect(self, step: _Pending) -> CacheEntry | None:
        """One introspection call; the live entry it yields (cached when it may be), or None if inactive."""
        started = time.perf_counter()
        self._metrics.introspections += 1
        try:
            result = await self._introspector.introspect(step.token, step.plugin)
        except IntrospectionUnavailable as exc:
            self._metrics.introspection_errors += 1
            log.error("introspection failed: endpoint=%s token=%s reason=%s",
                      step.plugin.endpoint_label, fingerprint(step.token), exc)
            raise
        finally:
            self._metrics.observe_introspection(time.perf_counter() - started)
        if not isinstance(result, Active):
            if step.plugin.negative_cache_seconds > 0:
                await self._cache.put(step.key, NegativeEntry(self._clock() + step.plugin.negative_cache_seconds))
            return None
        now = self._clock()
        refused = token_claims.refusal(result.claims, step.plugin, now)
        if refused is not None:
            log.info("token refused: endpoint=%s token=%s reason=%s",
                     step.plugin.endpoint_label, fingerprint(step.token), refused)
            return None
        entry = self._entry_for(result, step.plugin, now)
        if step.plugin.claims_to_headers:
            entry = self._with_claim_headers(step, entry, result.claims)
        if step.plugin.token_exchange is not None:
            entry = await self._exchange(step, entry, now)
        if entry.expires_at > now:
            await self._cache.put(step.key, entry)
        return entry

    # --- several authorization servers, JWT issuers (docs/authorization-servers/several.md) -------------------

    async def _resolve_several(self, step: _Pending) -> CacheEntry | None:
        """A miss on a route with ``authorization_servers``/``jwt_issuers``; ``step.key`` is the route's outcome key.

        A JWT of a listed issuer is verified here and never introspected. Any other token is asked of its servers
        (``core.servers.candidates``) in order, each through its own cache namespace and single flight, until one
        says active. A server that fails is passed over, but if no later server says active the answer is a 502,
        never a 401: the token may be that server's. The outcome is cached under ``step.key`` too, so the next
        request is one lookup, as on a route with one server; an inactive outcome only per server (no call is
        made again while those last).
        """
        plugin = step.plugin
        if plugin.jwt_issuers:
            issuer = jwt_access.listed_issuer(step.token, plugin.jwt_issuers)
            if issuer is not None:
                return await self._verified_jwt(step, issuer)
        digest = token_digest(step.token)
        failure: IntrospectionUnavailable | None = None
        for server in candidates(plugin.authorization_servers, step.token):
            server_step = _Pending(step.route, server, step.token, namespaced_key(self._namespace(server), digest))
            try:
                entry = await self._flights.do(server_step.key, partial(self._resolve, server_step))
            except IntrospectionUnavailable as exc:
                failure = exc
                continue
            if entry is not None:
                if entry.expires_at > self._clock():
                    await self._cache.put(step.key, entry)
                return entry
        if failure is not None:
            raise failure
        return None

    def _namespace(self, plugin: PluginConfig) -> bytes:
        known = self._namespaces.get(id(plugin))
        if known is None or known[0] is not plugin:
            known = self._namespaces[id(plugin)] = (plugin, plugin.cache_namespace)
        return known[1]

    async def _verified_jwt(self, step: _Pending, issuer: JwtIssuer) -> CacheEntry | None:
        """A JWT of a listed issuer: verified with its JWKS, forwarded as it is (None: refused, a 401)."""
        if self._issuer_keys is None:
            raise IntrospectionUnavailable("jwt_issuers is configured but the engine has no IssuerKeys port")
        result = await jwt_access.verify(step.token, issuer, step.plugin, self._issuer_keys, self._clock())
        if isinstance(result, str):
            log.info("JWT refused: issuer=%s token=%s reason=%s", issuer.issuer, fingerprint(step.token), result)
            return None
        now = self._clock()
        lifetime = cache_lifetime(step.plugin.token_cache_seconds, CacheDirectives(), numeric_claim(result, "exp"), now)
        entry = CacheEntry("Bearer " + step.token, self._shared_scopes(granted_scopes(result)), now + lifetime,
                           x5t_s256=rfc8705.bound_thumbprint(result))
        if step.plugin.claims_to_headers:  # from the verified claims (token_exchange is refused with jwt_issuers)
            entry = self._with_claim_headers(step, entry, result)
        if entry.expires_at > now:
            await self._cache.put(step.key, entry)
        return entry

    def _entry_for(self, result: Active, plugin: PluginConfig, now: float) -> CacheEntry:
        """The entry for an active answer whose claims passed the checks (minting its JWT when the AS sent none)."""
        jwt, claims = result.jwt, result.claims
        if jwt is None:
            if plugin.token_exchange is not None:
                jwt = ""  # nothing to mint: the exchanged token replaces it (``_exchange``)
            else:
                jwt, claims = self._mint(claims, plugin, now)
        expires = numeric_claim(claims, "exp")
        directives = result.directives if plugin.honor_cache_control else CacheDirectives()
        lifetime = cache_lifetime(plugin.token_cache_seconds, directives, expires, now)
        return CacheEntry("Bearer " + jwt, self._shared_scopes(granted_scopes(claims)), now + lifetime,
                          x5t_s256=rfc8705.bound_thumbprint(result.claims))

    def _with_claim_headers(self, step: _Pending, entry: CacheEntry, claims: dict[str, object]) -> CacheEntry:
        """``entry`` with the ``claims_to_headers`` values of the introspected claims (one log line for those that
        cannot be sent: it names the headers, never a value)."""
        headers, problems = claim_headers.header_values(claims, step.plugin.claims_to_headers)
        if problems:
            log.warning("claims_to_headers: route=%s token=%s %s", step.route.name, fingerprint(step.token),
                        "; ".join(problems))
        return CacheEntry(entry.authorization, entry.scopes, entry.expires_at, headers, entry.x5t_s256)

    async def _exchange(self, step: _Pending, entry: CacheEntry, now: float) -> CacheEntry:
        """``entry`` with the token the authorization server issued for this route (RFC 8693) in place of the one
        introspection gave, living no longer than either; ``TokenExchangeFailed`` (a 502) after one log line."""
        try:
            if self._exchanger is None:
                raise TokenExchangeFailed("token_exchange is configured but the gateway has no token exchanger")
            issued = await self._exchanger.exchange(step.token, step.plugin)
        except IntrospectionUnavailable as exc:
            log.error("token exchange failed: route=%s token=%s reason=%s", step.route.name,
                      fingerprint(step.token), exc)
            raise
        expires_at = entry.expires_at
        if issued.expires_in is not None:
            expires_at = min(expires_at, now + issued.expires_in)
        # the binding stays: it is the client's token (and certificate) the gateway checks, whatever goes upstream
        return CacheEntry("Bearer " + issued.access_token, entry.scopes, expires_at, entry.headers, entry.x5t_s256)

    def _shared_scopes(self, scopes: frozenset[str]) -> frozenset[str]:
        shared = self._scope_sets.get(scopes)
        if shared is None:  # many distinct sets: sharing stops paying; start over, stay bounded
            shared = remember(self._scope_sets, scopes, scopes, _MAX_SCOPE_SETS)
        return shared

    def _mint(self, introspected: dict[str, object], plugin: PluginConfig, now: float) -> tuple[str, dict[str, object]]:
        """The RFC 9068 JWT (and its claims) the gateway sends upstream for an answer that carried no JWT."""
        if self._minter is None:
            raise IntrospectionUnavailable("the answer carries no JWT and no JWT signer is configured")
        claims = token_claims.access_token_claims(
            introspected, issuer=self._minter.issuer, audience=plugin.audience, now=now,
            max_lifetime_seconds=self._minter.max_lifetime_seconds, jti=secrets.token_urlsafe(18),
        )
        return self._minter.sign(claims), claims
