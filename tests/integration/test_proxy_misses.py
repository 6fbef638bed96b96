"""Cache misses through the proxy with its real engine, introspection client and a demo AS on a socket: a miss runs
in one task (the request's, ``Engine.authorize(uncancelled=True)`` and ``SingleFlight.run_here``), and still no
request sharing a call can be failed by another: the client whose request runs the call may leave, the others get
their answer, from one call. The AS's failure or an inactive answer reach every request that waited for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from phantom_token.cache.memory import MemoryCache
from phantom_token.config.settings import PluginConfig, Route, Settings, Upstream
from phantom_token.core.engine import Engine
from phantom_token.core.ports import CacheEntry
from phantom_token.core.routes import Router
from phantom_token.core.single_flight import SingleFlight
from phantom_token.demo.authorization_server import DemoAuthorizationServer
from phantom_token.frontends.proxy import start_proxy
from phantom_token.http.client import HttpClient
from phantom_token.http.messages import Request, Response
from phantom_token.http.server import HttpServer, serve_app
from phantom_token.introspection.client import HttpIntrospector
from tests.integration.test_http_server import RawResponse, ResponseReader, open_conn


class GatedAS:
    """The demo AS, holding every introspection until ``release`` is set; ``answer`` replaces its answer."""

    def __init__(self) -> None:
        self.server = DemoAuthorizationServer("http://127.0.0.1")
        self.calls = 0
        self.release = asyncio.Event()
        self.answer: Response | None = None

    async def __call__(self, request: Request) -> Response:
        if request.path == "/oauth/introspect":
            self.calls += 1
            await self.release.wait()
            if self.answer is not None:
                return self.answer
        return await self.server(request)


async def api(request: Request) -> Response:
    return Response(200, [("Content-Type", "text/plain")], (request.header("authorization") or "").encode())


@dataclass
class Setup:
    auth: GatedAS
    flights: SingleFlight[CacheEntry | None]
    proxy: HttpServer


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    auth = GatedAS()
    as_server = await serve_app(auth, "127.0.0.1", 0)
    upstream = await serve_app(api, "127.0.0.1", 0)
    plugin = PluginConfig(f"http://127.0.0.1:{as_server.port}/oauth/introspect", "introspection-client",
                          "demo-introspection-secret")
    route = Route("api", "svc", Upstream("http", "127.0.0.1", upstream.port, ""), paths=("/api",), plugin=plugin)
    client = HttpClient()
    flights = SingleFlight[CacheEntry | None]()
    engine = Engine(Router((route,)), MemoryCache(100), HttpIntrospector(client), coordinator=flights)
    proxy = await start_proxy(engine, Settings((route,)), "127.0.0.1", 0)
    yield Setup(auth, flights, proxy)
    for server in (proxy, upstream, as_server):
        server.close()
        await server.wait_closed()
    await client.aclose()


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def ask(port: int, token: str) -> tuple[asyncio.StreamWriter, ResponseReader]:
    reader, writer = await open_conn(port)
    writer.write(f"GET /api/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    return writer, ResponseReader(reader)


async def answers(s: Setup, token: str, *, leaving_first: bool = False) -> list[RawResponse]:
    """Three requests for ``token`` on three connections while its one call is held; the first, whose task runs the
    call, leaves before the answer when ``leaving_first``. The answers of those that stayed."""
    first = await ask(s.proxy.port, token)
    await until(lambda: s.auth.calls == 1)
    others = [await ask(s.proxy.port, token) for _ in range(2)]
    await until(lambda: s.flights.waits == 2)  # both wait for the first's call
    if leaving_first:  # its connection reset, as the loop reports it (reading is paused while a verdict is made,
        # so the proxy would only notice the client's own close when it writes): connection_lost, handle_abort
        port = first[0].get_extra_info("sockname")[1]
        gone = next(p for p in s.proxy.state.connections if p.conn.peer is not None and p.conn.peer[1] == port)
        gone._out.transport.abort()  # type: ignore[union-attr]
        first[0].close()
        await until(lambda: len(s.proxy.state.connections) == 2)  # the proxy saw it go
    s.auth.release.set()
    staying = others if leaving_first else [first, *others]
    responses = [await reader.next() for _, reader in staying]
    for writer, _ in staying:
        writer.close()
    return responses


async def test_the_client_whose_request_runs_the_call_leaving_fails_no_other(setup: Setup) -> None:
    token = setup.auth.server.issue("demo-client", ["read"])
    responses = await answers(setup, token, leaving_first=True)
    assert [r.status for r in responses] == [200, 200]
    assert responses[0].body == responses[1].body
    assert responses[0].body.startswith(b"Bearer ey")
    assert token.encode() not in responses[0].body
    assert setup.auth.calls == 1
    assert len(setup.flights) == 0
    # the answer was cached: the next request is a hit, no call
    writer, reader = await ask(setup.proxy.port, token)
    assert (await reader.next()).status == 200
    writer.close()
    assert setup.auth.calls == 1


async def test_an_as_failing_during_the_call_is_a_502_for_every_request_that_waited(setup: Setup) -> None:
    setup.auth.answer = Response(500, [], b"")
    token = setup.auth.server.issue("demo-client", ["read"])
    assert [r.status for r in await answers(setup, token)] == [502, 502, 502]
    assert setup.auth.calls == 1
    assert len(setup.flights) == 0


async def test_an_inactive_answer_is_a_401_for_every_request_that_waited(setup: Setup) -> None:
    responses = await answers(setup, "never-issued-token")
    assert [r.status for r in responses] == [401, 401, 401]
    assert all(r.header("www-authenticate") == 'Bearer error="invalid_token"' for r in responses)
    assert setup.auth.calls == 1
