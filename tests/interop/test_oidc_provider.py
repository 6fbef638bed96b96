"""Interop with a real standards-based authorization server: node ``oidc-provider`` issuing opaque tokens.

The gateway runs as ``python -m phantom_token serve`` in ``json`` (RFC 7662) and ``signed`` (RFC 9701) modes, with
each client authentication method and with discovery; the echo API behind it shows the JWT that arrived, which the
test verifies against the gateway's JWKS (admin listener) and checks claim by claim (RFC 9068). And RFC 8693 token
exchange against the grant server.mjs registers: the API receives the JWT oidc-provider issued, one exchange for 64
concurrent requests, ``invalid_target`` is a 502.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from phantom_token import jose
from phantom_token.core.bearer import fingerprint
from tests.e2e.conftest import Gateway, GatewayFactory, Process, free_port, http_request

from .conftest import REPO, RESOURCE, OidcProvider

pytestmark = pytest.mark.e2e

GATEWAY_ISSUER = "https://gateway.test"
CLIENT_KEY_KID = "gw-client-key-1"  # server.mjs registers gw-jwt-kid's public key under this kid
SECRETS = {"client_secret_basic": ("gw-basic", "gw-basic-secret"), "client_secret_post": ("gw-post", "gw-post-secret")}


def plugin(oidc: OidcProvider, mode: str, method: str = "client_secret_basic", *, discover: bool = False,
           **extra: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"introspection_response": mode, "client_auth_method": method}
    if method == "private_key_jwt":
        options.update(client_id="gw-jwt", client_private_key_file=str(oidc.client_key_file))
    else:
        options.update(client_id=SECRETS[method][0], client_secret=SECRETS[method][1])
    if discover or mode == "signed":
        options["issuer"] = oidc.issuer
    if not discover:
        options["introspection_endpoint"] = oidc.introspection_endpoint
        if mode == "signed":
            options["jwks_uri"] = oidc.jwks_uri
    options.update(extra)
    return options


def config(echo: Process, options: dict[str, Any], jwt: dict[str, Any] | None = None) -> str:
    document = {
        "_format_version": "2.1",
        "services": [{
            "name": "api",
            "url": echo.base_url,
            "routes": [{"name": "api-route", "paths": ["/api"]}],
            "plugins": [{"name": "phantom-token", "config": options}],
        }],
        "phantom_token": {"jwt": {"issuer": GATEWAY_ISSUER, **(jwt or {})}},
    }
    return yaml.safe_dump(document, sort_keys=False)


def start(gateway: GatewayFactory, text: str) -> tuple[Gateway, str]:
    admin = f"127.0.0.1:{free_port()}"
    return gateway(text, args=["--admin-listen", admin]), f"http://{admin}"


def upstream_jwt(gw: Gateway, token: str) -> str:
    result = gw.get_with_token(token)
    assert result.status == 200, (result.status, result.text, gw.stderr())
    authorization = result.json()["headers"]["authorization"]
    assert isinstance(authorization, str)
    assert authorization.startswith("Bearer ")
    assert token not in authorization
    return authorization.removeprefix("Bearer ")


def verified(jwt: str, admin_url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify the minted JWT as an API would: against the gateway's published JWKS."""
    answer = http_request("GET", f"{admin_url}/.well-known/jwks.json")
    assert answer.status == 200
    return jose.verify(jwt, answer.json(), algorithms=["ES256", "RS256", "EdDSA"])


def assert_rfc9068(header: dict[str, Any], claims: dict[str, Any]) -> None:
    assert header["typ"] == "at+jwt"
    assert isinstance(header["kid"], str)
    assert claims["iss"] == GATEWAY_ISSUER
    assert claims["client_id"] == "app"
    assert claims["sub"] == "app"  # client credentials: the client (RFC 9068 section 2.2)
    assert claims["aud"] == RESOURCE
    assert claims["scope"] == "read write"
    now = time.time()
    assert now - 60 <= claims["iat"] <= now + 5
    assert claims["iat"] < claims["exp"] <= claims["iat"] + 600  # oidc-provider's tokens live 600 s
    assert isinstance(claims["jti"], str)
    assert len(claims["jti"]) >= 16
    assert "active" not in claims
    assert "token_type" not in claims


@pytest.mark.parametrize("mode", ["json", "signed"])
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "private_key_jwt"])
def test_minted_jwt_verifies_and_carries_the_claims(
    oidc_provider: OidcProvider, echo_api: Process, gateway: GatewayFactory, mode: str, method: str
) -> None:
    gw, admin = start(gateway, config(echo_api, plugin(oidc_provider, mode, method)))
    header, claims = verified(upstream_jwt(gw, oidc_provider.issue_token()), admin)
    assert_rfc9068(header, claims)


