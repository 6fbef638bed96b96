"""Hostile and unusual input against the real gateway: odd token characters, oversized and duplicate headers,
malformed bytes on the socket, a misbehaving authorization server, and a stampede of one new token.

Contract section 4: a token must match RFC 6750 ``b64token`` (``[A-Za-z0-9\\-._~+/]+=*``). So ``+``, ``/`` and
trailing ``=`` are legal and must reach the introspection endpoint intact (the gateway percent-encodes them: an
unencoded ``+`` would arrive as a space), while ``&``, ``%``, ``=`` inside the token, spaces and non-ASCII bytes
make it invalid: 401 ``invalid_token`` without any introspection call.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from .conftest import (
    UNAUTHORIZED_BODY,
    AuthServer,
    Gateway,
    GatewayFactory,
    HttpResult,
    dump,
    plugin_options,
    raw_exchange,
)

pytestmark = pytest.mark.e2e

SERVER_ERROR = {"code": "server_error", "message": "Problem encountered authorizing the HTTP request"}
INVALID_REQUEST = {"code": "invalid_request", "message": "Malformed authorization header"}


def assert_invalid_token(result: HttpResult) -> None:
    assert result.status == 401, result.text
    assert result.json() == UNAUTHORIZED_BODY
    assert result.header("WWW-Authenticate") == 'Bearer error="invalid_token"'


def assert_forwarded_jwt(result: HttpResult, opaque: str) -> None:
    assert result.status == 200, result.text
    assert opaque not in result.text
    assert result.json()["jwt_claims"]["client_id"] == "demo-client"


# --- token characters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["abc+def/ghi==", "a+b+c", "++//", "tok.with-all_the~legal+chars/=", "x" * 4096],
    ids=["plus-slash-padding", "pluses", "only-plus-slash", "every-legal-char", "max-length"],
)
def test_legal_special_characters_reach_the_authorization_server_intact(
    started_gateway: Gateway, auth_server: AuthServer, token: str
) -> None:
    auth_server.register_token(token)
    assert_forwarded_jwt(started_gateway.get_with_token(token), token)
    # the AS counted a call for exactly this value: nothing was lost or decoded on the way
    assert auth_server.introspections(token) == 1
    assert auth_server.introspections() == 1


@pytest.mark.parametrize(
    "token",
    ["abc&token=other", "abc%2Bdef", "abc%", "abc=def", "=abc", "a;b", "a,b", 'a"b', "a\\b"],
)
def test_illegal_characters_are_refused_without_introspection(
    started_gateway: Gateway, auth_server: AuthServer, token: str
) -> None:
    auth_server.register_token(token)  # even a value the AS would accept never reaches it
    assert_invalid_token(started_gateway.get_with_token(token))
    assert auth_server.introspections() == 0


@pytest.mark.parametrize("value", ["Bearer abc def", "Bearer a\tb", "Bearer ", "Bearer", "Bearerabc"])
def test_spaces_inside_or_no_token(started_gateway: Gateway, auth_server: AuthServer, value: str) -> None:
    result = started_gateway.request("/api/x", [("Authorization", value)])
    assert result.status == 401, result.text
    assert result.json() == UNAUTHORIZED_BODY
    assert auth_server.introspections() == 0


@pytest.mark.parametrize(
    "value",
    [b"Bearer abc\xc3\xa9def", b"Bearer \xff\xfe", b"Bearer abc\x80", "Bearer caf\u00e9".encode("latin-1")],
    ids=["utf8", "invalid-utf8", "high-byte", "latin1"],
)
def test_non_ascii_bytes(started_gateway: Gateway, auth_server: AuthServer, value: bytes) -> None:
    assert_invalid_token(started_gateway.request("/api/x", [("Authorization", value)]))
    assert auth_server.introspections() == 0


def test_control_characters(started_gateway: Gateway, auth_server: AuthServer) -> None:
    """A NUL or other control byte in a header value is a framing error (400) or an invalid token (401)."""
    response = raw_exchange(
        started_gateway.host,
        started_gateway.port,
        b"GET /api/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer ab\x00cd\r\nConnection: close\r\n\r\n",
    )
    assert response.split(b" ", 2)[1] in (b"400", b"401")
    assert auth_server.introspections() == 0


def test_20_kilobyte_authorization_header(started_gateway: Gateway, auth_server: AuthServer) -> None:
    token = "a" * 20 * 1024
    auth_server.register_token(token)
    assert_invalid_token(started_gateway.get_with_token(token))
    assert auth_server.introspections() == 0


def test_duplicate_authorization_headers(started_gateway: Gateway, auth_server: AuthServer) -> None:
    token = auth_server.issue_token()
    result = started_gateway.request(
        "/api/x", [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    )
    assert result.status == 400, result.text
    assert result.json() == INVALID_REQUEST
    assert result.header("WWW-Authenticate") == 'Bearer error="invalid_request"'
    assert auth_server.introspections() == 0


# --- malformed HTTP ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",  # a TLS ClientHello
    ],
    ids=["garbage", "duplicate-content-length", "cl-and-te", "space-in-name", "bad-content-length", "tls"],
)
def test_malformed_request_bytes_then_keeps_serving(
    started_gateway: Gateway, auth_server: AuthServer, data: bytes
) -> None:
    response = raw_exchange(started_gateway.host, started_gateway.port, data)
    assert response.startswith(b"HTTP/1.1 400 "), response[:200]
    token = auth_server.issue_token()
    assert_forwarded_jwt(started_gateway.get_with_token(token), token)
    assert auth_server.introspections() == 1  # the malformed request never reached the engine


# --- a misbehaving authorization server ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "controls",
    [
        {"failure": "status", "failure_status": 500},
        {"failure": "status", "failure_status": 503},
        {"failure": "status", "failure_status": 403},
        {"failure": "status", "failure_status": 400},
        {"failure": "garbage"},
        {"failure": "hang"},
    ],
    ids=["500", "503", "403", "400", "garbage-body", "hang"],
)
def test_misbehaving_authorization_server_is_a_502_and_is_not_cached(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer, controls: dict[str, Any]
) -> None:
    plugin_options(plugin_config)["introspection_timeout_seconds"] = 1
    gw = gateway(dump(plugin_config))
    token = auth_server.issue_token()
    auth_server.set_controls(**controls)
    result = gw.get_with_token(token)
    assert result.status == 502, result.text
    assert result.json() == SERVER_ERROR
    # errors are never cached: once the AS recovers, the same token works
    auth_server.set_controls(failure="none")
    assert_forwarded_jwt(gw.get_with_token(token), token)
    assert auth_server.introspections(token) == 2


def test_revoked_token_is_inactive(started_gateway: Gateway, auth_server: AuthServer) -> None:
    token = auth_server.issue_token()
    auth_server.revoke(token)
    assert_invalid_token(started_gateway.get_with_token(token))


# --- single flight ------------------------------------------------------------------------------------------


def test_one_introspection_for_fifty_concurrent_requests(started_gateway: Gateway, auth_server: AuthServer) -> None:
    token = auth_server.issue_token()
    auth_server.set_controls(delay_ms=200)
    results: list[HttpResult | BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(50)

    def call() -> None:
        try:
            start.wait(timeout=30)
            result: HttpResult | BaseException = started_gateway.get_with_token(token)
        except BaseException as exc:  # reported below, with the others
            result = exc
        with lock:
            results.append(result)

    threads = [threading.Thread(target=call) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 50
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    statuses = [r.status for r in results if isinstance(r, HttpResult)]
    assert statuses == [200] * 50
    assert auth_server.introspections(token) == 1


def test_one_keep_alive_connection_switching_tokens(started_gateway: Gateway, auth_server: AuthServer) -> None:
    """A connection remembers the key of the token it last sent (to skip hashing a repeat): each request must
    still be decided on its own token, including a broken one in between."""
    import http.client
    import json

    auth_server.register_token("conn-token-a", scope="read")
    auth_server.register_token("conn-token-b", scope="write")
    conn = http.client.HTTPConnection(started_gateway.host, started_gateway.port, timeout=10)
    seen = []
    try:
        for token in ["conn-token-a", "conn-token-b", "conn-token-a", "conn-token-a junk", "conn-token-b"]:
            conn.request("GET", "/api/echo", headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            body = response.read()
            seen.append((response.status, json.loads(body)["jwt_claims"]["scope"] if response.status == 200
                         else json.loads(body)["code"]))
    finally:
        conn.close()
    assert seen == [(200, "read"), (200, "write"), (200, "read"), (401, "unauthorized"), (200, "write")]
    assert auth_server.introspections("conn-token-a") == 1
    assert auth_server.introspections("conn-token-b") == 1
