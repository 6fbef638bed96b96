"""Several authorization servers on one route (``authorization_servers``, ``token_prefix``): the choice rule, the
configuration checks, the engine's walk with a fake clock and fake ports, and the purge of every namespace."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from phantom_token.cache.memory import MemoryCache
from phantom_token.cache.purge import Purger, namespaces
from phantom_token.config.errors import ConfigError
from phantom_token.config.loader import parse_settings
from phantom_token.config.settings import PluginConfig, Route, Upstream, introspection_servers
from phantom_token.core.engine import Engine
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.keys import namespaced_key, token_digest
from phantom_token.core.ports import Active, Inactive, IntrospectionResult
from phantom_token.core.request import RequestInfo
from phantom_token.core.routes import Router
from phantom_token.core.servers import candidates
from phantom_token.core.verdict import Allow, Deny

from .fakes import FakeClock, make_jwt

UPSTREAM = Upstream("http", "127.0.0.1", 3001, "/")
A = PluginConfig("http://a.test/introspect", "gw", "s")
B = PluginConfig("http://b.test/introspect", "gw", "s")
C = PluginConfig("http://c.test/introspect", "gw", "s")


def several(*servers: PluginConfig, **route_options: Any) -> PluginConfig:
    views = tuple(dataclasses.replace(server, **route_options) for server in servers)
    return dataclasses.replace(views[0], authorization_servers=views)


# ------------------------------------------------------------------------------------------- the choice rule


def test_the_server_whose_prefix_the_token_starts_with_is_the_only_one_asked() -> None:
    a, b, c = (dataclasses.replace(A, token_prefix="ghp_"), B, dataclasses.replace(C, token_prefix="cur_"))
    assert candidates((a, b, c), "cur_123") == (c,)
    assert candidates((a, b, c), "ghp_x") == (a,)


def test_a_token_without_a_known_prefix_goes_to_the_unprefixed_servers_in_order() -> None:
    a, b, c = (B, dataclasses.replace(A, token_prefix="ghp_"), C)
    assert candidates((a, b, c), "opaque") == (a, c)
    assert candidates((b,), "opaque") == ()  # every server has a prefix, none matches: nobody is asked


# ------------------------------------------------------------------------------------------- configuration

ITEM_A = {"introspection_endpoint": "http://a.test/introspect", "client_id": "gw", "client_secret": "s"}
ITEM_B = {"introspection_endpoint": "http://b.test/introspect", "client_id": "gw", "client_secret": "s"}


def document(plugin: dict[str, Any]) -> dict[str, Any]:
    return {"_format_version": "3.0", "services": [{
        "name": "api", "url": "http://127.0.0.1:3001", "routes": [{"name": "r", "paths": ["/api"]}],
        "plugins": [{"name": "phantom-token", "config": plugin}]}]}


def problems(plugin: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document(plugin), source="f.yml", environ={})
    return [(p.field, p.why) for p in caught.value.problems]


def test_each_server_gets_the_route_options_and_its_own() -> None:
    settings = parse_settings(document({"scope": "read", "token_cache_seconds": 60, "authorization_servers": [
        {**ITEM_A, "token_prefix": "a_"}, {**ITEM_B, "client_auth_method": "client_secret_post"}]}),
        source="f.yml", environ={})
    plugin = settings.routes[0].plugin
    assert plugin is not None
    first, second = plugin.authorization_servers
    assert (first.token_prefix, second.client_auth_method) == ("a_", "client_secret_post")
    assert first.scope == second.scope == plugin.scope == ("read",)
    assert second.token_cache_seconds == 60
    assert plugin.introspection_endpoint == first.introspection_endpoint  # the plugin's own server is the first
    assert introspection_servers(plugin) == (first, second)
    # every server has its own namespace, and the route's outcome one more
    assert len({plugin.cache_namespace, first.cache_namespace, second.cache_namespace}) == 3


@pytest.mark.parametrize(("first", "second"), [("ab_", "ab_"), ("ab", "ab_x"), ("ab_x", "ab")])
def test_duplicate_or_overlapping_prefixes_are_refused(first: str, second: str) -> None:
    found = problems({"authorization_servers": [{**ITEM_A, "token_prefix": first},
                                                {**ITEM_B, "token_prefix": second}]})
    assert found == [("config.authorization_servers[1].token_prefix",
                      "overlaps the token_prefix of authorization_servers[0]: a token would have two owners")]


def test_problems_name_their_server_and_route_options_are_reported_once() -> None:
    found = problems({"client_id": "gw", "scope": 5, "authorization_servers": [
        {**ITEM_A, "client_id": None, "realm": "x"}, {**ITEM_B, "token_prefix": "a b"}, 3,
        {**ITEM_B, "client_id": "gw2", "bogus": 1}]})
    assert found == [
        ("config.client_id", "is set in each authorization_servers item when that list is used"),
        ("config.authorization_servers[0].realm", "is a route option: set it beside authorization_servers"),
        ("config.authorization_servers[0].client_id", "is required"),
        ("config.scope", "expected a string, got an integer"),
        ("config.authorization_servers[1].token_prefix", "must be visible ASCII characters (no spaces)"),
        ("config.authorization_servers[2]", "expected a mapping, got an integer"),
        ("config.authorization_servers[3].bogus", "unknown field"),
    ]


def test_the_same_server_twice_is_refused() -> None:
    assert problems({"authorization_servers": [ITEM_A, {**ITEM_A, "token_prefix": "x"}]}) == [
        ("config.authorization_servers[1]", "is the same server and client as authorization_servers[0]")]


def test_token_prefix_outside_an_item_and_an_empty_list_are_refused() -> None:
    assert problems({**ITEM_A, "token_prefix": "x"}) == [
        ("config.token_prefix", "is only used in an authorization_servers item")]
    assert problems({"authorization_servers": []}) == [
        ("config.authorization_servers", "expected a non-empty list of mappings, got a list")]


# ------------------------------------------------------------------------------------------- the engine's walk


class ServersIntrospector:
    """Answers per (endpoint, token); records the calls as (endpoint host, token)."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], IntrospectionResult | IntrospectionUnavailable] = {}
        self.calls: list[tuple[str, str]] = []

    def activate(self, server: PluginConfig, token: str, exp: float) -> str:
        jwt = make_jwt({"sub": token, "scope": "read", "exp": exp})
        self.answers[(server.introspection_endpoint, token)] = Active(jwt, {"sub": token, "exp": exp})
        return jwt

    async def introspect(self, token: str, plugin: PluginConfig) -> IntrospectionResult:
        self.calls.append((plugin.introspection_endpoint.split("/")[2], token))
        answer = self.answers.get((plugin.introspection_endpoint, token), Inactive())
        if isinstance(answer, IntrospectionUnavailable):
            raise answer
        return answer


