"""Certificate-bound tokens (RFC 8705): the certificate headers (RFC 9440 ``Client-Cert``, Envoy's XFCC), the
``cnf`` binding, the engine's check at hit and miss, and the cache's encoding of the binding. No sockets."""

from __future__ import annotations

import base64
import hashlib
import logging
from urllib.parse import quote

import pytest

from phantom_token.cache.codec import EntryCodec
from phantom_token.cache.memory import MemoryCache
from phantom_token.config.settings import PluginConfig, Route, Upstream
from phantom_token.core.claims import cnf_member
from phantom_token.core.client_cert import InvalidCertificateHeader, der_thumbprint, pem_thumbprint, thumbprint
from phantom_token.core.engine import Engine
from phantom_token.core.ports import CacheEntry
from phantom_token.core.request import RequestInfo, TokenMemo
from phantom_token.core.routes import Router
from phantom_token.core.verdict import Allow, Deny
from phantom_token.frontends.forwarding import without_headers

from .fakes import FakeClock, FakeIntrospector

# Not a real certificate: the thumbprint is of the bytes, which need only look like DER (a SEQUENCE).
DER = b"\x30\x82\x01\x0a" + bytes(range(256)) + b"\x00" * 10
OTHER_DER = b"\x30\x03\x02\x01\x07"
X5T = der_thumbprint(DER)
B64 = base64.b64encode(DER).decode()
PEM = "-----BEGIN CERTIFICATE-----\n" + "\n".join(B64[i:i + 64] for i in range(0, len(B64), 64)) + \
    "\n-----END CERTIFICATE-----\n"
HEX = hashlib.sha256(DER).hexdigest()


def test_the_thumbprint_is_base64url_sha256_of_the_der_without_padding() -> None:
    expected = base64.urlsafe_b64encode(hashlib.sha256(DER).digest()).rstrip(b"=").decode()
    assert expected == X5T
    assert len(X5T) == 43


# --- Client-Cert (RFC 9440) -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [f":{B64}:", f"  :{B64}:  ", f":{B64.rstrip('=')}:", f":{B64}:;a=1;b"])
def test_client_cert_byte_sequence_gives_the_thumbprint(value: str) -> None:
    assert thumbprint("Client-Cert", [value]) == X5T


def test_client_cert_absent_is_none() -> None:
    assert thumbprint("Client-Cert", None) is None
    assert thumbprint("Client-Cert", []) is None


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ([B64], "structured-field byte sequence"),  # no colons
        ([f":{B64}"], "structured-field byte sequence"),
        ([f":{B64}:, :{B64}:"], "structured-field byte sequence"),  # a list: two certificates
        ([f":{B64}:", f":{B64}:"], "more than one"),  # two field lines
        ([":abc$def:"], "structured-field byte sequence"),  # outside the alphabet
        ([":" + B64.replace("+", "-") + ":"], "structured-field byte sequence"),  # base64url is not sf-binary
        (["::"], "bad base64"),
        ([":a:"], "bad base64"),  # one character left over
        ([":QUJD===:"], "bad base64"),  # too much padding
        ([":QUJDRA=:"], "bad base64"),  # padding that does not complete a quantum
        ([":QUJD:"], "not a DER certificate"),  # 'ABC'
        ([f'"{B64}"'], "structured-field byte sequence"),  # a string, not bytes
    ],
)
def test_malformed_client_cert_is_refused_with_a_reason(values: list[str], why: str) -> None:
    with pytest.raises(InvalidCertificateHeader, match=why) as refused:
        thumbprint("Client-Cert", values)
    assert B64[:20] not in str(refused.value)  # the reason never quotes the header


