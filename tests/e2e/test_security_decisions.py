"""Forged forwarding headers against ``phantom-token authz`` (contract section 10; docs/security.md, defect 2).

Traefik ForwardAuth and Caddy forward_auth describe the original request in ``X-Forwarded-Method``/``-Uri``/
``-Host`` and pass the client's own headers through, so a client's ``X-Original-URI`` reaches the decision service
next to them; nginx sets ``X-Original-URI`` and passes a client's ``X-Forwarded-Uri``. Each integration therefore
has its own endpoint reading only its own header set (``/authz/nginx``, ``/authz/forwarded``), and the shipped
examples use them: checked here with the real Traefik, Caddy and nginx running those examples (read at test time,
since the fix changes them). Then ``authz`` directly: every decision endpoint refuses a peer outside
``trusted_proxies`` (403), ``/authz`` refuses a request carrying both header sets (400), and original paths and
hosts are normalised exactly as ``serve`` does (trailing dot, dot segments).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import AuthServer, HttpResult, Process, free_port, http_request
from .gateways import EXAMPLES, GatewayProcess, gateway_argv, render, start_gateway
from .recording import ADMIN_HOST, exchange, lenient_view, routed_config, start_authz

pytestmark = pytest.mark.e2e

FORBIDDEN_PEER = "forbidden"


def token_with(auth_server: AuthServer, scope: str) -> str:
    token = f"dec-{scope.replace(' ', '-')}-" + secrets.token_urlsafe(18)
    auth_server.register_token(token, scope=scope)
    return token


# --- the real gateways with the shipped examples ------------------------------------------------------------


@pytest.fixture(scope="module")
def example_authz(auth_server: AuthServer, tmp_path_factory: pytest.TempPathFactory, e2e_logs: Path
                  ) -> Iterator[Process]:
    """``authz`` with ``examples/phantom-token-authz.yml`` (routes /api, /admin scope admin, /public open)."""
    work = tmp_path_factory.mktemp("example-authz")
    config = render(EXAMPLES / "phantom-token-authz.yml", work / "authz.yml",
                    {"AUTH_SERVER_PORT": str(auth_server.process.port)})
    process = start_authz(config.read_text(encoding="utf-8"), work, e2e_logs)
    try:
        yield process
    finally:
        assert process.stop() == 0, process.stderr()


@pytest.fixture(scope="module", params=["traefik", "caddy", "nginx"])
def real_gateway(request: pytest.FixtureRequest, example_authz: Process, echo_api: Process,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    name = str(request.param)
    work_dir = tmp_path_factory.mktemp(f"forged-{name}")
    port = free_port()
    values = {"LISTEN_PORT": str(port), "AUTHZ_PORT": str(example_authz.port), "API_PORT": str(echo_api.port)}
    running = start_gateway(name, gateway_argv(name, work_dir, values), port, work_dir)
    try:
        yield running
    finally:
        running.stop()


FORGERIES = {
    "x-original-uri": [("X-Original-URI", "/public/x")],
    "x-original-uri-and-method": [("X-Original-URI", "/public/x"), ("X-Original-Method", "GET")],
    "x-original-url": [("X-Original-URL", "http://127.0.0.1/public/x")],
    "x-forwarded-uri": [("X-Forwarded-Uri", "/public/x"), ("X-Forwarded-Method", "GET")],
    "every-header": [("X-Original-URI", "/public/x"), ("X-Original-URL", "http://127.0.0.1/public/x"),
                     ("X-Forwarded-Uri", "/public/x"), ("X-Forwarded-Prefix", "/public")],
}


def never_reached_the_api(result: HttpResult) -> None:
    """The answer is the decision's denial, not the echo API's echo."""
    assert b'"headers"' not in result.body, result.text[:300]


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_original_uri_without_a_token_is_401(real_gateway: GatewayProcess, forgery: str) -> None:
    result = http_request("GET", real_gateway.base_url + "/admin/x", FORGERIES[forgery])
    # nginx may answer 400 when the client adds an X-Original-URL next to the one it sets (both present)
    allowed = (401, 400) if real_gateway.name == "nginx" else (401,)
    assert result.status in allowed, (real_gateway.name, result.status, result.text[:300])
    never_reached_the_api(result)


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_original_uri_with_a_read_token_on_an_admin_route_is_403(
        real_gateway: GatewayProcess, auth_server: AuthServer, forgery: str) -> None:
    token = token_with(auth_server, "read")
    headers = [("Authorization", f"Bearer {token}")] + [
        (name, value.replace("/public/x", "/api/x")) for name, value in FORGERIES[forgery]]
    result = http_request("GET", real_gateway.base_url + "/admin/x", headers)
    allowed = (403, 400) if real_gateway.name == "nginx" else (403,)
    assert result.status in allowed, (real_gateway.name, result.status, result.text[:300])
    never_reached_the_api(result)


def test_the_real_gateways_still_allow_what_they_should(real_gateway: GatewayProcess, auth_server: AuthServer
                                                        ) -> None:
    """The forgery tests above would pass with a gateway that denies everything: this one must get through."""
    token = token_with(auth_server, "read admin")
    for path in ("/admin/x", "/api/x"):
        result = http_request("GET", real_gateway.base_url + path, [("Authorization", f"Bearer {token}")])
        assert result.status == 200, (real_gateway.name, path, result.text[:300])
        assert result.json()["headers"]["authorization"].startswith("Bearer ey")
    assert http_request("GET", real_gateway.base_url + "/public/x").status == 200


GATEWAY_DOT_PATHS = ["/public/../admin/x", "/public/%2e%2e/admin/x", "/public/%2E%2E/admin/x", "/public/..%2fadmin/x",
                     "/public/.%2e/admin/x", "//admin/x", "/public/..;/admin/x", "/public/..%5cadmin/x",
                     "/%61dmin/x"]


@pytest.mark.parametrize("path", GATEWAY_DOT_PATHS)
def test_dot_segments_through_the_real_gateways(real_gateway: GatewayProcess, auth_server: AuthServer, path: str
                                                ) -> None:
    """Whatever the gateway does with the spelling, the API never serves an /admin path to a read-only token."""
    token = token_with(auth_server, "read")
    for headers in ([], [("Authorization", f"Bearer {token}")]):
        result = http_request("GET", real_gateway.base_url + path, headers)
        if result.status == 200:
            served = lenient_view(result.json()["path"])
            assert not served.startswith("/admin"), (real_gateway.name, path, result.json()["path"])
            assert headers or not served.startswith("/api"), (real_gateway.name, path, result.json()["path"])
        else:
            assert result.status in (400, 401, 403, 404), (real_gateway.name, path, result.status, result.text[:200])


@pytest.fixture(scope="module", params=["traefik", "caddy", "nginx"])
def routed_real_gateway(request: pytest.FixtureRequest, routed_authz: Process, echo_api: Process,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A real gateway with its shipped example, asking an ``authz`` that has the host route ``admin.example.com``."""
    name = str(request.param)
    work_dir = tmp_path_factory.mktemp(f"hosts-{name}")
    port = free_port()
    values = {"LISTEN_PORT": str(port), "AUTHZ_PORT": str(routed_authz.port), "API_PORT": str(echo_api.port)}
    running = start_gateway(name, gateway_argv(name, work_dir, values), port, work_dir)
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("forged", ["public.example", "127.0.0.1", "admin.example.com.evil", ""])
def test_forged_forwarded_host_through_the_real_gateways(routed_real_gateway: GatewayProcess, forged: str) -> None:
    """The request is for the protected host: a client's X-Forwarded-Host must not move it to the catch-all."""
    response = exchange(routed_real_gateway.port,
                        f"GET /public/x HTTP/1.1\r\nHost: {ADMIN_HOST}\r\nX-Forwarded-Host: {forged}\r\n"
                        "Connection: close\r\n\r\n".encode())
    assert response is not None
    assert b'"headers"' not in response.body, (routed_real_gateway.name, response.status, response.body[:300])
    if routed_real_gateway.name != "caddy":  # Caddy's site is 127.0.0.1:<port>: another Host matches no site
        assert response.status == 401, (routed_real_gateway.name, response.head)


