"""A bounded in-memory LRU cache with absolute expiry, with a separate bound for negative entries.

Invariants: at most ``max_entries`` active entries and at most ``negative_max_entries`` negative ones, each
bound evicting its own least recently used first, so a flood of junk tokens never evicts an active entry; an
expired entry is never returned; keys are SHA-256 digests, never tokens; a key is in at most one of the two.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from phantom_token.core.ports import Cached, CacheEntry, NegativeEntry, Purged


class _Lru:
    def __init__(self, max_entries: int) -> None:
        self.max = max_entries
        self.entries: OrderedDict[bytes, Cached] = OrderedDict()
        # Bound once: compiled code has no OrderedDict primitives and would look the method up by name per hit.
        self._touch: Callable[[bytes], None] = self.entries.move_to_end
        self.evictions = 0  # entries dropped to stay within ``max`` (metrics)

    def get(self, key: bytes, now: float) -> Cached | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self.entries[key]
            return None
        self._touch(key)
        return entry

    def put(self, key: bytes, entry: Cached) -> None:
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
        self._active = _Lru(max_entries)
        self._negative = _Lru(negatives)

    def __len__(self) -> int:
        """Active entries held (negative ones are counted by ``negative_count``)."""
        return len(self._active.entries)

    @property
    def negative_count(self) -> int:
        return len(self._negative.entries)

    @property
    def evictions(self) -> tuple[int, int]:
        """Entries dropped to stay within the bounds so far: (active, negative)."""
        return self._active.evictions, self._negative.evictions

    def get_local(self, key: bytes, now: float) -> Cached | None:
        return self._active.get(key, now) or self._negative.get(key, now)

    async def get(self, key: bytes, now: float) -> Cached | None:
        return self.get_local(key, now)

    def put_local(self, key: bytes, entry: Cached) -> None:
        if isinstance(entry, CacheEntry):
            self._negative.entries.pop(key, None)
            self._active.put(key, entry)
        elif isinstance(entry, NegativeEntry):
            self._active.entries.pop(key, None)
            self._negative.put(key, entry)

    async def put(self, key: bytes, entry: Cached) -> None:
        self.put_local(key, entry)

    def purge_local(self, key: bytes) -> bool:
        active = self._active.entries.pop(key, None) is not None
        return self._negative.entries.pop(key, None) is not None or active

    async def purge(self, key: bytes) -> Purged:
        return Purged(local=self.purge_local(key))

    def clear(self) -> None:
        self._active.entries.clear()
        self._negative.entries.clear()
