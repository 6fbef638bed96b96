"""JWT access tokens verified here (``jwt_issuers``): the engine's path with real keys and a fake JWKS port, the
adapter's JWKS refetch rate limit and discovery with a fake clock and fake fetches, and the configuration checks."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from typing import Any

import pytest

from phantom_token import jose
from phantom_token.cache.memory import MemoryCache
from phantom_token.config.errors import ConfigError
from phantom_token.config.loader import parse_settings
from phantom_token.config.settings import JwtIssuer, PluginConfig, Route, Upstream
from phantom_token.core.engine import Engine
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.jwt_access import listed_issuer
from phantom_token.core.request import RequestInfo
from phantom_token.core.routes import Router
from phantom_token.core.verdict import Allow, Deny
from phantom_token.introspection.issuer_keys import HttpIssuerKeys

from .fakes import FakeClock, FakeIntrospector, b64, make_jwt

ISS = "https://as.test"
KEY = jose.SigningKey.generate("ES256", kid="k1")
ISSUER = JwtIssuer(ISS, "https://as.test/jwks", "api")
SERVER = PluginConfig("http://as.test/introspect", "gw", "s", negative_cache_seconds=5)
PLUGIN = dataclasses.replace(SERVER, authorization_servers=(SERVER,), jwt_issuers=(ISSUER,))
UPSTREAM = Upstream("http", "127.0.0.1", 3001, "/")


class FakeKeys:
    """The JWKS port: ``published`` keys; ``refresh`` publishes ``next`` (None: rate-limited). Counts the calls."""

    def __init__(self, *published: jose.SigningKey) -> None:
        self.published = [k.verification_key() for k in published]
        self.next: list[jose.VerificationKey] | None = None
        self.refreshes = 0

    async def keys(self, issuer: JwtIssuer, plugin: PluginConfig) -> tuple[jose.VerificationKey, ...]:
        return tuple(self.published)

    async def refresh(self, issuer: JwtIssuer, plugin: PluginConfig) -> tuple[jose.VerificationKey, ...] | None:
        self.refreshes += 1
        if self.next is None:
            return None
        self.published = self.next
        return tuple(self.published)


def build(keys: FakeKeys, plugin: PluginConfig = PLUGIN) -> tuple[Engine, FakeIntrospector, FakeClock]:
    clock, introspector = FakeClock(), FakeIntrospector()
    router = Router((Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),))
    return Engine(router, MemoryCache(100), introspector, clock=clock, issuer_keys=keys), introspector, clock


def token(clock: FakeClock, key: jose.SigningKey = KEY, **changes: Any) -> str:
    claims = {"iss": ISS, "sub": "alice", "aud": "api", "scope": "read", "exp": int(clock.now) + 600, **changes}
    return key.sign(claims, {"typ": "at+jwt"})


def req(value: str) -> RequestInfo:
    return RequestInfo("GET", "localhost", "/api/x", {"authorization": ["Bearer " + value]})


async def decide(engine: Engine, value: str) -> Allow | Deny:
    verdict = engine.try_authorize(req(value))
    if verdict is None:
        verdict = await engine.authorize(req(value))
    assert isinstance(verdict, Allow | Deny)
    return verdict


async def test_a_verified_jwt_is_forwarded_as_is_without_introspection_and_then_is_a_plain_hit() -> None:
    engine, introspector, clock = build(FakeKeys(KEY))
    jwt = token(clock)
    verdict = await decide(engine, jwt)
    assert isinstance(verdict, Allow)
    assert verdict.authorization == "Bearer " + jwt
    assert verdict.expires_in == 300  # token_cache_seconds, under the token's 600 s
    hit = engine.try_authorize(req(jwt))  # the verification is cached under the token's key: no I/O, no crypto
    assert isinstance(hit, Allow)
    assert hit.authorization == "Bearer " + jwt
    assert introspector.calls == []


def _forged_hs256(public: jose.SigningKey, claims: dict[str, Any]) -> str:
    header = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": public.kid}).encode())
    payload = b64(json.dumps(claims).encode())
    secret = json.dumps(public.public_jwk()).encode()  # the classic confusion: the public key as an HMAC secret
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


@pytest.mark.parametrize("forgery", ["another key", "alg none", "HS256 with the public key", "expired",
                                     "wrong aud", "no exp", "nbf in the future", "bad signature"])
async def test_forged_tokens_are_401_without_an_introspection_call(forgery: str) -> None:
    engine, introspector, clock = build(FakeKeys(KEY))
    claims = {"iss": ISS, "sub": "mallory", "aud": "api", "exp": int(clock.now) + 600}
    forged = {
        "another key": lambda: token(clock, jose.SigningKey.generate("ES256", kid="k1")),
        "alg none": lambda: make_jwt(claims, alg="none").rsplit(".", 1)[0] + ".",
        "HS256 with the public key": lambda: _forged_hs256(KEY, claims),
        "expired": lambda: token(clock, exp=int(clock.now) - 1),
        "wrong aud": lambda: token(clock, aud="other-api"),
        "no exp": lambda: KEY.sign({"iss": ISS, "aud": "api"}),
        "nbf in the future": lambda: token(clock, nbf=int(clock.now) + 3600),
        "bad signature": lambda: token(clock)[:-4] + ("AAAA" if not token(clock).endswith("AAAA") else "BBBB"),
    }[forgery]()
    verdict = await decide(engine, forged)
    assert isinstance(verdict, Deny)
    assert verdict.status == 401
    assert introspector.calls == []


async def test_a_new_kid_is_fetched_once_and_a_refetch_too_soon_is_a_401() -> None:
    keys = FakeKeys(KEY)
    engine, introspector, clock = build(keys)
    rotated = jose.SigningKey.generate("ES256", kid="k2")
    keys.next = [KEY.verification_key(), rotated.verification_key()]
    assert isinstance(await decide(engine, token(clock, rotated)), Allow)
    assert keys.refreshes == 1
    unknown = jose.SigningKey.generate("ES256", kid="k3")
    keys.next = None  # the port says: fetched too recently
    denied = await decide(engine, token(clock, unknown))
    assert isinstance(denied, Deny)
    assert denied.status == 401
    assert introspector.calls == []


async def test_a_jwt_of_an_unlisted_issuer_and_an_opaque_token_are_introspected() -> None:
    engine, introspector, clock = build(FakeKeys(KEY))
    other = token(clock, iss="https://elsewhere.test")
    introspector.activate(other, {"sub": "bob", "exp": clock.now + 60})
    assert isinstance(await decide(engine, other), Allow)
    await decide(engine, "opaque")
    assert introspector.calls == [other, "opaque"]
    assert listed_issuer("a.b", (ISSUER,)) is None
    assert listed_issuer("x.y.z", (ISSUER,)) is None


async def test_no_jwks_is_a_502_not_a_401() -> None:
    class Down(FakeKeys):
        async def keys(self, issuer: JwtIssuer, plugin: PluginConfig) -> tuple[jose.VerificationKey, ...]:
            raise IntrospectionUnavailable("connection refused")

    engine, _, clock = build(Down())
    verdict = await decide(engine, token(clock))
    assert isinstance(verdict, Deny)
    assert verdict.status == 502


# ------------------------------------------------------------------------------------------- the adapter


class Fetches:
    def __init__(self, documents: dict[str, object]) -> None:
        self.documents = documents
        self.urls: list[str] = []

    async def __call__(self, url: str, plugin: PluginConfig) -> bytes:
        self.urls.append(url)
        if url not in self.documents:
            raise IntrospectionUnavailable(f"{url} answered HTTP 404")
        return json.dumps(self.documents[url]).encode()


async def test_an_unknown_kid_refetches_the_jwks_at_most_once_per_30_seconds() -> None:
    clock = FakeClock(1000.0)
    fetches = Fetches({"https://as.test/jwks": jose.jwks([KEY])})
    adapter = HttpIssuerKeys(fetches, clock=clock)
    assert [k.kid for k in await adapter.keys(ISSUER, SERVER)] == ["k1"]
    assert len(fetches.urls) == 1
    clock.now += 10
    assert await adapter.refresh(ISSUER, SERVER) is not None  # the first unknown kid: fetched again
    clock.now += 29
    assert await adapter.refresh(ISSUER, SERVER) is None  # 29 s later: refused, no request
    assert len(fetches.urls) == 2
    clock.now += 1
    assert await adapter.refresh(ISSUER, SERVER) is not None  # 30 s after the last refetch
    assert len(fetches.urls) == 3


async def test_the_jwks_uri_is_discovered_from_the_issuers_metadata_once() -> None:
    metadata = {"issuer": ISS, "jwks_uri": "https://as.test/certs"}
    fetches = Fetches({"https://as.test/.well-known/openid-configuration": metadata,
                       "https://as.test/certs": jose.jwks([KEY])})
    adapter = HttpIssuerKeys(fetches, clock=FakeClock())
    discovered = dataclasses.replace(ISSUER, jwks_uri=None)
    await adapter.keys(discovered, SERVER)
    await adapter.keys(discovered, SERVER)
    assert fetches.urls == ["https://as.test/.well-known/oauth-authorization-server",
                            "https://as.test/.well-known/openid-configuration", "https://as.test/certs"]
    impostor = Fetches({"https://as.test/.well-known/oauth-authorization-server": {**metadata, "issuer": "x"}})
    with pytest.raises(IntrospectionUnavailable, match="not the configured issuer"):
        await HttpIssuerKeys(impostor, clock=FakeClock()).keys(discovered, SERVER)


# ------------------------------------------------------------------------------------------- configuration


def document(plugin: dict[str, Any]) -> dict[str, Any]:
    return {"_format_version": "3.0", "services": [{
        "name": "api", "url": "http://127.0.0.1:3001", "routes": [{"name": "r", "paths": ["/api"]}],
        "plugins": [{"name": "phantom-token", "config": {
            "introspection_endpoint": "http://as.test/introspect", "client_id": "gw", "client_secret": "s",
            **plugin}}]}]}


def test_jwt_issuers_beside_one_server() -> None:
    settings = parse_settings(document({"audience": "api", "jwt_issuers": [{"issuer": ISS, "algorithms": "RS256"}]}),
                              source="f.yml", environ={})
    plugin = settings.routes[0].plugin
    assert plugin is not None
    assert plugin.jwt_issuers == (JwtIssuer(ISS, None, "api", ("RS256",)),)  # the plugin's audience by default
    assert [s.introspection_endpoint for s in plugin.authorization_servers] == ["http://as.test/introspect"]
    assert plugin.cache_namespace != plugin.authorization_servers[0].cache_namespace


@pytest.mark.parametrize(("item", "field", "why"), [
    ({"issuer": ISS}, "audience", "is required unless the plugin sets audience"),
    ({"issuer": ISS, "audience": "a", "algorithms": ["none"]}, "algorithms", "must be among"),
    ({"issuer": ISS, "audience": "a", "algorithms": ["HS256"]}, "algorithms", "must be among"),
    ({"issuer": "as.test", "audience": "a"}, "issuer", "must be an http:// or https:// URL"),
    ({"audience": "a"}, "issuer", "is required"),
])
def test_jwt_issuer_problems(item: dict[str, Any], field: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document({"jwt_issuers": [item]}), source="f.yml", environ={})
    [problem] = caught.value.problems
    assert problem.field == "config.jwt_issuers[0]." + field
    assert problem.why.startswith(why)


async def test_a_dpop_bound_jwt_access_token_needs_its_proof() -> None:
    from phantom_token.core.dpop import request_origin
    from tests.dpop_proofs import ProofKey

    engine, introspector, clock = build(FakeKeys(KEY))
    holder = ProofKey()
    value = token(clock, cnf={"jkt": holder.jkt})
    url = "http://localhost/api/x"
    denied = await decide(engine, value)  # as Bearer: no downgrade
    assert isinstance(denied, Deny)
    assert denied.challenge is not None
    assert denied.challenge.startswith('DPoP error="invalid_token"')
    proof = holder.proof("GET", url, value, iat=clock.now)
    request = RequestInfo("GET", "localhost", "/api/x", {"authorization": ["DPoP " + value], "dpop": [proof]},
                          origin=request_origin(public_base_url=None, scheme="http", host="localhost"))
    verdict = engine.try_authorize(request)
    assert isinstance(verdict, Allow)
    assert verdict.authorization == "Bearer " + value
    assert introspector.calls == []
