"""Cache-key format v2 (``core.keys``): namespaces and versions never share a key, the purge removes exactly what the
real engine cached (every server of a route, DPoP, claims_to_headers, token exchange), and a known answer pins the
format so an accidental change fails here rather than as a silent miss (or a shared entry) in production."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools

import pytest

from phantom_token.cache.memory import MemoryCache
from phantom_token.cache.purge import Purger, namespaces, purge_keys
from phantom_token.config.settings import TOKEN_TYPE_JWT, PluginConfig, Route, TokenExchange, Upstream
from phantom_token.core.engine import Engine
from phantom_token.core.keys import (
    VERSION,
    cache_key,
    key_from,
    key_prefix,
    legacy_key,
    namespaced_key,
    prefixed_key,
    prefixed_state,
    token_digest,
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


def test_the_v2_key_of_a_fixed_namespace_and_token_is_pinned() -> None:
    """Known answer (cross-checked with `openssl dgst -sha256` and `-blake2s256`): changing it is a change of
    format, which needs a new VERSION and the migration of docs/scaling.md."""
    assert VERSION == b"phantom-token cache key v2\x00"
    namespace = b"http://as.test/introspect\x00gw\x00"
    assert PLAIN.cache_namespace == namespace
    digest = token_digest("a1b2c3d4-e5f6-4711-8899-aabbccddeeff")
    assert digest.hex() == "2b6a404cd90075c007d8f89688989f0470ead0166e476b75ccf3309f05af09ce"
    assert key_prefix(namespace).hex() == "6af2a007b826c495a443b6d5595fad3259939df78634f58a719a7e07aff8ac0c"
    assert namespaced_key(namespace, digest).hex() == "6142e618ae6e96b367ccef5fa456e9a278f91a67fb8009d0234383a9f02ff273"
    assert cache_key(PLAIN, "a1b2c3d4-e5f6-4711-8899-aabbccddeeff") == namespaced_key(namespace, digest)
    # the construction spelled out with hashlib, independently of core/keys.py
    prefix = hashlib.sha256(b"phantom-token cache key v2\x00" + namespace).digest()
    assert namespaced_key(namespace, digest) == hashlib.blake2s(prefix + digest).digest()
    assert legacy_key(namespace, digest) == hashlib.sha256(namespace + digest).digest()


def test_the_engine_s_per_request_derivation_gives_the_same_bytes() -> None:
    """``key_from(prefixed_state(prefix), digest)`` (a copy of a BLAKE2s that absorbed the prefix once) is byte for
    byte ``prefixed_key(prefix, digest)``, for every namespace and many digests, and never alters its state."""
    digests = [token_digest(token) for token in TOKENS] + [bytes(32), b"\xff" * 32] + [
        hashlib.sha256(bytes([i])).digest() for i in range(64)]
    for namespace in NAMESPACES:
        prefix = key_prefix(namespace)
        state = prefixed_state(prefix)
        for digest in digests:
            assert key_from(state, digest) == prefixed_key(prefix, digest) == namespaced_key(namespace, digest)
        assert state.digest() == hashlib.blake2s(prefix).digest()  # still the prefix alone
    state = prefixed_state(key_prefix(PLAIN.cache_namespace))
    assert key_from(state, token_digest("a1b2c3d4-e5f6-4711-8899-aabbccddeeff")).hex() == (
        "6142e618ae6e96b367ccef5fa456e9a278f91a67fb8009d0234383a9f02ff273")


def test_two_namespaces_never_give_the_same_key_for_a_token() -> None:
    assert len(set(NAMESPACES)) == len(NAMESPACES)
    for token in TOKENS:
        keys = {namespaced_key(namespace, token_digest(token)) for namespace in NAMESPACES}
        assert len(keys) == len(NAMESPACES)
        assert len({key[:16] for key in keys}) == len(NAMESPACES)  # the memory cache's identity: 128 bits
    plugins = (PLAIN, CLAIMS, EXCHANGE, A, B, SEVERAL)
    assert len({cache_key(plugin, "tok") for plugin in plugins}) == len(plugins)
    assert len({cache_key(plugin, "tok")[:16] for plugin in plugins}) == len(plugins)


def test_the_memory_cache_keeps_namespaces_and_versions_apart() -> None:
    """The memory cache identifies an entry by the key's first 128 bits (cache/memory.py): the entries of one token
    under every namespace and both key formats stay separate entries there too."""
    digest = token_digest("tok")
    keys = [namespaced_key(namespace, digest) for namespace in NAMESPACES]
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
    """No v2 key (any namespace, any token) equals a v1 key (any namespace, any token), and another VERSION string
    gives other prefixes: replicas of two versions sharing a store never read each other's entries."""
    pairs = list(itertools.product(NAMESPACES, (token_digest(token) for token in TOKENS)))
    current = {namespaced_key(namespace, digest) for namespace, digest in pairs}
    legacy = {legacy_key(namespace, digest) for namespace, digest in pairs}
    assert len(current) == len(legacy) == len(pairs)
    assert not current & legacy
    for namespace, digest in pairs:
        other_version = hashlib.sha256(b"phantom-token cache key v3\x00" + namespace).digest()
        assert prefixed_key(other_version, digest)[:16] != namespaced_key(namespace, digest)[:16]
    assert not {key[:16] for key in current} & {key[:16] for key in legacy}  # apart in the memory cache too


def test_a_purge_removes_both_formats_of_every_namespace() -> None:
    digest = token_digest("tok")
    keys = purge_keys((PLAIN.cache_namespace, A.cache_namespace), digest)
    assert keys == (namespaced_key(PLAIN.cache_namespace, digest), legacy_key(PLAIN.cache_namespace, digest),
                    namespaced_key(A.cache_namespace, digest), legacy_key(A.cache_namespace, digest))


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

