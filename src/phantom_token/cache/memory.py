"""A bounded in-memory token cache with absolute expiry, with a separate bound for negative entries.

Invariants: at most ``max_entries`` active entries and at most ``negative_max_entries`` negative ones, each bound
evicting from its own entries only, so a flood of junk tokens never evicts an active entry; an expired entry is
never returned; keys are digests (``core.keys``), never tokens; a key is in at most one of the two.

Active entries (``_Table``): a hash table of its own, open addressing with linear probing over one Python list,
evicted by CLOCK (second chance), because that layout costs the least memory per entry. What one entry keeps
alive, compiled, at 100 000 entries (docs/performance.md, "Memory per cached entry"): the ``Bearer <jwt>`` string
(480 bytes for the demo's 413-byte JWT), one ``_Held`` object (a copy of the ``CacheEntry`` with the key's first
128 bits and the CLOCK bit inline: 96 bytes) and about 21 bytes of list slots (the table is at most half full).
There is no key object and no dict or linked-list node per entry (an ``OrderedDict`` LRU with the 32-byte key
``bytes`` cost 80 + about 105 bytes more).

- Identity: 128 bits of the key (``_split``), read as two native 64-bit integers: for a v3 key (``core.keys``:
  the token's SHA-256, then its namespace's 16-byte tag) the SHA-256's first 128 bits XOR the tag
  (``keys.identity``), so tokens and namespaces both stay apart (about n^2 / 2^129 for an accidental collision; the
  argument is in core/keys.py). Any other key (a v1 or v2 key a purge names) is its first 128 bits, a key shorter
  than 16 bytes (only tests use such keys) hashed to 16 bytes first. Redis keeps the full key.
- Slot: the key's low 32 bits hashed by multiply-shift with a random odd multiplier drawn per table
  (``_Table.seed``; Dietzfelbinger's universal family: ``((x * seed) mod 2^32) >> (32 - log2(slots))``), so someone
  who chooses tokens cannot aim them at one run of slots without knowing it (what SipHash's per-process secret does
  for a dict). Linear probing; the table grows (doubling) before it is more than half full, and a removal shifts the
  following run back (no tombstones, so lookups never walk deleted slots).
- Eviction, CLOCK: a hit only sets the entry's ``hot`` bit (no list splicing, cheaper than an LRU's
  ``move_to_end``); when the table is at its bound, the hand walks the slots, clearing ``hot`` bits, and evicts the
  first entry it finds not hot. An entry hit at least once per turn of the hand is never evicted, so a flood of
  one-off tokens evicts one-off tokens (which enter not hot), not the entries in use (tests/unit/test_memory_cache.py).

Negative entries keep an ``OrderedDict`` LRU keyed by the whole key (junk tokens: their memory matters less, and
they have their own bound).
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from phantom_token._native import read_i64_le
from phantom_token.core.keys import KEY_BYTES, identity
from phantom_token.core.ports import Cached, CacheEntry, NegativeEntry, Purged

if TYPE_CHECKING:
    from mypy_extensions import i64

_MIN_SLOTS: Final = 8
_LOW32: Final = 0xFFFFFFFF


class _Held(CacheEntry):
    """The table's copy of a ``CacheEntry`` (same values, the same string objects), with its key's 128 bits and
    the CLOCK bit. Returned as the entry itself on a hit; ``k0``, ``k1`` and ``hot`` are the table's business."""

    __slots__ = ("hot", "k0", "k1")

    def __init__(self, entry: CacheEntry, k0: i64, k1: i64) -> None:
        self.authorization = entry.authorization
        self.scopes = entry.scopes
        self.expires_at = entry.expires_at
        self.extra = entry.extra
        self.k0 = k0
        self.k1 = k1
        self.hot = False


def _split(key: bytes) -> tuple[i64, i64]:
    """A key's identity in the table: a v3 key's ``keys.identity`` (the digest's first 128 bits XOR the namespace's
    tag); for any other key (a v1 or v2 key a purge names, test keys) its first 128 bits, keys shorter than 16 bytes
    hashed to 16 bytes first."""
    if len(key) == KEY_BYTES:
        return identity(key)
    if len(key) < 16:
        key = hashlib.blake2b(key, digest_size=16).digest()
    return read_i64_le(key, 0), read_i64_le(key, 8)