@pytest.mark.parametrize("key_id", [None, CLIENT_KEY_KID])
def test_private_key_jwt_when_the_registered_key_has_a_kid_of_its_own(
    oidc_provider: OidcProvider, echo_api: Process, gateway: GatewayFactory, key_id: str | None
) -> None:
    # Without client_private_key_id the assertion carries no kid (the AS tries the client's keys); with it, that
    # kid. A kid the AS did not register for the client (the key's thumbprint, as the gateway once sent) is refused.
    extra: dict[str, Any] = {"client_id": "gw-jwt-kid"} | ({"client_private_key_id": key_id} if key_id else {})
    gw, admin = start(gateway, config(echo_api, plugin(oidc_provider, "json", "private_key_jwt", **extra)))
    header, claims = verified(upstream_jwt(gw, oidc_provider.issue_token()), admin)
    assert_rfc9068(header, claims)


def test_private_key_jwt_with_a_kid_the_server_does_not_know_is_502(
    oidc_provider: OidcProvider, echo_api: Process, gateway: GatewayFactory
) -> None:
    thumbprint = jose.SigningKey.from_pem_file(oidc_provider.client_key_file).kid
    options = plugin(oidc_provider, "json", "private_key_jwt", client_id="gw-jwt-kid", client_private_key_id=thumbprint)
    gw, _ = start(gateway, config(echo_api, options))
    result = gw.get_with_token(oidc_provider.issue_token())
    assert result.status == 502
    assert "rejected the gateway's client credentials" in gw.stderr()


@pytest.mark.parametrize("mode", ["json", "signed"])
def test_discovery_finds_the_endpoints(oidc_provider: OidcProvider, echo_api: Process, gateway: GatewayFactory,
                                       mode: str) -> None:
    options = plugin(oidc_provider, mode, discover=True, audience=RESOURCE, issuer_allowed=[oidc_provider.issuer])
    assert "introspection_endpoint" not in options
    assert "jwks_uri" not in options
    gw, admin = start(gateway, config(echo_api, options))
    header, claims = verified(upstream_jwt(gw, oidc_provider.issue_token()), admin)
    assert_rfc9068(header, claims)


@pytest.mark.parametrize("mode", ["json", "signed"])
def test_inactive_token_is_401(oidc_provider: OidcProvider, echo_api: Process, gateway: GatewayFactory,
                               mode: str) -> None:
    gw, _ = start(gateway, config(echo_api, plugin(oidc_provider, mode)))
    result = gw.get_with_token("not-a-token-this-server-issued")
    assert result.status == 401
    assert result.header("WWW-Authenticate") == 'Bearer error="invalid_token"'


@pytest.mark.parametrize("mode", ["json", "signed"])
def test_wrong_secret_is_502_with_a_log_line(oidc_provider: OidcProvider, echo_api: Process,
                                             gateway: GatewayFactory, mode: str) -> None:
    gw, _ = start(gateway, config(echo_api, plugin(oidc_provider, mode, client_secret="wrong")))
    result = gw.get_with_token(oidc_provider.issue_token())
    assert result.status == 502
    assert result.json()["code"] == "server_error"
    assert "rejected the gateway's client credentials" in gw.stderr()


def test_wrong_audience_is_401(oidc_provider: OidcProvider, echo_api: Process, gateway: GatewayFactory) -> None:
    gw, _ = start(gateway, config(echo_api, plugin(oidc_provider, "json", audience="https://other.example.com")))
    assert gw.get_with_token(oidc_provider.issue_token()).status == 401
    assert "aud does not contain the configured audience" in gw.stderr()


def test_minted_once_per_introspection_when_cached(oidc_provider: OidcProvider, echo_api: Process,
                                                   gateway: GatewayFactory) -> None:
    # oidc-provider answers introspection with Cache-Control: no-store; honor_cache_control: false caches anyway
    cached, _ = start(gateway, config(echo_api, plugin(oidc_provider, "json", honor_cache_control=False)))
    token = oidc_provider.issue_token()
    assert upstream_jwt(cached, token) == upstream_jwt(cached, token)
    honoring, _ = start(gateway, config(echo_api, plugin(oidc_provider, "json")))
    assert upstream_jwt(honoring, token) != upstream_jwt(honoring, token)


