"""Memory per cached entry (L1 and Redis) and introspection calls per token under load across replicas.

    python bench/cache_memory.py [--entries 10000] [--jwt-bytes 800]

L1: ``tracemalloc`` around filling a ``MemoryCache`` with N entries, each a distinct ``Bearer <jwt>`` of the given
size, two scopes, and its 32-byte key (what the engine keeps per token), divided by N.
Redis: ``MEMORY USAGE`` of one stored entry, plain and AES-GCM encrypted, and ``used_memory`` growth / N, on a
``redis-server`` started here (``--save '' --appendonly no``).
Load: 2 replicas (each its own L1 and Redis connections, like two gateway processes) share that Redis; 2 000
concurrent requests over 50 new tokens, introspection taking 50 ms; prints the calls the authorization server saw.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from phantom_token.cache.codec import EntryCodec
from phantom_token.cache.memory import MemoryCache
from phantom_token.cache.stack import build_cache
from phantom_token.config.settings import CacheSettings, PluginConfig, Route, Settings, Upstream
from phantom_token.core.engine import Engine
from phantom_token.core.keys import cache_key
from phantom_token.core.ports import Active, CacheEntry, IntrospectionResult
from phantom_token.core.request import RequestInfo
from phantom_token.core.routes import Router
from phantom_token.core.verdict import Allow

PLUGIN = PluginConfig("http://as.test/introspect", "gateway", "secret")
ROUTES = (Route("api", "svc", Upstream("http", "127.0.0.1", 1, "/"), paths=("/api",), plugin=PLUGIN),)


def jwt(size: int, n: int) -> str:
    """A compact JWS-shaped string of about ``size`` bytes, distinct for each ``n``."""
    header = base64.urlsafe_b64encode(b'{"alg":"ES256","kid":"k1","typ":"JWT"}').rstrip(b"=").decode()
    signature = base64.urlsafe_b64encode(os.urandom(64)).rstrip(b"=").decode()
    room = size - len(header) - len(signature) - 2
    claims = {"sub": f"user-{n}", "jti": os.urandom(8).hex(), "pad": ""}
    raw = json.dumps(claims).encode()
    claims["pad"] = "x" * max(0, room * 3 // 4 - len(raw))
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


def l1_bytes_per_entry(entries: int, size: int) -> float:
    values = [(os.urandom(32), "Bearer " + jwt(size, n)) for n in range(entries)]
    cache = MemoryCache(entries + 1)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for key, authorization in values:
        cache.put_local(key, CacheEntry(authorization, frozenset({"read", "write"}), time.time() + 300))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    strings = sum(sys.getsizeof(a) + sys.getsizeof(k) for k, a in values)
    return (after - before + strings) / entries  # the strings and keys existed before: count them in


def start_redis() -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        raise SystemExit("redis-server (or valkey-server) is needed for the Redis numbers")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return process, port
        except OSError:
            time.sleep(0.01)
    raise SystemExit("redis-server did not start")


async def redis_bytes(url: str, entries: int, size: int, secret: str | None) -> tuple[int, float]:
    client = Redis.from_url(url)
    codec = EntryCodec(secret)
    await client.flushall()
    before = int((await client.info("memory"))["used_memory"])
    pipe = client.pipeline(transaction=False)
    store_key = b""
    for n in range(entries):
        store_key = b"phantom-token:" + os.urandom(32).hex().encode()
        entry = CacheEntry("Bearer " + jwt(size, n), frozenset({"read", "write"}), time.time() + 300)
        pipe.set(store_key, codec.encode(entry, store_key), pxat=int(entry.expires_at * 1000))
    await pipe.execute()
    after = int((await client.info("memory"))["used_memory"])
    usage = int(await client.memory_usage(store_key) or 0)
    await client.aclose()
    return usage, (after - before) / entries


class SlowIntrospector:
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    async def introspect(self, token: str, plugin: PluginConfig) -> IntrospectionResult:
        self.calls[token] = self.calls.get(token, 0) + 1
        await asyncio.sleep(0.05)
        return Active(jwt(800, 0), {"sub": "a", "exp": time.time() + 600})


async def calls_per_token(url: str) -> tuple[int, int, int]:
    settings = Settings(ROUTES, cache=CacheSettings(redis_url=url))
    introspector = SlowIntrospector()
    stacks = [build_cache(settings) for _ in range(2)]
    for stack in stacks:
        await stack.start()
    engines = [Engine(Router(ROUTES), s.cache, introspector, coordinator=s.coordinator) for s in stacks]

    async def ask(n: int) -> bool:
        request = RequestInfo("GET", "h", "/api", {"authorization": [f"Bearer load-token-{n % 50}"]})
        engine = engines[n % 2]
        return isinstance(engine.try_authorize(request) or await engine.authorize(request), Allow)

    results = await asyncio.gather(*(ask(n) for n in range(2000)))
    for stack in stacks:
        await stack.aclose()
    assert all(results)
    return len(results), len(introspector.calls), sum(introspector.calls.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--jwt-bytes", type=int, default=800)
    args = parser.parse_args()
    print(f"JWT size: {len(jwt(args.jwt_bytes, 0))} bytes; key: {len(cache_key(PLUGIN, 'x'))} bytes")
    print(f"L1 (MemoryCache): {l1_bytes_per_entry(args.entries, args.jwt_bytes):.0f} bytes/entry "
          f"(tracemalloc, {args.entries} entries)")
    process, port = start_redis()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for label, secret in (("plain", None), ("AES-GCM", "k" * 44)):
            usage, average = asyncio.run(redis_bytes(url, args.entries, args.jwt_bytes, secret))
            print(f"Redis {label}: MEMORY USAGE {usage} bytes/key; used_memory growth {average:.0f} bytes/entry")
        requests, tokens, calls = asyncio.run(calls_per_token(url))
        print(f"Load: {requests} concurrent requests, 2 replicas, {tokens} new tokens -> {calls} introspection calls "
              f"({calls / tokens:.2f} per token)")
    finally:
        process.kill()
        process.wait()


if __name__ == "__main__":
    main()
