"""Building the introspection request and reading Curity-style answers: no sockets."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs

import pytest

from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.ports import Active, Inactive
from phantom_token.introspection.rfc7662 import basic_credentials, build_request, read_jwt_response

from .fakes import b64, make_jwt


@pytest.mark.parametrize("token", ["a&b=c", "a+b/c==", "100%", "plain"])
def test_token_is_percent_encoded_and_round_trips(token: str) -> None:
    request = build_request(token, "gw", "secret")
    assert parse_qs(request.body.decode(), strict_parsing=True) == {"token": [token]}
    assert dict(request.headers)["Accept"] == "application/jwt"
    assert dict(request.headers)["Content-Type"] == "application/x-www-form-urlencoded"


def test_credentials_are_form_encoded_before_basic() -> None:
    value = basic_credentials("my client", "p@ss:w&rd")
    decoded = base64.b64decode(value.removeprefix("Basic ")).decode()
    assert decoded == "my+client:p%40ss%3Aw%26rd"


def test_jwt_body_is_active_with_cache_directives() -> None:
    jwt = make_jwt({"sub": "a", "exp": 10})
    result = read_jwt_response(200, [("Cache-Control", "private, max-age=42")], (jwt + "\n").encode())
    assert isinstance(result, Active)
    assert result.jwt == jwt
    assert result.claims["sub"] == "a"
    assert result.directives.max_age == 42


@pytest.mark.parametrize(("status", "body"), [(204, b""), (200, b'{"active": false}')])
def test_inactive_answers(status: int, body: bytes) -> None:
    assert isinstance(read_jwt_response(status, [], body), Inactive)


@pytest.mark.parametrize("blank", [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\r\n  "])
def test_blanks_around_the_answer_are_what_bytes_strip_removes(blank: str) -> None:
    """The body is stripped only when it begins or ends with a blank (bytes.strip's set): each on either side."""
    jwt = make_jwt({"sub": "a", "exp": 10})
    for body in (blank + jwt, jwt + blank, blank + jwt + blank):
        result = read_jwt_response(200, [], body.encode())
        assert isinstance(result, Active)
        assert result.jwt == jwt
    assert isinstance(read_jwt_response(200, [], (blank + '{"active": false}').encode()), Inactive)
    with pytest.raises(IntrospectionUnavailable, match="not a JWT"):  # a blank inside is no blank around
        read_jwt_response(200, [], (jwt[:10] + blank + jwt[10:]).encode())


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (401, b"", "client credentials"),
        (403, b"", "client credentials"),
        (500, b"", "HTTP 500"),
        (302, b"", "HTTP 302"),
        (200, b"not a jwt", "not a JWT"),
        (200, b"a.b.c", "not a JWT"),
        (200, b'{"active": true, "sub": "x"}', "instead of a JWT"),
        (200, b"{broken", "neither a JWT nor JSON"),
        (200, "é.é.é".encode(), "not a JWT"),
        (200, b"", "not a JWT"),
        # the one strict reader (phantom_token.jose): duplicate members, NaN, non-canonical base64url
        (200, make_jwt({"sub": "a"}).replace(b64(b'{"sub": "a"}'), b64(b'{"sub":"a","sub":"b"}')).encode(),
         "not a JWT .duplicate member"),
        (200, make_jwt({"sub": "a"}).replace(b64(b'{"sub": "a"}'), b64(b'{"exp":NaN}')).encode(), "not a JWT"),
        (200, (make_jwt({"sub": "a"}) + "B").encode(), "not a JWT .not canonical base64url"),
    ],
)
def test_server_faults_are_unavailable(status: int, body: bytes, reason: str) -> None:
    with pytest.raises(IntrospectionUnavailable, match=reason):
        read_jwt_response(status, [], body)
