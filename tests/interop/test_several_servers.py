"""Two real authorization servers on one route, and JWT access tokens verified with a real issuer's JWKS.

The servers: node ``oidc-provider`` (tests/interop/server.mjs: opaque tokens, RFC 7662 JSON answers, its
``/test/stats`` counts the introspection requests it receives) and the demo AS (Curity-style JWT answers, its
``/stats`` counts them per token). The gateway is ``python -m phantom_token serve``; the echo API shows what arrived.

JWT issuers: an oidc-provider of the test's own, whose signing keys the test generates (so it can also sign tokens
the issuer never issued: expired, wrong audience), issuing RFC 9068 JWT access tokens for
https://jwt-api.example.com; key rotation is that provider restarted on the same port with a new key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from joserfc.jwk import RSAKey

from phantom_token import jose
from tests.e2e.conftest import (
    INTROSPECTION_CLIENT,
    AuthServer,
    Gateway,
    GatewayFactory,
    Process,
    free_port,
    http_request,
    start_process,
)

from .conftest import APP_CLIENT, HERE, OidcProvider

pytestmark = pytest.mark.e2e

JWT_RESOURCE = "https://jwt-api.example.com"


def oidc_introspections(oidc: OidcProvider) -> int:
    answer = http_request("GET", f"{oidc.issuer}/test/stats")
    assert answer.status == 200, answer.text
    return int(answer.json()["introspection"])


def demo_server(auth: AuthServer, **extra: Any) -> dict[str, Any]:
    return {"introspection_endpoint": auth.introspection_endpoint, "client_id": INTROSPECTION_CLIENT[0],
            "client_secret": INTROSPECTION_CLIENT[1], **extra}


def oidc_server(oidc: OidcProvider, **extra: Any) -> dict[str, Any]:
    return {"introspection_endpoint": oidc.introspection_endpoint, "introspection_response": "json",
            "client_id": "gw-basic", "client_secret": "gw-basic-secret", **extra}


def config(echo: Process, options: dict[str, Any]) -> str:
    """The route's options (oidc-provider answers introspection with ``Cache-Control: no-store``: not honoured)."""
    return yaml.safe_dump({
        "_format_version": "2.1",
        "services": [{"name": "api", "url": echo.base_url, "routes": [{"name": "api-route", "paths": ["/api"]}],
                      "plugins": [{"name": "phantom-token", "config": {
                          "token_cache_seconds": 300, "honor_cache_control": False, **options}}]}],
        "phantom_token": {"jwt": {"issuer": "https://gateway.test"}},
    }, sort_keys=False)


def upstream_authorization(gw: Gateway, token: str) -> str:
    result = gw.get_with_token(token)
    assert result.status == 200, (result.status, result.text, gw.stderr())
    authorization = result.json()["headers"]["authorization"]
    assert isinstance(authorization, str)
    return authorization


def status(gw: Gateway, token: str) -> int:
    return gw.get_with_token(token).status


class Calls:
    """Introspection requests received by both servers since it was made (demo AS: per token)."""

    def __init__(self, oidc: OidcProvider, demo: AuthServer) -> None:
        self.oidc, self.demo = oidc, demo
        self.oidc_start = oidc_introspections(oidc)
        self.demo.set_controls(reset=True)

    def at_oidc(self) -> int:
        return oidc_introspections(self.oidc) - self.oidc_start

    def at_demo(self, token: str | None = None) -> int:
        return self.demo.introspections(token)


# ------------------------------------------------------------------------------------------- several servers


def test_prefix_choice_asks_only_the_owner_once(
    oidc_provider: OidcProvider, auth_server: AuthServer, echo_api: Process, gateway: GatewayFactory
) -> None:
    gw = gateway(config(echo_api, {"authorization_servers": [
        oidc_server(oidc_provider), demo_server(auth_server, token_prefix="demo_")]}))
    calls = Calls(oidc_provider, auth_server)
    demo_token = "demo_" + secrets.token_urlsafe(24)
    auth_server.register_token(demo_token)
    oidc_token = oidc_provider.issue_token()
    for _ in range(3):
        demo_jwt = upstream_authorization(gw, demo_token)
        minted = upstream_authorization(gw, oidc_token)
    assert demo_jwt.startswith("Bearer ey")
    assert minted.startswith("Bearer ey")
    assert demo_jwt != minted
    assert (calls.at_demo(demo_token), calls.at_demo(oidc_token), calls.at_oidc()) == (1, 0, 1)
    for _ in range(2):  # a junk token with the prefix: the owner alone, once, then negatively cached
        assert status(gw, "demo_junk") == 401
    assert (calls.at_demo("demo_junk"), calls.at_oidc()) == (1, 1)


