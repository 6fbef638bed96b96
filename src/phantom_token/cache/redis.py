"""The shared Redis (or Valkey) tier: a connection with health tracking, and an L1-in-front-of-Redis cache.

Layout in Redis (``P`` = ``key_prefix``, default ``phantom-token:``; ``<hex>`` = the engine's cache key, itself
``sha256(namespace + sha256(token))``):
- ``P<hex>``         the entry (``codec.EntryCodec``), expiring at its absolute deadline (``SET ... PXAT``);
- ``P lock:<hex>``   (no space) the cluster-wide single-flight lock (``cache.cluster_flight``);
- channel ``Pevents``  ``purge <hex>`` (drop your L1 copy) and ``done <hex>`` (an introspection finished).

Invariants: no raw token is ever written, logged or published; a Redis that is down or slower than
``redis_timeout_seconds`` never fails a request: every operation degrades to a miss / a no-op, the outage is
logged once (and its end once), and commands are retried with exponential backoff, so a Redis that comes back
is used again without a restart; while the events subscription was lost, purges may have been missed, so L1 is
emptied when it is re-established.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from phantom_token import tracing
from phantom_token.cache.codec import EntryCodec
from phantom_token.cache.memory import MemoryCache
from phantom_token.core.ports import Cached, Purged

log = logging.getLogger("phantom_token.cache")

T = TypeVar("T")
MIN_BACKOFF = 0.25
MAX_BACKOFF = 5.0
MAX_CONNECTIONS = 64  # per process; more concurrent commands queue (within their timeout) instead of failing
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
# What a command may raise when Redis is unusable. A cluster client's RedisClusterException (no node reachable to
# learn the slots from, a slot no node serves) is not a RedisError.
REDIS_FAILURES = (RedisError, RedisClusterException, OSError)
Handler = Callable[[bytes], None]


class SharedStoreUnavailable(Exception):
    """Redis could not be asked right now (down, slow, or backing off after a failure). Never reaches the engine."""


async def resolved(value: Any) -> Any:
    """redis-py types its commands ``X | Awaitable[X]``; on the asyncio client they are always awaitable.

    Callers check the type of what comes back: Redis answers are data from outside.
    """
    if inspect.isawaitable(value):
        return await value
    return value


def connect(url: str, timeout: float | None) -> Redis:
    """A client for ``url``: ``redis://``, ``rediss://``, ``unix://`` (redis-py's own URL syntax),
    ``redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]`` (``rediss+sentinel`` for TLS), or
    ``redis+cluster://[[user]:password@]host:port[,host:port...]`` (``rediss+cluster`` for TLS): a Redis Cluster
    found from these nodes (a ``RedisCluster``, which has the commands this module uses; typed as ``Redis``).

    No retries inside redis-py: a failed command is reported at once, and this module backs off instead.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout, "socket_connect_timeout": timeout or 5.0, "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0), "max_connections": MAX_CONNECTIONS,
    }
    parts = urlsplit(url)
    if parts.scheme in CLUSTER_SCHEMES:
        nodes, username, password = cluster_nodes(url)
        return cast(Redis, RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes], username=username, password=password,
            ssl=parts.scheme == "rediss+cluster",
            **(options | {"retry": AsyncRetry(NoBackoff(), 0)})))
    options |= {"retry_on_error": [], "retry_on_timeout": False}
    if parts.scheme not in SENTINEL_SCHEMES:
        return Redis.from_url(url, **options)
    hosts = [_host_port(item) for item in parts.netloc.rpartition("@")[2].split(",") if item]
    path = [piece for piece in parts.path.split("/") if piece]
    if not hosts or not path:
        raise ValueError("a sentinel URL needs host:port[,host:port]/service_name[/db]")
    password = unquote(parts.password) if parts.password else None
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts, sentinel_kwargs={"password": password, "socket_timeout": timeout or 5.0}, **options
    )
    return cast(Redis, sentinel.master_for(path[0], password=password, db=int(path[1]) if len(path) > 1 else 0,
                               ssl=parts.scheme == "rediss+sentinel"))


def _host_port(item: str, default_port: int = 26379) -> tuple[str, int]:
    host, _, port = item.rpartition(":")
    return (host.strip("[]"), int(port)) if host else (item, default_port)


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """The startup nodes, user name and password of a ``redis+cluster://`` URL (a cluster has database 0 only)."""
    parts = urlsplit(url)
    nodes = [_host_port(item, 6379) for item in parts.netloc.rpartition("@")[2].split(",") if item]
    if not nodes:
        raise ValueError("a cluster URL needs host:port[,host:port...]")
    if parts.path.strip("/") not in ("", "0") or parts.query:
        raise ValueError("a cluster URL takes no database and no options: redis+cluster://host:port[,host:port]")
    return (nodes, unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None)