def test_configured_key_is_served_and_printed(oidc_provider: OidcProvider, echo_api: Process,
                                              gateway: GatewayFactory, tmp_path: Path) -> None:
    key = jose.SigningKey.generate("RS256", kid="gw-2026")
    previous = jose.SigningKey.generate("EdDSA", kid="gw-2025")
    (tmp_path / "key.pem").write_bytes(key.private_pem())
    (tmp_path / "previous.pem").write_bytes(previous.private_pem())
    jwt_settings = {"key_file": str(tmp_path / "key.pem"), "kid": "gw-2026",
                    "previous_key_file": str(tmp_path / "previous.pem"), "previous_kid": "gw-2025"}
    text = config(echo_api, plugin(oidc_provider, "json"), jwt_settings)
    gw, admin = start(gateway, text)
    header, _ = verified(upstream_jwt(gw, oidc_provider.issue_token()), admin)
    assert (header["alg"], header["kid"]) == ("RS256", "gw-2026")
    (tmp_path / "gw.yml").write_text(text, encoding="utf-8")
    printed = subprocess.run([sys.executable, "-m", "phantom_token", "jwks", "-c", str(tmp_path / "gw.yml")],
                             capture_output=True, text=True, timeout=30, cwd=REPO, check=True)
    served = http_request("GET", f"{admin}/.well-known/jwks.json").json()
    assert yaml.safe_load(printed.stdout) == served
    assert [k["kid"] for k in served["keys"]] == ["gw-2026", "gw-2025"]


def test_metadata_with_another_issuer_stops_start_up(oidc_provider: OidcProvider, echo_api: Process,
                                                     tmp_path: Path) -> None:
    options = plugin(oidc_provider, "json", discover=True, issuer=oidc_provider.issuer + "/")  # not equal
    (tmp_path / "gw.yml").write_text(config(echo_api, options), encoding="utf-8")
    argv = [sys.executable, "-m", "phantom_token", "serve", "-c", str(tmp_path / "gw.yml"),
            "--listen", f"127.0.0.1:{free_port()}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO, check=False)
    assert done.returncode == 1
    assert "is not the configured issuer" in done.stderr
    assert "listening on" not in done.stdout


# --- token exchange (RFC 8693, issue 16): server.mjs registers the grant --------------------------------------


def exchange_config(oidc: OidcProvider, echo: Process, audience: str = "orders-api") -> str:
    # oidc-provider answers introspection with Cache-Control: no-store: honor_cache_control false caches anyway
    options = plugin(oidc, "json", discover=True, honor_cache_control=False,
                     token_exchange={"audience": audience, "scope": "read"})
    return config(echo, options)


def test_the_api_receives_the_token_oidc_provider_issued_in_exchange(
        gateway: GatewayFactory, echo_api: Process, oidc_provider: OidcProvider) -> None:
    gw, _ = start(gateway, exchange_config(oidc_provider, echo_api))  # token_endpoint discovered from the issuer
    token = oidc_provider.issue_token("read write")
    jwt = upstream_jwt(gw, token)
    keys = http_request("GET", oidc_provider.jwks_uri).json()
    _, claims = jose.verify(jwt, keys, algorithms=["ES256"])
    assert (claims["iss"], claims["aud"], claims["scope"], claims["client_id"], claims["token_use"]) == (
        oidc_provider.issuer, "orders-api", "read", "app", "exchanged")
    assert upstream_jwt(gw, token) == jwt  # cached
    assert oidc_provider.exchanges(fingerprint(token)) == 1


def test_64_concurrent_requests_make_one_exchange_at_oidc_provider(
        gateway: GatewayFactory, echo_api: Process, oidc_provider: OidcProvider) -> None:
    gw, _ = start(gateway, exchange_config(oidc_provider, echo_api))
    token = oidc_provider.issue_token("read")
    with ThreadPoolExecutor(64) as pool:
        jwts = set(pool.map(lambda _: upstream_jwt(gw, token), range(64)))
    assert len(jwts) == 1
    assert oidc_provider.exchanges(fingerprint(token)) == 1


def test_invalid_target_from_oidc_provider_is_a_502_and_a_log_line(
        gateway: GatewayFactory, echo_api: Process, oidc_provider: OidcProvider) -> None:
    gw, _ = start(gateway, exchange_config(oidc_provider, echo_api, audience="billing-api"))
    token = oidc_provider.issue_token("read")
    result = gw.get_with_token(token)
    assert result.status == 502
    assert result.json()["code"] == "server_error"
    assert "the token endpoint refused the exchange (HTTP 400, invalid_target)" in gw.stderr()
