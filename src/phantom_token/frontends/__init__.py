"""Front doors: turn an HTTP request into a ``RequestInfo``, ask the engine, apply the ``Verdict``.

They never decide a verdict themselves; ``Authorizer`` is all they know of the engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from phantom_token.config.settings import Settings
from phantom_token.core.request import RequestInfo
from phantom_token.core.verdict import Verdict, server_error
from phantom_token.http.connection import ServerLimits


class Authorizer(Protocol):
    """The engine as the front doors see it."""

    def try_authorize(self, request: RequestInfo) -> Verdict | None:
        """The verdict when no I/O is needed (a cache hit or a cheap denial); None means call ``authorize``."""
        ...

    async def authorize(self, request: RequestInfo, *, uncancelled: bool = False) -> Verdict:
        """The verdict, introspecting the token when needed. ``uncancelled``: the caller never cancels the task
        awaiting this (``Engine.authorize``)."""
        ...


logger: Final = logging.getLogger("phantom_token.frontends")


async def authorize(engine: Authorizer, request: RequestInfo) -> Verdict:
    """The engine's full verdict. The engine answers its known faults itself (502 ``server_error`` with a log
    line); anything else it raises is still a 502, logged by type only (its message may quote the request)."""
    try:
        return await engine.authorize(request)
    except Exception as exc:
        return authorization_failed(exc)


def authorization_failed(exc: Exception) -> Verdict:
    """``authorize``'s answer when the engine raised ``exc``: a 502, logged by type only. (The proxy awaits the
    engine itself with this as its ``except``: one coroutine level fewer per cache miss, this module being
    interpreted.)"""
    logger.error("authorization failed: %s", type(exc).__name__)
    return server_error()


async def authorize_timed(engine: Authorizer, request: RequestInfo) -> tuple[Verdict, float]:
    """``authorize``, and how long it took in seconds (the access log's introspection time; only the async path,
    a cache miss, comes here, so the clock costs nothing on a hit)."""
    started = time.perf_counter()
    verdict = await authorize(engine, request)
    return verdict, time.perf_counter() - started


Observe = Callable[[int, str, str | None], None]
"""Called once per answer with its status, its outcome (``allowed``, the ``Deny`` code, or the front door's own word:
``refused``, ``aborted``) and its route's name (None: no route matched); ``Metrics.observe_request`` counts them."""



def listener_limits(settings: Settings) -> ServerLimits:
    """The limits of a front door's listener, from the ``phantom_token`` section."""
    return ServerLimits(max_header_bytes=settings.max_header_bytes, max_body_bytes=settings.max_body_bytes,
                        send_timeout=settings.send_timeout_seconds,
                        tunnel_idle_timeout=settings.upstream_timeout_seconds)


__all__ = ["Authorizer", "Observe", "authorization_failed", "authorize", "authorize_timed", "listener_limits"]