def subscriber(url: str, attempt: int) -> Redis:
    """A client for the events subscription (no read timeout). In a cluster, ``PUBLISH`` reaches every node, so it
    subscribes on one of the startup nodes, the next one after each failure."""
    if urlsplit(url).scheme not in CLUSTER_SCHEMES:
        return connect(url, None)
    nodes, username, password = cluster_nodes(url)
    host, port = nodes[attempt % len(nodes)]
    return Redis(host=host, port=port, username=username, password=password, socket_connect_timeout=5.0,
                 socket_keepalive=True, ssl=url.startswith("rediss+"), retry=AsyncRetry(NoBackoff(), 0))


class RedisLink:
    """One process's link to Redis: a command client with a short timeout, and a subscription to the events
    channel (on its own connection, without a read timeout) that dispatches ``<kind> <payload>`` messages."""

    def __init__(self, url: str, *, key_prefix: str, timeout: float) -> None:
        self.prefix = key_prefix.encode()
        self.channel = self.prefix + b"events"
        self._url = url
        self._timeout = timeout
        self._client = connect(url, timeout)
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._handlers: dict[bytes, Handler] = {}
        self._on_resubscribed: list[Callable[[], None]] = []
        self._on_lost: list[Callable[[], None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._retry_at = 0.0
        self._backoff = MIN_BACKOFF
        self._failing = False
        self._probing = False

    @property
    def failing(self) -> bool:
        """True while this process treats Redis as down (from a failed command until a probe succeeds)."""
        return self._failing

    async def ping(self) -> bool:
        """Whether Redis answers PING now, within the command timeout (readiness; a success ends an outage)."""
        try:
            await self.call(lambda r: resolved(r.ping()))
        except SharedStoreUnavailable:
            return False
        return True

    @property
    def subscribed(self) -> bool:
        """True while this process receives events (so waiting for a notification makes sense)."""
        return self._subscribed.is_set()

    def on(self, kind: bytes, handler: Handler) -> None:
        self._handlers[kind] = handler

    def on_resubscribed(self, callback: Callable[[], None]) -> None:
        """Called when the subscription comes back after a loss (events may have been missed)."""
        self._on_resubscribed.append(callback)

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Called when the subscription is lost (nobody should wait for an event now)."""
        self._on_lost.append(callback)

    async def start(self, wait: float = 1.0) -> None:
        """Start listening; wait up to ``wait`` seconds for the subscription (Redis being down is not fatal)."""
        self._listener = asyncio.create_task(self._listen(), name="phantom-token redis events")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), wait)

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()

    async def call(self, operation: Callable[[Redis], Awaitable[T]], command: str = "command") -> T:
        """Run one command under the timeout; raise ``SharedStoreUnavailable`` instead of anything foreign.

        Waiting for one of the ``MAX_CONNECTIONS`` slots counts against the timeout; running out of time there
        is this process being busy, not Redis being down, so it skips Redis for this request only. ``command``
        names the span when tracing is on (``phantom_token.tracing``).
        """
        active = tracing.ACTIVE
        if active is not None:
            return await active.redis(command, self._call(operation))
        return await self._call(operation)

    async def _call(self, operation: Callable[[Redis], Awaitable[T]]) -> T:
        if self._failing and (self._probing or time.monotonic() < self._retry_at):
            raise SharedStoreUnavailable("backing off")
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise SharedStoreUnavailable("busy") from None
        probe = self._probing = self._failing
        try:
            async with asyncio.timeout_at(deadline):
                result = await operation(self._client)
        except (*REDIS_FAILURES, TimeoutError) as exc:
            self._failed(exc)
            raise SharedStoreUnavailable(type(exc).__name__) from exc
        finally:
            if probe:
                self._probing = False
            self._slots.release()
        self._succeeded(probe)
        return result

    async def publish(self, kind: bytes, payload: bytes) -> int:
        """Send an event to every subscribed process (this one included); how many received it."""
        received = await self.call(lambda r: resolved(r.publish(self.channel, kind + b" " + payload)), "PUBLISH")
        return received if isinstance(received, int) else 0

    def _failed(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        if not self._failing:
            self._failing = True
            log.warning("redis unavailable (%s: %s): serving from memory and introspection until it is back",
                        type(exc).__name__, str(exc) or "no answer in time")

    def _succeeded(self, probe: bool) -> None:
        """Only a probe ends an outage: a command sent before the failure may still complete after it."""
        if not self._failing:
            self._backoff = MIN_BACKOFF
        elif probe:
            self._failing = False
            self._backoff = MIN_BACKOFF
            log.warning("redis reachable again: shared cache in use")

    async def _listen(self) -> None:
        backoff, lost, attempt = MIN_BACKOFF, False, 0
        while True:
            listener = subscriber(self._url, attempt)
            try:
                await self._subscribe_and_dispatch(listener, lost)
            except REDIS_FAILURES as exc:
                self._failed(exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await listener.aclose()
            if self._subscribed.is_set():
                self._subscribed.clear()
                backoff = MIN_BACKOFF
                for callback in self._on_lost:
                    callback()
            lost = True
            attempt += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _subscribe_and_dispatch(self, listener: Redis, lost: bool) -> None:
        async with listener.pubsub() as pubsub:
            await pubsub.subscribe(self.channel)
            async for message in pubsub.listen():
                if message["type"] == "subscribe":
                    self._subscribed.set()
                    if lost:
                        for callback in self._on_resubscribed:
                            callback()
                elif message["type"] == "message":
                    self._dispatch(message["data"])

    def _dispatch(self, data: bytes) -> None:
        kind, _, payload = data.partition(b" ")
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(payload)


class RedisCache:
    """``TokenCache``: this process's ``MemoryCache`` (L1) in front of Redis (L2).

    A hit in Redis is copied into L1 with its absolute expiry. ``get_local`` never touches the network.
    """

    def __init__(self, memory: MemoryCache, link: RedisLink, codec: EntryCodec) -> None:
        self.memory = memory
        self._link = link
        self._codec = codec
        self._undecodable_logged = False
        # Commands by (operation, result), for metrics: ("get", "hit"|"miss"|"error"), ("set", "ok"|"error").
        self.operations: dict[tuple[str, str], int] = dict.fromkeys(
            (("get", "hit"), ("get", "miss"), ("get", "error"), ("set", "ok"), ("set", "error")), 0)
        link.on(b"purge", self._purged_elsewhere)
        link.on_resubscribed(memory.clear)

    def store_key(self, key: bytes) -> bytes:
        return self._link.prefix + key.hex().encode()

    def get_local(self, key: bytes, now: float) -> Cached | None:
        return self.memory.get_local(key, now)

    async def get(self, key: bytes, now: float) -> Cached | None:
        entry = self.memory.get_local(key, now)
        if entry is not None:
            return entry
        store_key = self.store_key(key)
        try:
            data = await self._link.call(lambda r: resolved(r.get(store_key)), "GET")
        except SharedStoreUnavailable:
            self._count("get", "error")
            return None
        entry = self._codec.decode(data, store_key) if isinstance(data, bytes) else None
        if isinstance(data, bytes) and entry is None:
            self._undecodable(store_key)
        if entry is None or entry.expires_at <= now:
            self._count("get", "miss")
            return None
        self._count("get", "hit")
        self.memory.put_local(key, entry)
        return entry

    def _count(self, operation: str, result: str) -> None:
        self.operations[operation, result] = self.operations.get((operation, result), 0) + 1

    async def put(self, key: bytes, entry: Cached) -> None:
        self.memory.put_local(key, entry)
        store_key = self.store_key(key)
        value = self._codec.encode(entry, store_key)
        deadline = int(entry.expires_at * 1000)
        try:
            await self._link.call(lambda r: resolved(r.set(store_key, value, pxat=deadline)), "SET")
        except SharedStoreUnavailable:
            self._count("set", "error")
        else:
            self._count("set", "ok")

    async def purge(self, key: bytes) -> Purged:
        local = self.memory.purge_local(key)
        store_key = self.store_key(key)
        try:
            removed = await self._link.call(lambda r: resolved(r.delete(store_key)), "DEL")
            notified = await self._link.publish(b"purge", key.hex().encode())
        except SharedStoreUnavailable:
            return Purged(local=local, complete=False)
        return Purged(local=local, shared=bool(removed), notified=notified)

    def _purged_elsewhere(self, payload: bytes) -> None:
        with contextlib.suppress(ValueError):
            self.memory.purge_local(bytes.fromhex(payload.decode("ascii")))

    def _undecodable(self, store_key: bytes) -> None:
        if not self._undecodable_logged:
            self._undecodable_logged = True
            log.warning("redis holds entries this process cannot read (e.g. %s...): another encryption_key, or "
                        "written without one; treated as misses (logged once)", store_key[:24].decode())