# --- X-Forwarded-Client-Cert (Envoy) -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        f"Hash={HEX}",
        f"By=spiffe://cluster.local/ns/default/sa/gw;Hash={HEX};Subject=\"CN=client,O=Example, Inc.\";URI=",
        f"Cert={quote(PEM, safe='')}",
        f'Cert="{quote(PEM, safe="")}";Hash={HEX.upper()}',
        f"hash={HEX}",  # keys are case-insensitive
    ],
)
def test_xfcc_hash_or_cert_gives_the_thumbprint(value: str) -> None:
    assert thumbprint("X-Forwarded-Client-Cert", [value]) == X5T


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ([f"Hash={HEX},Hash={HEX}"], "2 elements"),  # APPEND_FORWARD: which one is the client's?
        ([f"Hash={HEX}", f"Hash={HEX}"], "2 elements"),  # two field lines are two elements
        ([f'By=spiffe://a;Hash={HEX},By="x,y";Hash={HEX}'], "2 elements"),
        (["By=spiffe://a;Subject=\"CN=x\""], "no Hash or Cert"),
        ([f"Hash={HEX[:-1]}"], "64 hex"),
        ([f"Hash={HEX};Hash={HEX}"], "appears twice"),
        ([f"Cert={quote(PEM, safe='')};Hash={hashlib.sha256(OTHER_DER).hexdigest()}"], "Hash is not the SHA-256"),
        (["Cert=not%20a%20pem"], "URL-encoded PEM"),
        ([f'Subject="CN=x;Hash={HEX}'], "unterminated"),
        (["Hash"], "key=value"),
    ],
)
def test_malformed_xfcc_is_refused_with_a_reason(values: list[str], why: str) -> None:
    with pytest.raises(InvalidCertificateHeader, match=why):
        thumbprint("X-Forwarded-Client-Cert", values)


def test_a_url_encoded_pem_as_envoy_and_nginx_send_it() -> None:
    assert pem_thumbprint(quote(PEM)) == X5T
    with pytest.raises(InvalidCertificateHeader):
        pem_thumbprint("garbage")


# --- cnf ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({}, None),
        ({"cnf": {"jkt": "abc"}}, None),
        ({"cnf": {"x5t#S256": X5T}}, X5T),
        ({"cnf": {"x5t#S256": 42}}, ""),  # there, but unusable: fail closed
        ({"cnf": {"x5t#S256": ""}}, ""),
        ({"cnf": {"x5t#S256": None}}, ""),
        ({"cnf": "x5t"}, ""),
    ],
)
def test_cnf_member(claims: dict[str, object], expected: str | None) -> None:
    assert cnf_member(claims, "x5t#S256") == expected


# --- the engine -----------------------------------------------------------------------------------------------------

UPSTREAM = Upstream("http", "127.0.0.1", 3001, "/")


def build(plugin: PluginConfig) -> tuple[Engine, FakeIntrospector, FakeClock]:
    routes = (Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),)
    clock, introspector = FakeClock(), FakeIntrospector()
    return Engine(Router(routes), MemoryCache(100), introspector, clock=clock), introspector, clock


def connection(certificate: str | None, trusted: bool = False) -> TokenMemo:
    """A connection's memo with its certificate facts, as a front door sets them when the connection is made."""
    memo = TokenMemo()
    memo.client_cert_sha256, memo.trusted_peer = certificate, trusted
    return memo


def req(certificate: str | None = None, headers: dict[str, list[str]] | None = None, *,
        trusted: bool = False) -> RequestInfo:
    return RequestInfo("GET", "localhost", "/api/x", {"authorization": ["Bearer tok"], **(headers or {})},
                       connection(certificate, trusted))


def test_without_a_memo_a_request_has_no_certificate_and_no_trusted_peer() -> None:
    info = RequestInfo("GET", "h", "/", {})
    assert (info.client_cert_sha256, info.trusted_peer) == (None, False)
    info.memo = connection(X5T, True)
    assert (info.client_cert_sha256, info.trusted_peer) == (X5T, True)


PLAIN = PluginConfig("http://as.test/i", "gw", "s")
BEHIND_PROXY = PluginConfig("http://as.test/i", "gw", "s", client_cert_header="Client-Cert")