# --- authz directly -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def routed_authz(auth_server: AuthServer, tmp_path_factory: pytest.TempPathFactory, e2e_logs: Path
                 ) -> Iterator[Process]:
    work = tmp_path_factory.mktemp("routed-authz")
    process = start_authz(routed_config(auth_server.introspection_endpoint, None), work, e2e_logs)
    try:
        yield process
    finally:
        assert process.stop() == 0, process.stderr()


@pytest.fixture(scope="module")
def untrusting_authz(auth_server: AuthServer, tmp_path_factory: pytest.TempPathFactory, e2e_logs: Path
                     ) -> Iterator[Process]:
    work = tmp_path_factory.mktemp("untrusting-authz")
    config = routed_config(auth_server.introspection_endpoint, None, trusted_proxies=[])
    process = start_authz(config, work, e2e_logs)
    try:
        yield process
    finally:
        assert process.stop() == 0, process.stderr()


def ask(authz: Process, endpoint: str, headers: list[tuple[str, str]], method: str = "GET") -> HttpResult:
    return http_request(method, f"http://127.0.0.1:{authz.port}{endpoint}", headers)


ALL_HEADERS = [("X-Original-URI", "/public/x"), ("X-Original-Method", "GET"), ("X-Forwarded-Uri", "/public/x"),
               ("X-Forwarded-Method", "GET"), ("X-Forwarded-Host", "public.example")]


