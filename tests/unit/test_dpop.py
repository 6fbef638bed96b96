"""DPoP (RFC 9449): every proof check of ``core.dpop``, the URL rules, nonces, the replay guard, and the engine's
binding rules (scheme, ``cnf.jkt``, replay, nonces) with fake ports."""

from __future__ import annotations

from typing import Any

import pytest

from phantom_token.cache.codec import EntryCodec
from phantom_token.cache.memory import MemoryCache
from phantom_token.config.settings import PluginConfig, Route, Upstream
from phantom_token.core import dpop
from phantom_token.core.bearer import BearerToken, DPoPToken, Problem, extract
from phantom_token.core.claims import cnf_member
from phantom_token.core.engine import Engine
from phantom_token.core.ports import CacheEntry
from phantom_token.core.replay import MemoryReplayGuard
from phantom_token.core.request import RequestInfo, TokenMemo
from phantom_token.core.routes import Router
from phantom_token.core.verdict import Allow, Deny
from tests.dpop_proofs import ProofKey, ath, unsigned_proof

from .fakes import FakeClock, FakeIntrospector

NOW = 1_700_000_000.0
URL = "https://api.example.com/api/orders"
TOKEN = "opaque-token-1"
ALGS = dpop.DEFAULT_ALGORITHMS


@pytest.fixture(scope="module")
def key() -> ProofKey:
    return ProofKey("ES256")


def check(proof: str | list[str] | None, *, method: str = "GET", url: str | None = URL, token: str = TOKEN,
          now: float = NOW, algorithms: tuple[str, ...] = ALGS,
          nonces: dpop.NonceKeeper | None = None) -> dpop.Proof | dpop.Refusal:
    values = [proof] if isinstance(proof, str) else proof
    return dpop.check_proof(values, method=method, url=dpop.normalise_url(url) if url else None, token=token,
                            algorithms=algorithms, now=now, lifetime=300, skew=60, nonces=nonces)


def refused(result: dpop.Proof | dpop.Refusal, reason: str) -> None:
    assert isinstance(result, dpop.Refusal), result
    assert result.error == dpop.INVALID_PROOF
    assert reason in result.reason, result.reason


# ------------------------------------------------------------------------------------------------ proof checks


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "PS256", "RS256", "EdDSA"])
def test_a_valid_proof_gives_the_key_thumbprint(alg: str) -> None:
    key = ProofKey(alg)
    result = check(key.proof("GET", URL, TOKEN, iat=NOW))
    assert isinstance(result, dpop.Proof)
    assert result.jkt == key.jkt
    assert result.until == NOW + 300 + 60


def test_header_count(key: ProofKey) -> None:
    refused(check(None), "no DPoP header")
    refused(check([]), "no DPoP header")
    proof = key.proof("GET", URL, TOKEN, iat=NOW)
    refused(check([proof, proof]), "more than one DPoP header")


def test_not_a_jws(key: ProofKey) -> None:
    refused(check("not-a-jwt"), "not a compact JWS")
    refused(check(key.proof("GET", URL, TOKEN, iat=NOW) + ".x"), "not a compact JWS")
    refused(check("x" * 9000), "too long")


def test_typ_must_be_dpop_jwt(key: ProofKey) -> None:
    refused(check(key.proof("GET", URL, TOKEN, iat=NOW, header={"typ": "JWT"})), "typ")


def test_alg_none_and_hmac_are_refused(key: ProofKey) -> None:
    claims = key.claims("GET", URL, TOKEN, iat=NOW)
    refused(check(unsigned_proof({"alg": "none", "typ": "dpop+jwt", "jwk": key.jwk}, claims)), "alg 'none'")
    hs = unsigned_proof({"alg": "HS256", "typ": "dpop+jwt", "jwk": {"kty": "oct", "k": "c2VjcmV0"}}, claims, b"secret")
    refused(check(hs), "alg 'HS256'")
    refused(check(hs, algorithms=("HS256", *ALGS)), "alg 'HS256'")  # never, even if listed


def test_alg_outside_the_allowlist(key: ProofKey) -> None:
    refused(check(key.proof("GET", URL, TOKEN, iat=NOW), algorithms=("RS256",)), "alg 'ES256'")


