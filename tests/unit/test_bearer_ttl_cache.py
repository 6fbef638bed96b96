"""Bearer extraction, cache lifetime rules, the LRU cache and single-flight."""

from __future__ import annotations

import asyncio

import pytest

from phantom_token.cache.memory import MemoryCache
from phantom_token.core.bearer import BearerToken, Problem, extract, fingerprint
from phantom_token.core.ports import Active, CacheEntry
from phantom_token.core.single_flight import SingleFlight
from phantom_token.core.ttl import CacheDirectives, cache_lifetime, parse_cache_control


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (None, Problem.MISSING),
        ([], Problem.MISSING),
        ([""], Problem.MISSING),
        (["Basic abc"], Problem.MISSING),
        (["Bearer"], Problem.INVALID),
        (["Bearer   "], Problem.INVALID),
        (["Bearer a b"], Problem.INVALID),
        (["Bearer a,b"], Problem.INVALID),
        (["a", "b"], Problem.DUPLICATE),
        (["Bearer abc"], BearerToken("abc")),
        (["bearer\tabc=="], BearerToken("abc==")),
        ([" BEARER  a-b.c_d~e+f/g== "], BearerToken("a-b.c_d~e+f/g==")),
    ],
)
def test_extract(values: list[str] | None, expected: object) -> None:
    assert extract(values, 4096) == expected


def test_extract_enforces_max_length() -> None:
    assert extract(["Bearer " + "a" * 10], 10) == BearerToken("a" * 10)
    assert extract(["Bearer " + "a" * 11], 10) is Problem.INVALID


def test_fingerprint_is_short_and_stable() -> None:
    assert fingerprint("abc") == "ba7816bf"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], CacheDirectives(None, False)),
        (["max-age=60"], CacheDirectives(60, False)),
        (["private, MAX-AGE=30, must-revalidate"], CacheDirectives(30, False)),
        (["max-age=60", "max-age=10"], CacheDirectives(10, False)),
        (["no-store"], CacheDirectives(None, True)),
        (["no-cache, max-age=60"], CacheDirectives(60, True)),
        (["max-age=abc"], CacheDirectives(0, False)),
        (["max-age=-5"], CacheDirectives(0, False)),
        (["max-age=7199"], CacheDirectives(7199, False)),  # the one-value shortcut, and what it leaves to the rest
        (["max-age=07"], CacheDirectives(7, False)),
        (["max-age="], CacheDirectives(0, False)),
        (["max-age=1e3"], CacheDirectives(0, False)),
        (['max-age="60"'], CacheDirectives(60, False)),
        (["max-age=60, no-store"], CacheDirectives(60, True)),
        (["max-age=60 "], CacheDirectives(60, False)),
        (["max-age=\u00b2"], CacheDirectives(0, False)),  # a digit to isdigit(), not to float(): malformed, not a crash
        (["max-age=\u00b2, no-store"], CacheDirectives(0, True)),
    ],
)
def test_parse_cache_control(values: list[str], expected: CacheDirectives) -> None:
    assert parse_cache_control(values) == expected


def test_directives_and_active_answers_are_values() -> None:
    """Plain classes (made per miss), equal by their fields as the frozen dataclasses they replaced."""
    assert CacheDirectives() == CacheDirectives(None, False) != CacheDirectives(None, True)
    assert CacheDirectives(60) != CacheDirectives(10)
    assert hash(CacheDirectives(60, True)) == hash(CacheDirectives(60, True))
    assert Active("j", {"sub": "a"}) == Active("j", {"sub": "a"}, CacheDirectives())
    assert Active("j", {"sub": "a"}) != Active("j", {"sub": "b"})
    assert Active("j", {}, CacheDirectives(5)) != Active("j", {}, CacheDirectives(6))
    assert Active(None, {}).directives == CacheDirectives()


def test_cache_lifetime_never_outlives_the_token() -> None:
    assert cache_lifetime(300, CacheDirectives(), 1030, 1000) == 30
    assert cache_lifetime(300, CacheDirectives(), 990, 1000) == 0
    assert cache_lifetime(300, CacheDirectives(None, True), 5000, 1000) == 0


def entry(expires_at: float) -> CacheEntry:
    return CacheEntry("Bearer x", frozenset(), expires_at)


