"""Cache-key format v3 (``core.keys``): namespaces and versions never share a key or a memory identity, the purge
removes exactly what the real engine cached (every server of a route, DPoP, claims_to_headers, token exchange), and a
known answer pins the format so an accidental change fails here rather than as a silent miss (or a shared entry) in
production."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random

import pytest

from phantom_token.cache.memory import MemoryCache
from phantom_token.cache.purge import Purger, namespaces, purge_keys
from phantom_token.config.settings import TOKEN_TYPE_JWT, PluginConfig, Route, TokenExchange, Upstream
from phantom_token.core.engine import Engine
from phantom_token.core.keys import (
    KEY_BYTES,
    VERSION,
    cache_key,
    identity,
    legacy_key,
    namespace_tag,
    namespaced_key,
    tagged_key,
    token_digest,
    v2_key,
)
from phantom_token.core.ports import CacheEntry, Exchanged, Inactive, IntrospectionResult
from phantom_token.core.request import RequestInfo, TokenMemo
from phantom_token.core.routes import Router
from phantom_token.core.verdict import Allow
from tests.dpop_proofs import ProofKey

from .fakes import FakeClock, FakeIntrospector

UPSTREAM = Upstream("http", "127.0.0.1", 3001, "/")
NOW = 1_700_000_000.0
PLAIN = PluginConfig("http://as.test/introspect", "gw", "s")
CLAIMS = dataclasses.replace(PLAIN, claims_to_headers=(("X-User", "sub"), ("X-Scope", "scope")))
EXCHANGE = dataclasses.replace(PLAIN, token_exchange=TokenExchange(audience="orders", token_endpoint="http://as.test/t"))
DPOP = dataclasses.replace(PLAIN, dpop="required")
A = PluginConfig("http://a.test/introspect", "gw", "s")
B = PluginConfig("http://b.test/introspect", "gw", "s")
SEVERAL = dataclasses.replace(A, authorization_servers=(A, B))

# Distinct namespaces, including the ones a naive concatenation could confuse (a prefix of another, an empty one).
NAMESPACES = (b"", b"a", b"a\x00", b"ab", PLAIN.cache_namespace, CLAIMS.cache_namespace, EXCHANGE.cache_namespace,
              A.cache_namespace, B.cache_namespace, SEVERAL.cache_namespace, b"x" * 200)
TOKENS = ("tok", "tok2", "a1b2c3d4-e5f6-4711-8899-aabbccddeeff")


def test_the_v3_key_of_a_fixed_namespace_and_token_is_pinned() -> None:
    """Known answer (cross-checked with `openssl dgst -sha256`): changing it is a change of format, which needs a new
    VERSION and the migration of docs/scaling.md."""
    assert VERSION == b"phantom-token cache key v3\x00"
    namespace = b"http://as.test/introspect\x00gw\x00"
    assert PLAIN.cache_namespace == namespace
    digest = token_digest("a1b2c3d4-e5f6-4711-8899-aabbccddeeff")
    assert digest.hex() == "2b6a404cd90075c007d8f89688989f0470ead0166e476b75ccf3309f05af09ce"
    assert namespace_tag(namespace).hex() == "fc31620a864f64ae307e56133c578182"
    key = namespaced_key(namespace, digest)
    assert key.hex() == digest.hex() + "fc31620a864f64ae307e56133c578182"
    assert len(key) == KEY_BYTES == 48
    assert cache_key(PLAIN, "a1b2c3d4-e5f6-4711-8899-aabbccddeeff") == key
    # the construction spelled out with hashlib, independently of core/keys.py
    assert key == digest + hashlib.sha256(b"phantom-token cache key v3\x00" + namespace).digest()[:16]
    # the earlier formats, which the purge still removes: v2 pinned as it shipped, v1 spelled out
    assert v2_key(namespace, digest).hex() == "6142e618ae6e96b367ccef5fa456e9a278f91a67fb8009d0234383a9f02ff273"
    v2_prefix = hashlib.sha256(b"phantom-token cache key v2\x00" + namespace).digest()
    assert v2_key(namespace, digest) == hashlib.blake2s(v2_prefix + digest).digest()
    assert legacy_key(namespace, digest) == hashlib.sha256(namespace + digest).digest()


def test_the_memory_identity_is_the_digest_xor_the_tag() -> None:
    """``identity`` (the memory table's 128 bits of a v3 key) is the digest's first 128 bits XOR the tag, read as
    two little-endian signed 64-bit integers, for every namespace and many digests."""
    def signed(value: int) -> int:
        return value - (1 << 64) if value >= 1 << 63 else value

    digests = [token_digest(token) for token in TOKENS] + [bytes(32), b"\xff" * 32] + [
        hashlib.sha256(bytes([i])).digest() for i in range(64)]
    for namespace in NAMESPACES:
        tag = namespace_tag(namespace)
        for digest in digests:
            key = tagged_key(tag, digest)
            assert key == namespaced_key(namespace, digest)
            mixed = bytes(a ^ b for a, b in zip(digest[:16], tag, strict=True))
            assert identity(key) == (signed(int.from_bytes(mixed[:8], "little")),
                                     signed(int.from_bytes(mixed[8:], "little")))


def test_two_namespaces_never_give_the_same_key_or_identity_for_a_token() -> None:
    assert len(set(NAMESPACES)) == len(NAMESPACES)
    assert len({namespace_tag(namespace) for namespace in NAMESPACES}) == len(NAMESPACES)
    for token in TOKENS:
        keys = {namespaced_key(namespace, token_digest(token)) for namespace in NAMESPACES}
        assert len(keys) == len(NAMESPACES)
        assert len({identity(key) for key in keys}) == len(NAMESPACES)  # the memory cache's identity: 128 bits
    plugins = (PLAIN, CLAIMS, EXCHANGE, A, B, SEVERAL)
    assert len({cache_key(plugin, "tok") for plugin in plugins}) == len(plugins)
    assert len({identity(cache_key(plugin, "tok")) for plugin in plugins}) == len(plugins)
    # many tokens under many namespaces: every (namespace, token) pair its own identity
    rng = random.Random(18)
    tokens = [rng.randbytes(24).hex() for _ in range(2000)]
    pairs = {identity(namespaced_key(namespace, token_digest(token))) for namespace in NAMESPACES for token in tokens}
    assert len(pairs) == len(NAMESPACES) * len(tokens)


def test_the_memory_cache_keeps_namespaces_and_versions_apart() -> None:
    """The memory cache identifies an entry by 128 bits of the key (cache/memory.py): the entries of one token under
    every namespace and all three key formats stay separate entries there too, and each is found by its own key."""
    digest = token_digest("tok")
    keys = [namespaced_key(namespace, digest) for namespace in NAMESPACES]
    keys += [v2_key(namespace, digest) for namespace in NAMESPACES]
    keys += [legacy_key(namespace, digest) for namespace in NAMESPACES]
    cache = MemoryCache(len(keys))
    for n, key in enumerate(keys):
        cache.put_local(key, CacheEntry(f"Bearer jwt-{n}", frozenset(), 100.0))
    assert len(cache) == len(keys)
    for n, key in enumerate(keys):
        entry = cache.get_local(key, 0)
        assert isinstance(entry, CacheEntry)
        assert entry.authorization == f"Bearer jwt-{n}"


def test_two_versions_never_give_the_same_key() -> None:
    """No v3 key (any namespace, any token) equals a v2 or v1 key (any namespace, any token): they are 48 bytes
    against 32, and another VERSION string gives other tags. Replicas of two versions sharing a store never read each
    other's entries."""
    pairs = list(itertools.product(NAMESPACES, (token_digest(token) for token in TOKENS)))
    current = {namespaced_key(namespace, digest) for namespace, digest in pairs}
    older = {v2_key(namespace, digest) for namespace, digest in pairs} | {
        legacy_key(namespace, digest) for namespace, digest in pairs}
    assert len(current) == len(pairs)
    assert len(older) == 2 * len(pairs)
    assert not current & older
    assert {len(key) for key in current} == {48}
    assert {len(key) for key in older} == {32}
    for namespace, digest in pairs:
        other_version = hashlib.sha256(b"phantom-token cache key v4\x00" + namespace).digest()[:16]
        assert identity(tagged_key(other_version, digest)) != identity(namespaced_key(namespace, digest))


def test_a_purge_removes_every_format_of_every_namespace() -> None:
    digest = token_digest("tok")
    keys = purge_keys((PLAIN.cache_namespace, A.cache_namespace), digest)
    assert keys == (namespaced_key(PLAIN.cache_namespace, digest), v2_key(PLAIN.cache_namespace, digest),
                    legacy_key(PLAIN.cache_namespace, digest),
                    namespaced_key(A.cache_namespace, digest), v2_key(A.cache_namespace, digest),
                    legacy_key(A.cache_namespace, digest))


class ByServer(FakeIntrospector):
    """Server A says inactive (a negative entry under A's namespace), every other server active."""

    async def introspect(self, token: str, plugin: PluginConfig) -> IntrospectionResult:
        if plugin.introspection_endpoint == A.introspection_endpoint and plugin.authorization_servers == ():
            self.calls.append(token)
            return Inactive()
        return await super().introspect(token, plugin)


class Exchanger:
    async def exchange(self, token: str, plugin: PluginConfig) -> Exchanged:
        return Exchanged("exchanged", TOKEN_TYPE_JWT, 60.0)


ROUTES = (Route("plain", "svc", UPSTREAM, paths=("/plain",), plugin=PLAIN),
          Route("claims", "svc", UPSTREAM, paths=("/claims",), plugin=CLAIMS),
          Route("exchange", "svc", UPSTREAM, paths=("/exchange",), plugin=EXCHANGE),
          Route("dpop", "svc", UPSTREAM, paths=("/dpop",), plugin=DPOP),
          Route("several", "svc", UPSTREAM, paths=("/several",), plugin=SEVERAL))


@pytest.mark.parametrize("path", ["/plain", "/claims", "/exchange", "/dpop", "/several"])
async def test_the_purge_removes_exactly_what_the_engine_cached(path: str) -> None:
    """The real engine caches a token on one route (several servers: A's negative entry, B's answer and the
    route's outcome; DPoP through the proof path); the purge, given only the token's SHA-256, removes all of it."""
    key = ProofKey("ES256")
    clock, introspector, cache = FakeClock(NOW), ByServer(), MemoryCache(100)
    engine = Engine(Router(ROUTES), cache, introspector, clock=clock, exchanger=Exchanger())
    claims: dict[str, object] = {"sub": "alice", "scope": "read", "exp": NOW + 600}
    if path == "/dpop":
        claims["cnf"] = {"jkt": key.jkt}
    introspector.activate("tok", claims)
    introspector.activate("other", claims)
    for token in ("tok", "other"):
        headers = {"authorization": [f"Bearer {token}"]}
        origin = ""
        if path == "/dpop":
            headers = {"authorization": [f"DPoP {token}"],
                       "dpop": [key.proof("GET", "https://api.example.com/dpop/x", token, iat=NOW)]}
            origin = "https://api.example.com"
        request = RequestInfo("GET", "api.example.com", path + "/x", headers, TokenMemo(), origin=origin)
        assert isinstance(await engine.authorize(request), Allow)
    cached = len(cache) + cache.negative_count
    assert cached == (6 if path == "/several" else 2)  # several: A's negative entry, B's, the route's; per token
    report = await Purger(cache, namespaces(ROUTES)).purge(token_digest("tok"))
    assert report.memory == cached // 2
    assert len(cache) + cache.negative_count == cached // 2  # the other token's entries stay
    again = await Purger(cache, namespaces(ROUTES)).purge(token_digest("other"))
    assert (again.memory, len(cache), cache.negative_count) == (cached // 2, 0, 0)

