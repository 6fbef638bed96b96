"""Cache misses against a real authorization server on a socket (the demo AS, or a raw one that misbehaves): the
introspection client keeps its connections to the AS open and reuses them across bursts of concurrent misses, and
every way the AS's connection can fail is still ``IntrospectionUnavailable`` (the engine's 502), never a pass."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from phantom_token.config.settings import PluginConfig
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.ports import Active
from phantom_token.demo.authorization_server import DemoAuthorizationServer
from phantom_token.http.client import HttpClient
from phantom_token.http.messages import Request, Response
from phantom_token.http.server import HttpServer, serve_app
from phantom_token.introspection.client import HttpIntrospector

CONCURRENT = 50  # the benchmark's wrk connections: a burst of this many distinct new tokens


class CountingAS:
    """The demo AS behind a wrapper that records which client connection (peer address) each call came on, and
    holds every introspection until ``release`` is set, so a burst is really in flight at once."""

    def __init__(self) -> None:
        self.server = DemoAuthorizationServer("http://127.0.0.1")
        self.peers: list[tuple[str, int] | None] = []
        self.waiting = 0
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()
        self.expect = 0

    async def __call__(self, request: Request) -> Response:
        self.peers.append(request.client)
        if request.path == "/oauth/introspect":
            self.waiting += 1
            if self.waiting >= self.expect:
                self.arrived.set()
            await self.release.wait()
        return await self.server(request)


@pytest.fixture
async def counting_as() -> AsyncIterator[tuple[CountingAS, HttpServer]]:
    app = CountingAS()
    srv = await serve_app(app, "127.0.0.1", 0)
    yield app, srv
    srv.close()
    await srv.wait_closed()


def plugin_for(port: int) -> PluginConfig:
    return PluginConfig(introspection_endpoint=f"http://127.0.0.1:{port}/oauth/introspect",
                        client_id="introspection-client", client_secret="demo-introspection-secret")


async def burst(app: CountingAS, introspector: HttpIntrospector, plugin: PluginConfig,
                tokens: list[str]) -> list[object]:
    """``tokens`` introspected at once: the AS answers only when all of them are in flight."""
    app.waiting, app.expect = 0, len(tokens)
    app.release.clear()
    app.arrived.clear()
    calls = [asyncio.ensure_future(introspector.introspect(token, plugin)) for token in tokens]
    async with asyncio.timeout(10):
        await app.arrived.wait()
    app.release.set()
    async with asyncio.timeout(10):
        return list(await asyncio.gather(*calls))


async def test_bursts_of_concurrent_misses_reuse_the_connections_to_the_as(
        counting_as: tuple[CountingAS, HttpServer]) -> None:
    app, srv = counting_as
    client = HttpClient()
    introspector = HttpIntrospector(client)
    plugin = plugin_for(srv.port)
    try:
        first = [app.server.issue("demo-client", ["read"]) for _ in range(CONCURRENT)]
        second = [app.server.issue("demo-client", ["read"]) for _ in range(CONCURRENT)]
        answers = await burst(app, introspector, plugin, first)
        opened = set(app.peers)
        app.peers.clear()
        answers += await burst(app, introspector, plugin, second)
    finally:
        await client.aclose()
    assert all(isinstance(answer, Active) for answer in answers)
    assert len(opened) == CONCURRENT  # one connection per call in flight (no pipelining of POSTs)
    assert set(app.peers) <= opened  # the second burst opened no connection: all 50 were kept and reused
    assert len(set(app.peers)) == CONCURRENT


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
JWT_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/jwt\r\nCache-Control: max-age=60\r\n"
              b"Content-Length: %d\r\n\r\n%b")


async def raw_as(handler: RawHandler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(
        b"content-length:")))
    return head + await reader.readexactly(length)


async def test_an_as_that_closes_its_idle_connection_costs_no_failed_miss() -> None:
    """The AS answers keep-alive, then closes the idle connection (its keep-alive timeout): the next miss must not
    be written to the dead connection and fail; it opens another."""
    server = DemoAuthorizationServer("http://127.0.0.1")
    token = server.issue("demo-client", ["read"])
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        jwt = server.signing_key.sign({"sub": "demo-client", "scope": "read", "exp": 4102444800}).encode()
        writer.write(JWT_ANSWER % (len(jwt), jwt))
        await writer.drain()
        writer.close()  # no Connection: close: the client believes the connection is reusable

    srv, port = await raw_as(handler)
    client = HttpClient()
    try:
        introspector = HttpIntrospector(client)
        first = await introspector.introspect(token, plugin_for(port))
        for _ in range(100):  # until the client's loop has seen the close (no sleep: the loop's own turns)
            if not client.pool().idle_list(("http", "127.0.0.1", port, None)):
                break
            await asyncio.sleep(0)
        second = await introspector.introspect(token, plugin_for(port))
    finally:
        await client.aclose()
        srv.close()
    assert isinstance(first, Active)
    assert isinstance(second, Active)
    assert connections == 2


@pytest.mark.parametrize(("reply", "kind"), [
    (b"", "down"),  # closed before any answer
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "down"),  # closed in the middle of the body
    (b"NOT HTTP AT ALL\r\n\r\n", "down"),  # garbage instead of a response
])
async def test_an_as_connection_that_fails_is_unavailable(reply: bytes, kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    srv, port = await raw_as(handler)
    client = HttpClient()
    try:
        with pytest.raises(IntrospectionUnavailable) as raised:
            await HttpIntrospector(client).introspect("a-token", plugin_for(port))
    finally:
        await client.aclose()
        srv.close()
    assert raised.value.kind == kind


async def test_a_garbage_200_answer_is_unavailable_and_the_connection_is_reused() -> None:
    """A 200 whose body is not a JWT is the AS's fault (502), not a pass; the connection stays usable."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            body = b"<html>this is not a JWT</html>"
            writer.write(JWT_ANSWER % (len(body), body))
            await writer.drain()
        writer.close()

    srv, port = await raw_as(handler)
    client = HttpClient()
    try:
        introspector = HttpIntrospector(client)
        for _ in range(2):
            with pytest.raises(IntrospectionUnavailable, match="not a JWT"):
                await introspector.introspect("a-token", plugin_for(port))
    finally:
        await client.aclose()
        srv.close()
    assert connections == 1


