"""The engine's rules with a fake clock and fake ports: no sockets, no sleeps."""

from __future__ import annotations

import asyncio

import pytest

from phantom_token.cache.memory import MemoryCache
from phantom_token.config.settings import PluginConfig, Route, Upstream
from phantom_token.core.bearer import fingerprint
from phantom_token.core.engine import Engine
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.keys import cache_key
from phantom_token.core.request import RequestInfo, TokenMemo
from phantom_token.core.routes import Router
from phantom_token.core.verdict import Allow, Deny

from .fakes import FakeClock, FakeIntrospector

UPSTREAM = Upstream("http", "127.0.0.1", 3001, "/")
PLUGIN = PluginConfig("http://as.test/introspect", "gateway", "secret", token_cache_seconds=300)


Built = tuple[Engine, FakeIntrospector, FakeClock, MemoryCache]


def build(plugin: PluginConfig = PLUGIN, *, max_entries: int = 100) -> Built:
    routes = (
        Route("open", "svc", UPSTREAM, paths=("/public",)),
        Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),
    )
    clock, introspector, cache = FakeClock(), FakeIntrospector(), MemoryCache(max_entries)
    return Engine(Router(routes), cache, introspector, clock=clock), introspector, clock, cache


def req(path: str = "/api/x", *auth: str, method: str = "GET") -> RequestInfo:
    headers = {"authorization": list(auth)} if auth else {}
    return RequestInfo(method, "localhost", path, headers)


def claims(clock: FakeClock, **extra: object) -> dict[str, object]:
    return {"sub": "alice", "scope": "read write", "exp": clock.now + 3600, **extra}


async def test_no_route_is_404() -> None:
    engine, *_ = build()
    verdict = await engine.authorize(req("/nowhere"))
    assert isinstance(verdict, Deny)
    assert (verdict.status, verdict.code) == (404, "not_found")


async def test_route_without_plugin_passes_untouched() -> None:
    engine, introspector, *_ = build()
    verdict = await engine.authorize(req("/public/x", "Bearer whatever"))
    assert isinstance(verdict, Allow)
    assert verdict.authorization is None
    assert introspector.calls == []


async def test_preflight_passes_unless_run_on_preflight() -> None:
    engine, *_ = build()
    assert isinstance(await engine.authorize(req(method="OPTIONS")), Allow)
    strict, *_ = build(PluginConfig("http://as.test/i", "gw", "s", run_on_preflight=True))
    verdict = await strict.authorize(req(method="OPTIONS"))
    assert isinstance(verdict, Deny)
    assert verdict.status == 401


@pytest.mark.parametrize(
    ("headers", "status", "challenge"),
    [
        ((), 401, "Bearer"),
        (("Basic dXNlcjpwYXNz",), 401, "Bearer"),
        (("Bearer",), 401, 'Bearer error="invalid_token"'),
        (("Bearer abc def",), 401, 'Bearer error="invalid_token"'),
        (("Bearer tökén",), 401, 'Bearer error="invalid_token"'),
        (("Bearer a&b",), 401, 'Bearer error="invalid_token"'),
        (("Bearer " + "a" * 4097,), 401, 'Bearer error="invalid_token"'),
        (("Bearer a", "Bearer b"), 400, 'Bearer error="invalid_request"'),
    ],
)
async def test_bad_headers_never_reach_the_introspector(
    headers: tuple[str, ...], status: int, challenge: str
) -> None:
    engine, introspector, *_ = build()
    verdict = await engine.authorize(req("/api/x", *headers))
    assert isinstance(verdict, Deny)
    assert verdict.status == status
    assert verdict.headers()[1] == ("WWW-Authenticate", challenge)
    assert introspector.calls == []


@pytest.mark.parametrize("header", ["Bearer tok", "BEARER tok", "bEaReR \t  tok", "  Bearer tok  "])
async def test_active_token_is_swapped_for_the_jwt(header: str) -> None:
    engine, introspector, clock, _ = build()
    jwt = introspector.activate("tok", claims(clock))
    verdict = await engine.authorize(req("/api/x", header))
    assert isinstance(verdict, Allow)
    assert verdict.authorization == "Bearer " + jwt
    assert introspector.calls == ["tok"]


async def test_answer_is_cached_and_served_without_io() -> None:
    engine, introspector, clock, _ = build()
    introspector.activate("tok", claims(clock))
    assert engine.try_authorize(req("/api/x", "Bearer tok")) is None
    await engine.authorize(req("/api/x", "Bearer tok"))
    hit = engine.try_authorize(req("/api/x", "Bearer tok"))
    assert isinstance(hit, Allow)
    assert hit.expires_in == 300
    assert introspector.calls == ["tok"]
    assert (engine.metrics.cache_hits, engine.metrics.cache_misses) == (1, 1)


