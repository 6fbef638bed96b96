"""Single-flight: concurrent callers asking for the same key share one call (lua-resty-openidc #573).

The engine's default ``IntrospectionCoordinator`` (``core.ports``), and the in-process half of the cache's
cluster-wide one (``cache.cluster_flight``). It lives in ``core`` because the engine needs it and ``core`` imports
nothing of ``cache``; it does no I/O of its own (only asyncio tasks).

Invariants: while a call for a key is running, no second call for that key starts in this process; every
waiter gets the same result or the same exception; a cancelled waiter does not cancel the shared call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._calls: dict[bytes, asyncio.Task[T]] = {}
        self.waits = 0  # callers that joined a call already running (phantom_token_single_flight_waits_total)

    def __len__(self) -> int:
        return len(self._calls)

    async def do(self, key: bytes, call: Callable[[], Awaitable[T]]) -> T:
        task = self._calls.get(key)
        if task is None:
            task = asyncio.ensure_future(call())
            self._calls[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        else:
            self.waits += 1
        # shield: one waiter going away (client disconnect) must not cancel the call the others wait for
        return await asyncio.shield(task)

    def _finished(self, key: bytes, task: asyncio.Task[T]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: the waiters may all have gone away
