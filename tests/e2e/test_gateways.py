"""phantom-token behind the real gateways, each running its configuration from ``examples/`` (contract section 10).

For nginx, Envoy, Traefik and Caddy: the demo authorization server, the echo API, ``phantom-token authz`` with
``examples/phantom-token-authz.yml`` and the gateway, all on 127.0.0.1. Checked at the client and at the upstream:
the JWT arrives instead of the opaque token, a bad token gets the 401 JSON body and challenge, a missing scope on
``/admin`` gets 403 while ``/api`` passes. Plus nginx's decision cache (the second request never reaches
phantom-token, and no raw token is on disk) and forged forwarding headers from an untrusted peer.
"""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from phantom_token.jose import verify

from ..dpop_proofs import ProofKey
from .conftest import (
    INTROSPECTION_CLIENT,
    UNAUTHORIZED_BODY,
    AuthServer,
    HttpResult,
    Process,
    free_port,
    http_request,
    start_process,
)
from .gateways import DECISION_CACHE, EXAMPLES, GatewayProcess, gateway_argv, render, start_gateway

pytestmark = pytest.mark.e2e

GATEWAYS = ["nginx", "envoy", "traefik", "caddy"]
FORBIDDEN = {"code": "forbidden", "message": "The token does not contain the required scope"}


class Authz:
    """A running ``phantom-token authz`` and its admin listener (for /metrics)."""

    def __init__(self, process: Process, admin_port: int) -> None:
        self.process = process
        self.port = process.port
        self.admin_url = f"http://127.0.0.1:{admin_port}"

    def allowed_count(self) -> int:
        """Decisions answered 200 so far (from /metrics)."""
        text = http_request("GET", f"{self.admin_url}/metrics").text
        counts = re.findall(r'^phantom_token_requests_total\{route="[^"]*",outcome="allowed",status="200"\} (\d+)',
                            text, re.M)
        return sum(int(count) for count in counts)  # every route's


def start_authz(auth_server: AuthServer, work_dir: Path, logs: Path, trusted_proxies: str | None = None) -> Authz:
    values = {"AUTH_SERVER_PORT": str(auth_server.process.port)}
    config = render(EXAMPLES / "phantom-token-authz.yml", work_dir / "authz.yml", values)
    if trusted_proxies is not None:
        text = config.read_text(encoding="utf-8")
        config.write_text(text.replace("trusted_proxies: [127.0.0.0/8, '::1']", f"trusted_proxies: {trusted_proxies}"),
                          encoding="utf-8")
    listen, admin = free_port(), free_port()
    argv = [sys.executable, "-m", "phantom_token", "authz", "-c", str(config), "--listen", f"127.0.0.1:{listen}",
            "--admin-listen", f"127.0.0.1:{admin}"]
    process = start_process("authz", argv, listen, logs, {"INTROSPECTION_SECRET": INTROSPECTION_CLIENT[1]})
    return Authz(process, admin)


@pytest.fixture(scope="module")
def authz(auth_server: AuthServer, tmp_path_factory: pytest.TempPathFactory, e2e_logs: Path) -> Iterator[Authz]:
    service = start_authz(auth_server, tmp_path_factory.mktemp("authz"), e2e_logs)
    try:
        yield service
    finally:
        code = service.process.stop()
        assert code == 0, service.process.stderr()


def _start(name: str, authz: Authz, echo_api: Process, tmp: pytest.TempPathFactory, *, cached: str | None = None
           ) -> GatewayProcess:
    work_dir = tmp.mktemp(name)
    port = free_port()
    values = {"LISTEN_PORT": str(port), "AUTHZ_PORT": str(authz.port), "API_PORT": str(echo_api.port)}
    return start_gateway(name, gateway_argv(name, work_dir, values, cached=cached), port, work_dir)


