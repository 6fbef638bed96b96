"""The proxy as an attacker meets it, on real sockets with a raw recording upstream (contract section 9).

Each test here fails on the code before the security fixes: hop-by-hop smuggling in both directions, headers that
``Connection`` could remove, unnormalised paths and hosts, versions other than 1.0/1.1, underscores in header names,
upgrade requests with a body, unbounded bodies and clients that never read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from phantom_token.config.settings import Route, Settings, Upstream
from phantom_token.frontends.proxy import start_proxy
from phantom_token.http.server import HttpServer, ServerLimits
from tests.integration.test_http_server import MALFORMED, ResponseReader, exchange, open_conn, read_to_eof
from tests.integration.test_proxy import JWT, FakeAuthorizer, RecordingUpstream, Seen, request


class Rig:
    def __init__(self, proxy: HttpServer, upstream: RecordingUpstream, authorizer: FakeAuthorizer) -> None:
        self.proxy = proxy
        self.upstream = upstream
        self.authorizer = authorizer

    @property
    def port(self) -> int:
        return self.proxy.port


async def start(upstream: RecordingUpstream | None = None, **limits: float) -> Rig:
    upstream = upstream or RecordingUpstream()
    port = await upstream.start()
    route = Route("r", "s", Upstream("http", "127.0.0.1", port, "/base"), paths=("/api",))
    authorizer = FakeAuthorizer(route)
    settings = Settings(routes=(route,), upstream_connect_timeout_seconds=2.0)
    proxy = await start_proxy(authorizer, settings, "127.0.0.1", 0, limits=ServerLimits(**limits))  # type: ignore[arg-type]
    return Rig(proxy, upstream, authorizer)


async def stop(rig: Rig) -> None:
    rig.proxy.close()
    await rig.proxy.wait_closed()
    rig.upstream.close()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = await start()
    yield r
    await stop(r)


SMUGGLED = b"GET /admin/secret HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"p" * 12 + b"\r\n\r\n"


async def test_connection_cannot_remove_the_request_content_length(rig: Rig) -> None:
    assert len(SMUGGLED) == 60
    writer, responses = await request(rig.port, b"POST /api/x HTTP/1.1\r\nHost: h\r\n"
                                                b"Connection: keep-alive, Content-Length\r\n"
                                                b"Content-Length: 60\r\n\r\n" + SMUGGLED)
    response = await responses.next()
    writer.close()
    assert response.status == 200
    assert len(rig.upstream.requests) == 1  # the body stayed a body: no second request at the upstream
    seen = rig.upstream.requests[0]
    assert (seen.method, seen.target) == ("POST", "/base/x")
    assert seen.all("content-length") == ["60"]
    assert bytes(seen.body) == SMUGGLED


@pytest.mark.parametrize("named", ["Transfer-Encoding", "Host", "Authorization", "X-Forwarded-For",
                                   "X-Forwarded-Host", "X-Forwarded-Proto"])
async def test_connection_cannot_remove_what_the_gateway_sets(rig: Rig, named: str) -> None:
    body = b"5\r\nhello\r\n0\r\n\r\n"
    writer, responses = await request(rig.port, b"POST /api/x HTTP/1.1\r\nHost: gw.example\r\n"
                                                b"Authorization: Bearer opaque\r\nConnection: " + named.encode() +
                                                b"\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    response = await responses.next()
    writer.close()
    assert response.status == 200
    seen = rig.upstream.requests[0]
    assert bytes(seen.body) == b"hello"
    assert seen.all("transfer-encoding") == ["chunked"]
    assert seen.all("authorization") == [JWT]
    assert seen.all("host") == [f"127.0.0.1:{rig.upstream.port}"]
    assert seen.all("x-forwarded-host") == ["gw.example"]
    assert seen.all("x-forwarded-for") == ["127.0.0.1"]
    assert seen.all("x-forwarded-proto") == ["http"]


async def test_connection_cannot_remove_the_response_content_length() -> None:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nfirst"
                     if seen.target.endswith("/1") else
                     b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")

    r = await start(RecordingUpstream(reply))
    try:
        writer, responses = await request(r.port, b"GET /api/1 HTTP/1.1\r\nHost: h\r\n\r\n"
                                                   b"GET /api/2 HTTP/1.1\r\nHost: h\r\n\r\n")
        first, second = await responses.next(), await responses.next()
        writer.close()
    finally:
        await stop(r)
    assert first.all("content-length") == ["5"]
    assert (first.body, second.body) == (b"first", b"second")  # the keep-alive client read each one whole


async def test_headers_with_underscores_are_neither_seen_nor_forwarded(rig: Rig) -> None:
    writer, responses = await request(rig.port, b"GET /api/x HTTP/1.1\r\nHost: gw.example\r\n"
                                                b"X_Forwarded_Host: evil.example\r\nX_Custom: 1\r\nX-Kept: 2\r\n\r\n")
    await responses.next()
    writer.close()
    names = {name.lower() for name, _ in rig.upstream.requests[0].headers}
    assert "x_forwarded_host" not in names
    assert "x_custom" not in names
    assert "x-kept" in names
    assert rig.upstream.requests[0].all("x-forwarded-host") == ["gw.example"]
    assert not any("_" in name for name in rig.authorizer.seen[0].headers)


@pytest.mark.parametrize(
    ("target", "matched", "forwarded"),
    [
        ("/api/../api/x/./y?q=%2e%2e/..", "/api/x/y", "/base/x/y?q=%2e%2e/.."),
        ("/public/../api/x", "/api/x", "/base/x"),
        ("/public/%2e%2e/api/x", "/api/x", "/base/x"),
        ("//api//x", "/api/x", "/base/x"),
        ("/%61pi/x", "/api/x", "/base/x"),
    ],
)
async def test_the_normalised_path_is_matched_and_forwarded(rig: Rig, target: str, matched: str,
                                                            forwarded: str) -> None:
    writer, responses = await request(rig.port, f"GET {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    await responses.next()
    writer.close()
    assert rig.authorizer.seen[0].path == matched
    assert rig.upstream.requests[0].target == forwarded


@pytest.mark.parametrize("target", ["/public/..%2fapi/x", "/api/a%5Cb", "/api\\x", "/api/..;/x", "/api/%00",
                                    "/api/%zz", "http://a@h/api/x", "ftp://h/api/x", "http:///api/x"])
async def test_ambiguous_targets_are_400_and_nothing_is_forwarded(rig: Rig, target: str) -> None:
    response = await exchange(rig.port, f"GET {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert (response.status, response.json()) == (400, MALFORMED)
    assert rig.authorizer.seen == []
    assert rig.upstream.requests == []


@pytest.mark.parametrize("host", ["a@b", "[x]", "a..b", "h:99999", "a b", "a,b"])
async def test_invalid_hosts_are_400_and_nothing_is_forwarded(rig: Rig, host: str) -> None:
    response = await exchange(rig.port, f"GET /api/x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert (response.status, response.json()) == (400, MALFORMED)
    assert rig.authorizer.seen == []
    assert rig.upstream.requests == []


async def test_hosts_are_matched_without_case_trailing_dot_or_port(rig: Rig) -> None:
    for host in (b"Admin.Example.com.", b"admin.example.com.:8080"):
        await exchange(rig.port, b"GET /api/x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert [info.host for info in rig.authorizer.seen] == ["admin.example.com", "admin.example.com"]


async def test_an_absolute_form_target_wins_over_the_host_header(rig: Rig) -> None:
    response = await exchange(rig.port, b"GET http://Admin.Example.com./api/x?y=1 HTTP/1.1\r\n"
                                        b"Host: public.example\r\n\r\n")
    assert response.status == 200
    info = rig.authorizer.seen[0]
    assert (info.host, info.path) == ("admin.example.com", "/api/x")
    seen = rig.upstream.requests[0]
    assert seen.target == "/base/x?y=1"
    assert seen.all("x-forwarded-host") == ["Admin.Example.com."]


VERSION_505 = (b"HTTP/1.1 505 HTTP Version Not Supported\r\n",
               b'{"code":"http_version_not_supported","message":"Only HTTP/1.0 and HTTP/1.1 are supported"}')
VERSION_400 = (b"HTTP/1.1 400 Bad Request\r\n", b'{"code":"invalid_request","message":"Malformed HTTP request"}')


@pytest.mark.parametrize(("version", "answer"), [(b"HTTP/2.0", VERSION_505), (b"HTTP/0.9", VERSION_505),
                                                 (b"HTTP/3.0", VERSION_400), (b"HTTP/1.2", VERSION_400)])
async def test_other_http_versions_are_refused_and_nothing_is_forwarded(rig: Rig, version: bytes,
                                                                        answer: tuple[bytes, bytes]) -> None:
    reader, writer = await open_conn(rig.port)
    writer.write(b"GET /api/x " + version + b"\r\nHost: h\r\n\r\n")
    raw = await read_to_eof(reader)
    writer.close()
    assert raw.startswith(answer[0])  # llhttp itself refuses the versions it does not know
    assert raw.endswith(answer[1])
    assert rig.upstream.requests == []


async def test_an_upgrade_request_with_a_body_is_refused_at_once(rig: Rig) -> None:
    reader, writer = await open_conn(rig.port)
    writer.write(b"POST /api/x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                 b"Content-Length: 5\r\n\r\nhello")
    raw = await read_to_eof(reader, 5.0)  # before the fix: no answer until the upstream timed out
    writer.close()
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert rig.upstream.requests == []


async def test_a_body_over_max_body_bytes_is_413() -> None:
    r = await start(max_body_bytes=10)
    try:
        declared = await exchange(r.port, b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n" + b"x" * 11)
        assert declared.status == 413
        assert r.upstream.requests == []
        at_limit = await exchange(r.port, b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n" + b"x" * 10)
        assert at_limit.status == 200
        reader, writer = await open_conn(r.port)
        writer.write(b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"6\r\nxxxxxx\r\n6\r\nxxxxxx\r\n0\r\n\r\n")
        raw = await read_to_eof(reader)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 413 ")
        assert b'"payload_too_large"' in raw
    finally:
        await stop(r)


async def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(caplog: pytest.LogCaptureFixture
                                                                             ) -> None:
    chunk = b"z" * 65536

    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(chunk) * 4096))
        for _ in range(4096):  # 256 MiB: far more than the socket buffers hold
            writer.write(chunk)
            try:
                await writer.drain()
            except ConnectionError:
                return

    r = await start(RecordingUpstream(reply, keep_body=False), send_timeout=0.5)
    caplog.set_level(logging.INFO, "phantom_token.http")
    try:
        reader, writer = await open_conn(r.port)
        writer.write(b"GET /api/big HTTP/1.1\r\nHost: h\r\n\r\n")
        await reader.readexactly(1)  # the response began; from now on the client reads nothing
        await asyncio.wait_for(r.proxy.state.all_closed.wait(), 10)
        writer.close()
    finally:
        await stop(r)
    assert "the client did not read the response in time" in caplog.text


async def test_the_upstream_lines_of_a_keep_alive_client_follow_a_normalised_path(rig: Rig) -> None:
    reader, writer = await open_conn(rig.port)
    writer.write(b"GET /api/a HTTP/1.1\r\nHost: h\r\n\r\nGET /api/b/../a HTTP/1.1\r\nHost: h\r\n\r\n"
                 b"GET /api/%61 HTTP/1.1\r\nHost: h\r\n\r\n")
    responses = ResponseReader(reader)
    for _ in range(3):
        assert (await responses.next()).status == 200
    writer.close()
    assert [seen.target for seen in rig.upstream.requests] == ["/base/a"] * 3
