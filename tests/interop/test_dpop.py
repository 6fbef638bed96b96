"""DPoP (RFC 9449) against a real authorization server: node ``oidc-provider`` (``features.dPoP``, on by default in
9.x) issues DPoP-bound opaque tokens (its introspection answers carry ``cnf.jkt`` and ``token_type: "DPoP"``), and
``phantom-token serve`` checks the proofs, in ``json`` (RFC 7662) and ``signed`` (RFC 9701) modes.

Two replicas on one real Redis (redis-server): a proof used on one is refused by the other.

Whether the gateway asked the authorization server is read from its admin listener's
``phantom_token_introspections_total``: a request refused for its proof alone must not have cost a call.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dpop_proofs import ProofKey, unsigned_proof
from tests.e2e.conftest import Gateway, GatewayFactory, HttpResult, Process, free_port, http_request, start_process
from tests.e2e.gateways import gateway_argv, start_gateway
from tests.integration.redis_server import RedisServer, running_redis

from .conftest import APP_CLIENT, OidcProvider
from .test_oidc_provider import GATEWAY_ISSUER, plugin

pytestmark = pytest.mark.e2e

PATH = "/api/orders"
ALGS = "ES256 ES384 ES512 PS256 RS256 EdDSA"


def issue_bound_token(oidc: OidcProvider, key: ProofKey) -> str:
    """A client-credentials token bound to ``key`` (a DPoP proof on the token request, RFC 9449 section 5)."""
    token_endpoint = f"{oidc.issuer}/token"
    body = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": "read write"}).encode()
    basic = base64.b64encode(":".join(APP_CLIENT).encode()).decode()
    result = http_request("POST", token_endpoint, {
        "Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Basic {basic}",
        "DPoP": key.proof("POST", token_endpoint)}, body)
    assert result.status == 200, result.text
    answer = result.json()
    assert answer["token_type"] == "DPoP"
    token = answer["access_token"]
    assert isinstance(token, str)
    return token


class Rig:
    """A gateway in front of the echo API, with its admin listener (metrics)."""

    def __init__(self, gw: Gateway, admin: str) -> None:
        self.gw = gw
        self.admin = admin
        self.url = f"http://127.0.0.1:{gw.port}{PATH}"

    def introspections(self) -> int:
        text = http_request("GET", f"{self.admin}/metrics").text
        found = re.search(r"^phantom_token_introspections_total (\d+)$", text, re.MULTILINE)
        assert found is not None
        return int(found[1])

    def send(self, token: str, *proofs: str, scheme: str = "DPoP", method: str = "GET") -> HttpResult:
        headers = [("Authorization", f"{scheme} {token}"), *(("DPoP", proof) for proof in proofs)]
        return self.gw.request(PATH, headers, method=method)


def start_rig(gateway: GatewayFactory, oidc: OidcProvider, echo: Process, mode: str, *,
              section: dict[str, Any] | None = None, **options: Any) -> Rig:
    document = {
        "_format_version": "2.1",
        "services": [{"name": "api", "url": echo.base_url, "routes": [{"name": "api-route", "paths": ["/api"]}],
                      "plugins": [{"name": "phantom-token",
                                   "config": plugin(oidc, mode, honor_cache_control=False, **options)}]}],
        "phantom_token": {"jwt": {"issuer": GATEWAY_ISSUER}, **(section or {})},
    }
    admin = f"127.0.0.1:{free_port()}"
    gw = gateway(yaml.safe_dump(document, sort_keys=False), args=["--admin-listen", admin])
    return Rig(gw, f"http://{admin}")


def upstream_claims(result: HttpResult) -> tuple[dict[str, Any], dict[str, str]]:
    assert result.status == 200, (result.status, result.text)
    headers = result.json()["headers"]
    scheme, _, jwt = headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))), headers


def dpop_challenge(result: HttpResult, error: str) -> None:
    assert result.status == 401, (result.status, result.text)
    assert result.json() == {"code": "unauthorized", "message": "Missing, invalid or expired access token"}
    assert result.header_values("WWW-Authenticate") == [f'DPoP error="{error}", algs="{ALGS}"']


@pytest.mark.parametrize("mode", ["json", "signed"])
def test_dpop_bound_tokens_end_to_end(oidc_provider: OidcProvider, echo_api: Process, gateway: GatewayFactory,
                                      mode: str) -> None:
    rig = start_rig(gateway, oidc_provider, echo_api, mode)
    key = ProofKey("ES256")
    token = issue_bound_token(oidc_provider, key)

    # a valid proof: 200, and the API gets a Bearer JWT carrying the binding, without the proof
    proof = key.proof("GET", rig.url, token)
    claims, headers = upstream_claims(rig.send(token, proof))
    assert claims["cnf"] == {"jkt": key.jkt}
    assert "dpop" not in headers
    assert rig.introspections() == 1

    # the same proof again (a cache hit): replayed
    dpop_challenge(rig.send(token, proof), "invalid_dpop_proof")
    # proofs that fail on their own are refused without asking the authorization server
    for bad in (
        key.proof("POST", rig.url, token),  # wrong htm
        key.proof("GET", rig.url.replace("/api/orders", "/api/other"), token),  # wrong htu
        key.proof("GET", rig.url.replace("127.0.0.1", "localhost"), token),  # wrong htu (host)
        key.proof("GET", rig.url, "another-token"),  # wrong ath
        key.proof("GET", rig.url, token, iat=1_000_000_000),  # old iat
        unsigned_proof({"alg": "none", "typ": "dpop+jwt", "jwk": key.jwk}, key.claims("GET", rig.url, token)),
        unsigned_proof({"alg": "HS256", "typ": "dpop+jwt", "jwk": key.jwk}, key.claims("GET", rig.url, token),
                       b"secret"),
        key.proof("GET", rig.url, token, header={"jwk": {**key.jwk, "d": key.key.private_pem().hex()[:43]}}),
        key.proof("GET", rig.url, token, header={"typ": "JWT"}),
    ):
        dpop_challenge(rig.send(token, bad), "invalid_dpop_proof")
    two = rig.send(token, key.proof("GET", rig.url, token), key.proof("GET", rig.url, token))
    dpop_challenge(two, "invalid_dpop_proof")
    dpop_challenge(rig.send(token), "invalid_dpop_proof")  # no proof at all
    assert rig.introspections() == 1

    # a valid proof by another key than the token's: refused (the binding is known from the cache)
    dpop_challenge(rig.send(token, ProofKey("ES256").proof("GET", rig.url, token)), "invalid_dpop_proof")
    # the bound token as Bearer: no downgrade
    dpop_challenge(rig.send(token, scheme="Bearer"), "invalid_token")
    # a fresh proof still works (from the cache)
    assert upstream_claims(rig.send(token, key.proof("GET", rig.url, token)))[0]["cnf"] == {"jkt": key.jkt}
    assert rig.introspections() == 1


@pytest.mark.parametrize("mode", ["json", "signed"])
def test_another_key_on_a_fresh_token_and_eddsa(oidc_provider: OidcProvider, echo_api: Process,
                                                gateway: GatewayFactory, mode: str) -> None:
    rig = start_rig(gateway, oidc_provider, echo_api, mode)
    key, thief = ProofKey("EdDSA"), ProofKey("ES256")
    token = issue_bound_token(oidc_provider, key)
    dpop_challenge(rig.send(token, thief.proof("GET", rig.url, token)), "invalid_dpop_proof")  # a miss: introspected
    assert rig.introspections() == 1
    assert upstream_claims(rig.send(token, key.proof("GET", rig.url, token)))[0]["cnf"] == {"jkt": key.jkt}


@pytest.mark.parametrize("mode", ["json", "signed"])
def test_unbound_tokens_allowed_or_required(oidc_provider: OidcProvider, echo_api: Process, gateway: GatewayFactory,
                                            mode: str) -> None:
    unbound = oidc_provider.issue_token()
    allowed = start_rig(gateway, oidc_provider, echo_api, mode)
    claims, _ = upstream_claims(allowed.send(unbound, scheme="Bearer"))
    assert "cnf" not in claims
    # an unbound token with the DPoP scheme: invalid_token (its proof is fine, its binding is missing)
    key = ProofKey()
    dpop_challenge(allowed.send(unbound, key.proof("GET", allowed.url, unbound)), "invalid_token")
    # missing token: both challenges
    missing = allowed.gw.request(PATH)
    assert missing.status == 401
    assert missing.header_values("WWW-Authenticate") == ["Bearer", f'DPoP algs="{ALGS}"']

    required = start_rig(gateway, oidc_provider, echo_api, mode, dpop="required")
    dpop_challenge(required.send(unbound, scheme="Bearer"), "invalid_token")
    assert required.introspections() == 0
    assert required.gw.request(PATH).header_values("WWW-Authenticate") == [f'DPoP algs="{ALGS}"']
    token = issue_bound_token(oidc_provider, key)
    assert upstream_claims(required.send(token, key.proof("GET", required.url, token)))[0]["cnf"] == {"jkt": key.jkt}


def test_nonce_flow_end_to_end(oidc_provider: OidcProvider, echo_api: Process, gateway: GatewayFactory) -> None:
    secret = secrets.token_urlsafe(32)
    rig = start_rig(gateway, oidc_provider, echo_api, "json", section={"dpop_nonce_secret": secret},
                    dpop_nonce=True, forward_dpop_proof=True)
    key = ProofKey()
    token = issue_bound_token(oidc_provider, key)
    first = rig.send(token, key.proof("GET", rig.url, token))
    assert first.status == 401
    assert first.header_values("WWW-Authenticate") == [
        f'DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof", '
        f'algs="{ALGS}"']
    nonce = first.header("DPoP-Nonce")
    assert nonce
    assert rig.introspections() == 0
    proof = key.proof("GET", rig.url, token, nonce=nonce)
    claims, headers = upstream_claims(rig.send(token, proof))
    assert claims["cnf"] == {"jkt": key.jkt}
    assert headers["dpop"] == proof  # forward_dpop_proof: true
    # a second gateway with the same secret accepts the first one's nonce
    other = start_rig(gateway, oidc_provider, echo_api, "json", section={"dpop_nonce_secret": secret},
                      dpop_nonce=True)
    assert upstream_claims(other.send(token, key.proof("GET", other.url, token, nonce=nonce)))[1].get("dpop") is None
    wrong = rig.send(token, key.proof("GET", rig.url, token, nonce="A" * 32))
    assert wrong.status == 401
    assert wrong.header("DPoP-Nonce")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from running_redis()


def test_two_replicas_on_redis_refuse_a_proof_used_on_either(
    oidc_provider: OidcProvider, echo_api: Process, gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    # Replicas behind one load balancer: one public URL, one Redis (cache and replay records).
    public = "https://api.example.com"
    section = {"public_base_url": public,
               "cache": {"redis_url": redis_server.url, "encryption_key": "e" * 44, "redis_timeout_seconds": 1.0}}
    first = start_rig(gateway, oidc_provider, echo_api, "json", section=section)
    second = start_rig(gateway, oidc_provider, echo_api, "json", section=section)
    key = ProofKey()
    token = issue_bound_token(oidc_provider, key)
    url = public + PATH
    proof = key.proof("GET", url, token)
    assert upstream_claims(first.send(token, proof))[0]["cnf"] == {"jkt": key.jkt}
    dpop_challenge(second.send(token, proof), "invalid_dpop_proof")  # never seen by this process: Redis knew
    assert "replayed" in second.gw.stderr()
    assert second.introspections() == 0  # the entry (with its binding) came from Redis
    other = key.proof("GET", url, token)
    assert upstream_claims(second.send(token, other))[0]["cnf"] == {"jkt": key.jkt}
    dpop_challenge(first.send(token, other), "invalid_dpop_proof")
    # the binding travelled through Redis: the token as Bearer is refused by both
    dpop_challenge(second.send(token, scheme="Bearer"), "invalid_token")


@pytest.mark.parametrize("name", ["nginx", "envoy", "envoy-grpc"])
def test_authz_behind_real_gateways(oidc_provider: OidcProvider, echo_api: Process, e2e_logs: Path, tmp_path: Path,
                                    name: str) -> None:
    # The shipped examples (examples/nginx/nginx.conf, examples/envoy/*.yaml) in front of `phantom-token authz`:
    # htu is checked against the URL the gateway forwards (nginx: X-Forwarded-Proto/-Host; Envoy: its Host and
    # scheme, over HTTP or gRPC), with no public_base_url.
    document = {
        "_format_version": "2.1",
        "services": [
            {"name": "api", "routes": [{"name": "api", "paths": ["/api"]}],
             "plugins": [{"name": "phantom-token", "config": plugin(oidc_provider, "json")}]},
            {"name": "public", "routes": [{"name": "public", "paths": ["/public"]}]},
        ],
        "phantom_token": {"jwt": {"issuer": GATEWAY_ISSUER}},
    }
    (tmp_path / "authz.yml").write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    listen, grpc, port = free_port(), free_port(), free_port()
    argv = [sys.executable, "-m", "phantom_token", "authz", "-c", str(tmp_path / "authz.yml"),
            "--listen", f"127.0.0.1:{listen}", "--grpc-listen", f"127.0.0.1:{grpc}"]
    authz = start_process("authz", argv, listen, e2e_logs)
    try:
        values = {"LISTEN_PORT": str(port), "AUTHZ_PORT": str(listen), "GRPC_AUTHZ_PORT": str(grpc),
                  "API_PORT": str(echo_api.port)}
        work_dir = tmp_path / name
        work_dir.mkdir()
        gw = start_gateway(name, gateway_argv(name, work_dir, values), port, work_dir)
        try:
            url = f"http://127.0.0.1:{port}{PATH}"
            key = ProofKey()
            token = issue_bound_token(oidc_provider, key)

            def send(*proofs: str, scheme: str = "DPoP") -> HttpResult:
                headers = [("Authorization", f"{scheme} {token}"), *(("DPoP", proof) for proof in proofs)]
                return http_request("GET", url, headers)

            proof = key.proof("GET", url, token)
            claims, headers = upstream_claims(send(proof))
            assert claims["cnf"] == {"jkt": key.jkt}
            assert "dpop" not in headers  # the proof stays at the gateway
            for refused, error in ((send(proof), "invalid_dpop_proof"),  # replayed
                                   (send(key.proof("GET", url.replace("127.0.0.1", "localhost"), token)),
                                    "invalid_dpop_proof"),  # another host in htu
                                   (send(key.proof("POST", url, token)), "invalid_dpop_proof"),
                                   (send(scheme="Bearer"), "invalid_token")):
                assert refused.status == 401, (refused.status, refused.text)
                assert f'DPoP error="{error}"' in ", ".join(refused.header_values("WWW-Authenticate"))
            assert upstream_claims(send(key.proof("GET", url, token)))[0]["cnf"] == {"jkt": key.jkt}
        finally:
            gw.stop()
    finally:
        assert authz.stop() == 0, authz.stderr()


def test_serve_takes_forwarded_scheme_and_host_only_from_trusted_proxies(
    oidc_provider: OidcProvider, echo_api: Process, gateway: GatewayFactory
) -> None:
    key = ProofKey()
    token = issue_bound_token(oidc_provider, key)
    public = "https://api.example.com" + PATH
    forwarded = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "api.example.com")]

    def send(rig: Rig, htu: str) -> HttpResult:
        return rig.gw.request(PATH, [("Authorization", f"DPoP {token}"), ("DPoP", key.proof("GET", htu, token)),
                                     *forwarded])

    trusting = start_rig(gateway, oidc_provider, echo_api, "json")  # trusted_proxies: loopback (the default)
    assert upstream_claims(send(trusting, public))[0]["cnf"] == {"jkt": key.jkt}
    distrusting = start_rig(gateway, oidc_provider, echo_api, "json", section={"trusted_proxies": []})
    dpop_challenge(send(distrusting, public), "invalid_dpop_proof")  # the headers are the client's: ignored
    assert upstream_claims(send(distrusting, distrusting.url))[0]["cnf"] == {"jkt": key.jkt}
