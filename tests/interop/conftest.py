"""The interop rig: a real node ``oidc-provider`` (tests/interop/server.mjs) on 127.0.0.1, plus the e2e rig's
echo API and gateway factory.

The AS is started once per session with a client key the session generates (for ``private_key_jwt``). The tests
are skipped when node or the npm packages are missing (``scripts/setup`` runs ``npm ci`` here).
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from phantom_token.jose import SigningKey
from tests.e2e.conftest import (
    REPO,
    auth_server,
    e2e_logs,
    echo_api,
    free_port,
    gateway,
    http_request,
    start_process,
)

HERE = Path(__file__).resolve().parent
RESOURCE = "https://api.example.com"
APP_CLIENT = ("app", "app-secret")


@dataclass
class OidcProvider:
    issuer: str
    client_key_file: Path  # PEM of gw-jwt's private key (private_key_jwt)

    def exchanges(self, fingerprint: str) -> int:
        """Token exchanges of the subject token with this fingerprint (core.bearer.fingerprint) so far."""
        counts = http_request("GET", f"{self.issuer}/test/exchanges").json()
        return int(counts.get(fingerprint, 0))

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.issuer}/token/introspection"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    def issue_token(self, scope: str = "read write") -> str:
        """An opaque client-credentials access token for the resource https://api.example.com."""
        body = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": scope}).encode()
        basic = base64.b64encode(":".join(APP_CLIENT).encode()).decode()
        result = http_request(
            "POST", f"{self.issuer}/token",
            {"Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Basic {basic}"}, body,
        )
        assert result.status == 200, result.text
        token = result.json()["access_token"]
        assert isinstance(token, str)
        assert "." not in token, "expected an opaque token"
        return token


@pytest.fixture(scope="session")
def oidc_provider(e2e_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    if shutil.which("node") is None or not (HERE / "node_modules" / "oidc-provider").is_dir():
        pytest.skip("node or tests/interop/node_modules missing (scripts/setup runs npm ci)")
    keys = tmp_path_factory.mktemp("interop-keys")
    client_key = SigningKey.generate("ES256")
    key_file = keys / "gw-jwt.pem"
    key_file.write_bytes(client_key.private_pem())
    jwks_file = keys / "gw-jwt.jwks.json"
    jwks_file.write_text(json.dumps({"keys": [client_key.public_jwk()]}), encoding="utf-8")
    port = free_port()
    process = start_process(
        "oidc-provider", ["node", str(HERE / "server.mjs")], port, e2e_logs,
        {"PORT": str(port), "CLIENT_JWKS_FILE": str(jwks_file)},
    )
    try:
        yield OidcProvider(f"http://127.0.0.1:{port}", key_file)
    finally:
        process.stop()


__all__ = ["REPO", "RESOURCE", "OidcProvider", "auth_server", "e2e_logs", "echo_api", "gateway"]