@pytest.mark.parametrize(
    ("configured", "max_age", "exp_in", "expected"),
    [(300, None, 3600, 300), (300, 60, 3600, 60), (300, 600, 3600, 300), (300, 600, 30, 30), (0, None, 3600, 0)],
)
async def test_lifetime_is_the_smallest_of_config_max_age_and_exp(
    configured: int, max_age: float | None, exp_in: float, expected: float
) -> None:
    engine, introspector, clock, _ = build(PluginConfig("http://as.test/i", "gw", "s", token_cache_seconds=configured))
    introspector.activate("tok", claims(clock, exp=clock.now + exp_in), max_age=max_age)
    first = await engine.authorize(req("/api/x", "Bearer tok"))
    assert isinstance(first, Allow)
    assert first.expires_in == expected
    clock.now += expected - 0.5 if expected else 0
    if expected:
        assert isinstance(engine.try_authorize(req("/api/x", "Bearer tok")), Allow)
    clock.now += 1
    assert engine.try_authorize(req("/api/x", "Bearer tok")) is None


@pytest.mark.parametrize(("max_age", "no_store"), [(0, False), (None, True)])
async def test_no_store_and_max_age_zero_are_not_cached(max_age: float | None, no_store: bool) -> None:
    engine, introspector, clock, cache = build()
    introspector.activate("tok", claims(clock), max_age=max_age, no_store=no_store)
    assert isinstance(await engine.authorize(req("/api/x", "Bearer tok")), Allow)
    assert len(cache) == 0
    await engine.authorize(req("/api/x", "Bearer tok"))
    assert introspector.calls == ["tok", "tok"]


async def test_jwt_already_expired_is_401() -> None:
    engine, introspector, clock, cache = build()
    introspector.activate("tok", claims(clock, exp=clock.now - 1))
    verdict = await engine.authorize(req("/api/x", "Bearer tok"))
    assert isinstance(verdict, Deny)
    assert verdict.status == 401
    assert len(cache) == 0


async def test_inactive_is_401_and_not_cached() -> None:
    engine, _, _, cache = build()
    verdict = await engine.authorize(req("/api/x", "Bearer unknown"))
    assert isinstance(verdict, Deny)
    assert (verdict.status, verdict.code) == (401, "unauthorized")
    assert verdict.headers()[-1] == ("WWW-Authenticate", 'Bearer error="invalid_token"')
    assert len(cache) == 0


async def test_authorization_server_fault_is_502_and_not_cached(caplog: pytest.LogCaptureFixture) -> None:
    engine, introspector, *_ = build()
    introspector.answers["tok"] = IntrospectionUnavailable("the endpoint answered HTTP 500")
    verdict = await engine.authorize(req("/api/x", "Bearer tok"))
    assert isinstance(verdict, Deny)
    assert (verdict.status, verdict.code) == (502, "server_error")
    await engine.authorize(req("/api/x", "Bearer tok"))
    assert introspector.calls == ["tok", "tok"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2
    assert "HTTP 500" in errors[0].getMessage()
    assert f"token={fingerprint('tok')} " in errors[0].getMessage()
    assert "=tok " not in errors[0].getMessage()


async def test_scopes_are_checked_on_every_request_including_hits() -> None:
    plugin = PluginConfig("http://as.test/i", "gw", "s", scope=("read", "execute"), realm="api")
    engine, introspector, clock, _ = build(plugin)
    introspector.activate("tok", claims(clock))
    for _ in range(2):
        request = req("/api/x", "Bearer tok")
        verdict = engine.try_authorize(request) or await engine.authorize(request)
        assert isinstance(verdict, Deny)
        assert verdict.status == 403
        assert verdict.headers()[-1] == (
            "WWW-Authenticate", 'Bearer realm="api", error="insufficient_scope", scope="read execute"'
        )
    assert introspector.calls == ["tok"]


async def test_scp_array_grants_scopes() -> None:
    engine, introspector, clock, _ = build(PluginConfig("http://as.test/i", "gw", "s", scope=("read", "write")))
    introspector.activate("tok", {"sub": "a", "scp": ["read", "write"], "exp": clock.now + 60})
    assert isinstance(await engine.authorize(req("/api/x", "Bearer tok")), Allow)


async def test_concurrent_requests_for_one_token_make_one_call() -> None:
    engine, introspector, clock, _ = build()
    introspector.activate("tok", claims(clock))
    introspector.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(engine.authorize(req("/api/x", "Bearer tok"))) for _ in range(50)]
    await asyncio.sleep(0)
    introspector.gate.set()
    verdicts = await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert all(isinstance(v, Allow) for v in verdicts)
    assert introspector.calls == ["tok"]


