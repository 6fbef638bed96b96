"""The HTTP/1.1 server protocol on real sockets: framing attacks, limits, pipelining, 100-continue, timeouts,
graceful shutdown. Also home of the raw-socket helpers the client and proxy tests share."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator

import httptools
import pytest

from phantom_token.http.messages import Request, Response
from phantom_token.http.server import HttpServer, ServerLimits, serve_app

TIMEOUT = 5.0
MALFORMED = {"code": "invalid_request", "message": "Malformed HTTP request"}


class RawResponse:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> object:
        return json.loads(self.body)


class ResponseReader:
    """Reads the responses arriving on one raw connection, in order (so pipelining can be checked)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.parser = httptools.HttpResponseParser(self)
        self.ready: deque[RawResponse] = deque()
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.keep_body = True

    def on_message_begin(self) -> None:
        self.headers = []
        self.body = []
        self.body_size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.keep_body:
            self.body.append(body)

    def on_message_complete(self) -> None:
        status: int = self.parser.get_status_code()
        self.ready.append(RawResponse(status, self.headers, b"".join(self.body)))

    async def next(self, limit: float = TIMEOUT) -> RawResponse:
        async with asyncio.timeout(limit):
            while not self.ready:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("connection closed before a complete response")
                self.parser.feed_data(data)
        return self.ready.popleft()


