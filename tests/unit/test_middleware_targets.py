"""The ASGI middleware matches and passes on the same normalised path and host as ``serve`` (no sockets)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest

from phantom_token.config.settings import Route
from phantom_token.core.verdict import Allow
from phantom_token.frontends.middleware import PhantomTokenMiddleware, allowed_scope, request_info
from phantom_token.http.uri import InvalidTarget

Message = MutableMapping[str, Any]
ROUTE = Route("r", "s", None, paths=("/",))


def scope(raw_path: bytes | None, path: str = "/", host: bytes = b"api.example.com") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "http", "method": "GET", "path": path, "query_string": b"",
                           "headers": [(b"host", host), (b"authorization", b"Bearer opaque")]}
    if raw_path is not None:
        out["raw_path"] = raw_path
    return out


def test_the_engine_sees_the_normalised_path_and_host() -> None:
    info = request_info(scope(b"/public/%2e%2e/admin//x?q=1", host=b"Admin.Example.com.:8443"))
    assert (info.path, info.host) == ("/admin/x", "admin.example.com")


def test_a_decoded_path_without_raw_path_cannot_fake_an_escape() -> None:
    # the server decoded '%252e%252e' to '%2e%2e': that is text, not two dots
    info = request_info(scope(None, path="/public/%2e%2e/admin"))
    assert info.path == "/public/%252e%252e/admin"


@pytest.mark.parametrize("raw_path", [b"/public/..%2fadmin", b"/a\\b", b"/..;/admin"])
def test_ambiguous_paths_are_refused(raw_path: bytes) -> None:
    with pytest.raises(InvalidTarget):
        request_info(scope(raw_path))


@pytest.mark.parametrize("host", [b"a@b", b"[x]", b"a..b"])
def test_invalid_hosts_are_refused(host: bytes) -> None:
    with pytest.raises(InvalidTarget):
        request_info(scope(b"/x", host=host))


def test_the_app_gets_the_path_that_was_authorized() -> None:
    original = scope(b"/public/../admin/%7euser/a%3bb")
    info = request_info(original)
    passed = allowed_scope(original, Allow(ROUTE, "Bearer h.p.s", 60.0), info.path)
    assert passed["raw_path"] == b"/admin/~user/a%3Bb"
    assert passed["path"] == "/admin/~user/a;b"
    assert original["raw_path"] == b"/public/../admin/%7euser/a%3bb"  # the server's scope is not changed


def test_an_already_normal_path_is_passed_as_it_came() -> None:
    original = scope(b"/admin/x", path="/admin/x")
    passed = allowed_scope(original, Allow(ROUTE), request_info(original).path)
    assert (passed["raw_path"], passed["path"]) == (b"/admin/x", "/admin/x")


async def test_a_refused_target_is_a_400_and_the_app_is_not_called() -> None:
    called: list[Message] = []

    async def app(scope: Message, receive: Any, send: Any) -> None:
        called.append(scope)

    middleware = PhantomTokenMiddleware(app, introspection_endpoint="http://127.0.0.1:9/introspect",
                                        client_id="c", client_secret="s")
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    await middleware(scope(b"/public/..%2fadmin"), receive, send)
    assert called == []
    assert sent[0]["status"] == 400
    assert sent[1]["body"] == b'{"code":"invalid_request","message":"Malformed HTTP request"}'


def test_the_tls_extension_s_client_certificate_and_the_trusted_client() -> None:
    """RFC 8705: the first certificate of ``extensions.tls.client_cert_chain``; the client is trusted (its
    certificate headers believed) only when in ``trusted_proxies``."""
    import base64
    from ipaddress import ip_network

    from phantom_token.core.client_cert import der_thumbprint

    der = b"\x30\x03\x02\x01\x09"
    pem = f"-----BEGIN CERTIFICATE-----\n{base64.b64encode(der).decode()}\n-----END CERTIFICATE-----\n"
    plain = scope(b"/x")
    assert request_info(plain).client_cert_sha256 is None
    with_tls = {**plain, "extensions": {"tls": {"client_cert_chain": [pem, "the CA"]}}, "client": ("10.0.0.5", 1)}
    info = request_info(with_tls)
    assert info.client_cert_sha256 == der_thumbprint(der)
    assert not info.trusted_peer
    assert request_info(with_tls, (ip_network("10.0.0.0/8"),)).trusted_peer
    assert not request_info(with_tls, (ip_network("127.0.0.0/8"),)).trusted_peer
    broken = {**plain, "extensions": {"tls": {"client_cert_chain": ["junk"]}}}
    assert request_info(broken).client_cert_sha256 is None
