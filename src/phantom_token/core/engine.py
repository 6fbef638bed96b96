"""The engine: one request's facts in, one ``Verdict`` out. Every rule of the pattern lives here, once.

Order of checks: route -> plugin present? -> preflight -> token syntax -> cache (L1, then shared) ->
introspection (single-flight per token) -> claim checks (``exp``) -> scopes (on every request, hit or miss).

Invariants: no I/O but through the two ports; the raw token never leaves this module except to the
introspector; the authorization server's faults are 502, never 401 and never 200; errors are never cached.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from phantom_token.cache.single_flight import SingleFlight
from phantom_token.config.settings import PluginConfig, Route
from phantom_token.core import verdict as v
from phantom_token.core.bearer import BearerToken, Problem, extract, fingerprint
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.jwt import numeric_claim
from phantom_token.core.ports import Active, CacheEntry, Introspector, TokenCache
from phantom_token.core.request import RequestInfo
from phantom_token.core.routes import Router
from phantom_token.core.scopes import granted_scopes, missing_scopes
from phantom_token.core.ttl import cache_lifetime
from phantom_token.metrics import Metrics

log = logging.getLogger("phantom_token.engine")

Clock = Callable[[], float]


def cache_key(plugin: PluginConfig, token: str) -> bytes:
    """SHA-256 of the token, namespaced by introspection endpoint and client: never the token itself."""
    return hashlib.sha256(plugin.cache_namespace + token.encode("ascii")).digest()


@dataclass(frozen=True, slots=True)
class _Pending:
    """A request that passed every cheap check and needs an introspection answer."""

    route: Route
    plugin: PluginConfig
    token: str
    key: bytes


class Engine:
    def __init__(
        self,
        router: Router,
        cache: TokenCache,
        introspector: Introspector,
        *,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self._router = router
        self._cache = cache
        self._introspector = introspector
        self._clock = clock
        self._metrics = metrics if metrics is not None else Metrics()
        self._flights: SingleFlight[CacheEntry | None] = SingleFlight()
        self._pass: dict[str, v.Allow] = {}  # one reusable Allow per unauthenticated route

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    def try_authorize(self, request: RequestInfo) -> v.Verdict | None:
        """The verdict when it needs no I/O (a cache hit or a cheap denial); None when introspection is due."""
        step = self._prepare(request)
        if not isinstance(step, _Pending):
            return step
        now = self._clock()
        entry = self._cache.get_local(step.key, now)
        if entry is None:
            return None
        self._metrics.cache_hits += 1
        return self._decide(step.route, step.plugin, entry, now)

    async def authorize(self, request: RequestInfo) -> v.Verdict:
        """The verdict for a request, introspecting the token when no cache has an answer."""
        step = self._prepare(request)
        if not isinstance(step, _Pending):
            return step
        now = self._clock()
        entry = await self._cache.get(step.key, now)
        if entry is not None:
            self._metrics.cache_hits += 1
            return self._decide(step.route, step.plugin, entry, now)
        self._metrics.cache_misses += 1
        try:
            entry = await self._flights.do(step.key, lambda: self._introspect(step))
        except IntrospectionUnavailable:
            return v.server_error(step.route)
        if entry is None:
            return v.unauthorized(step.plugin.realm, token_sent=True, route=step.route)
        return self._decide(step.route, step.plugin, entry, self._clock())

    def _prepare(self, request: RequestInfo) -> v.Verdict | _Pending:
        route = self._router.match(request.method, request.host, request.path, request.headers)
        if route is None:
            return v.not_found()
        plugin = route.plugin
        if plugin is None or (request.method == "OPTIONS" and not plugin.run_on_preflight):
            allow = self._pass.get(route.name)
            if allow is None:
                allow = self._pass[route.name] = v.Allow(route)
            return allow
        token = extract(request.headers.get("authorization"), plugin.max_token_length)
        if isinstance(token, BearerToken):
            return _Pending(route, plugin, token.value, cache_key(plugin, token.value))
        if token is Problem.DUPLICATE:
            return v.malformed_request(plugin.realm, route)
        return v.unauthorized(plugin.realm, token_sent=token is Problem.INVALID, route=route)

    def _decide(self, route: Route, plugin: PluginConfig, entry: CacheEntry, now: float) -> v.Verdict:
        if plugin.scope:
            missing = missing_scopes(plugin.scope, entry.scopes)
            if missing:
                return v.forbidden(plugin.scope, plugin.realm, route)
        return v.Allow(route, entry.authorization, max(entry.expires_at - now, 0.0))

    async def _introspect(self, step: _Pending) -> CacheEntry | None:
        """One introspection call; the live entry it yields (cached when it may be), or None if inactive."""
        started = time.perf_counter()
        self._metrics.introspections += 1
        try:
            result = await self._introspector.introspect(step.token, step.plugin)
        except IntrospectionUnavailable as exc:
            self._metrics.introspection_errors += 1
            log.error("introspection failed: endpoint=%s token=%s reason=%s",
                      step.plugin.introspection_endpoint, fingerprint(step.token), exc)
            raise
        finally:
            self._metrics.observe_introspection(time.perf_counter() - started)
        if not isinstance(result, Active):
            return None
        now = self._clock()
        entry = self._entry_for(result, step.plugin, now)
        if entry is not None and entry.expires_at > now:
            await self._cache.put(step.key, entry)
        return entry

    def _entry_for(self, result: Active, plugin: PluginConfig, now: float) -> CacheEntry | None:
        """The entry for an active answer, or None when its JWT has already expired."""
        expires = numeric_claim(result.claims, "exp")
        if expires is not None and expires <= now:
            return None
        lifetime = cache_lifetime(plugin.token_cache_seconds, result.directives, expires, now)
        return CacheEntry("Bearer " + result.jwt, granted_scopes(result.claims), now + lifetime)
