"""Request smuggling and connection handling through ``phantom-token serve``, checked on the exact bytes a raw
recording upstream received (contract section 9; docs/security.md, defects 1 and 5).

- ``Connection`` cannot remove framing: a request whose ``Connection`` header names ``Content-Length`` or
  ``Transfer-Encoding`` reaches the upstream as exactly one request, framed by the gateway from what it parsed, so
  a body holding ``GET /admin/secret HTTP/1.1`` is a body and never a second request (which would pass the
  ``/admin`` route's scope check without a token). Likewise ``Host``, ``Authorization`` and ``X-Forwarded-*``.
- Response side: an upstream answering with ``Connection: Content-Length`` still reaches the client framed, and
  the client's keep-alive connection stays usable.
- A client that reads nothing of a response is disconnected after ``send_timeout_seconds``; an ``Upgrade`` request
  with a body is answered; an HTTP version other than 1.0/1.1 is refused (505, or 400) and never forwarded;
  header names with ``_`` are not forwarded; ``max_body_bytes`` gives 413 and forwards nothing.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator

import pytest

from .conftest import AuthServer, Gateway, GatewayFactory
from .recording import (
    RawClient,
    RecordedRequest,
    RecordingUpstream,
    exchange,
    peer_closes,
    recording_upstream,
    routed_config,
)

pytestmark = pytest.mark.e2e

SMUGGLED = b"GET /admin/secret HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 16 + b"\r\n\r\n"
assert len(SMUGGLED) == 60


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as server:
        yield server


def start(gateway: GatewayFactory, auth_server: AuthServer, upstream: RecordingUpstream, **section: object
          ) -> Gateway:
    return gateway(routed_config(auth_server.introspection_endpoint, upstream.url, **section))


def admin_token(auth_server: AuthServer) -> str:
    token = "sec-" + secrets.token_urlsafe(24)
    auth_server.register_token(token, scope="admin read")
    return token


def assert_no_smuggled_request(upstream: RecordingUpstream) -> None:
    # A second request would be parsed by the upstream right after the first: give it a moment to show up.
    upstream.wait_for(lambda: any(b"/admin/secret" in r.request_line for r in upstream.requests), timeout=0.5)
    lines = upstream.request_lines()
    assert not any(b"/admin/secret" in line for line in lines), f"smuggled request reached the upstream: {lines}"


def framed_as_sent(request: RecordedRequest, body: bytes) -> None:
    """The upstream got ``body`` as this request's body, framed by exactly one Content-Length or by chunked."""
    lengths = request.header_values("Content-Length")
    chunked = [v for v in request.header_values("Transfer-Encoding") if b"chunked" in v.lower()]
    assert (lengths == [str(len(body)).encode()] and not chunked) or (chunked and not lengths), request.raw[:400]
    assert request.body == body, request.raw[:400]


# --- defect 1: Connection naming the framing headers, request side --------------------------------------------


@pytest.mark.parametrize("connection", [b"keep-alive, Content-Length", b"Content-Length", b"content-length",
                                        b"close, Content-Length", b"Content-Length, Transfer-Encoding"])
