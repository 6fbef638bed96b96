"""What a cached token keeps alive: the entry's layout (the rare members behind ``extra``), the shared scope sets
(interned, bounded), and nothing per token outside the cache once its miss is over (docs/performance.md,
"Memory per cached entry"; bench/memory.py measures the bytes)."""

from __future__ import annotations

import pytest

from phantom_token.cache.codec import EntryCodec
from phantom_token.cache.memory import MemoryCache
from phantom_token.config.settings import PluginConfig, Route, Upstream
from phantom_token.core import engine as engine_module
from phantom_token.core.engine import Engine
from phantom_token.core.keys import cache_key
from phantom_token.core.ports import CacheEntry, EntryExtras
from phantom_token.core.request import RequestInfo
from phantom_token.core.routes import Router
from phantom_token.core.single_flight import SingleFlight
from phantom_token.core.verdict import Allow

from .fakes import FakeClock, FakeIntrospector

PLUGIN = PluginConfig("http://as.test/introspect", "gateway", "secret", token_cache_seconds=300)
ROUTE = Route("api", "svc", Upstream("http", "127.0.0.1", 3001, "/"), paths=("/api",), plugin=PLUGIN)


def test_an_entry_without_binding_or_claim_headers_has_no_extra() -> None:
    entry = CacheEntry("Bearer a.b.c", frozenset({"read"}), 100.0)
    assert entry.extra is None
    assert (entry.headers, entry.jkt, entry.x5t_s256) == (None, None, None)
    assert entry == CacheEntry("Bearer a.b.c", frozenset({"read"}), 100.0)
    assert entry != CacheEntry("Bearer a.b.c", frozenset({"read"}), 100.5)


@pytest.mark.parametrize(("headers", "jkt", "x5t"), [
    ((), None, None),  # claims_to_headers set, no claim to send: still a tuple, not None
    ((("X-User", "alice"),), None, None),
    (None, "thumb", None),
    (None, None, ""),  # a malformed certificate binding, which no certificate matches: kept, never dropped
    ((("X-User", "alice"),), "thumb", "cert"),
])
def test_the_rare_members_live_in_extra_and_read_back(headers: tuple[tuple[str, str], ...] | None,
                                                     jkt: str | None, x5t: str | None) -> None:
    entry = CacheEntry("Bearer a.b.c", frozenset(), 100.0, headers, jkt=jkt, x5t_s256=x5t)
    assert entry.extra == EntryExtras(headers, jkt, x5t)
    assert (entry.headers, entry.jkt, entry.x5t_s256) == (headers, jkt, x5t)
    assert entry != CacheEntry("Bearer a.b.c", frozenset(), 100.0)
    codec = EntryCodec()
    assert codec.decode(codec.encode(entry, b"k"), b"k") == entry  # the Redis wire format is unchanged


def test_an_entry_never_shows_its_jwt() -> None:
    entry = CacheEntry("Bearer secret-jwt-value", frozenset({"read"}), 100.0, jkt="thumb")
    assert "secret-jwt-value" not in repr(entry)
    assert "thumb" in repr(entry)


async def test_a_miss_leaves_nothing_per_token_but_the_cache_entry() -> None:
    clock, introspector, cache = FakeClock(), FakeIntrospector(), MemoryCache(1000)
    flights: SingleFlight[CacheEntry | None] = SingleFlight()
    engine = Engine(Router((ROUTE,)), cache, introspector, clock=clock, coordinator=flights)
    tokens = [f"token-{n}" for n in range(50)]
    for token in tokens:
        introspector.activate(token, {"sub": token, "scope": "write read", "exp": clock.now + 3600})
        verdict = await engine.authorize(RequestInfo("GET", "h", "/api/x", {"authorization": [f"Bearer {token}"]}))
        assert isinstance(verdict, Allow)
    assert len(cache) == 50
    assert len(flights) == 0  # the single-flight table forgets a key when its call ends
    entries = [cache.get_local(cache_key(PLUGIN, token), clock.now) for token in tokens]
    assert all(isinstance(e, CacheEntry) and e.extra is None for e in entries)
    scope_sets = {id(e.scopes) for e in entries if isinstance(e, CacheEntry)}
    assert len(scope_sets) == 1  # one shared frozenset for the one distinct set of scopes


async def test_the_shared_scope_sets_stay_bounded() -> None:
    bound = engine_module._MAX_SCOPE_SETS
    clock, introspector, cache = FakeClock(), FakeIntrospector(), MemoryCache(bound + 10)
    engine = Engine(Router((ROUTE,)), cache, introspector, clock=clock)
    for n in range(bound + 5):  # every token with a set of scopes of its own
        token = f"token-{n}"
        introspector.activate(token, {"sub": "a", "scope": f"read s{n}", "exp": clock.now + 3600})
        await engine.authorize(RequestInfo("GET", "h", "/api/x", {"authorization": [f"Bearer {token}"]}))
    assert 0 < len(engine._scope_sets) <= bound
    entry = cache.get_local(cache_key(PLUGIN, f"token-{bound + 4}"), clock.now)
    assert isinstance(entry, CacheEntry)
    assert entry.scopes == {"read", f"s{bound + 4}"}
