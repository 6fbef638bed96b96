"""A bounded in-memory LRU cache with absolute expiry.

Invariants: at most ``max_entries`` entries; an expired entry is never returned; keys are SHA-256 digests,
never tokens; least recently used goes first when full.
"""

from __future__ import annotations

from collections import OrderedDict

from phantom_token.core.ports import CacheEntry


class MemoryCache:
    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._entries: OrderedDict[bytes, CacheEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get_local(self, key: bytes, now: float) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    async def get(self, key: bytes, now: float) -> CacheEntry | None:
        return self.get_local(key, now)

    def put_local(self, key: bytes, entry: CacheEntry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def put(self, key: bytes, entry: CacheEntry) -> None:
        self.put_local(key, entry)

    def purge_local(self, key: bytes) -> bool:
        return self._entries.pop(key, None) is not None

    async def purge(self, key: bytes) -> bool:
        return self.purge_local(key)

    def clear(self) -> None:
        self._entries.clear()
