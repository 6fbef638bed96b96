"""Several engines ("replicas", each with its own Redis connections and L1) sharing one real Redis.

Each replica is what one gateway process builds (``cache.stack.build_cache``); they share one fake authorization
server that counts its calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import pytest
from redis.asyncio import Redis

from phantom_token.cache.purge import Purger, namespaces
from phantom_token.cache.redis import SharedStoreUnavailable, resolved
from phantom_token.cache.stack import CacheStack, build_cache
from phantom_token.config.settings import CacheSettings, PluginConfig, Route, Settings, Upstream
from phantom_token.core.engine import Engine
from phantom_token.core.keys import cache_key, legacy_key, v2_key
from phantom_token.core.ports import CacheEntry
from phantom_token.core.request import RequestInfo
from phantom_token.core.routes import Router
from phantom_token.core.verdict import Allow, Deny, Verdict

from ..unit.fakes import FakeIntrospector
from .redis_server import RedisServer

PLUGIN = PluginConfig("http://as.test/introspect", "gateway", "secret", introspection_timeout_seconds=2.0)
ROUTES = (Route("api", "svc", Upstream("http", "127.0.0.1", 1, "/"), paths=("/api",), plugin=PLUGIN),)
KEY = "k" * 44  # 44 chars of key material
SECRET = "Zq8opaque7Tx"  # a token whose bytes must appear nowhere in Redis


@dataclass
class Replica:
    engine: Engine
    stack: CacheStack

    async def ask(self, token: str) -> Verdict:
        request = RequestInfo("GET", "localhost", "/api/x", {"authorization": [f"Bearer {token}"]})
        return self.engine.try_authorize(request) or await self.engine.authorize(request)


Cluster = Callable[..., Awaitable[list[Replica]]]


@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[Cluster]:
    started: list[Replica] = []

    async def start(count: int, introspector: FakeIntrospector, **cache: object) -> list[Replica]:
        # a generous command timeout: on a loaded CI machine 0.25 s can pass, and that is a fault test's business
        base = CacheSettings(redis_url=redis_server.url, redis_timeout_seconds=2.0)
        settings = Settings(ROUTES, cache=replace(base, **cache))  # type: ignore[arg-type]
        replicas = []
        for _ in range(count):
            stack = build_cache(settings)
            await stack.start()
            engine = Engine(Router(ROUTES), stack.cache, introspector, coordinator=stack.coordinator)
            replicas.append(Replica(engine, stack))
        started.extend(replicas)
        return replicas

    yield start
    for replica in started:
        await replica.stack.aclose()


def claims(**extra: object) -> dict[str, object]:
    return {"sub": "alice", "scope": "read", "exp": time.time() + 3600, **extra}


async def eventually(condition: Callable[[], bool], within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_token_introspected_through_one_replica_is_served_by_the_others(cluster: Cluster) -> None:
    introspector = FakeIntrospector()
    jwt = introspector.activate("tok", claims())
    replicas = await cluster(3, introspector)
    for replica in replicas:
        verdict = await replica.ask("tok")
        assert isinstance(verdict, Allow)
        assert verdict.authorization == "Bearer " + jwt
        assert 295 < verdict.expires_in <= 300
    assert introspector.calls == ["tok"]
    assert [r.engine.metrics.introspections for r in replicas] == [1, 0, 0]


async def test_64_concurrent_requests_over_2_replicas_make_one_call(cluster: Cluster) -> None:
    introspector = FakeIntrospector()
    introspector.activate("tok", claims())
    introspector.gate = asyncio.Event()
    replicas = await cluster(2, introspector)
    requests = [asyncio.ensure_future(replicas[i % 2].ask("tok")) for i in range(64)]
    await eventually(lambda: len(introspector.calls) >= 1, within=5)
    await asyncio.sleep(0.2)  # a slow authorization server: give a second call every chance to happen
    introspector.gate.set()
    verdicts = await asyncio.wait_for(asyncio.gather(*requests), 5)
    assert all(isinstance(v, Allow) for v in verdicts)
    assert introspector.calls == ["tok"]


async def test_purge_takes_effect_on_every_replica_within_a_second(cluster: Cluster) -> None:
    introspector = FakeIntrospector()
    introspector.activate("tok", claims())
    replicas = await cluster(3, introspector)
    for replica in replicas:
        assert isinstance(await replica.ask("tok"), Allow)
    key = cache_key(PLUGIN, "tok")
    assert all(r.stack.memory.get_local(key, time.time()) is not None for r in replicas)
    introspector.answers.pop("tok")  # revoked at the authorization server
    report = await Purger(replicas[0].stack.cache, namespaces(ROUTES)).purge(key_digest("tok"))
    assert (report.memory, report.shared, report.notified, report.complete) == (1, 1, 3, True)
    await eventually(lambda: all(r.stack.memory.get_local(key, time.time()) is None for r in replicas))
    for replica in replicas:
        verdict = await replica.ask("tok")
        assert isinstance(verdict, Deny)
        assert verdict.status == 401


def key_digest(token: str) -> bytes:
    import hashlib

    return hashlib.sha256(token.encode()).digest()


async def test_negative_answers_are_shared_and_their_bound_holds_under_10000_junk_tokens(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    introspector = FakeIntrospector()
    introspector.activate("good", claims())
    first, second = await cluster(2, introspector, negative_max_entries=500, max_entries=1000)
    assert isinstance(await first.ask("good"), Allow)
    for batch in range(100):
        verdicts = await asyncio.gather(*(first.ask(f"junk{batch * 100 + i}") for i in range(100)))
        assert all(isinstance(v, Deny) and v.status == 401 for v in verdicts)
    assert first.stack.memory.negative_count == 500
    assert len(first.stack.memory) == 1
    assert isinstance(first.engine.try_authorize(request("good")), Allow)  # still in L1, no I/O
    calls = len(introspector.calls)
    assert isinstance(await second.ask("junk9999"), Deny)  # answered from Redis's negative entry
    assert len(introspector.calls) == calls == 10_001
    client = Redis.from_url(redis_server.url)
    try:
        ttl = await client.pttl(b"phantom-token:" + cache_key(PLUGIN, "junk9999").hex().encode())
        assert 0 < ttl <= 5000
    finally:
        await client.aclose()


def request(token: str) -> RequestInfo:
    return RequestInfo("GET", "localhost", "/api/x", {"authorization": [f"Bearer {token}"]})


async def test_entries_keep_their_absolute_expiry_and_are_encrypted_at_rest(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    introspector = FakeIntrospector()
    jwt = introspector.activate(SECRET, claims(exp=time.time() + 120))
    (replica,) = await cluster(1, introspector, encryption_key=KEY)
    assert isinstance(await replica.ask(SECRET), Allow)
    client = Redis.from_url(redis_server.url)
    try:
        keys = await client.keys("phantom-token:*")
        assert keys == [b"phantom-token:" + cache_key(PLUGIN, SECRET).hex().encode()]
        value = await client.get(keys[0])
        assert value is not None
        assert jwt.encode() not in value
        assert SECRET.encode() not in keys[0]
        assert SECRET.encode() not in value
        assert 115_000 < await client.pttl(keys[0]) <= 120_000
    finally:
        await client.aclose()
    (other_key,) = await cluster(1, introspector, encryption_key="x" * 44)
    assert isinstance(await other_key.ask(SECRET), Allow)  # cannot read the entry: a miss, so it introspects
    assert introspector.calls == [SECRET, SECRET]


async def test_killing_redis_mid_test_loses_no_request_and_its_return_is_picked_up(
    cluster: Cluster, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    introspector = FakeIntrospector()
    for i in range(20):
        introspector.activate(f"tok{i}", claims())
    for n in range(400):
        introspector.activate(f"new{n}", claims())
    first, second = await cluster(2, introspector)
    verdicts: list[Verdict] = []

    async def traffic(replica: Replica, rounds: int) -> None:
        for n in range(rounds):  # mostly hits, and a new token (a miss: Redis, lock, introspection) every 4th
            verdicts.append(await replica.ask(f"new{n}" if n % 4 == 0 else f"tok{n % 20}"))
            await asyncio.sleep(0.001)

    load = [asyncio.ensure_future(traffic(r, 400)) for r in (first, second)]
    await eventually(lambda: len(verdicts) > 50, within=5)
    redis_server.kill()
    await eventually(lambda: len(verdicts) > 400, within=10)
    redis_server.start()
    await asyncio.wait_for(asyncio.gather(*load), 30)
    assert len(verdicts) == 800
    assert all(isinstance(v, Allow) for v in verdicts)
    outages = [r for r in caplog.records if r.getMessage().startswith("redis unavailable")]
    assert 1 <= len(outages) <= 2  # once per replica, not once per request
    for replica in (first, second):
        await until_reachable(replica)
    introspector.activate("fresh", claims())
    assert isinstance(await first.ask("fresh"), Allow)
    calls = len(introspector.calls)
    assert isinstance(await second.ask("fresh"), Allow)
    assert len(introspector.calls) == calls  # the second replica found it in the restarted Redis


async def until_reachable(replica: Replica) -> None:
    """Wait until the replica uses Redis again (its backoff is over, a probe succeeded, it is subscribed)."""
    link = replica.stack.link
    assert link is not None
    deadline = time.monotonic() + 10
    while True:
        try:
            await link.call(lambda r: resolved(r.ping()))
        except SharedStoreUnavailable:
            pass
        else:
            if link.subscribed:
                return
        assert time.monotonic() < deadline, "redis not used again within 10 s"
        await asyncio.sleep(0.05)


async def test_a_hung_redis_only_delays_requests_by_the_short_timeout(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    introspector = FakeIntrospector()
    introspector.activate("tok", claims())
    introspector.activate("other", claims())
    (replica,) = await cluster(1, introspector, redis_timeout_seconds=0.1)
    redis_server.pause()
    started = time.monotonic()
    for token in ("tok", "other", "tok"):
        assert isinstance(await replica.ask(token), Allow)
    assert time.monotonic() - started < 2.0
    redis_server.resume()


async def test_a_rolling_upgrade_misses_the_old_format_once_and_a_purge_reaches_both(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    """Replicas of key formats v2 and v1 (simulated: one writes under ``v2_key`` and ``legacy_key``) and an upgraded
    one share Redis: the upgraded one never reads the old entries (it introspects once), and its purge removes every
    format, in Redis and in the old replica's memory (docs/scaling.md "Upgrading: the cache-key format")."""
    introspector = FakeIntrospector()
    introspector.activate("tok", claims())
    old, new = await cluster(2, introspector)
    v2 = v2_key(PLUGIN.cache_namespace, key_digest("tok"))
    v1 = legacy_key(PLUGIN.cache_namespace, key_digest("tok"))
    await old.stack.cache.put(v2, CacheEntry("Bearer from-v2", frozenset(), time.time() + 600))
    await old.stack.cache.put(v1, CacheEntry("Bearer from-v1", frozenset(), time.time() + 600))
    verdict = await new.ask("tok")
    assert isinstance(verdict, Allow)
    assert verdict.authorization not in ("Bearer from-v2", "Bearer from-v1")
    assert introspector.calls == ["tok"]
    report = await Purger(new.stack.cache, namespaces(ROUTES)).purge(key_digest("tok"))
    assert (report.shared, report.complete) == (3, True)  # the v3 entry, the v2 one and the v1 one
    await eventually(lambda: old.stack.memory.get_local(v2, time.time()) is None
                     and old.stack.memory.get_local(v1, time.time()) is None)
    client = Redis.from_url(redis_server.url)
    try:
        assert await client.keys("phantom-token:*") == []
    finally:
        await client.aclose()