def build(plugin: PluginConfig) -> tuple[Engine, ServersIntrospector, FakeClock, MemoryCache]:
    clock, introspector, cache = FakeClock(), ServersIntrospector(), MemoryCache(100)
    router = Router((Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),))
    return Engine(router, cache, introspector, clock=clock), introspector, clock, cache


def req(token: str) -> RequestInfo:
    return RequestInfo("GET", "localhost", "/api/x", {"authorization": ["Bearer " + token]})


async def decide(engine: Engine, token: str) -> Allow | Deny:
    verdict = engine.try_authorize(req(token))
    if verdict is None:
        verdict = await engine.authorize(req(token))
    assert isinstance(verdict, Allow | Deny)
    return verdict


async def test_ordered_choice_asks_until_one_is_active_then_one_lookup_serves_it() -> None:
    plugin = several(A, B, C)
    engine, introspector, clock, _ = build(plugin)
    jwt = introspector.activate(plugin.authorization_servers[1], "tok-b", clock.now + 3600)
    verdict = await decide(engine, "tok-b")
    assert isinstance(verdict, Allow)
    assert verdict.authorization == "Bearer " + jwt
    assert introspector.calls == [("a.test", "tok-b"), ("b.test", "tok-b")]  # c is never asked
    for _ in range(3):  # cached: answered without I/O, by the route's outcome key
        hit = engine.try_authorize(req("tok-b"))
        assert isinstance(hit, Allow)
        assert hit.authorization == "Bearer " + jwt
    clock.now += 10  # a's negative entry has gone; the outcome stays: still no call
    assert isinstance(engine.try_authorize(req("tok-b")), Allow)
    assert len(introspector.calls) == 2


async def test_prefix_choice_asks_the_owner_alone() -> None:
    plugin = several(A, dataclasses.replace(B, token_prefix="b_"))
    engine, introspector, clock, _ = build(plugin)
    introspector.activate(plugin.authorization_servers[1], "b_tok", clock.now + 3600)
    introspector.activate(plugin.authorization_servers[0], "b_tok", clock.now + 3600)  # never asked: b owns it
    assert isinstance(await decide(engine, "b_tok"), Allow)
    assert isinstance(await decide(engine, "b_tok"), Allow)
    assert introspector.calls == [("b.test", "b_tok")]
    inactive = await decide(engine, "b_junk")
    assert isinstance(inactive, Deny)
    assert inactive.status == 401
    assert introspector.calls[1:] == [("b.test", "b_junk")]


async def test_a_junk_token_costs_one_call_per_server_then_is_negatively_cached() -> None:
    engine, introspector, clock, _ = build(several(A, B, negative_cache_seconds=5))
    for _ in range(3):
        verdict = await decide(engine, "junk")
        assert isinstance(verdict, Deny)
        assert verdict.status == 401
    assert introspector.calls == [("a.test", "junk"), ("b.test", "junk")]
    clock.now += 6
    await decide(engine, "junk")
    assert len(introspector.calls) == 4


async def test_a_server_down_is_passed_over_but_never_turns_into_a_401() -> None:
    plugin = several(A, B)
    engine, introspector, clock, _ = build(plugin)
    introspector.answers[(A.introspection_endpoint, "tok-a")] = IntrospectionUnavailable("connection refused")
    introspector.answers[(A.introspection_endpoint, "tok-b")] = IntrospectionUnavailable("connection refused")
    introspector.activate(plugin.authorization_servers[1], "tok-b", clock.now + 3600)
    down = await decide(engine, "tok-a")  # maybe a's token: b says inactive, a could not say
    assert isinstance(down, Deny)
    assert down.status == 502
    assert isinstance(await decide(engine, "tok-b"), Allow)  # b's tokens still work while a is down
    again = await decide(engine, "tok-a")  # nothing of the failure was cached
    assert isinstance(again, Deny)
    assert again.status == 502
    assert introspector.calls.count(("a.test", "tok-a")) == 2


async def test_purge_removes_the_token_from_every_servers_namespace_and_the_routes() -> None:
    plugin = several(A, B)
    engine, introspector, clock, cache = build(plugin)
    introspector.activate(plugin.authorization_servers[1], "tok-b", clock.now + 3600)
    await decide(engine, "tok-b")
    routes = (Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),)
    report = await Purger(cache, namespaces(routes)).purge(token_digest("tok-b"))
    assert report.memory == 3  # the route's outcome, b's answer and a's negative entry
    assert engine.try_authorize(req("tok-b")) is None
    await decide(engine, "tok-b")
    assert introspector.calls.count(("b.test", "tok-b")) == 2
    assert cache.get_local(namespaced_key(B.cache_namespace, token_digest("tok-b")), clock.now) is not None