async def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    engine, introspector, clock, _ = build()
    introspector.activate("tok", claims(clock))
    introspector.gate = asyncio.Event()
    first = asyncio.ensure_future(engine.authorize(req("/api/x", "Bearer tok")))
    second = asyncio.ensure_future(engine.authorize(req("/api/x", "Bearer tok")))
    await asyncio.sleep(0)
    first.cancel()
    introspector.gate.set()
    assert isinstance(await asyncio.wait_for(second, 5), Allow)
    assert introspector.calls == ["tok"]


async def test_an_uncancelled_caller_runs_the_call_in_its_task_and_shares_it() -> None:
    """``authorize(uncancelled=True)`` (the proxy's): the introspection runs in the caller's own task; callers of
    either kind arriving meanwhile share it, a cancelled one cancels nothing, a failure is every waiter's 502."""
    engine, introspector, clock, _ = build()
    introspector.activate("tok", claims(clock))
    introspector.gate = asyncio.Event()
    owner = asyncio.ensure_future(engine.authorize(req("/api/x", "Bearer tok"), uncancelled=True))
    await asyncio.sleep(0)
    others = [asyncio.ensure_future(engine.authorize(req("/api/x", "Bearer tok"), uncancelled=flag))
              for flag in (True, False, True)]
    await asyncio.sleep(0)
    others[2].cancel()
    introspector.gate.set()
    verdicts = await asyncio.wait_for(asyncio.gather(owner, *others[:2]), 5)
    assert all(isinstance(v, Allow) for v in verdicts)
    assert introspector.calls == ["tok"]

    introspector.gate.clear()
    introspector.answers["other"] = IntrospectionUnavailable("the AS is down")
    owner = asyncio.ensure_future(engine.authorize(req("/api/x", "Bearer other"), uncancelled=True))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(engine.authorize(req("/api/x", "Bearer other"), uncancelled=True))
    await asyncio.sleep(0)
    introspector.gate.set()
    denials = await asyncio.wait_for(asyncio.gather(owner, waiter), 5)
    assert [d.status for d in denials if isinstance(d, Deny)] == [502, 502]
    assert introspector.calls == ["tok", "other"]


def test_cache_key_is_a_namespaced_hash_not_the_token() -> None:
    key = cache_key(PLUGIN, "tok")
    assert len(key) == 48  # the token's SHA-256 and the namespace's tag (format v3)
    assert b"tok" not in key
    other = PluginConfig(PLUGIN.introspection_endpoint, "another-client", "s")
    assert cache_key(other, "tok") != key


async def test_a_connection_memo_follows_the_token_the_client_sends() -> None:
    """The per-connection memo skips re-checking and re-hashing a repeated token, and only that: another token, a
    broken one, a duplicated header or another plugin on the same connection are decided on their own."""
    other = PluginConfig("http://as.test/other", "gw2", "s2", token_cache_seconds=300)
    routes = (Route("api", "svc", UPSTREAM, paths=("/api",), plugin=PLUGIN),
              Route("other", "svc", UPSTREAM, paths=("/other",), plugin=other))
    clock, introspector, cache = FakeClock(), FakeIntrospector(), MemoryCache(100)
    engine = Engine(Router(routes), cache, introspector, clock=clock)
    jwt_a = introspector.activate("tok-a", claims(clock))
    jwt_b = introspector.activate("tok-b", claims(clock))
    memo = TokenMemo()

    async def decide(path: str, *auth: str) -> Allow | Deny:
        request = RequestInfo("GET", "localhost", path, {"authorization": list(auth)} if auth else {}, memo)
        return engine.try_authorize(request) or await engine.authorize(request)

    first = await decide("/api/x", "Bearer tok-a")
    assert isinstance(first, Allow)
    assert first.authorization == "Bearer " + jwt_a
    assert memo.key == cache_key(PLUGIN, "tok-a")
    assert memo.value == "Bearer tok-a"
    again = await decide("/api/x", "Bearer tok-a")
    assert isinstance(again, Allow)
    assert again.authorization == "Bearer " + jwt_a
    switched = await decide("/api/x", "Bearer tok-b")
    assert isinstance(switched, Allow)
    assert switched.authorization == "Bearer " + jwt_b
    assert memo.key == cache_key(PLUGIN, "tok-b")
    broken = await decide("/api/x", "Bearer tok-b junk")
    assert isinstance(broken, Deny)
    assert broken.status == 401
    duplicated = await decide("/api/x", "Bearer tok-b", "Bearer tok-b")
    assert isinstance(duplicated, Deny)
    assert duplicated.status == 400
    missing = await decide("/api/x")
    assert isinstance(missing, Deny)
    assert missing.status == 401
    elsewhere = await decide("/other/x", "Bearer tok-b")  # same header, other plugin: its own key and cache entry
    assert isinstance(elsewhere, Allow)
    assert memo.key == cache_key(other, "tok-b")
    assert introspector.calls == ["tok-a", "tok-b", "tok-b"]