def test_ordered_choice_one_call_at_the_owner_once_cached_purge_and_junk(
    oidc_provider: OidcProvider, auth_server: AuthServer, echo_api: Process, gateway: GatewayFactory
) -> None:
    admin = f"127.0.0.1:{free_port()}"
    gw = gateway(config(echo_api, {"negative_cache_seconds": 60, "authorization_servers": [
        oidc_server(oidc_provider), demo_server(auth_server)]}), args=["--admin-listen", admin])
    calls = Calls(oidc_provider, auth_server)
    demo_token = auth_server.issue_token()
    for _ in range(3):  # oidc-provider first (inactive there), then the demo AS (active): then cached
        assert upstream_authorization(gw, demo_token).startswith("Bearer ey")
    assert (calls.at_oidc(), calls.at_demo(demo_token)) == (1, 1)
    purged = http_request("POST", f"http://{admin}/cache/purge", {"Content-Type": "application/json"},
                          json.dumps({"token": demo_token}).encode())
    assert purged.status == 200, purged.text
    assert purged.json()["removed"]["memory"] == 3  # the route's outcome, the demo AS's answer, oidc's "inactive"
    upstream_authorization(gw, demo_token)  # asked again, of both servers in order
    upstream_authorization(gw, demo_token)
    assert (calls.at_oidc(), calls.at_demo(demo_token)) == (2, 2)
    oidc_token = oidc_provider.issue_token()
    for _ in range(3):
        upstream_authorization(gw, oidc_token)
    assert (calls.at_oidc(), calls.at_demo(oidc_token)) == (3, 0)
    junk = secrets.token_urlsafe(32)
    for _ in range(3):
        assert status(gw, junk) == 401
    assert (calls.at_oidc(), calls.at_demo(junk)) == (4, 1)


def test_a_server_that_fails_is_passed_over_but_its_tokens_get_502_not_401(
    oidc_provider: OidcProvider, auth_server: AuthServer, echo_api: Process, gateway: GatewayFactory
) -> None:
    gw = gateway(config(echo_api, {"authorization_servers": [demo_server(auth_server), oidc_server(oidc_provider)]}))
    demo_token = auth_server.issue_token()
    auth_server.set_controls(failure="status", failure_status=500)
    oidc_token = oidc_provider.issue_token()
    upstream_authorization(gw, oidc_token)  # the demo AS is down: its answer is skipped, oidc-provider's is used
    answer = gw.get_with_token(demo_token)  # inactive at oidc-provider, unknown at the demo AS: could be its token
    assert answer.status == 502, answer.text
    assert answer.json()["code"] == "server_error"
    auth_server.set_controls(failure="none")
    upstream_authorization(gw, demo_token)  # the failure was not cached


# ------------------------------------------------------------------------------------------- JWT issuers


def _rsa_jwk(kid: str) -> tuple[dict[str, Any], jose.SigningKey]:
    key = RSAKey.generate_key(2048)
    return {**key.as_dict(private=True), "kid": kid, "alg": "RS256", "use": "sig"}, jose.SigningKey(key, "RS256", kid)


