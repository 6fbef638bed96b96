"""What the proxy sends upstream and back (phantom_token.frontends.forwarding), without sockets."""

from __future__ import annotations

import pytest

from phantom_token.config.settings import Upstream
from phantom_token.frontends.forwarding import (
    authorization_line,
    forwarding_lines,
    host_header,
    request_lines,
    rewrite_response_head,
    tunnels,
)
from phantom_token.http.request_head import RequestHead, index_headers, split_target


def parsed(target: bytes, *headers: tuple[bytes, bytes]) -> RequestHead:
    head = RequestHead("POST", target, list(headers), True, False)
    index_headers(head)
    split_target(head)
    return head


def forwarded(head: RequestHead, authorization: str | None = "Bearer h.p.s") -> tuple[bytes, bytes | None]:
    parts, forwarded_for = request_lines(head, b"/up" + head.path.encode(), authorization)
    return b"".join(parts), forwarded_for


def test_the_client_s_headers_go_on_in_order_and_the_gateway_s_are_left_out() -> None:
    head = parsed(b"/x", (b"Host", b"gw"), (b"X-A", b"1"), (b"Authorization", b"Bearer opaque"), (b"x-b", b"2"),
                  (b"X-Forwarded-Host", b"evil"), (b"X-Forwarded-Proto", b"https"), (b"Expect", b"100-continue"),
                  (b"Keep-Alive", b"5"), (b"Content-Length", b"3"))
    lines, forwarded_for = forwarded(head)
    assert lines == b"POST /up/x HTTP/1.1\r\nX-A: 1\r\nx-b: 2\r\nContent-Length: 3\r\n"
    assert forwarded_for is None


def test_on_a_route_without_the_plugin_the_client_s_authorization_goes_through() -> None:
    head = parsed(b"/x", (b"Host", b"gw"), (b"Authorization", b"Bearer own.jwt.here"))
    assert forwarded(head, None)[0] == b"POST /up/x HTTP/1.1\r\nAuthorization: Bearer own.jwt.here\r\n"


@pytest.mark.parametrize("named", [b"Content-Length", b"content-length, keep-alive", b"Host", b"Authorization",
                                   b"X-Forwarded-For", b"Transfer-Encoding"])
def test_connection_cannot_remove_the_framing_or_what_the_gateway_sets(named: bytes) -> None:
    head = parsed(b"/x", (b"Host", b"gw"), (b"Connection", named), (b"Content-Length", b"60"),
                  (b"X-Forwarded-For", b"10.0.0.1"))
    lines, forwarded_for = forwarded(head)
    assert lines.endswith(b"Content-Length: 60\r\n")
    assert forwarded_for == b"10.0.0.1"


def test_connection_removes_the_other_headers_it_names() -> None:
    head = parsed(b"/x", (b"Host", b"gw"), (b"Connection", b"X-Hop, close"), (b"X-Hop", b"1"), (b"X-Kept", b"2"))
    assert forwarded(head)[0] == b"POST /up/x HTTP/1.1\r\nX-Kept: 2\r\n"


def test_the_framing_is_the_gateway_s_own() -> None:
    chunked = parsed(b"/x", (b"Host", b"gw"), (b"Transfer-Encoding", b"chunked"))
    assert forwarded(chunked)[0].endswith(b"\r\nTransfer-Encoding: chunked\r\n")
    none = parsed(b"/x", (b"Host", b"gw"))
    assert b"Content-Length" not in forwarded(none)[0]


def test_headers_with_underscores_are_not_forwarded() -> None:
    head = parsed(b"/x", (b"Host", b"gw"), (b"X_Forwarded_Host", b"evil"), (b"X-Ok", b"1"))
    assert forwarded(head)[0] == b"POST /up/x HTTP/1.1\r\nX-Ok: 1\r\n"


def test_x_forwarded_for_values_are_joined() -> None:
    head = parsed(b"/x", (b"Host", b"gw"), (b"X-Forwarded-For", b"10.0.0.1"), (b"X-Forwarded-For", b"10.0.0.2"))
    assert forwarded(head)[1] == b"10.0.0.1, 10.0.0.2"


def test_the_gateway_lines() -> None:
    assert authorization_line("Bearer h.p.s") + forwarding_lines(b"api:8080", b"gw.example", b"192.0.2.1", None) == (
        b"Authorization: Bearer h.p.s\r\nHost: api:8080\r\nX-Forwarded-For: 192.0.2.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: gw.example\r\n\r\n")
    assert authorization_line(None) + forwarding_lines(b"api", b"", b"192.0.2.1", b"10.0.0.1") == (
        b"Host: api\r\nX-Forwarded-For: 10.0.0.1, 192.0.2.1\r\nX-Forwarded-Proto: http\r\n\r\n")


def test_the_authorization_line() -> None:
    """The proxy remembers the two parts apart (the first per token, the second per route and Host)."""
    assert authorization_line(None) == b""
    assert authorization_line("Bearer h.p.s") == b"Authorization: Bearer h.p.s\r\n"
    assert authorization_line("Bearer \xe9") == b"Authorization: Bearer \xe9\r\n"  # latin-1, as before
    # between two parts, in one join: the same bytes as concatenating them
    lines = forwarding_lines(b"api", b"", b"192.0.2.1", None)
    assert authorization_line("Bearer h.p.s", b"GET / HTTP/1.1\r\n", lines) == (
        b"GET / HTTP/1.1\r\n" + b"Authorization: Bearer h.p.s\r\n" + lines)
    assert authorization_line(None, b"GET / HTTP/1.1\r\n", lines) == b"GET / HTTP/1.1\r\n" + lines
    assert authorization_line("Bearer h.p.s", after=lines) == b"Authorization: Bearer h.p.s\r\n" + lines


@pytest.mark.parametrize(("upstream", "host"), [
    (Upstream("http", "api", 80), b"api"), (Upstream("http", "api", 8080), b"api:8080"),
    (Upstream("https", "api", 443), b"api"), (Upstream("https", "::1", 8443), b"[::1]:8443"),
])
def test_the_upstream_host_header(upstream: Upstream, host: bytes) -> None:
    assert host_header(upstream) == host


def test_a_response_head_loses_its_hop_by_hop_headers_but_never_its_length() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nConnection: Content-Length, X-Hop, keep-alive\r\nContent-Length: 5\r\n"
           b"Keep-Alive: timeout=5\r\nX-Hop: 1\r\nX-Kept: 2\r\n\r\n")
    head, length, rememberable = rewrite_response_head(raw, 200)
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kept: 2\r\n"
    assert length is True
    assert rememberable is True


def test_a_response_head_with_set_cookie_is_never_remembered() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nSet-Cookie: s=1\r\n\r\n"
    head, length, rememberable = rewrite_response_head(raw, 200)
    assert head == b"HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\n"
    assert (length, rememberable) == (False, False)


@pytest.mark.parametrize(("upgrade", "asked"), [(b"websocket", True), (b"WebSocket", True), (b"h2c", False),
                                                (b"websocket, h2c", False)])
def test_only_a_websocket_upgrade_is_forwarded(upgrade: bytes, asked: bool) -> None:
    head = parsed(b"/x", (b"Host", b"gw"), (b"Connection", b"Upgrade"), (b"Upgrade", upgrade))
    assert head.upgrade
    assert tunnels(head) is asked
    assert forwarded(head)[0].endswith(b"Connection: Upgrade\r\nUpgrade: websocket\r\n") is asked
    assert b"h2c" not in forwarded(head)[0]
