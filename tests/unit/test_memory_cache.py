"""The in-memory cache (cache/memory.py): its bounds, expiry, the separate negative bound, CLOCK eviction (scan
resistance included), and the open-addressing table under heavy collisions against a plain dict model."""

from __future__ import annotations

import hashlib
import random

from phantom_token.cache.memory import MemoryCache
from phantom_token.core.ports import CacheEntry, NegativeEntry


def key(n: int) -> bytes:
    """A key as the engine makes them: a 32-byte digest."""
    return hashlib.sha256(b"key %d" % n).digest()


def colliding(n: int) -> bytes:
    """Keys whose low 32 bits are all zero (the first 64 bits differ only above bit 40): whatever the table's
    multiplier, they all start probing at slot 0, so every one of them lands in one long probe run."""
    return (n << 40).to_bytes(8, "little") + hashlib.sha256(b"%d" % n).digest()[:24]


def entry(n: int, expires_at: float = 1000.0) -> CacheEntry:
    return CacheEntry(f"Bearer jwt-{n}", frozenset({"read"}), expires_at)


def test_a_hit_returns_what_was_put() -> None:
    cache = MemoryCache(10)
    cache.put_local(key(1), CacheEntry("Bearer j", frozenset({"a"}), 50.0, (("X-User", "u"),), jkt="t"))
    got = cache.get_local(key(1), 0)
    assert isinstance(got, CacheEntry)
    assert got == CacheEntry("Bearer j", frozenset({"a"}), 50.0, (("X-User", "u"),), jkt="t")
    assert (got.headers, got.jkt, got.x5t_s256) == ((("X-User", "u"),), "t", None)
    assert cache.get_local(key(2), 0) is None
    cache.put_local(key(1), entry(7))  # a new answer for the same key replaces the old one
    assert cache.get_local(key(1), 0) == entry(7)
    assert len(cache) == 1


def test_short_keys_work_too() -> None:
    cache = MemoryCache(10)
    cache.put_local(b"a", entry(1))
    cache.put_local(b"b", entry(2))
    assert cache.get_local(b"a", 0) == entry(1)
    assert cache.get_local(b"b", 0) == entry(2)
    assert cache.purge_local(b"a")
    assert cache.get_local(b"a", 0) is None


def test_the_bound_holds_and_evictions_are_counted() -> None:
    cache = MemoryCache(100, 10)
    for n in range(1000):
        cache.put_local(key(n), entry(n))
        assert len(cache) == min(n + 1, 100)
    assert cache.evictions == (900, 0)
    held = [n for n in range(1000) if cache.get_local(key(n), 0) is not None]
    assert len(held) == 100
    assert all(cache.get_local(key(n), 0) == entry(n) for n in held)


def test_an_expired_entry_is_never_returned_and_is_dropped() -> None:
    cache = MemoryCache(10)
    for n in range(5):
        cache.put_local(key(n), entry(n, expires_at=100.0 + n))
    assert cache.get_local(key(2), 102.0) is None  # expires_at <= now: expired
    assert len(cache) == 4
    assert cache.get_local(key(3), 102.0) == entry(3, expires_at=103.0)
    assert all(cache.get_local(key(n), 200.0) is None for n in range(5))
    assert len(cache) == 0


def test_the_entry_not_hit_is_the_one_evicted() -> None:
    for victim in range(8):
        cache = MemoryCache(8)
        for n in range(8):
            cache.put_local(key(n), entry(n))
        for n in range(8):
            if n != victim:
                assert cache.get_local(key(n), 0) is not None
        cache.put_local(key(100), entry(100))
        assert cache.get_local(key(victim), 0) is None
        assert all(cache.get_local(key(n), 0) is not None for n in [*range(8), 100] if n != victim)


def test_a_flood_of_one_off_tokens_does_not_evict_the_tokens_in_use() -> None:
    cache = MemoryCache(100)
    hot = [key(n) for n in range(10)]
    for k in hot:
        cache.put_local(k, entry(0))
    for n in range(10_000):  # one-off tokens, each seen once; the hot ones keep being used meanwhile
        cache.put_local(key(1000 + n), entry(n))
        if n % 10 == 0:
            for k in hot:
                assert cache.get_local(k, 0) is not None, f"a token in use was evicted after {n} one-off tokens"
    assert len(cache) == 100
    assert cache.evictions[0] == 10 + 10_000 - 100


