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

Cache keys: ``core.keys`` (format v3: ``sha256(token) + namespace_tag(namespace)``), shared with the purge.

Several authorization servers or JWT issuers on a route (``_resolve_several``, only on a miss): the hit path is the
same lookup under the route's own namespace; a miss verifies a listed issuer's JWT (``core.jwt_access``) or walks the
servers (``core.servers``), each with its own namespace and single flight.

DPoP (RFC 9449; ``core.dpop``): a token sent with the ``DPoP`` scheme has its proof checked in ``_prepare``, before
the cache or the authorization server is asked (a bad proof costs no introspection). The binding (``cnf.jkt`` of
the answer, kept in the cache entry) is checked on every request, hit or miss: a bound token is accepted only with
the ``DPoP`` scheme and a proof by its key (never as ``Bearer``: no downgrade), an unbound one only as ``Bearer``
and only when the route's ``dpop`` is ``allowed``. Last, the proof's ``jti`` must be new to the
``ProofReplayGuard``: in memory (a hit stays I/O-free) or, with a shared store, in the async path only
(``try_authorize`` then answers None).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

from phantom_token.config.settings import JwtIssuer, PluginConfig, Route
from phantom_token.core import claim_headers, dpop, jwt_access, rfc8705
from phantom_token.core import claims as token_claims
from phantom_token.core import verdict as v
from phantom_token.core.bearer import BearerToken, DPoPToken, Problem, extract, fingerprint
from phantom_token.core.claims import numeric_claim
from phantom_token.core.errors import IntrospectionUnavailable, TokenExchangeFailed
from phantom_token.core.keys import ascii_digest, namespace_tag, tagged_key, token_digest
from phantom_token.core.ports import (
    Active,
    Cached,
    CacheEntry,
    IntrospectionCoordinator,
    IntrospectionResult,
    Introspector,
    IssuerKeys,
    NegativeEntry,
    ProofReplayGuard,
    TokenCache,
    TokenExchanger,
    TokenMinter,
)
from phantom_token.core.replay import MemoryReplayGuard
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

    __slots__ = ("key", "plugin", "proof", "route", "token")

    def __init__(self, route: Route, plugin: PluginConfig, token: str, key: bytes,
                 proof: dpop.Proof | None) -> None:
        self.route = route
        self.plugin = plugin
        self.token = token
        self.key = key
        self.proof = proof  # the checked DPoP proof when the token came with the DPoP scheme; None: Bearer


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
        replay_guard: ProofReplayGuard | None = None,
        nonces: dpop.NonceKeeper | None = None,
    ) -> None:
        self._router = router
        self._issuer_keys = issuer_keys  # the JWKS of `jwt_issuers`
        self._minter = minter
        self._exchanger = exchanger
        self._cache = cache
        # Bound once: the port is a protocol, so compiled code would otherwise look the method up by name per hit.
        self._get_local: Callable[[bytes, float], Cached | None] = cache.get_local
        self._get: Callable[[bytes, float], Awaitable[Cached | None]] = cache.get  # likewise, per miss
        self._put: Callable[[bytes, Cached], Awaitable[None]] = cache.put
        self._introspector = introspector
        self._introspect_call: Callable[[str, PluginConfig], Awaitable[IntrospectionResult]] = introspector.introspect
        self._clock = clock
        self._metrics = metrics if metrics is not None else Metrics()
        self._flights: IntrospectionCoordinator = (
            coordinator if coordinator is not None else SingleFlight[CacheEntry | None]()
        )
        # The in-process coordinator (the default), for ``authorize(uncancelled=True)``; None: another coordinator
        # (the cluster's), which keeps its own way.
        self._single: SingleFlight[CacheEntry | None] | None = (
            self._flights if isinstance(self._flights, SingleFlight) else None
        )
        self._pass: dict[str, v.Allow] = {}  # one reusable Allow per unauthenticated route
        # The cache namespace's ``keys.namespace_tag`` (its 16-byte tag), by plugin identity (plugins are built once).
        self._namespaces: dict[int, tuple[PluginConfig, bytes]] = {}
        # One shared frozenset per distinct set of granted scopes: most tokens carry one of a few scope sets, and
        # a private frozenset (plus its strings) per cache entry would cost about 300 bytes each.
        self._scope_sets: dict[frozenset[str], frozenset[str]] = {}
        self._replay: ProofReplayGuard = replay_guard if replay_guard is not None else MemoryReplayGuard()
        self._replay_local = self._replay.local
        self._nonces = nonces

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    def reconfigure(self, router: Router, introspector: Introspector, issuer_keys: IssuerKeys | None = None,
                    exchanger: TokenExchanger | None = None) -> None:
        """A configuration reload: new requests are routed by ``router`` and introspected by ``introspector``;
        those already past routing finish with the route they matched. The cache (entries are keyed by the
        plugin's cache namespace), the coordinator, the metrics and the minter stay; ``issuer_keys`` (the JWKS of
        ``jwt_issuers``) and ``exchanger`` are replaced when given."""
        self._router = router
        self._introspector = introspector
        self._introspect_call = introspector.introspect
        if issuer_keys is not None:
            self._issuer_keys = issuer_keys
        if exchanger is not None:
            self._exchanger = exchanger
        self._pass = {}
        self._namespaces = {}

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
        memo = request.memo
        if memo is None:
            return self._decide(step, entry, now, request)
        allow: v.Allow | None = memo.allow
        if allow is not None and memo.allowed is entry and allow.route is step.route and isinstance(entry, CacheEntry):
            # The connection's last hit again: the very cache entry (so the same token and plugin) on the same route,
            # so the same verdict but for the seconds left (see ``TokenMemo.allow``). (The isinstance test narrows
            # the type: compiled code then reads and subtracts native floats, not objects.)
            expires_in = entry.expires_at - now
            allow.expires_in = expires_in if expires_in > 0.0 else 0.0
            return allow
        verdict = self._decide(step, entry, now, request)
        if isinstance(verdict, v.Allow) and isinstance(entry, CacheEntry) and entry.extra is None \
                and step.proof is None:
            # ``_decide``'s plain path: a function of the route (and its plugin) and the entry only
            memo.allow, memo.allowed = verdict, entry
        return verdict

    async def authorize(self, request: RequestInfo, *, uncancelled: bool = False) -> v.Verdict:
        """The verdict for a request, introspecting the token when no cache has an answer.

        ``uncancelled``: the caller's task is never cancelled while this runs (the proxy's, which lets the verdict
        of a request whose client left finish and drops it). A miss then runs its introspection in that task
        (``SingleFlight.run_here``) instead of a task of its own: one task per miss, not two. Other callers for the
        same token still wait apart, and may be cancelled, so none can cancel the call they share."""
        step = self._prepare(request)
        if not isinstance(step, _Pending):
            return step
        now = self._clock()
        cached = await self._get(step.key, now)
        if cached is not None:
            self._metrics.cache_hits += 1
            if step.proof is not None:
                return await self._decide_proven(step, cached, now, request)
            return self._decided(step, cached, now, request)
        self._metrics.cache_misses += 1
        try:
            if step.plugin.authorization_servers:  # several servers, or JWT issuers: _resolve_several
                entry = await self._resolve_several(step)
            elif uncancelled and self._single is not None:
                entry = await self._single.run_here(step.key, lambda: self._resolve(step))
            else:
                entry = await self._flights.do(step.key, lambda: self._resolve(step))
        except IntrospectionUnavailable:
            return v.server_error(step.route)
        if entry is None:
            return self._unauthorized(step.plugin, step.route, token_sent=True, dpop_scheme=step.proof is not None)
        if step.proof is not None:
            return await self._decide_proven(step, entry, self._clock(), request)
        return self._decided(step, entry, self._clock(), request)

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
                and values[0] == memo.value:  # the connection's token again: checked, hashed
            pending: _Pending | None = memo.pending  # the step made for it before (never changed once made)
            if pending is None or pending.route is not route or pending.key is not memo.key:
                pending = memo.pending = _Pending(route, plugin, memo.token, memo.key, None)
            return pending
        token = extract(values, plugin.max_token_length)
        if isinstance(token, BearerToken):
            if plugin.dpop == "required":
                return self._unauthorized(plugin, route, token_sent=True, dpop_scheme=True)
            # the connection's plugin: its namespace's tag from the memo, without the look-up by id
            tag = memo.tag if memo is not None and memo.plugin is plugin else self._namespace(plugin)
            key = tagged_key(tag, ascii_digest(token.data))
            step = _Pending(route, plugin, token.value, key, None)
            if memo is not None and values is not None:
                memo.plugin, memo.value, memo.token, memo.key, memo.tag = plugin, values[0], token.value, key, tag
                memo.pending = step
            return step
        if isinstance(token, DPoPToken):
            return self._prepare_dpop(request, route, plugin, token.value)
        if token is Problem.DUPLICATE:
            return v.malformed_request(plugin.realm, route)
        return self._unauthorized(plugin, route, token_sent=token is not Problem.MISSING,
                                  dpop_scheme=token is Problem.INVALID_DPOP)

    def _unauthorized(self, plugin: PluginConfig, route: Route, *, token_sent: bool, dpop_scheme: bool) -> v.Deny:
        """401 for a missing or unusable token: the ``Bearer`` challenge, the ``DPoP`` one, or both (RFC 9449
        section 7.1: a missing token where both schemes are accepted)."""
        required = plugin.dpop == "required"
        if not required and not dpop_scheme and token_sent:
            return v.unauthorized(plugin.realm, token_sent=True, route=route)
        return v.unauthorized_dpop(plugin.realm, plugin.dpop_signing_alg_values, token_sent=token_sent,
                                   bearer=not required and not token_sent, route=route)

    def _prepare_dpop(self, request: RequestInfo, route: Route, plugin: PluginConfig, token: str) -> v.Deny | _Pending:
        """A token sent with the DPoP scheme: its proof checked (``core.dpop``) before anything is asked."""
        nonces = None
        if plugin.dpop_nonce:
            nonces = self._nonces
            if nonces is None:  # the configuration requires the secret; an engine built in code may lack it
                log.error("dpop_nonce is on but no nonce secret is configured (phantom_token.dpop_nonce_secret)")
                return v.server_error(route)
        now = self._clock()
        url = dpop.request_url(request.origin, request.path) if request.origin else None
        proof = dpop.check_proof(
            request.headers.get("dpop"), method=request.method, url=url, token=token,
            algorithms=plugin.dpop_signing_alg_values, now=now, lifetime=plugin.dpop_proof_lifetime_seconds,
            skew=plugin.clock_skew_seconds, nonces=nonces,
        )
        if isinstance(proof, dpop.Refusal):
            log.info("dpop proof refused: route=%s token=%s reason=%s", route.name, fingerprint(token), proof.reason)
            return v.invalid_dpop_proof(plugin.realm, plugin.dpop_signing_alg_values, route, nonce=proof.nonce)
        return _Pending(route, plugin, token, tagged_key(self._namespace(plugin), token_digest(token)), proof)

    def _bound(self, step: _Pending, entry: CacheEntry) -> v.Deny | None:
        """The binding rules (see the module docstring): a denial, or None when scheme, binding and proof agree.
        The replay check is the caller's."""
        plugin, proof = step.plugin, step.proof
        if proof is None:  # a DPoP-bound token sent as Bearer: no downgrade (RFC 9449 section 7.2)
            log.info("dpop-bound token sent as Bearer: route=%s token=%s", step.route.name, fingerprint(step.token))
            return self._unauthorized(plugin, step.route, token_sent=True, dpop_scheme=True)
        if entry.jkt is None:
            log.info("unbound token sent with the DPoP scheme: route=%s token=%s", step.route.name,
                     fingerprint(step.token))
            return self._unauthorized(plugin, step.route, token_sent=True, dpop_scheme=True)
        if proof.jkt != entry.jkt:
            log.info("dpop proof refused: route=%s token=%s reason=signed by another key than the token's",
                     step.route.name, fingerprint(step.token))
            return v.invalid_dpop_proof(plugin.realm, plugin.dpop_signing_alg_values, step.route)
        return None

    def _replayed(self, step: _Pending) -> v.Deny:
        log.info("dpop proof refused: route=%s token=%s reason=replayed (jti already used)", step.route.name,
                 fingerprint(step.token))
        return v.invalid_dpop_proof(step.plugin.realm, step.plugin.dpop_signing_alg_values, step.route)

    def _certificate_refusal(self, step: _Pending, entry: CacheEntry, request: RequestInfo) -> v.Deny | None:
        """401 when the token is bound to a client certificate (RFC 8705) the request does not present."""
        plugin = step.plugin
        refused = rfc8705.refusal(entry.x5t_s256, request, plugin) if entry.x5t_s256 is not None else None
        if refused is None:
            return None
        log.info("token refused: endpoint=%s token=%s reason=%s", plugin.endpoint_label, fingerprint(step.token),
                 refused)
        return self._unauthorized(plugin, step.route, token_sent=True, dpop_scheme=step.proof is not None)

    async def _decide_proven(self, step: _Pending, entry: Cached, now: float, request: RequestInfo) -> v.Verdict:
        """``_decide`` for a request with a checked proof, on the async path: the replay guard may do I/O."""
        if isinstance(entry, NegativeEntry):
            return self._decided(step, entry, now, request)
        if entry.x5t_s256 is not None:
            refused = self._certificate_refusal(step, entry, request)
            if refused is not None:
                return refused
        denied = self._bound(step, entry)
        if denied is not None:
            return denied
        proof = step.proof
        assert proof is not None
        if not await self._replay.first_use(proof.replay_key, proof.until, now):
            return self._replayed(step)
        return self._grant(step, entry, now)

    def _decided(self, step: _Pending, entry: Cached, now: float, request: RequestInfo) -> v.Verdict:
        """``_decide`` where it cannot be None: a request without a proof (or a negative entry)."""
        verdict = self._decide(step, entry, now, request)
        return verdict if verdict is not None else v.server_error(step.route)

    def _decide(self, step: _Pending, entry: Cached, now: float, request: RequestInfo) -> v.Verdict | None:
        """The verdict for a request and the entry its token has; None (only for a request with a proof, when the
        replay guard has a shared store) when the replay check needs I/O: ``authorize`` then does it."""
        route, plugin = step.route, step.plugin
        if isinstance(entry, NegativeEntry):
            return self._unauthorized(plugin, route, token_sent=True, dpop_scheme=step.proof is not None)
        if entry.extra is not None or step.proof is not None:  # bound, proven, or with claims_to_headers
            return self._decide_further(step, entry, now, request)
        if plugin.scope and not entry.scopes.issuperset(plugin.scope):
            return v.forbidden(plugin.scope, plugin.realm, route)
        expires_in = entry.expires_at - now  # not max(): a builtin call costs more than the test, at every hit
        return v.Allow(route, entry.authorization, expires_in if expires_in > 0.0 else 0.0, None, None)

    def _decide_further(self, step: _Pending, entry: CacheEntry, now: float,
                        request: RequestInfo) -> v.Verdict | None:
        """``_decide`` for an entry with ``extra`` (a binding, claim headers) or a request with a proof."""
        route, plugin = step.route, step.plugin
        if entry.x5t_s256 is not None:
            refused = self._certificate_refusal(step, entry, request)
            if refused is not None:
                return refused
        if entry.jkt is not None or step.proof is not None:
            denied = self._bound(step, entry)
            if denied is not None:
                return denied
            proof = step.proof
            assert proof is not None
            if not self._replay_local:
                return None  # the replay check asks the shared store: the async path
            if not self._replay.first_use_local(proof.replay_key, proof.until, now):
                return self._replayed(step)
            return self._grant(step, entry, now)
        if plugin.scope and not entry.scopes.issuperset(plugin.scope):
            return v.forbidden(plugin.scope, plugin.realm, route)
        expires_in = entry.expires_at - now
        return v.Allow(route, entry.authorization, expires_in if expires_in > 0.0 else 0.0, None, entry.headers)

    def _grant(self, step: _Pending, entry: CacheEntry, now: float) -> v.Verdict:
        """The scope check and the Allow of a request with a checked proof. The decision is valid for this request
        only (``expires_in`` 0): a gateway that caches decisions (nginx's decision cache) must not replay it."""
        plugin = step.plugin
        if plugin.scope and not entry.scopes.issuperset(plugin.scope):
            return v.forbidden(plugin.scope, plugin.realm, step.route)
        return v.Allow(step.route, entry.authorization, 0.0, None, entry.headers)

    async def _resolve(self, step: _Pending) -> CacheEntry | None:
        """A miss, once per key: look again (a peer may have answered while we waited), else introspect."""
        cached = await self._get(step.key, self._clock())
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
            result = await self._introspect_call(step.token, step.plugin)
        except IntrospectionUnavailable as exc:
            self._metrics.introspection_failed(exc.kind)
            log.error("introspection failed: endpoint=%s token=%s reason=%s",
                      step.plugin.endpoint_label, fingerprint(step.token), exc)
            raise
        finally:
            self._metrics.observe_introspection(time.perf_counter() - started)
        if not isinstance(result, Active):
            if step.plugin.negative_cache_seconds > 0:
                await self._put(step.key, NegativeEntry(self._clock() + step.plugin.negative_cache_seconds))
            return None
        now = self._clock()
        refused = token_claims.refusal(result.claims, step.plugin, now)
        if refused is not None:
            log.info("token refused: endpoint=%s token=%s reason=%s",
                     step.plugin.endpoint_label, fingerprint(step.token), refused)
            return None
        entry = self._entry_for(result, step.plugin, now)
        if entry.jkt is None and result.claims.get("token_type") == "DPoP":  # RFC 9449 6.2, without its cnf.jkt
            log.info("token refused: endpoint=%s token=%s reason=token_type DPoP without cnf.jkt",
                     step.plugin.endpoint_label, fingerprint(step.token))
            return None
        if step.plugin.claims_to_headers:
            entry = self._with_claim_headers(step, entry, result.claims)
        if step.plugin.token_exchange is not None:
            entry = await self._exchange(step, entry, now)
        if entry.expires_at > now:
            await self._put(step.key, entry)
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
            server_step = _Pending(step.route, server, step.token, tagged_key(self._namespace(server), digest),
                                   step.proof)
            try:
                entry = await self._flights.do(server_step.key, partial(self._resolve, server_step))
            except IntrospectionUnavailable as exc:
                failure = exc
                continue
            if entry is not None:
                if entry.expires_at > self._clock():
                    await self._put(step.key, entry)
                return entry
        if failure is not None:
            raise failure
        return None

    def _namespace(self, plugin: PluginConfig) -> bytes:
        """The plugin's ``keys.namespace_tag`` (its namespace's tag), derived once per plugin."""
        known = self._namespaces.get(id(plugin))
        if known is None or known[0] is not plugin:
            known = self._namespaces[id(plugin)] = (plugin, namespace_tag(plugin.cache_namespace))
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
                           jkt=token_claims.cnf_member(result, "jkt"), x5t_s256=rfc8705.bound_thumbprint(result))
        if step.plugin.claims_to_headers:  # from the verified claims (token_exchange is refused with jwt_issuers)
            entry = self._with_claim_headers(step, entry, result)
        if entry.expires_at > now:
            await self._put(step.key, entry)
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
                          jkt=token_claims.cnf_member(result.claims, "jkt"),
                          x5t_s256=rfc8705.bound_thumbprint(result.claims))

    def _with_claim_headers(self, step: _Pending, entry: CacheEntry, claims: dict[str, object]) -> CacheEntry:
        """``entry`` with the ``claims_to_headers`` values of the introspected claims (one log line for those that
        cannot be sent: it names the headers, never a value)."""
        headers, problems = claim_headers.header_values(claims, step.plugin.claims_to_headers)
        if problems:
            log.warning("claims_to_headers: route=%s token=%s %s", step.route.name, fingerprint(step.token),
                        "; ".join(problems))
        return CacheEntry(entry.authorization, entry.scopes, entry.expires_at, headers, entry.jkt, entry.x5t_s256)

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
        return CacheEntry("Bearer " + issued.access_token, entry.scopes, expires_at, entry.headers, entry.jkt,
                          entry.x5t_s256)

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
