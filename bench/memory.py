"""Memory held per cached token, measured around the real engine and in-memory cache.

    python bench/memory.py [--entries 10000 100000] [--jwt-bytes N]

The engine is driven exactly as the gateway drives it (``Engine.authorize`` on a miss: the normal put path, then
the entry stays in the ``MemoryCache`` that ``cache.stack.build_cache`` builds); only the introspector is a
stand-in that answers a real JWT issued by the demo authorization server (signed in this process), so what is
counted is what a cache entry keeps alive: the ``Bearer <jwt>`` string, the table's entry object (the key inline), the
table's slots, and anything else a miss leaves behind (single-flight table, metrics, scope sets, allocator
fragmentation). Two figures per N, each in a fresh process:

- RSS growth per entry (``/proc/self/statm`` before and after the fill, after a ``gc.collect()``): what the
  operating system sees, allocator overhead included; ``bench/run.py``'s RSS column of a real ``serve`` is the
  reference this one tracks;
- ``tracemalloc`` growth per entry: the Python heap only, with what each part of one entry costs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import secrets
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

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


def demo_jwt(pad: int = 0) -> str:
    """A JWT as the demo authorization server answers an introspection (``Accept: application/jwt``); ``pad``
    characters of an extra claim make a bigger one."""
    from phantom_token.demo.authorization_server import DemoAuthorizationServer

    server = DemoAuthorizationServer("http://127.0.0.1:9000")
    client = next(iter(server.clients.values()))
    issued = server.lookup(server.issue(client.client_id, sorted(client.scopes)))
    assert issued is not None
    claims = server._claims(issued)
    if pad:
        claims["pad"] = "x" * pad
    return server.signing_key.sign(claims)


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


def _engine(jwt: str, entries: int) -> tuple[Engine, MemoryCache]:
    plugin = PluginConfig("http://127.0.0.1:1/oauth/introspect", "introspection-client", "secret",
                          token_cache_seconds=3600)
    route = Route("bench", "bench", Upstream("http", "127.0.0.1", 1, "/"), paths=("/api",), plugin=plugin)
    cache = MemoryCache(entries * 2)
    return Engine(Router((route,)), cache, _OneJwt(jwt)), cache


def entry_memory(jwt: str, entries: int = 20_000) -> EntryMemory:
    """Bytes of Python heap each cached token keeps alive, averaged over ``entries`` distinct tokens."""
    engine, cache = _engine(jwt, entries)
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


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_memory(jwt: str, entries: int) -> EntryMemory:
    """RSS growth per entry over ``entries`` distinct tokens (call it in a fresh process: see ``main``)."""
    engine, cache = _engine(jwt, entries)
    tokens = [secrets.token_urlsafe(32) for _ in range(entries + 1)]
    asyncio.run(_fill(engine, tokens[:1]))
    gc.collect()
    before = _rss()
    asyncio.run(_fill(engine, tokens[1:]))
    gc.collect()
    after = _rss()
    if len(cache) != entries + 1:
        raise RuntimeError(f"expected {entries + 1} cached entries, found {len(cache)}")
    return EntryMemory(entries, len(jwt), (after - before) / entries)


def _block(size: int) -> int:
    """What an object of ``size`` bytes takes from the allocator: pymalloc's 16-byte classes up to 512 bytes,
    else glibc malloc (8 bytes of header, 16-byte aligned)."""
    return (size + 15) // 16 * 16 if size <= 512 else (size + 8 + 15) // 16 * 16


def anatomy(jwt: str) -> list[tuple[str, int]]:
    """What one entry's own objects take (allocator blocks, GC headers included), from one real entry."""
    engine, cache = _engine(jwt, 10)
    asyncio.run(_fill(engine, [secrets.token_urlsafe(32)]))
    entry = next(cache.active_entries())  # the table's own copy, with its key bits inline: no key object
    parts = [("authorization", _block(sys.getsizeof(entry.authorization))),  # getsizeof counts GC headers
             (f"entry ({type(entry).__name__})", _block(sys.getsizeof(entry)))]
    if not _native(entry):  # a compiled (mypyc native) class keeps the float unboxed, in the object itself
        parts.append(("expires_at (float)", _block(sys.getsizeof(entry.expires_at))))
    if entry.extra is not None:
        parts.append(("extra", _block(sys.getsizeof(entry.extra))))
    return parts


def _native(entry: object) -> bool:
    """True when the entry's class was compiled by mypyc (a native class)."""
    return not str(sys.modules[type(entry).__module__].__file__).endswith(".py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--pad", type=int, default=0, help="extra claim characters: a bigger JWT than the demo's")
    parser.add_argument("--child", choices=("rss", "tracemalloc"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    jwt = demo_jwt(args.pad)
    if args.child is not None:
        measure = rss_memory if args.child == "rss" else entry_memory
        print(measure(jwt, args.entries[0]).bytes_per_entry)
        return
    import phantom_token.cache.memory as memory_module

    compiled = not memory_module.__file__ or not memory_module.__file__.endswith(".py")
    print(f"JWT {len(jwt)} B (the demo AS's{f', padded by {args.pad}' if args.pad else ''}); "
          f"{'compiled' if compiled else 'pure Python'}; goal <= 1.5x = {1.5 * len(jwt):.0f} B per entry")
    parts = anatomy(jwt)
    print("one entry's own objects: " + ", ".join(f"{name} {size}" for name, size in parts)
          + f" = {sum(size for _, size in parts)} B (the rest: the table's slots and allocator overhead)")
    for entries in args.entries:
        figures = []
        for child in ("rss", "tracemalloc"):
            out = subprocess.run([sys.executable, __file__, "--child", child, "--entries", str(entries),
                                  "--pad", str(args.pad)], check=True, capture_output=True, text=True).stdout
            figures.append(float(out.split()[-1]))
        rss, traced = figures
        print(f"{entries:>7} entries: RSS {rss:6.0f} B/entry ({rss / len(jwt):.2f}x the JWT), "
              f"tracemalloc {traced:6.0f} B/entry ({traced / len(jwt):.2f}x)")


if __name__ == "__main__":
    main()
