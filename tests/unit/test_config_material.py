"""Key and TLS material (``config.material``): every file the configuration names is read once, when the file is
loaded, and the gateway runs on what was read; problems with the files come where ``check`` always printed them."""

from __future__ import annotations

import datetime
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from phantom_token import jose
from phantom_token.config.errors import ConfigError
from phantom_token.config.loader import load_configuration, parse_settings
from phantom_token.config.material import listener_context, load_material, tls_files
from phantom_token.config.settings import GrpcTlsSettings, PluginConfig, Route, Settings, TlsSettings
from phantom_token.gateway import Gateway


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key, as PEM files (serves as a CA bundle and as a client certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "cert-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def config_file(directory: Path) -> Path:
    """Three plugins and a jwt section naming: the gateway's key twice (current and previous), a client assertion
    key, a CA bundle for every plugin, and a client certificate."""
    (directory / "jwt.pem").write_bytes(jose.SigningKey.generate("ES256").private_pem())
    (directory / "client.pem").write_bytes(jose.SigningKey.generate("ES256").private_pem())
    cert, cert_key = certificate(directory)
    base = {"introspection_endpoint": "https://as.test/introspect", "client_id": "gw", "ca_file": str(cert)}
    plugins = [
        {**base, "introspection_response": "json", "client_auth_method": "private_key_jwt",
         "client_private_key_file": str(directory / "client.pem")},
        {**base, "client_auth_method": "tls_client_auth", "client_cert_file": str(cert),
         "client_key_file": str(cert_key)},
        {**base, "client_secret": "s"},  # the same SSL context as the first plugin's
    ]
    document: dict[str, Any] = {
        "_format_version": "3.0",
        "services": [{"name": f"s{i}", "url": "http://127.0.0.1:3001",
                      "routes": [{"name": f"r{i}", "paths": [f"/{i}"]}],
                      "plugins": [{"name": "phantom-token", "config": plugin}]} for i, plugin in enumerate(plugins)],
        "phantom_token": {"jwt": {"issuer": "https://gateway.test", "key_file": str(directory / "jwt.pem"),
                                  "kid": "now", "previous_key_file": str(directory / "jwt.pem"),
                                  "previous_kid": "before"}},
    }
    path = directory / "gateway.yml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts every read of a key file (``Path.read_bytes``), CA bundle (``ssl.create_default_context``) and client
    certificate (``SSLContext.load_cert_chain``), by file name."""
    counts: Counter[str] = Counter()
    read_bytes, default_context = Path.read_bytes, ssl.create_default_context
    load_cert_chain = ssl.SSLContext.load_cert_chain

    def counted_read_bytes(self: Path) -> bytes:
        counts[self.name] += 1
        return read_bytes(self)

    def counted_default_context(*args: Any, cafile: str | None = None, **kwargs: Any) -> ssl.SSLContext:
        if cafile is not None:
            counts[Path(cafile).name] += 1
        return default_context(*args, cafile=cafile, **kwargs)

    def counted_load_cert_chain(self: ssl.SSLContext, certfile: str, keyfile: str | None = None,
                                password: Any = None) -> None:
        counts[Path(certfile).name] += 1
        load_cert_chain(self, certfile, keyfile, password)

    monkeypatch.setattr(Path, "read_bytes", counted_read_bytes)
    monkeypatch.setattr(ssl, "create_default_context", counted_default_context)
    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", counted_load_cert_chain)
    return counts


async def test_each_file_is_read_once_and_start_up_reads_none(tmp_path: Path, reads: Counter[str]) -> None:
    loaded = load_configuration(config_file(tmp_path))
    settings, material = loaded.settings, loaded.material
    # one read per file: the jwt key is named twice; one context per distinct set of TLS files (two here)
    assert {name: reads[name] for name in ("jwt.pem", "client.pem", "cert.pem")} == {
        "jwt.pem": 1, "client.pem": 1, "cert.pem": 2 + 1}  # CA bundle of two contexts, client certificate of one
    plugins = [route.plugin for route in settings.routes if route.plugin is not None]
    assert len(material.contexts) == 2
    assert material.contexts[tls_files(plugins[0])] is material.contexts[tls_files(plugins[2])]
    before = dict(reads)
    for name in ("jwt.pem", "client.pem", "cert.pem", "cert-key.pem"):
        (tmp_path / name).unlink()  # start-up must not need them any more

    gateway = Gateway(settings, material)
    await gateway.introspector.start(plugins)  # every plugin's key and SSL context (no discovery here)
    assert dict(reads) == before
    assert gateway.minter is not None
    assert [key["kid"] for key in gateway.minter.jwks()["keys"]] == ["now", "before"]
    header, _ = jose.verify(gateway.minter.sign({"sub": "a"}), gateway.minter.jwks(), algorithms=["ES256"])
    assert header["kid"] == "now"
    await gateway.close()


def test_problems_with_files_come_where_their_option_is_read(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("junk")
    plugin = {"introspection_endpoint": "https://as.test/i", "client_id": "gw", "scope": 5,
              "client_auth_method": "private_key_jwt", "client_private_key_file": str(tmp_path / "missing.pem"),
              "client_private_key_id": "", "ca_file": str(tmp_path / "junk.pem")}
    jwt = {"issuer": "https://gw.test", "key_file": str(tmp_path / "missing.pem"), "kid": "",
           "previous_key_file": str(tmp_path / "junk.pem"), "previous_kid": 3}
    document = {"_format_version": "2.1",
                "services": [{"name": "s", "url": "http://127.0.0.1:3001", "routes": [{"name": "r", "paths": ["/"]}],
                              "plugins": [{"name": "phantom-token", "config": plugin}]}],
                "phantom_token": {"jwt": jwt}}
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, source="gw.yml", environ={})
    not_a_key = "is not a PEM private key (EC P-256/384/521, RSA >= 2048 bits or Ed25519) that fits the algorithm"
    assert [(p.where, p.field, p.why) for p in caught.value.problems] == [
        ("service 's' / plugin 'phantom-token'", "config.scope", "expected a string, got an integer"),
        ("service 's' / plugin 'phantom-token'", "config.client_private_key_file",
         "cannot read the file: No such file or directory"),
        ("service 's' / plugin 'phantom-token'", "config.client_private_key_id", "must not be empty"),
        ("service 's' / plugin 'phantom-token'", "config.ca_file",
         "is not a readable PEM file of CA certificates (SSLError)"),
        ("phantom_token", "jwt.key_file", "cannot read the file: No such file or directory"),
        ("phantom_token", "jwt.previous_key_file", not_a_key),
        ("phantom_token", "jwt.kid", "must not be empty"),
        ("phantom_token", "jwt.previous_kid", "expected a string, got an integer"),
    ]
    assert "junk" not in str(caught.value)  # never a file's content


def test_settings_built_in_code_load_their_material(tmp_path: Path) -> None:
    key_path = tmp_path / "client.pem"
    plugin = PluginConfig("https://as.test/i", "gw", "", client_auth_method="private_key_jwt",
                          client_private_key_file=str(key_path))
    settings = Settings((Route("r", "s", None, paths=("/",), plugin=plugin),), source="code")
    with pytest.raises(ConfigError) as caught:
        load_material(settings)
    assert str(caught.value) == (
        "code: route 'r' / plugin 'phantom-token': config.client_private_key_file: cannot read the file: "
        "No such file or directory")
    key_path.write_bytes(jose.SigningKey.generate("EdDSA").private_pem())
    material = load_material(settings)
    assert [key.alg for key in material.keys.values()] == ["EdDSA"]
    assert material.jwt_keys(settings.jwt) == (None, ())
    assert tls_files(plugin) in material.contexts


def test_the_grpc_listener_s_tls_files_are_read_and_checked_with_the_configuration(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path)
    (tmp_path / "junk.pem").write_text("junk")
    base = {"_format_version": "2.1", "services": [{"name": "s", "url": "http://127.0.0.1:3001",
                                                    "routes": [{"name": "r", "paths": ["/"]}]}]}
    good = {**base, "phantom_token": {"grpc_tls": {"cert_file": str(cert), "key_file": str(key),
                                                   "client_ca_file": str(cert)}}}
    path = tmp_path / "gw.yml"
    path.write_text(yaml.safe_dump(good))
    loaded = load_configuration(path)
    pems = loaded.material.server_tls[loaded.settings.grpc_tls]
    assert (pems.cert, pems.key, pems.client_ca) == (cert.read_bytes(), key.read_bytes(), cert.read_bytes())
    assert "BEGIN" not in repr(pems)  # a key's bytes are never shown
    assert load_material(Settings((), grpc_tls=GrpcTlsSettings(str(cert), str(key)))).server_tls
    bad = {**base, "phantom_token": {"grpc_tls": {"cert_file": str(tmp_path / "junk.pem"), "key_file": str(key),
                                                  "client_ca_file": str(tmp_path / "junk.pem")}}}
    with pytest.raises(ConfigError) as caught:
        parse_settings(bad, source="gw.yml", environ={})
    assert [(p.field, p.why) for p in caught.value.problems] == [
        ("grpc_tls.cert_file", "with key_file, is not a PEM certificate and matching key (SSLError)"),
        ("grpc_tls.client_ca_file", "is not a PEM file of CA certificates (SSLError)")]
    assert "junk" not in str(caught.value)


@pytest.mark.parametrize(("mode", "verify"), [("none", ssl.CERT_NONE), ("optional", ssl.CERT_OPTIONAL),
                                              ("required", ssl.CERT_OPTIONAL)])  # required: answered 400 in HTTP
def test_the_listener_s_ssl_context_is_built_once_with_the_configuration(tmp_path: Path, mode: str,
                                                                          verify: ssl.VerifyMode) -> None:
    cert, key = certificate(tmp_path)
    tls = TlsSettings(str(cert), str(key), str(cert) if mode != "none" else None, mode)
    material = load_material(Settings((), tls=tls))
    context = material.listener_tls[tls]
    assert context.verify_mode == verify
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert listener_context(tls).verify_mode == verify  # the same, read again for code that has no Material
    with pytest.raises(ValueError, match="cert_file cannot read the file"):
        listener_context(TlsSettings(str(tmp_path / "none.pem"), str(key)))
