"""The reverse proxy on real sockets, with a fake authorizer and a raw recording upstream (contract section 9)."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httptools
import pytest

from phantom_token.config.settings import Route, Settings, Upstream
from phantom_token.core.request import RequestInfo
from phantom_token.core.verdict import Allow, Verdict, unauthorized
from phantom_token.frontends.proxy import start_proxy
from phantom_token.http.server import HttpServer
from tests.integration.test_http_server import (
    TIMEOUT,
    RawResponse,
    ResponseReader,
    open_conn,
    read_to_eof,
    split_head,
)

JWT = "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ0In0.c2ln"
MiB = 1024 * 1024


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)
    size: int = 0

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


Reply = Callable[[Seen, asyncio.StreamWriter], Awaitable[None]]


async def default_reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
    body = b"upstream says hi"
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class RecordingUpstream:
    """Parses what the proxy sends (so framing is checked too) and records it; bodies kept only when small."""

    def __init__(self, reply: Reply = default_reply, keep_body: bool = True) -> None:
        self.reply = reply
        self.keep_body = keep_body
        self.requests: list[Seen] = []
        self.connections = 0
        self.arrived = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        done: list[Seen] = []
        current: list[Seen] = []
        url = bytearray()
        headers: list[tuple[str, str]] = []
        upstream = self

        class Callbacks:
            def on_url(self, part: bytes) -> None:
                url.extend(part)

            def on_header(self, name: bytes, value: bytes) -> None:
                headers.append((name.decode("latin-1"), value.decode("latin-1")))

            def on_headers_complete(self) -> None:
                seen = Seen(parser.get_method().decode(), url.decode("latin-1"), list(headers))
                url.clear()
                headers.clear()
                current.append(seen)
                upstream.requests.append(seen)
                upstream.arrived.set()

            def on_body(self, body: bytes) -> None:
                current[-1].size += len(body)
                if upstream.keep_body:
                    current[-1].body.extend(body)

            def on_message_complete(self) -> None:
                done.append(current.pop())

        parser = httptools.HttpRequestParser(Callbacks())
        try:
            while data := await reader.read(65536):
                parser.feed_data(data)
                while done:
                    await self.reply(done.pop(0), writer)
                    await writer.drain()
        except (ConnectionError, httptools.HttpParserError):
            pass
        finally:
            writer.close()


class FakeAuthorizer:
    """Allows with a JWT, except paths under /deny; ``slow`` makes every request take the async path."""

    def __init__(self, route: Route, *, slow: bool = False) -> None:
        self.route = route
        self.slow = slow
        self.seen: list[RequestInfo] = []

    def _verdict(self, request: RequestInfo) -> Verdict:
        if request.path.startswith("/deny"):
            return unauthorized(token_sent=True)
        return Allow(self.route, JWT, 60.0)

    def try_authorize(self, request: RequestInfo) -> Verdict | None:
        self.seen.append(request)
        return None if self.slow else self._verdict(request)

    async def authorize(self, request: RequestInfo, *, uncancelled: bool = False) -> Verdict:
        await asyncio.sleep(0)
        return self._verdict(request)


class Harness:
    def __init__(self, proxy: HttpServer, upstream: RecordingUpstream, authorizer: FakeAuthorizer,
                 observed: list[int]) -> None:
        self.proxy = proxy
        self.upstream = upstream
        self.authorizer = authorizer
        self.observed = observed

    @property
    def port(self) -> int:
        return self.proxy.port


async def make(upstream: RecordingUpstream | None = None, *, upstream_port: int | None = None, slow: bool = False,
               upstream_timeout: float = 60.0, preserve_host: bool = False, base: str = "/base") -> Harness:
    upstream = upstream or RecordingUpstream()
    port = upstream_port if upstream_port is not None else await upstream.start()
    route = Route("r", "s", Upstream("http", "127.0.0.1", port, base), paths=("/api",), preserve_host=preserve_host)
    authorizer = FakeAuthorizer(route, slow=slow)
    observed: list[int] = []
    settings = Settings(routes=(route,), upstream_timeout_seconds=upstream_timeout,
                        upstream_connect_timeout_seconds=2.0)
    proxy = await start_proxy(authorizer, settings, "127.0.0.1", 0,
                              observe=lambda status, _outcome, _route: observed.append(status))
    return Harness(proxy, upstream, authorizer, observed)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = await make()
    yield h
    await shutdown(h)


async def shutdown(h: Harness) -> None:
    h.proxy.close()
    await h.proxy.wait_closed()
    h.upstream.close()


async def request(port: int, raw: bytes) -> tuple[asyncio.StreamWriter, ResponseReader]:
    reader, writer = await open_conn(port)
    writer.write(raw)
    return writer, ResponseReader(reader)


async def test_allow_forwards_with_rewritten_path_query_and_jwt(harness: Harness) -> None:
    writer, responses = await request(harness.port, b"GET /api/items/7?x=1&y=%20 HTTP/1.1\r\nHost: gw.example:8080\r\n"
                                                    b"Authorization: Bearer opaque-abc\r\nX-Custom: kept\r\n\r\n")
    response = await responses.next()
    writer.close()
    assert (response.status, response.body) == (200, b"upstream says hi")
    seen = harness.upstream.requests[0]
    assert (seen.method, seen.target) == ("GET", "/base/items/7?x=1&y=%20")
    assert seen.all("authorization") == [JWT]
    assert seen.all("x-custom") == ["kept"]
    info = harness.authorizer.seen[0]
    assert (info.method, info.host, info.path) == ("GET", "gw.example", "/api/items/7")
    assert info.headers["authorization"] == ["Bearer opaque-abc"]
    assert harness.observed[0] == 200


async def test_authorization_is_replaced_exactly_once(harness: Harness) -> None:
    writer, responses = await request(harness.port, b"GET /api/ HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer one\r\n"
                                                    b"X-A: 1\r\nauthorization: Basic two\r\n\r\n")
    await responses.next()
    writer.close()
    assert harness.upstream.requests[0].all("authorization") == [JWT]


async def test_deny_sends_nothing_upstream_and_drains_the_body(harness: Harness) -> None:
    writer, responses = await request(harness.port, b"POST /deny HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
                                                    b"GET /deny/2 HTTP/1.1\r\nHost: h\r\n\r\n")
    first = await responses.next()
    second = await responses.next()  # same connection: the body was drained, keep-alive kept
    writer.close()
    for response in (first, second):
        assert response.status == 401
        assert response.json() == {"code": "unauthorized", "message": "Missing, invalid or expired access token"}
        assert response.header("WWW-Authenticate") == 'Bearer error="invalid_token"'
        assert response.header("Content-Type") == "application/json"
    assert harness.upstream.requests == []
    assert harness.upstream.connections == 0


async def test_deny_with_a_large_body_closes(harness: Harness) -> None:
    reader, writer = await open_conn(harness.port)
    writer.write(b"POST /deny HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1000)
    head, body = split_head(await read_to_eof(reader))
    writer.close()
    assert head.startswith(b"HTTP/1.1 401 ")
    assert b"Connection: close" in head
    assert json.loads(body)["code"] == "unauthorized"
    assert harness.upstream.connections == 0


async def test_head_on_a_deny_has_no_body(harness: Harness) -> None:
    reader, writer = await open_conn(harness.port)
    writer.write(b"HEAD /deny HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head, body = split_head(await read_to_eof(reader))
    writer.close()
    assert head.startswith(b"HTTP/1.1 401 ")
    assert b"WWW-Authenticate: Bearer" in head
    assert body == b""


async def one_answer(reply: Reply | None = None, *, upstream_port: int | None = None) -> RawResponse:
    """What a client gets for one GET through the proxy when the upstream answers with ``reply`` (or listens on
    ``upstream_port``)."""
    h = await make(RecordingUpstream(reply) if reply is not None else None, upstream_port=upstream_port)
    try:
        writer, responses = await request(h.port, b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
        response = await responses.next()
        writer.close()
    finally:
        await shutdown(h)
    return response


async def test_head_allowed_passes_headers_without_body() -> None:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-Up: 1\r\n\r\n")

    h = await make(RecordingUpstream(reply))
    try:
        reader, writer = await open_conn(h.port)
        writer.write(b"HEAD /api/x HTTP/1.1\r\nHost: h\r\n\r\n"
                     b"HEAD /api/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        raw = await read_to_eof(reader)
        writer.close()
        assert raw.count(b"HTTP/1.1 200 OK\r\n") == 2
        assert raw.endswith(b"\r\n\r\n")
        assert b"Content-Length: 1234" in raw
    finally:
        await shutdown(h)


async def test_hop_by_hop_headers_are_removed_both_ways() -> None:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Up-Hop\r\nKeep-Alive: timeout=5\r\nX-Up-Hop: 1\r\n"
                     b"Proxy-Connection: x\r\nX-Up-End: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")

    h = await make(RecordingUpstream(reply))
    try:
        writer, responses = await request(h.port, b"GET /api/x HTTP/1.1\r\nHost: h\r\n"
                                                  b"Connection: keep-alive, X-Hop-Named\r\nX-Hop-Named: secret\r\n"
                                                  b"Keep-Alive: 300\r\nTE: trailers\r\nUpgrade: websocket\r\n"
                                                  b"Proxy-Connection: keep-alive\r\nX-End: e\r\n\r\n")
        response = await responses.next()
        writer.close()
    finally:
        await shutdown(h)
    names = {k.lower() for k, _ in h.upstream.requests[0].headers}
    assert names.isdisjoint({"connection", "x-hop-named", "keep-alive", "te", "upgrade", "proxy-connection"})
    assert "x-end" in names
    got = {k.lower() for k, _ in response.headers}
    assert got.isdisjoint({"connection", "keep-alive", "x-up-hop", "proxy-connection"})
    assert response.header("X-Up-End") == "2"
    assert response.body == b"ok"


async def test_x_forwarded_headers_and_host() -> None:
    h = await make()
    try:
        writer, responses = await request(h.port, b"GET /api/x HTTP/1.1\r\nHost: gw.example:8443\r\n"
                                                  b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n"
                                                  b"X-Forwarded-Host: evil.example\r\n\r\n")
        await responses.next()
        writer.close()
    finally:
        await shutdown(h)
    seen = h.upstream.requests[0]
    assert seen.all("x-forwarded-for") == ["10.0.0.1, 127.0.0.1"]
    assert seen.all("x-forwarded-proto") == ["http"]
    assert seen.all("x-forwarded-host") == ["gw.example:8443"]
    assert seen.all("host") == [f"127.0.0.1:{h.upstream.port}"]


async def test_preserve_host() -> None:
    h = await make(preserve_host=True)
    try:
        writer, responses = await request(h.port, b"GET /api HTTP/1.1\r\nHost: gw.example\r\n\r\n")
        await responses.next()
        writer.close()
    finally:
        await shutdown(h)
    assert h.upstream.requests[0].all("host") == ["gw.example"]
    assert h.upstream.requests[0].target == "/base"


async def test_upstream_down_is_502_bad_gateway() -> None:
    probe = RecordingUpstream()
    port = await probe.start()
    probe.close()
    assert probe.server is not None
    await probe.server.wait_closed()
    response = await one_answer(upstream_port=port)
    assert response.status == 502
    assert response.json() == {"code": "bad_gateway", "message": "The upstream API could not be reached"}


async def test_upstream_reset_before_response_is_502() -> None:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    response = await one_answer(reply)
    assert response.status == 502


def closes_reused_connections() -> Reply:
    """An upstream that answers the first request of a connection and drops the connection at the second, as one
    does when its keep-alive idle timeout fires just as the proxy reuses the connection."""
    answered: set[asyncio.StreamWriter] = set()

    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        if writer in answered:
            writer.transport.abort()
            return
        answered.add(writer)
        await default_reply(seen, writer)

    return reply


async def second_request_on_a_dropped_connection(second: bytes) -> tuple[Harness, int, int]:
    """Two requests on one client connection through an upstream that drops reused connections: the statuses."""
    h = await make(RecordingUpstream(closes_reused_connections()))
    try:
        writer, responses = await request(h.port, b"GET /api/1 HTTP/1.1\r\nHost: h\r\n\r\n")
        first = await responses.next()
        writer.write(second)
        answer = await responses.next()
        writer.close()
    finally:
        await shutdown(h)
    return h, first.status, answer.status


async def test_idempotent_request_on_a_reused_connection_the_upstream_dropped_is_sent_again() -> None:
    h, first, second = await second_request_on_a_dropped_connection(b"GET /api/2 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (first, second) == (200, 200)
    assert [seen.target for seen in h.upstream.requests] == ["/base/1", "/base/2", "/base/2"]
    assert h.upstream.connections == 2


async def test_request_with_a_body_is_not_sent_again() -> None:
    h, first, second = await second_request_on_a_dropped_connection(
        b"POST /api/2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
    assert (first, second) == (200, 502)
    assert [seen.target for seen in h.upstream.requests] == ["/base/1", "/base/2"]


async def test_upstream_slow_is_504_gateway_timeout() -> None:
    never = asyncio.Event()

    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        await never.wait()

    h = await make(RecordingUpstream(reply), upstream_timeout=0.2)
    try:
        writer, responses = await request(h.port, b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
        response = await responses.next()
        writer.close()
    finally:
        never.set()
        await shutdown(h)
    assert response.status == 504
    assert response.json() == {"code": "gateway_timeout", "message": "The upstream API did not answer in time"}
    assert h.observed[0] == 504


async def test_chunked_request_streams_up_and_chunked_response_streams_back() -> None:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"first-", b"second-", bytes(seen.body)):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    h = await make(RecordingUpstream(reply), slow=True)  # slow: the body arrives while the verdict is pending
    try:
        reader, writer = await open_conn(h.port)
        writer.write(b"POST /api/up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
        async with asyncio.timeout(TIMEOUT):
            await h.upstream.arrived.wait()  # the head went upstream before the body finished
        writer.write(b"3\r\nefg\r\n0\r\n\r\n")
        response = await ResponseReader(reader).next()
        writer.close()
    finally:
        await shutdown(h)
    seen = h.upstream.requests[0]
    assert seen.all("transfer-encoding") == ["chunked"]
    assert bytes(seen.body) == b"abcdefg"
    assert response.header("Transfer-Encoding") == "chunked"
    assert response.body == b"first-second-abcdefg"


async def test_expect_100_continue_is_answered_after_the_verdict(harness: Harness) -> None:
    reader, writer = await open_conn(harness.port)
    writer.write(b"POST /api/e HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    async with asyncio.timeout(TIMEOUT):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"abc")
    response = await ResponseReader(reader).next()
    writer.close()
    assert response.status == 200
    assert bytes(harness.upstream.requests[0].body) == b"abc"
    assert harness.upstream.requests[0].all("expect") == []


async def test_large_upload_streams_without_buffering() -> None:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(seen.size)), seen.size))

    h = await make(RecordingUpstream(reply, keep_body=False))
    size = 50 * MiB
    chunk = b"u" * (256 * 1024)
    tracemalloc.start()
    try:
        reader, writer = await open_conn(h.port)
        writer.write(b"PUT /api/blob HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)
        async with asyncio.timeout(60):
            for _ in range(size // len(chunk)):
                writer.write(chunk)
                await writer.drain()
        response = await ResponseReader(reader).next(60)
        writer.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await shutdown(h)
    assert (response.status, response.body) == (200, str(size).encode())
    assert h.upstream.requests[0].size == size
    assert peak < 8 * MiB, f"peak traced memory {peak} bytes for a {size}-byte body"


async def test_large_download_streams_without_buffering() -> None:
    size = 50 * MiB
    chunk = b"d" * (256 * 1024)

    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()

    h = await make(RecordingUpstream(reply))
    tracemalloc.start()
    try:
        reader, writer = await open_conn(h.port)
        writer.write(b"GET /api/blob HTTP/1.1\r\nHost: h\r\n\r\n")
        responses = ResponseReader(reader)
        responses.keep_body = False
        response = await responses.next(60)
        writer.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await shutdown(h)
    assert response.status == 200
    assert responses.body_size == size
    assert peak < 8 * MiB, f"peak traced memory {peak} bytes for a {size}-byte body"


async def test_keep_alive_reuses_client_and_upstream_connections(harness: Harness) -> None:
    reader, writer = await open_conn(harness.port)
    responses = ResponseReader(reader)
    for i in range(5):
        writer.write(b"GET /api/%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
        assert (await responses.next()).status == 200
    writer.close()
    assert harness.upstream.connections == 1
    assert [s.target for s in harness.upstream.requests] == [f"/base/{i}" for i in range(5)]


async def test_pipelined_requests_answer_in_order(harness: Harness) -> None:
    reader, writer = await open_conn(harness.port)
    writer.write(b"GET /api/1 HTTP/1.1\r\nHost: h\r\n\r\nGET /deny HTTP/1.1\r\nHost: h\r\n\r\n"
                 b"GET /api/3 HTTP/1.1\r\nHost: h\r\n\r\n")
    responses = ResponseReader(reader)
    statuses = [(await responses.next()).status for _ in range(3)]
    writer.close()
    assert statuses == [200, 401, 200]


async def test_garbage_gets_400_and_proxy_keeps_serving(harness: Harness) -> None:
    reader, writer = await open_conn(harness.port)
    writer.write(b"\x00\x01\x02 not http\r\n\r\n")
    head, body = split_head(await read_to_eof(reader))
    writer.close()
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body) == {"code": "invalid_request", "message": "Malformed HTTP request"}
    writer, responses = await request(harness.port, b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await responses.next()).status == 200
    writer.close()
    assert harness.upstream.connections == 1


async def test_graceful_close_finishes_an_in_flight_request() -> None:
    release = asyncio.Event()

    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        await default_reply(seen, writer)

    h = await make(RecordingUpstream(reply))
    writer, responses = await request(h.port, b"GET /api/slow HTTP/1.1\r\nHost: h\r\n\r\n")
    async with asyncio.timeout(TIMEOUT):
        await h.upstream.arrived.wait()
    h.proxy.close()
    closing = asyncio.ensure_future(h.proxy.wait_closed())
    release.set()
    response = await responses.next()
    async with asyncio.timeout(TIMEOUT):
        await closing
    writer.close()
    h.upstream.close()
    assert (response.status, response.header("Connection")) == (200, "close")


async def test_response_heads_are_rewritten_per_response_even_when_remembered() -> None:
    """The rewritten head is remembered per distinct head as received: a repeat gets the same answer, a head that
    differs in any byte (here Content-Length, a header named in Connection, Set-Cookie) is rewritten on its own."""
    replies = [
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nyes",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nConnection: X-A\r\n\r\nok",
        b"HTTP/1.1 201 Created\r\nSet-Cookie: s=1\r\nContent-Length: 2\r\nconnection: keep-alive\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        # the connection also remembers its last head: it must follow every change, back and forth
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nyes",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nyes",
    ]

    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(replies[len(h.upstream.requests) - 1])

    h = await make(RecordingUpstream(reply))
    try:
        reader, writer = await open_conn(h.port)
        responses = ResponseReader(reader)
        got = []
        for _ in replies:
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
            got.append(await responses.next())
        writer.close()
    finally:
        await shutdown(h)
    assert [(r.status, r.body) for r in got] == [(200, b"ok"), (200, b"ok"), (200, b"yes"), (200, b"ok"),
                                                 (201, b"ok"), (200, b"ok"), (200, b"yes"), (200, b"ok"),
                                                 (200, b"ok"), (200, b"yes")]
    assert [r.header("Content-Length") for r in got[6:]] == ["3", "2", "2", "3"]
    assert got[0].headers == got[1].headers == [("X-A", "1"), ("Content-Length", "2")]
    assert got[2].header("Content-Length") == "3"
    assert got[3].header("X-A") is None  # named in Connection: hop-by-hop for that response only
    assert got[4].header("Set-Cookie") == "s=1"
    assert got[4].header("Connection") is None
    assert got[5].header("Transfer-Encoding") == "chunked"
    assert got[5].header("Keep-Alive") is None


async def test_a_response_head_over_64_kib_is_502() -> None:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 8000 + b"\r\n")
        for _ in range(10):
            writer.write(b"X-More: " + b"b" * 8000 + b"\r\n")
        writer.write(b"Content-Length: 0\r\n\r\n")

    response = await one_answer(reply)
    assert response.status == 502
    assert json.loads(response.body)["code"] == "bad_gateway"


async def test_upstream_targets_follow_each_request_on_one_connection(harness: Harness) -> None:
    """Upstream targets are remembered per route; every request still gets its own path and query."""
    reader, writer = await open_conn(harness.port)
    responses = ResponseReader(reader)
    sent = [b"/api/a?x=1", b"/api/a?x=1", b"/api/a?x=2", b"/api/a", b"/api/b?x=%26", b"/api", b"/api/a?x=1"]
    for target in sent:
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await responses.next()).status == 200
    writer.close()
    assert [s.target for s in harness.upstream.requests] == ["/base/a?x=1", "/base/a?x=1", "/base/a?x=2", "/base/a",
                                                             "/base/b?x=%26", "/base", "/base/a?x=1"]


async def send_on_one_connection(proxy: HttpServer, upstream: RecordingUpstream, requests: list[bytes]) -> list[Seen]:
    """Sends each request on one client connection (each must be answered 200), stops the proxy and the upstream,
    and returns what the upstream received."""
    try:
        reader, writer = await open_conn(proxy.port)
        responses = ResponseReader(reader)
        for raw in requests:
            writer.write(raw)
            assert (await responses.next()).status == 200
        writer.close()
    finally:
        proxy.close()
        await proxy.wait_closed()
        upstream.close()
    return upstream.requests


class PerTokenAuthorizer(FakeAuthorizer):
    """A JWT named after the opaque token, one string per token as a cache entry holds it; no Authorization at all
    under /api/open."""

    def __init__(self, route: Route) -> None:
        super().__init__(route)
        self.jwts: dict[str, str] = {}

    def _verdict(self, request: RequestInfo) -> Verdict:
        if request.path.startswith("/api/open"):
            return Allow(self.route, None, 0.0)
        token = request.headers["authorization"][0].removeprefix("Bearer ")
        return Allow(self.route, self.jwts.setdefault(token, f"Bearer jwt-of-{token}"), 60.0)


async def test_gateway_headers_follow_each_request_on_one_connection() -> None:
    """The gateway's own lines (Authorization, Host, X-Forwarded-*) are remembered per connection; every request
    still gets its own token's JWT, its own Host and the X-Forwarded-For it sent."""
    upstream = RecordingUpstream()
    port = await upstream.start()
    route = Route("r", "s", Upstream("http", "127.0.0.1", port, "/"), paths=("/api",))
    settings = Settings(routes=(route,), upstream_connect_timeout_seconds=2.0)
    proxy = await start_proxy(PerTokenAuthorizer(route), settings, "127.0.0.1", 0)
    sent = [(b"a.example", b"Bearer one", b""), (b"a.example", b"Bearer one", b""), (b"a.example", b"Bearer two", b""),
            (b"a.example", b"Bearer two", b"X-Forwarded-For: 10.0.0.9\r\n"), (b"a.example", b"Bearer two", b""),
            (b"b.example:81", b"Bearer two", b""), (b"b.example:81", b"Bearer one", b"")]
    requests = [b"GET /api/x HTTP/1.1\r\nHost: " + host + b"\r\nAuthorization: " + auth + b"\r\n" + extra + b"\r\n"
                for host, auth, extra in sent]
    requests.append(b"GET /api/open HTTP/1.1\r\nHost: a.example\r\nAuthorization: Basic own\r\n\r\n")
    # the token line and the forwarding lines are remembered apart: back to a token after none, then none again
    requests.append(b"GET /api/x HTTP/1.1\r\nHost: a.example\r\nAuthorization: Bearer one\r\n\r\n")
    requests.append(b"GET /api/open HTTP/1.1\r\nHost: a.example\r\n\r\n")
    seen = [(s.all("authorization"), s.all("host"), s.all("x-forwarded-for"), s.all("x-forwarded-host"))
            for s in await send_on_one_connection(proxy, upstream, requests)]
    here = [f"127.0.0.1:{port}"]
    assert seen == [
        (["Bearer jwt-of-one"], here, ["127.0.0.1"], ["a.example"]),
        (["Bearer jwt-of-one"], here, ["127.0.0.1"], ["a.example"]),
        (["Bearer jwt-of-two"], here, ["127.0.0.1"], ["a.example"]),
        (["Bearer jwt-of-two"], here, ["10.0.0.9, 127.0.0.1"], ["a.example"]),
        (["Bearer jwt-of-two"], here, ["127.0.0.1"], ["a.example"]),
        (["Bearer jwt-of-two"], here, ["127.0.0.1"], ["b.example:81"]),
        (["Bearer jwt-of-one"], here, ["127.0.0.1"], ["b.example:81"]),
        (["Basic own"], here, ["127.0.0.1"], ["a.example"]),  # no JWT on this route: the client's own goes through
        (["Bearer jwt-of-one"], here, ["127.0.0.1"], ["a.example"]),
        ([], here, ["127.0.0.1"], ["a.example"]),
    ]