async def test_different_headers_to_one_url_are_sent_as_given() -> None:
    """The client remembers encoded request heads per method, URL and header list: two header lists to the same
    URL must each arrive as sent (nothing of one call's head in another's)."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                seen.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                break
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
        writer.close()

    srv, port = await raw_as(handler)
    client = HttpClient()
    url = f"http://127.0.0.1:{port}/oauth/introspect"
    try:
        for headers, body in (([("Authorization", "Basic YQ==")], b"token=one"), ([("Accept", "x/y")], b"token=two"),
                              ([("Authorization", "Basic YQ==")], b"token=three!")):
            await client.request("POST", url, headers, body, timeout=5)
    finally:
        await client.aclose()
        srv.close()
    host = f"Host: 127.0.0.1:{port}".encode()
    assert seen == [
        b"POST /oauth/introspect HTTP/1.1\r\n" + host + b"\r\nAuthorization: Basic YQ==\r\nContent-Length: 9\r\n\r\n"
        b"token=one",
        b"POST /oauth/introspect HTTP/1.1\r\n" + host + b"\r\nAccept: x/y\r\nContent-Length: 9\r\n\r\ntoken=two",
        b"POST /oauth/introspect HTTP/1.1\r\n" + host + b"\r\nAuthorization: Basic YQ==\r\nContent-Length: 12\r\n\r\n"
        b"token=three!",
    ]


async def test_the_timeout_bounds_the_whole_call_even_when_the_as_drips() -> None:
    """An AS that sends a byte now and then never trips the connection's between-reads timer; the call's own deadline
    (one timer for the whole call) still ends it with a ``RequestTimeout``, which the adapter reports as "timeout"."""
    stop = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        while not stop.is_set():
            writer.write(b"x")
            await writer.drain()
            try:
                async with asyncio.timeout(0.05):
                    await stop.wait()
            except TimeoutError:
                pass
        writer.close()

    srv, port = await raw_as(handler)
    client = HttpClient()
    options = PluginConfig(introspection_endpoint=f"http://127.0.0.1:{port}/oauth/introspect", client_id="c",
                           client_secret="s", introspection_timeout_seconds=0.3)
    try:
        with pytest.raises(IntrospectionUnavailable) as raised:
            await HttpIntrospector(client).introspect("a-token", options)
    finally:
        stop.set()
        await client.aclose()
        srv.close()
    assert raised.value.kind == "timeout"
    assert "did not answer within 0.3s" in str(raised.value)


class ScriptedAS:
    """A raw AS whose every request (counted over all connections) gets what ``script`` says, by its number from 0:
    ``answer`` (a JWT, the connection kept), ``close`` (the request read, the connection closed unanswered: an idle
    close racing the request), ``reset`` (the same with an RST), ``partial`` (a few bytes of a head, then closed);
    past the end of the script, ``answer``. ``idle_close``: after an answer, close the connection if no request
    follows within that many seconds (a keep-alive timeout; 0: close at once, no ``Connection: close`` sent)."""

    def __init__(self, script: list[str], idle_close: float | None = None) -> None:
        self.script = script
        self.idle_close = idle_close
        self.requests = 0
        self.connections = 0
        self.key = DemoAuthorizationServer("http://127.0.0.1").signing_key

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = False  # on this connection: the idle time counts from its last answer
        try:
            while True:
                try:
                    if self.idle_close is not None and answered:
                        async with asyncio.timeout(self.idle_close):
                            await read_request(reader)
                    else:
                        await read_request(reader)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                action = self.script[self.requests] if self.requests < len(self.script) else "answer"
                self.requests += 1
                if action == "reset":
                    writer.transport.abort()
                    return
                if action == "close":
                    return
                if action == "partial":
                    writer.write(b"HTTP/1.1 20")
                    await writer.drain()
                    return
                jwt = self.key.sign({"sub": "demo-client", "scope": "read", "exp": 4102444800}).encode()
                writer.write(JWT_ANSWER % (len(jwt), jwt))
                await writer.drain()
                answered = True
                if self.idle_close == 0:
                    return
        finally:
            writer.close()


async def run_script(app: ScriptedAS, calls: int, *, gap: Callable[[int], float] = lambda _: 0.0,
                     exchange: bool = False) -> list[object]:
    """``calls`` introspections one after the other (``gap(i)`` seconds apart: an idle period, the scenario itself);
    each result, or the ``IntrospectionUnavailable`` it raised. ``exchange``: the second call is a token exchange's
    POST (``HttpIntrospector.post``) instead, which must never be sent twice."""
    srv = await asyncio.start_server(app, "127.0.0.1", 0)
    port = int(srv.sockets[0].getsockname()[1])
    client = HttpClient()
    introspector = HttpIntrospector(client)
    plugin = plugin_for(port)
    results: list[object] = []
    try:
        for i in range(calls):
            if i and gap(i):
                await asyncio.sleep(gap(i))
            try:
                if exchange and i == 1:
                    response = await introspector.post(f"http://127.0.0.1:{port}/token", [], b"x=1", plugin)
                    results.append(response.status)
                else:
                    results.append(await introspector.introspect("a-token", plugin))
            except IntrospectionUnavailable as exc:
                results.append(exc)
    finally:
        await client.aclose()
        srv.close()
    return results


@pytest.mark.parametrize("drop", ["close", "reset"])
async def test_a_reused_connection_the_as_drops_unanswered_is_retried_once_on_a_new_one(drop: str) -> None:
    """The AS closes (or resets) the idle connection just as the next introspection is written on it (taken from the
    pool without a poll: it was idle less than POLL_AFTER_IDLE): the call goes again on a new connection, and the
    client sees an answer, never a 502."""
    app = ScriptedAS(["answer", drop])
    results = await run_script(app, 3)
    assert all(isinstance(result, Active) for result in results), results
    assert app.requests == 4  # the dropped one was sent again
    assert app.connections == 2  # the new connection is kept for the third call


@pytest.mark.parametrize("idle_close", [0.0, 0.005, 0.02])
async def test_an_as_that_closes_idle_connections_never_fails_a_miss(idle_close: float) -> None:
    """An AS closing its keep-alive connections at once after each answer or after a short idle time, while the
    calls come at gaps around that time: the close races the next request on the connection, and no call fails."""
    app = ScriptedAS([], idle_close=idle_close)
    results = await run_script(app, 30, gap=lambda i: (i % 5) * idle_close / 2)
    assert all(isinstance(result, Active) for result in results), results
    assert app.requests >= 30


async def test_the_repetition_is_once_and_only_for_a_request_nothing_of_whose_answer_arrived() -> None:
    """Dropped again on the new connection: a 502 ("down"), after exactly one repetition. A partial answer on the
    reused connection: a 502 without any repetition (the AS may have done the work)."""
    app = ScriptedAS(["answer", "close", "close"])
    results = await run_script(app, 2)
    assert isinstance(results[0], Active)
    assert isinstance(results[1], IntrospectionUnavailable)
    assert results[1].kind == "down"
    assert app.requests == 3
    app = ScriptedAS(["answer", "partial"])
    results = await run_script(app, 2)
    assert isinstance(results[1], IntrospectionUnavailable)
    assert results[1].kind == "down"
    assert app.requests == 2


async def test_a_request_that_is_not_repeatable_is_never_sent_twice() -> None:
    """A token exchange's POST on a reused connection the AS drops unanswered: a failure, one request (the
    introspection before it had used the connection)."""
    app = ScriptedAS(["answer", "close"])
    results = await run_script(app, 2, exchange=True)
    assert isinstance(results[0], Active)
    assert isinstance(results[1], IntrospectionUnavailable)
    assert results[1].kind == "down"
    assert app.requests == 2
