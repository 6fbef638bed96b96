"""``phantom-token authz --grpc-listen`` behind real Envoy running the shipped examples/envoy/envoy-grpc.yaml (ext_authz
over gRPC), and its gRPC port under attack.

All on 127.0.0.1: the demo authorization server, the echo API, the real ``phantom-token authz`` process (its HTTP
and gRPC listeners) and Envoy. Checked at the client, at the upstream and in Envoy's access log: the JWT arrives
instead of the opaque token; denials carry the HTTP front doors' status, challenge and JSON; a stampede of one new
token is one introspection; SIGTERM lets a check in flight finish, and with authz gone Envoy refuses (fail closed).
The gRPC port: garbage bytes, a check without ``http`` attributes, huge header maps, TLS with client certificates.
"""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc", reason="the grpc extra is not installed (scripts/setup installs it)")

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc  # noqa: E402
from google.rpc import code_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from phantom_token.core.bearer import fingerprint  # noqa: E402

from ..certificates import pem_pair  # noqa: E402
from .conftest import (  # noqa: E402
    INTROSPECTION_CLIENT,
    UNAUTHORIZED_BODY,
    AuthServer,
    HttpResult,
    Process,
    free_port,
    http_request,
    start_process,
)
from .gateways import EXAMPLES, GatewayProcess, gateway_argv, render, start_gateway  # noqa: E402
from .test_gateways import FORBIDDEN, assert_denied, assert_jwt_upstream  # noqa: E402

pytestmark = pytest.mark.e2e

SERVER_ERROR = {"code": "server_error", "message": "Problem encountered authorizing the HTTP request"}
NOT_FOUND = {"code": "not_found", "message": "No route matches the request"}


class GrpcAuthz:
    """A running ``phantom-token authz`` with its HTTP and gRPC listeners."""

    def __init__(self, process: Process, grpc_port: int) -> None:
        self.process = process
        self.http_port = process.port
        self.grpc_port = grpc_port
        self.target = f"127.0.0.1:{grpc_port}"


def start_grpc_authz(auth_server: AuthServer, work_dir: Path, logs: Path, section: str = "",
                     trusted_proxies: str | None = None) -> GrpcAuthz:
    """The shipped authz configuration, plus ``section`` (lines of the ``phantom_token:`` mapping)."""
    config = render(EXAMPLES / "phantom-token-authz.yml", work_dir / "authz.yml",
                    {"AUTH_SERVER_PORT": str(auth_server.process.port)})
    text = config.read_text(encoding="utf-8") + section
    if trusted_proxies is not None:
        text = text.replace("trusted_proxies: [127.0.0.0/8, '::1']", f"trusted_proxies: {trusted_proxies}")
    config.write_text(text, encoding="utf-8")
    listen, grpc_port = free_port(), free_port()
    argv = [sys.executable, "-m", "phantom_token", "authz", "-c", str(config), "--listen", f"127.0.0.1:{listen}",
            "--grpc-listen", f"127.0.0.1:{grpc_port}"]
    process = start_process("grpc-authz", argv, listen, logs, {"INTROSPECTION_SECRET": INTROSPECTION_CLIENT[1]})
    assert f"(grpc on 127.0.0.1:{grpc_port})" in process.stdout_lines[-1]
    return GrpcAuthz(process, grpc_port)


def start_envoy(authz: GrpcAuthz, echo_api: Process, work_dir: Path) -> GatewayProcess:
    port = free_port()
    values = {"LISTEN_PORT": str(port), "GRPC_AUTHZ_PORT": str(authz.grpc_port), "API_PORT": str(echo_api.port)}
    return start_gateway("envoy-grpc", gateway_argv("envoy-grpc", work_dir, values), port, work_dir)


@pytest.fixture(scope="module")
def authz(auth_server: AuthServer, tmp_path_factory: pytest.TempPathFactory, e2e_logs: Path) -> Iterator[GrpcAuthz]:
    service = start_grpc_authz(auth_server, tmp_path_factory.mktemp("grpc-authz"), e2e_logs)
    try:
        yield service
    finally:
        code = service.process.stop()
        assert code == 0, service.process.stderr()