async def open_conn(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(TIMEOUT):
        return await asyncio.open_connection("127.0.0.1", port)


async def read_to_eof(reader: asyncio.StreamReader, limit: float = TIMEOUT) -> bytes:
    async with asyncio.timeout(limit):
        return await reader.read()


async def exchange(port: int, raw: bytes) -> RawResponse:
    """One raw request on a fresh connection; the first response."""
    reader, writer = await open_conn(port)
    try:
        writer.write(raw)
        return await ResponseReader(reader).next()
    finally:
        writer.close()


def split_head(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


async def echo(request: Request) -> Response:
    payload = {"method": request.method, "path": request.path, "query": request.query, "size": len(request.body),
               "headers": {k: list(v) for k, v in request.headers.items()}}
    return Response(200, [("Content-Type", "application/json")], json.dumps(payload).encode())


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    srv = await serve_app(echo, "127.0.0.1", 0, max_body=1024 * 1024)
    yield srv
    srv.close()
    await srv.wait_closed()


async def assert_serving(port: int) -> None:
    response = await exchange(port, b"GET /still HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 200


async def test_get_and_keep_alive(server: HttpServer) -> None:
    reader, writer = await open_conn(server.port)
    responses = ResponseReader(reader)
    writer.write(b"GET /a?x=1 HTTP/1.1\r\nHost: example.com\r\nX-Two: 1\r\nx-two: 2\r\n\r\n")
    first = await responses.next()
    writer.write(b"GET /b HTTP/1.1\r\nHost: example.com\r\n\r\n")
    second = await responses.next()
    writer.close()
    body = first.json()
    assert isinstance(body, dict)
    assert (first.status, body["path"], body["query"], body["headers"]["x-two"]) == (200, "/a", "x=1", ["1", "2"])
    assert first.header("Content-Length") == str(len(first.body))
    assert second.status == 200


async def test_pipelined_responses_come_back_in_order(server: HttpServer) -> None:
    reader, writer = await open_conn(server.port)
    responses = ResponseReader(reader)
    writer.write(b"".join(b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" % i for i in range(20)))
    paths = []
    for _ in range(20):
        body = (await responses.next()).json()
        assert isinstance(body, dict)
        paths.append(body["path"])
    writer.close()
    assert paths == [f"/{i}" for i in range(20)]


@pytest.mark.parametrize("raw", [
    pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n0\r\n\r\n", id="content-length-with-transfer-encoding"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", id="duplicate-cl"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                 id="conflicting-cl"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", id="cl-list"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
                 id="bad-chunk-size"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
                 id="chunk-longer-than-size"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc", id="te-not-chunked"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
    pytest.param(b"GET / HTTP/1.1\r\nX: y\r\n\r\n", id="no-host"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", id="tls-hello"),
])
async def test_framing_attacks_get_400_and_close(server: HttpServer, raw: bytes) -> None:
    reader, writer = await open_conn(server.port)
    writer.write(raw)
    head, body = split_head(await read_to_eof(reader))  # EOF: the server closed the connection
    writer.close()
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in head
    assert json.loads(body) == MALFORMED
    await assert_serving(server.port)


async def test_upgrade_is_ignored_and_the_connection_ends(server: HttpServer) -> None:
    reader, writer = await open_conn(server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\nPRI * HTTP/2.0\r\n\r\n")
    head, _ = split_head(await read_to_eof(reader))
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Connection: close" in head


async def test_rejection_logs_one_line_without_header_values(server: HttpServer,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="phantom_token.http")
    raw = (b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer SECRET-TOKEN-123\r\nContent-Length: 3\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n")
    reader, writer = await open_conn(server.port)
    writer.write(raw)
    await read_to_eof(reader)
    writer.close()
    records = [r for r in caplog.records if r.name == "phantom_token.http"]
    assert len(records) == 1
    assert "SECRET" not in caplog.text
    assert "rejected connection" in records[0].getMessage()


async def test_huge_header_block_gets_431_and_server_keeps_serving(server: HttpServer) -> None:
    reader, writer = await open_conn(server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n")
    head, body = split_head(await read_to_eof(reader))
    writer.close()
    assert head.startswith(b"HTTP/1.1 431 ")
    assert json.loads(body)["code"] == "request_header_fields_too_large"
    await assert_serving(server.port)


async def test_many_small_headers_count_against_the_limit(server: HttpServer) -> None:
    lines = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 60) for i in range(1200))
    response = await exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert response.status == 431


async def test_long_request_target_gets_414(server: HttpServer) -> None:
    response = await exchange(server.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 414


async def test_expect_100_continue(server: HttpServer) -> None:
    reader, writer = await open_conn(server.port)
    writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    async with asyncio.timeout(TIMEOUT):
        interim = await reader.readuntil(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    response = await ResponseReader(reader).next()
    writer.close()
    body = response.json()
    assert isinstance(body, dict)
    assert (response.status, body["size"]) == (200, 5)


async def test_expect_100_continue_with_a_body_too_large_gets_413_without_100(server: HttpServer) -> None:
    reader, writer = await open_conn(server.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\nExpect: 100-continue\r\n\r\n")
    head, body = split_head(await read_to_eof(reader))
    writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body)["code"] == "payload_too_large"


async def test_chunked_body_over_the_limit_gets_413(server: HttpServer) -> None:
    reader, writer = await open_conn(server.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (256 * 1024, b"z" * 256 * 1024)
    with contextlib.suppress(ConnectionError):  # the server may close while we still write
        for _ in range(5):
            writer.write(chunk)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
    head, _ = split_head(await read_to_eof(reader))
    writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")


async def test_chunked_request_body_is_decoded(server: HttpServer) -> None:
    raw = (b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n5;ext=1\r\ndefgh\r\n0\r\nX-Trailer: t\r\n\r\n")
    body = (await exchange(server.port, raw)).json()
    assert isinstance(body, dict)
    assert body["size"] == 8
    assert "x-trailer" not in body["headers"]


async def test_head_gets_headers_and_no_body(server: HttpServer) -> None:
    reader, writer = await open_conn(server.port)
    writer.write(b"HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, body = split_head(await read_to_eof(reader))
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length: " in head
    assert b"Content-Length: 0" not in head
    assert body == b""


async def test_connection_close_is_honoured(server: HttpServer) -> None:
    reader, writer = await open_conn(server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = await read_to_eof(reader)
    writer.close()
    assert raw.count(b"HTTP/1.1 ") == 1
    assert b"Connection: close\r\n" in raw


async def test_http10_closes_unless_keep_alive(server: HttpServer) -> None:
    reader, writer = await open_conn(server.port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    raw = await read_to_eof(reader)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200 ")
    reader, writer = await open_conn(server.port)
    writer.write(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    response = await ResponseReader(reader).next()
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    await read_to_eof(reader)
    writer.close()
    assert response.header("Connection") == "keep-alive"


async def test_each_pipelined_request_gets_its_own_http_version(server: HttpServer) -> None:
    """The version is read off the request line when a read starts with it, else asked of the parser: a 1.0
    request behind a 1.1 one in the same read is still 1.0 (no Host needed, the connection then closes), and a 1.1
    request behind a 1.0 one still needs its Host."""
    reader, writer = await open_conn(server.port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
    raw = await read_to_eof(reader)
    writer.close()
    assert raw.count(b"HTTP/1.1 200 ") == 2
    reader, writer = await open_conn(server.port)
    writer.write(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    raw = await read_to_eof(reader)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 400 " in raw  # the second has no Host header, which HTTP/1.1 requires


async def test_a_read_that_starts_inside_a_body_is_not_taken_for_a_request_line(server: HttpServer) -> None:
    """The second read starts with the rest of a body that holds b" HTTP/1.1\\r" exactly where the next request's
    version would be: that request is HTTP/1.0 (no Host needed, then the connection closes), not 1.1 (400)."""
    reader, writer = await open_conn(server.port)
    writer.write(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"xxxxxx HTTP/1.1\r" + b"GET /b HTTP/1.0\r\n\r\n")  # 16 body bytes, then the next request
    raw = await read_to_eof(reader)
    writer.close()
    assert raw.count(b"HTTP/1.1 200 ") == 2, raw[:200]


async def test_a_request_line_cut_across_reads_gets_the_parsers_version(server: HttpServer) -> None:
    """The first read ends inside the version (or just before it): the version comes from the parser."""
    for first, rest in ((b"GET /a HTTP/1.", b"0\r\n\r\n"), (b"GET /a", b" HTTP/1.0\r\n\r\n"),
                        (b"\r\nGET /a HTTP/1.0", b"\r\n\r\n")):
        reader, writer = await open_conn(server.port)
        writer.write(first)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(rest)
        raw = await read_to_eof(reader)  # HTTP/1.0 without keep-alive: the connection closes after the answer
        writer.close()
        assert raw.startswith(b"HTTP/1.1 200 "), raw[:60]


async def test_garbage_gets_400_and_server_keeps_serving(server: HttpServer) -> None:
    for garbage in (b"\x00\xff\xfe garbage\r\n\r\n", b"HELLO\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"):
        reader, writer = await open_conn(server.port)
        writer.write(garbage)
        head, body = split_head(await read_to_eof(reader))
        writer.close()
        assert head.startswith(b"HTTP/1.1 400 ")
        assert json.loads(body) == MALFORMED
    await assert_serving(server.port)


async def test_garbage_after_a_good_request_answers_in_order() -> None:
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return Response(200, [], b"done")

    srv = await serve_app(slow, "127.0.0.1", 0)
    try:
        reader, writer = await open_conn(srv.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00garbage\r\n\r\n")
        release.set()
        raw = await read_to_eof(reader)
        writer.close()
        first, _, second = raw.partition(b"done")
        assert first.startswith(b"HTTP/1.1 200 ")
        assert second.startswith(b"HTTP/1.1 400 ")
    finally:
        srv.close()
        await srv.wait_closed()


async def test_idle_keep_alive_connection_times_out() -> None:
    srv = await serve_app(echo, "127.0.0.1", 0, limits=ServerLimits(keepalive_timeout=0.2))
    try:
        reader, writer = await open_conn(srv.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await ResponseReader(reader).next()
        assert await read_to_eof(reader) == b""  # the server closed it
        writer.close()
    finally:
        srv.close()
        await srv.wait_closed()


async def test_half_sent_request_times_out_with_408() -> None:
    srv = await serve_app(echo, "127.0.0.1", 0, limits=ServerLimits(header_timeout=0.2))
    try:
        reader, writer = await open_conn(srv.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        head, _ = split_head(await read_to_eof(reader))
        writer.close()
        assert head.startswith(b"HTTP/1.1 408 ")
    finally:
        srv.close()
        await srv.wait_closed()


async def test_handler_error_is_a_500_and_the_connection_survives() -> None:
    async def broken(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("contains Bearer SECRET")
        return Response(204)

    srv = await serve_app(broken, "127.0.0.1", 0)
    try:
        reader, writer = await open_conn(srv.port)
        responses = ResponseReader(reader)
        writer.write(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await responses.next()).status == 500
        assert (await responses.next()).status == 204
        writer.close()
    finally:
        srv.close()
        await srv.wait_closed()


async def test_graceful_close_finishes_in_flight_request_and_closes_idle_ones() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        started.set()
        await release.wait()
        return Response(200, [], b"finished")

    srv = await serve_app(slow, "127.0.0.1", 0)
    port = srv.port
    idle_reader, idle_writer = await open_conn(port)
    reader, writer = await open_conn(port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(TIMEOUT):
        await started.wait()
    srv.close()
    closing = asyncio.ensure_future(srv.wait_closed())
    assert await read_to_eof(idle_reader) == b""  # the idle keep-alive connection is closed at once
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)  # no longer accepting
    release.set()
    response = await ResponseReader(reader).next()
    assert (response.status, response.body, response.header("Connection")) == (200, b"finished", "close")
    async with asyncio.timeout(TIMEOUT):
        await closing
    writer.close()
    idle_writer.close()


async def test_reuse_port_lets_two_servers_share_a_port() -> None:
    first = await serve_app(echo, "127.0.0.1", 0, reuse_port=True)
    second = await serve_app(echo, "127.0.0.1", first.port, reuse_port=True)
    try:
        await assert_serving(first.port)
    finally:
        for srv in (first, second):
            srv.close()
            await srv.wait_closed()