@pytest.mark.parametrize("endpoint", ["/authz", "/authz/nginx", "/authz/forwarded", "/authz/envoy/public/x",
                                      "/authz/envoy/x"])
@pytest.mark.parametrize("with_headers", [True, False], ids=["forwarding-headers", "bare"])
def test_untrusted_peer_is_refused_on_every_decision_endpoint(untrusting_authz: Process, auth_server: AuthServer,
                                                              endpoint: str, with_headers: bool) -> None:
    token = token_with(auth_server, "read admin")
    headers = [("Authorization", f"Bearer {token}")] + (ALL_HEADERS if with_headers else [])
    result = ask(untrusting_authz, endpoint, headers)
    assert result.status == 403, (result.status, result.text[:300])
    assert result.json()["code"] == FORBIDDEN_PEER
    assert result.header("Authorization") is None
    assert auth_server.introspections(token) == 0


def test_legacy_endpoint_refuses_both_header_sets(routed_authz: Process, auth_server: AuthServer) -> None:
    token = token_with(auth_server, "read")
    for extra in ([("X-Original-URI", "/public/x"), ("X-Forwarded-Uri", "/admin/x")],
                  [("X-Original-URL", "http://t/public/x"), ("X-Forwarded-Uri", "/public/x")]):
        result = ask(routed_authz, "/authz", [("Authorization", f"Bearer {token}"), *extra])
        assert result.status == 400, (extra, result.status, result.text[:300])
        assert result.json()["code"] == "invalid_request"
        assert result.header("Authorization") is None


def test_nginx_endpoint_refuses_both_original_uri_and_url(routed_authz: Process) -> None:
    result = ask(routed_authz, "/authz/nginx", [("X-Original-URI", "/public/x"),
                                                ("X-Original-URL", "http://t/public/x")])
    assert result.status == 400, result.text[:300]
    assert result.json()["code"] == "invalid_request"