def test_junk_never_evicts_active_entries_and_a_key_is_in_one_bound_only() -> None:
    cache = MemoryCache(10, 5)
    for n in range(10):
        cache.put_local(key(n), entry(n))
    for n in range(1000):
        cache.put_local(key(10_000 + n), NegativeEntry(1000.0))
    assert len(cache) == 10
    assert cache.negative_count == 5
    assert cache.evictions == (0, 995)
    assert all(cache.get_local(key(n), 0) == entry(n) for n in range(10))
    cache.put_local(key(3), NegativeEntry(1000.0))  # the token went inactive: the active entry goes
    assert cache.get_local(key(3), 0) == NegativeEntry(1000.0)
    assert len(cache) == 9
    cache.put_local(key(3), entry(3))  # active again: the negative entry goes
    assert cache.get_local(key(3), 0) == entry(3)
    assert cache.negative_count == 4


def test_purge_and_clear() -> None:
    cache = MemoryCache(10)
    cache.put_local(key(1), entry(1))
    cache.put_local(key(2), NegativeEntry(100.0))
    assert cache.purge_local(key(1))
    assert cache.purge_local(key(2))
    assert not cache.purge_local(key(1))
    assert cache.get_local(key(1), 0) is None
    assert cache.get_local(key(2), 0) is None
    for n in range(10):
        cache.put_local(key(n), entry(n))
    cache.put_local(key(99), NegativeEntry(100.0))
    cache.clear()
    assert len(cache) == 0
    assert cache.negative_count == 0
    assert all(cache.get_local(key(n), 0) is None for n in range(10))
    cache.put_local(key(5), entry(5))
    assert cache.get_local(key(5), 0) == entry(5)


def test_active_entries_lists_what_is_held() -> None:
    cache = MemoryCache(10)
    for n in range(4):
        cache.put_local(key(n), entry(n))
    assert sorted(e.authorization for e in cache.active_entries()) == [f"Bearer jwt-{n}" for n in range(4)]


def test_the_table_agrees_with_a_dict_under_collisions_removals_and_expiry() -> None:
    """Random puts, gets, purges and expiries on keys that all share one probe run (and on ordinary keys), against
    a dict: a get returns the entry last put for that key or None (evicted), never another key's; removals and
    expiries shift the run without losing an entry; the bound holds."""
    rng = random.Random(18)
    for make in (colliding, key):
        cache = MemoryCache(40, 5)
        model: dict[bytes, CacheEntry] = {}
        now = 0.0
        for step in range(6000):
            k = make(rng.randrange(120))
            action = rng.random()
            if action < 0.45:
                model[k] = entry(step, expires_at=now + rng.choice((5.0, 50.0, 500.0)))
                cache.put_local(k, model[k])
            elif action < 0.85:
                got = cache.get_local(k, now)
                expected = model.get(k)
                if expected is None or expected.expires_at <= now:
                    assert got is None
                else:
                    assert got is None or got == expected
            else:
                cache.purge_local(k)
                model.pop(k, None)
            now += 0.1
            assert len(cache) <= 40
        held = {k for k in model if cache.get_local(k, now) is not None}
        assert all(cache.get_local(k, now) == model[k] for k in held)
        assert len(cache) == len(held)


def test_the_slot_a_key_starts_at_depends_on_a_secret_multiplier() -> None:
    """Multiply-shift with a random odd multiplier per table (cache/memory.py): whoever picks tokens cannot aim
    them at one run of slots without knowing it."""
    tables = [MemoryCache(10)._active for _ in range(8)]
    assert all(table.seed % 2 == 1 and 0 < table.seed < 2**31 for table in tables)
    assert len({table.seed for table in tables}) > 1
    table = tables[0]
    for n in range(100):
        k0 = int.from_bytes(key(n)[:8], "little", signed=True)
        assert table._home(k0) == ((k0 & 0xFFFFFFFF) * table.seed % 2**32) >> (32 - 3)
