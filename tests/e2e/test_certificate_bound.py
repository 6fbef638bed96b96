"""Certificate-bound access tokens (RFC 8705) end to end: ``serve`` terminating TLS, driven by real curl with client
certificates; the certificate a trusted proxy passes in ``Client-Cert`` (RFC 9440); real nginx terminating TLS in
front of ``serve`` and passing the certificate in Envoy's ``X-Forwarded-Client-Cert``.

The demo authorization server binds a registered token to a certificate thumbprint (its answers then carry
``cnf: {"x5t#S256": ...}``); the certificates are made for each test (``tests/certificates.py``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from phantom_token.core.client_cert import der_thumbprint

from ..certificates import Pki
from .conftest import UNAUTHORIZED_BODY, AuthServer, GatewayFactory, free_port
from .gateways import require_binary, start_gateway

pytestmark = pytest.mark.e2e

CERTIFICATE_REQUIRED = {"code": "invalid_request", "message": "No required TLS client certificate was sent"}
INVALID_TOKEN = 'Bearer error="invalid_token"'


class Curl:
    """curl's answer: its exit code, the status, the response headers (lower-case names) and body."""

    def __init__(self, argv: Sequence[str]) -> None:
        done = subprocess.run(["curl", "-sS", "-D", "-", *argv], capture_output=True, timeout=30, check=False)
        self.code = done.returncode
        self.stderr = done.stderr.decode(errors="replace")
        head, _, body = done.stdout.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if self.code == 0 else 0
        self.headers = {name.strip().lower(): value.strip()
                        for name, _, value in (line.partition(":") for line in lines[1:])}
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def curl(url: str, pki: Pki, token: str | None, client: tuple[Path, Path, bytes] | None = None,
         headers: Sequence[str] = ()) -> Curl:
    argv = ["--cacert", str(pki.ca_file)] if url.startswith("https:") else []
    if client is not None:
        argv += ["--cert", str(client[0]), "--key", str(client[1])]
    if token is not None:
        argv += ["-H", f"Authorization: Bearer {token}"]
    for header in headers:
        argv += ["-H", header]
    return Curl([*argv, url])


def claims_upstream(answer: Curl) -> dict[str, Any]:
    """The claims of the JWT the echo API received."""
    jwt = answer.json()["headers"]["authorization"].removeprefix("Bearer ")
    payload = jwt.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def tls_config(plugin_config: dict[str, Any], pki: Pki, mode: str, **plugin: Any) -> str:
    config = json.loads(json.dumps(plugin_config))
    config["services"][0]["plugins"][0]["config"].update(plugin)
    config["phantom_token"] = {"tls": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                                       "client_ca_file": str(pki.ca_file), "client_certificate": mode}}
    return yaml.safe_dump(config)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return Pki(tmp_path)


def test_serve_over_tls_lets_a_bound_token_through_with_its_certificate_only(
        gateway: GatewayFactory, auth_server: AuthServer, plugin_config: dict[str, Any], pki: Pki) -> None:
    alice, bob = pki.client("alice"), pki.client("bob")
    gw = gateway(tls_config(plugin_config, pki, "optional"), scheme="https")
    assert any(f"listening on https://127.0.0.1:{gw.port}" in line for line in gw.stdout_lines)
    url = f"https://127.0.0.1:{gw.port}/api/hello"
    token = "bound-to-alice-" + os.urandom(8).hex()
    auth_server.register_token(token, x5t_s256=der_thumbprint(alice[2]))

    allowed = curl(url, pki, token, alice)
    assert allowed.status == 200, allowed.stderr
    assert claims_upstream(allowed)["cnf"] == {"x5t#S256": der_thumbprint(alice[2])}  # the API may check it too
    for client in (bob, None):  # another certificate of the same CA, or none: refused at cache hit
        refused = curl(url, pki, token, client)
        assert (refused.status, refused.headers["www-authenticate"]) == (401, INVALID_TOKEN)
        assert refused.json() == UNAUTHORIZED_BODY
    assert auth_server.introspections(token) == 1  # the refusals were decided from the cache
    assert curl(url, pki, token, alice).status == 200

    unbound = auth_server.issue_token()
    assert curl(url, pki, unbound).status == 200  # unbound tokens are unaffected, with or without a certificate
    assert curl(url, pki, unbound, bob).status == 200
    log = gw.stderr()
    assert "the client certificate" in log
    assert "none was presented" in log
    assert token not in log


def test_required_answers_400_without_a_certificate_and_a_foreign_one_fails_the_handshake(
        gateway: GatewayFactory, auth_server: AuthServer, plugin_config: dict[str, Any], pki: Pki) -> None:
    alice, stranger = pki.client("alice"), pki.client("stranger", foreign=True)
    gw = gateway(tls_config(plugin_config, pki, "required"), scheme="https")
    url = f"https://127.0.0.1:{gw.port}/api/hello"
    token = auth_server.issue_token()
    missing = curl(url, pki, token)
    assert (missing.status, missing.json()) == (400, CERTIFICATE_REQUIRED)
    assert missing.headers["connection"] == "close"
    handshake = curl(url, pki, token, stranger)
    assert handshake.code != 0  # curl: the server refused the certificate during the handshake
    plain = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{gw.port}/api/hello"], capture_output=True,
                           timeout=30, check=False)
    assert plain.returncode != 0  # plain HTTP on the TLS port: no answer, the connection closes
    assert curl(url, pki, token, alice).status == 200  # none of that hurt the gateway
    assert gw.proc.poll() is None


