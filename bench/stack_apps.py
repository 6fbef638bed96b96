"""The same toy gateway on each HTTP stack that ``bench/stacks.py`` compares: only the cache-hit path.

Each app reads ``Authorization: Bearer <token>``, finds the token in a dict (the cache), forwards the request to the
upstream with ``Authorization: Bearer <jwt>`` over a keep-alive client, and returns the upstream's status and body.
No routes, no limits, no hop-by-hop handling: a lower bound of what each stack costs for this job, to compare with
``phantom-token serve`` doing the whole job. The upstream is ``STACK_UPSTREAM`` (http://127.0.0.1:PORT).

Not part of the package: the stacks (granian, uvicorn, aiohttp) are not its dependencies.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
from aiohttp import web

TOKEN = "bench-stack-token"
JWT = "Bearer eyJhbGciOiJFUzI1NiJ9." + "x" * 300 + "." + "y" * 86  # the demo AS's JWT size (413 bytes)
CACHE = {TOKEN: JWT}
UPSTREAM = os.environ.get("STACK_UPSTREAM", "http://127.0.0.1:9") + "/api/bench"

_session: aiohttp.ClientSession | None = None


def _client() -> aiohttp.ClientSession:
    global _session
    if _session is None:  # made on the first request, inside the server's event loop
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60))
    return _session


async def _forward(authorization: str | None) -> tuple[int, bytes]:
    jwt = CACHE.get(authorization[7:]) if authorization and authorization[:7] == "Bearer " else None
    if jwt is None:
        return 401, b'{"code":"unauthorized"}'
    async with _client().get(UPSTREAM, headers={"Authorization": jwt}) as response:
        return response.status, await response.read()


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI (uvicorn, granian --interface asgi)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
    status, body = await _forward(authorization)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Rsgi:
    """RSGI (granian --interface rsgi)."""

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        status, body = await _forward(scope.headers.get("authorization"))
        protocol.response_bytes(status, [("content-type", "text/plain")], body)


rsgi = Rsgi()


async def _aiohttp_handler(request: web.Request) -> web.Response:
    status, body = await _forward(request.headers.get("Authorization"))
    return web.Response(status=status, body=body, content_type="text/plain")


def aiohttp_app(argv: list[str] | None = None) -> web.Application:
    """aiohttp's own server (``python -m aiohttp.web -H 127.0.0.1 -P PORT stack_apps:aiohttp_app``)."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", _aiohttp_handler)
    return app
