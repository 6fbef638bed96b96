"""The demo authorization server and echo API, called directly as Handlers (no sockets) with a fake clock."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote_plus, urlencode

import pytest

from phantom_token.demo.authorization_server import Client, DemoAuthorizationServer, fingerprint
from phantom_token.demo.echo_api import echo
from phantom_token.http.messages import Request, Response
from phantom_token.jose import SigningKey, verify

ISSUER = "http://as.test"
FORM = "application/x-www-form-urlencoded"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def basic(client_id: str, secret: str) -> str:
    """RFC 6749 section 2.3.1: each part form-urlencoded, then base64."""
    return "Basic " + base64.b64encode(f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()).decode()


def post(path: str, form: dict[str, str], *, auth: str | None = None, accept: str | None = None) -> Request:
    headers: dict[str, list[str]] = {"content-type": [FORM]}
    if auth is not None:
        headers["authorization"] = [auth]
    if accept is not None:
        headers["accept"] = [accept]
    return Request("POST", path, "", headers, urlencode(form).encode())


def body(response: Response) -> Any:
    return json.loads(response.body)


def header(response: Response, name: str) -> str | None:
    return next((v for n, v in response.headers if n.lower() == name.lower()), None)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock) -> DemoAuthorizationServer:
    clients = [
        Client("demo-client", "demo-secret", frozenset({"read", "write"})),
        Client("introspection-client", "demo-introspection-secret", introspect=True),
        Client("odd client:1", "p@ss word+%", frozenset({"read"})),
    ]
    return DemoAuthorizationServer(
        ISSUER, clients=clients, signing_key=SigningKey.generate(), test_controls=True, clock=clock
    )


async def get_token(server: DemoAuthorizationServer, scope: str | None = None) -> str:
    form = {"grant_type": "client_credentials", **({"scope": scope} if scope is not None else {})}
    response = await server(post("/oauth/token", form, auth=basic("demo-client", "demo-secret")))
    assert response.status == 200, response.body
    token: str = body(response)["access_token"]
    return token


async def introspect(server: DemoAuthorizationServer, token: str, accept: str | None = "application/jwt") -> Response:
    auth = basic("introspection-client", "demo-introspection-secret")
    return await server(post("/oauth/introspect", {"token": token}, auth=auth, accept=accept))


# --- token endpoint ---------------------------------------------------------------------------------------------


async def test_client_credentials_with_basic_and_with_post(server: DemoAuthorizationServer) -> None:
    auth = basic("demo-client", "demo-secret")
    response = await server(post("/oauth/token", {"grant_type": "client_credentials"}, auth=auth))
    answer = body(response)
    assert answer["token_type"] == "bearer"
    assert answer["expires_in"] == 300
    assert set(answer["scope"].split()) == {"read", "write"}
    assert len(answer["access_token"]) == 43  # 32 bytes, base64url
    assert header(response, "Cache-Control") == "no-store"
    form = {"grant_type": "client_credentials", "scope": "read"}
    form.update(client_id="demo-client", client_secret="demo-secret")
    assert body(await server(post("/oauth/token", form)))["scope"] == "read"


async def test_basic_credentials_are_form_urldecoded(server: DemoAuthorizationServer) -> None:
    form = {"grant_type": "client_credentials"}
    assert (await server(post("/oauth/token", form, auth=basic("odd client:1", "p@ss word+%")))).status == 200
    raw = "Basic " + base64.b64encode(b"odd client:1:p@ss word+%").decode()  # not encoded: ':' in the id splits it
    assert (await server(post("/oauth/token", form, auth=raw))).status == 401


@pytest.mark.parametrize(
    ("form", "auth", "status", "error"),
    [
        ({"grant_type": "client_credentials"}, basic("demo-client", "wrong"), 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, basic("nobody", "demo-secret"), 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
        ({"grant_type": "password"}, basic("demo-client", "demo-secret"), 400, "unsupported_grant_type"),
        (
            {"grant_type": "client_credentials", "scope": "read admin"},
            basic("demo-client", "demo-secret"),
            400,
            "invalid_scope",
        ),
        (
            {"grant_type": "client_credentials", "client_id": "demo-client", "client_secret": "demo-secret"},
            basic("demo-client", "demo-secret"),
            400,
            "invalid_request",
        ),
    ],
    ids=["wrong-secret", "unknown-client", "no-auth", "grant", "scope", "two-methods"],
)
async def test_token_endpoint_errors(
    server: DemoAuthorizationServer, form: dict[str, str], auth: str | None, status: int, error: str
) -> None:
    response = await server(post("/oauth/token", form, auth=auth))
    assert (response.status, body(response)["error"]) == (status, error)
    if status == 401:
        assert (header(response, "WWW-Authenticate") or "").startswith("Basic")


async def test_token_endpoint_needs_a_form(server: DemoAuthorizationServer) -> None:
    request = Request("POST", "/oauth/token", "", {"content-type": ["application/json"]}, b"{}")
    assert (await server(request)).status == 400
    assert (await server(Request("GET", "/oauth/token", "", {}))).status == 405
    assert (await server(Request("GET", "/nowhere", "", {}))).status == 404


# --- introspection ----------------------------------------------------------------------------------------------


async def test_active_token_as_jwt(server: DemoAuthorizationServer, clock: Clock) -> None:
    token = await get_token(server, "read")
    clock.now += 100
    response = await introspect(server, token)
    assert response.status == 200
    assert header(response, "Content-Type") == "application/jwt"
    assert header(response, "Cache-Control") == "max-age=200"
    jwks = body(await server(Request("GET", "/.well-known/jwks.json", "", {})))
    _, claims = verify(response.body.decode(), jwks, algorithms=["ES256"])
    assert claims["iss"] == ISSUER
    assert (claims["sub"], claims["client_id"], claims["scope"]) == ("demo-client", "demo-client", "read")
    assert claims["exp"] - claims["iat"] == 300
    assert "aud" not in claims


async def test_inactive_token_as_jwt_is_204(server: DemoAuthorizationServer, clock: Clock) -> None:
    assert (await introspect(server, "unknown")).status == 204
    token = await get_token(server)
    clock.now += 300
    response = await introspect(server, token)
    assert (response.status, response.body) == (204, b"")


async def test_json_answers(server: DemoAuthorizationServer) -> None:
    token = await get_token(server)
    for accept in (None, "application/json", "application/jwt;q=0"):
        answer = body(await introspect(server, token, accept))
        assert answer["active"] is True
        assert answer["client_id"] == "demo-client"
    assert body(await introspect(server, "unknown", "application/json")) == {"active": False}
    assert (await introspect(server, token, "text/html, application/jwt;q=0.5")).status == 200


async def test_introspection_client_authentication(server: DemoAuthorizationServer) -> None:
    token = await get_token(server)
    wrong = await server(post("/oauth/introspect", {"token": token}, auth=basic("introspection-client", "x")))
    assert (wrong.status, body(wrong)["error"]) == (401, "invalid_client")
    not_allowed = await server(post("/oauth/introspect", {"token": token}, auth=basic("demo-client", "demo-secret")))
    assert not_allowed.status == 403
    auth = basic("introspection-client", "demo-introspection-secret")
    assert (await server(post("/oauth/introspect", {}, auth=auth))).status == 400


async def test_token_values_are_form_decoded(server: DemoAuthorizationServer) -> None:
    server.issue("demo-client", ["read"], value="a+b/c==")
    assert (await introspect(server, "a+b/c==")).status == 200  # urlencode() percent-encodes '+'
    auth = basic("introspection-client", "demo-introspection-secret")
    raw = Request("POST", "/oauth/introspect", "", {"content-type": [FORM], "authorization": [auth],
                  "accept": ["application/jwt"]}, b"token=a+b/c==")
    assert (await server(raw)).status == 204  # an unencoded '+' is a space


# --- test controls ----------------------------------------------------------------------------------------------


async def control(server: DemoAuthorizationServer, **changes: Any) -> Response:
    return await server(Request("POST", "/controls", "", {}, json.dumps(changes).encode()))


async def test_stats_use_fingerprints_only(server: DemoAuthorizationServer) -> None:
    token = await get_token(server)
    await introspect(server, token)
    await introspect(server, token)
    response = await server(Request("GET", "/stats", "", {}))
    assert token.encode() not in response.body
    stats = body(response)
    assert stats["introspection"] == {"total": 2, "by_token": {fingerprint(token): 2}}
    assert stats["token_requests"] == 1
    await control(server, reset=True)
    assert body(await server(Request("GET", "/stats", "", {})))["introspection"]["total"] == 0


async def test_failure_modes(server: DemoAuthorizationServer) -> None:
    token = await get_token(server)
    await control(server, failure="status", failure_status=503)
    assert (await introspect(server, token)).status == 503
    await control(server, failure="garbage")
    garbage = await introspect(server, token)
    assert garbage.status == 200
    assert garbage.body.count(b".") != 2
    await control(server, failure=None)
    assert (await introspect(server, token)).status == 200


async def test_failure_every_fails_one_call_in_n(server: DemoAuthorizationServer) -> None:
    token = await get_token(server)
    await control(server, failure="status", failure_every=10)
    statuses = [(await introspect(server, token)).status for _ in range(30)]
    assert statuses == ([200] * 9 + [500]) * 3


async def test_register_and_revoke(server: DemoAuthorizationServer) -> None:
    answer = body(await control(server, register={"token": "x&y=z", "scope": "read", "expires_in": 10}))
    assert answer["registered"] == fingerprint("x&y=z")[:8]
    response = await introspect(server, "x&y=z", "application/json")
    assert body(response)["scope"] == "read"
    assert header(response, "Cache-Control") == "max-age=10"
    assert body(await control(server, revoke="x&y=z"))["revoked"] is True
    assert (await introspect(server, "x&y=z")).status == 204


async def test_presign_signs_a_token_once_at_issue(server: DemoAuthorizationServer, clock: Clock) -> None:
    before = await get_token(server, "read")
    assert body(await control(server, presign=True))["presign"] is True
    token = await get_token(server, "read")
    clock.now += 100
    first, second = await introspect(server, token), await introspect(server, token)
    assert first.body == second.body  # the JWT signed when the token was issued, not one per answer
    assert header(second, "Cache-Control") == "max-age=200"  # still counted down per answer
    jwks = body(await server(Request("GET", "/.well-known/jwks.json", "", {})))
    _, claims = verify(first.body.decode(), jwks, algorithms=["ES256"])
    assert (claims["sub"], claims["scope"], claims["exp"]) == ("demo-client", "read", int(clock.now) + 200)
    assert body(await introspect(server, token, "application/json"))["jti"] != claims["jti"]  # JSON: per answer
    # a token issued before, and every token after the control is off (or reset), is signed per answer
    assert (await introspect(server, before)).body != (await introspect(server, before)).body
    await control(server, presign=False)
    after = await get_token(server, "read")
    assert (await introspect(server, after)).body != (await introspect(server, after)).body
    await control(server, presign=True)
    await control(server, reset=True)
    reset = await get_token(server, "read")
    assert (await introspect(server, reset)).body != (await introspect(server, reset)).body
    clock.now += 200
    assert (await introspect(server, token)).status == 204  # expired: inactive, presigned or not


@pytest.mark.parametrize("changes", [{"nope": 1}, {"failure": "explode"}, {"register": {"scope": "read"}},
                                     {"presign": "yes"}])
async def test_bad_controls(server: DemoAuthorizationServer, changes: dict[str, Any]) -> None:
    assert (await control(server, **changes)).status == 400


async def test_controls_are_off_by_default() -> None:
    server = DemoAuthorizationServer(ISSUER)
    assert (await server(Request("GET", "/stats", "", {}))).status == 404
    assert (await control(server, reset=True)).status == 404


async def test_metadata(server: DemoAuthorizationServer) -> None:
    metadata = body(await server(Request("GET", "/.well-known/oauth-authorization-server", "", {})))
    assert metadata["introspection_endpoint"] == f"{ISSUER}/oauth/introspect"
    assert metadata["scopes_supported"] == ["read", "write"]


# --- echo API ---------------------------------------------------------------------------------------------------


async def test_echo_describes_the_request() -> None:
    jwt = SigningKey.generate().sign({"sub": "alice"})
    request = Request(
        "PUT", "/a/b%20c", "x=1&y", {"authorization": [f"Bearer {jwt}"], "x-twice": ["1", "2"]}, b"hello"
    )
    answer = body(await echo(request))
    assert (answer["method"], answer["path"], answer["query"], answer["body_bytes"]) == ("PUT", "/a/b%20c", "x=1&y", 5)
    assert answer["headers"]["x-twice"] == "1, 2"
    assert ["x-twice", "2"] in answer["raw_headers"]
    assert answer["jwt_claims"] == {"sub": "alice"}
    assert answer["jwt_header"]["alg"] == "ES256"


@pytest.mark.parametrize(
    "authorization", [["Bearer opaque"], ["Basic abc"], ["Bearer a.b.c"], ["Bearer x", "Bearer y"]]
)
async def test_echo_without_a_jwt(authorization: list[str]) -> None:
    answer = body(await echo(Request("GET", "/", "", {"authorization": authorization})))
    assert answer["jwt_claims"] is None
