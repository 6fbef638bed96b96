"""``claims_to_headers`` (issue 16, point 3): claim paths and value rendering, the configuration checks, the cache
entry (engine and codec), and what each front door makes of the values: no sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import pytest

from phantom_token.cache.codec import EntryCodec
from phantom_token.cache.memory import MemoryCache
from phantom_token.config.errors import ConfigError
from phantom_token.config.loader import parse_settings
from phantom_token.config.settings import PluginConfig, Route, Upstream
from phantom_token.core.bearer import fingerprint
from phantom_token.core.claim_headers import MAX_VALUE_BYTES, claim_at, header_names, header_values, render
from phantom_token.core.engine import Engine
from phantom_token.core.ports import CacheEntry, NegativeEntry
from phantom_token.core.request import RequestInfo
from phantom_token.core.routes import Router
from phantom_token.core.verdict import Allow
from phantom_token.frontends.decisions import decision_response
from phantom_token.frontends.forwarding import claim_lines, with_claim_headers
from phantom_token.frontends.middleware import allowed_scope

from .fakes import FakeClock, FakeIntrospector

UPSTREAM = Upstream("http", "127.0.0.1", 3001, "/")
MAPPING = (("X-User-Id", "sub"), ("X-Tenant", "org.id"), ("X-Roles", "roles"))
PLUGIN = PluginConfig("http://as.test/introspect", "gateway", "secret", claims_to_headers=MAPPING)

# --- claim paths and values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    ("sub", "alice"),
    ("org.id", 42),
    ("org.name.first", None),  # a string on the way: no value
    ("org.missing", None),
    ("missing.id", None),
    ("flags", {"beta": True}),
    ("nothing", None),
])
def test_a_claim_path_walks_nested_objects(path: str, expected: object) -> None:
    claims = {"sub": "alice", "org": {"id": 42, "name": "acme"}, "flags": {"beta": True}, "nothing": None}
    assert claim_at(claims, path) == expected


@pytest.mark.parametrize(("value", "shown"), [
    ("alice", "alice"),
    (42, "42"),
    (1.5, "1.5"),
    (True, "true"),
    (False, "false"),
    (["admin", "ops"], "admin, ops"),
    ([1, True, "x", {"a": 1}], '1, true, x, {"a":1}'),
    ({"a": [1, 2]}, '{"a":[1,2]}'),
    ([], ""),
    (None, None),
])
def test_values_are_strings_as_they_are_arrays_joined_the_rest_json(value: object, shown: str | None) -> None:
    assert render(value) == shown


def test_header_values_follow_the_mapping_skip_missing_claims_and_send_utf8_bytes() -> None:
    claims = {"sub": "zoë", "org": {"id": 7}, "roles": ["a", "b"]}
    headers, problems = header_values(claims, MAPPING)
    assert headers == (("X-User-Id", "zoë".encode().decode("latin-1")), ("X-Tenant", "7"), ("X-Roles", "a, b"))
    assert problems == []
    assert header_values({"sub": "bob"}, MAPPING) == ((("X-User-Id", "bob"),), [])


@pytest.mark.parametrize("bad", ["a\r\nX-Admin: yes", "a\nb", "a\rb", "a\0b", "x" * (MAX_VALUE_BYTES + 1),
                                 ["ok", "split\r\nme"]])
def test_a_value_with_cr_lf_nul_or_over_8kb_is_not_sent(bad: object) -> None:
    headers, problems = header_values({"sub": bad, "org": {"id": 1}}, MAPPING)
    assert headers == (("X-Tenant", "1"),)
    assert len(problems) == 1
    assert problems[0].startswith("X-User-Id not sent: ")
    assert "split" not in problems[0]
    assert "X-Admin" not in problems[0]


def test_exactly_8kb_is_still_sent() -> None:
    headers, _ = header_values({"sub": "é" * (MAX_VALUE_BYTES // 2)}, MAPPING)  # 2 bytes each in UTF-8
    assert len(headers) == 1


# --- the configuration ----------------------------------------------------------------------------------------


def document(options: dict[str, Any]) -> dict[str, Any]:
    return {"_format_version": "2.1", "services": [{
        "name": "api", "url": "http://127.0.0.1:3001", "routes": [{"name": "r", "paths": ["/api"]}],
        "plugins": [{"name": "phantom-token", "config": {
            "introspection_endpoint": "https://as.test/introspect", "client_id": "gw", "client_secret": "s",
            **options}}]}]}


def plugin(options: dict[str, Any]) -> PluginConfig:
    found = parse_settings(document(options), source="gw.yml", environ={}).routes[0].plugin
    assert found is not None
    return found


def problems(options: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document(options), source="gw.yml", environ={})
    return [(p.field, p.why) for p in caught.value.problems]


def test_the_mapping_is_read_in_order() -> None:
    found = plugin({"claims_to_headers": {"X-User-Id": "sub", "X-Tenant": "org.id"}})
    assert found.claims_to_headers == (("X-User-Id", "sub"), ("X-Tenant", "org.id"))
    assert plugin({}).claims_to_headers == ()


@pytest.mark.parametrize("name", ["Authorization", "host", "Transfer-Encoding", "Content-Length", "Connection",
                                  "TE", "Upgrade", "Keep-Alive", "Proxy-Authorization", "X-Forwarded-For",
                                  "X-Forwarded-Prefix", "X-Original-URI", "x-envoy-auth-headers-to-remove",
                                  "Cookie", "DPoP", "X-Request-Id", "Cache-Control", "X-Accel-Expires"])
def test_a_header_the_gateway_sets_frames_or_reads_is_refused(name: str) -> None:
    found = problems({"claims_to_headers": {name: "sub"}})
    assert found == [(f"config.claims_to_headers.{name}",
                      "is a header the gateway sets, frames the message with, or reads; choose another name")]


@pytest.mark.parametrize("name", ["X User", "X-User:", "X_User", "", "Ünïcode", "X-User\r\n"])
def test_a_name_that_is_not_a_token_is_refused(name: str) -> None:
    assert problems({"claims_to_headers": {name: "sub"}}) == [
        (f"config.claims_to_headers.{name}", "is not a valid header name (an RFC 9110 token)")]


def test_a_name_listed_twice_in_another_case_is_refused() -> None:
    assert problems({"claims_to_headers": {"X-User": "sub", "x-user": "client_id"}}) == [
        ("config.claims_to_headers.x-user", "is listed twice (header names are case-insensitive)")]


@pytest.mark.parametrize("path", ["", "a..b", ".a", "a.", 3, ["sub"]])
def test_a_bad_claim_path_is_refused(path: object) -> None:
    [(where, why)] = problems({"claims_to_headers": {"X-User": path}})
    assert where == "config.claims_to_headers.X-User"
    assert why.startswith("must be a claim path")


def test_claims_to_headers_must_be_a_mapping() -> None:
    assert problems({"claims_to_headers": ["X-User"]}) == [("config.claims_to_headers",
                                                           "expected a mapping, got a list")]


def test_the_mapping_joins_the_cache_namespace() -> None:
    plain = PluginConfig("http://as.test/i", "gw", "s")
    shaped = PluginConfig("http://as.test/i", "gw", "s", claims_to_headers=(("X-A", "sub"),))
    other = PluginConfig("http://as.test/i", "gw", "s", claims_to_headers=(("X-A", "client_id"),))
    assert len({plain.cache_namespace, shaped.cache_namespace, other.cache_namespace}) == 3


# --- the cache entry ----------------------------------------------------------------------------------------------


def test_the_codec_keeps_the_headers_after_the_binding() -> None:
    codec = EntryCodec()
    entry = CacheEntry("Bearer x.y.z", frozenset({"read"}), 1e9, (("X-User-Id", "zo\xc3\xab"), ("X-N", "1")))
    assert codec.decode(codec.encode(entry, b"k"), b"k") == entry
    plain = CacheEntry("Bearer x.y.z", frozenset({"read"}), 1e9)
    assert codec.encode(plain, b"k") == b'\x00[1000000000.0,["read"],"Bearer x.y.z",null,{}]'  # {}: no binding (cnf)
    assert codec.decode(codec.encode(plain, b"k"), b"k") == plain
    # Written before the binding was kept (RFC 9449, RFC 8705; cache/codec.py): a miss, as it cannot say whether it
    # was bound
    assert codec.decode(b'\x00[1000000000.0,["read"],"Bearer x.y.z"]', b"k") is None
    assert codec.decode(b'\x00[1000000000.0,["read"],"Bearer x.y.z",[["X-A","1"]]]', b"k") is None
    none_sent = CacheEntry("Bearer x.y.z", frozenset(), 1e9, ())  # the option set, no claim: still a tuple
    assert codec.decode(codec.encode(none_sent, b"k"), b"k") == none_sent
    assert codec.decode(b'\x00[1000000000.0,["read"],"Bearer x",{},[["X-A"]]]', b"k") is None
    assert codec.decode(b'\x00[1000000000.0,["read"],"Bearer x",{},{"X-A":"1"}]', b"k") is None
    assert codec.decode(b"\x00[5.0]", b"k") == NegativeEntry(5.0)
    encrypted = EntryCodec("k" * 32)
    assert encrypted.decode(encrypted.encode(entry, b"k"), b"k") == entry


def build(plugin: PluginConfig = PLUGIN) -> tuple[Engine, FakeIntrospector, FakeClock]:
    routes = (Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),)
    clock, introspector = FakeClock(), FakeIntrospector()
    return Engine(Router(routes), MemoryCache(100), introspector, clock=clock), introspector, clock


def req(token: str, method: str = "GET") -> RequestInfo:
    return RequestInfo(method, "localhost", "/api/x", {"authorization": [f"Bearer {token}"]})


async def test_the_engine_renders_the_headers_once_per_answer_and_a_hit_returns_the_same_tuple() -> None:
    engine, introspector, clock = build()
    introspector.activate("tok", {"sub": "alice", "org": {"id": "acme"}, "roles": ["a", "b"],
                                  "exp": clock.now + 600})
    first = await engine.authorize(req("tok"))
    assert isinstance(first, Allow)
    assert first.headers == (("X-User-Id", "alice"), ("X-Tenant", "acme"), ("X-Roles", "a, b"))
    hit = engine.try_authorize(req("tok"))
    assert isinstance(hit, Allow)
    assert hit.headers is first.headers
    assert introspector.calls == ["tok"]


async def test_a_value_that_cannot_be_sent_is_logged_once_by_fingerprint_never_by_value(
        caplog: pytest.LogCaptureFixture) -> None:
    engine, introspector, clock = build()
    introspector.activate("tok2", {"sub": "evil\r\nX-Admin: yes", "org": {"id": 1}, "exp": clock.now + 600})
    with caplog.at_level(logging.WARNING, logger="phantom_token.engine"):
        verdict = await engine.authorize(req("tok2"))
        assert isinstance(verdict, Allow)
        assert verdict.headers == (("X-Tenant", "1"),)
        engine.try_authorize(req("tok2"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert fingerprint("tok2") in lines[0]
    assert "X-User-Id not sent" in lines[0]
    assert "evil" not in lines[0]
    assert "tok2" not in lines[0].replace(fingerprint("tok2"), "")


async def test_without_the_option_entries_and_verdicts_carry_none_with_it_always_a_tuple() -> None:
    engine, introspector, clock = build(PluginConfig("http://as.test/i", "gw", "s"))
    introspector.activate("tok", {"sub": "alice", "exp": clock.now + 600})
    verdict = await engine.authorize(req("tok"))
    assert isinstance(verdict, Allow)
    assert verdict.headers is None
    preflight = await engine.authorize(req("tok", "OPTIONS"))
    assert isinstance(preflight, Allow)
    assert preflight.headers is None
    shaped, introspector, clock = build()
    introspector.activate("tok", {"exp": clock.now + 600})  # none of the claims: no header, but a tuple
    for request in (req("tok"), req("tok", "OPTIONS")):
        verdict = await shaped.authorize(request)
        assert isinstance(verdict, Allow)
        assert verdict.headers == ()


# --- the front doors ------------------------------------------------------------------------------------------------

ROUTE = Route("api", "svc", UPSTREAM, paths=("/api",), plugin=PLUGIN)


def test_serve_removes_every_client_copy_and_adds_the_values() -> None:
    head = (b"GET /x HTTP/1.1\r\nx-user-id: forged\r\nAccept: */*\r\nX-TENANT: forged\r\nX-User-Idx: kept\r\n"
            b"Authorization: Bearer jwt\r\nHost: api\r\n\r\n")
    lnames = ["x-user-id", "accept", "x-tenant", "x-user-idx"]
    out = with_claim_headers(head, lnames, header_names(MAPPING), claim_lines((("X-User-Id", "zo\xc3\xab"),)))
    assert out == (b"GET /x HTTP/1.1\r\nAccept: */*\r\nX-User-Idx: kept\r\nAuthorization: Bearer jwt\r\nHost: api"
                   b"\r\nX-User-Id: zo\xc3\xab\r\n\r\n")
    untouched = b"GET /x HTTP/1.1\r\nAccept: */*\r\n\r\n"
    assert with_claim_headers(untouched, ["accept"], header_names(MAPPING), b"") is untouched


def test_authz_answers_the_values_and_names_the_others_for_envoy() -> None:
    allow = Allow(ROUTE, "Bearer jwt", 30.0, None, (("X-User-Id", "alice"),))
    status, headers, _ = decision_response(allow)
    assert status == 200
    assert headers == [("Authorization", "Bearer jwt"), ("X-User-Id", "alice"),
                       ("X-Envoy-Auth-Headers-To-Remove", "x-tenant, x-roles"),
                       ("X-Accel-Expires", "30"), ("Cache-Control", "private, max-age=30")]
    every = Allow(ROUTE, "Bearer jwt", 30.0, None, (("X-User-Id", "a"), ("X-Tenant", "t"), ("X-Roles", "r")))
    assert "X-Envoy-Auth-Headers-To-Remove" not in dict(decision_response(every)[1])
    preflight = decision_response(Allow(ROUTE, None, 0.0, None, ()))[1]
    assert preflight[0] == ("X-Envoy-Auth-Headers-To-Remove", "x-user-id, x-tenant, x-roles")


def test_the_middleware_replaces_client_copies_in_the_scope_even_for_a_preflight() -> None:
    scope = {"type": "http", "method": "GET", "path": "/api/x", "raw_path": b"/api/x",
             "headers": [(b"x-user-id", b"forged"), (b"X-Tenant", b"forged"), (b"accept", b"*/*"),
                         (b"authorization", b"Bearer opaque")]}
    allowed = allowed_scope(scope, Allow(ROUTE, "Bearer jwt", 10.0, None, (("X-User-Id", "zo\xc3\xab"),)), "/api/x")
    assert allowed["headers"] == [(b"accept", b"*/*"), (b"x-user-id", "zoë".encode()),
                                  (b"authorization", b"Bearer jwt")]
    preflight = allowed_scope({**scope, "method": "OPTIONS"}, Allow(ROUTE, None, 0.0, None, ()), "/api/x")
    assert preflight["headers"] == [(b"accept", b"*/*"), (b"authorization", b"Bearer opaque")]


async def test_concurrent_misses_render_once() -> None:
    engine, introspector, clock = build()
    introspector.activate("tok", {"sub": "alice", "exp": clock.now + 600})
    introspector.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(engine.authorize(req("tok"))) for _ in range(16)]
    await asyncio.sleep(0)
    introspector.gate.set()
    verdicts = await asyncio.gather(*tasks)
    assert {id(v.headers) for v in verdicts if isinstance(v, Allow)} == {id(verdicts[0].headers)}
    assert introspector.calls == ["tok"]


def test_grpc_sets_the_values_and_removes_the_client_copies_of_the_others() -> None:
    pytest.importorskip("grpc", reason="the grpc extra is not installed (scripts/setup installs it)")
    from phantom_token.frontends.grpc_authz import check_response

    asked = RequestInfo("GET", "api", "/api/x", {"authorization": ["Bearer opaque"], "x-user-id": ["forged"],
                                                 "x-tenant": ["forged"], "dpop": ["proof"]})
    ok = check_response(Allow(ROUTE, "Bearer jwt", 10.0, None, (("X-User-Id", "zo\xc3\xab"),)), asked).ok_response
    assert [(h.header.key, h.header.value) for h in ok.headers] == [("authorization", "Bearer jwt"),
                                                                   ("x-user-id", "zoë")]
    assert all(h.append_action == ok.headers[0].append_action for h in ok.headers)  # overwrite, never append
    assert list(ok.headers_to_remove) == ["dpop", "x-tenant"]
    preflight = check_response(Allow(ROUTE, None, 0.0, None, ()),
                               RequestInfo("OPTIONS", "api", "/api/x", {"x-roles": ["forged"]}))
    assert (list(preflight.ok_response.headers), list(preflight.ok_response.headers_to_remove)) == ([], ["x-roles"])


# --- with several authorization servers and JWT issuers (issue 16, points 1-2) ------------------------------------


async def test_a_verified_jwt_of_a_listed_issuer_gets_the_claims_headers_too() -> None:
    from phantom_token import jose
    from phantom_token.config.settings import JwtIssuer

    from .test_jwt_issuers import FakeKeys

    key = jose.SigningKey.generate("ES256", kid="k1")
    server = PluginConfig("http://as.test/introspect", "gw", "s", claims_to_headers=MAPPING)
    plugin = dataclasses.replace(server, authorization_servers=(server,),
                                 jwt_issuers=(JwtIssuer("https://as.test", "https://as.test/jwks", "api"),))
    clock, introspector = FakeClock(), FakeIntrospector()
    router = Router((Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),))
    engine = Engine(router, MemoryCache(100), introspector, clock=clock, issuer_keys=FakeKeys(key))
    jwt = key.sign({"iss": "https://as.test", "sub": "alice", "aud": "api", "roles": ["a"],
                    "exp": int(clock.now) + 600}, {"typ": "at+jwt"})
    verdict = await engine.authorize(req(jwt))
    assert isinstance(verdict, Allow)
    assert verdict.headers == (("X-User-Id", "alice"), ("X-Roles", "a"))
    hit = engine.try_authorize(req(jwt))
    assert isinstance(hit, Allow)
    assert hit.headers is verdict.headers
    assert introspector.calls == []


def test_with_several_servers_each_server_renders_the_routes_claims_headers_and_problems_are_said_once() -> None:
    servers = {"authorization_servers": [
        {"introspection_endpoint": "http://a.test/introspect", "client_id": "gw", "client_secret": "s"},
        {"introspection_endpoint": "http://b.test/introspect", "client_id": "gw", "client_secret": "s"}]}
    def document_(options: dict[str, Any]) -> dict[str, Any]:
        return {"_format_version": "2.1", "services": [{
            "name": "api", "url": "http://127.0.0.1:3001", "routes": [{"name": "r", "paths": ["/api"]}],
            "plugins": [{"name": "phantom-token", "config": {**servers, **options}}]}]}

    found = parse_settings(document_({"claims_to_headers": {"X-User-Id": "sub"}}), source="gw.yml",
                           environ={}).routes[0].plugin
    assert found is not None
    assert [s.claims_to_headers for s in found.authorization_servers] == [(("X-User-Id", "sub"),)] * 2
    with pytest.raises(ConfigError) as caught:
        parse_settings(document_({"claims_to_headers": {"Host": "sub"}, "token_exchange": {"audience": "x"}}),
                       source="gw.yml", environ={})
    assert [(p.field, p.why) for p in caught.value.problems] == [
        ("config.claims_to_headers.Host",
         "is a header the gateway sets, frames the message with, or reads; choose another name"),
        ("config.token_exchange.token_endpoint", "is required unless the plugin's issuer is set (to discover it)"),
    ]
