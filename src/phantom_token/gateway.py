"""The gateway: the engine and the adapters it runs on, built from one ``Settings``, with their lifespan.

Every front door runs on a ``Gateway``: ``phantom-token serve`` (the proxy) and ``phantom-token authz`` (the
decision service) through ``phantom_token.process``, and the ASGI middleware (``frontends.middleware``) inside the
application's own server. Listeners, signals and processes are not its business (``phantom_token.process``).

Invariants:
- Building does no I/O when given the ``Material`` loaded with the configuration (``config.loader``): the keys and
  SSL contexts are taken from it, nothing is connected or fetched yet. Without it (settings built in code), the
  material is loaded here, once, by ``load_material`` (a ``ConfigError`` names any unusable file).
- ``open()`` runs once before the first request that needs I/O (the cache's shared store, introspection discovery;
  discovery failing raises, so a process refuses to start); ``close()`` once after the last request (the HTTP
  client, then the cache). Open order: cache, introspection; close order: HTTP client, cache.
- One of each per gateway: one HTTP client, one cache (with its coordinator), one introspector, at most one minter
  (only when a route mints JWTs or a key is configured), one DPoP replay guard (on the cache's Redis when it has
  one), one router, one engine, one ``Metrics``.
- ``reload()`` (SIGHUP, ``phantom_token.reload``) swaps the router and the introspector of the same engine; the
  cache, coordinator, HTTP client, minter and metrics stay, so cached entries and counters survive a reload.
"""

from __future__ import annotations

import logging
import secrets

from phantom_token import tracing
from phantom_token.cache.cluster_flight import ClusterSingleFlight
from phantom_token.cache.redis import RedisCache
from phantom_token.cache.replay import RedisReplayGuard
from phantom_token.cache.stack import build_cache
from phantom_token.config.material import Material, load_material
from phantom_token.config.settings import Settings, introspection_servers
from phantom_token.core.dpop import NonceKeeper
from phantom_token.core.engine import Engine
from phantom_token.core.ports import CacheEntry, ProofReplayGuard
from phantom_token.core.replay import MemoryReplayGuard
from phantom_token.core.routes import Router
from phantom_token.core.single_flight import SingleFlight
from phantom_token.http.client import HttpClient
from phantom_token.introspection.client import HttpIntrospector
from phantom_token.introspection.exchange import HttpTokenExchanger
from phantom_token.introspection.issuer_keys import HttpIssuerKeys
from phantom_token.metrics import Metrics, Samples
from phantom_token.minting import build_minter

log = logging.getLogger("phantom_token")


class Gateway:
    """The engine and its adapters for one ``Settings``: what ``serve``, ``authz`` and the ASGI middleware share."""

    def __init__(self, settings: Settings, material: Material | None = None) -> None:
        self.settings = settings
        self._traced = False
        self.material = material if material is not None else load_material(settings)
        self.metrics = Metrics()
        self.client = HttpClient()
        self.caches = build_cache(settings)
        self.cache = self.caches.cache
        self.introspector = HttpIntrospector(self.client, material=self.material)
        self.minter = build_minter(settings, self.material)  # None unless a route mints JWTs or a key is configured
        self.router = Router(settings.routes)
        self.flights = SingleFlight[CacheEntry | None]()  # the in-process single-flight, when Redis has none
        # DPoP proofs already used: on the cache's Redis when there is one (every replica refuses a replay)
        link = self.caches.link
        self.replay_guard: ProofReplayGuard = RedisReplayGuard(link) if link is not None else MemoryReplayGuard()
        nonces = None
        if any(route.plugin is not None and route.plugin.dpop_nonce for route in settings.routes):
            secret = settings.dpop_nonce_secret
            if secret is None:  # one process (the configuration requires the secret for several)
                log.warning("phantom_token.dpop_nonce_secret is not set: DPoP nonces are keyed by a secret generated "
                            "now, which no other process shares")
                secret = secrets.token_urlsafe(32)
            nonces = NonceKeeper(secret)
        self.engine = Engine(self.router, self.cache, self.introspector, metrics=self.metrics,
                             coordinator=self.caches.coordinator or self.flights, minter=self.minter,
                             issuer_keys=HttpIssuerKeys(self.introspector.fetch),
                             exchanger=HttpTokenExchanger(self.introspector),
                             replay_guard=self.replay_guard, nonces=nonces)
        self.metrics.collectors.append(self._collect)

    async def open(self) -> None:
        """Open what the engine needs before the first request (the cache's shared store, introspection
        discovery). The runners call it before they listen; the ASGI middleware from its lifespan."""
        # On only when OTEL_* says so (phantom_token.tracing); before the front doors read it.
        self._traced = tracing.start() is not None
        await self.caches.start()
        await self.introspector.start(server for route in self.settings.routes if route.plugin is not None
                                      for server in introspection_servers(route.plugin))

    async def reload(self, settings: Settings, material: Material) -> None:
        """Serve ``settings``' routes from now on (``phantom_token.reload`` decided they may be swapped in): a new
        introspector is started (its discovery failing raises, and nothing changes), then the engine takes the new
        router and introspector. Requests already being decided finish with the routes they matched."""
        introspector = HttpIntrospector(self.client, material=material)
        await introspector.start(server for route in settings.routes if route.plugin is not None
                                 for server in introspection_servers(route.plugin))
        router = Router(settings.routes)
        self.engine.reconfigure(router, introspector, HttpIssuerKeys(introspector.fetch),
                                HttpTokenExchanger(introspector))
        self.settings, self.material, self.introspector, self.router = settings, material, introspector, router

    def _collect(self, out: Samples) -> None:
        """The cache tiers' and single-flight's series (``exposition.FAMILIES``), read when a snapshot is taken."""
        memory = self.caches.memory
        active, negative = memory.evictions
        out['phantom_token_cache_entries{kind="active"}'] = len(memory)
        out['phantom_token_cache_entries{kind="negative"}'] = memory.negative_count
        out['phantom_token_cache_evictions_total{kind="active"}'] = active
        out['phantom_token_cache_evictions_total{kind="negative"}'] = negative
        coordinator = self.caches.coordinator
        process_waits = self.flights.waits
        if isinstance(coordinator, ClusterSingleFlight):
            process_waits += coordinator.process_waits
            out['phantom_token_single_flight_waits_total{scope="cluster"}'] = coordinator.lock_waits
        out['phantom_token_single_flight_waits_total{scope="process"}'] = process_waits
        if isinstance(self.cache, RedisCache):
            for (operation, result), count in sorted(self.cache.operations.items()):
                out[f'phantom_token_redis_operations_total{{operation="{operation}",result="{result}"}}'] = count
        if self.caches.link is not None:
            out["phantom_token_redis_unavailable"] = 1 if self.caches.link.failing else 0

    async def close(self) -> None:
        """Close the HTTP client and the cache (the counterpart of ``open``)."""
        await self.client.aclose()
        await self.caches.aclose()
        if self._traced:
            self._traced = False
            tracing.shutdown()  # the last gateway of the process exports what is pending


__all__ = ["Gateway"]
