"""The gRPC ext_authz front door's translations: CheckRequest -> RequestInfo, Verdict -> CheckResponse, and the
servicer driven with a fake context and a fake engine. No sockets; real Envoy runs it in
tests/e2e/test_grpc_authz.py."""

from __future__ import annotations

import logging
from ipaddress import ip_network
from typing import Any, cast

import pytest

pytest.importorskip("grpc", reason="the grpc extra is not installed (scripts/setup installs it)")

from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format
from google.rpc import code_pb2

from phantom_token.config.settings import PluginConfig, Route, Settings
from phantom_token.core import verdict as v
from phantom_token.core.bearer import fingerprint
from phantom_token.core.request import RequestInfo
from phantom_token.core.verdict import Verdict
from phantom_token.frontends.decisions import BadDecisionRequest, decision_response
from phantom_token.frontends.grpc_authz import (
    AuthorizationService,
    HeadersTooLarge,
    check_response,
    peer_ip,
    request_info,
)

PLUGIN = PluginConfig("http://127.0.0.1:1/introspect", "client", "secret", scope=("admin",))
ROUTE = Route("api", "svc", None, paths=("/api",), plugin=PLUGIN)
OPEN = Route("public", "svc", None, paths=("/public",))
TOKEN = "opaque-token-1"
JWT = "Bearer aaa.bbb.ccc"


def check(method: str = "GET", path: str = "/api/x?y=1", host: str = "api.example.com",
          headers: dict[str, str] | None = None, raw: list[tuple[str, bytes]] | None = None) -> Any:
    """A CheckRequest as Envoy sends it (``raw``: with ``encode_raw_headers``, in ``header_map``)."""
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = method, path, host
    http.headers.update(headers if headers is not None else {":path": path, "authorization": f"Bearer {TOKEN}"})
    for name, value in raw or ():
        http.header_map.headers.add(key=name, raw_value=value)
    return request


# --- CheckRequest -> RequestInfo -----------------------------------------------------------------------------


def test_the_http_attributes_give_the_request_with_path_and_host_normalised_as_serve_does() -> None:
    info = request_info(check("post", "/public/%2e%2e/api//%7Ex?q=1", "API.Example.com.:8443"), 65536)
    assert info == RequestInfo("POST", "api.example.com", "/api/~x", {"authorization": [f"Bearer {TOKEN}"]})


def test_raw_header_map_wins_and_keeps_order_without_pseudo_headers_or_underscores() -> None:
    raw = [(":authority", b"h"), ("x-a", b"1"), ("X-A", b"2"), ("x_forwarded_host", b"evil"), ("dpop", b"\xff")]
    info = request_info(check(headers={"x-a": "ignored"}, raw=raw), 65536)
    assert info.headers == {"x-a": ["1", "2"], "dpop": ["\xff"]}


@pytest.mark.parametrize(("path", "host", "why"), [
    ("/api/%2F", "h", "invalid path"),
    ("*", "h", "not an origin-form"),
    ("http://h/api", "h", "not an origin-form"),
    ("/api", "a@b", "invalid host"),
    ("/api", "", "no host"),
])
def test_a_path_or_host_serve_refuses_is_a_400(path: str, host: str, why: str) -> None:
    with pytest.raises(BadDecisionRequest) as caught:
        request_info(check(path=path, host=host), 65536)
    assert why in caught.value.message
    assert caught.value.deny().status == 400


def test_envoy_s_source_certificate_is_the_client_certificate() -> None:
    """``include_peer_certificate: true``: the URL-encoded PEM becomes the RFC 8705 thumbprint; junk is none."""
    import base64
    from urllib.parse import quote

    from phantom_token.core.client_cert import der_thumbprint

    der = b"\x30\x03\x02\x01\x05"
    pem = f"-----BEGIN CERTIFICATE-----\n{base64.b64encode(der).decode()}\n-----END CERTIFICATE-----\n"
    request = check()
    assert request_info(request, 65536).memo is None  # no certificate, no plugin reads a header: nothing to carry
    assert request_info(request, 65536).client_cert_sha256 is None
    assert request_info(request, 65536, reads_headers=True).trusted_peer  # only trusted peers are asked
    request.attributes.source.certificate = quote(pem)
    assert request_info(request, 65536).client_cert_sha256 == der_thumbprint(der)
    request.attributes.source.certificate = "junk"
    assert request_info(request, 65536).client_cert_sha256 is None