async def test_tokens_changing_on_a_connection_are_keyed_under_the_plugin_of_their_route() -> None:
    """A connection alternating routes of two plugins and tokens (padded ones too): every request's key is the one
    ``cache_key`` derives for its route's plugin, whether the plugin's namespace tag came from the connection's memo
    (same plugin as the request before) or from the engine's table (another plugin)."""
    other = PluginConfig("http://as.test/other", "gw2", "s2", token_cache_seconds=300)
    routes = (Route("api", "svc", UPSTREAM, paths=("/api",), plugin=PLUGIN),
              Route("other", "svc", UPSTREAM, paths=("/other",), plugin=other))
    clock, introspector, cache = FakeClock(), FakeIntrospector(), MemoryCache(100)
    engine = Engine(Router(routes), cache, introspector, clock=clock)
    tokens = ("tok-1", "tok-2==", "tok-3=", "tok-4")
    jwts = {token: introspector.activate(token, claims(clock)) for token in tokens}
    memo = TokenMemo()
    sequence = (("/api/x", PLUGIN, "tok-1"), ("/api/x", PLUGIN, "tok-2=="), ("/other/x", other, "tok-2=="),
                ("/other/x", other, "tok-3="), ("/other/x", other, "tok-1"), ("/api/x", PLUGIN, "tok-4"),
                ("/api/x", PLUGIN, "tok-3="), ("/other/x", other, "tok-4"), ("/api/x", PLUGIN, "tok-1"),
                ("/other/x", other, "tok-1"))
    for path, plugin, token in sequence:
        request = RequestInfo("GET", "localhost", path, {"authorization": [f"Bearer {token}"]}, memo)
        verdict = engine.try_authorize(request) or await engine.authorize(request)
        assert isinstance(verdict, Allow), (path, token)
        assert verdict.authorization == "Bearer " + jwts[token]
        assert memo.key == cache_key(plugin, token), (path, token)
    assert len(cache) == len({(path, token) for path, _, token in sequence})  # one entry per pair: none shared


async def test_a_repeated_token_is_decided_for_the_route_it_is_sent_to() -> None:
    """The step the engine keeps for a connection's repeated token is reused only on the route it was made for: two
    routes with the same plugin, a token repeated across them, each verdict is for its own route (and after another
    token, for that token's entry)."""
    routes = (Route("first", "svc", UPSTREAM, paths=("/first",), plugin=PLUGIN),
              Route("second", "svc", UPSTREAM, paths=("/second",), plugin=PLUGIN))
    clock, introspector, cache = FakeClock(), FakeIntrospector(), MemoryCache(100)
    engine = Engine(Router(routes), cache, introspector, clock=clock)
    jwts = {token: introspector.activate(token, claims(clock)) for token in ("tok-a", "tok-b")}
    memo = TokenMemo()
    for path, token in (("/first/x", "tok-a"), ("/first/x", "tok-a"), ("/second/x", "tok-a"), ("/second/x", "tok-a"),
                        ("/first/x", "tok-a"), ("/first/x", "tok-b"), ("/second/x", "tok-b"), ("/second/x", "tok-a")):
        request = RequestInfo("GET", "localhost", path, {"authorization": [f"Bearer {token}"]}, memo)
        verdict = engine.try_authorize(request) or await engine.authorize(request)
        assert isinstance(verdict, Allow), (path, token)
        assert verdict.route.name == path.split("/")[1], (path, token)
        assert verdict.authorization == "Bearer " + jwts[token], (path, token)
    assert introspector.calls == ["tok-a", "tok-b"]  # one plugin: one entry per token, whatever the route


