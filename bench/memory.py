"""Memory held per cached token, measured with tracemalloc around the real engine and in-memory cache.

The engine is driven exactly as the gateway drives it (``Engine.authorize`` on a miss, then the entry stays in
``MemoryCache``); only the introspector is a stand-in that answers a real JWT issued by the demo authorization
server, so what is counted is what a cache entry keeps alive: the key, the ``Bearer <jwt>`` string, the scopes,
the entry object and the LRU's bookkeeping.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import secrets
import tracemalloc
from dataclasses import dataclass

from phantom_token.cache.memory import MemoryCache
from phantom_token.config.settings import PluginConfig, Route, Upstream
from phantom_token.core.engine import Engine
from phantom_token.core.ports import Active, IntrospectionResult
from phantom_token.core.request import RequestInfo
from phantom_token.core.routes import Router
from phantom_token.core.ttl import CacheDirectives
from phantom_token.core.verdict import Allow


@dataclass(frozen=True)
class EntryMemory:
    entries: int
    jwt_bytes: int
    bytes_per_entry: float

    @property
    def ratio(self) -> float:
        return self.bytes_per_entry / self.jwt_bytes


def _claims(jwt: str) -> dict[str, object]:
    payload = jwt.split(".")[1]
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


class _OneJwt:
    """Answers every token with the same real JWT, as a fresh ``Active`` each time (like a real introspection)."""

    def __init__(self, jwt: str) -> None:
        self._jwt = jwt

    async def introspect(self, token: str, plugin: PluginConfig) -> IntrospectionResult:
        return Active(self._jwt, _claims(self._jwt), CacheDirectives())


async def _fill(engine: Engine, tokens: list[str]) -> None:
    for token in tokens:
        verdict = await engine.authorize(RequestInfo("GET", "bench", "/api/x", {"authorization": [f"Bearer {token}"]}))
        if not isinstance(verdict, Allow):
            raise RuntimeError(f"unexpected verdict {verdict!r}")


def entry_memory(jwt: str, entries: int = 20_000) -> EntryMemory:
    """Bytes of Python heap each cached token keeps alive, averaged over ``entries`` distinct tokens."""
    plugin = PluginConfig("http://127.0.0.1:1/oauth/introspect", "introspection-client", "secret",
                          token_cache_seconds=3600)
    route = Route("bench", "bench", Upstream("http", "127.0.0.1", 1, "/"), paths=("/api",), plugin=plugin)
    cache = MemoryCache(entries * 2)
    engine = Engine(Router((route,)), cache, _OneJwt(jwt))
    tokens = [secrets.token_urlsafe(32) for _ in range(entries + 1)]
    asyncio.run(_fill(engine, tokens[:1]))  # first-use allocations (route tables, interned names) are not per entry
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    asyncio.run(_fill(engine, tokens[1:]))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    if len(cache) != entries + 1:
        raise RuntimeError(f"expected {entries + 1} cached entries, found {len(cache)}")
    return EntryMemory(entries, len(jwt), (after - before) / entries)