def test_jwk_missing_or_private(key: ProofKey) -> None:
    claims = key.claims("GET", URL, TOKEN, iat=NOW)
    no_jwk = key.key.sign(claims, {"typ": "dpop+jwt"}, with_kid=False)
    refused(check(no_jwk), "no jwk")
    private = {**key.jwk, "d": "AAAA"}
    refused(check(key.proof("GET", URL, TOKEN, iat=NOW, header={"jwk": private})), "private member")


def test_signature_by_another_key_than_the_jwk(key: ProofKey) -> None:
    other = ProofKey("ES256")
    refused(check(key.proof("GET", URL, TOKEN, iat=NOW, header={"jwk": other.jwk})), "signature")


def test_required_claims(key: ProofKey) -> None:
    refused(check(key.proof("GET", URL, TOKEN, iat=NOW, jti=None)), "jti")
    refused(check(key.proof("GET", URL, TOKEN, iat=NOW, jti="")), "jti")
    refused(check(key.proof("GET", URL, TOKEN, iat=NOW, htm=None)), "htm, htu")
    no_iat = {name: value for name, value in key.claims("GET", URL, TOKEN, iat=NOW).items() if name != "iat"}
    refused(check(key.key.sign(no_iat, {"typ": "dpop+jwt", "jwk": key.jwk}, with_kid=False)), "numeric iat")
    refused(check(key.proof("GET", URL, TOKEN, iat=NOW, htu=None)), "htm, htu")


def test_htm_must_be_the_method(key: ProofKey) -> None:
    refused(check(key.proof("POST", URL, TOKEN, iat=NOW)), "htm")
    refused(check(key.proof("get", URL, TOKEN, iat=NOW)), "htm")  # methods are case-sensitive


@pytest.mark.parametrize("htu", [
    "https://API.example.com/api/orders", "https://api.example.com:443/api/orders", "HTTPS://api.example.com/api/orders",
    "https://api.example.com/api/./orders", "https://api.example.com/api/x/../orders", "https://api.example.com/api/%6Frders",
    "https://api.example.com/api/orders?page=2", "https://api.example.com/api/orders#f", "https://api.example.com./api/orders",
])
def test_htu_is_compared_in_normal_form_without_query_or_fragment(key: ProofKey, htu: str) -> None:
    assert isinstance(check(key.proof("GET", htu, TOKEN, iat=NOW)), dpop.Proof)


@pytest.mark.parametrize("htu", [
    "http://api.example.com/api/orders", "https://api.example.com:8443/api/orders", "https://other.example.com/api/orders",
    "https://api.example.com/api/orders/", "https://api.example.com/API/orders", "https://user@api.example.com/api/orders",
    "/api/orders", "ftp://api.example.com/api/orders",
])
def test_htu_must_be_the_request_url(key: ProofKey, htu: str) -> None:
    refused(check(key.proof("GET", htu, TOKEN, iat=NOW)), "htu")


def test_unknown_request_url_refuses_every_proof(key: ProofKey) -> None:
    refused(check(key.proof("GET", URL, TOKEN, iat=NOW), url=None), "cannot tell the request's URL")


def test_iat_window(key: ProofKey) -> None:
    assert isinstance(check(key.proof("GET", URL, TOKEN, iat=NOW + 60)), dpop.Proof)
    assert isinstance(check(key.proof("GET", URL, TOKEN, iat=NOW - 360)), dpop.Proof)
    refused(check(key.proof("GET", URL, TOKEN, iat=NOW + 61)), "future")
    refused(check(key.proof("GET", URL, TOKEN, iat=NOW - 361)), "too old")
    text_iat = {**key.claims("GET", URL, TOKEN), "iat": "now"}
    refused(check(key.key.sign(text_iat, {"typ": "dpop+jwt", "jwk": key.jwk}, with_kid=False)), "numeric iat")


def test_ath_must_hash_the_token(key: ProofKey) -> None:
    refused(check(key.proof("GET", URL, "another-token", iat=NOW)), "ath")
    refused(check(key.proof("GET", URL, None, iat=NOW)), "ath")
    assert ath(TOKEN) == dpop.access_token_hash(TOKEN)