class _Table:
    """The active entries: see the module docstring."""

    def __init__(self, max_entries: int) -> None:
        self.max = max_entries
        self.slots: list[_Held | None] = [None] * _MIN_SLOTS
        self.mask: i64 = _MIN_SLOTS - 1
        self.shift: i64 = 32 - 3  # 32 - log2(len(slots))
        # Odd and below 2^31, so ``low32 * seed`` stays below 2^63: no native overflow.
        self.seed: i64 = secrets.randbits(30) * 2 + 1
        self.count = 0
        self.hand: i64 = 0
        self.evictions = 0  # entries dropped to stay within ``max`` (metrics)

    def get(self, key: bytes, now: float) -> CacheEntry | None:
        k0, k1 = _split(key)
        slots = self.slots
        mask = self.mask
        index = (((k0 & 0xFFFFFFFF) * self.seed) & 0xFFFFFFFF) >> self.shift  # _home(k0), inline
        while True:
            held = slots[index]
            if held is None:
                return None
            if held.k0 == k0 and held.k1 == k1:
                if held.expires_at <= now:
                    self._remove_at(index)
                    return None
                held.hot = True
                return held
            index = (index + 1) & mask

    def _home(self, k0: i64) -> i64:
        """The slot where probing for a key starts (see the module docstring)."""
        return (((k0 & _LOW32) * self.seed) & _LOW32) >> self.shift

    def _find(self, k0: i64, k1: i64) -> i64:
        """The slot holding the key, or -1."""
        slots = self.slots
        mask = self.mask
        index = self._home(k0)
        while True:
            held = slots[index]
            if held is None:
                return -1
            if held.k0 == k0 and held.k1 == k1:
                return index
            index = (index + 1) & mask

    def put(self, key: bytes, entry: CacheEntry) -> None:
        k0, k1 = _split(key)
        held = _Held(entry, k0, k1)
        index = self._find(k0, k1)
        if index >= 0:
            self.slots[index] = held
            return
        if self.count >= self.max:
            self._evict()
        elif (self.count + 1) * 2 > len(self.slots):
            self._grow()
        self._place(held)
        self.count += 1

    def pop(self, key: bytes) -> bool:
        k0, k1 = _split(key)
        index = self._find(k0, k1)
        if index < 0:
            return False
        self._remove_at(index)
        return True

    def clear(self) -> None:
        self.slots = [None] * _MIN_SLOTS
        self.mask = _MIN_SLOTS - 1
        self.shift = 32 - 3
        self.count = 0
        self.hand = 0

    def entries(self) -> Iterator[CacheEntry]:
        return (held for held in list(self.slots) if held is not None)

    def _place(self, held: _Held) -> None:
        slots = self.slots
        mask = self.mask
        index = self._home(held.k0)
        while slots[index] is not None:
            index = (index + 1) & mask
        slots[index] = held

    def _grow(self) -> None:
        """Twice the slots, every entry placed again (2^32 slots at most: 64 GiB of list, never reached)."""
        old = self.slots
        size = len(old) * 2
        self.slots = [None] * size
        self.mask = size - 1
        self.shift -= 1
        self.hand = 0
        for held in old:
            if held is not None:
                self._place(held)

    def _remove_at(self, hole: i64) -> None:
        """Empties slot ``hole``, shifting back the entries after it that probing would no longer find."""
        slots = self.slots
        mask = self.mask
        index = hole
        while True:
            index = (index + 1) & mask
            held = slots[index]
            if held is None:
                break
            # ``held`` may move into the hole when the hole lies between its home slot and where it is.
            if ((index - self._home(held.k0)) & mask) >= ((index - hole) & mask):
                slots[hole] = held
                hole = index
        slots[hole] = None
        self.count -= 1

    def _evict(self) -> None:
        """CLOCK: the first entry from the hand on that was not hit since the hand last passed it."""
        slots = self.slots
        mask = self.mask
        hand = self.hand
        while True:
            held = slots[hand]
            if held is not None:
                if not held.hot:
                    self._remove_at(hand)  # the slot may now hold a shifted entry: the hand looks at it next
                    self.hand = hand
                    self.evictions += 1
                    return
                held.hot = False
            hand = (hand + 1) & mask


class _Lru:
    """The negative entries: least recently used evicted first."""

    def __init__(self, max_entries: int) -> None:
        self.max = max_entries
        self.entries: OrderedDict[bytes, NegativeEntry] = OrderedDict()
        # Bound once: compiled code has no OrderedDict primitives and would look the method up by name per hit.
        self._touch: Callable[[bytes], None] = self.entries.move_to_end
        self.evictions = 0  # entries dropped to stay within ``max`` (metrics)

    def get(self, key: bytes, now: float) -> NegativeEntry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self.entries[key]
            return None
        self._touch(key)
        return entry

    def put(self, key: bytes, entry: NegativeEntry) -> None:
        self.entries[key] = entry
        self.entries.move_to_end(key)
        while len(self.entries) > self.max:
            self.entries.popitem(last=False)
            self.evictions += 1


class MemoryCache:
    def __init__(self, max_entries: int, negative_max_entries: int | None = None) -> None:
        negatives = max(1, max_entries // 10) if negative_max_entries is None else negative_max_entries
        if max_entries < 1 or negatives < 1:
            raise ValueError("max_entries and negative_max_entries must be at least 1")
        self._active = _Table(max_entries)
        self._negative = _Lru(negatives)

    def __len__(self) -> int:
        """Active entries held (negative ones are counted by ``negative_count``)."""
        return self._active.count

    @property
    def negative_count(self) -> int:
        return len(self._negative.entries)

    @property
    def evictions(self) -> tuple[int, int]:
        """Entries dropped to stay within the bounds so far: (active, negative)."""
        return self._active.evictions, self._negative.evictions

    def active_entries(self) -> Iterator[CacheEntry]:
        """The active entries held, in no particular order (benchmarks and tests)."""
        return self._active.entries()

    def get_local(self, key: bytes, now: float) -> Cached | None:
        return self._active.get(key, now) or self._negative.get(key, now)

    async def get(self, key: bytes, now: float) -> Cached | None:
        return self.get_local(key, now)

    def put_local(self, key: bytes, entry: Cached) -> None:
        if isinstance(entry, CacheEntry):
            self._negative.entries.pop(key, None)
            self._active.put(key, entry)
        elif isinstance(entry, NegativeEntry):
            self._active.pop(key)
            self._negative.put(key, entry)

    async def put(self, key: bytes, entry: Cached) -> None:
        self.put_local(key, entry)

    def purge_local(self, key: bytes) -> bool:
        active = self._active.pop(key)
        return self._negative.entries.pop(key, None) is not None or active

    async def purge(self, key: bytes) -> Purged:
        return Purged(local=self.purge_local(key))

    def clear(self) -> None:
        self._active.clear()
        self._negative.entries.clear()
