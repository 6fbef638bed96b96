"""The in-process DPoP replay guard (``core.ports.ProofReplayGuard``): a proof's ``jti`` is accepted once within its
lifetime, in this process's memory; the engine's default (as ``core.single_flight`` is its default coordinator).
``cache.replay.RedisReplayGuard`` puts it in front of the shared Redis.

Bounded (``max_entries``). Expired records are dropped as new ones arrive (records are kept in arrival order, and a
route's proofs all live ``dpop_proof_lifetime_seconds`` + ``clock_skew_seconds``, so the oldest expire first). When
it is full of live records the oldest is forgotten: a replay of that proof would then pass this guard, so it is
sized above the proofs a process accepts in a proof lifetime (the default, 100 000, is 333 DPoP requests a second
for 300 s).
"""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_MAX_ENTRIES = 100_000


class MemoryReplayGuard:
    """``ProofReplayGuard`` in this process's memory."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._max = max_entries

    @property
    def local(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._seen)

    def first_use_local(self, replay_key: bytes, until: float, now: float) -> bool:
        seen = self._seen
        known = seen.get(replay_key)
        if known is not None and known > now:
            return False
        while seen:  # forget what expired (oldest first), and the oldest when full
            oldest_key, oldest_until = next(iter(seen.items()))
            if oldest_until > now and len(seen) < self._max:
                break
            del seen[oldest_key]
        seen[replay_key] = until
        seen.move_to_end(replay_key)
        return True

    async def first_use(self, replay_key: bytes, until: float, now: float) -> bool:
        return self.first_use_local(replay_key, until, now)



__all__ = ["DEFAULT_MAX_ENTRIES", "MemoryReplayGuard"]
