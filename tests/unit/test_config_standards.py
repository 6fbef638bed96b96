"""The issue-3 options in the configuration file: modes, discovery, claim checks, client authentication, jwt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from phantom_token import jose
from phantom_token.config.errors import ConfigError
from phantom_token.config.loader import parse_settings
from phantom_token.config.settings import PluginConfig, Settings


def document(options: dict[str, Any], jwt: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_format_version": "2.1",
        "services": [{
            "name": "api",
            "url": "http://127.0.0.1:3001",
            "routes": [{"name": "r", "paths": ["/api"]}],
            "plugins": [{"name": "phantom-token", "config": {"client_id": "gw", **options}}],
        }],
    }
    if jwt is not None:
        doc["phantom_token"] = {"jwt": jwt}
    return doc


def parse(options: dict[str, Any], jwt: dict[str, Any] | None = None) -> Settings:
    return parse_settings(document(options, jwt), source="gw.yml", environ={})


def plugin(options: dict[str, Any], jwt: dict[str, Any] | None = None) -> PluginConfig:
    found = parse(options, jwt).routes[0].plugin
    assert found is not None
    return found


def problems(options: dict[str, Any], jwt: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse(options, jwt)
    return [(p.field, p.why) for p in caught.value.problems]


ENDPOINT = {"introspection_endpoint": "https://as.test/introspect"}
SECRET = {"client_secret": "s"}
JWT = {"issuer": "https://gateway.test"}


def test_defaults_keep_todays_behaviour() -> None:
    found = plugin({**ENDPOINT, **SECRET})
    assert (found.introspection_response, found.client_auth_method, found.clock_skew_seconds) == (
        "jwt", "client_secret_basic", 60)
    assert (found.issuer, found.audience, found.issuer_allowed, found.honor_cache_control) == (None, None, (), True)


def test_json_mode_with_every_claim_option() -> None:
    found = plugin({**ENDPOINT, **SECRET, "introspection_response": "json", "audience": "https://api",
                    "issuer_allowed": "https://as.test", "clock_skew_seconds": 5, "honor_cache_control": False}, JWT)
    assert (found.audience, found.issuer_allowed, found.clock_skew_seconds) == ("https://api", ("https://as.test",), 5)
    assert plugin({**ENDPOINT, **SECRET, "issuer_allowed": ["a", "b"]}).issuer_allowed == ("a", "b")


def test_issuer_makes_the_endpoint_optional() -> None:
    found = plugin({**SECRET, "issuer": "https://as.test", "introspection_response": "signed"}, JWT)
    assert (found.introspection_endpoint, found.issuer) == ("", "https://as.test")


def test_without_endpoint_or_issuer() -> None:
    assert ("config.introspection_endpoint", "is required") in problems(SECRET)


def test_signed_needs_the_issuer() -> None:
    assert any(field == "config.issuer" and "signed" in why
               for field, why in problems({**ENDPOINT, **SECRET, "introspection_response": "signed"}, JWT))


@pytest.mark.parametrize(("options", "field"), [
    ({"introspection_response": "xml"}, "config.introspection_response"),
    ({"client_auth_method": "client_secret_jwt"}, "config.client_auth_method"),
    ({"issuer": "as.test"}, "config.issuer"),
    ({"jwks_uri": "ftp://as.test/jwks"}, "config.jwks_uri"),
    ({"clock_skew_seconds": -1}, "config.clock_skew_seconds"),
    ({"client_private_key_file": "/x.pem"}, "config.client_private_key_file"),  # not the method in use
    ({"client_cert_file": "/x.pem"}, "config.client_cert_file"),
    ({"ca_file": "/nonexistent/ca.pem"}, "config.ca_file"),
])
def test_bad_options_name_their_field(options: dict[str, Any], field: str) -> None:
    assert field in [f for f, _ in problems({**ENDPOINT, **SECRET, **options})]


def test_minting_needs_phantom_token_jwt_issuer() -> None:
    assert ("jwt.issuer", "is required when a route sets introspection_response json or signed") in problems(
        {**ENDPOINT, **SECRET, "introspection_response": "json"})


def test_private_key_jwt_needs_a_readable_key_and_no_secret(tmp_path: Path) -> None:
    options = {**ENDPOINT, "client_auth_method": "private_key_jwt"}
    assert ("config.client_private_key_file", "is required with client_auth_method private_key_jwt") in problems(
        options)
    missing = problems({**options, "client_private_key_file": str(tmp_path / "missing.pem")})
    assert ("config.client_private_key_file", "cannot read the file: No such file or directory") in missing
    (tmp_path / "bad.pem").write_text("not a key")
    assert "config.client_private_key_file" in [f for f, _ in problems(
        {**options, "client_private_key_file": str(tmp_path / "bad.pem")})]
    (tmp_path / "key.pem").write_bytes(jose.SigningKey.generate("ES256").private_pem())
    found = plugin({**options, "client_private_key_file": str(tmp_path / "key.pem")})
    assert (found.client_auth_method, found.client_secret) == ("private_key_jwt", "")


def test_tls_client_auth_needs_both_files(tmp_path: Path) -> None:
    found = problems({**ENDPOINT, "client_auth_method": "tls_client_auth"})
    assert ("config.client_cert_file", "is required with client_auth_method tls_client_auth") in found
    assert ("config.client_key_file", "is required with client_auth_method tls_client_auth") in found
    (tmp_path / "c.pem").write_text("junk")
    bad = problems({**ENDPOINT, "client_auth_method": "tls_client_auth", "client_cert_file": str(tmp_path / "c.pem"),
                    "client_key_file": str(tmp_path / "c.pem")})
    assert [f for f, _ in bad] == ["config.client_cert_file"]


def test_secret_methods_need_the_secret() -> None:
    assert ("config.client_secret", "is required") in problems({**ENDPOINT, "client_auth_method": "client_secret_post"})


def test_jwt_section(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_bytes(jose.SigningKey.generate("RS256").private_pem())
    jwt = {**JWT, "key_file": str(tmp_path / "k.pem"), "alg": "PS256", "kid": "k1", "max_lifetime_seconds": 300,
           "previous_key_file": str(tmp_path / "k.pem"), "previous_kid": "k0"}
    settings = parse({**ENDPOINT, **SECRET, "introspection_response": "json"}, jwt)
    assert (settings.jwt.alg, settings.jwt.kid, settings.jwt.max_lifetime_seconds) == ("PS256", "k1", 300)


@pytest.mark.parametrize(("jwt", "field"), [
    ({"alg": "HS256"}, "jwt.alg"),
    ({"alg": "ES256", "key_file": "RSA"}, "jwt.key_file"),
    ({"key_file": "/nonexistent.pem"}, "jwt.key_file"),
    ({"previous_key_file": "/nonexistent.pem"}, "jwt.previous_key_file"),
    ({"max_lifetime_seconds": 0}, "jwt.max_lifetime_seconds"),
    ({"audience": "x"}, "jwt.audience"),
])
def test_bad_jwt_section(jwt: dict[str, Any], field: str, tmp_path: Path) -> None:
    if jwt.get("key_file") == "RSA":  # an RSA key cannot sign ES256
        (tmp_path / "rsa.pem").write_bytes(jose.SigningKey.generate("RS256").private_pem())
        jwt = {**jwt, "key_file": str(tmp_path / "rsa.pem")}
    assert field in [f for f, _ in problems({**ENDPOINT, **SECRET}, {**JWT, **jwt})]
