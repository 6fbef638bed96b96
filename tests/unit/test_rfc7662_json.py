"""RFC 7662 JSON answers (``introspection_response: json``): only the JSON boolean ``true`` is active."""

from __future__ import annotations

import pytest

from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.ports import Active, Inactive
from phantom_token.introspection.rfc7662 import build_authenticated_request, read_json_response


def test_active_object_keeps_every_claim_and_the_cache_directives() -> None:
    body = b'{"active": true, "sub": "alice", "scope": "read", "exp": 1700000600, "ext": {"tier": "gold"}}'
    result = read_json_response(200, [("Cache-Control", "max-age=10")], body)
    assert isinstance(result, Active)
    assert result.jwt is None
    assert result.claims == {"active": True, "sub": "alice", "scope": "read", "exp": 1700000600,
                             "ext": {"tier": "gold"}}
    assert result.directives.max_age == 10


@pytest.mark.parametrize(("status", "body"), [(200, b'{"active": false}'), (200, b' {"active":false}\n'), (204, b"")])
def test_inactive(status: int, body: bytes) -> None:
    assert isinstance(read_json_response(status, [], body), Inactive)


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (200, b'{"active": "true"}', "not a JSON boolean"),
        (200, b'{"active": 1}', "not a JSON boolean"),
        (200, b'{"active": null}', "not a JSON boolean"),
        (200, b'{"sub": "alice"}', "no 'active' member"),
        (200, b"[true]", "not an object"),
        (200, b'"active"', "not an object"),
        (200, b"true", "not an object"),
        (200, b'{"active": true, "active": false}', "duplicate member"),
        (200, b'{"active": true, "exp": NaN}', "NaN is not JSON"),
        (200, b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln", "looks like a JWT"),
        (200, b"{broken", "not JSON"),
        (200, b"\xff\xfe", "not UTF-8"),
        (200, b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (401, b"", "client credentials"),
        (403, b"", "client credentials"),
        (503, b"", "HTTP 503"),
    ],
)
def test_bad_answers_are_the_servers_fault(status: int, body: bytes, reason: str) -> None:
    with pytest.raises(IntrospectionUnavailable, match=reason):
        read_json_response(status, [], body)


def test_post_parameters_are_form_encoded_after_the_token() -> None:
    request = build_authenticated_request("a+b", "application/json", [], [("client_id", "my gw"), ("x", "&=")])
    assert request.body == b"token=a%2Bb&client_id=my%20gw&x=%26%3D"
    assert ("Accept", "application/json") in request.headers
