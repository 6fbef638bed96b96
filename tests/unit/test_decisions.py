"""The decision service front door: which request it asks the engine about, and how it renders the verdict.

Pure functions here, no sockets; the protocol itself runs on 127.0.0.1 in tests/integration/test_decisions.py.
"""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from phantom_token.config.settings import PluginConfig, Route, Settings
from phantom_token.core import verdict as v
from phantom_token.core.request import RequestInfo
from phantom_token.frontends.decisions import (
    BadDecisionRequest,
    allow_payload,
    decision_response,
    is_trusted,
    original_request,
)
from phantom_token.http.responses import encode_headers, status_line

PLUGIN = PluginConfig("http://127.0.0.1:1/introspect", "client", "secret", scope=("admin",))
ROUTE = Route("api", "svc", None, paths=("/api",), plugin=PLUGIN)
LOOPBACK = Settings(()).trusted_proxies  # the default
FORGED = [("X-Forwarded-Uri", "/public/anything"), ("X-Forwarded-Method", "GET"), ("X-Forwarded-Host", "evil")]


def _headers(*pairs: tuple[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in pairs:
        out.setdefault(name.lower(), []).append(value)
    return out


# --- which request is asked about -----------------------------------------------------------------------------


def test_nginx_headers_give_the_original_request() -> None:
    headers = _headers(("X-Original-URI", "/api/orders?id=1"), ("X-Original-Method", "post"),
                       ("X-Forwarded-Host", "API.example.com:8443"))
    for endpoint in ("/authz/nginx", "/authz"):
        info = original_request("GET", endpoint, "authz", headers)
        assert info == RequestInfo("POST", "api.example.com", "/api/orders", headers)


def test_traefik_and_caddy_headers_give_the_original_request() -> None:
    headers = _headers(("X-Forwarded-Uri", "/api/x?q"), ("X-Forwarded-Method", "DELETE"),
                       ("X-Forwarded-Host", "shop.example"))
    for endpoint in ("/authz/forwarded", "/authz"):
        assert original_request("GET", endpoint, "authz", headers) == RequestInfo(
            "DELETE", "shop.example", "/api/x", headers)


def test_ingress_nginx_absolute_original_url_gives_path_and_host() -> None:
    headers = _headers(("X-Original-URL", "https://api.example.com/api/x?y=1"), ("X-Original-Method", "GET"),
                       ("X-Forwarded-Host", "other.example"))  # the URL's authority wins
    info = original_request("GET", "/authz/nginx", "authz", headers)
    assert info is not None
    assert (info.host, info.path) == ("api.example.com", "/api/x")


def test_each_endpoint_reads_only_its_own_gateway_s_headers() -> None:
    # Traefik and Caddy pass a client's X-Original-* through; nginx passes a client's X-Forwarded-Uri/-Method
    forged_nginx = (("X-Original-URI", "/public/x"), ("X-Original-Method", "GET"))
    traefik = _headers(("X-Forwarded-Uri", "/api/a"), ("X-Forwarded-Method", "POST"), *forged_nginx)
    assert original_request("GET", "/authz/forwarded", "own", traefik) == RequestInfo("POST", "own", "/api/a",
                                                                                      traefik)
    nginx = _headers(("X-Original-URI", "/api/a"), ("X-Forwarded-Uri", "/public/b"), ("X-Forwarded-Method", "GET"))
    assert original_request("PUT", "/authz/nginx", "own", nginx) == RequestInfo("PUT", "own", "/api/a", nginx)


@pytest.mark.parametrize("forged", [("X-Original-URI", "/public/x"), ("X-Original-URL", "http://h/public/x")])
def test_bare_authz_with_both_header_sets_is_a_400(forged: tuple[str, str]) -> None:
    with pytest.raises(BadDecisionRequest) as caught:
        original_request("GET", "/authz", "own", _headers(("X-Forwarded-Uri", "/api/a"), forged))
    assert "both" in caught.value.message


def test_original_path_and_host_are_normalised_as_serve_does() -> None:
    headers = _headers(("X-Forwarded-Uri", "/public/%2e%2e/api//x"), ("X-Forwarded-Host", "API.Example.com."))
    info = original_request("GET", "/authz/forwarded", "own", headers)
    assert info is not None
    assert (info.host, info.path) == ("api.example.com", "/api/x")


@pytest.mark.parametrize(
    ("endpoint", "pairs"),
    [
        ("/authz", ()),
        ("/authz", (("X-Original-Method", "GET"),)),
        ("/authz", (("X-Original-URI", ""),)),
        ("/authz", (("X-Original-URI", "/a"), ("X-Original-URI", "/b"))),
        ("/authz", (("X-Original-URI", "api/no-leading-slash"),)),
        ("/authz", (("X-Forwarded-Uri", "ftp://host/x"),)),
        ("/authz/nginx", (("X-Original-URI", "/a"), ("X-Original-URL", "http://h/a"))),
        ("/authz/nginx", (("X-Forwarded-Uri", "/a"),)),
        ("/authz/forwarded", (("X-Original-URI", "/a"),)),
        ("/authz/forwarded", (("X-Forwarded-Uri", "/public/..%2fapi/x"),)),
        ("/authz/forwarded", (("X-Forwarded-Uri", "/public/..;/api/x"),)),
        ("/authz/forwarded", (("X-Forwarded-Uri", "/a"), ("X-Forwarded-Host", "a@b"))),
        ("/authz/forwarded", (("X-Forwarded-Uri", "/a"), ("X-Forwarded-Host", "a.example, b.example"))),
        ("/authz/nginx", (("X-Original-URL", "http://user@h/a"),)),
        ("/authz/nginx", (("X-Original-URL", "http://[x]/a"),)),
    ],
)
def test_a_request_without_a_usable_original_uri_or_host_is_a_400(endpoint: str,
                                                                   pairs: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(BadDecisionRequest) as caught:
        original_request("GET", endpoint, "authz", _headers(*pairs))
    deny = caught.value.deny()
    assert (deny.status, deny.code, deny.challenge) == (400, "invalid_request", None)


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/authz/envoy/api/x", "/api/x"), ("/authz/envoy", "/"), ("/authz/envoy/", "/"), ("/authz/envoyx", None),
     ("/other", None), ("/authz/", None)],
)
def test_envoy_prefix_gives_the_original_path_with_own_method_and_host(path: str, expected: str | None) -> None:
    headers = _headers(*FORGED)  # ignored on the Envoy endpoint
    info = original_request("PATCH", path, "api.example.com", headers)
    if expected is None:
        assert info is None
    else:
        assert info == RequestInfo("PATCH", "api.example.com", expected, headers)


@pytest.mark.parametrize(
    ("peer", "networks", "trusted"),
    [
        ("127.0.0.1", LOOPBACK, True),
        ("127.3.2.1", LOOPBACK, True),
        ("::1", LOOPBACK, True),
        ("::ffff:127.0.0.1", LOOPBACK, True),
        ("10.1.2.3", LOOPBACK, False),
        ("127.0.0.1", (), False),
        ("10.1.2.3", (ip_network("10.0.0.0/8"),), True),
        ("127.0.0.1", (ip_network("10.0.0.0/8"),), False),
        ("", LOOPBACK, False),
    ],
)
def test_trust_is_decided_by_the_peer_address(peer: str, networks: tuple[object, ...], trusted: bool) -> None:
    assert is_trusted(peer, networks) is trusted  # type: ignore[arg-type]


# --- how a verdict is rendered --------------------------------------------------------------------------------


def test_allow_carries_the_jwt_and_x_accel_expires_before_cache_control() -> None:
    status, headers, body = decision_response(v.Allow(ROUTE, "Bearer a.b.c", 299.7))
    assert (status, body) == (200, b"")
    assert headers == [("Authorization", "Bearer a.b.c"), ("X-Accel-Expires", "299"),
                       ("Cache-Control", "private, max-age=299")]


def test_allow_without_plugin_has_no_authorization_and_is_not_cacheable() -> None:
    _, headers, _ = decision_response(v.Allow(ROUTE))
    assert headers == [("X-Accel-Expires", "0"), ("Cache-Control", "private, max-age=0")]


def _general_allow_payload(allow: v.Allow) -> bytes | None:
    """The keep-alive 200 as the general rendering builds it (``decision_response`` + ``encode_headers``)."""
    _, headers, _ = decision_response(allow)
    try:
        return b"".join((status_line(200), encode_headers(headers), b"Content-Length: 0\r\n\r\n"))
    except ValueError:
        return None


@pytest.mark.parametrize("authorization", [
    None, "Bearer a.b.c", "Bearer " + "x" * 2000, "Bearer \xe9t\xe9", "Bearer a\rb", "Bearer a\nb", "Bearer a\r\n",
    "\r", "Bearer \u0100", "Bearer \U0001f600", "", "Bearer a\tb", "Bearer a b", "Bearer a:b,c;d=e%20",
])
@pytest.mark.parametrize("expires_in", [0.0, -5.0, 0.4, 1.0, 299.7, 300.0, 86399.99, 1e6])
def test_the_usual_allow_answer_is_the_general_rendering_byte_for_byte(authorization: str | None,
                                                                         expires_in: float) -> None:
    """``allow_payload`` (an Allow without claims headers, the decision service's usual answer) renders exactly what
    ``decision_response`` and ``encode_headers`` render, and refuses (None) exactly what they refuse."""
    allow = v.Allow(ROUTE, authorization, expires_in)
    seconds = max(int(expires_in // 1), 0)
    assert allow_payload(authorization, seconds) == _general_allow_payload(allow)
    assert allow_payload(authorization, seconds) == _general_allow_payload(allow)  # the expiry lines remembered


@pytest.mark.parametrize(
    "deny",
    [v.unauthorized(token_sent=True), v.forbidden(("admin",)), v.malformed_request(), v.server_error(), v.not_found()],
)
def test_denials_are_the_section_8_responses_with_no_store(deny: v.Deny) -> None:
    status, headers, body = decision_response(deny)
    assert (status, body) == (deny.status, deny.body())
    assert headers == [*deny.headers(), ("Cache-Control", "no-store")]
