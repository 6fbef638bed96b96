"""The at-rest codec, the purge endpoint and the purger, without sockets."""

from __future__ import annotations

import hashlib
import json

import pytest

from phantom_token.admin import admin_handler
from phantom_token.cache.codec import EntryCodec, derive_key
from phantom_token.cache.memory import MemoryCache
from phantom_token.cache.purge import Purger, PurgeReport, namespaces
from phantom_token.config.settings import PluginConfig, Route, Upstream
from phantom_token.core.keys import cache_key
from phantom_token.core.ports import CacheEntry, NegativeEntry
from phantom_token.http.messages import Request
from phantom_token.metrics import Metrics

KEY = "0123456789abcdef0123456789abcdef"
ENTRY = CacheEntry("Bearer eyJ.payload.sig", frozenset({"read", "write"}), 1_700_000_300.5)
STORE_KEY = b"phantom-token:" + b"ab" * 32


@pytest.mark.parametrize("secret", [None, KEY])
@pytest.mark.parametrize("entry", [ENTRY, NegativeEntry(1_700_000_005.0)])
def test_codec_round_trips(secret: str | None, entry: CacheEntry | NegativeEntry) -> None:
    codec = EntryCodec(secret)
    assert codec.decode(codec.encode(entry, STORE_KEY), STORE_KEY) == entry


def test_encrypted_values_hide_the_jwt_and_are_bound_to_their_key() -> None:
    codec = EntryCodec(KEY)
    value = codec.encode(ENTRY, STORE_KEY)
    assert b"eyJ" not in value
    assert codec.encode(ENTRY, STORE_KEY) != value  # a fresh nonce every time
    assert codec.decode(value, b"phantom-token:" + b"cd" * 32) is None  # moved under another key
    tampered = value[:-1] + bytes([value[-1] ^ 1])
    assert codec.decode(tampered, STORE_KEY) is None
    assert EntryCodec("another-key-that-is-long-enough-00").decode(value, STORE_KEY) is None


def test_with_a_key_plain_values_are_not_trusted_and_garbage_is_a_miss() -> None:
    plain = EntryCodec().encode(ENTRY, STORE_KEY)
    assert EntryCodec(KEY).decode(plain, STORE_KEY) is None
    for junk in (b"", b"\x00not json", b"\x00[]", b'\x00["x"]', b'\x00[1,2]', b'\x00[1,[2],"a"]', b"\x07"):
        assert EntryCodec().decode(junk, STORE_KEY) is None


def test_key_derivation_needs_key_material_and_is_not_the_raw_secret() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        derive_key("short")
    assert derive_key(KEY) != KEY.encode()
    assert len(derive_key(KEY)) == 32


PLUGINS = (PluginConfig("http://as.test/i", "gw", "s"), PluginConfig("http://other.test/i", "gw", "s"))
ROUTES = tuple(
    Route(f"r{i}", "svc", Upstream("http", "127.0.0.1", 1, "/"), paths=(f"/p{i}",), plugin=plugin)
    for i, plugin in enumerate((*PLUGINS, PLUGINS[0]))
)


async def test_purger_removes_the_token_under_every_namespace() -> None:
    cache = MemoryCache(10)
    for plugin in PLUGINS:
        await cache.put(cache_key(plugin, "tok"), ENTRY)
    assert len(namespaces(ROUTES)) == 2
    report = await Purger(cache, namespaces(ROUTES)).purge(hashlib.sha256(b"tok").digest())
    assert report == PurgeReport(hashlib.sha256(b"tok").hexdigest()[:8], 2, 0, None, True)
    assert len(cache) == 0


ADMIN = "admin-secret"


def post(body: bytes, bearer: str = ADMIN, method: str = "POST") -> Request:
    headers = {"authorization": [f"Bearer {bearer}"]}
    return Request(method, "/cache/purge", "", headers, body)


async def purge_through_admin(request: Request, cache: MemoryCache) -> tuple[int, dict[str, object]]:
    purger = Purger(cache, namespaces(ROUTES))
    handler = admin_handler(Metrics(), admin_token=ADMIN, ready=lambda: True, purge=purger.purge)
    response = await handler(request)
    assert ("Content-Type", "application/json") in response.headers
    return response.status, json.loads(response.body)


async def test_purge_endpoint_accepts_the_token_or_its_sha256() -> None:
    cache = MemoryCache(10)
    await cache.put(cache_key(PLUGINS[0], "tok"), ENTRY)
    status, document = await purge_through_admin(post(b'{"token": "tok"}'), cache)
    assert status == 200
    assert document == {"fingerprint": hashlib.sha256(b"tok").hexdigest()[:8],
                        "removed": {"memory": 1, "shared": 0}, "notified": None, "complete": True}
    assert "tok" not in json.dumps(document)
    await cache.put(cache_key(PLUGINS[1], "tok"), ENTRY)
    body = json.dumps({"token_sha256": hashlib.sha256(b"tok").hexdigest().upper()}).encode()
    status, document = await purge_through_admin(post(body), cache)
    assert (status, document["removed"]) == (200, {"memory": 1, "shared": 0})


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"token": 1}', b'{"token": ""}', b'{"token_sha256": "abc"}', b'{"other": "x"}',
     b'{"token": "a", "token_sha256": "' + b"0" * 64 + b'"}', "{\"token\": \"t\u00f6k\"}".encode()],
)
async def test_purge_endpoint_rejects_bad_bodies_with_400_json(body: bytes) -> None:
    status, document = await purge_through_admin(post(body), MemoryCache(10))
    assert status == 400
    assert document["code"] == "invalid_request"


async def test_purge_endpoint_needs_post_and_the_admin_token() -> None:
    status, _ = await purge_through_admin(post(b'{"token": "tok"}', method="GET"), MemoryCache(10))
    assert status == 405
    status, _ = await purge_through_admin(post(b'{"token": "tok"}', bearer="wrong"), MemoryCache(10))
    assert status == 401