@pytest.fixture(scope="module")
def envoy(authz: GrpcAuthz, echo_api: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    running = start_envoy(authz, echo_api, tmp_path_factory.mktemp("envoy-grpc"))
    try:
        yield running
    finally:
        running.stop()


def get(envoy: GatewayProcess, path: str, token: str | None = None, extra: list[tuple[str, str]] | None = None
        ) -> HttpResult:
    headers = [("Authorization", f"Bearer {token}")] if token is not None else []
    return http_request("GET", envoy.base_url + path, headers + (extra or []))


def wait_for(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)  # between polls of a condition


# --- through Envoy ------------------------------------------------------------------------------------------------


def test_upstream_receives_the_jwt_and_the_access_log_only_the_fingerprint(envoy: GatewayProcess,
                                                                           auth_server: AuthServer) -> None:
    token = auth_server.issue_token()
    result = get(envoy, "/api/orders?id=7", token, [("DPoP", "a-proof")])
    echoed = assert_jwt_upstream(result, auth_server, token)
    assert (echoed["method"], echoed["path"], echoed["query"]) == ("GET", "/api/orders", "id=7")
    assert "dpop" not in echoed["headers"]
    assert [name for name, _ in echoed["raw_headers"]].count("authorization") == 1
    assert_jwt_upstream(get(envoy, "/api/orders", token), auth_server, token)  # from the cache
    assert auth_server.introspections(token) == 1
    line = f"route=api token={fingerprint(token)}"
    wait_for(lambda: line in envoy.log(), f"{line!r} in Envoy's access log")
    assert token not in envoy.log()


def test_no_token_is_401_with_the_challenge_and_a_bad_one_invalid_token(envoy: GatewayProcess,
                                                                        auth_server: AuthServer) -> None:
    missing = get(envoy, "/api/x")
    assert (missing.status, missing.json()) == (401, UNAUTHORIZED_BODY)
    assert missing.header_values("WWW-Authenticate") == [  # Bearer, and DPoP (dpop: allowed; RFC 9449 7.1)
        "Bearer", 'DPoP algs="ES256 ES384 ES512 PS256 RS256 EdDSA"']
    assert_denied(get(envoy, "/api/x", "not-an-issued-token"), 401, UNAUTHORIZED_BODY, 'Bearer error="invalid_token"')
    assert get(envoy, "/api/x").header("Cache-Control") == "no-store"


def test_missing_scope_is_403_while_another_route_passes(envoy: GatewayProcess, auth_server: AuthServer) -> None:
    token = auth_server.issue_token(scope="read write")
    assert_denied(get(envoy, "/admin/users", token), 403, FORBIDDEN, 'Bearer error="insufficient_scope", scope="admin"')
    assert_jwt_upstream(get(envoy, "/api/users", token), auth_server, token)


def test_unknown_path_is_404_and_a_route_without_the_plugin_passes_unchanged(envoy: GatewayProcess) -> None:
    result = get(envoy, "/nowhere", "any-token")
    assert result.status == 404
    assert result.json() == NOT_FOUND
    public = get(envoy, "/public/info", None, [("DPoP", "kept")])
    assert public.status == 200
    assert "authorization" not in public.json()["headers"]
    assert public.json()["headers"]["dpop"] == "kept"


def test_paths_are_normalised_as_serve_does(envoy: GatewayProcess, auth_server: AuthServer) -> None:
    token = auth_server.issue_token(scope="read")
    # /%61dmin is /admin (unreserved percent-encoding decoded): the admin route's scope applies
    assert get(envoy, "/%61dmin/x", token).status == 403


def test_authorization_server_failure_is_502(envoy: GatewayProcess, auth_server: AuthServer) -> None:
    auth_server.set_controls(failure="status", failure_status=503)
    result = get(envoy, "/api/x", auth_server.issue_token())
    assert result.status == 502
    assert result.json() == SERVER_ERROR


def test_64_concurrent_requests_for_one_new_token_are_one_introspection(envoy: GatewayProcess,
                                                                        auth_server: AuthServer) -> None:
    token = auth_server.issue_token()
    auth_server.set_controls(delay_ms=300)  # every request arrives while the first introspection is running
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda _: get(envoy, "/api/stampede", token), range(64)))
    assert [r.status for r in results] == [200] * 64
    assert auth_server.introspections(token) == 1


def test_sigterm_finishes_the_check_in_flight_then_envoy_fails_closed(
        auth_server: AuthServer, echo_api: Process, tmp_path: Path, e2e_logs: Path) -> None:
    authz = start_grpc_authz(auth_server, tmp_path, e2e_logs)
    envoy = start_envoy(authz, echo_api, tmp_path)
    try:
        token = auth_server.issue_token()
        auth_server.set_controls(delay_ms=1500)
        results: list[HttpResult] = []
        in_flight = threading.Thread(target=lambda: results.append(get(envoy, "/api/drain", token)))
        in_flight.start()
        wait_for(lambda: auth_server.stats()["introspection"]["total"] >= 1 or not in_flight.is_alive(),
                 "the check to reach the authorization server")
        authz.process.proc.terminate()
        in_flight.join(20)
        assert [r.status for r in results] == [200], [r.text for r in results]
        assert authz.process.proc.wait(20) == 0, authz.process.stderr()
        refused = get(envoy, "/api/drain", token)
        assert refused.status == 502, refused.text
        assert "authorization" not in refused.text
        assert get(envoy, "/public/x").status == 502  # every request is asked, none passes unasked
    finally:
        envoy.stop()
        authz.process.stop()


