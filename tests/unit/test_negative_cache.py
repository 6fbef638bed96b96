"""Negative caching, the coordinator port and the purgeable key derivation, with a fake clock and fake ports."""

from __future__ import annotations

import asyncio
import hashlib

from phantom_token.cache.memory import MemoryCache
from phantom_token.config.settings import PluginConfig, Route, Upstream
from phantom_token.core.engine import Engine
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.keys import cache_key, namespaced_key, token_digest
from phantom_token.core.ports import CacheEntry, Flight, IntrospectionCoordinator, NegativeEntry
from phantom_token.core.request import RequestInfo
from phantom_token.core.routes import Router
from phantom_token.core.verdict import Allow, Deny

from .fakes import FakeClock, FakeIntrospector

UPSTREAM = Upstream("http", "127.0.0.1", 3001, "/")


def build(negative_seconds: int = 5, *, negative_max: int = 10, coordinator: IntrospectionCoordinator | None = None,
          cache: MemoryCache | None = None) -> tuple[Engine, FakeIntrospector, FakeClock, MemoryCache]:
    plugin = PluginConfig("http://as.test/i", "gw", "s", negative_cache_seconds=negative_seconds)
    routes = (Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),)
    clock, introspector = FakeClock(), FakeIntrospector()
    cache = cache if cache is not None else MemoryCache(100, negative_max)
    engine = Engine(Router(routes), cache, introspector, clock=clock, coordinator=coordinator)
    return engine, introspector, clock, cache


def req(token: str) -> RequestInfo:
    return RequestInfo("GET", "localhost", "/api/x", {"authorization": [f"Bearer {token}"]})


async def test_inactive_token_is_remembered_for_negative_cache_seconds() -> None:
    engine, introspector, clock, cache = build(5)
    for _ in range(3):
        request = req("junk")
        verdict = engine.try_authorize(request) or await engine.authorize(request)
        assert isinstance(verdict, Deny)
        assert verdict.status == 401
        assert verdict.headers()[-1] == ("WWW-Authenticate", 'Bearer error="invalid_token"')
    assert introspector.calls == ["junk"]
    assert (len(cache), cache.negative_count) == (0, 1)
    clock.now += 5
    await engine.authorize(req("junk"))
    assert introspector.calls == ["junk", "junk"]


async def test_zero_turns_negative_caching_off() -> None:
    engine, introspector, _, cache = build(0)
    await engine.authorize(req("junk"))
    await engine.authorize(req("junk"))
    assert introspector.calls == ["junk", "junk"]
    assert cache.negative_count == 0


async def test_errors_are_never_cached_even_with_negative_caching() -> None:
    engine, introspector, _, cache = build(5)
    introspector.answers["tok"] = IntrospectionUnavailable("HTTP 503")
    for _ in range(2):
        verdict = await engine.authorize(req("tok"))
        assert isinstance(verdict, Deny)
        assert verdict.status == 502
    assert introspector.calls == ["tok", "tok"]
    assert (len(cache), cache.negative_count) == (0, 0)


async def test_junk_flood_cannot_evict_active_entries() -> None:
    engine, introspector, clock, cache = build(5, negative_max=10)
    introspector.activate("good", {"sub": "a", "exp": clock.now + 600})
    assert isinstance(await engine.authorize(req("good")), Allow)
    for i in range(1000):
        await engine.authorize(req(f"junk{i}"))
    assert cache.negative_count == 10
    assert isinstance(engine.try_authorize(req("good")), Allow)
    assert introspector.calls.count("good") == 1


def test_memory_cache_keeps_a_key_in_one_bound_only() -> None:
    cache = MemoryCache(10, 10)
    cache.put_local(b"k", NegativeEntry(100))
    cache.put_local(b"k", CacheEntry("Bearer j", frozenset(), 100))
    assert (len(cache), cache.negative_count) == (1, 0)
    cache.put_local(b"k", NegativeEntry(100))
    assert (len(cache), cache.negative_count) == (0, 1)
    assert cache.purge_local(b"k")
    assert cache.get_local(b"k", 0) is None


def test_key_is_derivable_from_the_token_sha256() -> None:
    plugin = PluginConfig("http://as.test/i", "gw", "s")
    digest = hashlib.sha256(b"tok").digest()
    assert token_digest("tok") == digest
    assert cache_key(plugin, "tok") == namespaced_key(plugin.cache_namespace, digest)
    tag = hashlib.sha256(b"phantom-token cache key v3\x00" + plugin.cache_namespace).digest()[:16]
    assert cache_key(plugin, "tok") == digest + tag  # format v3 (core/keys.py)


class RecordingCoordinator:
    """Runs every flight at once, recording the keys: the engine must go through it for every miss."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []

    async def do(self, key: bytes, call: Flight) -> CacheEntry | None:
        self.keys.append(key)
        return await call()


async def test_engine_resolves_misses_through_the_coordinator() -> None:
    coordinator = RecordingCoordinator()
    engine, introspector, clock, _ = build(coordinator=coordinator)
    introspector.activate("tok", {"sub": "a", "exp": clock.now + 600})
    assert isinstance(await engine.authorize(req("tok")), Allow)
    assert isinstance(await engine.authorize(req("tok")), Allow)
    assert len(coordinator.keys) == 1
    assert introspector.calls == ["tok"]


async def test_a_flight_looks_in_the_cache_again_before_introspecting() -> None:
    """What a cluster peer stored while this process waited is used: no second call."""
    cache = MemoryCache(10)
    stored = CacheEntry("Bearer from-a-peer", frozenset(), FakeClock().now + 60)

    class PeerAnswers:
        async def do(self, key: bytes, call: Flight) -> CacheEntry | None:
            await cache.put(key, stored)  # a peer finished while this process waited
            return await call()

    engine, introspector, clock, _ = build(coordinator=PeerAnswers(), cache=cache)
    introspector.activate("tok", {"sub": "a", "exp": clock.now + 600})
    verdict = await engine.authorize(req("tok"))
    assert isinstance(verdict, Allow)
    assert verdict.authorization == "Bearer from-a-peer"
    assert introspector.calls == []


async def test_local_single_flight_still_folds_concurrent_misses() -> None:
    engine, introspector, clock, _ = build()
    introspector.activate("tok", {"sub": "a", "exp": clock.now + 600})
    introspector.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(engine.authorize(req("tok"))) for _ in range(20)]
    await asyncio.sleep(0)
    introspector.gate.set()
    assert all(isinstance(v, Allow) for v in await asyncio.gather(*waiting))
    assert introspector.calls == ["tok"]