def test_a_check_without_http_attributes_is_a_400() -> None:
    with pytest.raises(BadDecisionRequest, match=r"no attributes\.request\.http"):
        request_info(external_auth_pb2.CheckRequest(), 65536)


def test_a_header_block_larger_than_max_header_bytes_is_refused() -> None:
    with pytest.raises(HeadersTooLarge):
        request_info(check(headers={f"x-{i}": "v" * 100 for i in range(100)}), 8192)
    request_info(check(headers={f"x-{i}": "v" * 100 for i in range(10)}), 8192)


@pytest.mark.parametrize(("peer", "ip"), [("ipv4:127.0.0.1:5000", "127.0.0.1"), ("ipv6:[::1]:5000", "::1"),
                                          ("ipv6:[fe80::1%25eth0]:1", "fe80::1%eth0"), ("unix:/tmp/s", "")])
def test_peer_ip(peer: str, ip: str) -> None:
    assert peer_ip(peer) == ip


# --- Verdict -> CheckResponse --------------------------------------------------------------------------------


def test_allow_overwrites_authorization_removes_dpop_and_names_the_token_by_fingerprint_only() -> None:
    request = RequestInfo("GET", "h", "/api", {"authorization": [f"Bearer {TOKEN}"], "dpop": ["proof"]})
    response = check_response(v.Allow(ROUTE, JWT, 30.0), request)
    assert response.status.code == code_pb2.OK
    ok = response.ok_response
    assert [(h.header.key, h.header.value) for h in ok.headers] == [("authorization", JWT)]
    assert ok.headers[0].append_action == ok.headers[0].OVERWRITE_IF_EXISTS_OR_ADD
    assert list(ok.headers_to_remove) == ["dpop"]
    metadata = json_format.MessageToDict(response.dynamic_metadata)
    assert metadata == {"route": "api", "token_fingerprint": fingerprint(TOKEN)}
    assert TOKEN not in str(response)


def test_allow_without_the_plugin_changes_nothing() -> None:
    response = check_response(v.Allow(OPEN), RequestInfo("GET", "h", "/public", {"dpop": ["x"]}))
    assert response.status.code == code_pb2.OK
    assert response.HasField("ok_response")
    assert not response.ok_response.headers
    assert not response.ok_response.headers_to_remove
    assert not response.HasField("dynamic_metadata")


def test_a_jwt_that_would_split_a_header_is_a_502() -> None:
    response = check_response(v.Allow(ROUTE, "Bearer a\r\nx: y", 30.0), RequestInfo("GET", "h", "/api", {}))
    assert response.denied_response.status.code == 502
    assert response.status.code == code_pb2.UNAVAILABLE


@pytest.mark.parametrize(("verdict", "code"), [
    (v.unauthorized(token_sent=False), code_pb2.UNAUTHENTICATED),
    (v.unauthorized("shop", token_sent=True), code_pb2.UNAUTHENTICATED),
    (v.forbidden(("admin",)), code_pb2.PERMISSION_DENIED),
    (v.server_error(), code_pb2.UNAVAILABLE),
    (v.not_found(), code_pb2.NOT_FOUND),
    (v.malformed_request(), code_pb2.INVALID_ARGUMENT),
])
def test_a_denial_is_the_http_front_doors_status_challenge_and_body(verdict: v.Deny, code: int) -> None:
    response = check_response(verdict)
    assert response.status.code == code
    denied = response.denied_response
    status, headers, body = decision_response(verdict)
    assert denied.status.code == status
    assert [(h.header.key, h.header.value) for h in denied.headers] == [(n.lower(), val) for n, val in headers]
    assert denied.body.encode() == body
    assert not response.HasField("ok_response")


# --- the servicer, with a fake context and a fake engine --------------------------------------------------------


class FakeEngine:
    def __init__(self, verdict: Verdict | None, later: Verdict | None = None) -> None:
        self.verdict, self.later = verdict, later
        self.asked: list[RequestInfo] = []

    def try_authorize(self, request: RequestInfo) -> Verdict | None:
        self.asked.append(request)
        return self.verdict

    async def authorize(self, request: RequestInfo, *, uncancelled: bool = False) -> Verdict:
        if self.later is None:
            raise RuntimeError("boom with a secret in it")
        return self.later


