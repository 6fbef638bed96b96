"""Builds the cache tiers the settings ask for, and owns their lifespan.

Without ``redis_url``: a ``MemoryCache`` and the engine's default in-process single-flight. With it: the same
``MemoryCache`` as L1 in front of Redis, and the cluster-wide single-flight. Redis being down at start-up is not
an error: the process serves from memory and introspection and picks Redis up when it comes.
"""

from __future__ import annotations

from dataclasses import dataclass

from phantom_token.cache.cluster_flight import ClusterSingleFlight
from phantom_token.cache.codec import EntryCodec
from phantom_token.cache.memory import MemoryCache
from phantom_token.cache.redis import RedisCache, RedisLink
from phantom_token.config.settings import Settings, introspection_servers
from phantom_token.core.ports import IntrospectionCoordinator, TokenCache


@dataclass
class CacheStack:
    cache: TokenCache
    memory: MemoryCache
    coordinator: IntrospectionCoordinator | None = None  # None: the engine's in-process single-flight
    link: RedisLink | None = None

    async def start(self) -> None:
        if self.link is not None:
            await self.link.start()

    async def aclose(self) -> None:
        if self.link is not None:
            await self.link.aclose()


def build_cache(settings: Settings) -> CacheStack:
    config = settings.cache
    memory = MemoryCache(config.max_entries, config.negative_max_entries)
    if config.redis_url is None:
        return CacheStack(memory, memory)
    link = RedisLink(config.redis_url, key_prefix=config.key_prefix, timeout=config.redis_timeout_seconds)
    timeouts = [server.introspection_timeout_seconds for r in settings.routes if r.plugin is not None
                for server in introspection_servers(r.plugin)]
    coordinator = ClusterSingleFlight(link, wait_seconds=max(timeouts, default=5.0) + 0.5)
    cache = RedisCache(memory, link, EntryCodec(config.encryption_key))
    return CacheStack(cache, memory, coordinator, link)