# --- the gRPC port itself ----------------------------------------------------------------------------------------


def _check(target: str, request: Any, credentials: Any = None) -> Any:
    channel = grpc.secure_channel(target, credentials) if credentials is not None else grpc.insecure_channel(target)
    with channel:
        return external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=10)


def _check_request(path: str = "/api/x", headers: dict[str, str] | None = None) -> Any:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "GET", path, "api.example"
    http.headers.update(headers or {})
    return request


def _health(target: str, credentials: Any = None) -> int:
    channel = grpc.secure_channel(target, credentials) if credentials is not None else grpc.insecure_channel(target)
    with channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs' HealthStub declares no methods
        answer = stub.Check(
            health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization"), timeout=10)
        return int(answer.status)


def test_garbage_and_hostile_checks_get_clear_answers_and_harm_nothing(authz: GrpcAuthz,
                                                                       auth_server: AuthServer) -> None:
    for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64 + b"\xff" * 4096,
                    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\xff" * 100):
        with socket.create_connection(("127.0.0.1", authz.grpc_port), timeout=10) as sock:
            sock.sendall(garbage)
            sock.settimeout(5)
            try:
                while sock.recv(65536):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass
    no_http = _check(authz.target, external_auth_pb2.CheckRequest())
    assert no_http.status.code == code_pb2.INVALID_ARGUMENT
    assert no_http.denied_response.status.code == 400
    assert "no attributes.request.http" in no_http.denied_response.body
    many = _check(authz.target, _check_request(headers={f"x-h{i}": "v" * 100 for i in range(2000)}))  # ~200 KB
    assert (many.status.code, many.denied_response.status.code) == (code_pb2.INVALID_ARGUMENT, 431)
    with pytest.raises(grpc.RpcError) as huge:  # past the message limit: grpc refuses it before we parse it
        _check(authz.target, _check_request(headers={f"x-h{i}": "v" * 1000 for i in range(3000)}))
    assert huge.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    bad_path = _check(authz.target, _check_request("/api/%2e%2e%2fx"))
    assert bad_path.denied_response.status.code == 400
    # still serving, on both listeners
    assert _health(authz.target) == health_pb2.HealthCheckResponse.SERVING
    token = auth_server.issue_token()
    ok = _check(authz.target, _check_request(headers={"authorization": f"Bearer {token}"}))
    assert ok.status.code == code_pb2.OK
    assert ok.ok_response.headers[0].header.value.startswith("Bearer ey")
    http = http_request("GET", f"http://127.0.0.1:{authz.http_port}/authz/envoy/api/x",
                        [("Authorization", f"Bearer {token}")])
    assert http.status == 200
    assert http.header("Authorization") == ok.ok_response.headers[0].header.value
    assert authz.process.proc.poll() is None


def test_an_untrusted_peer_gets_permission_denied(auth_server: AuthServer, tmp_path: Path, e2e_logs: Path) -> None:
    untrusting = start_grpc_authz(auth_server, tmp_path, e2e_logs, trusted_proxies="[192.0.2.0/24]")
    try:
        token = auth_server.issue_token()
        denied = _check(untrusting.target, _check_request(headers={"authorization": f"Bearer {token}"}))
        assert denied.status.code == code_pb2.PERMISSION_DENIED
        assert denied.denied_response.status.code == 403
        assert auth_server.introspections(token) == 0
    finally:
        assert untrusting.process.stop() == 0


def test_grpc_only_and_the_cli_s_refusals(auth_server: AuthServer, tmp_path: Path, e2e_logs: Path,
                                          run_cli: Any) -> None:
    config = render(EXAMPLES / "phantom-token-authz.yml", tmp_path / "authz.yml",
                    {"AUTH_SERVER_PORT": str(auth_server.process.port)})
    grpc_port = free_port()
    argv = [sys.executable, "-m", "phantom_token", "authz", "-c", str(config), "--listen", "off", "--grpc-listen",
            f"127.0.0.1:{grpc_port}"]
    only = start_process("grpc-only", argv, grpc_port, e2e_logs, {"INTROSPECTION_SECRET": INTROSPECTION_CLIENT[1]},
                         scheme="grpc")
    try:
        assert _health(f"127.0.0.1:{grpc_port}") == health_pb2.HealthCheckResponse.SERVING
        token = auth_server.issue_token()
        ok = _check(f"127.0.0.1:{grpc_port}", _check_request(headers={"authorization": f"Bearer {token}"}))
        assert ok.status.code == code_pb2.OK
    finally:
        assert only.stop() == 0, only.stderr()
    text = config.read_text(encoding="utf-8").replace("'{vault://env/INTROSPECTION_SECRET}'", "secret")  # no env here
    no_grpc = run_cli("authz", "--listen", "off", config_text=text)
    assert no_grpc.returncode == 2
    assert "--listen off needs authz's gRPC listener" in no_grpc.stderr
    tls = text + "  grpc_tls:\n    cert_file: /nonexistent/c.pem\n    key_file: /nonexistent/k.pem\n"
    unreadable = run_cli("authz", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", config_text=tls)
    assert unreadable.returncode == 1
    assert "phantom_token: grpc_tls.cert_file: cannot read the file: No such file or directory" in unreadable.stderr


# --- TLS, with client certificates -----------------------------------------------------------------------------------


def test_tls_with_client_certificates(auth_server: AuthServer, tmp_path: Path, e2e_logs: Path) -> None:
    ca_cert, ca_key, ca_pem, _ = pem_pair("test CA", None, ca=True)
    _, _, server_pem, server_key = pem_pair("localhost", (ca_cert, ca_key), server=True)
    _, _, client_pem, client_key = pem_pair("envoy", (ca_cert, ca_key))
    other_ca, other_key, _, _ = pem_pair("other CA", None, ca=True)
    _, _, stranger_pem, stranger_key = pem_pair("stranger", (other_ca, other_key))
    for name, data in (("ca.pem", ca_pem), ("server.pem", server_pem), ("server.key", server_key)):
        (tmp_path / name).write_bytes(data)
    section = (f"  grpc_tls:\n    cert_file: {tmp_path / 'server.pem'}\n    key_file: {tmp_path / 'server.key'}\n"
               f"    client_ca_file: {tmp_path / 'ca.pem'}\n")
    authz = start_grpc_authz(auth_server, tmp_path, e2e_logs, section)
    target = f"localhost:{authz.grpc_port}"
    try:
        def creds(cert: bytes | None, key: bytes | None) -> Any:
            return grpc.ssl_channel_credentials(ca_pem, private_key=key, certificate_chain=cert)

        token = auth_server.issue_token()
        request = _check_request(headers={"authorization": f"Bearer {token}"})
        assert _check(target, request, creds(client_pem, client_key)).status.code == code_pb2.OK
        assert _health(target, creds(client_pem, client_key)) == health_pb2.HealthCheckResponse.SERVING
        for cert, key in ((None, None), (stranger_pem, stranger_key)):  # no certificate, or one from another CA
            with pytest.raises(grpc.RpcError) as refused:
                _check(target, request, creds(cert, key))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError):  # and no plaintext
            _check(authz.target, request)
        assert re.search(r"token|Bearer", authz.process.stderr()) is None
    finally:
        assert authz.process.stop() == 0


# --- the mesh examples (no cluster here: their structure, and the configuration phantom-token loads) --------------


def test_istio_and_contour_examples_are_valid_yaml_wired_to_the_grpc_listener() -> None:
    import yaml

    from phantom_token.config.loader import parse_settings

    istio = list(yaml.safe_load_all((EXAMPLES / "istio" / "phantom-token-istio.yaml").read_text("utf-8")))
    assert [doc["kind"] for doc in istio] == ["IstioOperator", "ConfigMap", "Deployment", "ServiceAccount", "Service",
                                              "AuthorizationPolicy", "AuthorizationPolicy"]
    provider = istio[0]["spec"]["meshConfig"]["extensionProviders"][0]
    assert provider["envoyExtAuthzGrpc"]["failOpen"] is False
    assert "includeRequestBodyInCheck" not in provider["envoyExtAuthzGrpc"]
    settings = parse_settings(yaml.safe_load(istio[1]["data"]["phantom-token.yml"]), source="istio",
                              environ={"INTROSPECTION_SECRET": "s"}, require_upstream=False)
    assert settings.grpc_listen is not None
    port = int(settings.grpc_listen.rpartition(":")[2])
    assert provider["envoyExtAuthzGrpc"]["port"] == port
    assert istio[4]["spec"]["ports"][0]["port"] == port
    assert istio[2]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] == port
    custom = istio[-1]["spec"]
    assert (custom["action"], custom["provider"]["name"]) == ("CUSTOM", provider["name"])
    contour = list(yaml.safe_load_all((EXAMPLES / "contour" / "phantom-token-contour.yaml").read_text("utf-8")))
    assert [doc["kind"] for doc in contour] == ["ExtensionService", "HTTPProxy"]
    assert contour[0]["spec"]["services"][0]["port"] == port
    authorization = contour[1]["spec"]["virtualhost"]["authorization"]
    assert authorization["failOpen"] is False
    assert authorization["extensionRef"]["name"] == contour[0]["metadata"]["name"]
