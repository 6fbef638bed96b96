"""The pooled HTTP/1.1 client on real sockets: reuse, stale connections, framings, and each error type."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from phantom_token.http.client import (
    BodyTooLarge,
    ConnectError,
    ConnectionPool,
    HttpClient,
    ProtocolError,
    RequestTimeout,
    StaleConnection,
    _BufferedSink,
    _target,
    head_fields,
)
from phantom_token.http.messages import Request, Response
from phantom_token.http.server import HttpServer, ServerLimits, serve_app
from tests.integration.test_http_server import TIMEOUT

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    http = HttpClient()
    yield http
    await http.aclose()


async def raw_server(handler: RawHandler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def test_request_reuses_the_pooled_connection(client: HttpClient) -> None:
    peers: list[tuple[str, int] | None] = []

    async def app(request: Request) -> Response:
        peers.append(request.client)
        return Response(200, [("X-Case", "Kept")], request.body[::-1])

    srv = await serve_app(app, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{srv.port}/p?q=1"
        first = await client.request("POST", url, [("Content-Type", "text/plain")], b"abc", timeout=TIMEOUT)
        second = await client.request("GET", url, [], timeout=TIMEOUT)
    finally:
        srv.close()
        await srv.wait_closed()
    assert (first.status, first.body, first.header("x-case")) == (200, b"cba", "Kept")
    assert ("X-Case", "Kept") in first.headers  # names as received
    assert second.status == 200
    assert peers[0] == peers[1]


async def test_connection_closed_by_the_server_is_not_reused(client: HttpClient) -> None:
    peers: list[tuple[str, int] | None] = []

    async def app(request: Request) -> Response:
        peers.append(request.client)
        return Response(200)

    srv = await serve_app(app, "127.0.0.1", 0, limits=ServerLimits(keepalive_timeout=0.05))
    try:
        url = f"http://127.0.0.1:{srv.port}/"
        await client.request("GET", url, [], timeout=TIMEOUT)
        async with asyncio.timeout(TIMEOUT):
            await srv.state.all_closed.wait()  # the server dropped the idle connection
        response = await client.request("GET", url, [], timeout=TIMEOUT)
    finally:
        srv.close()
        await srv.wait_closed()
    assert response.status == 200
    assert peers[0] != peers[1]


async def test_connect_error(client: HttpClient) -> None:
    srv, port = await raw_server(lambda r, w: asyncio.sleep(0))
    srv.close()
    await srv.wait_closed()
    with pytest.raises(ConnectError):
        await client.request("GET", f"http://127.0.0.1:{port}/", [], timeout=TIMEOUT)


async def test_request_timeout(client: HttpClient) -> None:
    never = asyncio.Event()

    async def app(request: Request) -> Response:
        await never.wait()
        return Response(200)

    srv = await serve_app(app, "127.0.0.1", 0)
    try:
        with pytest.raises(RequestTimeout, match=rf"^http://127\.0\.0\.1:{srv.port} did not answer within 0\.2s$"):
            await client.request("GET", f"http://127.0.0.1:{srv.port}/", [], timeout=0.2)
    finally:
        never.set()
        srv.close()
        await srv.wait_closed()


async def test_body_too_large(client: HttpClient) -> None:
    async def app(request: Request) -> Response:
        return Response(200, [], b"x" * 5000)

    srv = await serve_app(app, "127.0.0.1", 0)
    try:
        with pytest.raises(BodyTooLarge):
            await client.request("GET", f"http://127.0.0.1:{srv.port}/", [], timeout=TIMEOUT, max_body=1000)
        ok = await client.request("GET", f"http://127.0.0.1:{srv.port}/", [], timeout=TIMEOUT, max_body=5000)
    finally:
        srv.close()
        await srv.wait_closed()
    assert len(ok.body) == 5000


@pytest.mark.parametrize("reply", [b"not http at all\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"])
async def test_protocol_error(client: HttpClient, reply: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    srv, port = await raw_server(handler)
    try:
        with pytest.raises(ProtocolError):
            await client.request("GET", f"http://127.0.0.1:{port}/", [], timeout=TIMEOUT)
    finally:
        srv.close()


@pytest.mark.parametrize(("method", "reply", "body"), [
    ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"abcde"),
    ("GET", b"HTTP/1.1 200 OK\r\n\r\nuntil-close", b"until-close"),
    ("GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", b"ok"),
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", b""),
])
async def test_response_framings(client: HttpClient, method: str, reply: bytes, body: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        if b"Content-Length" not in reply and b"chunked" not in reply:
            writer.close()

    srv, port = await raw_server(handler)
    try:
        response = await client.request(method, f"http://127.0.0.1:{port}/", [], timeout=TIMEOUT)
    finally:
        srv.close()
    assert response.body == body
    assert response.status in (200, 201)


async def test_server_is_usable_after_pool_close() -> None:
    async def app(request: Request) -> Response:
        return Response(204)

    srv: HttpServer = await serve_app(app, "127.0.0.1", 0)
    http = HttpClient()
    try:
        assert (await http.request("GET", f"http://127.0.0.1:{srv.port}/", [], timeout=TIMEOUT)).status == 204
        await http.aclose()
        assert (await http.request("GET", f"http://127.0.0.1:{srv.port}/", [], timeout=TIMEOUT)).status == 204
    finally:
        await http.aclose()
        srv.close()
        await srv.wait_closed()


async def test_the_pool_keeps_one_idle_list_per_origin_bounded_and_empties_it_on_close() -> None:
    """Callers keep the list ``idle_list`` gives (the proxy's origins do): releases land in it, ``take`` empties it,
    the bound holds, and closing the pool closes what waits there and leaves the held list empty."""
    async def app(request: Request) -> Response:
        return Response(204)

    srv = await serve_app(app, "127.0.0.1", 0)
    pool = ConnectionPool(max_idle_per_origin=1)
    key = ("http", "127.0.0.1", srv.port, None)
    try:
        held = pool.idle_list(key)
        assert pool.idle_list(key) is held
        first, second = await pool.connect(key, TIMEOUT), await pool.connect(key, TIMEOUT)
        pool.release(first)
        pool.release(second)  # over the bound: closed, not kept
        assert held == [first]
        assert first.usable
        assert not second.usable
        assert pool.take(held) is first
        assert held == []
        assert pool.take(held) is None
        pool.release(first)
        await pool.aclose()
        assert held == []
        assert not first.usable
    finally:
        await pool.aclose()
        srv.close()
        await srv.wait_closed()


async def test_a_pooled_connection_whose_transport_is_closing_is_never_written_to() -> None:
    """A pooled connection whose transport is closing before its ``connection_lost`` ran (the peer's FIN read in
    this loop turn, a failed write): ``acquire`` (the whole-body client) passes over it; ``take`` (the proxy, which
    calls ``begin`` next) may hand it out, and ``begin`` then refuses it with ``StaleConnection`` before writing a
    byte; ``release`` may put it back, and its ``connection_lost`` takes it out again."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(65536))
        writer.close()

    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    pool = ConnectionPool()
    key = ("http", "127.0.0.1", port, None)
    try:
        held = pool.idle_list(key)
        first, second = await pool.connect(key, TIMEOUT), await pool.connect(key, TIMEOUT)
        pool.release(first)
        pool.release(second)
        assert first.transport is not None
        assert second.transport is not None
        second.transport.close()  # the last released, the first one taken
        assert pool.acquire(key) is first  # passed over the closing one
        assert held == []
        pool.release(first)
        first.transport.close()
        assert pool.take(held) is first  # the proxy's way: begin decides
        sink = _BufferedSink(asyncio.get_running_loop().create_future(), first, 1 << 20, _target("http://x/"), TIMEOUT)
        with pytest.raises(StaleConnection):
            first.begin(sink, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", head_request=False, timeout=TIMEOUT,
                        chunked=False)
        third = await pool.connect(key, TIMEOUT)
        assert third.transport is not None
        third.transport.close()
        pool.release(third)  # closing, not closed: back in the list until connection_lost
        assert held == [third]
        for _ in range(50):
            if not held:
                break
            await asyncio.sleep(0.01)
        assert held == []
        await asyncio.sleep(0.05)
        assert seen in ([], [b""], [b"", b""], [b"", b"", b""])  # not one byte of a request was written
    finally:
        await pool.aclose()
        srv.close()
        await srv.wait_closed()


async def test_response_headers_are_the_heads_fields_as_received(client: HttpClient) -> None:
    """``ClientResponse.headers``: every field of the head in order, names as sent, values without the spaces and
    tabs around them, bytes as latin-1 (what ``head_fields`` reads, decoded)."""
    head = (b"HTTP/1.1 200 OK\r\nCache-Control:max-age=60\r\nX-Empty:\r\nX-Spaced: \t a b \t\r\n"
            b"X-Colon: a:b: c\r\nX-Latin: caf\xe9\r\ncache-control: no-store\r\nContent-Length: 2\r\n\r\n")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head + b"ok")
        await writer.drain()

    server, port = await raw_server(handler)
    try:
        response = await client.request("GET", f"http://127.0.0.1:{port}/", [], timeout=TIMEOUT)
    finally:
        server.close()
    # read from the head before it is split, then from the split fields: the same values
    assert response.values("cache-control") == ["max-age=60", "no-store"]
    assert response.values("x-spaced") == ["a b"]
    assert response.headers == [(n.decode("latin-1"), v.decode("latin-1")) for n, v in head_fields(head)]
    assert response.values("cache-control") == ["max-age=60", "no-store"]
    assert response.headers == [("Cache-Control", "max-age=60"), ("X-Empty", ""), ("X-Spaced", "a b"),
                                ("X-Colon", "a:b: c"), ("X-Latin", "caf\u00e9"), ("cache-control", "no-store"),
                                ("Content-Length", "2")]
    assert response.body == b"ok"
