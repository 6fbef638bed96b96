"""``verify_ssl``: certificates are checked by default, and ``verify_ssl: false`` skips the check for that route only,
with a warning at start-up. A real TLS server on 127.0.0.1 with a self-signed certificate."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from phantom_token.config.settings import PluginConfig, Route, Settings, Upstream
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.ports import Active
from phantom_token.gateway import Gateway
from phantom_token.http.client import HttpClient
from phantom_token.introspection.client import HttpIntrospector
from phantom_token.process import Listeners

from ..unit.fakes import make_jwt


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def start_tls_endpoint(directory: Path, client_ca: Path | None = None) -> tuple[asyncio.Server, str, Path]:
    """An HTTPS introspection endpoint that answers every request with a JWT; with ``client_ca`` it requires a
    client certificate issued by it (RFC 8705 mutual TLS). Returns the server, its URL and its certificate."""
    cert, key = self_signed(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    body = make_jwt({"sub": "alice", "scope": "read"}).encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/jwt\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # a verifying client (or server) hangs up during the handshake: that is the point of some tests
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    return server, f"https://localhost:{port}/introspect", cert


@pytest.fixture
async def tls_endpoint(tmp_path: Path) -> AsyncIterator[str]:
    server, url, _ = await start_tls_endpoint(tmp_path)
    yield url
    server.close()
    await server.wait_closed()


async def test_certificates_are_verified_by_default(tls_endpoint: str) -> None:
    client = HttpClient()
    try:
        with pytest.raises(IntrospectionUnavailable, match=r"(?i)certificate|ssl|tls|connect"):
            await HttpIntrospector(client).introspect("tok", PluginConfig(tls_endpoint, "gw", "secret"))
    finally:
        await client.aclose()


async def test_verify_ssl_false_skips_the_check(tls_endpoint: str) -> None:
    client = HttpClient()
    try:
        result = await HttpIntrospector(client).introspect(
            "tok", PluginConfig(tls_endpoint, "gw", "secret", verify_ssl=False)
        )
    finally:
        await client.aclose()
    assert isinstance(result, Active)
    assert result.claims["sub"] == "alice"


async def test_verify_ssl_false_is_warned_about_at_start(caplog: pytest.LogCaptureFixture) -> None:
    upstream = Upstream("http", "127.0.0.1", 9, "/")
    routes = (
        Route("lax", "svc", upstream, paths=("/lax",), plugin=PluginConfig("https://as.test/i", "gw", "s",
                                                                          verify_ssl=False)),
        Route("strict", "svc", upstream, paths=("/strict",), plugin=PluginConfig("https://as.test/i", "gw", "s")),
    )
    listeners = Listeners(Gateway(Settings(routes)), "serve")
    await listeners.start("127.0.0.1:0", None)
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1
        assert "'lax'" in warnings[0]
        assert "verify_ssl is false" in warnings[0]
    finally:
        await listeners.stop()


async def test_tls_client_auth_presents_the_client_certificate(tmp_path: Path) -> None:
    """tls_client_auth against a server that requires a client certificate: with client_cert_file/client_key_file
    (and ca_file trusting the server) the call succeeds; without a certificate the handshake fails: 502's cause."""
    (tmp_path / "client").mkdir()
    (tmp_path / "server").mkdir()
    client_cert, client_key = self_signed(tmp_path / "client")
    server, url, server_cert = await start_tls_endpoint(tmp_path / "server", client_ca=client_cert)
    client = HttpClient()
    try:
        mutual = PluginConfig(url, "gw", "", introspection_response="jwt", client_auth_method="tls_client_auth",
                              client_cert_file=str(client_cert), client_key_file=str(client_key),
                              ca_file=str(server_cert))
        result = await HttpIntrospector(client).introspect("tok", mutual)
        assert isinstance(result, Active)
        assert result.claims["sub"] == "alice"
        anonymous = PluginConfig(url, "gw", "secret", ca_file=str(server_cert))
        with pytest.raises(IntrospectionUnavailable):
            await HttpIntrospector(client).introspect("tok", anonymous)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