async def test_a_bound_token_needs_its_certificate_at_miss_and_at_hit(caplog: pytest.LogCaptureFixture) -> None:
    engine, introspector, clock = build(PLAIN)
    introspector.activate("tok", {"sub": "a", "exp": clock.now + 600, "cnf": {"x5t#S256": X5T}})
    allowed = await engine.authorize(req(X5T))
    assert isinstance(allowed, Allow)
    assert engine.try_authorize(req(X5T)) is not None  # a hit
    with caplog.at_level(logging.INFO, logger="phantom_token.engine"):
        for refused in (engine.try_authorize(req(der_thumbprint(OTHER_DER))), engine.try_authorize(req(None))):
            assert isinstance(refused, Deny)
            assert (refused.status, refused.challenge) == (401, 'Bearer error="invalid_token"')
    assert introspector.calls == ["tok"]  # the refusals at hit called nobody
    text = caplog.text
    assert "is not the one the token is bound to" in text
    assert "none was presented" in text
    assert "token=" in text
    assert " tok " not in text


async def test_a_bound_token_is_refused_on_the_miss_that_learns_the_binding() -> None:
    engine, introspector, clock = build(PLAIN)
    introspector.activate("tok", {"sub": "a", "exp": clock.now + 600, "cnf": {"x5t#S256": X5T}})
    refused = await engine.authorize(req(None))
    assert isinstance(refused, Deny)
    assert refused.status == 401
    assert isinstance(await engine.authorize(req(X5T)), Allow)  # cached: the binding was kept with the entry
    assert introspector.calls == ["tok"]


async def test_unbound_tokens_are_unaffected_and_a_malformed_binding_fails_closed() -> None:
    engine, introspector, clock = build(PLAIN)
    introspector.activate("tok", {"sub": "a", "exp": clock.now + 600})
    assert isinstance(await engine.authorize(req(None)), Allow)
    assert isinstance(await engine.authorize(req(X5T)), Allow)
    engine, introspector, clock = build(PLAIN)
    introspector.activate("tok", {"sub": "a", "exp": clock.now + 600, "cnf": {"x5t#S256": ["x"]}})
    assert isinstance(await engine.authorize(req(X5T)), Deny)


async def test_the_header_counts_only_from_a_trusted_peer_and_then_alone() -> None:
    engine, introspector, clock = build(BEHIND_PROXY)
    introspector.activate("tok", {"sub": "a", "exp": clock.now + 600, "cnf": {"x5t#S256": X5T}})
    header = {"client-cert": [f":{B64}:"]}
    assert isinstance(await engine.authorize(req(None, header, trusted=True)), Allow)
    assert isinstance(await engine.authorize(req(None, header, trusted=False)), Deny)  # anyone can write it
    assert isinstance(await engine.authorize(req(X5T, {}, trusted=True)), Deny)  # the proxy's TLS is not the client's
    assert isinstance(await engine.authorize(req(X5T, {}, trusted=False)), Allow)  # a direct client's own TLS
    broken = {"client-cert": [":not base64!:"]}
    assert isinstance(await engine.authorize(req(None, broken, trusted=True)), Deny)


async def test_the_binding_goes_upstream_in_the_minted_jwt_too() -> None:
    """json mode: the gateway mints the JWT, and copies cnf (the API behind may check it again)."""
    from phantom_token.core.ports import Active

    class Minter:
        issuer = "https://gw.test"
        max_lifetime_seconds = 600

        def sign(self, claims: dict[str, object]) -> str:
            self.claims = claims
            return "minted.jwt.sig"

    minter = Minter()
    plugin = PluginConfig("http://as.test/i", "gw", "s", introspection_response="json")
    routes = (Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),)
    clock, introspector = FakeClock(), FakeIntrospector()
    engine = Engine(Router(routes), MemoryCache(10), introspector, clock=clock, minter=minter)
    introspector.answers["tok"] = Active(None, {"active": True, "sub": "a", "exp": clock.now + 600,
                                                "cnf": {"x5t#S256": X5T}})
    assert isinstance(await engine.authorize(req(X5T)), Allow)
    assert minter.claims["cnf"] == {"x5t#S256": X5T}
    assert isinstance(await engine.authorize(req(None)), Deny)


# --- the shared cache's encoding ---------------------------------------------------------------------------------

