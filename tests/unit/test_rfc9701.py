"""Signed introspection answers (RFC 9701): what is believed, and every way a forged or stale answer is refused."""

from __future__ import annotations

from typing import Any

import pytest

from phantom_token import jose
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.ports import Active, Inactive
from phantom_token.introspection.rfc9701 import UnknownSigningKey, read_signed_response

NOW = 1_700_000_000.0
ISSUER = "https://as.example.com"
CLIENT = "gateway"
AS_KEY = jose.SigningKey.generate("RS256", kid="as-1")
JWKS = jose.jwks([AS_KEY])
ACTIVE = {"active": True, "sub": "alice", "client_id": "app", "scope": "read", "exp": NOW + 600}


def envelope(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"iss": ISSUER, "aud": CLIENT, "iat": int(NOW), "token_introspection": ACTIVE}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def signed(claims: dict[str, Any] | None = None, *, key: jose.SigningKey = AS_KEY,
           typ: str = "token-introspection+jwt") -> bytes:
    return key.sign(claims if claims is not None else envelope(), {"typ": typ}).encode()


def read(body: bytes, status: int = 200, keys: jose.KeySource = JWKS) -> object:
    return read_signed_response(status, [("Cache-Control", "max-age=30")], body, keys=keys, issuer=ISSUER,
                                client_id=CLIENT, now=NOW, clock_skew_seconds=60)


def refused(body: bytes, reason: str, keys: jose.KeySource = JWKS) -> None:
    with pytest.raises(IntrospectionUnavailable, match=reason) as caught:
        read(body, keys=keys)
    assert "alice" not in str(caught.value)


def test_verified_answer_is_active_with_the_token_introspection_claims() -> None:
    result = read(signed())
    assert isinstance(result, Active)
    assert result.jwt is None  # the gateway mints the JWT that goes upstream
    assert result.claims == ACTIVE
    assert result.directives.max_age == 30


@pytest.mark.parametrize("typ", ["token-introspection+jwt", "application/token-introspection+jwt"])
def test_typ_with_or_without_the_application_prefix(typ: str) -> None:
    assert isinstance(read(signed(typ=typ)), Active)


def test_inactive_answer() -> None:
    assert isinstance(read(signed(envelope(token_introspection={"active": False}))), Inactive)


def test_aud_may_be_an_array() -> None:
    assert isinstance(read(signed(envelope(aud=["other", CLIENT]))), Active)


def test_forged_signature_is_refused() -> None:
    header, payload, signature = signed().decode().split(".")
    tampered = jose.b64url_encode(jose.b64url_decode(payload).replace(b"alice", b"admin"))
    refused(f"{header}.{tampered}.{signature}".encode(), "signature does not verify")


def test_re_signed_with_another_key_under_the_same_kid_is_refused() -> None:
    impostor = jose.SigningKey.generate("RS256", kid="as-1")
    refused(signed(key=impostor), "signature does not verify")


def test_signed_with_an_unknown_kid_asks_for_a_jwks_refresh() -> None:
    with pytest.raises(UnknownSigningKey, match="no key in the JWKS"):
        read(signed(key=jose.SigningKey.generate("ES256", kid="as-2")))


def test_jwks_without_any_key_is_unknown_key() -> None:
    with pytest.raises(UnknownSigningKey):
        read(signed(), keys={"keys": []})


def test_alg_none_is_refused() -> None:
    header = jose.b64url_encode(b'{"alg":"none","typ":"token-introspection+jwt"}')
    payload = jose.b64url_encode(b'{"iss":"https://as.example.com"}')
    refused(f"{header}.{payload}.".encode(), "algorithm")


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        (envelope(aud="someone-else"), "aud is not our client_id"),
        (envelope(aud=None), "aud is not our client_id"),
        (envelope(iss="https://evil.example.com"), "iss is not the configured issuer"),
        (envelope(iss=ISSUER + "/"), "iss is not the configured issuer"),
        (envelope(iat=None), "no numeric iat"),
        (envelope(iat="yesterday"), "no numeric iat"),
        (envelope(iat=int(NOW) + 600), "iat is in the future"),
        (envelope(iat=int(NOW) - 3600), "older than"),
        (envelope(exp=int(NOW) - 120), "expired"),
        (envelope(token_introspection=None), "token_introspection is not an object"),
        (envelope(token_introspection="active"), "token_introspection is not an object"),
        (envelope(token_introspection={"active": "true"}), "not a JSON boolean"),
        (envelope(token_introspection={"sub": "alice"}), "no .active. member"),
    ],
)
def test_bad_envelopes_are_refused(claims: dict[str, Any], reason: str) -> None:
    refused(signed(claims), reason)


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "token-introspection"])
def test_wrong_typ_is_refused(typ: str) -> None:
    refused(signed(typ=typ), "typ is not token-introspection\\+jwt")


def test_missing_typ_is_refused() -> None:
    token = AS_KEY.sign(envelope(), {"typ": None})
    refused(token.encode(), "typ")


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (200, b'{"active": true, "sub": "alice"}', "JSON instead of a signed JWT"),
        (200, b"garbage", "not a signed JWT"),
        (200, "é".encode(), "not ASCII"),
        (401, b"", "client credentials"),
        (500, b"", "HTTP 500"),
    ],
)
def test_server_faults(status: int, body: bytes, reason: str) -> None:
    with pytest.raises(IntrospectionUnavailable, match=reason):
        read(body, status)
