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


class _Flight(Generic[T]):
    """One call in flight: its task, and a future per caller waiting for it (but the one running it, ``run_here``)."""

    __slots__ = ("task", "waiters")

    def __init__(self, waiter: asyncio.Future[T] | None) -> None:
        self.task: asyncio.Task[None] | None = None  # None too when the first caller runs the call (``run_here``)
        self.waiters: list[asyncio.Future[T]] = [waiter] if waiter is not None else []


class SingleFlight(Generic[T]):
    """The call runs in a task of its own; each caller waits on a future of its own, which the task resolves. So a
    caller going away (a client disconnect cancels its request's task) cancels only its own future, never the call
    the others wait for, as ``asyncio.shield`` would do, at a fraction of its cost: a miss pays one task and one
    future, not a task, a done callback and shield's future with its two callbacks (docs/performance.md, "Cache
    misses")."""

    def __init__(self) -> None:
        self._calls: dict[bytes, _Flight[T]] = {}
        self.waits = 0  # callers that joined a call already running (phantom_token_single_flight_waits_total)

    def __len__(self) -> int:
        return len(self._calls)

    async def do(self, key: bytes, call: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        flight = self._calls.get(key)
        if flight is None:
            flight = self._calls[key] = _Flight(waiter)
            flight.task = loop.create_task(self._run(key, flight, call))
        else:
            flight.waiters.append(waiter)
            self.waits += 1
        return await waiter

    async def run_here(self, key: bytes, call: Callable[[], Awaitable[T]]) -> T:
        """``do`` for a caller whose task is never cancelled while it waits (the proxy's: a request whose client
        left has its verdict finished and dropped, ``frontends.proxy``): the first caller for a key runs the call in
        its own task, so a miss pays one task, not two; callers arriving meanwhile wait on futures as with ``do``,
        and may be cancelled. The promise is the same as ``do``'s as long as the running caller keeps its word; if
        its task is cancelled anyway (the loop shutting down), the call is, and whoever waits is cancelled too, as
        when ``do``'s call task is cancelled."""
        flight = self._calls.get(key)
        if flight is not None:
            waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            flight.waiters.append(waiter)
            self.waits += 1
            return await waiter
        flight = self._calls[key] = _Flight(None)
        try:
            result = await call()
        except BaseException as exc:
            self._fail(key, flight, exc)
            raise
        self._succeed(key, flight, result)
        return result

    async def _run(self, key: bytes, flight: _Flight[T], call: Callable[[], Awaitable[T]]) -> None:
        """Runs the call and hands its result or exception to every caller still waiting."""
        try:
            result = await call()
        except BaseException as exc:  # every waiter gets it, whatever it is
            self._fail(key, flight, exc)
            if not isinstance(exc, Exception):
                raise  # cancelled, KeyboardInterrupt, SystemExit: the task ends as they say
            return
        self._succeed(key, flight, result)

    def _succeed(self, key: bytes, flight: _Flight[T], result: T) -> None:
        self._land(key, flight)
        for waiter in flight.waiters:
            if not waiter.done():  # done: that caller was cancelled
                waiter.set_result(result)

    def _fail(self, key: bytes, flight: _Flight[T], exc: BaseException) -> None:
        self._land(key, flight)
        cancelled = isinstance(exc, asyncio.CancelledError)
        for waiter in flight.waiters:
            if not waiter.done():
                if cancelled:
                    waiter.cancel()
                else:
                    waiter.set_exception(exc)

    def _land(self, key: bytes, flight: _Flight[T]) -> None:
        """The call is over: a caller arriving from now on starts a new one."""
        if self._calls.get(key) is flight:
            del self._calls[key]
