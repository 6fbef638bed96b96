"""The shared DPoP replay guard (``core.ports.ProofReplayGuard``): a proof's ``jti`` is accepted once, by one replica.

``RedisReplayGuard``: this process's ``core.replay.MemoryReplayGuard`` first (a replay seen here needs no round
trip), then one ``SET <prefix>dpop:<hex> 1 NX PXAT <until>`` on the cache's Redis: the first replica to set it wins,
every other refuses. Redis down or slow degrades to the memory guard (the outage is logged by the link), never to a
failure.
"""

from __future__ import annotations

import contextlib
import math

from phantom_token.cache.redis import RedisLink, SharedStoreUnavailable, resolved
from phantom_token.core.replay import MemoryReplayGuard


class RedisReplayGuard:
    """``ProofReplayGuard`` shared by every replica on the cache's Redis (see the module docstring)."""

    def __init__(self, link: RedisLink, memory: MemoryReplayGuard | None = None) -> None:
        self._link = link
        self._memory = memory if memory is not None else MemoryReplayGuard()

    @property
    def local(self) -> bool:
        return False

    def first_use_local(self, replay_key: bytes, until: float, now: float) -> bool:
        return self._memory.first_use_local(replay_key, until, now)

    async def first_use(self, replay_key: bytes, until: float, now: float) -> bool:
        if not self._memory.first_use_local(replay_key, until, now):
            return False
        store_key = self._link.prefix + b"dpop:" + replay_key.hex().encode()
        deadline = max(math.ceil(until * 1000), math.ceil(now * 1000) + 1000)
        with contextlib.suppress(SharedStoreUnavailable):
            created = await self._link.call(lambda r: resolved(r.set(store_key, b"1", nx=True, pxat=deadline)))
            return bool(created)
        return True  # Redis unavailable: this process's memory is the guard


__all__ = ["RedisReplayGuard"]
