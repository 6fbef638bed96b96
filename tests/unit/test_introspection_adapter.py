"""The HTTP adapter with a fake authorization server: modes, client authentication, discovery, the AS's JWKS."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from phantom_token import jose
from phantom_token.config.settings import PluginConfig
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.ports import Active, Inactive
from phantom_token.http.client import BodyTooLarge, ClientResponse, ConnectError
from phantom_token.introspection.client import HttpIntrospector
from phantom_token.introspection.discovery import MetadataError, metadata_urls

from .as_fakes import FakeServer, json_response, text_response

ISSUER = "https://as.example.com/tenant"
INTROSPECT = "https://as.example.com/tenant/introspect"
JWKS_URI = "https://as.example.com/tenant/jwks"
RFC8414, OIDC = metadata_urls(ISSUER)
AS_KEY = jose.SigningKey.generate("ES256", kid="k1")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def plugin(**changes: Any) -> PluginConfig:
    values: dict[str, Any] = {"introspection_endpoint": INTROSPECT, "client_id": "gw", "client_secret": "s3cret"}
    values.update(changes)
    return PluginConfig(**values)


def signed_answer(key: jose.SigningKey = AS_KEY, active: bool = True) -> ClientResponse:
    claims = {"iss": ISSUER, "aud": "gw", "iat": int(time.time()), "token_introspection": {"active": active}}
    jwt = key.sign(claims, {"typ": "token-introspection+jwt"})
    return text_response(jwt, content_type="application/token-introspection+jwt")


def form(body: bytes) -> dict[str, list[str]]:
    return parse_qs(body.decode(), strict_parsing=True)


# --- modes ---------------------------------------------------------------------------------------------------


async def test_json_mode_sends_accept_json_and_reads_json() -> None:
    server = FakeServer({INTROSPECT: json_response({"active": True, "sub": "a"})})
    result = await HttpIntrospector(server).introspect("tok", plugin(introspection_response="json"))
    assert isinstance(result, Active)
    assert ("Accept", "application/json") in server.sent[0].headers


async def test_huge_answer_is_unavailable() -> None:
    server = FakeServer({INTROSPECT: BodyTooLarge("the response body exceeds 1048576 bytes")})
    with pytest.raises(IntrospectionUnavailable, match="BodyTooLarge"):
        await HttpIntrospector(server).introspect("tok", plugin(introspection_response="json"))


async def test_signed_mode_verifies_with_the_fetched_jwks() -> None:
    server = FakeServer({INTROSPECT: signed_answer(), JWKS_URI: json_response(jose.jwks([AS_KEY]))})
    introspector = HttpIntrospector(server)
    signed = plugin(introspection_response="signed", issuer=ISSUER, jwks_uri=JWKS_URI)
    for _ in range(3):
        assert isinstance(await introspector.introspect("tok", signed), Active)
    assert ("Accept", "application/token-introspection+jwt") in server.sent[0].headers
    assert server.calls(JWKS_URI) == 1  # cached


async def test_jwks_down_is_unavailable_with_the_reason() -> None:
    server = FakeServer({INTROSPECT: signed_answer(), JWKS_URI: ConnectError("connection refused")})
    signed = plugin(introspection_response="signed", issuer=ISSUER, jwks_uri=JWKS_URI)
    with pytest.raises(IntrospectionUnavailable, match=r"cannot use the JWKS at .*connection refused"):
        await HttpIntrospector(server).introspect("tok", signed)


async def test_jwks_answering_garbage_is_unavailable() -> None:
    server = FakeServer({INTROSPECT: signed_answer(), JWKS_URI: json_response(["not", "a", "set"])})
    signed = plugin(introspection_response="signed", issuer=ISSUER, jwks_uri=JWKS_URI)
    with pytest.raises(IntrospectionUnavailable, match="not a JWK Set"):
        await HttpIntrospector(server).introspect("tok", signed)


async def test_jwks_without_the_kid_is_refetched_once_then_refused() -> None:
    other = jose.SigningKey.generate("ES256", kid="k0")
    server = FakeServer({INTROSPECT: signed_answer(), JWKS_URI: json_response(jose.jwks([other]))})
    introspector = HttpIntrospector(server)
    signed = plugin(introspection_response="signed", issuer=ISSUER, jwks_uri=JWKS_URI)
    with pytest.raises(IntrospectionUnavailable, match="no key in the JWKS"):
        await introspector.introspect("tok", signed)
    assert server.calls(JWKS_URI) == 2  # first fetch, then one refresh for the unknown kid
    with pytest.raises(IntrospectionUnavailable, match="fetched too recently"):
        await introspector.introspect("tok", signed)
    assert server.calls(JWKS_URI) == 2  # rate-limited: forged kids cannot hammer the JWKS endpoint


async def test_key_rotation_is_picked_up_by_the_refresh() -> None:
    rotated = jose.SigningKey.generate("ES256", kid="k2")
    answers = iter([json_response(jose.jwks([AS_KEY])), json_response(jose.jwks([AS_KEY, rotated]))])
    server = FakeServer({INTROSPECT: signed_answer(rotated), JWKS_URI: lambda _body: next(answers)})
    signed = plugin(introspection_response="signed", issuer=ISSUER, jwks_uri=JWKS_URI)
    assert isinstance(await HttpIntrospector(server).introspect("tok", signed), Active)
    assert server.calls(JWKS_URI) == 2


# --- client authentication -----------------------------------------------------------------------------------


async def test_client_secret_basic_is_the_default() -> None:
    server = FakeServer({INTROSPECT: json_response({"active": False})})
    await HttpIntrospector(server).introspect("tok", plugin(introspection_response="json"))
    authorization = dict(server.sent[0].headers)["Authorization"]
    assert base64.b64decode(authorization.removeprefix("Basic ")) == b"gw:s3cret"
    assert form(server.sent[0].body) == {"token": ["tok"]}
    assert server.sent[0].repeatable  # a query that changes nothing: HttpClient may send it again on a new connection


async def test_client_secret_post_sends_the_credentials_in_the_body() -> None:
    server = FakeServer({INTROSPECT: json_response({"active": False})})
    options = plugin(introspection_response="json", client_auth_method="client_secret_post")
    assert isinstance(await HttpIntrospector(server).introspect("tok", options), Inactive)
    assert "Authorization" not in dict(server.sent[0].headers)
    assert form(server.sent[0].body) == {"token": ["tok"], "client_id": ["gw"], "client_secret": ["s3cret"]}


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "tls_client_auth"])
async def test_a_prepared_request_is_the_one_built_for_each_token(method: str) -> None:
    """The request is prepared once per plugin (docs/performance.md, "Cache misses"): each call must still send
    exactly what ``build_authenticated_request`` builds for its own token, and never an earlier token."""
    from phantom_token.introspection.client_auth import client_authentication
    from phantom_token.introspection.rfc7662 import ACCEPT_JSON, build_authenticated_request

    server = FakeServer({INTROSPECT: json_response({"active": False})})
    options = plugin(introspection_response="json", client_auth_method=method)
    introspector = HttpIntrospector(server)
    # all unreserved (sent as it is, without quote()), and tokens with characters quote() must encode
    tokens = ["first-token", "a+b/c=", "second", "A-z_0.9~", "", "a b", "t\u00e9", "a\nb", "x%41", "a&b=c",
              "a!b", "a*b", "a'b", "a(b)", "\x7f", "\x00", "~", "\u20ac", "".join(map(chr, range(128)))]
    for token in tokens:
        await introspector.introspect(token, options)
    auth = client_authentication(options, endpoint=INTROSPECT, key=None, now=0.0, jti="")
    for sent, token in zip(server.sent, tokens, strict=True):
        expected = build_authenticated_request(token, ACCEPT_JSON, auth.headers, auth.params)
        assert (sent.headers, sent.body) == (expected.headers, expected.body)
    assert form(server.sent[1].body)["token"] == ["a+b/c="]


async def test_a_new_endpoint_or_plugin_gets_its_own_prepared_request() -> None:
    other = "https://as.example.com/other/introspect"
    server = FakeServer({INTROSPECT: json_response({"active": False}), other: json_response({"active": False})})
    introspector = HttpIntrospector(server)
    await introspector.introspect("tok", plugin(introspection_response="json"))
    await introspector.introspect("tok", plugin(introspection_response="json", introspection_endpoint=other,
                                                client_id="gw2", client_auth_method="client_secret_post"))
    assert [sent.url for sent in server.sent] == [INTROSPECT, other]
    assert form(server.sent[1].body) == {"token": ["tok"], "client_id": ["gw2"], "client_secret": ["s3cret"]}
    assert "Authorization" not in dict(server.sent[1].headers)


async def test_private_key_jwt_sends_a_fresh_short_assertion(tmp_path: Path) -> None:
    key = jose.SigningKey.generate("ES256")
    (tmp_path / "client.pem").write_bytes(key.private_pem())
    server = FakeServer({INTROSPECT: json_response({"active": False})})
    options = plugin(introspection_response="json", client_auth_method="private_key_jwt", client_secret="",
                     client_private_key_file=str(tmp_path / "client.pem"), issuer=ISSUER)
    introspector = HttpIntrospector(server)
    await introspector.introspect("tok", options)
    await introspector.introspect("tok", options)
    jtis = []
    for sent in server.sent:
        fields = form(sent.body)
        assert "Authorization" not in dict(sent.headers)
        assert fields["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
        _, claims = jose.verify(fields["client_assertion"][0], [key], algorithms=["ES256"])
        assert (claims["iss"], claims["sub"], claims["aud"]) == ("gw", "gw", ISSUER)
        assert claims["exp"] - claims["iat"] == 60
        jtis.append(claims["jti"])
    assert len(set(jtis)) == 2


@pytest.mark.parametrize("key_id", [None, "gw-key-1"])
async def test_assertion_header_carries_a_kid_only_when_client_private_key_id_is_set(
    tmp_path: Path, key_id: str | None
) -> None:
    # an AS that registered the key under a kid of its own refuses any other kid, the thumbprint included
    key = jose.SigningKey.generate("ES256", kid=key_id)  # the key as the AS registered it
    (tmp_path / "client.pem").write_bytes(key.private_pem())
    server = FakeServer({INTROSPECT: json_response({"active": False})})
    options = plugin(introspection_response="json", client_auth_method="private_key_jwt", client_secret="",
                     client_private_key_file=str(tmp_path / "client.pem"), client_private_key_id=key_id)
    await HttpIntrospector(server).introspect("tok", options)
    assertion = form(server.sent[0].body)["client_assertion"][0]
    header, _ = jose.verify(assertion, [key], algorithms=["ES256"])
    expected = {"alg": "ES256", "typ": "JWT"} | ({"kid": key_id} if key_id else {})
    assert header == expected


async def test_assertion_audience_defaults_to_the_endpoint_without_issuer(tmp_path: Path) -> None:
    key = jose.SigningKey.generate("EdDSA")
    (tmp_path / "client.pem").write_bytes(key.private_pem())
    server = FakeServer({INTROSPECT: json_response({"active": False})})
    options = plugin(introspection_response="json", client_auth_method="private_key_jwt",
                     client_private_key_file=str(tmp_path / "client.pem"))
    await HttpIntrospector(server).introspect("tok", options)
    _, claims = jose.verify(form(server.sent[0].body)["client_assertion"][0], [key], algorithms=["EdDSA"])
    assert claims["aud"] == INTROSPECT


async def test_tls_client_auth_names_the_client_in_the_body() -> None:
    server = FakeServer({INTROSPECT: json_response({"active": False})})
    options = plugin(introspection_response="json", client_auth_method="tls_client_auth", client_secret="")
    await HttpIntrospector(server).introspect("tok", options)
    assert form(server.sent[0].body) == {"token": ["tok"], "client_id": ["gw"]}
    assert "Authorization" not in dict(server.sent[0].headers)
    assert server.sent[0].ssl is not None


# --- discovery -----------------------------------------------------------------------------------------------

METADATA = {"issuer": ISSUER, "introspection_endpoint": INTROSPECT, "jwks_uri": JWKS_URI}


def test_metadata_urls_follow_rfc8414_then_openid() -> None:
    assert RFC8414 == "https://as.example.com/.well-known/oauth-authorization-server/tenant"
    assert OIDC == "https://as.example.com/tenant/.well-known/openid-configuration"
    assert metadata_urls("https://as.example.com/") == [
        "https://as.example.com/.well-known/oauth-authorization-server",
        "https://as.example.com/.well-known/openid-configuration",
    ]


async def test_discovery_falls_back_to_openid_configuration() -> None:
    server = FakeServer({OIDC: json_response(METADATA), INTROSPECT: json_response({"active": True}),
                         JWKS_URI: json_response(jose.jwks([AS_KEY]))})
    introspector = HttpIntrospector(server)
    discovered = plugin(introspection_endpoint="", issuer=ISSUER, introspection_response="json")
    await introspector.start([discovered])
    assert isinstance(await introspector.introspect("tok", discovered), Active)
    assert [sent.url for sent in server.sent] == [RFC8414, OIDC, INTROSPECT]


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        ({RFC8414: json_response({**METADATA, "issuer": "https://evil.example.com"})}, "is not the configured issuer"),
        ({RFC8414: json_response({**METADATA, "issuer": ISSUER + "/"})}, "is not the configured issuer"),
        ({OIDC: json_response({"issuer": ISSUER})}, "has no introspection_endpoint"),
        ({OIDC: json_response({**METADATA, "introspection_endpoint": "javascript:alert(1)"})}, "not an http"),
        ({OIDC: text_response("<html>", content_type="text/html")}, "not JSON"),
        ({}, "answered HTTP 404"),
        ({RFC8414: ConnectError("connection refused")}, "connection refused"),
    ],
)
async def test_bad_metadata_stops_start_up(answers: dict[str, Any], reason: str) -> None:
    introspector = HttpIntrospector(FakeServer(answers))
    with pytest.raises(MetadataError, match=reason):
        await introspector.start([plugin(introspection_endpoint="", issuer=ISSUER, introspection_response="json")])


async def test_signed_mode_needs_a_jwks_uri_in_the_metadata() -> None:
    server = FakeServer({RFC8414: json_response({"issuer": ISSUER, "introspection_endpoint": INTROSPECT})})
    with pytest.raises(MetadataError, match="has no jwks_uri"):
        await HttpIntrospector(server).start([plugin(issuer=ISSUER, introspection_response="signed")])


async def test_failed_refresh_keeps_the_last_good_metadata() -> None:
    clock = Clock()
    answers = iter([json_response(METADATA), ClientResponse(503, [], b""), ClientResponse(503, [], b"")])
    server = FakeServer({RFC8414: lambda _body: next(answers), INTROSPECT: json_response({"active": False})})
    introspector = HttpIntrospector(server, clock=clock, metadata_refresh_seconds=60)
    discovered = plugin(introspection_endpoint="", issuer=ISSUER, introspection_response="json")
    await introspector.start([discovered])
    clock.now += 61
    assert isinstance(await introspector.introspect("tok", discovered), Inactive)
    assert server.calls(RFC8414) == 2
    assert server.calls(INTROSPECT) == 1
