"""Cluster-wide single-flight: one introspection per token across every process sharing a Redis.

Within a process, ``SingleFlight`` first folds concurrent misses for a key into one flight. That flight then
registers for the key's ``done`` event, and tries ``SET P lock:<hex> <random> NX PX <lock>``:
- won: run the flight (which stores its answer in Redis), then, in one script, release the lock if it is still
  ours and ``PUBLISH done <hex>``;
- lost: wait for ``done <hex>`` (a notification, not polling), at most ``wait_seconds``, then run the flight,
  which looks in the cache again first: normally a hit; a miss (the holder died, or its answer may not be
  cached, or it failed) means this process introspects itself.

Invariants: waiting never exceeds ``wait_seconds``; the lock always expires on its own (the holder may die);
the lock is released before ``done`` is published and the waiter registers before it tries the lock, so no
notification can fall in between; with Redis down or the subscription lost, nobody waits: the flight runs at
once (local single-flight still holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from phantom_token.cache.redis import RedisLink, SharedStoreUnavailable, resolved
from phantom_token.core.ports import CacheEntry, Flight
from phantom_token.core.single_flight import SingleFlight

# Release the lock only if it is still ours (it may have expired and been taken by another), then notify.
_RELEASE_AND_NOTIFY = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
return redis.call('publish', ARGV[2], ARGV[3])
"""


class ClusterSingleFlight:
    """``IntrospectionCoordinator`` over Redis."""

    def __init__(self, link: RedisLink, *, wait_seconds: float) -> None:
        self._link = link
        self._wait = wait_seconds
        self._lock_ms = int((wait_seconds + 1.0) * 1000)
        self._local = SingleFlight[CacheEntry | None]()
        self._waiting: dict[bytes, asyncio.Event] = {}
        self.lock_waits = 0  # flights that waited for a peer (for tests and metrics)
        link.on(b"done", self._done)
        link.on_lost(self._wake_everyone)

    @property
    def process_waits(self) -> int:
        """Callers that joined a flight already running in this process."""
        return self._local.waits

    async def do(self, key: bytes, call: Flight) -> CacheEntry | None:
        return await self._local.do(key, lambda: self._across_cluster(key, call))

    async def _across_cluster(self, key: bytes, call: Flight) -> CacheEntry | None:
        if not self._link.subscribed:
            return await call()
        done = self._waiting[key] = asyncio.Event()  # before trying the lock: see the module docstring
        try:
            name, mine = self._link.prefix + b"lock:" + key.hex().encode(), os.urandom(16)
            try:
                won = await self._link.call(lambda r: resolved(r.set(name, mine, nx=True, px=self._lock_ms)), "SET")
            except SharedStoreUnavailable:
                return await call()
            if won:
                try:
                    return await call()
                finally:
                    await self._release(name, mine, key)
            self.lock_waits += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self._wait)
            return await call()
        finally:
            if self._waiting.get(key) is done:
                del self._waiting[key]

    async def _release(self, name: bytes, mine: bytes, key: bytes) -> None:
        message = b"done " + key.hex().encode()
        with contextlib.suppress(SharedStoreUnavailable):
            await self._link.call(
                lambda r: resolved(r.eval(_RELEASE_AND_NOTIFY, 1, name, mine, self._link.channel, message)), "EVAL"
            )

    def _done(self, payload: bytes) -> None:
        try:
            key = bytes.fromhex(payload.decode("ascii"))
        except ValueError:
            return
        event = self._waiting.get(key)
        if event is not None:
            event.set()

    def _wake_everyone(self) -> None:
        for event in self._waiting.values():
            event.set()