@pytest.fixture(scope="module", params=GATEWAYS)
def gateway(request: pytest.FixtureRequest, authz: Authz, echo_api: Process,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    running = _start(str(request.param), authz, echo_api, tmp_path_factory)
    try:
        yield running
    finally:
        running.stop()


def get(gateway: GatewayProcess, path: str, token: str | None = None, method: str = "GET") -> HttpResult:
    headers = [("Authorization", f"Bearer {token}")] if token is not None else []
    return http_request(method, gateway.base_url + path, headers)


def assert_jwt_upstream(result: HttpResult, auth_server: AuthServer, opaque: str) -> dict[str, Any]:
    """The echo API got a JWT signed by the AS, and never the opaque token; returns what it echoed."""
    assert result.status == 200, result.text
    echoed: dict[str, Any] = result.json()
    assert opaque not in result.text, "the opaque token reached the upstream API"
    scheme, _, jwt = echoed["headers"]["authorization"].partition(" ")
    assert scheme == "Bearer"
    keys = http_request("GET", f"{auth_server.base_url}/.well-known/jwks.json").json()
    _, claims = verify(jwt, keys, algorithms=["ES256"])
    assert claims["client_id"] == "demo-client"
    return echoed


def assert_denied(result: HttpResult, status: int, body: dict[str, str], challenge: str) -> None:
    assert result.status == status, result.text
    assert result.json() == body
    assert (result.header("Content-Type") or "").startswith("application/json")
    assert result.header_values("WWW-Authenticate") == [challenge]


# --- every gateway ----------------------------------------------------------------------------------------------


def test_upstream_receives_the_jwt_and_never_the_opaque_token(gateway: GatewayProcess, auth_server: AuthServer
                                                               ) -> None:
    token = auth_server.issue_token()
    echoed = assert_jwt_upstream(get(gateway, "/api/orders?id=7", token), auth_server, token)
    assert (echoed["method"], echoed["path"], echoed["query"]) == ("GET", "/api/orders", "id=7")
    again = get(gateway, "/api/orders", token, method="POST")  # another method, from the decision cache
    assert assert_jwt_upstream(again, auth_server, token)["method"] == "POST"
    assert auth_server.introspections(token) == 1


def test_bad_token_gets_401_with_json_body_and_challenge(gateway: GatewayProcess, auth_server: AuthServer) -> None:
    assert_denied(get(gateway, "/api/x", "not-an-issued-token"), 401, UNAUTHORIZED_BODY,
                  'Bearer error="invalid_token"')
    missing = get(gateway, "/api/x")
    # Both schemes are accepted (dpop: allowed): a Bearer and a DPoP challenge (RFC 9449 section 7.1); nginx 1.22's
    # auth_request copies only the first WWW-Authenticate of the decision.
    both = ["Bearer", 'DPoP algs="ES256 ES384 ES512 PS256 RS256 EdDSA"']
    assert missing.status == 401
    assert missing.header_values("WWW-Authenticate") == (both[:1] if gateway.name == "nginx" else both)
    assert missing.json() == UNAUTHORIZED_BODY


def test_missing_scope_is_403_on_one_route_while_another_passes(gateway: GatewayProcess, auth_server: AuthServer
                                                                ) -> None:
    token = auth_server.issue_token(scope="read write")
    assert_denied(get(gateway, "/admin/users", token), 403, FORBIDDEN,
                  'Bearer error="insufficient_scope", scope="admin"')
    assert_jwt_upstream(get(gateway, "/api/users", token), auth_server, token)


def test_route_without_plugin_passes_without_a_token(gateway: GatewayProcess) -> None:
    result = get(gateway, "/public/info")
    assert result.status == 200, result.text
    assert "authorization" not in result.json()["headers"]


# --- nginx decision caching -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(DECISION_CACHE))
def cached_nginx(request: pytest.FixtureRequest, authz: Authz, echo_api: Process,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    running = _start("nginx", authz, echo_api, tmp_path_factory, cached=str(request.param))
    try:
        yield running
    finally:
        running.stop()


def test_nginx_decision_cache_answers_repeats_without_phantom_token(cached_nginx: GatewayProcess,
                                                                    authz: Authz, auth_server: AuthServer) -> None:
    token = auth_server.issue_token()
    before = authz.allowed_count()
    first = get(cached_nginx, "/api/cached", token)
    assert_jwt_upstream(first, auth_server, token)
    assert authz.allowed_count() == before + 1
    for _ in range(3):
        again = get(cached_nginx, "/api/cached", token)
        assert again.json()["headers"]["authorization"] == first.json()["headers"]["authorization"]
    assert authz.allowed_count() == before + 1, "a cached decision was asked again"
    other_path = get(cached_nginx, "/api/other", token)  # another URI is another decision
    assert other_path.status == 200
    assert authz.allowed_count() == before + 2
    # Denials are never cached: each one is asked.
    for _ in range(2):
        assert get(cached_nginx, "/admin/x", token).status == 403
    assert get(cached_nginx, "/api/cached", "not-an-issued-token").status == 401


def test_nginx_decision_cache_never_writes_the_raw_token_to_disk(cached_nginx: GatewayProcess,
                                                                 auth_server: AuthServer) -> None:
    token = auth_server.issue_token()
    assert get(cached_nginx, "/api/disk", token).status == 200
    work_dir = cached_nginx.log_path.parent
    for path in (p for p in work_dir.rglob("*") if p.is_file()):
        assert token.encode() not in path.read_bytes(), f"raw token found in {path}"
    cache_dir = work_dir / "decisions"
    if "lua_shared_dict" in (work_dir / "nginx.conf").read_text():
        assert not cache_dir.exists(), "the lua variant keeps decisions in shared memory, never in files"
        return
    files = [p for p in cache_dir.rglob("*") if p.is_file()]
    assert files, "nginx cached no decision"
    keys = []
    for path in files:
        keys += re.findall(rb"\nKEY: (.*)\n", path.read_bytes())
    assert keys
    # set-misc: an HMAC-SHA256, njs: a SHA-256 (64 hex digits each)
    assert all(re.fullmatch(rb"[0-9a-f]{64}", key) for key in keys), keys


def test_nginx_decision_cache_answers_like_the_decision_service(cached_nginx: GatewayProcess, authz: Authz,
                                                                  auth_server: AuthServer) -> None:
    """Every variant answers exactly as nginx.conf does: the contract's denials (never remembered), the claims as
    headers replacing a client's copies (from the service, then from the cache), a route without the plugin."""
    token = auth_server.issue_token(scope="read write")
    for _ in range(2):
        assert_denied(get(cached_nginx, "/api/x", "not-an-issued-token"), 401, UNAUTHORIZED_BODY,
                      'Bearer error="invalid_token"')
        assert_denied(get(cached_nginx, "/admin/users", token), 403, FORBIDDEN,
                      'Bearer error="insufficient_scope", scope="admin"')
    before = authz.allowed_count()
    forged = [("Authorization", f"Bearer {token}"), ("X-User-Id", "admin"), ("X-Scope", "admin")]
    for _ in range(3):
        result = http_request("GET", cached_nginx.base_url + "/profile/me", forged)
        echoed = assert_jwt_upstream(result, auth_server, token)
        assert echoed["headers"]["x-user-id"] == "demo-client"
        assert echoed["headers"]["x-client-id"] == "demo-client"
        assert echoed["headers"]["x-scope"] == "read write"
    assert authz.allowed_count() == before + 1
    posted = http_request("POST", cached_nginx.base_url + "/profile/me", forged, b'{"order": 7}')
    assert assert_jwt_upstream(posted, auth_server, token)["method"] == "POST"  # another decision: the method
    public = get(cached_nginx, "/public/info", token)
    assert public.status == 200, public.text
    assert "authorization" not in public.json()["headers"]


def test_nginx_decision_cache_never_replays_a_dpop_decision(cached_nginx: GatewayProcess, authz: Authz,
                                                            auth_server: AuthServer) -> None:
    """A decision on a DPoP proof says max-age=0 (a proof is good once): each request is asked again, and a
    proof used once is refused the second time rather than answered from a cache."""
    key = ProofKey()
    token = "e2e-dpop-" + secrets.token_urlsafe(24)
    auth_server.set_controls(register={"token": token, "scope": "read write", "expires_in": 3600, "jkt": key.jkt})
    url = cached_nginx.base_url + "/api/dpop"
    htu = url  # the URL the client used: the examples send X-Forwarded-Host $http_host (with the port) and the scheme
    before = authz.allowed_count()
    for _ in range(2):
        proof = key.proof("GET", htu, token)
        result = http_request("GET", url, [("Authorization", f"DPoP {token}"), ("DPoP", proof)])
        assert result.status == 200, result.text
        assert authz.allowed_count() == before + 1
        before += 1
        replayed = http_request("GET", url, [("Authorization", f"DPoP {token}"), ("DPoP", proof)])
        assert replayed.status == 401, replayed.text
        assert authz.allowed_count() == before
    # The scheme and host come from nginx, never from the client: a proof for https:// with a forged
    # X-Forwarded-Proto is refused (the example overwrites the header with $scheme).
    https_proof = key.proof("GET", "https" + url.removeprefix("http"), token)
    forged = http_request("GET", url, [("Authorization", f"DPoP {token}"), ("DPoP", https_proof),
                                       ("X-Forwarded-Proto", "https")])
    assert forged.status == 401, forged.text
    assert "invalid_dpop_proof" in (forged.header("www-authenticate") or ""), forged.headers


# --- forwarding headers and trust --------------------------------------------------------------------------------


def test_an_untrusted_peer_gets_403_whatever_it_forges(auth_server: AuthServer, tmp_path: Path,
                                                       e2e_logs: Path) -> None:
    untrusting = start_authz(auth_server, tmp_path, e2e_logs, trusted_proxies="[192.0.2.0/24]")
    try:
        token = auth_server.issue_token()
        forged = [("Authorization", f"Bearer {token}"), ("X-Forwarded-Uri", "/api/x"), ("X-Forwarded-Method", "GET"),
                  ("X-Original-URI", "/api/x")]
        for endpoint in ("/authz", "/authz/nginx", "/authz/forwarded", "/authz/envoy/api/x"):
            result = http_request("GET", f"http://127.0.0.1:{untrusting.port}{endpoint}", forged)
            assert result.status == 403, result.text
            assert result.json() == {"code": "forbidden",
                                     "message": "The decision service answers trusted proxies only"}
            assert result.header("Authorization") is None
        assert auth_server.introspections(token) == 0
    finally:
        assert untrusting.process.stop() == 0


def test_trusted_peer_without_original_uri_gets_a_clear_400(authz: Authz) -> None:
    result = http_request("GET", f"http://127.0.0.1:{authz.port}/authz", [("Authorization", "Bearer abc")])
    assert result.status == 400
    assert result.json() == {"code": "invalid_request",
                             "message": "The decision request has no X-Original-URI or X-Original-URL header"}
    assert result.header("Cache-Control") == "no-store"


def test_allowed_decision_headers_for_nginx_caching(authz: Authz, auth_server: AuthServer) -> None:
    token = auth_server.issue_token()
    result = http_request("GET", f"http://127.0.0.1:{authz.port}/authz",
                          [("Authorization", f"Bearer {token}"), ("X-Original-URI", "/api/x")])
    assert result.status == 200
    names = [name.lower() for name, _ in result.headers]
    assert names.index("x-accel-expires") < names.index("cache-control")
    seconds = int(result.header("X-Accel-Expires") or "0")
    assert 0 < seconds <= 300
    assert result.header("Cache-Control") == f"private, max-age={seconds}"


# --- the examples themselves ----------------------------------------------------------------------------------------


def test_kubernetes_example_is_valid_yaml_with_the_auth_annotations() -> None:
    documents = list(yaml.safe_load_all((EXAMPLES / "kubernetes" / "ingress-nginx.yaml").read_text("utf-8")))
    kinds = [doc["kind"] for doc in documents]
    assert kinds == ["ConfigMap", "Deployment", "Service", "Ingress"]
    annotations = documents[-1]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-url"].endswith("/authz/nginx")
    embedded = yaml.safe_load(documents[0]["data"]["phantom-token.yml"])
    plugin = embedded["services"][0]["plugins"][0]
    assert plugin["name"] == "phantom-token"
    copied = annotations["nginx.ingress.kubernetes.io/auth-response-headers"].split(", ")
    assert copied == ["Authorization", *plugin["config"]["claims_to_headers"]]  # the claims headers too


def test_every_placeholder_of_the_examples_is_documented() -> None:
    readme = (EXAMPLES / "README.md").read_text("utf-8")
    for path in EXAMPLES.rglob("*"):
        if path.is_file() and path.name != "README.md":
            for name in set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", path.read_text("utf-8"))):
                assert f"`${{{name}}}`" in readme, f"{path.name}: ${{{name}}} is not in examples/README.md"
