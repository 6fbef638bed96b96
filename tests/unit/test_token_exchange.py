"""``token_exchange`` (issue 16, point 4; RFC 8693): the request and the answer, the configuration, the engine's
rules (one exchange per token and settings, the shorter lifetime, failures are 502 and never cached) and the
adapter (discovery, client authentication, transport faults): fake ports and a fake HTTP client, no sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any
from urllib.parse import parse_qs

import pytest

from phantom_token.cache.memory import MemoryCache
from phantom_token.config.errors import ConfigError
from phantom_token.config.loader import parse_settings
from phantom_token.config.settings import TOKEN_TYPE_JWT, PluginConfig, Route, TokenExchange, Upstream
from phantom_token.core.bearer import fingerprint
from phantom_token.core.engine import Engine
from phantom_token.core.errors import TokenExchangeFailed
from phantom_token.core.ports import Active, Exchanged, Inactive
from phantom_token.core.request import RequestInfo
from phantom_token.core.routes import Router
from phantom_token.core.verdict import Allow, Deny
from phantom_token.http.client import RequestTimeout
from phantom_token.introspection.client import HttpIntrospector
from phantom_token.introspection.exchange import HttpTokenExchanger
from phantom_token.introspection.rfc8693 import GRANT_TYPE, exchange_request, read_exchange_response

from .as_fakes import FakeServer, json_response, text_response
from .fakes import FakeClock, FakeIntrospector

UPSTREAM = Upstream("http", "127.0.0.1", 3001, "/")
EXCHANGE = TokenExchange(audience="orders-api", scope="orders:read", token_endpoint="https://as.test/token")
PLUGIN = PluginConfig("https://as.test/introspect", "gateway", "secret", token_exchange=EXCHANGE)
ISSUED = {"access_token": "eyJ.exchanged.jwt", "issued_token_type": TOKEN_TYPE_JWT, "token_type": "N_A",
          "expires_in": 60}

# --- the request and the answer -------------------------------------------------------------------------------------


def test_the_request_carries_the_subject_token_the_settings_and_the_client_authentication() -> None:
    settings = TokenExchange(audience="a b", resource="https://api.test/orders", scope="x y")
    headers, body = exchange_request("tok&=+", settings, [("Authorization", "Basic Zm9vOmJhcg==")],
                                     [("client_id", "gw")])
    assert ("Content-Type", "application/x-www-form-urlencoded") in headers
    assert ("Authorization", "Basic Zm9vOmJhcg==") in headers
    assert parse_qs(body.decode(), strict_parsing=True) == {
        "grant_type": [GRANT_TYPE], "subject_token": ["tok&=+"],
        "subject_token_type": ["urn:ietf:params:oauth:token-type:access_token"],
        "requested_token_type": [TOKEN_TYPE_JWT], "audience": ["a b"], "resource": ["https://api.test/orders"],
        "scope": ["x y"], "client_id": ["gw"]}
    _, minimal = exchange_request("t", TokenExchange(), [], [])
    assert set(parse_qs(minimal.decode())) == {"grant_type", "subject_token", "subject_token_type",
                                               "requested_token_type"}


def test_a_good_answer_gives_the_issued_token() -> None:
    assert read_exchange_response(200, json.dumps(ISSUED).encode()) == Exchanged(
        "eyJ.exchanged.jwt", TOKEN_TYPE_JWT, 60.0)
    without_expiry = {**ISSUED, "token_type": "Bearer"}
    del without_expiry["expires_in"]
    assert read_exchange_response(200, json.dumps(without_expiry).encode()).expires_in is None


@pytest.mark.parametrize(("status", "body", "reason"), [
    (400, {"error": "invalid_target", "error_description": "the tok3n is not for you"},
     "the token endpoint refused the exchange (HTTP 400, invalid_target)"),
    (400, {"error": "x\r\ny"}, "the token endpoint refused the exchange (HTTP 400, no valid error code)"),
    (400, "<html>", "the token endpoint refused the exchange (HTTP 400, no valid error code)"),
    (401, {"error": "invalid_client"}, "the token endpoint rejected the gateway's client credentials (HTTP 401)"),
    (500, {"error": "server_error"}, "the token endpoint answered HTTP 500"),
    (503, "", "the token endpoint answered HTTP 503"),
    (200, "<html>not json</html>", "the 200 answer is not JSON"),
    (200, ["a"], "the 200 answer is not a JSON object"),
    (200, {**ISSUED, "access_token": None}, "the answer has no access_token string"),
    (200, {**ISSUED, "access_token": "two words"}, "the issued access_token is not a valid bearer token"),
    (200, {**ISSUED, "access_token": "a\r\nX-Admin: 1"}, "the issued access_token is not a valid bearer token"),
    (200, {**ISSUED, "issued_token_type": 3}, "the answer has no issued_token_type string"),
    (200, {**ISSUED, "token_type": "DPoP"}, "the answer's token_type is not Bearer or N_A"),
    (200, {**ISSUED, "expires_in": 0}, "the answer's expires_in is not a positive number"),
    (200, {**ISSUED, "expires_in": "60"}, "the answer's expires_in is not a positive number"),
    (200, {**ISSUED, "expires_in": True}, "the answer's expires_in is not a positive number"),
])
def test_every_other_answer_is_a_failure_that_says_which(status: int, body: object, reason: str) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    with pytest.raises(TokenExchangeFailed) as caught:
        read_exchange_response(status, raw)
    assert str(caught.value).startswith(reason)
    assert "tok3n" not in str(caught.value)  # never the server's free text


# --- the configuration ----------------------------------------------------------------------------------------


def settings_for(options: dict[str, Any]) -> PluginConfig:
    document = {"_format_version": "2.1", "services": [{
        "name": "api", "url": "http://127.0.0.1:3001", "routes": [{"name": "r", "paths": ["/api"]}],
        "plugins": [{"name": "phantom-token", "config": {"client_id": "gw", "client_secret": "s", **options}}]}]}
    found = parse_settings(document, source="gw.yml", environ={}).routes[0].plugin
    assert found is not None
    return found


def problems(options: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        settings_for(options)
    return [(p.field, p.why) for p in caught.value.problems]


ENDPOINT = {"introspection_endpoint": "https://as.test/introspect"}


def test_the_block_is_read_with_its_defaults() -> None:
    found = settings_for({**ENDPOINT, "token_exchange": {"audience": "orders", "token_endpoint": "https://as/t"}})
    assert found.token_exchange == TokenExchange(audience="orders", token_endpoint="https://as/t")
    assert found.token_exchange.requested_token_type == TOKEN_TYPE_JWT
    discovered = settings_for({"issuer": "https://as.test", "token_exchange": {"resource": "https://api.test/x"}})
    assert discovered.token_exchange == TokenExchange(resource="https://api.test/x")
    assert settings_for(ENDPOINT).token_exchange is None


@pytest.mark.parametrize(("block", "expected"), [
    ({"audience": "a"}, ("config.token_exchange.token_endpoint",
                         "is required unless the plugin's issuer is set (to discover it)")),
    ({"token_endpoint": "ftp://as/t"}, ("config.token_exchange.token_endpoint",
                                        "must be an http:// or https:// URL with a host")),
    ({"token_endpoint": "https://as/t", "resource": "/relative"}, ("config.token_exchange.resource",
                                                                   "must be an absolute URI")),
    ({"token_endpoint": "https://as/t", "resource": "https://api/x#frag"}, ("config.token_exchange.resource",
                                                                            "must not have a fragment")),
    ({"token_endpoint": "https://as/t", "requested_token_type": "jwt"}, (
        "config.token_exchange.requested_token_type", "must be a URI (e.g. urn:ietf:params:oauth:token-type:jwt)")),
    ({"token_endpoint": "https://as/t", "audience": ""}, ("config.token_exchange.audience", "must not be empty")),
    ({"token_endpoint": "https://as/t", "subject_token": "x"}, ("config.token_exchange.subject_token",
                                                                "unknown field")),
])
def test_a_bad_block_is_a_check_error_with_its_location(block: dict[str, Any], expected: tuple[str, str]) -> None:
    assert problems({**ENDPOINT, "token_exchange": block}) == [expected]


def test_the_settings_join_the_cache_namespace() -> None:
    plain = PluginConfig("https://as.test/i", "gw", "s")
    other = PluginConfig("https://as.test/i", "gw", "s", token_exchange=TokenExchange(audience="billing"))
    assert len({plain.cache_namespace, PLUGIN.cache_namespace, other.cache_namespace}) == 3


# --- the engine -----------------------------------------------------------------------------------------------------


class FakeExchanger:
    def __init__(self, answer: Exchanged | TokenExchangeFailed) -> None:
        self.answer = answer
        self.calls: list[tuple[str, TokenExchange | None]] = []
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()

    async def exchange(self, token: str, plugin: PluginConfig) -> Exchanged:
        self.calls.append((token, plugin.token_exchange))
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.answer, TokenExchangeFailed):
            raise self.answer
        return self.answer


def build(answer: Exchanged | TokenExchangeFailed, plugin: PluginConfig = PLUGIN
          ) -> tuple[Engine, FakeIntrospector, FakeExchanger, FakeClock]:
    routes = (Route("orders", "svc", UPSTREAM, paths=("/orders",), plugin=plugin),
              Route("plain", "svc", UPSTREAM, paths=("/plain",), plugin=PluginConfig(
                  "https://as.test/introspect", "gateway", "secret")))
    clock, introspector, exchanger = FakeClock(), FakeIntrospector(), FakeExchanger(answer)
    engine = Engine(Router(routes), MemoryCache(100), introspector, clock=clock, exchanger=exchanger)
    return engine, introspector, exchanger, clock


def req(token: str, path: str = "/orders/1") -> RequestInfo:
    return RequestInfo("GET", "localhost", path, {"authorization": [f"Bearer {token}"]})


async def test_the_exchanged_token_goes_upstream_and_is_cached_apart_from_the_plain_entry() -> None:
    engine, introspector, exchanger, clock = build(Exchanged("exchanged", TOKEN_TYPE_JWT, 60.0))
    jwt = introspector.activate("tok", {"sub": "alice", "scope": "read", "exp": clock.now + 600})
    verdict = await engine.authorize(req("tok"))
    assert isinstance(verdict, Allow)
    assert (verdict.authorization, verdict.expires_in) == ("Bearer exchanged", 60.0)  # min(60, 600)
    assert exchanger.calls == [("tok", EXCHANGE)]
    hit = engine.try_authorize(req("tok"))
    assert isinstance(hit, Allow)
    assert hit.authorization == "Bearer exchanged"
    plain = await engine.authorize(req("tok", "/plain/1"))  # another route, no exchange: its own entry
    assert isinstance(plain, Allow)
    assert plain.authorization == "Bearer " + jwt
    assert len(exchanger.calls) == 1
    assert introspector.calls == ["tok", "tok"]
    clock.now += 61  # the exchanged token's lifetime is over, the introspection's is not: both again
    assert engine.try_authorize(req("tok")) is None
    await engine.authorize(req("tok"))
    assert len(exchanger.calls) == 2


async def test_the_introspection_lifetime_bounds_a_longer_exchanged_token() -> None:
    engine, introspector, _, clock = build(Exchanged("exchanged", TOKEN_TYPE_JWT, 3600.0))
    introspector.activate("tok", {"sub": "alice", "exp": clock.now + 100})
    verdict = await engine.authorize(req("tok"))
    assert isinstance(verdict, Allow)
    assert verdict.expires_in == 100.0


async def test_64_concurrent_requests_make_one_introspection_and_one_exchange() -> None:
    engine, introspector, exchanger, clock = build(Exchanged("exchanged", TOKEN_TYPE_JWT))
    introspector.activate("tok", {"sub": "alice", "exp": clock.now + 600})
    exchanger.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(engine.authorize(req("tok"))) for _ in range(64)]
    await exchanger.called.wait()
    exchanger.gate.set()
    verdicts = await asyncio.gather(*tasks)
    assert {v.authorization for v in verdicts if isinstance(v, Allow)} == {"Bearer exchanged"}
    assert len(verdicts) == 64
    assert (len(introspector.calls), len(exchanger.calls)) == (1, 1)


async def test_a_failed_exchange_is_a_502_with_one_log_line_and_is_never_cached(
        caplog: pytest.LogCaptureFixture) -> None:
    engine, introspector, exchanger, clock = build(TokenExchangeFailed(
        "the token endpoint refused the exchange (HTTP 400, invalid_target)"))
    introspector.activate("tok", {"sub": "alice", "exp": clock.now + 600})
    with caplog.at_level(logging.INFO, logger="phantom_token.engine"):
        verdict = await engine.authorize(req("tok"))
    assert isinstance(verdict, Deny)
    assert (verdict.status, verdict.code) == (502, "server_error")
    [line] = [r.getMessage() for r in caplog.records]
    assert "invalid_target" in line
    assert fingerprint("tok") in line
    assert "route=orders" in line
    assert engine.try_authorize(req("tok")) is None  # nothing cached
    exchanger.answer = Exchanged("exchanged", TOKEN_TYPE_JWT)
    verdict = await engine.authorize(req("tok"))
    assert isinstance(verdict, Allow)
    assert verdict.authorization == "Bearer exchanged"
    assert len(introspector.calls) == 2


async def test_an_inactive_or_refused_token_is_never_exchanged() -> None:
    engine, introspector, exchanger, clock = build(Exchanged("exchanged", TOKEN_TYPE_JWT))
    introspector.activate("old", {"sub": "alice", "exp": clock.now - 1})
    for token in ("unknown", "old"):
        verdict = await engine.authorize(req(token))
        assert isinstance(verdict, Deny)
        assert verdict.status == 401
    assert exchanger.calls == []


async def test_a_minting_mode_needs_no_minter_when_the_token_is_exchanged() -> None:
    plugin = PluginConfig("https://as.test/introspect", "gateway", "secret", introspection_response="json",
                          token_exchange=EXCHANGE, claims_to_headers=(("X-User", "sub"),))
    engine, introspector, _, clock = build(Exchanged("exchanged", TOKEN_TYPE_JWT), plugin)
    introspector.answers["tok"] = Active(None, {"active": True, "sub": "alice", "exp": clock.now + 600})
    verdict = await engine.authorize(req("tok"))
    assert isinstance(verdict, Allow)
    assert (verdict.authorization, verdict.headers) == ("Bearer exchanged", (("X-User", "alice"),))


# --- the adapter ----------------------------------------------------------------------------------------------------

ISSUER = "https://as.test"
METADATA = {"issuer": ISSUER, "introspection_endpoint": f"{ISSUER}/introspect", "token_endpoint": f"{ISSUER}/token"}


async def test_the_adapter_posts_to_the_discovered_endpoint_with_the_client_authentication() -> None:
    server = FakeServer({f"{ISSUER}/.well-known/oauth-authorization-server": json_response(METADATA),
                         f"{ISSUER}/token": json_response(ISSUED)})
    introspector = HttpIntrospector(server)
    plugin = PluginConfig("", "gateway", "secret", issuer=ISSUER, client_auth_method="client_secret_post",
                          token_exchange=TokenExchange(audience="orders"))
    await introspector.start([plugin])
    issued = await HttpTokenExchanger(introspector).exchange("tok", plugin)
    assert issued == Exchanged("eyJ.exchanged.jwt", TOKEN_TYPE_JWT, 60.0)
    sent = server.sent[-1]
    assert (sent.method, sent.url) == ("POST", f"{ISSUER}/token")
    assert not sent.repeatable  # an exchange issues a token: never sent twice (HttpClient.request's retry)
    form = parse_qs(sent.body.decode())
    assert (form["client_id"], form["client_secret"], form["audience"]) == (["gateway"], ["secret"], ["orders"])


async def test_metadata_without_a_token_endpoint_stops_start_up() -> None:
    from phantom_token.introspection.discovery import MetadataError

    server = FakeServer({f"{ISSUER}/.well-known/oauth-authorization-server": json_response(
        {k: v for k, v in METADATA.items() if k != "token_endpoint"})})
    plugin = PluginConfig("", "gateway", "secret", issuer=ISSUER, token_exchange=TokenExchange())
    with pytest.raises(MetadataError, match="no token_endpoint"):
        await HttpIntrospector(server).start([plugin])


@pytest.mark.parametrize(("answer", "reason"), [
    (RequestTimeout("no answer within 5s"), "the token endpoint could not be reached: RequestTimeout"),
    (text_response("<html>", 502, "text/html"), "the token endpoint answered HTTP 502"),
    (json_response({"error": "invalid_target"}, 400), "the token endpoint refused the exchange (HTTP 400, "
                                                      "invalid_target)"),
])
async def test_the_adapter_turns_every_fault_into_a_failure_that_says_which(answer: Any, reason: str) -> None:
    server = FakeServer({"https://as.test/token": answer})
    with pytest.raises(TokenExchangeFailed) as caught:
        await HttpTokenExchanger(HttpIntrospector(server)).exchange("tok", PLUGIN)
    assert str(caught.value).startswith(reason)
    assert isinstance(server.sent[0].body, bytes)
    assert server.sent[0].headers[0][0] == "Authorization"



def test_token_exchange_is_refused_beside_jwt_issuers() -> None:
    assert problems({**ENDPOINT, "audience": "api", "jwt_issuers": [{"issuer": "https://as.test"}],
                     "token_exchange": {"token_endpoint": "https://as.test/token"}}) == [
        ("config.token_exchange", "cannot be used with jwt_issuers (their JWTs are forwarded as they are)")]


async def test_with_several_servers_the_answering_server_exchanges_with_its_own_client() -> None:
    a = PluginConfig("https://a.test/introspect", "gw-a", "s", token_exchange=EXCHANGE)
    b = PluginConfig("https://b.test/introspect", "gw-b", "s", token_exchange=EXCHANGE)
    plugin = dataclasses.replace(a, authorization_servers=(a, b))
    clock, exchanger = FakeClock(), FakeExchanger(Exchanged("exchanged", TOKEN_TYPE_JWT))

    class ByServer(FakeIntrospector):
        async def introspect(self, token: str, plugin: PluginConfig) -> Any:
            self.calls.append(plugin.client_id)
            return await super().introspect(token, plugin) if plugin is b else Inactive()

    introspector = ByServer()
    introspector.activate("tok", {"sub": "alice", "exp": clock.now + 600})
    router = Router((Route("orders", "svc", UPSTREAM, paths=("/orders",), plugin=plugin),))
    engine = Engine(router, MemoryCache(100), introspector, clock=clock, exchanger=exchanger)
    verdict = await engine.authorize(req("tok"))
    assert isinstance(verdict, Allow)
    assert verdict.authorization == "Bearer exchanged"
    assert introspector.calls[:2] == ["gw-a", "gw-b"]
    assert [token for token, _ in exchanger.calls] == ["tok"]
    assert isinstance(engine.try_authorize(req("tok")), Allow)