def test_connection_cannot_remove_content_length(gateway: GatewayFactory, auth_server: AuthServer,
                                                 upstream: RecordingUpstream, connection: bytes) -> None:
    gw = start(gateway, auth_server, upstream)
    request = (b"POST /public/form HTTP/1.1\r\nHost: t\r\nConnection: " + connection +
               b"\r\nContent-Length: 60\r\n\r\n" + SMUGGLED)
    with RawClient(gw.port) as client:
        client.send(request)
        response = client.read_response()
    assert response.status == 200, response.head
    assert upstream.wait_for(lambda: len(upstream.requests) >= 1)
    first = upstream.requests[0]
    assert first.request_line == b"POST /public/form HTTP/1.1"
    framed_as_sent(first, SMUGGLED)
    assert_no_smuggled_request(upstream)
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("connection", [b"Transfer-Encoding", b"keep-alive, transfer-encoding"])
def test_connection_cannot_remove_transfer_encoding(gateway: GatewayFactory, auth_server: AuthServer,
                                                    upstream: RecordingUpstream, connection: bytes) -> None:
    gw = start(gateway, auth_server, upstream)
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    request = (b"POST /public/form HTTP/1.1\r\nHost: t\r\nConnection: " + connection +
               b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    with RawClient(gw.port) as client:
        client.send(request)
        response = client.read_response()
    assert response.status == 200, response.head
    assert upstream.wait_for(lambda: len(upstream.requests) >= 1)
    framed_as_sent(upstream.requests[0], SMUGGLED)
    assert_no_smuggled_request(upstream)
    assert all(c.parse_error is None for c in upstream.connections), [c.parse_error for c in upstream.connections]


def test_smuggled_request_after_a_keep_alive_request_is_decided_on_its_own(
        gateway: GatewayFactory, auth_server: AuthServer, upstream: RecordingUpstream) -> None:
    """Two requests on one client connection, the first naming Content-Length in Connection: the upstream sees two
    requests at most, the second being the client's own (which is then decided by the gateway: 401 on /admin)."""
    gw = start(gateway, auth_server, upstream)
    with RawClient(gw.port) as client:
        client.send(b"POST /public/a HTTP/1.1\r\nHost: t\r\nConnection: Content-Length\r\nContent-Length: 60\r\n\r\n"
                    + SMUGGLED + b"GET /admin/direct HTTP/1.1\r\nHost: t\r\n\r\n")
        first = client.read_response()
        second = client.read_response()
    assert first.status == 200
    assert second.status == 401, second.head
    assert_no_smuggled_request(upstream)
    assert upstream.request_lines() == [b"POST /public/a HTTP/1.1"]


@pytest.mark.parametrize("named", [b"Authorization", b"Host", b"X-Forwarded-For", b"X-Forwarded-Host",
                                   b"X-Forwarded-Proto"])
def test_connection_cannot_remove_headers_the_gateway_sets(gateway: GatewayFactory, auth_server: AuthServer,
                                                           upstream: RecordingUpstream, named: bytes) -> None:
    gw = start(gateway, auth_server, upstream)
    token = admin_token(auth_server)
    response = exchange(gw.port, b"GET /admin/x HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, " + named +
                        b"\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n")
    assert response is not None
    assert response.status == 200, response.head
    assert upstream.wait_for(lambda: len(upstream.requests) == 1)
    got = upstream.requests[0]
    assert token.encode() not in got.raw, "the opaque token reached the upstream"
    authorization = got.header_values("Authorization")
    assert len(authorization) == 1, got.raw[:600]
    assert authorization[0].startswith(b"Bearer ey"), got.raw[:600]
    assert len(got.header_values("Host")) == 1
    for name in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"):
        assert len(got.header_values(name)) == 1, (name, got.raw[:600])


# --- defect 1: response side ----------------------------------------------------------------------------------

RESPONSES = {
    "connection-content-length": b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello",
    "keep-alive-content-length":
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, content-length\r\nContent-Length: 5\r\n\r\nhello",
    "connection-transfer-encoding":
        b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("answer", sorted(RESPONSES))
def test_response_framing_survives_a_connection_header_naming_it(
        gateway: GatewayFactory, auth_server: AuthServer, upstream: RecordingUpstream, answer: str) -> None:
    upstream.respond = lambda request: RESPONSES[answer]
    gw = start(gateway, auth_server, upstream)
    with RawClient(gw.port, timeout=5) as client:
        client.send(b"GET /public/one HTTP/1.1\r\nHost: t\r\n\r\n")
        first = client.read_response()
        assert first.framing in ("content-length", "chunked"), first.head
        assert first.body == b"hello"
        # the keep-alive connection is still usable, and the next response is framed too
        client.send(b"GET /public/two HTTP/1.1\r\nHost: t\r\n\r\n")
        second = client.read_response()
        assert second.framing in ("content-length", "chunked"), second.head
        assert second.body == b"hello"
    assert upstream.request_lines() == [b"GET /public/one HTTP/1.1", b"GET /public/two HTTP/1.1"]


def test_response_read_until_close_reaches_a_keep_alive_client_framed(
        gateway: GatewayFactory, auth_server: AuthServer, upstream: RecordingUpstream) -> None:
    """An upstream response without length (its end is the upstream closing) is re-framed for the client, or the
    client is told the connection closes: never a keep-alive response whose end the client cannot know."""
    upstream.respond = lambda request: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello"
    gw = start(gateway, auth_server, upstream)
    with RawClient(gw.port, timeout=5) as client:
        client.send(b"GET /public/close HTTP/1.1\r\nHost: t\r\n\r\n")
        response = client.read_response()
        assert response.body == b"hello"
        if response.framing == "close":
            assert (response.header("Connection") or b"").lower() == b"close", response.head
        else:
            client.send(b"GET /public/again HTTP/1.1\r\nHost: t\r\n\r\n")
            assert client.read_response().body == b"hello"


# --- defect 5: slow clients, Upgrade, versions, names, body limit ---------------------------------------------


def endless(request: RecordedRequest) -> Iterator[bytes]:
    """A 256 MiB response, sent as fast as the gateway takes it."""
    size = 256 * 1024 * 1024
    yield b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size
    block = b"x" * 65536
    for _ in range(size // len(block)):
        yield block


def test_client_that_stops_reading_is_disconnected_after_send_timeout(
        gateway: GatewayFactory, auth_server: AuthServer, upstream: RecordingUpstream) -> None:
    upstream.respond = endless
    gw = start(gateway, auth_server, upstream, send_timeout_seconds=1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    try:
        sock.connect(("127.0.0.1", gw.port))
        sock.sendall(b"GET /public/big HTTP/1.1\r\nHost: t\r\n\r\n")
        started = time.monotonic()
        # the client reads nothing: the gateway must give up on it and drop the upstream response
        gave_up = upstream.wait_for(lambda: any(c.closed_by_peer for c in upstream.connections), timeout=20)
        assert gave_up, "the gateway kept a client that reads nothing for 20 s (send_timeout_seconds: 1)"
        elapsed = time.monotonic() - started
        assert elapsed < 15, elapsed
        # and the client's connection ends (after whatever the kernel buffers held)
        assert peer_closes(sock, timeout=10), "the client connection was not closed"
    finally:
        sock.close()


def test_upgrade_request_with_a_body_is_answered(gateway: GatewayFactory, auth_server: AuthServer,
                                                  upstream: RecordingUpstream) -> None:
    gw = start(gateway, auth_server, upstream)
    request = (b"POST /public/ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
               b"Content-Length: 5\r\n\r\nhello")
    with RawClient(gw.port, timeout=5) as client:
        client.send(request)
        try:
            response = client.read_response(b"POST")
        except TimeoutError:
            pytest.fail("no answer within 5 s to an Upgrade request with a body")
        except EOFError:
            response = None  # closed without an answer: not a hang, acceptable
    if response is not None:
        assert response.status < 500 or response.status == 501, response.head
    for got in upstream.requests:  # whatever was forwarded carries the body as its body
        assert got.body == b"hello", got.raw[:400]


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/3.0", b"HTTP/0.9", b"HTTP/1.9"])
def test_unsupported_http_version_is_refused_and_not_forwarded(gateway: GatewayFactory, auth_server: AuthServer,
                                                               upstream: RecordingUpstream, version: bytes) -> None:
    gw = start(gateway, auth_server, upstream)
    response = exchange(gw.port, b"GET /public/v " + version + b"\r\nHost: t\r\n\r\n", timeout=5)
    assert response is not None, "no answer"
    assert response.status in (505, 400), response.head
    if response.status == 505:
        assert b'"http_version_not_supported"' in response.body
    assert upstream.requests == []


def test_header_names_with_underscores_are_not_forwarded(gateway: GatewayFactory, auth_server: AuthServer,
                                                         upstream: RecordingUpstream) -> None:
    gw = start(gateway, auth_server, upstream)
    response = exchange(gw.port, b"GET /public/u HTTP/1.1\r\nHost: t\r\nX_Forwarded_Host: evil.example\r\n"
                                 b"X_Forwarded_For: 192.0.2.1\r\nFoo_Bar: 1\r\nFoo-Baz: 2\r\n\r\n")
    assert response is not None
    assert response.status == 200
    assert upstream.wait_for(lambda: len(upstream.requests) == 1)
    got = upstream.requests[0]
    assert [name for name, _ in got.headers if b"_" in name] == [], got.raw[:600]
    assert b"evil.example" not in got.raw
    assert got.header("Foo-Baz") == b"2"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_max_body_bytes_is_413_and_nothing_complete_is_forwarded(
        gateway: GatewayFactory, auth_server: AuthServer, upstream: RecordingUpstream, chunked: bool) -> None:
    gw = start(gateway, auth_server, upstream, max_body_bytes=100)
    body = b"b" * 150
    if chunked:
        request = (b"POST /public/big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"40\r\n" + body[:64] + b"\r\n56\r\n" + body[64:] + b"\r\n0\r\n\r\n")
    else:
        request = b"POST /public/big HTTP/1.1\r\nHost: t\r\nContent-Length: 150\r\n\r\n" + body
    response = exchange(gw.port, request, timeout=5)
    assert response is not None
    assert response.status == 413, response.head
    if not chunked:
        assert upstream.requests == []
    assert not any(r.body == body for r in upstream.requests)
    # a body within the limit passes
    ok = exchange(gw.port, b"POST /public/small HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + body[:100])
    assert ok is not None
    assert ok.status == 200