class FakeContext:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


async def _ask(engine: FakeEngine, request: Any, peer: str = "ipv4:127.0.0.1:1", settings: Settings | None = None,
               ) -> tuple[Any, list[int]]:
    seen: list[int] = []
    service = AuthorizationService(engine, settings or Settings(()),
                                   lambda status, _outcome, _route: seen.append(status))
    return await service.Check(request, cast(Any, FakeContext(peer))), seen


async def test_a_cache_hit_is_answered_without_the_async_path() -> None:
    engine = FakeEngine(v.Allow(ROUTE, JWT, 10.0))
    response, seen = await _ask(engine, check())
    assert response.status.code == code_pb2.OK
    assert seen == [200]
    assert engine.asked[0].path == "/api/x"


async def test_a_miss_is_asked_of_the_engine_and_an_unexpected_error_is_a_502() -> None:
    response, seen = await _ask(FakeEngine(None, v.forbidden(("admin",))), check())
    assert response.status.code == code_pb2.PERMISSION_DENIED
    assert seen == [403]
    response, seen = await _ask(FakeEngine(None, None), check())
    assert response.denied_response.status.code == 502
    assert seen == [502]


async def test_an_untrusted_peer_gets_403_and_the_engine_is_not_asked() -> None:
    engine = FakeEngine(v.Allow(ROUTE, JWT, 10.0))
    settings = Settings((), trusted_proxies=(ip_network("192.0.2.0/24"),))
    for peer in ("ipv4:127.0.0.1:1", "unix:/tmp/x"):
        response, seen = await _ask(engine, check(), peer, settings)
        assert response.status.code == code_pb2.PERMISSION_DENIED
        assert seen == [403]
        assert b"trusted proxies only" in response.denied_response.body.encode()
    assert engine.asked == []
    response, _ = await _ask(engine, check(), "ipv4:192.0.2.7:1", settings)
    assert response.status.code == code_pb2.OK


async def test_bad_requests_are_clear_denials() -> None:
    engine = FakeEngine(v.Allow(ROUTE, JWT, 10.0))
    response, seen = await _ask(engine, external_auth_pb2.CheckRequest())
    assert response.status.code == code_pb2.INVALID_ARGUMENT
    assert seen == [400]
    huge = check(headers={f"x-{i}": "v" * 1000 for i in range(100)})
    response, seen = await _ask(engine, huge)
    assert (response.status.code, response.denied_response.status.code, seen) == (code_pb2.INVALID_ARGUMENT, 431,
                                                                                  [431])
    assert engine.asked == []


async def test_with_the_access_log_on_every_check_writes_one_line(caplog: pytest.LogCaptureFixture) -> None:
    import dataclasses

    settings = dataclasses.replace(Settings(()), access_log=True)
    with caplog.at_level(logging.INFO, logger="phantom_token.access"):
        await _ask(FakeEngine(v.Allow(ROUTE, JWT, 10.0)), check(
            headers={":path": "/api/x?code=secret", "authorization": f"Bearer {TOKEN}", "x-request-id": "envoy-1"}),
            settings=settings)
        await _ask(FakeEngine(None, v.forbidden(("admin",), route=ROUTE)), check(), settings=settings)
        await _ask(FakeEngine(v.Allow(ROUTE, JWT, 10.0)), external_auth_pb2.CheckRequest(), settings=settings)
        await _ask(FakeEngine(v.Allow(ROUTE, JWT, 10.0)), check())  # the access log off: no line
    lines = [record.__dict__["access"] for record in caplog.records if record.name == "phantom_token.access"]
    assert [(line["front_door"], line["route"], line["method"], line["path"], line["status"], line["outcome"],
             line["token"]) for line in lines] == [
        ("grpc", "api", "GET", "/api/x", 200, "allowed", fingerprint(TOKEN)),
        ("grpc", "api", "GET", "/api/x", 403, "forbidden", fingerprint(TOKEN)),
        ("grpc", "-", "-", "-", 400, "invalid_request", "-"),
    ]
    assert lines[0]["request_id"] == "envoy-1"
    assert lines[0]["introspection_ms"] == 0
    assert lines[1]["introspection_ms"] >= 0
    assert "upstream_ms" not in lines[0]
    assert all(TOKEN not in record.getMessage() and "secret" not in record.getMessage() for record in caplog.records)
