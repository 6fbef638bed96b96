"""WebSocket (and any Upgrade) through the proxy: authorized first, then a tunnel both ways (real websockets client
and server on 127.0.0.1, a fake engine)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from phantom_token.config.settings import Route, Settings, Upstream
from phantom_token.frontends.proxy import start_proxy
from phantom_token.http.server import HttpServer, ServerLimits
from tests.integration.test_proxy import JWT, FakeAuthorizer, make, request, shutdown


class EchoServer:
    """A WebSocket server that echoes every message and records the Authorization of each handshake."""

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []
        self.paths: list[str] = []
        self.port = 0

    async def handle(self, ws: ServerConnection) -> None:
        self.authorizations.append(ws.request.headers.get("Authorization") if ws.request else None)
        self.paths.append(ws.request.path if ws.request else "")
        async for message in ws:
            if message == "bye":
                await ws.close()
                return
            await ws.send(message)


class Rig:
    def __init__(self, proxy: HttpServer, echo: EchoServer) -> None:
        self.proxy = proxy
        self.echo = echo

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.proxy.port}{path}"


async def start(tunnel_idle_timeout: float = 60.0) -> tuple[Rig, Server]:
    echo = EchoServer()
    server = await serve(echo.handle, "127.0.0.1", 0)
    echo.port = int(next(iter(server.sockets)).getsockname()[1])
    route = Route("r", "s", Upstream("http", "127.0.0.1", echo.port, "/base"), paths=("/api",))
    settings = Settings(routes=(route,), upstream_connect_timeout_seconds=2.0)
    proxy = await start_proxy(FakeAuthorizer(route), settings, "127.0.0.1", 0,
                              limits=ServerLimits(tunnel_idle_timeout=tunnel_idle_timeout))
    return Rig(proxy, echo), server


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r, server = await start()
    yield r
    r.proxy.close()
    await r.proxy.wait_closed()
    server.close()


async def test_a_websocket_is_authorized_then_tunnelled_both_ways(rig: Rig) -> None:
    async with connect(rig.url("/api/ws?room=1"), additional_headers={"Authorization": "Bearer opaque"}) as ws:
        for text in ("hello", "x" * 100_000, "again"):
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), 5) == text
    assert rig.echo.authorizations == [JWT]  # the upstream got the JWT, never the opaque token
    assert rig.echo.paths == ["/base/ws?room=1"]


async def test_a_refused_upgrade_gets_the_json_answer(rig: Rig) -> None:
    with pytest.raises(InvalidStatus) as caught:
        await connect(rig.url("/deny/ws"), additional_headers={"Authorization": "Bearer opaque"})
    response = caught.value.response
    assert response.status_code == 401
    assert json.loads(response.body or b"") == {"code": "unauthorized",
                                                 "message": "Missing, invalid or expired access token"}
    assert rig.echo.authorizations == []


async def test_when_the_upstream_closes_the_client_is_closed(rig: Rig) -> None:
    async with connect(rig.url("/api/ws"), additional_headers={"Authorization": "Bearer opaque"}) as ws:
        await ws.send("bye")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    await asyncio.wait_for(rig.proxy.state.all_closed.wait(), 5)


async def test_when_the_client_goes_the_upstream_connection_is_closed(rig: Rig) -> None:
    ws = await connect(rig.url("/api/ws"), additional_headers={"Authorization": "Bearer opaque"})
    await ws.send("ping")
    assert await asyncio.wait_for(ws.recv(), 5) == "ping"
    ws.transport.abort()  # no close frame: just gone
    await asyncio.wait_for(rig.proxy.state.all_closed.wait(), 5)


async def test_an_idle_tunnel_is_closed() -> None:
    r, server = await start(tunnel_idle_timeout=0.4)
    try:
        async with connect(r.url("/api/ws"), additional_headers={"Authorization": "Bearer opaque"},
                           ping_interval=None) as ws:
            await ws.send("once")
            assert await asyncio.wait_for(ws.recv(), 5) == "once"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)  # nothing moves: the proxy closes it
    finally:
        r.proxy.close()
        await r.proxy.wait_closed()
        server.close()


async def test_a_busy_tunnel_is_not_idle() -> None:
    r, server = await start(tunnel_idle_timeout=0.6)
    try:
        async with connect(r.url("/api/ws"), additional_headers={"Authorization": "Bearer opaque"},
                           ping_interval=None) as ws:
            for i in range(8):  # 1.6 s of traffic, longer than the idle timeout
                await ws.send(str(i))
                assert await asyncio.wait_for(ws.recv(), 5) == str(i)
                await asyncio.sleep(0.2)
    finally:
        r.proxy.close()
        await r.proxy.wait_closed()
        server.close()


@pytest.mark.parametrize("protocol", [b"h2c", b"websocket, h2c", b"TLS/1.0"])
async def test_only_a_websocket_upgrade_is_asked_of_the_upstream(protocol: bytes) -> None:
    # h2c smuggling: an upstream that switched to HTTP/2 would take requests the gateway never decides
    h = await make()
    try:
        raw = (b"GET /api/x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: " + protocol
               + b"\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        writer, responses = await request(h.port, raw)
        response = await responses.next()
        writer.close()
    finally:
        await shutdown(h)
    assert response.status == 200
    names = {name.lower() for name, _ in h.upstream.requests[0].headers}
    assert names.isdisjoint({"upgrade", "connection", "http2-settings"})