def _header_config(plugin_config: dict[str, Any], header: str, trusted: list[str] | None) -> str:
    config = json.loads(json.dumps(plugin_config))
    config["services"][0]["plugins"][0]["config"]["client_cert_header"] = header
    if trusted is not None:
        config["phantom_token"] = {"trusted_proxies": trusted}
    return yaml.safe_dump(config)


def test_client_cert_header_counts_from_a_trusted_proxy_only(
        gateway: GatewayFactory, auth_server: AuthServer, plugin_config: dict[str, Any], pki: Pki) -> None:
    alice, bob = pki.client("alice"), pki.client("bob")
    token = "bound-" + os.urandom(8).hex()
    auth_server.register_token(token, x5t_s256=der_thumbprint(alice[2]))

    def client_cert(der: bytes) -> str:
        return f"Client-Cert: :{base64.b64encode(der).decode()}:"

    untrusting = gateway(_header_config(plugin_config, "Client-Cert", []))  # 127.0.0.1 is nobody's proxy here
    url = f"{untrusting.base_url}/api/hello"
    ignored = curl(url, pki, token, headers=[client_cert(alice[2])])
    assert (ignored.status, ignored.headers["www-authenticate"]) == (401, INVALID_TOKEN)
    passed = curl(url, pki, auth_server.issue_token(), headers=[client_cert(alice[2])])
    assert passed.status == 200
    assert "client-cert" not in passed.json()["headers"]  # not forwarded: the API cannot be fooled either

    trusting = gateway(_header_config(plugin_config, "Client-Cert", None))  # loopback is trusted by default
    url = f"{trusting.base_url}/api/hello"
    assert curl(url, pki, token, headers=[client_cert(alice[2])]).status == 200
    assert curl(url, pki, token, headers=[client_cert(bob[2])]).status == 401
    assert curl(url, pki, token, headers=["Client-Cert: :not base64!:"]).status == 401
    assert curl(url, pki, token).status == 401
    assert "the Client-Cert header is unusable: not a single structured-field byte sequence" in trusting.stderr()


NGINX_TLS = """
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client optional;
        location / {{
            proxy_pass http://127.0.0.1:{gateway_port};
            proxy_set_header X-Forwarded-Client-Cert "Cert=$ssl_client_escaped_cert";
        }}
    }}
    server {{
        listen 127.0.0.1:{probe_port};
        location /public/ready {{ return 200; }}
    }}
}}
"""


def test_behind_nginx_terminating_tls_with_x_forwarded_client_cert(
        gateway: GatewayFactory, auth_server: AuthServer, plugin_config: dict[str, Any], pki: Pki,
        tmp_path: Path) -> None:
    """Real nginx terminates the client's TLS and passes its certificate (URL-encoded PEM, XFCC ``Cert=``) to
    ``serve``, which trusts it as the loopback peer; a client that writes the header itself gains nothing."""
    alice, bob = pki.client("alice"), pki.client("bob")
    token = "bound-" + os.urandom(8).hex()
    auth_server.register_token(token, x5t_s256=der_thumbprint(alice[2]))
    gw = gateway(_header_config(plugin_config, "X-Forwarded-Client-Cert", None))
    work = tmp_path / "nginx"
    work.mkdir()
    tls_port, probe_port = free_port(), free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_TLS.format(dir=work, tls_port=tls_port, probe_port=probe_port, gateway_port=gw.port,
                                     cert=pki.server_cert, key=pki.server_key, ca=pki.ca_file))
    globals_ = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    nginx = start_gateway("nginx", [require_binary("nginx"), "-p", str(work), "-c", str(conf), "-g", globals_],
                          probe_port, work)
    try:
        url = f"https://127.0.0.1:{tls_port}/api/hello"
        allowed = curl(url, pki, token, alice)
        assert allowed.status == 200, nginx.log()
        assert claims_upstream(allowed)["cnf"] == {"x5t#S256": der_thumbprint(alice[2])}
        assert curl(url, pki, token, bob).status == 401
        assert curl(url, pki, token).status == 401  # no certificate: nginx sends "Cert=", which is none
        forged = f"X-Forwarded-Client-Cert: Hash={base64.urlsafe_b64decode(der_thumbprint(alice[2]) + '=').hex()}"
        assert curl(url, pki, token, bob, headers=[forged]).status == 401  # nginx replaces what bob wrote
        # The trust is the socket peer's: anything on loopback is trusted by default, so trusted_proxies must
        # name only the proxies where a gateway shares its host with clients.
        assert curl(f"{gw.base_url}/api/hello", pki, token, headers=[forged]).status == 200
    finally:
        nginx.stop()


def test_the_demo_server_binds_a_token_only_when_asked(auth_server: AuthServer) -> None:
    token = "plain-" + os.urandom(8).hex()
    auth_server.register_token(token)
    answer = auth_server.introspect(token, accept="application/json").json()
    assert "cnf" not in answer
    auth_server.register_token(token, x5t_s256="abc")
    assert auth_server.introspect(token, accept="application/json").json()["cnf"] == {"x5t#S256": "abc"}