def test_memory_cache_evicts_least_recently_used() -> None:
    cache = MemoryCache(2)
    cache.put_local(b"a", entry(100))
    cache.put_local(b"b", entry(100))
    assert cache.get_local(b"a", 0) is not None
    cache.put_local(b"c", entry(100))
    assert cache.get_local(b"b", 0) is None
    assert cache.get_local(b"a", 0) is not None
    assert len(cache) == 2


def test_memory_cache_never_returns_expired_entries() -> None:
    cache = MemoryCache(10)
    cache.put_local(b"a", entry(100))
    assert cache.get_local(b"a", 99.9) is not None
    assert cache.get_local(b"a", 100) is None
    assert len(cache) == 0


async def test_single_flight_shares_results_and_errors() -> None:
    flights: SingleFlight[int] = SingleFlight()
    calls = 0
    gate = asyncio.Event()

    async def call() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise ValueError("boom")

    waiters = [asyncio.ensure_future(flights.do(b"k", call)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, ValueError) for r in results)
    assert len(flights) == 0


async def test_single_flight_call_outlives_its_callers_and_ends_for_all() -> None:
    """Every caller gone, the call still finishes (its answer is cached for the next); a caller arriving after it
    starts a new call; a call cancelled from outside (shutdown) cancels whoever still waits."""
    flights: SingleFlight[int] = SingleFlight()
    gate, started, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
    calls: list[asyncio.Task[object] | None] = []

    async def call() -> int:
        calls.append(asyncio.current_task())
        started.set()
        await gate.wait()
        finished.set()
        return len(calls)

    first, second = (asyncio.ensure_future(flights.do(b"k", call)) for _ in range(2))
    await asyncio.sleep(0)
    assert flights.waits == 1
    assert len(flights) == 1
    first.cancel()
    second.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    gate.set()
    await asyncio.wait_for(finished.wait(), 5)
    await asyncio.sleep(0)
    assert len(flights) == 0
    assert await flights.do(b"k", call) == 2  # a new call, not the finished one's result

    gate.clear()
    started.clear()
    waiter = asyncio.ensure_future(flights.do(b"k", call))
    await asyncio.wait_for(started.wait(), 5)  # the third call running, in the flight's task
    running = calls[-1]
    assert running is not None
    assert running is not waiter
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 5)
    assert len(flights) == 0


async def test_single_flight_run_here_runs_the_call_in_the_first_callers_task() -> None:
    """``run_here`` (a caller never cancelled: the proxy's): the first caller's own task runs the call, no task of
    its own; those arriving meanwhile wait apart, a cancelled one cancels nothing, and all share the result."""
    flights: SingleFlight[int] = SingleFlight()
    gate = asyncio.Event()
    ran_in: list[asyncio.Task[object] | None] = []

    async def call() -> int:
        ran_in.append(asyncio.current_task())
        await gate.wait()
        return 7

    owner = asyncio.ensure_future(flights.run_here(b"k", call))
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(flights.do(b"k", call)),
               asyncio.ensure_future(flights.run_here(b"k", call)),
               asyncio.ensure_future(flights.run_here(b"k", call))]
    await asyncio.sleep(0)
    assert flights.waits == 3
    assert len(flights) == 1
    waiters[2].cancel()
    await asyncio.gather(waiters[2], return_exceptions=True)
    gate.set()
    assert await asyncio.wait_for(owner, 5) == 7
    assert await asyncio.wait_for(asyncio.gather(*waiters[:2]), 5) == [7, 7]
    assert ran_in == [owner]  # one call, in the first caller's task
    assert len(flights) == 0
    assert await flights.run_here(b"k", call) == 7  # over: a new call
    assert len(ran_in) == 2


async def test_single_flight_run_here_shares_errors_and_a_cancelled_owner_cancels_the_waiters() -> None:
    flights: SingleFlight[int] = SingleFlight()
    gate = asyncio.Event()

    async def failing() -> int:
        await gate.wait()
        raise ValueError("boom")

    owner = asyncio.ensure_future(flights.run_here(b"k", failing))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(flights.do(b"k", failing))
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(owner, waiter, return_exceptions=True)
    assert [type(r) for r in results] == [ValueError, ValueError]
    assert len(flights) == 0

    # the owner's task cancelled after all (the loop shutting down): the call is, and so is whoever waits for it
    gate.clear()
    owner = asyncio.ensure_future(flights.run_here(b"k", failing))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(flights.do(b"k", failing))
    await asyncio.sleep(0)
    owner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 5)
    assert owner.cancelled()
    assert len(flights) == 0