def test_nonces(key: ProofKey) -> None:
    nonces = dpop.NonceKeeper("n" * 32)
    missing = check(key.proof("GET", URL, TOKEN, iat=NOW), nonces=nonces)
    assert isinstance(missing, dpop.Refusal)
    assert missing.error == dpop.USE_NONCE
    assert missing.nonce is not None
    assert nonces.valid(missing.nonce, NOW)
    assert isinstance(check(key.proof("GET", URL, TOKEN, iat=NOW, nonce=missing.nonce), nonces=nonces), dpop.Proof)
    # another replica with the same secret accepts it; one with another secret does not
    assert dpop.NonceKeeper("n" * 32).valid(missing.nonce, NOW)
    assert not dpop.NonceKeeper("m" * 32).valid(missing.nonce, NOW)
    # valid in its window and the next, not after
    assert nonces.valid(missing.nonce, NOW + dpop.NONCE_WINDOW_SECONDS)
    assert not nonces.valid(missing.nonce, NOW + 2 * dpop.NONCE_WINDOW_SECONDS)
    assert not nonces.valid("x" * 32, NOW)
    assert not nonces.valid(None, NOW)


def test_request_origin_rules() -> None:
    assert dpop.request_origin(public_base_url="https://api.example.com", scheme="http", host="10.0.0.1:3000",
                               forwarded_proto=["http"], trusted=True) == "https://api.example.com"
    assert dpop.request_origin(public_base_url=None, scheme="http", host="gw:3000") == "http://gw:3000"
    forwarded = {"forwarded_proto": ["https"], "forwarded_host": ["api.example.com"]}
    assert dpop.request_origin(public_base_url=None, scheme="http", host="gw:3000", trusted=True,
                               **forwarded) == "https://api.example.com"
    assert dpop.request_origin(public_base_url=None, scheme="http", host="gw:3000", trusted=False,
                               **forwarded) == "http://gw:3000"
    assert dpop.request_url("http://gw:3000", "/a/b") == "http://gw:3000/a/b"
    assert dpop.request_url("https://gw:443", "/") == "https://gw/"
    assert dpop.request_url("https://gw/x", "/") is None
    assert dpop.request_url("", "/") is None


# ----------------------------------------------------------------------------------- replay guard, extraction


def test_memory_replay_guard() -> None:
    guard = MemoryReplayGuard(max_entries=2)
    assert guard.first_use_local(b"a", NOW + 10, NOW)
    assert not guard.first_use_local(b"a", NOW + 10, NOW)
    assert guard.first_use_local(b"a", NOW + 30, NOW + 11)  # expired: forgotten
    assert guard.first_use_local(b"b", NOW + 30, NOW + 11)
    assert guard.first_use_local(b"c", NOW + 30, NOW + 11)  # full: the oldest goes
    assert len(guard) == 2
    assert not guard.first_use_local(b"c", NOW + 30, NOW + 12)


def test_extract_recognises_the_dpop_scheme() -> None:
    assert extract(["DPoP abc"], 100) == DPoPToken("abc")
    assert extract(["dpop   abc"], 100) == DPoPToken("abc")
    assert extract(["Bearer abc"], 100) == BearerToken("abc")
    assert extract(["DPoP a b"], 100) is Problem.INVALID_DPOP
    assert extract(["DPoP"], 100) is Problem.INVALID_DPOP
    assert extract(["Basic abc"], 100) is Problem.MISSING


def test_cnf_member() -> None:
    assert cnf_member({"cnf": {"jkt": "abc"}}, "jkt") == "abc"
    # present but unusable: "" (no key thumbprint equals it), never None (which would read as unbound: fail closed)
    assert cnf_member({"cnf": {"jkt": 1}}, "jkt") == ""
    assert cnf_member({"cnf": "abc"}, "jkt") == ""
    assert cnf_member({"cnf": {"x5t#S256": "t"}}, "jkt") is None
    assert cnf_member({}, "jkt") is None


def test_codec_keeps_the_binding_and_refuses_entries_without_it() -> None:
    codec = EntryCodec()
    bound = CacheEntry("Bearer x", frozenset({"read"}), NOW, jkt="thumb")
    assert codec.decode(codec.encode(bound, b"k"), b"k") == bound
    unbound = CacheEntry("Bearer x", frozenset(), NOW)
    assert codec.decode(codec.encode(unbound, b"k"), b"k") == unbound
    shaped = CacheEntry("Bearer x", frozenset(), NOW, (("X-User-Id", "alice"),), "thumb")
    assert codec.decode(codec.encode(shaped, b"k"), b"k") == shaped
    # written before the binding was kept (three or four members): a miss
    assert codec.decode(b'\x00[1700000000.0,["read"],"Bearer x"]', b"k") is None
    assert codec.decode(b'\x00[1700000000.0,["read"],"Bearer x",[["X-A","1"]]]', b"k") is None
    assert codec.decode(b'\x00[1700000000.0,[],"Bearer x",null,{"jkt":5}]', b"k") is None
    assert codec.decode(b'\x00[1700000000.0,[],"Bearer x",null,[]]', b"k") is None


