"""What each API receives (issue 16): claims as headers and RFC 8693 token exchange, with real processes.

- ``serve`` with ``claims_to_headers`` in front of the echo API: the values arrive, every client copy of those names
  is gone (also on a preflight the route lets through), a claim with CR/LF is not sent (one log line, by
  fingerprint).
- ``authz`` behind the real gateways running ``examples/`` (nginx, Traefik, Caddy, Envoy over HTTP and over gRPC):
  the ``/profile`` route of ``examples/phantom-token-authz.yml`` sets claims headers; the API receives them and
  never a client's, on that route or any other; and Envoy honouring ``X-Envoy-Auth-Headers-To-Remove`` on its own.
- ``serve`` with ``token_exchange`` against the demo authorization server's RFC 8693 grant: the API receives the
  exchanged JWT (signed by the AS, for the configured audience), one exchange for 64 concurrent requests with a new
  token, and ``invalid_target``, a 500 or garbage from the token endpoint are 502 ``server_error``, never cached.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from phantom_token.core.bearer import fingerprint
from phantom_token.demo.authorization_server import fingerprint as full_fingerprint
from phantom_token.jose import verify

from .conftest import (
    INTROSPECTION_CLIENT,
    AuthServer,
    GatewayFactory,
    HttpResult,
    Process,
    dump,
    free_port,
    http_request,
    plugin_options,
    start_process,
)
from .gateways import EXAMPLES, GatewayProcess, gateway_argv, render, require_binary, start_gateway
from .test_gateways import Authz, start_authz

pytestmark = pytest.mark.e2e

CLAIMS = {"X-User-Id": "sub", "X-Client-Id": "client_id", "X-Scope": "scope", "X-Tenant": "org.tenant"}
FORGED = [("X-User-Id", "admin"), ("x-user-id", "root"), ("X-Tenant", "evil"), ("X-Scope", "admin")]
SERVER_ERROR = {"code": "server_error", "message": "Problem encountered authorizing the HTTP request"}


def received(result: HttpResult, name: str) -> list[str]:
    """Every value of header ``name`` the echo API received."""
    assert result.status == 200, result.text
    return [value for key, value in result.json()["raw_headers"] if key.lower() == name.lower()]


# --- claims_to_headers through serve ----------------------------------------------------------------------------


def test_serve_sends_the_claims_and_never_a_client_copy(gateway: GatewayFactory, plugin_config: dict[str, Any],
                                                        auth_server: AuthServer) -> None:
    plugin_options(plugin_config)["claims_to_headers"] = CLAIMS
    gw = gateway(dump(plugin_config))
    token = auth_server.issue_token("read")
    for _ in range(2):  # the miss, then the hit: the same headers
        result = gw.request("/api/x", [("Authorization", f"Bearer {token}"), *FORGED])
        assert received(result, "x-user-id") == ["demo-client"]
        assert received(result, "x-client-id") == ["demo-client"]
        assert received(result, "x-scope") == ["read"]
        assert received(result, "x-tenant") == []  # no such claim: nothing, and not the client's
    assert auth_server.introspections(token) == 1
    preflight = gw.request("/api/x", [("Origin", "https://app.test"), *FORGED], method="OPTIONS")
    assert [received(preflight, name) for name in ("x-user-id", "x-tenant", "x-scope")] == [[], [], []]


def test_serve_never_sends_a_claim_with_cr_or_lf(gateway: GatewayFactory, plugin_config: dict[str, Any],
                                                 auth_server: AuthServer) -> None:
    plugin_options(plugin_config)["claims_to_headers"] = CLAIMS
    gw = gateway(dump(plugin_config))
    token = secrets.token_urlsafe(24)
    auth_server.set_controls(register={"token": token, "scope": "read", "sub": "alice\r\nX-Admin: yes"})
    result = gw.request("/api/x", [("Authorization", f"Bearer {token}"), *FORGED])
    assert received(result, "x-user-id") == []
    assert received(result, "x-admin") == []
    assert received(result, "x-scope") == ["read"]
    log = gw.stderr()
    assert f"token={fingerprint(token)} X-User-Id not sent: its value contains CR, LF or NUL" in log
    assert "alice" not in log
    assert token not in log


# --- claims_to_headers through the real gateways (authz) --------------------------------------------------------


class ShapingAuthz:
    """``phantom-token authz`` with the shipped configuration: its HTTP port and, with grpcio, its gRPC port."""

    def __init__(self, process: Process, grpc_port: int | None) -> None:
        self.process = process
        self.port = process.port
        self.grpc_port = grpc_port


@pytest.fixture(scope="module")
def authz(auth_server: AuthServer, tmp_path_factory: pytest.TempPathFactory, e2e_logs: Any
          ) -> Iterator[ShapingAuthz]:
    work_dir = tmp_path_factory.mktemp("authz-shaping")
    service: ShapingAuthz
    try:
        from .test_grpc_authz import start_grpc_authz
    except pytest.skip.Exception:  # no grpcio: the HTTP listener only
        plain: Authz = start_authz(auth_server, work_dir, e2e_logs)
        service = ShapingAuthz(plain.process, None)
    else:
        both = start_grpc_authz(auth_server, work_dir, e2e_logs)
        service = ShapingAuthz(both.process, both.grpc_port)
    try:
        yield service
    finally:
        assert service.process.stop() == 0, service.process.stderr()


@pytest.fixture(scope="module", params=["nginx", "traefik", "caddy", "envoy", "envoy-grpc"])
def third_party(request: pytest.FixtureRequest, authz: ShapingAuthz, echo_api: Process,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    name = str(request.param)
    work_dir = tmp_path_factory.mktemp(f"shaping-{name}")
    port = free_port()
    values = {"LISTEN_PORT": str(port), "AUTHZ_PORT": str(authz.port), "API_PORT": str(echo_api.port)}
    if name == "envoy-grpc":
        if authz.grpc_port is None:
            pytest.skip("the grpc extra is not installed (scripts/setup installs it)")
        values = {**values, "GRPC_AUTHZ_PORT": str(authz.grpc_port)}
        del values["AUTHZ_PORT"]
    running = start_gateway(name, gateway_argv(name, work_dir, values), port, work_dir)
    try:
        yield running
    finally:
        running.stop()


def test_the_gateways_pass_the_decisions_claims_headers_and_drop_client_copies(
        third_party: GatewayProcess, auth_server: AuthServer) -> None:
    token = auth_server.issue_token("read")
    headers = [("Authorization", f"Bearer {token}"), ("X-User-Id", "admin"), ("X-Client-Id", "evil")]
    profile = http_request("GET", third_party.base_url + "/profile/me", headers)
    assert received(profile, "x-user-id") == ["demo-client"]
    assert received(profile, "x-client-id") == ["demo-client"]
    assert received(profile, "x-scope") == ["read"]
    other = http_request("GET", third_party.base_url + "/api/orders", headers)  # a route without claims headers
    assert received(other, "x-user-id") == []
    assert received(other, "x-client-id") == []


def test_envoy_removes_the_client_copy_of_a_claim_the_token_lacks_as_the_answer_asks(
        auth_server: AuthServer, echo_api: Process, tmp_path: Path, e2e_logs: Path) -> None:
    """Without the example's header_mutation filter: X-Envoy-Auth-Headers-To-Remove alone strips the client's copy
    of a configured header the decision has no value for (X-Tenant: the demo AS's tokens have no org claim)."""
    config = render(EXAMPLES / "phantom-token-authz.yml", tmp_path / "authz.yml",
                    {"AUTH_SERVER_PORT": str(auth_server.process.port)})
    tenant = "X-Scope: scope\n          X-Tenant: org.tenant\n"
    config.write_text(config.read_text().replace("X-Scope: scope\n", tenant))
    listen = free_port()
    service = start_process("authz", [sys.executable, "-m", "phantom_token", "authz", "-c", str(config), "--listen",
                                      f"127.0.0.1:{listen}"], listen, e2e_logs,
                            {"INTROSPECTION_SECRET": INTROSPECTION_CLIENT[1]})
    example = (EXAMPLES / "envoy" / "envoy.yaml").read_text()
    mutation = example.index("          - name: envoy.filters.http.header_mutation")
    example = example[:mutation] + example[example.index("          - name: envoy.filters.http.ext_authz"):]
    example = example.replace("- { exact: x-scope, ignore_case: true }\n",
                              "- { exact: x-scope, ignore_case: true }\n                    "
                              "- { exact: x-tenant, ignore_case: true }\n")
    (tmp_path / "template.yaml").write_text(example)
    port = free_port()
    rendered = render(tmp_path / "template.yaml", tmp_path / "envoy.yaml",
                      {"LISTEN_PORT": str(port), "AUTHZ_PORT": str(listen), "API_PORT": str(echo_api.port)})
    envoy = start_gateway("envoy", [require_binary("envoy"), "-c", str(rendered), "--use-dynamic-base-id", "-l",
                                    "warning", "--disable-hot-restart"], port, tmp_path)
    try:
        token = auth_server.issue_token("read")
        result = http_request("GET", envoy.base_url + "/profile/me",
                              [("Authorization", f"Bearer {token}"), ("X-Tenant", "evil"), ("X-User-Id", "admin")])
        assert received(result, "x-user-id") == ["demo-client"]
        assert received(result, "x-tenant") == []
    finally:
        envoy.stop()
        assert service.stop() == 0, service.stderr()


def test_authz_answers_the_claims_as_headers(authz: ShapingAuthz, auth_server: AuthServer) -> None:
    token = auth_server.issue_token("read write")
    answer = http_request("GET", f"http://127.0.0.1:{authz.port}/authz/nginx",
                          [("Authorization", f"Bearer {token}"), ("X-Original-URI", "/profile/me")])
    assert answer.status == 200, answer.text
    assert [answer.header(name) for name in ("X-User-Id", "X-Client-Id", "X-Scope")] == [
        "demo-client", "demo-client", "read write"]
    assert answer.header("X-Envoy-Auth-Headers-To-Remove") is None


# --- token exchange through serve -------------------------------------------------------------------------------


def exchange_config(plugin_config: dict[str, Any], auth_server: AuthServer) -> str:
    plugin_options(plugin_config)["token_exchange"] = {"audience": "orders-api", "scope": "read",
                                                       "token_endpoint": auth_server.token_endpoint}
    return dump(plugin_config)


def exchanges(auth_server: AuthServer, token: str) -> int:
    return int(auth_server.stats()["exchanges"]["by_token"].get(full_fingerprint(token), 0))


def test_the_api_receives_the_exchanged_token(gateway: GatewayFactory, plugin_config: dict[str, Any],
                                              auth_server: AuthServer) -> None:
    gw = gateway(exchange_config(plugin_config, auth_server))
    token = auth_server.issue_token("read write")
    result = gw.get_with_token(token, "/api/orders")
    assert result.status == 200, result.text
    scheme, _, jwt = result.json()["headers"]["authorization"].partition(" ")
    keys = http_request("GET", f"{auth_server.base_url}/.well-known/jwks.json").json()
    _, claims = verify(jwt, keys, algorithms=["ES256"])
    assert (scheme, claims["aud"], claims["scope"], claims["token_use"]) == ("Bearer", "orders-api", "read",
                                                                             "exchanged")
    assert token not in result.text
    again = gw.get_with_token(token, "/api/orders")
    assert again.json()["headers"]["authorization"] == f"Bearer {jwt}"
    assert (auth_server.introspections(token), exchanges(auth_server, token)) == (1, 1)


def test_64_concurrent_requests_cost_one_exchange(gateway: GatewayFactory, plugin_config: dict[str, Any],
                                                 auth_server: AuthServer) -> None:
    gw = gateway(exchange_config(plugin_config, auth_server))
    token = auth_server.issue_token("read")
    auth_server.set_controls(delay_ms=200)  # every request arrives while the first flight is out
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda _: gw.get_with_token(token, "/api/orders"), range(64)))
    assert {r.status for r in results} == {200}
    assert len({r.json()["headers"]["authorization"] for r in results}) == 1
    assert (auth_server.introspections(token), exchanges(auth_server, token)) == (1, 1)


@pytest.mark.parametrize(("failure", "reason"), [
    ("invalid_target", "the token endpoint refused the exchange (HTTP 400, invalid_target)"),
    ("status", "the token endpoint answered HTTP 500"),
    ("garbage", "the 200 answer is not JSON"),
])
def test_a_failed_exchange_is_a_502_said_in_one_log_line_and_never_cached(
        gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer, failure: str,
        reason: str) -> None:
    gw = gateway(exchange_config(plugin_config, auth_server))
    token = auth_server.issue_token("read")
    auth_server.set_controls(exchange_failure=failure)
    for _ in range(2):
        result = gw.get_with_token(token, "/api/orders")
        assert result.status == 502
        assert result.json() == SERVER_ERROR
    assert exchanges(auth_server, token) == 2  # nothing was cached
    lines = [line for line in gw.stderr().splitlines() if "token exchange failed" in line]
    assert len(lines) == 2
    assert reason in lines[0]
    assert f"token={fingerprint(token)}" in lines[0]
    assert token not in gw.stderr()
    auth_server.set_controls(exchange_failure="none")
    assert gw.get_with_token(token, "/api/orders").status == 200