async def test_a_connection_repeating_a_hit_gets_its_verdict_again_counting_down() -> None:
    """``TokenMemo.allow``: the connection's last Allow is given again while its token, route and cache entry repeat,
    with ``expires_in`` for this request; another route, a new entry for the token (purged and introspected again)
    or an expired one each get their own answer."""
    routes = (Route("first", "svc", UPSTREAM, paths=("/first",), plugin=PLUGIN),
              Route("second", "svc", UPSTREAM, paths=("/second",), plugin=PLUGIN))
    clock, introspector, cache = FakeClock(), FakeIntrospector(), MemoryCache(100)
    engine = Engine(Router(routes), cache, introspector, clock=clock)
    first_jwt = introspector.activate("tok", claims(clock))
    memo = TokenMemo()

    def ask(path: str) -> Allow:
        verdict = engine.try_authorize(RequestInfo("GET", "localhost", path, {"authorization": ["Bearer tok"]}, memo))
        assert isinstance(verdict, Allow), path
        return verdict

    assert engine.try_authorize(RequestInfo("GET", "localhost", "/first/x", {"authorization": ["Bearer tok"]},
                                            memo)) is None
    assert isinstance(await engine.authorize(RequestInfo("GET", "localhost", "/first/x",
                                                         {"authorization": ["Bearer tok"]}, memo)), Allow)
    hit = ask("/first/x")
    assert (hit.route.name, hit.authorization, hit.expires_in) == ("first", "Bearer " + first_jwt, 300.0)
    clock.now += 7.5
    again = ask("/first/x")
    assert again is hit
    assert again.expires_in == 292.5  # the seconds left now, not the first hit's
    other = ask("/second/x")
    assert other is not hit
    assert (other.route.name, other.authorization, other.expires_in) == ("second", "Bearer " + first_jwt, 292.5)
    back = ask("/first/x")
    assert back.route.name == "first"

    # the token's entry replaced (purged, then introspected again with another JWT): the new entry's verdict
    assert cache.purge_local(memo.key)
    second_jwt = introspector.activate("tok", claims(clock, sub="bob"))
    assert second_jwt != first_jwt
    assert engine.try_authorize(RequestInfo("GET", "localhost", "/first/x", {"authorization": ["Bearer tok"]},
                                            memo)) is None
    await engine.authorize(RequestInfo("GET", "localhost", "/first/x", {"authorization": ["Bearer tok"]}, memo))
    renewed = ask("/first/x")
    assert renewed is not back
    assert renewed.authorization == "Bearer " + second_jwt
    assert ask("/first/x") is renewed

    clock.now += 300.0  # past the entry's cache lifetime: no verdict from the memo
    assert engine.try_authorize(RequestInfo("GET", "localhost", "/first/x", {"authorization": ["Bearer tok"]},
                                            memo)) is None


async def test_a_connection_repeating_a_hit_still_gets_each_requests_own_refusal() -> None:
    """Only the plain Allow is given again: a route whose scope the entry lacks is refused on every request, and a
    token bound to a client certificate forwarded per request by a trusted proxy is judged on each request's
    certificate (its entry has ``extra``: never answered from the memo)."""
    import base64

    from phantom_token.core.client_cert import der_thumbprint

    scoped = PluginConfig("http://as.test/introspect", "gateway", "secret", scope=("admin",))
    behind = PluginConfig("http://as.test/other", "gw", "s", client_cert_header="Client-Cert")
    routes = (Route("scoped", "svc", UPSTREAM, paths=("/scoped",), plugin=scoped),
              Route("bound", "svc", UPSTREAM, paths=("/bound",), plugin=behind))
    clock, introspector = FakeClock(), FakeIntrospector()
    engine = Engine(Router(routes), MemoryCache(100), introspector, clock=clock)
    der, other_der = b"\x30\x82\x01\x0a" + bytes(range(256)), b"\x30\x03\x02\x01\x07"
    introspector.activate("plain", claims(clock))
    introspector.activate("bound", claims(clock, cnf={"x5t#S256": der_thumbprint(der)}))
    memo = TokenMemo()
    memo.trusted_peer = True

    def request(path: str, token: str, certificate: bytes) -> RequestInfo:
        headers = {"authorization": [f"Bearer {token}"],
                   "client-cert": [f":{base64.b64encode(certificate).decode()}:"]}
        return RequestInfo("GET", "localhost", path, headers, memo)

    assert isinstance(await engine.authorize(request("/scoped/x", "plain", der)), Deny)
    for _ in range(3):
        refused = engine.try_authorize(request("/scoped/x", "plain", der))
        assert isinstance(refused, Deny)
        assert refused.status == 403
    assert isinstance(await engine.authorize(request("/bound/x", "bound", der)), Allow)
    for certificate, allowed in ((der, True), (der, True), (other_der, False), (der, True), (other_der, False)):
        verdict = engine.try_authorize(request("/bound/x", "bound", certificate))
        assert isinstance(verdict, Allow if allowed else Deny), certificate