class RoutedAuthorizer(FakeAuthorizer):
    """Allows, with the same JWT string every time, on the route ``choose`` picks for the request."""

    def __init__(self, route: Route, choose: Callable[[RequestInfo], Route]) -> None:
        super().__init__(route)
        self.choose = choose

    def _verdict(self, request: RequestInfo) -> Verdict:
        return Allow(self.choose(request), JWT, 60.0)


async def test_the_same_path_on_two_routes_goes_to_each_routes_target_on_one_connection() -> None:
    """A connection remembers its last path's upstream target, for that route only."""
    upstream = RecordingUpstream()
    port = await upstream.start()
    strip = Route("a", "s", Upstream("http", "127.0.0.1", port, "/a"), paths=("/api",), hosts=("a",))
    keep = Route("b", "s", Upstream("http", "127.0.0.1", port, "/b"), paths=("/api",), hosts=("b",), strip_path=False)
    settings = Settings(routes=(strip, keep), upstream_connect_timeout_seconds=2.0)
    routes = {"a": strip, "b": keep}
    proxy = await start_proxy(RoutedAuthorizer(strip, lambda request: routes[request.host]), settings, "127.0.0.1", 0)
    requests = [b"GET /api/x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n" for host in (b"a", b"a", b"b", b"b", b"a")]
    seen = await send_on_one_connection(proxy, upstream, requests)
    assert [s.target for s in seen] == ["/a/x", "/a/x", "/b/api/x", "/b/api/x", "/a/x"]


async def test_the_gateway_lines_follow_the_route_on_one_connection() -> None:
    """The same token and Host on two routes of one connection: each request gets its own route's Host line."""
    upstream = RecordingUpstream()
    port = await upstream.start()
    plain = Route("a", "s", Upstream("http", "127.0.0.1", port, "/"), paths=("/api",))
    kept = Route("b", "s", Upstream("http", "127.0.0.1", port, "/"), paths=("/keep",), preserve_host=True)
    settings = Settings(routes=(plain, kept), upstream_connect_timeout_seconds=2.0)
    authorizer = RoutedAuthorizer(plain, lambda request: kept if request.path.startswith("/keep") else plain)
    proxy = await start_proxy(authorizer, settings, "127.0.0.1", 0)
    requests = [b"GET " + path + b" HTTP/1.1\r\nHost: gw.example\r\n\r\n" for path in (b"/api", b"/keep", b"/api")]
    seen = await send_on_one_connection(proxy, upstream, requests)
    here = f"127.0.0.1:{port}"
    assert [(s.all("host"), s.all("authorization")) for s in seen] == [([here], [JWT]), (["gw.example"], [JWT]),
                                                                        ([here], [JWT])]
