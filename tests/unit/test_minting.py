"""Claim checks in every mode, and the RFC 9068 JWT the engine mints when the AS answers claims (json, signed)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from phantom_token import jose
from phantom_token.cache.memory import MemoryCache
from phantom_token.config.settings import JwtSettings, PluginConfig, Route, Settings, Upstream
from phantom_token.core.claims import access_token_claims, refusal
from phantom_token.core.engine import Engine
from phantom_token.core.ports import Active
from phantom_token.core.request import RequestInfo
from phantom_token.core.routes import Router
from phantom_token.core.ttl import CacheDirectives
from phantom_token.core.verdict import Allow, Deny
from phantom_token.minting import JwtMinter, build_minter

from .fakes import FakeClock, FakeIntrospector, make_jwt

UPSTREAM = Upstream("http", "127.0.0.1", 3001, "/")
JSON_PLUGIN = PluginConfig("http://as.test/introspect", "gateway", "secret", introspection_response="json")
KEY = jose.SigningKey.generate("ES256", kid="gw-1")
ISSUER = "https://gateway.test"


def build(plugin: PluginConfig = JSON_PLUGIN, *, minter: bool = True,
          max_lifetime: int = 3600) -> tuple[Engine, FakeIntrospector, FakeClock]:
    route = Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin)
    clock, introspector = FakeClock(), FakeIntrospector()
    signer = JwtMinter(KEY, ISSUER, max_lifetime) if minter else None
    engine = Engine(Router((route,)), MemoryCache(100), introspector, clock=clock, minter=signer)
    return engine, introspector, clock


def answer(introspector: FakeIntrospector, claims: dict[str, Any], *, no_store: bool = False,
           jwt: str | None = None) -> None:
    introspector.answers["tok"] = Active(jwt, {"active": True, **claims}, CacheDirectives(no_store=no_store))


async def authorize(engine: Engine) -> Allow | Deny:
    verdict = await engine.authorize(RequestInfo("GET", "localhost", "/api/x", {"authorization": ["Bearer tok"]}))
    assert isinstance(verdict, Allow | Deny)
    return verdict


def upstream_claims(verdict: Allow | Deny) -> tuple[dict[str, Any], dict[str, Any]]:
    assert isinstance(verdict, Allow), verdict
    assert verdict.authorization is not None
    return jose.verify(verdict.authorization.removeprefix("Bearer "), [KEY], algorithms=["ES256"])


async def test_minted_jwt_follows_rfc9068() -> None:
    engine, introspector, clock = build()
    exp = int(clock.now) + 600
    answer(introspector, {"client_id": "app", "scope": "read", "exp": exp, "iat": 1, "nbf": 1, "jti": "as-jti",
                          "iss": "https://as.test", "aud": "https://api.test", "token_type": "Bearer",
                          "username": "alice", "sub": "alice"})
    header, claims = upstream_claims(await authorize(engine))
    assert (header["typ"], header["kid"], header["alg"]) == ("at+jwt", "gw-1", "ES256")
    assert claims["iss"] == ISSUER
    assert claims["iat"] == int(clock.now)
    assert claims["exp"] == exp
    assert claims["jti"] != "as-jti"
    assert {k: claims[k] for k in ("sub", "aud", "client_id", "scope", "username")} == {
        "sub": "alice", "aud": "https://api.test", "client_id": "app", "scope": "read", "username": "alice"}
    assert not {"active", "token_type", "nbf"} & claims.keys()


async def test_minted_once_per_introspection_and_cached() -> None:
    engine, introspector, clock = build()
    answer(introspector, {"client_id": "app", "exp": clock.now + 600})
    first = await authorize(engine)
    second = await authorize(engine)
    assert isinstance(first, Allow)
    assert isinstance(second, Allow)
    assert first.authorization == second.authorization
    assert introspector.calls == ["tok"]


async def test_exp_is_capped_by_max_lifetime_and_bounds_the_cache() -> None:
    engine, introspector, clock = build(replace(JSON_PLUGIN, token_cache_seconds=900), max_lifetime=120)
    answer(introspector, {"client_id": "app", "exp": clock.now + 3600})
    verdict = await authorize(engine)
    _, claims = upstream_claims(verdict)
    assert claims["exp"] == int(clock.now) + 120
    assert isinstance(verdict, Allow)
    assert verdict.expires_in == 120  # the cache entry never outlives the minted JWT


async def test_client_credentials_token_gets_sub_and_the_configured_audience() -> None:
    engine, introspector, clock = build(replace(JSON_PLUGIN, audience="https://api.test"))
    answer(introspector, {"client_id": "app", "exp": clock.now + 60, "aud": ["https://api.test", "x"]})
    _, claims = upstream_claims(await authorize(engine))
    assert claims["sub"] == "app"
    assert claims["aud"] == ["https://api.test", "x"]
    assert access_token_claims({"client_id": "c"}, issuer="i", audience="https://api.test", now=10,
                               max_lifetime_seconds=5, jti="j")["aud"] == "https://api.test"


async def test_no_store_is_honoured_unless_honor_cache_control_is_false() -> None:
    engine, introspector, clock = build()
    answer(introspector, {"exp": clock.now + 60}, no_store=True)
    await authorize(engine)
    await authorize(engine)
    assert len(introspector.calls) == 2
    engine, introspector, clock = build(replace(JSON_PLUGIN, honor_cache_control=False))
    answer(introspector, {"exp": clock.now + 60}, no_store=True)
    await authorize(engine)
    await authorize(engine)
    assert len(introspector.calls) == 1


async def test_without_a_minter_an_answer_without_jwt_is_502() -> None:
    engine, introspector, clock = build(minter=False)
    answer(introspector, {"exp": clock.now + 60})
    verdict = await authorize(engine)
    assert isinstance(verdict, Deny)
    assert verdict.status == 502


@pytest.mark.parametrize(
    ("changes", "claims", "reason"),
    [
        ({}, {"exp": -1}, "expired"),
        ({}, {"exp": 0}, "expired"),
        ({}, {"exp": "tomorrow"}, "exp is not a number"),
        ({}, {"nbf": 61}, "not valid yet"),
        ({}, {"nbf": "now"}, "nbf is not a number"),
        ({"clock_skew_seconds": 0}, {"nbf": 1}, "not valid yet"),
        ({"audience": "https://api.test"}, {}, "aud does not contain"),
        ({"audience": "https://api.test"}, {"aud": "https://other.test"}, "aud does not contain"),
        ({"audience": "https://api.test"}, {"aud": ["https://other.test"]}, "aud does not contain"),
        ({"issuer_allowed": ("https://as.test",)}, {}, "iss is not one of"),
        ({"issuer_allowed": ("https://as.test",)}, {"iss": "https://evil.test"}, "iss is not one of"),
    ],
)
async def test_claim_checks_refuse_with_401(changes: dict[str, Any], claims: dict[str, Any], reason: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    plugin = replace(JSON_PLUGIN, **changes)
    engine, introspector, clock = build(plugin)
    relative = {k: clock.now + v if isinstance(v, int) and k in ("exp", "nbf") else v for k, v in claims.items()}
    answer(introspector, {"exp": clock.now + 600, **relative})
    assert refusal({"exp": clock.now + 600, **relative}, plugin, clock.now) is not None
    with caplog.at_level(logging.INFO, "phantom_token.engine"):
        verdict = await authorize(engine)
    assert isinstance(verdict, Deny)
    assert (verdict.status, verdict.code) == (401, "unauthorized")
    assert reason in caplog.text
    assert "Bearer tok" not in caplog.text


@pytest.mark.parametrize(
    ("changes", "claims"),
    [
        ({}, {"nbf": 59}),  # within the clock skew
        ({"audience": "https://api.test"}, {"aud": ["x", "https://api.test"]}),
        ({"issuer_allowed": ("https://a.test", "https://as.test")}, {"iss": "https://as.test"}),
    ],
)
def test_claim_checks_pass(changes: dict[str, Any], claims: dict[str, Any]) -> None:
    now = 1_700_000_000.0
    relative = {k: now + v if k == "nbf" else v for k, v in claims.items()}
    assert refusal({"exp": now + 600, **relative}, replace(JSON_PLUGIN, **changes), now) is None


async def test_claim_checks_apply_in_jwt_mode_too() -> None:
    engine, introspector, clock = build(replace(JSON_PLUGIN, introspection_response="jwt", audience="https://api"))
    claims = {"sub": "a", "exp": clock.now + 60, "aud": "https://elsewhere"}
    answer(introspector, claims, jwt=make_jwt(claims))
    verdict = await authorize(engine)
    assert isinstance(verdict, Deny)
    assert verdict.status == 401


def test_cache_namespace_separates_claim_policies() -> None:
    jwt_mode = PluginConfig("http://as.test/introspect", "gateway", "secret")
    assert jwt_mode.cache_namespace == b"http://as.test/introspect\x00gateway\x00"  # unchanged for jwt mode
    variants = {jwt_mode, JSON_PLUGIN, replace(JSON_PLUGIN, audience="a"), replace(JSON_PLUGIN, issuer_allowed=("i",))}
    assert len({plugin.cache_namespace for plugin in variants}) == 4


def settings(*plugins: PluginConfig, jwt: JwtSettings | None = None, source: str = "t.yml") -> Settings:
    routes = tuple(Route(f"r{i}", "svc", UPSTREAM, paths=(f"/{i}",), plugin=p) for i, p in enumerate(plugins))
    return Settings(routes, source=source, jwt=jwt or JwtSettings(issuer=ISSUER))


def test_no_minter_when_nothing_mints() -> None:
    assert build_minter(settings(replace(JSON_PLUGIN, introspection_response="jwt"))) is None


def test_generated_key_warns_and_is_shared_by_later_builds(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "phantom_token.jwt"):
        first = build_minter(settings(JSON_PLUGIN, source="generated.yml"))
        second = build_minter(settings(JSON_PLUGIN, source="generated.yml"))
    assert first is not None
    assert second is not None
    assert first.kid == second.kid  # generated before the workers fork, then reused
    assert caplog.text.count("replicas will not share it") == 1
    assert first.jwks()["keys"][0]["alg"] == "ES256"


def test_key_file_and_previous_key_are_published(tmp_path: Path) -> None:
    current, previous = jose.SigningKey.generate("EdDSA"), jose.SigningKey.generate("RS256")
    (tmp_path / "current.pem").write_bytes(current.private_pem())
    (tmp_path / "previous.pem").write_bytes(previous.private_pem())
    jwt = JwtSettings(issuer=ISSUER, key_file=str(tmp_path / "current.pem"), kid="now",
                      previous_key_file=str(tmp_path / "previous.pem"), previous_kid="before")
    minter = build_minter(settings(JSON_PLUGIN, jwt=jwt, source=str(tmp_path / "x.yml")))
    assert minter is not None
    keys = minter.jwks()["keys"]
    assert [(k["kid"], k["alg"]) for k in keys] == [("now", "EdDSA"), ("before", "RS256")]
    assert all("d" not in k for k in keys)  # public halves only
    header, _ = jose.verify(minter.sign({"sub": "a"}), minter.jwks(), algorithms=["EdDSA"])
    assert header["typ"] == "at+jwt"