class JwtIssuer:
    """An oidc-provider of this test's own, with keys the test made; ``rotate`` restarts it with a new key."""

    def __init__(self, tmp: Path, logs: Path) -> None:
        self.tmp, self.logs = tmp, logs
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.process: Process | None = None
        self.key = self._start("as-key-1")

    def _start(self, kid: str) -> jose.SigningKey:
        jwk, key = _rsa_jwk(kid)
        keys = self.tmp / f"{kid}.json"
        keys.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
        self.process = start_process("oidc-provider-jwt", ["node", str(HERE / "server.mjs")], self.port, self.logs,
                                     {"PORT": str(self.port), "AS_JWKS_FILE": str(keys)})
        return key

    def rotate(self, kid: str) -> None:
        self.stop()
        self.key = self._start(kid)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def issue_jwt(self) -> str:
        body = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": "read",
                                       "resource": JWT_RESOURCE}).encode()
        import base64
        basic = base64.b64encode(":".join(APP_CLIENT).encode()).decode()
        result = http_request("POST", f"{self.issuer}/token", {
            "Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Basic {basic}"}, body)
        assert result.status == 200, result.text
        token = result.json()["access_token"]
        assert isinstance(token, str)
        assert token.count(".") == 2
        return token

    def introspections(self) -> int:
        answer = http_request("GET", f"{self.issuer}/test/stats")
        return int(answer.json()["introspection"])


@pytest.fixture
def jwt_issuer(oidc_provider: OidcProvider, tmp_path: Path, e2e_logs: Path) -> Iterator[JwtIssuer]:
    issuer = JwtIssuer(tmp_path, e2e_logs)  # oidc_provider: only for its skip when node is missing
    try:
        yield issuer
    finally:
        issuer.stop()


def _hs256_with_the_public_key(key: jose.SigningKey, claims: dict[str, Any]) -> str:
    header = jose.b64url_encode(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": key.kid}).encode())
    payload = jose.b64url_encode(json.dumps(claims).encode())
    secret = json.dumps(key.public_jwk()).encode()
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{jose.b64url_encode(signature)}"


def test_jwt_access_tokens_are_verified_with_the_issuers_jwks_and_forwarded_without_introspection(
    jwt_issuer: JwtIssuer, auth_server: AuthServer, echo_api: Process, gateway: GatewayFactory
) -> None:
    gw = gateway(config(echo_api, {**demo_server(auth_server), "scope": "read",
                                   "jwt_issuers": [{"issuer": jwt_issuer.issuer, "audience": JWT_RESOURCE}]}))
    auth_server.set_controls(reset=True)
    token = jwt_issuer.issue_jwt()
    header, claims = jose.decode_unverified(token)
    assert (header["typ"], header["kid"], claims["aud"]) == ("at+jwt", "as-key-1", JWT_RESOURCE)
    for _ in range(3):
        assert upstream_authorization(gw, token) == "Bearer " + token  # forwarded as it is
    opaque = auth_server.issue_token()  # the route's opaque tokens still go to its server
    assert upstream_authorization(gw, opaque) != "Bearer " + opaque

    now = int(time.time())
    good = {"iss": jwt_issuer.issuer, "aud": JWT_RESOURCE, "scope": "read", "client_id": "app", "exp": now + 300}
    forgeries = {
        "another key": _rsa_jwk("as-key-1")[1].sign(good, {"typ": "at+jwt"}),
        "alg none": jose.b64url_encode(b'{"alg":"none","typ":"at+jwt"}') + "."
                    + jose.b64url_encode(json.dumps(good).encode()) + ".",
        "HS256 with the public key": _hs256_with_the_public_key(jwt_issuer.key, good),
        "expired": jwt_issuer.key.sign({**good, "exp": now - 5}, {"typ": "at+jwt"}),
        "wrong aud": jwt_issuer.key.sign({**good, "aud": "https://api.example.com"}, {"typ": "at+jwt"}),
    }
    for name, forged in forgeries.items():
        answer = gw.get_with_token(forged)
        assert answer.status == 401, (name, answer.status, answer.text)
    assert upstream_authorization(gw, jwt_issuer.key.sign(good, {"typ": "at+jwt"})).startswith("Bearer ")
    assert auth_server.introspections() == 1  # the opaque token's, and nothing for any JWT
    assert jwt_issuer.introspections() == 0

    jwt_issuer.rotate("as-key-2")  # the issuer's new key: the gateway fetches its JWKS again for the new kid
    rotated = jwt_issuer.issue_jwt()
    assert jose.decode_unverified(rotated)[0]["kid"] == "as-key-2"
    assert upstream_authorization(gw, rotated) == "Bearer " + rotated
    assert upstream_authorization(gw, token) == "Bearer " + token  # cached: the old key's token still passes
    assert auth_server.introspections() == 1
