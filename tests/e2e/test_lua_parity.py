"""One test (or parametrised group) for each of the Lua original's own Test::Nginx cases, run against real processes.

Where this project deliberately differs from the Lua plugin the test says so: a wrong introspection secret is the
gateway's fault (502, not 401), the 401 challenge carries ``error="invalid_token"`` when a token was sent (RFC 6750
section 3.1), and a broken configuration stops the server at start-up instead of answering 500 per request.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from subprocess import CompletedProcess
from typing import Any

import pytest

from phantom_token.jose import SigningKey, verify

from .conftest import (
    UNAUTHORIZED_BODY,
    AuthServer,
    Gateway,
    GatewayFactory,
    HttpResult,
    Process,
    dump,
    free_port,
    http_request,
    plugin_options,
)

pytestmark = pytest.mark.e2e

SERVER_ERROR = {"code": "server_error", "message": "Problem encountered authorizing the HTTP request"}
FORBIDDEN = {"code": "forbidden", "message": "The token does not contain the required scope"}


def assert_unauthorized(result: HttpResult, challenge: str = 'Bearer error="invalid_token"') -> None:
    assert result.status == 401, result.text
    assert result.json() == UNAUTHORIZED_BODY
    assert (result.header("Content-Type") or "").startswith("application/json")
    assert result.header("WWW-Authenticate") == challenge


def upstream_jwt(result: HttpResult, auth_server: AuthServer, opaque: str) -> dict[str, Any]:
    """The claims of the JWT the echo API received, after checking it and that the opaque token never arrived."""
    assert result.status == 200, result.text
    echoed = result.json()
    assert opaque not in result.text, "the opaque token reached the upstream API"
    scheme, _, jwt = echoed["headers"]["authorization"].partition(" ")
    assert scheme == "Bearer"
    keys = http_request("GET", f"{auth_server.base_url}/.well-known/jwks.json").json()
    _, claims = verify(jwt, keys, algorithms=["ES256"])
    assert claims == echoed["jwt_claims"]
    return claims


# --- happy path ---------------------------------------------------------------------------------------------


def test_happy_path_forwards_the_jwt_and_never_the_opaque_token(
    started_gateway: Gateway, auth_server: AuthServer
) -> None:
    token = auth_server.issue_token()
    result = started_gateway.get_with_token(token, "/api/orders?page=2")
    claims = upstream_jwt(result, auth_server, token)
    assert claims["iss"] == auth_server.base_url
    assert claims["client_id"] == "demo-client"
    assert set(claims["scope"].split()) == {"read", "write"}
    echoed = result.json()
    assert echoed["path"] == "/orders"  # strip_path defaults to true (Kong)
    assert echoed["query"] == "page=2"
    assert auth_server.introspections(token) == 1


def test_second_request_is_served_from_the_cache(started_gateway: Gateway, auth_server: AuthServer) -> None:
    token = auth_server.issue_token()
    for _ in range(3):
        upstream_jwt(started_gateway.get_with_token(token), auth_server, token)
    assert auth_server.introspections(token) == 1


# --- missing and invalid tokens -----------------------------------------------------------------------------


def test_invalid_token(started_gateway: Gateway, auth_server: AuthServer) -> None:
    assert_unauthorized(started_gateway.get_with_token("not-a-token-the-server-issued"))
    assert auth_server.introspections("not-a-token-the-server-issued") == 1


def test_no_authorization_header(started_gateway: Gateway, auth_server: AuthServer) -> None:
    assert_unauthorized(started_gateway.request("/api/hello"), "Bearer")
    assert auth_server.introspections() == 0


def test_wrong_scheme(started_gateway: Gateway, auth_server: AuthServer) -> None:
    result = started_gateway.request("/api/hello", [("Authorization", "Basic ZGVtby1jbGllbnQ6ZGVtby1zZWNyZXQ=")])
    assert result.status == 401
    assert result.json() == UNAUTHORIZED_BODY
    assert (result.header("WWW-Authenticate") or "").startswith("Bearer")
    assert auth_server.introspections() == 0


def test_token_with_trailing_junk_is_not_introspected(started_gateway: Gateway, auth_server: AuthServer) -> None:
    token = auth_server.issue_token()
    assert_unauthorized(started_gateway.request("/api/hello", [("Authorization", f"Bearer {token} def")]))
    assert auth_server.introspections() == 0


@pytest.mark.parametrize(
    "template",
    ["BEARER {}", "bEaReR {}", "bearer {}", "Bearer    {}", "Bearer\t{}", "Bearer \t \t{}", "Bearer {}  \t"],
    ids=["upper", "mixed", "lower", "spaces", "tab", "spaces-and-tabs", "trailing-whitespace"],
)
def test_scheme_in_any_case_and_extra_whitespace(
    started_gateway: Gateway, auth_server: AuthServer, template: str
) -> None:
    token = auth_server.issue_token()
    result = started_gateway.request("/api/hello", [("Authorization", template.format(token))])
    upstream_jwt(result, auth_server, token)


# --- configuration ------------------------------------------------------------------------------------------

RunCli = Callable[..., CompletedProcess[str]]


def _without(options: dict[str, Any], name: str) -> None:
    del options[name]


def _empty(options: dict[str, Any], name: str) -> None:
    options[name] = ""


def _null(options: dict[str, Any], name: str) -> None:
    options[name] = None


def _misspelt(options: dict[str, Any], name: str) -> None:
    options[name + "d"] = options.pop(name)


@pytest.mark.parametrize("field", ["introspection_endpoint", "client_id", "client_secret"])
@pytest.mark.parametrize("breakage", [_without, _empty, _null, _misspelt], ids=["missing", "empty", "null", "misspelt"])
def test_broken_configuration_is_refused(
    run_cli: RunCli,
    plugin_config: dict[str, Any],
    field: str,
    breakage: Callable[[dict[str, Any], str], None],
) -> None:
    config = copy.deepcopy(plugin_config)
    breakage(plugin_options(config), field)
    text = dump(config)

    check = run_cli("check", config_text=text)
    assert check.returncode == 1, check.stdout + check.stderr
    report = check.stdout + check.stderr
    assert field in report
    assert "business-api" in report  # names where the problem is

    serve = run_cli("serve", "--listen", f"127.0.0.1:{free_port()}", config_text=text)
    assert serve.returncode != 0
    assert field in serve.stderr
    assert "listening on" not in serve.stdout


def test_check_accepts_a_valid_file(run_cli: RunCli, plugin_config: dict[str, Any]) -> None:
    result = run_cli("check", config_text=dump(plugin_config))
    assert result.returncode == 0, result.stdout + result.stderr


def test_all_optional_fields_omitted(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer
) -> None:
    options = plugin_options(plugin_config)
    for name in list(options):
        if name not in {"introspection_endpoint", "client_id", "client_secret"}:
            del options[name]
    gw = gateway(dump(plugin_config))
    token = auth_server.issue_token()
    upstream_jwt(gw.get_with_token(token), auth_server, token)


# --- the authorization server's faults ----------------------------------------------------------------------


def test_authorization_server_down(gateway: GatewayFactory, plugin_config: dict[str, Any]) -> None:
    plugin_options(plugin_config)["introspection_endpoint"] = f"http://127.0.0.1:{free_port()}/oauth/introspect"
    gw = gateway(dump(plugin_config))
    result = gw.get_with_token("abcdef0123456789")
    assert result.status == 502, result.text
    assert result.json() == SERVER_ERROR
    assert result.header("WWW-Authenticate") is None


def test_wrong_introspection_secret_is_a_server_error(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer
) -> None:
    """The Lua plugin answered 401 here; the client's token is not at fault, the gateway's credentials are."""
    plugin_options(plugin_config)["client_secret"] = "not-the-secret"
    gw = gateway(dump(plugin_config))
    token = auth_server.issue_token()
    result = gw.get_with_token(token)
    assert result.status == 502, result.text
    assert result.json() == SERVER_ERROR
    assert auth_server.introspections(token) == 1


# --- scopes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("required", ["read", "read write", "write read"])
def test_required_scopes_present(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer, required: str
) -> None:
    plugin_options(plugin_config)["scope"] = required
    gw = gateway(dump(plugin_config))
    token = auth_server.issue_token("read write")
    upstream_jwt(gw.get_with_token(token), auth_server, token)


def test_required_scope_missing(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer, echo_api: Process
) -> None:
    plugin_options(plugin_config)["scope"] = "read execute"
    gw = gateway(dump(plugin_config))
    token = auth_server.issue_token("read write")
    for _ in range(2):  # the second answer comes from the cache: scopes are checked on every request
        result = gw.get_with_token(token)
        assert result.status == 403, result.text
        assert result.json() == FORBIDDEN
        assert result.header("WWW-Authenticate") == 'Bearer error="insufficient_scope", scope="read execute"'
    assert auth_server.introspections(token) == 1


# --- advanced routing (the Lua README's "bypass" configuration) ---------------------------------------------


def test_jwt_routed_around_the_plugin_while_opaque_token_is_introspected(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer, echo_api: Process
) -> None:
    """The README's two routes on one path, one matching JWT-looking Authorization headers and carrying no plugin.

    The README's regex (``[Bb]earer\\s*[A-Za-z0-9-_]*.[A-Za-z0-9-_]*.[A-Za-z0-9-_]*``) has unescaped dots, so it
    matches any bearer token of two characters or more, opaque ones included; this uses the contract's anchored
    form with escaped dots, which is what the README means.
    """
    options = plugin_options(plugin_config)
    config = {
        "_format_version": "2.1",
        "services": [
            {
                "name": "myapi",
                "url": echo_api.base_url,
                "routes": [
                    {
                        "name": "bypass",
                        "paths": ["/api"],
                        "headers": {
                            "authorization": [r"~*^bearer\s+[A-Za-z0-9-_]+\.[A-Za-z0-9-_]+\.[A-Za-z0-9-_]*$"]
                        },
                    },
                    {
                        "name": "phantom-token",
                        "paths": ["/api"],
                        "plugins": [{"name": "phantom-token", "config": options}],
                    },
                ],
            }
        ],
    }
    gw = gateway(dump(config))

    jwt = SigningKey.generate().sign({"sub": "microservice", "scope": "read"})
    bypassed = gw.get_with_token(jwt)
    assert bypassed.status == 200, bypassed.text
    assert bypassed.json()["headers"]["authorization"] == f"Bearer {jwt}"
    assert auth_server.introspections() == 0

    opaque = auth_server.issue_token()
    upstream_jwt(gw.get_with_token(opaque), auth_server, opaque)
    assert auth_server.introspections(opaque) == 1
