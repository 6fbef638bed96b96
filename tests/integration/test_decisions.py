"""The decision service front door over a socket: the real protocol on 127.0.0.1 with a fake engine, so trust is
decided by the real peer address against ``trusted_proxies`` (loopback trusted by default; a list without loopback
makes the test client an untrusted peer). Which request is asked about, without sockets: tests/unit/test_decisions.py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import ip_network
from pathlib import Path

import pytest

from phantom_token.config.material import listener_context
from phantom_token.config.settings import PluginConfig, Route, Settings, TlsSettings
from phantom_token.core import verdict as v
from phantom_token.core.request import RequestInfo
from phantom_token.frontends.decisions import start_decisions
from phantom_token.http.server import HttpServer

from ..certificates import Pki

PLUGIN = PluginConfig("http://127.0.0.1:1/introspect", "client", "secret", scope=("admin",))
ROUTE = Route("api", "svc", None, paths=("/api",), plugin=PLUGIN)


class FakeEngine:
    """Records what it is asked; answers synchronously unless ``slow`` (then only ``authorize`` answers)."""

    def __init__(self, answer: Callable[[RequestInfo], v.Verdict], *, slow: bool = False) -> None:
        self.answer = answer
        self.slow = slow
        self.asked: list[RequestInfo] = []

    def try_authorize(self, request: RequestInfo) -> v.Verdict | None:
        if self.slow:
            return None
        self.asked.append(request)
        return self.answer(request)

    async def authorize(self, request: RequestInfo, *, uncancelled: bool = False) -> v.Verdict:
        await asyncio.sleep(0)
        self.asked.append(request)
        return self.answer(request)


def _by_path(request: RequestInfo) -> v.Verdict:
    if request.path.startswith("/api"):
        return v.Allow(ROUTE, "Bearer h.p.s", 60.0)
    return v.not_found()


async def _exchange(server: HttpServer, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


Serve = Callable[[FakeEngine, Settings], Awaitable[HttpServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[HttpServer] = []

    async def start(engine: FakeEngine, settings: Settings) -> HttpServer:
        server = await start_decisions(engine, settings, "127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def _request(path: str, *extra: tuple[str, str], method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: authz.local", "Connection: close", *(f"{n}: {v}" for n, v in extra)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("slow", [False, True])
@pytest.mark.parametrize("path", ["/authz", "/authz/nginx", "/authz/forwarded", "/authz/envoy/api/x", "/other"])
async def test_an_untrusted_peer_gets_403_on_every_endpoint(serve: Serve, slow: bool, path: str) -> None:
    engine = FakeEngine(_by_path, slow=slow)
    settings = Settings((ROUTE,), trusted_proxies=(ip_network("192.0.2.0/24"),))  # the test client is not in it
    server = await serve(engine, settings)
    answer = await _exchange(server, _request(path, ("X-Forwarded-Uri", "/api/secret"), ("X-Original-URI", "/api")))
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"Cache-Control: no-store" in answer
    assert answer.endswith(b'{"code":"forbidden","message":"The decision service answers trusted proxies only"}')
    assert engine.asked == []


@pytest.mark.parametrize("slow", [False, True])
async def test_trusted_loopback_peer_is_matched_on_the_forwarded_request(serve: Serve, slow: bool) -> None:
    engine = FakeEngine(_by_path, slow=slow)
    server = await serve(engine, Settings((ROUTE,)))  # the default trusts loopback
    answer = await _exchange(server, _request("/authz", ("X-Forwarded-Uri", "/api/x"), ("X-Forwarded-Host", "h")))
    head = answer.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"HTTP/1.1 200 OK"
    assert head[1:4] == [b"Authorization: Bearer h.p.s", b"X-Accel-Expires: 60", b"Cache-Control: private, max-age=60"]
    assert [(r.host, r.path) for r in engine.asked] == [("h", "/api/x")]


async def test_missing_original_uri_is_a_clear_400_and_the_engine_is_not_asked(serve: Serve) -> None:
    engine = FakeEngine(_by_path)
    server = await serve(engine, Settings((ROUTE,)))
    answer = await _exchange(server, _request("/authz"))
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"Cache-Control: no-store" in answer
    assert answer.endswith(b'{"code":"invalid_request","message":"The decision request has no X-Original-URI or '
                           b'X-Original-URL header"}')
    assert engine.asked == []


async def test_head_gets_headers_only_and_a_body_is_discarded(serve: Serve) -> None:
    engine = FakeEngine(lambda _r: v.unauthorized(token_sent=False))
    server = await serve(engine, Settings((ROUTE,)))
    head_answer = await _exchange(server, _request("/authz/envoy/api", method="HEAD"))
    assert head_answer.startswith(b"HTTP/1.1 401 ")
    assert head_answer.endswith(b"\r\n\r\n")
    body_request = _request("/authz/envoy/api", ("Content-Length", "5"), method="POST") + b"hello"
    post_answer = await _exchange(server, body_request)
    assert post_answer.endswith(b'"Missing, invalid or expired access token"}')


async def test_keep_alive_allows_are_rendered_once_and_stay_correct(serve: Serve) -> None:
    engine = FakeEngine(_by_path)
    server = await serve(engine, Settings((ROUTE,)))
    one = b"GET /authz/envoy/api/x HTTP/1.1\r\nHost: h\r\n\r\n"
    last = b"GET /authz/envoy/api/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    answer = await _exchange(server, one + one + last)
    responses = answer.split(b"HTTP/1.1 ")[1:]
    assert len(responses) == 3
    expected = (b"200 OK\r\nAuthorization: Bearer h.p.s\r\nX-Accel-Expires: 60\r\n"
                b"Cache-Control: private, max-age=60\r\nContent-Length: 0\r\n")
    assert responses[0] == responses[1] == expected + b"\r\n"
    assert responses[2] == expected + b"Connection: close\r\n\r\n"


@pytest.mark.parametrize("keep_alive", [True, False])
async def test_a_jwt_that_would_split_the_response_is_a_502(serve: Serve, keep_alive: bool) -> None:
    engine = FakeEngine(lambda _r: v.Allow(ROUTE, "Bearer a\r\nX-Evil: 1", 60.0))
    server = await serve(engine, Settings((ROUTE,)))
    request = _request("/authz/envoy/api")
    answer = await _exchange(server, request.replace(b"Connection: close", b"X-A: b") if keep_alive else request)
    assert answer.startswith(b"HTTP/1.1 502 ")
    assert b"X-Evil" not in answer


async def test_over_tls_the_gateway_s_own_certificate_is_never_taken_for_its_client_s(tmp_path: Path) -> None:
    """``phantom_token.tls`` on ``authz``: the calling gateway's TLS client certificate is the gateway's, so the
    engine gets no certificate from it; a client's comes in the plugin's header, believed as every peer here is
    trusted (``RequestInfo.trusted_peer``). ``required`` answers a gateway without a certificate 400."""
    pki = Pki(tmp_path)
    gateway_cert, gateway_key, _ = pki.client("nginx")
    tls = TlsSettings(str(pki.server_cert), str(pki.server_key), str(pki.ca_file), "required")
    engine = FakeEngine(_by_path)
    server = await start_decisions(engine, Settings((ROUTE,), tls=tls), "127.0.0.1", 0, tls=listener_context(tls))
    try:
        client = ssl.create_default_context(cafile=str(pki.ca_file))
        client.load_cert_chain(str(gateway_cert), str(gateway_key))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client,
                                                       server_hostname="localhost")
        writer.write(_request("/authz/envoy/api/x", ("Client-Cert", ":MAMCAQU=:")))
        answer = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert [(r.client_cert_sha256, r.trusted_peer) for r in engine.asked] == [(None, True)]
        anonymous = ssl.create_default_context(cafile=str(pki.ca_file))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=anonymous,
                                                       server_hostname="localhost")
        writer.write(_request("/authz/envoy/api/x"))
        answer = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert answer.endswith(b'{"code":"invalid_request","message":"No required TLS client certificate was sent"}')
        assert len(engine.asked) == 1
    finally:
        server.close()
        await server.wait_closed()