@pytest.mark.parametrize(("endpoint", "headers", "status"), [
    # each endpoint reads only its own set: the other set's (laxer) URI is ignored
    ("/authz/forwarded", [("X-Original-URI", "/public/x"), ("X-Forwarded-Uri", "/admin/x"),
                          ("X-Forwarded-Method", "GET")], 401),
    ("/authz/forwarded", [("X-Original-URL", "http://t/public/x"), ("X-Forwarded-Uri", "/admin/x")], 401),
    ("/authz/nginx", [("X-Original-URI", "/admin/x"), ("X-Forwarded-Uri", "/public/x")], 401),
    ("/authz/nginx", [("X-Original-URI", "/public/x"), ("X-Forwarded-Uri", "/admin/x")], 200),
    ("/authz/forwarded", [("X-Forwarded-Uri", "/public/x"), ("X-Original-URI", "/admin/x")], 200),
])
def test_each_endpoint_reads_only_its_own_header_set(routed_authz: Process, endpoint: str,
                                                     headers: list[tuple[str, str]], status: int) -> None:
    result = ask(routed_authz, endpoint, headers)
    assert result.status == status, (result.status, result.text[:300])


@pytest.mark.parametrize(("endpoint", "headers"), [
    ("/authz/forwarded", [("X-Forwarded-Uri", "/public/x"), ("X-Forwarded-Host", "admin.example.com.")]),
    ("/authz/forwarded", [("X-Forwarded-Uri", "/public/x"), ("X-Forwarded-Host", "ADMIN.example.com.:8443")]),
    ("/authz/nginx", [("X-Original-URI", "/public/x"), ("X-Forwarded-Host", "admin.example.com.")]),
    ("/authz/nginx", [("X-Original-URL", "http://admin.example.com./public/x")]),
    ("/authz", [("X-Forwarded-Uri", "/public/x"), ("X-Forwarded-Host", "admin.example.com.")]),
    ("/authz", [("X-Original-URI", "/public/x"), ("X-Forwarded-Host", "Admin.Example.Com.")]),
])
def test_trailing_dot_host_matches_the_host_route(routed_authz: Process, endpoint: str,
                                                  headers: list[tuple[str, str]]) -> None:
    result = ask(routed_authz, endpoint, headers)
    assert result.status == 401, (result.status, result.text[:300])


def test_trailing_dot_host_on_the_envoy_endpoint(routed_authz: Process) -> None:
    response = exchange(routed_authz.port, f"GET /authz/envoy/public/x HTTP/1.1\r\nHost: {ADMIN_HOST}.\r\n"
                                           "Connection: close\r\n\r\n".encode())
    assert response is not None
    assert response.status == 401, response.head


@pytest.mark.parametrize("host", ["a@b", "[x]", "admin.example.com..", "admin.example.com:99999"])
@pytest.mark.parametrize("endpoint", ["/authz/forwarded", "/authz/nginx", "/authz"])
def test_invalid_forwarded_host_is_400(routed_authz: Process, endpoint: str, host: str) -> None:
    uri = "X-Forwarded-Uri" if endpoint == "/authz/forwarded" else "X-Original-URI"
    result = ask(routed_authz, endpoint, [(uri, "/public/x"), ("X-Forwarded-Host", host)])
    assert result.status == 400, (result.status, result.text[:300])


DOT_PATHS = ["/public/../admin/x", "/public/%2e%2e/admin/x", "/public/..%2fadmin/x", "/public/%2E%2E/admin/x",
             "//admin/x", "/public/..;/admin/x", "/%61dmin/x"]


@pytest.mark.parametrize("path", DOT_PATHS)
@pytest.mark.parametrize(("endpoint", "header"), [("/authz/nginx", "X-Original-URI"),
                                                  ("/authz/forwarded", "X-Forwarded-Uri"),
                                                  ("/authz", "X-Original-URI"), ("/authz", "X-Forwarded-Uri")])
def test_original_paths_are_normalised_like_serve(routed_authz: Process, endpoint: str, header: str, path: str
                                                  ) -> None:
    result = ask(routed_authz, endpoint, [(header, path)])
    assert result.status in (400, 401), (result.status, result.text[:300])
    assert result.header("Authorization") is None


@pytest.mark.parametrize("path", DOT_PATHS)
def test_envoy_paths_are_normalised_like_serve(routed_authz: Process, path: str) -> None:
    response = exchange(routed_authz.port,
                        f"GET /authz/envoy{path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    assert response is not None
    assert response.status in (400, 401), response.head