STORE_KEY = b"phantom-token:" + b"ab" * 32


@pytest.mark.parametrize("secret", [None, "0123456789abcdef0123456789abcdef"])
def test_the_binding_survives_the_shared_store(secret: str | None) -> None:
    codec = EntryCodec(secret)
    for entry in (CacheEntry("Bearer a.b.c", frozenset({"read"}), 1e9, x5t_s256=X5T),
                  CacheEntry("Bearer a", frozenset(), 1e9),
                  CacheEntry("Bearer a", frozenset(), 1e9, (("X-User", "alice"),), X5T),  # with claims_to_headers
                  CacheEntry("Bearer a", frozenset(), 1e9, ())):
        assert codec.decode(codec.encode(entry, STORE_KEY), STORE_KEY) == entry


@pytest.mark.parametrize(
    "stored",
    [
        b'\x00[1e9,["read"],"Bearer a.b.c"]',  # written by a version that kept no binding: maybe a bound token's
        b'\x00[1e9,["read"],"Bearer a.b.c",{"jkt":"x"}]',  # a binding this version does not check
        b'\x00[1e9,["read"],"Bearer a.b.c",{"x5t#S256":7}]',
        b'\x00[1e9,["read"],"Bearer a.b.c",[]]',
        b'\x00[1e9,["read"],"Bearer a.b.c",[["X-User","alice"]]]',  # claims headers, no binding: an older version's
        b'\x00[1e9,["read"],"Bearer a.b.c",{},[["X-User"]]]',
    ],
)
def test_entries_whose_binding_cannot_be_kept_are_a_miss(stored: bytes) -> None:
    assert EntryCodec().decode(stored, STORE_KEY) is None


# --- serve's forwarding -----------------------------------------------------------------------------------------


def test_certificate_headers_are_removed_from_what_goes_upstream() -> None:
    head = b"GET /x HTTP/1.1\r\nAccept: */*\r\nclient-cert: :AAAA:\r\nCLIENT-CERT : :BBBB:\r\nHost: up\r\n\r\n"
    headers = {"accept": ["*/*"], "client-cert": [":AAAA:", ":BBBB:"]}
    assert without_headers(head, headers, ("client-cert",)) == b"GET /x HTTP/1.1\r\nAccept: */*\r\nHost: up\r\n\r\n"
    assert without_headers(head, {"accept": ["*/*"]}, ("client-cert",)) is head  # none sent: not even looked at


async def test_a_verified_jwt_access_token_s_cnf_binds_it_too() -> None:
    """``jwt_issuers``: an RFC 9068 JWT with ``cnf["x5t#S256"]`` is verified here and then needs its certificate."""
    import dataclasses

    from phantom_token import jose
    from phantom_token.config.settings import JwtIssuer

    from .test_jwt_issuers import FakeKeys

    key = jose.SigningKey.generate("ES256", kid="k1")
    server = PluginConfig("http://as.test/introspect", "gw", "s")
    plugin = dataclasses.replace(server, authorization_servers=(server,),
                                 jwt_issuers=(JwtIssuer("https://as.test", "https://as.test/jwks", "api"),))
    clock, introspector = FakeClock(), FakeIntrospector()
    engine = Engine(Router((Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),)), MemoryCache(10),
                    introspector, clock=clock, issuer_keys=FakeKeys(key))
    jwt = key.sign({"iss": "https://as.test", "sub": "a", "aud": "api", "exp": int(clock.now) + 600,
                    "cnf": {"x5t#S256": X5T}}, {"typ": "at+jwt"})

    def bearer(certificate: str | None) -> RequestInfo:
        return RequestInfo("GET", "localhost", "/api/x", {"authorization": ["Bearer " + jwt]}, connection(certificate))

    assert isinstance(await engine.authorize(bearer(None)), Deny)
    assert isinstance(await engine.authorize(bearer(X5T)), Allow)
    assert isinstance(engine.try_authorize(bearer(der_thumbprint(OTHER_DER))), Deny)
    assert introspector.calls == []
