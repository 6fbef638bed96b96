"""The composition root: builds every object from the parsed settings and owns their lifespan.

Start order: HTTP client -> cache (and its Redis link, when configured) -> engine -> front door -> admin
listener; stop in reverse. A ready server
prints one line containing ``listening on http://HOST:PORT``. SIGTERM/SIGINT drain in-flight requests, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from phantom_token.admin import admin_handler
from phantom_token.cache.purge import Purger, namespaces
from phantom_token.cache.stack import build_cache
from phantom_token.config.settings import Settings
from phantom_token.core.engine import Engine
from phantom_token.core.routes import Router
from phantom_token.http.client import HttpClient
from phantom_token.http.server import serve_app
from phantom_token.introspection.client import HttpIntrospector
from phantom_token.metrics import Metrics
from phantom_token.minting import build_minter

log = logging.getLogger("phantom_token")

DRAIN_SECONDS = 30.0


class Closable(Protocol):
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"listen address {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def display(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Application:
    """One worker process: the engine and its adapters, a front door, and optionally the admin listener."""

    def __init__(self, settings: Settings, mode: str) -> None:
        self.settings = settings
        self.mode = mode
        self.metrics = Metrics()
        self.client = HttpClient()
        self.caches = build_cache(settings)
        self.cache = self.caches.cache
        self.introspector = HttpIntrospector(self.client)
        self.minter = build_minter(settings)  # None unless a route mints JWTs (json/signed) or a key is configured
        self.engine = Engine(Router(settings.routes), self.cache, self.introspector, metrics=self.metrics,
                             coordinator=self.caches.coordinator, minter=self.minter)
        self._servers: list[Closable] = []
        self._ready = False

    async def start(self, listen: str, admin_listen: str | None, *, reuse_port: bool = False) -> list[str]:
        for route in self.settings.routes:
            if route.plugin is not None and not route.plugin.verify_ssl:
                log.warning("route %r: verify_ssl is false, TLS certificates of %s are not checked",
                            route.name, route.plugin.endpoint_label)
        host, port = parse_listen(listen)
        await self.open()
        front = await self._front_door(host, port, reuse_port)
        self._servers.append(front)
        urls = [display(host, _bound_port(front, port))]
        if admin_listen:
            admin_host, admin_port = parse_listen(admin_listen)
            purger = Purger(self.cache, namespaces(self.settings.routes))
            handler = admin_handler(self.metrics, admin_token=self.settings.admin_token, ready=lambda: self._ready,
                                    purge=purger.purge, jwks=self.minter.jwks if self.minter else None)
            admin = await serve_app(handler, admin_host, admin_port)
            self._servers.append(admin)
            urls.append(display(admin_host, _bound_port(admin, admin_port)))
        self._ready = True
        return urls

    async def _front_door(self, host: str, port: int, reuse_port: bool) -> Closable:
        if self.mode == "serve":
            from phantom_token.frontends.proxy import start_proxy

            return await start_proxy(self.engine, self.settings, host, port, reuse_port=reuse_port,
                                     observe=self.metrics.observe_response)
        if self.mode == "authz":
            from phantom_token.frontends.decisions import start_decisions

            return await start_decisions(self.engine, self.settings, host, port, reuse_port=reuse_port,
                                         observe=self.metrics.observe_response)
        raise ValueError(f"unknown mode {self.mode!r}")

    async def stop(self) -> None:
        self._ready = False
        for server in self._servers:
            server.close()
        try:
            await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in self._servers)), DRAIN_SECONDS)
        except TimeoutError:
            log.warning("drain timed out after %.0fs; closing remaining connections", DRAIN_SECONDS)
        await self.close()

    async def open(self) -> None:
        """Open what the engine needs before the first request (the cache's shared store, introspection
        discovery). The front doors' listeners call it from ``start``; the ASGI middleware from its lifespan."""
        await self.caches.start()
        await self.introspector.start(route.plugin for route in self.settings.routes if route.plugin is not None)

    async def close(self) -> None:
        """Close the HTTP client and the cache (the counterpart of ``open``)."""
        await self.client.aclose()
        await self.caches.aclose()


def _bound_port(server: object, requested: int) -> int:
    """The port actually bound (differs from ``requested`` when it was 0)."""
    sockets = getattr(server, "sockets", None)
    if requested == 0 and sockets:
        return int(sockets[0].getsockname()[1])
    return requested


async def run_until_signalled(start: Callable[[], Awaitable[list[str]]], stop: Callable[[], Awaitable[None]],
                              announce: Callable[[list[str]], None]) -> None:
    """Start, announce, wait for SIGTERM or SIGINT, then stop gracefully."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    urls = await start()
    announce(urls)
    await stopping.wait()
    await stop()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it is available (it is a dependency), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - plain asyncio still works, only slower
        asyncio.run(main)
    else:
        uvloop.run(main)