# --------------------------------------------------------------------------------------------------- engine

UPSTREAM = Upstream("http", "127.0.0.1", 3001, "/")
ORIGIN = "https://api.example.com"


class SharedGuard(MemoryReplayGuard):
    """A guard that claims a shared store: the engine must take the async path."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    @property
    def local(self) -> bool:
        return False

    async def first_use(self, replay_key: bytes, until: float, now: float) -> bool:
        self.asked += 1
        return self.first_use_local(replay_key, until, now)


def engine(mode: str = "allowed", **options: Any) -> tuple[Engine, FakeIntrospector, FakeClock]:
    plugin = PluginConfig("http://as.test/introspect", "gw", "s", dpop=mode, **options)
    routes = (Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),)
    clock, introspector = FakeClock(NOW), FakeIntrospector()
    return Engine(Router(routes), MemoryCache(100), introspector, clock=clock,
                  nonces=dpop.NonceKeeper("s" * 32)), introspector, clock


def request(token: str, proof: str | None = None, *, scheme: str = "DPoP", method: str = "GET",
            origin: str = ORIGIN) -> RequestInfo:
    headers = {"authorization": [f"{scheme} {token}"]}
    if proof is not None:
        headers["dpop"] = [proof]
    return RequestInfo(method, "api.example.com", "/api/orders", headers, origin=origin if proof else "")


def bind(introspector: FakeIntrospector, token: str, jkt: str | None) -> None:
    claims: dict[str, object] = {"sub": "alice", "scope": "read", "exp": NOW + 3600}
    if jkt is not None:
        claims["cnf"] = {"jkt": jkt}
    introspector.activate(token, claims)


def challenge(verdict: object) -> list[str]:
    assert isinstance(verdict, Deny), verdict
    assert verdict.status == 401
    assert verdict.code == "unauthorized"
    return [value for name, value in verdict.headers() if name == "WWW-Authenticate"]


async def test_bound_token_with_a_valid_proof_is_allowed_then_the_proof_is_spent(key: ProofKey) -> None:
    eng, introspector, _ = engine()
    bind(introspector, TOKEN, key.jkt)
    proof = key.proof("GET", URL, TOKEN, iat=NOW)
    assert isinstance(await eng.authorize(request(TOKEN, proof)), Allow)
    replayed = await eng.authorize(request(TOKEN, proof))
    assert challenge(replayed) == [f'DPoP error="invalid_dpop_proof", algs="{" ".join(ALGS)}"']
    fresh = eng.try_authorize(request(TOKEN, key.proof("GET", URL, TOKEN, iat=NOW)))  # a hit: no I/O
    assert isinstance(fresh, Allow)
    assert introspector.calls == [TOKEN]


async def test_a_bad_proof_costs_no_introspection(key: ProofKey) -> None:
    eng, introspector, _ = engine()
    bind(introspector, TOKEN, key.jkt)
    for proof in (key.proof("POST", URL, TOKEN, iat=NOW), key.proof("GET", URL, "x", iat=NOW),
                  key.proof("GET", URL, TOKEN, iat=NOW - 1000), "junk"):
        assert challenge(await eng.authorize(request(TOKEN, proof)))[0].startswith('DPoP error="invalid_dpop_proof"')
    assert challenge(await eng.authorize(request(TOKEN)))[0].startswith('DPoP error="invalid_dpop_proof"')
    assert introspector.calls == []


async def test_proof_by_another_key_than_the_binding(key: ProofKey) -> None:
    eng, introspector, _ = engine()
    bind(introspector, TOKEN, ProofKey().jkt)
    verdict = await eng.authorize(request(TOKEN, key.proof("GET", URL, TOKEN, iat=NOW)))
    assert challenge(verdict)[0].startswith('DPoP error="invalid_dpop_proof"')


async def test_bound_token_as_bearer_is_refused(key: ProofKey) -> None:
    eng, introspector, _ = engine()
    bind(introspector, TOKEN, key.jkt)
    verdict = await eng.authorize(request(TOKEN, scheme="Bearer"))
    assert challenge(verdict) == [f'DPoP error="invalid_token", algs="{" ".join(ALGS)}"']
    assert challenge(eng.try_authorize(request(TOKEN, scheme="Bearer")))  # at a hit too


async def test_unbound_token(key: ProofKey) -> None:
    eng, introspector, _ = engine()
    bind(introspector, TOKEN, None)
    assert isinstance(await eng.authorize(request(TOKEN, scheme="Bearer")), Allow)
    as_dpop = await eng.authorize(request(TOKEN, key.proof("GET", URL, TOKEN, iat=NOW)))
    assert challenge(as_dpop)[0].startswith('DPoP error="invalid_token"')
    strict, introspector, _ = engine("required")
    bind(introspector, TOKEN, None)
    assert challenge(await strict.authorize(request(TOKEN, scheme="Bearer")))[0].startswith("DPoP ")
    assert introspector.calls == []


async def test_missing_token_challenges() -> None:
    eng, *_ = engine(realm="api")
    both = await eng.authorize(RequestInfo("GET", "api.example.com", "/api/x", {}))
    assert challenge(both) == ['Bearer realm="api"', f'DPoP realm="api", algs="{" ".join(ALGS)}"']
    strict, *_ = engine("required", dpop_signing_alg_values=("ES256",))
    assert challenge(await strict.authorize(RequestInfo("GET", "h", "/api/x", {}))) == ['DPoP algs="ES256"']


async def test_jwt_mode_binding_comes_from_the_jwt(key: ProofKey) -> None:
    eng, introspector, _ = engine()
    bind(introspector, TOKEN, key.jkt)  # FakeIntrospector answers a JWT with these claims (Curity's mode)
    verdict = await eng.authorize(request(TOKEN, key.proof("GET", URL, TOKEN, iat=NOW)))
    assert isinstance(verdict, Allow)
    assert verdict.authorization is not None
    assert verdict.authorization.startswith("Bearer ")


async def test_nonce_flow(key: ProofKey) -> None:
    eng, introspector, _ = engine(dpop_nonce=True)
    bind(introspector, TOKEN, key.jkt)
    first = await eng.authorize(request(TOKEN, key.proof("GET", URL, TOKEN, iat=NOW)))
    assert isinstance(first, Deny)
    assert first.headers()[1][1].startswith('DPoP error="use_dpop_nonce"')
    nonce = dict(first.headers())["DPoP-Nonce"]
    assert isinstance(await eng.authorize(request(TOKEN, key.proof("GET", URL, TOKEN, iat=NOW, nonce=nonce))), Allow)
    assert introspector.calls == [TOKEN]


async def test_a_shared_guard_sends_hits_to_the_async_path(key: ProofKey) -> None:
    plugin = PluginConfig("http://as.test/introspect", "gw", "s")
    guard = SharedGuard()
    introspector = FakeIntrospector()
    eng = Engine(Router((Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),)), MemoryCache(10),
                 introspector, clock=FakeClock(NOW), replay_guard=guard)
    bind(introspector, TOKEN, key.jkt)
    proof = key.proof("GET", URL, TOKEN, iat=NOW)
    assert isinstance(await eng.authorize(request(TOKEN, proof)), Allow)
    assert eng.try_authorize(request(TOKEN, key.proof("GET", URL, TOKEN, iat=NOW))) is None
    assert challenge(await eng.authorize(request(TOKEN, proof)))
    assert guard.asked == 2
    assert isinstance(eng.try_authorize(request(TOKEN, scheme="Bearer")), Deny)  # no proof: still at a hit


async def test_origin_decides_htu(key: ProofKey) -> None:
    eng, introspector, _ = engine()
    bind(introspector, TOKEN, key.jkt)
    proof = key.proof("GET", "http://gw:3000/api/orders", TOKEN, iat=NOW)
    assert challenge(await eng.authorize(request(TOKEN, proof)))  # the request came to https://api.example.com
    assert isinstance(await eng.authorize(request(TOKEN, key.proof("GET", "http://gw:3000/api/orders", TOKEN,
                                                                    iat=NOW), origin="http://gw:3000")), Allow)


# ------------------------------------------------------------------------------- front doors: facts in, proof out


def test_serve_removes_the_proof_upstream_unless_forwarded() -> None:
    from phantom_token.frontends.forwarding import request_lines
    from phantom_token.http.request_head import RequestHead, index_headers, split_target

    head = RequestHead("GET", b"/x", [(b"Host", b"gw"), (b"DPoP", b"proof"), (b"X-A", b"1")], True, False)
    index_headers(head)
    split_target(head)
    plugin = PluginConfig("e", "c", "s")
    assert b"DPoP" not in b"".join(request_lines(head, b"/x", "Bearer j", plugin)[0])
    forwarding = PluginConfig("e", "c", "s", forward_dpop_proof=True)
    assert b"DPoP: proof\r\n" in b"".join(request_lines(head, b"/x", "Bearer j", forwarding)[0])
    assert b"DPoP: proof\r\n" in b"".join(request_lines(head, b"/x", None, None)[0])  # no plugin: untouched


def test_authz_origin_from_the_forwarded_url() -> None:
    from phantom_token.frontends.decisions import original_origin

    absolute = {"x-original-url": ["https://API.example.com:8443/api/x?y=1"], "dpop": ["p"]}
    assert original_origin("/authz/nginx", "authz:3000", absolute, None) == "https://API.example.com:8443"
    forwarded = {"x-original-uri": ["/api/x"], "x-forwarded-proto": ["https"], "x-forwarded-host": ["gw:8443"]}
    assert original_origin("/authz/nginx", "authz:3000", forwarded, None) == "https://gw:8443"
    assert original_origin("/authz/envoy/api/x", "gw:10000", {}, None) == "http://gw:10000"
    assert original_origin("/authz/nginx", "authz", absolute, "https://public.example") == "https://public.example"


def test_grpc_origin_from_envoy_attributes() -> None:
    from envoy.service.auth.v3 import external_auth_pb2

    from phantom_token.frontends.grpc_authz import check_response, request_info

    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    http.method, http.path, http.host, http.scheme = "GET", "/api/x", "api.example.com:8443", "https"
    http.headers.update({"authorization": "DPoP t", "dpop": "proof"})
    assert request_info(check, 65536).origin == "https://api.example.com:8443"
    assert request_info(check, 65536, "https://public.example").origin == "https://public.example"
    route = Route("api", "svc", None, paths=("/api",), plugin=PluginConfig("e", "c", "s"))
    info = request_info(check, 65536)
    assert list(check_response(Allow(route, "Bearer j"), info).ok_response.headers_to_remove) == ["dpop"]
    kept = Route("api", "svc", None, paths=("/api",), plugin=PluginConfig("e", "c", "s", forward_dpop_proof=True))
    assert list(check_response(Allow(kept, "Bearer j"), info).ok_response.headers_to_remove) == []


def test_asgi_origin_from_the_scope_and_the_proof_kept_from_the_app() -> None:
    from phantom_token.frontends.middleware import allowed_scope, request_info

    scope = {"type": "http", "method": "GET", "scheme": "https", "path": "/api/x", "raw_path": b"/api/x",
             "headers": [(b"host", b"api.example.com"), (b"authorization", b"DPoP t"), (b"dpop", b"proof")]}
    assert request_info(scope).origin == "https://api.example.com"
    assert request_info({**scope, "scheme": "wss"}).origin == "https://api.example.com"
    route = Route("api", "svc", None, paths=("/api",), plugin=PluginConfig("e", "c", "s"))
    headers = dict(allowed_scope(scope, Allow(route, "Bearer a.b.c"))["headers"])
    assert headers == {b"host": b"api.example.com", b"authorization": b"Bearer a.b.c"}


async def test_the_connection_memo_never_skips_a_proof(key: ProofKey) -> None:
    from phantom_token.core.request import TokenMemo

    eng, introspector, _ = engine()
    bind(introspector, TOKEN, key.jkt)
    memo = TokenMemo()
    proof = key.proof("GET", URL, TOKEN, iat=NOW)
    first = request(TOKEN, proof)
    first.memo = memo
    assert isinstance(await eng.authorize(first), Allow)
    again = request(TOKEN, proof)
    again.memo = memo
    assert challenge(eng.try_authorize(again))[0].startswith('DPoP error="invalid_dpop_proof"')
    bearer = request(TOKEN, scheme="Bearer")
    bearer.memo = memo
    assert challenge(eng.try_authorize(bearer))[0].startswith('DPoP error="invalid_token"')
    assert challenge(eng.try_authorize(bearer))[0].startswith('DPoP error="invalid_token"')  # memo hit: still bound


async def test_a_dpop_token_type_without_its_binding_is_refused(key: ProofKey) -> None:
    eng, introspector, _ = engine()
    introspector.activate(TOKEN, {"sub": "alice", "exp": NOW + 3600, "token_type": "DPoP"})
    assert challenge(await eng.authorize(request(TOKEN, scheme="Bearer"))) == ['Bearer error="invalid_token"']


# ------------------------------------------------------------------------------------------------ configuration


def test_dpop_configuration_rules() -> None:
    from phantom_token.config.loader import parse_settings

    from .test_config_options import document, problems

    where = "service 'api' / plugin 'phantom-token'"
    settings = parse_settings(document({"dpop": "required", "dpop_signing_alg_values": ["ES256", "EdDSA ES256"],
                                        "dpop_nonce": True}, {"public_base_url": "https://api.example.com/"}),
                              source="f.yml", environ={})
    plugin = settings.routes[0].plugin
    assert plugin is not None
    assert (plugin.dpop, plugin.dpop_signing_alg_values, plugin.dpop_nonce) == ("required", ("ES256", "EdDSA"), True)
    assert settings.public_base_url == "https://api.example.com"
    assert parse_settings(document({"dpop_signing_alg_values": "PS256 RS256"}), source="f.yml",
                          environ={}).routes[0].plugin.dpop_signing_alg_values == ("PS256", "RS256")  # type: ignore[union-attr]
    algs = "must list algorithms among ES256, ES384, ES512, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512 " \
           "(never none or HMAC)"
    for bad in ("none", "HS256", "ES256 HS256", ""):
        assert problems(document({"dpop_signing_alg_values": bad})) == [(where, "config.dpop_signing_alg_values",
                                                                         algs)]
    assert problems(document({"dpop": "sometimes"})) == [(where, "config.dpop", "must be allowed or required")]
    assert problems(document(section={"public_base_url": "https://api.example.com/v1"})) == [
        ("phantom_token", "public_base_url", "must be scheme://host[:port] only (no path, query or fragment)")]
    assert problems(document(section={"public_base_url": "ftp://x"})) == [
        ("phantom_token", "public_base_url", "must be an http:// or https:// URL with a host")]
    assert problems(document({"dpop_nonce": True}, {"workers": 2})) == [
        ("phantom_token", "dpop_nonce_secret",
         "is required when a route sets dpop_nonce and several processes answer (workers or redis_url)")]
    assert problems(document({"dpop_nonce": True}, {"dpop_nonce_secret": "short"})) == [
        ("phantom_token", "dpop_nonce_secret",
         "must be at least 32 characters (e.g. from openssl rand -base64 32)")]


async def test_a_proven_request_gets_its_claims_headers(key: ProofKey) -> None:
    # DPoP's own grant path must carry the claims_to_headers values like every other Allow: serve strips the
    # client's copies on such routes, so a path without them would send the API nothing at all.
    eng, introspector, _ = engine(claims_to_headers=(("X-User-Id", "sub"),))
    bind(introspector, TOKEN, key.jkt)
    verdict = await eng.authorize(request(TOKEN, key.proof("GET", URL, TOKEN, iat=NOW)))
    assert isinstance(verdict, Allow)
    assert verdict.headers == (("X-User-Id", "alice"),)
    hit = eng.try_authorize(request(TOKEN, key.proof("GET", URL, TOKEN, iat=NOW)))
    assert isinstance(hit, Allow)
    assert hit.headers == (("X-User-Id", "alice"),)


async def test_a_token_bound_to_a_key_and_a_certificate_needs_both(key: ProofKey) -> None:
    eng, introspector, _ = engine()
    introspector.activate(TOKEN, {"sub": "alice", "scope": "read", "exp": NOW + 3600,
                                  "cnf": {"jkt": key.jkt, "x5t#S256": "cert-thumbprint"}})

    def with_certificate(info: RequestInfo, thumbprint: str | None) -> RequestInfo:
        memo = info.memo = TokenMemo()
        memo.client_cert_sha256 = thumbprint
        return info

    proven = request(TOKEN, key.proof("GET", URL, TOKEN, iat=NOW))
    assert isinstance(await eng.authorize(with_certificate(proven, "cert-thumbprint")), Allow)
    other = request(TOKEN, key.proof("GET", URL, TOKEN, iat=NOW))
    assert challenge(await eng.authorize(with_certificate(other, "another"))) != []
    none = request(TOKEN, key.proof("GET", URL, TOKEN, iat=NOW))
    assert challenge(eng.try_authorize(none)) != []
    assert introspector.calls == [TOKEN]
