"""Certificate-bound tokens (RFC 8705) from a real authorization server: node ``oidc-provider`` with
``features.mTLS.certificateBoundAccessTokens`` binds the client ``app-mtls``'s tokens to the certificate of its
token request (tests/interop/server.mjs), and its RFC 7662 / RFC 9701 answers carry ``cnf["x5t#S256"]``. The
gateway terminates TLS (``phantom_token.tls``, client certificates optional) and real curl presents certificates.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from phantom_token.core.client_cert import der_thumbprint
from tests.certificates import Pki
from tests.e2e.conftest import UNAUTHORIZED_BODY, GatewayFactory, Process, http_request
from tests.e2e.test_certificate_bound import curl

from .conftest import OidcProvider
from .test_oidc_provider import GATEWAY_ISSUER, plugin

pytestmark = pytest.mark.e2e


def bound_token(oidc: OidcProvider, certificate_pem: bytes) -> str:
    """A client-credentials token for ``app-mtls``, bound to ``certificate_pem`` (as a proxy would pass it)."""
    body = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": "read write"}).encode()
    basic = base64.b64encode(b"app-mtls:app-mtls-secret").decode()
    result = http_request("POST", f"{oidc.issuer}/token", {
        "Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Basic {basic}",
        "X-Client-Cert": urllib.parse.quote(certificate_pem.decode())}, body)
    assert result.status == 200, result.text
    token = result.json()["access_token"]
    assert isinstance(token, str)
    return token


@pytest.mark.parametrize("mode", ["json", "signed"])
def test_a_token_oidc_provider_bound_to_a_certificate_needs_that_certificate(
        oidc_provider: OidcProvider, echo_api: Process, gateway: GatewayFactory, tmp_path: Path, mode: str) -> None:
    pki = Pki(tmp_path)
    alice, bob = pki.client("alice"), pki.client("bob")
    token = bound_token(oidc_provider, alice[0].read_bytes())
    document: dict[str, Any] = {
        "_format_version": "2.1",
        "services": [{"name": "api", "url": echo_api.base_url, "routes": [{"name": "api-route", "paths": ["/api"]}],
                      "plugins": [{"name": "phantom-token", "config": plugin(oidc_provider, mode)}]}],
        "phantom_token": {"jwt": {"issuer": GATEWAY_ISSUER},
                          "tls": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                                  "client_ca_file": str(pki.ca_file), "client_certificate": "optional"}},
    }
    gw = gateway(yaml.safe_dump(document), scheme="https")
    url = f"https://127.0.0.1:{gw.port}/api/hello"

    allowed = curl(url, pki, token, alice)
    assert allowed.status == 200, (allowed.stderr, gw.stderr())
    minted = allowed.json()["headers"]["authorization"].removeprefix("Bearer ").split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(minted + "=" * (-len(minted) % 4)))
    assert claims["cnf"] == {"x5t#S256": der_thumbprint(alice[2])}  # oidc-provider's binding, copied upstream
    for client in (bob, None):
        refused = curl(url, pki, token, client)
        assert (refused.status, refused.json()) == (401, UNAUTHORIZED_BODY)
        assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    unbound = oidc_provider.issue_token()  # the client `app`: not bound, works without a certificate
    assert curl(url, pki, unbound).status == 200
